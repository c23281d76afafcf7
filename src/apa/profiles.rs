//! The APA implementation guide (`profiles/`, embedded at build time) and
//! which of its profiles a resource is held to when it claims none.
//!
//! A resource is validated against the profiles it claims in `meta.profile`.
//! When it claims none of ours, a default applies where the gateway's
//! product leaves no doubt about what the resource is (see
//! `docs/validation.md`, "Profiles and domain rules"):
//! - a ServiceRequest is an APA prescription, a Task a referral, an
//!   Encounter a session, an EpisodeOfCare a programme enrolment, a CarePlan
//!   the programme's plan: the gateway carries no other kind of them;
//! - an Observation, a DiagnosticReport, a HealthcareService or a Consent is
//!   one of ours when its code (type, policy rule) is the one a profile
//!   fixes: a body weight is the assessment's, a report coded BILAN-FINAL
//!   the end-of-pathway report, a service typed PROG-APA a programme, an
//!   OPTOUT consent the opposition the gateway enforces. Others are left
//!   to the base rules;
//! - Patients, Practitioners and Organizations come from many systems
//!   (practice software, directories) in FR Core shape: the French identity
//!   rules apply to all of them (`identity::check_identifiers`), the
//!   profiles' further demands only when claimed.

use std::sync::LazyLock;

use serde_json::Value;

use crate::fhir::error::{Issue, Severity};
use crate::fhir::validate::profile::{Package, PackageError};

/// `profiles/*.json` (file name, contents), listed by `build.rs`.
const FILES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/profiles.rs"));

const BASE: &str = "https://apa-gateway.fr/fhir/StructureDefinition/";
const FR_CORE: &str = "https://hl7.fr/ig/fhir/core/StructureDefinition/";

/// FR Core profiles our differentials name as reference targets, and the
/// resource type each stands for (FR Core itself is not shipped).
const FR_CORE_TYPES: &[(&str, &str)] = &[
    ("fr-core-patient", "Patient"),
    ("fr-core-patient-ins", "Patient"),
    ("fr-core-practitioner", "Practitioner"),
    ("fr-core-practitioner-role", "PractitionerRole"),
    ("fr-core-organization", "Organization"),
    ("fr-core-healthcare-service", "HealthcareService"),
    ("fr-core-encounter", "Encounter"),
];

