//! The one error type of the gateway: an HTTP status and the issues of a
//! FHIR OperationOutcome. Every failure, from JSON parsing to the database,
//! ends up here; `http::error` turns it into a response in one place.

use serde_json::{Value, json};

use crate::fhir::search::parse::SearchError;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// One OperationOutcome.issue. `code` is from the IssueType value set
/// (invalid, structure, required, value, not-found, deleted, conflict,
/// not-supported, processing, exception, security, …).
#[derive(Debug, Clone)]
pub struct Issue {
    pub severity: Severity,
    pub code: &'static str,
    pub diagnostics: String,
    /// FHIRPath of the faulty element(s).
    pub expression: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {}", .issues.first().map(|i| i.diagnostics.as_str()).unwrap_or(""))]
pub struct FhirError {
    pub status: u16,
    pub issues: Vec<Issue>,
}

impl FhirError {
    pub fn new(status: u16, code: &'static str, diagnostics: impl Into<String>) -> Self {
        FhirError {
            status,
            issues: vec![Issue {
                severity: if status >= 500 {
                    Severity::Fatal
                } else {
                    Severity::Error
                },
                code,
                diagnostics: diagnostics.into(),
                expression: Vec::new(),
            }],
        }
    }

    /// Points the (first) issue at an element.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        if let Some(i) = self.issues.first_mut() {
            i.expression.push(expression.into());
        }
        self
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::new(400, "invalid", msg)
    }
    pub fn structure(msg: impl Into<String>) -> Self {
        Self::new(400, "structure", msg)
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::new(404, "not-found", msg)
    }
    pub fn gone(msg: impl Into<String>) -> Self {
        Self::new(410, "deleted", msg)
    }
    pub fn conflict(msg: impl Into<String>) -> Self {
        Self::new(409, "conflict", msg)
    }
    pub fn precondition(msg: impl Into<String>) -> Self {
        Self::new(412, "conflict", msg)
    }
    pub fn unprocessable(msg: impl Into<String>) -> Self {
        Self::new(422, "processing", msg)
    }
    pub fn not_supported(status: u16, msg: impl Into<String>) -> Self {
        Self::new(status, "not-supported", msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(500, "exception", msg)
    }

    /// The OperationOutcome resource.
    pub fn outcome(&self) -> Value {
        outcome_json(&self.issues)
    }
}

pub fn outcome_json(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = issues
        .iter()
        .map(|i| {
            let mut v = json!({
                "severity": i.severity.as_str(),
                "code": i.code,
                "diagnostics": i.diagnostics,
            });
            if !i.expression.is_empty()
                && let Some(o) = v.as_object_mut()
            {
                o.insert("expression".into(), json!(i.expression));
            }
            v
        })
        .collect();
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

/// An OperationOutcome that reports success (for `Prefer: return=OperationOutcome`).
pub fn info_outcome(msg: impl Into<String>) -> Value {
    outcome_json(&[Issue {
        severity: Severity::Information,
        code: "informational",
        diagnostics: msg.into(),
        expression: Vec::new(),
    }])
}

impl From<StoreError> for FhirError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Unsupported(m) => FhirError::not_supported(400, m.clone()),
            StoreError::Conflict => FhirError::conflict(e.to_string()),
            StoreError::WriterGone | StoreError::Commit(_) => FhirError::new(
                503,
                "transient",
                "the gateway is shutting down or its database is unavailable; retry",
            ),
            _ => {
                // Database details stay in the server log, not in the response.
                tracing::error!(error = %e, "storage failure");
                FhirError::internal("the request could not be stored or read; it was not applied")
            }
        }
    }
}

impl From<SearchError> for FhirError {
    fn from(e: SearchError) -> Self {
        let param = e.param().map(str::to_string);
        let err = match e {
            SearchError::TooCostly { .. } => FhirError::new(400, "too-costly", e.to_string()),
            _ => FhirError::invalid(e.to_string()),
        };
        match param {
            Some(p) => err.at(p),
            None => err,
        }
    }
}
