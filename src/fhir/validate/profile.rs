//! Validation against the profiles of a FHIR conformance package
//! (StructureDefinitions with differentials, CodeSystems, ValueSets).
//!
//! A package ships differentials only, and often derives from profiles it
//! does not hold (a national core). The structure of a resource is the base
//! validator's job; here each element a differential states is checked on
//! top of it: cardinality (per slice too), `fixed[x]` / `pattern[x]`, a
//! choice restricted to some types, reference targets, bindings to the
//! package's value sets and `constraint`s (FHIRPath, compiled once). The
//! package's extensions are checked wherever they occur: value type,
//! binding, context.
//!
//! Which profiles apply is the caller's decision, except for what the
//! resource claims itself in `meta.profile`, which always applies.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::fhir::error::{Issue, Severity};
use crate::fhir::fhirpath::{Expr, reference_type};

const R4_BASE: &str = "http://hl7.org/fhir/StructureDefinition/";

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{file}: not JSON: {msg}")]
    Json { file: String, msg: String },
    #[error("{file}: {msg}")]
    Invalid { file: String, msg: String },
    #[error("package.json is missing or has no canonical")]
    NoManifest,
}

/// The conformance resources of one package, ready to validate with.
pub struct Package {
    canonical: String,
    profiles: HashMap<String, Profile>,
    value_sets: HashMap<String, Expansion>,
    /// Resource types of profiles outside the package that references
    /// may target (a core IG not shipped).
    external_types: HashMap<String, String>,
}

struct Profile {
    id: String,
    rtype: String,
    /// Element expressions an extension may sit on (`context` of type element).
    context: Vec<String>,
    elements: Vec<Element>,
    /// What an item must be to belong to a slice, by slice id
    /// (`ServiceRequest.extension:intensity`), read from the slicing's
    /// discriminators once.
    slices: Vec<Vec<SliceTest>>,
    /// How many distinct id prefixes the elements have.
    prefixes: usize,
}

enum SliceTest {
    /// An extension of one of these urls.
    Url(Vec<String>),
    /// A value at `path` (empty: the item itself) equal to (`exact`) or
    /// containing `value`.
    At {
        path: Vec<String>,
        value: Value,
        exact: bool,
    },
    /// One of these keys (a choice of one of the slice's types).
    AnyKey(Vec<String>),
}

impl SliceTest {
    fn matches(&self, item: &Value) -> bool {
        match self {
            SliceTest::Url(urls) => str_field(item, "url").is_some_and(|u| urls.iter().any(|x| x == u)),
            SliceTest::At { path, value, exact } => walk(item, path)
                .iter()
                .any(|x| if *exact { *x == value } else { contains(x, value) }),
            SliceTest::AnyKey(keys) => item.as_object().is_some_and(|o| keys.iter().any(|k| o.contains_key(k))),
        }
    }
}

struct Element {
    id: String,
    segs: Vec<Seg>,
    min: Option<usize>,
    /// `Some(None)`: `*`.
    max: Option<Option<usize>>,
    types: Vec<TypeRef>,
    fixed: Option<Value>,
    pattern: Option<Value>,
    binding: Option<Binding>,
    constraints: Vec<Constraint>,
}

struct Seg {
    name: String,
    slice: Option<String>,
    /// Where this segment ends in the element's id: `id[..end]` is the id
    /// of the element up to here (`Task.output:performedActivityType`).
    end: usize,
    /// That id's number among the profile's id prefixes (`Profile::prefixes`).
    prefix: usize,
    /// The tests of this segment's slice (`Profile::slices`).
    slice_tests: Option<usize>,
}

