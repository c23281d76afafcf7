//! The part of FHIRPath that the FHIR R4 search-parameter definitions use,
//! over `serde_json::Value`: paths, unions, `as` / `.as()` on choice
//! elements, `where(resolve() is Type)`, `where(field='value')`, `[n]`, and
//! the one boolean expression of `Patient.deceased`. Expressions are
//! compiled once; evaluation walks the JSON without copying it.

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("FHIRPath not supported: {0}")]
pub struct FhirPathError(String);

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Child(String),
    /// `as Type`: keep the nodes of that type (choice elements).
    As(String),
    /// `where(resolve() is Type)`
    ResolvesTo(String),
    /// `where(field='value')`
    FieldEquals(String, String),
    Index(usize),
}

/// One `|`-separated branch: a root type name and steps.
#[derive(Debug, Clone)]
struct Branch {
    root: String,
    steps: Vec<Step>,
    /// `X.exists() and X != false`: yields `true` / `false`.
    truth: bool,
}

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct Expr {
    branches: Vec<Branch>,
}

/// A node of the result: a JSON value and, when the element name told it,
/// its FHIR type (`valueQuantity` → "Quantity", `onsetDateTime` → "dateTime").
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub value: &'a Value,
    pub type_hint: Option<&'a str>,
}

const PRIMITIVES: [&str; 19] = [
    "boolean",
    "integer",
    "string",
    "decimal",
    "uri",
    "url",
    "canonical",
    "base64Binary",
    "instant",
    "date",
    "dateTime",
    "time",
    "code",
    "oid",
    "id",
    "markdown",
    "unsignedInt",
    "positiveInt",
    "uuid",
];

/// The FHIR type a choice-element suffix names: `DateTime` → `dateTime`.
fn type_of_suffix(suffix: &str) -> &str {
    for p in PRIMITIVES {
        if p.len() == suffix.len() && p[..1].eq_ignore_ascii_case(&suffix[..1]) && p[1..] == suffix[1..] {
            return p;
        }
    }
    suffix
}

