//! Running the gateway: graceful shutdown, traces exported by OTLP.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use apa_gateway::config::Config;
use apa_gateway::server;
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// SIGTERM-like stop while writes are in flight: every write that was
/// acknowledged is in the database when it is opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        listen: "127.0.0.1:0".into(),
        database_url: format!("sqlite://{}/apa.db", dir.path().display()),
        ..Config::default()
    };
    let running = server::start(&cfg).await.unwrap();
    let base = running.base.clone();
    let token = common::register_client(&running, "loader", None, "system/*.cruds operator")
        .await
        .token;
    let client = common::bearer_client(&token);
    let mut writes = Vec::new();
    for i in 0..60 {
        let (client, base) = (client.clone(), base.clone());
        writes.push(tokio::spawn(async move {
            let r = client
                .post(format!("{base}/Patient"))
                .header("content-type", "application/fhir+json")
                .body(
                    json!({"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": format!("{i}")}]})
                        .to_string(),
                )
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 201 => {
                    let v: serde_json::Value = r.json().await.unwrap();
                    Some(v["id"].as_str().unwrap().to_string())
                }
                _ => None,
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    running.stop().await;
    let mut acknowledged = Vec::new();
    for w in writes {
        if let Some(id) = w.await.unwrap() {
            acknowledged.push(id);
        }
    }
    let again = server::start(&cfg).await.unwrap();
    // A new address is a new audience: a new token.
    let token = common::register_client(&again, "loader", None, "system/*.cruds operator")
        .await
        .token;
    let client = common::bearer_client(&token);
    for id in &acknowledged {
        let r = client.get(format!("{}/Patient/{id}", again.base)).send().await.unwrap();
        assert_eq!(r.status(), 200, "acknowledged Patient/{id} survived the stop");
    }
    again.stop().await;
}

/// With an OTLP endpoint configured, request spans reach the collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_exported_by_otlp() {
    let collector = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/traces"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&collector)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        listen: "127.0.0.1:0".into(),
        database_url: format!("sqlite://{}/apa.db", dir.path().display()),
        otlp_endpoint: Some(collector.uri()),
        ..Config::default()
    };
    let telemetry = apa_gateway::telemetry::init(&cfg).unwrap();
    let running = server::start(&cfg).await.unwrap();
    let r = reqwest::get(format!("{}/metadata", running.base)).await.unwrap();
    assert_eq!(r.status(), 200);
    running.stop().await;
    // Dropping the telemetry flushes the batch exporter.
    tokio::task::spawn_blocking(move || drop(telemetry)).await.unwrap();
    let received = collector.received_requests().await.unwrap();
    assert!(
        received
            .iter()
            .any(|r| r.url.path() == "/v1/traces" && !r.body.is_empty()),
        "no trace was exported"
    );
}

/// With a certificate and key configured the gateway speaks HTTPS only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
    let cfg = Config {
        listen: "127.0.0.1:0".into(),
        database_url: format!("sqlite://{}/apa.db", dir.path().display()),
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..Config::default()
    };
    let running = server::start(&cfg).await.unwrap();
    assert!(running.base.starts_with("https://"));
    let port = running.addr.port();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pair.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/fhir/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP is not answered.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/fhir/metadata"))
            .await
            .is_err()
    );
    running.stop().await;
}
