//! Renders an interaction's `Reply`: status, ETag, Last-Modified,
//! Location, and the body the `Prefer` header asks for.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::fhir::error::{Issue, Severity, info_outcome, outcome_json};
use crate::fhir::interaction::Reply;
use crate::fhir::search::values::{format_http_date, format_instant};
use crate::security::audit::Served;

use super::error::FHIR_JSON;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Return {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// What the client asked for with `Prefer`.
#[derive(Debug, Clone, Copy)]
pub struct Prefer {
    pub ret: Return,
    /// `handling`: strict unless the client asks for lenient, because a
    /// search that ignores a parameter returns more than was asked for.
    pub strict: bool,
}

impl Default for Prefer {
    fn default() -> Self {
        Prefer {
            ret: Return::default(),
            strict: true,
        }
    }
}

impl Prefer {
    pub fn from_headers(h: &HeaderMap) -> Prefer {
        let mut p = Prefer::default();
        for v in h.get_all("prefer").iter().filter_map(|v| v.to_str().ok()) {
            for token in v.split([',', ';']).map(str::trim) {
                match token.to_ascii_lowercase().replace(' ', "").as_str() {
                    "return=minimal" => p.ret = Return::Minimal,
                    "return=representation" => p.ret = Return::Representation,
                    "return=operationoutcome" => p.ret = Return::OperationOutcome,
                    "handling=strict" => p.strict = true,
                    "handling=lenient" => p.strict = false,
                    _ => {}
                }
            }
        }
        p
    }
}

pub fn render(base: &str, reply: Reply, ret: Return) -> Response {
    // What was served, for the audit record.
    let served = reply.version.as_ref().map(Served::of);
    let mut resp = render_reply(base, reply, ret);
    if let Some(s) = served {
        resp.extensions_mut().insert(s);
    }
    resp
}

fn render_reply(base: &str, reply: Reply, ret: Return) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut headers = HeaderMap::new();
    let mut body: Option<Bytes> = reply.body;
    if let Some(v) = &reply.version {
        if let Ok(etag) = HeaderValue::from_str(&format!("W/\"{}\"", v.version)) {
            headers.insert(header::ETAG, etag);
        }
        if let Ok(lm) = HeaderValue::from_str(&format_http_date(v.updated)) {
            headers.insert(header::LAST_MODIFIED, lm);
        }
        if reply.location
            && let Ok(loc) =
                HeaderValue::from_str(&format!("{base}/{}/{}/_history/{}", v.resource_type, v.id, v.version))
        {
            headers.insert(header::LOCATION, loc);
        }
        if body.is_none() {
            body = match ret {
                Return::Representation => v.body.clone(),
                Return::Minimal => None,
                Return::OperationOutcome => {
                    let msg = format!(
                        "{}/{} version {} ({})",
                        v.resource_type,
                        v.id,
                        v.version,
                        format_instant(v.updated)
                    );
                    // What the domain rules said of the write follows.
                    let mut issues = vec![Issue {
                        severity: Severity::Information,
                        code: "informational",
                        diagnostics: msg,
                        expression: Vec::new(),
                    }];
                    issues.extend(reply.notes.iter().cloned());
                    serde_json::to_vec(&outcome_json(&issues)).ok().map(Bytes::from)
                }
            };
        }
    } else if body.is_none() && ret == Return::OperationOutcome && status.is_success() {
        body = serde_json::to_vec(&info_outcome("done")).ok().map(Bytes::from);
    }
    match body {
        Some(b) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
            let status = if status == StatusCode::NO_CONTENT {
                StatusCode::OK
            } else {
                status
            };
            (status, headers, b).into_response()
        }
        None => (status, headers).into_response(),
    }
}
