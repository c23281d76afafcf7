//! patch with JSON Patch (RFC 6902). The patched resource must still be a
//! valid resource of the same type and id; it is then written as an update.

use serde_json::Value;

use crate::fhir::error::FhirError;
use crate::fhir::resource;
use crate::fhir::rules::{self, Rules, SharedRules};
use crate::security::Caller;
use crate::security::scopes::Perm;
use crate::store::{Store, WriteTx};

use super::read::check_id;
use super::update::update_in;
use super::{Planned, Reply, commit_one, index_of};

pub async fn patch(
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
    let ops = parse_patch(body)?;
    let (rtype, id) = (resource_type.to_string(), id.to_string());
    let rules = rules.clone();
    store
        .write(caller.visibility(), move |tx| {
            Box::pin(async move {
                let planned = patch_in(tx, &*rules, &rtype, &id, &ops, if_match).await?;
                commit_one(tx, &*rules, planned).await
            })
        })
        .await
}

pub fn parse_patch(body: &[u8]) -> Result<json_patch::Patch, FhirError> {
    serde_json::from_slice(body).map_err(|e| {
        FhirError::structure(format!(
            "the body is not a JSON Patch document (an array of operations): {e}"
        ))
    })
}

pub async fn patch_in(
    tx: &mut WriteTx,
    rules: &dyn Rules,
    rtype: &str,
    id: &str,
    ops: &json_patch::Patch,
    if_match: Option<i64>,
) -> Result<Planned, FhirError> {
    let current = match tx.read(rtype, id).await? {
        None => return Err(FhirError::not_found(format!("{rtype}/{id} is not known"))),
        Some(v) if v.deleted() => return Err(FhirError::gone(format!("{rtype}/{id} was deleted"))),
        Some(v) => v,
    };
    if let Some(expected) = if_match
        && expected != current.version
    {
        return Err(FhirError::precondition(format!(
            "If-Match expects version {expected} of {rtype}/{id}, the current version is {}",
            current.version
        )));
    }
    let mut doc: Value = serde_json::from_slice(current.body.as_deref().unwrap_or_default())
        .map_err(|_| FhirError::internal("the stored resource could not be read"))?;
    json_patch::patch(&mut doc, ops)
        .map_err(|e| FhirError::unprocessable(format!("the patch cannot be applied: {e}")))?;
    let patched = resource::from_value(doc, Some(rtype), "").map_err(|mut e| {
        e.status = 422;
        e
    })?;
    if patched.id() != Some(id) {
        return Err(FhirError::unprocessable("a patch may not change the id").at(format!("{rtype}.id")));
    }
    // The patched resource is checked like any other version.
    rules::check(rules, &patched, None)?;
    let index = index_of(&patched);
    update_in(tx, patched, id, index, Some(current.version)).await
}