struct TypeRef {
    code: String,
    profiles: Vec<String>,
    target_profiles: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Strength {
    Required,
    Extensible,
    Other,
}

struct Binding {
    strength: Strength,
    value_set: String,
}

struct Constraint {
    key: String,
    human: String,
    severity: Severity,
    expr: Expr,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DiscKind {
    Value,
    Pattern,
    Type,
    Other,
}

struct Discriminator {
    kind: DiscKind,
    path: String,
}

/// The codes a value set allows: enumerated, or every code of a system
/// the package does not hold (which can then only be checked for the system).
#[derive(Default)]
struct Expansion {
    /// Codes by system.
    codes: HashMap<String, HashSet<String>>,
    whole_systems: HashSet<String>,
}

impl Expansion {
    fn contains(&self, system: Option<&str>, code: &str) -> bool {
        match system {
            Some(s) => self.whole_systems.contains(s) || self.codes.get(s).is_some_and(|c| c.contains(code)),
            // A `code` element: its system is the value set's.
            None => !self.whole_systems.is_empty() || self.codes.values().any(|c| c.contains(code)),
        }
    }
}

/// An element of the instance and its FHIRPath location.
#[derive(Clone)]
struct Node<'a> {
    v: &'a Value,
    path: String,
}

fn strip_version(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn array_field<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn invalid(file: &str, msg: impl Into<String>) -> PackageError {
    PackageError::Invalid {
        file: file.to_string(),
        msg: msg.into(),
    }
}

impl Package {
    /// Loads a package from its files (`package.json` and one JSON file per
    /// conformance resource; other resource types are ignored).
    /// `external_types` names the resource type of profiles the package
    /// refers to without holding them (`(url, "PractitionerRole")`).
    pub fn load(files: &[(&str, &str)], external_types: &[(&str, &str)]) -> Result<Package, PackageError> {
        let mut parsed = Vec::with_capacity(files.len());
        let mut canonical = None;
        for (name, text) in files {
            let v: Value = serde_json::from_str(text).map_err(|e| PackageError::Json {
                file: (*name).to_string(),
                msg: e.to_string(),
            })?;
            if *name == "package.json" {
                canonical = str_field(&v, "canonical").map(str::to_string);
            } else {
                parsed.push((*name, v));
            }
        }
        let canonical = canonical.ok_or(PackageError::NoManifest)?;
        let mut code_systems: HashMap<String, Vec<String>> = HashMap::new();
        for (_, v) in &parsed {
            if str_field(v, "resourceType") == Some("CodeSystem")
                && let Some(url) = str_field(v, "url")
            {
                let mut codes = Vec::new();
                collect_codes(array_field(v, "concept"), &mut codes);
                code_systems.insert(url.to_string(), codes);
            }
        }
        let value_set_defs: HashMap<&str, &Value> = parsed
            .iter()
            .filter(|(_, v)| str_field(v, "resourceType") == Some("ValueSet"))
            .filter_map(|(_, v)| str_field(v, "url").map(|u| (u, v)))
            .collect();
        let mut value_sets = HashMap::new();
        for url in value_set_defs.keys() {
            let mut exp = Expansion::default();
            expand(url, &value_set_defs, &code_systems, &mut exp, 0)
                .map_err(|msg| invalid(&format!("ValueSet {url}"), msg))?;
            value_sets.insert((*url).to_string(), exp);
        }
        let mut profiles = HashMap::new();
        for (name, v) in &parsed {
            if str_field(v, "resourceType") != Some("StructureDefinition") {
                continue;
            }
            let url = str_field(v, "url").ok_or_else(|| invalid(name, "no url"))?;
            profiles.insert(url.to_string(), Profile::load(name, v)?);
        }
        let package = Package {
            canonical,
            profiles,
            value_sets,
            external_types: external_types
                .iter()
                .map(|(u, t)| ((*u).to_string(), (*t).to_string()))
                .collect(),
        };
        package.check_references()?;
        Ok(package)
    }

    /// Every binding and every profile an element names must be known:
    /// a validator that silently skipped them would accept anything.
    fn check_references(&self) -> Result<(), PackageError> {
        for p in self.profiles.values() {
            for el in &p.elements {
                if let Some(b) = &el.binding
                    && b.strength != Strength::Other
                    && !self.value_sets.contains_key(&b.value_set)
                {
                    return Err(invalid(&p.id, format!("{} is bound to unknown {}", el.id, b.value_set)));
                }
                for t in &el.types {
                    for pr in &t.profiles {
                        if pr.starts_with(&self.canonical) && !self.profiles.contains_key(pr) {
                            return Err(invalid(&p.id, format!("{} names unknown profile {pr}", el.id)));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The canonical base of the package (`https://apa-gateway.fr/fhir`).
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Whether `url` is a profile (or extension) of the package.
    pub fn has_profile(&self, url: &str) -> bool {
        self.profiles.contains_key(strip_version(url))
    }

    /// The profiles of the package for `resource_type` whose constraint on
    /// `element` (a pattern, a fixed value or a required binding, on the
    /// element or one of its slices) the resource meets: how an
    /// Observation's code selects its profile. Profiles that state nothing
    /// on `element` are not returned.
    pub fn profiles_matching(&self, resource: &Value, element: &str) -> Vec<&str> {
        let Some(rtype) = str_field(resource, "resourceType") else {
            return Vec::new();
        };
        let full = format!("{rtype}.{element}");
        let slice_prefix = format!("{full}:");
        let items: Vec<&Value> = match resource.get(element) {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v) => vec![v],
            None => return Vec::new(),
        };
        let mut out: Vec<&str> = Vec::new();
        for (url, p) in &self.profiles {
            if p.rtype != rtype {
                continue;
            }
            let mut stated = false;
            let mut met = false;
            for el in p.elements.iter().filter(|e| {
                e.id == full || (e.id.starts_with(&slice_prefix) && !e.id[slice_prefix.len()..].contains('.'))
            }) {
                let test: Box<dyn Fn(&Value) -> bool> = if let Some(f) = &el.fixed {
                    Box::new(move |v| v == f)
                } else if let Some(pt) = &el.pattern {
                    Box::new(move |v| contains(v, pt))
                } else if let Some(b) = el.binding.as_ref().filter(|b| b.strength == Strength::Required) {
                    let Some(vs) = self.value_sets.get(&b.value_set) else {
                        continue;
                    };
                    Box::new(move |v| codes_of(v).iter().any(|(s, c)| vs.contains(*s, c)))
                } else {
                    continue;
                };
                stated = true;
                if items.iter().any(|v| test(v)) {
                    met = true;
                }
            }
            if stated && met {
                out.push(url);
            }
        }
        out.sort_unstable();
        out
    }

    /// Validates `resource` against the profiles it claims in `meta.profile`
    /// and those of `apply` (chosen by the caller), and every extension of
    /// the package it carries. A claimed profile of the package's canonical
    /// base that the package does not hold is an error; one of another IG
    /// is a warning (it is not checked).
    pub fn validate(&self, resource: &Value, apply: &[&str]) -> Vec<Issue> {
        let mut issues = Vec::new();
        let Some(rtype) = str_field(resource, "resourceType") else {
            return issues;
        };
        let mut done: HashSet<&str> = HashSet::new();
        let claimed = resource.get("meta").map(|m| array_field(m, "profile")).unwrap_or(&[]);
        for (i, c) in claimed.iter().enumerate() {
            let Some(url) = c.as_str().map(strip_version) else {
                continue;
            };
            let at = format!("{rtype}.meta.profile[{i}]");
            match self.profiles.get_key_value(url) {
                Some((u, p)) => {
                    if p.rtype != rtype {
                        issues.push(issue(
                            Severity::Error,
                            "invalid",
                            format!("profile {} is for {}, not {rtype}", p.id, p.rtype),
                            at,
                        ));
                    } else if done.insert(u.as_str()) {
                        p.validate(self, &root(resource, rtype), &mut issues);
                    }
                }
                None if url.starts_with(&self.canonical) => issues.push(issue(
                    Severity::Error,
                    "not-supported",
                    format!("{url} is not a profile of this gateway's package"),
                    at,
                )),
                None if url == format!("{R4_BASE}{rtype}") => {}
                None => issues.push(issue(
                    Severity::Warning,
                    "not-supported",
                    format!("profile {url} is not known to this gateway: the resource was not checked against it"),
                    at,
                )),
            }
        }
        for url in apply {
            let url = strip_version(url);
            match self.profiles.get_key_value(url) {
                Some((u, p)) if p.rtype == rtype => {
                    if done.insert(u.as_str()) {
                        p.validate(self, &root(resource, rtype), &mut issues);
                    }
                }
                Some((_, p)) => issues.push(issue(
                    Severity::Error,
                    "invalid",
                    format!("profile {} is for {}, not {rtype}", p.id, p.rtype),
                    rtype.to_string(),
                )),
                None => issues.push(issue(
                    Severity::Error,
                    "not-supported",
                    format!("{url} is not a profile of this gateway's package"),
                    rtype.to_string(),
                )),
            }
        }
        self.check_extensions(resource, &mut rtype.to_string(), &mut issues);
        issues
    }

    /// Every extension of the package, wherever it sits (not inside
    /// contained resources or Bundle entries, resources of their own).
    /// `path` is the location of `v`, grown and shrunk in place: most of
    /// a resource is no extension of ours, and needs no string of its own.
    fn check_extensions(&self, v: &Value, path: &mut String, issues: &mut Vec<Issue>) {
        use std::fmt::Write as _;
        let len = path.len();
        match v {
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    let _ = write!(path, "[{i}]");
                    self.check_extensions(x, path, issues);
                    path.truncate(len);
                }
            }
            // A resource inside this one (contained, a Bundle entry's) is
            // validated as a resource of its own.
            Value::Object(obj) if obj.contains_key("resourceType") && path.contains(['.', '[']) => {}
            Value::Object(obj) => {
                for (k, child) in obj {
                    if !(child.is_object() || child.is_array()) {
                        continue;
                    }
                    if matches!(k.as_str(), "extension" | "modifierExtension")
                        && let Some(items) = child.as_array()
                    {
                        for (i, ext) in items.iter().enumerate() {
                            if str_field(ext, "url").is_some_and(|u| u.starts_with(&self.canonical)) {
                                let at = Node {
                                    v: ext,
                                    path: format!("{path}.{k}[{i}]"),
                                };
                                self.check_extension(path, &at, issues);
                            }
                        }
                    }
                    path.push('.');
                    path.push_str(k);
                    self.check_extensions(child, path, issues);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }

    fn check_extension(&self, parent: &str, ext: &Node<'_>, issues: &mut Vec<Issue>) {
        let Some(url) = str_field(ext.v, "url") else {
            return;
        };
        match self.profiles.get(url) {
            Some(p) if p.rtype == "Extension" => {
                let element = strip_indexes(parent);
                if !p.context.is_empty() && !p.context.contains(&element) {
                    issues.push(issue(
                        Severity::Error,
                        "structure",
                        format!(
                            "extension {} is not allowed on {element} (only on {})",
                            p.id,
                            p.context.join(", ")
                        ),
                        ext.path.clone(),
                    ));
                }
                p.validate(self, ext, issues);
            }
            Some(_) => {}
            None if url.starts_with(&self.canonical) => issues.push(issue(
                Severity::Error,
                "not-supported",
                format!("{url} is not an extension of this gateway's package"),
                format!("{}.url", ext.path),
            )),
            None => {}
        }
    }

    fn expansion(&self, url: &str) -> Option<&Expansion> {
        self.value_sets.get(strip_version(url))
    }

    /// The resource type a target profile stands for, when known.
    fn target_type<'s>(&'s self, url: &'s str) -> Option<&'s str> {
        let url = strip_version(url);
        if let Some(p) = self.profiles.get(url) {
            return Some(&p.rtype);
        }
        if let Some(t) = self.external_types.get(url) {
            return Some(t);
        }
        url.strip_prefix(R4_BASE)
            .filter(|t| t.starts_with(|c: char| c.is_ascii_uppercase()) && t.bytes().all(|b| b.is_ascii_alphanumeric()))
    }
}

fn root<'a>(resource: &'a Value, rtype: &str) -> Node<'a> {
    Node {
        v: resource,
        path: rtype.to_string(),
    }
}

fn issue(severity: Severity, code: &'static str, diagnostics: String, expression: String) -> Issue {
    Issue {
        severity,
        code,
        diagnostics,
        expression: vec![expression],
    }
}

/// `CarePlan.activity[0].detail` → `CarePlan.activity.detail`.
fn strip_indexes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut skip = false;
    for c in path.chars() {
        match c {
            '[' => skip = true,
            ']' => skip = false,
            _ if !skip => out.push(c),
            _ => {}
        }
    }
    out
}

fn collect_codes(concepts: &[Value], out: &mut Vec<String>) {
    for c in concepts {
        if let Some(code) = str_field(c, "code") {
            out.push(code.to_string());
        }
        collect_codes(array_field(c, "concept"), out);
    }
}

fn expand(
    url: &str,
    defs: &HashMap<&str, &Value>,
    code_systems: &HashMap<String, Vec<String>>,
    exp: &mut Expansion,
    depth: usize,
) -> Result<(), String> {
    if depth > 8 {
        return Err("value sets include each other too deeply".into());
    }
    let vs = defs
        .get(strip_version(url))
        .ok_or_else(|| format!("includes unknown ValueSet {url}"))?;
    let compose = vs.get("compose").ok_or("no compose")?;
    if !array_field(compose, "exclude").is_empty() {
        return Err("exclude is not supported".into());
    }
    for inc in array_field(compose, "include") {
        if inc.get("filter").is_some() {
            return Err("include.filter is not supported".into());
        }
        for other in array_field(inc, "valueSet") {
            expand(other.as_str().unwrap_or_default(), defs, code_systems, exp, depth + 1)?;
        }
        let Some(system) = str_field(inc, "system") else {
            continue;
        };
        let listed = array_field(inc, "concept");
        if !listed.is_empty() {
            for c in listed {
                if let Some(code) = str_field(c, "code") {
                    exp.codes
                        .entry(system.to_string())
                        .or_default()
                        .insert(code.to_string());
                }
            }
        } else if let Some(codes) = code_systems.get(system) {
            exp.codes
                .entry(system.to_string())
                .or_default()
                .extend(codes.iter().cloned());
        } else {
            exp.whole_systems.insert(system.to_string());
        }
    }
    Ok(())
}

impl Profile {
    fn load(file: &str, sd: &Value) -> Result<Profile, PackageError> {
        let rtype = str_field(sd, "type")
            .ok_or_else(|| invalid(file, "no type"))?
            .to_string();
        let id = str_field(sd, "id").unwrap_or(file).to_string();
        let context = array_field(sd, "context")
            .iter()
            .filter(|c| str_field(c, "type") == Some("element"))
            .filter_map(|c| str_field(c, "expression").map(str::to_string))
            .collect();
        let differential = sd.get("differential").map(|d| array_field(d, "element")).unwrap_or(&[]);
        let mut elements = Vec::with_capacity(differential.len());
        let mut slicings: HashMap<String, Vec<Discriminator>> = HashMap::new();
        for el in differential {
            let eid = str_field(el, "id").ok_or_else(|| invalid(file, "an element has no id"))?;
            let mut end = 0;
            let segs: Vec<Seg> = eid
                .split('.')
                .map(|s| {
                    end += s.len() + usize::from(end > 0);
                    let (name, slice) = match s.split_once(':') {
                        Some((n, sl)) => (n, Some(sl.to_string())),
                        None => (s, None),
                    };
                    Seg {
                        name: name.to_string(),
                        slice,
                        end,
                        prefix: 0,
                        slice_tests: None,
                    }
                })
                .collect();
            if segs.first().map(|s| s.name.as_str()) != Some(rtype.as_str()) {
                return Err(invalid(file, format!("{eid} is not an element of {rtype}")));
            }
            if let Some(slicing) = el.get("slicing") {
                let discs = array_field(slicing, "discriminator")
                    .iter()
                    .map(|d| Discriminator {
                        kind: match str_field(d, "type") {
                            Some("value") => DiscKind::Value,
                            Some("pattern") => DiscKind::Pattern,
                            Some("type") => DiscKind::Type,
                            _ => DiscKind::Other,
                        },
                        path: str_field(d, "path").unwrap_or("$this").to_string(),
                    })
                    .collect();
                slicings.insert(eid.to_string(), discs);
            }
            let mut fixed = None;
            let mut pattern = None;
            if let Some(obj) = el.as_object() {
                for (k, v) in obj {
                    if k.starts_with("fixed") {
                        fixed = Some(v.clone());
                    } else if k.starts_with("pattern") {
                        pattern = Some(v.clone());
                    }
                }
            }
            let max = match str_field(el, "max") {
                None => None,
                Some("*") => Some(None),
                Some(m) => Some(Some(
                    m.parse::<usize>()
                        .map_err(|_| invalid(file, format!("{eid}: max {m:?}")))?,
                )),
            };
            let binding = el.get("binding").and_then(|b| {
                Some(Binding {
                    strength: match str_field(b, "strength")? {
                        "required" => Strength::Required,
                        "extensible" => Strength::Extensible,
                        _ => Strength::Other,
                    },
                    value_set: strip_version(str_field(b, "valueSet")?).to_string(),
                })
            });
            let mut constraints = Vec::new();
            for c in array_field(el, "constraint") {
                let key = str_field(c, "key").unwrap_or_default().to_string();
                let src = str_field(c, "expression")
                    .ok_or_else(|| invalid(file, format!("{eid}: constraint {key} has no expression")))?;
                let expr = Expr::parse(src).map_err(|e| invalid(file, format!("{eid}: constraint {key}: {e}")))?;
                constraints.push(Constraint {
                    human: str_field(c, "human").unwrap_or_default().to_string(),
                    severity: if str_field(c, "severity") == Some("warning") {
                        Severity::Warning
                    } else {
                        Severity::Error
                    },
                    key,
                    expr,
                });
            }
            let types = array_field(el, "type")
                .iter()
                .map(|t| {
                    let urls = |k: &str| {
                        array_field(t, k)
                            .iter()
                            .filter_map(Value::as_str)
                            .map(|u| strip_version(u).to_string())
                            .collect()
                    };
                    TypeRef {
                        code: str_field(t, "code").unwrap_or_default().to_string(),
                        profiles: urls("profile"),
                        target_profiles: urls("targetProfile"),
                    }
                })
                .collect();
            elements.push(Element {
                id: eid.to_string(),
                segs,
                min: el.get("min").and_then(Value::as_u64).map(|m| m as usize),
                max,
                types,
                fixed,
                pattern,
                binding,
                constraints,
            });
        }
        let by_id: HashMap<String, usize> = elements.iter().enumerate().map(|(i, e)| (e.id.clone(), i)).collect();
        let mut slices = Vec::new();
        let mut slice_index: HashMap<String, usize> = HashMap::new();
        for el in &elements {
            if let Some(slice) = el.segs.last().and_then(|s| s.slice.as_deref()) {
                let sliced = &el.id[..el.id.len() - slice.len() - 1];
                if let Some(discs) = slicings.get(sliced) {
                    let element = |id: &str| by_id.get(id).and_then(|i| elements.get(*i));
                    slice_index.insert(el.id.clone(), slices.len());
                    slices.push(slice_tests(discs, el, element));
                }
            }
        }
        // Numbers for id prefixes and slices: no hashing while validating.
        let mut prefixes: HashMap<String, usize> = HashMap::new();
        for el in &mut elements {
            for seg in &mut el.segs {
                let key = &el.id[..seg.end];
                let n = prefixes.len();
                seg.prefix = *prefixes.entry(key.to_string()).or_insert(n);
                if seg.slice.is_some() {
                    seg.slice_tests = slice_index.get(key).copied();
                }
            }
        }
        Ok(Profile {
            id,
            rtype,
            context,
            elements,
            slices,
            prefixes: prefixes.len(),
        })
    }

    /// Computes the instance nodes of every id prefix of `el`, slices
    /// applied, into `memo` (indexed by `Seg::prefix`): elements share
    /// their parents, each is walked once per validation.
    fn walk_element<'a>(&self, el: &Element, root: &Node<'a>, memo: &mut [Option<Vec<Node<'a>>>]) {
        for (j, seg) in el.segs.iter().enumerate() {
            if memo.get(seg.prefix).is_some_and(Option::is_some) {
                continue;
            }
            let next = match j.checked_sub(1).and_then(|i| el.segs.get(i)) {
                None => vec![root.clone()],
                Some(prev) => {
                    let prev = memo.get(prev.prefix).and_then(Option::as_deref).unwrap_or(&[]);
                    let mut next: Vec<Node<'a>> = prev.iter().flat_map(|n| children(n, &seg.name)).collect();
                    if seg.slice.is_some() {
                        next.retain(|n| self.in_slice(seg, n.v));
                    }
                    next
                }
            };
            if let Some(slot) = memo.get_mut(seg.prefix) {
                *slot = Some(next);
            }
        }
    }

    /// Whether an item of a sliced element belongs to the slice of `seg`.
    fn in_slice(&self, seg: &Seg, item: &Value) -> bool {
        seg.slice_tests
            .and_then(|i| self.slices.get(i))
            .is_some_and(|tests| tests.iter().all(|t| t.matches(item)))
    }

    fn validate(&self, pkg: &Package, root: &Node<'_>, issues: &mut Vec<Issue>) {
        let mut memo = vec![None; self.prefixes];
        for el in &self.elements {
            self.walk_element(el, root, &mut memo);
        }
        for el in &self.elements {
            self.check_element(pkg, el, &memo, issues);
        }
    }

    fn check_element(&self, pkg: &Package, el: &Element, memo: &[Option<Vec<Node<'_>>>], issues: &mut Vec<Issue>) {
        let who = |what: String| format!("{} ({}): {what}", self.id, el.id);
        let at = |seg: Option<&Seg>| {
            seg.and_then(|s| memo.get(s.prefix))
                .and_then(Option::as_deref)
                .unwrap_or(&[])
        };
        let nodes = at(el.segs.last());
        if let Some((last, parent_segs)) = el.segs.split_last()
            && !parent_segs.is_empty()
            && (el.min.is_some() || el.max.is_some() || last.name.ends_with("[x]"))
        {
            let parents = at(parent_segs.last());
            let shown = last.name.trim_end_matches("[x]");
            for p in parents {
                let mut kids = children(p, &last.name);
                if last.slice.is_some() {
                    kids.retain(|k| self.in_slice(last, k.v));
                }
                let n = kids.len();
                if let Some(min) = el.min
                    && n < min
                {
                    issues.push(issue(
                        Severity::Error,
                        "required",
                        who(format!("{n} found, at least {min} required")),
                        format!("{}.{shown}", p.path),
                    ));
                }
                if let Some(Some(max)) = el.max
                    && n > max
                {
                    let at = kids
                        .get(max)
                        .map_or_else(|| format!("{}.{shown}", p.path), |k| k.path.clone());
                    issues.push(issue(
                        Severity::Error,
                        "structure",
                        who(if max == 0 {
                            "not allowed".to_string()
                        } else {
                            format!("{n} found, at most {max} allowed")
                        }),
                        at,
                    ));
                }
                // A choice restricted to some types.
                if let Some(prefix) = last.name.strip_suffix("[x]")
                    && !el.types.is_empty()
                    && let Some(obj) = p.v.as_object()
                {
                    for k in obj.keys() {
                        if is_choice_key(k, prefix)
                            && !el
                                .types
                                .iter()
                                .any(|t| format!("{prefix}{}", capitalise(&t.code)) == *k)
                        {
                            let allowed: Vec<&str> = el.types.iter().map(|t| t.code.as_str()).collect();
                            issues.push(issue(
                                Severity::Error,
                                "structure",
                                who(format!("{k} is not allowed here (only {})", allowed.join(", "))),
                                format!("{}.{k}", p.path),
                            ));
                        }
                    }
                }
            }
        }
        if let Some((v, exact)) = el.fixed_or_pattern() {
            for n in nodes {
                if exact && n.v != v {
                    issues.push(issue(
                        Severity::Error,
                        "value",
                        who(format!("must be {v}")),
                        n.path.clone(),
                    ));
                } else if !exact && !contains(n.v, v) {
                    issues.push(issue(
                        Severity::Error,
                        "value",
                        who(format!("must contain {v}")),
                        n.path.clone(),
                    ));
                }
            }
        }
        for t in el
            .types
            .iter()
            .filter(|t| t.code == "Reference" && !t.target_profiles.is_empty())
        {
            let wanted: Option<Vec<&str>> = t.target_profiles.iter().map(|u| pkg.target_type(u)).collect();
            let Some(wanted) = wanted.filter(|w| !w.contains(&"Resource")) else {
                continue;
            };
            for n in nodes
                .iter()
                .filter(|n| n.v.get("reference").is_some() || n.v.get("type").is_some())
            {
                if let Some(rt) = reference_type(n.v)
                    && !wanted.contains(&rt)
                {
                    issues.push(issue(
                        Severity::Error,
                        "value",
                        who(format!(
                            "a reference to {rt}, where {} is expected",
                            wanted.join(" or ")
                        )),
                        n.path.clone(),
                    ));
                }
            }
        }
        if let Some(b) = &el.binding
            && b.strength != Strength::Other
            && let Some(vs) = pkg.expansion(&b.value_set)
        {
            for n in nodes {
                let codes = codes_of(n.v);
                if codes.iter().any(|(s, c)| vs.contains(*s, c)) {
                    continue;
                }
                if b.strength == Strength::Required {
                    issues.push(issue(
                        Severity::Error,
                        "code-invalid",
                        who(format!("no code from the required value set {}", b.value_set)),
                        n.path.clone(),
                    ));
                } else if !codes.is_empty() {
                    issues.push(issue(
                        Severity::Warning,
                        "code-invalid",
                        who(format!("no code from the extensible value set {}", b.value_set)),
                        n.path.clone(),
                    ));
                }
            }
        }
        for c in &el.constraints {
            for n in nodes {
                let result = c.expr.evaluate(n.v);
                let holds = matches!(result.as_slice(), [one] if one.value == &Value::Bool(true));
                if !holds {
                    issues.push(issue(
                        c.severity,
                        "invariant",
                        format!("{} ({}): {}", self.id, c.key, c.human),
                        n.path.clone(),
                    ));
                }
            }
        }
    }
}

/// What an item must be to belong to `slice` (an element of the
/// differential), from the discriminators of its slicing. A discriminator
/// the slice states no value for does not restrict it.
fn slice_tests<'e>(
    discs: &[Discriminator],
    slice: &Element,
    element: impl Fn(&str) -> Option<&'e Element>,
) -> Vec<SliceTest> {
    let path_of = |p: &str| -> Vec<String> {
        if p == "$this" {
            Vec::new()
        } else {
            p.split('.').map(str::to_string).collect()
        }
    };
    let mut tests = Vec::new();
    for d in discs {
        match d.kind {
            DiscKind::Type => {
                let el = element(&format!("{}.{}[x]", slice.id, d.path))
                    .or_else(|| element(&format!("{}.{}", slice.id, d.path)));
                if let Some(el) = el.filter(|e| !e.types.is_empty()) {
                    tests.push(SliceTest::AnyKey(
                        el.types
                            .iter()
                            .map(|t| format!("{}{}", d.path, capitalise(&t.code)))
                            .collect(),
                    ));
                }
            }
            DiscKind::Value | DiscKind::Pattern => {
                let urls: Vec<String> = slice.types.iter().flat_map(|t| t.profiles.iter().cloned()).collect();
                if d.path == "url" && !urls.is_empty() {
                    tests.push(SliceTest::Url(urls));
                    continue;
                }
                let target = if d.path == "$this" {
                    Some(slice)
                } else {
                    element(&format!("{}.{}", slice.id, d.path))
                };
                if let Some((v, exact)) = target.and_then(Element::fixed_or_pattern) {
                    tests.push(SliceTest::At {
                        path: path_of(&d.path),
                        value: v.clone(),
                        exact,
                    });
                } else if let Some((v, _)) = slice.fixed_or_pattern() {
                    // `coding.code` + `coding.system` read from the slice's own
                    // pattern: the item must contain it.
                    tests.push(SliceTest::At {
                        path: Vec::new(),
                        value: v.clone(),
                        exact: false,
                    });
                }
            }
            DiscKind::Other => {}
        }
    }
    tests
}

impl Element {
    /// The fixed value (exact) or the pattern (contained) of the element.
    fn fixed_or_pattern(&self) -> Option<(&Value, bool)> {
        self.fixed
            .as_ref()
            .map(|v| (v, true))
            .or_else(|| self.pattern.as_ref().map(|v| (v, false)))
    }
}

fn capitalise(code: &str) -> String {
    let mut c = code.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// `valueQuantity` for `value`: the prefix then a type name.
fn is_choice_key(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
}

/// The children of a node named `name` (`value[x]`: every `valueXxx`),
/// array items one by one, each with its location.
fn children<'a>(node: &Node<'a>, name: &str) -> Vec<Node<'a>> {
    let mut out = Vec::new();
    let Some(obj) = node.v.as_object() else {
        return out;
    };
    let mut push = |key: &str, v: &'a Value| match v {
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                out.push(Node {
                    v: x,
                    path: format!("{}.{key}[{i}]", node.path),
                });
            }
        }
        _ => out.push(Node {
            v,
            path: format!("{}.{key}", node.path),
        }),
    };
    match name.strip_suffix("[x]") {
        Some(prefix) => {
            for (k, v) in obj {
                if is_choice_key(k, prefix) {
                    push(k, v);
                }
            }
        }
        None => {
            if let Some(v) = obj.get(name) {
                push(name, v);
            }
        }
    }
    out
}

/// The values at a path below `v` (arrays flattened; empty: `v`).
fn walk<'a>(v: &'a Value, path: &[String]) -> Vec<&'a Value> {
    let mut current = vec![v];
    for part in path {
        let mut next = Vec::new();
        for c in current {
            match c.get(part) {
                Some(Value::Array(a)) => next.extend(a.iter()),
                Some(x) => next.push(x),
                None => {}
            }
        }
        current = next;
    }
    current
}

