//! The single place where an error becomes an HTTP response.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::fhir::error::FhirError;
use crate::security::audit::IssueCode;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.outcome()).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        // A 429 decided below the HTTP layer (the product's rules) says
        // when to retry in its text, the one thing it can carry.
        if self.status == 429
            && let Some(secs) = self.issues.first().and_then(|i| retry_after(&i.diagnostics))
        {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(code) = IssueCode::of(&self) {
            resp.extensions_mut().insert(code);
        }
        resp
    }
}

/// `N` of "… retry in N s".
fn retry_after(diagnostics: &str) -> Option<u64> {
    let (_, rest) = diagnostics.rsplit_once("retry in ")?;
    rest.strip_suffix(" s")?.parse().ok()
}
