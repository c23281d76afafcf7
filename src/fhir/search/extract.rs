//! What a resource is indexed under: each supported search parameter's
//! FHIRPath evaluated on the resource, and each resulting element turned
//! into index values by the parameter's type and the element's shape.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use super::model::{DateRange, IndexValue, ParamType};
use super::registry::{Registry, SearchParamDef};
use super::values::date_range;
use crate::fhir::fhirpath::{Expr, Node};

/// A parameter that applies to a type, with its compiled expression.
type Compiled = (Arc<SearchParamDef>, Arc<Expr>);

pub struct Extractor {
    by_type: HashMap<String, Vec<Compiled>>,
}

impl Extractor {
    pub fn new(registry: &Registry) -> Extractor {
        let mut compiled: HashMap<String, Arc<Expr>> = HashMap::new();
        let mut by_type = HashMap::new();
        for t in registry.resource_types() {
            let mut params = Vec::new();
            for def in registry.params_of(t) {
                if !def.is_supported() || matches!(def.code.as_str(), "_id" | "_lastUpdated") {
                    continue;
                }
                let Some(src) = &def.expression else { continue };
                let expr = match compiled.get(src) {
                    Some(e) => e.clone(),
                    None => match Expr::parse(src) {
                        Ok(e) => {
                            let e = Arc::new(e);
                            compiled.insert(src.clone(), e.clone());
                            e
                        }
                        // Every R4 expression compiles (tested); a custom one
                        // that does not is simply not indexed.
                        Err(_) => continue,
                    },
                };
                if expr.applies_to(t) {
                    params.push((def.clone(), expr));
                }
            }
            by_type.insert(t.clone(), params);
        }
        Extractor { by_type }
    }

    /// For the R4 registry, built once.
    pub fn r4() -> &'static Extractor {
        static E: OnceLock<Extractor> = OnceLock::new();
        E.get_or_init(|| Extractor::new(Registry::r4()))
    }

    /// The index values of a resource, deduplicated per parameter.
    pub fn extract(&self, resource_type: &str, resource: &Value) -> Vec<(Arc<SearchParamDef>, IndexValue)> {
        let mut out: Vec<(Arc<SearchParamDef>, IndexValue)> = Vec::new();
        let Some(params) = self.by_type.get(resource_type) else {
            return out;
        };
        let mut values = Vec::new();
        for (def, expr) in params {
            values.clear();
            for node in expr.evaluate(resource) {
                index_values(def, node, &mut values);
            }
            for v in values.drain(..) {
                if !out.iter().any(|(d, x)| Arc::ptr_eq(d, def) && *x == v) {
                    out.push((def.clone(), v));
                }
            }
        }
        out
    }
}

