//! The programme (EpisodeOfCare, profile `apa-programme-episode`): its
//! transitions, and how it follows the pathway — planned at enrolment,
//! active at the first attended session (an `apa-session` Encounter
//! `finished`; a missed one is `cancelled`), finished when the referral
//! ends (its Task `completed` or `failed`: the IG's end of the provider's
//! part, while the end-of-pathway report may be shared before, as interim).

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::clock::now_micros;
use crate::fhir::error::FhirError;
use crate::fhir::interaction::index_of;
use crate::fhir::resource::Resource;
use crate::fhir::search::values::format_instant;
use crate::store::{Method, Write, WriteTx};

use super::{Target, body_of, indexes, refuse};

/// FHIR R4 episode-of-care-status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeStatus {
    Planned,
    Waitlist,
    Active,
    OnHold,
    Finished,
    Cancelled,
    EnteredInError,
}

use EpisodeStatus::*;

impl EpisodeStatus {
    pub fn parse(code: &str) -> Option<EpisodeStatus> {
        Some(match code {
            "planned" => Planned,
            "waitlist" => Waitlist,
            "active" => Active,
            "onhold" => OnHold,
            "finished" => Finished,
            "cancelled" => Cancelled,
            "entered-in-error" => EnteredInError,
            _ => return None,
        })
    }

    pub fn code(self) -> &'static str {
        match self {
            Planned => "planned",
            Waitlist => "waitlist",
            Active => "active",
            OnHold => "onhold",
            Finished => "finished",
            Cancelled => "cancelled",
            EnteredInError => "entered-in-error",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Finished | Cancelled | EnteredInError)
    }
}

/// Every allowed change of a programme's status (FHIR R4 EpisodeOfCare:
/// "cancelled" ends it outside the expected course, at any point).
pub const TRANSITIONS: &[(EpisodeStatus, EpisodeStatus)] = &[
    (Planned, Waitlist),
    (Planned, Active),
    (Planned, Cancelled),
    (Planned, EnteredInError),
    (Waitlist, Planned),
    (Waitlist, Active),
    (Waitlist, Cancelled),
    (Waitlist, EnteredInError),
    (Active, OnHold),
    (Active, Finished),
    (Active, Cancelled),
    (Active, EnteredInError),
    (OnHold, Active),
    (OnHold, Finished),
    (OnHold, Cancelled),
    (OnHold, EnteredInError),
];

pub fn allowed(from: EpisodeStatus, to: EpisodeStatus) -> bool {
    from == to || TRANSITIONS.contains(&(from, to))
}

fn status_of(json: &Value) -> Result<EpisodeStatus, FhirError> {
    let code = json.get("status").and_then(Value::as_str).unwrap_or("");
    EpisodeStatus::parse(code).ok_or_else(|| {
        refuse(
            422,
            "code-invalid",
            "apa-wf-episode-status",
            format!("'{code}' is not an EpisodeOfCare status"),
            "EpisodeOfCare.status",
        )
    })
}

/// Checks a programme's new version against its stored one.
pub async fn check(tx: &mut WriteTx, w: &Write) -> Result<(), FhirError> {
    if w.method != Method::Update {
        return Ok(());
    }
    let Some(json) = body_of(w)? else {
        return Ok(());
    };
    let to = status_of(&json)?;
    let Some(stored) = tx.read("EpisodeOfCare", &w.id).await? else {
        return Ok(());
    };
    let Some(old) = stored.body.and_then(|b| serde_json::from_slice::<Value>(&b).ok()) else {
        return Ok(());
    };
    // A stored status FHIR does not know (written before these rules) has
    // no place in the table: the new version corrects it.
    let Ok(from) = status_of(&old) else {
        return Ok(());
    };
    if !allowed(from, to) {
        let why = if from.is_final() {
            format!("'{}' is a final status", from.code())
        } else {
            "a programme has no such step".to_string()
        };
        return Err(refuse(
            409,
            "business-rule",
            "apa-wf-episode-transition",
            format!("a programme in '{}' cannot move to '{}': {why}", from.code(), to.code()),
            "EpisodeOfCare.status",
        ));
    }
    Ok(())
}

/// What the job's writes ask of the programmes they concern.
#[derive(Debug, Default)]
pub struct Follow {
    /// Attended sessions: (EpisodeOfCare id, session start).
    sessions: Vec<(String, Option<String>)>,
    /// Ended referrals: their patient, prescription, owner's organisations,
    /// and when they ended.
    ends: Vec<End>,
}

#[derive(Debug)]
struct End {
    patient: Option<Target>,
    prescription: Option<Target>,
    owner: Vec<String>,
    at: Option<String>,
}