fn split_top(src: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    for (i, c) in src.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == sep && depth == 0 && !quoted => {
                out.push(&src[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&src[start..]);
    out
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_branch(src: &str) -> Result<Branch, FhirPathError> {
    let err = || FhirPathError(src.to_string());
    let mut s = src.trim();
    // `X.exists() and X != false`
    if let Some((left, _)) = s.split_once(" and ") {
        let path = left.trim().strip_suffix(".exists()").ok_or_else(err)?;
        let mut b = parse_branch(path)?;
        b.truth = true;
        return Ok(b);
    }
    // `(Path as Type)` possibly followed by `.more`
    let mut steps = Vec::new();
    let mut root = String::new();
    if let Some(inner) = s.strip_prefix('(') {
        let close = inner.find(')').ok_or_else(err)?;
        let (group, rest) = (&inner[..close], &inner[close + 1..]);
        let (path, ty) = group.split_once(" as ").ok_or_else(err)?;
        let b = parse_branch(path)?;
        root = b.root;
        steps = b.steps;
        steps.push(Step::As(ty.trim().to_string()));
        s = rest.trim_start_matches('.');
        if s.is_empty() {
            return Ok(Branch {
                root,
                steps,
                truth: false,
            });
        }
    } else if let Some((path, ty)) = s.split_once(" as ") {
        let mut b = parse_branch(path)?;
        b.steps.push(Step::As(ty.trim().to_string()));
        return Ok(b);
    }
    for seg in split_top(s, '.') {
        let seg = seg.trim();
        if let Some(args) = seg.strip_prefix("where(").and_then(|a| a.strip_suffix(')')) {
            if let Some(t) = args.strip_prefix("resolve() is ") {
                steps.push(Step::ResolvesTo(t.trim().to_string()));
            } else if let Some((f, v)) = args.split_once('=') {
                let v = v.trim().trim_matches('\'');
                steps.push(Step::FieldEquals(f.trim().to_string(), v.to_string()));
            } else {
                return Err(err());
            }
        } else if let Some(t) = seg.strip_prefix("as(").and_then(|a| a.strip_suffix(')')) {
            steps.push(Step::As(t.trim().to_string()));
        } else if let Some((name, idx)) = seg.strip_suffix(']').and_then(|x| x.split_once('[')) {
            if !is_name(name) {
                return Err(err());
            }
            push_name(&mut root, &mut steps, name);
            steps.push(Step::Index(idx.parse().map_err(|_| err())?));
        } else if is_name(seg) {
            push_name(&mut root, &mut steps, seg);
        } else {
            return Err(err());
        }
    }
    if root.is_empty() {
        return Err(err());
    }
    Ok(Branch {
        root,
        steps,
        truth: false,
    })
}

fn push_name(root: &mut String, steps: &mut Vec<Step>, name: &str) {
    if root.is_empty() {
        *root = name.to_string();
    } else {
        steps.push(Step::Child(name.to_string()));
    }
}

impl Expr {
    pub fn parse(src: &str) -> Result<Expr, FhirPathError> {
        let branches = split_top(src, '|')
            .into_iter()
            .map(parse_branch)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Expr { branches })
    }

    /// Does some branch apply to resources of this type?
    pub fn applies_to(&self, resource_type: &str) -> bool {
        self.branches.iter().any(|b| root_matches(&b.root, resource_type))
    }

    pub fn evaluate<'a>(&'a self, resource: &'a Value) -> Vec<Node<'a>> {
        let rtype = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        let mut out = Vec::new();
        for b in self.branches.iter().filter(|b| root_matches(&b.root, rtype)) {
            let mut nodes = vec![Node {
                value: resource,
                type_hint: None,
            }];
            for step in &b.steps {
                nodes = apply(step, nodes);
                if nodes.is_empty() {
                    break;
                }
            }
            if b.truth {
                if let Some(n) = nodes.first() {
                    let t = !matches!(n.value, Value::Bool(false));
                    out.push(Node {
                        value: if t { &TRUE } else { &FALSE },
                        type_hint: Some("boolean"),
                    });
                }
            } else {
                out.extend(nodes);
            }
        }
        out
    }
}

static TRUE: Value = Value::Bool(true);
static FALSE: Value = Value::Bool(false);

fn root_matches(root: &str, rtype: &str) -> bool {
    root == rtype || root == "Resource" || root == "DomainResource"
}

fn push_flat<'a>(out: &mut Vec<Node<'a>>, v: &'a Value, hint: Option<&'a str>) {
    match v {
        Value::Array(items) => {
            for i in items.iter().filter(|i| !i.is_null()) {
                out.push(Node {
                    value: i,
                    type_hint: hint,
                });
            }
        }
        Value::Null => {}
        v => out.push(Node {
            value: v,
            type_hint: hint,
        }),
    }
}

fn apply<'a>(step: &'a Step, nodes: Vec<Node<'a>>) -> Vec<Node<'a>> {
    let mut out = Vec::new();
    match step {
        Step::Child(name) => {
            for n in nodes {
                let Value::Object(map) = n.value else { continue };
                if let Some(v) = map.get(name.as_str()) {
                    push_flat(&mut out, v, None);
                    continue;
                }
                // A choice element: `value` is `valueQuantity`, `valueString`…
                for (k, v) in map {
                    if let Some(suffix) = k.strip_prefix(name.as_str())
                        && suffix.starts_with(|c: char| c.is_ascii_uppercase())
                    {
                        push_flat(&mut out, v, Some(type_of_suffix(suffix)));
                    }
                }
            }
        }
        Step::As(ty) => out.extend(nodes.into_iter().filter(|n| n.type_hint.is_none_or(|h| h == ty))),
        Step::ResolvesTo(ty) => out.extend(
            nodes
                .into_iter()
                .filter(|n| reference_type(n.value) == Some(ty.as_str())),
        ),
        Step::FieldEquals(f, v) => out.extend(
            nodes
                .into_iter()
                .filter(|n| n.value.get(f.as_str()).and_then(Value::as_str) == Some(v.as_str())),
        ),
        Step::Index(i) => out.extend(nodes.into_iter().nth(*i)),
    }
    out
}

/// The type a Reference points at: from `reference` (`Patient/1`,
/// `http://…/Patient/1`, `Patient/1/_history/2`) or from `type`.
pub fn reference_type(v: &Value) -> Option<&str> {
    if let Some(r) = v.get("reference").and_then(Value::as_str) {
        let path = r.split(['?', '#']).next().unwrap_or_default();
        let segs: Vec<&str> = path.split('/').collect();
        let ty = match segs.as_slice() {
            [.., t, _id, "_history", _v] => Some(*t),
            [.., t, _id] => Some(*t),
            _ => None,
        };
        if let Some(t) = ty.filter(|t| t.starts_with(|c: char| c.is_ascii_uppercase())) {
            return Some(t);
        }
    }
    v.get("type").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_r4_search_expression_compiles() {
        let defs: Vec<Value> = serde_json::from_str(include_str!("definitions/search-parameters.json")).unwrap();
        let mut failed = Vec::new();
        for d in &defs {
            let kind = d["type"].as_str().unwrap_or_default();
            if kind == "composite" || kind == "special" {
                continue;
            }
            if let Some(e) = d["expression"].as_str()
                && Expr::parse(e).is_err()
            {
                failed.push(e.to_string());
            }
        }
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn choice_elements_unions_and_where() {
        let obs = json!({"resourceType": "Observation",
            "valueQuantity": {"value": 72},
            "subject": {"reference": "Patient/1"},
            "component": [{"valueQuantity": {"value": 1}}, {"valueString": "x"}]});
        let e = Expr::parse("(Observation.value as Quantity) | (Observation.component.value as Quantity)").unwrap();
        let nodes = e.evaluate(&obs);
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].type_hint, Some("Quantity"));
        let e = Expr::parse("Observation.subject.where(resolve() is Patient) | Patient.link.other").unwrap();
        assert_eq!(e.evaluate(&obs).len(), 1);
        let e = Expr::parse("Observation.subject.where(resolve() is Group)").unwrap();
        assert!(e.evaluate(&obs).is_empty());
        let p = json!({"resourceType": "Patient", "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}],
                       "deceasedDateTime": "2020-01-01", "birthDate": "1960-01-01", "_birthDate": {"id": "x"}});
        assert_eq!(
            Expr::parse("Patient.telecom.where(system='email')")
                .unwrap()
                .evaluate(&p)
                .len(),
            1
        );
        let dead = Expr::parse("Patient.deceased.exists() and Patient.deceased != false").unwrap();
        assert_eq!(dead.evaluate(&p)[0].value, &Value::Bool(true));
        assert_eq!(Expr::parse("Patient.birthDate").unwrap().evaluate(&p).len(), 1);
        assert_eq!(Expr::parse("Resource.meta.tag").unwrap().evaluate(&p).len(), 0);
        let c = json!({"resourceType": "Condition", "onsetPeriod": {"start": "2020"}});
        assert_eq!(Expr::parse("Condition.onset.as(Period)").unwrap().evaluate(&c).len(), 1);
        assert_eq!(
            Expr::parse("Condition.onset.as(dateTime)").unwrap().evaluate(&c).len(),
            0
        );
    }
}