/// FHIR pattern matching: the instance has at least the pattern's
/// elements; an array pattern's items each match some instance item.
fn contains(node: &Value, pattern: &Value) -> bool {
    match pattern {
        Value::Object(p) => node
            .as_object()
            .is_some_and(|n| p.iter().all(|(k, pv)| n.get(k).is_some_and(|nv| contains(nv, pv)))),
        Value::Array(items) => {
            let nodes: Vec<&Value> = match node {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            items.iter().all(|p| nodes.iter().any(|n| contains(n, p)))
        }
        scalar => node == scalar,
    }
}

/// The (system, code) pairs of a coded value: a `code`, a Coding, a
/// Quantity, or a CodeableConcept's codings.
fn codes_of(v: &Value) -> Vec<(Option<&str>, &str)> {
    match v {
        Value::String(code) => vec![(None, code.as_str())],
        Value::Object(o) => match o.get("coding") {
            Some(Value::Array(codings)) => codings
                .iter()
                .filter_map(|c| Some((str_field(c, "system"), str_field(c, "code")?)))
                .collect(),
            _ => str_field(v, "code")
                .map(|c| vec![(str_field(v, "system"), c)])
                .unwrap_or_default(),
        },
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CS: &str = r#"{"resourceType":"CodeSystem","id":"lvl","url":"https://ex.org/fhir/CodeSystem/lvl","concept":[{"code":"low"},{"code":"high"}]}"#;
    const VS: &str = r#"{"resourceType":"ValueSet","id":"lvl","url":"https://ex.org/fhir/ValueSet/lvl","compose":{"include":[{"system":"https://ex.org/fhir/CodeSystem/lvl"}]}}"#;
    const EXT: &str = r#"{"resourceType":"StructureDefinition","id":"level","url":"https://ex.org/fhir/StructureDefinition/level","type":"Extension","context":[{"type":"element","expression":"ServiceRequest"}],
      "differential":{"element":[{"id":"Extension","path":"Extension"},{"id":"Extension.value[x]","path":"Extension.value[x]","min":1,"max":"1","type":[{"code":"CodeableConcept"}],"binding":{"strength":"required","valueSet":"https://ex.org/fhir/ValueSet/lvl"}}]}}"#;
    const SR: &str = r#"{"resourceType":"StructureDefinition","id":"order","url":"https://ex.org/fhir/StructureDefinition/order","type":"ServiceRequest",
      "differential":{"element":[
        {"id":"ServiceRequest","path":"ServiceRequest","constraint":[{"key":"o-1","severity":"error","human":"a reason","expression":"reasonCode.exists()"}]},
        {"id":"ServiceRequest.extension","path":"ServiceRequest.extension","slicing":{"discriminator":[{"type":"value","path":"url"}],"rules":"open"}},
        {"id":"ServiceRequest.extension:level","path":"ServiceRequest.extension","sliceName":"level","min":1,"max":"1","type":[{"code":"Extension","profile":["https://ex.org/fhir/StructureDefinition/level"]}]},
        {"id":"ServiceRequest.category","path":"ServiceRequest.category","slicing":{"discriminator":[{"type":"pattern","path":"$this"}],"rules":"open"}},
        {"id":"ServiceRequest.category:pa","path":"ServiceRequest.category","sliceName":"pa","min":1,"max":"1","patternCodeableConcept":{"coding":[{"system":"https://ex.org/cat","code":"PA"}]}},
        {"id":"ServiceRequest.occurrence[x]","path":"ServiceRequest.occurrence[x]","min":1,"max":"1","type":[{"code":"Timing"}]},
        {"id":"ServiceRequest.occurrenceTiming.repeat.boundsDuration.code","path":"ServiceRequest.occurrenceTiming.repeat.boundsDuration.code","fixedCode":"mo"},
        {"id":"ServiceRequest.subject","path":"ServiceRequest.subject","type":[{"code":"Reference","targetProfile":["http://hl7.org/fhir/StructureDefinition/Patient"]}]},
        {"id":"ServiceRequest.doNotPerform","path":"ServiceRequest.doNotPerform","max":"0"}
      ]}}"#;

    fn package() -> Package {
        Package::load(
            &[
                ("package.json", r#"{"name":"ex","canonical":"https://ex.org/fhir"}"#),
                ("CodeSystem-lvl.json", CS),
                ("ValueSet-lvl.json", VS),
                ("StructureDefinition-level.json", EXT),
                ("StructureDefinition-order.json", SR),
            ],
            &[],
        )
        .expect("the test package loads")
    }

    fn good() -> Value {
        json!({"resourceType": "ServiceRequest",
            "meta": {"profile": ["https://ex.org/fhir/StructureDefinition/order"]},
            "extension": [{"url": "https://ex.org/fhir/StructureDefinition/level",
                           "valueCodeableConcept": {"coding": [{"system": "https://ex.org/fhir/CodeSystem/lvl", "code": "low"}]}}],
            "category": [{"text": "other"}, {"coding": [{"system": "https://ex.org/cat", "code": "PA", "display": "x"}]}],
            "occurrenceTiming": {"repeat": {"boundsDuration": {"value": 3, "code": "mo"}}},
            "subject": {"reference": "Patient/p1"},
            "reasonCode": [{"text": "why"}]})
    }

    fn errors(v: &Value) -> Vec<String> {
        package()
            .validate(v, &[])
            .into_iter()
            .filter(|i| i.severity == Severity::Error)
            .map(|i| format!("{} | {}", i.expression.join(","), i.diagnostics))
            .collect()
    }

    #[test]
    fn a_conforming_resource_has_no_issue() {
        assert!(package().validate(&good(), &[]).is_empty());
    }

    #[test]
    fn each_rule_is_reported_where_it_fails() {
        let mut v = good();
        v["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = json!("medium");
        v["category"][1]["coding"][0]["code"] = json!("XX");
        v["occurrenceTiming"]["repeat"]["boundsDuration"]["code"] = json!("wk");
        v["subject"]["reference"] = json!("Group/g1");
        v["doNotPerform"] = json!(true);
        v.as_object_mut().map(|o| o.remove("reasonCode"));
        let e = errors(&v);
        let at = |p: &str| e.iter().any(|x| x.starts_with(&format!("{p} |")));
        assert!(at("ServiceRequest.extension[0].valueCodeableConcept"), "{e:?}");
        assert!(at("ServiceRequest.category"), "{e:?}");
        assert!(
            at("ServiceRequest.occurrenceTiming.repeat.boundsDuration.code"),
            "{e:?}"
        );
        assert!(at("ServiceRequest.subject"), "{e:?}");
        assert!(at("ServiceRequest.doNotPerform"), "{e:?}");
        assert!(at("ServiceRequest"), "{e:?}");
        assert_eq!(e.len(), 6, "{e:?}");
    }

    #[test]
    fn slices_choices_and_extensions() {
        let mut v = good();
        v["extension"] = json!([]);
        v.as_object_mut().map(|o| o.remove("occurrenceTiming"));
        v["occurrenceDateTime"] = json!("2026-01-01");
        let e = errors(&v);
        assert!(e.iter().any(|x| x.starts_with("ServiceRequest.extension |")), "{e:?}");
        assert!(
            e.iter().any(|x| x.starts_with("ServiceRequest.occurrenceDateTime |")),
            "{e:?}"
        );
        // An extension of the package is checked where it is, claimed or not.
        let obs = json!({"resourceType": "Observation",
            "extension": [{"url": "https://ex.org/fhir/StructureDefinition/level", "valueBoolean": true},
                          {"url": "https://ex.org/fhir/StructureDefinition/nope", "valueBoolean": true}]});
        let e = errors(&obs);
        assert!(e.iter().any(|x| x.contains("not allowed on Observation")), "{e:?}");
        assert!(
            e.iter()
                .any(|x| x.starts_with("Observation.extension[0].valueBoolean |")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|x| x.starts_with("Observation.extension[1].url |")),
            "{e:?}"
        );
        // Resources inside another one are not its elements.
        let bundle = json!({"resourceType": "Bundle", "entry": [{"resource": good()}]});
        assert!(errors(&bundle).is_empty());
    }

    #[test]
    fn claimed_profiles_unknown_ones_and_selection() {
        let p = package();
        let mut v = good();
        v["meta"]["profile"] = json!(["https://ex.org/fhir/StructureDefinition/missing", "https://other.org/x"]);
        let issues = p.validate(&v, &[]);
        assert_eq!(issues.len(), 2);
        assert_eq!(issues[0].severity, Severity::Error);
        assert_eq!(issues[0].expression, ["ServiceRequest.meta.profile[0]"]);
        assert_eq!(issues[1].severity, Severity::Warning);
        assert!(p.validate(&v, &["https://ex.org/fhir/StructureDefinition/order"]).len() == 2);
        assert_eq!(
            p.profiles_matching(&good(), "category"),
            ["https://ex.org/fhir/StructureDefinition/order"]
        );
        assert!(
            p.profiles_matching(&json!({"resourceType": "ServiceRequest"}), "category")
                .is_empty()
        );
    }
}
