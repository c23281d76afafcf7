//! update, update-as-create (client-chosen id), conditional update.

use crate::clock::now_micros;
use crate::fhir::error::FhirError;
use crate::fhir::resource::{self, Resource};
use crate::fhir::rules::{self, SharedRules};
use crate::fhir::search::model::IndexValue;
use crate::security::Caller;
use crate::security::scopes::Perm;
use crate::store::{Method, Store, Version, Write, WriteTx};

use super::read::check_id;
use super::{Planned, Reply, commit_one, conditional_matches, conditional_query, index_of, new_id};

pub async fn update(
    store: &Store,
    rules: &SharedRules,
    caller: &Caller,
    resource_type: &str,
    id: &str,
    body: &[u8],
    if_match: Option<i64>,
) -> Result<Reply, FhirError> {
    caller.require(resource_type, Perm::Update)?;
    check_id(id)?;
    let res = resource::parse(body, Some(resource_type))?;
    match res.id() {
        None => {
            return Err(
                FhirError::invalid(format!("the resource has no id; it must be '{id}' as in the URL"))
                    .at(format!("{resource_type}.id")),
            );
        }
        Some(body_id) if body_id != id => {
            return Err(
                FhirError::invalid(format!("the resource id '{body_id}' differs from the URL id '{id}'"))
                    .at(format!("{resource_type}.id")),
            );
        }
        Some(_) => {}
    }
    rules::check(&**rules, &res, None)?;
    let index = index_of(&res);
    let id = id.to_string();
    let rules = rules.clone();
    store
        .write(caller.visibility(), move |tx| {
            Box::pin(async move {
                let planned = update_in(tx, res, &id, index, if_match).await?;
                commit_one(tx, &*rules, planned).await
            })
        })
        .await
}

/// Writes a new version of `res` as `id` (creating it when unknown).
pub async fn update_in(
    tx: &mut WriteTx,
    mut res: Resource,
    id: &str,
    index: Vec<(String, IndexValue)>,
    if_match: Option<i64>,
) -> Result<Planned, FhirError> {
    let rtype = res.resource_type.clone();
    let current = tx.current(&rtype, id).await?;
    if let Some(expected) = if_match {
        match current {
            Some(c) if !c.deleted && c.version == expected => {}
            Some(c) => {
                return Err(FhirError::precondition(format!(
                    "If-Match expects version {expected} of {rtype}/{id}, the current version is {}{}",
                    c.version,
                    if c.deleted { " (deleted)" } else { "" }
                )));
            }
            None => {
                return Err(FhirError::precondition(format!(
                    "If-Match expects version {expected} of {rtype}/{id}, which does not exist"
                )));
            }
        }
    }
    let version = current.map_or(1, |c| c.version + 1);
    let updated = now_micros();
    res.stamp(id, version, updated);
    let body = res.to_bytes();
    let (method, status) = match current {
        Some(c) if !c.deleted => (Method::Update, 200),
        _ => (Method::Create, 201),
    };
    let write = Write {
        resource_type: rtype.clone(),
        id: id.to_string(),
        version,
        updated,
        method,
        body: Some(body.clone()),
        index,
        pk: current.map(|c| c.pk),
        patients: Vec::new(),
        grants: Vec::new(),
    };
    let v = Version {
        resource_type: rtype,
        id: id.to_string(),
        version,
        updated,
        method,
        body: Some(body),
        patients: None,
    };
    Ok(Planned {
        write: Some(write),
        reply: if status == 201 {
            Reply::created(v)
        } else {
            Reply::resource(200, v)
        },
    })
}

/// `PUT [type]?criteria`: no match creates, one match updates it, several
/// are refused (412).
pub async fn conditional_update(
    store: &Store,
    rules: &SharedRules,
    caller: &Caller,
    resource_type: &str,
    query: &str,
    body: &[u8],
    if_match: Option<i64>,
) -> Result<Reply, FhirError> {
    caller.require(resource_type, Perm::Update)?;
    let cond = conditional_query(resource_type, query)?;
    let res = resource::parse(body, Some(resource_type))?;
    rules::check(&**rules, &res, None)?;
    let index = index_of(&res);
    let rules = rules.clone();
    store
        .write(caller.visibility(), move |tx| {
            Box::pin(async move {
                let found = conditional_matches(tx, &cond).await?;
                let id = conditional_update_id(&found, &res)?;
                let planned = update_in(tx, res, &id, index, if_match).await?;
                commit_one(tx, &*rules, planned).await
            })
        })
        .await
}

/// The id a conditional update writes, given what its criteria matched
/// ([`conditional_matches`]): the one match, unless the body names another
/// resource (400, R4 http.html#cond-update: writing the match would
/// silently overwrite the id the client sent); with no match, the body's id
/// (update as create) or a new one; several matches are a 412. A Bundle
/// entry decides with this too, so that it ends as the request alone does.
pub fn conditional_update_id(found: &[(String, String, i64)], res: &Resource) -> Result<String, FhirError> {
    match (found, res.id()) {
        ([], Some(body_id)) => Ok(body_id.to_string()),
        ([], None) => Ok(new_id()),
        ([(_, matched, _)], Some(body_id)) if body_id != matched => Err(FhirError::invalid(format!(
            "the criteria match {matched} but the resource id is '{body_id}'"
        ))
        .at(format!("{}.id", res.resource_type))),
        ([(_, matched, _)], _) => Ok(matched.clone()),
        _ => Err(FhirError::precondition(
            "the conditional update matches more than one resource",
        )),
    }
}
