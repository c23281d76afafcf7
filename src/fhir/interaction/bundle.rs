//! batch and transaction (`POST [base]` with a Bundle).
//!
//! A transaction is one write job of the store: every entry is planned
//! inside the same database transaction (DELETE, then POST, then PUT/PATCH,
//! as R4 orders them), `urn:uuid:` and conditional references are rewritten
//! to the ids they resolve to, and all versions are stored with one
//! multi-row write. Any failing entry fails the whole Bundle: nothing is
//! stored. A batch runs each entry on its own.
//!
//! Every entry leaves the AuditEvent the same request sent on its own
//! would: a GET entry's is noted when it is answered; a batch write entry's
//! is committed with its change (the store's `JobHook`) or, when it failed
//! or changed nothing, noted once it is answered. A transaction's writes
//! are its own event.

use std::collections::{HashMap, HashSet};

use base64::Engine;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};

use crate::fhir::bundle_writer::BundleWriter;
use crate::fhir::error::{FhirError, outcome_json};
use crate::fhir::resource::{self, Resource, valid_id};
use crate::fhir::rules::{self, Rules, SharedRules};
use crate::fhir::search::model::{IndexValue, SearchRequest};
use crate::fhir::search::registry::Registry;
use crate::fhir::search::values::format_instant;
use crate::security::Caller;
use crate::security::audit::{self, CommitMark, IssueCode, Served};
use crate::security::scopes::Perm;
use crate::store::{Store, Version, WriteTx};

use super::create::create_in;
use super::delete::delete_in;
use super::patch::{parse_patch, patch_in};
use super::update::{conditional_update_id, update_in};
use super::{
    Planned, Reply, conditional_matches, conditional_query, history, index_of, match_create, new_id, parse_etag, read,
    search, status_line,
};

pub struct BundleInput<'a> {
    pub base: &'a str,
    pub body: &'a [u8],
    /// `Prefer: return=representation`: put each resource in its response entry.
    pub representation: bool,
    /// `Prefer: handling` and the search limits, for the search entries
    /// (`GET Type?…`), which follow them as the same search sent alone.
    pub strict: bool,
    pub search_limits: crate::fhir::search::parse::SearchLimits,
}

enum Op {
    Create {
        res: Resource,
        cond: Option<SearchRequest>,
    },
    Update {
        res: Resource,
        id: String,
        if_match: Option<i64>,
    },
    CondUpdate {
        res: Resource,
        cond: SearchRequest,
        if_match: Option<i64>,
    },
    Delete {
        rtype: String,
        id: String,
        if_match: Option<i64>,
    },
    CondDelete {
        rtype: String,
        cond: SearchRequest,
    },
    Patch {
        rtype: String,
        id: String,
        ops: json_patch::Patch,
        if_match: Option<i64>,
    },
    Get {
        url: String,
    },
}

struct Entry {
    /// Its place in `Bundle.entry`, which its errors name: a batch runs
    /// each entry alone, as the only one of its job.
    at: usize,
    full_url: Option<String>,
    op: Op,
    /// Create: the id it will get.
    new_id: Option<String>,
    /// Create whose `ifNoneExist` matched: the existing resource.
    existing: Option<Version>,
    index: Option<Vec<(String, IndexValue)>>,
}

pub async fn process(
    store: &Store,
    rules: &SharedRules,
    caller: &Caller,
    input: BundleInput<'_>,
) -> Result<Reply, FhirError> {
    let bundle = resource::parse(input.body, None)?;
    if bundle.resource_type != "Bundle" {
        return Err(FhirError::invalid(format!(
            "POST to the base expects a Bundle of type batch or transaction, not a {}",
            bundle.resource_type
        ))
        .at("resourceType"));
    }
    let kind = bundle
        .json
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let entries = match bundle.json.get("entry") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(FhirError::structure("Bundle.entry must be an array").at("Bundle.entry")),
    };
    if matches!(kind.as_str(), "transaction" | "batch") {
        full_urls_once(&entries)?;
    }
    match kind.as_str() {
        "transaction" => transaction(store, rules, caller, &input, entries).await,
        "batch" => {
            crate::security::audit::note_interaction("batch");
            batch(store, rules, caller, &input, entries).await
        }
        other => Err(FhirError::invalid(format!(
            "Bundle.type must be 'transaction' or 'batch' to be processed, not '{other}'"
        ))
        .at("Bundle.type")),
    }
}

