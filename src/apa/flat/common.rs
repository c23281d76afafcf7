//! What every flat request shares: where a fault is in the input, the
//! parties it names (patient by INS, professional by RPPS, organisation by
//! SIRET), dates, local codes, business identifiers, and the transaction
//! Bundle being built.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use crate::apa::identity::{self, Ins, InsKind, Rpps, Siret, system};
use crate::apa::units::{self, Measure, Normalized, UnitError};
use crate::fhir::error::{FhirError, Issue, Severity};

/// The profiles' canonical base, and the systems of the local codes.
pub const CANONICAL: &str = "https://apa-gateway.fr/fhir";
pub const SPORT_SANTE: &str = "https://apa-gateway.fr/fhir/CodeSystem/sport-sante";
pub const PA_CATEGORY: &str = "http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes";
pub const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
pub const WORKFLOW_EPISODE: &str = "http://hl7.org/fhir/StructureDefinition/workflow-episodeOfCare";
/// Business identifiers of flat records: `<this>/<sender>/<kind>`.
pub const SOURCE_SYSTEM: &str = "https://apa-gateway.fr/fhir/sid";

pub fn profile(id: &str) -> String {
    format!("{CANONICAL}/StructureDefinition/{id}")
}

pub fn code_system(id: &str) -> String {
    format!("{CANONICAL}/CodeSystem/{id}")
}

/// The PA IG category every APA resource carries.
pub fn pa_category() -> Value {
    json!({"coding": [{"system": PA_CATEGORY, "code": "PhysicalActivity", "display": "Physical Activity"}]})
}

// ---------------------------------------------------------------------------
// Faults

/// A fault in the flat input, located there: a JSON path (`$.tests[2].unit`)
/// or a CSV cell (`line 4, column unite`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub location: String,
    /// OperationOutcome issue type (`required`, `value`, `code-invalid`…).
    pub code: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(location: impl Into<String>, code: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            location: location.into(),
            code,
            message: message.into(),
        }
    }

    pub fn required(location: impl Into<String>, what: &str) -> Problem {
        Problem::new(location, "required", format!("{what} is required"))
    }

    pub fn unit(location: impl Into<String>, e: &UnitError) -> Problem {
        let issue = e.to_issue("");
        Problem::new(location, issue.code, e.to_string())
    }

    pub fn to_issue(&self) -> Issue {
        Issue {
            severity: Severity::Error,
            code: self.code,
            diagnostics: self.message.clone(),
            expression: vec![self.location.clone()],
        }
    }
}

/// The refusal of a whole request (422, every fault listed).
pub fn refuse(problems: Vec<Problem>) -> FhirError {
    FhirError {
        status: 422,
        issues: problems.iter().map(Problem::to_issue).collect(),
    }
}

/// Something the gateway did to the input that the sender should know of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    pub location: String,
    pub message: String,
}

/// Collects faults while a request is parsed, so that all of them are
/// reported at once.
#[derive(Default)]
pub struct Faults(pub Vec<Problem>);

impl Faults {
    /// The value, or `None` after noting the fault.
    pub fn take<T>(&mut self, r: Result<T, Problem>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(p) => {
                self.0.push(p);
                None
            }
        }
    }

    pub fn into_result<T>(self, v: impl FnOnce() -> Option<T>) -> Result<T, Vec<Problem>> {
        if self.0.is_empty() {
            v().ok_or_else(|| vec![Problem::new("$", "exception", "incomplete input")])
        } else {
            Err(self.0)
        }
    }
}

/// A required field: present and not blank.
pub fn need<'a>(v: &'a Option<String>, at: &str, what: &str) -> Result<&'a str, Problem> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Problem::required(at, what)),
    }
}

// ---------------------------------------------------------------------------
// Parties

/// The patient, named by their INS; the kind is NIR unless said otherwise
/// (test and demo INS are the ones of test cards).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientRef {
    pub ins: Option<String>,
    /// `NIR` (default), `NIA`, `TEST`, `DEMO`.
    pub ins_kind: Option<String>,
}

pub fn ins_kind(s: Option<&str>, at: &str) -> Result<InsKind, Problem> {
    match s.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(InsKind::Nir),
        Some(k) => match k.to_ascii_uppercase().as_str() {
            "NIR" | "INS-NIR" => Ok(InsKind::Nir),
            "NIA" | "INS-NIA" => Ok(InsKind::Nia),
            "TEST" | "INS-NIR-TEST" => Ok(InsKind::Test),
            "DEMO" | "INS-NIR-DEMO" => Ok(InsKind::Demo),
            _ => Err(Problem::new(
                at,
                "code-invalid",
                format!("'{k}' is not a kind of INS (NIR, NIA, TEST or DEMO)"),
            )),
        },
    }
}

