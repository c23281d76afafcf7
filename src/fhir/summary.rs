//! `_summary` and `_elements`: the subset of a resource a client asked for.
//! Only then is a stored resource parsed and written again.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Value, json};

use super::search::model::Summary;

const SUMMARY_ELEMENTS: &str = include_str!("definitions/summary-elements.json");

fn summary_elements() -> &'static HashMap<String, Vec<String>> {
    static S: OnceLock<HashMap<String, Vec<String>>> = OnceLock::new();
    S.get_or_init(|| serde_json::from_str(SUMMARY_ELEMENTS).unwrap_or_default())
}

/// Does a JSON key (`valueQuantity`, `_birthDate`) stand for an element
/// name of the definitions (`value[x]`, `birthDate`)?
fn key_matches(key: &str, element: &str) -> bool {
    let key = key.strip_prefix('_').unwrap_or(key);
    match element.strip_suffix("[x]") {
        Some(stem) => key
            .strip_prefix(stem)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())),
        None => key == element,
    }
}

/// Keeps the asked-for top-level elements (plus resourceType, id, meta)
/// and marks the result SUBSETTED, as R4 requires.
pub fn subset(resource: &[u8], resource_type: &str, summary: Option<Summary>, elements: &[String]) -> Option<Vec<u8>> {
    let keep: Box<dyn Fn(&str) -> bool> = match summary {
        Some(Summary::True) => {
            let names = summary_elements().get(resource_type)?;
            Box::new(move |k: &str| names.iter().any(|n| key_matches(k, n)))
        }
        Some(Summary::Text) => Box::new(|k: &str| matches!(k, "text" | "id" | "meta")),
        Some(Summary::Data) => Box::new(|k: &str| k != "text"),
        _ if !elements.is_empty() => Box::new(move |k: &str| elements.iter().any(|e| key_matches(k, e))),
        _ => return None,
    };
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(resource) else {
        return None;
    };
    let mut out = serde_json::Map::new();
    for (k, v) in map {
        if matches!(k.as_str(), "resourceType" | "id" | "meta") || keep(&k) {
            out.insert(k, v);
        }
    }
    if let Some(Value::Object(meta)) = out.get_mut("meta") {
        let tag = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"});
        match meta.get_mut("tag") {
            Some(Value::Array(tags)) => tags.push(tag),
            _ => {
                meta.insert("tag".into(), json!([tag]));
            }
        }
    }
    serde_json::to_vec(&Value::Object(out)).ok()
}
