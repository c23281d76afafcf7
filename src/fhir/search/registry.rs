//! The search parameters the server knows: the official FHIR R4 definitions
//! (embedded, see `scripts/gen-definitions.py`) and the SearchParameter
//! resources of the implementation guide the gateway serves (`profiles/`,
//! embedded at build time by `build.rs`), indexed by resource type.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use super::model::ParamType;

#[derive(Debug, Clone, Deserialize)]
pub struct ComponentDef {
    pub definition: String,
    pub expression: String,
}

#[derive(Debug, Clone)]
pub struct SearchParamDef {
    pub url: String,
    pub code: String,
    pub base: Vec<String>,
    pub kind: ParamType,
    /// FHIRPath; `None` for parameters that no expression can extract.
    pub expression: Option<String>,
    pub targets: Vec<String>,
    pub components: Vec<ComponentDef>,
}

#[derive(Deserialize)]
struct RawDef {
    url: String,
    code: String,
    base: Vec<String>,
    #[serde(rename = "type")]
    kind: String,
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<ComponentDef>,
}

impl SearchParamDef {
    /// Does this server index and search this parameter? Composite and
    /// special parameters, and the full-text / list / query ones, are not
    /// offered (and not listed in the CapabilityStatement).
    pub fn is_supported(&self) -> bool {
        if matches!(self.code.as_str(), "_id" | "_lastUpdated") {
            return true;
        }
        if NOT_OFFERED.contains(&self.url.as_str()) {
            return false;
        }
        !matches!(self.kind, ParamType::Composite | ParamType::Special)
            && self.expression.is_some()
            && !matches!(
                self.code.as_str(),
                "_text" | "_content" | "_list" | "_query" | "_filter"
            )
    }
}

/// AuditEvent parameters whose value is the same on (nearly) every event
/// the gateway writes: the audit trail records every request, and each
/// indexed value is a row written per request for no selectivity. `subtype`
/// tells the events apart (a token request is DICOM `110122` Login), the
/// gateway is the only source.
const NOT_OFFERED: &[&str] = &[
    "http://hl7.org/fhir/SearchParameter/AuditEvent-type",
    "http://hl7.org/fhir/SearchParameter/AuditEvent-entity-type",
    "http://hl7.org/fhir/SearchParameter/AuditEvent-entity-role",
    "http://hl7.org/fhir/SearchParameter/AuditEvent-source",
];

#[derive(Debug, Default)]
pub struct Registry {
    /// resource type → code → definition. Parameters whose base is
    /// `Resource` or `DomainResource` are copied under every concrete type.
    by_type: HashMap<String, HashMap<String, Arc<SearchParamDef>>>,
    by_url: HashMap<String, Arc<SearchParamDef>>,
    resource_types: Vec<String>,
}

const SEARCH_PARAMETERS: &str = include_str!("../definitions/search-parameters.json");
const RESOURCE_TYPES: &str = include_str!("../definitions/resource-types.json");
/// The package's SearchParameter resources, one JSON text each.
const PACKAGE_SEARCH_PARAMETERS: &[&str] = include!(concat!(env!("OUT_DIR"), "/package_search_parameters.rs"));

