//! `$validate` (`POST [type]/$validate`, `POST [type]/[id]/$validate`):
//! the issues a write of the resource would meet, as an OperationOutcome,
//! and nothing stored. The body is the resource, or a `Parameters` with
//! `resource` and optionally `profile` and `mode`.
//!
//! A resource that fails validation is a successful `$validate` (200, its
//! issues listed); only a request that cannot be understood is a 4xx. A
//! Bundle's entries are validated too, as a transaction would validate them.

use bytes::Bytes;
use serde_json::Value;

use crate::fhir::error::{FhirError, Issue, Severity, outcome_json};
use crate::fhir::resource;
use crate::fhir::rules::Rules;
use crate::security::Caller;
use crate::security::scopes::Perm;

use super::Reply;

/// What the client asked to validate.
struct Request {
    resource: Value,
    profile: Option<String>,
}

pub fn validate(
    rules: &dyn Rules,
    caller: &Caller,
    resource_type: &str,
    id: Option<&str>,
    body: &[u8],
) -> Result<Reply, FhirError> {
    // Validating discloses nothing stored: reading or creating the type suffices.
    caller
        .require(resource_type, Perm::Read)
        .or_else(|_| caller.require(resource_type, Perm::Create))?;
    if let Some(id) = id {
        super::read::check_id(id)?;
    }
    let req = parse_request(body, id)?;
    let issues = match resource::from_value(req.resource, Some(resource_type), "") {
        Ok(res) => {
            let mut issues = rules.validate_against(&res, req.profile.as_deref());
            issues.extend(entries(rules, &res.json));
            issues
        }
        // A malformed id or meta is an issue of the resource; what is not
        // a resource of the URL's type is a malformed request.
        Err(e)
            if e.issues
                .iter()
                .all(|i| i.expression.iter().any(|x| x.ends_with(".id") || x.ends_with(".meta"))) =>
        {
            e.issues
        }
        Err(e) => return Err(e),
    };
    Ok(outcome(issues))
}

/// The issues of a Bundle's entries, each validated as a write of it
/// would be, located in the Bundle (`Bundle.entry[2].resource.owner`).
fn entries(rules: &dyn Rules, bundle: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return issues;
    }
    let items = bundle
        .get("entry")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (i, entry) in items.iter().enumerate() {
        let Some(r) = entry.get("resource") else {
            continue;
        };
        let at = format!("Bundle.entry[{i}].resource");
        let mut found = match resource::from_value(r.clone(), None, &at) {
            Ok(res) => {
                let mut found = rules.validate(&res);
                crate::fhir::rules::relocate(&mut found, &at);
                found
            }
            // Already located in the Bundle.
            Err(e) => e.issues,
        };
        issues.append(&mut found);
    }
    issues
}

fn outcome(mut issues: Vec<Issue>) -> Reply {
    if issues.is_empty() {
        issues.push(Issue {
            severity: Severity::Information,
            code: "informational",
            diagnostics: "no issues: the resource is valid".into(),
            expression: Vec::new(),
        });
    }
    let body = serde_json::to_vec(&outcome_json(&issues)).unwrap_or_default();
    Reply::bundle(Bytes::from(body))
}