/// No two entries share a `fullUrl` (bdl-7), checked on the whole Bundle
/// before any entry runs, batch included: a reference to that URL would
/// name either resource, and a batch would have written the first before
/// meeting the second.
fn full_urls_once(entries: &[Value]) -> Result<(), FhirError> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let Some(url) = e.get("fullUrl").and_then(Value::as_str) else {
            continue;
        };
        if let Some(first) = seen.insert(url, i) {
            return Err(FhirError::invalid(format!(
                "Bundle.entry[{i}]: its fullUrl is the fullUrl of Bundle.entry[{first}]; \
                 each entry of a batch or transaction needs its own (bdl-7)"
            ))
            .at(format!("Bundle.entry[{i}].fullUrl")));
        }
    }
    Ok(())
}

fn in_entry(i: usize, mut e: FhirError) -> FhirError {
    if let Some(issue) = e.issues.first_mut() {
        issue.diagnostics = format!("Bundle.entry[{i}]: {}", issue.diagnostics);
        if issue.expression.is_empty() {
            issue.expression.push(format!("Bundle.entry[{i}]"));
        } else {
            for x in &mut issue.expression {
                if !x.starts_with("Bundle.entry[") {
                    *x = format!(
                        "Bundle.entry[{i}].resource.{}",
                        x.split_once('.').map_or(x.as_str(), |(_, r)| r)
                    );
                }
            }
        }
    }
    e
}

/// An error of the job's writes taken together (the security layer's
/// checks) that names one of them by `Type/id` at the start of its
/// diagnostics is located at that write's entry.
fn at_written_entry(e: FhirError, written: &[(String, usize)]) -> FhirError {
    let Some(issue) = e.issues.first() else { return e };
    if issue.expression.iter().any(|x| x.starts_with("Bundle.entry[")) {
        return e;
    }
    let named = issue.diagnostics.split_once(':').map(|(first, _)| first);
    match written.iter().find(|(target, _)| Some(target.as_str()) == named) {
        Some((_, at)) => in_entry(*at, e),
        None => e,
    }
}

/// Checks the resource of a create or update entry where it stands in the
/// Bundle, so that issues point at `Bundle.entry[i].resource…`.
fn validate_entry(rules: &dyn Rules, i: usize, entry: &Entry) -> Result<(), FhirError> {
    match &entry.op {
        Op::Create { res, .. } | Op::Update { res, .. } | Op::CondUpdate { res, .. } => {
            rules::check(rules, res, Some(&format!("Bundle.entry[{i}].resource")))
        }
        _ => Ok(()),
    }
}

/// Strips our own base from an absolute request URL.
fn relative<'u>(base: &str, url: &'u str) -> &'u str {
    url.strip_prefix(base).map_or(url, |r| r.trim_start_matches('/'))
}

/// An entry's `request`, its method and its URL relative to our base.
fn entry_request<'e>(
    base: &str,
    i: usize,
    e: &'e Value,
) -> Result<(&'e Map<String, Value>, &'e str, &'e str), FhirError> {
    let at = format!("Bundle.entry[{i}]");
    let request = e
        .get("request")
        .and_then(Value::as_object)
        .ok_or_else(|| FhirError::structure("the entry has no request").at(format!("{at}.request")))?;
    let method = request.get("method").and_then(Value::as_str).unwrap_or_default();
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| FhirError::structure("the entry's request has no url").at(format!("{at}.request.url")))?;
    Ok((request, method, relative(base, url)))
}

/// A URL relative to the base: its path, the path's segments, its query.
fn split_url(url: &str) -> (&str, Vec<&str>, Option<&str>) {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    (path, path.split('/').filter(|s| !s.is_empty()).collect(), query)
}

