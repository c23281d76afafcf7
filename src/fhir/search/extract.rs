//! What a resource is indexed under: each search parameter's FHIRPath
//! evaluated on the resource, and each element found turned into index
//! values by the parameter's type and the element's shape (or the type its
//! choice-element key names).
//!
//! Mapping choices worth knowing:
//! - token: a ContactPoint keeps its `system` (`phone`, `email`) as the
//!   token system, so `telecom=phone|0612345678` works as well as
//!   `telecom=0612345678`; a CodeableConcept gives one value per coding that
//!   has a code (its `text` is not a token).
//! - string: a HumanName gives family, each given, prefix, suffix and text;
//!   an Address each line, city, district, state, postalCode, country and
//!   text; one value each, as written.
//! - date: a Period is one interval (an open end is `DateRange::MIN` /
//!   `MAX`); a Timing gives each event and its `repeat.boundsPeriod`; text
//!   that is not a valid FHIR date is not indexed.
//! - number / quantity: a Range gives its low and its high as two values;
//!   Money is a quantity in system `urn:iso:std:iso:4217` with the currency
//!   as code.
//! - reference: see [`Extractor::parse_reference`]; a whole resource found
//!   by the expression (`Bundle.entry[0].resource`) is a reference to its
//!   type and id.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

use super::model::{DateRange, IndexValue, ParamType};
use super::registry::{Registry, SearchParamDef};
use super::values::date_range;
use crate::fhir::fhirpath::{Expr, Node};

/// The system of a Money amount's currency code (ISO 4217).
const CURRENCY_SYSTEM: &str = "urn:iso:std:iso:4217";

/// A parameter of one resource type, with its expression compiled and cut
/// down to the branches that apply to that type.
struct Compiled {
    def: Arc<SearchParamDef>,
    expr: Expr,
}

pub struct Extractor {
    by_type: HashMap<String, Vec<Compiled>>,
    /// Sorted, to tell `…/Patient/1` (a resource) from `…/page/1`.
    resource_types: Vec<String>,
    /// Parameters whose expression did not parse (custom definitions
    /// only: every R4 one parses), as (url, error): they are not indexed.
    skipped: Vec<(String, String)>,
}

