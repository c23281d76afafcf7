//! What a product adds to the generic write path, behind one trait: the
//! core calls it on every write and knows nothing of what it checks.
//!
//! Two moments, because they need different things:
//! - [`Rules::validate`] sees one resource as the client sent it (after
//!   parsing, before the write job): structure, profiles, identity rules.
//!   It needs no database, so it runs on the request's task, in parallel
//!   with other requests, never inside the single writer.
//! - [`Rules::apply`] sees every write of one job, inside the database
//!   transaction, with what is stored: workflow transitions, routing. It
//!   may refuse the job or add writes to it (a routed referral), which are
//!   stored atomically with the rest, and say something of a write without
//!   refusing it ([`Note`]: where a prescription was routed, or why not).

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::fhir::error::{FhirError, Issue, Severity};
use crate::fhir::resource::Resource;
use crate::store::{Write, WriteTx};

pub trait Rules: Send + Sync {
    /// The issues of `res`, errors and warnings, their `expression`s rooted
    /// at the resource type (`Patient.identifier[0].value`).
    fn validate(&self, res: &Resource) -> Vec<Issue>;

    /// `$validate`: the issues of `res` against `profile` (and what it
    /// claims) instead of the defaults `validate` applies.
    fn validate_against(&self, res: &Resource, profile: Option<&str>) -> Vec<Issue> {
        let mut issues = self.validate(res);
        if let Some(p) = profile {
            issues.push(Issue {
                severity: Severity::Error,
                code: "not-supported",
                diagnostics: format!("{p} is not a profile known to this server"),
                expression: Vec::new(),
            });
        }
        issues
    }

    /// Does [`Rules::identify`] have a say on resources of this type? (The
    /// others' matches are taken as they are, without reading them.)
    fn identifies(&self, _resource_type: &str) -> bool {
        false
    }

    /// A conditional create (`ifNoneExist`, `If-None-Exist`) matched
    /// `stored`: is it what the client describes in `sent`? Asked for the
    /// types of [`Rules::identifies`], for a match inside the caller's
    /// compartment and, the only way there is, for one outside it.
    fn identify(&self, _sent: &Resource, _stored: &Resource) -> Identity {
        Identity::Unknown
    }

    /// Checks (and may complete) the writes of one job against the stored
    /// state. The acting party is `tx.visibility()`. What the rules add is
    /// appended after the job's own writes, which keep their places.
    fn apply<'a>(
        &'a self,
        tx: &'a mut WriteTx,
        writes: &'a mut Vec<Write>,
    ) -> BoxFuture<'a, Result<Vec<Note>, FhirError>>;
}

/// What the rules say of one write of a job that they accept: an
/// information or a warning. It reaches the client with the response to
/// that write: in the OperationOutcome of `Prefer: return=OperationOutcome`,
/// in `entry.response.outcome` of a batch or transaction response.
#[derive(Debug, Clone)]
pub struct Note {
    pub resource_type: String,
    pub id: String,
    pub issue: Issue,
}

/// What the product says of a conditional create's match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// The same real-world thing, by the product's identity rules (a
    /// patient's national identity and its traits). The match stands even
    /// outside the caller's compartment: the job has then *identified* it,
    /// and what it writes may make the caller's organisation part of its
    /// care; what is stored there is not shown.
    Same,
    /// The criteria match but the rest disagrees (another person under the
    /// same national identifier, or a typing error): a conflict, refused.
    Different(String),
    /// No opinion: a match counts only inside the caller's compartment.
    Unknown,
}

/// The rules of a plain FHIR server: none.
pub struct NoRules;

impl Rules for NoRules {
    fn validate(&self, _: &Resource) -> Vec<Issue> {
        Vec::new()
    }

    fn apply<'a>(&'a self, _: &'a mut WriteTx, _: &'a mut Vec<Write>) -> BoxFuture<'a, Result<Vec<Note>, FhirError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

pub type SharedRules = Arc<dyn Rules>;

/// Validates `res` and refuses it (422, every issue listed) when an issue
/// is an error. `at` relocates the expressions when the resource sits in a
/// Bundle entry (`Bundle.entry[3].resource`); warnings alone pass.
pub fn check(rules: &dyn Rules, res: &Resource, at: Option<&str>) -> Result<(), FhirError> {
    let mut issues = rules.validate(res);
    if !issues
        .iter()
        .any(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
    {
        return Ok(());
    }
    if let Some(prefix) = at {
        relocate(&mut issues, prefix);
    }
    Err(FhirError { status: 422, issues })
}

/// Roots the expressions of a resource's issues at `prefix`, where the
/// resource sits (`Patient.name` → `Bundle.entry[3].resource.name`).
pub fn relocate(issues: &mut [Issue], prefix: &str) {
    for issue in issues {
        for x in &mut issue.expression {
            let rest = x.split_once('.').map_or("", |(_, r)| r);
            *x = if rest.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}.{rest}")
            };
        }
    }
}