fn parse_request(body: &[u8], id: Option<&str>) -> Result<Request, FhirError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(FhirError::structure(
            "$validate needs a body: the resource, or a Parameters with a `resource` parameter",
        ));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| FhirError::structure(format!("the body is not valid JSON: {e}")))?;
    let (resource, profile, mode) = if value.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
        let mut resource = None;
        let mut profile = None;
        let mut mode = None;
        let params = value
            .get("parameter")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for (i, p) in params.iter().enumerate() {
            let at = format!("Parameters.parameter[{i}]");
            let text = |keys: &[&str]| {
                keys.iter()
                    .find_map(|k| p.get(*k).and_then(Value::as_str))
                    .map(str::to_string)
            };
            match p.get("name").and_then(Value::as_str) {
                Some("resource") => {
                    resource = Some(
                        p.get("resource")
                            .cloned()
                            .ok_or_else(|| FhirError::invalid("the resource parameter has no resource").at(at))?,
                    );
                }
                Some("profile") => {
                    profile =
                        Some(text(&["valueCanonical", "valueUri", "valueString"]).ok_or_else(|| {
                            FhirError::invalid("the profile parameter must be a canonical URL").at(at)
                        })?);
                }
                Some("mode") => {
                    mode = Some(
                        text(&["valueCode", "valueString"])
                            .ok_or_else(|| FhirError::invalid("the mode parameter must be a code").at(at))?,
                    );
                }
                Some(other) => {
                    return Err(FhirError::invalid(format!("$validate has no parameter '{other}'")).at(at));
                }
                None => return Err(FhirError::invalid("a parameter has no name").at(at)),
            }
        }
        let resource = resource
            .ok_or_else(|| FhirError::invalid("the Parameters have no `resource` parameter: nothing to validate"))?;
        (resource, profile, mode)
    } else {
        (value, None, None)
    };
    match mode.as_deref() {
        None | Some("create" | "update" | "profile") => {}
        Some("delete") => {
            return Err(FhirError::not_supported(
                400,
                "$validate mode 'delete' is not supported: a deletion is checked when it is made",
            ));
        }
        Some(m) => {
            return Err(FhirError::invalid(format!(
                "'{m}' is not a $validate mode (create, update, profile)"
            )));
        }
    }
    let body_id = resource.get("id").and_then(Value::as_str);
    if let (Some(url_id), Some(body_id)) = (id, body_id)
        && url_id != body_id
    {
        return Err(FhirError::invalid(format!(
            "the resource's id '{body_id}' is not the id of the URL ('{url_id}')"
        ))
        .at("id"));
    }
    if mode.as_deref() == Some("update") && id.or(body_id).is_none() {
        return Err(FhirError::invalid("$validate mode 'update' needs the resource's id"));
    }
    Ok(Request { resource, profile })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::rules::NoRules;
    use crate::security::scopes::Scopes;

    fn caller(scope: &str) -> Caller {
        Caller {
            scopes: Scopes::parse(scope).expect("scope"),
            ..Caller::system()
        }
    }

    fn run(scope: &str, id: Option<&str>, body: &str) -> Result<Value, FhirError> {
        let r = validate(&NoRules, &caller(scope), "Patient", id, body.as_bytes())?;
        Ok(serde_json::from_slice(&r.body.unwrap_or_default()).expect("JSON"))
    }

    #[test]
    fn a_clean_resource_gets_one_information_issue() {
        let out = run("system/Patient.r", None, r#"{"resourceType":"Patient"}"#).expect("200");
        assert_eq!(out["issue"][0]["severity"], "information");
        let out = run(
            "system/Patient.c",
            Some("p1"),
            r#"{"resourceType":"Parameters","parameter":[{"name":"mode","valueCode":"update"},{"name":"resource","resource":{"resourceType":"Patient","id":"p1"}}]}"#,
        )
        .expect("200");
        assert_eq!(out["issue"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn malformed_requests_are_4xx_and_invalid_resources_are_not() {
        let status = |scope: &str, id: Option<&str>, body: &str| run(scope, id, body).err().map(|e| e.status);
        assert_eq!(
            status("system/Observation.rs", None, r#"{"resourceType":"Patient"}"#),
            Some(403)
        );
        assert_eq!(status("system/Patient.r", None, ""), Some(400));
        assert_eq!(status("system/Patient.r", None, "{"), Some(400));
        assert_eq!(
            status("system/Patient.r", None, r#"{"resourceType":"Observation"}"#),
            Some(400)
        );
        assert_eq!(
            status(
                "system/Patient.r",
                None,
                r#"{"resourceType":"Parameters","parameter":[]}"#
            ),
            Some(400)
        );
        let delete = r#"{"resourceType":"Parameters","parameter":[{"name":"mode","valueCode":"delete"}]}"#;
        assert_eq!(status("system/Patient.r", None, delete), Some(400));
        assert_eq!(
            status("system/Patient.r", Some("a"), r#"{"resourceType":"Patient","id":"b"}"#),
            Some(400)
        );
        // A bad id is an issue of the resource.
        let out = run("system/Patient.r", None, r#"{"resourceType":"Patient","id":"a b"}"#).expect("200");
        assert_eq!(out["issue"][0]["expression"][0], "Patient.id");
        // NoRules knows no profile: naming one is reported, not refused.
        let named = r#"{"resourceType":"Parameters","parameter":[{"name":"profile","valueCanonical":"https://x.org/p"},{"name":"resource","resource":{"resourceType":"Patient"}}]}"#;
        let out = run("system/Patient.r", None, named).expect("200");
        assert_eq!(out["issue"][0]["severity"], "error");
    }
}