impl Extractor {
    pub fn new(registry: &Registry) -> Extractor {
        let mut parsed: HashMap<&str, Option<Expr>> = HashMap::new();
        let mut skipped = Vec::new();
        let mut by_type = HashMap::new();
        for t in registry.resource_types() {
            let mut params = Vec::new();
            for def in registry.params_of(t) {
                if !def.is_supported() || matches!(def.code.as_str(), "_id" | "_lastUpdated") {
                    continue;
                }
                let Some(src) = def.expression.as_deref() else { continue };
                let expr = parsed.entry(src).or_insert_with(|| match Expr::parse(src) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        skipped.push((def.url.clone(), e.to_string()));
                        None
                    }
                });
                if let Some(expr) = expr.as_ref().and_then(|e| e.for_resource_type(t)) {
                    params.push(Compiled { def: def.clone(), expr });
                }
            }
            by_type.insert(t.clone(), params);
        }
        let mut resource_types = registry.resource_types().to_vec();
        resource_types.sort_unstable();
        Extractor {
            by_type,
            resource_types,
            skipped,
        }
    }

    /// For the R4 registry, built once.
    pub fn r4() -> &'static Extractor {
        static E: OnceLock<Extractor> = OnceLock::new();
        E.get_or_init(|| Extractor::new(Registry::r4()))
    }

    /// What decides the index rows of a resource type: its parameters
    /// (code, definition, type, expression), hashed. When it changes (a
    /// package parameter added or changed), resources stored before lack
    /// rows or have stale ones and must be indexed again.
    pub fn fingerprint(&self, resource_type: &str) -> i64 {
        let mut text = String::new();
        for c in self.by_type.get(resource_type).into_iter().flatten() {
            text.push_str(&c.def.code);
            text.push('\u{1f}');
            text.push_str(&c.def.url);
            text.push('\u{1f}');
            text.push_str(c.def.kind.as_str());
            text.push('\u{1f}');
            text.push_str(c.def.expression.as_deref().unwrap_or_default());
            text.push('\u{1e}');
        }
        xxhash_rust::xxh3::xxh3_64(text.as_bytes()) as i64
    }

    /// Parameters left out because their expression does not parse, as
    /// (url, error).
    pub fn skipped(&self) -> &[(String, String)] {
        &self.skipped
    }

    /// The values of one parameter of a resource (e.g. its `patient`).
    pub fn extract_param(&self, resource_type: &str, code: &str, resource: &Value) -> Vec<IndexValue> {
        let mut out = Vec::new();
        let Some(c) = self
            .by_type
            .get(resource_type)
            .and_then(|ps| ps.iter().find(|c| c.def.code == code))
        else {
            return out;
        };
        let mut nodes = Vec::new();
        c.expr.evaluate_into(resource, &mut nodes);
        for node in &nodes {
            self.index_values(&c.def, *node, &mut out);
        }
        out
    }

    /// The index values of one resource: (parameter, value), without
    /// duplicates within a parameter. `_id` and `_lastUpdated` are not
    /// included (the store has them as columns), nor composite, special and
    /// full-text parameters.
    pub fn extract(&self, resource_type: &str, resource: &Value) -> Vec<(&SearchParamDef, IndexValue)> {
        let Some(params) = self.by_type.get(resource_type) else {
            return Vec::new();
        };
        // Enough for a typical resource without growing.
        let mut out = Vec::with_capacity(32);
        let mut nodes = Vec::new();
        let mut values = Vec::new();
        for c in params {
            nodes.clear();
            c.expr.evaluate_into(resource, &mut nodes);
            if nodes.is_empty() {
                continue;
            }
            for node in &nodes {
                self.index_values(&c.def, *node, &mut values);
            }
            let start = out.len();
            for v in values.drain(..) {
                if !out[start..]
                    .iter()
                    .any(|(_, x): &(&SearchParamDef, IndexValue)| *x == v)
                {
                    out.push((&*c.def, v));
                }
            }
        }
        out
    }

    fn index_values(&self, def: &SearchParamDef, node: Node<'_>, out: &mut Vec<IndexValue>) {
        let (v, hint) = (node.value, node.type_hint);
        match def.kind {
            ParamType::Token => token(v, out),
            ParamType::String => string(v, out),
            ParamType::Date => date(v, hint, out),
            ParamType::Number => number_values(v, hint, out),
            ParamType::Quantity => quantity_values(v, hint, out),
            ParamType::Reference => self.reference(def, v, out),
            ParamType::Uri => {
                if let Value::String(u) = v
                    && !u.is_empty()
                {
                    out.push(IndexValue::Uri(u.clone()));
                }
            }
            ParamType::Composite | ParamType::Special => {}
        }
    }

    fn reference(&self, def: &SearchParamDef, v: &Value, out: &mut Vec<IndexValue>) {
        let allowed = |t: &str| def.targets.is_empty() || def.targets.iter().any(|x| x == t);
        let map = match v {
            // A canonical or uri: the URL, whatever its target.
            Value::String(url) => {
                let url = url.split_once('|').map_or(url.as_str(), |(u, _)| u);
                if !url.is_empty() {
                    out.push(IndexValue::Reference {
                        rtype: None,
                        id: Some(url.to_string()),
                        identifier: None,
                    });
                }
                return;
            }
            Value::Object(map) => map,
            _ => return,
        };
        if let Some(rt) = str_of(map, "resourceType") {
            if let Some(id) = str_of(map, "id")
                && allowed(rt)
            {
                out.push(IndexValue::Reference {
                    rtype: Some(rt.to_string()),
                    id: Some(id.to_string()),
                    identifier: None,
                });
            }
            return;
        }
        let identifier = map
            .get("identifier")
            .and_then(Value::as_object)
            .and_then(|i| Some((str_of(i, "system").map(str::to_string), str_of(i, "value")?.to_string())));
        let (rtype, id) = match str_of(map, "reference").and_then(|r| self.parse_reference(r)) {
            Some((rtype, id)) => (rtype, Some(id)),
            None => (None, None),
        };
        if rtype.is_some_and(|t| !allowed(t)) || (id.is_none() && identifier.is_none()) {
            return;
        }
        out.push(IndexValue::Reference {
            rtype: rtype.map(str::to_string),
            id,
            identifier,
        });
    }

    /// A `Reference.reference` as (type, id):
    /// - `Patient/123`, `Patient/123/_history/2` and absolute
    ///   `https://host/base/Patient/123[/_history/2]` → (`Patient`, `123`),
    ///   when the type is a resource type; the version is dropped;
    /// - any other URL, and `urn:uuid:` / `urn:oid:` → (None, the text);
    /// - `#contained` and empty → `None`: not indexed.
    pub fn parse_reference<'r>(&self, r: &'r str) -> Option<(Option<&'r str>, String)> {
        if r.is_empty() || r.starts_with('#') {
            return None;
        }
        if r.starts_with("urn:") {
            return Some((None, r.to_string()));
        }
        let path = r.split(['?', '#']).next().unwrap_or(r);
        let mut segs = path.rsplit('/');
        let mut id = segs.next();
        let mut t = segs.next();
        if t == Some("_history") {
            id = segs.next();
            t = segs.next();
        }
        match (t, id) {
            (Some(t), Some(id)) if !id.is_empty() && self.is_resource_type(t) => Some((Some(t), id.to_string())),
            _ => Some((None, r.to_string())),
        }
    }

    fn is_resource_type(&self, t: &str) -> bool {
        self.resource_types.binary_search_by(|x| x.as_str().cmp(t)).is_ok()
    }
}

