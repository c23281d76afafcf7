//! The audit trail: one AuditEvent per interaction, success or failure,
//! refused authentication included, shaped after IHE Basic Audit Log
//! Patterns (BALP) and kept within the ANS "Traçabilité des événements"
//! profile (TDEAuditEvent: one subtype, `period.start`, at most two agents,
//! each with a `who`, `source.observer` a Device).
//!
//! This module knows FHIR, not SQL nor HTTP. The HTTP layer opens an
//! `AuditScope` per request and tells it what it learns (who calls, what
//! was served, the status); the store hands it the versions a write job
//! stores (`store::JobHook`), so that the AuditEvent of a change is written
//! in the same database transaction as the change. Requests that changed
//! nothing (reads, searches, refusals, rolled-back writes) are recorded
//! without making the response wait for the commit (`Store::write_detached`).
//!
//! Shape of an event:
//! - `type` audit-event-type `rest` (or DICOM "User Authentication" / "Login"
//!   for the token endpoint); `subtype` the restful-interaction; `action`
//!   C/R/U/D/E; `period.start` when the request came in, `recorded` when the
//!   event was built; `outcome` 0/4/8 and, on failure, an `outcomeDesc`
//!   without personal data (status, issue code, authentication reason);
//! - `agent[0]`: the client (`who.identifier` = its client id in the
//!   namespace of the gateway's token issuer, `requestor`, `network` = its
//!   IP address); `agent[1]`: the gateway. Never more than two;
//! - `source.observer`: the gateway as a Device (identifier = its base URL);
//! - `entity`: the resource(s) acted on (`Type/id/_history/v`), the patient
//!   concerned (role Patient: BALP "with Patient"), the query of a search
//!   (base64 in `entity.query`, as BALP records it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::clock::now_micros;
use crate::fhir::interaction::{index_of, new_id};
use crate::fhir::resource::Resource;
use crate::fhir::search::extract::Extractor;
use crate::fhir::search::model::IndexValue;
use crate::fhir::search::values::format_instant;
use crate::store::{Deferred, JobHook, Method, Write};

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
}

impl From<&Caller> for Client {
    fn from(c: &Caller) -> Self {
        Client {
            id: Some(c.client_id.clone()),
            organization: c.organization.clone(),
            verified: true,
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
    /// The raw query string, recorded (base64) for searches and history.
    pub query: Option<String>,
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
    /// The stored JSON: the patient it concerns is looked up off the
    /// request's path, when the record is built.
    pub body: Option<Bytes>,
}

/// The OperationOutcome issue code of an error response (a response
/// extension): says why without repeating the diagnostics, which may quote
/// what the client sent.
#[derive(Debug, Clone, Copy)]
pub struct IssueCode(pub &'static str);

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
            what: format!("{}/{}/_history/{}", w.resource_type, w.id, w.version),
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
}

/// The audit of one request. The HTTP layer opens it (`run_in`), the
/// authentication layer names the client, the store's writer reports the
/// versions written, and the HTTP layer closes it with the status.
pub struct AuditScope {
    gateway: Arc<Gateway>,
    state: Mutex<State>,
    /// Was an AuditEvent committed with a write of this request?
    committed: AtomicBool,
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
            }),
            committed: AtomicBool::new(false),
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