fn parse_entry(base: &str, i: usize, e: &Value) -> Result<Entry, FhirError> {
    let at = format!("Bundle.entry[{i}]");
    let (request, method, url) = entry_request(base, i, e)?;
    let (_, segs, query) = split_url(url);
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        None => None,
        Some(s) => Some(parse_etag(s).ok_or_else(|| {
            FhirError::invalid(format!("ifMatch '{s}' is not a version of this server"))
                .at(format!("{at}.request.ifMatch"))
        })?),
    };
    let rtype = segs.first().copied().unwrap_or_default().to_string();
    let known_type = Registry::r4().is_resource_type(&rtype);
    let resource = |expected: &str| -> Result<Resource, FhirError> {
        let v = e
            .get("resource")
            .cloned()
            .ok_or_else(|| FhirError::structure("the entry has no resource").at(format!("{at}.resource")))?;
        resource::from_value(v, Some(expected), &format!("{at}.resource"))
    };
    let bad_url =
        || FhirError::invalid(format!("'{url}' is not a valid URL for {method}")).at(format!("{at}.request.url"));
    let full_url = e.get("fullUrl").and_then(Value::as_str).map(str::to_string);
    let op = match method {
        "POST" if known_type && segs.len() == 1 && query.is_none() => Op::Create {
            res: resource(&rtype)?,
            cond: request
                .get("ifNoneExist")
                .and_then(Value::as_str)
                .map(|q| conditional_query(&rtype, q.trim_start_matches('?')))
                .transpose()?,
        },
        "PUT" if known_type && segs.len() == 2 && query.is_none() && valid_id(segs[1]) => {
            let res = resource(&rtype)?;
            if res.id() != Some(segs[1]) {
                return Err(
                    FhirError::invalid(format!("the resource id must be '{}' as in the request url", segs[1]))
                        .at(format!("{at}.resource.id")),
                );
            }
            Op::Update {
                res,
                id: segs[1].to_string(),
                if_match,
            }
        }
        "PUT" if known_type && segs.len() == 1 && query.is_some() => Op::CondUpdate {
            res: resource(&rtype)?,
            cond: conditional_query(&rtype, query.unwrap_or_default())?,
            if_match,
        },
        "DELETE" if known_type && segs.len() == 2 && query.is_none() && valid_id(segs[1]) => Op::Delete {
            rtype,
            id: segs[1].to_string(),
            if_match,
        },
        "DELETE" if known_type && segs.len() == 1 && query.is_some() => Op::CondDelete {
            cond: conditional_query(&rtype, query.unwrap_or_default())?,
            rtype,
        },
        "PATCH" if known_type && segs.len() == 2 && query.is_none() && valid_id(segs[1]) => {
            let ops = binary_patch(e).map_err(|err| err.at(format!("{at}.resource")))?;
            Op::Patch {
                rtype,
                id: segs[1].to_string(),
                ops,
                if_match,
            }
        }
        "GET" | "HEAD" => Op::Get { url: url.to_string() },
        "POST" | "PUT" | "DELETE" | "PATCH" => return Err(bad_url()),
        other => {
            return Err(
                FhirError::invalid(format!("'{other}' is not a request method of a Bundle entry"))
                    .at(format!("{at}.request.method")),
            );
        }
    };
    Ok(Entry {
        at: i,
        full_url,
        op,
        new_id: None,
        existing: None,
        index: None,
    })
}

/// An entry, once the caller may send it: the scopes are checked as soon
/// as its method and type are read, before its resource, conditions or
/// `ifMatch` are, as the same request sent alone is checked before its
/// body; otherwise a client without the scope would hear about its
/// malformed entry (400) where the request alone gets 403.
fn admit_entry(base: &str, caller: &Caller, i: usize, e: &Value) -> Result<Entry, FhirError> {
    entry_scopes(base, caller, i, e)?;
    parse_entry(base, i, e)
}

/// Checks the scopes an entry needs as soon as its method and URL are
/// read; an entry whose request cannot be read is refused by
/// [`parse_entry`].
fn entry_scopes(base: &str, caller: &Caller, i: usize, e: &Value) -> Result<(), FhirError> {
    let Ok((_, method, url)) = entry_request(base, i, e) else {
        return Ok(());
    };
    let (_, segs, _) = split_url(url);
    check_scopes(caller, method, &segs)
}

/// What the caller's scopes must grant for an entry's method and path: what
/// the route of the same request alone requires (`entry_interaction`).
/// GET entries are checked by the interaction they run; an entry whose type
/// cannot be read has nothing to check and is refused by [`parse_entry`].
fn check_scopes(caller: &Caller, method: &str, segs: &[&str]) -> Result<(), FhirError> {
    let Some(rtype) = segs.first().filter(|t| Registry::r4().is_resource_type(t)) else {
        return Ok(());
    };
    let perm = match entry_interaction(method, segs) {
        "create" => Perm::Create,
        "update" | "patch" => Perm::Update,
        "delete" => Perm::Delete,
        _ => return Ok(()),
    };
    caller.require(rtype, perm)
}

/// A PATCH entry carries its JSON Patch as a Binary resource.
fn binary_patch(e: &Value) -> Result<json_patch::Patch, FhirError> {
    let r = e
        .get("resource")
        .ok_or_else(|| FhirError::structure("a PATCH entry needs a Binary resource"))?;
    let is_binary = r.get("resourceType").and_then(Value::as_str) == Some("Binary");
    let content_type = r.get("contentType").and_then(Value::as_str).unwrap_or_default();
    if !is_binary || !content_type.starts_with("application/json-patch+json") {
        return Err(FhirError::not_supported(
            400,
            "a PATCH entry must hold a Binary with contentType application/json-patch+json (FHIRPath Patch is not supported)",
        ));
    }
    let data = r.get("data").and_then(Value::as_str).unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| FhirError::structure("Binary.data is not base64"))?;
    parse_patch(&bytes)
}

