//! The referral workflow of the HL7 Physical Activity IG (domain.md §1.6),
//! checked inside the write job, against what is stored:
//! - [`task`]: who moves a referral Task to which status, final statuses
//!   stay final, the reasons the IG requires, hand-over, what never changes;
//! - [`prescription`]: only the prescriber's organisation changes the
//!   prescription's status; a physiotherapist renews it once, unless the
//!   physician forbade it (CSP L.4321-1);
//! - [`episode`]: the programme (EpisodeOfCare) follows the pathway: active
//!   at the first attended session, finished when the referral ends; its
//!   own transitions are checked.
//!
//! The state machines are tables (`task::TRANSITIONS`,
//! `prescription::TRANSITIONS`, `episode::TRANSITIONS`), documented in
//! docs/workflow.md. Who the acting party is comes from the job
//! (`WriteTx::visibility`): the operator, or one organisation. A refused
//! write fails the whole job: nothing of it is stored.

pub mod episode;
pub mod prescription;
pub mod task;

use serde_json::Value;

use crate::fhir::error::FhirError;
use crate::fhir::search::extract::Extractor;
use crate::fhir::search::parse::{ParseOptions, parse_search};
use crate::fhir::search::registry::Registry;
use crate::store::{Visibility, Write, WriteTx};

/// Checks the writes of one job against the workflow, and adds the
/// versions of the programmes that follow them.
pub async fn apply(tx: &mut WriteTx, writes: &mut Vec<Write>) -> Result<(), FhirError> {
    let acting = Acting::of(tx.visibility());
    let mut follow = episode::Follow::default();
    for i in 0..writes.len() {
        match writes[i].resource_type.as_str() {
            "Task" => task::check(tx, writes, i, &acting, &mut follow).await?,
            "ServiceRequest" => prescription::check(tx, writes, i, &acting).await?,
            "EpisodeOfCare" => episode::check(tx, &writes[i]).await?,
            "Encounter" => follow.note_session(&writes[i]),
            _ => {}
        }
    }
    follow.apply(tx, writes).await
}

/// Whom a write job acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acting {
    /// The operator of the gateway: any move the tables allow.
    Operator,
    /// A client acting for this organisation (`Organization/<id>`).
    Organisation(String),
    /// A client of no organisation: owner or requester of nothing.
    Nobody,
}

impl Acting {
    pub fn of(vis: &Visibility) -> Acting {
        match vis {
            Visibility::All => Acting::Operator,
            Visibility::Party(Some(p)) => Acting::Organisation(p.clone()),
            Visibility::Party(None) => Acting::Nobody,
        }
    }

    /// Is this party one of `organisations`?
    fn is_among(&self, organisations: &[String]) -> bool {
        match self {
            Acting::Operator => true,
            Acting::Organisation(p) => organisations.contains(p),
            Acting::Nobody => false,
        }
    }
}

/// What a Reference points at, compared and resolved as such (a change of
/// `display` is no change of target).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `Type/id`, relative or absolute, version dropped.
    Local { rtype: String, id: String },
    /// Anything else: another URL, a `urn:`, a logical `identifier`.
    Other(String),
}

impl Target {
    /// The target of a Reference element, if it names one.
    pub fn of(reference: Option<&Value>) -> Option<Target> {
        let r = reference?;
        if let Some(text) = r.get("reference").and_then(Value::as_str) {
            return match Extractor::r4().parse_reference(text)? {
                (Some(rtype), id) => Some(Target::Local {
                    rtype: rtype.to_string(),
                    id,
                }),
                (None, other) => Some(Target::Other(other)),
            };
        }
        let identifier = r.get("identifier")?;
        let system = identifier.get("system").and_then(Value::as_str).unwrap_or("");
        let value = identifier.get("value").and_then(Value::as_str)?;
        Some(Target::Other(format!("{system}|{value}")))
    }

    /// The id when the target is a `rtype`.
    pub fn id_of(&self, rtype: &str) -> Option<&str> {
        match self {
            Target::Local { rtype: t, id } if t == rtype => Some(id),
            _ => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Local { rtype, id } => write!(f, "{rtype}/{id}"),
            Target::Other(s) => f.write_str(s),
        }
    }
}

