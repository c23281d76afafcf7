//! The resource envelope: a FHIR resource is kept as the JSON the client
//! sent (numbers as written, keys in order), checked only for what the
//! server itself relies on. The server manages `id` and `meta.versionId` /
//! `meta.lastUpdated`; everything else is the client's and is stored and
//! served untouched.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::error::FhirError;
use super::search::registry::Registry;
use super::search::values::format_instant;

/// A parsed resource.
#[derive(Debug, Clone)]
pub struct Resource {
    pub resource_type: String,
    /// Always a JSON object.
    pub json: Value,
}

impl Resource {
    pub fn id(&self) -> Option<&str> {
        self.json.get("id").and_then(Value::as_str)
    }

    /// Sets `id`, `meta.versionId` and `meta.lastUpdated`, keeping every
    /// other element (and `meta.profile`, `meta.tag`…) as sent.
    pub fn stamp(&mut self, id: &str, version: i64, updated: i64) {
        let Value::Object(json) = &mut self.json else {
            return;
        };
        let id_value = Value::String(id.to_string());
        match json.get_mut("id") {
            Some(v) => *v = id_value,
            None => {
                let at = usize::from(json.contains_key("resourceType"));
                json.shift_insert(at, "id".into(), id_value);
            }
        }
        if !matches!(json.get("meta"), Some(Value::Object(_))) {
            let at = json.keys().position(|k| k == "id").map_or(0, |i| i + 1);
            json.shift_remove("meta");
            json.shift_insert(at, "meta".into(), Value::Object(Map::new()));
        }
        let meta = match json.get_mut("meta") {
            Some(Value::Object(m)) => m,
            _ => return,
        };
        meta.insert("versionId".into(), Value::String(version.to_string()));
        meta.insert("lastUpdated".into(), Value::String(format_instant(updated)));
    }

    pub fn to_bytes(&self) -> Bytes {
        // Serialising a Map of Values cannot fail (keys are strings).
        Bytes::from(serde_json::to_vec(&self.json).unwrap_or_default())
    }

    pub fn into_value(self) -> Value {
        self.json
    }
}

/// The codes of `system` in a CodeableConcept, or in a list of them.
pub fn codes<'a>(cc: Option<&'a Value>, system: &'a str) -> impl Iterator<Item = &'a str> {
    let concepts: &[Value] = match cc {
        Some(Value::Array(items)) => items,
        Some(v @ Value::Object(_)) => std::slice::from_ref(v),
        _ => &[],
    };
    concepts.iter().flat_map(move |c| {
        c.get("coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(move |coding| coding.get("system").and_then(Value::as_str) == Some(system))
            .filter_map(|coding| coding.get("code").and_then(Value::as_str))
    })
}

/// A logical id: 1–64 of `A-Z a-z 0-9 - .` (FHIR R4 `id`).
pub fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Parses a request body into a resource. `expected_type` is the type the
/// URL names, if any.
pub fn parse(body: &[u8], expected_type: Option<&str>) -> Result<Resource, FhirError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(FhirError::structure(
            "the request body is empty; a FHIR resource in JSON was expected",
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        FhirError::structure(format!(
            "the body is not valid JSON (line {}, column {}): {}",
            e.line(),
            e.column(),
            e.classify_message()
        ))
    })?;
    from_value(value, expected_type, "")
}

trait ClassifyMessage {
    fn classify_message(&self) -> String;
}

impl ClassifyMessage for serde_json::Error {
    fn classify_message(&self) -> String {
        // serde_json's message ends with " at line X column Y": drop that part.
        let s = self.to_string();
        match s.rfind(" at line ") {
            Some(i) => s[..i].to_string(),
            None => s,
        }
    }
}

/// Checks a JSON value as a resource. `path` prefixes the FHIRPath of
/// errors (e.g. `Bundle.entry[2].resource`).
pub fn from_value(value: Value, expected_type: Option<&str>, path: &str) -> Result<Resource, FhirError> {
    let at = |p: &str| {
        if path.is_empty() {
            p.to_string()
        } else {
            format!("{path}.{p}")
        }
    };
    let Value::Object(json) = value else {
        return Err(
            FhirError::structure("a FHIR resource must be a JSON object").at(if path.is_empty() {
                "$this".to_string()
            } else {
                path.to_string()
            }),
        );
    };
    let Some(rt) = json.get("resourceType") else {
        return Err(FhirError::structure("the resource has no resourceType").at(at("resourceType")));
    };
    let Some(rt) = rt.as_str() else {
        return Err(FhirError::structure("resourceType must be a string").at(at("resourceType")));
    };
    if !Registry::r4().is_resource_type(rt) {
        return Err(
            FhirError::not_supported(400, format!("'{rt}' is not a FHIR R4 resource type")).at(at("resourceType")),
        );
    }
    if let Some(expected) = expected_type
        && rt != expected
    {
        return Err(
            FhirError::invalid(format!("the body is a {rt} but the URL is for {expected}")).at(at("resourceType")),
        );
    }
    let resource_type = rt.to_string();
    let root = if path.is_empty() {
        resource_type.clone()
    } else {
        path.to_string()
    };
    match json.get("id") {
        None => {}
        Some(Value::String(id)) if valid_id(id) => {}
        Some(_) => {
            return Err(
                FhirError::invalid("id must be 1 to 64 characters among A-Z, a-z, 0-9, '-' and '.'")
                    .at(format!("{root}.id")),
            );
        }
    }
    match json.get("meta") {
        None | Some(Value::Object(_)) => {}
        Some(_) => return Err(FhirError::structure("meta must be an object").at(format!("{root}.meta"))),
    }
    Ok(Resource {
        resource_type,
        json: Value::Object(json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_keeps_what_the_client_wrote() {
        let body = br#"{"resourceType":"Observation","status":"final","valueQuantity":{"value":72,"unit":"kg"},"x":1.50,"effectiveInstant":"2024-01-01T10:00:00.250Z"}"#;
        let mut r = parse(body, Some("Observation")).unwrap();
        r.stamp("abc", 1, 0);
        let out = String::from_utf8(r.to_bytes().to_vec()).unwrap();
        assert_eq!(
            out,
            r#"{"resourceType":"Observation","id":"abc","meta":{"versionId":"1","lastUpdated":"1970-01-01T00:00:00.000000Z"},"status":"final","valueQuantity":{"value":72,"unit":"kg"},"x":1.50,"effectiveInstant":"2024-01-01T10:00:00.250Z"}"#
        );
    }

    #[test]
    fn bad_bodies_are_refused_with_a_location() {
        let e = parse(b"{", None).unwrap_err();
        assert_eq!(e.status, 400);
        let e = parse(br#"{"resourceType":"Patient","id":"a b"}"#, None).unwrap_err();
        assert_eq!(e.issues[0].expression, vec!["Patient.id".to_string()]);
        let e = parse(br#"{"resourceType":"Nope"}"#, None).unwrap_err();
        assert_eq!(e.status, 400);
        let e = parse(br#"{"resourceType":"Patient"}"#, Some("Observation")).unwrap_err();
        assert_eq!(e.status, 400);
    }
}
