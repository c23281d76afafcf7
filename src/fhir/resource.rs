//! The resource envelope: a FHIR resource is kept as the JSON the client
//! sent (numbers as written, keys in order), checked only for what the
//! server itself relies on. The server manages `id` and `meta.versionId` /
//! `meta.lastUpdated`; everything else is the client's and is stored and
//! served untouched.

use std::borrow::Cow;
use std::collections::HashSet;

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

/// What makes a JSON body unacceptable before any parser reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeFault {
    #[error("the JSON body is nested deeper than the limit of {0} levels")]
    TooDeep(usize),
    /// `at` is the path of the repeated key from the body's root
    /// (`name[0].family`), without the root's name.
    #[error("the key '{key}' appears twice in one object")]
    DuplicateKey { key: String, at: String },
}

impl ShapeFault {
    /// The OperationOutcome of the fault; `body` only names the root of
    /// the location (its `resourceType`, else `$` as the flat API says).
    pub fn into_error(self, body: &[u8]) -> FhirError {
        match self {
            ShapeFault::TooDeep(_) => FhirError::structure(self.to_string()),
            ShapeFault::DuplicateKey { ref at, .. } => {
                let root = root_type(body).unwrap_or_else(|| "$".to_string());
                let location = match at.as_bytes().first() {
                    Some(b'[') => format!("{root}{at}"),
                    _ => format!("{root}.{at}"),
                };
                FhirError::structure(format!(
                    "{self}: JSON objects must not repeat a key (last-wins parsing would hide what was sent)"
                ))
                .at(location)
            }
        }
    }
}

/// The top-level `resourceType`, read only on the error path.
fn root_type(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let rt = v.get("resourceType")?.as_str()?;
    Registry::r4().is_resource_type(rt).then(|| rt.to_string())
}

/// Past this many keys an object's keys are hashed instead of compared
/// one by one, so that a hostile object of 100 000 keys costs no more than
/// its size.
const LINEAR_KEYS: usize = 16;

struct Frame<'a> {
    object: bool,
    /// Where this container's keys start in the shared key stack.
    keys_from: usize,
    /// Arrays: the current element.
    index: usize,
    hashed: Option<HashSet<Cow<'a, [u8]>>>,
}

/// Checks the shape of a JSON body in one pass over its bytes: no object
/// or array nested deeper than `max_depth`, and, when `keys` is set, no
/// object with one key twice (compared after unescaping, so `"a"` and
/// `"\u0061"` are the same key). It does not validate the JSON: malformed
/// input passes here and is answered by the parser.
///
/// A scan fused with the depth check rather than a checking serde visitor:
/// every body (FHIR resources, JSON Patch, the flat API's JSON) crosses the
/// one door that already made this pass, whatever type its handler then
/// deserialises it into, and the parsed values stay serde_json's own
/// (`arbitrary_precision`, `preserve_order`) untouched.
pub fn check_shape(json: &[u8], max_depth: usize, keys: bool) -> Result<(), ShapeFault> {
    let mut frames: Vec<Frame<'_>> = Vec::new();
    let mut stack: Vec<Cow<'_, [u8]>> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    while let Some(&b) = json.get(i) {
        match b {
            b'"' => {
                let (end, escaped) = string_end(json, i + 1);
                let raw = json.get(i + 1..end).unwrap_or_default();
                i = end + 1;
                if keys
                    && expect_key
                    && let Some(frame) = frames.last_mut()
                {
                    let key = if escaped {
                        Cow::Owned(unescape(raw))
                    } else {
                        Cow::Borrowed(raw)
                    };
                    if repeats(frame, &stack, &key) {
                        return Err(ShapeFault::DuplicateKey {
                            key: shown_key(&key),
                            at: path_of(&frames, &stack, &key),
                        });
                    }
                    stack.push(key);
                }
                expect_key = false;
                continue;
            }
            b'{' | b'[' => {
                if frames.len() >= max_depth {
                    return Err(ShapeFault::TooDeep(max_depth));
                }
                frames.push(Frame {
                    object: b == b'{',
                    keys_from: stack.len(),
                    index: 0,
                    hashed: None,
                });
                expect_key = b == b'{';
            }
            b'}' | b']' => {
                if let Some(f) = frames.pop() {
                    stack.truncate(f.keys_from);
                }
                expect_key = false;
            }
            b',' => match frames.last_mut() {
                Some(f) if f.object => expect_key = true,
                Some(f) => f.index += 1,
                None => {}
            },
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The index of the closing quote of the string starting at `from` (or
/// the end of the input), and whether the string holds an escape.
fn string_end(json: &[u8], from: usize) -> (usize, bool) {
    let mut at = from;
    let mut escaped = false;
    while let Some(rest) = json.get(at..) {
        match memchr::memchr2(b'"', b'\\', rest) {
            None => break,
            Some(k) if rest[k] == b'\\' => {
                escaped = true;
                at += k + 2;
            }
            Some(k) => return (at + k, escaped),
        }
    }
    (json.len(), escaped)
}

/// Is `key` already a key of the innermost object?
#[expect(
    clippy::ptr_arg,
    reason = "a hashed object keeps the key as it is, borrowed from the body unless unescaped"
)]
fn repeats<'a>(frame: &mut Frame<'a>, stack: &[Cow<'a, [u8]>], key: &Cow<'a, [u8]>) -> bool {
    let own = stack.get(frame.keys_from..).unwrap_or_default();
    if frame.hashed.is_none() && own.len() >= LINEAR_KEYS {
        frame.hashed = Some(own.iter().cloned().collect());
    }
    match &mut frame.hashed {
        Some(set) => !set.insert(key.clone()),
        None => own.iter().any(|k| k == key),
    }
}

/// The path of `key` in the innermost object: each open container's
/// current key or index, then `key`.
fn path_of(frames: &[Frame<'_>], stack: &[Cow<'_, [u8]>], key: &[u8]) -> String {
    let mut path = String::new();
    for (parent, child) in frames.iter().zip(frames.iter().skip(1)) {
        if parent.object {
            let current = child
                .keys_from
                .checked_sub(1)
                .filter(|&k| k >= parent.keys_from)
                .and_then(|k| stack.get(k));
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&current.map_or_else(|| "?".to_string(), |k| shown_key(k)));
        } else {
            path.push_str(&format!("[{}]", parent.index));
        }
    }
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(&shown_key(key));
    path
}

