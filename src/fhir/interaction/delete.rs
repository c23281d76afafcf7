//! delete and conditional delete. A deletion is a version: history keeps
//! every earlier one, and a read answers 410 Gone.

use crate::clock::now_micros;
use crate::fhir::error::FhirError;
use crate::fhir::rules::SharedRules;
use crate::security::Caller;
use crate::security::scopes::Perm;
use crate::store::{Method, Store, Write, WriteTx};

use super::read::check_id;
use super::{Planned, Reply, commit_one, conditional_matches, conditional_query};

pub async fn delete(
    store: &Store,
    rules: &SharedRules,
    caller: &Caller,
    resource_type: &str,
    id: &str,
    if_match: Option<i64>,
) -> Result<Reply, FhirError> {
    caller.require(resource_type, Perm::Delete)?;
    check_id(id)?;
    let (rtype, id) = (resource_type.to_string(), id.to_string());
    let rules = rules.clone();
    store
        .write(caller.visibility(), move |tx| {
            Box::pin(async move {
                let planned = delete_in(tx, &rtype, &id, if_match).await?;
                commit_one(tx, &*rules, planned).await
            })
        })
        .await
}

pub async fn delete_in(tx: &mut WriteTx, rtype: &str, id: &str, if_match: Option<i64>) -> Result<Planned, FhirError> {
    let Some(current) = tx.current(rtype, id).await? else {
        return Err(FhirError::not_found(format!("{rtype}/{id} is not known")));
    };
    if let Some(expected) = if_match
        && (current.deleted || current.version != expected)
    {
        return Err(FhirError::precondition(format!(
            "If-Match expects version {expected} of {rtype}/{id}, the current version is {}",
            current.version
        )));
    }
    if current.deleted {
        // Deleting what is already deleted changes nothing.
        return Ok(Planned {
            write: None,
            reply: Reply::empty(204),
        });
    }
    let write = Write {
        resource_type: rtype.to_string(),
        id: id.to_string(),
        version: current.version + 1,
        updated: now_micros(),
        method: Method::Delete,
        body: None,
        index: Vec::new(),
        pk: Some(current.pk),
        patients: Vec::new(),
        grants: Vec::new(),
    };
    Ok(Planned {
        write: Some(write),
        reply: Reply::empty(204),
    })
}

/// `DELETE [type]?criteria`: deletes the one match; several are refused
/// (412) rather than deleting more than the client may have meant.
pub async fn conditional_delete(
    store: &Store,
    rules: &SharedRules,
    caller: &Caller,
    resource_type: &str,
    query: &str,
) -> Result<Reply, FhirError> {
    caller.require(resource_type, Perm::Delete)?;
    let cond = conditional_query(resource_type, query)?;
    let rules = rules.clone();
    store
        .write(caller.visibility(), move |tx| {
            Box::pin(async move {
                let found = conditional_matches(tx, &cond).await?;
                match found.as_slice() {
                    [] => Ok(Reply::empty(204)),
                    [(t, id, _)] => {
                        let planned = delete_in(tx, t, id, None).await?;
                        commit_one(tx, &*rules, planned).await
                    }
                    _ => Err(FhirError::precondition(
                        "the conditional delete matches more than one resource",
                    )),
                }
            })
        })
        .await
}
