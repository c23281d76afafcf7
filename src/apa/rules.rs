//! The APA domain's part of every write (`fhir::rules::Rules`): what a
//! resource must be (profiles, French identity rules) and what a write may
//! do given what is stored (referral workflow, routing).

use futures_util::future::BoxFuture;

use crate::fhir::error::{FhirError, Issue};
use crate::fhir::resource::Resource;
use crate::fhir::rules::{Note, Rules};
use crate::store::{Write, WriteTx};

use crate::fhir::validate::base::BaseValidator;

use super::identity::{self, IdentityPolicy};
use super::{profiles, routing, workflow};

/// The rules of the APA gateway.
#[derive(Default)]
pub struct ApaRules {}

impl ApaRules {
    pub fn new() -> ApaRules {
        ApaRules {}
    }
}

impl Rules for ApaRules {
    fn validate(&self, res: &Resource) -> Vec<Issue> {
        self.validate_against(res, None)
    }

    /// FHIR R4 base rules, the guide's profiles (claimed, named, or the
    /// default of the resource type), and the French identity rules.
    fn validate_against(&self, res: &Resource, profile: Option<&str>) -> Vec<Issue> {
        let mut issues = BaseValidator::r4().validate(&res.json);
        issues.extend(profiles::validate(&res.json, profile));
        issues.extend(identity::check_identifiers(&res.json, IdentityPolicy::default()));
        issues
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut WriteTx,
        writes: &'a mut Vec<Write>,
    ) -> BoxFuture<'a, Result<Vec<Note>, FhirError>> {
        Box::pin(async move {
            // Routing first: the Tasks it adds go through the workflow too.
            let notes = routing::apply(tx, writes).await?;
            workflow::apply(tx, writes).await?;
            Ok(notes)
        })
    }
}
