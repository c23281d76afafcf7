//! Content negotiation: this server speaks FHIR JSON only, and says so with
//! 406 (what it cannot send) and 415 (what it cannot read).

use axum::extract::Request;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::fhir::error::FhirError;

fn json_type(mime: &str) -> bool {
    let m = mime.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(
        m.as_str(),
        "application/fhir+json" | "application/json" | "application/json+fhir" | "*/*" | "application/*" | "json"
    )
}

fn format_param(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "_format")
        .map(|(_, v)| v.into_owned())
}

pub async fn content_negotiation(req: Request, next: Next) -> Response {
    if let Some(f) = req.uri().query().and_then(format_param)
        && !json_type(&f)
    {
        return FhirError::not_supported(
            406,
            format!("_format '{f}' is not supported; this server returns FHIR JSON"),
        )
        .into_response();
    }
    if let Some(accept) = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok())
        && !accept.split(',').any(json_type)
    {
        return FhirError::not_supported(
            406,
            format!("cannot answer in '{accept}'; this server returns application/fhir+json"),
        )
        .into_response();
    }
    let has_body = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if has_body && let Some(ct) = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        let base = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let is_search = req.uri().path().ends_with("/_search");
        let ok = match *req.method() {
            Method::PATCH => base == "application/json-patch+json",
            _ if is_search => base == "application/x-www-form-urlencoded",
            _ => json_type(&base) && base != "*/*",
        };
        if !ok {
            return FhirError::not_supported(415, format!("request body of type '{base}' is not supported here"))
                .into_response();
        }
    }
    next.run(req).await
}