enum Default {
    /// Every resource of the type.
    Always(&'static str),
    /// The profiles whose pattern (or required binding) on this element
    /// the resource meets.
    ByElement(&'static str),
}

const DEFAULTS: &[(&str, Default)] = &[
    ("ServiceRequest", Default::Always("apa-prescription")),
    ("Task", Default::Always("apa-referral-task")),
    ("Encounter", Default::Always("apa-session")),
    ("EpisodeOfCare", Default::Always("apa-programme-episode")),
    ("CarePlan", Default::Always("apa-careplan")),
    ("Observation", Default::ByElement("code")),
    ("DiagnosticReport", Default::ByElement("code")),
    ("HealthcareService", Default::ByElement("type")),
    ("Consent", Default::ByElement("policyRule")),
];

/// Observation profiles whose code is stated by their FR Core base rather
/// than by our differential: (system, code, profile).
const CODED_BY_BASE: &[(&str, &str, &str)] = &[
    ("http://loinc.org", "29463-7", "apa-obs-body-weight"),
    ("http://loinc.org", "8302-2", "apa-obs-body-height"),
    ("http://loinc.org", "39156-5", "apa-obs-bmi"),
    ("http://loinc.org", "85354-9", "apa-obs-blood-pressure"),
];

static PACKAGE: LazyLock<Result<Package, PackageError>> = LazyLock::new(|| {
    let external: Vec<(String, &str)> = FR_CORE_TYPES
        .iter()
        .map(|(id, t)| (format!("{FR_CORE}{id}"), *t))
        .collect();
    let external: Vec<(&str, &str)> = external.iter().map(|(u, t)| (u.as_str(), *t)).collect();
    Package::load(FILES, &external)
});

/// The embedded package, loaded on first use.
pub fn package() -> Result<&'static Package, &'static PackageError> {
    PACKAGE.as_ref()
}

/// The profiles of ours `resource` is held to when it claims none.
pub fn default_profiles(pkg: &Package, resource: &Value) -> Vec<String> {
    let Some(rtype) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let claims_ours = resource
        .get("meta")
        .and_then(|m| m.get("profile"))
        .and_then(Value::as_array)
        .is_some_and(|ps| ps.iter().filter_map(Value::as_str).any(|p| pkg.has_profile(p)));
    if claims_ours {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (t, d) in DEFAULTS.iter().filter(|(t, _)| *t == rtype) {
        match d {
            Default::Always(id) => out.push(format!("{BASE}{id}")),
            Default::ByElement(element) => {
                out.extend(pkg.profiles_matching(resource, element).into_iter().map(str::to_string));
                if *t == "Observation" {
                    out.extend(coded_by_base(resource));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn coded_by_base(obs: &Value) -> Vec<String> {
    let codings = obs
        .get("code")
        .and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    CODED_BY_BASE
        .iter()
        .filter(|(system, code, _)| {
            codings.iter().any(|c| {
                c.get("system").and_then(Value::as_str) == Some(*system)
                    && c.get("code").and_then(Value::as_str) == Some(*code)
            })
        })
        .map(|(_, _, id)| format!("{BASE}{id}"))
        .collect()
}

/// Validates against the package: claimed profiles, `extra` (named by the
/// caller, e.g. `$validate`'s `profile`), or else the defaults.
pub fn validate(resource: &Value, extra: Option<&str>) -> Vec<Issue> {
    let pkg = match package() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "the embedded profiles do not load");
            return vec![Issue {
                severity: Severity::Fatal,
                code: "exception",
                diagnostics: "the gateway's profiles could not be loaded; nothing can be validated".into(),
                expression: Vec::new(),
            }];
        }
    };
    let apply = match extra {
        Some(p) => vec![p.to_string()],
        None => default_profiles(pkg, resource),
    };
    let apply: Vec<&str> = apply.iter().map(String::as_str).collect();
    pkg.validate(resource, &apply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_embedded_package_loads_and_every_default_is_in_it() {
        let pkg = package().expect("profiles/ loads");
        assert!(FILES.len() > 80, "{} files", FILES.len());
        for (_, d) in DEFAULTS {
            if let Default::Always(id) = d {
                assert!(pkg.has_profile(&format!("{BASE}{id}")), "{id}");
            }
        }
        for (_, _, id) in CODED_BY_BASE {
            assert!(pkg.has_profile(&format!("{BASE}{id}")), "{id}");
        }
    }

    #[test]
    fn an_observation_is_held_to_the_profile_of_its_code() {
        let pkg = package().expect("profiles/ loads");
        let obs = |system: &str, code: &str| json!({"resourceType": "Observation", "code": {"coding": [{"system": system, "code": code}]}});
        let sport = "https://apa-gateway.fr/fhir/CodeSystem/sport-sante";
        assert_eq!(
            default_profiles(pkg, &obs("http://loinc.org", "64098-7")),
            [format!("{BASE}apa-obs-six-minute-walk")]
        );
        assert_eq!(
            default_profiles(pkg, &obs(sport, "GRIP-L")),
            [format!("{BASE}apa-obs-grip-strength")]
        );
        assert_eq!(
            default_profiles(pkg, &obs("http://loinc.org", "29463-7")),
            [format!("{BASE}apa-obs-body-weight")]
        );
        assert!(default_profiles(pkg, &obs("http://loinc.org", "8310-5")).is_empty());
        // What a resource claims replaces the default.
        let mut claimed = obs("http://loinc.org", "64098-7");
        claimed["meta"] = json!({"profile": [format!("{BASE}apa-obs-steps-per-day")]});
        assert!(default_profiles(pkg, &claimed).is_empty());
        assert_eq!(
            default_profiles(pkg, &json!({"resourceType": "Task"})),
            [format!("{BASE}apa-referral-task")]
        );
        assert!(default_profiles(pkg, &json!({"resourceType": "Patient"})).is_empty());
    }

    /// `profiles/example/`: one pathway and an example of every
    /// Observation profile, each valid against what it claims.
    #[test]
    fn the_examples_of_the_guide_validate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/example");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("profiles/example") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("readable");
            let v: Value = serde_json::from_str(&text).expect("JSON");
            let issues: Vec<String> = validate(&v, None)
                .into_iter()
                .filter(|i| i.severity != Severity::Information)
                .map(|i| format!("{:?} {} {}", i.severity, i.expression.join(","), i.diagnostics))
                .filter(|s| !s.starts_with("Warning") || !s.contains("hl7.fr"))
                .collect();
            assert!(issues.is_empty(), "{}: {issues:#?}", path.display());
            n += 1;
        }
        assert!(n >= 40, "{n} examples");
    }
}
