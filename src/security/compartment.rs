//! Organisation compartments: which organisation sees which patient.
//!
//! Access is granted per patient, by the writes that make an organisation
//! part of that patient's care, following the rules in [`GRANTS`],
//! [`AUTHOR_GRANTS`] and [`TERRITORY_GRANTS`] — the only place they are
//! written down. A resource
//! that concerns patients (it references them, or is one) is visible to a
//! caller whose organisation was granted every one of them; a resource that
//! concerns no patient (Practitioner, Organization, HealthcareService…) to
//! every authenticated caller its scopes allow. The operator sees
//! everything. The store applies the result (`Visibility`) on every read
//! path — read, vread, search and what it looks through (`_include`,
//! `_revinclude`, chains, `_has`), history, and the reads of write jobs —
//! so that what lies outside is simply absent.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use serde_json::Value;

use crate::clock::now_micros;
use crate::fhir::error::FhirError;
use crate::fhir::search::model::IndexValue;
use crate::fhir::search::parse::{ParseOptions, parse_search};
use crate::fhir::search::registry::Registry;
use crate::store::{Grant, Store, StoreError, Visibility, Write, WriteTx};

use super::Caller;
use super::consent::{self, Decision, Kind, Recipient};

/// The scope of the operator of the gateway, who sees every organisation's
/// data (administration, support, the sector's indicators).
pub const OPERATOR_SCOPE: &str = "operator";

/// Whom a reference in these search parameters names gains access to the
/// patients of the resource: `(resource type, reference parameter)`. An
/// Organization gains it directly, a PractitionerRole for its organization.
pub const GRANTS: &[(&str, &str)] = &[
    // The patient's own GP (médecin traitant), as the patient's record
    // declares them.
    ("Patient", "general-practitioner"),
    // The prescriber's organisation, and the performer chosen on the
    // prescription.
    ("ServiceRequest", "requester"),
    ("ServiceRequest", "performer"),
    // The referral: whoever asks for it and whoever owns (or once owned)
    // it — an MSS that accepts, refuses or hands over a Task.
    ("Task", "requester"),
    ("Task", "owner"),
    // The programme and its care team.
    ("EpisodeOfCare", "organization"),
    ("EpisodeOfCare", "care-manager"),
    ("CareTeam", "participant"),
];

/// The organisation that writes one of these gains access to its patients:
/// whoever registers a patient, and a prescriber who refers one.
pub const AUTHOR_GRANTS: &[&str] = &["Patient", "ServiceRequest"];

/// Grants by territory: a write of the resource type gives its patients to
/// every organisation of the kind whose territory covers the patient's
/// home — a CPTS sees the referrals (Tasks) of its territory and the data
/// of those patients. Where a patient lives and what an organisation
/// covers is the product's knowledge, not this module's: the product's
/// rules (`fhir::rules::Rules::apply`, the APA domain's `apa::routing`)
/// read this table and propose the grants in `Write::grants`; [`admit`]
/// decides them against the patient's consent like every other grant, and
/// keeps only those about the write's own patients.
pub const TERRITORY_GRANTS: &[(&str, Kind)] = &[("Task", Kind::Cpts)];

impl Caller {
    /// What this caller may see.
    pub fn visibility(&self) -> Visibility {
        if self.scopes.has(OPERATOR_SCOPE) {
            Visibility::All
        } else {
            Visibility::Party(self.organization.as_deref().map(party))
        }
    }
}

/// The grant key of an organisation: `Organization/<id>`.
fn party(org: &str) -> String {
    if org.contains('/') {
        org.to_string()
    } else {
        format!("Organization/{org}")
    }
}

