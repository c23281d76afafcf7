//! The flat API `/apa/v1` for software without FHIR: thin handlers around
//! the mapping of `apa::flat`. Each mapped request is one FHIR transaction
//! run by the gateway's transaction interaction (validation, workflow,
//! routing, compartments, audit as for any Bundle); the response lists the
//! resources it created or found and the warnings of the mapping.
//! `Idempotency-Key` (per client): the same key and body get the same
//! response, another body under the key a 409. `import` (main.rs) runs
//! CSV files through [`run_csv`] too.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::apa::flat::{self, Mapped, Problem, Warning, csv, from_json, refuse};
use crate::clock::now_micros;
use crate::fhir::error::FhirError;
use crate::fhir::interaction::bundle::{self, BundleInput};
use crate::fhir::rules::SharedRules;
use crate::security::Caller;
use crate::store::{IdempotencyRecord, Store};

use super::AppState;

/// The OpenAPI document of `/apa/v1`, kept in line with the handlers by
/// `tests/flat_api.rs` (every documented operation answers).
pub const OPENAPI: &str = include_str!("openapi.json");

/// `GET /apa/v1/openapi.json` (no token: it describes, it holds no data).
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        OPENAPI,
    )
        .into_response()
}

/// A resource the request created, or found already stored (the same
/// record sent before).
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    #[serde(rename = "resourceType")]
    pub resource_type: String,
    pub id: String,
    pub version: String,
    /// `created`, or `existing` when the record was already stored.
    pub status: &'static str,
    /// Where in the input it comes from.
    pub source: String,
}

/// What one transaction did.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub resources: Vec<Stored>,
    pub warnings: Vec<Warning>,
}

/// Locates the faults of a refused transaction in the flat input: a party
/// not found at the field that names it, an entry's fault at the input it
/// comes from (its FHIRPath kept beside). A party not found is a 422: the
/// input names someone the gateway does not know (or the caller may not see).
fn locate(mut e: FhirError, mapped: &Mapped) -> FhirError {
    for issue in &mut e.issues {
        if let Some((_, at)) = mapped
            .lookups
            .iter()
            .find(|(reference, _)| issue.diagnostics.contains(reference.as_str()))
        {
            issue.expression.insert(0, at.clone());
            if e.status == 412 {
                e.status = 422;
                issue.code = "not-found";
            }
            continue;
        }
        let entry = issue
            .expression
            .iter()
            .chain(std::iter::once(&issue.diagnostics))
            .find_map(|x| {
                x.strip_prefix("Bundle.entry[")
                    .and_then(|r| r.split_once(']'))
                    .and_then(|(n, _)| n.parse::<usize>().ok())
            });
        if let Some(at) = entry.and_then(|i| mapped.entries.get(i)) {
            issue.expression.insert(0, at.clone());
        }
    }
    e
}

/// Runs one mapped request as a FHIR transaction.
pub async fn submit(
    store: &Store,
    rules: &SharedRules,
    base: &str,
    caller: &Caller,
    mapped: &Mapped,
) -> Result<Submitted, FhirError> {
    let body = serde_json::to_vec(&mapped.bundle).map_err(|e| FhirError::internal(e.to_string()))?;
    let reply = bundle::process(
        store,
        rules,
        caller,
        BundleInput {
            base,
            body: &body,
            representation: false,
        },
    )
    .await
    .map_err(|e| locate(e, mapped))?;
    let response: Value = reply
        .body
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
        .ok_or_else(|| FhirError::internal("the transaction gave no response Bundle"))?;
    let entries = response
        .get("entry")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut resources = Vec::with_capacity(entries.len());
    let mut warnings = mapped.warnings.clone();
    for (i, e) in entries.iter().enumerate() {
        let status = e
            .pointer("/response/status")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let location = e
            .pointer("/response/location")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut parts = location.split('/');
        let (Some(rtype), Some(id), Some("_history"), Some(version)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let source = mapped.entries.get(i).cloned().unwrap_or_default();
        let created = status.starts_with("201");
        if !created && rtype != "EpisodeOfCare" {
            warnings.push(Warning {
                location: source.clone(),
                message: format!("already stored as {rtype}/{id}: not changed"),
            });
        }
        resources.push(Stored {
            resource_type: rtype.to_string(),
            id: id.to_string(),
            version: version.to_string(),
            status: if created { "created" } else { "existing" },
            source,
        });
    }
    Ok(Submitted { resources, warnings })
}

/// A refused CSV row, as the response lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RowRefusal {
    pub line: u64,
    pub location: String,
    pub code: &'static str,
    pub message: String,
}

