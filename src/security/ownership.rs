//! Organisations keep their own directory: an organisation writes only the
//! directory resources it owns.
//!
//! The directory (who an organisation is, its staff, its programmes, its
//! sites and endpoints) concerns no patient and is visible to every client,
//! and routing reads it: a HealthcareService `providedBy` an MSS decides
//! where a prescription goes. [`AUTHORSHIP`](super::authorship::AUTHORSHIP)
//! makes a client write acts in its own name; [`OWNERSHIP`] makes it write
//! the directory in its own name. For a caller other than the operator
//! (exempt: it loads and repairs the territory):
//! - a create names the caller's Organization as the owner;
//! - an update, patch or delete needs the stored version to belong to the
//!   caller's organisation, and an update keeps it so (no transfer);
//! - an Organization belongs to itself only, not to the organisation it is
//!   `partOf`: the child writes `partOf`, so ownership through it would let
//!   any organisation create "sites" with another's SIRET or FINESS,
//!   territories and kind (new routing targets, and identifiers that
//!   `resolve_organization` would find) under its own control;
//! - a Practitioner belongs to no organisation: any client may register one
//!   (a practice records its new physician before their role), only an
//!   organisation where they have a PractitionerRole — or the professional
//!   themself, with their Pro Santé Connect token, staying themself — may
//!   change it, and only the operator deletes it (their roles and their
//!   prescriptions at other organisations name it).
//!
//! [`check`] applies the table from `admit()`, beside the authorship rule,
//! on every write job. Refused: 403 `forbidden`, `expression` the owner
//! element of the version written (`HealthcareService.providedBy`), or the
//! resource type when the stored version is not the caller's.

use serde_json::Value;

use super::authorship::{self, Named, has_role_at, is_professional, role_parts};
use crate::fhir::error::FhirError;
use crate::store::{Visibility, Write, WriteTx};

/// Who owns a directory resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The Organization itself.
    Itself,
    /// The Organization this element (a FHIRPath from the resource)
    /// references.
    Element(&'static str),
    /// Nobody: see the module's documentation.
    Practitioner,
}

/// The owner of each directory resource type.
pub const OWNERSHIP: &[(&str, Owner)] = &[
    ("Organization", Owner::Itself),
    // A role at an organisation is that organisation's staff list.
    ("PractitionerRole", Owner::Element("organization")),
    // A programme: routing sends prescriptions to its provider.
    ("HealthcareService", Owner::Element("providedBy")),
    ("Location", Owner::Element("managingOrganization")),
    ("Endpoint", Owner::Element("managingOrganization")),
    ("CareTeam", Owner::Element("managingOrganization")),
    ("Device", Owner::Element("owner")),
    ("Practitioner", Owner::Practitioner),
];

/// The owner rule of a resource type, if it is one of the directory's.
pub fn owner_of(resource_type: &str) -> Option<Owner> {
    OWNERSHIP
        .iter()
        .find(|(t, _)| *t == resource_type)
        .map(|(_, owner)| *owner)
}

/// Does this reference name the caller's organisation (`Organization/<id>`)?
fn names(n: &Named, party: Option<&str>) -> bool {
    match (&n.target, party) {
        (Some((t, id)), Some(party)) => t == "Organization" && party.strip_prefix("Organization/") == Some(id),
        _ => false,
    }
}

fn shown(n: &Named) -> String {
    n.target.as_ref().map_or_else(
        || "no Organization of this gateway".to_string(),
        |(t, id)| format!("{t}/{id}"),
    )
}

/// A refusal located at `at`, about `Type/id` (first, so that a Bundle
/// puts it at the entry that wrote it).
fn refused(w: &Write, at: impl Into<String>, why: impl std::fmt::Display) -> FhirError {
    FhirError::new(
        403,
        "forbidden",
        format!(
            "{}/{}: {why}; an organisation writes only its own directory entries (the operator loads and repairs the others)",
            w.resource_type, w.id
        ),
    )
    .at(at)
}

