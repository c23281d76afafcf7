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
use crate::fhir::rules::{Note, Rules};
use crate::fhir::search::extract::Extractor;
use crate::fhir::search::model::{IndexValue, SearchRequest};
use crate::fhir::search::parse::{ParseOptions, parse_search};
use crate::fhir::search::registry::Registry;
use crate::store::{Version, Write, WriteTx};

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
    let notes = store_writes(tx, rules, p.write.into_iter().collect()).await?;
    let mut reply = p.reply;
    reply.take_notes(&notes);
    Ok(reply)
}

/// Stores the writes of a job once the product's rules accept them (and
/// perhaps add some) and the caller's compartment admits them all. Returns
/// what the rules noted of them.
pub async fn store_writes(tx: &mut WriteTx, rules: &dyn Rules, mut writes: Vec<Write>) -> Result<Vec<Note>, FhirError> {
    let notes = rules.apply(tx, &mut writes).await?;
    crate::security::compartment::admit(tx, &mut writes).await?;
    tx.put_all(writes).await?;
    Ok(notes)
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
