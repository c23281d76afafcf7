//! An MSS assessment (bilan): the tests of one patient at one date, each
//! an Observation claiming its `apa-obs-*` profile, values in canonical
//! UCUM, the BMI derived from weight and height, systolic and diastolic
//! pressures in one blood-pressure Observation.

use serde::Deserialize;
use serde_json::{Value, json};

use super::catalog::{self, Kind, Side, Test};
use super::common::{
    BundleBuilder, Faults, Mapped, OBS_CATEGORY, OrganizationRef, PatientRef, Problem, Warning, When, identifier,
    local_code, measured, need, need_when, organization_reference, pa_category, patient_reference, profile, record_key,
    source_system,
};
use crate::apa::identity::{Ins, Siret};
use crate::apa::units::{self, Measurement, Normalized};

/// `POST /apa/v1/assessments` (JSON).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssessmentInput {
    /// The assessment's id in the MSS software.
    pub source_id: Option<String>,
    pub patient: Option<PatientRef>,
    /// The MSS that made it.
    pub mss: Option<OrganizationRef>,
    /// When the tests were made.
    pub date: Option<String>,
    pub tests: Option<Vec<TestInput>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestInput {
    pub test: Option<String>,
    /// A number (or a string holding one, decimal comma accepted), a
    /// boolean (qaap) or a code (motivational_stage).
    pub value: Option<Value>,
    pub unit: Option<String>,
    /// `right` / `left` (`droite`, `gauche`, `D`, `G`): grip strength and
    /// unipodal stance.
    pub side: Option<String>,
    /// Unipodal stance with the eyes closed.
    pub eyes_closed: Option<bool>,
}

/// Who, where and when: what every test of the assessment shares.
#[derive(Debug, Clone)]
pub struct Head {
    pub source_id: Option<String>,
    pub ins: Ins,
    pub mss: Siret,
    pub when: When,
}

impl Head {
    pub fn parse(
        source_id: &Option<String>,
        patient: &Option<PatientRef>,
        mss: &Option<OrganizationRef>,
        date: &Option<String>,
    ) -> Result<Head, Vec<Problem>> {
        let mut f = Faults::default();
        let ins = match patient {
            Some(p) => f.take(p.parse("$.patient")),
            None => f.take(Err(Problem::required("$.patient.ins", "the patient's INS"))),
        };
        let mss = f.take(mss.clone().unwrap_or_default().parse("$.mss", "the SIRET of the MSS"));
        let when = f.take(need_when(date, "$.date", "the date of the assessment"));
        f.into_result(|| {
            Some(Head {
                source_id: source_id.clone(),
                ins: ins?,
                mss: mss?,
                when: when?,
            })
        })
    }

    fn key(&self) -> String {
        record_key(
            self.source_id.as_deref(),
            &[
                "assessment",
                self.ins.system(),
                self.ins.number().as_str(),
                &self.when.fhir(),
            ],
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Laterality {
    Right,
    Left,
}

impl Laterality {
    pub fn parse(s: &str, at: &str) -> Result<Laterality, Problem> {
        match s.trim().to_lowercase().as_str() {
            "right" | "r" | "droite" | "droit" | "d" => Ok(Laterality::Right),
            "left" | "l" | "gauche" | "g" => Ok(Laterality::Left),
            other => Err(Problem::new(
                at,
                "code-invalid",
                format!("'{other}' is not a side (right or left; droite or gauche)"),
            )),
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Laterality::Right => "R",
            Laterality::Left => "L",
        }
    }
}

#[derive(Debug, Clone)]
pub enum ItemValue {
    Quantity(Normalized),
    Boolean(bool),
    Code(String),
}

/// One test, parsed: `row` is its position in the input.
#[derive(Debug, Clone)]
pub struct Item {
    pub row: usize,
    pub at: String,
    pub test: &'static Test,
    pub value: ItemValue,
    pub side: Option<Laterality>,
    pub eyes_closed: Option<bool>,
}

/// A boolean as people write it in exports.
pub fn boolean(v: &Value, at: &str) -> Result<bool, Problem> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "true" | "oui" | "yes" | "o" | "y" | "1" | "vrai" => Ok(true),
            "false" | "non" | "no" | "n" | "0" | "faux" => Ok(false),
            other => Err(Problem::new(
                at,
                "value",
                format!("'{other}' is not yes or no (oui / non)"),
            )),
        },
        other => Err(Problem::new(at, "value", format!("{other} is not true or false"))),
    }
}