pub fn parse_ins(value: &str, kind: InsKind, at: &str) -> Result<Ins, Problem> {
    Ins::new(kind, &identity::compact(value)).map_err(|e| Problem::new(at, "value", e.to_string()))
}

impl PatientRef {
    pub fn parse(&self, at: &str) -> Result<Ins, Problem> {
        let kind = ins_kind(self.ins_kind.as_deref(), &format!("{at}.ins_kind"))?;
        let value = need(&self.ins, &format!("{at}.ins"), "the patient's INS")?;
        parse_ins(value, kind, &format!("{at}.ins"))
    }
}

pub fn parse_siret(value: &str, at: &str) -> Result<Siret, Problem> {
    Siret::parse(&identity::compact(value)).map_err(|e| Problem::new(at, "value", e.to_string()))
}

pub fn parse_rpps(value: &str, at: &str) -> Result<Rpps, Problem> {
    Rpps::parse(&identity::compact(value)).map_err(|e| Problem::new(at, "value", e.to_string()))
}

/// An organisation named by its SIRET.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganizationRef {
    pub siret: Option<String>,
}

impl OrganizationRef {
    pub fn parse(&self, at: &str, what: &str) -> Result<Siret, Problem> {
        parse_siret(need(&self.siret, &format!("{at}.siret"), what)?, &format!("{at}.siret"))
    }
}

fn query_value(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `Type?identifier=system|value`, as a conditional reference or `ifNoneExist`.
pub fn by_identifier(rtype: &str, system: &str, value: &str) -> String {
    format!("{rtype}?{}", identifier_query(system, value))
}

pub fn identifier_query(system: &str, value: &str) -> String {
    format!("identifier={}", query_value(&format!("{system}|{value}")))
}

pub fn patient_reference(ins: &Ins) -> String {
    by_identifier("Patient", ins.system(), ins.number().as_str())
}

pub fn organization_reference(siret: &Siret) -> String {
    by_identifier("Organization", system::SIRENE, siret.as_str())
}

pub fn practitioner_reference(rpps: &Rpps) -> String {
    by_identifier("Practitioner", system::RPPS, rpps.as_str())
}

// ---------------------------------------------------------------------------
// Dates

/// A date, or a date and time with its UTC offset (FHIR `dateTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Date(Date),
    DateTime(OffsetDateTime),
}

impl When {
    /// `2026-03-02`, `02/03/2026` (French software), or RFC 3339
    /// (`2026-03-02T10:00:00+01:00`). A time without offset is refused: it
    /// would be guessed.
    pub fn parse(s: &str, at: &str) -> Result<When, Problem> {
        let t = s.trim();
        let iso = format_description!("[year]-[month]-[day]");
        let fr = format_description!("[day]/[month]/[year]");
        if let Ok(d) = Date::parse(t, &iso).or_else(|_| Date::parse(t, &fr)) {
            return Ok(When::Date(d));
        }
        OffsetDateTime::parse(t, &Rfc3339).map(When::DateTime).map_err(|_| {
            Problem::new(
                at,
                "value",
                format!(
                    "'{t}' is not a date (YYYY-MM-DD or DD/MM/YYYY) nor a date and time with its offset \
                     (YYYY-MM-DDThh:mm:ss+01:00)"
                ),
            )
        })
    }

    pub fn date(&self) -> Date {
        match self {
            When::Date(d) => *d,
            When::DateTime(t) => t.date(),
        }
    }

    /// The FHIR `dateTime` text.
    pub fn fhir(&self) -> String {
        match self {
            When::Date(d) => fhir_date(*d),
            When::DateTime(t) => t.format(&Rfc3339).unwrap_or_else(|_| fhir_date(t.date())),
        }
    }
}

pub fn fhir_date(d: Date) -> String {
    let f = format_description!("[year]-[month]-[day]");
    d.format(&f).unwrap_or_default()
}

pub fn need_when(v: &Option<String>, at: &str, what: &str) -> Result<When, Problem> {
    When::parse(need(v, at, what)?, at)
}

// ---------------------------------------------------------------------------
// Local codes, read from the code systems of profiles/ (one source of truth)

