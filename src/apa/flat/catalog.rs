//! The assessment tests the flat API takes, as data: the name a sender
//! uses (English key or the French column names of MSS exports), the
//! profile the Observation claims, its code(s), its category and what its
//! value is. Codes are those of `profiles/` (domain.md §4, checked there).

use crate::apa::units::Measure;

pub const LOINC: &str = "http://loinc.org";
pub const SNOMED: &str = "http://snomed.info/sct";
pub const SPORT_SANTE: &str = super::common::SPORT_SANTE;

/// What the Observation's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `valueQuantity` in the measure's canonical UCUM unit.
    Quantity(Measure),
    /// `valueBoolean`.
    Boolean,
    /// `valueCodeableConcept` from one of our code systems.
    Code(&'static str),
    /// One component of the blood-pressure panel (its LOINC code): the
    /// systolic and diastolic rows of one assessment make one Observation.
    BloodPressure(Measure, &'static str),
}

/// How the body side enters the Observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    None,
    /// The code depends on the side (grip strength: GRIP-R / GRIP-L).
    Code {
        right: &'static str,
        left: &'static str,
    },
    /// A laterality component (unipodal stance), with the optional
    /// eyes-closed component.
    Component,
}

#[derive(Debug, Clone, Copy)]
pub struct Test {
    pub key: &'static str,
    /// Other names senders use (lower case, as in French exports).
    pub aliases: &'static [&'static str],
    /// Profile id in `profiles/`.
    pub profile: &'static str,
    /// `Observation.code.coding` (system, code); empty when the side decides.
    pub codes: &'static [(&'static str, &'static str)],
    /// The `observation-category` code besides PhysicalActivity.
    pub category: Option<&'static str>,
    pub kind: Kind,
    pub side: Side,
}

const fn t(
    key: &'static str,
    aliases: &'static [&'static str],
    profile: &'static str,
    codes: &'static [(&'static str, &'static str)],
    category: Option<&'static str>,
    kind: Kind,
) -> Test {
    Test {
        key,
        aliases,
        profile,
        codes,
        category,
        kind,
        side: Side::None,
    }
}

const VITAL: Option<&str> = Some("vital-signs");
const ACTIVITY: Option<&str> = Some("activity");
const SURVEY: Option<&str> = Some("survey");

/// LOINC of the blood-pressure panel (FR Core `fr-core-observation-bp`).
pub const BP_PANEL: &str = "85354-9";
pub const BP_PROFILE: &str = "apa-obs-blood-pressure";

