//! Session attendance: each session of a patient's programme is an
//! `apa-session` Encounter, `finished` when attended and `cancelled` when
//! not (the profile's convention), in the programme's EpisodeOfCare.

use serde::Deserialize;
use serde_json::json;
use time::Duration;
use time::format_description::well_known::Rfc3339;

use super::common::{
    BundleBuilder, Faults, Mapped, OrganizationRef, PatientRef, Problem, Programme, ProgrammeRef, Warning, When,
    coding, local_code, need_when, organization_reference, patient_reference, prescription_reference, profile,
    programme_entry, record_key, source_system,
};
use crate::apa::identity::{Ins, Siret};

/// `POST /apa/v1/attendance` (JSON).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttendanceInput {
    pub patient: Option<PatientRef>,
    pub mss: Option<OrganizationRef>,
    pub programme: Option<ProgrammeRef>,
    pub sessions: Option<Vec<SessionInput>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionInput {
    /// The session's id in the MSS software.
    pub source_id: Option<String>,
    /// Its date, or its start with the UTC offset.
    pub date: Option<String>,
    pub minutes: Option<u32>,
    pub attended: Option<bool>,
    /// A `session-kind` code; `seance` when absent.
    pub kind: Option<String>,
}

/// The patient's programme at the MSS, which every session belongs to.
pub struct Head {
    pub ins: Ins,
    pub mss: Siret,
    pub programme: Programme,
}

impl Head {
    pub fn parse(
        patient: &Option<PatientRef>,
        mss: &Option<OrganizationRef>,
        programme: &Option<ProgrammeRef>,
    ) -> Result<Head, Vec<Problem>> {
        let mut f = Faults::default();
        let ins = match patient {
            Some(p) => f.take(p.parse("$.patient")),
            None => f.take(Err(Problem::required("$.patient.ins", "the patient's INS"))),
        };
        let mss = f.take(mss.clone().unwrap_or_default().parse("$.mss", "the SIRET of the MSS"));
        let programme = match programme.clone().unwrap_or_default().parse("$.programme") {
            Ok(p) => Some(p),
            Err(p) => {
                f.0.extend(p);
                None
            }
        };
        f.into_result(|| {
            Some(Head {
                ins: ins?,
                mss: mss?,
                programme: programme?,
            })
        })
    }
}

/// One session, parsed.
pub struct Session {
    pub at: String,
    pub source_id: Option<String>,
    pub start: When,
    pub minutes: Option<u32>,
    pub attended: bool,
    pub kind: String,
}

pub fn parse_session(
    input: &SessionInput,
    at: &str,
    field: &dyn Fn(&str) -> String,
    warnings: &mut Vec<Warning>,
) -> Result<Session, Problem> {
    let start = need_when(&input.date, &field("date"), "the date of the session")?;
    let attended = input
        .attended
        .ok_or_else(|| Problem::required(field("attended"), "whether the patient attended"))?;
    if let Some(m) = input.minutes
        && !(1..=600).contains(&m)
    {
        return Err(Problem::new(
            field("minutes"),
            "value",
            format!("a session lasts 1 to 600 minutes, not {m}"),
        ));
    }
    let kind = match input.kind.as_deref().map(str::trim).filter(|k| !k.is_empty()) {
        None => "seance".to_string(),
        Some(k) => local_code("session-kind", k, &field("kind"), warnings)?,
    };
    Ok(Session {
        at: at.to_string(),
        source_id: input.source_id.clone(),
        start,
        minutes: input.minutes,
        attended,
        kind,
    })
}

/// The end of a session: its start plus its length when both are known to
/// the minute, else its date (a session ends the day it starts).
fn end_of(s: &Session) -> String {
    match (s.start, s.minutes) {
        (When::DateTime(t), Some(m)) => (t + Duration::minutes(i64::from(m)))
            .format(&Rfc3339)
            .unwrap_or_else(|_| s.start.fhir()),
        (When::DateTime(_), None) => s.start.fhir(),
        (When::Date(d), _) => super::common::fhir_date(d),
    }
}

