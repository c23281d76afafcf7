//! The audit middleware: every FHIR request and every token request leaves
//! an AuditEvent (see `security::audit`). A write records its own, in its
//! database transaction; for the rest (reads, searches, refusals, writes
//! rolled back) the record is queued here, after the response is built,
//! without waiting for its commit.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::clock::now_micros;
use crate::security::audit::{AuditScope, IssueCode, LOGIN, RequestInfo, Served, path_names};

use super::AppState;
use super::observe::interaction;

/// The restful-interaction a request stands for, or `None` when it is not
/// audited: the public discovery documents (no data, no credential), health
/// and metrics.
fn audited(method: &axum::http::Method, template: &str, path: &str) -> Option<&'static str> {
    if path == "/auth/token" {
        return Some(LOGIN);
    }
    // A flat API request is one or more FHIR transactions.
    if path.starts_with("/apa/v1/") && method == axum::http::Method::POST {
        return Some("transaction");
    }
    if !path.starts_with("/fhir") {
        return None;
    }
    match interaction(method, template) {
        "capabilities" => None,
        _ if path.starts_with("/fhir/.well-known/") => None,
        "conditional-update" => Some("update"),
        "conditional-delete" => Some("delete"),
        other => Some(other),
    }
}

pub async fn audit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    let Some(interaction) = audited(req.method(), &template, &path) else {
        return next.run(req).await;
    };
    let (resource_type, id, version) = path_names(path.strip_prefix("/fhir").unwrap_or_default());
    let info = RequestInfo {
        interaction,
        resource_type,
        id,
        version,
        query: req.uri().query().map(str::to_string),
        condition: req
            .headers()
            .get("if-none-exist")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        network: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        started: now_micros(),
    };
    let scope = AuditScope::new(s.audit.clone(), info);
    let mut resp = scope.run_in(next.run(req)).await;
    // Taken, not cloned: nothing outside this layer reads it.
    let served = resp.extensions_mut().remove::<Served>();
    let issue = resp.extensions().get::<IssueCode>().copied();
    if let Some(record) = scope.finish(resp.status().as_u16(), served, issue)
        && let Err(e) = s.store.write_detached(record).await
    {
        // Only when the gateway is stopping.
        metrics::counter!("apa_audit_lost_total").increment(1);
        tracing::error!(error = %e, "an audit record could not be queued");
    }
    resp
}
