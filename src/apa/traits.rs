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

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::fhir::error::FhirError;
use crate::fhir::rules::Identity;
use crate::fhir::search::model::IndexValue;
use crate::fhir::search::parse::{ParseOptions, parse_search};
use crate::fhir::search::registry::Registry;
use crate::store::{Visibility, Write, WriteTx};

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
        let text = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        // FR Core codes the birth place as an INSEE code in the address of
        // patient-birthPlace: the commune, or 99 + the country for a birth
        // abroad (what the INSi service returns, and what the flat API maps).
        let birth_place = patient
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some(BIRTH_PLACE))
            .filter_map(|e| e.pointer("/valueAddress/extension"))
            .filter_map(Value::as_array)
            .flatten()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some(INSEE_CODE))
            .find_map(|e| text(e.pointer("/valueCoding/code")))
            .map(|c| c.to_ascii_uppercase());
        let name = |v: Option<&Value>| text(v).map(|n| comparable(&n)).filter(|n| !n.is_empty());
        Traits {
            birth_name: name(official.and_then(|n| n.get("family"))),
            first_name: name(official.and_then(|n| n.pointer("/given/0"))),
            birth_date: text(patient.get("birthDate")),
            sex: text(patient.get("gender")),
            birth_place,
        }
    }

    /// Are all the traits of a qualified identity there? The INSi service
    /// returns them all, the birth place included, for every INS.
    fn complete(&self) -> bool {
        self.birth_name.is_some()
            && self.first_name.is_some()
            && self.birth_date.is_some()
            && self.sex.is_some()
            && self.birth_place.is_some()
    }
}

/// The Patient's birth place extension (its INSEE commune code).
pub const BIRTH_PLACE: &str = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace";
const INSEE_CODE: &str = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code";

/// Is the stored Patient the person `sent` describes? `Unknown` unless the
/// two share an INS (a match on a local identifier never crosses
/// organisations); `Same` only when `sent` gives every trait and each
/// agrees with the stored one; `Unknown` when `sent` lacks a trait (the INS
/// alone finds a patient the caller sees, and identifies no one
/// elsewhere); `Different` otherwise. The reason of `Different` is for a
/// caller who sees the patient: outside its compartment the write path
/// answers [`not_identified`] whatever the reason.
pub fn identify(sent: &Value, stored: &Value) -> Identity {
    let stored_ins = ins_of(stored);
    if !ins_of(sent).iter().any(|i| stored_ins.contains(i)) {
        return Identity::Unknown;
    }
    let sent = Traits::of(sent);
    if !sent.complete() {
        return Identity::Unknown;
    }
    if sent == Traits::of(stored) {
        Identity::Same
    } else {
        Identity::Different(
            "this INS is registered with other identity traits (birth name, first name, birth date, sex or \
             birth place): check the identity with the INSi service before sending it again"
                .into(),
        )
    }
}

/// The one answer an organisation gets when a write would register or
/// identify a patient by an INS and the gateway does not identify them:
/// traits missing, a trait that differs, or the INS held by a patient it
/// does not see. Telling these apart would let it learn the traits of
/// anyone whose INS it knows, one trait at a time.
pub fn not_identified() -> FhirError {
    FhirError::new(
        422,
        "security",
        "the patient is not identified: a Patient carrying an INS must carry the complete qualified identity \
         (official birth name, first name, birth date, sex and the INSEE code of the birth place) exactly as \
         the INSi service returned it, and a patient already registered by another organisation is only \
         identified by a conditional create on the INS carrying all of these traits; check the identity with \
         the INSi service",
    )
    .at("Patient.identifier")
}

/// Refused identifications per (organisation, INS) in a sliding window:
/// past the limit, every identification of that INS by that organisation
/// is refused (429) until the window frees a slot, whether it would
/// succeed or not, so that the limit does not turn into an oracle itself.
/// Per process, like the other rate limits.
pub struct IdentificationLimit {
    max: usize,
    window: Duration,
    failures: Mutex<HashMap<(String, String), Vec<Instant>>>,
}

/// Keys kept at most; past it, keys that are not blocked are forgotten
/// first (they hold less than a blocked one).
const LIMIT_KEYS: usize = 100_000;

