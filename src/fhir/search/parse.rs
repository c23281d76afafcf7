//! Turns the parameters of a FHIR search into a typed `SearchRequest`
//! (R4 §3.1.1). Values are split on unescaped commas (OR), repeated names
//! are AND-ed, and every value is parsed by its parameter's type here, once,
//! so that the store only sees well-formed values.

use super::model::{
    Filter, Include, Modifier, PageStart, ParamRef, ParamType, Prefix, SearchRequest, SearchValue, Sort, SortKey,
    Summary, Total,
};
use super::registry::{Registry, SearchParamDef};
use super::values::{date_range, decimal_with_precision};

/// The paging tokens this server writes into its own links.
pub const PAGE_AFTER: &str = "_page_after";
pub const PAGE_OFFSET: &str = "_offset";

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("unknown search parameter '{0}' (refused because of Prefer: handling=strict)")]
    UnknownParameter(String),
    #[error("'{value}' is not a valid value for {param}: {why}")]
    BadValue { param: String, value: String, why: String },
    #[error("modifier ':{modifier}' cannot be used with {param}")]
    BadModifier { param: String, modifier: String },
    #[error("{param}: {why}")]
    Unsupported { param: String, why: String },
}

impl SearchError {
    /// The offending parameter, for the OperationOutcome's expression.
    pub fn param(&self) -> Option<&str> {
        match self {
            SearchError::UnknownParameter(p) => Some(p),
            SearchError::BadValue { param, .. }
            | SearchError::BadModifier { param, .. }
            | SearchError::Unsupported { param, .. } => Some(param),
        }
    }
}

pub struct ParseOptions {
    /// `Prefer: handling=strict`: unknown parameters are an error.
    pub strict: bool,
    pub default_count: usize,
    pub max_count: usize,
}

fn bad(param: &str, value: &str, why: impl Into<String>) -> SearchError {
    SearchError::BadValue {
        param: param.to_string(),
        value: value.to_string(),
        why: why.into(),
    }
}

/// Splits on commas not escaped by a backslash, and unescapes `\,` `\|` `\$` `\\`.
fn split_or(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => {
                    if let Some(last) = out.last_mut() {
                        if !matches!(n, ',' | '|' | '$' | '\\') {
                            last.push('\\');
                        }
                        last.push(n);
                    }
                }
                None => {
                    if let Some(last) = out.last_mut() {
                        last.push('\\');
                    }
                }
            },
            ',' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

