//! The caller is the author: an element that says who did, authored or
//! recorded an act names the caller, never another organisation.
//!
//! The elements are the rows of [`AUTHORSHIP`], beside the compartment
//! rules (`compartment.rs`), and [`check`] applies them from `admit()`, the
//! one place every write job goes through (FHIR create, update, patch,
//! batch and transaction, and the flat API and CSV import, which are FHIR
//! transactions). Such an element may name:
//! - the caller's Organization;
//! - a PractitionerRole whose `organization` is the caller's, stored or
//!   written in the same job — and, for a professional's token (Pro Santé
//!   Connect), only one of that professional;
//! - a Practitioner: for a professional's token, that professional (an
//!   identifier that is their idNatPs, or their RPPS); for an
//!   organisation's client, a Practitioner with a PractitionerRole at the
//!   caller's organisation. A Practitioner belongs to no organisation, so
//!   naming one is accepted only where that tie exists;
//! - the patient or a RelatedPerson (a patient's own goal or statement):
//!   they are no organisation, and the compartment rules already decide
//!   whether the caller writes about that patient at all.
//!
//! Anything else is refused (403 `forbidden`, `expression` the element):
//! another organisation or its staff, a CareTeam, Device or
//! HealthcareService (name your Organization or PractitionerRole instead),
//! a reference that cannot be checked (display or identifier only,
//! contained, absolute URL). The operator is exempt (it loads and repairs
//! everyone's data). On an update, only what the update names anew is
//! checked: an organisation keeps a record another wrote, as the workflow
//! lets it (an MSS accepting a referral keeps its requester).
//!
//! The rows are FHIRPath element paths read from the resource, not search
//! parameters' index values: the refusal must locate the element, array
//! position included (which the flat API maps back to its input field),
//! several of these elements have no search parameter (`Condition.recorder`,
//! `Goal.expressedBy`, `Provenance.agent.onBehalfOf`), some parameters
//! cover more than the acting element (Encounter's `participant` includes
//! the referrer), and a display-only reference leaves no index value.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::fhir::error::FhirError;
use crate::fhir::search::parse::{ParseOptions, parse_search};
use crate::fhir::search::registry::Registry;
use crate::store::{Visibility, Write, WriteTx};

/// idNatPs (ANS): the professional's national id in their PSC token.
const ID_NAT_PS: &str = "urn:oid:1.2.250.1.71.4.2.1";
/// RPPS: an idNatPs is `8` followed by the RPPS number.
const RPPS: &str = "https://rpps.esante.gouv.fr";

/// The elements that say who acts: `(resource type, FHIRPath of the
/// Reference from the resource)`. Not listed, on purpose:
/// `ServiceRequest.performer` (the performer the prescriber addresses, an
/// MSS), `Task.owner` (the organisation a referral is addressed or handed
/// over to; who may change it is the workflow's rule), `Patient.
/// generalPractitioner` (the GP the patient declares), `Encounter.
/// participant` (includes the referrer), `EpisodeOfCare.careManager` and
/// `CareTeam.participant` (members, possibly of other organisations),
/// `Consent.performer` (the grantor — the patient — or the grantee who must
/// comply), `DocumentReference.custodian` (in MHD / PDSm, the repository
/// holding the document: the DMP), `QuestionnaireResponse.source` (who
/// answered: often the patient).
pub const AUTHORSHIP: &[(&str, &str)] = &[
    // The prescriber: naming another practice's physician would forge their
    // prescription (and put the patient in that practice's compartment).
    ("ServiceRequest", "requester"),
    // The referral's creator: a referral sent in another's name.
    ("Task", "requester"),
    // Who vouches for the measured value: an assessment attributed to another MSS.
    ("Observation", "performer"),
    // Who recorded, and who asserts, a diagnosis.
    ("Condition", "recorder"),
    ("Condition", "asserter"),
    // The organisation responsible for a session.
    ("Encounter", "serviceProvider"),
    // The organisation running a programme.
    ("EpisodeOfCare", "managingOrganization"),
    // Who wrote the care plan, the goal, the questionnaire's answers.
    ("CarePlan", "author"),
    ("Goal", "expressedBy"),
    ("QuestionnaireResponse", "author"),
    // Who issued, and who interpreted, a report.
    ("DiagnosticReport", "performer"),
    ("DiagnosticReport", "resultsInterpreter"),
    // Who wrote, and who authenticated (signed), a document.
    ("DocumentReference", "author"),
    ("DocumentReference", "authenticator"),
    ("Composition", "author"),
    ("Composition", "attester.party"),
    // The organisation that manages the consent it records.
    ("Consent", "organization"),
    // Who performed, recorded and asserts a procedure.
    ("Procedure", "performer.actor"),
    ("Procedure", "recorder"),
    ("Procedure", "asserter"),
    // Who sends a message.
    ("Communication", "sender"),
    // Who recorded, and who asserts, an allergy.
    ("AllergyIntolerance", "recorder"),
    ("AllergyIntolerance", "asserter"),
    // The custodian of the patient's record.
    ("Patient", "managingOrganization"),
    // The organisation responsible for a care team.
    ("CareTeam", "managingOrganization"),
    // Who took part in an activity, and for whom.
    ("Provenance", "agent.who"),
    ("Provenance", "agent.onBehalfOf"),
    // Who reports indicators.
    ("MeasureReport", "reporter"),
];

