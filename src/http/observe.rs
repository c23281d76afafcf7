//! One tracing span and one metric sample per request, named by the FHIR
//! interaction and resource type. Query strings and ids never go in: they
//! may carry patient identifiers.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The FHIR interaction a route template and method stand for.
pub(super) fn interaction(method: &Method, template: &str) -> &'static str {
    // The router serves HEAD with the GET route (the body dropped): the
    // client read, searched… all the same, and is recorded so.
    let method = if method == Method::HEAD { "GET" } else { method.as_str() };
    match (method, template) {
        (_, "/fhir/metadata") => "capabilities",
        ("POST", "/fhir" | "/fhir/") => "transaction",
        ("GET", "/fhir" | "/fhir/") | (_, "/fhir/_search") => "search-system",
        (_, "/fhir/_history") => "history-system",
        ("GET", "/fhir/{rtype}") | (_, "/fhir/{rtype}/_search") => "search-type",
        ("POST", "/fhir/{rtype}") => "create",
        ("PUT", "/fhir/{rtype}") => "conditional-update",
        ("DELETE", "/fhir/{rtype}") => "conditional-delete",
        (_, "/fhir/{rtype}/_history") => "history-type",
        ("GET", "/fhir/{rtype}/{id}") => "read",
        ("PUT", "/fhir/{rtype}/{id}") => "update",
        ("PATCH", "/fhir/{rtype}/{id}") => "patch",
        ("DELETE", "/fhir/{rtype}/{id}") => "delete",
        (_, "/fhir/{rtype}/{id}/_history") => "history-instance",
        (_, "/fhir/{rtype}/{id}/_history/{vid}") => "vread",
        (_, t) if t.starts_with("/health") => "health",
        (_, "/metrics") => "metrics",
        _ => "other",
    }
}

/// The resource type segment of a FHIR path, only if it names a type.
fn resource_type(path: &str) -> &str {
    let seg = path
        .strip_prefix("/fhir/")
        .and_then(|p| p.split('/').next())
        .unwrap_or_default();
    if crate::fhir::search::registry::Registry::r4().is_resource_type(seg) {
        seg
    } else {
        ""
    }
}

pub async fn observe(req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let name = interaction(req.method(), &template);
    let rtype = resource_type(req.uri().path()).to_string();
    let span = tracing::info_span!(
        "fhir",
        otel.name = %format!("{name} {rtype}").trim_end(),
        interaction = name,
        resource_type = %rtype,
        method = %req.method(),
        status = tracing::field::Empty,
    );
    let started = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.record("status", status);
    let elapsed = started.elapsed().as_secs_f64();
    let labels = [
        ("interaction", name.to_string()),
        ("resource_type", rtype),
        ("status", status.to_string()),
    ];
    metrics::counter!("apa_http_requests_total", &labels).increment(1);
    metrics::histogram!("apa_http_request_duration_seconds", &labels[..2]).record(elapsed);
    if status >= 500 {
        tracing::warn!(parent: &span, status, elapsed, "request failed");
    } else {
        tracing::debug!(parent: &span, status, elapsed, "request done");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_is_the_interaction_get_is() {
        for (template, name) in [
            ("/fhir/{rtype}/{id}", "read"),
            ("/fhir/{rtype}", "search-type"),
            ("/fhir", "search-system"),
            ("/fhir/{rtype}/{id}/_history/{vid}", "vread"),
        ] {
            assert_eq!(interaction(&Method::GET, template), name);
            assert_eq!(interaction(&Method::HEAD, template), name);
        }
        assert_eq!(interaction(&Method::POST, "/fhir/{rtype}"), "create");
    }
}
