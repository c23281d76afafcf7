//! A GP's APA prescription (CSP D.1172-2: activity type, duration,
//! frequency, intensity; 3 to 6 months) as an `apa-prescription`
//! ServiceRequest: patient by INS, prescriber by RPPS, the chosen MSS (if
//! any) by SIRET.

use serde::Deserialize;
use serde_json::{Value, json};

use super::common::{
    BundleBuilder, Faults, Mapped, OrganizationRef, Problem, When, coding, identifier, local_code, need, need_when,
    organization_reference, pa_category, parse_rpps, patient_reference, practitioner_reference, profile, record_key,
    source_system,
};
use super::patient::{self, PatientInput};
use crate::apa::identity::{Ins, Rpps, Siret};

pub const ICD10: &str = "http://hl7.org/fhir/sid/icd-10";

/// `POST /apa/v1/prescriptions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrescriptionInput {
    /// The prescription's number in the GP software.
    pub source_id: Option<String>,
    /// By INS; with the qualified identity to register or identify them.
    pub patient: Option<PatientInput>,
    pub prescriber: Option<PrescriberRef>,
    /// The MSS the GP chose, if any (otherwise routing decides).
    pub performer: Option<OrganizationRef>,
    pub date: Option<String>,
    pub reason: Option<Reason>,
    pub functional_limitation: Option<String>,
    pub intensity: Option<String>,
    pub activities: Option<Vec<String>>,
    pub duration_months: Option<u32>,
    pub session_minutes: Option<u32>,
    pub sessions_per_week: Option<u32>,
    /// The physician forbids the physiotherapist's renewal.
    pub no_physio_renewal: Option<bool>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrescriberRef {
    pub rpps: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// CIM-10 code (E11, I10…).
    pub icd10: Option<String>,
    /// Code of the `condition-group` code system (diabete-t2, hta…).
    pub condition_group: Option<String>,
    pub text: Option<String>,
}

/// The prescription, parsed.
struct Prescription {
    ins: Ins,
    rpps: Rpps,
    performer: Option<Siret>,
    date: When,
    reason: Value,
    limitation: String,
    intensity: String,
    activities: Vec<String>,
    months: u32,
    minutes: u32,
    per_week: u32,
}

fn within(v: Option<u32>, at: &str, what: &str, lo: u32, hi: u32) -> Result<u32, Problem> {
    match v {
        None => Err(Problem::required(at, what)),
        Some(n) if (lo..=hi).contains(&n) => Ok(n),
        Some(n) => Err(Problem::new(
            at,
            "value",
            format!("{what} must be {lo} to {hi}, not {n}"),
        )),
    }
}

fn icd10(code: &str, at: &str) -> Result<String, Problem> {
    let c = code.trim().to_uppercase();
    let b = c.as_bytes();
    let ok = b.len() >= 3
        && b[0].is_ascii_uppercase()
        && b[1].is_ascii_digit()
        && b[2].is_ascii_alphanumeric()
        && c[3..]
            .strip_prefix('.')
            .unwrap_or(&c[3..])
            .bytes()
            .all(|x| x.is_ascii_alphanumeric())
        && c.len() <= 8;
    if ok {
        Ok(c)
    } else {
        Err(Problem::new(
            at,
            "value",
            format!("'{code}' is not a CIM-10 code (E11, I10, E66.0…)"),
        ))
    }
}

