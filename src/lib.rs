//! apa-gateway: a secure FHIR R4 gateway for the French sport-santé sector.
//!
//! `fhir` is the generic FHIR R4 core (it knows nothing of APA nor of SQL
//! dialects), `apa` the sport-santé domain rules, `store` the persistence,
//! `http` the routes, `security` who acts. `server` wires them together; `demo` is the
//! territory and clients of `serve --demo`.

pub mod apa;
pub mod clock;
pub mod config;
pub mod demo;
pub mod fhir;
pub mod http;
pub mod security;
pub mod server;
pub mod store;
pub mod telemetry;

/// Publication date of the CapabilityStatement: the build's.
pub const BUILD_DATE: &str = "2026-11-23";