/// The Organization a client registered with `--organization` acts for:
/// an id (`abc` or `Organization/abc`) as it is, a SIRET (14 digits), a
/// SIREN (9) or a FINESS (9) looked up among the stored Organizations.
/// `None` when a number matches no Organization (or several): such a
/// caller sees no patient data until the Organization is registered.
pub async fn resolve_organization(store: &Store, registered: &str) -> Result<Option<String>, StoreError> {
    let digits = registered.len() >= 9 && registered.bytes().all(|b| b.is_ascii_digit());
    if !digits {
        return Ok(Some(registered.trim_start_matches("Organization/").to_string()));
    }
    let systems: &[&str] = match registered.len() {
        14 => &["https://sirene.fr", "http://sirene.fr", "urn:oid:1.2.250.1.71.4.2.2"],
        9 => &[
            "https://sirene.fr",
            "https://finess.esante.gouv.fr",
            "urn:oid:1.2.250.1.71.4.2.2",
        ],
        _ => return Ok(None),
    };
    // One search, the candidate identifiers OR-ed; idNatSt prefixes the
    // number: 3 + SIRET, 1 + FINESS, 2 + SIREN.
    let candidates: Vec<String> = systems
        .iter()
        .flat_map(|system| {
            let prefixes: &[&str] = if system.starts_with("urn:oid") {
                &["1", "2", "3"]
            } else {
                &[""]
            };
            prefixes.iter().map(move |p| format!("{system}|{p}{registered}"))
        })
        .collect();
    let pairs = vec![("identifier".to_string(), candidates.join(","))];
    let opts = ParseOptions {
        strict: true,
        default_count: 2,
        max_count: 2,
        ..ParseOptions::default()
    };
    let Ok(req) = parse_search(Registry::r4(), Some("Organization"), &pairs, &opts) else {
        return Ok(None);
    };
    let page = store.search(&req, &Visibility::All).await?;
    // Two matches are as ambiguous as none.
    Ok(match page.matches.as_slice() {
        [one] => Some(one.id.clone()),
        _ => None,
    })
}