/// A workflow refusal: the rule's name leads the diagnostics, the
/// expression names the element.
pub fn refuse(status: u16, code: &'static str, rule: &str, msg: impl std::fmt::Display, at: &str) -> FhirError {
    FhirError::new(status, code, format!("[{rule}] {msg}")).at(at)
}

/// Does the write's index hold a value for the search parameter `code`?
/// Lets the rules pass over the common writes (a new prescription that
/// renews nothing, an Encounter of no programme) without parsing them: the
/// rules run inside the single writer.
fn indexes(w: &Write, code: &str) -> bool {
    w.index.iter().any(|(c, _)| c == code)
}

/// The JSON of a write's body (`None` for a deletion).
fn body_of(w: &Write) -> Result<Option<Value>, FhirError> {
    match &w.body {
        None => Ok(None),
        Some(b) => serde_json::from_slice(b)
            .map(Some)
            .map_err(|_| FhirError::internal("a resource of the write job could not be read back")),
    }
}

/// The current JSON of `rtype/id` as the job will leave it: its own write
/// if it writes one (`None` when that is a deletion), else what is stored
/// and the job may see.
async fn current_json(tx: &mut WriteTx, writes: &[Write], rtype: &str, id: &str) -> Result<Option<Value>, FhirError> {
    if let Some(w) = writes.iter().find(|w| w.resource_type == rtype && w.id == id) {
        return body_of(w);
    }
    let Some(v) = tx.read(rtype, id).await? else {
        return Ok(None);
    };
    Ok(v.body.and_then(|b| serde_json::from_slice(&b).ok()))
}

/// The organisations a party reference stands for (`Organization/<id>`):
/// an Organization itself, a PractitionerRole's `organization`, a
/// Practitioner's organisations through their PractitionerRoles. Empty
/// when nothing is known of it.
pub async fn organisations_of(tx: &mut WriteTx, writes: &[Write], target: &Target) -> Result<Vec<String>, FhirError> {
    let Target::Local { rtype, id } = target else {
        return Ok(Vec::new());
    };
    let mut out: Vec<String> = Vec::new();
    match rtype.as_str() {
        "Organization" => out.push(format!("Organization/{id}")),
        "PractitionerRole" => {
            if let Some(role) = current_json(tx, writes, "PractitionerRole", id).await? {
                out.extend(role_organisation(&role));
            }
        }
        "Practitioner" => {
            let reference = format!("Practitioner/{id}");
            for w in writes.iter().filter(|w| w.resource_type == "PractitionerRole") {
                if let Some(role) = body_of(w)?
                    && Target::of(role.get("practitioner")).is_some_and(|t| t.to_string() == reference)
                {
                    out.extend(role_organisation(&role));
                }
            }
            let pairs = vec![("practitioner".to_string(), reference)];
            let opts = ParseOptions {
                strict: true,
                default_count: 50,
                max_count: 50,
                ..ParseOptions::default()
            };
            let req = parse_search(Registry::r4(), Some("PractitionerRole"), &pairs, &opts)?;
            for (_, role_id, _) in tx.search_keys(&req, 50).await? {
                if writes
                    .iter()
                    .any(|w| w.resource_type == "PractitionerRole" && w.id == role_id)
                {
                    continue;
                }
                if let Some(role) = current_json(tx, writes, "PractitionerRole", &role_id).await? {
                    out.extend(role_organisation(&role));
                }
            }
        }
        _ => {}
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `PractitionerRole.organization` as `Organization/<id>`.
fn role_organisation(role: &Value) -> Option<String> {
    Target::of(role.get("organization"))?
        .id_of("Organization")
        .map(|id| format!("Organization/{id}"))
}

/// TRE-G15 ProfessionSante (ANS nomenclature, FR Core
/// `PractitionerRole.code` and `Practitioner.qualification`).
pub const PROFESSION_SANTE: &str =
    "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante";
/// Our staff kinds (profiles/CodeSystem-staff-kind.json); `MK` is TRE-G15 70.
pub const STAFF_KIND: &str = "https://apa-gateway.fr/fhir/CodeSystem/staff-kind";

/// The profession a prescription's requester acts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profession {
    /// TRE-G15 `10` Médecin: prescribes.
    Physician,
    /// TRE-G15 `70` Masseur-kinésithérapeute (staff-kind `MK`): renews once.
    Physiotherapist,
    /// Another profession of TRE-G15 or staff-kind (an APA teacher, a
    /// nurse…): neither prescribes nor renews.
    Other,
    /// No profession coded in those systems: the gateway cannot tell.
    Unknown,
}

impl Profession {
    /// From the codings of `PractitionerRole.code` or
    /// `Practitioner.qualification.code`. A physician who is also a
    /// physiotherapist prescribes as a physician.
    pub fn of_codings<'a>(codings: impl Iterator<Item = &'a Value>) -> Profession {
        let mut found = Profession::Unknown;
        for c in codings {
            let system = c.get("system").and_then(Value::as_str);
            let code = c.get("code").and_then(Value::as_str);
            match (system, code) {
                (Some(PROFESSION_SANTE), Some("10")) => return Profession::Physician,
                (Some(PROFESSION_SANTE), Some("70")) | (Some(STAFF_KIND), Some("MK")) => {
                    found = Profession::Physiotherapist;
                }
                (Some(PROFESSION_SANTE | STAFF_KIND), Some(_)) if found == Profession::Unknown => {
                    found = Profession::Other;
                }
                _ => {}
            }
        }
        found
    }
}

