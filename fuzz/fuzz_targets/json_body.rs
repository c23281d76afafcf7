//! A request body as the gateway reads it: the door's shape check
//! (nesting depth, repeated keys), the resource envelope, then the R4
//! validator on whatever parses; and the narrative checker on the raw
//! bytes, since its input is any text a client may put in `div`.

#![no_main]

use apa_gateway::fhir::resource;
use apa_gateway::fhir::validate::base::BaseValidator;
use apa_gateway::fhir::validate::narrative;
use libfuzzer_sys::fuzz_target;

/// The default `max_json_depth`.
const MAX_DEPTH: usize = 64;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = narrative::check(text);
    }
    if let Err(fault) = resource::check_shape(data, MAX_DEPTH, true) {
        let _ = fault.into_error(data);
        return;
    }
    let Ok(res) = resource::parse(data, None) else {
        return;
    };
    let _ = BaseValidator::r4().validate(&res.json);
    let mut res = res;
    res.stamp("fuzz", 1, 0);
    let _ = res.to_bytes();
});
