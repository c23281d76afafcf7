//! The FHIR RESTful interactions, one file each, independent of HTTP: they
//! take parsed input and the caller, and return a `Reply` the HTTP layer
//! renders. Writes run inside the store's group-committed transaction
//! (`*_in` functions), so that a transaction Bundle reuses them entry by
//! entry.

pub mod bundle;
pub mod capabilities;
pub mod create;
pub mod delete;
pub mod history;
pub mod patch;
pub mod read;
pub mod search;
pub mod update;
pub mod validate;

use bytes::Bytes;

use crate::fhir::error::{FhirError, Issue};
use crate::fhir::resource::Resource;
use crate::fhir::rules::{Identity, Note, Rules};
use crate::fhir::search::extract::Extractor;
use crate::fhir::search::model::{IndexValue, SearchRequest};
use crate::fhir::search::parse::{ParseOptions, parse_search};
use crate::fhir::search::registry::Registry;
use crate::store::{Version, Visibility, Write, WriteTx};

/// What an interaction produced.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The version written or read: gives ETag, Last-Modified, Location and,
    /// unless `body` is set, the response body.
    pub version: Option<Version>,
    /// A body that is not the resource itself (a Bundle), as JSON bytes.
    pub body: Option<Bytes>,
    /// Send `Location` (create, update-as-create).
    pub location: bool,
    /// What the product's rules said of the write (`rules::Note`).
    pub notes: Vec<Issue>,
}

impl Reply {
    pub fn resource(status: u16, version: Version) -> Reply {
        Reply {
            status,
            version: Some(version),
            body: None,
            location: false,
            notes: Vec::new(),
        }
    }

    pub fn created(version: Version) -> Reply {
        Reply {
            location: true,
            ..Reply::resource(201, version)
        }
    }

    pub fn bundle(body: Bytes) -> Reply {
        Reply {
            status: 200,
            version: None,
            body: Some(body),
            location: false,
            notes: Vec::new(),
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            version: None,
            body: None,
            location: false,
            notes: Vec::new(),
        }
    }

    /// Adds the notes that concern the version this reply is about.
    pub fn take_notes(&mut self, notes: &[Note]) {
        if let Some(v) = &self.version {
            self.notes.extend(
                notes
                    .iter()
                    .filter(|n| n.resource_type == v.resource_type && n.id == v.id)
                    .map(|n| n.issue.clone()),
            );
        }
    }
}

/// A server-assigned logical id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The search index values of a resource, ready for the store.
pub fn index_of(resource: &Resource) -> Vec<(String, IndexValue)> {
    Extractor::r4()
        .extract(&resource.resource_type, &resource.json)
        .into_iter()
        .map(|(def, v)| (def.code.clone(), v))
        .collect()
}

/// Parses the query part of a conditional URL (`identifier=x&active=true`).
/// Conditional interactions are always strict: an unknown parameter would
/// widen the match and hit the wrong resource.
pub fn conditional_query(resource_type: &str, query: &str) -> Result<SearchRequest, FhirError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.is_empty() {
        return Err(FhirError::invalid("a conditional request needs search parameters"));
    }
    let opts = ParseOptions {
        strict: true,
        default_count: 2,
        max_count: 2,
        ..ParseOptions::default()
    };
    let req = parse_search(Registry::r4(), Some(resource_type), &pairs, &opts)?;
    if req.filters.is_empty() {
        return Err(FhirError::invalid(
            "a conditional request needs at least one search parameter that filters",
        ));
    }
    Ok(req)
}

/// The current matches of a conditional request (at most two are needed to
/// tell none, one and several apart).
pub async fn conditional_matches(
    tx: &mut WriteTx,
    req: &SearchRequest,
) -> Result<Vec<(String, String, i64)>, FhirError> {
    Ok(tx.search_keys(req, 2).await?)
}

