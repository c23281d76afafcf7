//! Hostile request bodies never reach the store: JSON that repeats a key
//! (which a last-wins parser would silently resolve), Bundles whose
//! entries share a fullUrl, and narratives that would run or load
//! something in the reader's browser. Each is refused with the place of
//! the fault, and nothing of it is written.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestApp, json};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

async fn send(app: &TestApp, method: reqwest::Method, path: &str, content_type: &str, body: &str) -> Response {
    app.client
        .request(method, app.url(path))
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn post_fhir(app: &TestApp, path: &str, body: &str) -> Response {
    send(app, reqwest::Method::POST, path, "application/fhir+json", body).await
}

async fn count(app: &TestApp, rtype: &str) -> u64 {
    let b = json(app.get(&format!("{rtype}?_total=accurate")).await).await;
    b["total"].as_u64().unwrap()
}

/// The status, then the first issue's code, location and message.
async fn refusal(r: Response) -> (StatusCode, String, String, String) {
    let status = r.status();
    let body = json(r).await;
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    let i = &body["issue"][0];
    (
        status,
        i["code"].as_str().unwrap_or_default().to_string(),
        i["expression"][0].as_str().unwrap_or_default().to_string(),
        i["diagnostics"].as_str().unwrap_or_default().to_string(),
    )
}

async fn assert_repeated_key(r: Response, at: &str, key: &str) {
    let (status, code, expression, message) = refusal(r).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    assert_eq!(code, "structure");
    assert_eq!(expression, at);
    assert!(message.contains(&format!("'{key}' appears twice")), "{message}");
}

async fn a_body_repeating_a_key_is_refused_whatever_the_door(app: &TestApp) {
    // The GP practice's software sends a Patient whose gender is written twice.
    let r = post_fhir(
        app,
        "Patient",
        r#"{"resourceType":"Patient","gender":"male","birthDate":"1961-04-12","gender":"female"}"#,
    )
    .await;
    assert_repeated_key(r, "Patient.gender", "gender").await;

    // Deeper, and spelled with an escape the parser would have merged.
    let r = post_fhir(
        app,
        "Patient",
        r#"{"resourceType":"Patient","name":[{"given":["Jean"]},{"family":"Tanguy","\u0066amily":"Riou"}]}"#,
    )
    .await;
    assert_repeated_key(r, "Patient.name[1].family", "family").await;

    // In a transaction's entry.
    let bundle = r#"{"resourceType":"Bundle","type":"transaction","entry":[
        {"fullUrl":"urn:uuid:6b0a4b0e-7c39-4f4f-9d8e-6f1d1c2a0b01","resource":{"resourceType":"Patient","active":true},"request":{"method":"POST","url":"Patient"}},
        {"fullUrl":"urn:uuid:6b0a4b0e-7c39-4f4f-9d8e-6f1d1c2a0b02","resource":{"resourceType":"Patient","active":true,"active":false},"request":{"method":"POST","url":"Patient"}}]}"#;
    let r = post_fhir(app, "", bundle).await;
    assert_repeated_key(r, "Bundle.entry[1].resource.active", "active").await;
    assert_eq!(count(app, "Patient").await, 0);

    // In a JSON Patch: the MSS's two `op`s would leave either.
    let id = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    let r = send(
        app,
        reqwest::Method::PATCH,
        &format!("Patient/{id}"),
        "application/json-patch+json",
        r#"[{"op":"replace","path":"/active","value":false,"op":"remove"}]"#,
    )
    .await;
    assert_repeated_key(r, "$[0].op", "op").await;
    let stored = json(app.get(&format!("Patient/{id}")).await).await;
    assert_eq!(stored["meta"]["versionId"], "1");
    assert_eq!(stored["active"], true);

    // The flat API: software without FHIR sends its prescription.
    let flat = format!("{}/apa/v1/prescriptions", app.base.trim_end_matches("/fhir"));
    let r = app
        .client
        .post(flat)
        .header("content-type", "application/json")
        .body(r#"{"source_id":"ORD-1","patient":{"ins":"1 55 07 22 278 045 28","ins":"2 55 07 22 278 045 28"}}"#)
        .send()
        .await
        .unwrap();
    assert_repeated_key(r, "$.patient.ins", "ins").await;
    assert_eq!(count(app, "ServiceRequest").await, 0);
    assert_eq!(count(app, "Patient").await, 1);
}

fn two_entries_one_full_url(kind: &str) -> String {
    json!({
        "resourceType": "Bundle", "type": kind,
        "entry": [
            {"fullUrl": "urn:uuid:0c3f4b7e-2a43-4c55-9b1e-1d7c9a3e5f10",
             "resource": {"resourceType": "Patient", "active": true},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:0c3f4b7e-2a43-4c55-9b1e-1d7c9a3e5f11",
             "resource": {"resourceType": "Patient", "active": true},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:0c3f4b7e-2a43-4c55-9b1e-1d7c9a3e5f10",
             "resource": {"resourceType": "Patient", "active": false},
             "request": {"method": "POST", "url": "Patient"}}
        ]
    })
    .to_string()
}

