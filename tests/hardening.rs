//! Hardening: body size and JSON depth limits, rate limits, the request
//! timeout, security headers.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use apa_gateway::config::Config;
use common::{TestApp, bearer_client, json, register_client, token_endpoint};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An extension nested `levels` times inside a Patient: 2 JSON levels each.
fn patient_nested(levels: usize) -> Value {
    let mut ext = json!({"url": "http://example.org/leaf", "valueString": "x"});
    for _ in 0..levels {
        ext = json!({"url": "http://example.org/nested", "extension": [ext]});
    }
    json!({"resourceType": "Patient", "extension": [ext]})
}

/// A Questionnaire whose groups nest `levels` deep, the innermost item
/// carrying an extension with a Coding: 2 × levels + 6 levels of JSON.
fn questionnaire(levels: usize) -> Value {
    let mut item = json!({
        "linkId": "leaf", "text": "Nombre de pas par jour", "type": "integer",
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/questionnaire-unit",
                       "valueCoding": {"system": "http://unitsofmeasure.org", "code": "{steps}/d"}}],
        "code": [{"system": "http://loinc.org", "code": "41950-7"}]
    });
    for i in 0..levels {
        item = json!({"linkId": format!("g{i}"), "type": "group", "text": "Groupe", "item": [item]});
    }
    json!({"resourceType": "Questionnaire", "status": "active", "item": [item]})
}

async fn post_raw(app: &TestApp, path: &str, content_type: &str, body: String) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

fn assert_outcome(v: &Value, code: &str) {
    assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
    assert_eq!(v["issue"][0]["code"], code, "{v}");
}

async fn oversized_bodies_get_413(app: &TestApp) {
    // The limit is 20,000 bytes here.
    let fits = json!({"resourceType": "Patient", "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", "a".repeat(15_000))}});
    assert_eq!(
        post_raw(app, "Patient", "application/fhir+json", fits.to_string())
            .await
            .status(),
        201
    );
    let too_big = json!({"resourceType": "Patient", "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", "a".repeat(25_000))}});
    let r = post_raw(app, "Patient", "application/fhir+json", too_big.to_string()).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_outcome(&json(r).await, "too-long");
    // The same in a transaction, and on update.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": too_big, "request": {"method": "POST", "url": "Patient"}}]});
    let r = post_raw(app, "", "application/fhir+json", bundle.to_string()).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r = app.put("Patient/p1", &too_big).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A chunked body announces no length: it is cut at the limit all the same.
    let c = register_client(app.running(), "chunked", None, "system/*.cruds").await;
    let (status, body) = raw_http(
        app,
        &format!(
            "POST /fhir/Patient HTTP/1.1\r\nauthorization: Bearer {}\r\ncontent-type: application/fhir+json\r\ntransfer-encoding: chunked\r\n",
            c.token
        ),
        &too_big.to_string(),
        true,
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("too-long"), "{body}");
    // Nothing was stored.
    let all = json(app.get("Patient?_summary=count").await).await;
    assert_eq!(all["total"], 1);
}

async fn deep_json_is_refused_before_parsing(app: &TestApp) {
    // A Questionnaire with groups 20 deep (46 levels of JSON, far more than
    // real ones) fits the default limit (64), in a transaction too (3 more).
    let q = questionnaire(20);
    assert_eq!(app.post("Questionnaire", &q).await.status(), 201);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": q, "request": {"method": "POST", "url": "Questionnaire"}}]});
    assert_eq!(app.post("", &bundle).await.status(), 200);
    // 100 levels: serde_json alone (limit 128) would take it; the gateway does not.
    let deep = patient_nested(50);
    let r = app.post("Patient", &deep).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let oo = json(r).await;
    assert_outcome(&oo, "structure");
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("nested deeper than the limit of 64")
    );
    // Far beyond serde_json's own limit: still a clean 400.
    let r = post_raw(
        app,
        "Patient",
        "application/fhir+json",
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_outcome(&json(r).await, "structure");
    // Bundles, updates and JSON Patch documents are checked too.
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient_nested(40), "request": {"method": "POST", "url": "Patient"}}]});
    assert_eq!(app.post("", &bundle).await.status(), StatusCode::BAD_REQUEST);
    let pid = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    assert_eq!(
        app.put(&format!("Patient/{pid}"), &patient_nested(40)).await.status(),
        StatusCode::BAD_REQUEST
    );
    let patch = json!([{"op": "add", "path": "/extension", "value": [patient_nested(40)["extension"][0].clone()]}]);
    let r = app
        .req(reqwest::Method::PATCH, &format!("Patient/{pid}"))
        .header("content-type", "application/json-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_outcome(&json(r).await, "structure");
    // A token request is small: a huge one is refused before parsing.
    let r = Client::new()
        .post(token_endpoint(&app.base))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion", &"a".repeat(100_000)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(r).await["error"], "invalid_request");
    // Brackets inside strings are text, not nesting.
    let text = json!({"resourceType": "Patient", "name": [{"text": "[".repeat(500)}]});
    assert_eq!(app.post("Patient", &text).await.status(), 201);
}