/// Why writing `new` over `stored` (owner element `path`) is not the
/// caller's to do, or `Ok`. `None`: nothing stored (a create), or nothing
/// written (a delete).
pub fn judge_element(
    resource_type: &str,
    path: &str,
    stored: Option<&Value>,
    new: Option<&Value>,
    party: Option<&str>,
) -> Result<(), (String, String)> {
    let before = stored.map(|s| authorship::references(resource_type, path, s));
    if let Some(before) = &before
        && !before.iter().any(|n| names(n, party))
    {
        let owners: Vec<String> = before.iter().map(shown).collect();
        let owner = if owners.is_empty() {
            "no organisation".to_string()
        } else {
            owners.join(", ")
        };
        return Err((
            resource_type.to_string(),
            format!("it belongs to {owner}, not to your organisation"),
        ));
    }
    let Some(new) = new else { return Ok(()) };
    let after = authorship::references(resource_type, path, new);
    // An owner the stored version already had may stay (a care team
    // managed by two organisations); a new one is the caller.
    let kept = |n: &Named| {
        before
            .iter()
            .flatten()
            .any(|b| b.target.is_some() && b.target == n.target)
    };
    if let Some(n) = after.iter().find(|n| !names(n, party) && !kept(n)) {
        return Err((
            n.at.clone(),
            format!("{path} names {}, not your organisation", shown(n)),
        ));
    }
    if !after.iter().any(|n| names(n, party)) {
        return Err((
            format!("{resource_type}.{path}"),
            format!("{path} must name your Organization"),
        ));
    }
    Ok(())
}

fn parsed(body: Option<&[u8]>) -> Option<Value> {
    body.and_then(|b| serde_json::from_slice(b).ok())
}