/// Runs `f` (the rest of a request) so that its write jobs know the
/// professional acting, if the token is a professional's.
pub async fn acting<F: std::future::Future>(professional: Option<String>, f: F) -> F::Output {
    crate::store::with_professional(professional, f).await
}

/// A reference an acting element holds, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// FHIRPath from the resource type: `Observation.performer[0]`.
    pub at: String,
    /// `(type, id)` of a local literal reference; `None`: nothing that can
    /// be checked (display or identifier only, contained, absolute URL).
    pub target: Option<(String, String)>,
}

/// The references of the acting elements of a resource.
pub fn named(resource_type: &str, body: &Value) -> Vec<Named> {
    AUTHORSHIP
        .iter()
        .filter(|(t, _)| *t == resource_type)
        .flat_map(|(_, path)| references(resource_type, path, body))
        .collect()
}

/// The references at `path` (a FHIRPath from the resource, as in
/// [`AUTHORSHIP`]) of a resource, with their position.
pub fn references(resource_type: &str, path: &str, body: &Value) -> Vec<Named> {
    let mut out = Vec::new();
    let segments: Vec<&str> = path.split('.').collect();
    collect(body, &segments, resource_type.to_string(), &mut out);
    out
}

fn collect(v: &Value, segments: &[&str], at: String, out: &mut Vec<Named>) {
    let Some((first, rest)) = segments.split_first() else {
        let target = v.get("reference").and_then(Value::as_str).and_then(local_reference);
        out.push(Named { at, target });
        return;
    };
    match v.get(*first) {
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                collect(item, rest, format!("{at}.{first}[{i}]"), out);
            }
        }
        Some(item @ Value::Object(_)) => collect(item, rest, format!("{at}.{first}"), out),
        _ => {}
    }
}

/// `Type/id` or `Type/id/_history/v` → (type, id); anything else (an
/// absolute URL may name another server) → `None`.
pub fn local_reference(r: &str) -> Option<(String, String)> {
    let mut parts = r.split('/');
    let (t, id) = (parts.next()?, parts.next()?);
    let rest: Vec<&str> = parts.collect();
    let typed =
        t.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && t.chars().all(|c| c.is_ascii_alphanumeric());
    let versioned = rest.is_empty() || (rest.len() == 2 && rest[0] == "_history");
    (typed && versioned && crate::fhir::resource::valid_id(id)).then(|| (t.to_string(), id.to_string()))
}

/// Who writes: their organisation (`Organization/<id>`) and, for a
/// professional's token, their idNatPs.
#[derive(Debug, Clone, Default)]
pub struct Author {
    pub party: Option<String>,
    pub professional: Option<String>,
}

/// What [`judge`] needs to know of the roles and practitioners named.
#[derive(Debug, Default)]
pub struct Known {
    /// PractitionerRole id → (its organization, its practitioner), as
    /// `Organization/<id>` and a Practitioner id.
    pub roles: HashMap<String, (Option<String>, Option<String>)>,
    /// Practitioner ids that are the professional acting.
    pub the_professional: HashSet<String>,
    /// Practitioner ids with a PractitionerRole at the author's organisation.
    pub practising_here: HashSet<String>,
}

