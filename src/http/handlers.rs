//! Thin handlers: pull what the interaction needs out of the request, call
//! it, render its reply. No FHIR rule lives here.

use std::any::Any;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use crate::fhir::error::FhirError;
use crate::fhir::interaction::{self as fi, bundle::BundleInput, parse_etag, search::SearchInput};
use crate::fhir::search::registry::Registry;
use crate::security::{Caller, audit};

use super::AppState;
use super::respond::{Prefer, Return, render};

type Result<T> = std::result::Result<T, FhirError>;

fn known_type(rtype: &str) -> Result<()> {
    if Registry::r4().is_resource_type(rtype) {
        Ok(())
    } else {
        Err(FhirError::not_found(format!(
            "'{rtype}' is not a resource type of this server"
        )))
    }
}

fn if_match(h: &HeaderMap) -> Result<Option<i64>> {
    match h.get(header::IF_MATCH).map(|v| v.to_str().unwrap_or_default()) {
        None => Ok(None),
        Some(s) => parse_etag(s)
            .map(Some)
            .ok_or_else(|| FhirError::invalid(format!("If-Match '{s}' is not a version of this server (W/\"n\")"))),
    }
}

fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn reply(state: &AppState, h: &HeaderMap, r: fi::Reply) -> Response {
    render(&state.base, r, Prefer::from_headers(h).ret)
}

pub async fn metadata(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, super::error::FHIR_JSON)],
        s.capabilities.clone(),
    )
        .into_response()
}

pub async fn read(
    State(s): State<AppState>,
    caller: Caller,
    h: HeaderMap,
    Path((rtype, id)): Path<(String, String)>,
) -> Result<Response> {
    known_type(&rtype)?;
    Ok(reply(&s, &h, fi::read::read(&s.store, &caller, &rtype, &id).await?))
}

pub async fn vread(
    State(s): State<AppState>,
    caller: Caller,
    h: HeaderMap,
    Path((rtype, id, vid)): Path<(String, String, String)>,
) -> Result<Response> {
    known_type(&rtype)?;
    Ok(reply(
        &s,
        &h,
        fi::read::vread(&s.store, &caller, &rtype, &id, &vid).await?,
    ))
}

pub async fn create(
    State(s): State<AppState>,
    caller: Caller,
    h: HeaderMap,
    Path(rtype): Path<String>,
    body: Bytes,
) -> Result<Response> {
    known_type(&rtype)?;
    let cond = h
        .get("if-none-exist")
        .and_then(|v| v.to_str().ok())
        .map(|q| q.trim_start_matches('?').to_string());
    Ok(reply(
        &s,
        &h,
        fi::create::create(&s.store, &s.rules, &caller, &rtype, &body, cond.as_deref()).await?,
    ))
}

