//! The prescription (ServiceRequest, profile `apa-prescription`): only its
//! author changes its status (PA IG: "only author updates it"; the Care
//! Manager completes it once the referral is done), final statuses stay
//! final, and a physiotherapist renews it once unless the physician forbade
//! it (CSP L.4321-1, domain.md §3.2; the renewal names the prescription it
//! renews in `replaces`, as the profile says).

use serde_json::Value;

use crate::fhir::error::FhirError;
use crate::fhir::search::model::IndexValue;
use crate::store::{Method, Write, WriteTx};

use super::{Acting, Profession, Target, body_of, indexes, organisations_of, profession_of, refuse};

/// `apa-no-physio-renewal`: true when the physician forbids the
/// physiotherapist's renewal.
pub const NO_PHYSIO_RENEWAL: &str = "https://apa-gateway.fr/fhir/StructureDefinition/apa-no-physio-renewal";

/// FHIR request-status, as `profiles/ValueSet-servicerequest-status.json`
/// (PA IG pa-servicerequest-status: without `unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    Draft,
    Active,
    OnHold,
    Revoked,
    Completed,
    EnteredInError,
}

use RequestStatus::*;

impl RequestStatus {
    pub fn parse(code: &str) -> Option<RequestStatus> {
        Some(match code {
            "draft" => Draft,
            "active" => Active,
            "on-hold" => OnHold,
            "revoked" => Revoked,
            "completed" => Completed,
            "entered-in-error" => EnteredInError,
            _ => return None,
        })
    }

    pub fn code(self) -> &'static str {
        match self {
            Draft => "draft",
            Active => "active",
            OnHold => "on-hold",
            Revoked => "revoked",
            Completed => "completed",
            EnteredInError => "entered-in-error",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Revoked | Completed | EnteredInError)
    }
}

/// Every allowed change of a prescription's status; the requester's
/// organisation makes each of them.
pub const TRANSITIONS: &[(RequestStatus, RequestStatus)] = &[
    (Draft, Active),
    (Draft, Revoked),
    (Draft, EnteredInError),
    (Active, OnHold),
    (Active, Completed),
    (Active, Revoked),
    (Active, EnteredInError),
    (OnHold, Active),
    (OnHold, Completed),
    (OnHold, Revoked),
    (OnHold, EnteredInError),
];

pub fn allowed(from: RequestStatus, to: RequestStatus) -> bool {
    from == to || TRANSITIONS.contains(&(from, to))
}

/// A prescription as the workflow reads it, parsed once.
#[derive(Debug, Clone)]
pub struct Prescription {
    pub status: Option<RequestStatus>,
    pub requester: Option<Target>,
    pub subject: Option<Target>,
    pub replaces: Vec<Target>,
    /// The physician forbade the physiotherapist's renewal.
    pub no_physio_renewal: bool,
}

impl Prescription {
    pub fn parse(json: &Value) -> Prescription {
        let no_physio_renewal = json
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|e| {
                e.get("url").and_then(Value::as_str) == Some(NO_PHYSIO_RENEWAL)
                    && e.get("valueBoolean").and_then(Value::as_bool) == Some(true)
            });
        Prescription {
            status: json
                .get("status")
                .and_then(Value::as_str)
                .and_then(RequestStatus::parse),
            requester: Target::of(json.get("requester")),
            subject: Target::of(json.get("subject")),
            replaces: json
                .get("replaces")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| Target::of(Some(r)))
                .collect(),
            no_physio_renewal,
        }
    }
}

fn status_code(json: &Value) -> &str {
    json.get("status").and_then(Value::as_str).unwrap_or("")
}

