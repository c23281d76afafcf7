//! Authentication at the door of the FHIR API, the token endpoint and the
//! SMART discovery document. Only the CapabilityStatement and the SMART
//! configuration are served without a token.

use axum::Json;
use axum::extract::{Form, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::fhir::error::FhirError;
use crate::security::audit;
use crate::security::auth::{AuthError, TokenRequest, unverified_claim};

use super::AppState;

/// Inside the `/fhir` router the prefix is already stripped.
fn is_public(path: &str) -> bool {
    let path = path.strip_prefix("/fhir").unwrap_or(path);
    matches!(path, "/metadata" | "/.well-known/smart-configuration")
}

fn unauthorized(e: &AuthError) -> Response {
    let mut resp = FhirError::new(401, "login", e.to_string()).into_response();
    let challenge = match e {
        AuthError::Missing(_) => r#"Bearer realm="apa-gateway""#,
        _ => r#"Bearer realm="apa-gateway", error="invalid_token""#,
    };
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    resp
}

/// Puts the authenticated `Caller` in the request, or answers 401.
pub async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(token) = bearer else {
        let e = s.auth.missing();
        audit::note_refusal(None, "no access token");
        return unauthorized(&e);
    };
    match s.auth.authenticate(token).await {
        Ok(caller) => {
            audit::note_caller(&caller);
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(reason = %e, "request refused: authentication");
            audit::note_refusal(unverified_claim(token, "sub"), e.to_string());
            unauthorized(&e)
        }
    }
}

/// `POST /auth/token` (application/x-www-form-urlencoded).
pub async fn token(State(s): State<AppState>, Form(req): Form<TokenRequest>) -> Response {
    let claimed = req.client_assertion.as_deref().and_then(|a| unverified_claim(a, "iss"));
    let mut resp = match s.auth.token(req).await {
        Ok(t) => {
            if let Some(client) = claimed {
                audit::note_client(audit::Client {
                    id: Some(client),
                    organization: None,
                    verified: true,
                });
            }
            Json(t).into_response()
        }
        Err(e) => {
            tracing::info!(error = e.error, "token request refused");
            audit::note_refusal(claimed, format!("token request refused: {}", e.error));
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
    Json(json!({
        "token_endpoint": s.auth.token_endpoint(),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    }))
    .into_response()
}