/// The profession of a requester: a PractitionerRole's `code`, a
/// Practitioner's `qualification`; anything else is `Unknown`.
pub async fn profession_of(tx: &mut WriteTx, writes: &[Write], target: &Target) -> Result<Profession, FhirError> {
    let Target::Local { rtype, id } = target else {
        return Ok(Profession::Unknown);
    };
    let (element, inner) = match rtype.as_str() {
        "PractitionerRole" => ("code", None),
        "Practitioner" => ("qualification", Some("code")),
        _ => return Ok(Profession::Unknown),
    };
    let Some(json) = current_json(tx, writes, rtype, id).await? else {
        return Ok(Profession::Unknown);
    };
    let concepts = json.get(element).and_then(Value::as_array).into_iter().flatten();
    let concepts = concepts.filter_map(|c| match inner {
        Some(key) => c.get(key),
        None => Some(c),
    });
    let codings = concepts
        .filter_map(|c| c.get("coding").and_then(Value::as_array))
        .flatten();
    Ok(Profession::of_codings(codings))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_reference_is_its_target() {
        let t = Target::of(Some(&json!({"reference": "Organization/mss-1", "display": "MSS"})));
        assert_eq!(
            t,
            Some(Target::Local {
                rtype: "Organization".into(),
                id: "mss-1".into()
            })
        );
        let absolute = Target::of(Some(
            &json!({"reference": "https://gw.example/fhir/Organization/mss-1/_history/3"}),
        ));
        assert_eq!(absolute, t);
        let logical = Target::of(Some(
            &json!({"identifier": {"system": "https://sirene.fr", "value": "1"}}),
        ));
        assert_eq!(logical, Some(Target::Other("https://sirene.fr|1".into())));
        assert_eq!(Target::of(Some(&json!({"display": "someone"}))), None);
        assert_eq!(Target::of(None), None);
    }

    #[test]
    fn professions_from_their_codes() {
        let kine = json!([{"system": PROFESSION_SANTE, "code": "70"}]);
        let doctor_and_kine =
            json!([{"system": PROFESSION_SANTE, "code": "70"}, {"system": PROFESSION_SANTE, "code": "10"}]);
        let staff = json!([{"system": STAFF_KIND, "code": "MK"}]);
        let elsewhere = json!([{"system": "http://example.org", "code": "70"}]);
        let teacher = json!([{"system": STAFF_KIND, "code": "EAPA"}]);
        let of = |v: &Value| Profession::of_codings(v.as_array().into_iter().flatten());
        assert_eq!(of(&kine), Profession::Physiotherapist);
        assert_eq!(of(&staff), Profession::Physiotherapist);
        assert_eq!(of(&doctor_and_kine), Profession::Physician);
        assert_eq!(of(&elsewhere), Profession::Unknown);
        assert_eq!(of(&teacher), Profession::Other);
    }

    #[test]
    fn the_operator_is_every_party_a_client_of_no_organisation_none() {
        let orgs = vec!["Organization/a".to_string()];
        assert!(Acting::Operator.is_among(&[]));
        assert!(Acting::Organisation("Organization/a".into()).is_among(&orgs));
        assert!(!Acting::Organisation("Organization/b".into()).is_among(&orgs));
        assert!(!Acting::Nobody.is_among(&orgs));
    }
}
