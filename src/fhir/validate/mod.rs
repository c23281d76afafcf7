//! Validation of resources: the FHIR R4 base rules (`base`) and the
//! profiles of a conformance package (`profile`). Generic: what a product
//! requires of its resources comes in through its package.

pub mod base;
mod definitions;
pub mod narrative;
mod primitives;
pub mod profile;
