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
use crate::fhir::error::Severity;
use crate::fhir::interaction::bundle::{self, Transacted};
use crate::fhir::rules::SharedRules;
use crate::security::Caller;
use crate::store::{IdempotencyRecord, Store, Version};

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
    /// What the gateway did besides (where it routed the referral).
    pub notes: Vec<Warning>,
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
                if at == "$.patient.ins" {
                    issue.diagnostics.push_str(
                        ": a patient new to your organisation is registered or identified by sending their \
                         qualified identity (patient.identity) with the prescription",
                    );
                }
            }
            continue;
        }
        // An element refused for whom it names (the authorship rule): at
        // the field that named that party, when the mapping looked it up.
        let party = issue
            .expression
            .iter()
            .find_map(|x| reference_at(&mapped.bundle, x))
            .and_then(|r| mapped.lookups.iter().find(|(reference, _)| reference == r));
        if let Some((_, at)) = party {
            issue.expression.insert(0, at.clone());
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

/// The `reference` of the element at `Bundle.entry[i].resource.a[j].b` in
/// the mapped Bundle, as the mapping wrote it.
fn reference_at<'b>(bundle: &'b Value, path: &str) -> Option<&'b str> {
    let rest = path.strip_prefix("Bundle.entry[")?;
    let (i, rest) = rest.split_once(']')?;
    let mut v = bundle.get("entry")?.get(i.parse::<usize>().ok()?)?.get("resource")?;
    for segment in rest.strip_prefix(".resource.")?.split('.') {
        v = match segment.split_once('[') {
            Some((name, j)) => v.get(name)?.get(j.strip_suffix(']')?.parse::<usize>().ok()?)?,
            None => v.get(segment)?,
        };
    }
    v.get("reference")?.as_str()
}

/// What the response says of a transaction's outcome: the resources of
/// its entries (created or found), those the gateway added (a routed
/// referral), and the notes of the mapping and of the rules.
fn summarize(done: &Transacted, sources: &[String], mut warnings: Vec<Warning>) -> Submitted {
    let mut resources = Vec::with_capacity(done.replies.len() + done.added.len());
    let mut notes = Vec::new();
    for (i, reply) in done.replies.iter().enumerate() {
        let Some((reply, v)) = reply.as_ref().and_then(|r| Some((r, r.version.as_ref()?))) else {
            continue;
        };
        let source = sources.get(i).cloned().unwrap_or_default();
        let created = reply.status == 201;
        if !created && v.resource_type != "EpisodeOfCare" {
            warnings.push(Warning {
                location: source.clone(),
                message: format!("already stored as {}/{}: not changed", v.resource_type, v.id),
            });
        }
        for issue in &reply.notes {
            let note = Warning {
                location: source.clone(),
                message: issue.diagnostics.clone(),
            };
            match issue.severity {
                Severity::Information => notes.push(note),
                _ => warnings.push(note),
            }
        }
        resources.push(Stored::of(v, if created { "created" } else { "existing" }, source));
    }
    resources.extend(
        done.added
            .iter()
            .map(|v| Stored::of(v, "created", "added by the gateway".into())),
    );
    Submitted {
        resources,
        warnings,
        notes,
    }
}

impl Stored {
    fn of(v: &Version, status: &'static str, source: String) -> Stored {
        Stored {
            resource_type: v.resource_type.clone(),
            id: v.id.clone(),
            version: v.version.to_string(),
            status,
            source,
        }
    }
}

