//! The APA domain's part of every write (`fhir::rules::Rules`): what a
//! resource must be (profiles, French identity rules) and what a write may
//! do given what is stored (referral workflow, routing).

use futures_util::future::BoxFuture;

use crate::fhir::error::{FhirError, Issue, Severity};
use crate::fhir::resource::{self, Resource};
use crate::fhir::rules::{Identity, Note, Rules};
use crate::store::{Write, WriteTx};

use crate::fhir::validate::base::BaseValidator;

use super::identity::{self, IdentityPolicy};
use super::{profiles, routing, traits, workflow};

/// The rules of the APA gateway.
#[derive(Default)]
pub struct ApaRules {
    /// Refused identifications by INS (`traits::IdentificationLimit`).
    identification: traits::IdentificationLimit,
}

impl ApaRules {
    pub fn new() -> ApaRules {
        ApaRules::default()
    }

    /// At most `max` refused identifications of one INS by one
    /// organisation per `window` (`max == 0`: no limit).
    pub fn with_identification_limit(max: u32, window: std::time::Duration) -> ApaRules {
        ApaRules {
            identification: traits::IdentificationLimit::new(max, window),
        }
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

    /// A Patient is the same person when it shares an INS and the identity
    /// traits of the stored one (`traits`).
    fn identifies(&self, resource_type: &str) -> bool {
        resource_type == "Patient"
    }

    fn identify(&self, sent: &Resource, stored: &Resource) -> Identity {
        traits::identify(&sent.json, &stored.json)
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut WriteTx,
        writes: &'a mut Vec<Write>,
    ) -> BoxFuture<'a, Result<Vec<Note>, FhirError>> {
        Box::pin(async move {
            // The rules only append what they add.
            let sent = writes.len();
            traits::unique_ins(tx, writes, &self.identification).await?;
            // Routing first: the Tasks it adds go through the workflow too.
            let notes = routing::apply(tx, writes).await?;
            workflow::apply(tx, writes).await?;
            // What the gateway writes itself (a routed referral, the
            // programme following the pathway) meets the same profiles as
            // what clients send; failing that is the gateway's fault.
            for w in writes.iter().skip(sent) {
                let Some(body) = &w.body else { continue };
                let res = resource::parse(body, Some(&w.resource_type))?;
                let error = self
                    .validate(&res)
                    .into_iter()
                    .find(|i| matches!(i.severity, Severity::Error | Severity::Fatal));
                if let Some(first) = error {
                    tracing::error!(
                        resource_type = %w.resource_type,
                        at = ?first.expression,
                        "a resource the gateway wrote itself does not validate"
                    );
                    return Err(FhirError::internal(
                        "the gateway could not complete this write with a valid resource; it was not applied",
                    ));
                }
            }
            Ok(notes)
        })
    }
}