pub const TESTS: &[Test] = &[
    t(
        "weight",
        &["poids"],
        "apa-obs-body-weight",
        &[(LOINC, "29463-7")],
        VITAL,
        Kind::Quantity(Measure::BodyWeight),
    ),
    t(
        "height",
        &["taille"],
        "apa-obs-body-height",
        &[(LOINC, "8302-2")],
        VITAL,
        Kind::Quantity(Measure::BodyHeight),
    ),
    t(
        "waist_circumference",
        &["tour_de_taille"],
        "apa-obs-waist-circumference",
        &[(LOINC, "8280-0")],
        VITAL,
        Kind::Quantity(Measure::WaistCircumference),
    ),
    t(
        "resting_heart_rate",
        &["fc_repos", "frequence_cardiaque_repos"],
        "apa-obs-resting-heart-rate",
        &[(LOINC, "8867-4"), (LOINC, "40443-4")],
        VITAL,
        Kind::Quantity(Measure::HeartRate),
    ),
    t(
        "systolic_bp",
        &["pas", "tension_systolique"],
        BP_PROFILE,
        &[(LOINC, BP_PANEL)],
        VITAL,
        Kind::BloodPressure(Measure::SystolicBloodPressure, "8480-6"),
    ),
    t(
        "diastolic_bp",
        &["pad", "tension_diastolique"],
        BP_PROFILE,
        &[(LOINC, BP_PANEL)],
        VITAL,
        Kind::BloodPressure(Measure::DiastolicBloodPressure, "8462-4"),
    ),
    t(
        "six_minute_walk",
        &["tm6", "test_marche_6min"],
        "apa-obs-six-minute-walk",
        &[(LOINC, "64098-7")],
        ACTIVITY,
        Kind::Quantity(Measure::SixMinuteWalkDistance),
    ),
    t(
        "chair_stand_30s",
        &["lever_chaise_30s"],
        "apa-obs-chair-stand-30s",
        &[(SPORT_SANTE, "STS30")],
        ACTIVITY,
        Kind::Quantity(Measure::ChairStand30s),
    ),
    t(
        "five_sit_to_stand",
        &["lever_chaise_5x", "5_levers"],
        "apa-obs-five-sit-to-stand",
        &[(SPORT_SANTE, "STS5")],
        ACTIVITY,
        Kind::Quantity(Measure::FiveTimesSitToStand),
    ),
    t(
        "timed_up_and_go",
        &["tug"],
        "apa-obs-timed-up-and-go",
        &[(SPORT_SANTE, "TUG")],
        ACTIVITY,
        Kind::Quantity(Measure::TimedUpAndGo),
    ),
    Test {
        side: Side::Component,
        ..t(
            "unipodal_stance",
            &["appui_unipodal"],
            "apa-obs-unipodal-stance",
            &[(SPORT_SANTE, "UNIPODAL")],
            ACTIVITY,
            Kind::Quantity(Measure::UnipodalStance),
        )
    },
    t(
        "sit_and_reach",
        &["flexion_tronc"],
        "apa-obs-sit-and-reach",
        &[(SPORT_SANTE, "SITREACH")],
        ACTIVITY,
        Kind::Quantity(Measure::SitAndReach),
    ),
    Test {
        side: Side::Code {
            right: "GRIP-R",
            left: "GRIP-L",
        },
        ..t(
            "grip_strength",
            &["force_prehension", "handgrip"],
            "apa-obs-grip-strength",
            &[],
            ACTIVITY,
            Kind::Quantity(Measure::GripStrength),
        )
    },
    t(
        "steps_per_day",
        &["pas_par_jour"],
        "apa-obs-steps-per-day",
        &[(LOINC, "41950-7")],
        ACTIVITY,
        Kind::Quantity(Measure::StepsPerDay),
    ),
    t(
        "mvpa_minutes_per_week",
        &["apmv_min_semaine"],
        "apa-obs-mvpa-minutes-per-week",
        &[(LOINC, "82290-8")],
        ACTIVITY,
        Kind::Quantity(Measure::ModerateToVigorousMinutesPerWeek),
    ),
    t(
        "mvpa_days_per_week",
        &["apmv_jours_semaine"],
        "apa-obs-mvpa-days-per-week",
        &[(LOINC, "89555-7")],
        ACTIVITY,
        Kind::Quantity(Measure::ModerateToVigorousDaysPerWeek),
    ),
    t(
        "mvpa_minutes_per_day",
        &["apmv_min_jour"],
        "apa-obs-mvpa-minutes-per-day",
        &[(LOINC, "68516-4")],
        ACTIVITY,
        Kind::Quantity(Measure::MinutesPerActiveDay),
    ),
    t(
        "strength_days_per_week",
        &["renforcement_jours_semaine"],
        "apa-obs-strength-days-per-week",
        &[(LOINC, "82291-6")],
        ACTIVITY,
        Kind::Quantity(Measure::StrengthDaysPerWeek),
    ),
    t(
        "gpaq",
        &[],
        "apa-obs-gpaq",
        &[(SPORT_SANTE, "GPAQ-MVPA")],
        SURVEY,
        Kind::Quantity(Measure::MetMinutesPerWeek),
    ),
    t(
        "ricci_gagnon",
        &["ricci"],
        "apa-obs-ricci-gagnon",
        &[(SPORT_SANTE, "RICCI")],
        SURVEY,
        Kind::Quantity(Measure::RicciGagnonScore),
    ),
    t(
        "ipaq_moderate",
        &["ipaq_modere", "ipaq_moderee"],
        "apa-obs-ipaq",
        &[(LOINC, "77592-4")],
        SURVEY,
        Kind::Quantity(Measure::IpaqMinutes),
    ),
    t(
        "ipaq_vigorous",
        &["ipaq_intense", "ipaq_vigoureuse"],
        "apa-obs-ipaq",
        &[(LOINC, "77593-2")],
        SURVEY,
        Kind::Quantity(Measure::IpaqMinutes),
    ),
    t(
        "onaps_paq",
        &["onaps"],
        "apa-obs-onaps-paq",
        &[(SPORT_SANTE, "ONAPS-PAQ")],
        SURVEY,
        Kind::Quantity(Measure::OnapsPaqScore),
    ),
    t(
        "borg_rpe",
        &["borg"],
        "apa-obs-borg-rpe",
        &[(SPORT_SANTE, "BORG-RPE")],
        SURVEY,
        Kind::Quantity(Measure::BorgRpe),
    ),
    t(
        "epices",
        &[],
        "apa-obs-epices",
        &[(SPORT_SANTE, "EPICES")],
        SURVEY,
        Kind::Quantity(Measure::EpicesScore),
    ),
    t(
        "qaap",
        &["q_aap"],
        "apa-obs-qaap",
        &[(SPORT_SANTE, "QAAP-POS")],
        SURVEY,
        Kind::Boolean,
    ),
    t(
        "motivational_stage",
        &["stade_motivationnel"],
        "apa-obs-motivational-stage",
        &[(SPORT_SANTE, "MOTIV-STAGE")],
        SURVEY,
        Kind::Code("motivational-stage"),
    ),
];

/// The BMI is derived from weight and height, never taken as sent.
pub const BMI_NAMES: &[&str] = &["bmi", "imc"];
pub const BMI_PROFILE: &str = "apa-obs-bmi";
pub const BMI_LOINC: &str = "39156-5";

/// SNOMED CT laterality (value set `laterality`).
pub const RIGHT: (&str, &str) = ("24028007", "Right");
pub const LEFT: (&str, &str) = ("7771000", "Left");

/// The test a sender's name stands for (case and surrounding spaces ignored;
/// hyphens and spaces read as underscores).
pub fn find(name: &str) -> Option<&'static Test> {
    let n = name.trim().to_lowercase().replace(['-', ' '], "_");
    TESTS.iter().find(|t| t.key == n || t.aliases.contains(&n.as_str()))
}

pub fn names() -> String {
    TESTS.iter().map(|t| t.key).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_unique_and_every_profile_exists() {
        let mut seen = std::collections::HashSet::new();
        for t in TESTS {
            for n in std::iter::once(&t.key).chain(t.aliases) {
                assert!(seen.insert(*n), "{n} twice");
                assert_eq!(find(n).map(|f| f.key), Some(t.key));
            }
            let file = format!(
                "{}/profiles/StructureDefinition-{}.json",
                env!("CARGO_MANIFEST_DIR"),
                t.profile
            );
            assert!(std::path::Path::new(&file).exists(), "{file}");
        }
        assert_eq!(find(" Poids ").map(|t| t.key), Some("weight"));
        assert_eq!(find("timed-up-and-go").map(|t| t.key), Some("timed_up_and_go"));
        assert!(find("imc").is_none());
    }
}