/// Runs one mapped request as a FHIR transaction. Under an
/// `Idempotency-Key`, the response is recorded in the same database
/// transaction: a request is never stored without its record, nor
/// recorded without being stored.
pub async fn submit(
    store: &Store,
    rules: &SharedRules,
    base: &str,
    caller: &Caller,
    mapped: &Mapped,
    keyed: Option<Keyed>,
) -> Result<Submitted, FhirError> {
    let entries = mapped
        .bundle
        .get("entry")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let seal = keyed.map(|k| {
        let sources = mapped.entries.clone();
        let warnings = mapped.warnings.clone();
        bundle::seal(move |tx, done| {
            let (status, value) = submitted_json(summarize(done, &sources, warnings));
            Box::pin(async move {
                if tx.insert_idempotency_record(&k.record(status, &value)).await? {
                    Ok(())
                } else {
                    Err(
                        FhirError::conflict("a concurrent request under this Idempotency-Key was stored first")
                            .at("Idempotency-Key"),
                    )
                }
            })
        })
    });
    let done = bundle::transact(store, rules, caller, base, entries, seal)
        .await
        .map_err(|e| locate(e, mapped))?;
    Ok(summarize(&done, &mapped.entries, mapped.warnings.clone()))
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
        match submit(store, rules, base, caller, &group.mapped, None).await {
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
        json!({"resources": s.resources, "warnings": s.warnings, "notes": s.notes}),
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

/// A request's answer, and whether its Idempotency-Key record was already
/// saved with it.
struct Answer {
    status: u16,
    body: Value,
    recorded: bool,
}

type Outcome = Result<Answer, FhirError>;

async fn run_json(
    s: &AppState,
    caller: &Caller,
    mapped: Result<Mapped, Vec<Problem>>,
    keyed: Option<Keyed>,
) -> Outcome {
    let mapped = mapped.map_err(refuse)?;
    let recorded = keyed.is_some();
    let (status, body) = submitted_json(submit(&s.store, &s.rules, &s.base, caller, &mapped, keyed).await?);
    Ok(Answer { status, body, recorded })
}

/// A CSV file is one transaction per patient's group of rows: its record
/// is saved after them (each group is idempotent on its own, through the
/// source identifiers of its rows).
async fn run_csv_body(s: &AppState, caller: &Caller, batch: Result<csv::Batch, Problem>) -> Outcome {
    let batch = batch.map_err(|p| refuse(vec![p]))?;
    let (status, body) = csv_json(run_csv(&s.store, &s.rules, &s.base, caller, batch, &|_| {}).await)?;
    Ok(Answer {
        status,
        body,
        recorded: false,
    })
}

async fn prescription(s: &AppState, caller: &Caller, body: &[u8], keyed: Option<Keyed>) -> Outcome {
    let input: flat::prescription::PrescriptionInput = from_json(body).map_err(|p| refuse(vec![p]))?;
    run_json(s, caller, flat::prescription::map(&input), keyed).await
}

async fn assessment(s: &AppState, caller: &Caller, kind: Body, body: &[u8], keyed: Option<Keyed>) -> Outcome {
    match kind {
        Body::Json => {
            let input: flat::assessment::AssessmentInput = from_json(body).map_err(|p| refuse(vec![p]))?;
            run_json(s, caller, flat::assessment::map_json(&input), keyed).await
        }
        Body::Csv => run_csv_body(s, caller, csv::assessments(body)).await,
    }
}

async fn attendance(s: &AppState, caller: &Caller, kind: Body, body: &[u8], keyed: Option<Keyed>) -> Outcome {
    match kind {
        Body::Json => {
            let input: flat::attendance::AttendanceInput = from_json(body).map_err(|p| refuse(vec![p]))?;
            run_json(s, caller, flat::attendance::map_json(&input), keyed).await
        }
        Body::Csv => run_csv_body(s, caller, csv::attendance(body)).await,
    }
}

async fn outcome(s: &AppState, caller: &Caller, body: &[u8], keyed: Option<Keyed>) -> Outcome {
    let input: flat::outcome::OutcomeInput = from_json(body).map_err(|p| refuse(vec![p]))?;
    run_json(s, caller, flat::outcome::map(&input), keyed).await
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

/// A request made under an `Idempotency-Key`: whose, and a hash of what.
#[derive(Debug, Clone)]
pub struct Keyed {
    client: String,
    key: String,
    hash: String,
}

impl Keyed {
    fn record(&self, status: u16, body: &Value) -> IdempotencyRecord {
        IdempotencyRecord {
            client: self.client.clone(),
            key: self.key.clone(),
            request_hash: self.hash.clone(),
            status,
            response: body.to_string(),
            created: now_micros(),
        }
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
    F: AsyncFnOnce(Option<Keyed>) -> Outcome,
{
    let key = match idempotency_key(h) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let Some(key) = key else {
        return match op(None).await {
            Ok(a) => respond(a.status, a.body, false),
            Err(e) => e.into_response(),
        };
    };
    let mut hasher = Sha256::new();
    hasher.update(what.as_bytes());
    hasher.update([0]);
    hasher.update(h.get(header::CONTENT_TYPE).map_or(&b""[..], HeaderValue::as_bytes));
    hasher.update([0]);
    hasher.update(body);
    let keyed = Keyed {
        client: caller.client_id.clone(),
        key,
        hash: hasher.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    };
    // The record that stands for the key, if any: replayed, or a 409.
    let settled = |rec: IdempotencyRecord| {
        if rec.request_hash != keyed.hash {
            return FhirError::conflict(
                "this Idempotency-Key was already used for another request: use a new key for a new request",
            )
            .at("Idempotency-Key")
            .into_response();
        }
        match serde_json::from_str::<Value>(&rec.response) {
            Ok(v) => respond(rec.status, v, true),
            Err(_) => FhirError::internal("a stored idempotent response is unreadable").into_response(),
        }
    };
    match s.store.idempotency_record(&keyed.client, &keyed.key).await {
        Err(e) => return FhirError::from(e).into_response(),
        Ok(Some(rec)) => return settled(rec),
        Ok(None) => {}
    }
    match op(Some(keyed.clone())).await {
        Ok(a) if a.recorded => respond(a.status, a.body, false),
        Ok(a) => {
            let rec = keyed.record(a.status, &a.body);
            let response = rec.response.clone();
            match s.store.save_idempotency_record(rec).await {
                Ok(saved) if saved.request_hash == keyed.hash && saved.response == response => {
                    respond(a.status, a.body, false)
                }
                // A concurrent request under the same key was recorded first.
                Ok(saved) => settled(saved),
                Err(e) => FhirError::from(e).into_response(),
            }
        }
        // Refused, perhaps because a concurrent request under the same key
        // committed first: its record then answers.
        Err(e) => match s.store.idempotency_record(&keyed.client, &keyed.key).await {
            Ok(Some(rec)) => settled(rec),
            _ => e.into_response(),
        },
    }
}

pub async fn post_prescription(State(s): State<AppState>, caller: Caller, h: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = body_kind(&h, false) {
        return e.into_response();
    }
    idempotent(&s, &caller, &h, "prescriptions", &body, async |k| {
        prescription(&s, &caller, &body, k).await
    })
    .await
}

pub async fn post_assessment(State(s): State<AppState>, caller: Caller, h: HeaderMap, body: Bytes) -> Response {
    let kind = match body_kind(&h, true) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    idempotent(&s, &caller, &h, "assessments", &body, async |k| {
        assessment(&s, &caller, kind, &body, k).await
    })
    .await
}

pub async fn post_attendance(State(s): State<AppState>, caller: Caller, h: HeaderMap, body: Bytes) -> Response {
    let kind = match body_kind(&h, true) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    idempotent(&s, &caller, &h, "attendance", &body, async |k| {
        attendance(&s, &caller, kind, &body, k).await
    })
    .await
}

pub async fn post_outcome(State(s): State<AppState>, caller: Caller, h: HeaderMap, body: Bytes) -> Response {
    if let Err(e) = body_kind(&h, false) {
        return e.into_response();
    }
    idempotent(&s, &caller, &h, "outcomes", &body, async |k| {
        outcome(&s, &caller, &body, k).await
    })
    .await
}

/// Anything else under `/apa/v1`.
pub async fn not_found() -> FhirError {
    FhirError::not_found("no such endpoint of the flat API; see /apa/v1/openapi.json")
}
