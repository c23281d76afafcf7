//! A search's query string, as a client may write it, on a few resource
//! types and at the system level, lenient and strict.

#![no_main]

use apa_gateway::fhir::search::parse::{ParseOptions, parse_search};
use apa_gateway::fhir::search::registry::Registry;
use libfuzzer_sys::fuzz_target;

const TYPES: [Option<&str>; 6] = [
    None,
    Some("Patient"),
    Some("Observation"),
    Some("ServiceRequest"),
    Some("Task"),
    Some("HealthcareService"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, query)) = data.split_first() else {
        return;
    };
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let opts = ParseOptions {
        strict: selector & 0x80 != 0,
        ..ParseOptions::default()
    };
    let resource_type = TYPES[usize::from(selector & 0x7f) % TYPES.len()];
    let _ = parse_search(Registry::r4(), resource_type, &pairs, &opts);
});
