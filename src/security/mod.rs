//! Who acts, and what they may do: SMART backend-services tokens (`auth`),
//! scopes (`scopes`), and the `Caller` every interaction receives.

pub mod audit;
pub mod auth;
pub mod authorship;
mod cache;
pub mod certs;
pub mod compartment;
pub mod consent;
pub mod keys;
pub mod oidc;
pub mod ownership;
pub mod scopes;
pub mod trail;

use crate::fhir::error::FhirError;
use scopes::{Perm, Scopes};

/// The authenticated party of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The registered client the request comes from.
    pub client_id: String,
    /// The Organization it acts for, when registered with one.
    pub organization: Option<String>,
    pub scopes: Scopes,
    /// The health professional acting, when the token is one of the
    /// external OpenID Connect issuer (their idNatPs).
    pub professional: Option<String>,
}

impl Caller {
    /// The gateway itself (start-up tasks, imports run by the operator).
    pub fn system() -> Caller {
        Caller {
            client_id: "apa-gateway".into(),
            organization: None,
            scopes: Scopes::all(),
            professional: None,
        }
    }

    /// Refuses (403) what the caller's scopes do not grant, and (405) any
    /// change to the audit trail: only the gateway writes it.
    pub fn require(&self, resource_type: &str, perm: Perm) -> Result<(), FhirError> {
        if resource_type == audit::AUDIT_EVENT && !matches!(perm, Perm::Read | Perm::Search) {
            return Err(FhirError::not_supported(
                405,
                "AuditEvent resources are written by the gateway only: they cannot be created, updated, patched or deleted",
            ));
        }
        if self.scopes.allows(resource_type, perm) {
            Ok(())
        } else {
            Err(forbidden(resource_type, perm))
        }
    }

    /// For system-level search and history: the permission on every type.
    pub fn require_all_types(&self, perm: Perm) -> Result<(), FhirError> {
        if self.scopes.allows_all_types(perm) {
            Ok(())
        } else {
            Err(forbidden("*", perm))
        }
    }
}

fn forbidden(resource_type: &str, perm: Perm) -> FhirError {
    let what = match perm {
        Perm::Create => "create",
        Perm::Read => "read",
        Perm::Update => "update",
        Perm::Delete => "delete",
        Perm::Search => "search",
    };
    FhirError::new(
        403,
        "forbidden",
        format!("the granted scopes do not allow to {what} {resource_type} resources"),
    )
}