fn s(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn number(v: &Value) -> Option<f64> {
    match v {
        // With arbitrary_precision the number keeps its text; parse it.
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

fn index_values(def: &SearchParamDef, node: Node<'_>, out: &mut Vec<IndexValue>) {
    let v = node.value;
    match def.kind {
        ParamType::Token => token(v, out),
        ParamType::String => string(v, out),
        ParamType::Date => {
            if let Some(r) = date(v) {
                out.push(IndexValue::Date(r));
            } else if let Some(events) = v.get("event").and_then(Value::as_array) {
                // Timing
                out.extend(
                    events
                        .iter()
                        .filter_map(|e| e.as_str().and_then(date_range))
                        .map(IndexValue::Date),
                );
                if let Some(r) = v.get("repeat").and_then(|r| r.get("boundsPeriod")).and_then(date) {
                    out.push(IndexValue::Date(r));
                }
            }
        }
        ParamType::Number => {
            if let Some(n) = number(v) {
                out.push(IndexValue::Number(n));
            }
        }
        ParamType::Quantity => {
            if v.get("low").is_some() || v.get("high").is_some() {
                // Range: both ends are indexed.
                for end in ["low", "high"] {
                    if let Some(q) = v.get(end).and_then(quantity) {
                        out.push(q);
                    }
                }
            } else if let Some(q) = quantity(v) {
                out.push(q);
            }
        }
        ParamType::Reference => reference(def, v, out),
        ParamType::Uri => {
            if let Some(u) = v.as_str() {
                out.push(IndexValue::Uri(u.to_string()));
            }
        }
        ParamType::Composite | ParamType::Special => {}
    }
}

fn token(v: &Value, out: &mut Vec<IndexValue>) {
    match v {
        Value::String(code) => out.push(IndexValue::Token {
            system: None,
            code: Some(code.clone()),
        }),
        Value::Bool(b) => out.push(IndexValue::Token {
            system: None,
            code: Some(b.to_string()),
        }),
        Value::Object(_) => {
            if let Some(codings) = v.get("coding").and_then(Value::as_array) {
                // CodeableConcept: one value per coding.
                for c in codings {
                    if c.get("code").is_some() {
                        out.push(IndexValue::Token {
                            system: s(c, "system"),
                            code: s(c, "code"),
                        });
                    }
                }
            } else if v.get("code").is_some() {
                // Coding
                out.push(IndexValue::Token {
                    system: s(v, "system"),
                    code: s(v, "code"),
                });
            } else if v.get("value").is_some() {
                // Identifier, ContactPoint: the value, qualified by its system.
                out.push(IndexValue::Token {
                    system: s(v, "system"),
                    code: s(v, "value"),
                });
            }
        }
        _ => {}
    }
}

const NAME_PARTS: [&str; 5] = ["family", "given", "prefix", "suffix", "text"];
const ADDRESS_PARTS: [&str; 7] = ["line", "city", "district", "state", "postalCode", "country", "text"];

fn string(v: &Value, out: &mut Vec<IndexValue>) {
    match v {
        Value::String(t) => out.push(IndexValue::String(t.clone())),
        Value::Object(map) => {
            let parts: &[&str] = if map.contains_key("family") || map.contains_key("given") {
                &NAME_PARTS
            } else {
                &ADDRESS_PARTS
            };
            for p in parts {
                match map.get(*p) {
                    Some(Value::String(t)) => out.push(IndexValue::String(t.clone())),
                    Some(Value::Array(items)) => out.extend(
                        items
                            .iter()
                            .filter_map(Value::as_str)
                            .map(|t| IndexValue::String(t.to_string())),
                    ),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// A date, dateTime, instant or Period as an interval.
fn date(v: &Value) -> Option<DateRange> {
    match v {
        Value::String(t) => date_range(t),
        Value::Object(_) if v.get("start").is_some() || v.get("end").is_some() => {
            let lo = match v.get("start").and_then(Value::as_str) {
                Some(t) => date_range(t)?.lo,
                None => DateRange::MIN,
            };
            let hi = match v.get("end").and_then(Value::as_str) {
                Some(t) => date_range(t)?.hi,
                None => DateRange::MAX,
            };
            Some(DateRange { lo, hi })
        }
        _ => None,
    }
}

fn quantity(v: &Value) -> Option<IndexValue> {
    let value = number(v.get("value")?)?;
    Some(IndexValue::Quantity {
        value,
        system: s(v, "system"),
        // Money has a currency where a Quantity has a code.
        code: s(v, "code").or_else(|| s(v, "currency")),
        unit: s(v, "unit"),
    })
}

fn reference(def: &SearchParamDef, v: &Value, out: &mut Vec<IndexValue>) {
    match v {
        // canonical or uri used as a reference
        Value::String(url) => {
            let url = url.split('|').next().unwrap_or(url);
            out.push(IndexValue::Reference {
                rtype: None,
                id: Some(url.to_string()),
                identifier: None,
            });
        }
        Value::Object(_) => {
            let identifier = v.get("identifier").and_then(|i| Some((s(i, "system"), s(i, "value")?)));
            let (rtype, id) = match v.get("reference").and_then(Value::as_str) {
                Some(r) => match parse_reference(r) {
                    Some(x) => x,
                    None => return,
                },
                None => (None, None),
            };
            if let Some(t) = &rtype
                && !def.targets.is_empty()
                && !def.targets.iter().any(|x| x == t)
            {
                return;
            }
            if id.is_some() || identifier.is_some() {
                out.push(IndexValue::Reference { rtype, id, identifier });
            }
        }
        _ => {}
    }
}

/// `Patient/1` → (Patient, 1); `…/Patient/1/_history/2` → (Patient, 1);
/// other URLs and URNs → (None, url). Contained (`#x`) references are not
/// indexed.
fn parse_reference(r: &str) -> Option<(Option<String>, Option<String>)> {
    if r.starts_with('#') || r.is_empty() {
        return None;
    }
    if r.starts_with("urn:") {
        return Some((None, Some(r.to_string())));
    }
    let path = r.split(['?', '#']).next().unwrap_or(r);
    let segs: Vec<&str> = path.split('/').collect();
    let (t, id) = match segs.as_slice() {
        [.., t, id, "_history", _] => (*t, *id),
        [.., t, id] => (*t, *id),
        _ => return Some((None, Some(r.to_string()))),
    };
    if Registry::r4().is_resource_type(t) {
        Some((Some(t.to_string()), Some(id.to_string())))
    } else {
        Some((None, Some(r.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(rt: &str, r: &Value, code: &str) -> Vec<IndexValue> {
        Extractor::r4()
            .extract(rt, r)
            .into_iter()
            .filter(|(d, _)| d.code == code)
            .map(|(_, v)| v)
            .collect()
    }

    #[test]
    fn a_patient_is_found_by_ins_name_and_birth_date() {
        let p = json!({"resourceType": "Patient",
            "meta": {"tag": [{"system": "urn:t", "code": "demo"}], "profile": ["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"]},
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "1610512345678"}],
            "name": [{"family": "Lévêque", "given": ["Hélène", "Marie"]}],
            "birthDate": "1961-05-12", "_birthDate": {"extension": [{"url": "x", "valueCode": "y"}]},
            "address": [{"city": "Saint-Étienne", "postalCode": "42000"}],
            "active": true});
        assert_eq!(
            values("Patient", &p, "identifier"),
            [IndexValue::Token {
                system: Some("urn:oid:1.2.250.1.213.1.4.8".into()),
                code: Some("1610512345678".into())
            }]
        );
        assert_eq!(values("Patient", &p, "name").len(), 3);
        assert!(matches!(values("Patient", &p, "birthdate")[..], [IndexValue::Date(_)]));
        assert_eq!(
            values("Patient", &p, "address-city"),
            [IndexValue::String("Saint-Étienne".into())]
        );
        assert_eq!(
            values("Patient", &p, "active"),
            [IndexValue::Token {
                system: None,
                code: Some("true".into())
            }]
        );
        assert_eq!(values("Patient", &p, "_tag").len(), 1);
        assert_eq!(values("Patient", &p, "_profile").len(), 1);
    }

    #[test]
    fn an_observation_is_found_by_code_value_date_and_patient() {
        let o = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": "Poids"},
            "subject": {"reference": "Patient/p1"},
            "effectivePeriod": {"start": "2025-01-01", "end": "2025-01-31"},
            "valueQuantity": {"value": 72, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}});
        assert_eq!(
            values("Observation", &o, "code"),
            [IndexValue::Token {
                system: Some("http://loinc.org".into()),
                code: Some("29463-7".into())
            }]
        );
        assert_eq!(
            values("Observation", &o, "value-quantity"),
            [IndexValue::Quantity {
                value: 72.0,
                system: Some("http://unitsofmeasure.org".into()),
                code: Some("kg".into()),
                unit: Some("kg".into())
            }]
        );
        let patient = IndexValue::Reference {
            rtype: Some("Patient".into()),
            id: Some("p1".into()),
            identifier: None,
        };
        assert_eq!(values("Observation", &o, "patient"), std::slice::from_ref(&patient));
        assert_eq!(values("Observation", &o, "subject"), [patient]);
        let [IndexValue::Date(d)] = values("Observation", &o, "date")[..] else {
            panic!()
        };
        assert!(d.hi > d.lo);
    }

    #[test]
    fn references_keep_only_allowed_targets() {
        let o = json!({"resourceType": "Observation", "subject": {"reference": "Group/g1"}});
        assert!(values("Observation", &o, "patient").is_empty());
        assert_eq!(values("Observation", &o, "subject").len(), 1);
        let sr = json!({"resourceType": "ServiceRequest", "requester": {"reference": "http://x/fhir/Practitioner/7/_history/2"},
                        "subject": {"identifier": {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "1"}}});
        assert_eq!(
            values("ServiceRequest", &sr, "requester"),
            [IndexValue::Reference {
                rtype: Some("Practitioner".into()),
                id: Some("7".into()),
                identifier: None
            }]
        );
        assert!(matches!(
            &values("ServiceRequest", &sr, "subject")[..],
            [IndexValue::Reference {
                identifier: Some(_),
                ..
            }]
        ));
    }
}
