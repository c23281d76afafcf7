//! The APA domain's part of every write (`fhir::rules::Rules`): what a
//! resource must be (profiles, French identity rules) and what a write may
//! do given what is stored (referral workflow, routing).

use futures_util::future::BoxFuture;

use crate::fhir::error::{FhirError, Issue};
use crate::fhir::resource::Resource;
use crate::fhir::rules::{Note, Rules};
use crate::store::{Write, WriteTx};

use super::{routing, workflow};

/// The rules of the APA gateway.
#[derive(Default)]
pub struct ApaRules {}

impl ApaRules {
    pub fn new() -> ApaRules {
        ApaRules {}
    }
}

impl Rules for ApaRules {
    fn validate(&self, _res: &Resource) -> Vec<Issue> {
        Vec::new()
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