impl IdentificationLimit {
    /// `max == 0` switches the limit off.
    pub fn new(max: u32, window: Duration) -> IdentificationLimit {
        IdentificationLimit {
            max: max as usize,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self) -> MutexGuard<'_, HashMap<(String, String), Vec<Instant>>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long `party` must wait before identifying `ins` again, if it
    /// must.
    pub fn blocked(&self, party: &str, ins: &str) -> Option<Duration> {
        if self.max == 0 {
            return None;
        }
        let now = Instant::now();
        let mut map = self.failures();
        let times = map.get_mut(&(party.to_string(), ins.to_string()))?;
        times.retain(|t| now.duration_since(*t) < self.window);
        if times.len() < self.max {
            return None;
        }
        let oldest = times.first().copied()?;
        Some(self.window.saturating_sub(now.duration_since(oldest)))
    }

    /// Notes a refused identification.
    pub fn fail(&self, party: &str, ins: &str) {
        if self.max == 0 {
            return;
        }
        let now = Instant::now();
        let mut map = self.failures();
        if map.len() >= LIMIT_KEYS {
            let (window, max) = (self.window, self.max);
            map.retain(|_, times| {
                times.retain(|t| now.duration_since(*t) < window);
                !times.is_empty()
            });
            if map.len() >= LIMIT_KEYS {
                map.retain(|_, times| times.len() >= max);
            }
        }
        map.entry((party.to_string(), ins.to_string())).or_default().push(now);
    }
}

impl Default for IdentificationLimit {
    fn default() -> Self {
        IdentificationLimit::new(5, Duration::from_secs(3600))
    }
}

fn throttled(wait: Duration) -> FhirError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    FhirError::new(
        429,
        "throttled",
        format!(
            "too many refused identifications of this INS by your organisation; retry in {} s",
            secs.max(1)
        ),
    )
    .at("Patient.identifier")
}

/// Keeps a national identity from being registered twice and decides, for
/// an organisation's job, what it may do with an INS held elsewhere:
/// - a Patient the job writes with an INS another Patient holds is refused:
///   precisely (409) when the caller sees that patient, with
///   [`not_identified`] when it does not;
/// - a Patient an organisation writes with an INS carries every trait, or
///   is refused with [`not_identified`] too, whether the INS is held or
///   not;
/// - past `limit` refused identifications of one INS, the organisation's
///   jobs writing or identifying it (`WriteTx::vouched`) are refused (429).
pub async fn unique_ins(tx: &mut WriteTx, writes: &[Write], limit: &IdentificationLimit) -> Result<(), FhirError> {
    let party = match tx.visibility() {
        Visibility::All => None,
        Visibility::Party(p) => Some(p.clone().unwrap_or_default()),
    };
    if let Some(party) = &party {
        let vouched: Vec<String> = tx
            .vouched()
            .iter()
            .filter_map(|r| r.strip_prefix("Patient/"))
            .map(str::to_string)
            .collect();
        for id in vouched {
            let Some(v) = tx.read_unrestricted("Patient", &id).await? else {
                continue;
            };
            let json: Value = v
                .body
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            for (system, value) in ins_of(&json) {
                if let Some(wait) = limit.blocked(party, &format!("{system}|{value}")) {
                    return Err(throttled(wait));
                }
            }
        }
    }
    let mut seen: Vec<(String, String, &Write)> = Vec::new();
    for w in writes
        .iter()
        .filter(|w| w.resource_type == "Patient" && w.body.is_some())
    {
        for (_, v) in &w.index {
            if let IndexValue::Token {
                system: Some(system),
                code: Some(value),
            } = v
                && InsKind::from_system(system).is_some()
                && !seen.iter().any(|(s, c, _)| s == system && c == value)
            {
                seen.push((system.clone(), value.clone(), w));
            }
        }
    }
    for (system, value, w) in seen {
        let ins = format!("{system}|{value}");
        if let Some(party) = &party
            && let Some(wait) = limit.blocked(party, &ins)
        {
            return Err(throttled(wait));
        }
        let refuse = |party: &Option<String>| {
            if let Some(party) = party {
                limit.fail(party, &ins);
            }
            not_identified()
        };
        if writes
            .iter()
            .filter(|o| o.resource_type == "Patient" && o.id != w.id && o.body.is_some())
            .any(|o| has_token(&o.index, &system, &value))
        {
            return Err(taken(&system));
        }
        let pairs = vec![("identifier".to_string(), ins.clone())];
        let opts = ParseOptions {
            strict: true,
            default_count: 2,
            max_count: 2,
            ..ParseOptions::default()
        };
        let req = parse_search(Registry::r4(), Some("Patient"), &pairs, &opts)?;
        // Its own holder only when the write updates a Patient the caller
        // sees (`pk`): a client id naming the holder it cannot see is a
        // second Patient for the INS, answered as any.
        let another = |(_, other, _): &(String, String, i64)| *other != w.id || w.pk.is_none();
        let holders = tx.search_keys_unrestricted(&req, 2).await?;
        if holders.iter().any(another) {
            let seen_by_caller = tx.search_keys(&req, 2).await?;
            if party.is_none() || seen_by_caller.iter().any(another) {
                return Err(taken(&system));
            }
            return Err(refuse(&party));
        }
        if party.is_some() {
            let json: Value = w
                .body
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            if !Traits::of(&json).complete() {
                return Err(refuse(&party));
            }
        }
    }
    Ok(())
}

fn has_token(index: &[(String, IndexValue)], system: &str, value: &str) -> bool {
    index
        .iter()
        .any(|(_, v)| matches!(v, IndexValue::Token { system: Some(s), code: Some(c) } if s == system && c == value))
}

