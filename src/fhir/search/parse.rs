//! Turns the query parameters of a FHIR search (R4 §3.1.1) into a typed
//! [`SearchRequest`].
//!
//! Every value is parsed here, once, by its parameter's type, so the store
//! only ever sees well-formed values. A repeated name is AND, a comma inside
//! a value is OR; `\,` `\|` `\$` and `\\` escape those characters.
//!
//! What is refused and what is ignored:
//! - an unknown parameter (or one this server knows but cannot search) is
//!   refused, unless the client asked for `Prefer: handling=lenient`: then
//!   it is listed in `ignored`, and the caller must tell the client so;
//! - a search over the [`SearchLimits`] is refused before anything else is
//!   read, since its SQL would outgrow what the databases accept;
//! - everything else that is wrong is refused in both modes, because the
//!   client asked for something precise and guessing would return the wrong
//!   resources: a bad value, an unknown or misplaced modifier, a chain or
//!   `_has` that does not resolve, an `_include` of a non-reference
//!   parameter, an unknown `_sort` key.
//!
//! `applied` holds what was understood, in the client's order and spelling
//! (`_count` clamped), so that the `self` link can be rebuilt from it.
//! Paging tokens (`_page_after`, `_offset`) are written by this server in its
//! own `next`/`previous` links and come back as ordinary parameters: they are
//! in `applied` like any other, and a link for another page is `applied`
//! without them plus the new token (see [`PAGE_AFTER`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::model::{
    Filter, Include, Modifier, PageStart, ParamRef, ParamType, Prefix, SearchRequest, SearchValue, Sort, SortKey,
    Summary, Total,
};
use super::registry::{Registry, SearchParamDef};
use super::values::{date_range, decimal_with_precision};

/// Keyset paging token: the next page starts after the resource with this
/// store key, in the default order. `PageStart::After(pk)` ⇄ `_page_after=pk`.
/// Only valid without `_sort`.
pub const PAGE_AFTER: &str = "_page_after";
/// Offset paging token, for searches with `_sort`. `PageStart::Offset(n)` ⇄
/// `_offset=n`.
pub const PAGE_OFFSET: &str = "_offset";

/// How many chain links and `_has` levels one parameter may stack. Each level
/// is a nested sub-query in the store, and the parser recurses once per level:
/// a bound keeps both a hostile URL and the query plan small.
pub const MAX_DEPTH: usize = 4;

/// The parameters a system-level search (`GET [base]?…`) understands besides
/// the result parameters: those defined on `Resource` and indexed for every
/// type.
const SYSTEM_PARAMS: [&str; 5] = ["_id", "_lastUpdated", "_tag", "_profile", "_security"];

/// Parameters defined by the specification that this server does not
/// implement: treated like unknown ones, but named as unsupported in strict
/// mode.
const UNSUPPORTED_PARAMS: [&str; 7] = [
    "_contained",
    "_containedType",
    "_list",
    "_filter",
    "_query",
    "_text",
    "_content",
];

/// How much one search may ask for. Each parameter becomes one condition
/// of the SQL and each OR value one term inside it; unbounded, a long query
/// string nests deeper than SQLite's expression limit (1000) and binds more
/// values than either database takes. The defaults are far above what a
/// real client sends and far below those limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchLimits {
    /// Parameters in one search, a repeated name counting each time
    /// (paging tokens aside: the server's own links add one).
    pub max_params: usize,
    /// Values in one comma-separated list: the OR values of a filter, the
    /// keys of `_sort`, the names of `_elements` or `_type`.
    pub max_or_values: usize,
    /// Those values over the whole search.
    pub max_values_total: usize,
    /// `_include` and `_revinclude` parameters together.
    pub max_includes: usize,
}

impl Default for SearchLimits {
    fn default() -> Self {
        SearchLimits {
            max_params: 64,
            max_or_values: 100,
            max_values_total: 500,
            max_includes: 16,
        }
    }
}

/// Segments of a URI searched with `:above`: each is one bound value.
const MAX_URI_SEGMENTS: usize = 64;

/// The largest `_offset` paging token: far beyond any result set, and
/// `offset + count` still fits the databases' signed 64-bit integers.
const MAX_OFFSET: u64 = 1 << 40;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// Over one of the [`SearchLimits`].
    #[error("'{param}': {why}")]
    TooCostly { param: String, why: String },
    /// Strict mode (the default) only: lenient mode lists it in `ignored`.
    #[error(
        "unknown search parameter '{0}': this server does not know it; ignoring it would return more than was asked \
         for (send Prefer: handling=lenient to have unknown parameters ignored and listed in the result)"
    )]
    UnknownParameter(String),
    /// A parameter or modifier the specification defines but this server
    /// does not implement.
    #[error("'{param}' is not supported by this server: {why}")]
    Unsupported { param: String, why: String },
    #[error("invalid value '{value}' for '{param}': {why}")]
    BadValue { param: String, value: String, why: String },
    #[error("'{param}': the modifier ':{modifier}' cannot be used here: {why}")]
    BadModifier {
        param: String,
        modifier: String,
        why: String,
    },
    /// The parameter name itself is malformed: a chain, `_has` or modifier
    /// that does not resolve.
    #[error("invalid search parameter '{param}': {why}")]
    BadName { param: String, why: String },
}

impl SearchError {
    /// The offending parameter as the client wrote it (with its modifiers
    /// and chain), for the OperationOutcome's `expression`.
    pub fn param(&self) -> Option<&str> {
        match self {
            SearchError::UnknownParameter(p) => Some(p),
            SearchError::TooCostly { param, .. }
            | SearchError::Unsupported { param, .. }
            | SearchError::BadValue { param, .. }
            | SearchError::BadModifier { param, .. }
            | SearchError::BadName { param, .. } => Some(param),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// Unknown parameters are an error; `false` only when the client asked
    /// for `Prefer: handling=lenient`, since ignoring a filter widens the
    /// result.
    pub strict: bool,
    /// `_count` when the client gives none.
    pub default_count: usize,
    /// A larger `_count` is lowered to this.
    pub max_count: usize,
    pub limits: SearchLimits,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            strict: true,
            default_count: 20,
            max_count: 1000,
            limits: SearchLimits::default(),
        }
    }
}

/// Parses a search on `resource_type` (`None`: a system-level search).
/// `pairs` are percent-decoded, in the client's order.
pub fn parse_search(
    registry: &Registry,
    resource_type: Option<&str>,
    pairs: &[(String, String)],
    opts: &ParseOptions,
) -> Result<SearchRequest, SearchError> {
    check_limits(pairs, &opts.limits)?;
    // A system search restricted by `_type` to one type is that type's
    // search: the other parameters are read against it, whatever their order.
    let effective = match resource_type {
        Some(t) => Some(t.to_string()),
        None => system_type(registry, pairs)?,
    };
    let rtype = effective.as_deref();
    let mut req = SearchRequest {
        resource_type: effective.clone(),
        count: opts.default_count.min(opts.max_count),
        ..Default::default()
    };
    for (name, value) in pairs {
        // §3.1.1.0: a parameter with an empty value is ignored.
        if value.split(',').all(str::is_empty) {
            continue;
        }
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name.as_str(), None),
        };
        let mut applied_value = value.clone();
        match base {
            "_include" | "_revinclude" => {
                let iterate = match modifier {
                    None => false,
                    // `recurse` is the STU3 spelling, still sent by some clients.
                    Some("iterate" | "recurse") => true,
                    Some(m) => {
                        return Err(SearchError::BadModifier {
                            param: name.clone(),
                            modifier: m.to_string(),
                            why: format!("{base} only takes :iterate"),
                        });
                    }
                };
                let reverse = base == "_revinclude";
                let inc = include(registry, rtype, name, value, reverse, iterate)?;
                if reverse {
                    req.revinclude.push(inc);
                } else {
                    req.include.push(inc);
                }
            }
            "_count" | "_sort" | "_total" | "_summary" | "_elements" | "_format" | "_pretty" | PAGE_AFTER
            | PAGE_OFFSET => {
                if let Some(m) = modifier {
                    return Err(SearchError::BadModifier {
                        param: name.clone(),
                        modifier: m.to_string(),
                        why: format!("{base} takes no modifier"),
                    });
                }
                match base {
                    "_count" => {
                        req.count = count(name, value, opts.max_count)?;
                        applied_value = req.count.to_string();
                    }
                    "_sort" => req.sort.extend(sort(registry, rtype, name, value)?),
                    "_total" => req.total = total(name, value)?,
                    "_summary" => req.summary = Some(summary(name, value)?),
                    "_elements" => req.elements.extend(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|e| !e.is_empty())
                            .map(str::to_string),
                    ),
                    PAGE_AFTER => {
                        let pk = value.parse::<i64>().map_err(|_| bad_page_token(name, value))?;
                        req.page = PageStart::After(pk);
                        applied_value = pk.to_string();
                    }
                    PAGE_OFFSET => {
                        let offset = value
                            .parse::<u64>()
                            .ok()
                            .filter(|o| *o <= MAX_OFFSET)
                            .ok_or_else(|| bad_page_token(name, value))?;
                        req.page = PageStart::Offset(offset);
                        applied_value = offset.to_string();
                    }
                    // `_format` and `_pretty` are read by content negotiation;
                    // kept in `applied` so that the links keep the format.
                    _ => {}
                }
            }
            // Already read by `system_type`.
            "_type" if resource_type.is_none() => {
                if let Some(m) = modifier {
                    return Err(SearchError::BadModifier {
                        param: name.clone(),
                        modifier: m.to_string(),
                        why: "_type takes no modifier".into(),
                    });
                }
            }
            _ if UNSUPPORTED_PARAMS.contains(&base) => {
                if opts.strict {
                    return Err(SearchError::Unsupported {
                        param: name.clone(),
                        why: "this search parameter is not implemented".into(),
                    });
                }
                req.ignored.push(name.clone());
                continue;
            }
            _ => {
                let ctx = Ctx { registry, name, value };
                match ctx.filter(rtype, name, 0)? {
                    Parsed::Filter(f) => req.filters.push(f),
                    Parsed::Unknown if opts.strict => return Err(SearchError::UnknownParameter(name.clone())),
                    Parsed::Unsupported(why) if opts.strict => {
                        return Err(SearchError::Unsupported {
                            param: name.clone(),
                            why,
                        });
                    }
                    Parsed::Unknown | Parsed::Unsupported(_) => {
                        req.ignored.push(name.clone());
                        continue;
                    }
                }
            }
        }
        req.applied.push((name.clone(), applied_value));
    }
    check_paging(&req)?;
    Ok(req)
}