/// Why a reference does not name the author, or `Ok`.
pub fn judge(target: Option<&(String, String)>, author: &Author, known: &Known) -> Result<(), &'static str> {
    let Some((t, id)) = target else {
        return Err("only a literal reference (Type/id) to a resource of this gateway can be checked");
    };
    let party = author.party.as_deref();
    match t.as_str() {
        "Patient" | "RelatedPerson" => Ok(()),
        "Organization" if party == Some(format!("Organization/{id}").as_str()) => Ok(()),
        "Organization" => Err("it is not your organisation"),
        "PractitionerRole" => match known.roles.get(id) {
            None => Err("no such PractitionerRole"),
            Some((org, _)) if org.as_deref() != party || party.is_none() => {
                Err("this PractitionerRole is not at your organisation")
            }
            Some((_, practitioner)) => match &author.professional {
                None => Ok(()),
                Some(_)
                    if practitioner
                        .as_ref()
                        .is_some_and(|p| known.the_professional.contains(p)) =>
                {
                    Ok(())
                }
                Some(_) => Err("this PractitionerRole is not yours (the professional of the token)"),
            },
        },
        "Practitioner" => match &author.professional {
            Some(_) if known.the_professional.contains(id) => Ok(()),
            Some(_) => Err("this Practitioner is not you (the professional of the token)"),
            None if known.practising_here.contains(id) => Ok(()),
            None => Err("this Practitioner has no PractitionerRole at your organisation"),
        },
        _ => Err("name your Organization, or a PractitionerRole at it, instead"),
    }
}

/// Does this Practitioner carry the professional's national id?
pub fn is_professional(practitioner: &Value, id_nat_ps: &str) -> bool {
    let rpps = id_nat_ps.strip_prefix('8');
    practitioner
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|i| {
            let value = i.get("value").and_then(Value::as_str);
            match i.get("system").and_then(Value::as_str) {
                Some(ID_NAT_PS) => value == Some(id_nat_ps),
                Some(RPPS) => value.is_some() && value == rpps,
                _ => false,
            }
        })
}

/// `PractitionerRole.organization` (`Organization/<id>`) and
/// `.practitioner` (the id).
pub fn role_parts(role: &Value) -> (Option<String>, Option<String>) {
    let target = |element: &str, rtype: &str| {
        role.get(element)
            .and_then(|r| r.get("reference"))
            .and_then(Value::as_str)
            .and_then(local_reference)
            .filter(|(t, _)| t == rtype)
            .map(|(_, id)| id)
    };
    (
        target("organization", "Organization").map(|id| format!("Organization/{id}")),
        target("practitioner", "Practitioner"),
    )
}

/// Refuses (403) a job whose writes name, in an element of [`AUTHORSHIP`],
/// someone other than the caller. Called by `admit()` on every write job.
pub async fn check(tx: &mut WriteTx, writes: &[Write]) -> Result<(), FhirError> {
    let party = match tx.visibility() {
        Visibility::All => return Ok(()),
        Visibility::Party(p) => p.clone(),
    };
    let author = Author {
        party,
        professional: tx.professional().map(str::to_string),
    };
    let pending = Pending::of(writes);
    let mut known = Known::default();
    for w in writes {
        if !AUTHORSHIP.iter().any(|(t, _)| *t == w.resource_type) {
            continue;
        }
        let Some(body) = w.body.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok()) else {
            continue;
        };
        let mut names = named(&w.resource_type, &body);
        if names.is_empty() {
            continue;
        }
        // What the stored version already names is not named anew.
        if w.pk.is_some()
            && let Some(stored) = tx
                .read_unrestricted(&w.resource_type, &w.id)
                .await?
                .and_then(|v| v.body)
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
            let before: Vec<(String, Option<(String, String)>)> = named(&w.resource_type, &stored)
                .into_iter()
                .map(|n| (unindexed(&n.at), n.target))
                .collect();
            names.retain(|n| !before.contains(&(unindexed(&n.at), n.target.clone())));
        }
        for n in names {
            learn(tx, &pending, &author, n.target.as_ref(), &mut known).await?;
            if let Err(why) = judge(n.target.as_ref(), &author, &known) {
                let element = n.at.split_once('.').map_or(n.at.as_str(), |(_, e)| e);
                let named = n
                    .target
                    .as_ref()
                    .map_or_else(|| "a party".to_string(), |(t, id)| format!("{t}/{id}"));
                return Err(FhirError::new(
                    403,
                    "forbidden",
                    format!(
                        "{}/{}: {element} names {named}, and {why}; a client writes in its own name \
                         (its Organization, a PractitionerRole at it, or the professional of the token)",
                        w.resource_type, w.id
                    ),
                )
                .at(n.at));
            }
        }
    }
    Ok(())
}

fn unindexed(at: &str) -> String {
    let mut out = String::with_capacity(at.len());
    let mut skipping = false;
    for c in at.chars() {
        match c {
            '[' => skipping = true,
            ']' => skipping = false,
            _ if !skipping => out.push(c),
            _ => {}
        }
    }
    out
}

/// The PractitionerRoles and Practitioners the job itself writes.
struct Pending {
    roles: HashMap<String, (Option<String>, Option<String>)>,
    practitioners: HashMap<String, Value>,
}

