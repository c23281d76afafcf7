//! No build of the gateway can serve a request without authenticating it
//! or without its audit trail.
//!
//! What proves it is not the binary under test alone: a scan of one build
//! for the markers of the former `unsecured-baseline` and
//! `unaudited-baseline` builds only shows that *this* build was made
//! without them. The proof is that there is nothing to choose:
//!
//! 1. the package declares no cargo feature, explicit (`[features]`) or
//!    implicit (an `optional` dependency), and no source file is compiled
//!    differently by one (`cfg(feature = …)`): every build of this tree,
//!    release or not, compiles the one code path the other integration
//!    tests (tests/security.rs, tests/audit.rs…) exercise;
//! 2. nothing in the HTTP layer or the server makes up a caller: the only
//!    way a `Caller` enters a request is the authentication middleware
//!    (the extractor of `http/caller.rs` refuses a request without one), so
//!    the gateway's own all-scopes caller (`Caller::system`, for start-up
//!    and the operator's command line) is not reachable from a request;
//! 3. no setting turns authentication or the trail off: the settings are
//!    `Config`'s fields (files and `APA_*` variables map onto them only),
//!    and none of them is such a switch.
//!
//! The binary's bytes are still checked for the old markers, as a guard
//! against a stale or foreign build being tested in place of this tree's.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Strings only the former bypass builds had in them.
const BYPASS_MARKERS: [&str; 3] = ["unsecured-baseline", "unaudited-baseline", "for benchmarks only"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn sources_under(dir: &str) -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&Path::new(MANIFEST_DIR).join(dir), &mut files);
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

#[test]
fn the_package_has_no_feature_to_build_a_gateway_without_authentication() {
    let manifest = std::fs::read_to_string(Path::new(MANIFEST_DIR).join("Cargo.toml")).unwrap();
    for line in manifest.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        assert!(!line.starts_with("[features"), "Cargo.toml declares features: {line}");
        let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(
            !compact.contains("optional=true"),
            "an optional dependency is an implicit feature: {line}"
        );
    }
    let mut sources = sources_under("src");
    sources.push((
        PathBuf::from("build.rs"),
        std::fs::read_to_string(Path::new(MANIFEST_DIR).join("build.rs")).unwrap(),
    ));
    for (path, text) in &sources {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(
            !compact.contains("feature=\"") && !compact.contains("CARGO_FEATURE_"),
            "{} is compiled differently by a cargo feature",
            path.display()
        );
    }
}

#[test]
fn no_request_can_act_as_the_gateway_itself() {
    let mut sources = sources_under("src/http");
    sources.extend(sources_under("src/server"));
    sources.push((
        PathBuf::from("src/server.rs"),
        std::fs::read_to_string(Path::new(MANIFEST_DIR).join("src/server.rs")).unwrap(),
    ));
    for (path, text) in &sources {
        // Unit tests may build what they like.
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        assert!(
            !text.contains("Caller::system"),
            "{} makes up the gateway's own caller",
            path.display()
        );
        // A struct literal of `Caller` (the extractor's `impl … for Caller {`
        // builds none).
        let builds_one = text
            .match_indices("Caller {")
            .any(|(at, _)| !text[..at].trim_end().ends_with("for"));
        assert!(!builds_one, "{} builds a Caller of its own", path.display());
    }
}

#[test]
fn no_setting_switches_authentication_or_the_trail_off() {
    let settings = serde_json::to_value(apa_gateway::config::Config::default()).unwrap();
    let names: Vec<&String> = settings.as_object().unwrap().keys().collect();
    assert!(
        names.contains(&&"metrics_token".to_string()),
        "the settings are read: {names:?}"
    );
    for name in names {
        for switch in [
            "insecure",
            "unsecured",
            "unaudited",
            "bypass",
            "anonymous",
            "no_auth",
            "skip_auth",
            "disable",
        ] {
            assert!(
                !name.contains(switch),
                "setting {name} looks like a switch of authentication or the trail"
            );
        }
    }
}

#[test]
fn the_shipped_binary_holds_none_of_the_bypass_builds_markers() {
    let binary = std::fs::read(env!("CARGO_BIN_EXE_apa-gateway")).unwrap();
    for marker in BYPASS_MARKERS {
        let found = binary.windows(marker.len()).any(|w| w == marker.as_bytes());
        assert!(!found, "the binary contains {marker:?}");
    }
}
