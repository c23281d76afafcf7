//! The generic FHIR R4 (4.0.1) core: resources as JSON, search, bundles,
//! the RESTful interactions. Nothing here knows about APA.

pub mod bundle_writer;
pub mod error;
pub mod fhirpath;
pub mod interaction;
pub mod resource;
pub mod rules;
pub mod search;
pub mod summary;
pub mod validate;