/// Refuses a search over `limits`, and values no database can hold (a NUL
/// byte is refused by PostgreSQL's text type).
fn check_limits(pairs: &[(String, String)], limits: &SearchLimits) -> Result<(), SearchError> {
    let too_costly = |name: &str, why: String| SearchError::TooCostly {
        param: name.to_string(),
        why,
    };
    let mut params = 0;
    let mut values_total = 0;
    let mut includes = 0;
    for (name, value) in pairs {
        if name.contains('\0') || value.contains('\0') {
            return Err(SearchError::BadValue {
                param: name.replace('\0', "\\0"),
                value: value.replace('\0', "\\0"),
                why: "a search parameter cannot hold a NUL character".into(),
            });
        }
        if name == PAGE_AFTER || name == PAGE_OFFSET {
            continue;
        }
        params += 1;
        if params > limits.max_params {
            return Err(too_costly(
                name,
                format!(
                    "a search takes at most {} parameters (a repeated name counts each time); this one has {}",
                    limits.max_params,
                    pairs.len()
                ),
            ));
        }
        let values = split_unescaped(value, ',')
            .into_iter()
            .filter(|v| !v.is_empty())
            .count();
        if values > limits.max_or_values {
            return Err(too_costly(
                name,
                format!(
                    "a parameter takes at most {} comma-separated values; this one has {values}",
                    limits.max_or_values
                ),
            ));
        }
        values_total += values;
        if values_total > limits.max_values_total {
            return Err(too_costly(
                name,
                format!(
                    "a search takes at most {} values over all its parameters; split it into several searches",
                    limits.max_values_total
                ),
            ));
        }
        let base = name.split(':').next().unwrap_or_default();
        if matches!(base, "_include" | "_revinclude") && !value.is_empty() {
            includes += 1;
            if includes > limits.max_includes {
                return Err(too_costly(
                    name,
                    format!(
                        "a search takes at most {} _include and _revinclude parameters",
                        limits.max_includes
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The type a system-level search is restricted to by `_type`, if any.
/// Repeated `_type` parameters are AND-ed like any other.
fn system_type(registry: &Registry, pairs: &[(String, String)]) -> Result<Option<String>, SearchError> {
    let mut allowed: Option<BTreeSet<&str>> = None;
    for (name, value) in pairs
        .iter()
        .filter(|(n, v)| n == "_type" && !v.split(',').all(str::is_empty))
    {
        let mut these = BTreeSet::new();
        for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !registry.is_resource_type(t) {
                return Err(SearchError::BadValue {
                    param: name.clone(),
                    value: value.clone(),
                    why: format!("'{t}' is not a FHIR R4 resource type"),
                });
            }
            these.insert(t);
        }
        allowed = Some(match allowed {
            None => these,
            Some(before) => before.intersection(&these).copied().collect(),
        });
    }
    let Some(allowed) = allowed else {
        return Ok(None);
    };
    let types: Vec<&str> = allowed.into_iter().collect();
    match types.as_slice() {
        [one] => Ok(Some(one.to_string())),
        [] => Err(SearchError::BadName {
            param: "_type".into(),
            why: "the _type parameters have no resource type in common".into(),
        }),
        several => Err(SearchError::Unsupported {
            param: "_type".into(),
            why: format!(
                "searching several types at once ({}) is not supported; search each type, as in GET [base]/{}?…",
                several.join(", "),
                several.first().copied().unwrap_or_default()
            ),
        }),
    }
}

/// The paging token must fit the kind of paging the store does for this
/// search, or the store would silently serve the first page again.
fn check_paging(req: &SearchRequest) -> Result<(), SearchError> {
    let why = match req.page {
        PageStart::After(_) if !req.sort.is_empty() => {
            "this paging token belongs to a search without _sort; follow the next and previous links of the Bundle"
        }
        PageStart::Offset(_) if req.sort.is_empty() => {
            "offset paging is only used for a search with _sort; follow the next and previous links of the Bundle"
        }
        _ => return Ok(()),
    };
    let param = match req.page {
        PageStart::After(_) => PAGE_AFTER,
        _ => PAGE_OFFSET,
    };
    let value = req
        .applied
        .iter()
        .rev()
        .find(|(n, _)| n == param)
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    Err(SearchError::BadValue {
        param: param.into(),
        value,
        why: why.into(),
    })
}

fn bad_page_token(name: &str, value: &str) -> SearchError {
    SearchError::BadValue {
        param: name.into(),
        value: value.into(),
        why: "this paging token was not written by this server; follow the next and previous links of the Bundle"
            .into(),
    }
}

fn count(name: &str, value: &str, max: usize) -> Result<usize, SearchError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SearchError::BadValue {
            param: name.into(),
            value: value.into(),
            why: "expected a whole number of resources per page, such as 20 (0 for the total only)".into(),
        });
    }
    // All digits: only an overflow can fail, and that is above any maximum.
    Ok(value.parse::<usize>().map_or(max, |n| n.min(max)))
}

fn total(name: &str, value: &str) -> Result<Total, SearchError> {
    Ok(match value {
        "none" => Total::None,
        "estimate" => Total::Estimate,
        "accurate" => Total::Accurate,
        _ => {
            return Err(SearchError::BadValue {
                param: name.into(),
                value: value.into(),
                why: "expected none, estimate or accurate".into(),
            });
        }
    })
}

fn summary(name: &str, value: &str) -> Result<Summary, SearchError> {
    Ok(match value {
        "true" => Summary::True,
        "text" => Summary::Text,
        "data" => Summary::Data,
        "count" => Summary::Count,
        "false" => Summary::False,
        _ => {
            return Err(SearchError::BadValue {
                param: name.into(),
                value: value.into(),
                why: "expected true, text, data, count or false".into(),
            });
        }
    })
}

/// `_sort=-date,_id`: a comma list of keys, `-` for descending.
fn sort(registry: &Registry, rtype: Option<&str>, name: &str, value: &str) -> Result<Vec<Sort>, SearchError> {
    let mut out = Vec::new();
    for key in value.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let (descending, code) = match key.strip_prefix('-') {
            Some(c) => (true, c),
            None => (false, key),
        };
        let bad = |why: String| SearchError::BadValue {
            param: name.into(),
            value: value.into(),
            why,
        };
        let key = match code {
            "_id" => SortKey::Id,
            "_lastUpdated" => SortKey::LastUpdated,
            c => {
                let Some(rt) = rtype else {
                    return Err(bad(format!(
                        "a search across all types can only be sorted by _id or _lastUpdated, not '{c}'"
                    )));
                };
                let def = registry
                    .get(rt, c)
                    .ok_or_else(|| bad(format!("'{c}' is not a search parameter of {rt}")))?;
                if !def.is_supported() {
                    return Err(bad(format!("this server cannot sort by '{c}'")));
                }
                // A token has no order the client could expect (codes of
                // different systems), and the index keeps only its hash.
                if !matches!(
                    def.kind,
                    ParamType::String
                        | ParamType::Date
                        | ParamType::Number
                        | ParamType::Quantity
                        | ParamType::Uri
                        | ParamType::Reference
                ) {
                    return Err(bad(format!(
                        "'{c}' is a {} parameter; this server sorts by string, date, number, quantity, uri and \
                         reference parameters",
                        def.kind.as_str()
                    )));
                }
                SortKey::Param(param_ref(rt, def))
            }
        };
        out.push(Sort { key, descending });
    }
    Ok(out)
}

/// `_include=Type:param[:Target]`, `Type:*`, `*`; `_revinclude` likewise.
fn include(
    registry: &Registry,
    rtype: Option<&str>,
    name: &str,
    value: &str,
    reverse: bool,
    iterate: bool,
) -> Result<Include, SearchError> {
    let bad = |why: String| SearchError::BadValue {
        param: name.into(),
        value: value.into(),
        why,
    };
    let parts: Vec<&str> = value.split(':').collect();
    let (source, code, target) = match parts.as_slice() {
        // A bare `*` can only mean the searched type's own references.
        ["*"] if !reverse => match rtype {
            Some(t) => (t, "*", None),
            None => {
                return Err(bad(
                    "name the type whose references to include, as in Observation:*".into()
                ));
            }
        },
        [s, c] => (*s, *c, None),
        [s, c, t] => (*s, *c, Some(*t)),
        _ => {
            let example = if reverse {
                "Observation:subject"
            } else {
                "Observation:subject:Patient"
            };
            return Err(bad(format!(
                "expected Type:parameter or Type:parameter:TargetType, as in {example}"
            )));
        }
    };
    if !registry.is_resource_type(source) {
        return Err(bad(format!("'{source}' is not a FHIR R4 resource type")));
    }
    let def = match code {
        "*" => None,
        c => {
            let def = registry
                .get(source, c)
                .ok_or_else(|| bad(format!("'{c}' is not a search parameter of {source}")))?;
            if def.kind != ParamType::Reference {
                return Err(bad(format!(
                    "{source}:{c} is a {} parameter; only reference parameters can be included",
                    def.kind.as_str()
                )));
            }
            if !def.is_supported() {
                return Err(bad(format!("this server does not index {source}:{c}")));
            }
            Some(def)
        }
    };
    if let Some(t) = target {
        if !registry.is_resource_type(t) {
            return Err(bad(format!("'{t}' is not a FHIR R4 resource type")));
        }
        if let Some(def) = def
            && !targets_allow(def, t)
        {
            return Err(bad(format!(
                "{source}:{code} refers to {}, never to a {t}",
                targets_list(def)
            )));
        }
    }
    Ok(Include {
        source_type: source.to_string(),
        param: def.map(|d| param_ref(source, d)),
        target_type: target.map(str::to_string),
        iterate,
    })
}

/// What one filter parameter turned out to be.
enum Parsed {
    Filter(Filter),
    /// Not a parameter of the type: ignorable in lenient mode.
    Unknown,
    /// Defined, but not indexed by this server (composite, special…).
    Unsupported(String),
}

/// One filter parameter being parsed: its full name and value, for errors.
struct Ctx<'a> {
    registry: &'a Registry,
    name: &'a str,
    value: &'a str,
}

impl<'a> Ctx<'a> {
    fn bad_name(&self, why: impl Into<String>) -> SearchError {
        SearchError::BadName {
            param: self.name.into(),
            why: why.into(),
        }
    }

    fn bad_value(&self, why: impl Into<String>) -> SearchError {
        SearchError::BadValue {
            param: self.name.into(),
            value: self.value.into(),
            why: why.into(),
        }
    }

    fn bad_modifier(&self, modifier: &str, why: impl Into<String>) -> SearchError {
        SearchError::BadModifier {
            param: self.name.into(),
            modifier: modifier.into(),
            why: why.into(),
        }
    }

    fn unsupported(&self, why: impl Into<String>) -> SearchError {
        SearchError::Unsupported {
            param: self.name.into(),
            why: why.into(),
        }
    }

    fn lookup(&self, rtype: Option<&str>, code: &str) -> Option<&'a Arc<SearchParamDef>> {
        match rtype {
            Some(t) => self.registry.get(t, code),
            // Resource-level parameters are registered under every type.
            None if SYSTEM_PARAMS.contains(&code) => self
                .registry
                .resource_types()
                .iter()
                .find_map(|t| self.registry.get(t, code)),
            None => None,
        }
    }

    /// `part` is what is left of the name at this level of chaining: at the
    /// top, the whole name.
    fn filter(&self, rtype: Option<&str>, part: &str, depth: usize) -> Result<Parsed, SearchError> {
        if depth > MAX_DEPTH {
            return Err(self.bad_name(format!("chains and _has can be nested at most {MAX_DEPTH} levels deep")));
        }
        if part == "_has" || part.starts_with("_has:") {
            return self.has(rtype, part.strip_prefix("_has:").unwrap_or_default(), depth);
        }
        let (head, chain) = match part.split_once('.') {
            Some((h, c)) => (h, Some(c)),
            None => (part, None),
        };
        let (code, modifier) = match head.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (head, None),
        };
        let Some(def) = self.lookup(rtype, code) else {
            return Ok(Parsed::Unknown);
        };
        if !def.is_supported() {
            return Ok(Parsed::Unsupported(format!(
                "'{code}' ({} parameter) is not indexed by this server",
                def.kind.as_str()
            )));
        }
        let ctx_type = rtype.unwrap_or("Resource");
        match chain {
            Some(rest) => self.chain(ctx_type, def, modifier, rest, depth),
            None => self.values(ctx_type, def, modifier),
        }
    }

    /// `subject:Patient.name=x`: `def` is `subject`, `rest` is `name`.
    fn chain(
        &self,
        ctx_type: &str,
        def: &SearchParamDef,
        modifier: Option<&str>,
        rest: &str,
        depth: usize,
    ) -> Result<Parsed, SearchError> {
        let code = def.code.as_str();
        if def.kind != ParamType::Reference {
            return Err(self.bad_name(format!(
                "'{code}' is a {} parameter; only reference parameters can be chained",
                def.kind.as_str()
            )));
        }
        let next = rest.split(['.', ':']).next().unwrap_or_default();
        let target = match modifier {
            Some(t) if self.registry.is_resource_type(t) => {
                if !targets_allow(def, t) {
                    return Err(
                        self.bad_modifier(t, format!("'{code}' refers to {}, never to a {t}", targets_list(def)))
                    );
                }
                t.to_string()
            }
            Some(m) => {
                return Err(self.bad_modifier(
                    m,
                    format!("only a resource type can come before a chained parameter, as in {code}:Patient.{rest}"),
                ));
            }
            None => self.chain_target(def, next, rest)?,
        };
        let inner = match self.filter(Some(&target), rest, depth + 1)? {
            Parsed::Filter(f) => f,
            Parsed::Unknown => {
                return Err(self.bad_name(format!("'{next}' is not a search parameter of {target}")));
            }
            Parsed::Unsupported(why) => return Err(self.unsupported(why)),
        };
        Ok(Parsed::Filter(Filter::Chain {
            param: param_ref(ctx_type, def),
            target_type: target,
            inner: Box::new(inner),
        }))
    }

    /// The type a chain without `:Type` goes through: the parameter's only
    /// target, or else the only target that has the chained parameter (the
    /// others could not match anyway).
    fn chain_target(&self, def: &SearchParamDef, next: &str, rest: &str) -> Result<String, SearchError> {
        let code = def.code.as_str();
        if let [only] = def.targets.as_slice() {
            return Ok(only.clone());
        }
        let candidates: Vec<&String> = def
            .targets
            .iter()
            .filter(|t| next == "_has" || self.registry.get(t, next).is_some())
            .collect();
        match candidates.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(self.bad_name(format!(
                "'{next}' is not a search parameter of what '{code}' refers to ({})",
                targets_list(def)
            ))),
            several => {
                let names: Vec<&str> = several.iter().map(|s| s.as_str()).collect();
                Err(self.bad_name(format!(
                    "'{code}' can refer to {}; name the type, as in {code}:{}.{rest}",
                    join_or(&names),
                    names.first().copied().unwrap_or_default()
                )))
            }
        }
    }

    /// `_has:Observation:patient:code=x`: `rest` is `Observation:patient:code`.
    fn has(&self, rtype: Option<&str>, rest: &str, depth: usize) -> Result<Parsed, SearchError> {
        // A system search has no type for the reference to point at.
        let Some(target) = rtype else {
            return Ok(Parsed::Unknown);
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(code), Some(inner)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(
                self.bad_name("expected _has:Type:reference-parameter:parameter, as in _has:Observation:patient:code")
            );
        };
        if !self.registry.is_resource_type(source) {
            return Err(self.bad_name(format!("'{source}' is not a FHIR R4 resource type")));
        }
        let Some(def) = self.registry.get(source, code) else {
            return Err(self.bad_name(format!("'{code}' is not a search parameter of {source}")));
        };
        if def.kind != ParamType::Reference {
            return Err(self.bad_name(format!(
                "{source}:{code} is a {} parameter; _has needs a reference parameter",
                def.kind.as_str()
            )));
        }
        if !def.is_supported() {
            return Err(self.unsupported(format!("{source}:{code} is not indexed by this server")));
        }
        if !targets_allow(def, target) {
            return Err(self.bad_name(format!(
                "{source}:{code} refers to {}, never to a {target}",
                targets_list(def)
            )));
        }
        let inner = match self.filter(Some(source), inner, depth + 1)? {
            Parsed::Filter(f) => f,
            Parsed::Unknown => {
                let next = inner.split(['.', ':']).next().unwrap_or_default();
                return Err(self.bad_name(format!("'{next}' is not a search parameter of {source}")));
            }
            Parsed::Unsupported(why) => return Err(self.unsupported(why)),
        };
        Ok(Parsed::Filter(Filter::Has {
            source_type: source.to_string(),
            param: param_ref(source, def),
            inner: Box::new(inner),
        }))
    }

    /// `name[:modifier]=v1,v2`.
    fn values(&self, ctx_type: &str, def: &SearchParamDef, modifier: Option<&str>) -> Result<Parsed, SearchError> {
        let modifier = modifier.map(|m| self.modifier(def, m)).transpose()?;
        let pieces: Vec<&str> = split_unescaped(self.value, ',')
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        let values = if modifier == Some(Modifier::Missing) {
            match pieces.as_slice() {
                ["true"] => vec![SearchValue::Missing(true)],
                ["false"] => vec![SearchValue::Missing(false)],
                _ => return Err(self.bad_value(":missing takes one value, true or false")),
            }
        } else {
            pieces
                .iter()
                .map(|p| self.value_of(def, modifier.as_ref(), p))
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(Parsed::Filter(Filter::Values {
            param: param_ref(ctx_type, def),
            modifier,
            values,
        }))
    }

    fn modifier(&self, def: &SearchParamDef, m: &str) -> Result<Modifier, SearchError> {
        let code = def.code.as_str();
        let kind = def.kind;
        let only = |what: &str| {
            self.bad_modifier(
                m,
                format!(
                    "it applies to {what} parameters, and '{code}' is a {} parameter",
                    kind.as_str()
                ),
            )
        };
        if m == "missing" {
            return Ok(Modifier::Missing);
        }
        // Kept in the resource table, not in the index: only presence and
        // plain values can be searched there.
        if is_resource_column(code) {
            return Err(self.unsupported(format!("the :{m} modifier on {code} is not implemented")));
        }
        Ok(match m {
            "exact" | "contains" if kind == ParamType::String => {
                if m == "exact" {
                    Modifier::Exact
                } else {
                    Modifier::Contains
                }
            }
            "exact" | "contains" => return Err(only("string")),
            "not" if kind == ParamType::Token => Modifier::Not,
            "not" => return Err(only("token")),
            "text" if matches!(kind, ParamType::Token | ParamType::String) => {
                return Err(self.unsupported("the :text modifier is not implemented; search by system|code"));
            }
            "text" => return Err(only("token")),
            "in" | "not-in" | "of-type" if kind == ParamType::Token => {
                return Err(self.unsupported(format!("the :{m} modifier is not implemented")));
            }
            "in" | "not-in" | "of-type" => return Err(only("token")),
            "identifier" if kind == ParamType::Reference => Modifier::Identifier,
            "identifier" => return Err(only("reference")),
            "above" | "below" if kind == ParamType::Uri => {
                if m == "above" {
                    Modifier::Above
                } else {
                    Modifier::Below
                }
            }
            "above" | "below" => return Err(only("uri")),
            t if self.registry.is_resource_type(t) => {
                if kind != ParamType::Reference {
                    return Err(only("reference"));
                }
                if !targets_allow(def, t) {
                    return Err(
                        self.bad_modifier(m, format!("'{code}' refers to {}, never to a {t}", targets_list(def)))
                    );
                }
                Modifier::Type(t.to_string())
            }
            _ => {
                return Err(self.bad_modifier(
                    m,
                    "it is not a FHIR search modifier (missing, exact, contains, not, text, in, not-in, above, below, \
                     of-type, identifier, or a resource type on a reference parameter)",
                ));
            }
        })
    }

    /// One OR-ed value, still escaped.
    fn value_of(
        &self,
        def: &SearchParamDef,
        modifier: Option<&Modifier>,
        raw: &str,
    ) -> Result<SearchValue, SearchError> {
        if modifier == Some(&Modifier::Identifier) {
            return self.token(raw);
        }
        // `_id` is a token without a system: an id never holds a `|`.
        if def.code == "_id" {
            return Ok(SearchValue::Token {
                system: None,
                code: Some(unescape(raw)),
            });
        }
        Ok(match def.kind {
            ParamType::Token => self.token(raw)?,
            ParamType::String => SearchValue::String(unescape(raw)),
            ParamType::Uri => {
                let u = unescape(raw);
                if modifier == Some(&Modifier::Above) && u.matches('/').count() > MAX_URI_SEGMENTS {
                    return Err(SearchError::TooCostly {
                        param: self.name.into(),
                        why: format!(":above takes a URI of at most {MAX_URI_SEGMENTS} segments"),
                    });
                }
                SearchValue::Uri(u)
            }
            ParamType::Date => {
                // An unencoded `+` of a time zone arrives as a space after
                // form decoding; a date never holds a space, so put it back.
                let v = unescape(raw).replace(' ', "+");
                let (prefix, rest) = prefix_of(&v);
                let range = date_range(rest).ok_or_else(|| {
                    self.bad_value(format!(
                        "'{v}' is not a date; expected a date such as 2024-01-31 or 2024-01-31T10:00:00Z, \
                         optionally after a prefix ({PREFIXES})"
                    ))
                })?;
                SearchValue::Date { prefix, range }
            }
            ParamType::Number => {
                let v = unescape(raw);
                let (prefix, rest) = prefix_of(&v);
                let (value, lo, hi) = decimal_with_precision(rest).ok_or_else(|| {
                    self.bad_value(format!(
                        "'{v}' is not a number; expected a number such as 5.4 or 1e2, optionally after a prefix \
                         ({PREFIXES})"
                    ))
                })?;
                SearchValue::Number { prefix, value, lo, hi }
            }
            ParamType::Quantity => self.quantity(raw)?,
            ParamType::Reference => self.reference(def, modifier, raw)?,
            ParamType::Composite | ParamType::Special => {
                return Err(self.unsupported(format!("{} parameters are not implemented", def.kind.as_str())));
            }
        })
    }

    /// `system|code`, `code`, `|code`, `system|`.
    fn token(&self, raw: &str) -> Result<SearchValue, SearchError> {
        match split_unescaped(raw, '|').as_slice() {
            [code] => Ok(SearchValue::Token {
                system: None,
                code: Some(unescape(code)),
            }),
            [system, code] => Ok(SearchValue::Token {
                system: Some(unescape(system)),
                code: (!code.is_empty()).then(|| unescape(code)),
            }),
            _ => Err(self
                .bad_value("expected code, system|code, |code or system|; write a '|' that is part of a code as \\|")),
        }
    }

    /// `[prefix]number`, `[prefix]number|system|code`, `[prefix]number||code`.
    fn quantity(&self, raw: &str) -> Result<SearchValue, SearchError> {
        let (prefix, rest) = prefix_of(raw);
        let parts = split_unescaped(rest, '|');
        let (number, system, code) = match parts.as_slice() {
            [n] => (*n, None, None),
            [n, s, c] => (
                *n,
                (!s.is_empty()).then(|| unescape(s)),
                (!c.is_empty()).then(|| unescape(c)),
            ),
            _ => {
                return Err(self.bad_value(
                    "expected a number, number|system|code or number||code, as in 5.4|http://unitsofmeasure.org|mg",
                ));
            }
        };
        let (value, lo, hi) = decimal_with_precision(&unescape(number)).ok_or_else(|| {
            self.bad_value(format!(
                "'{number}' is not a number; expected a number such as 5.4, optionally after a prefix ({PREFIXES})"
            ))
        })?;
        Ok(SearchValue::Quantity {
            prefix,
            value,
            lo,
            hi,
            system,
            code,
        })
    }

    /// `Patient/123`, `123`, `Patient/123/_history/2`, or an absolute URL.
    fn reference(
        &self,
        def: &SearchParamDef,
        modifier: Option<&Modifier>,
        raw: &str,
    ) -> Result<SearchValue, SearchError> {
        let v = unescape(raw);
        let code = def.code.as_str();
        let type_modifier = match modifier {
            Some(Modifier::Type(t)) => Some(t.as_str()),
            _ => None,
        };
        if v.starts_with("urn:") {
            return Ok(SearchValue::Reference {
                rtype: None,
                id: v,
                version: None,
            });
        }
        if v.contains("://") {
            // As extraction indexes them: an absolute URL ending in Type/id
            // (or Type/id/_history/v) is that resource; any other URL is
            // matched as written.
            let path = v.split(['?', '#']).next().unwrap_or(&v);
            let segs: Vec<&str> = path.rsplit('/').collect();
            let found = match segs.as_slice() {
                [vid, "_history", id, t, ..] => Some((*t, *id, Some(vid.to_string()))),
                [id, t, ..] => Some((*t, *id, None)),
                _ => None,
            }
            .filter(|(t, id, _)| self.registry.is_resource_type(t) && is_fhir_id(id));
            return Ok(match found {
                Some((t, id, version)) => SearchValue::Reference {
                    rtype: Some(t.to_string()),
                    id: id.to_string(),
                    version,
                },
                None => SearchValue::Reference {
                    rtype: None,
                    id: v,
                    version: None,
                },
            });
        }
        let segments: Vec<&str> = v.split('/').collect();
        let (written_type, id, version) = match segments.as_slice() {
            [id] => (None, *id, None),
            [t, id] => (Some(*t), *id, None),
            [t, id, "_history", version] => (Some(*t), *id, Some(*version)),
            _ => {
                return Err(self.bad_value(
                    "expected an id, Type/id, Type/id/_history/version or an absolute URL, as in Patient/123",
                ));
            }
        };
        if !is_fhir_id(id) || version.is_some_and(|v| !is_fhir_id(v)) {
            return Err(self.bad_value("a resource id is 1 to 64 letters, digits, '-' or '.'"));
        }
        let rtype = match written_type {
            Some(t) => {
                if !self.registry.is_resource_type(t) {
                    return Err(self.bad_value(format!("'{t}' is not a FHIR R4 resource type")));
                }
                if let Some(m) = type_modifier
                    && m != t
                {
                    return Err(self.bad_value(format!("the value names a {t}, but :{m} asks for a {m}")));
                }
                if !targets_allow(def, t) {
                    return Err(self.bad_value(format!("'{code}' refers to {}, never to a {t}", targets_list(def))));
                }
                Some(t.to_string())
            }
            None => match (type_modifier, def.targets.as_slice()) {
                (Some(m), _) => Some(m.to_string()),
                (None, [only]) => Some(only.clone()),
                // Several possible types: the store matches the id in any of them.
                (None, _) => None,
            },
        };
        Ok(SearchValue::Reference {
            rtype,
            id: id.to_string(),
            version: version.map(str::to_string),
        })
    }
}