/// What a CSV file gave: rows accepted and refused, resources, warnings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CsvReport {
    pub rows: usize,
    pub accepted: usize,
    pub refused: Vec<RowRefusal>,
    pub resources: Vec<Stored>,
    pub warnings: Vec<Warning>,
}

fn refusal(line: u64, p: &Problem) -> RowRefusal {
    RowRefusal {
        line,
        location: p.location.clone(),
        code: p.code,
        message: p.message.clone(),
    }
}

/// Runs the groups of a CSV file, one transaction each; `progress` hears
/// of the rows each group settles. A group whose transaction is refused
/// has each of its rows refused with the reason.
pub async fn run_csv(
    store: &Store,
    rules: &SharedRules,
    base: &str,
    caller: &Caller,
    batch: csv::Batch,
    progress: &(dyn Fn(u64) + Sync),
) -> CsvReport {
    let mut report = CsvReport {
        rows: batch.rows,
        refused: batch.refused.iter().map(|r| refusal(r.line, &r.problem)).collect(),
        ..CsvReport::default()
    };
    progress(batch.refused.len() as u64);
    for group in &batch.groups {
        match submit(store, rules, base, caller, &group.mapped).await {
            Ok(s) => {
                report.accepted += group.lines.len();
                report.resources.extend(s.resources);
                report.warnings.extend(s.warnings);
            }
            Err(e) => {
                let issue = e.issues.first();
                for line in &group.lines {
                    report.refused.push(RowRefusal {
                        line: *line,
                        location: issue
                            .and_then(|i| i.expression.first().cloned())
                            .unwrap_or_else(|| format!("line {line}")),
                        code: issue.map_or("exception", |i| i.code),
                        message: issue.map_or_else(|| e.to_string(), |i| i.diagnostics.clone()),
                    });
                }
            }
        }
        progress(group.lines.len() as u64);
    }
    report.refused.sort_by_key(|r| r.line);
    report
}

// ---------------------------------------------------------------------------
// Handlers

/// The body's kind, from `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Json,
    Csv,
}

fn body_kind(h: &HeaderMap, csv_allowed: bool) -> Result<Body, FhirError> {
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match base.as_str() {
        "application/json" => Ok(Body::Json),
        "text/csv" if csv_allowed => Ok(Body::Csv),
        _ => Err(FhirError::not_supported(
            415,
            format!(
                "a body of type '{base}' is not accepted here (application/json{})",
                if csv_allowed { " or text/csv" } else { "" }
            ),
        )),
    }
}

/// The success body of a JSON request.
fn submitted_json(s: Submitted) -> (u16, Value) {
    let created = s.resources.iter().any(|r| r.status == "created");
    (
        if created { 201 } else { 200 },
        json!({"resources": s.resources, "warnings": s.warnings}),
    )
}

fn csv_json(r: CsvReport) -> Result<(u16, Value), FhirError> {
    if r.accepted == 0 {
        return Err(FhirError {
            status: 422,
            issues: r
                .refused
                .iter()
                .map(|x| Problem::new(x.location.clone(), x.code, x.message.clone()).to_issue())
                .collect(),
        });
    }
    Ok((
        200,
        serde_json::to_value(&r).map_err(|e| FhirError::internal(e.to_string()))?,
    ))
}

type Outcome = Result<(u16, Value), FhirError>;

async fn run_json(s: &AppState, caller: &Caller, mapped: Result<Mapped, Vec<Problem>>) -> Outcome {
    let mapped = mapped.map_err(refuse)?;
    Ok(submitted_json(
        submit(&s.store, &s.rules, &s.base, caller, &mapped).await?,
    ))
}

async fn prescription(s: &AppState, caller: &Caller, body: &[u8]) -> Outcome {
    let input: flat::prescription::PrescriptionInput = from_json(body).map_err(|p| refuse(vec![p]))?;
    run_json(s, caller, flat::prescription::map(&input)).await
}

async fn assessment(s: &AppState, caller: &Caller, kind: Body, body: &[u8]) -> Outcome {
    match kind {
        Body::Json => {
            let input: flat::assessment::AssessmentInput = from_json(body).map_err(|p| refuse(vec![p]))?;
            run_json(s, caller, flat::assessment::map_json(&input)).await
        }
        Body::Csv => {
            let batch = csv::assessments(body).map_err(|p| refuse(vec![p]))?;
            csv_json(run_csv(&s.store, &s.rules, &s.base, caller, batch, &|_| {}).await)
        }
    }
}