const CODE_SYSTEMS: &[(&str, &str)] = &[
    (
        "activity-type",
        include_str!("../../../profiles/CodeSystem-activity-type.json"),
    ),
    (
        "condition-group",
        include_str!("../../../profiles/CodeSystem-condition-group.json"),
    ),
    (
        "functional-limitation",
        include_str!("../../../profiles/CodeSystem-functional-limitation.json"),
    ),
    ("intensity", include_str!("../../../profiles/CodeSystem-intensity.json")),
    (
        "motivational-stage",
        include_str!("../../../profiles/CodeSystem-motivational-stage.json"),
    ),
    (
        "orientation",
        include_str!("../../../profiles/CodeSystem-orientation.json"),
    ),
    (
        "session-kind",
        include_str!("../../../profiles/CodeSystem-session-kind.json"),
    ),
];

static CODES: LazyLock<HashMap<&'static str, Vec<String>>> = LazyLock::new(|| {
    CODE_SYSTEMS
        .iter()
        .map(|(id, text)| {
            let cs: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            let codes = cs
                .get("concept")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.get("code").and_then(Value::as_str).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (*id, codes)
        })
        .collect()
});

/// The codes of one of our code systems.
pub fn codes_of(cs: &str) -> &'static [String] {
    CODES.get(cs).map_or(&[], Vec::as_slice)
}

/// A code of `cs`, as written (codes are case-sensitive in FHIR; a
/// differently cased spelling is accepted and corrected with a warning).
pub fn local_code(cs: &str, value: &str, at: &str, warnings: &mut Vec<Warning>) -> Result<String, Problem> {
    let v = value.trim();
    let codes = codes_of(cs);
    if let Some(c) = codes.iter().find(|c| c.as_str() == v) {
        return Ok(c.clone());
    }
    if let Some(c) = codes.iter().find(|c| c.eq_ignore_ascii_case(v)) {
        warnings.push(Warning {
            location: at.to_string(),
            message: format!("'{v}' read as the code '{c}'"),
        });
        return Ok(c.clone());
    }
    Err(Problem::new(
        at,
        "code-invalid",
        format!(
            "'{v}' is not a code of {} (accepted: {})",
            code_system(cs),
            codes.join(", ")
        ),
    ))
}

pub fn coding(cs: &str, code: &str) -> Value {
    json!({"coding": [{"system": code_system(cs), "code": code}]})
}

// ---------------------------------------------------------------------------
// Measurements

/// A value and its unit as the sender wrote them: a JSON number or a
/// string (a decimal comma is accepted in strings).
pub fn measured(
    measure: Measure,
    value: Option<&Value>,
    unit: Option<&str>,
    at_value: &str,
    at_unit: &str,
    warnings: &mut Vec<Warning>,
) -> Result<Normalized, Problem> {
    let value = value
        .filter(|v| !v.is_null() && v.as_str().is_none_or(|s| !s.trim().is_empty()))
        .ok_or_else(|| Problem::required(at_value, &format!("the {measure}")))?;
    let unit = unit
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| Problem::required(at_unit, &format!("the unit of the {measure}")))?;
    let decimal = units::Decimal::from_json(value).map_err(|e| Problem::unit(at_value, &e))?;
    let n = units::normalize(measure, decimal, unit).map_err(|e| match e {
        UnitError::MissingUnit { .. } | UnitError::UnknownUnit { .. } => Problem::unit(at_unit, &e),
        _ => Problem::unit(at_value, &e),
    })?;
    if let Some((v, u)) = &n.original {
        warnings.push(Warning {
            location: at_value.to_string(),
            message: format!(
                "{v} {u} converted to {} {} ({measure})",
                n.measurement.value(),
                n.measurement.unit()
            ),
        });
    }
    Ok(n)
}

// ---------------------------------------------------------------------------
// Business identifiers

/// The sender's namespace for one kind of record: `sid/<sender>/<kind>`,
/// the sender being `siret-<SIRET>` or `rpps-<RPPS>`.
pub fn source_system(sender: &str, kind: &str) -> String {
    format!("{SOURCE_SYSTEM}/{sender}/{kind}")
}

/// The record's identifier value: the sender's own id when given, else a
/// hash of its natural key (no personal data in clear in identifiers).
pub fn record_key(source_id: Option<&str>, natural: &[&str]) -> String {
    match source_id.map(str::trim).filter(|s| !s.is_empty()) {
        Some(id) => id.to_string(),
        None => {
            let mut h = Sha256::new();
            for part in natural {
                h.update(part.as_bytes());
                h.update([0x1f]);
            }
            let digest = h.finalize();
            let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
            format!("h-{hex}")
        }
    }
}

pub fn identifier(system: &str, value: &str) -> Value {
    json!({"system": system, "value": value})
}