async fn a_lower_depth_limit_applies(app: &TestApp) {
    // max_json_depth = 16 here: 5 nested groups take 16 levels, 6 take 18.
    assert_eq!(app.post("Questionnaire", &questionnaire(5)).await.status(), 201);
    let r = app.post("Questionnaire", &questionnaire(6)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        json(r).await["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("limit of 16")
    );
}

async fn a_client_over_its_rate_is_throttled(app: &TestApp) {
    // 1 request/s and a burst of 5 per client here.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(app.get("Patient").await);
    }
    let throttled = statuses
        .into_iter()
        .find(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .expect("the 6th request within a second is throttled");
    let wait: u64 = throttled.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert_eq!(throttled.headers()["x-content-type-options"], "nosniff");
    assert_outcome(&json(throttled).await, "throttled");
    // Another client, from the same address, has a bucket of its own.
    let other = register_client(app.running(), "other", None, "system/*.rs").await;
    assert_eq!(
        bearer_client(&other.token)
            .get(app.url("Patient"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // After Retry-After, the client may go on.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(app.get("Patient").await.status(), 200);
}

async fn unauthenticated_requests_are_limited_per_address(app: &TestApp) {
    // 1 request/s and a burst of 3 per peer address here.
    let anonymous_until_throttled = async || {
        for _ in 0..10 {
            let r = app.anonymous.get(app.url("Patient")).send().await.unwrap();
            if r.status() == StatusCode::TOO_MANY_REQUESTS {
                return r;
            }
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
        panic!("unauthenticated requests are never throttled");
    };
    let r = anonymous_until_throttled().await;
    assert!(r.headers().contains_key("retry-after"));
    assert_outcome(&json(r).await, "throttled");
    // Invalid tokens count as unauthenticated.
    let forged = bearer_client("forged.token.here");
    let mut forged_statuses = Vec::new();
    for _ in 0..5 {
        forged_statuses.push(forged.get(app.url("Patient")).send().await.unwrap().status());
    }
    assert!(
        forged_statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{forged_statuses:?}"
    );
    // The token endpoint is limited per address too.
    let mut token_statuses = Vec::new();
    for _ in 0..5 {
        let r = Client::new()
            .post(token_endpoint(&app.base))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        token_statuses.push(r.status());
    }
    assert!(
        token_statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{token_statuses:?}"
    );
    // An authenticated client from the same address is not held back.
    assert_eq!(app.get("Patient").await.status(), 200);
}

async fn a_request_that_never_ends_times_out(app: &TestApp) {
    // request_timeout_secs = 1 here. The body announces 1,000 bytes and sends 10.
    let c = register_client(app.running(), "slow", None, "system/*.cruds").await;
    let started = std::time::Instant::now();
    let (status, body) = raw_http(
        app,
        &format!(
            "POST /fhir/Patient HTTP/1.1\r\nauthorization: Bearer {}\r\ncontent-type: application/fhir+json\r\ncontent-length: 1000\r\n",
            c.token
        ),
        "{\"resource",
        false,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"timeout\""), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

async fn every_response_carries_the_security_headers(app: &TestApp) {
    let responses = [
        app.get("metadata").await,
        app.get("Patient").await,
        app.get("Patient/unknown").await,
        app.anonymous.get(app.url("Patient")).send().await.unwrap(),
        app.anonymous.get(app.url("/nowhere")).send().await.unwrap(),
        app.post("Patient", &patient_nested(40)).await,
    ];
    for r in responses {
        let h = r.headers();
        assert_eq!(h["cache-control"], "no-store", "{}", r.status());
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(
            h["content-security-policy"],
            "default-src 'none'; frame-ancestors 'none'"
        );
        // HSTS over plain HTTP means nothing (RFC 6797 §7.2): tests/mtls.rs
        // checks it over HTTPS.
        assert!(h.get("strict-transport-security").is_none(), "{}", r.status());
    }
}

/// The gateway's root (where `/metrics` is), not its FHIR base.
fn root(app: &TestApp, path: &str) -> String {
    format!("{}/{path}", app.base.trim_end_matches("/fhir"))
}

/// By default the metrics go to loopback peers only: a Prometheus agent on
/// the same host reads them without a token (the tests run on loopback).
async fn the_monitoring_on_the_host_reads_the_metrics(app: &TestApp) {
    let r = app.anonymous.get(root(app, "metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
}

fn metrics_for_the_office_network(c: &mut Config) {
    c.metrics_allow = Some(vec!["10.20.0.0/16".into(), "192.0.2.7".into()]);
}

/// With its own list of addresses, loopback is no longer one of them: the
/// gateway answers as for a path it does not serve.
async fn a_peer_outside_metrics_allow_finds_no_metrics(app: &TestApp) {
    let r = app.anonymous.get(root(app, "metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let unknown = app.anonymous.get(root(app, "nowhere")).send().await.unwrap();
    assert_eq!(json(r).await, json(unknown).await, "like any unknown path");
}

const METRICS_TOKEN: &str = "prometheus-9f8e7d6c5b4a";

fn metrics_behind_a_token(c: &mut Config) {
    c.metrics_token = Some(METRICS_TOKEN.into());
}

/// Once a token is set it is required from every address, loopback
/// included: a local process gets nothing without it.
async fn the_metrics_token_is_required_even_on_loopback(app: &TestApp) {
    let url = root(app, "metrics");
    let r = app.anonymous.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "no token");
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let oo = json(r).await;
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["expression"][0], "Authorization");
    for wrong in ["prometheus-9f8e7d6c5b4", "prometheus-9f8e7d6c5b4a0", "x"] {
        let r = bearer_client(wrong).get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{wrong}");
    }
    // A FHIR access token is not the metrics token.
    let operator = register_client(app.running(), "ops", None, "system/*.rs operator").await;
    let r = bearer_client(&operator.token).get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = bearer_client(METRICS_TOKEN).get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Sends a request by hand on a fresh connection (`head` without the final
/// empty line), and returns the status and the whole response. With
/// `chunked`, `body` goes as one chunk; otherwise it is written as is, even
/// when shorter than announced.
async fn raw_http(app: &TestApp, head: &str, body: &str, chunked: bool) -> (u16, String) {
    let addr = app.running().addr;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{head}host: {addr}\r\naccept: application/fhir+json\r\n\r\n");
    if chunked {
        req.push_str(&format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()));
    } else {
        req.push_str(body);
    }
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    // Read until the response head and its body have arrived.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let Ok(n) = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("a response in time")
        else {
            break;
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if text.contains("\r\n\r\n") && text.trim_end().ends_with('}') {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
    (status, text)
}

fn small_bodies(c: &mut Config) {
    c.max_body_bytes = 20_000;
}
fn shallow_json(c: &mut Config) {
    c.max_json_depth = 16;
}
fn strict_client_rate(c: &mut Config) {
    c.rate_limit_client_per_sec = 1;
    c.rate_limit_client_burst = 5;
}
fn strict_peer_rate(c: &mut Config) {
    c.rate_limit_peer_per_sec = 1;
    c.rate_limit_peer_burst = 3;
}
fn short_timeout(c: &mut Config) {
    c.request_timeout_secs = 1;
}

on_both_backends_with!(body_size_limit, oversized_bodies_get_413, small_bodies);
on_both_backends!(json_depth_limit, deep_json_is_refused_before_parsing);
on_both_backends_with!(json_depth_limit_configured, a_lower_depth_limit_applies, shallow_json);
on_both_backends_with!(
    client_rate_limit,
    a_client_over_its_rate_is_throttled,
    strict_client_rate
);
on_both_backends_with!(
    peer_rate_limit,
    unauthenticated_requests_are_limited_per_address,
    strict_peer_rate
);
on_both_backends_with!(request_timeout, a_request_that_never_ends_times_out, short_timeout);
on_both_backends!(security_headers, every_response_carries_the_security_headers);
on_both_backends!(metrics_on_loopback, the_monitoring_on_the_host_reads_the_metrics);
on_both_backends_with!(
    metrics_allow_list,
    a_peer_outside_metrics_allow_finds_no_metrics,
    metrics_for_the_office_network
);
on_both_backends_with!(
    metrics_token,
    the_metrics_token_is_required_even_on_loopback,
    metrics_behind_a_token
);