/// The patients a resource concerns: its own id for a Patient, and every
/// Patient it references through a search parameter.
pub fn patients_of(resource_type: &str, id: &str, index: &[(String, IndexValue)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if resource_type == "Patient" {
        out.push(id.to_string());
    }
    for (_, v) in index {
        if let IndexValue::Reference {
            rtype: Some(t),
            id: Some(target),
            ..
        } = v
            && t == "Patient"
            && !out.contains(target)
        {
            out.push(target.clone());
        }
    }
    out
}

/// Records the patients and grants of a job's writes, and refuses the job
/// ([`not_admitted`]) when it writes about a patient outside the caller's
/// compartment or takes an id that exists outside it. Each grant is decided
/// against the patient's consent; a Consent written or deleted re-decides
/// the grants of its patient. Called on every write job, right before its
/// rows are stored.
pub async fn admit(tx: &mut WriteTx, writes: &mut [Write]) -> Result<(), FhirError> {
    // Who acts is the caller (AUTHORSHIP), before anything is granted.
    super::authorship::check(tx, writes).await?;
    // And the directory it writes is its own (OWNERSHIP).
    super::ownership::check(tx, writes).await?;
    let vis = tx.visibility().clone();
    let author = match &vis {
        Visibility::Party(Some(p)) => Some(p.clone()),
        _ => None,
    };
    // PractitionerRoles written in this job, for the rules that name one.
    let pending_roles: HashMap<String, Option<String>> = writes
        .iter()
        .filter(|w| w.resource_type == "PractitionerRole")
        .map(|w| (w.id.clone(), w.body.as_deref().and_then(role_organization)))
        .collect();
    // (write, party, patient) of every grant to decide.
    let mut wanted: Vec<(usize, String, String)> = Vec::new();
    for (i, w) in writes.iter_mut().enumerate() {
        // Grants the product's rules proposed (TERRITORY_GRANTS).
        let proposed = std::mem::take(&mut w.grants);
        if w.body.is_none() {
            continue;
        }
        w.patients = patients_of(&w.resource_type, &w.id, &w.index);
        if w.patients.is_empty() {
            continue;
        }
        wanted.extend(
            proposed
                .into_iter()
                .filter(|g| w.patients.contains(&g.patient))
                .map(|g| (i, g.party, g.patient)),
        );
        let mut parties: Vec<String> = Vec::new();
        for (code, v) in &w.index {
            if !GRANTS.iter().any(|(t, p)| *t == w.resource_type && p == code) {
                continue;
            }
            let IndexValue::Reference {
                rtype: Some(t),
                id: Some(target),
                ..
            } = v
            else {
                continue;
            };
            match t.as_str() {
                "Organization" => parties.push(format!("Organization/{target}")),
                "PractitionerRole" => {
                    let org = match pending_roles.get(target) {
                        Some(org) => org.clone(),
                        None => stored_role_organization(tx, target).await?,
                    };
                    parties.extend(org);
                }
                _ => {}
            }
        }
        if AUTHOR_GRANTS.contains(&w.resource_type.as_str()) {
            parties.extend(author.clone());
        }
        parties.sort();
        parties.dedup();
        for party in parties {
            wanted.extend(w.patients.iter().map(|p| (i, party.clone(), p.clone())));
        }
    }
    // A Consent written or deleted re-decides every grant of its patients.
    for (i, w) in writes.iter().enumerate() {
        if w.resource_type != "Consent" {
            continue;
        }
        let mut patients = w.patients.clone();
        if let Some(pk) = w.pk {
            patients.extend(tx.patients_of(pk).await?);
        }
        patients.sort();
        patients.dedup();
        for p in patients {
            for party in tx.grantees(&p).await? {
                wanted.push((i, party, p.clone()));
            }
        }
    }
    let mut consents: HashMap<String, Vec<Value>> = HashMap::new();
    let mut kinds: HashMap<String, Option<Kind>> = HashMap::new();
    let now = now_micros();
    for (i, party, patient) in wanted {
        if !consents.contains_key(&patient) {
            let list = consents_of(tx, writes, &patient).await?;
            consents.insert(patient.clone(), list);
        }
        if !kinds.contains_key(&party) {
            let kind = organization_kind(tx, writes, &party).await?;
            kinds.insert(party.clone(), kind);
        }
        let recipient = Recipient {
            kind: kinds.get(&party).copied().flatten(),
            organization: Some(&party),
        };
        let list = consents.get(&patient).map(Vec::as_slice).unwrap_or_default();
        let denied = consent::decide(list, recipient, now) == Decision::Deny;
        if let Some(w) = writes.get_mut(i) {
            w.grants.push(Grant { party, patient, denied });
        }
    }
    if vis == Visibility::All {
        return Ok(());
    }
    let established: HashSet<(&str, &str)> = writes
        .iter()
        .flat_map(|w| &w.grants)
        .filter(|g| !g.denied)
        .map(|g| (g.party.as_str(), g.patient.as_str()))
        .collect();
    // A job brings a patient into its author's compartment only when it
    // registers the patient or identifies one registered elsewhere by
    // their national identity (`WriteTx::vouch`): naming a patient's id
    // is not enough, or an organisation would gain any patient whose id it
    // learnt by writing a prescription or a Task naming itself.
    let identified: HashSet<String> = writes
        .iter()
        .filter(|w| w.resource_type == "Patient" && w.pk.is_none() && w.body.is_some())
        .map(|w| w.id.clone())
        .chain(
            tx.vouched()
                .iter()
                .filter_map(|r| r.strip_prefix("Patient/"))
                .map(str::to_string),
        )
        .collect();
    let granted_here = |p: &String| {
        identified.contains(p)
            && author
                .as_deref()
                .is_some_and(|a| established.contains(&(a, p.as_str())))
    };
    // One lookup for the whole job.
    let mut pending: Vec<String> = writes
        .iter()
        .flat_map(|w| &w.patients)
        .filter(|p| !granted_here(p))
        .cloned()
        .collect();
    pending.sort();
    pending.dedup();
    let outside: HashSet<String> = tx.ungranted(&pending).await?.into_iter().collect();
    for w in writes.iter() {
        // An id taken outside the compartment gets the answer of any write
        // the compartment refuses: a distinct one would tell which ids
        // exist among those the caller cannot see.
        if (w.pk.is_none() && tx.exists(&w.resource_type, &w.id).await?)
            || w.patients.iter().any(|p| outside.contains(p))
        {
            return Err(not_admitted(&w.resource_type));
        }
    }
    Ok(())
}

/// The one answer to a write the caller's organisation may not make: it
/// concerns a patient outside its compartment, or names an id that is not
/// free for it (taken by a resource it cannot see). It says neither which
/// nor whether anything exists; `expression` is the resource written.
pub fn not_admitted(resource_type: &str) -> FhirError {
    FhirError::new(
        403,
        "forbidden",
        "your organisation may not write this resource: it concerns a patient outside your organisation's \
         compartment, or its id is not available to your organisation",
    )
    .at(resource_type)
}

/// The patient's Consents as they will be once the job is stored: the
/// stored ones, replaced or removed by those the job writes.
async fn consents_of(tx: &mut WriteTx, writes: &[Write], patient: &str) -> Result<Vec<Value>, FhirError> {
    let mut by_id: HashMap<String, Option<Bytes>> = tx
        .of_patient("Consent", patient)
        .await?
        .into_iter()
        .map(|v| (v.id, v.body))
        .collect();
    for w in writes.iter().filter(|w| w.resource_type == "Consent") {
        if w.body.is_none() || w.patients.iter().any(|p| p == patient) {
            by_id.insert(w.id.clone(), w.body.clone());
        }
    }
    Ok(by_id
        .into_values()
        .flatten()
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect())
}

/// The kind of recipient an organisation declares (`Organization.type`).
async fn organization_kind(tx: &mut WriteTx, writes: &[Write], party: &str) -> Result<Option<Kind>, FhirError> {
    let Some(id) = party.strip_prefix("Organization/") else {
        return Ok(None);
    };
    let body = match writes.iter().find(|w| w.resource_type == "Organization" && w.id == id) {
        Some(w) => w.body.clone(),
        None => tx.read("Organization", id).await?.and_then(|v| v.body),
    };
    Ok(body
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|org| Kind::of_organization(&org)))
}