// ---------------------------------------------------------------------------
// The programme (EpisodeOfCare) MSS records belong to

/// The patient's programme at the MSS: its id in the MSS software, its
/// start, and the prescription (FHIR id of the ServiceRequest, as the MSS
/// received it with the referral). Created on first use, found afterwards.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgrammeRef {
    pub source_id: Option<String>,
    pub start: Option<String>,
    pub prescription: Option<String>,
}

pub struct Programme {
    pub key: String,
    pub start: When,
    pub prescription: String,
}

impl ProgrammeRef {
    pub fn parse(&self, at: &str) -> Result<Programme, Vec<Problem>> {
        let mut f = Faults::default();
        let key = f
            .take(need(
                &self.source_id,
                &format!("{at}.source_id"),
                "the programme's id in the MSS software",
            ))
            .map(str::to_string);
        let start = f.take(need_when(
            &self.start,
            &format!("{at}.start"),
            "the programme's start date",
        ));
        let prescription = f.take(prescription_id(&self.prescription, &format!("{at}.prescription")));
        f.into_result(|| {
            Some(Programme {
                key: key?,
                start: start?,
                prescription: prescription?,
            })
        })
    }
}

fn prescription_id(v: &Option<String>, at: &str) -> Result<String, Problem> {
    let raw = need(v, at, "the prescription (ServiceRequest id)")?;
    let id = raw.strip_prefix("ServiceRequest/").unwrap_or(raw);
    if crate::fhir::resource::valid_id(id) {
        Ok(id.to_string())
    } else {
        Err(Problem::new(
            at,
            "value",
            format!("'{raw}' is not the id of a ServiceRequest (ServiceRequest/<id> or <id>)"),
        ))
    }
}

// ---------------------------------------------------------------------------
// The Bundle

/// A request mapped to FHIR: one transaction Bundle, the input location
/// each entry comes from, warnings, and where in the input each
/// conditional reference comes from (to locate a party not found).
#[derive(Debug, Clone)]
pub struct Mapped {
    pub bundle: Value,
    pub entries: Vec<String>,
    pub warnings: Vec<Warning>,
    pub lookups: Vec<(String, String)>,
}

#[derive(Default)]
pub struct BundleBuilder {
    entries: Vec<Value>,
    sources: Vec<String>,
    lookups: Vec<(String, String)>,
    pub warnings: Vec<Warning>,
}

impl BundleBuilder {
    /// Adds a conditional create (`ifNoneExist` on the resource's first
    /// identifier) and returns the `urn:uuid` other entries reference it by.
    pub fn create(&mut self, from: &str, resource: Value) -> String {
        let full_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let rtype = resource["resourceType"].as_str().unwrap_or_default().to_string();
        let mut request = json!({"method": "POST", "url": rtype});
        if let (Some(system), Some(value)) = (
            resource.pointer("/identifier/0/system").and_then(Value::as_str),
            resource.pointer("/identifier/0/value").and_then(Value::as_str),
        ) {
            request["ifNoneExist"] = json!(identifier_query(system, value));
        }
        self.entries
            .push(json!({"fullUrl": full_url, "resource": resource, "request": request}));
        self.sources.push(from.to_string());
        full_url
    }

    /// Notes where a conditional reference comes from in the input.
    pub fn lookup(&mut self, reference: &str, from: &str) -> String {
        if !self.lookups.iter().any(|(r, _)| r == reference) {
            self.lookups.push((reference.to_string(), from.to_string()));
        }
        reference.to_string()
    }

    pub fn with_warnings(warnings: Vec<Warning>) -> BundleBuilder {
        BundleBuilder {
            warnings,
            ..BundleBuilder::default()
        }
    }

    pub fn finish(self) -> Mapped {
        Mapped {
            bundle: json!({"resourceType": "Bundle", "type": "transaction", "entry": self.entries}),
            entries: self.sources,
            warnings: self.warnings,
            lookups: self.lookups,
        }
    }
}

/// The prescription a programme carries out, as a conditional reference:
/// it must exist and be visible to the caller, or the input is refused at
/// the field naming it.
pub fn prescription_reference(id: &str) -> String {
    format!("ServiceRequest?_id={}", query_value(id))
}

