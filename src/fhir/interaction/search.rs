//! search-type and search-system (GET and POST `_search`).

use serde_json::json;

use crate::fhir::bundle_writer::BundleWriter;
use crate::fhir::error::{FhirError, Issue, Severity, outcome_json};
use crate::fhir::search::model::{Filter, Include, PageStart, ParamRef, ParamType, SearchRequest, Summary};
use crate::fhir::search::parse::{PAGE_AFTER, PAGE_OFFSET, ParseOptions, SearchLimits, parse_search};
use crate::fhir::search::registry::Registry;
use crate::fhir::summary::subset;
use crate::security::Caller;
use crate::security::audit::AUDIT_EVENT;
use crate::security::scopes::Perm;
use crate::security::trail;
use crate::store::Store;

use super::{Reply, link};

pub struct SearchInput<'a> {
    pub base: &'a str,
    pub resource_type: Option<&'a str>,
    pub params: &'a [(String, String)],
    /// Unknown parameters are refused; `false` only under
    /// `Prefer: handling=lenient`, and then the Bundle says what was ignored.
    pub strict: bool,
    pub limits: SearchLimits,
}

pub async fn search(store: &Store, caller: &Caller, input: SearchInput<'_>) -> Result<Reply, FhirError> {
    // The audit trail has a table of its own (`GET [base]?_type=AuditEvent`
    // is a search of it too).
    if input.resource_type == Some(AUDIT_EVENT) {
        return trail::search(store, caller, input).await;
    }
    if input.resource_type.is_none() && input.params.iter().any(|(k, v)| k == "_type" && v == AUDIT_EVENT) {
        let params: Vec<(String, String)> = input.params.iter().filter(|(k, _)| k != "_type").cloned().collect();
        let input = SearchInput {
            resource_type: Some(AUDIT_EVENT),
            params: &params,
            ..input
        };
        return trail::search(store, caller, input).await;
    }
    match input.resource_type {
        Some(t) => caller.require(t, Perm::Search)?,
        None => caller.require_all_types(Perm::Search)?,
    }
    let opts = ParseOptions {
        strict: input.strict,
        default_count: 20,
        max_count: 1000,
        limits: input.limits,
    };
    let mut req = parse_search(Registry::r4(), input.resource_type, input.params, &opts)?;
    // `GET [base]?_type=X` is a search of X.
    if input.resource_type.is_none()
        && let Some(t) = &req.resource_type
    {
        caller.require(t, Perm::Search)?;
    }
    // Searching through another type (chain, _has) reveals some of it.
    for f in &req.filters {
        for t in searched_types(f) {
            caller.require(t, Perm::Search)?;
        }
    }
    expand_wildcards(&mut req.include);
    expand_wildcards(&mut req.revinclude);
    if req.summary == Some(Summary::Count) {
        req.count = 0;
    }
    let page = store.search(&req, &caller.visibility()).await?;

    let path = input.resource_type.unwrap_or("");
    let paging_free: Vec<(String, String)> = req
        .applied
        .iter()
        .filter(|(k, _)| k != PAGE_AFTER && k != PAGE_OFFSET)
        .cloned()
        .collect();
    let with_page = |p: PageStart| {
        let mut ps = paging_free.clone();
        match p {
            PageStart::First => {}
            PageStart::After(pk) => ps.push((PAGE_AFTER.into(), pk.to_string())),
            PageStart::Offset(o) => ps.push((PAGE_OFFSET.into(), o.to_string())),
        }
        link(input.base, path, &ps)
    };
    let mut links = vec![("self", link(input.base, path, &req.applied))];
    if let Some(n) = page.next {
        links.push(("next", with_page(n)));
    }
    if let Some(p) = page.previous {
        links.push(("previous", with_page(p)));
    }
    let mut w = BundleWriter::new("searchset", page.total, &links);
    if !req.ignored.is_empty() {
        // R4 §3.1.1.4: what the server ignored is told in an outcome entry,
        // so that a lenient client knows its result is wider than it asked.
        let outcome = ignored_outcome(&req.ignored);
        w.entry(None, Some(&outcome), json!({"search": {"mode": "outcome"}}));
    }
    for (v, mode) in page
        .matches
        .iter()
        .map(|v| (v, "match"))
        .chain(page.included.iter().map(|v| (v, "include")))
    {
        let Some(body) = v.body.as_deref() else { continue };
        // Included resources of a type the caller may not read are left
        // out, as are the matches of a system-level search (the audit trail
        // needs a scope of its own).
        let perm = if mode == "include" { Perm::Read } else { Perm::Search };
        if !caller.scopes.allows(&v.resource_type, perm) {
            continue;
        }
        let full_url = format!("{}/{}/{}", input.base, v.resource_type, v.id);
        let subsetted = subset(body, &v.resource_type, req.summary, &req.elements);
        w.entry(
            Some(&full_url),
            Some(subsetted.as_deref().unwrap_or(body)),
            json!({"search": {"mode": mode}}),
        );
    }
    Ok(Reply::bundle(w.finish()))
}

/// One warning per parameter a lenient search ignored, naming it.
fn ignored_outcome(ignored: &[String]) -> Vec<u8> {
    let issues: Vec<Issue> = ignored
        .iter()
        .map(|name| Issue {
            severity: Severity::Warning,
            code: "not-supported",
            diagnostics: format!(
                "the search parameter '{name}' is unknown or not supported here and was ignored \
                 (Prefer: handling=lenient); the result is not filtered by it"
            ),
            expression: vec![name.clone()],
        })
        .collect();
    serde_json::to_vec(&outcome_json(&issues)).unwrap_or_default()
}

/// The types a filter searches through, besides the searched type.
fn searched_types(f: &Filter) -> Vec<&str> {
    match f {
        Filter::Values { .. } => Vec::new(),
        Filter::Chain { target_type, inner, .. } => {
            let mut v = vec![target_type.as_str()];
            v.extend(searched_types(inner));
            v
        }
        Filter::Has { source_type, inner, .. } => {
            let mut v = vec![source_type.as_str()];
            v.extend(searched_types(inner));
            v
        }
    }
}

/// `_include=Observation:*` means every reference parameter of the type.
fn expand_wildcards(includes: &mut Vec<Include>) {
    let mut out = Vec::with_capacity(includes.len());
    for inc in includes.drain(..) {
        if inc.param.is_some() {
            out.push(inc);
            continue;
        }
        for def in Registry::r4().params_of(&inc.source_type) {
            if def.kind == ParamType::Reference {
                out.push(Include {
                    param: Some(ParamRef {
                        resource_type: inc.source_type.clone(),
                        code: def.code.clone(),
                        kind: ParamType::Reference,
                    }),
                    ..inc.clone()
                });
            }
        }
    }
    *includes = out;
}

/// For conditional interactions and tests: parse without executing.
pub fn parse_only(resource_type: &str, params: &[(String, String)]) -> Result<SearchRequest, FhirError> {
    Ok(parse_search(
        Registry::r4(),
        Some(resource_type),
        params,
        &ParseOptions::default(),
    )?)
}
