//! create, and conditional create (`If-None-Exist`).

use crate::clock::now_micros;
use crate::fhir::error::FhirError;
use crate::fhir::resource::{self, Resource};
use crate::fhir::rules::{self, Rules, SharedRules};
use crate::fhir::search::model::{IndexValue, SearchRequest};
use crate::security::Caller;
use crate::security::scopes::Perm;
use crate::store::{Method, Store, Version, Write, WriteTx};

use super::{Planned, Reply, commit_one, conditional_query, index_of, match_create, new_id};

pub async fn create(
    store: &Store,
    rules: &SharedRules,
    caller: &Caller,
    resource_type: &str,
    body: &[u8],
    if_none_exist: Option<&str>,
) -> Result<Reply, FhirError> {
    caller.require(resource_type, Perm::Create)?;
    let res = resource::parse(body, Some(resource_type))?;
    rules::check(&**rules, &res, None)?;
    let cond = if_none_exist.map(|q| conditional_query(resource_type, q)).transpose()?;
    // The server assigns the id; one sent by the client is replaced (R4 3.1.0.4.1).
    let id = new_id();
    let index = index_of(&res);
    let rules = rules.clone();
    store
        .write(caller.visibility(), move |tx| {
            Box::pin(async move {
                let planned = create_in(tx, &*rules, res, id, index, cond.as_ref()).await?;
                commit_one(tx, &*rules, planned).await
            })
        })
        .await
}

/// Creates `res` as `id` unless `cond` matches ([`match_create`]): the
/// match is returned (200).
pub async fn create_in(
    tx: &mut WriteTx,
    rules: &dyn Rules,
    mut res: Resource,
    id: String,
    index: Vec<(String, IndexValue)>,
    cond: Option<&SearchRequest>,
) -> Result<Planned, FhirError> {
    if let Some(cond) = cond
        && let Some(v) = match_create(tx, rules, &res, cond).await?
    {
        return Ok(Planned {
            write: None,
            reply: Reply::resource(200, v),
        });
    }
    let updated = now_micros();
    res.stamp(&id, 1, updated);
    let body = res.to_bytes();
    let write = Write {
        resource_type: res.resource_type.clone(),
        id: id.clone(),
        version: 1,
        updated,
        method: Method::Create,
        body: Some(body.clone()),
        index,
        pk: None,
        patients: Vec::new(),
        grants: Vec::new(),
    };
    Ok(Planned {
        write: Some(write),
        reply: Reply::created(Version {
            resource_type: res.resource_type,
            id,
            version: 1,
            updated,
            method: Method::Create,
            body: Some(body),
            patients: None,
        }),
    })
}