    /// Builds the record of the request once its response is known, unless
    /// its write already committed one. The returned closure does the work
    /// (JSON, index values) where it runs: off the request's path.
    pub fn finish(&self, status: u16, served: Option<Served>, issue: Option<IssueCode>) -> Option<Deferred> {
        let st = self.state();
        if self.committed.load(Ordering::Acquire) && st.request.interaction != "batch" {
            return None;
        }
        let gateway = self.gateway.clone();
        let request = st.request.clone();
        let client = st.client.clone();
        let refusal = st.refusal.clone();
        Some(Box::new(move || {
            let mut entities = Vec::new();
            let mut patients = Vec::new();
            match &served {
                Some(s) => {
                    entities.push(data_entity(&format!(
                        "{}/{}/_history/{}",
                        s.resource_type, s.id, s.version
                    )));
                    patients = patients_of(&s.resource_type, &s.id, s.body.as_deref());
                }
                None => {
                    if let (Some(t), Some(id)) = (&request.resource_type, &request.id) {
                        let what = match &request.version {
                            Some(v) => format!("{t}/{id}/_history/{v}"),
                            None => format!("{t}/{id}"),
                        };
                        entities.push(data_entity(&what));
                        if t == "Patient" && status < 300 {
                            patients.push(id.clone());
                        }
                    }
                }
            }
            if is_query(request.interaction) {
                if let Some(p) = request
                    .resource_type
                    .as_deref()
                    .and_then(|t| queried_patient(t, request.query.as_deref().unwrap_or_default()))
                {
                    patients.push(p);
                }
                entities.push(query_entity(request.query.as_deref().unwrap_or_default()));
            }
            let mut outcome_desc = None;
            if status >= 400 {
                let mut d = format!("HTTP {status}");
                if let Some(IssueCode(code)) = issue {
                    d.push_str(&format!(" ({code})"));
                }
                if let Some(r) = &refusal {
                    d.push_str(&format!(": {r}"));
                }
                outcome_desc = Some(d);
            }
            let event = Event {
                gateway: &gateway,
                request: &request,
                subtype: request.interaction,
                client: &client,
                outcome: outcome_of(status),
                outcome_desc,
                entities,
                patients,
            };
            Some(to_write(event.to_json(now_micros())))
        }))
    }
}

impl JobHook for AuditScope {
    fn stored(&self, writes: &[Write]) {
        let mut st = self.state();
        st.job
            .extend(writes.iter().filter(|w| w.resource_type != AUDIT_EVENT).map(Stored::of));
    }

    fn finish(&self, ok: bool) -> Vec<Write> {
        let mut st = self.state();
        let job = std::mem::take(&mut st.job);
        if !ok || job.is_empty() {
            return Vec::new();
        }
        // A batch entry is recorded as the interaction it is.
        let subtype = match st.request.interaction {
            "batch" => job_interaction(&job),
            other => other,
        };
        let mut patients: Vec<String> = Vec::new();
        for p in job.iter().flat_map(|s| s.patients.iter()) {
            if !patients.contains(p) {
                patients.push(p.clone());
            }
        }
        let event = Event {
            gateway: &self.gateway,
            request: &st.request,
            subtype,
            client: &st.client,
            outcome: "0",
            outcome_desc: None,
            entities: job.iter().map(|s| data_entity(&s.what)).collect(),
            patients,
        };
        vec![to_write(event.to_json(now_micros()))]
    }

    fn committed(&self) {
        self.committed.store(true, Ordering::Release);
    }
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
            organization: None,
            verified: false,
        };
        st.refusal = Some(reason);
    });
}

/// Corrects the interaction once the request is understood (a Bundle POST
/// is a batch or a transaction).
pub fn note_interaction(interaction: &'static str) {
    let _ = CURRENT.try_with(|s| s.state().request.interaction = interaction);
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

struct Event<'a> {
    gateway: &'a Gateway,
    request: &'a RequestInfo,
    subtype: &'static str,
    client: &'a Client,
    outcome: &'static str,
    outcome_desc: Option<String>,
    entities: Vec<Value>,
    patients: Vec<String>,
}

