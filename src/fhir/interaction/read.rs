//! read and vread.

use crate::fhir::error::FhirError;
use crate::fhir::resource::valid_id;
use crate::security::Caller;
use crate::security::audit::AUDIT_EVENT;
use crate::security::scopes::Perm;
use crate::security::trail;
use crate::store::Store;

use super::Reply;

pub async fn read(store: &Store, caller: &Caller, resource_type: &str, id: &str) -> Result<Reply, FhirError> {
    caller.require(resource_type, Perm::Read)?;
    check_id(id)?;
    if resource_type == AUDIT_EVENT {
        return trail::read(store, caller, id, None).await;
    }
    match store.read(resource_type, id, &caller.visibility()).await? {
        None => Err(FhirError::not_found(format!("{resource_type}/{id} is not known"))),
        Some(v) if v.deleted() => Err(FhirError::gone(format!(
            "{resource_type}/{id} was deleted (version {})",
            v.version
        ))),
        Some(v) => Ok(Reply::resource(200, v)),
    }
}

pub async fn vread(
    store: &Store,
    caller: &Caller,
    resource_type: &str,
    id: &str,
    vid: &str,
) -> Result<Reply, FhirError> {
    caller.require(resource_type, Perm::Read)?;
    check_id(id)?;
    if resource_type == AUDIT_EVENT {
        return trail::read(store, caller, id, Some(vid)).await;
    }
    let version: i64 = vid.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
        FhirError::invalid(format!(
            "'{vid}' is not a version id of this server (a positive integer)"
        ))
    })?;
    match store.vread(resource_type, id, version, &caller.visibility()).await? {
        None => Err(FhirError::not_found(format!(
            "{resource_type}/{id} has no version {version}"
        ))),
        Some(v) if v.deleted() => Err(FhirError::gone(format!(
            "version {version} of {resource_type}/{id} is its deletion"
        ))),
        Some(v) => Ok(Reply::resource(200, v)),
    }
}

pub fn check_id(id: &str) -> Result<(), FhirError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(FhirError::invalid(format!(
            "'{id}' is not a valid id (1 to 64 of A-Z a-z 0-9 - .)"
        )))
    }
}
