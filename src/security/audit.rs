//! The audit trail: one AuditEvent per interaction, success or failure,
//! refused authentication included, shaped after IHE Basic Audit Log
//! Patterns (BALP) and kept within the ANS "Traçabilité des événements"
//! profile (TDEAuditEvent: one subtype, `period.start`, at most two agents,
//! each with a `who`, `source.observer` a Device).
//!
//! This module knows FHIR, not SQL nor HTTP. The HTTP layer opens an
//! `AuditScope` per request and tells it what it learns (who calls, what
//! was served, the status); the FHIR layer notes each GET entry a Bundle
//! answers, and each write entry of a batch that committed no record of its
//! own (`note_entry`), recorded as the same request sent on its own;
//! the store hands it the versions a write job stores (`store::JobHook`),
//! so that the AuditEvent of a change is written in the same database
//! transaction as the change. Requests that changed nothing (reads,
//! searches, refusals, rolled-back writes) are recorded without making the
//! response wait for the commit (`Store::write_detached`).
//!
//! Shape of an event:
//! - `type` audit-event-type `rest` (or DICOM "User Authentication" / "Login"
//!   for the token endpoint); `subtype` the restful-interaction; `action`
//!   C/R/U/D/E; `period.start` when the request came in, `recorded` when the
//!   event was built; `outcome` 0/4/8 and, on failure, an `outcomeDesc`
//!   without personal data (status, issue code, authentication reason);
//! - `agent[0]`: the client (`who.identifier` = its client id in the
//!   namespace of the gateway's token issuer, `requestor`, `network` = its
//!   IP address, `altId` = the professional's idNatPs when a professional
//!   acts through it); `agent[1]`: the gateway. Never more than two;
//! - `source.observer`: the gateway as a Device (identifier = its base URL);
//! - `entity`: the resource(s) acted on (`Type/id/_history/v`), the patient
//!   concerned (role Patient: BALP "with Patient"), the query of a search
//!   (base64 in `entity.query`, as BALP records it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use serde::{Deserialize, Serialize};

use crate::clock::now_micros;
use crate::fhir::error::FhirError;
use crate::fhir::search::extract::Extractor;
use crate::fhir::search::model::IndexValue;
use crate::fhir::search::registry::Registry;
use crate::fhir::search::values::format_instant;
use crate::store::{AuditRecord, Deferred, Found, JobHook, Lookup, Method, Version, Write};

use super::Caller;

/// The resource type of the audit trail.
pub const AUDIT_EVENT: &str = "AuditEvent";

const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const PARTICIPANT: &str = "http://terminology.hl7.org/CodeSystem/provenance-participant-type";
const URI: &str = "urn:ietf:rfc:3986";

/// The interaction of the token endpoint (not a FHIR RESTful one).
pub const LOGIN: &str = "login";

/// The gateway, as it appears in its own audit trail.
#[derive(Debug, Clone)]
pub struct Gateway {
    /// The FHIR base URL: identifies the gateway (agent and observer).
    pub base: String,
    /// The token issuer: the namespace of the client ids.
    pub issuer: String,
}

impl Gateway {
    pub fn new(base: &str) -> Gateway {
        let base = base.trim_end_matches('/').to_string();
        Gateway {
            issuer: base.trim_end_matches("/fhir").to_string(),
            base,
        }
    }
}

/// Who called, as far as the gateway knows.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub id: Option<String>,
    pub organization: Option<String>,
    /// False when `id` is only what a refused credential claimed.
    pub verified: bool,
    /// The health professional acting through the client (idNatPs), when
    /// the token is one of the external OpenID Connect issuer's.
    pub professional: Option<String>,
}

impl From<&Caller> for Client {
    fn from(c: &Caller) -> Self {
        Client {
            id: Some(c.client_id.clone()),
            organization: c.organization.clone(),
            verified: true,
            professional: c.professional.clone(),
        }
    }
}

/// What the HTTP layer knows of a request before it runs.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// A restful-interaction code (`read`, `search-type`, …) or `LOGIN`.
    pub interaction: &'static str,
    pub resource_type: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    /// The raw query string, recorded (base64) for searches and history;
    /// the condition of a conditional update or delete.
    pub query: Option<String>,
    /// The condition of a conditional create (`If-None-Exist`).
    pub condition: Option<String>,
    /// The client's IP address.
    pub network: Option<String>,
    /// When the request came in (µs since the epoch).
    pub started: i64,
}

/// The resource a successful read served (a response extension).
#[derive(Debug, Clone)]
pub struct Served {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    /// The patients it concerns, when the store read them with it.
    pub patients: Option<Vec<String>>,
    /// The stored JSON, when the patients are not known: they are looked
    /// up in it off the request's path, when the record is built.
    pub body: Option<Bytes>,
}

impl Served {
    /// What serving `v` gives the record: its version, and its patients as
    /// the store read them with it, else its body to find them in (a cheap
    /// clone of the bytes, kept only then).
    pub fn of(v: &Version) -> Served {
        Served {
            resource_type: v.resource_type.clone(),
            id: v.id.clone(),
            version: v.version,
            patients: v.patients.clone(),
            body: if v.patients.is_some() { None } else { v.body.clone() },
        }
    }
}