/// Splits a token on the first unescaped `|`.
fn split_pipe(v: &str) -> Option<(&str, &str)> {
    let bytes = v.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'|' => return Some((&v[..i], &v[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

fn prefix_of(v: &str) -> (Prefix, &str) {
    let p = match v.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, v),
    };
    (p, &v[2..])
}

fn parse_modifier(param: &str, def: &SearchParamDef, m: &str, registry: &Registry) -> Result<Modifier, SearchError> {
    let wrong = || SearchError::BadModifier {
        param: param.to_string(),
        modifier: m.to_string(),
    };
    let modifier = match m {
        "missing" => Modifier::Missing,
        "exact" => Modifier::Exact,
        "contains" => Modifier::Contains,
        "not" => Modifier::Not,
        "identifier" => Modifier::Identifier,
        "above" => Modifier::Above,
        "below" => Modifier::Below,
        "text" => Modifier::Text,
        t if registry.is_resource_type(t) => Modifier::Type(t.to_string()),
        _ => return Err(wrong()),
    };
    let ok = match (&modifier, def.kind) {
        (Modifier::Missing, _) => true,
        (Modifier::Exact | Modifier::Contains, ParamType::String) => true,
        (Modifier::Not, ParamType::Token) => true,
        (Modifier::Identifier, ParamType::Reference) => true,
        (Modifier::Above | Modifier::Below, ParamType::Uri) => true,
        (Modifier::Type(t), ParamType::Reference) => def.targets.is_empty() || def.targets.iter().any(|x| x == t),
        (Modifier::Text, _) => {
            return Err(SearchError::Unsupported {
                param: param.to_string(),
                why: "the :text modifier is not supported".into(),
            });
        }
        _ => false,
    };
    if ok { Ok(modifier) } else { Err(wrong()) }
}

/// Parses one (OR) value of a parameter of type `kind`.
fn parse_value(
    param: &str,
    def: &SearchParamDef,
    modifier: Option<&Modifier>,
    v: &str,
) -> Result<SearchValue, SearchError> {
    if modifier == Some(&Modifier::Missing) {
        return match v {
            "true" => Ok(SearchValue::Missing(true)),
            "false" => Ok(SearchValue::Missing(false)),
            _ => Err(bad(param, v, ":missing takes true or false")),
        };
    }
    if modifier == Some(&Modifier::Identifier) {
        return Ok(token(v));
    }
    Ok(match def.kind {
        ParamType::Token => token(v),
        ParamType::String => SearchValue::String(v.to_string()),
        ParamType::Uri => SearchValue::Uri(v.to_string()),
        ParamType::Date => {
            let (prefix, rest) = prefix_of(v);
            let range = date_range(rest)
                .ok_or_else(|| bad(param, v, "expected a date like 2025-01-31 or 2025-01-31T10:00:00Z"))?;
            SearchValue::Date { prefix, range }
        }
        ParamType::Number => {
            let (prefix, rest) = prefix_of(v);
            let (value, lo, hi) = decimal_with_precision(rest).ok_or_else(|| bad(param, v, "expected a number"))?;
            SearchValue::Number { prefix, value, lo, hi }
        }
        ParamType::Quantity => {
            let (prefix, rest) = prefix_of(v);
            let (num, system, code) = match split_pipe(rest) {
                None => (rest, None, None),
                Some((n, tail)) => match split_pipe(tail) {
                    Some((s, c)) => (n, Some(s.to_string()).filter(|s| !s.is_empty()), Some(c.to_string())),
                    None => return Err(bad(param, v, "expected number|system|code")),
                },
            };
            let (value, lo, hi) = decimal_with_precision(num).ok_or_else(|| bad(param, v, "expected a number"))?;
            SearchValue::Quantity {
                prefix,
                value,
                lo,
                hi,
                system,
                code: code.filter(|c| !c.is_empty()),
            }
        }
        ParamType::Reference => reference(param, def, modifier, v)?,
        ParamType::Composite | ParamType::Special => {
            return Err(SearchError::Unsupported {
                param: param.to_string(),
                why: format!("{} parameters are not supported", def.kind.as_str()),
            });
        }
    })
}

fn token(v: &str) -> SearchValue {
    match split_pipe(v) {
        None => SearchValue::Token {
            system: None,
            code: Some(v.to_string()),
        },
        Some((s, c)) => SearchValue::Token {
            system: Some(s.to_string()),
            code: Some(c.to_string()).filter(|c| !c.is_empty()),
        },
    }
}

fn reference(
    param: &str,
    def: &SearchParamDef,
    modifier: Option<&Modifier>,
    v: &str,
) -> Result<SearchValue, SearchError> {
    if v.is_empty() {
        return Err(bad(param, v, "empty reference"));
    }
    if v.contains("://") || v.starts_with("urn:") {
        return Ok(SearchValue::Reference {
            rtype: None,
            id: v.to_string(),
            version: None,
        });
    }
    let segs: Vec<&str> = v.split('/').collect();
    let (rtype, id, version) = match segs.as_slice() {
        [id] => {
            let rtype = match modifier {
                Some(Modifier::Type(t)) => Some(t.clone()),
                _ if def.targets.len() == 1 => def.targets.first().cloned(),
                _ => None,
            };
            (rtype, *id, None)
        }
        [t, id] => (Some(t.to_string()), *id, None),
        [t, id, "_history", vid] => (Some(t.to_string()), *id, Some(vid.to_string())),
        _ => return Err(bad(param, v, "expected Type/id, an id or an absolute URL")),
    };
    if let Some(t) = &rtype
        && !def.targets.is_empty()
        && !def.targets.iter().any(|x| x == t)
    {
        return Err(bad(param, v, format!("{param} cannot refer to a {t}")));
    }
    Ok(SearchValue::Reference {
        rtype,
        id: id.to_string(),
        version,
    })
}

fn param_ref(resource_type: &str, def: &SearchParamDef) -> ParamRef {
    let rt = if matches!(def.code.as_str(), "_id" | "_lastUpdated") {
        "Resource"
    } else {
        resource_type
    };
    ParamRef {
        resource_type: rt.to_string(),
        code: def.code.clone(),
        kind: def.kind,
    }
}

/// Parameters that can be used on a system-level search.
const SYSTEM_PARAMS: [&str; 5] = ["_id", "_lastUpdated", "_tag", "_profile", "_security"];

/// Parses `name[:modifier][.chain]=value` for a resource type. `Ok(None)`
/// when the parameter is unknown (the caller decides if that is an error).
fn filter(
    registry: &Registry,
    resource_type: Option<&str>,
    name: &str,
    value: &str,
) -> Result<Option<Filter>, SearchError> {
    if let Some(rest) = name.strip_prefix("_has:") {
        let Some(rt) = resource_type else {
            return Ok(None);
        };
        // _has:Type:refParam:inner
        let mut parts = rest.splitn(3, ':');
        let (Some(src), Some(refp), Some(inner)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(name, value, "expected _has:Type:reference-parameter:parameter"));
        };
        if !registry.is_resource_type(src) {
            return Err(bad(name, value, format!("'{src}' is not a resource type")));
        }
        let Some(def) = registry.get(src, refp).filter(|d| d.kind == ParamType::Reference) else {
            return Err(bad(
                name,
                value,
                format!("'{refp}' is not a reference parameter of {src}"),
            ));
        };
        if !def.targets.is_empty() && !def.targets.iter().any(|t| t == rt) {
            return Err(bad(name, value, format!("{src}.{refp} cannot refer to a {rt}")));
        }
        let Some(inner) = filter(registry, Some(src), inner, value)? else {
            return Err(SearchError::UnknownParameter(name.to_string()));
        };
        return Ok(Some(Filter::Has {
            source_type: src.to_string(),
            param: param_ref(src, def),
            inner: Box::new(inner),
        }));
    }
    // Chain: the part before the first '.' is `param[:Type]`.
    let (head, chain) = match name.split_once('.') {
        Some((h, c)) => (h, Some(c)),
        None => (name, None),
    };
    let (code, modifier) = match head.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (head, None),
    };
    let def = match resource_type {
        Some(rt) => registry.get(rt, code),
        None if SYSTEM_PARAMS.contains(&code) => registry.get("Patient", code),
        None => None,
    };
    let Some(def) = def.filter(|d| d.is_supported()) else {
        return Ok(None);
    };
    let rt = resource_type.unwrap_or("Resource");
    if let Some(chain) = chain {
        if def.kind != ParamType::Reference {
            return Err(bad(
                name,
                value,
                format!("'{code}' is not a reference parameter: it cannot be chained"),
            ));
        }
        let target = match modifier {
            Some(t) if registry.is_resource_type(t) => t.to_string(),
            Some(m) => {
                return Err(SearchError::BadModifier {
                    param: name.to_string(),
                    modifier: m.to_string(),
                });
            }
            None => {
                // Without a type, the targets that know the chained parameter.
                let next = chain.split(['.', ':']).next().unwrap_or_default();
                let candidates: Vec<&String> = def
                    .targets
                    .iter()
                    .filter(|t| next.starts_with("_has") || registry.get(t, next).is_some())
                    .collect();
                match candidates.as_slice() {
                    [one] => (*one).clone(),
                    _ => {
                        return Err(bad(
                            name,
                            value,
                            format!("'{code}' may refer to several types; name one, as in {code}:Patient.{chain}"),
                        ));
                    }
                }
            }
        };
        if !def.targets.is_empty() && !def.targets.contains(&target) {
            return Err(bad(name, value, format!("'{code}' cannot refer to a {target}")));
        }
        let Some(inner) = filter(registry, Some(&target), chain, value)? else {
            return Err(bad(
                name,
                value,
                format!("'{chain}' is not a search parameter of {target}"),
            ));
        };
        return Ok(Some(Filter::Chain {
            param: param_ref(rt, def),
            target_type: target,
            inner: Box::new(inner),
        }));
    }
    let modifier = modifier.map(|m| parse_modifier(name, def, m, registry)).transpose()?;
    let values = split_or(value)
        .iter()
        .map(|v| parse_value(name, def, modifier.as_ref(), v))
        .collect::<Result<Vec<_>, _>>()?;
    let modifier = match modifier {
        Some(Modifier::Missing) => None,
        m => m,
    };
    Ok(Some(Filter::Values {
        param: param_ref(rt, def),
        modifier,
        values,
    }))
}