impl Pending {
    fn of(writes: &[Write]) -> Pending {
        let body = |w: &Write| w.body.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok());
        let of_type = |t: &'static str| writes.iter().filter(move |w| w.resource_type == t);
        Pending {
            roles: of_type("PractitionerRole")
                .map(|w| (w.id.clone(), body(w).map(|b| role_parts(&b)).unwrap_or_default()))
                .collect(),
            practitioners: of_type("Practitioner")
                .filter_map(|w| Some((w.id.clone(), body(w)?)))
                .collect(),
        }
    }
}

/// Is a PractitionerRole of this Practitioner at this organisation stored?
pub(crate) async fn has_role_at(tx: &mut WriteTx, practitioner: &str, party: &str) -> Result<bool, FhirError> {
    let pairs = vec![
        ("practitioner".to_string(), format!("Practitioner/{practitioner}")),
        ("organization".to_string(), party.to_string()),
    ];
    let opts = ParseOptions {
        strict: true,
        default_count: 1,
        max_count: 1,
        ..ParseOptions::default()
    };
    match parse_search(Registry::r4(), Some("PractitionerRole"), &pairs, &opts) {
        Ok(req) => Ok(!tx.search_keys_unrestricted(&req, 1).await?.is_empty()),
        Err(_) => Ok(false),
    }
}