pub async fn update(
    State(s): State<AppState>,
    caller: Caller,
    h: HeaderMap,
    Path((rtype, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response> {
    known_type(&rtype)?;
    let r = fi::update::update(&s.store, &s.rules, &caller, &rtype, &id, &body, if_match(&h)?).await?;
    Ok(reply(&s, &h, r))
}

pub async fn conditional_update(
    State(s): State<AppState>,
    caller: Caller,
    h: HeaderMap,
    Path(rtype): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response> {
    known_type(&rtype)?;
    let r = fi::update::conditional_update(
        &s.store,
        &s.rules,
        &caller,
        &rtype,
        q.as_deref().unwrap_or_default(),
        &body,
        if_match(&h)?,
    )
    .await?;
    Ok(reply(&s, &h, r))
}

pub async fn patch(
    State(s): State<AppState>,
    caller: Caller,
    h: HeaderMap,
    Path((rtype, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response> {
    known_type(&rtype)?;
    let r = fi::patch::patch(&s.store, &s.rules, &caller, &rtype, &id, &body, if_match(&h)?).await?;
    Ok(reply(&s, &h, r))
}

pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    h: HeaderMap,
    Path((rtype, id)): Path<(String, String)>,
) -> Result<Response> {
    known_type(&rtype)?;
    Ok(reply(
        &s,
        &h,
        fi::delete::delete(&s.store, &s.rules, &caller, &rtype, &id, if_match(&h)?).await?,
    ))
}

pub async fn conditional_delete(
    State(s): State<AppState>,
    caller: Caller,
    h: HeaderMap,
    Path(rtype): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    known_type(&rtype)?;
    let r =
        fi::delete::conditional_delete(&s.store, &s.rules, &caller, &rtype, q.as_deref().unwrap_or_default()).await?;
    Ok(reply(&s, &h, r))
}

async fn run_search(
    s: &AppState,
    caller: &Caller,
    h: &HeaderMap,
    rtype: Option<&str>,
    params: Vec<(String, String)>,
) -> Result<Response> {
    if let Some(t) = rtype {
        known_type(t)?;
    }
    let prefer = Prefer::from_headers(h);
    let r = fi::search::search(
        &s.store,
        caller,
        SearchInput {
            base: &s.base,
            resource_type: rtype,
            params: &params,
            strict: prefer.strict,
            limits: s.search_limits,
        },
    )
    .await?;
    Ok(render(&s.base, r, Return::Representation))
}

pub async fn search_type(
    State(s): State<AppState>,
    caller: Caller,
    h: HeaderMap,
    Path(rtype): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    run_search(&s, &caller, &h, Some(&rtype), pairs(q.as_deref())).await
}

/// `POST [type]/_search`: parameters in the form body (and the URL).
pub async fn search_type_post(
    State(s): State<AppState>,
    caller: Caller,
    h: HeaderMap,
    Path(rtype): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response> {
    run_search(&s, &caller, &h, Some(&rtype), search_form(q.as_deref(), &body)).await
}

pub async fn search_system(
    State(s): State<AppState>,
    caller: Caller,
    h: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    run_search(&s, &caller, &h, None, pairs(q.as_deref())).await
}

pub async fn search_system_post(
    State(s): State<AppState>,
    caller: Caller,
    h: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Response> {
    run_search(&s, &caller, &h, None, search_form(q.as_deref(), &body)).await
}

/// The parameters of a `POST _search`: the URL's, then the form body's,
/// which the audit event records with the URL's.
fn search_form(query: Option<&str>, body: &[u8]) -> Vec<(String, String)> {
    let form = String::from_utf8_lossy(body);
    audit::note_search_form(&form);
    let mut params = pairs(query);
    params.extend(pairs(Some(&form)));
    params
}

async fn run_history(
    s: &AppState,
    caller: &Caller,
    rtype: Option<&str>,
    id: Option<&str>,
    q: Option<&str>,
) -> Result<Response> {
    if let Some(t) = rtype {
        known_type(t)?;
    }
    let r = fi::history::history(&s.store, caller, &s.base, rtype, id, &pairs(q)).await?;
    Ok(render(&s.base, r, Return::Representation))
}

pub async fn history_system(State(s): State<AppState>, caller: Caller, RawQuery(q): RawQuery) -> Result<Response> {
    run_history(&s, &caller, None, None, q.as_deref()).await
}

pub async fn history_type(
    State(s): State<AppState>,
    caller: Caller,
    Path(rtype): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    run_history(&s, &caller, Some(&rtype), None, q.as_deref()).await
}

pub async fn history_instance(
    State(s): State<AppState>,
    caller: Caller,
    Path((rtype, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    run_history(&s, &caller, Some(&rtype), Some(&id), q.as_deref()).await
}

pub async fn bundle(State(s): State<AppState>, caller: Caller, h: HeaderMap, body: Bytes) -> Result<Response> {
    let prefer = Prefer::from_headers(&h);
    let r = fi::bundle::process(
        &s.store,
        &s.rules,
        &caller,
        BundleInput {
            base: &s.base,
            body: &body,
            representation: prefer.ret == Return::Representation && h.contains_key("prefer"),
            strict: prefer.strict,
            search_limits: s.search_limits,
        },
    )
    .await?;
    Ok(render(&s.base, r, Return::Representation))
}

/// `POST [type]/$validate`
pub async fn validate_type(
    State(s): State<AppState>,
    caller: Caller,
    Path(rtype): Path<String>,
    body: Bytes,
) -> Result<Response> {
    known_type(&rtype)?;
    let r = fi::validate::validate(&*s.rules, &caller, &rtype, None, &body)?;
    Ok(render(&s.base, r, Return::Representation))
}

/// `POST [type]/[id]/$validate`
pub async fn validate_instance(
    State(s): State<AppState>,
    caller: Caller,
    Path((rtype, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response> {
    known_type(&rtype)?;
    let r = fi::validate::validate(&*s.rules, &caller, &rtype, Some(&id), &body)?;
    Ok(render(&s.base, r, Return::Representation))
}

pub async fn not_found() -> FhirError {
    FhirError::not_found("no such endpoint; the FHIR API is under /fhir")
}

pub async fn method_not_allowed() -> FhirError {
    FhirError::not_supported(405, "this method is not supported on this URL")
}

pub async fn live() -> impl IntoResponse {
    Json(json!({"status": "up"}))
}

pub async fn ready(State(s): State<AppState>) -> Response {
    match s.store.ping().await {
        Ok(()) => Json(json!({"status": "ready", "database": "up"})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "database": "down"})),
            )
                .into_response()
        }
    }
}

pub async fn prometheus(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(h) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    FhirError::internal("internal error; the request was not applied").into_response()
}