impl Event<'_> {
    fn to_json(&self, recorded: i64) -> Value {
        let (event_type, subtype) = if self.subtype == LOGIN {
            (
                coding(DCM, "110114", "User Authentication"),
                coding(DCM, "110122", "Login"),
            )
        } else {
            (
                coding(EVENT_TYPE, "rest", "Restful Operation"),
                coding(INTERACTION, self.subtype, self.subtype),
            )
        };
        let (client_type, server_type) = agent_types(self.subtype);
        let mut who = Map::new();
        if let Some(id) = &self.client.id {
            who.insert("identifier".into(), json!({"system": self.gateway.issuer, "value": id}));
        }
        let display = match (&self.client.id, self.client.verified, &self.client.organization) {
            (None, _, _) => "unidentified client".to_string(),
            (Some(_), false, _) => "client id claimed by a refused credential (not verified)".to_string(),
            (Some(id), true, Some(org)) => format!("client {id} of organization {org}"),
            (Some(id), true, None) => format!("client {id}"),
        };
        who.insert("display".into(), Value::String(display));
        let mut client = json!({
            "type": {"coding": [client_type]},
            "who": who,
            "requestor": true,
        });
        if let (Some(addr), Some(o)) = (&self.request.network, client.as_object_mut()) {
            o.insert("network".into(), json!({"address": addr, "type": "2"}));
        }
        let gateway_ref = json!({
            "type": "Device",
            "identifier": {"system": URI, "value": self.gateway.base},
            "display": "apa-gateway",
        });
        // The gateway is named by `source.observer`; its agent's `who` has
        // no identifier, which would be an index row on every event.
        let server = json!({
            "type": {"coding": [server_type]},
            "who": {"type": "Device", "display": self.gateway.base},
            "requestor": false,
        });
        let mut entity = self.entities.clone();
        entity.extend(self.patients.iter().map(|p| patient_entity(p)));
        let mut ev = json!({
            "resourceType": AUDIT_EVENT,
            "type": event_type,
            "action": action_of(self.subtype),
            "period": {"start": format_instant(self.request.started.min(recorded))},
            "recorded": format_instant(recorded),
            "outcome": self.outcome,
        });
        if let Some(o) = ev.as_object_mut() {
            // A request to no known endpoint is no restful interaction.
            if self.subtype != "other" {
                o.shift_insert(2, "subtype".into(), json!([subtype]));
            }
            if let Some(d) = &self.outcome_desc {
                o.insert("outcomeDesc".into(), Value::String(d.clone()));
            }
            o.insert("agent".into(), json!([client, server]));
            o.insert(
                "source".into(),
                json!({
                    "observer": gateway_ref,
                    "type": [coding(SOURCE_TYPE, "4", "Application Server")],
                }),
            );
            if !entity.is_empty() {
                o.insert("entity".into(), Value::Array(entity));
            }
        }
        ev
    }
}

/// The store row of an AuditEvent: a new resource, indexed like any other
/// so that the generic search finds it.
fn to_write(json: Value) -> Write {
    let mut res = Resource {
        resource_type: AUDIT_EVENT.into(),
        json,
    };
    let id = new_id();
    let updated = now_micros();
    res.stamp(&id, 1, updated);
    let index = index_of(&res);
    // The trail of a patient's data is theirs too: an auditor restricted to
    // an organisation sees the events of the patients it is granted.
    let patients = super::compartment::patients_of(AUDIT_EVENT, &id, &index);
    Write {
        resource_type: AUDIT_EVENT.into(),
        patients,
        grants: Vec::new(),
        id,
        version: 1,
        updated,
        method: Method::Create,
        body: Some(res.to_bytes()),
        index,
        pk: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_event() -> Value {
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
        };
        Event {
            gateway: &gw,
            request: &req,
            subtype: "read",
            client: &client,
            outcome: "0",
            outcome_desc: None,
            entities: vec![data_entity("Observation/o1/_history/2")],
            patients: vec!["p1".into()],
        }
        .to_json(1_700_000_000_001_000)
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
            bytes += read_event().to_string().len();
        }
        let json = t.elapsed();
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(to_write(read_event()));
        }
        let total = t.elapsed();
        println!(
            "per event: JSON {:?}, JSON + stamp + index {:?}, {} bytes",
            json / n,
            total / n,
            bytes / n as usize
        );
    }

    #[test]
    fn the_index_of_an_event_stays_small() {
        let w = to_write(read_event());
        let mut codes: Vec<&str> = w.index.iter().map(|(c, _)| c.as_str()).collect();
        codes.sort_unstable();
        // Every row is a B-tree entry written per request: keep them few.
        println!("{} index rows: {codes:?}", w.index.len());
        assert!(w.index.len() <= 9, "{} index rows: {codes:?}", w.index.len());
        for needed in ["date", "agent", "entity", "patient", "action", "outcome", "subtype"] {
            assert!(codes.contains(&needed), "{needed} in {codes:?}");
        }
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
}
