//! The caller as an extractor: a handler's signature says who acts.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::fhir::error::FhirError;
use crate::security::Caller;

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = FhirError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Set by the authentication layer; a route outside it has no caller.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| FhirError::new(401, "login", "this endpoint needs an access token"))
    }
}