async fn attendance(s: &AppState, caller: &Caller, kind: Body, body: &[u8]) -> Outcome {
    match kind {
        Body::Json => {
            let input: flat::attendance::AttendanceInput = from_json(body).map_err(|p| refuse(vec![p]))?;
            run_json(s, caller, flat::attendance::map_json(&input)).await
        }
        Body::Csv => {
            let batch = csv::attendance(body).map_err(|p| refuse(vec![p]))?;
            csv_json(run_csv(&s.store, &s.rules, &s.base, caller, batch, &|_| {}).await)
        }
    }
}

async fn outcome(s: &AppState, caller: &Caller, body: &[u8]) -> Outcome {
    let input: flat::outcome::OutcomeInput = from_json(body).map_err(|p| refuse(vec![p]))?;
    run_json(s, caller, flat::outcome::map(&input)).await
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";

fn idempotency_key(h: &HeaderMap) -> Result<Option<String>, FhirError> {
    let Some(v) = h.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(k.to_string())),
        _ => Err(FhirError::invalid("Idempotency-Key must be 1 to 255 visible ASCII characters").at("Idempotency-Key")),
    }
}

fn respond(status: u16, body: Value, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut resp = (status, Json(body)).into_response();
    if replayed {
        resp.headers_mut().insert(REPLAYED, HeaderValue::from_static("true"));
    }
    resp
}

/// Runs `op` under the request's `Idempotency-Key`, if any. Only
/// successes are recorded: a refused request may be sent again, corrected,
/// under the same key.
async fn idempotent<F>(s: &AppState, caller: &Caller, h: &HeaderMap, what: &str, body: &[u8], op: F) -> Response
where
    F: Future<Output = Outcome>,
{
    let key = match idempotency_key(h) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let Some(key) = key else {
        return match op.await {
            Ok((status, v)) => respond(status, v, false),
            Err(e) => e.into_response(),
        };
    };
    let mut hasher = Sha256::new();
    hasher.update(what.as_bytes());
    hasher.update([0]);
    hasher.update(h.get(header::CONTENT_TYPE).map_or(&b""[..], HeaderValue::as_bytes));
    hasher.update([0]);
    hasher.update(body);
    let hash: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let conflict = || {
        FhirError::conflict(
            "this Idempotency-Key was already used for another request: use a new key for a new request",
        )
        .at("Idempotency-Key")
        .into_response()
    };
    let replay = |rec: IdempotencyRecord| match serde_json::from_str::<Value>(&rec.response) {
        Ok(v) => respond(rec.status, v, true),
        Err(_) => FhirError::internal("a stored idempotent response is unreadable").into_response(),
    };
    match s.store.idempotency_record(&caller.client_id, &key).await {
        Err(e) => return FhirError::from(e).into_response(),
        Ok(Some(rec)) if rec.request_hash == hash => return replay(rec),
        Ok(Some(_)) => return conflict(),
        Ok(None) => {}
    }
    let (status, value) = match op.await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let rec = IdempotencyRecord {
        client: caller.client_id.clone(),
        key,
        request_hash: hash.clone(),
        status,
        response: value.to_string(),
        created: now_micros(),
    };
    // The resources are stored whatever happens next; a retry after a
    // failure here finds them through their business identifiers.
    let response = rec.response.clone();
    match s.store.save_idempotency_record(rec).await {
        // A concurrent request under the same key was recorded first.
        Ok(saved) if saved.request_hash != hash => conflict(),
        Ok(saved) if saved.response != response => replay(saved),
        _ => respond(status, value, false),
    }
}

pub async fn post_prescription(State(s): State<AppState>, caller: Caller, h: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = body_kind(&h, false) {
        return e.into_response();
    }
    idempotent(
        &s,
        &caller,
        &h,
        "prescriptions",
        &body,
        prescription(&s, &caller, &body),
    )
    .await
}

pub async fn post_assessment(State(s): State<AppState>, caller: Caller, h: HeaderMap, body: Bytes) -> Response {
    let kind = match body_kind(&h, true) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    idempotent(
        &s,
        &caller,
        &h,
        "assessments",
        &body,
        assessment(&s, &caller, kind, &body),
    )
    .await
}

pub async fn post_attendance(State(s): State<AppState>, caller: Caller, h: HeaderMap, body: Bytes) -> Response {
    let kind = match body_kind(&h, true) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    idempotent(
        &s,
        &caller,
        &h,
        "attendance",
        &body,
        attendance(&s, &caller, kind, &body),
    )
    .await
}

pub async fn post_outcome(State(s): State<AppState>, caller: Caller, h: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = body_kind(&h, false) {
        return e.into_response();
    }
    idempotent(&s, &caller, &h, "outcomes", &body, outcome(&s, &caller, &body)).await
}

/// Anything else under `/apa/v1`.
pub async fn not_found() -> FhirError {
    FhirError::not_found("no such endpoint of the flat API; see /apa/v1/openapi.json")
}
