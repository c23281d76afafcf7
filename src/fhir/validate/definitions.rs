//! The R4 element table the base validator walks by, built once from the
//! compact data `scripts/gen-definitions.py` writes
//! (`src/fhir/definitions/elements.json`): every resource type, complex
//! datatype and backbone element as a [`Struct`] whose JSON keys (choice
//! names expanded: `valueQuantity`) map straight to their element and type.

use std::collections::{HashMap, HashSet};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::Deserialize;

use crate::fhir::fhirpath::Expr;
use crate::fhir::validate::primitives::Primitive;

const ELEMENTS: &str = include_str!("../definitions/elements.json");

#[derive(Debug, thiserror::Error)]
pub(super) enum DefinitionError {
    #[error("elements.json does not parse: {0}")]
    Json(#[from] serde_json::Error),
    #[error("elements.json: {0}")]
    Invalid(String),
}

/// What a JSON key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Primitive(Primitive),
    Struct(u32),
    /// Any resource, validated as the type its `resourceType` names.
    Resource,
}

#[derive(Debug)]
pub(super) struct Element {
    /// The element's name for messages and paths (`value[x]`: `value`).
    pub name: Box<str>,
    pub min: u32,
    /// `None`: `*`.
    pub max: Option<u32>,
    pub choice: bool,
    /// The required value set, when it could be expanded.
    pub binding: Option<u32>,
    pub constraints: Box<[u32]>,
}

impl Element {
    /// Repeats, so JSON holds it as an array.
    pub fn many(&self) -> bool {
        self.max != Some(1) && self.max != Some(0)
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Child {
    pub element: u16,
    pub kind: Kind,
    /// For a Reference: the resource types it may point at (an index in
    /// `Definitions::targets`); `None`: any.
    pub targets: Option<u32>,
}

#[derive(Debug)]
pub(super) struct Struct {
    /// `Patient`, `Quantity`, `Patient.contact`.
    pub name: Box<str>,
    pub elements: Vec<Element>,
    pub children: FxHashMap<Box<str>, Child>,
    /// The elements with min > 0 and every JSON key that makes one present
    /// (`_status` too: a primitive may be there only by its extensions).
    pub required: Vec<(u16, Box<[Box<str>]>)>,
    /// Invariants on the type itself (`qty-3` on every Quantity).
    pub constraints: Box<[u32]>,
}

pub(super) struct Constraint {
    pub key: Box<str>,
    pub human: Box<str>,
    pub check: Check,
}

pub(super) enum Check {
    FhirPath(Expr),
    /// `earlier <= later` for two date/time elements. Our FHIRPath engine
    /// compares them as text, which is wrong across time zones
    /// (`10:00+02:00` is before `09:00Z`) and precisions.
    DateOrder {
        earlier: &'static str,
        later: &'static str,
    },
    /// `low <= high` for two Quantities (rng-2): the engine does not
    /// compare quantities.
    QuantityOrder,
    /// At least one of these elements (org-1, ipn-1: `(identifier.count()
    /// + name.count()) > 0`; the engine has no arithmetic).
    AnyOf(&'static [&'static str]),
    /// ref-1: a `#id` reference names a resource contained in the root
    /// resource (`substring()`).
    LocalReference,
    /// dom-3: every contained resource is referenced from elsewhere in the
    /// resource, or refers to its container (`+`, `descendants()`).
    ContainedReferenced,
    /// obs-7: with a value, no component has a coding of the
    /// Observation's code (`intersect()`).
    ComponentCode,
    /// bdl-7: no two entries with one fullUrl, unless their versionIds
    /// differ, except in a history (`&`, `isDistinct()`).
    FullUrlUnique,
    /// txt-1 and txt-2 (`htmlChecks()`): the XHTML of `Narrative.div`,
    /// parsed once for both (`narrative`); txt-2 is reported by txt-1's
    /// check.
    Narrative,
    CheckedWithNarrative,
}

/// The invariants evaluated natively instead of by their expression.
fn native(key: &str, expression: &str) -> Option<Check> {
    match key {
        "ref-1" => return Some(Check::LocalReference),
        "dom-3" => return Some(Check::ContainedReferenced),
        "obs-7" => return Some(Check::ComponentCode),
        "bdl-7" => return Some(Check::FullUrlUnique),
        "txt-1" => return Some(Check::Narrative),
        "txt-2" => return Some(Check::CheckedWithNarrative),
        _ => {}
    }
    Some(match expression {
        "(identifier.count() + name.count()) > 0" => Check::AnyOf(&["identifier", "name"]),
        "(description.count() + software.count() + implementation.count()) > 0" => {
            Check::AnyOf(&["description", "software", "implementation"])
        }
        "start.hasValue().not() or end.hasValue().not() or (start <= end)" => Check::DateOrder {
            earlier: "start",
            later: "end",
        },
        "lastModified.exists().not() or authoredOn.exists().not() or lastModified >= authoredOn" => Check::DateOrder {
            earlier: "authoredOn",
            later: "lastModified",
        },
        "whenHandedOver.empty() or whenPrepared.empty() or whenHandedOver >= whenPrepared" => Check::DateOrder {
            earlier: "whenPrepared",
            later: "whenHandedOver",
        },
        "low.empty() or high.empty() or (low <= high)" => Check::QuantityOrder,
        _ => return None,
    })
}

/// A required value set: its codes, per system.
pub(super) struct ValueSet {
    pub url: Box<str>,
    pub systems: Vec<(Box<str>, FxHashSet<Box<str>>)>,
}

impl ValueSet {
    pub fn has_code(&self, code: &str) -> bool {
        self.systems.iter().any(|(_, codes)| codes.contains(code))
    }