fn include(registry: &Registry, name: &str, value: &str, reverse: bool) -> Result<Include, SearchError> {
    let iterate = name.ends_with(":iterate") || name.ends_with(":recurse");
    let mut parts = value.split(':');
    let src = parts.next().unwrap_or_default();
    let code = parts.next();
    let target = parts.next();
    if !registry.is_resource_type(src) {
        return Err(bad(name, value, format!("'{src}' is not a resource type")));
    }
    let param = match code {
        None | Some("*") => None,
        Some(c) => {
            let Some(def) = registry.get(src, c).filter(|d| d.kind == ParamType::Reference) else {
                return Err(bad(name, value, format!("'{c}' is not a reference parameter of {src}")));
            };
            Some(param_ref(src, def))
        }
    };
    if let Some(t) = target
        && !registry.is_resource_type(t)
    {
        return Err(bad(name, value, format!("'{t}' is not a resource type")));
    }
    let _ = reverse;
    Ok(Include {
        source_type: src.to_string(),
        param,
        target_type: target.map(str::to_string),
        iterate,
    })
}

pub fn parse_search(
    registry: &Registry,
    resource_type: Option<&str>,
    pairs: &[(String, String)],
    opts: &ParseOptions,
) -> Result<SearchRequest, SearchError> {
    let mut req = SearchRequest {
        resource_type: resource_type.map(str::to_string),
        count: opts.default_count.min(opts.max_count),
        ..Default::default()
    };
    let mut types: Vec<String> = Vec::new();
    for (name, value) in pairs {
        if value.is_empty() {
            continue;
        }
        let applied = (name.clone(), value.clone());
        match name.as_str() {
            "_count" => {
                let n: usize = value.parse().map_err(|_| bad(name, value, "expected a whole number"))?;
                req.count = n.min(opts.max_count);
                req.applied.push((name.clone(), req.count.to_string()));
                continue;
            }
            "_sort" => {
                for key in value.split(',') {
                    let (descending, code) = match key.strip_prefix('-') {
                        Some(c) => (true, c),
                        None => (false, key),
                    };
                    let key = match code {
                        "_id" => SortKey::Id,
                        "_lastUpdated" => SortKey::LastUpdated,
                        c => {
                            let def = resource_type
                                .and_then(|rt| registry.get(rt, c))
                                .filter(|d| d.is_supported())
                                .ok_or_else(|| bad(name, value, format!("cannot sort by '{c}'")))?;
                            SortKey::Param(param_ref(resource_type.unwrap_or("Resource"), def))
                        }
                    };
                    req.sort.push(Sort { key, descending });
                }
            }
            "_include" | "_include:iterate" | "_include:recurse" => {
                req.include.push(include(registry, name, value, false)?)
            }
            "_revinclude" | "_revinclude:iterate" | "_revinclude:recurse" => {
                req.revinclude.push(include(registry, name, value, true)?)
            }
            "_total" => {
                req.total = match value.as_str() {
                    "none" => Total::None,
                    "estimate" => Total::Estimate,
                    "accurate" => Total::Accurate,
                    _ => return Err(bad(name, value, "expected none, estimate or accurate")),
                }
            }
            "_summary" => {
                req.summary = Some(match value.as_str() {
                    "true" => Summary::True,
                    "text" => Summary::Text,
                    "data" => Summary::Data,
                    "count" => Summary::Count,
                    "false" => Summary::False,
                    _ => return Err(bad(name, value, "expected true, text, data, count or false")),
                })
            }
            "_elements" => req
                .elements
                .extend(value.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty())),
            "_format" | "_pretty" => continue,
            PAGE_AFTER => {
                let pk: i64 = value.parse().map_err(|_| bad(name, value, "invalid paging token"))?;
                req.page = PageStart::After(pk);
            }
            PAGE_OFFSET => {
                let o: u64 = value.parse().map_err(|_| bad(name, value, "invalid paging token"))?;
                req.page = PageStart::Offset(o);
            }
            "_type" if resource_type.is_none() => {
                for t in value.split(',') {
                    if !registry.is_resource_type(t) {
                        return Err(bad(name, value, format!("'{t}' is not a resource type")));
                    }
                    types.push(t.to_string());
                }
            }
            "_contained" | "_containedType" | "_text" | "_content" | "_list" | "_query" | "_filter" => {
                if opts.strict {
                    return Err(SearchError::Unsupported {
                        param: name.clone(),
                        why: "this parameter is not supported".into(),
                    });
                }
                req.ignored.push(name.clone());
                continue;
            }
            _ => match filter(registry, resource_type, name, value)? {
                Some(f) => req.filters.push(f),
                None if opts.strict => return Err(SearchError::UnknownParameter(name.clone())),
                None => {
                    req.ignored.push(name.clone());
                    continue;
                }
            },
        }
        req.applied.push(applied);
    }
    if !types.is_empty() {
        // `_type` restricts a system search; with one type it is a type search.
        match types.as_slice() {
            [one] => req.resource_type = Some(one.clone()),
            _ => {
                return Err(SearchError::Unsupported {
                    param: "_type".into(),
                    why: "searching several types at once is not supported; search each type".into(),
                });
            }
        }
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(rt: &str, q: &str) -> Result<SearchRequest, SearchError> {
        let pairs: Vec<(String, String)> = q
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_search(
            Registry::r4(),
            Some(rt),
            &pairs,
            &ParseOptions {
                strict: false,
                default_count: 20,
                max_count: 1000,
            },
        )
    }

    #[test]
    fn a_gp_software_looks_a_patient_up_by_ins() {
        let r = parse("Patient", "identifier=urn:oid:1.2.250.1.213.1.4.8|1234567890123").unwrap();
        assert_eq!(
            r.filters,
            [Filter::Values {
                param: ParamRef {
                    resource_type: "Patient".into(),
                    code: "identifier".into(),
                    kind: ParamType::Token
                },
                modifier: None,
                values: vec![SearchValue::Token {
                    system: Some("urn:oid:1.2.250.1.213.1.4.8".into()),
                    code: Some("1234567890123".into())
                }]
            }]
        );
    }

    #[test]
    fn values_of_each_type() {
        let r = parse("ServiceRequest", "patient=Patient/1&status=active,on-hold").unwrap();
        let Filter::Values { values, .. } = &r.filters[1] else {
            panic!()
        };
        assert_eq!(values.len(), 2);
        let r = parse(
            "Observation",
            "date=ge2024-01-01&date=lt2024-07-01&value-quantity=5.4|http://unitsofmeasure.org|mg",
        )
        .unwrap();
        assert_eq!(r.filters.len(), 3);
        let Filter::Values { values, .. } = &r.filters[0] else {
            panic!()
        };
        assert!(matches!(values[0], SearchValue::Date { prefix: Prefix::Ge, .. }));
        let r = parse("Observation", "subject=123").unwrap();
        let Filter::Values { values, .. } = &r.filters[0] else {
            panic!()
        };
        assert_eq!(
            values[0],
            SearchValue::Reference {
                rtype: None,
                id: "123".into(),
                version: None
            }
        );
        let r = parse("Observation", "patient=123").unwrap();
        let Filter::Values { values, .. } = &r.filters[0] else {
            panic!()
        };
        assert!(matches!(&values[0], SearchValue::Reference { rtype: Some(t), .. } if t == "Patient"));
        let r = parse("Patient", "name=a\\,b").unwrap();
        let Filter::Values { values, .. } = &r.filters[0] else {
            panic!()
        };
        assert_eq!(values, &[SearchValue::String("a,b".into())]);
    }

    #[test]
    fn chains_and_reverse_chains() {
        let r = parse("ServiceRequest", "subject:Patient.identifier=x").unwrap();
        assert!(matches!(&r.filters[0], Filter::Chain { target_type, .. } if target_type == "Patient"));
        let r = parse("Patient", "_has:Observation:patient:code=1234-5").unwrap();
        assert!(matches!(&r.filters[0], Filter::Has { source_type, .. } if source_type == "Observation"));
        assert!(
            parse("Observation", "subject.name=x").is_err(),
            "Patient, Group, Device and Location have a name"
        );
        assert!(
            parse("Observation", "subject.family=x").is_ok(),
            "only Patient has a family"
        );
        assert!(parse("Observation", "patient.name=x").is_ok());
    }

    #[test]
    fn result_parameters() {
        let r = parse("ServiceRequest", "_count=5000&_sort=-authored,_id&_include=ServiceRequest:requester&_revinclude:iterate=Task:focus&_total=accurate&_page_after=42").unwrap();
        assert_eq!(r.count, 1000);
        assert_eq!(r.sort.len(), 2);
        assert!(r.sort[0].descending);
        assert_eq!(r.include.len(), 1);
        assert!(r.revinclude[0].iterate);
        assert_eq!(r.total, Total::Accurate);
        assert_eq!(r.page, PageStart::After(42));
    }

    #[test]
    fn refusals() {
        assert!(parse("Patient", "birthdate=notadate").is_err());
        assert!(parse("Patient", "identifier:contains=x").is_err());
        assert!(parse("Patient", "name:nope=x").is_err());
        assert!(parse("Patient", "_sort=nope").is_err());
        assert!(parse("ServiceRequest", "_include=ServiceRequest:status").is_err());
        assert!(parse("Observation", "value-quantity=abc").is_err());
        let lenient = parse("Patient", "foo=bar&gender=male").unwrap();
        assert_eq!(lenient.ignored, ["foo"]);
        assert_eq!(lenient.applied, [("gender".to_string(), "male".to_string())]);
        let strict = parse_search(
            Registry::r4(),
            Some("Patient"),
            &[("foo".into(), "bar".into())],
            &ParseOptions {
                strict: true,
                default_count: 20,
                max_count: 1000,
            },
        );
        assert!(matches!(strict, Err(SearchError::UnknownParameter(_))));
    }
}
