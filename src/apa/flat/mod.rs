//! The flat API (`/apa/v1`) for software without FHIR: its input types,
//! parsed once into domain types (INS, RPPS, SIRET, measurements in
//! canonical UCUM), and their mapping to one FHIR transaction Bundle per
//! request. Pure functions: no SQL, no HTTP. The Bundle then goes through
//! the gateway's transaction interaction like any client's, so validation,
//! workflow, routing, compartments and audit apply unchanged.
//!
//! Every resource created carries a business identifier derived from the
//! sender's own id of the record (`source_id`) or, without one, from a
//! hash of its natural key (patient, date, test…), and is created with
//! `ifNoneExist` on it: sending the same record twice, or retrying after a
//! crash, finds what the first attempt stored instead of duplicating it.
//! Documented for clients in `docs/flat-api.md`.

pub mod assessment;
pub mod attendance;
pub mod catalog;
pub mod csv;
pub mod outcome;
pub mod patient;
pub mod prescription;

mod common;

pub use common::{Mapped, Problem, Warning, from_json, refuse};