pub fn map(head: &Head, sessions: &[Session], warnings: Vec<Warning>) -> Mapped {
    let mut b = BundleBuilder::with_warnings(warnings);
    let patient = b.lookup(&patient_reference(&head.ins), "$.patient.ins");
    let mss = b.lookup(&organization_reference(&head.mss), "$.mss.siret");
    let episode = programme_entry(&mut b, "$.programme", &head.programme, &head.mss, &patient, &mss);
    let system = source_system(&format!("siret-{}", head.mss), "session");
    for s in sessions {
        let key = record_key(
            s.source_id.as_deref(),
            &["session", &head.programme.key, &s.start.fhir()],
        );
        let mut enc = json!({
            "resourceType": "Encounter",
            "meta": {"profile": [profile("apa-session")]},
            "identifier": [{
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "VN"}]},
                "system": system,
                "value": key,
            }],
            "status": if s.attended { "finished" } else { "cancelled" },
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [coding("session-kind", &s.kind)],
            "subject": {"reference": patient},
            "episodeOfCare": [{"reference": episode}],
            "basedOn": [{"reference": prescription_reference(&head.programme.prescription)}],
            "period": {"start": s.start.fhir()},
            "serviceProvider": {"reference": mss},
        });
        if s.attended {
            enc["period"]["end"] = json!(end_of(s));
        }
        if let Some(m) = s.minutes {
            enc["length"] = json!({"value": m, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"});
        }
        b.create(&s.at, enc);
    }
    b.finish()
}

/// The JSON request: every fault refuses it, all listed.
pub fn map_json(input: &AttendanceInput) -> Result<Mapped, Vec<Problem>> {
    let head = Head::parse(&input.patient, &input.mss, &input.programme);
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut sessions = Vec::new();
    match &input.sessions {
        Some(list) if !list.is_empty() => {
            for (i, s) in list.iter().enumerate() {
                let at = format!("$.sessions[{i}]");
                match parse_session(s, &at, &|f| format!("{at}.{f}"), &mut warnings) {
                    Ok(s) => sessions.push(s),
                    Err(p) => problems.push(p),
                }
            }
        }
        _ => problems.push(Problem::required("$.sessions", "at least one session")),
    }
    match head {
        Ok(h) if problems.is_empty() => Ok(map(&h, &sessions, warnings)),
        Ok(_) => Err(problems),
        Err(mut p) => {
            p.extend(problems);
            Err(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> AttendanceInput {
        serde_json::from_value(json!({
            "patient": {"ins": "268053523812380", "ins_kind": "TEST"},
            "mss": {"siret": "88765432500018"},
            "programme": {"source_id": "PRG-17", "start": "2026-03-09", "prescription": "ServiceRequest/prescription-le-bihan"},
            "sessions": [
                {"source_id": "S-1", "date": "2026-03-12T18:00:00+01:00", "minutes": 60, "attended": true},
                {"date": "19/03/2026", "attended": false}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn sessions_are_encounters_of_the_programme() {
        let m = map_json(&input()).unwrap();
        let entries = m.bundle["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        let eoc = &entries[0]["resource"];
        assert_eq!(eoc["meta"]["profile"][0], profile("apa-programme-episode"));
        assert_eq!(
            eoc["referralRequest"][0]["reference"],
            "ServiceRequest?_id=prescription-le-bihan"
        );
        let attended = &entries[1]["resource"];
        assert_eq!(attended["status"], "finished");
        assert_eq!(attended["period"]["end"], "2026-03-12T19:00:00+01:00");
        assert_eq!(attended["episodeOfCare"][0]["reference"], entries[0]["fullUrl"]);
        assert_eq!(attended["identifier"][0]["value"], "S-1");
        let missed = &entries[2]["resource"];
        assert_eq!(missed["status"], "cancelled");
        assert_eq!(missed["period"], json!({"start": "2026-03-19"}));
        assert!(missed["identifier"][0]["value"].as_str().unwrap().starts_with("h-"));
    }

    #[test]
    fn faults_are_located() {
        let mut i = input();
        if let Some(s) = i.sessions.as_mut() {
            s[1].attended = None;
            s[0].kind = Some("yoga".into());
        }
        i.programme = None;
        let at: Vec<String> = map_json(&i).unwrap_err().into_iter().map(|p| p.location).collect();
        assert_eq!(
            at,
            [
                "$.programme.source_id",
                "$.programme.start",
                "$.programme.prescription",
                "$.sessions[0].kind",
                "$.sessions[1].attended"
            ]
        );
    }
}
