//! Reading the audit trail: read and search of AuditEvent, served from its
//! own append-only table (`store::AuditRecord`), not from the generic
//! resource tables, so that recording every request stays cheap.
//!
//! Searchable: `_id`, `date` (and `_lastUpdated`, the same instant),
//! `patient`, `entity`, `agent:identifier` (the client id), `subtype`,
//! `action`, `outcome`, sorted by `date` (ascending by default, `-date`
//! newest first), paged by a cursor. Anything else is refused with a 400
//! saying so, rather than ignored: an auditor must not believe a filter
//! applied when it did not.

use serde_json::json;

use crate::fhir::bundle_writer::BundleWriter;
use crate::fhir::error::FhirError;
use crate::fhir::interaction::search::SearchInput;
use crate::fhir::interaction::{Reply, link};
use crate::fhir::search::model::{DateRange, Filter, Modifier, Prefix, SearchValue, SortKey, Summary};
use crate::fhir::search::parse::{ParseOptions, parse_search};
use crate::fhir::search::registry::Registry;
use crate::fhir::summary::subset;
use crate::store::{AuditCond, AuditQuery, AuditRecord, Method, Store, Version};

use super::Caller;
use super::audit::{AUDIT_EVENT, LOGIN, render};
use super::scopes::Perm;

/// The paging parameter of the trail: `<recorded µs>.<id>` of the last
/// event of the previous page.
const CURSOR: &str = "_cursor";

/// The search parameters the trail answers, for the CapabilityStatement.
pub const SEARCH_PARAMS: &[&str] = &["date", "patient", "entity", "agent", "subtype", "action", "outcome"];

fn version(rec: &AuditRecord) -> Result<Version, FhirError> {
    Ok(Version {
        resource_type: AUDIT_EVENT.into(),
        id: rec.id.clone(),
        version: 1,
        updated: rec.recorded,
        method: Method::Create,
        body: Some(render(rec).ok_or_else(|| FhirError::internal("an audit record could not be read"))?),
        patients: None,
    })
}

pub async fn read(store: &Store, caller: &Caller, id: &str, vid: Option<&str>) -> Result<Reply, FhirError> {
    caller.require(AUDIT_EVENT, Perm::Read)?;
    let found = store.audit_read(id, &caller.visibility()).await?;
    match (found, vid) {
        (None, _) => Err(FhirError::not_found(format!("{AUDIT_EVENT}/{id} is not known"))),
        // Events are never changed: version 1 is the only one.
        (Some(_), Some(v)) if v != "1" => Err(FhirError::not_found(format!("{AUDIT_EVENT}/{id} has no version {v}"))),
        (Some(rec), _) => Ok(Reply::resource(200, version(&rec)?)),
    }
}

pub async fn search(store: &Store, caller: &Caller, input: SearchInput<'_>) -> Result<Reply, FhirError> {
    caller.require(AUDIT_EVENT, Perm::Search)?;
    let mut after = None;
    let mut params = Vec::with_capacity(input.params.len());
    for (k, v) in input.params {
        if k == CURSOR {
            after = Some(parse_cursor(v)?);
        } else {
            params.push((k.clone(), v.clone()));
        }
    }
    // Strict whatever the client prefers: a filter silently ignored would
    // show an auditor more, or less, than they think they asked for.
    let opts = ParseOptions {
        strict: true,
        default_count: 20,
        max_count: 1000,
        limits: input.limits,
    };
    let req = parse_search(Registry::r4(), Some(AUDIT_EVENT), &params, &opts)?;
    if !req.include.is_empty() || !req.revinclude.is_empty() {
        return Err(unsupported("_include and _revinclude"));
    }
    if req.summary == Some(Summary::Count) || req.total != Default::default() {
        return Err(unsupported("_summary=count and _total"));
    }
    let descending = match req.sort.as_slice() {
        [] => false,
        [s] if matches!(&s.key, SortKey::LastUpdated) || matches!(&s.key, SortKey::Param(p) if p.code == "date") => {
            s.descending
        }
        _ => return Err(unsupported("sorting other than by date")),
    };
    let mut q = AuditQuery {
        conds: req.filters.iter().map(condition).collect::<Result<_, _>>()?,
        descending,
        after,
        count: req.count,
    };
    if q.count == 0 {
        q.count = 1;
    }
    let page = store.audit_search(&q, &caller.visibility()).await?;

    let mut links = vec![("self", link(input.base, AUDIT_EVENT, &req.applied))];
    if let Some((recorded, id)) = &page.next {
        let mut ps = req.applied.clone();
        ps.push((CURSOR.into(), format!("{recorded}.{id}")));
        links.push(("next", link(input.base, AUDIT_EVENT, &ps)));
    }
    let mut w = BundleWriter::new("searchset", None, &links);
    for rec in &page.records {
        let Some(body) = render(rec) else { continue };
        let full_url = format!("{}/{AUDIT_EVENT}/{}", input.base, rec.id);
        let subsetted = subset(&body, AUDIT_EVENT, req.summary, &req.elements);
        w.entry(
            Some(&full_url),
            Some(subsetted.as_deref().unwrap_or(&body)),
            json!({"search": {"mode": "match"}}),
        );
    }
    Ok(Reply::bundle(w.finish()))
}