    pub fn has_coding(&self, system: &str, code: &str) -> bool {
        self.systems
            .iter()
            .any(|(s, codes)| &**s == system && codes.contains(code))
    }
}

pub(super) struct Definitions {
    pub structs: Vec<Struct>,
    /// Resource types only.
    pub resources: FxHashMap<Box<str>, u32>,
    /// `Element` (id and extensions of a primitive: `_birthDate`).
    pub element_struct: u32,
    /// Invariants by index; `None` for those the FHIRPath engine cannot
    /// compile (listed in `skipped_constraints`).
    pub constraints: Vec<Option<Constraint>>,
    pub skipped_constraints: Vec<(Box<str>, String)>,
    pub value_sets: Vec<ValueSet>,
    /// The target lists of references (`Reference(Patient|Group)`), each once.
    pub targets: Vec<Box<[Box<str>]>>,
    pub regexes: HashMap<Box<str>, Box<str>>,
}

#[derive(Deserialize)]
struct Raw {
    regexes: HashMap<Box<str>, Box<str>>,
    structs: HashMap<String, RawStruct>,
    constraints: Vec<(String, String, String)>,
    #[serde(rename = "valueSets")]
    value_sets: Vec<RawValueSet>,
}

#[derive(Deserialize)]
struct RawStruct {
    k: String,
    c: Vec<u32>,
    e: Vec<RawElement>,
}

/// `[name, min, max (-1: *), types, binding?, constraints?]`, the two
/// last ones left out when empty.
struct RawElement(String, u32, i64, Vec<String>, Option<u32>, Vec<u32>);

impl<'de> Deserialize<'de> for RawElement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Row {
            Four(String, u32, i64, Vec<String>),
            Five(String, u32, i64, Vec<String>, Option<u32>),
            Six(String, u32, i64, Vec<String>, Option<u32>, Vec<u32>),
        }
        Ok(match Row::deserialize(d)? {
            Row::Four(n, min, max, t) => RawElement(n, min, max, t, None, Vec::new()),
            Row::Five(n, min, max, t, b) => RawElement(n, min, max, t, b, Vec::new()),
            Row::Six(n, min, max, t, b, c) => RawElement(n, min, max, t, b, c),
        })
    }
}

#[derive(Deserialize)]
struct RawValueSet {
    url: Box<str>,
    codes: HashMap<Box<str>, Vec<Box<str>>>,
}

impl Definitions {
    pub fn r4() -> Result<Definitions, DefinitionError> {
        Self::from_json(ELEMENTS)
    }

