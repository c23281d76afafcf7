//! history-instance, history-type and history-system.

use serde_json::json;

use crate::fhir::bundle_writer::BundleWriter;
use crate::fhir::error::FhirError;
use crate::fhir::search::values::{date_range, format_instant};
use crate::security::Caller;
use crate::security::audit::AUDIT_EVENT;
use crate::security::scopes::Perm;
use crate::store::{HistoryQuery, Method, Store};

use super::read::check_id;
use super::{Reply, link};

pub const PAGE_BEFORE: &str = "_page_before";

pub async fn history(
    store: &Store,
    caller: &Caller,
    base: &str,
    resource_type: Option<&str>,
    id: Option<&str>,
    params: &[(String, String)],
) -> Result<Reply, FhirError> {
    if resource_type == Some(AUDIT_EVENT) {
        return Err(FhirError::not_supported(
            405,
            "the audit trail has no history (its events never change): read or search AuditEvent instead",
        ));
    }
    match (resource_type, id) {
        (Some(t), Some(id)) => {
            caller.require(t, Perm::Read)?;
            check_id(id)?;
        }
        (Some(t), None) => caller.require(t, Perm::Search)?,
        _ => caller.require_all_types(Perm::Search)?,
    }
    let mut q = HistoryQuery {
        resource_type: resource_type.map(str::to_string),
        id: id.map(str::to_string),
        count: 20,
        ..Default::default()
    };
    // The audit trail is not in the resources' history (it has a table of
    // its own; events stored as resources by earlier releases stay out too).
    if resource_type.is_none() {
        q.exclude_types.push(AUDIT_EVENT.into());
    }
    let mut kept: Vec<(String, String)> = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "_count" => {
                let n: usize = v.parse().map_err(|_| {
                    FhirError::invalid(format!("_count must be a whole number, not '{v}'")).at("_count")
                })?;
                q.count = n.clamp(1, 1000);
                kept.push((k.clone(), q.count.to_string()));
            }
            "_since" => {
                let r = date_range(v)
                    .ok_or_else(|| FhirError::invalid(format!("_since must be an instant, not '{v}'")).at("_since"))?;
                q.since = Some(r.lo);
                kept.push((k.clone(), v.clone()));
            }
            PAGE_BEFORE => {
                q.before = Some(
                    v.parse()
                        .map_err(|_| FhirError::invalid("invalid paging token").at(PAGE_BEFORE))?,
                );
            }
            "_at" => {
                return Err(FhirError::not_supported(400, "_at is not supported on history").at("_at"));
            }
            // _format and unknown parameters do not change a history.
            _ => {}
        }
    }
    if let (Some(t), Some(id)) = (resource_type, id)
        && store.read(t, id, &caller.visibility()).await?.is_none()
    {
        return Err(FhirError::not_found(format!("{t}/{id} is not known")));
    }
    let page = store.history(&q, &caller.visibility()).await?;
    let path = match (resource_type, id) {
        (Some(t), Some(i)) => format!("{t}/{i}/_history"),
        (Some(t), None) => format!("{t}/_history"),
        _ => "_history".to_string(),
    };
    let mut links = vec![("self", link(base, &path, &kept))];
    if let Some(before) = page.next {
        let mut ps = kept.clone();
        ps.push((PAGE_BEFORE.into(), before.to_string()));
        links.push(("next", link(base, &path, &ps)));
    }
    let mut w = BundleWriter::new("history", None, &links);
    for v in &page.entries {
        let (method, url, status) = match v.method {
            Method::Create => ("POST", v.resource_type.clone(), "201 Created"),
            Method::Update => ("PUT", format!("{}/{}", v.resource_type, v.id), "200 OK"),
            Method::Delete => ("DELETE", format!("{}/{}", v.resource_type, v.id), "204 No Content"),
        };
        w.entry(
            Some(&format!("{base}/{}/{}", v.resource_type, v.id)),
            v.body.as_deref(),
            json!({
                "request": {"method": method, "url": url},
                "response": {
                    "status": status,
                    "etag": format!("W/\"{}\"", v.version),
                    "lastModified": format_instant(v.updated),
                },
            }),
        );
    }
    Ok(Reply::bundle(w.finish()))
}
