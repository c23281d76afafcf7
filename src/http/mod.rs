//! HTTP: the route table, the middleware, thin handlers.

mod audit;
mod auth;
mod caller;
pub mod error;
pub mod flat;
mod handlers;
pub mod limits;
pub mod metrics_access;
mod negotiate;
mod observe;
mod respond;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::security::auth::Auth;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// What the product checks on every write (validation, workflow).
    pub rules: crate::fhir::rules::SharedRules,
    /// The public base URL of the FHIR endpoint, e.g. `https://host/fhir`.
    pub base: Arc<str>,
    pub metrics: Option<PrometheusHandle>,
    pub auth: Arc<Auth>,
    /// The CapabilityStatement, built once (it takes tens of ms).
    pub capabilities: bytes::Bytes,
    pub rate_limits: Arc<limits::RateLimits>,
    /// The gateway as its audit trail names it.
    pub audit: Arc<crate::security::audit::Gateway>,
    pub search_limits: crate::fhir::search::parse::SearchLimits,
}

/// Largest body of a token request (its client assertion is a JWT).
const TOKEN_REQUEST_LIMIT: usize = 64 * 1024;

pub struct Limits {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub request_timeout: Duration,
    /// Who may read `/metrics`.
    pub metrics_access: Arc<metrics_access::MetricsAccess>,
}

/// Every endpoint of the gateway.
pub fn router(state: AppState, limits: &Limits) -> Router {
    use handlers::*;
    let fhir = Router::new()
        .route("/metadata", get(metadata))
        .route("/.well-known/smart-configuration", get(auth::smart_configuration))
        .route("/", get(search_system).post(bundle))
        .route("/_search", post(search_system_post))
        .route("/_history", get(history_system))
        .route(
            "/{rtype}",
            get(search_type)
                .post(create)
                .put(conditional_update)
                .delete(conditional_delete),
        )
        .route("/{rtype}/_search", post(search_type_post))
        .route("/{rtype}/_history", get(history_type))
        .route("/{rtype}/$validate", post(validate_type))
        .route("/{rtype}/{id}/$validate", post(validate_instance))
        .route("/{rtype}/{id}", get(read).put(update).patch(patch).delete(delete))
        .route("/{rtype}/{id}/_history", get(history_instance))
        .route("/{rtype}/{id}/_history/{vid}", get(vread))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are read only once the caller is authenticated.
        .layer(middleware::from_fn_with_state(
            limits::BodyLimits {
                max_bytes: limits.max_body_bytes,
                max_json_depth: limits.max_json_depth,
            },
            limits::guard_body,
        ))
        .layer(middleware::from_fn(negotiate::content_negotiation))
        .layer(middleware::from_fn_with_state(state.clone(), auth::authenticate));
    // The flat API: authenticated and limited like /fhir (its OpenAPI
    // document aside, public like the CapabilityStatement).
    let flat_api = Router::new()
        .route("/prescriptions", post(flat::post_prescription))
        .route("/assessments", post(flat::post_assessment))
        .route("/attendance", post(flat::post_attendance))
        .route("/outcomes", post(flat::post_outcome))
        .fallback(flat::not_found)
        .layer(middleware::from_fn_with_state(
            limits::BodyLimits {
                max_bytes: limits.max_body_bytes,
                max_json_depth: limits.max_json_depth,
            },
            limits::guard_body,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .route(
            "/openapi.json",
            get(flat::openapi).layer(middleware::from_fn_with_state(
                state.rate_limits.clone(),
                limits::per_peer,
            )),
        );
    Router::new()
        // A token request is a few kB: no reason to read megabytes.
        .route(
            "/auth/token",
            post(auth::token).layer(DefaultBodyLimit::max(limits.max_body_bytes.min(TOKEN_REQUEST_LIMIT))),
        )
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route(
            "/metrics",
            get(prometheus).layer(middleware::from_fn_with_state(
                limits.metrics_access.clone(),
                metrics_access::guard,
            )),
        )
        // Outside /fhir nobody is authenticated: limited per peer address.
        .route_layer(middleware::from_fn_with_state(
            state.rate_limits.clone(),
            limits::per_peer,
        ))
        .nest("/fhir", fhir)
        .nest("/apa/v1", flat_api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn(observe::observe))
        .layer(middleware::from_fn_with_state(limits.request_timeout, limits::timeout))
        .layer(CatchPanicLayer::custom(handlers::panic_response))
        // Responses carry health data: never cached, sniffed or framed.
        .layer(response_header(header::CACHE_CONTROL, "no-store"))
        .layer(response_header(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(response_header(header::X_FRAME_OPTIONS, "DENY"))
        .layer(response_header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ))
        // Outermost: requests that time out or panic are audited too.
        .layer(middleware::from_fn_with_state(state.clone(), audit::audit))
        .with_state(state)
}

fn response_header(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
}