fn str_of<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

fn token(v: &Value, out: &mut Vec<IndexValue>) {
    let code_only = |code: String| IndexValue::Token {
        system: None,
        code: Some(code),
    };
    match v {
        // code, string, id, uri…
        Value::String(s) if !s.is_empty() => out.push(code_only(s.clone())),
        Value::Bool(b) => out.push(code_only(b.to_string())),
        Value::Number(n) => out.push(code_only(n.to_string())),
        Value::Object(map) => {
            if let Some(codings) = map.get("coding") {
                // CodeableConcept
                for c in codings.as_array().into_iter().flatten().filter_map(Value::as_object) {
                    coding(c, out);
                }
            } else if map.contains_key("code") {
                coding(map, out);
            } else if let Some(value) = str_of(map, "value") {
                // Identifier, ContactPoint
                out.push(IndexValue::Token {
                    system: str_of(map, "system").map(str::to_string),
                    code: Some(value.to_string()),
                });
            }
        }
        _ => {}
    }
}

fn coding(c: &Map<String, Value>, out: &mut Vec<IndexValue>) {
    if let Some(code) = str_of(c, "code") {
        out.push(IndexValue::Token {
            system: str_of(c, "system").map(str::to_string),
            code: Some(code.to_string()),
        });
    }
}

/// The searchable parts of a HumanName and of an Address (no element is in
/// both but `text`).
const STRING_PARTS: [&str; 11] = [
    "family",
    "given",
    "prefix",
    "suffix",
    "text",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
];