/// Parses one test; `at` is its location (`$.tests[2]`), `field` names the
/// location of one of its fields.
pub fn parse_item(
    row: usize,
    input: &TestInput,
    at: &str,
    field: &dyn Fn(&str) -> String,
    warnings: &mut Vec<Warning>,
) -> Result<Item, Problem> {
    let name = need(&input.test, &field("test"), "the name of the test")?;
    let test = catalog::find(name).ok_or_else(|| {
        if catalog::BMI_NAMES.contains(&name.trim().to_lowercase().as_str()) {
            Problem::new(
                field("test"),
                "business-rule",
                "the BMI is not taken as sent: the gateway derives it from the weight and the height of the same assessment",
            )
        } else {
            Problem::new(
                field("test"),
                "code-invalid",
                format!("'{name}' is not a test the gateway knows (known: {})", catalog::names()),
            )
        }
    })?;
    let value = match test.kind {
        Kind::Quantity(m) | Kind::BloodPressure(m, _) => ItemValue::Quantity(measured(
            m,
            input.value.as_ref(),
            input.unit.as_deref(),
            &field("value"),
            &field("unit"),
            warnings,
        )?),
        Kind::Boolean => ItemValue::Boolean(boolean(
            input
                .value
                .as_ref()
                .ok_or_else(|| Problem::required(field("value"), "the answer (true or false)"))?,
            &field("value"),
        )?),
        Kind::Code(cs) => {
            let v = input
                .value
                .as_ref()
                .and_then(Value::as_str)
                .ok_or_else(|| Problem::required(field("value"), &format!("a code of {cs}")))?;
            ItemValue::Code(local_code(cs, v, &field("value"), warnings)?)
        }
    };
    let side = match (
        test.side,
        input.side.as_deref().map(str::trim).filter(|s| !s.is_empty()),
    ) {
        (Side::None, None) => None,
        (Side::None, Some(_)) => {
            return Err(Problem::new(
                field("side"),
                "value",
                format!("a side has no meaning for {}", test.key),
            ));
        }
        (_, None) => {
            return Err(Problem::required(
                field("side"),
                &format!("the side of the {}", test.key),
            ));
        }
        (_, Some(s)) => Some(Laterality::parse(s, &field("side"))?),
    };
    if input.eyes_closed.is_some() && test.side != Side::Component {
        return Err(Problem::new(
            field("eyes_closed"),
            "value",
            format!("eyes_closed has no meaning for {}", test.key),
        ));
    }
    Ok(Item {
        row,
        at: at.to_string(),
        test,
        value,
        side,
        eyes_closed: input.eyes_closed,
    })
}

/// The JSON request: every fault refuses it, all listed.
pub fn map_json(input: &AssessmentInput) -> Result<Mapped, Vec<Problem>> {
    let head = Head::parse(&input.source_id, &input.patient, &input.mss, &input.date);
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    let mut items = Vec::new();
    match &input.tests {
        None => problems.push(Problem::required("$.tests", "at least one test")),
        Some(tests) if tests.is_empty() => problems.push(Problem::required("$.tests", "at least one test")),
        Some(tests) => {
            for (i, t) in tests.iter().enumerate() {
                let at = format!("$.tests[{i}]");
                let field = |f: &str| format!("{at}.{f}");
                match parse_item(i, t, &at, &field, &mut warnings) {
                    Ok(item) => items.push(item),
                    Err(p) => problems.push(p),
                }
            }
        }
    }
    let head = match head {
        Ok(h) => h,
        Err(mut p) => {
            p.extend(problems);
            return Err(p);
        }
    };
    let (mapped, refused) = map(&head, items, warnings);
    problems.extend(refused.into_iter().map(|(_, p)| p));
    match mapped {
        Some(m) if problems.is_empty() => Ok(m),
        _ => Err(problems),
    }
}

