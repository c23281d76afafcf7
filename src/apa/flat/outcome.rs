//! The end of a programme (orientation, attendance rate) and the 6-month
//! follow-up (regular activity maintained or not), as the outcome
//! Observations of the programme's EpisodeOfCare (domain.md §5).

use serde::Deserialize;
use serde_json::{Value, json};

use super::common::{
    BundleBuilder, Faults, Mapped, OrganizationRef, PatientRef, Problem, ProgrammeRef, WORKFLOW_EPISODE, coding,
    identifier, local_code, measured, need_when, organization_reference, pa_category, patient_reference, profile,
    programme_entry, source_system,
};
use crate::apa::units::Measure;

/// `POST /apa/v1/outcomes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomeInput {
    pub patient: Option<PatientRef>,
    pub mss: Option<OrganizationRef>,
    pub programme: Option<ProgrammeRef>,
    pub end_of_pathway: Option<EndOfPathway>,
    pub follow_up_6m: Option<FollowUp>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndOfPathway {
    /// The exit date.
    pub date: Option<String>,
    /// An `orientation` code (CLUB-SS, AUTONOMIE…).
    pub orientation: Option<String>,
    /// Over the programme, from its start to the exit date.
    pub attendance_rate: Option<QuantityInput>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantityInput {
    pub value: Option<Value>,
    pub unit: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUp {
    pub date: Option<String>,
    /// Regular physical activity maintained.
    pub active: Option<bool>,
    /// How it was collected (phone call, questionnaire…), as text.
    pub method: Option<String>,
}

pub fn map(input: &OutcomeInput) -> Result<Mapped, Vec<Problem>> {
    let mut f = Faults::default();
    let mut warnings = Vec::new();
    let head = super::attendance::Head::parse(&input.patient, &input.mss, &input.programme);
    if input.end_of_pathway.is_none() && input.follow_up_6m.is_none() {
        f.0.push(Problem::required("$", "end_of_pathway or follow_up_6m"));
    }
    let end = input.end_of_pathway.as_ref().map(|e| {
        let date = f.take(need_when(&e.date, "$.end_of_pathway.date", "the exit date"));
        let orientation = e.orientation.as_deref().and_then(|o| {
            f.take(local_code(
                "orientation",
                o,
                "$.end_of_pathway.orientation",
                &mut warnings,
            ))
        });
        let rate = e.attendance_rate.as_ref().and_then(|q| {
            f.take(measured(
                Measure::AttendanceRate,
                q.value.as_ref(),
                q.unit.as_deref(),
                "$.end_of_pathway.attendance_rate.value",
                "$.end_of_pathway.attendance_rate.unit",
                &mut warnings,
            ))
        });
        if e.orientation.is_none() && e.attendance_rate.is_none() {
            f.0.push(Problem::required(
                "$.end_of_pathway",
                "the orientation or the attendance rate",
            ));
        }
        (date, orientation, rate)
    });
    let follow = input.follow_up_6m.as_ref().map(|u| {
        let date = f.take(need_when(&u.date, "$.follow_up_6m.date", "the date of the follow-up"));
        let active = f.take(
            u.active
                .ok_or_else(|| Problem::required("$.follow_up_6m.active", "whether activity was maintained")),
        );
        (date, active, u.method.clone())
    });
    let head = match head {
        Ok(h) => h,
        Err(mut p) => {
            p.extend(f.0);
            return Err(p);
        }
    };
    if !f.0.is_empty() {
        return Err(f.0);
    }

    let mut b = BundleBuilder::with_warnings(warnings);
    let patient = b.lookup(&patient_reference(&head.ins), "$.patient.ins");
    let mss = b.lookup(&organization_reference(&head.mss), "$.mss.siret");
    let episode = programme_entry(&mut b, "$.programme", &head.programme, &head.mss, &patient, &mss);
    let system = source_system(&format!("siret-{}", head.mss), "outcome");
    let key = &head.programme.key;
    let obs = |profile_id: &str, code: &str, suffix: &str| {
        json!({
            "resourceType": "Observation",
            "meta": {"profile": [profile(profile_id)]},
            "extension": [{"url": WORKFLOW_EPISODE, "valueReference": {"reference": episode}}],
            "identifier": [identifier(&system, &format!("{key}/{suffix}"))],
            "status": "final",
            "category": [pa_category()],
            "code": {"coding": [{"system": super::common::SPORT_SANTE, "code": code}]},
            "subject": {"reference": patient},
            "performer": [{"reference": mss}],
        })
    };
    if let Some((Some(date), orientation, rate)) = end {
        if let Some(o) = orientation {
            let mut r = obs("apa-obs-orientation", "ORIENTATION", "orientation");
            r["effectiveDateTime"] = json!(date.fhir());
            r["valueCodeableConcept"] = coding("orientation", &o);
            b.create("$.end_of_pathway.orientation", r);
        }
        if let Some(n) = rate {
            let mut r = obs("apa-obs-attendance-rate", "ATTEND-RATE", "attendance-rate");
            r["effectivePeriod"] = json!({"start": head.programme.start.fhir(), "end": date.fhir()});
            r["valueQuantity"] = n.measurement.quantity_json();
            b.create("$.end_of_pathway.attendance_rate", r);
        }
    }
    if let Some((Some(date), Some(active), method)) = follow {
        let mut r = obs("apa-obs-maintenance-6m", "ADHERENCE-6M", "maintenance-6m");
        r["effectiveDateTime"] = json!(date.fhir());
        r["valueBoolean"] = json!(active);
        if let Some(m) = method.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
            r["method"] = json!({"text": m});
        }
        b.create("$.follow_up_6m", r);
    }
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> OutcomeInput {
        serde_json::from_str(include_str!("../../../fixtures/flat/outcome.json")).unwrap()
    }

    #[test]
    fn the_fixture_maps_to_the_three_outcome_observations() {
        let m = map(&example()).unwrap();
        let entries = m.bundle["entry"].as_array().unwrap();
        let profiles: Vec<&str> = entries
            .iter()
            .map(|e| e["resource"]["meta"]["profile"][0].as_str().unwrap())
            .collect();
        assert_eq!(
            profiles,
            [
                profile("apa-programme-episode"),
                profile("apa-obs-orientation"),
                profile("apa-obs-attendance-rate"),
                profile("apa-obs-maintenance-6m")
            ]
        );
        let rate = &entries[2]["resource"];
        assert_eq!(rate["valueQuantity"]["code"], "%");
        assert_eq!(rate["effectivePeriod"]["start"], "2026-03-09");
        assert_eq!(
            rate["extension"][0]["valueReference"]["reference"],
            entries[0]["fullUrl"]
        );
        assert_eq!(entries[3]["resource"]["valueBoolean"], true);
    }

    #[test]
    fn an_unknown_orientation_and_a_rate_over_100_are_refused() {
        let mut i = example();
        if let Some(e) = i.end_of_pathway.as_mut() {
            e.orientation = Some("PISCINE".into());
            e.attendance_rate = Some(QuantityInput {
                value: Some(json!(120)),
                unit: Some("%".into()),
            });
        }
        let at: Vec<String> = map(&i).unwrap_err().into_iter().map(|p| p.location).collect();
        assert_eq!(
            at,
            ["$.end_of_pathway.orientation", "$.end_of_pathway.attendance_rate.value"]
        );
    }
}