impl Registry {
    /// The registry the server indexes and searches with, built once: the
    /// FHIR R4 (4.0.1) definitions and the package's SearchParameters.
    pub fn r4() -> &'static Registry {
        static R4: OnceLock<Registry> = OnceLock::new();
        R4.get_or_init(|| {
            #[allow(clippy::expect_used)] // embedded data, checked by tests
            let mut reg = Registry::base_r4().expect("embedded R4 definitions are valid");
            for text in PACKAGE_SEARCH_PARAMETERS {
                #[allow(clippy::expect_used)] // embedded data, checked by tests
                reg.add_search_parameter(text)
                    .expect("the package's SearchParameters are valid");
            }
            reg
        })
    }

    /// The FHIR R4 definitions alone (what the server indexed before it
    /// knew of any package parameter).
    pub fn base_r4() -> Result<Registry, serde_json::Error> {
        Registry::from_json(SEARCH_PARAMETERS, RESOURCE_TYPES)
    }

    /// Adds a SearchParameter resource (JSON). A parameter of a type the
    /// server does not support (composite, special) is kept but not offered,
    /// as for the R4 ones.
    pub fn add_search_parameter(&mut self, json: &str) -> Result<(), serde_json::Error> {
        let r: RawDef = serde_json::from_str(json)?;
        if let Some(kind) = ParamType::parse(&r.kind) {
            self.add(Arc::new(SearchParamDef {
                url: r.url,
                code: r.code,
                base: r.base,
                kind,
                expression: r.expression,
                targets: r.target,
                components: r.component,
            }));
        }
        Ok(())
    }

    pub fn from_json(params: &str, types: &str) -> Result<Registry, serde_json::Error> {
        let raw: Vec<RawDef> = serde_json::from_str(params)?;
        let resource_types: Vec<String> = serde_json::from_str(types)?;
        let mut reg = Registry {
            resource_types,
            ..Default::default()
        };
        for r in raw {
            let Some(kind) = ParamType::parse(&r.kind) else {
                continue;
            };
            let def = Arc::new(SearchParamDef {
                url: r.url,
                code: r.code,
                base: r.base,
                kind,
                expression: r.expression,
                targets: r.target,
                components: r.component,
            });
            reg.add(def);
        }
        Ok(reg)
    }

    /// Adds (or replaces) a definition, e.g. one of our profiles' own.
    pub fn add(&mut self, def: Arc<SearchParamDef>) {
        let bases: Vec<String> = def
            .base
            .iter()
            .flat_map(|b| {
                if b == "Resource" || b == "DomainResource" {
                    self.resource_types
                        .iter()
                        .filter(|t| b == "Resource" || !matches!(t.as_str(), "Bundle" | "Binary" | "Parameters"))
                        .cloned()
                        .collect::<Vec<_>>()
                } else {
                    vec![b.clone()]
                }
            })
            .collect();
        for b in bases {
            self.by_type.entry(b).or_default().insert(def.code.clone(), def.clone());
        }
        self.by_url.insert(def.url.clone(), def);
    }

    pub fn get(&self, resource_type: &str, code: &str) -> Option<&Arc<SearchParamDef>> {
        self.by_type.get(resource_type)?.get(code)
    }

    pub fn by_url(&self, url: &str) -> Option<&Arc<SearchParamDef>> {
        self.by_url.get(url)
    }

    /// Every parameter of a resource type, sorted by code.
    pub fn params_of(&self, resource_type: &str) -> Vec<&Arc<SearchParamDef>> {
        let mut v: Vec<_> = self
            .by_type
            .get(resource_type)
            .map(|m| m.values().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.code.cmp(&b.code));
        v
    }

    pub fn resource_types(&self) -> &[String] {
        &self.resource_types
    }

    pub fn is_resource_type(&self, name: &str) -> bool {
        self.resource_types.binary_search_by(|t| t.as_str().cmp(name)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r4_definitions_load() {
        let r = Registry::r4();
        assert!(r.is_resource_type("Patient"));
        assert!(!r.is_resource_type("Patients"));
        let p = r.get("Patient", "identifier").map(|d| d.kind);
        assert_eq!(p, Some(ParamType::Token));
        // Resource-level parameters apply to every type.
        assert!(r.get("Observation", "_lastUpdated").is_some());
        assert!(r.get("Observation", "_id").is_some());
    }

    #[test]
    fn the_package_search_parameters_are_registered() {
        let r = Registry::r4();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let mut found = 0;
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !name.starts_with("SearchParameter-") {
                continue;
            }
            let sp: serde_json::Value = serde_json::from_slice(&std::fs::read(entry.path()).unwrap()).unwrap();
            let url = sp["url"].as_str().unwrap();
            let def = r.by_url(url).unwrap_or_else(|| panic!("{name} is not registered"));
            assert!(def.is_supported(), "{name}");
            for base in sp["base"].as_array().unwrap() {
                let base = base.as_str().unwrap();
                assert_eq!(r.get(base, &def.code).map(|d| d.url.as_str()), Some(url), "{name}");
            }
            found += 1;
        }
        assert!(found >= 5, "{found}");
        assert!(r.get("Organization", "territory").is_some());
        assert!(Registry::base_r4().unwrap().get("Organization", "territory").is_none());
    }
}
