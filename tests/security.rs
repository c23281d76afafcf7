//! Authentication and scopes: who may call, and what they may do.

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine;
use common::{TestApp, bearer_client, json, register_client, token_endpoint};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn ask_token(app: &TestApp, assertion: &str, scope: &str) -> reqwest::Response {
    Client::new()
        .post(token_endpoint(&app.base))
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap()
}

/// A client assertion built with the JOSE library directly, as a client's
/// own software would.
fn assertion(client: &str, aud: &str, exp: u64, jti: &str, kid: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_string());
    encode(
        &h,
        &json!({"iss": client, "sub": client, "aud": aud, "exp": exp, "jti": jti}),
        key,
    )
    .unwrap()
}

/// Every client-authentication failure reads the same to the client.
async fn assert_invalid_client(r: reqwest::Response, what: &str) {
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what}");
    let body = json(r).await;
    assert_eq!(body["error"], "invalid_client", "{what}");
    assert_eq!(body["error_description"], "client authentication failed", "{what}");
}

async fn no_token_no_data(app: &TestApp) {
    let r = app.anonymous.get(app.url("Patient")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert_eq!(json(r).await["resourceType"], "OperationOutcome");
    for bad in ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."] {
        let r = bearer_client(bad).get(app.url("Patient")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }
    // A token signed by someone else than the gateway.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": "x", "sub": "operator", "aud": app.base, "exp": now() + 60, "scope": "system/*.cruds"}),
        &EncodingKey::from_secret(b"not the gateway's secret"),
    )
    .unwrap();
    let r = bearer_client(&forged).get(app.url("Patient")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Discovery stays open.
    let cfg = json(
        app.anonymous
            .get(app.url(".well-known/smart-configuration"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(cfg["token_endpoint"], token_endpoint(&app.base));
    assert_eq!(
        app.anonymous.get(app.url("metadata")).send().await.unwrap().status(),
        200
    );
    // Only the discovery documents themselves: a path that ends like one
    // but is routed to a resource read is authenticated like any other.
    for lookalike in ["fhir/metadata", "fhir/.well-known/smart-configuration"] {
        let r = app.anonymous.get(app.url(lookalike)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{lookalike}");
        assert!(r.headers().contains_key("www-authenticate"), "{lookalike}");
    }
}

async fn the_token_endpoint_refuses_bad_assertions(app: &TestApp) {
    let c = register_client(
        app.running(),
        "mss-bouger",
        Some("org-mss"),
        "system/Task.cruds system/Patient.rs",
    )
    .await;
    let key = EncodingKey::from_ec_pem(c.pem.as_bytes()).unwrap();
    let aud = token_endpoint(&app.base);
    let good = |jti: &str| assertion(&c.id, &aud, now() + 60, jti, &c.kid, &key, Algorithm::ES384);
    // Written with the JOSE library, not our code: works end to end.
    let r = ask_token(app, &good("j-1"), "system/Task.cruds").await;
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "bearer");
    assert_eq!(t["scope"], "system/Task.cruds");
    let tasks = bearer_client(t["access_token"].as_str().unwrap())
        .get(app.url("Task"))
        .send()
        .await
        .unwrap();
    assert_eq!(tasks.status(), 200);
    // The same assertion again: a replay.
    assert_invalid_client(
        ask_token(app, &good("j-1"), "system/Task.cruds").await,
        "a replayed assertion",
    )
    .await;
    // Expired, too far in the future, wrong audience.
    let expired = assertion(&c.id, &aud, now() - 120, "j-2", &c.kid, &key, Algorithm::ES384);
    assert_invalid_client(ask_token(app, &expired, "system/Task.rs").await, "an expired assertion").await;
    let too_long = assertion(&c.id, &aud, now() + 3600, "j-3", &c.kid, &key, Algorithm::ES384);
    assert_invalid_client(
        ask_token(app, &too_long, "system/Task.rs").await,
        "an assertion living too long",
    )
    .await;
    let elsewhere = assertion(
        &c.id,
        "https://other.example/token",
        now() + 60,
        "j-4",
        &c.kid,
        &key,
        Algorithm::ES384,
    );
    assert_invalid_client(ask_token(app, &elsewhere, "system/Task.rs").await, "another audience").await;
    // Signed with another key than the registered one.
    let (other_pem, _) = apa_gateway::security::keys::generate_es384("x").unwrap();
    let other = EncodingKey::from_ec_pem(other_pem.as_bytes()).unwrap();
    let wrong_key = assertion(&c.id, &aud, now() + 60, "j-5", &c.kid, &other, Algorithm::ES384);
    assert_invalid_client(ask_token(app, &wrong_key, "system/Task.rs").await, "another key").await;
    // alg none, and HS256 with a guessable secret.
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": c.kid})),
        b64(json!({"iss": c.id, "sub": c.id, "aud": aud, "exp": now() + 60, "jti": "j-6"}))
    );
    assert_invalid_client(ask_token(app, &none, "system/Task.rs").await, "alg none").await;
    let hs = assertion(
        &c.id,
        &aud,
        now() + 60,
        "j-7",
        &c.kid,
        &EncodingKey::from_secret(b"k"),
        Algorithm::HS256,
    );
    assert_invalid_client(ask_token(app, &hs, "system/Task.rs").await, "HS256").await;
    // Scopes beyond the registration are not granted.
    let r = ask_token(app, &good("j-8"), "system/Observation.rs").await;
    assert_eq!(r.status(), 400);
    assert_eq!(json(r).await["error"], "invalid_scope");
    // A revoked client gets no token.
    app.running().store.revoke_client(&c.id, 1).await.unwrap();
    assert_invalid_client(ask_token(app, &good("j-9"), "system/Task.rs").await, "a revoked client").await;
}

async fn an_rs384_client_gets_a_token(app: &TestApp) {
    let pem = include_str!("../fixtures/keys/test-client-rsa.pem");
    let jwks = apa_gateway::security::keys::public_jwks(pem, "rsa-1").unwrap();
    app.running()
        .store
        .save_client(apa_gateway::store::ClientRecord {
            id: "gp-software".into(),
            name: "GP software".into(),
            organization: Some("org-gp".into()),
            scope: "system/ServiceRequest.cruds".into(),
            jwks: Some(jwks),
            jwks_url: None,
            tls_cert_sha256: None,
            created: 0,
            revoked: None,
        })
        .await
        .unwrap();
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let a = assertion(
        "gp-software",
        &token_endpoint(&app.base),
        now() + 60,
        "r-1",
        "rsa-1",
        &key,
        Algorithm::RS384,
    );
    assert_eq!(ask_token(app, &a, "system/ServiceRequest.cruds").await.status(), 200);
}

async fn scopes_limit_what_a_client_does(app: &TestApp) {
    // The operator client (all scopes) prepares data.
    let pid = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    app.create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{pid}")}}))
        .await;
    // An operator (who sees every organisation's data) limited to reading patients.
    let reader = register_client(app.running(), "reader", None, "system/Patient.rs operator").await;
    let c = bearer_client(&reader.token);
    assert_eq!(
        c.get(app.url(&format!("Patient/{pid}"))).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(app.url("Patient?active=true")).send().await.unwrap().status(),
        200
    );
    let forbidden = [
        c.get(app.url("Observation")).send().await.unwrap(),
        c.post(app.url("Patient"))
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Patient"}).to_string())
            .send()
            .await
            .unwrap(),
        c.delete(app.url(&format!("Patient/{pid}"))).send().await.unwrap(),
        c.get(app.url("_history")).send().await.unwrap(),
        c.get(app.url("Patient?_has:Observation:subject:status=final"))
            .send()
            .await
            .unwrap(),
    ];
    for r in forbidden {
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(json(r).await["issue"][0]["code"], "forbidden");
    }
    // A transaction with an entry outside the scopes is refused whole.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}, "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = c
        .post(app.url(""))
        .header("content-type", "application/fhir+json")
        .body(tx.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Included resources of a type it may not read are left out.
    let b = json(
        c.get(app.url(&format!("Patient?_id={pid}&_revinclude=Observation:subject")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let types: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Patient"]);
}

/// What a client may do is checked before what it sent is read, in a
/// Bundle as alone: a client that may only read patients hears 403 for an
/// Observation it may not create, however malformed.
async fn a_forbidden_entry_is_refused_before_it_is_read(app: &TestApp) {
    let reader = register_client(app.running(), "patient-reader", None, "system/Patient.rs").await;
    let c = bearer_client(&reader.token);
    // An Observation without its resourceType.
    let malformed = json!({"status": "final", "code": {"text": "poids"}});
    let alone = app.send_as(&c, Method::POST, "Observation", &malformed).await;
    assert_eq!(alone.status(), StatusCode::FORBIDDEN, "the create alone");

    let entry = json!({"resource": malformed, "request": {"method": "POST", "url": "Observation"}});
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [entry]});
    let r = app.send_as(&c, Method::POST, "", &batch).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = json(r).await;
    assert_eq!(r["entry"][0]["response"]["status"], "403 Forbidden", "{r}");
    assert_eq!(r["entry"][0]["response"]["outcome"]["issue"][0]["code"], "forbidden");

    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]});
    let r = app.send_as(&c, Method::POST, "", &transaction).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(json(r).await["issue"][0]["code"], "forbidden");

    // In a transaction, the forbidden entry is found wherever it stands:
    // after an entry that is malformed (a read without its URL), the
    // answer is still 403.
    let malformed_read = json!({"request": {"method": "GET"}});
    let transaction = json!({"resourceType": "Bundle", "type": "transaction",
                             "entry": [malformed_read, entry]});
    let r = app.send_as(&c, Method::POST, "", &transaction).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let oo = json(r).await;
    assert_eq!(oo["issue"][0]["code"], "forbidden", "{oo}");
    assert_eq!(oo["issue"][0]["expression"][0], "Bundle.entry[1]", "{oo}");
}

/// RFC 6749 §5.2: whatever made a client's authentication fail, the
/// attacker hears the same answer, so that the token endpoint tells nobody
/// which client ids exist, which are revoked, or which assertion was
/// almost right. Only the audit trail says why.
async fn an_attacker_cannot_tell_why_the_token_endpoint_refused(app: &TestApp) {
    let mss = register_client(app.running(), "mss-bouger", Some("org-mss"), "system/Task.cruds").await;
    let gp = register_client(app.running(), "cabinet-gp", Some("org-gp"), "system/Task.cruds").await;
    let aud = token_endpoint(&app.base);
    let mss_key = EncodingKey::from_ec_pem(mss.pem.as_bytes()).unwrap();
    let gp_key = EncodingKey::from_ec_pem(gp.pem.as_bytes()).unwrap();
    let (stolen_pem, _) = apa_gateway::security::keys::generate_es384("x").unwrap();
    let attacker_key = EncodingKey::from_ec_pem(stolen_pem.as_bytes()).unwrap();
    let signed = |client: &str, jti: &str, key: &EncodingKey, kid: &str| {
        assertion(client, &aud, now() + 60, jti, kid, key, Algorithm::ES384)
    };

    // The MSS's software asks once, rightly: the assertion is spent.
    let spent = signed(&mss.id, "once", &mss_key, &mss.kid);
    assert_eq!(ask_token(app, &spent, "system/Task.rs").await.status(), 200);
    // The GP practice leaves the territory: its client is revoked.
    app.running().store.revoke_client(&gp.id, 1).await.unwrap();

    let attacks = [
        (
            "an unknown client id",
            signed("no-such-client", "a-1", &attacker_key, &mss.kid),
        ),
        (
            "a known id, the attacker's key",
            signed(&mss.id, "a-2", &attacker_key, &mss.kid),
        ),
        ("a revoked client, its own key", signed(&gp.id, "a-3", &gp_key, &gp.kid)),
        ("a replayed assertion", spent),
    ];
    let mut answers = Vec::new();
    for (attack, a) in &attacks {
        let asked = std::time::Instant::now();
        let r = ask_token(app, a, "system/Task.rs").await;
        // Nor does the time of the answer tell: none comes sooner than the floor.
        assert!(asked.elapsed() >= std::time::Duration::from_millis(100), "{attack}");
        let status = r.status();
        let content_type = r.headers()["content-type"].clone();
        let body = r.bytes().await.unwrap();
        answers.push((attack, status, content_type, body));
    }
    let (_, status, content_type, body) = &answers[0];
    assert_eq!(*status, StatusCode::UNAUTHORIZED);
    let first: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(first["error"], "invalid_client");
    for (attack, s, ct, b) in &answers[1..] {
        assert_eq!(
            (s, ct, b),
            (status, content_type, body),
            "{attack} must read like an unknown client"
        );
    }

    // The trail keeps each reason, for the operator's auditor.
    let auditor = register_client(app.running(), "auditor", None, "system/AuditEvent.rs operator").await;
    let auditor = bearer_client(&auditor.token);
    let login_refused = "AuditEvent?outcome=4&subtype=http://dicom.nema.org/resources/ontology/DCM|110122";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let reasons = loop {
        let r = auditor.get(app.url(login_refused)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let found = json(r).await;
        let reasons: Vec<String> = found["entry"]
            .as_array()
            .map(|es| {
                es.iter()
                    .filter_map(|e| e["resource"]["outcomeDesc"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if reasons.len() >= attacks.len() || std::time::Instant::now() > deadline {
            break reasons;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    for expected in ["unknown client", "InvalidSignature", "revoked client", "jti replay"] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "the trail says {expected:?}: {reasons:#?}"
        );
    }
}

on_both_backends!(unauthenticated_requests_are_refused, no_token_no_data);
on_both_backends!(
    token_endpoint_refusals_are_uniform,
    an_attacker_cannot_tell_why_the_token_endpoint_refused
);
on_both_backends!(token_endpoint_refusals, the_token_endpoint_refuses_bad_assertions);
on_both_backends!(rs384_client_assertions, an_rs384_client_gets_a_token);
on_both_backends!(scopes_are_enforced, scopes_limit_what_a_client_does);
on_both_backends!(
    scopes_come_before_the_body,
    a_forbidden_entry_is_refused_before_it_is_read
);

/// The gateway keeps what checking a token found until the token expires
/// (it is sent with every request): an expired token is refused all the
/// same, though it was accepted a moment before.
async fn an_accepted_token_is_refused_once_expired(app: &TestApp) {
    let c = register_client(app.running(), "short-lived", None, "system/Patient.rs").await;
    let client = bearer_client(&c.token);
    for _ in 0..2 {
        assert_eq!(client.get(app.url("Patient")).send().await.unwrap().status(), 200);
    }
    // Its lifetime (1 s) and the 5 s the gateway allows other clocks.
    tokio::time::sleep(std::time::Duration::from_millis(7_000)).await;
    let r = client.get(app.url("Patient")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json(r).await["resourceType"], "OperationOutcome");
}

on_both_backends_with!(
    expired_tokens_are_refused,
    an_accepted_token_is_refused_once_expired,
    |c| c.token_lifetime_secs = 1
);
