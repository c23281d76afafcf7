//! The APA (activité physique adaptée) domain: French identity rules and the
//! units of the physical-condition assessments. It knows FHIR JSON values
//! (and reports faults as `fhir::error::Issue`s with FHIRPath locations) but
//! nothing of SQL or HTTP, so that the validator, the flat API and the CSV
//! import share one implementation of each rule.

pub mod flat;
pub mod identity;
pub mod profiles;
pub mod routing;
pub mod rules;
pub mod traits;
pub mod units;
pub mod workflow;