impl Follow {
    /// An Encounter written: attended (`finished`) sessions of a programme
    /// may start it.
    pub fn note_session(&mut self, w: &Write) {
        if !w.has_token("status", "finished") || !indexes(w, "episode-of-care") {
            return;
        }
        let Ok(Some(json)) = body_of(w) else {
            return;
        };
        if json.get("status").and_then(Value::as_str) != Some("finished") {
            return;
        }
        let start = json
            .get("period")
            .and_then(|p| p.get("start"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let episodes = json
            .get("episodeOfCare")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for e in episodes {
            if let Some(id) = Target::of(Some(e)).as_ref().and_then(|t| t.id_of("EpisodeOfCare")) {
                self.sessions.push((id.to_string(), start.clone()));
            }
        }
    }

    /// A referral ended: the owner's programmes for its prescription finish.
    pub fn note_end(
        &mut self,
        patient: Option<Target>,
        prescription: Option<Target>,
        owner: Vec<String>,
        at: Option<String>,
    ) {
        self.ends.push(End {
            patient,
            prescription,
            owner,
            at,
        });
    }

    /// Writes the programmes' next versions: a new version of a stored
    /// one, or the job's own version changed in place.
    pub async fn apply(self, tx: &mut WriteTx, writes: &mut Vec<Write>) -> Result<(), FhirError> {
        if self.sessions.is_empty() && self.ends.is_empty() {
            return Ok(());
        }
        let mut edits = Edits::default();
        for (id, start) in self.sessions {
            let Some((mut json, origin)) = edits.load(tx, writes, &id).await? else {
                continue;
            };
            // A programme in a status FHIR does not know is left alone: the
            // session is not the place to refuse it.
            if !matches!(status_of(&json), Ok(Planned | Waitlist)) {
                continue;
            }
            let at = start.unwrap_or_else(|| format_instant(now_micros()));
            set_status(&mut json, Active, &at);
            edits.save(writes, &id, json, origin);
        }
        for end in self.ends {
            let at = end.at.clone().unwrap_or_else(|| format_instant(now_micros()));
            for id in programmes_of(tx, writes, &end).await? {
                let Some((mut json, origin)) = edits.load(tx, writes, &id).await? else {
                    continue;
                };
                if !matches!(status_of(&json), Ok(Active | OnHold)) {
                    continue;
                }
                set_status(&mut json, Finished, &at);
                edits.save(writes, &id, json, origin);
            }
        }
        Ok(())
    }
}

/// The programmes run by the referral's owner for its prescription, that
/// the job writes or that are stored.
async fn programmes_of(tx: &mut WriteTx, writes: &[Write], end: &End) -> Result<Vec<String>, FhirError> {
    let (Some(patient), Some(prescription)) = (
        end.patient.as_ref().and_then(|t| t.id_of("Patient")),
        end.prescription.as_ref(),
    ) else {
        return Ok(Vec::new());
    };
    let mut candidates: Vec<(String, Value)> = Vec::new();
    for w in writes.iter().filter(|w| w.resource_type == "EpisodeOfCare") {
        if let Some(json) = body_of(w)? {
            candidates.push((w.id.clone(), json));
        }
    }
    for v in tx.of_patient("EpisodeOfCare", patient).await? {
        if candidates.iter().any(|(id, _)| *id == v.id) {
            continue;
        }
        if let Some(json) = v.body.and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
            candidates.push((v.id, json));
        }
    }
    Ok(candidates
        .into_iter()
        .filter(|(_, json)| {
            let refers = json
                .get("referralRequest")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|r| Target::of(Some(r)).as_ref() == Some(prescription));
            let managed =
                Target::of(json.get("managingOrganization")).is_some_and(|t| end.owner.contains(&t.to_string()));
            refers && managed
        })
        .map(|(id, _)| id)
        .collect())
}

/// Sets the status at `at`: the programme's period starts (unless it
/// already has a start) or ends then, and `statusHistory` keeps the
/// previous status, until `at`.
fn set_status(json: &mut Value, to: EpisodeStatus, at: &str) {
    let Value::Object(obj) = json else {
        return;
    };
    let from = obj.get("status").cloned();
    obj.insert("status".into(), Value::String(to.code().into()));
    if !matches!(obj.get("period"), Some(Value::Object(_))) {
        obj.insert("period".into(), Value::Object(Map::new()));
    }
    if let Some(Value::Object(p)) = obj.get_mut("period") {
        if to == Finished {
            p.insert("end".into(), Value::String(at.into()));
        } else if !p.contains_key("start") {
            p.insert("start".into(), Value::String(at.into()));
        }
    }
    if let Some(from) = from {
        let mut span = Map::new();
        span.insert("end".into(), Value::String(at.into()));
        let mut past = Map::new();
        past.insert("status".into(), from);
        past.insert("period".into(), Value::Object(span));
        match obj.get_mut("statusHistory") {
            Some(Value::Array(h)) => h.push(Value::Object(past)),
            _ => {
                obj.insert("statusHistory".into(), Value::Array(vec![Value::Object(past)]));
            }
        }
    }
}