/// Every `reference` string in a resource.
fn for_each_reference(v: &mut Value, f: &mut impl FnMut(&mut String)) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                match child {
                    Value::String(s) if k == "reference" => f(s),
                    _ => for_each_reference(child, f),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| for_each_reference(c, f)),
        _ => {}
    }
}

fn is_conditional_reference(r: &str) -> bool {
    r.split_once('?')
        .is_some_and(|(t, _)| Registry::r4().is_resource_type(t))
}

fn op_resource(op: &mut Op) -> Option<&mut Resource> {
    match op {
        Op::Create { res, .. } | Op::Update { res, .. } | Op::CondUpdate { res, .. } => Some(res),
        _ => None,
    }
}

/// Rewrites references to entries of the Bundle and extracts index values.
fn rewrite_and_index(entries: &mut [Entry], map: &HashMap<String, String>) {
    for e in entries.iter_mut() {
        if let Some(res) = op_resource(&mut e.op) {
            for_each_reference(&mut res.json, &mut |r| {
                if let Some(to) = map.get(r.as_str()) {
                    *r = to.clone();
                }
            });
            e.index = Some(index_of(res));
        }
    }
}

/// What a transaction stored.
#[derive(Debug)]
pub struct Transacted {
    /// The reply of each entry, in the Bundle's order: `None` for a GET
    /// (answered after the commit) or an entry that did nothing.
    pub replies: Vec<Option<Reply>>,
    /// The versions the product's rules wrote on their own (a routed
    /// referral).
    pub added: Vec<Version>,
}

/// A caller's last word inside the database transaction of a transaction
/// Bundle, once every entry is planned: what it writes commits or rolls
/// back with the entries, and its error refuses the whole Bundle.
pub type Seal = Box<dyn for<'a> FnOnce(&'a mut WriteTx, &'a Transacted) -> BoxFuture<'a, Result<(), FhirError>> + Send>;

/// Boxes a closure as a [`Seal`] (and gives it the signature the compiler
/// cannot infer for a closure).
pub fn seal<F>(f: F) -> Seal
where
    F: for<'a> FnOnce(&'a mut WriteTx, &'a Transacted) -> BoxFuture<'a, Result<(), FhirError>> + Send + 'static,
{
    Box::new(f)
}

/// Runs the entries of a transaction Bundle (`Bundle.entry`) for callers
/// that are not FHIR clients (the flat API): what `POST [base]` does,
/// without the response Bundle. GET entries are not answered.
pub async fn transact(
    store: &Store,
    rules: &SharedRules,
    caller: &Caller,
    base: &str,
    raw: Vec<Value>,
    seal: Option<Seal>,
) -> Result<Transacted, FhirError> {
    full_urls_once(&raw)?;
    Ok(run_transaction(store, rules, caller, base, raw, seal).await?.1)
}

async fn transaction(
    store: &Store,
    rules: &SharedRules,
    caller: &Caller,
    input: &BundleInput<'_>,
    raw: Vec<Value>,
) -> Result<Reply, FhirError> {
    let (entries, done) = run_transaction(store, rules, caller, input.base, raw, None).await?;
    let mut w = BundleWriter::new("transaction-response", None, &[]);
    for (e, reply) in entries.iter().zip(done.replies) {
        let (reply, is_get) = match (&e.op, reply) {
            (Op::Get { url }, _) => (get(store, caller, input, url).await, true),
            (_, r) => (Ok(r.unwrap_or_else(|| Reply::empty(204))), false),
        };
        write_response(&mut w, input.base, reply, input.representation || is_get);
    }
    Ok(Reply::bundle(w.finish()))
}

