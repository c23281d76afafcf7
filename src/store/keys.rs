//! How search values become fixed-width index keys.
//!
//! Tokens, systems and parameter names are stored as 64-bit hashes (xxh3):
//! fixed-width keys keep the index B-trees small and comparisons cheap, as in
//! Blaze. A hash collision could only add a false match between two values
//! of the same parameter, with a probability far below any other error.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
use xxhash_rust::xxh3::xxh3_64;

/// 0 is reserved for "no value" (a token without a system).
pub fn hash(s: &str) -> i64 {
    match xxh3_64(s.as_bytes()) as i64 {
        0 => 1,
        h => h,
    }
}

pub fn hash_opt(s: Option<&str>) -> i64 {
    s.map_or(0, hash)
}

/// The key of a search parameter of a resource type. Parameters defined on
/// `Resource` (`_tag`, `_profile`, `_security`, `_source`) share one key
/// across types so that a system-level search can use them.
pub fn param_key(resource_type: &str, code: &str) -> i64 {
    if code.starts_with('_') {
        hash(&format!("Resource.{code}"))
    } else {
        hash(&format!("{resource_type}.{code}"))
    }
}

/// The key under which `Reference.identifier` is indexed, for `:identifier`.
pub fn identifier_key(resource_type: &str, code: &str) -> i64 {
    hash(&format!("{resource_type}.{code}:identifier"))
}

/// Is this parameter one whose rows are shared by every type?
pub fn is_resource_level(code: &str) -> bool {
    code.starts_with('_')
}

/// FHIR string search is case- and accent-insensitive: "Hélène" is found by
/// "helene". Lower-case, decompose, drop the combining marks.
pub fn normalize(s: &str) -> String {
    s.nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_match_without_case_or_accents() {
        assert_eq!(normalize("Hélène LÉVÊQUE"), "helene leveque");
        assert_eq!(normalize("Œuvre"), "œuvre");
    }

    #[test]
    fn resource_level_params_share_keys() {
        assert_eq!(param_key("Patient", "_tag"), param_key("Observation", "_tag"));
        assert_ne!(param_key("Patient", "name"), param_key("Practitioner", "name"));
    }
}