    fn from_json(src: &str) -> Result<Definitions, DefinitionError> {
        let raw: Raw = serde_json::from_str(src)?;
        let bad = |m: String| DefinitionError::Invalid(m);

        // Struct ids first: elements refer to each other by name.
        let mut names: Vec<&String> = raw.structs.keys().collect();
        names.sort();
        let ids: HashMap<&str, u32> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();

        let mut targets: Vec<Box<[Box<str>]>> = Vec::new();
        let mut target_ids: HashMap<String, u32> = HashMap::new();
        let mut structs = Vec::with_capacity(names.len());
        let mut resources = FxHashMap::default();
        for name in &names {
            let rs = &raw.structs[*name];
            let id = ids[name.as_str()];
            if rs.k == "resource" {
                resources.insert(Box::<str>::from(name.as_str()), id);
            }
            let mut elements = Vec::with_capacity(rs.e.len());
            let mut children = FxHashMap::default();
            let mut required = Vec::new();
            for (i, RawElement(ename, min, max, types, binding, constraints)) in rs.e.iter().enumerate() {
                let idx = u16::try_from(i).map_err(|_| bad(format!("{name}: too many elements")))?;
                let (base, choice) = match ename.strip_suffix("[x]") {
                    Some(b) => (b, true),
                    None => (ename.as_str(), false),
                };
                let mut keys: Vec<Box<str>> = Vec::new();
                for t in types {
                    // `Reference(Patient|Group)`: a Reference, with its targets.
                    let (t, allowed) = match t.strip_prefix("Reference(").and_then(|r| r.strip_suffix(')')) {
                        Some(list) => {
                            let next = targets.len() as u32;
                            let id = *target_ids.entry(list.to_string()).or_insert_with(|| {
                                targets.push(list.split('|').map(Box::from).collect());
                                next
                            });
                            ("Reference", Some(id))
                        }
                        None => (t.as_str(), None),
                    };
                    let kind = if let Some(p) = Primitive::from_code(t) {
                        Kind::Primitive(p)
                    } else if t == "Resource" {
                        Kind::Resource
                    } else if let Some(&sid) = ids.get(t) {
                        Kind::Struct(sid)
                    } else {
                        return Err(bad(format!("{name}.{ename}: unknown type {t}")));
                    };
                    let key: Box<str> = if choice {
                        choice_key(base, t).into()
                    } else {
                        base.into()
                    };
                    if matches!(kind, Kind::Primitive(_)) {
                        keys.push(format!("_{key}").into());
                    }
                    keys.push(key.clone());
                    children.insert(
                        key,
                        Child {
                            element: idx,
                            kind,
                            targets: allowed,
                        },
                    );
                }
                if *min > 0 {
                    required.push((idx, keys.into_boxed_slice()));
                }
                elements.push(Element {
                    name: base.into(),
                    min: *min,
                    max: u32::try_from(*max).ok(),
                    choice,
                    binding: *binding,
                    constraints: constraints.clone().into_boxed_slice(),
                });
            }
            structs.push(Struct {
                name: name.as_str().into(),
                elements,
                children,
                required,
                constraints: rs.c.clone().into_boxed_slice(),
            });
        }
        let element_struct = *ids.get("Element").ok_or_else(|| bad("no Element type".into()))?;

        let mut constraints = Vec::with_capacity(raw.constraints.len());
        let mut skipped_constraints = Vec::new();
        for (key, expression, human) in raw.constraints {
            let check = match native(&key, &expression) {
                Some(check) => Ok(check),
                None => Expr::parse(&expression).map(Check::FhirPath),
            };
            match check {
                Ok(check) => constraints.push(Some(Constraint {
                    key: key.into(),
                    human: human.into(),
                    check,
                })),
                Err(e) => {
                    skipped_constraints.push((key.into(), e.to_string()));
                    constraints.push(None);
                }
            }
        }

        let value_sets = raw
            .value_sets
            .into_iter()
            .map(|vs| {
                let mut systems: Vec<(Box<str>, FxHashSet<Box<str>>)> = vs
                    .codes
                    .into_iter()
                    .map(|(s, codes)| (s, codes.into_iter().collect()))
                    .collect();
                systems.sort_by(|a, b| a.0.cmp(&b.0));
                ValueSet { url: vs.url, systems }
            })
            .collect();

        Ok(Definitions {
            structs,
            resources,
            element_struct,
            constraints,
            skipped_constraints,
            value_sets,
            targets,
            regexes: raw.regexes,
        })
    }

    /// The keys of the invariants evaluated, each once.
    pub fn checked_constraint_keys(&self) -> Vec<&str> {
        let keys: HashSet<&str> = self.constraints.iter().flatten().map(|c| &*c.key).collect();
        let mut keys: Vec<&str> = keys.into_iter().collect();
        keys.sort_unstable();
        keys
    }
}

/// `value` + `Quantity` → `valueQuantity`; `value` + `dateTime` → `valueDateTime`.
fn choice_key(base: &str, type_code: &str) -> String {
    let mut key = String::with_capacity(base.len() + type_code.len());
    key.push_str(base);
    let mut chars = type_code.chars();
    if let Some(c) = chars.next() {
        key.extend(c.to_uppercase());
    }
    key.push_str(chars.as_str());
    key
}