async fn run_transaction(
    store: &Store,
    rules: &SharedRules,
    caller: &Caller,
    base: &str,
    raw: Vec<Value>,
    seal: Option<Seal>,
) -> Result<(Vec<Entry>, Transacted), FhirError> {
    // Every entry's scopes before any entry is read: a client refused one
    // of them hears 403, whatever else is wrong with the Bundle, as it
    // would sending each request alone.
    for (i, e) in raw.iter().enumerate() {
        entry_scopes(base, caller, i, e).map_err(|err| in_entry(i, err))?;
    }
    let mut entries = Vec::with_capacity(raw.len());
    for (i, e) in raw.iter().enumerate() {
        let entry = parse_entry(base, i, e).map_err(|err| in_entry(i, err))?;
        validate_entry(&**rules, i, &entry)?;
        entries.push(entry);
    }
    // One resource may be the target of one entry only (R4 3.1.0.11.2),
    // conditional ones included once resolved (`resolve_conditionals`).
    let mut targets: HashSet<String> = HashSet::new();
    let mut map: HashMap<String, String> = HashMap::new();
    let mut conditional = false;
    for (i, e) in entries.iter_mut().enumerate() {
        let target = match &mut e.op {
            Op::Create { res, cond } => {
                conditional |= cond.is_some();
                let id = new_id();
                let t = format!("{}/{id}", res.resource_type);
                e.new_id = Some(id);
                Some(t)
            }
            Op::Update { res, id, .. } => Some(format!("{}/{id}", res.resource_type)),
            Op::Delete { rtype, id, .. } | Op::Patch { rtype, id, .. } => Some(format!("{rtype}/{id}")),
            Op::CondUpdate { .. } | Op::CondDelete { .. } => {
                conditional = true;
                None
            }
            Op::Get { .. } => None,
        };
        if let Some(t) = target {
            if !matches!(e.op, Op::Create { .. }) {
                target_once(&mut targets, i, &t)?;
            }
            if let Some(full) = &e.full_url {
                map.insert(full.clone(), t);
            }
        }
        if let Some(res) = op_resource(&mut e.op) {
            for_each_reference(&mut res.json, &mut |r| conditional |= is_conditional_reference(r));
        }
    }
    if !conditional {
        // Everything is known before the write: keep the CPU work out of
        // the single writer.
        rewrite_and_index(&mut entries, &map);
    }
    let job_rules = rules.clone();
    store
        .write(caller.visibility(), move |tx| {
            Box::pin(async move {
                let (mut entries, mut targets) = (entries, targets);
                if conditional {
                    resolve_conditionals(tx, &*job_rules, &mut entries, &mut map, &mut targets).await?;
                    rewrite_and_index(&mut entries, &map);
                }
                let done = plan_and_store(tx, &*job_rules, &mut entries).await?;
                if let Some(seal) = seal {
                    seal(tx, &done).await?;
                }
                Ok::<_, FhirError>((entries, done))
            })
        })
        .await
}

/// Notes `target` (`Type/id`) as written by entry `i`: a 400 if another
/// entry writes it already.
fn target_once(targets: &mut HashSet<String>, i: usize, target: &str) -> Result<(), FhirError> {
    if targets.insert(target.to_string()) {
        Ok(())
    } else {
        Err(in_entry(
            i,
            FhirError::invalid(format!("{target} is the target of more than one entry")),
        ))
    }
}