async fn two_entries_sharing_a_full_url_are_refused_before_any_write(app: &TestApp) {
    for kind in ["transaction", "batch"] {
        let r = post_fhir(app, "", &two_entries_one_full_url(kind)).await;
        let (status, code, at, message) = refusal(r).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{kind}: {message}");
        assert_eq!(code, "invalid");
        assert_eq!(at, "Bundle.entry[2].fullUrl", "{kind}");
        assert!(message.contains("Bundle.entry[0]"), "{message}");
        // Not even the batch's first entry.
        assert_eq!(count(app, "Patient").await, 0, "{kind}");
    }
}

fn patient_with(div: &str) -> String {
    json!({
        "resourceType": "Patient",
        "text": {"status": "generated", "div": div},
        "active": true
    })
    .to_string()
}

fn xhtml(inner: &str) -> String {
    format!(r#"<div xmlns="http://www.w3.org/1999/xhtml">{inner}</div>"#)
}

async fn assert_narrative_refused(r: Response, at: &str, says: &str) {
    let (status, code, expression, message) = refusal(r).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{message}");
    assert_eq!(code, "invariant");
    assert_eq!(expression, at);
    assert!(message.contains(says), "{message}");
}

async fn narratives_that_run_or_load_something_are_refused(app: &TestApp) {
    for (div, says) in [
        (
            xhtml("<p>Jean-Yves Tanguy</p><script>fetch('https://evil.example')</script>"),
            "<script>",
        ),
        (xhtml(r#"<img src="x.png" onload="alert(document.cookie)"/>"#), "onload"),
        (xhtml(r#"<a href="javascript:alert(1)">dossier</a>"#), "javascript:"),
        (
            xhtml(r#"<iframe src="https://evil.example"></iframe><p>x</p>"#),
            "<iframe>",
        ),
        (xhtml(""), "txt-2"),
        (xhtml("<p>unclosed"), "well-formed"),
    ] {
        let r = post_fhir(app, "Patient", &patient_with(&div)).await;
        assert_narrative_refused(r, "Patient.text.div", says).await;
    }

    // A contained resource's narrative is read as well.
    let contained = json!({
        "resourceType": "Observation", "status": "final",
        "code": {"text": "poids"},
        "subject": {"reference": "#p"},
        "contained": [{"resourceType": "Patient", "id": "p",
                       "text": {"status": "generated", "div": xhtml("<script>x</script><p>y</p>")}}]
    });
    let r = post_fhir(app, "Observation", &contained.to_string()).await;
    assert_narrative_refused(r, "Observation.contained[0].text.div", "<script>").await;

    // And inside a transaction, at the entry.
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:9a7c1e52-31f4-4f8e-8d7e-2b4f3c6d8e01",
             "resource": {"resourceType": "Patient", "active": true},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:9a7c1e52-31f4-4f8e-8d7e-2b4f3c6d8e02",
             "resource": serde_json::from_str::<Value>(&patient_with(&xhtml(r#"<a href="javascript:void(0)">x</a>"#))).unwrap(),
             "request": {"method": "POST", "url": "Patient"}}
        ]
    });
    let r = post_fhir(app, "", &bundle.to_string()).await;
    assert_narrative_refused(r, "Bundle.entry[1].resource.text.div", "javascript:").await;
    assert_eq!(count(app, "Patient").await, 0);
    assert_eq!(count(app, "Observation").await, 0);
}

async fn a_rich_narrative_is_stored_as_sent(app: &TestApp) {
    let div = xhtml(concat!(
        r##"<h3>Bilan initial</h3><table class="bilan"><thead><tr><th scope="col">Test</th><th>Résultat</th></tr></thead>"##,
        r##"<tbody><tr><td>6 min marche</td><td style="text-align: right">420&#160;m</td></tr></tbody></table>"##,
        r##"<ul><li>Voir <a href="https://www.has-sante.fr/jcms/c_2876862">le guide HAS</a></li>"##,
        r##"<li><img src="#courbe" alt="courbe de poids"/> &amp; suivi</li></ul>"##
    ));
    let body = format!(
        r#"{{"resourceType":"Patient","text":{{"status":"generated","div":{}}},"active":true,"extension":[{{"url":"http://example.org/score","valueDecimal":1.50}}]}}"#,
        serde_json::to_string(&div).unwrap()
    );
    let r = post_fhir(app, "Patient", &body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = json(r).await["id"].as_str().unwrap().to_string();
    let read = app.get(&format!("Patient/{id}")).await.text().await.unwrap();
    assert!(read.contains(&serde_json::to_string(&div).unwrap()), "{read}");
    assert!(read.contains(r#""valueDecimal":1.50"#), "{read}");
}

on_both_backends!(repeated_keys, a_body_repeating_a_key_is_refused_whatever_the_door);
on_both_backends!(
    shared_full_urls,
    two_entries_sharing_a_full_url_are_refused_before_any_write
);
on_both_backends!(hostile_narratives, narratives_that_run_or_load_something_are_refused);
on_both_backends!(rich_narratives, a_rich_narrative_is_stored_as_sent);