/// What a conditional create's criteria find: the resource that stands for
/// `res` (`None`: create it). Inside the caller's compartment one match is
/// taken, unless the product's rules say it is someone else (409); several
/// are a 412. Outside it, only a single match the rules identify as the
/// same ([`Identity::Same`]) counts, and its stored content is not shown;
/// anything else is `None`, as if nothing matched, so that what the
/// criteria find outside the compartment (none, one, several, someone
/// else) shows in no answer: creating `res` then meets the product's rules
/// like any create, which refuse a second holder of an identity with one
/// answer.
pub async fn match_create(
    tx: &mut WriteTx,
    rules: &dyn Rules,
    res: &Resource,
    cond: &SearchRequest,
) -> Result<Option<Version>, FhirError> {
    let several =
        || FhirError::precondition("the create's condition matches more than one resource; it is not selective enough");
    let identifies = rules.identifies(&res.resource_type);
    match conditional_matches(tx, cond).await?.as_slice() {
        [] => {}
        [(t, id, _)] => {
            let v = tx
                .read(t, id)
                .await?
                .ok_or_else(|| FhirError::internal("a matched resource vanished"))?;
            if identifies
                && let Some(stored) = stored_resource(&v)
                && let Identity::Different(why) = rules.identify(res, &stored)
            {
                return Err(FhirError::new(409, "conflict", why));
            }
            return Ok(Some(v));
        }
        _ => return Err(several()),
    }
    if !identifies || tx.visibility() == &Visibility::All {
        return Ok(None);
    }
    let found = tx.search_keys_unrestricted(cond, 2).await?;
    let [(t, id, _)] = found.as_slice() else {
        return Ok(None);
    };
    let Some(v) = tx.read_unrestricted(t, id).await? else {
        return Ok(None);
    };
    if stored_resource(&v).map(|stored| rules.identify(res, &stored)) == Some(Identity::Same) {
        tx.vouch(t, id);
        return Ok(Some(Version { body: None, ..v }));
    }
    Ok(None)
}

fn stored_resource(v: &Version) -> Option<Resource> {
    v.body
        .as_deref()
        .and_then(|b| crate::fhir::resource::parse(b, Some(&v.resource_type)).ok())
}

/// Builds `base/Type?params` for Bundle links, values percent-encoded.
pub fn link(base: &str, path: &str, params: &[(String, String)]) -> String {
    let mut url = format!("{base}/{path}");
    if url.ends_with('/') {
        url.pop();
    }
    if !params.is_empty() {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            ser.append_pair(k, v);
        }
        url.push('?');
        url.push_str(&ser.finish());
    }
    url
}

/// A write decided inside the transaction but not yet stored, with the
/// reply it will give: a transaction Bundle stores all of its entries' in
/// one multi-row write.
#[derive(Debug)]
pub struct Planned {
    pub write: Option<Write>,
    pub reply: Reply,
}

/// Stores one planned write.
pub async fn commit_one(tx: &mut WriteTx, rules: &dyn Rules, p: Planned) -> Result<Reply, FhirError> {
    let applied = store_writes(tx, rules, p.write.into_iter().collect()).await?;
    let mut reply = p.reply;
    reply.take_notes(&applied.notes);
    Ok(reply)
}

/// What the product's rules made of a job's writes.
#[derive(Debug, Default)]
pub struct Applied {
    /// What they said of the writes.
    pub notes: Vec<Note>,
    /// The versions they wrote on their own (a routed referral).
    pub added: Vec<Version>,
}

/// Stores the writes of a job once the product's rules accept them (and
/// perhaps add some, after the others) and the caller's compartment admits
/// them all.
pub async fn store_writes(tx: &mut WriteTx, rules: &dyn Rules, mut writes: Vec<Write>) -> Result<Applied, FhirError> {
    let sent = writes.len();
    let notes = rules.apply(tx, &mut writes).await?;
    crate::security::compartment::admit(tx, &mut writes).await?;
    let added = writes
        .get(sent..)
        .unwrap_or_default()
        .iter()
        .map(|w| Version {
            resource_type: w.resource_type.clone(),
            id: w.id.clone(),
            version: w.version,
            updated: w.updated,
            method: w.method,
            body: w.body.clone(),
            patients: Some(w.patients.clone()),
        })
        .collect();
    tx.put_all(writes).await?;
    Ok(Applied { notes, added })
}

/// Reads an ETag / If-Match value: `W/"3"`, `"3"` or `3`.
pub fn parse_etag(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    s.trim_matches('"').parse().ok()
}

/// `201 Created`, as Bundle responses spell statuses.
pub fn status_line(status: u16) -> String {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        _ => "",
    };
    format!("{status} {reason}").trim_end().to_string()
}