/// A key as shown in a message: keys are element names, not values, but
/// a hostile one may be long.
fn shown_key(key: &[u8]) -> String {
    let s = String::from_utf8_lossy(key);
    match s.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.into_owned(),
    }
}

/// The bytes a JSON string's escapes stand for. Malformed escapes are kept
/// as written: the parser refuses them anyway.
fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    let hex4 = |at: usize| -> Option<u32> {
        let h = std::str::from_utf8(raw.get(at..at + 4)?).ok()?;
        u32::from_str_radix(h, 16).ok()
    };
    while let Some(&b) = raw.get(i) {
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let simple = match raw.get(i + 1) {
            Some(b'"') => Some(b'"'),
            Some(b'\\') => Some(b'\\'),
            Some(b'/') => Some(b'/'),
            Some(b'b') => Some(0x08),
            Some(b'f') => Some(0x0c),
            Some(b'n') => Some(b'\n'),
            Some(b'r') => Some(b'\r'),
            Some(b't') => Some(b'\t'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
            continue;
        }
        let decoded = match (raw.get(i + 1), hex4(i + 2)) {
            (Some(b'u'), Some(hi @ 0xD800..=0xDBFF)) => match (raw.get(i + 6..i + 8), hex4(i + 8)) {
                (Some(b"\\u"), Some(lo @ 0xDC00..=0xDFFF)) => {
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)).map(|c| (c, 12))
                }
                _ => None,
            },
            (Some(b'u'), Some(cp)) => char::from_u32(cp).map(|c| (c, 6)),
            _ => None,
        };
        match decoded {
            Some((c, len)) => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                i += len;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
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

    fn duplicate(json: &str) -> Option<(String, String)> {
        match check_shape(json.as_bytes(), 64, true) {
            Err(ShapeFault::DuplicateKey { key, at }) => Some((key, at)),
            _ => None,
        }
    }

    #[test]
    fn a_repeated_key_is_found_where_it_is() {
        assert_eq!(
            duplicate(r#"{"resourceType":"Patient","gender":"male","gender":"female"}"#),
            Some(("gender".into(), "gender".into()))
        );
        assert_eq!(
            duplicate(r#"{"resourceType":"Patient","name":[{"given":["A"]},{"family":"B","given":[],"family":"C"}]}"#),
            Some(("family".into(), "name[1].family".into()))
        );
        assert_eq!(
            duplicate(r#"[{"op":"add","path":"/a","op":"remove"}]"#),
            Some(("op".into(), "[0].op".into()))
        );
        // The same key written with an escape.
        assert_eq!(duplicate(r#"{"a":1,"\u0061":2}"#), Some(("a".into(), "a".into())));
        assert_eq!(
            duplicate(r#"{"\ud83d\ude00":1,"😀":2}"#),
            Some(("😀".into(), "😀".into()))
        );
        assert_eq!(
            duplicate(r#"{"a\"b":1,"a\u0022b":2}"#).map(|d| d.0),
            Some("a\"b".into())
        );
    }

    #[test]
    fn one_key_in_different_objects_is_no_repeat() {
        for ok in [
            r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}],"c":"a"}"#,
            r#"{"x":"\"a\":1,\"a\":2","a":["a","a"]}"#,
            r#"{"a":1,"A":2,"a ":3}"#,
        ] {
            assert_eq!(check_shape(ok.as_bytes(), 64, true), Ok(()), "{ok}");
        }
        // CSV and other non-JSON bodies only get the depth check.
        assert_eq!(check_shape(br#"{"a":1,"a":2}"#, 64, false), Ok(()));
    }

    #[test]
    fn a_large_object_is_checked_by_hash() {
        let mut body = String::from("{");
        for i in 0..50_000 {
            body.push_str(&format!("\"k{i}\":{i},"));
        }
        body.push_str("\"k49999\":0}");
        let started = std::time::Instant::now();
        assert_eq!(duplicate(&body).map(|d| d.0), Some("k49999".into()));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn malformed_input_is_left_to_the_parser() {
        for junk in [
            "",
            "\"",
            "\"\\",
            "{\"a",
            "{\"a\\u12",
            "}}]]",
            "{{{",
            "{\"a\":1,\"a",
            ",,,:::",
        ] {
            let _ = check_shape(junk.as_bytes(), 64, true);
        }
        assert_eq!(check_shape(b"[[[[", 3, true), Err(ShapeFault::TooDeep(3)));
    }

    #[test]
    fn a_repeated_key_is_answered_at_its_fhirpath() {
        let body = br#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient","active":true,"active":false}}]}"#;
        let fault = check_shape(body, 64, true).unwrap_err();
        let e = fault.into_error(body);
        assert_eq!(e.status, 400);
        assert_eq!(e.issues[0].code, "structure");
        assert_eq!(
            e.issues[0].expression,
            vec!["Bundle.entry[0].resource.active".to_string()]
        );
    }

    /// The door's cost on a body the gateway parses anyway, for
    /// docs/benchmark.md: `cargo test --release --lib parse_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn parse_cost() {
        let bodies: [(&str, &[u8]); 2] = [
            (
                "Observation (2.2 KB)",
                include_bytes!("../../fuzz/corpus/json_body/Observation-2k.json"),
            ),
            (
                "transaction, 5 resources (6 KB)",
                include_bytes!("../../fuzz/corpus/json_body/transaction-5.json"),
            ),
        ];
        const ROUNDS: u32 = 20_000;
        let time = |f: &dyn Fn()| {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let started = std::time::Instant::now();
                for _ in 0..ROUNDS {
                    f();
                }
                best = best.min(started.elapsed().as_secs_f64() * 1e9 / f64::from(ROUNDS));
            }
            best
        };
        for (name, body) in bodies {
            assert_eq!(check_shape(body, 64, true), Ok(()));
            let depth_only = time(&|| {
                std::hint::black_box(old_depth_scan(std::hint::black_box(body), 64));
            });
            let shape = time(&|| {
                std::hint::black_box(check_shape(std::hint::black_box(body), 64, true)).ok();
            });
            let parse = time(&|| {
                std::hint::black_box(parse(std::hint::black_box(body), None)).ok();
            });
            println!(
                "{name}: parse {parse:.0} ns; depth scan before {depth_only:.0} ns ({:.1} %); shape scan now {shape:.0} ns ({:.1} %); door + parse {:+.1} %",
                100.0 * depth_only / parse,
                100.0 * shape / parse,
                100.0 * (shape - depth_only) / (parse + depth_only)
            );
        }
    }

    /// The depth scan the door ran before the shape check replaced it.
    fn old_depth_scan(json: &[u8], max: usize) -> bool {
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        for &b in json {
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }
}