fn unsupported(what: &str) -> FhirError {
    FhirError::invalid(format!("{what} are not supported on the audit trail"))
}

fn parse_cursor(v: &str) -> Result<(i64, String), FhirError> {
    v.split_once('.')
        .and_then(|(r, id)| Some((r.parse().ok()?, id.to_string())))
        .filter(|(_, id)| crate::fhir::resource::valid_id(id))
        .ok_or_else(|| FhirError::invalid(format!("'{v}' is not a page of this server")).at(CURSOR))
}

fn tokens(code: &str, values: &[SearchValue]) -> Result<Vec<String>, FhirError> {
    values
        .iter()
        .map(|v| match v {
            SearchValue::Token { code: Some(c), .. } => Ok(c.clone()),
            _ => Err(FhirError::invalid(format!("{code} needs a code")).at(code.to_string())),
        })
        .collect()
}

fn references(code: &str, values: &[SearchValue], default_type: Option<&str>) -> Result<Vec<String>, FhirError> {
    values
        .iter()
        .map(|v| match v {
            SearchValue::Reference { rtype, id, .. } => match (rtype.as_deref().or(default_type), id) {
                (Some(t), id) if !id.contains('/') => Ok(format!("{t}/{id}")),
                _ => Err(FhirError::invalid(format!("{code} needs a Type/id reference")).at(code.to_string())),
            },
            _ => Err(FhirError::invalid(format!("{code} needs a reference")).at(code.to_string())),
        })
        .collect()
}

/// The bounds of a date value on one instant (`recorded`).
fn bounds(code: &str, values: &[SearchValue]) -> Result<(i64, i64), FhirError> {
    let [SearchValue::Date { prefix, range }] = values else {
        return Err(
            FhirError::invalid(format!("{code} takes one date per parameter; repeat it for a range"))
                .at(code.to_string()),
        );
    };
    let DateRange { lo, hi } = *range;
    Ok(match prefix {
        Prefix::Eq | Prefix::Ap => (lo, hi),
        Prefix::Ge => (lo, i64::MAX),
        Prefix::Gt | Prefix::Sa => (hi.saturating_add(1), i64::MAX),
        Prefix::Le => (i64::MIN, hi),
        Prefix::Lt | Prefix::Eb => (i64::MIN, lo.saturating_sub(1)),
        Prefix::Ne => return Err(unsupported("date=ne")),
    })
}

fn condition(f: &Filter) -> Result<AuditCond, FhirError> {
    let Filter::Values {
        param,
        modifier,
        values,
    } = f
    else {
        return Err(unsupported("chained and _has searches"));
    };
    let code = param.code.as_str();
    Ok(match (code, modifier) {
        ("_id", None) => AuditCond::Id(tokens(code, values)?),
        ("date" | "_lastUpdated", None) => {
            let (lo, hi) = bounds(code, values)?;
            AuditCond::Recorded { lo, hi }
        }
        // R4 defines both on `entity.what`, `patient` on the Patients among
        // them: one condition, so that an auditor gets the same events by
        // either (events of earlier releases named a patient as an entity
        // of another patient's record).
        ("patient", None | Some(Modifier::Type(_))) => {
            let refs = references(code, values, Some("Patient"))?;
            if let Some(other) = refs.iter().find(|r| !r.starts_with("Patient/")) {
                return Err(FhirError::invalid(format!("patient names Patients, not {other}")).at(code.to_string()));
            }
            AuditCond::Entity(refs)
        }
        ("entity", None | Some(Modifier::Type(_))) => AuditCond::Entity(references(code, values, None)?),
        ("agent", Some(Modifier::Identifier)) => AuditCond::Client(tokens(code, values)?),
        // A token request is recorded as `login` and shown as DICOM's Login.
        ("subtype", None) => AuditCond::Subtype(
            tokens(code, values)?
                .into_iter()
                .map(|c| if c == "110122" { LOGIN.to_string() } else { c })
                .collect(),
        ),
        ("action", None) => AuditCond::Action(tokens(code, values)?),
        ("outcome", None) => AuditCond::Outcome(tokens(code, values)?),
        ("agent", _) => {
            return Err(FhirError::invalid(
                "the trail names clients by identifier: search agent:identifier=<client id>",
            )
            .at("agent"));
        }
        _ => return Err(unsupported(&format!("the parameter {code} (or this modifier)"))),
    })
}