/// `PractitionerRole.organization` as `Organization/<id>`.
fn role_organization(body: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let reference = json.get("organization")?.get("reference")?.as_str()?;
    let id = reference.rsplit_once("Organization/").map(|(_, id)| id)?;
    let id = id.split('/').next().filter(|id| !id.is_empty())?;
    Some(format!("Organization/{id}"))
}

async fn stored_role_organization(tx: &mut WriteTx, id: &str) -> Result<Option<String>, FhirError> {
    Ok(tx
        .read("PractitionerRole", id)
        .await?
        .and_then(|v| v.body)
        .and_then(|b| role_organization(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(t: &str, id: &str) -> IndexValue {
        IndexValue::Reference {
            rtype: Some(t.into()),
            id: Some(id.into()),
            identifier: None,
        }
    }

    #[test]
    fn a_patient_concerns_itself_and_an_observation_its_subject() {
        assert_eq!(patients_of("Patient", "p1", &[]), vec!["p1"]);
        let index = vec![
            ("subject".to_string(), reference("Patient", "p2")),
            ("patient".to_string(), reference("Patient", "p2")),
            ("performer".to_string(), reference("Practitioner", "d1")),
        ];
        assert_eq!(patients_of("Observation", "o1", &index), vec!["p2"]);
        assert!(patients_of("Practitioner", "d1", &[]).is_empty());
    }

    #[test]
    fn the_organisation_of_a_practitioner_role() {
        let body = br#"{"resourceType":"PractitionerRole","organization":{"reference":"Organization/mss-1"}}"#;
        assert_eq!(role_organization(body).as_deref(), Some("Organization/mss-1"));
        assert_eq!(role_organization(br#"{"resourceType":"PractitionerRole"}"#), None);
    }

    #[test]
    fn the_operator_sees_everything_an_organisation_its_compartment() {
        let mut caller = Caller::system();
        assert_eq!(caller.visibility(), Visibility::All);
        caller.scopes = crate::security::scopes::Scopes::parse("system/*.rs").unwrap_or_default();
        caller.organization = Some("mss-1".into());
        assert_eq!(
            caller.visibility(),
            Visibility::Party(Some("Organization/mss-1".into()))
        );
    }
}