/// Conditional creates, updates, deletes and references are looked up
/// inside the transaction, so that what they match cannot change before
/// the commit. A conditional update or delete that matched a resource
/// another entry writes fails the transaction, as a plain one would
/// (`targets`: those of the other entries).
async fn resolve_conditionals(
    tx: &mut WriteTx,
    rules: &dyn Rules,
    entries: &mut [Entry],
    map: &mut HashMap<String, String>,
    targets: &mut HashSet<String>,
) -> Result<(), FhirError> {
    for e in entries.iter_mut() {
        let i = e.at;
        match &mut e.op {
            Op::Create { res, cond: Some(cond) } => {
                if let Some(v) = match_create(tx, rules, res, cond)
                    .await
                    .map_err(|err| in_entry(i, err))?
                {
                    // The existing resource stands for this entry.
                    if let Some(full) = &e.full_url {
                        map.insert(full.clone(), format!("{}/{}", v.resource_type, v.id));
                    }
                    e.existing = Some(v);
                }
            }
            Op::CondUpdate { res, cond, if_match } => {
                let found = conditional_matches(tx, cond).await.map_err(|err| in_entry(i, err))?;
                let id = conditional_update_id(&found, res).map_err(|err| in_entry(i, err))?;
                target_once(targets, i, &format!("{}/{id}", res.resource_type))?;
                if let Some(full) = &e.full_url {
                    map.insert(full.clone(), format!("{}/{id}", res.resource_type));
                }
                let res = std::mem::replace(
                    res,
                    Resource {
                        resource_type: String::new(),
                        json: Value::Null,
                    },
                );
                e.op = Op::Update {
                    res,
                    id,
                    if_match: *if_match,
                };
            }
            Op::CondDelete { rtype, cond } => {
                match conditional_matches(tx, cond)
                    .await
                    .map_err(|err| in_entry(i, err))?
                    .as_slice()
                {
                    [] => e.op = Op::Get { url: String::new() },
                    [(_, id, _)] => {
                        target_once(targets, i, &format!("{rtype}/{id}"))?;
                        e.op = Op::Delete {
                            rtype: rtype.clone(),
                            id: id.clone(),
                            if_match: None,
                        };
                    }
                    _ => {
                        return Err(in_entry(
                            i,
                            FhirError::precondition("the conditional delete matches more than one resource"),
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    // Conditional references: `Patient?identifier=…` must match exactly one.
    let mut wanted: Vec<(usize, String)> = Vec::new();
    for e in entries.iter_mut() {
        let at = e.at;
        if let Some(res) = op_resource(&mut e.op) {
            for_each_reference(&mut res.json, &mut |r| {
                if is_conditional_reference(r) && !map.contains_key(r.as_str()) {
                    wanted.push((at, r.clone()));
                }
            });
        }
    }
    for (i, r) in wanted {
        if map.contains_key(&r) {
            continue;
        }
        let (t, q) = r.split_once('?').unwrap_or_default();
        let cond = conditional_query(t, q).map_err(|err| in_entry(i, err))?;
        match conditional_matches(tx, &cond)
            .await
            .map_err(|err| in_entry(i, err))?
            .as_slice()
        {
            [(t, id, _)] => {
                map.insert(r.clone(), format!("{t}/{id}"));
            }
            found => {
                return Err(in_entry(
                    i,
                    FhirError::precondition(format!(
                        "the conditional reference '{r}' matches {} resources; it must match exactly one",
                        if found.is_empty() { "no" } else { "several" }
                    )),
                ));
            }
        }
    }
    Ok(())
}

/// Plans every write in R4 order and stores them together. Returns the
/// reply of each entry (None for GET and no-op entries).
async fn plan_and_store(tx: &mut WriteTx, rules: &dyn Rules, entries: &mut [Entry]) -> Result<Transacted, FhirError> {
    let mut replies: Vec<Option<Reply>> = (0..entries.len()).map(|_| None).collect();
    let mut writes = Vec::new();
    let rank = |op: &Op| match op {
        Op::Delete { .. } | Op::CondDelete { .. } => 0,
        Op::Create { .. } => 1,
        Op::Update { .. } | Op::CondUpdate { .. } | Op::Patch { .. } => 2,
        Op::Get { .. } => 3,
    };
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| rank(&entries[i].op));
    // `Type/id` of each write and the entry it comes from.
    let mut written: Vec<(String, usize)> = Vec::new();
    for i in order {
        let e = &mut entries[i];
        let at = e.at;
        let index = e.index.take().unwrap_or_default();
        let planned: Option<Planned> = match &e.op {
            Op::Create { res, .. } => match (e.existing.take(), e.new_id.as_deref()) {
                (Some(v), _) => Some(Planned {
                    write: None,
                    reply: Reply::resource(200, v),
                }),
                (None, Some(id)) => Some(
                    create_in(tx, rules, res.clone(), id.to_string(), index, None)
                        .await
                        .map_err(|err| in_entry(at, err))?,
                ),
                (None, None) => None,
            },
            Op::Update { res, id, if_match } => Some(
                update_in(tx, res.clone(), id, index, *if_match)
                    .await
                    .map_err(|err| in_entry(at, err))?,
            ),
            Op::Delete { rtype, id, if_match } => Some(
                delete_in(tx, rtype, id, *if_match)
                    .await
                    .map_err(|err| in_entry(at, err))?,
            ),
            Op::Patch {
                rtype,
                id,
                ops,
                if_match,
            } => Some(
                patch_in(tx, rules, rtype, id, ops, *if_match)
                    .await
                    .map_err(|err| in_entry(at, err))?,
            ),
            Op::CondUpdate { .. } | Op::CondDelete { .. } | Op::Get { .. } => None,
        };
        if let Some(p) = planned {
            if let Some(w) = &p.write {
                written.push((format!("{}/{}", w.resource_type, w.id), at));
            }
            writes.extend(p.write);
            replies[i] = Some(p.reply);
        }
    }
    let applied = super::store_writes(tx, rules, writes)
        .await
        .map_err(|e| at_written_entry(e, &written))?;
    for reply in replies.iter_mut().flatten() {
        reply.take_notes(&applied.notes);
    }
    Ok(Transacted {
        replies,
        added: applied.added,
    })
}

async fn batch(
    store: &Store,
    rules: &SharedRules,
    caller: &Caller,
    input: &BundleInput<'_>,
    raw: Vec<Value>,
) -> Result<Reply, FhirError> {
    let mut w = BundleWriter::new("batch-response", None, &[]);
    for (i, e) in raw.iter().enumerate() {
        let mark = CommitMark::now();
        let (reply, is_get) = match admit_entry(input.base, caller, i, e) {
            Err(err) => (Err(in_entry(i, err)), false),
            Ok(entry) => {
                let is_get = matches!(entry.op, Op::Get { .. });
                (run_one(store, rules, caller, input, entry).await, is_get)
            }
        };
        // A GET entry noted itself (`get`), a write that committed has its
        // record: the rest (a refused or failed write, one that changed
        // nothing) are recorded here. An entry without a URL is no request
        // the gateway could have been sent alone: the batch's event covers it.
        if !is_get
            && !mark.committed_since()
            && let Ok((_, method, url)) = entry_request(input.base, i, e)
        {
            let (path, segs, query) = split_url(url);
            note(entry_interaction(method, &segs), path, query, &reply);
        }
        write_response(&mut w, input.base, reply, input.representation || is_get);
    }
    Ok(Reply::bundle(w.finish()))
}

/// One batch entry, on its own.
async fn run_one(
    store: &Store,
    rules: &SharedRules,
    caller: &Caller,
    input: &BundleInput<'_>,
    mut entry: Entry,
) -> Result<Reply, FhirError> {
    if let Op::Get { url } = &entry.op {
        return get(store, caller, input, url).await;
    }
    if let Some(res) = op_resource(&mut entry.op) {
        entry.index = Some(index_of(res));
    }
    if matches!(entry.op, Op::Create { .. }) {
        entry.new_id = Some(new_id());
    }
    validate_entry(&**rules, entry.at, &entry)?;
    let rules = rules.clone();
    store
        .write(caller.visibility(), move |tx| {
            Box::pin(async move {
                let mut one = [entry];
                // A batch entry is a Bundle of its own: no other targets.
                let (mut map, mut targets) = (HashMap::new(), HashSet::new());
                resolve_conditionals(tx, &*rules, &mut one, &mut map, &mut targets).await?;
                let mut done = plan_and_store(tx, &*rules, &mut one).await?;
                Ok(done.replies.pop().flatten().unwrap_or_else(|| Reply::empty(204)))
            })
        })
        .await
}

/// A GET entry: read, vread, search or history, as the URL says. It leaves
/// its own AuditEvent, as the same request sent on its own would.
async fn get(store: &Store, caller: &Caller, input: &BundleInput<'_>, url: &str) -> Result<Reply, FhirError> {
    // A transaction's conditional delete that matched nothing: no GET.
    if url.is_empty() {
        return Ok(Reply::empty(204));
    }
    let (path, segs, query) = split_url(url);
    let reply = run_get(store, caller, input, url, &segs, query.unwrap_or_default()).await;
    note(entry_interaction("GET", &segs), path, query, &reply);
    reply
}

/// Records an entry (`audit::note_entry`) as it ended: what it served, or
/// the issue code of its error, without the entry's place in the Bundle,
/// as the same request sent alone.
fn note(interaction: &'static str, path: &str, query: Option<&str>, reply: &Result<Reply, FhirError>) {
    let (status, served, issue) = match reply {
        Ok(r) => (r.status, r.version.as_ref().map(Served::of), None),
        Err(e) => (
            e.status,
            None,
            IssueCode::of(e).map(|IssueCode(code, _)| IssueCode(code, None)),
        ),
    };
    audit::note_entry(interaction, path, query, status, served, issue);
}

async fn run_get(
    store: &Store,
    caller: &Caller,
    input: &BundleInput<'_>,
    url: &str,
    segs: &[&str],
    query: &str,
) -> Result<Reply, FhirError> {
    let base = input.base;
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    match segs {
        [t] if Registry::r4().is_resource_type(t) => {
            search::search(
                store,
                caller,
                search::SearchInput {
                    base,
                    resource_type: Some(t),
                    params: &params,
                    strict: input.strict,
                    limits: input.search_limits,
                },
            )
            .await
        }
        [t, id] => read::read(store, caller, t, id).await,
        [t, id, "_history"] => history::history(store, caller, base, Some(t), Some(id), &params).await,
        [t, id, "_history", vid] => read::vread(store, caller, t, id, vid).await,
        _ => Err(FhirError::invalid(format!(
            "'{url}' is not a URL this server can GET in a Bundle"
        ))),
    }
}

/// The restful interaction an entry's method and path (relative to the
/// base) stand for: the one the route table gives the same request sent on
/// its own (`http::observe::interaction`; a conditional update or delete
/// as the audit middleware records it), whether or not a Bundle entry can
/// run it, so that a refused entry is recorded as what it asked.
fn entry_interaction(method: &str, segs: &[&str]) -> &'static str {
    let get = matches!(method, "GET" | "HEAD");
    match segs {
        ["metadata"] => "capabilities",
        [] if get => "search-system",
        [] if method == "POST" => "transaction",
        ["_search"] => "search-system",
        ["_history"] => "history-system",
        [_] if get => "search-type",
        [_, "_search"] => "search-type",
        [_, "_history"] => "history-type",
        [_] if method == "POST" => "create",
        [_] | [_, _] if method == "PUT" => "update",
        [_] | [_, _] if method == "DELETE" => "delete",
        [_, _] if get => "read",
        [_, _] if method == "PATCH" => "patch",
        [_, _, "_history"] => "history-instance",
        [_, _, "_history", _] => "vread",
        _ => "other",
    }
}

fn write_response(w: &mut BundleWriter, base: &str, reply: Result<Reply, FhirError>, representation: bool) {
    match reply {
        Ok(reply) => {
            let mut response = json!({ "status": status_line(reply.status) });
            let mut full_url = None;
            let mut resource = None;
            if let Some(v) = &reply.version {
                if let Some(o) = response.as_object_mut() {
                    if reply.status == 201 || reply.status == 200 {
                        o.insert(
                            "location".into(),
                            json!(format!("{}/{}/_history/{}", v.resource_type, v.id, v.version)),
                        );
                    }
                    o.insert("etag".into(), json!(format!("W/\"{}\"", v.version)));
                    o.insert("lastModified".into(), json!(format_instant(v.updated)));
                }
                full_url = Some(format!("{base}/{}/{}", v.resource_type, v.id));
                if representation {
                    resource = v.body.clone();
                }
            }
            if let Some(b) = reply.body {
                resource = Some(b);
            }
            if !reply.notes.is_empty()
                && let Some(o) = response.as_object_mut()
            {
                o.insert("outcome".into(), outcome_json(&reply.notes));
            }
            w.entry(
                full_url.as_deref(),
                resource.as_deref(),
                json!({ "response": response }),
            );
        }
        Err(e) => {
            w.entry(
                None,
                None,
                json!({ "response": { "status": status_line(e.status), "outcome": e.outcome() } }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interaction(path: &str) -> &'static str {
        on("GET", path)
    }

    fn on(method: &str, url: &str) -> &'static str {
        let (_, segs, _) = split_url(url);
        entry_interaction(method, &segs)
    }

    #[test]
    fn a_get_entry_is_the_interaction_its_path_stands_for() {
        assert_eq!(interaction("Patient/p1"), "read");
        assert_eq!(interaction("Patient/p1/_history/2"), "vread");
        assert_eq!(interaction("Patient/p1/_history"), "history-instance");
        assert_eq!(interaction("Observation"), "search-type");
        assert_eq!(interaction("Observation/_search"), "search-type");
        // Shapes a Bundle entry cannot run are still named for the trail.
        assert_eq!(interaction("Observation/_history"), "history-type");
        assert_eq!(interaction("_history"), "history-system");
        assert_eq!(interaction(""), "search-system");
        assert_eq!(interaction("_search"), "search-system");
        assert_eq!(interaction("metadata"), "capabilities");
        assert_eq!(interaction("Patient/p1/$everything/x/y"), "other");
    }

    #[test]
    fn a_write_entry_is_the_interaction_the_same_request_alone_is() {
        assert_eq!(on("POST", "Patient"), "create");
        assert_eq!(on("PUT", "Patient/p1"), "update");
        // Conditional ones are recorded as the middleware records them.
        assert_eq!(on("PUT", "Patient?identifier=x"), "update");
        assert_eq!(on("DELETE", "Patient/p1"), "delete");
        assert_eq!(on("DELETE", "Patient?identifier=x"), "delete");
        assert_eq!(on("PATCH", "Patient/p1"), "patch");
        assert_eq!(on("HEAD", "Patient/p1"), "read");
        assert_eq!(on("POST", "Observation/_search"), "search-type");
        assert_eq!(on("POST", ""), "transaction");
        // What the route table does not serve.
        assert_eq!(on("POST", "Patient/p1"), "other");
        assert_eq!(on("PATCH", "Patient"), "other");
        assert_eq!(on("DELETE", ""), "other");
        assert_eq!(on("FETCH", "Patient/p1"), "other");
    }
}