/// The OperationOutcome issue code of an error response (a response
/// extension), and the Bundle entry at fault when there is one: says why
/// and where without repeating the diagnostics, which may quote what the
/// client sent.
#[derive(Debug, Clone, Copy)]
pub struct IssueCode(pub &'static str, pub Option<usize>);

impl IssueCode {
    /// The code of an error's first issue, the one its status stands for,
    /// and the entry its location names (`Bundle.entry[i]…`).
    pub fn of(e: &FhirError) -> Option<IssueCode> {
        e.issues.first().map(|i| {
            let entry = i.expression.first().and_then(|x| {
                let (n, _) = x.strip_prefix("Bundle.entry[")?.split_once(']')?;
                n.parse().ok()
            });
            IssueCode(i.code, entry)
        })
    }
}

/// How a request, or a GET entry of a Bundle, ended: what its record says
/// of the outcome and of what was served.
struct Ended {
    status: u16,
    served: Option<Served>,
    issue: Option<IssueCode>,
    /// The resource a write that stored nothing sent (`note_body`): the
    /// patients it is about are named from it.
    body: Option<Bytes>,
}

/// An entry of a Bundle, recorded as the same request sent on its own.
struct NotedEntry {
    request: RequestInfo,
    ended: Ended,
}

/// A version a write job stored.
#[derive(Debug, Clone)]
struct Stored {
    what: String,
    method: Method,
    patients: Vec<String>,
}

impl Stored {
    fn of(w: &Write) -> Stored {
        let mut patients = Vec::new();
        if w.resource_type == "Patient" {
            patients.push(w.id.clone());
        }
        for (code, v) in &w.index {
            if code == "patient"
                && let IndexValue::Reference {
                    rtype: Some(t),
                    id: Some(id),
                    ..
                } = v
                && t == "Patient"
                && !patients.contains(id)
            {
                patients.push(id.clone());
            }
        }
        Stored {
            what: versioned(&w.resource_type, &w.id, w.version),
            method: w.method,
            patients,
        }
    }
}

struct State {
    request: RequestInfo,
    client: Client,
    /// Why authentication was refused (no personal data).
    refusal: Option<String>,
    /// What the current write job stored.
    job: Vec<Stored>,
    /// The patients the current write job identified by their national
    /// identity (`JobHook::identified`).
    identified: Vec<String>,
    /// The entries of a batch or transaction recorded apart from the
    /// request: its GET entries, a batch's writes that committed no record.
    entries: Vec<NotedEntry>,
    /// The resource a create or update sent (`note_body`).
    body: Option<Bytes>,
}

/// The audit of one request. The HTTP layer opens it (`run_in`), the
/// authentication layer names the client, the store's writer reports the
/// versions written, and the HTTP layer closes it with the status.
pub struct AuditScope {
    gateway: Arc<Gateway>,
    state: Mutex<State>,
    /// How many of this request's write jobs committed an AuditEvent with
    /// their change: a batch runs one job per write entry, each of which
    /// must know whether its own did (`CommitMark`).
    commits: AtomicU64,
}

tokio::task_local! {
    static CURRENT: Arc<AuditScope>;
}

impl AuditScope {
    pub fn new(gateway: Arc<Gateway>, request: RequestInfo) -> Arc<AuditScope> {
        Arc::new(AuditScope {
            gateway,
            state: Mutex::new(State {
                request,
                client: Client::default(),
                refusal: None,
                job: Vec::new(),
                identified: Vec::new(),
                entries: Vec::new(),
                body: None,
            }),
            commits: AtomicU64::new(0),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not stop auditing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` (the rest of the request) with this scope current, and
    /// with its write jobs carrying the audit record.
    pub async fn run_in<F: Future>(self: &Arc<Self>, f: F) -> F::Output {
        let hook: Arc<dyn JobHook> = self.clone();
        CURRENT.scope(self.clone(), crate::store::with_job_hook(hook, f)).await
    }

    /// Builds the records of the request once its response is known: its
    /// own, unless its write already committed it, and one per entry of its
    /// Bundle noted apart (`note_entry`). The returned closure does the work
    /// (JSON, index values) where it runs: off the request's path. Called
    /// once, when the request ends.
    pub fn finish(&self, status: u16, served: Option<Served>, issue: Option<IssueCode>) -> Option<Deferred> {
        let mut st = self.state();
        // A write commits the request's record with it; a batch's write
        // entries commit theirs, never the batch's.
        let own = self.commits.load(Ordering::Acquire) == 0 || st.request.interaction == "batch";
        let entries = std::mem::take(&mut st.entries);
        if !own && entries.is_empty() {
            return None;
        }
        // Taken, not cloned: the request has ended, nothing reads them after.
        let gateway = self.gateway.clone();
        let request = std::mem::take(&mut st.request);
        let client = std::mem::take(&mut st.client);
        let refusal = st.refusal.take();
        // Only a write that stored nothing is named from what it sent; one
        // that did, from what it stored (`JobHook`).
        let body = st.body.take().filter(|_| own);
        let ended = Ended {
            status,
            served,
            issue,
            body,
        };
        let mut lookups = Vec::new();
        if own {
            lookups.extend(lookups_of(&request, &ended));
        }
        for e in &entries {
            lookups.extend(lookups_of(&e.request, &e.ended));
        }
        Some(Deferred::after(lookups, move |found| {
            let mut out = Vec::new();
            if own {
                out = record_of(&gateway, &client, &request, refusal.as_deref(), ended, found);
            }
            for e in entries {
                // The refusal is the request's: an entry runs only once the
                // client is authenticated.
                out.extend(record_of(&gateway, &client, &e.request, None, e.ended, found));
            }
            out
        }))
    }
}

/// The patient column of an event whose patient the gateway looked for,
/// whatever the caller may see, and did not find (an INS held by nobody, a
/// refused read of a resource that is not stored): not a patient (no id is
/// empty), it keeps the event from organisations as an event about a
/// patient they are not granted would be. Otherwise whether an event about
/// their own request shows would tell them whether the INS, or the
/// resource, exists. Never rendered.
pub const NOBODY_FOUND: &str = "";

/// At most this many identifiers of one request are looked up.
const MAX_IDENTIFIERS: usize = 8;

/// The condition a request's patients may be looked up by, and the type it
/// applies to: a search's query, a conditional update's or delete's, a
/// conditional create's `If-None-Exist`.
fn condition_of(request: &RequestInfo) -> Option<&str> {
    if is_query(request.interaction) {
        return request.query.as_deref();
    }
    match request.interaction {
        "create" => request.condition.as_deref(),
        "update" | "patch" | "delete" if request.id.is_none() => request.query.as_deref(),
        _ => None,
    }
}

/// The identifiers a Patient condition names (`identifier=system|value`,
/// several values OR-ed): a patient found by INS is named by id.
fn identifiers_in(resource_type: &str, condition: &str) -> Vec<Lookup> {
    if resource_type != "Patient" {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (k, v) in form_urlencoded::parse(condition.as_bytes()) {
        if k != "identifier" {
            continue;
        }
        for one in v.split(',') {
            if let Some((system, value)) = one.split_once('|')
                && !system.is_empty()
                && !value.is_empty()
                && out.len() < MAX_IDENTIFIERS
            {
                let l = Lookup::Identifier {
                    system: system.to_string(),
                    value: value.to_string(),
                };
                if !out.contains(&l) {
                    out.push(l);
                }
            }
        }
    }
    out
}

/// What the record of an interaction needs looked up: the compartment of a
/// resource it named but was not served (refused, missing, a history), the
/// holders of the identifiers its condition names. Cheap: string work on
/// what the request said, no parsing of bodies.
fn lookups_of(request: &RequestInfo, ended: &Ended) -> Vec<Lookup> {
    let mut out = Vec::new();
    let Some(t) = request.resource_type.as_deref() else {
        return out;
    };
    if ended.served.is_none()
        && t != "Patient"
        && let Some(id) = &request.id
    {
        out.push(Lookup::Compartment {
            resource_type: t.to_string(),
            id: id.clone(),
        });
    }
    if let Some(c) = condition_of(request) {
        out.extend(identifiers_in(t, c));
    }
    out
}

/// The records of one interaction, the request itself or an entry of its
/// Bundle, once it ended.
fn record_of(
    gateway: &Gateway,
    client: &Client,
    request: &RequestInfo,
    refusal: Option<&str>,
    ended: Ended,
    found: &Found,
) -> Vec<AuditRecord> {
    let lookups = lookups_of(request, &ended);
    let Ended {
        status,
        served,
        issue,
        body,
    } = ended;
    let mut entities = Vec::new();
    let mut patients = Vec::new();
    let mut add = |p: String| {
        if !patients.contains(&p) {
            patients.push(p);
        }
    };
    match &served {
        Some(s) => {
            let known = match &s.patients {
                Some(known) => known.clone(),
                None => patients_of(&s.resource_type, &s.id, s.body.as_deref()),
            };
            entities.push(versioned(&s.resource_type, &s.id, s.version));
            known.into_iter().for_each(&mut add);
        }
        None => {
            if let (Some(t), Some(id)) = (&request.resource_type, &request.id) {
                let what = match &request.version {
                    Some(v) => format!("{t}/{id}/_history/{v}"),
                    None => format!("{t}/{id}"),
                };
                entities.push(what);
                // Named whether or not the caller was shown it: the path
                // says which patient was asked for.
                if t == "Patient" {
                    add(id.clone());
                }
            }
            // A write that stored nothing concerns whom its resource is
            // about, as a stored one would (`Stored::of`).
            if let (Some(t), Some(b)) = (&request.resource_type, &body)
                && t != "Patient"
            {
                patients_of(t, "", Some(b)).into_iter().for_each(&mut add);
            }
        }
    }
    let condition = condition_of(request);
    if let (Some(t), Some(c)) = (request.resource_type.as_deref(), condition)
        && let Some(p) = queried_patient(t, c)
    {
        add(p);
    }
    // What was looked up whatever the caller may see; an identifier that
    // names nobody leaves its query on the record.
    let mut unresolved = false;
    for l in &lookups {
        let holders = found.get(l).map(Vec::as_slice).unwrap_or_default();
        if holders.is_empty() && matches!(l, Lookup::Identifier { .. }) {
            unresolved = true;
        }
        holders.iter().cloned().for_each(&mut add);
    }
    if patients.is_empty() && !lookups.is_empty() {
        patients.push(NOBODY_FOUND.to_string());
    }
    let mut outcome_desc = None;
    if status >= 400 {
        let mut d = format!("HTTP {status}");
        if let Some(IssueCode(code, entry)) = issue {
            d.push_str(&format!(" ({code})"));
            // The only `security` issue is a refused identification: a
            // probe of someone's identity, which auditors look for.
            if code == "security" {
                d.push_str(" security alert (DCM 110113): patient identification refused");
            }
            if let Some(i) = entry {
                d.push_str(&format!(" at Bundle.entry[{i}]"));
            }
        }
        if let Some(r) = refusal {
            d.push_str(&format!(": {r}"));
        }
        outcome_desc = Some(d);
    }
    let query = if is_query(request.interaction) {
        Some(request.query.clone().unwrap_or_default())
    } else if unresolved {
        condition.map(str::to_string)
    } else {
        None
    };
    records(
        gateway,
        request,
        request.interaction,
        client,
        outcome_of(status),
        outcome_desc,
        entities,
        query,
        patients,
    )
}

impl JobHook for AuditScope {
    fn stored(&self, writes: &[Write]) {
        let mut st = self.state();
        st.job
            .extend(writes.iter().filter(|w| w.resource_type != AUDIT_EVENT).map(Stored::of));
    }

    fn finish(&self, ok: bool) -> Vec<AuditRecord> {
        let mut st = self.state();
        let job = std::mem::take(&mut st.job);
        let identified = std::mem::take(&mut st.identified);
        if !ok || job.is_empty() {
            return Vec::new();
        }
        // A batch entry is recorded as the interaction it is.
        let subtype = match st.request.interaction {
            "batch" => job_interaction(&job),
            other => other,
        };
        let mut patients: Vec<String> = Vec::new();
        for p in job.iter().flat_map(|s| s.patients.iter()).chain(&identified) {
            if !patients.contains(p) {
                patients.push(p.clone());
            }
        }
        let recs = records(
            &self.gateway,
            &st.request,
            subtype,
            &st.client,
            "0",
            None,
            job.iter().map(|s| s.what.clone()).collect(),
            None,
            patients,
        );
        recs.into_iter().map(|r| mark_identified(r, &identified)).collect()
    }

    fn committed(&self) {
        self.commits.fetch_add(1, Ordering::AcqRel);
    }

    fn identified(&self, refs: &[String]) {
        let mut st = self.state();
        for p in refs.iter().filter_map(|r| r.strip_prefix("Patient/")) {
            if !st.identified.iter().any(|x| x == p) {
                st.identified.push(p.to_string());
            }
        }
    }
}

/// Says, in the record of the event about a patient the job identified,
/// that the caller identified them: the patient's other organisations read
/// it in the patient's trail (`AuditEvent?patient=`).
fn mark_identified(mut rec: AuditRecord, identified: &[String]) -> AuditRecord {
    if rec.patient.as_ref().is_some_and(|p| identified.contains(p))
        && let Ok(mut d) = serde_json::from_slice::<Detail>(&rec.detail)
    {
        d.identified = true;
        if let Ok(b) = serde_json::to_vec(&d) {
            rec.detail = Bytes::from(b);
        }
    }
    rec
}

fn job_interaction(job: &[Stored]) -> &'static str {
    match job.first().map(|s| s.method) {
        Some(Method::Create) => "create",
        Some(Method::Delete) => "delete",
        _ => "update",
    }
}

/// Names the client of the current request (authentication succeeded).
pub fn note_caller(caller: &Caller) {
    note_client(Client::from(caller));
}

pub fn note_client(client: Client) {
    let _ = CURRENT.try_with(|s| s.state().client = client);
}

/// Records a refused authentication: the client id the credential claimed,
/// if any (not verified), and why it was refused.
pub fn note_refusal(claimed_client: Option<String>, reason: impl Into<String>) {
    let reason = reason.into();
    let _ = CURRENT.try_with(|s| {
        let mut st = s.state();
        st.client = Client {
            id: claimed_client,
            ..Client::default()
        };
        st.refusal = Some(reason);
    });
}

/// Adds the parameters of a `POST _search` form body to the query the
/// event records: the criteria, and the patient they name, are those of
/// the search whichever way they came.
pub fn note_search_form(form: &str) {
    if form.is_empty() {
        return;
    }
    let _ = CURRENT.try_with(|s| {
        let mut st = s.state();
        st.request.query = Some(match st.request.query.take().filter(|q| !q.is_empty()) {
            Some(q) => format!("{q}&{form}"),
            None => form.to_string(),
        });
    });
}

/// Keeps the resource a create or update sends (a cheap clone of the
/// bytes), parsed only if the write stores nothing: a refused write then
/// names whom it was about, as a stored one does.
pub fn note_body(body: &Bytes) {
    let _ = CURRENT.try_with(|s| {
        let mut st = s.state();
        if matches!(st.request.interaction, "create" | "update") {
            st.body = Some(body.clone());
        }
    });
}

/// Corrects the interaction once the request is understood (a Bundle POST
/// is a batch or a transaction).
pub fn note_interaction(interaction: &'static str) {
    let _ = CURRENT.try_with(|s| s.state().request.interaction = interaction);
}

/// Records an entry of a batch or transaction (`interaction` read, vread,
/// search-type, create, update, delete…; `path` and `query` its URL relative
/// to the base), as the same request sent on its own would be, with the
/// Bundle's client, network address and start: a patient read through a
/// Bundle is in their trail like any other read, and a batch write that
/// failed says which resource it was and why, as a failed write alone does.
/// Not for an entry whose job committed its record (`CommitMark`).
pub fn note_entry(
    interaction: &'static str,
    path: &str,
    query: Option<&str>,
    status: u16,
    served: Option<Served>,
    issue: Option<IssueCode>,
) {
    let (resource_type, id, version) = path_names(path);
    let _ = CURRENT.try_with(|s| {
        let mut st = s.state();
        let request = RequestInfo {
            interaction,
            resource_type,
            id,
            version,
            query: query.map(str::to_string),
            condition: None,
            network: st.request.network.clone(),
            started: st.request.started,
        };
        st.entries.push(NotedEntry {
            request,
            ended: Ended {
                status,
                served,
                issue,
                body: None,
            },
        });
    });
}

/// Where the current request's committed records stand. Taken before a
/// batch write entry runs, it tells whether the entry's own job committed
/// its AuditEvent with the change (`committed_since`): if not (the entry
/// failed, or changed nothing), the entry is noted apart (`note_entry`),
/// and it is never recorded twice. Entries run one after the other, so a
/// commit after the mark is the entry's.
#[derive(Debug, Clone, Copy)]
pub struct CommitMark(u64);

impl CommitMark {
    pub fn now() -> CommitMark {
        CommitMark(CURRENT.try_with(|s| s.commits.load(Ordering::Acquire)).unwrap_or(0))
    }

    /// Has a write job of the request committed its record since the mark?
    pub fn committed_since(self) -> bool {
        CommitMark::now().0 > self.0
    }
}

/// What a FHIR REST path relative to the base names, as an event records
/// it: `(type, id, version)`. The type only when it is one; an id only
/// after a type, never an `_` segment (`_history`, `_search`); a version
/// only in `Type/id/_history/v`. Requests and the GET entries of Bundles
/// read their paths with it, so that both are recorded alike.
pub fn path_names(path: &str) -> (Option<String>, Option<String>, Option<String>) {
    let segs: Vec<&str> = path.split('/').filter(|x| !x.is_empty()).collect();
    let resource_type = segs
        .first()
        .filter(|t| Registry::r4().is_resource_type(t))
        .map(|t| t.to_string());
    let id = segs
        .get(1)
        .filter(|i| resource_type.is_some() && !i.starts_with('_'))
        .map(|i| i.to_string());
    let version = match (segs.get(2), segs.get(3)) {
        (Some(&"_history"), Some(v)) if id.is_some() => Some(v.to_string()),
        _ => None,
    };
    (resource_type, id, version)
}

fn outcome_of(status: u16) -> &'static str {
    match status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    }
}

fn is_query(interaction: &str) -> bool {
    interaction.starts_with("search") || interaction.starts_with("history")
}

/// BALP actions: create C, read R, update U, delete D, search and the rest E.
fn action_of(interaction: &str) -> &'static str {
    match interaction {
        "create" => "C",
        "read" | "vread" | "history-instance" => "R",
        "update" | "patch" => "U",
        "delete" => "D",
        _ => "E",
    }
}

/// Codings carry no display: they are written for every request, and
/// system and code say it all.
fn coding(system: &str, code: &str, _display: &str) -> Value {
    json!({"system": system, "code": code})
}

/// The agent types BALP gives the client and the server: the side data
/// flows from is the "Source Role ID" (a read sends data to the client; a
/// query, by convention, flows from the client); a delete is done by an
/// application on the server as custodian.
fn agent_types(interaction: &str) -> (Value, Value) {
    let source = coding(DCM, "110153", "Source Role ID");
    let destination = coding(DCM, "110152", "Destination Role ID");
    match interaction {
        "read" | "vread" | "history-instance" => (destination, source),
        "delete" => (
            coding(DCM, "110150", "Application"),
            coding(PARTICIPANT, "custodian", "Custodian"),
        ),
        _ => (source, destination),
    }
}

fn data_entity(what: &str) -> Value {
    json!({
        "what": {"reference": what},
        "type": coding(ENTITY_TYPE, "2", "System Object"),
        "role": coding(OBJECT_ROLE, "4", "Domain Resource"),
    })
}

fn query_entity(query: &str) -> Value {
    json!({
        "type": coding(ENTITY_TYPE, "2", "System Object"),
        "role": coding(OBJECT_ROLE, "24", "Query"),
        "query": base64::engine::general_purpose::STANDARD.encode(query),
    })
}

fn patient_entity(id: &str) -> Value {
    json!({
        "what": {"reference": format!("Patient/{id}")},
        "type": coding(ENTITY_TYPE, "1", "Person"),
        "role": coding(OBJECT_ROLE, "1", "Patient"),
    })
}

/// The patients a resource concerns: itself for a Patient, else the
/// values of its `patient` search parameter.
fn patients_of(resource_type: &str, id: &str, body: Option<&[u8]>) -> Vec<String> {
    if resource_type == "Patient" {
        return vec![id.to_string()];
    }
    let Some(json) = body.and_then(|b| serde_json::from_slice::<Value>(b).ok()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for v in Extractor::r4().extract_param(resource_type, "patient", &json) {
        if let IndexValue::Reference {
            rtype: Some(t),
            id: Some(id),
            ..
        } = v
            && t == "Patient"
            && !out.contains(&id)
        {
            out.push(id);
        }
    }
    out
}

/// `Type/id/_history/v`, built without the formatting machinery: once
/// per record, on the trail's thread.
fn versioned(resource_type: &str, id: &str, version: i64) -> String {
    let version = version.to_string();
    let mut s = String::with_capacity(resource_type.len() + id.len() + version.len() + 11);
    for part in [resource_type, "/", id, "/_history/", &version] {
        s.push_str(part);
    }
    s
}

/// The one patient a search is about, when its query names one
/// (`patient=123`, `subject=Patient/123`, `Patient?_id=123`).
fn queried_patient(resource_type: &str, query: &str) -> Option<String> {
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if v.contains(',') {
            continue;
        }
        let id = match (resource_type, k.as_ref()) {
            ("Patient", "_id") => Some(v.as_ref()),
            (_, "patient" | "patient:Patient") => Some(v.strip_prefix("Patient/").unwrap_or(&v)),
            (_, "subject" | "subject:Patient") => v.strip_prefix("Patient/"),
            _ => None,
        };
        if let Some(id) = id.filter(|i| crate::fhir::resource::valid_id(i)) {
            return Some(id.to_string());
        }
    }
    None
}

/// What an event's row keeps besides the columns it is searched by
/// (`store::AuditRecord`): enough to render the AuditEvent later, as it was
/// recorded, even if the gateway's address changes since.
#[derive(Debug, Serialize, Deserialize)]
struct Detail {
    /// The token issuer (namespace of client ids) and the FHIR base URL.
    issuer: String,
    base: String,
    /// When the request came in (µs).
    started: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    organization: Option<String>,
    verified: bool,
    /// The professional acting through the client (idNatPs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    professional: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outcome_desc: Option<String>,
    /// The resources acted on, `Type/id/_history/v` when the version is known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    entities: Vec<String>,
    /// The caller identified the record's patient by their national
    /// identity (INS and traits) in this event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    identified: bool,
    /// The query string of a search or history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    query: Option<String>,
}

/// The records of one event: one per patient it concerns (as IHE BALP
/// has it, so that each patient's trail is a plain index lookup), or one
/// when it concerns none.
#[allow(clippy::too_many_arguments)]
fn records(
    gateway: &Gateway,
    request: &RequestInfo,
    subtype: &str,
    client: &Client,
    outcome: &str,
    outcome_desc: Option<String>,
    entities: Vec<String>,
    query: Option<String>,
    mut patients: Vec<String>,
) -> Vec<AuditRecord> {
    let recorded = now_micros();
    // The entity index holds references without their version.
    let mut refs: Vec<String> = Vec::new();
    for e in &entities {
        let r = e.split("/_history/").next().unwrap_or(e);
        if !refs.iter().any(|x| x == r) {
            refs.push(r.to_string());
        }
    }
    // A Patient the event acts on is a patient it concerns: `patient=x`
    // then finds every event `entity=Patient/x` finds, and the other way.
    for r in &refs {
        if let Some(p) = r.strip_prefix("Patient/")
            && !patients.iter().any(|x| x == p)
        {
            patients.push(p.to_string());
        }
    }
    if patients.len() > 1 {
        patients.retain(|p| p != NOBODY_FOUND);
    }
    // The Patients are found through the patient column, each in its own
    // record: indexed as entities too, one event's record about y would
    // also answer `entity=Patient/x`, which `patient=x` finds once. One
    // index row less per event (every read of a Patient) besides.
    let indexed: Vec<String> = refs
        .iter()
        .filter(|r| {
            r.strip_prefix("Patient/")
                .is_none_or(|p| !patients.iter().any(|x| x == p))
        })
        .cloned()
        .collect();
    let detail = Detail {
        issuer: gateway.issuer.clone(),
        base: gateway.base.clone(),
        started: request.started,
        organization: client.organization.clone(),
        verified: client.verified,
        professional: client.professional.clone(),
        outcome_desc,
        entities,
        identified: false,
        query,
    };
    let detail = Bytes::from(serde_json::to_vec(&detail).unwrap_or_default());
    let one = |patient: Option<String>| AuditRecord {
        // Encoded without the formatting machinery: once per record.
        id: uuid::Uuid::now_v7()
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .to_owned(),
        recorded,
        client: client.id.clone(),
        entities: indexed.clone(),
        patient,
        subtype: subtype.to_string(),
        action: action_of(subtype).to_string(),
        outcome: outcome.to_string(),
        network: request.network.clone(),
        detail: detail.clone(),
    };
    if patients.is_empty() {
        vec![one(None)]
    } else {
        patients.into_iter().map(|p| one(Some(p))).collect()
    }
}

/// The AuditEvent a record stands for, as JSON bytes (`None` if its detail
/// cannot be read).
pub fn render(rec: &AuditRecord) -> Option<Bytes> {
    let d: Detail = serde_json::from_slice(&rec.detail).ok()?;
    let (event_type, subtype) = if rec.subtype == LOGIN {
        (
            coding(DCM, "110114", "User Authentication"),
            coding(DCM, "110122", "Login"),
        )
    } else {
        (
            coding(EVENT_TYPE, "rest", "Restful Operation"),
            coding(INTERACTION, &rec.subtype, &rec.subtype),
        )
    };
    let (client_type, server_type) = agent_types(&rec.subtype);
    let mut who = Map::new();
    if let Some(id) = &rec.client {
        who.insert("identifier".into(), json!({"system": d.issuer, "value": id}));
    }
    let display = match (&rec.client, d.verified, &d.organization) {
        (None, _, _) => "unidentified client".to_string(),
        (Some(_), false, _) => "client id claimed by a refused credential (not verified)".to_string(),
        (Some(id), true, Some(org)) => format!("client {id} of organization {org}"),
        (Some(id), true, None) => format!("client {id}"),
    };
    let display = match &d.professional {
        Some(p) => format!("professional {p} (idNatPs) through {display}"),
        None => display,
    };
    who.insert("display".into(), Value::String(display));
    let mut client = json!({
        "type": {"coding": [client_type]},
        "who": who,
        "requestor": true,
    });
    // The human behind the client, as the identity provider knows them
    // (`altId`: "a user identifier from the authentication system"): the
    // event keeps its two agents.
    if let (Some(p), Some(o)) = (&d.professional, client.as_object_mut()) {
        o.insert("altId".into(), Value::String(p.clone()));
    }
    if let (Some(addr), Some(o)) = (&rec.network, client.as_object_mut()) {
        o.insert("network".into(), json!({"address": addr, "type": "2"}));
    }
    let server = json!({
        "type": {"coding": [server_type]},
        "who": {"type": "Device", "display": d.base},
        "requestor": false,
    });
    let mut entity: Vec<Value> = d.entities.iter().map(|e| data_entity(e)).collect();
    if let Some(q) = &d.query {
        entity.push(query_entity(q));
    }
    if let Some(p) = rec.patient.as_deref().filter(|p| *p != NOBODY_FOUND) {
        let mut e = patient_entity(p);
        if d.identified
            && let Some(o) = e.as_object_mut()
        {
            o.insert(
                "description".into(),
                json!("identified by INS: the client's organisation sent the patient's INS and all the identity traits, and joined their care"),
            );
        }
        entity.push(e);
    }
    let mut ev = Map::new();
    ev.insert("resourceType".into(), json!(AUDIT_EVENT));
    ev.insert("id".into(), json!(rec.id));
    ev.insert(
        "meta".into(),
        json!({"versionId": "1", "lastUpdated": format_instant(rec.recorded)}),
    );
    ev.insert("type".into(), event_type);
    // A request to no known endpoint is no restful interaction.
    if rec.subtype != "other" {
        ev.insert("subtype".into(), json!([subtype]));
    }
    ev.insert("action".into(), json!(rec.action));
    ev.insert(
        "period".into(),
        json!({"start": format_instant(d.started.min(rec.recorded))}),
    );
    ev.insert("recorded".into(), json!(format_instant(rec.recorded)));
    ev.insert("outcome".into(), json!(rec.outcome));
    if let Some(desc) = d.outcome_desc {
        ev.insert("outcomeDesc".into(), Value::String(desc));
    }
    ev.insert("agent".into(), json!([client, server]));
    ev.insert(
        "source".into(),
        json!({
            "observer": {
                "type": "Device",
                "identifier": {"system": URI, "value": d.base},
                "display": "apa-gateway",
            },
            "type": [coding(SOURCE_TYPE, "4", "Application Server")],
        }),
    );
    if !entity.is_empty() {
        ev.insert("entity".into(), Value::Array(entity));
    }
    serde_json::to_vec(&Value::Object(ev)).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_records(patients: Vec<String>) -> Vec<AuditRecord> {
        let gw = Gateway::new("https://gw.example/fhir");
        let req = RequestInfo {
            interaction: "read",
            resource_type: Some("Observation".into()),
            id: Some("o1".into()),
            network: Some("10.0.0.7".into()),
            started: 1_700_000_000_000_000,
            ..Default::default()
        };
        let client = Client {
            id: Some("mss-1".into()),
            organization: Some("org-1".into()),
            verified: true,
            professional: None,
        };
        records(
            &gw,
            &req,
            "read",
            &client,
            "0",
            None,
            vec!["Observation/o1/_history/2".into()],
            None,
            patients,
        )
    }

    fn read_event() -> Value {
        let recs = read_records(vec!["p1".into()]);
        let bytes = render(&recs[0]).unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[test]
    fn a_read_is_a_balp_read_with_patient_and_fits_the_ans_profile() {
        let e = read_event();
        assert_eq!(e["type"]["code"], "rest");
        assert_eq!(e["subtype"].as_array().map(Vec::len), Some(1));
        assert_eq!(e["subtype"][0]["code"], "read");
        assert_eq!(e["action"], "R");
        assert_eq!(e["outcome"], "0");
        assert!(e["period"]["start"].is_string());
        let agents = e["agent"].as_array().cloned().unwrap_or_default();
        assert_eq!(agents.len(), 2);
        assert!(agents.iter().all(|a| a["who"].is_object()));
        assert_eq!(agents[0]["who"]["identifier"]["value"], "mss-1");
        assert_eq!(agents[0]["requestor"], true);
        assert_eq!(agents[0]["network"]["address"], "10.0.0.7");
        assert_eq!(agents[0]["type"]["coding"][0]["code"], "110152");
        assert_eq!(e["source"]["observer"]["type"], "Device");
        assert_eq!(e["entity"][0]["what"]["reference"], "Observation/o1/_history/2");
        assert_eq!(e["entity"][1]["what"]["reference"], "Patient/p1");
        assert_eq!(e["entity"][1]["role"]["code"], "1");
    }

    #[test]
    #[ignore = "a measurement: cargo test --release --lib -- --ignored --nocapture building_an_event_costs"]
    fn building_an_event_costs() {
        let n: u32 = 20_000;
        let t = std::time::Instant::now();
        let mut bytes = 0usize;
        for _ in 0..n {
            bytes += std::hint::black_box(read_records(vec!["p1".into()]))[0].detail.len();
        }
        let built = t.elapsed();
        let recs = read_records(vec!["p1".into()]);
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(render(&recs[0]));
        }
        println!(
            "per event: record {:?} ({} bytes of detail), rendering it {:?}",
            built / n,
            bytes / n as usize,
            t.elapsed() / n
        );
    }

    #[test]
    fn an_event_is_one_record_per_patient_with_versionless_entities() {
        let none = read_records(Vec::new());
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].patient, None);
        let two = read_records(vec!["p1".into(), "p2".into()]);
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].patient.as_deref(), Some("p1"));
        assert_eq!(two[1].patient.as_deref(), Some("p2"));
        assert_ne!(two[0].id, two[1].id);
        assert_eq!(two[0].entities, vec!["Observation/o1".to_string()]);
        assert_eq!((two[0].action.as_str(), two[0].outcome.as_str()), ("R", "0"));
        // Time-ordered ids: the table grows at its end.
        assert!(two[0].id < two[1].id);
    }

    #[test]
    fn the_patient_an_event_is_about_is_not_indexed_twice() {
        let gw = Gateway::new("https://gw.example/fhir");
        let req = RequestInfo {
            interaction: "search-type",
            resource_type: Some("Patient".into()),
            ..Default::default()
        };
        let client = Client::default();
        let found = vec!["Patient/p1/_history/1".into(), "Patient/p2/_history/3".into()];
        let recs = records(
            &gw,
            &req,
            "search-type",
            &client,
            "0",
            None,
            found,
            None,
            vec!["p1".into(), "p2".into()],
        );
        // Each event is found by `entity=Patient/pN` through its patient,
        // and only its record about pN is: `patient=pN` finds the same.
        assert!(recs[0].entities.is_empty(), "{:?}", recs[0].entities);
        assert!(recs[1].entities.is_empty(), "{:?}", recs[1].entities);
        // Still in the event as rendered: both resources, and the patient.
        let event: Value = serde_json::from_slice(&render(&recs[0]).unwrap_or_default()).unwrap_or_default();
        assert_eq!(event["entity"].as_array().map(Vec::len), Some(3), "{event}");
        assert_eq!(event["entity"][0]["what"]["reference"], "Patient/p1/_history/1");
    }

    #[test]
    fn a_query_names_its_patient_when_it_has_one() {
        assert_eq!(
            queried_patient("Observation", "patient=p1&code=x").as_deref(),
            Some("p1")
        );
        assert_eq!(
            queried_patient("Observation", "subject=Patient/p2").as_deref(),
            Some("p2")
        );
        assert_eq!(queried_patient("Patient", "_id=p3").as_deref(), Some("p3"));
        assert_eq!(queried_patient("Observation", "patient=p1,p2"), None);
        assert_eq!(queried_patient("Observation", "code=x"), None);
    }

    #[test]
    fn a_path_names_a_type_an_id_and_a_version() {
        let names = |p: &str| path_names(p);
        let some = |x: &str| Some(x.to_string());
        assert_eq!(names("Patient/p1"), (some("Patient"), some("p1"), None));
        assert_eq!(
            names("/Patient/p1/_history/3"),
            (some("Patient"), some("p1"), some("3"))
        );
        assert_eq!(names("Observation"), (some("Observation"), None, None));
        assert_eq!(names("Observation/_history"), (some("Observation"), None, None));
        assert_eq!(names("Observation/_search"), (some("Observation"), None, None));
        assert_eq!(names("Nothing/x"), (None, None, None));
        assert_eq!(names(""), (None, None, None));
    }

    const STARTED: i64 = 1_700_000_000_000_000;

    fn caller_client() -> Client {
        Client {
            id: Some("mss-1".into()),
            organization: Some("org-1".into()),
            verified: true,
            professional: None,
        }
    }

    fn scope(interaction: &'static str, path: &str, query: Option<&str>) -> Arc<AuditScope> {
        let (resource_type, id, version) = path_names(path);
        AuditScope::new(
            Arc::new(Gateway::new("https://gw.example/fhir")),
            RequestInfo {
                interaction,
                resource_type,
                id,
                version,
                query: query.map(str::to_string),
                condition: None,
                network: Some("10.0.0.7".into()),
                started: STARTED,
            },
        )
    }

    fn served_patient() -> Served {
        Served {
            resource_type: "Patient".into(),
            id: "p1".into(),
            version: 1,
            patients: Some(vec!["p1".into()]),
            body: None,
        }
    }

    /// What two records of the same interaction share: all but their id
    /// and when they were built.
    fn same(a: &AuditRecord, b: &AuditRecord) -> bool {
        (
            &a.client,
            &a.patient,
            &a.subtype,
            &a.action,
            &a.outcome,
            &a.network,
            &a.entities,
            &a.detail,
        ) == (
            &b.client,
            &b.patient,
            &b.subtype,
            &b.action,
            &b.outcome,
            &b.network,
            &b.entities,
            &b.detail,
        )
    }

    /// The records of `interaction` on `path` sent on its own.
    async fn alone(
        interaction: &'static str,
        path: &str,
        query: Option<&str>,
        status: u16,
        served: Option<Served>,
        issue: Option<IssueCode>,
    ) -> Vec<AuditRecord> {
        let s = scope(interaction, path, query);
        s.run_in(async { note_client(caller_client()) }).await;
        s.finish(status, served, issue)
            .map(|f| f.build(&Found::new()))
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn each_get_entry_of_a_batch_is_recorded_as_the_request_alone() {
        let batch = scope("transaction", "", None);
        batch
            .run_in(async {
                note_client(caller_client());
                note_interaction("batch");
                note_entry("read", "Patient/p1", None, 200, Some(served_patient()), None);
                note_entry("search-type", "Observation", Some("patient=p1"), 200, None, None);
                note_entry(
                    "read",
                    "Patient/gone",
                    None,
                    404,
                    None,
                    Some(IssueCode("not-found", None)),
                );
            })
            .await;
        let recs = batch
            .finish(200, None, None)
            .map(|f| f.build(&Found::new()))
            .unwrap_or_default();
        assert_eq!(recs.len(), 4, "the batch and its three GET entries: {recs:#?}");
        assert_eq!(recs[0].subtype, "batch");
        let expected = [
            alone("read", "Patient/p1", None, 200, Some(served_patient()), None).await,
            alone("search-type", "Observation", Some("patient=p1"), 200, None, None).await,
            alone(
                "read",
                "Patient/gone",
                None,
                404,
                None,
                Some(IssueCode("not-found", None)),
            )
            .await,
        ];
        for (rec, want) in recs[1..].iter().zip(expected.iter()) {
            assert_eq!(want.len(), 1);
            assert!(same(rec, &want[0]), "{rec:#?} != {want:#?}");
        }
        // What the entries say, rendered.
        let event =
            |r: &AuditRecord| -> Value { serde_json::from_slice(&render(r).unwrap_or_default()).unwrap_or_default() };
        let read = event(&recs[1]);
        assert_eq!(read["subtype"][0]["code"], "read");
        assert_eq!(read["entity"][0]["what"]["reference"], "Patient/p1/_history/1");
        assert_eq!(recs[1].patient.as_deref(), Some("p1"));
        assert_eq!(recs[2].patient.as_deref(), Some("p1"), "the patient the search names");
        let missing = event(&recs[3]);
        assert_eq!(missing["outcome"], "4");
        assert_eq!(missing["outcomeDesc"], "HTTP 404 (not-found)");
        assert_eq!(
            recs[3].patient.as_deref(),
            Some("gone"),
            "a refused read names the patient asked for"
        );
        // The batch's client, network address and start.
        for r in &recs {
            assert_eq!(r.client.as_deref(), Some("mss-1"));
            assert_eq!(r.network.as_deref(), Some("10.0.0.7"));
            assert_eq!(event(r)["period"]["start"], format_instant(STARTED));
        }
    }

    #[tokio::test]
    async fn a_batch_write_entry_is_recorded_once_its_own_or_with_its_change() {
        let batch = scope("transaction", "", None);
        batch
            .run_in(async {
                note_client(caller_client());
                note_interaction("batch");
                // A create whose job committed its record with the change.
                let mark = CommitMark::now();
                JobHook::committed(&*batch);
                assert!(mark.committed_since(), "the entry's job committed");
                // A refused update, a conditional create that matched: no
                // job of theirs committed, they are noted.
                let mark = CommitMark::now();
                assert!(!mark.committed_since());
                note_entry(
                    "update",
                    "Patient/p1",
                    None,
                    412,
                    None,
                    Some(IssueCode("conflict", None)),
                );
                note_entry("create", "Patient", None, 200, Some(served_patient()), None);
            })
            .await;
        let recs = batch
            .finish(200, None, None)
            .map(|f| f.build(&Found::new()))
            .unwrap_or_default();
        assert_eq!(recs.len(), 3, "the batch and its two entries noted apart: {recs:#?}");
        assert_eq!(recs[0].subtype, "batch");
        let expected = [
            alone(
                "update",
                "Patient/p1",
                None,
                412,
                None,
                Some(IssueCode("conflict", None)),
            )
            .await,
            alone("create", "Patient", None, 200, Some(served_patient()), None).await,
        ];
        for (rec, want) in recs[1..].iter().zip(expected.iter()) {
            assert_eq!(want.len(), 1);
            assert!(same(rec, &want[0]), "{rec:#?} != {want:#?}");
        }
        let refused: Value = serde_json::from_slice(&render(&recs[1]).unwrap_or_default()).unwrap_or_default();
        assert_eq!(
            (refused["action"].as_str(), refused["outcome"].as_str()),
            (Some("U"), Some("4"))
        );
        assert_eq!(refused["outcomeDesc"], "HTTP 412 (conflict)");
        assert_eq!(refused["entity"][0]["what"]["reference"], "Patient/p1");
        assert_eq!(
            recs[1].patient.as_deref(),
            Some("p1"),
            "a refused write names the patient it would have changed"
        );
        // The match a conditional create returned, as a create alone names it.
        let matched: Value = serde_json::from_slice(&render(&recs[2]).unwrap_or_default()).unwrap_or_default();
        assert_eq!(
            (matched["action"].as_str(), matched["outcome"].as_str()),
            (Some("C"), Some("0"))
        );
        assert_eq!(matched["entity"][0]["what"]["reference"], "Patient/p1/_history/1");
        assert_eq!(recs[2].patient.as_deref(), Some("p1"));
    }

    #[test]
    fn a_mark_outside_a_request_sees_no_commit() {
        assert!(!CommitMark::now().committed_since());
    }

    #[tokio::test]
    async fn a_committed_transaction_still_records_its_get_entries() {
        let tx = scope("transaction", "", None);
        tx.run_in(async {
            note_client(caller_client());
            note_entry("read", "Patient/p1", None, 200, Some(served_patient()), None);
        })
        .await;
        // Its write stored the transaction's own record with the change.
        JobHook::committed(&*tx);
        let recs = tx
            .finish(200, None, None)
            .map(|f| f.build(&Found::new()))
            .unwrap_or_default();
        assert_eq!(recs.len(), 1, "{recs:#?}");
        assert_eq!(recs[0].subtype, "read");
        // Without GET entries, nothing is left to record.
        let plain = scope("create", "Patient", None);
        JobHook::committed(&*plain);
        assert!(plain.finish(201, None, None).is_none());
    }

    fn found(pairs: &[(Lookup, &[&str])]) -> Found {
        pairs
            .iter()
            .map(|(l, ps)| (l.clone(), ps.iter().map(|p| p.to_string()).collect()))
            .collect()
    }

    const INS: &str = "urn:oid:1.2.250.1.213.1.4.10";

    /// The records of a request that ended with `status`, built once the
    /// lookups it asked for found what `found` says.
    async fn ended(
        s: Arc<AuditScope>,
        status: u16,
        body: Option<&str>,
        found: impl Fn(&[Lookup]) -> Found,
    ) -> Vec<AuditRecord> {
        s.run_in(async {
            note_client(caller_client());
            if let Some(b) = body {
                note_body(&Bytes::from(b.to_string()));
            }
        })
        .await;
        let d = s.finish(status, None, Some(IssueCode("forbidden", None)));
        d.map(|d| {
            let f = found(d.lookups());
            d.build(&f)
        })
        .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_refused_read_names_the_patients_of_the_resource_asked_for() {
        let obs = Lookup::Compartment {
            resource_type: "Observation".into(),
            id: "o1".into(),
        };
        let recs = ended(scope("read", "Observation/o1", None), 404, None, |ls| {
            assert_eq!(ls, std::slice::from_ref(&obs));
            found(&[(obs.clone(), &["p1"])])
        })
        .await;
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].patient.as_deref(), Some("p1"));
        assert_eq!(recs[0].outcome, "4");
        // Not stored, or about nobody: the record says so in a way no
        // organisation is shown, as it would not be shown one about p1.
        let recs = ended(scope("read", "Observation/o2", None), 404, None, |_| Found::new()).await;
        assert_eq!(recs[0].patient.as_deref(), Some(NOBODY_FOUND));
        let e: Value = serde_json::from_slice(&render(&recs[0]).unwrap_or_default()).unwrap_or_default();
        assert_eq!(entities_of(&e), ["Observation/o2"]);
        // A Patient by its id: nothing to look up.
        let recs = ended(scope("read", "Patient/p9", None), 404, None, |ls| {
            assert!(ls.is_empty());
            Found::new()
        })
        .await;
        assert_eq!(recs[0].patient.as_deref(), Some("p9"));
    }

    fn entities_of(e: &Value) -> Vec<String> {
        e["entity"]
            .as_array()
            .map(|es| {
                es.iter()
                    .filter_map(|x| x["what"]["reference"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn an_ins_names_its_holder_or_leaves_its_query() {
        let ins = Lookup::Identifier {
            system: INS.into(),
            value: "2840375123456".into(),
        };
        let query = format!("identifier={INS}%7C2840375123456");
        let recs = ended(scope("search-type", "Patient", Some(&query)), 200, None, |ls| {
            assert_eq!(ls, std::slice::from_ref(&ins));
            found(&[(ins.clone(), &["p1"])])
        })
        .await;
        assert_eq!(recs[0].patient.as_deref(), Some("p1"));
        // Held by nobody: the query stays, base64, as for any search.
        let recs = ended(scope("search-type", "Patient", Some(&query)), 200, None, |_| {
            Found::new()
        })
        .await;
        assert_eq!(recs[0].patient.as_deref(), Some(NOBODY_FOUND));
        let e: Value = serde_json::from_slice(&render(&recs[0]).unwrap_or_default()).unwrap_or_default();
        assert_eq!(e["entity"].as_array().map(Vec::len), Some(1), "{e}");
        assert!(e["entity"][0]["query"].is_string());

        // A conditional create refused on the same INS, held by nobody: its
        // condition is the query it leaves.
        let s = scope("create", "Patient", None);
        s.state().request.condition = Some(query.clone());
        let recs = ended(s, 412, None, |ls| {
            assert_eq!(ls, std::slice::from_ref(&ins));
            Found::new()
        })
        .await;
        let e: Value = serde_json::from_slice(&render(&recs[0]).unwrap_or_default()).unwrap_or_default();
        let q = base64::engine::general_purpose::STANDARD
            .decode(e["entity"][0]["query"].as_str().unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(String::from_utf8_lossy(&q), query);
        // Held: the patient, and no query (a write records none).
        let s = scope("update", "Patient", Some(&query));
        let recs = ended(s, 403, None, |_| found(&[(ins.clone(), &["p1"])])).await;
        assert_eq!(recs[0].patient.as_deref(), Some("p1"));
        let e: Value = serde_json::from_slice(&render(&recs[0]).unwrap_or_default()).unwrap_or_default();
        assert!(
            e["entity"]
                .as_array()
                .is_some_and(|es| es.iter().all(|x| x["query"].is_null())),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_refused_write_names_the_patient_its_resource_is_about() {
        let body = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#;
        let recs = ended(scope("create", "Observation", None), 403, Some(body), |ls| {
            assert!(ls.is_empty());
            Found::new()
        })
        .await;
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].patient.as_deref(), Some("p1"));
        assert_eq!((recs[0].action.as_str(), recs[0].outcome.as_str()), ("C", "4"));
        // A Bundle is no resource a write entry is about.
        let recs = ended(scope("transaction", "", None), 403, Some(body), |_| Found::new()).await;
        assert_eq!(recs[0].patient, None);
    }
}