/// Maps the parsed tests of one assessment. Tests that cannot be mapped
/// with the others (twice the same, half a blood pressure, an implausible
/// BMI) are returned as refused with their row; the rest is mapped.
pub fn map(head: &Head, items: Vec<Item>, warnings: Vec<Warning>) -> (Option<Mapped>, Vec<(usize, Problem)>) {
    let mut refused = Vec::new();
    let mut kept: Vec<Item> = Vec::new();
    for item in items {
        let same = |k: &Item| k.test.key == item.test.key && k.side == item.side && k.eyes_closed == item.eyes_closed;
        if let Some(first) = kept.iter().find(|k| same(k)) {
            refused.push((
                item.row,
                Problem::new(
                    &item.at,
                    "duplicate",
                    format!(
                        "{} is given twice in this assessment (first at {})",
                        item.test.key, first.at
                    ),
                ),
            ));
        } else {
            kept.push(item);
        }
    }
    // Systolic and diastolic pressures make one Observation: both or neither.
    let bp: Vec<usize> = kept
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i.test.kind, Kind::BloodPressure(..)))
        .map(|(n, _)| n)
        .collect();
    if bp.len() == 1 {
        let lone = kept.remove(bp[0]);
        refused.push((
            lone.row,
            Problem::new(
                &lone.at,
                "required",
                "a blood pressure needs both systolic_bp and diastolic_bp in the same assessment",
            ),
        ));
    }
    // The BMI of the pair; when it is implausible although each is
    // plausible alone, the weight is refused (one of the two is wrong).
    let quantity = |key: &str| {
        kept.iter()
            .position(|i| i.test.key == key)
            .and_then(|n| match &kept[n].value {
                ItemValue::Quantity(q) => Some((n, q.measurement)),
                _ => None,
            })
    };
    let mut bmi: Option<Measurement> = None;
    if let (Some((wn, w)), Some((_, h))) = (quantity("weight"), quantity("height")) {
        match units::bmi(&w, &h) {
            Ok(v) => bmi = Some(v),
            Err(e) => {
                let lone = kept.remove(wn);
                let at = format!("{}.value", lone.at);
                refused.push((lone.row, Problem::unit(at, &e)));
            }
        }
    }
    if kept.is_empty() {
        return (None, refused);
    }

    let mut b = BundleBuilder::with_warnings(warnings);
    let patient = b.lookup(&patient_reference(&head.ins), "$.patient.ins");
    let mss = b.lookup(&organization_reference(&head.mss), "$.mss.siret");
    let system = source_system(&format!("siret-{}", head.mss), "observation");
    let key = head.key();
    let base = |test: &Test, code: Value, id: String| {
        let mut category = vec![pa_category()];
        if let Some(c) = test.category {
            category.push(json!({"coding": [{"system": OBS_CATEGORY, "code": c}]}));
        }
        json!({
            "resourceType": "Observation",
            "meta": {"profile": [profile(test.profile)]},
            "identifier": [identifier(&system, &id)],
            "status": "final",
            "category": category,
            "code": code,
            "subject": {"reference": patient},
            "effectiveDateTime": head.when.fhir(),
            "performer": [{"reference": mss}],
        })
    };
    let mut weight_url: Option<String> = None;
    let mut height_url: Option<String> = None;
    let mut pressure: Vec<&Item> = Vec::new();
    for item in &kept {
        let test = item.test;
        if matches!(test.kind, Kind::BloodPressure(..)) {
            pressure.push(item);
            continue;
        }
        let mut id = format!("{key}/{}", test.key);
        let codes: Vec<Value> = match (test.side, item.side) {
            (Side::Code { right, left }, Some(side)) => {
                id.push('-');
                id.push_str(side.suffix());
                let code = if side == Laterality::Right { right } else { left };
                vec![json!({"system": catalog::SPORT_SANTE, "code": code})]
            }
            _ => test
                .codes
                .iter()
                .map(|(s, c)| json!({"system": s, "code": c}))
                .collect(),
        };
        if let (Side::Component, Some(side)) = (test.side, item.side) {
            id.push('-');
            id.push_str(side.suffix());
            if item.eyes_closed == Some(true) {
                id.push_str("-eyes-closed");
            }
        }
        let mut obs = base(test, json!({"coding": codes}), id);
        match &item.value {
            ItemValue::Quantity(n) => {
                obs["valueQuantity"] = n.measurement.quantity_json();
                if let Some((v, u)) = &n.original {
                    obs["note"] = json!([{"text": format!("Valeur transmise : {v} {u}")}]);
                }
            }
            ItemValue::Boolean(v) => obs["valueBoolean"] = json!(v),
            ItemValue::Code(c) => {
                if let Kind::Code(cs) = test.kind {
                    obs["valueCodeableConcept"] = super::common::coding(cs, c);
                }
            }
        }
        if let (Side::Component, Some(side)) = (test.side, item.side) {
            let (code, display) = if side == Laterality::Right {
                catalog::RIGHT
            } else {
                catalog::LEFT
            };
            let mut components = vec![json!({
                "code": {"coding": [{"system": catalog::SPORT_SANTE, "code": "LATERALITE"}]},
                "valueCodeableConcept": {"coding": [{"system": catalog::SNOMED, "code": code, "display": display}]},
            })];
            if let Some(closed) = item.eyes_closed {
                components.push(json!({
                    "code": {"coding": [{"system": catalog::SPORT_SANTE, "code": "YEUX-FERMES"}]},
                    "valueBoolean": closed,
                }));
            }
            obs["component"] = json!(components);
        }
        let full_url = b.create(&item.at, obs);
        match test.key {
            "weight" => weight_url = Some(full_url),
            "height" => height_url = Some(full_url),
            _ => {}
        }
    }
    if pressure.len() == 2 {
        let test = pressure[0].test;
        let mut obs = base(
            test,
            json!({"coding": [{"system": catalog::LOINC, "code": catalog::BP_PANEL}]}),
            format!("{key}/blood_pressure"),
        );
        let mut notes = Vec::new();
        let mut components = Vec::new();
        // Systolic first, as FR Core lists them.
        pressure.sort_by_key(|i| i.test.key != "systolic_bp");
        for item in &pressure {
            if let (Kind::BloodPressure(_, loinc), ItemValue::Quantity(n)) = (item.test.kind, &item.value) {
                components.push(json!({
                    "code": {"coding": [{"system": catalog::LOINC, "code": loinc}]},
                    "valueQuantity": n.measurement.quantity_json(),
                }));
                if let Some((v, u)) = &n.original {
                    notes.push(json!({"text": format!("Valeur transmise ({}) : {v} {u}", item.test.key)}));
                }
            }
        }
        obs["component"] = json!(components);
        if !notes.is_empty() {
            obs["note"] = json!(notes);
        }
        b.create(&pressure[0].at, obs);
    }
    if let (Some(bmi), Some(w_url), Some(h_url)) = (bmi, weight_url, height_url) {
        let mut obs = base(
            &catalog::TESTS[0],
            json!({"coding": [{"system": catalog::LOINC, "code": catalog::BMI_LOINC}]}),
            format!("{key}/bmi"),
        );
        obs["meta"]["profile"] = json!([profile(catalog::BMI_PROFILE)]);
        obs["valueQuantity"] = bmi.quantity_json();
        obs["derivedFrom"] = json!([{"reference": w_url}, {"reference": h_url}]);
        b.create("$.tests", obs);
        b.warnings.push(Warning {
            location: "$.tests".into(),
            message: format!("BMI {} kg/m2 derived from the weight and the height", bmi.value()),
        });
    }
    (Some(b.finish()), refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apa::identity::InsKind;

    pub(crate) const INS: &str = "189127512501282";
    pub(crate) const SIRET: &str = "73282932000074";

    fn head() -> Head {
        Head {
            source_id: Some("B-1".into()),
            ins: Ins::new(InsKind::Nir, INS).unwrap(),
            mss: Siret::parse(SIRET).unwrap(),
            when: When::parse("2026-03-02", "$").unwrap(),
        }
    }

    fn one(test: &str, value: Value, unit: Option<&str>, side: Option<&str>) -> Vec<Value> {
        let input = TestInput {
            test: Some(test.into()),
            value: Some(value),
            unit: unit.map(str::to_string),
            side: side.map(str::to_string),
            eyes_closed: None,
        };
        let mut w = Vec::new();
        let item = parse_item(0, &input, "$.tests[0]", &|f| format!("$.tests[0].{f}"), &mut w).unwrap();
        let (m, refused) = map(&head(), vec![item], w);
        assert!(refused.is_empty(), "{refused:?}");
        m.unwrap().bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"].clone())
            .collect()
    }

    /// Pins a test's mapping: profile, code(s), category, UCUM unit, value.
    fn pin(test: &str, value: Value, unit: &str, profile_id: &str, codes: &[(&str, &str)], ucum: &str, expected: &str) {
        let obs = &one(test, value, Some(unit), None)[0];
        assert_eq!(obs["meta"]["profile"][0], profile(profile_id));
        let got: Vec<(String, String)> = obs["code"]["coding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["system"].as_str().unwrap().into(), c["code"].as_str().unwrap().into()))
            .collect();
        let want: Vec<(String, String)> = codes.iter().map(|(s, c)| (s.to_string(), c.to_string())).collect();
        assert_eq!(got, want);
        assert_eq!(obs["valueQuantity"]["system"], units::UCUM);
        assert_eq!(obs["valueQuantity"]["code"], ucum);
        assert_eq!(serde_json::to_string(&obs["valueQuantity"]["value"]).unwrap(), expected);
        assert_eq!(obs["category"][0]["coding"][0]["code"], "PhysicalActivity");
        assert_eq!(obs["status"], "final");
        assert_eq!(obs["effectiveDateTime"], "2026-03-02");
    }

    const L: &str = catalog::LOINC;
    const S: &str = catalog::SPORT_SANTE;

    /// What the gateway creates meets its own profiles: each measured
    /// test's Observation, at its lowest plausible value, validates against
    /// the profile it claims (the APA rules, as on every write).
    #[test]
    fn every_measured_test_gives_an_observation_its_profile_accepts() {
        use crate::fhir::rules::Rules;
        let rules = crate::apa::rules::ApaRules::new();
        for t in catalog::TESTS {
            let (Kind::Quantity(m), Side::None) = (t.kind, t.side) else {
                continue;
            };
            let (low, _) = m.bounds();
            let obs = &one(t.key, json!(low.to_string()), Some(m.canonical_unit()), None)[0];
            let res = crate::fhir::resource::Resource {
                resource_type: "Observation".into(),
                json: obs.clone(),
            };
            let errors: Vec<_> = rules
                .validate(&res)
                .into_iter()
                .filter(|i| {
                    matches!(
                        i.severity,
                        crate::fhir::error::Severity::Error | crate::fhir::error::Severity::Fatal
                    )
                })
                .collect();
            assert!(errors.is_empty(), "{}: {errors:?}", t.key);
        }
    }

    #[test]
    fn weight() {
        pin(
            "weight",
            json!(160),
            "lb",
            "apa-obs-body-weight",
            &[(L, "29463-7")],
            "kg",
            "72.6",
        );
    }
    #[test]
    fn height() {
        pin(
            "taille",
            json!("1,65"),
            "m",
            "apa-obs-body-height",
            &[(L, "8302-2")],
            "cm",
            "165",
        );
    }
    #[test]
    fn waist_circumference() {
        pin(
            "tour_de_taille",
            json!(92),
            "cm",
            "apa-obs-waist-circumference",
            &[(L, "8280-0")],
            "cm",
            "92",
        );
    }
    #[test]
    fn resting_heart_rate() {
        pin(
            "resting_heart_rate",
            json!(64),
            "bpm",
            "apa-obs-resting-heart-rate",
            &[(L, "8867-4"), (L, "40443-4")],
            "/min",
            "64",
        );
    }
    #[test]
    fn six_minute_walk() {
        pin(
            "tm6",
            json!("0,45"),
            "km",
            "apa-obs-six-minute-walk",
            &[(L, "64098-7")],
            "m",
            "450",
        );
    }
    #[test]
    fn chair_stand_30s() {
        pin(
            "chair_stand_30s",
            json!(11),
            "reps",
            "apa-obs-chair-stand-30s",
            &[(S, "STS30")],
            "{#}",
            "11",
        );
    }
    #[test]
    fn five_sit_to_stand() {
        pin(
            "five_sit_to_stand",
            json!(14.2),
            "s",
            "apa-obs-five-sit-to-stand",
            &[(S, "STS5")],
            "s",
            "14.2",
        );
    }
    #[test]
    fn timed_up_and_go() {
        pin(
            "tug",
            json!(9500),
            "ms",
            "apa-obs-timed-up-and-go",
            &[(S, "TUG")],
            "s",
            "9.500",
        );
    }
    #[test]
    fn sit_and_reach() {
        pin(
            "sit_and_reach",
            json!(-55),
            "mm",
            "apa-obs-sit-and-reach",
            &[(S, "SITREACH")],
            "cm",
            "-5.5",
        );
    }
    #[test]
    fn steps_per_day() {
        pin(
            "steps_per_day",
            json!(6500),
            "1/(24.h)",
            "apa-obs-steps-per-day",
            &[(L, "41950-7")],
            "/d",
            "6500",
        );
    }
    #[test]
    fn mvpa_minutes_per_week() {
        pin(
            "mvpa_minutes_per_week",
            json!(2.5),
            "h/wk",
            "apa-obs-mvpa-minutes-per-week",
            &[(L, "82290-8")],
            "min/wk",
            "150",
        );
    }
    #[test]
    fn mvpa_days_per_week() {
        pin(
            "mvpa_days_per_week",
            json!(3),
            "j/sem",
            "apa-obs-mvpa-days-per-week",
            &[(L, "89555-7")],
            "d/wk",
            "3",
        );
    }
    #[test]
    fn mvpa_minutes_per_day() {
        pin(
            "mvpa_minutes_per_day",
            json!(1),
            "h/jour",
            "apa-obs-mvpa-minutes-per-day",
            &[(L, "68516-4")],
            "min/d",
            "60",
        );
    }
    #[test]
    fn strength_days_per_week() {
        pin(
            "strength_days_per_week",
            json!(2),
            "d/wk",
            "apa-obs-strength-days-per-week",
            &[(L, "82291-6")],
            "d/wk",
            "2",
        );
    }
    #[test]
    fn ipaq_moderate() {
        pin(
            "ipaq_modere",
            json!(1.5),
            "h",
            "apa-obs-ipaq",
            &[(L, "77592-4")],
            "min",
            "90",
        );
    }
    #[test]
    fn ipaq_vigorous() {
        pin(
            "ipaq_vigorous",
            json!(40),
            "min",
            "apa-obs-ipaq",
            &[(L, "77593-2")],
            "min",
            "40",
        );
    }
    #[test]
    fn onaps_paq() {
        pin(
            "onaps_paq",
            json!(42),
            "pts",
            "apa-obs-onaps-paq",
            &[(S, "ONAPS-PAQ")],
            "{score}",
            "42",
        );
    }
    #[test]
    fn gpaq() {
        pin(
            "gpaq",
            json!(1200),
            "MET-min/wk",
            "apa-obs-gpaq",
            &[(S, "GPAQ-MVPA")],
            "{MET}.min/wk",
            "1200",
        );
    }
    #[test]
    fn ricci_gagnon() {
        pin(
            "ricci",
            json!(18),
            "pts",
            "apa-obs-ricci-gagnon",
            &[(S, "RICCI")],
            "{score}",
            "18",
        );
    }
    #[test]
    fn borg_rpe() {
        pin(
            "borg_rpe",
            json!(13),
            "{score}",
            "apa-obs-borg-rpe",
            &[(S, "BORG-RPE")],
            "{score}",
            "13",
        );
    }
    #[test]
    fn epices() {
        pin(
            "epices",
            json!("30,17"),
            "score",
            "apa-obs-epices",
            &[(S, "EPICES")],
            "{score}",
            "30.17",
        );
    }

    #[test]
    fn grip_strength() {
        let obs = &one("force_prehension", json!(28.5), Some("kgf"), Some("gauche"))[0];
        assert_eq!(obs["meta"]["profile"][0], profile("apa-obs-grip-strength"));
        assert_eq!(obs["code"], json!({"coding": [{"system": S, "code": "GRIP-L"}]}));
        assert_eq!(
            obs["valueQuantity"],
            json!({"value": 28.5, "unit": "kg", "system": units::UCUM, "code": "kg"})
        );
        let right = &one("grip_strength", json!(30), Some("kg"), Some("right"))[0];
        assert_eq!(right["code"]["coding"][0]["code"], "GRIP-R");
    }

    #[test]
    fn unipodal_stance() {
        let input = TestInput {
            test: Some("appui_unipodal".into()),
            value: Some(json!(2)),
            unit: Some("min".into()),
            side: Some("D".into()),
            eyes_closed: Some(false),
        };
        let mut w = Vec::new();
        let item = parse_item(0, &input, "$.tests[0]", &|f| format!("$.tests[0].{f}"), &mut w).unwrap();
        let (m, _) = map(&head(), vec![item], w);
        let obs = &m.unwrap().bundle["entry"][0]["resource"];
        assert_eq!(obs["meta"]["profile"][0], profile("apa-obs-unipodal-stance"));
        assert_eq!(obs["code"], json!({"coding": [{"system": S, "code": "UNIPODAL"}]}));
        assert_eq!(
            obs["valueQuantity"],
            json!({"value": 120, "unit": "s", "system": units::UCUM, "code": "s"})
        );
        assert_eq!(
            obs["component"][0]["valueCodeableConcept"]["coding"][0]["code"],
            "24028007"
        );
        assert_eq!(obs["component"][1]["code"]["coding"][0]["code"], "YEUX-FERMES");
        assert_eq!(obs["component"][1]["valueBoolean"], false);
        assert_eq!(obs["note"][0]["text"], "Valeur transmise : 2 min");
    }

    #[test]
    fn qaap() {
        let obs = &one("qaap", json!("oui"), None, None)[0];
        assert_eq!(obs["meta"]["profile"][0], profile("apa-obs-qaap"));
        assert_eq!(obs["code"], json!({"coding": [{"system": S, "code": "QAAP-POS"}]}));
        assert_eq!(obs["valueBoolean"], true);
    }

    #[test]
    fn motivational_stage() {
        let obs = &one("stade_motivationnel", json!("preparation"), None, None)[0];
        assert_eq!(obs["meta"]["profile"][0], profile("apa-obs-motivational-stage"));
        assert_eq!(obs["code"], json!({"coding": [{"system": S, "code": "MOTIV-STAGE"}]}));
        assert_eq!(
            obs["valueCodeableConcept"],
            json!({"coding": [{"system": "https://apa-gateway.fr/fhir/CodeSystem/motivational-stage", "code": "preparation"}]})
        );
    }

    fn parsed(tests: &[(&str, Value, &str)]) -> (Vec<Item>, Vec<Warning>) {
        let mut w = Vec::new();
        let items = tests
            .iter()
            .enumerate()
            .map(|(i, (t, v, u))| {
                let input = TestInput {
                    test: Some(t.to_string()),
                    value: Some(v.clone()),
                    unit: Some(u.to_string()),
                    ..TestInput::default()
                };
                let at = format!("$.tests[{i}]");
                parse_item(i, &input, &at, &|f| format!("{at}.{f}"), &mut w).unwrap()
            })
            .collect();
        (items, w)
    }

    #[test]
    fn blood_pressure() {
        let (items, w) = parsed(&[("pad", json!(8), "cmHg"), ("pas", json!(132), "mmHg")]);
        let (m, refused) = map(&head(), items, w);
        assert!(refused.is_empty());
        let obs = &m.unwrap().bundle["entry"][0]["resource"];
        assert_eq!(obs["meta"]["profile"][0], profile("apa-obs-blood-pressure"));
        assert_eq!(obs["code"], json!({"coding": [{"system": L, "code": "85354-9"}]}));
        assert_eq!(obs["component"][0]["code"]["coding"][0]["code"], "8480-6");
        assert_eq!(obs["component"][0]["valueQuantity"]["value"], json!(132));
        assert_eq!(obs["component"][1]["code"]["coding"][0]["code"], "8462-4");
        assert_eq!(obs["component"][1]["valueQuantity"]["code"], "mm[Hg]");
        assert_eq!(
            serde_json::to_string(&obs["component"][1]["valueQuantity"]["value"]).unwrap(),
            "80"
        );
        // Half a blood pressure is refused, the rest kept.
        let (items, w) = parsed(&[("pas", json!(132), "mmHg"), ("poids", json!(72), "kg")]);
        let (m, refused) = map(&head(), items, w);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, 0);
        assert_eq!(m.unwrap().bundle["entry"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn bmi_is_derived_from_weight_and_height() {
        let (items, w) = parsed(&[("poids", json!("72,5"), "kg"), ("taille", json!(165), "cm")]);
        let (m, refused) = map(&head(), items, w);
        assert!(refused.is_empty());
        let m = m.unwrap();
        let entries = m.bundle["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        let bmi = &entries[2]["resource"];
        assert_eq!(bmi["meta"]["profile"][0], profile("apa-obs-bmi"));
        assert_eq!(bmi["code"]["coding"][0], json!({"system": L, "code": "39156-5"}));
        assert_eq!(
            bmi["valueQuantity"],
            json!({"value": 26.6, "unit": "kg/m2", "system": units::UCUM, "code": "kg/m2"})
        );
        assert_eq!(bmi["derivedFrom"][0]["reference"], entries[0]["fullUrl"]);
        assert_eq!(bmi["derivedFrom"][1]["reference"], entries[1]["fullUrl"]);
        assert_eq!(bmi["category"][1]["coding"][0]["code"], "vital-signs");
        // Every entry is a conditional create on its business identifier.
        for e in entries {
            assert!(e["request"]["ifNoneExist"].as_str().unwrap().starts_with("identifier="));
        }
        assert!(m.warnings.iter().any(|w| w.message.contains("BMI 26.6")));
    }

    #[test]
    fn a_bmi_sent_is_refused_and_so_is_an_unknown_test() {
        let mut w = Vec::new();
        let field = |f: &str| format!("$.tests[0].{f}");
        let bmi = TestInput {
            test: Some("IMC".into()),
            value: Some(json!(24)),
            unit: Some("kg/m2".into()),
            ..TestInput::default()
        };
        let p = parse_item(0, &bmi, "$.tests[0]", &field, &mut w).unwrap_err();
        assert_eq!(p.location, "$.tests[0].test");
        let unknown = TestInput {
            test: Some("vo2max".into()),
            ..bmi
        };
        let p = parse_item(0, &unknown, "$.tests[0]", &field, &mut w).unwrap_err();
        assert_eq!(p.code, "code-invalid");
    }

    #[test]
    fn a_test_given_twice_is_refused() {
        let (items, w) = parsed(&[("poids", json!(72), "kg"), ("weight", json!(73), "kg")]);
        let (_, refused) = map(&head(), items, w);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].1.location, "$.tests[1]");
    }
}