/// Checks the write `writes[i]` of a ServiceRequest.
pub async fn check(tx: &mut WriteTx, writes: &[Write], i: usize, acting: &Acting) -> Result<(), FhirError> {
    let w = &writes[i];
    if w.method == Method::Create && !indexes(w, "replaces") {
        return check_prescriber(tx, writes, w).await;
    }
    let stored = match w.method {
        Method::Create => None,
        Method::Update | Method::Delete => match tx.read("ServiceRequest", &w.id).await? {
            Some(v) if !v.deleted() => v.body.and_then(|b| serde_json::from_slice::<Value>(&b).ok()),
            _ => None,
        },
    };
    let new_json = body_of(w)?;
    if let Some(old_json) = &stored {
        let old = Prescription::parse(old_json);
        let Some(new_json) = &new_json else {
            return requester_only(tx, writes, acting, &old, "deletes a prescription", "ServiceRequest").await;
        };
        let new = Prescription::parse(new_json);
        for (before, after, element) in [
            (&old.requester, &new.requester, "ServiceRequest.requester"),
            (&old.subject, &new.subject, "ServiceRequest.subject"),
        ] {
            if before != after {
                return Err(refuse(
                    422,
                    "business-rule",
                    "apa-wf-prescription-fixed",
                    format!("{element} does not change once prescribed; prescribe anew instead"),
                    element,
                ));
            }
        }
        let (from, to) = (status_code(old_json), status_code(new_json));
        if from != to {
            let (Some(f), Some(t)) = (RequestStatus::parse(from), RequestStatus::parse(to)) else {
                return Err(refuse(
                    422,
                    "code-invalid",
                    "apa-wf-prescription-status",
                    format!(
                        "a prescription moves between draft, active, on-hold, revoked, completed and entered-in-error, not from '{from}' to '{to}'"
                    ),
                    "ServiceRequest.status",
                ));
            };
            if !allowed(f, t) {
                let why = if f.is_final() {
                    format!("'{from}' is a final status")
                } else {
                    "a prescription has no such step".to_string()
                };
                return Err(refuse(
                    409,
                    "business-rule",
                    "apa-wf-prescription-transition",
                    format!("a prescription in '{from}' cannot move to '{to}': {why}"),
                    "ServiceRequest.status",
                ));
            }
            let what = format!("moves a prescription to '{to}'");
            requester_only(tx, writes, acting, &old, &what, "ServiceRequest.status").await?;
        }
        if new.replaces == old.replaces {
            return Ok(());
        }
        return check_renewal(tx, writes, &w.id, &new).await;
    }
    let Some(new_json) = &new_json else {
        return Ok(());
    };
    let new = Prescription::parse(new_json);
    if new.replaces.is_empty() {
        return Ok(());
    }
    check_renewal(tx, writes, &w.id, &new).await
}

/// A new prescription that renews nothing is a physician's: a
/// physiotherapist only renews (L.4321-1), other professions neither; a
/// requester whose profession is not coded is let through (the gateway
/// does not hold the RPPS directory). Read from the index, so that
/// the common case — a physician's prescription — costs no parsing.
async fn check_prescriber(tx: &mut WriteTx, writes: &[Write], w: &Write) -> Result<(), FhirError> {
    let requester = w.index.iter().find_map(|(code, v)| match v {
        IndexValue::Reference {
            rtype: Some(rtype),
            id: Some(id),
            ..
        } if code == "requester" => Some(Target::Local {
            rtype: rtype.clone(),
            id: id.clone(),
        }),
        _ => None,
    });
    let Some(requester) = requester else {
        return Ok(());
    };
    let why = match profession_of(tx, writes, &requester).await? {
        Profession::Physician | Profession::Unknown => return Ok(()),
        Profession::Physiotherapist => format!(
            "{requester} is a physiotherapist, who renews a prescription once (name it in ServiceRequest.replaces) \
             but does not prescribe"
        ),
        Profession::Other => format!(
            "{requester} is not a physician: an APA prescription is a physician's (CSP L.1172-1), its profession \
             (TRE-G15 10 Médecin) coded on the PractitionerRole or the Practitioner's qualification"
        ),
    };
    Err(refuse(
        422,
        "business-rule",
        "apa-wf-prescriber",
        why,
        "ServiceRequest.requester",
    ))
}

/// Refuses the job unless it acts for the prescription's requester.
async fn requester_only(
    tx: &mut WriteTx,
    writes: &[Write],
    acting: &Acting,
    old: &Prescription,
    what: &str,
    at: &str,
) -> Result<(), FhirError> {
    if *acting == Acting::Operator {
        return Ok(());
    }
    let orgs = match &old.requester {
        Some(t) => organisations_of(tx, writes, t).await?,
        None => Vec::new(),
    };
    if acting.is_among(&orgs) {
        return Ok(());
    }
    Err(refuse(
        403,
        "forbidden",
        "apa-wf-prescription-party",
        format!("only the prescriber's organisation (the requester's) {what}"),
        at,
    ))
}