fn string(v: &Value, out: &mut Vec<IndexValue>) {
    match v {
        Value::String(s) if !s.is_empty() => out.push(IndexValue::String(s.clone())),
        Value::Object(map) => {
            for part in STRING_PARTS {
                match map.get(part) {
                    Some(Value::String(s)) => out.push(IndexValue::String(s.clone())),
                    Some(Value::Array(items)) => out.extend(
                        items
                            .iter()
                            .filter_map(Value::as_str)
                            .map(|s| IndexValue::String(s.to_string())),
                    ),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn date(v: &Value, hint: Option<&str>, out: &mut Vec<IndexValue>) {
    match v {
        Value::String(s) => out.extend(date_range(s).map(IndexValue::Date)),
        Value::Object(map) => {
            let timing = hint == Some("Timing") || map.contains_key("event") || map.contains_key("repeat");
            if timing {
                let events = map.get("event").and_then(Value::as_array).into_iter().flatten();
                out.extend(
                    events
                        .filter_map(Value::as_str)
                        .filter_map(date_range)
                        .map(IndexValue::Date),
                );
                let bounds = map
                    .get("repeat")
                    .and_then(|r| r.get("boundsPeriod"))
                    .and_then(Value::as_object);
                out.extend(bounds.and_then(period).map(IndexValue::Date));
            } else {
                out.extend(period(map).map(IndexValue::Date));
            }
        }
        _ => {}
    }
}

/// A Period as one interval. `None` when it has neither bound, or a bound
/// that is not a valid date, or ends before it starts.
fn period(map: &Map<String, Value>) -> Option<DateRange> {
    let (start, end) = (map.get("start"), map.get("end"));
    if start.is_none() && end.is_none() {
        return None;
    }
    let lo = match start {
        Some(s) => date_range(s.as_str()?)?.lo,
        None => DateRange::MIN,
    };
    let hi = match end {
        Some(e) => date_range(e.as_str()?)?.hi,
        None => DateRange::MAX,
    };
    (lo <= hi).then_some(DateRange { lo, hi })
}

fn decimal(v: &Value) -> Option<f64> {
    // With arbitrary_precision the number is kept as written; this parses it.
    v.as_f64().filter(|f| f.is_finite())
}

fn is_range(map: &Map<String, Value>, hint: Option<&str>) -> bool {
    hint == Some("Range") || (!map.contains_key("value") && (map.contains_key("low") || map.contains_key("high")))
}

fn number_values(v: &Value, hint: Option<&str>, out: &mut Vec<IndexValue>) {
    match v {
        Value::Number(_) => out.extend(decimal(v).map(IndexValue::Number)),
        Value::Object(map) if is_range(map, hint) => {
            for end in ["low", "high"] {
                out.extend(
                    map.get(end)
                        .and_then(|q| q.get("value"))
                        .and_then(decimal)
                        .map(IndexValue::Number),
                );
            }
        }
        // A Quantity where a number is expected: its value.
        Value::Object(map) => out.extend(map.get("value").and_then(decimal).map(IndexValue::Number)),
        _ => {}
    }
}

fn quantity_values(v: &Value, hint: Option<&str>, out: &mut Vec<IndexValue>) {
    let Value::Object(map) = v else { return };
    if is_range(map, hint) {
        for end in ["low", "high"] {
            out.extend(map.get(end).and_then(Value::as_object).and_then(quantity));
        }
    } else {
        out.extend(quantity(map));
    }
}

/// A Quantity (or Age, Duration, Distance, Count, SimpleQuantity) or Money.
fn quantity(map: &Map<String, Value>) -> Option<IndexValue> {
    let value = decimal(map.get("value")?)?;
    let owned = |k: &str| str_of(map, k).map(str::to_string);
    Some(match str_of(map, "currency") {
        Some(currency) => IndexValue::Quantity {
            value,
            system: Some(CURRENCY_SYSTEM.to_string()),
            code: Some(currency.to_string()),
            unit: None,
        },
        None => IndexValue::Quantity {
            value,
            system: owned("system"),
            code: owned("code"),
            unit: owned("unit"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::search::values::format_instant;
    use serde_json::json;

    fn values(r: &Value, code: &str) -> Vec<IndexValue> {
        let rt = r["resourceType"].as_str().unwrap();
        Extractor::r4()
            .extract(rt, r)
            .into_iter()
            .filter(|(d, _)| d.code == code)
            .map(|(_, v)| v)
            .collect()
    }

    fn tok(system: Option<&str>, code: &str) -> IndexValue {
        IndexValue::Token {
            system: system.map(str::to_string),
            code: Some(code.to_string()),
        }
    }

    fn text(s: &str) -> IndexValue {
        IndexValue::String(s.to_string())
    }

    fn reference(t: &str, id: &str) -> IndexValue {
        IndexValue::Reference {
            rtype: Some(t.to_string()),
            id: Some(id.to_string()),
            identifier: None,
        }
    }

    fn url_ref(url: &str) -> IndexValue {
        IndexValue::Reference {
            rtype: None,
            id: Some(url.to_string()),
            identifier: None,
        }
    }

    fn day(d: &str) -> IndexValue {
        IndexValue::Date(date_range(d).unwrap())
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p1",
            "meta": {
                "lastUpdated": "2026-01-01T00:00:00Z",
                "tag": [{"system": "urn:apa:tag", "code": "demo"}],
                "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
                "profile": ["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"]},
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "2610512345678"},
                           {"type": {"text": "no value"}}],
            "active": true,
            "name": [{"use": "official", "family": "Lévêque", "given": ["Hélène", "Marie-Ève"], "prefix": ["Mme"]},
                     {"text": "Hélène Lévêque"}],
            "telecom": [{"system": "phone", "value": "+33612345678"}, {"system": "email", "value": "h.leveque@exemple.fr"}],
            "gender": "female",
            "birthDate": "1961-05-12",
            "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                          "valueDateTime": "1961-05-12T08:30:00+02:00"}]},
            "address": [{"line": ["12 rue des Écoles", "Bât. B"], "city": "Saint-Étienne", "postalCode": "42000", "country": "FR"}],
            "generalPractitioner": [{"reference": "Practitioner/dr1"}],
            "managingOrganization": {"reference": "https://apa.example.fr/fhir/Organization/o1/_history/4"}})
    }

    #[test]
    fn a_patient_is_found_by_ins_name_birth_date_address_and_telecom() {
        let p = patient();
        assert_eq!(
            values(&p, "identifier"),
            [tok(Some("urn:oid:1.2.250.1.213.1.4.8"), "2610512345678")],
            "an identifier without value is not indexed"
        );
        assert_eq!(
            values(&p, "name"),
            [
                text("Lévêque"),
                text("Hélène"),
                text("Marie-Ève"),
                text("Mme"),
                text("Hélène Lévêque")
            ]
        );
        assert_eq!(values(&p, "family"), [text("Lévêque")]);
        assert_eq!(values(&p, "given"), [text("Hélène"), text("Marie-Ève")]);
        assert_eq!(
            values(&p, "birthdate"),
            [day("1961-05-12")],
            "the extension is not in the way"
        );
        assert_eq!(
            values(&p, "address"),
            [
                text("12 rue des Écoles"),
                text("Bât. B"),
                text("Saint-Étienne"),
                text("42000"),
                text("FR")
            ]
        );
        assert_eq!(values(&p, "address-city"), [text("Saint-Étienne")]);
        assert_eq!(values(&p, "address-postalcode"), [text("42000")]);
        assert_eq!(values(&p, "gender"), [tok(None, "female")]);
        assert_eq!(values(&p, "active"), [tok(None, "true")]);
        assert_eq!(values(&p, "deceased"), [tok(None, "false")]);
        assert_eq!(values(&p, "phone"), [tok(Some("phone"), "+33612345678")]);
        assert_eq!(values(&p, "email"), [tok(Some("email"), "h.leveque@exemple.fr")]);
        assert_eq!(values(&p, "telecom").len(), 2);
        assert_eq!(values(&p, "general-practitioner"), [reference("Practitioner", "dr1")]);
        assert_eq!(
            values(&p, "organization"),
            [reference("Organization", "o1")],
            "absolute URL, version dropped"
        );
        assert!(values(&p, "_id").is_empty() && values(&p, "_lastUpdated").is_empty());
    }

    #[test]
    fn meta_gives_tag_profile_and_security() {
        let p = patient();
        assert_eq!(values(&p, "_tag"), [tok(Some("urn:apa:tag"), "demo")]);
        assert_eq!(
            values(&p, "_security"),
            [tok(
                Some("http://terminology.hl7.org/CodeSystem/v3-Confidentiality"),
                "R"
            )]
        );
        assert_eq!(
            values(&p, "_profile"),
            [IndexValue::Uri(
                "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient".into()
            )]
        );
    }

    fn weight() -> Value {
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"},
                                {"system": "http://snomed.info/sct", "code": "27113001"}], "text": "Poids"},
            "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": "Encounter/e1"},
            "performer": [{"reference": "Practitioner/dr1"}, {"reference": "#contained-one"}],
            "effectiveDateTime": "2026-03-05T10:15:00+01:00",
            "valueQuantity": {"value": 72, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}})
    }

    #[test]
    fn an_observation_is_found_by_code_value_date_and_patient() {
        let o = weight();
        let loinc = tok(Some("http://loinc.org"), "29463-7");
        let sct = tok(Some("http://snomed.info/sct"), "27113001");
        assert_eq!(values(&o, "code"), [loinc.clone(), sct.clone()], "text is not a token");
        assert_eq!(values(&o, "combo-code"), [loinc, sct]);
        assert_eq!(values(&o, "status"), [tok(None, "final")]);
        assert_eq!(values(&o, "category").len(), 1);
        assert_eq!(
            values(&o, "value-quantity"),
            [IndexValue::Quantity {
                value: 72.0,
                system: Some("http://unitsofmeasure.org".into()),
                code: Some("kg".into()),
                unit: Some("kg".into())
            }]
        );
        assert!(values(&o, "value-date").is_empty() && values(&o, "value-string").is_empty());
        assert_eq!(values(&o, "date"), [day("2026-03-05T10:15:00+01:00")]);
        assert_eq!(values(&o, "subject"), [reference("Patient", "p1")]);
        assert_eq!(values(&o, "patient"), [reference("Patient", "p1")]);
        assert_eq!(values(&o, "encounter"), [reference("Encounter", "e1")]);
        assert_eq!(
            values(&o, "performer"),
            [reference("Practitioner", "dr1")],
            "contained references are not indexed"
        );
        assert!(
            values(&o, "code-value-quantity").is_empty(),
            "composite parameters are skipped"
        );
    }

    #[test]
    fn a_period_is_one_interval_open_at_a_missing_end() {
        let mut o = weight();
        let obj = o.as_object_mut().unwrap();
        obj.remove("effectiveDateTime");
        obj.insert("effectivePeriod".into(), json!({"start": "2026-03-01"}));
        let [IndexValue::Date(d)] = values(&o, "date")[..] else {
            panic!("{:?}", values(&o, "date"))
        };
        assert_eq!(format_instant(d.lo), "2026-03-01T00:00:00.000000Z");
        assert_eq!(d.hi, DateRange::MAX);
        o["effectivePeriod"] = json!({"start": "2026-03-01", "end": "2026-03"});
        let [IndexValue::Date(d)] = values(&o, "date")[..] else {
            panic!()
        };
        assert_eq!(format_instant(d.hi), "2026-03-31T23:59:59.999999Z");
        o["effectivePeriod"] = json!({"start": "March 2026"});
        assert!(values(&o, "date").is_empty(), "an invalid date is not indexed");
        o["effectivePeriod"] = json!({"end": "2026-03-01"});
        let [IndexValue::Date(d)] = values(&o, "date")[..] else {
            panic!()
        };
        assert_eq!(d.lo, DateRange::MIN);
    }

    #[test]
    fn a_service_request_is_found_by_subject_requester_status_and_date() {
        let sr = json!({"resourceType": "ServiceRequest", "id": "sr1",
            "status": "active", "intent": "order",
            "identifier": [{"system": "urn:apa:prescription", "value": "RX-2026-0001"}],
            "code": {"coding": [{"system": "urn:apa:activity", "code": "APA"}]},
            "subject": {"reference": "Patient/p1", "identifier": {"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "2610512345678"}},
            "requester": {"reference": "Practitioner/dr1", "display": "Dr Martin"},
            "performer": [{"identifier": {"value": "eapa-42"}}, {"display": "only a name"}],
            "authoredOn": "2026-03-05",
            "occurrencePeriod": {"start": "2026-03-10", "end": "2026-06-10"}});
        assert_eq!(
            values(&sr, "subject"),
            [IndexValue::Reference {
                rtype: Some("Patient".into()),
                id: Some("p1".into()),
                identifier: Some((Some("urn:oid:1.2.250.1.213.1.4.8".into()), "2610512345678".into()))
            }]
        );
        assert_eq!(values(&sr, "requester"), [reference("Practitioner", "dr1")]);
        assert_eq!(
            values(&sr, "performer"),
            [IndexValue::Reference {
                rtype: None,
                id: None,
                identifier: Some((None, "eapa-42".into()))
            }],
            "an identifier alone is a value; a display alone is not"
        );
        assert_eq!(values(&sr, "status"), [tok(None, "active")]);
        assert_eq!(values(&sr, "intent"), [tok(None, "order")]);
        assert_eq!(
            values(&sr, "identifier"),
            [tok(Some("urn:apa:prescription"), "RX-2026-0001")]
        );
        assert_eq!(values(&sr, "authored"), [day("2026-03-05")]);
        let [IndexValue::Date(d)] = values(&sr, "occurrence")[..] else {
            panic!()
        };
        assert_eq!(
            (d.lo, d.hi),
            (
                date_range("2026-03-10").unwrap().lo,
                date_range("2026-06-10").unwrap().hi
            )
        );
    }

    #[test]
    fn an_encounter_is_found_by_class_period_and_participants() {
        let e = json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "classHistory": [{"class": {"code": "IMP"}, "period": {"start": "2020"}}],
            "type": [{"coding": [{"system": "urn:apa:encounter", "code": "bilan-initial"}]}],
            "subject": {"reference": "Patient/p1"},
            "participant": [{"individual": {"reference": "Practitioner/dr1"}},
                            {"individual": {"reference": "RelatedPerson/rp1"}}],
            "period": {"start": "2026-03-05T09:00:00+01:00", "end": "2026-03-05T10:00:00+01:00"},
            "length": {"value": 60, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"},
            "reasonCode": [{"text": "only text"}],
            "serviceProvider": {"reference": "Organization/o1"}});
        assert_eq!(
            values(&e, "class"),
            [tok(Some("http://terminology.hl7.org/CodeSystem/v3-ActCode"), "AMB")],
            "classHistory is not class[x]"
        );
        assert_eq!(values(&e, "type"), [tok(Some("urn:apa:encounter"), "bilan-initial")]);
        assert_eq!(values(&e, "patient"), [reference("Patient", "p1")]);
        assert_eq!(values(&e, "practitioner"), [reference("Practitioner", "dr1")]);
        assert_eq!(values(&e, "participant").len(), 2);
        assert_eq!(values(&e, "service-provider"), [reference("Organization", "o1")]);
        assert!(values(&e, "reason-code").is_empty());
        assert_eq!(values(&e, "length").len(), 1);
        let [IndexValue::Date(d)] = values(&e, "date")[..] else {
            panic!()
        };
        assert_eq!(format_instant(d.lo), "2026-03-05T08:00:00.000000Z");
        assert_eq!(format_instant(d.hi), "2026-03-05T09:00:00.999999Z");
    }

    #[test]
    fn clinical_patient_keeps_only_references_to_patients() {
        let mut o = weight();
        for (subject, patient) in [
            (json!({"reference": "Patient/p1"}), vec![reference("Patient", "p1")]),
            (json!({"reference": "Group/g1"}), vec![]),
            (
                json!({"reference": "https://other.example/fhir/Patient/9"}),
                vec![reference("Patient", "9")],
            ),
            (
                json!({"reference": "urn:uuid:5b2f0a5c-9d1b-4b3e-9b55-0f5f0a5c2f1a", "type": "Patient"}),
                vec![url_ref("urn:uuid:5b2f0a5c-9d1b-4b3e-9b55-0f5f0a5c2f1a")],
            ),
            (
                json!({"reference": "urn:uuid:5b2f0a5c-9d1b-4b3e-9b55-0f5f0a5c2f1a"}),
                vec![],
            ),
        ] {
            o["subject"] = subject.clone();
            assert_eq!(values(&o, "patient"), patient, "{subject}");
            assert_eq!(values(&o, "subject").len(), 1, "{subject}");
        }
        // The same definition on another type takes that type's branch.
        let c = json!({"resourceType": "Condition", "subject": {"reference": "Patient/p2"}});
        assert_eq!(values(&c, "patient"), [reference("Patient", "p2")]);
        let a = json!({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/p3"}});
        assert_eq!(values(&a, "patient"), [reference("Patient", "p3")]);
    }

    #[test]
    fn references_outside_the_targets_and_odd_urls() {
        let x = Extractor::r4();
        assert_eq!(x.parse_reference("Patient/1"), Some((Some("Patient"), "1".into())));
        assert_eq!(
            x.parse_reference("Patient/1/_history/2"),
            Some((Some("Patient"), "1".into()))
        );
        assert_eq!(
            x.parse_reference("https://h/fhir/Patient/1/_history/2"),
            Some((Some("Patient"), "1".into()))
        );
        assert_eq!(
            x.parse_reference("https://h/page/1"),
            Some((None, "https://h/page/1".into()))
        );
        assert_eq!(x.parse_reference("urn:oid:1.2.3"), Some((None, "urn:oid:1.2.3".into())));
        assert_eq!(x.parse_reference("#c1"), None);
        assert_eq!(x.parse_reference(""), None);
        // ServiceRequest.requester cannot be a Group.
        let sr = json!({"resourceType": "ServiceRequest", "requester": {"reference": "Group/g"}});
        assert!(values(&sr, "requester").is_empty());
    }

    #[test]
    fn canonicals_are_urls_without_version() {
        let pd = json!({"resourceType": "PlanDefinition", "url": "https://apa.example.fr/PlanDefinition/parcours",
            "library": ["https://apa.example.fr/Library/logic|1.2.0"],
            "relatedArtifact": [{"type": "depends-on", "resource": "https://apa.example.fr/Library/other"},
                                {"type": "citation", "resource": "https://apa.example.fr/Library/ignored"}]});
        assert_eq!(
            values(&pd, "depends-on"),
            [
                url_ref("https://apa.example.fr/Library/other"),
                url_ref("https://apa.example.fr/Library/logic")
            ]
        );
        assert_eq!(
            values(&pd, "url"),
            [IndexValue::Uri("https://apa.example.fr/PlanDefinition/parcours".into())]
        );
    }

    #[test]
    fn ranges_money_and_timings() {
        let c = json!({"resourceType": "Condition", "onsetRange": {"low": {"value": 40, "unit": "a"}, "high": {"value": 50.5, "unit": "a"}}});
        let q = |value: f64| IndexValue::Quantity {
            value,
            system: None,
            code: None,
            unit: Some("a".into()),
        };
        assert_eq!(values(&c, "onset-age"), [q(40.0), q(50.5)]);
        let ci = json!({"resourceType": "ChargeItem", "priceOverride": {"value": 12.50, "currency": "EUR"}});
        assert_eq!(
            values(&ci, "price-override"),
            [IndexValue::Quantity {
                value: 12.5,
                system: Some(CURRENCY_SYSTEM.into()),
                code: Some("EUR".into()),
                unit: None
            }]
        );
        let cp = json!({"resourceType": "CarePlan", "activity": [{"detail": {"scheduledTiming": {
            "event": ["2026-03-10", "not a date"],
            "repeat": {"boundsPeriod": {"start": "2026-03-01", "end": "2026-06-30"}, "frequency": 2, "period": 1, "periodUnit": "wk"}}}}]});
        let dates = values(&cp, "activity-date");
        assert_eq!(dates.len(), 2);
        assert_eq!(dates[0], day("2026-03-10"));
        let ra = json!({"resourceType": "RiskAssessment", "prediction": [{"probabilityDecimal": 0.25}, {"probabilityRange": {"low": {"value": 0.1}}}]});
        assert_eq!(
            values(&ra, "probability"),
            [IndexValue::Number(0.25), IndexValue::Number(0.1)]
        );
    }

    #[test]
    fn a_bundle_refers_to_its_first_resource() {
        let b = json!({"resourceType": "Bundle", "type": "document",
            "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"},
            "entry": [{"resource": {"resourceType": "Composition", "id": "c1"}}, {"resource": {"resourceType": "Patient", "id": "p1"}}]});
        assert_eq!(values(&b, "composition"), [reference("Composition", "c1")]);
        assert!(values(&b, "message").is_empty(), "a Composition is not a MessageHeader");
        assert_eq!(values(&b, "type"), [tok(None, "document")]);
    }

    #[test]
    fn every_type_extracts_without_failing_and_every_expression_compiles() {
        let x = Extractor::r4();
        assert!(x.skipped().is_empty(), "{:#?}", x.skipped());
        for t in Registry::r4().resource_types() {
            let r = json!({"resourceType": t, "id": "x", "meta": {"tag": [{"code": "t"}]}, "text": {"div": "<div/>"}});
            let v = x.extract(t, &r);
            assert!(v.iter().any(|(d, _)| d.code == "_tag"), "{t}");
        }
        assert!(x.extract("NotAType", &json!({})).is_empty());
    }

    /// `cargo test --release extraction_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run in release"]
    fn extraction_speed() {
        let registry = Registry::r4();
        let start = std::time::Instant::now();
        let x = Extractor::new(registry);
        println!("Extractor::new: {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
        for (name, r) in [("Patient", patient()), ("Observation", weight())] {
            // The best of several batches: the machine is shared.
            let n = 2_000;
            let mut best = f64::MAX;
            let mut count = 0;
            for _ in 0..20 {
                let start = std::time::Instant::now();
                for _ in 0..n {
                    count = std::hint::black_box(x.extract(name, std::hint::black_box(&r))).len();
                }
                best = best.min(start.elapsed().as_secs_f64() * 1e6 / n as f64);
            }
            println!("{name}: {best:.2} µs/resource, {count} values");
        }
    }
}