/// A second Patient for an INS the caller sees the holder of.
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
            "extension": [{"url": BIRTH_PLACE, "valueAddress": {"extension": [
                {"url": INSEE_CODE, "valueCoding": {"code": "35238"}}
            ]}}],
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "268053523812380"}],
            "name": [{"use": "official", "family": family, "given": [given]}],
            "birthDate": birth,
            "gender": sex,
        })
    }

    fn nathalie() -> Value {
        patient("Le Bihan", "Nathalie", "1968-05-21", "female")
    }

    #[test]
    fn the_same_ins_and_traits_written_differently_are_one_person() {
        let sent = patient("LE-BIHAN", "nathalie", "1968-05-21", "female");
        assert_eq!(identify(&sent, &nathalie()), Identity::Same);
        let accented = patient("Lévêque", "Zoé", "1968-05-21", "female");
        let plain = patient("LEVEQUE", "ZOE", "1968-05-21", "female");
        assert_eq!(identify(&plain, &accented), Identity::Same);
    }

    #[test]
    fn each_trait_that_differs_is_refused_not_merged() {
        let variants = [
            patient("Le Bihan", "Nathalie", "1968-05-12", "female"),
            patient("Lebihan", "Nathalie", "1968-05-21", "female"),
            patient("Le Bihan", "Anne", "1968-05-21", "female"),
            patient("Le Bihan", "Nathalie", "1968-05-21", "male"),
        ];
        for sent in &variants {
            assert!(matches!(identify(sent, &nathalie()), Identity::Different(_)), "{sent}");
        }
        let mut abroad = nathalie();
        abroad["extension"][0]["valueAddress"]["extension"][0]["valueCoding"]["code"] = json!("99134");
        assert!(matches!(identify(&abroad, &nathalie()), Identity::Different(_)));
    }

    #[test]
    fn a_birth_abroad_is_compared_by_its_country_code() {
        let mut born_in_spain = nathalie();
        born_in_spain["extension"][0]["valueAddress"]["extension"][0]["valueCoding"]["code"] = json!("99134");
        assert!(Traits::of(&born_in_spain).complete());
        assert_eq!(identify(&born_in_spain.clone(), &born_in_spain), Identity::Same);
    }

    #[test]
    fn the_ins_with_a_trait_left_out_identifies_no_one() {
        let stored = nathalie();
        let removals: [&dyn Fn(&mut Value); 6] = [
            &|p| drop(p.as_object_mut().map(|o| o.remove("birthDate"))),
            &|p| drop(p.as_object_mut().map(|o| o.remove("gender"))),
            &|p| drop(p.as_object_mut().map(|o| o.remove("extension"))),
            &|p| p["name"][0]["given"] = json!([]),
            &|p| p["name"][0]["family"] = json!(" "),
            &|p| p["name"][0]["use"] = json!("usual"),
        ];
        for remove in removals {
            let mut sent = stored.clone();
            remove(&mut sent);
            assert!(!Traits::of(&sent).complete(), "{sent}");
            assert_eq!(identify(&sent, &stored), Identity::Unknown, "{sent}");
        }
    }

    #[test]
    fn a_match_on_a_local_identifier_is_no_identification() {
        let mut stored = nathalie();
        stored["identifier"] = json!([{"system": "urn:oid:1.2.3.4", "value": "IPP-1"}]);
        let sent = stored.clone();
        assert_eq!(identify(&sent, &stored), Identity::Unknown);
    }

    #[test]
    fn refused_identifications_are_limited_per_organisation_and_ins() {
        let limit = IdentificationLimit::new(5, Duration::from_secs(3600));
        for _ in 0..4 {
            limit.fail("Organization/mss", "ins-1");
        }
        assert_eq!(limit.blocked("Organization/mss", "ins-1"), None);
        limit.fail("Organization/mss", "ins-1");
        let wait = limit.blocked("Organization/mss", "ins-1").map(|d| d.as_secs());
        assert!(wait.is_some_and(|s| s > 3500), "{wait:?}");
        // Another INS, another organisation: their own counts.
        assert_eq!(limit.blocked("Organization/mss", "ins-2"), None);
        assert_eq!(limit.blocked("Organization/gp", "ins-1"), None);
        // Failures older than the window no longer count; 0 switches it off.
        let short = IdentificationLimit::new(1, Duration::ZERO);
        short.fail("Organization/mss", "ins-1");
        assert_eq!(short.blocked("Organization/mss", "ins-1"), None);
        let off = IdentificationLimit::new(0, Duration::from_secs(3600));
        off.fail("Organization/mss", "ins-1");
        assert_eq!(off.blocked("Organization/mss", "ins-1"), None);
    }

    #[test]
    fn a_throttled_identification_says_when_to_retry() {
        let e = throttled(Duration::from_millis(1500));
        assert_eq!(e.status, 429);
        assert!(e.issues[0].diagnostics.ends_with("retry in 2 s"));
    }
}