/// Refuses (403) a job that writes a directory resource (one of
/// [`OWNERSHIP`]) the caller's organisation does not own. Called by
/// `admit()` on every write job.
pub async fn check(tx: &mut WriteTx, writes: &[Write]) -> Result<(), FhirError> {
    let party = match tx.visibility() {
        Visibility::All => return Ok(()),
        Visibility::Party(p) => p.clone(),
    };
    let professional = tx.professional().map(str::to_string);
    for w in writes {
        let Some(owner) = owner_of(&w.resource_type) else {
            continue;
        };
        let new = parsed(w.body.as_deref());
        // The version the caller sees: a resource outside its compartment
        // (a CareTeam, a Device about another's patient) has no `pk` here,
        // so it is judged as a create and the compartment answers, without
        // telling that it exists.
        let stored = match w.pk {
            Some(_) => parsed(tx.read(&w.resource_type, &w.id).await?.and_then(|v| v.body).as_deref()),
            None => None,
        };
        match owner {
            Owner::Itself => {
                if party.as_deref() != Some(format!("Organization/{}", w.id).as_str()) {
                    return Err(refused(
                        w,
                        w.resource_type.as_str(),
                        "it is not your organisation's Organization",
                    ));
                }
                // A SIRET or FINESS names the organisation a client acts
                // for (`clients add --organization`): one copied from
                // another organisation would take its place. The operator
                // registers them, having checked them.
                let ids = |r: &Option<Value>| r.as_ref().and_then(|r| r.get("identifier").cloned());
                if new.is_some() && ids(&new) != ids(&stored) {
                    return Err(refused(
                        w,
                        "Organization.identifier",
                        "the identifiers of an Organization (SIRET, FINESS) are registered by the operator",
                    ));
                }
            }
            Owner::Element(path) => {
                if let Err((at, why)) =
                    judge_element(&w.resource_type, path, stored.as_ref(), new.as_ref(), party.as_deref())
                {
                    return Err(refused(w, at, why));
                }
            }
            Owner::Practitioner => {
                let Some(stored) = stored else { continue };
                let Some(new) = new else {
                    return Err(refused(
                        w,
                        "Practitioner",
                        "a Practitioner is deleted by the operator only: other organisations' roles may name them",
                    ));
                };
                match (&professional, party.as_deref()) {
                    (Some(me), _) => {
                        if !is_professional(&stored, me) {
                            return Err(refused(
                                w,
                                "Practitioner",
                                "with a professional's token, you change your own Practitioner only",
                            ));
                        }
                        if !is_professional(&new, me) {
                            return Err(refused(
                                w,
                                "Practitioner.identifier",
                                "your Practitioner keeps your national identifier (idNatPs or RPPS)",
                            ));
                        }
                    }
                    (None, Some(party)) if practises_at(tx, writes, &w.id, party).await? => {}
                    (None, _) => {
                        return Err(refused(
                            w,
                            "Practitioner",
                            "this Practitioner has no PractitionerRole at your organisation",
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Has this Practitioner a PractitionerRole at `party`, stored or written
/// in the same job?
async fn practises_at(tx: &mut WriteTx, writes: &[Write], practitioner: &str, party: &str) -> Result<bool, FhirError> {
    let in_job = writes
        .iter()
        .filter(|w| w.resource_type == "PractitionerRole")
        .filter_map(|w| parsed(w.body.as_deref()))
        .map(|role| role_parts(&role))
        .any(|(org, p)| org.as_deref() == Some(party) && p.as_deref() == Some(practitioner));
    Ok(in_job || has_role_at(tx, practitioner, party).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VILAINE: Option<&str> = Some("Organization/mss-vilaine-active");

    fn programme(provider: &str) -> Value {
        json!({"resourceType": "HealthcareService", "providedBy": {"reference": provider}})
    }

    fn hs(stored: Option<&Value>, new: Option<&Value>) -> Result<(), (String, String)> {
        judge_element("HealthcareService", "providedBy", stored, new, VILAINE)
    }

    #[test]
    fn an_mss_creates_and_keeps_its_own_programme() {
        let own = programme("Organization/mss-vilaine-active");
        assert_eq!(hs(None, Some(&own)), Ok(()));
        assert_eq!(hs(Some(&own), Some(&own)), Ok(()));
        assert_eq!(hs(Some(&own), None), Ok(()));
    }

    #[test]
    fn an_mss_neither_writes_nor_takes_over_another_mss_programme() {
        let theirs = programme("Organization/mss-bouger-plus");
        let own = programme("Organization/mss-vilaine-active");
        let at = |r: Result<(), (String, String)>| r.err().map(|(at, _)| at);
        assert_eq!(
            at(hs(None, Some(&theirs))).as_deref(),
            Some("HealthcareService.providedBy")
        );
        assert_eq!(at(hs(Some(&theirs), Some(&own))).as_deref(), Some("HealthcareService"));
        assert_eq!(at(hs(Some(&theirs), None)).as_deref(), Some("HealthcareService"));
        // No transfer either.
        assert_eq!(
            at(hs(Some(&own), Some(&theirs))).as_deref(),
            Some("HealthcareService.providedBy")
        );
        // Nor an owner left out, or one that cannot be checked.
        let orphan = json!({"resourceType": "HealthcareService"});
        assert_eq!(
            at(hs(None, Some(&orphan))).as_deref(),
            Some("HealthcareService.providedBy")
        );
        assert_eq!(at(hs(Some(&orphan), Some(&own))).as_deref(), Some("HealthcareService"));
        let display = json!({"providedBy": {"display": "MSS Vilaine Active"}});
        assert_eq!(
            at(hs(None, Some(&display))).as_deref(),
            Some("HealthcareService.providedBy")
        );
    }

    #[test]
    fn a_co_managed_care_team_keeps_its_other_manager_but_gains_none() {
        let team = |orgs: &[&str]| json!({"managingOrganization": orgs.iter().map(|o| json!({"reference": o})).collect::<Vec<_>>()});
        let both = team(&["Organization/mss-bouger-plus", "Organization/mss-vilaine-active"]);
        let judge = |stored: Option<&Value>, new: &Value| {
            judge_element("CareTeam", "managingOrganization", stored, Some(new), VILAINE).map_err(|(at, _)| at)
        };
        assert_eq!(judge(Some(&both), &both), Ok(()));
        assert_eq!(judge(None, &both), Err("CareTeam.managingOrganization[0]".to_string()));
        let theirs = team(&["Organization/mss-bouger-plus"]);
        assert_eq!(
            judge(Some(&both), &theirs),
            Err("CareTeam.managingOrganization".to_string())
        );
    }

    #[test]
    fn a_client_without_organisation_owns_nothing() {
        let own = programme("Organization/mss-vilaine-active");
        assert!(judge_element("HealthcareService", "providedBy", None, Some(&own), None).is_err());
    }

    #[test]
    fn every_directory_type_has_one_owner_rule() {
        let mut types: Vec<&str> = OWNERSHIP.iter().map(|(t, _)| *t).collect();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), OWNERSHIP.len());
        assert_eq!(owner_of("HealthcareService"), Some(Owner::Element("providedBy")));
        assert_eq!(owner_of("ServiceRequest"), None);
    }
}