/// The EpisodeOfCare of a programme (apa-programme-episode), created by
/// the first record that names it. Returns the reference to use.
pub fn programme_entry(
    b: &mut BundleBuilder,
    at: &str,
    programme: &Programme,
    mss: &Siret,
    patient: &str,
    mss_ref: &str,
) -> String {
    let prescription = b.lookup(
        &prescription_reference(&programme.prescription),
        &format!("{at}.prescription"),
    );
    let resource = json!({
        "resourceType": "EpisodeOfCare",
        "meta": {"profile": [profile("apa-programme-episode")]},
        "identifier": [identifier(&source_system(&format!("siret-{mss}"), "programme"), &programme.key)],
        "status": "active",
        "type": [{"coding": [{"system": SPORT_SANTE, "code": "PROG-APA"}]}],
        "patient": {"reference": patient},
        "managingOrganization": {"reference": mss_ref},
        "period": {"start": programme.start.fhir()},
        "referralRequest": [{"reference": prescription}],
    });
    b.create(at, resource)
}

/// Reads a JSON body into `T`. A field of the wrong type or unknown is
/// located by its path (`$.tests[2].value`), a syntax fault by its line
/// and column.
pub fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let syntax = |e: &serde_json::Error| {
        Problem::new(
            format!("line {}, column {}", e.line(), e.column()),
            "structure",
            format!("the body is not JSON: {e}"),
        )
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return syntax(inner);
        }
        let path = e.path().to_string();
        let at = if path == "." {
            "$".to_string()
        } else {
            format!("$.{path}")
        };
        // serde's message ends with the position, the path says it better.
        let msg = inner.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        Problem::new(at, "structure", msg)
    })?;
    de.end().map_err(|e| syntax(&e))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_iso_french_or_rfc3339_with_an_offset() {
        assert_eq!(When::parse("2026-03-02", "$").unwrap().fhir(), "2026-03-02");
        assert_eq!(When::parse("02/03/2026", "$").unwrap().fhir(), "2026-03-02");
        assert_eq!(
            When::parse("2026-03-02T10:00:00+01:00", "$").unwrap().fhir(),
            "2026-03-02T10:00:00+01:00"
        );
        let p = When::parse("2026-03-02T10:00:00", "$.date").unwrap_err();
        assert_eq!(p.location, "$.date");
        assert!(When::parse("31/02/2026", "$").is_err());
    }

    #[test]
    fn codes_come_from_the_profiles_code_systems() {
        assert!(codes_of("orientation").iter().any(|c| c == "CLUB-SS"));
        let mut w = Vec::new();
        assert_eq!(local_code("orientation", "club-ss", "$.o", &mut w).unwrap(), "CLUB-SS");
        assert_eq!(w.len(), 1);
        let p = local_code("intensity", "forte", "$.intensity", &mut w).unwrap_err();
        assert_eq!(p.code, "code-invalid");
        assert!(p.message.contains("faible, moderee, elevee"), "{}", p.message);
    }

    #[test]
    fn record_keys_are_the_source_id_or_an_opaque_hash() {
        assert_eq!(record_key(Some(" B-12 "), &["x"]), "B-12");
        let h = record_key(None, &["189127512501282", "2026-03-02"]);
        assert!(h.starts_with("h-") && h.len() == 34, "{h}");
        assert!(!h.contains("1891275"));
        assert_ne!(h, record_key(None, &["189127512501282", "2026-03-03"]));
        // Parts are separated: ("ab", "c") is not ("a", "bc").
        assert_ne!(record_key(None, &["ab", "c"]), record_key(None, &["a", "bc"]));
    }

    #[test]
    fn json_shape_faults_are_located_by_path() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct T {
            #[allow(dead_code)]
            tests: Vec<U>,
        }
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct U {
            #[allow(dead_code)]
            n: Option<u32>,
        }
        let p = from_json::<T>(br#"{"tests": [{"n": 1}, {"n": "x"}]}"#).unwrap_err();
        assert_eq!(p.location, "$.tests[1].n");
        assert_eq!(p.message, "invalid type: string \"x\", expected u32");
        let p = from_json::<T>(br#"{"tests": [], "other": 1}"#).unwrap_err();
        assert_eq!(p.location, "$.other");
        let p = from_json::<T>(b"{\"tests\": [").unwrap_err();
        assert_eq!(p.location, "line 1, column 11");
        let p = from_json::<T>(b"{\"tests\": []} x").unwrap_err();
        assert!(p.location.starts_with("line 1"), "{p:?}");
    }

    #[test]
    fn conditional_references_are_url_encoded() {
        assert_eq!(
            by_identifier("Patient", "urn:oid:1.2.250.1.213.1.4.8", "189127512501282"),
            "Patient?identifier=urn%3Aoid%3A1.2.250.1.213.1.4.8%7C189127512501282"
        );
    }
}