pub fn map(input: &PrescriptionInput) -> Result<Mapped, Vec<Problem>> {
    let mut f = Faults::default();
    let mut warnings = Vec::new();
    let ins = match &input.patient {
        Some(p) => f.take(p.reference().parse("$.patient")),
        None => f.take(Err(Problem::required("$.patient.ins", "the patient's INS"))),
    };
    let registered = input
        .patient
        .as_ref()
        .and_then(|p| patient::resource(p, ins.as_ref(), &mut f));
    let rpps = f.take(
        need(
            &input.prescriber.clone().unwrap_or_default().rpps,
            "$.prescriber.rpps",
            "the prescriber's RPPS",
        )
        .and_then(|r| parse_rpps(r, "$.prescriber.rpps")),
    );
    let performer = match &input.performer {
        None => Some(None),
        Some(o) => f.take(o.parse("$.performer", "the SIRET of the chosen MSS").map(Some)),
    };
    let date = f.take(need_when(&input.date, "$.date", "the date of the prescription"));
    let reason = input.reason.clone().unwrap_or_default();
    let mut codings = Vec::new();
    if let Some(c) = reason.icd10.as_deref().filter(|c| !c.trim().is_empty())
        && let Some(c) = f.take(icd10(c, "$.reason.icd10"))
    {
        codings.push(json!({"system": ICD10, "code": c}));
    }
    if let Some(g) = reason.condition_group.as_deref().filter(|c| !c.trim().is_empty())
        && let Some(g) = f.take(local_code(
            "condition-group",
            g,
            "$.reason.condition_group",
            &mut warnings,
        ))
    {
        codings.push(json!({"system": super::common::code_system("condition-group"), "code": g}));
    }
    let text = reason.text.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if codings.is_empty() && text.is_none() && f.0.iter().all(|p| !p.location.starts_with("$.reason")) {
        f.0.push(Problem::required(
            "$.reason",
            "the reason of the prescription (icd10, condition_group or text)",
        ));
    }
    let mut reason_json = json!({});
    if !codings.is_empty() {
        reason_json["coding"] = json!(codings);
    }
    if let Some(t) = text {
        reason_json["text"] = json!(t);
    }
    let limitation = f.take(
        need(
            &input.functional_limitation,
            "$.functional_limitation",
            "the functional-limitation level",
        )
        .and_then(|v| local_code("functional-limitation", v, "$.functional_limitation", &mut warnings)),
    );
    let intensity = f.take(
        need(&input.intensity, "$.intensity", "the intensity")
            .and_then(|v| local_code("intensity", v, "$.intensity", &mut warnings)),
    );
    let mut activities = Vec::new();
    match &input.activities {
        Some(list) if !list.is_empty() => {
            for (i, a) in list.iter().enumerate() {
                if let Some(c) = f.take(local_code(
                    "activity-type",
                    a,
                    &format!("$.activities[{i}]"),
                    &mut warnings,
                )) {
                    activities.push(c);
                }
            }
        }
        _ => {
            f.0.push(Problem::required("$.activities", "at least one activity type"))
        }
    }
    let months = f.take(within(
        input.duration_months,
        "$.duration_months",
        "the programme length in months",
        3,
        6,
    ));
    let minutes = f.take(within(
        input.session_minutes,
        "$.session_minutes",
        "the session length in minutes",
        10,
        240,
    ));
    let per_week = f.take(within(
        input.sessions_per_week,
        "$.sessions_per_week",
        "the number of sessions per week",
        1,
        7,
    ));
    let p = f.into_result(|| {
        Some(Prescription {
            ins: ins?,
            rpps: rpps?,
            performer: performer?,
            date: date?,
            reason: reason_json,
            limitation: limitation?,
            intensity: intensity?,
            activities,
            months: months?,
            minutes: minutes?,
            per_week: per_week?,
        })
    })?;

    let mut b = BundleBuilder::with_warnings(warnings);
    let patient = match registered {
        Some(resource) => b.create("$.patient", resource),
        None => b.lookup(&patient_reference(&p.ins), "$.patient.ins"),
    };
    let requester = b.lookup(&practitioner_reference(&p.rpps), "$.prescriber.rpps");
    let key = record_key(
        input.source_id.as_deref(),
        &["prescription", p.ins.system(), p.ins.number().as_str(), &p.date.fhir()],
    );
    let mut extension = vec![
        json!({
            "url": profile("apa-functional-limitation"),
            "valueCodeableConcept": coding("functional-limitation", &p.limitation),
        }),
        json!({
            "url": profile("apa-intensity"),
            "valueCodeableConcept": coding("intensity", &p.intensity),
        }),
    ];
    if input.no_physio_renewal == Some(true) {
        extension.push(json!({"url": profile("apa-no-physio-renewal"), "valueBoolean": true}));
    }
    let mut sr = json!({
        "resourceType": "ServiceRequest",
        "meta": {"profile": [profile("apa-prescription")]},
        "extension": extension,
        "identifier": [identifier(&source_system(&format!("rpps-{}", p.rpps), "prescription"), &key)],
        "status": "active",
        "intent": "original-order",
        "category": [pa_category()],
        "code": {"coding": [{
            "system": "http://snomed.info/sct",
            "code": "390893007",
            "display": "Referral to physical activity program",
        }]},
        "orderDetail": p.activities.iter().map(|a| coding("activity-type", a)).collect::<Vec<_>>(),
        "subject": {"reference": patient},
        "occurrenceTiming": {"repeat": {
            "boundsDuration": {"value": p.months, "unit": "mois", "system": "http://unitsofmeasure.org", "code": "mo"},
            "duration": p.minutes,
            "durationUnit": "min",
            "frequency": p.per_week,
            "period": 1,
            "periodUnit": "wk",
        }},
        "authoredOn": p.date.fhir(),
        "requester": {"reference": requester},
        "reasonCode": [p.reason],
    });
    if let Some(siret) = &p.performer {
        let mss = b.lookup(&organization_reference(siret), "$.performer.siret");
        sr["performer"] = json!([{"reference": mss}]);
    }
    if let Some(n) = input.note.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        sr["note"] = json!([{"text": n}]);
    }
    b.create("$", sr);
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn example() -> PrescriptionInput {
        serde_json::from_str(include_str!("../../../fixtures/flat/prescription.json")).unwrap()
    }

    #[test]
    fn the_fixture_maps_to_an_apa_prescription() {
        let m = map(&example()).unwrap();
        let e = &m.bundle["entry"][0];
        let sr = &e["resource"];
        assert_eq!(sr["meta"]["profile"][0], profile("apa-prescription"));
        assert_eq!(sr["intent"], "original-order");
        assert_eq!(sr["occurrenceTiming"]["repeat"]["boundsDuration"]["code"], "mo");
        assert_eq!(sr["occurrenceTiming"]["repeat"]["boundsDuration"]["value"], json!(3));
        assert_eq!(sr["orderDetail"].as_array().unwrap().len(), 2);
        assert_eq!(sr["reasonCode"][0]["coding"][0]["system"], ICD10);
        assert!(
            sr["subject"]["reference"]
                .as_str()
                .unwrap()
                .starts_with("Patient?identifier=")
        );
        assert!(
            sr["requester"]["reference"]
                .as_str()
                .unwrap()
                .starts_with("Practitioner?identifier=")
        );
        assert!(e["request"]["ifNoneExist"].as_str().unwrap().contains("ORD-2026-0001"));
        assert_eq!(m.lookups.len(), 3);
    }

    #[test]
    fn every_fault_is_listed_with_its_location() {
        let mut input = example();
        input.duration_months = Some(12);
        input.intensity = Some("forte".into());
        input.activities = Some(vec!["endurance".into(), "yoga".into()]);
        input.prescriber = Some(PrescriberRef {
            rpps: Some("10003387459".into()),
        });
        input.reason = None;
        let problems = map(&input).unwrap_err();
        let at: Vec<&str> = problems.iter().map(|p| p.location.as_str()).collect();
        assert_eq!(
            at,
            [
                "$.prescriber.rpps",
                "$.reason",
                "$.intensity",
                "$.activities[1]",
                "$.duration_months"
            ]
        );
    }
}
