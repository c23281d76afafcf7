//! The caller as an extractor: a handler's signature says who acts.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::fhir::error::FhirError;
use crate::security::Caller;

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = FhirError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // Set by the authentication layer when it runs; until then every
        // request acts as the gateway's own client.
        Ok(parts.extensions.get::<Caller>().cloned().unwrap_or_else(Caller::system))
    }
}