/// Where a programme's version comes from.
#[derive(Clone, Copy)]
enum Origin {
    /// `writes[i]`: the job's own write, or one added earlier here.
    InJob(usize),
    /// Stored: a new version follows it.
    Stored { pk: i64, version: i64 },
}

/// The programmes this job changes: where each one's write is in `writes`.
#[derive(Default)]
struct Edits {
    added: HashMap<String, usize>,
}

impl Edits {
    /// The programme as the job leaves it so far: its write in the job,
    /// else the stored version the job may see.
    async fn load(&self, tx: &mut WriteTx, writes: &[Write], id: &str) -> Result<Option<(Value, Origin)>, FhirError> {
        let in_job = self.added.get(id).copied().or_else(|| {
            writes
                .iter()
                .position(|w| w.resource_type == "EpisodeOfCare" && w.id == id)
        });
        if let Some(i) = in_job {
            return Ok(body_of(&writes[i])?.map(|json| (json, Origin::InJob(i))));
        }
        let Some(current) = tx.current("EpisodeOfCare", id).await? else {
            return Ok(None);
        };
        if current.deleted {
            return Ok(None);
        }
        let Some(v) = tx.read("EpisodeOfCare", id).await? else {
            return Ok(None);
        };
        let origin = Origin::Stored {
            pk: current.pk,
            version: current.version,
        };
        Ok(v.body
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|json| (json, origin)))
    }

    /// Writes the programme's new content: in its write of the job, else
    /// as the next version; stamped and indexed.
    fn save(&mut self, writes: &mut Vec<Write>, id: &str, json: Value, origin: Origin) {
        let (i, version, updated) = match origin {
            Origin::InJob(i) => (i, writes[i].version, writes[i].updated),
            Origin::Stored { pk, version } => {
                let updated = now_micros();
                writes.push(Write {
                    resource_type: "EpisodeOfCare".into(),
                    id: id.to_string(),
                    version: version + 1,
                    updated,
                    method: Method::Update,
                    body: None,
                    index: Vec::new(),
                    pk: Some(pk),
                    patients: Vec::new(),
                    grants: Vec::new(),
                });
                self.added.insert(id.to_string(), writes.len() - 1);
                (writes.len() - 1, version + 1, updated)
            }
        };
        let mut res = Resource {
            resource_type: "EpisodeOfCare".into(),
            json,
        };
        res.stamp(id, version, updated);
        let w = &mut writes[i];
        w.index = index_of(&res);
        w.body = Some(res.to_bytes());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_finished_programme_does_not_start_again() {
        assert!(!allowed(Finished, Active));
        assert!(!allowed(Cancelled, Planned));
        assert!(!allowed(EnteredInError, Active));
        assert!(allowed(Finished, Finished));
        assert!(allowed(Planned, Active));
        assert!(allowed(Active, Finished));
        assert!(allowed(OnHold, Active));
        assert!(
            !allowed(Planned, Finished),
            "a programme that never started is cancelled"
        );
        for (from, _) in TRANSITIONS {
            assert!(!from.is_final());
        }
    }

    #[test]
    fn codes_round_trip() {
        for s in [Planned, Waitlist, Active, OnHold, Finished, Cancelled, EnteredInError] {
            assert_eq!(EpisodeStatus::parse(s.code()), Some(s));
        }
        assert_eq!(EpisodeStatus::parse("on-hold"), None);
    }

    #[test]
    fn the_first_session_starts_the_programme_and_keeps_its_past() {
        let mut eoc = json!({"resourceType": "EpisodeOfCare", "status": "planned", "period": {}});
        set_status(&mut eoc, Active, "2026-11-20T10:00:00+01:00");
        assert_eq!(eoc["status"], "active");
        assert_eq!(eoc["period"]["start"], "2026-11-20T10:00:00+01:00");
        assert_eq!(
            eoc["statusHistory"],
            json!([{"status": "planned", "period": {"end": "2026-11-20T10:00:00+01:00"}}])
        );
        set_status(&mut eoc, Finished, "2027-02-20");
        assert_eq!(eoc["period"]["end"], "2027-02-20");
        assert_eq!(eoc["statusHistory"][1]["status"], "active");
    }
}