/// A renewal by a physiotherapist: once per physician's prescription, not
/// of a prescription the physician closed to it or ended.
async fn check_renewal(tx: &mut WriteTx, writes: &[Write], id: &str, new: &Prescription) -> Result<(), FhirError> {
    let Some(requester) = &new.requester else {
        return Ok(());
    };
    if profession_of(tx, writes, requester).await? != Profession::Physiotherapist {
        // A physician renews as often as they prescribe.
        return Ok(());
    }
    let at = "ServiceRequest.replaces[0]";
    let renewal_refused = |status: u16, rule: &str, msg: String| refuse(status, "business-rule", rule, msg, at);
    let [original] = new.replaces.as_slice() else {
        return Err(renewal_refused(
            422,
            "apa-wf-renewal",
            "a renewal renews one prescription".to_string(),
        ));
    };
    let (Some(original_id), Some(patient)) = (
        original.id_of("ServiceRequest"),
        new.subject.as_ref().and_then(|s| s.id_of("Patient")),
    ) else {
        return Err(renewal_refused(
            422,
            "apa-wf-renewal",
            format!("{original} is not a prescription of this patient"),
        ));
    };
    // The patient's prescriptions as the job leaves them, whoever wrote
    // them: a renewal made elsewhere counts too.
    let mut prescriptions: Vec<(String, Value)> = Vec::new();
    for w in writes.iter().filter(|w| w.resource_type == "ServiceRequest") {
        if let Some(json) = body_of(w)? {
            prescriptions.push((w.id.clone(), json));
        }
    }
    for v in tx.of_patient("ServiceRequest", patient).await? {
        if writes
            .iter()
            .any(|w| w.resource_type == "ServiceRequest" && w.id == v.id)
        {
            continue;
        }
        if let Some(json) = v.body.and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
            prescriptions.push((v.id, json));
        }
    }
    let Some(renewed) = prescriptions
        .iter()
        .find(|(pid, _)| pid == original_id)
        .map(|(_, json)| Prescription::parse(json))
    else {
        return Err(renewal_refused(
            422,
            "apa-wf-renewal",
            format!("{original} is not a prescription of this patient"),
        ));
    };
    if renewed.no_physio_renewal {
        return Err(renewal_refused(
            422,
            "apa-wf-renewal-forbidden",
            format!(
                "the physician forbade the physiotherapist's renewal of {original} (extension apa-no-physio-renewal)"
            ),
        ));
    }
    if matches!(renewed.status, Some(Revoked | EnteredInError)) {
        return Err(renewal_refused(
            422,
            "apa-wf-renewal",
            format!("{original} was revoked or entered in error; it is not renewed"),
        ));
    }
    if let Some(r) = &renewed.requester
        && !renewed.replaces.is_empty()
        && profession_of(tx, writes, r).await? == Profession::Physiotherapist
    {
        return Err(renewal_refused(
            409,
            "apa-wf-renewal-once",
            format!("{original} is itself a physiotherapist's renewal; the physiotherapist renews once"),
        ));
    }
    for (pid, json) in &prescriptions {
        if pid == id {
            continue;
        }
        let other = Prescription::parse(json);
        if !other.replaces.contains(original) || other.status == Some(EnteredInError) {
            continue;
        }
        if let Some(r) = &other.requester
            && profession_of(tx, writes, r).await? == Profession::Physiotherapist
        {
            return Err(renewal_refused(
                409,
                "apa-wf-renewal-once",
                // The renewal may be another organisation's: not named.
                format!("{original} was already renewed by a physiotherapist; the physiotherapist renews once"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_closed_prescription_stays_closed() {
        for from in [Revoked, Completed, EnteredInError] {
            for to in [Draft, Active, OnHold, Revoked, Completed, EnteredInError] {
                assert_eq!(allowed(from, to), from == to, "{from:?} -> {to:?}");
            }
        }
        assert!(allowed(Active, Completed));
        assert!(allowed(Active, Revoked));
        assert!(!allowed(Active, Draft));
    }

    #[test]
    fn the_prohibition_and_the_renewed_prescription_are_read() {
        let sr = json!({"resourceType": "ServiceRequest", "status": "active",
            "extension": [{"url": NO_PHYSIO_RENEWAL, "valueBoolean": true}],
            "replaces": [{"reference": "ServiceRequest/first"}],
            "requester": {"reference": "PractitionerRole/kine"},
            "subject": {"reference": "Patient/p"}});
        let p = Prescription::parse(&sr);
        assert!(p.no_physio_renewal);
        assert_eq!(p.status, Some(Active));
        assert_eq!(p.replaces[0].id_of("ServiceRequest"), Some("first"));
        let allowed_renewal = json!({"resourceType": "ServiceRequest",
            "extension": [{"url": NO_PHYSIO_RENEWAL, "valueBoolean": false}]});
        assert!(!Prescription::parse(&allowed_renewal).no_physio_renewal);
        assert_eq!(Prescription::parse(&json!({"status": "unknown"})).status, None);
    }
}
