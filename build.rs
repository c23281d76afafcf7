//! Embeds the conformance package (`profiles/*.json`) in the binary, so that
//! the gateway reads no file at run time. Generates in `$OUT_DIR`:
//! - `profiles.rs`: every file of the package as (file name, contents), for
//!   validation against the profiles;
//! - `package_search_parameters.rs`: its SearchParameter resources, which
//!   the search registry holds beside the R4 definitions (a parameter added
//!   to the package is indexed, searchable and listed in the
//!   CapabilityStatement at the next build, with no code to change).

use std::fmt::Write as _;
use std::path::Path;
use std::{env, fs};

fn main() {
    println!("cargo::rerun-if-changed=profiles");
    let manifest = env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let dir = Path::new(&manifest).join("profiles");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut all = String::from("&[\n");
    let mut params = String::from("&[\n");
    for n in &names {
        // Found from the crate's folder when the crate compiles, not from
        // where this script ran: a target folder shared by two checkouts
        // (a worktree removed since) keeps this output.
        let path = format!("concat!(env!(\"CARGO_MANIFEST_DIR\"), {:?})", format!("/profiles/{n}"));
        let _ = writeln!(all, "    ({n:?}, include_str!({path})),");
        if n.starts_with("SearchParameter-") {
            let _ = writeln!(params, "    include_str!({path}),");
        }
    }
    all.push(']');
    params.push(']');
    let out = Path::new(&env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).to_path_buf();
    for (file, text) in [("profiles.rs", all), ("package_search_parameters.rs", params)] {
        let target = out.join(file);
        // A build script reports failure by panicking.
        #[allow(clippy::panic)]
        if let Err(e) = fs::write(&target, text) {
            panic!("cannot write {}: {e}", target.display());
        }
    }
}
