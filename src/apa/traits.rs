//! One patient, one INS: how the gateway tells that two Patient resources
//! are the same person, and keeps a national identity from being
//! registered twice.
//!
//! The INS (identifier + traits) is what French health organisations share
//! to name a patient (RNIV): it is only sent for a qualified identity,
//! whose traits — birth name, first name, birth date, sex, birth place —
//! come from an identity document and the national INSi service. A
//! practice that sends the INS *and* the same traits as those stored has
//! identified the patient; the INS with other traits is an identity
//! collision or a typing error that must not be merged silently.

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::fhir::error::FhirError;
use crate::fhir::rules::Identity;
use crate::fhir::search::model::IndexValue;
use crate::fhir::search::parse::{ParseOptions, parse_search};
use crate::fhir::search::registry::Registry;
use crate::store::{Write, WriteTx};

use super::identity::InsKind;

/// The INS identifiers of a Patient: (system, value).
fn ins_of(patient: &Value) -> Vec<(&str, &str)> {
    patient
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|id| {
            let system = id.get("system")?.as_str()?;
            InsKind::from_system(system)?;
            Some((system, id.get("value")?.as_str()?))
        })
        .collect()
}

/// A name as the RNIV compares it: capitals without diacritics, hyphens
/// and apostrophes as spaces, spaces collapsed (`Le Bihan`, `LE-BIHAN`
/// and `le bihan` are one name; `Lebihan` is not).
fn comparable(name: &str) -> String {
    let plain: String = name
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .map(|c| match c {
            '-' | '\'' | '’' => ' ',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    plain.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The traits of a qualified identity, as far as the resource gives them.
#[derive(Debug, PartialEq, Eq)]
struct Traits {
    birth_name: Option<String>,
    first_name: Option<String>,
    birth_date: Option<String>,
    sex: Option<String>,
    birth_place: Option<String>,
}

impl Traits {
    fn of(patient: &Value) -> Traits {
        let official = patient
            .get("name")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|n| n.get("use").and_then(Value::as_str) == Some("official"));
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let birth_place = patient
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some(BIRTH_PLACE))
            .filter_map(|e| e.pointer("/valueAddress/extension"))
            .filter_map(Value::as_array)
            .flatten()
            .find_map(|e| e.pointer("/valueCoding/code").and_then(Value::as_str))
            .map(str::to_string);
        Traits {
            birth_name: official
                .and_then(|n| n.get("family"))
                .and_then(Value::as_str)
                .map(comparable),
            first_name: official
                .and_then(|n| n.pointer("/given/0"))
                .and_then(Value::as_str)
                .map(comparable),
            birth_date: text(patient.get("birthDate")),
            sex: text(patient.get("gender")),
            birth_place,
        }
    }

    /// Are the traits that identify someone all there? (The birth place
    /// may be unknown.)
    fn complete(&self) -> bool {
        self.birth_name.is_some() && self.first_name.is_some() && self.birth_date.is_some() && self.sex.is_some()
    }

    /// Do the traits both sides give agree? A trait one side lacks is not
    /// held against the match: the INS already names one person.
    fn agree(&self, other: &Traits) -> bool {
        fn same(a: &Option<String>, b: &Option<String>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
        }
        same(&self.birth_name, &other.birth_name)
            && same(&self.first_name, &other.first_name)
            && same(&self.birth_date, &other.birth_date)
            && same(&self.sex, &other.sex)
            && same(&self.birth_place, &other.birth_place)
    }
}

/// The Patient's birth place extension (its INSEE commune code).
pub const BIRTH_PLACE: &str = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace";

/// Is the stored Patient the person `sent` describes? `Unknown` unless the
/// two share an INS (a match on a local identifier never crosses
/// organisations) and `sent` gives the traits; `Same` when the traits
/// agree; `Different` when one differs, without saying which (the stored
/// identity is not shown).
pub fn identify(sent: &Value, stored: &Value) -> Identity {
    let stored_ins = ins_of(stored);
    if !ins_of(sent).iter().any(|i| stored_ins.contains(i)) {
        return Identity::Unknown;
    }
    let sent = Traits::of(sent);
    if !sent.agree(&Traits::of(stored)) {
        return Identity::Different(
            "this INS is registered with other identity traits (birth name, first name, birth date, sex or \
             birth place): check the identity with the INSi service before sending it again"
                .into(),
        );
    }
    if sent.complete() {
        Identity::Same
    } else {
        // The INS alone finds a patient the caller sees; it identifies no
        // one elsewhere.
        Identity::Unknown
    }
}

/// Refuses a job that would give an INS to a second Patient: a patient
/// already registered is identified (conditional create on the INS, with
/// the same traits), never registered again.
pub async fn unique_ins(tx: &mut WriteTx, writes: &[Write]) -> Result<(), FhirError> {
    let mut seen: Vec<(String, String, &str)> = Vec::new();
    for w in writes.iter().filter(|w| w.resource_type == "Patient") {
        for (_, v) in &w.index {
            if let IndexValue::Token {
                system: Some(system),
                code: Some(value),
            } = v
                && InsKind::from_system(system).is_some()
                && !seen.iter().any(|(s, c, _)| s == system && c == value)
            {
                seen.push((system.clone(), value.clone(), &w.id));
            }
        }
    }
    for (system, value, id) in seen {
        if writes
            .iter()
            .filter(|w| w.resource_type == "Patient" && w.id != id && w.body.is_some())
            .any(|w| has_token(&w.index, &system, &value))
        {
            return Err(taken(&system));
        }
        let pairs = vec![("identifier".to_string(), format!("{system}|{value}"))];
        let opts = ParseOptions {
            strict: true,
            default_count: 2,
            max_count: 2,
            ..ParseOptions::default()
        };
        let req = parse_search(Registry::r4(), Some("Patient"), &pairs, &opts)?;
        let holders = tx.search_keys_unrestricted(&req, 2).await?;
        if holders.iter().any(|(_, other, _)| other != id) {
            return Err(taken(&system));
        }
    }
    Ok(())
}

fn has_token(index: &[(String, IndexValue)], system: &str, value: &str) -> bool {
    index
        .iter()
        .any(|(_, v)| matches!(v, IndexValue::Token { system: Some(s), code: Some(c) } if s == system && c == value))
}

fn taken(system: &str) -> FhirError {
    FhirError::new(
        409,
        "duplicate",
        format!(
            "a patient with this INS ({system}) is already registered: identify them with a conditional \
             create on the INS (ifNoneExist / If-None-Exist) carrying the same identity traits, or refer to \
             them, instead of registering them again"
        ),
    )
    .at("Patient.identifier")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patient(family: &str, given: &str, birth: &str, sex: &str) -> Value {
        json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "268053523812380"}],
            "name": [{"use": "official", "family": family, "given": [given]}],
            "birthDate": birth,
            "gender": sex,
        })
    }

    #[test]
    fn the_same_ins_and_traits_written_differently_are_one_person() {
        let stored = patient("Le Bihan", "Nathalie", "1968-05-21", "female");
        let sent = patient("LE-BIHAN", "nathalie", "1968-05-21", "female");
        assert_eq!(identify(&sent, &stored), Identity::Same);
        let accented = patient("Lévêque", "Zoé", "1968-05-21", "female");
        let plain = patient("LEVEQUE", "ZOE", "1968-05-21", "female");
        assert_eq!(identify(&plain, &accented), Identity::Same);
    }

    #[test]
    fn the_same_ins_with_another_birth_date_is_refused_not_merged() {
        let stored = patient("Le Bihan", "Nathalie", "1968-05-21", "female");
        let sent = patient("Le Bihan", "Nathalie", "1968-05-12", "female");
        assert!(matches!(identify(&sent, &stored), Identity::Different(_)));
    }

    #[test]
    fn the_ins_without_traits_identifies_no_one() {
        let stored = patient("Le Bihan", "Nathalie", "1968-05-21", "female");
        let mut sent = stored.clone();
        sent.as_object_mut().unwrap().remove("birthDate");
        assert_eq!(identify(&sent, &stored), Identity::Unknown);
    }

    #[test]
    fn a_match_on_a_local_identifier_is_no_identification() {
        let mut stored = patient("Le Bihan", "Nathalie", "1968-05-21", "female");
        stored["identifier"] = json!([{"system": "urn:oid:1.2.3.4", "value": "IPP-1"}]);
        let sent = stored.clone();
        assert_eq!(identify(&sent, &stored), Identity::Unknown);
    }
}
