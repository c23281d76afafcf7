//! Routing: a prescription with no chosen performer is addressed to the
//! MSS (or CPTS) of the patient's territory.

use crate::fhir::error::FhirError;
use crate::store::{Write, WriteTx};

/// Adds the routed referrals of one job.
pub async fn apply(_tx: &mut WriteTx, _writes: &mut Vec<Write>) -> Result<(), FhirError> {
    Ok(())
}
