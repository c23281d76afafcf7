//! Authentication at the door of the FHIR API, the token endpoint and the
//! SMART discovery document. Only the CapabilityStatement and the SMART
//! configuration are served without a token.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use crate::fhir::error::FhirError;
use crate::security::audit;
use crate::security::auth::{AuthError, OAuthError, TokenRequest, unverified_claim};
use crate::security::certs::PeerCertificate;

use super::{AppState, limits};

/// Inside the `/fhir` router the prefix is already stripped. Stripping it
/// again made `/fhir/fhir/metadata` public too, though it is routed to the
/// read of a resource: only the discovery documents themselves are.
fn is_public(path: &str) -> bool {
    matches!(path, "/metadata" | "/.well-known/smart-configuration")
}

fn unauthorized(e: &AuthError) -> Response {
    if matches!(e, AuthError::NoOrganisation) {
        return FhirError::new(403, "forbidden", e.to_string()).into_response();
    }
    let mut resp = FhirError::new(401, "login", e.to_string()).into_response();
    let challenge = match e {
        AuthError::Missing(_) => r#"Bearer realm="apa-gateway""#,
        _ => r#"Bearer realm="apa-gateway", error="invalid_token""#,
    };
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    resp
}

/// The TLS client certificate of the request's connection, if any.
fn peer_certificate(req: &Request) -> Option<PeerCertificate> {
    req.extensions().get::<Option<PeerCertificate>>().cloned().flatten()
}

/// Puts the authenticated `Caller` in the request, or answers 401.
/// Authenticated requests count against their client's rate limit, the
/// others against their peer address's.
pub async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = limits::peer_ip(&req);
    if is_public(req.uri().path()) {
        if let Err(throttled) = s.rate_limits.peer(peer) {
            return throttled.into_response();
        }
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(token) = bearer else {
        audit::note_refusal(None, "no access token");
        if let Err(throttled) = s.rate_limits.peer(peer) {
            return throttled.into_response();
        }
        return unauthorized(&s.auth.missing());
    };
    let cert = peer_certificate(&req);
    match s.auth.authenticate(token, cert.as_ref()).await {
        Ok(caller) => {
            audit::note_caller(&caller);
            // Professionals have a limit each, clients one for all their requests.
            let key = match &caller.professional {
                Some(p) => format!("professional:{p}"),
                None => caller.client_id.clone(),
            };
            if let Err(throttled) = s.rate_limits.client(&key) {
                return throttled.into_response();
            }
            let professional = caller.professional.clone();
            req.extensions_mut().insert(caller);
            crate::security::authorship::acting(professional, next.run(req)).await
        }
        Err(e) => {
            if let Err(throttled) = s.rate_limits.peer(peer) {
                return throttled.into_response();
            }
            tracing::info!(reason = %e, "request refused: authentication");
            audit::note_refusal(unverified_claim(token, "sub"), e.to_string());
            unauthorized(&e)
        }
    }
}

/// `POST /auth/token` (application/x-www-form-urlencoded).
pub async fn token(
    State(s): State<AppState>,
    peer: Option<Extension<Option<PeerCertificate>>>,
    form: Result<Form<TokenRequest>, FormRejection>,
) -> Response {
    let peer = peer.and_then(|Extension(p)| p);
    let (result, claimed) = match form {
        Ok(Form(req)) => {
            let claimed = req.client_assertion.as_deref().and_then(|a| unverified_claim(a, "iss"));
            (s.auth.token(req, peer.as_ref()).await, claimed)
        }
        Err(rejection) => (
            Err(OAuthError::request(
                rejection.status().as_u16(),
                "invalid_request",
                rejection.body_text(),
            )),
            None,
        ),
    };
    let mut resp = match result {
        Ok(t) => {
            if let Some(client) = claimed {
                audit::note_client(audit::Client {
                    id: Some(client),
                    verified: true,
                    ..audit::Client::default()
                });
            }
            Json(t).into_response()
        }
        Err(e) => {
            // The reason, which the client is not told, goes to the trail
            // and the log.
            tracing::info!(error = e.error, reason = %e.reason, "token request refused");
            audit::note_refusal(claimed, format!("token request refused: {e}"));
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            (
                status,
                Json(json!({"error": e.error, "error_description": e.description})),
            )
                .into_response()
        }
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// `GET /fhir/.well-known/smart-configuration`
pub async fn smart_configuration(State(s): State<AppState>) -> Response {
    let mut config = json!({
        "token_endpoint": s.auth.token_endpoint(),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    });
    // RFC 8705 §3.3: clients must present the certificate their token is
    // bound to on every request.
    if s.auth.certificate_bound()
        && let Some(o) = config.as_object_mut()
    {
        o.insert("tls_client_certificate_bound_access_tokens".into(), json!(true));
    }
    Json(config).into_response()
}