const PREFIXES: &str = "eq, ne, gt, lt, ge, le, sa, eb, ap";

/// A prefix of a number, date or quantity value; `eq` when none is written.
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

/// `_id` and `_lastUpdated` are columns of the resource itself, shared by
/// all types: their `ParamRef` names `Resource`.
fn is_resource_column(code: &str) -> bool {
    matches!(code, "_id" | "_lastUpdated")
}

fn param_ref(ctx_type: &str, def: &SearchParamDef) -> ParamRef {
    let resource_type = if is_resource_column(&def.code) {
        "Resource"
    } else {
        ctx_type
    };
    ParamRef {
        resource_type: resource_type.to_string(),
        code: def.code.clone(),
        kind: def.kind,
    }
}

fn targets_allow(def: &SearchParamDef, t: &str) -> bool {
    def.targets.is_empty() || def.targets.iter().any(|x| x == t)
}

/// The targets of a reference parameter, for a message: short lists in full.
fn targets_list(def: &SearchParamDef) -> String {
    match def.targets.len() {
        0 => "any resource type".into(),
        1..=6 => {
            let names: Vec<&str> = def.targets.iter().map(String::as_str).collect();
            join_or(&names)
        }
        n => format!("one of {n} resource types"),
    }
}

/// `A`, `A or B`, `A, B or C`.
fn join_or(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// FHIR `id`: `[A-Za-z0-9\-\.]{1,64}`.
fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Splits on `sep` where it is not escaped by a backslash. The pieces keep
/// their escapes, so that a later split on another separator still sees them.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// Removes the backslash of `\,` `\|` `\$` `\\`; any other backslash is
/// part of the value.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&n) = chars.peek()
            && matches!(n, ',' | '|' | '$' | '\\')
        {
            out.push(n);
            chars.next();
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a query string the way the HTTP layer does (form decoding).
    fn pairs(query: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    fn search(url: &str) -> Result<SearchRequest, SearchError> {
        search_with(url, &ParseOptions::default())
    }

    fn strict(url: &str) -> Result<SearchRequest, SearchError> {
        search_with(
            url,
            &ParseOptions {
                strict: true,
                ..ParseOptions::default()
            },
        )
    }

    /// `Prefer: handling=lenient`.
    fn lenient(url: &str) -> SearchRequest {
        let opts = ParseOptions {
            strict: false,
            ..ParseOptions::default()
        };
        match search_with(url, &opts) {
            Ok(r) => r,
            Err(e) => panic!("{url}: {e}"),
        }
    }

    /// `Patient?name=x` is a type search, `?_id=x` a system search.
    fn search_with(url: &str, opts: &ParseOptions) -> Result<SearchRequest, SearchError> {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let rtype = (!path.is_empty()).then_some(path);
        parse_search(Registry::r4(), rtype, &pairs(query), opts)
    }

    fn ok(url: &str) -> SearchRequest {
        match search(url) {
            Ok(r) => r,
            Err(e) => panic!("{url}: {e}"),
        }
    }

    fn err(url: &str) -> SearchError {
        match search(url) {
            Ok(r) => panic!("{url} should be refused, got {r:?}"),
            Err(e) => e,
        }
    }

    fn pref(t: &str, code: &str, kind: ParamType) -> ParamRef {
        ParamRef {
            resource_type: t.into(),
            code: code.into(),
            kind,
        }
    }

    fn token(system: Option<&str>, code: Option<&str>) -> SearchValue {
        SearchValue::Token {
            system: system.map(str::to_string),
            code: code.map(str::to_string),
        }
    }

    fn reference(rtype: Option<&str>, id: &str, version: Option<&str>) -> SearchValue {
        SearchValue::Reference {
            rtype: rtype.map(str::to_string),
            id: id.into(),
            version: version.map(str::to_string),
        }
    }

    /// The values of the only filter, which must be a plain one.
    fn only_values(r: &SearchRequest) -> (&ParamRef, Option<&Modifier>, &[SearchValue]) {
        match r.filters.as_slice() {
            [
                Filter::Values {
                    param,
                    modifier,
                    values,
                },
            ] => (param, modifier.as_ref(), values),
            other => panic!("expected one plain filter, got {other:?}"),
        }
    }

    fn values_of(url: &str) -> Vec<SearchValue> {
        only_values(&ok(url)).2.to_vec()
    }

    fn applied(r: &SearchRequest) -> Vec<(&str, &str)> {
        r.applied.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn a_gp_software_looks_a_patient_up_by_ins() {
        let r = ok("Patient?identifier=urn:oid:1.2.250.1.213.1.4.8|1234567890123");
        assert_eq!(r.resource_type.as_deref(), Some("Patient"));
        assert_eq!(
            r.filters,
            [Filter::Values {
                param: pref("Patient", "identifier", ParamType::Token),
                modifier: None,
                values: vec![token(Some("urn:oid:1.2.250.1.213.1.4.8"), Some("1234567890123"))],
            }]
        );
        assert_eq!(r.count, 20);
        assert_eq!(r.page, PageStart::First);
        assert!(r.ignored.is_empty());
    }

    #[test]
    fn prescriptions_of_a_patient_in_two_statuses() {
        let r = ok("ServiceRequest?patient=Patient/1&status=active,on-hold");
        assert_eq!(
            r.filters,
            [
                Filter::Values {
                    param: pref("ServiceRequest", "patient", ParamType::Reference),
                    modifier: None,
                    values: vec![reference(Some("Patient"), "1", None)],
                },
                Filter::Values {
                    param: pref("ServiceRequest", "status", ParamType::Token),
                    modifier: None,
                    values: vec![token(None, Some("active")), token(None, Some("on-hold"))],
                },
            ]
        );
        assert_eq!(applied(&r), [("patient", "Patient/1"), ("status", "active,on-hold")]);
    }

    #[test]
    fn weights_of_the_first_half_of_2024() {
        let r = ok("Observation?code=http://loinc.org|29463-7&date=ge2024-01-01&date=lt2024-07-01");
        let [code, from, to] = r.filters.as_slice() else {
            panic!("{:?}", r.filters)
        };
        assert_eq!(
            code,
            &Filter::Values {
                param: pref("Observation", "code", ParamType::Token),
                modifier: None,
                values: vec![token(Some("http://loinc.org"), Some("29463-7"))],
            }
        );
        let date = |prefix, d| Filter::Values {
            param: pref("Observation", "date", ParamType::Date),
            modifier: None,
            values: vec![SearchValue::Date {
                prefix,
                range: date_range(d).unwrap(),
            }],
        };
        assert_eq!(from, &date(Prefix::Ge, "2024-01-01"));
        assert_eq!(to, &date(Prefix::Lt, "2024-07-01"));
    }

    #[test]
    fn token_forms() {
        assert_eq!(values_of("Patient?gender=female"), [token(None, Some("female"))]);
        assert_eq!(values_of("Patient?identifier=|123"), [token(Some(""), Some("123"))]);
        assert_eq!(
            values_of("Patient?identifier=urn:oid:1.2.3|"),
            [token(Some("urn:oid:1.2.3"), None)]
        );
        // Escaped separators belong to the code.
        assert_eq!(
            values_of(r"Patient?identifier=sys|a\|b\,c,d"),
            [token(Some("sys"), Some("a|b,c")), token(None, Some("d"))]
        );
        assert!(matches!(err("Patient?identifier=a|b|c"), SearchError::BadValue { .. }));
    }

    #[test]
    fn strings_are_text_as_written() {
        assert_eq!(
            values_of(r"Patient?name=Dupont\,Marie"),
            [SearchValue::String("Dupont,Marie".into())]
        );
        // A prefix means nothing on a string: `gt` is the start of a name.
        assert_eq!(values_of("Patient?family=gtest"), [SearchValue::String("gtest".into())]);
        let r = ok("Patient?name:exact=Hélène&family:contains=vêque");
        assert!(matches!(
            &r.filters[0],
            Filter::Values {
                modifier: Some(Modifier::Exact),
                ..
            }
        ));
        assert!(matches!(
            &r.filters[1],
            Filter::Values {
                modifier: Some(Modifier::Contains),
                ..
            }
        ));
    }

    #[test]
    fn reference_forms() {
        // `patient` only refers to a Patient: a bare id gets the type.
        assert_eq!(
            values_of("Observation?patient=123"),
            [reference(Some("Patient"), "123", None)]
        );
        // `subject` may be a Patient, Group, Device or Location.
        assert_eq!(values_of("Observation?subject=123"), [reference(None, "123", None)]);
        let r = ok("Observation?subject:Patient=123");
        assert_eq!(
            only_values(&r),
            (
                &pref("Observation", "subject", ParamType::Reference),
                Some(&Modifier::Type("Patient".into())),
                &[reference(Some("Patient"), "123", None)][..]
            )
        );
        assert_eq!(
            values_of("Observation?subject=Patient/123/_history/2"),
            [reference(Some("Patient"), "123", Some("2"))]
        );
        assert_eq!(
            values_of("Observation?subject=https://other.example/fhir/Patient/9"),
            [reference(Some("Patient"), "9", None)]
        );
        for bad in [
            "Observation?subject=Practitioner/1",
            "Observation?subject=Nope/1",
            "Observation?subject:Patient=Group/1",
            "Observation?subject=Patient/1/2",
            "Observation?subject=Patient/",
            "Observation?subject:Practitioner=1",
        ] {
            let e = err(bad);
            assert_eq!(e.param().map(|p| p.starts_with("subject")), Some(true), "{bad}: {e}");
        }
    }

    #[test]
    fn reference_by_identifier_is_a_token() {
        let r = ok("ServiceRequest?requester:identifier=https://rpps.esante.gouv.fr|10101010101");
        assert_eq!(
            only_values(&r),
            (
                &pref("ServiceRequest", "requester", ParamType::Reference),
                Some(&Modifier::Identifier),
                &[token(Some("https://rpps.esante.gouv.fr"), Some("10101010101"))][..]
            )
        );
    }

    #[test]
    fn numbers_and_quantities_take_prefixes() {
        let v = values_of("Observation?value-quantity=gt5.4|http://unitsofmeasure.org|mg");
        assert!(matches!(
            &v[..],
            [SearchValue::Quantity { prefix: Prefix::Gt, value, system: Some(s), code: Some(c), .. }]
                if *value == 5.4 && s == "http://unitsofmeasure.org" && c == "mg"
        ));
        let v = values_of("Observation?value-quantity=5.4||mg");
        assert!(matches!(
            &v[..],
            [SearchValue::Quantity { prefix: Prefix::Eq, system: None, code: Some(c), .. }] if c == "mg"
        ));
        let v = values_of("Observation?value-quantity=ap100");
        assert!(matches!(
            &v[..],
            [SearchValue::Quantity { prefix: Prefix::Ap, value, lo, hi, system: None, code: None }]
                if *value == 100.0 && *lo == 99.5 && *hi == 100.5
        ));
        let v = values_of("RiskAssessment?probability=le0.5");
        assert!(matches!(&v[..], [SearchValue::Number { prefix: Prefix::Le, value, .. }] if *value == 0.5));
        for bad in [
            "Observation?value-quantity=abc",
            "Observation?value-quantity=gtx",
            "Observation?value-quantity=5.4|mg",
            "RiskAssessment?probability=zz0.5",
        ] {
            assert!(matches!(err(bad), SearchError::BadValue { .. }), "{bad}");
        }
    }

    #[test]
    fn dates() {
        let v = values_of("Patient?birthdate=eb1950");
        assert_eq!(
            v,
            [SearchValue::Date {
                prefix: Prefix::Eb,
                range: date_range("1950").unwrap()
            }]
        );
        // An unencoded `+` arrives as a space.
        let v = values_of("Observation?date=ge2024-03-05T10:00:00+01:00");
        assert_eq!(
            v,
            [SearchValue::Date {
                prefix: Prefix::Ge,
                range: date_range("2024-03-05T10:00:00+01:00").unwrap()
            }]
        );
        let e = err("Patient?birthdate=2024-02-30");
        assert_eq!(e.param(), Some("birthdate"));
        assert!(e.to_string().contains("2024-02-30"), "{e}");
        assert!(matches!(err("Patient?birthdate=ge"), SearchError::BadValue { .. }));
        assert!(matches!(err("Patient?birthdate=xx2024"), SearchError::BadValue { .. }));
    }

    #[test]
    fn uris_above_and_below() {
        let r = ok("ValueSet?url:below=http://example.org/fhir/ValueSet");
        assert_eq!(
            only_values(&r),
            (
                &pref("ValueSet", "url", ParamType::Uri),
                Some(&Modifier::Below),
                &[SearchValue::Uri("http://example.org/fhir/ValueSet".into())][..]
            )
        );
        assert!(matches!(err("Patient?name:below=x"), SearchError::BadModifier { .. }));
    }

    #[test]
    fn missing_works_on_every_type() {
        for url in [
            "Patient?birthdate:missing=true",
            "Observation?subject:missing=false",
            "Patient?identifier:missing=true",
            "Patient?_lastUpdated:missing=false",
        ] {
            let r = ok(url);
            let (_, modifier, values) = only_values(&r);
            assert_eq!(modifier, Some(&Modifier::Missing), "{url}");
            assert!(matches!(values, [SearchValue::Missing(_)]), "{url}");
        }
        assert!(matches!(
            err("Patient?birthdate:missing=maybe"),
            SearchError::BadValue { .. }
        ));
        assert!(matches!(
            err("Patient?birthdate:missing=true,false"),
            SearchError::BadValue { .. }
        ));
    }

    #[test]
    fn not_on_a_token() {
        let r = ok("ServiceRequest?status:not=revoked");
        assert_eq!(only_values(&r).1, Some(&Modifier::Not));
    }

    #[test]
    fn modifiers_in_the_wrong_place_are_refused_even_when_lenient() {
        for (url, kind) in [
            ("Patient?identifier:contains=123", "modifier"),
            ("Patient?name:nope=x", "modifier"),
            ("Patient?gender:exact=male", "modifier"),
            ("Patient?name:not=x", "modifier"),
            ("Patient?birthdate:identifier=x", "modifier"),
            ("Patient?name:Patient=x", "modifier"),
            ("Observation?code:text=poids", "unsupported"),
            ("Observation?code:in=http://example.org/vs", "unsupported"),
            ("Patient?_id:not=1", "unsupported"),
            ("Patient?_include:nope=Patient:organization", "modifier"),
            ("Patient?_count:x=2", "modifier"),
        ] {
            let e = err(url);
            let got = match e {
                SearchError::BadModifier { .. } => "modifier",
                SearchError::Unsupported { .. } => "unsupported",
                _ => "other",
            };
            assert_eq!(got, kind, "{url}: {e}");
        }
        let e = err("Patient?identifier:contains=123");
        assert_eq!(e.param(), Some("identifier:contains"));
    }

    #[test]
    fn id_and_last_updated_are_resource_columns() {
        let r = ok("Patient?_id=a,b&_lastUpdated=gt2024-06-01");
        assert_eq!(
            r.filters[0],
            Filter::Values {
                param: pref("Resource", "_id", ParamType::Token),
                modifier: None,
                values: vec![token(None, Some("a")), token(None, Some("b"))],
            }
        );
        assert!(matches!(
            &r.filters[1],
            Filter::Values { param, values, .. }
                if *param == pref("Resource", "_lastUpdated", ParamType::Date)
                    && matches!(values[..], [SearchValue::Date { prefix: Prefix::Gt, .. }])
        ));
        // Resource-level parameters other than these belong to the type.
        let r = ok("Patient?_tag=http://example.org|demo");
        assert_eq!(only_values(&r).0, &pref("Patient", "_tag", ParamType::Token));
    }

    #[test]
    fn chains() {
        let r = ok("ServiceRequest?subject:Patient.identifier=urn:oid:1.2.250.1.213.1.4.8|1234567890123");
        assert_eq!(
            r.filters,
            [Filter::Chain {
                param: pref("ServiceRequest", "subject", ParamType::Reference),
                target_type: "Patient".into(),
                inner: Box::new(Filter::Values {
                    param: pref("Patient", "identifier", ParamType::Token),
                    modifier: None,
                    values: vec![token(Some("urn:oid:1.2.250.1.213.1.4.8"), Some("1234567890123"))],
                }),
            }]
        );
        // The only target.
        let r = ok("Observation?patient.name=dupont");
        assert!(matches!(&r.filters[0], Filter::Chain { target_type, .. } if target_type == "Patient"));
        // Of Patient, Group, Device and Location, only Patient has `family`.
        let r = ok("Observation?subject.family=dupont");
        assert!(matches!(&r.filters[0], Filter::Chain { target_type, .. } if target_type == "Patient"));
        // All four have a name: the client must say which.
        let e = err("Observation?subject.name=dupont");
        assert!(matches!(e, SearchError::BadName { .. }), "{e}");
        assert!(e.to_string().contains("subject:"), "{e}");
        // Two levels, with a modifier at the end.
        let r = ok("Observation?subject:Patient.organization.name:exact=Maison Sport Santé");
        let Filter::Chain { inner, .. } = &r.filters[0] else {
            panic!()
        };
        let Filter::Chain {
            param,
            target_type,
            inner,
        } = inner.as_ref()
        else {
            panic!("{inner:?}")
        };
        assert_eq!(param, &pref("Patient", "organization", ParamType::Reference));
        assert_eq!(target_type, "Organization");
        assert_eq!(
            inner.as_ref(),
            &Filter::Values {
                param: pref("Organization", "name", ParamType::String),
                modifier: Some(Modifier::Exact),
                values: vec![SearchValue::String("Maison Sport Santé".into())],
            }
        );
        for bad in [
            "Observation?subject:Patient.nope=x",
            "Observation?code.name=x",
            "Observation?subject:Practitioner.name=x",
            "Observation?subject:exact.name=x",
            "Observation?subject:Patient.birthdate=notadate",
        ] {
            let e = err(bad);
            assert!(e.param().is_some_and(|p| bad.contains(p)), "{bad}: {e}");
        }
    }

    #[test]
    fn chains_are_bounded() {
        let four = "Patient?organization.partof.partof.partof.name=x";
        assert_eq!(ok(four).filters.len(), 1);
        let e = err("Patient?organization.partof.partof.partof.partof.name=x");
        assert!(e.to_string().contains("at most 4 levels"), "{e}");
        let long = format!("Patient?organization{}.name=x", ".partof".repeat(5000));
        assert!(matches!(err(&long), SearchError::BadName { .. }));
    }

    #[test]
    fn reverse_chains() {
        let r = ok("Patient?_has:Observation:patient:code=http://loinc.org|29463-7");
        assert_eq!(
            r.filters,
            [Filter::Has {
                source_type: "Observation".into(),
                param: pref("Observation", "patient", ParamType::Reference),
                inner: Box::new(Filter::Values {
                    param: pref("Observation", "code", ParamType::Token),
                    modifier: None,
                    values: vec![token(Some("http://loinc.org"), Some("29463-7"))],
                }),
            }]
        );
        // Patients with a prescription that a task is about.
        let r = ok("Patient?_has:ServiceRequest:subject:_has:Task:focus:status=completed");
        let Filter::Has { inner, .. } = &r.filters[0] else {
            panic!()
        };
        assert!(matches!(inner.as_ref(), Filter::Has { source_type, .. } if source_type == "Task"));
        for bad in [
            "Patient?_has:Nope:patient:code=x",
            "Patient?_has:Observation:code:code=x",
            "Patient?_has:Observation:nope:code=x",
            "Patient?_has:Observation:patient:nope=x",
            "Patient?_has:Observation:patient=x",
            "Practitioner?_has:Observation:patient:code=x",
        ] {
            let e = err(bad);
            assert!(e.param().is_some_and(|p| p.starts_with("_has")), "{bad}: {e}");
        }
    }

    #[test]
    fn includes() {
        let r = ok(
            "MedicationRequest?_include=MedicationRequest:patient&_include=MedicationRequest:requester:Practitioner&_include:iterate=PractitionerRole:organization&_revinclude=Provenance:target&_revinclude:iterate=Task:focus",
        );
        assert_eq!(
            r.include,
            [
                Include {
                    source_type: "MedicationRequest".into(),
                    param: Some(pref("MedicationRequest", "patient", ParamType::Reference)),
                    target_type: None,
                    iterate: false,
                },
                Include {
                    source_type: "MedicationRequest".into(),
                    param: Some(pref("MedicationRequest", "requester", ParamType::Reference)),
                    target_type: Some("Practitioner".into()),
                    iterate: false,
                },
                Include {
                    source_type: "PractitionerRole".into(),
                    param: Some(pref("PractitionerRole", "organization", ParamType::Reference)),
                    target_type: None,
                    iterate: true,
                },
            ]
        );
        assert_eq!(r.revinclude.len(), 2);
        assert!(!r.revinclude[0].iterate && r.revinclude[1].iterate);
        assert_eq!(r.applied[2].0, "_include:iterate");
        let r = ok("Observation?_include=*&_include=Observation:*");
        assert!(
            r.include
                .iter()
                .all(|i| i.param.is_none() && i.source_type == "Observation")
        );
        for bad in [
            "ServiceRequest?_include=ServiceRequest:status",
            "ServiceRequest?_include=ServiceRequest:nope",
            "ServiceRequest?_include=Nope:subject",
            "ServiceRequest?_include=ServiceRequest:subject:Practitioner",
            "ServiceRequest?_include=ServiceRequest",
            "ServiceRequest?_revinclude=*",
            "ServiceRequest?_include=a:b:c:d",
        ] {
            let e = err(bad);
            assert!(matches!(e, SearchError::BadValue { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn sort() {
        let r = ok("ServiceRequest?_sort=-authored,_id&_sort=_lastUpdated");
        assert_eq!(
            r.sort,
            [
                Sort {
                    key: SortKey::Param(pref("ServiceRequest", "authored", ParamType::Date)),
                    descending: true
                },
                Sort {
                    key: SortKey::Id,
                    descending: false
                },
                Sort {
                    key: SortKey::LastUpdated,
                    descending: false
                },
            ]
        );
        let e = err("Patient?_sort=nope");
        assert_eq!(e.param(), Some("_sort"));
        assert!(
            e.to_string().contains("'nope' is not a search parameter of Patient"),
            "{e}"
        );
        assert!(matches!(err("?_sort=name"), SearchError::BadValue { .. }));
        assert_eq!(ok("?_sort=-_lastUpdated").sort.len(), 1);
    }

    #[test]
    fn result_parameters() {
        let r = ok(
            "Patient?_count=5000&_total=accurate&_summary=count&_elements=name, birthDate&_format=json&_pretty=true",
        );
        assert_eq!(r.count, 1000);
        assert_eq!(r.total, Total::Accurate);
        assert_eq!(r.summary, Some(Summary::Count));
        assert_eq!(r.elements, ["name", "birthDate"]);
        assert_eq!(
            applied(&r),
            [
                ("_count", "1000"),
                ("_total", "accurate"),
                ("_summary", "count"),
                ("_elements", "name, birthDate"),
                ("_format", "json"),
                ("_pretty", "true"),
            ]
        );
        assert_eq!(ok("Patient?_count=0").count, 0);
        assert_eq!(ok("Patient?_count=99999999999999999999999").count, 1000);
        let small = search_with(
            "Patient?name=x",
            &ParseOptions {
                default_count: 2,
                max_count: 2,
                ..ParseOptions::default()
            },
        )
        .unwrap();
        assert_eq!(small.count, 2);
        for bad in [
            "Patient?_count=-1",
            "Patient?_count=ten",
            "Patient?_total=all",
            "Patient?_summary=yes",
        ] {
            assert!(matches!(err(bad), SearchError::BadValue { .. }), "{bad}");
        }
    }

    #[test]
    fn paging_tokens_round_trip() {
        let r = ok("Patient?name=dupont&_count=10&_page_after=42");
        assert_eq!(r.page, PageStart::After(42));
        assert_eq!(r.applied.last(), Some(&(PAGE_AFTER.to_string(), "42".to_string())));
        let r = ok("Patient?name=dupont&_sort=birthdate&_offset=40");
        assert_eq!(r.page, PageStart::Offset(40));
        // The server's own links: `applied` without the token, plus the new one.
        for url in [
            "Patient?name=dupont&_count=10&_page_after=42",
            "Patient?name=dupont&_sort=birthdate&_offset=40",
        ] {
            let r = ok(url);
            let mut link: Vec<(String, String)> = r
                .applied
                .iter()
                .filter(|(k, _)| k != PAGE_AFTER && k != PAGE_OFFSET)
                .cloned()
                .collect();
            link.push(match r.page {
                PageStart::After(pk) => (PAGE_AFTER.into(), pk.to_string()),
                PageStart::Offset(o) => (PAGE_OFFSET.into(), o.to_string()),
                PageStart::First => panic!(),
            });
            let query = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&link)
                .finish();
            assert_eq!(ok(&format!("Patient?{query}")), r, "{url}");
        }
        for bad in [
            "Patient?_page_after=abc",
            "Patient?_offset=-5",
            "Patient?_page_after=42&_sort=name",
            "Patient?_offset=40",
        ] {
            let e = err(bad);
            assert!(
                e.param().is_some_and(|p| p == PAGE_AFTER || p == PAGE_OFFSET),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn self_link_survives_a_round_trip() {
        let url = "Observation?subject:Patient.identifier=urn:oid:1.2.250.1.213.1.4.8|123&date=ge2024-01-01T10:00:00+01:00&code=a\\,b,c&_include:iterate=Observation:patient&_sort=-date&foo=bar";
        let r = lenient(url);
        assert_eq!(r.ignored, ["foo"]);
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&r.applied)
            .finish();
        let again = ok(&format!("Observation?{query}"));
        assert_eq!(again.filters, r.filters);
        assert_eq!(again.applied, r.applied);
        assert_eq!(again.include, r.include);
        assert!(again.ignored.is_empty());
    }

    #[test]
    fn unknown_parameters_are_refused_unless_lenient() {
        let r = lenient("Patient?foo=bar&gender=male&name=&_contained=true&_text=x");
        assert_eq!(r.ignored, ["foo", "_contained", "_text"]);
        assert_eq!(applied(&r), [("gender", "male")]);
        assert_eq!(r.filters.len(), 1);
        assert!(matches!(
            strict("Patient?foo=bar"),
            Err(SearchError::UnknownParameter(p)) if p == "foo"
        ));
        assert!(matches!(
            strict("Patient?_contained=true"),
            Err(SearchError::Unsupported { .. })
        ));
        // Composite parameters are defined but not indexed.
        assert!(matches!(
            strict("Observation?code-value-quantity=x"),
            Err(SearchError::Unsupported { .. })
        ));
        assert_eq!(
            lenient("Observation?code-value-quantity=x").ignored,
            ["code-value-quantity"]
        );
        // Strict is the default: no parameter is dropped unless asked.
        for unknown in ["foo", "_filter", "_text", "_content", "_contained", "_query", "_list"] {
            let e = err(&format!("Patient?{unknown}=x"));
            assert_eq!(e.param(), Some(unknown));
        }
        // An empty value is no parameter at all, even when strict.
        assert!(strict("Patient?nope=&gender=,").unwrap().applied.is_empty());
        let e = strict("Patient?foo=bar").unwrap_err();
        assert_eq!(e.param(), Some("foo"));
        assert!(e.to_string().contains("handling=lenient"));
    }

    #[test]
    fn system_search() {
        let r = ok(
            "?_id=1&_lastUpdated=ge2024&_tag=http://example.org|demo&_profile=http://example.org/sd&_security=R&_count=5",
        );
        assert_eq!(r.resource_type, None);
        assert_eq!(r.filters.len(), 5);
        assert!(
            matches!(&r.filters[2], Filter::Values { param, .. } if param == &pref("Resource", "_tag", ParamType::Token))
        );
        assert!(lenient("?name=x").ignored == ["name"]);
        assert!(matches!(strict("?name=x"), Err(SearchError::UnknownParameter(_))));
        assert_eq!(lenient("?_has:Observation:patient:code=x").ignored.len(), 1);
        // `_type` with one type makes it that type's search, whatever the order.
        let r = ok("?name=dupont&_type=Patient");
        assert_eq!(r.resource_type.as_deref(), Some("Patient"));
        assert_eq!(only_values(&r).0, &pref("Patient", "name", ParamType::String));
        assert_eq!(applied(&r), [("name", "dupont"), ("_type", "Patient")]);
        assert_eq!(
            ok("?_type=Patient,Practitioner&_type=Patient").resource_type.as_deref(),
            Some("Patient")
        );
        assert!(matches!(
            err("?_type=Patient,Practitioner"),
            SearchError::Unsupported { .. }
        ));
        assert!(matches!(err("?_type=Patients"), SearchError::BadValue { .. }));
        assert!(matches!(
            err("?_type=Patient&_type=Practitioner"),
            SearchError::BadName { .. }
        ));
        assert_eq!(ok("?_type=,&_id=1").resource_type, None);
        // At type level, `_type` is no parameter of the type.
        assert_eq!(lenient("Patient?_type=Patient").ignored, ["_type"]);
    }

    #[test]
    fn errors_name_the_parameter_and_say_why() {
        let e = err("Observation?value-quantity=abc");
        assert_eq!(e.param(), Some("value-quantity"));
        assert_eq!(
            e.to_string(),
            "invalid value 'abc' for 'value-quantity': 'abc' is not a number; expected a number such as 5.4, \
             optionally after a prefix (eq, ne, gt, lt, ge, le, sa, eb, ap)"
        );
        let e = err("Patient?identifier:contains=123");
        assert_eq!(
            e.to_string(),
            "'identifier:contains': the modifier ':contains' cannot be used here: it applies to string parameters, \
             and 'identifier' is a token parameter"
        );
        let e = err("ServiceRequest?_include=ServiceRequest:status");
        assert_eq!(
            e.to_string(),
            "invalid value 'ServiceRequest:status' for '_include': ServiceRequest:status is a token parameter; \
             only reference parameters can be included"
        );
    }

    fn too_costly(url: &str) -> String {
        match search(url) {
            Err(SearchError::TooCostly { param, .. }) => param,
            other => panic!("{url} should be too costly, got {other:?}"),
        }
    }

    #[test]
    fn a_search_over_the_limits_is_refused_naming_the_parameter() {
        let repeated = vec!["_id=a"; 932].join("&");
        assert_eq!(too_costly(&format!("Patient?{repeated}")), "_id");
        let or_values: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
        assert_eq!(too_costly(&format!("Observation?code={}", or_values.join(","))), "code");
        // 6 × 99 values: each list is allowed, not their sum.
        let list = or_values[..99].join(",");
        let many = (0..6).map(|_| format!("code={list}")).collect::<Vec<_>>().join("&");
        assert_eq!(too_costly(&format!("Observation?{many}")), "code");
        let includes = vec!["_include=Observation:subject"; 17].join("&");
        assert_eq!(too_costly(&format!("Observation?{includes}")), "_include");
        let sort: Vec<&str> = vec!["_id"; 101];
        assert_eq!(too_costly(&format!("Patient?_sort={}", sort.join(","))), "_sort");
        let deep_uri = format!("http://x.org/{}", vec!["a"; 100].join("/"));
        assert_eq!(too_costly(&format!("ValueSet?url:above={deep_uri}")), "url:above");
        // Just under the limits: accepted.
        let repeated = vec!["_id=a"; 63].join("&");
        assert_eq!(ok(&format!("Patient?{repeated}&_page_after=3")).filters.len(), 63);
        assert_eq!(values_of(&format!("Observation?code={list}")).len(), 99);
    }

    #[test]
    fn values_no_database_can_hold_are_refused() {
        assert!(matches!(err("Patient?name=a%00b"), SearchError::BadValue { .. }));
        assert!(matches!(err("Patient?na%00me=ab"), SearchError::BadValue { .. }));
        // Exponents that overflow, offsets beyond any result.
        assert!(search("Observation?value-quantity=0.00001e-2147483648").is_ok());
        assert!(matches!(
            err("Observation?value-quantity=0e99999"),
            SearchError::BadValue { .. }
        ));
        let e = err("Patient?_sort=_id&_offset=18446744073709551615");
        assert_eq!(e.param(), Some(PAGE_OFFSET));
        // A token has no order.
        let e = err("Task?_sort=status");
        assert_eq!(e.param(), Some("_sort"));
    }
}