/// Looks up what [`judge`] needs of `target`, once per job.
async fn learn(
    tx: &mut WriteTx,
    pending: &Pending,
    author: &Author,
    target: Option<&(String, String)>,
    known: &mut Known,
) -> Result<(), FhirError> {
    let Some((t, id)) = target else { return Ok(()) };
    let practitioner = match t.as_str() {
        "PractitionerRole" => {
            if !known.roles.contains_key(id) {
                let parts = match pending.roles.get(id) {
                    Some(parts) => Some(parts.clone()),
                    None => tx
                        .read_unrestricted("PractitionerRole", id)
                        .await?
                        .and_then(|v| v.body)
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                        .map(|role| role_parts(&role)),
                };
                if let Some(parts) = parts {
                    known.roles.insert(id.clone(), parts);
                }
            }
            known.roles.get(id).and_then(|(_, p)| p.clone())
        }
        "Practitioner" => Some(id.clone()),
        _ => None,
    };
    let Some(practitioner) = practitioner else {
        return Ok(());
    };
    match (&author.professional, &author.party) {
        (Some(me), _) => {
            let body = match pending.practitioners.get(&practitioner) {
                Some(b) => Some(b.clone()),
                None => tx
                    .read_unrestricted("Practitioner", &practitioner)
                    .await?
                    .and_then(|v| v.body)
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok()),
            };
            if body.is_some_and(|b| is_professional(&b, me)) {
                known.the_professional.insert(practitioner);
            }
        }
        (None, Some(party)) if t == "Practitioner" && !known.practising_here.contains(&practitioner) => {
            let here = |(org, p): &(Option<String>, Option<String>)| {
                org.as_deref() == Some(party.as_str()) && p.as_deref() == Some(practitioner.as_str())
            };
            if pending.roles.values().any(here) || has_role_at(tx, &practitioner, party).await? {
                known.practising_here.insert(practitioner);
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn colombier() -> Author {
        Author {
            party: Some("Organization/cabinet-colombier".into()),
            professional: None,
        }
    }

    fn target(t: &str, id: &str) -> Option<(String, String)> {
        Some((t.into(), id.into()))
    }

    #[test]
    fn the_acting_elements_are_found_with_their_position() {
        let obs = json!({"resourceType": "Observation",
            "performer": [{"reference": "Organization/a"}, {"display": "MSS B"}]});
        assert_eq!(
            named("Observation", &obs),
            vec![
                Named {
                    at: "Observation.performer[0]".into(),
                    target: target("Organization", "a")
                },
                Named {
                    at: "Observation.performer[1]".into(),
                    target: None
                },
            ]
        );
        let proc = json!({"performer": [{"actor": {"reference": "PractitionerRole/r/_history/2"}}]});
        assert_eq!(named("Procedure", &proc)[0].at, "Procedure.performer[0].actor");
        assert_eq!(named("Procedure", &proc)[0].target, target("PractitionerRole", "r"));
    }

    #[test]
    fn the_addressee_of_a_prescription_is_not_its_author() {
        let sr = json!({"requester": {"reference": "PractitionerRole/me"},
                        "performer": [{"reference": "Organization/mss"}]});
        let at: Vec<String> = named("ServiceRequest", &sr).into_iter().map(|n| n.at).collect();
        assert_eq!(at, ["ServiceRequest.requester"]);
        let task = json!({"requester": {"reference": "Organization/me"}, "owner": {"reference": "Organization/mss"}});
        assert_eq!(named("Task", &task).len(), 1);
    }

    #[test]
    fn only_local_literal_references_can_be_checked() {
        assert_eq!(local_reference("Organization/x"), target("Organization", "x"));
        assert_eq!(local_reference("https://elsewhere/fhir/Organization/x"), None);
        assert_eq!(local_reference("#contained"), None);
        assert_eq!(local_reference("urn:uuid:0b5e"), None);
        assert_eq!(local_reference("Organization?identifier=x"), None);
        assert!(judge(None, &colombier(), &Known::default()).is_err());
    }

    #[test]
    fn a_practice_names_itself_and_its_own_roles_only() {
        let mut known = Known::default();
        known.roles.insert(
            "dr-lebreton".into(),
            (Some("Organization/cabinet-colombier".into()), Some("lebreton".into())),
        );
        known.roles.insert(
            "dr-riou".into(),
            (Some("Organization/msp-cesson".into()), Some("riou".into())),
        );
        let me = colombier();
        assert!(judge(target("Organization", "cabinet-colombier").as_ref(), &me, &known).is_ok());
        assert!(judge(target("Organization", "msp-cesson").as_ref(), &me, &known).is_err());
        assert!(judge(target("PractitionerRole", "dr-lebreton").as_ref(), &me, &known).is_ok());
        assert!(judge(target("PractitionerRole", "dr-riou").as_ref(), &me, &known).is_err());
        assert!(judge(target("PractitionerRole", "unknown").as_ref(), &me, &known).is_err());
        assert!(judge(target("Patient", "p").as_ref(), &me, &known).is_ok());
        assert!(judge(target("HealthcareService", "h").as_ref(), &me, &known).is_err());
        // A Practitioner alone: only one practising here.
        assert!(judge(target("Practitioner", "lebreton").as_ref(), &me, &known).is_err());
        known.practising_here.insert("lebreton".into());
        assert!(judge(target("Practitioner", "lebreton").as_ref(), &me, &known).is_ok());
    }

    #[test]
    fn a_client_without_organisation_names_nobody() {
        let nobody = Author::default();
        let mut known = Known::default();
        known.roles.insert("r".into(), (None, Some("p".into())));
        assert!(judge(target("PractitionerRole", "r").as_ref(), &nobody, &known).is_err());
        assert!(judge(target("Organization", "x").as_ref(), &nobody, &known).is_err());
    }

    #[test]
    fn a_professional_names_themselves_not_a_colleague() {
        let me = Author {
            professional: Some("899700314521".into()),
            ..colombier()
        };
        let lebreton = json!({"identifier": [{"system": ID_NAT_PS, "value": "899700314521"}]});
        let by_rpps = json!({"identifier": [{"system": RPPS, "value": "99700314521"}]});
        let legoff = json!({"identifier": [{"system": ID_NAT_PS, "value": "899700314786"}]});
        assert!(is_professional(&lebreton, "899700314521"));
        assert!(is_professional(&by_rpps, "899700314521"));
        assert!(!is_professional(&legoff, "899700314521"));
        let mut known = Known::default();
        known.the_professional.insert("lebreton".into());
        known.practising_here.insert("legoff".into());
        let org = Some("Organization/cabinet-colombier".to_string());
        known
            .roles
            .insert("r-lebreton".into(), (org.clone(), Some("lebreton".into())));
        known.roles.insert("r-legoff".into(), (org, Some("legoff".into())));
        assert!(judge(target("Practitioner", "lebreton").as_ref(), &me, &known).is_ok());
        assert!(judge(target("PractitionerRole", "r-lebreton").as_ref(), &me, &known).is_ok());
        assert!(judge(target("Practitioner", "legoff").as_ref(), &me, &known).is_err());
        assert!(judge(target("PractitionerRole", "r-legoff").as_ref(), &me, &known).is_err());
        assert!(judge(target("Organization", "cabinet-colombier").as_ref(), &me, &known).is_ok());
    }

    #[test]
    fn every_row_names_a_reference_element_once() {
        let mut seen = HashSet::new();
        for (t, path) in AUTHORSHIP {
            assert!(seen.insert((t, path)), "{t}.{path} twice");
            assert!(
                !path.is_empty() && !path.starts_with(t),
                "{t}.{path}: a path from the resource"
            );
        }
    }

    #[test]
    fn positions_are_ignored_when_an_update_is_compared() {
        assert_eq!(unindexed("Observation.performer[3]"), "Observation.performer");
        assert_eq!(unindexed("Procedure.performer[0].actor"), "Procedure.performer.actor");
    }
}
