//! The FHIR REST interactions, as a client sees them, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestApp, json};
use reqwest::Method;
use serde_json::{Value, json};

fn patient(ins: &str, family: &str) -> Value {
    json!({
        "resourceType": "Patient", "extension": [common::apa::qualified_identity()],
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": ins}],
        "name": [{"family": family, "given": ["Hélène"]}],
        "gender": "female",
        "birthDate": "1961-05-12",
        "_birthDate": {"extension": [{"url": "http://example.org/precision", "valueCode": "day"}]}
    })
}

async fn a_created_resource_reads_back_byte_for_byte(app: &TestApp) {
    // Numbers keep their written precision and fraction digits survive.
    let sent = r##"{"resourceType":"Observation","contained":[{"resourceType":"Patient","id":"p1"}],"status":"final","category":[{"coding":[{"system":"http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes","code":"PhysicalActivity"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}]},"subject":{"reference":"#p1"},"valueQuantity":{"value":72,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"},"component":[{"code":{"text":"x"},"valueQuantity":{"value":1.50}}],"effectiveDateTime":"2024-03-05T10:00:00.250Z"}"##;
    let r = app
        .req(Method::POST, "Observation")
        .header("content-type", "application/fhir+json")
        .body(sent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.contains("/Observation/") && location.ends_with("/_history/1"),
        "{location}"
    );
    assert_eq!(r.headers()["etag"], "W/\"1\"");
    assert!(r.headers().contains_key("last-modified"));
    let created = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&created).unwrap();
    let id = v["id"].as_str().unwrap();
    assert!(created.contains(r#""value":72,"#) && created.contains(r#""value":1.50}"#));
    assert!(created.contains(r#""effectiveDateTime":"2024-03-05T10:00:00.250Z""#));

    let read = app.get(&format!("Observation/{id}")).await;
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["content-type"], "application/fhir+json; charset=utf-8");
    assert_eq!(read.headers()["cache-control"], "no-store", "health data is not cached");
    assert_eq!(read.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        read.text().await.unwrap(),
        created,
        "the stored resource is served as stored"
    );
}

async fn update_versions_and_if_match(app: &TestApp) {
    let id = app.create(&patient("161051234567845", "Martin")).await;
    let mut p = patient("161051234567845", "Martin-Durand");
    p["id"] = json!(id);
    // A stale If-Match is refused with 412 and changes nothing.
    let stale = app
        .req(Method::PUT, &format!("Patient/{id}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"7\"")
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 412);
    let oo = json(stale).await;
    assert_eq!(oo["resourceType"], "OperationOutcome");

    let ok = app
        .req(Method::PUT, &format!("Patient/{id}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["etag"], "W/\"2\"");

    let v1 = json(app.get(&format!("Patient/{id}/_history/1")).await).await;
    assert_eq!(v1["name"][0]["family"], "Martin");
    let v2 = json(app.get(&format!("Patient/{id}")).await).await;
    assert_eq!(v2["name"][0]["family"], "Martin-Durand");
    assert_eq!(v2["meta"]["versionId"], "2");
    assert_eq!(app.get(&format!("Patient/{id}/_history/3")).await.status(), 404);
}

async fn update_as_create_with_a_client_id(app: &TestApp) {
    let mut p = patient("275061234567804", "Bernard");
    p["id"] = json!("pat-bernard");
    let r = app.put("Patient/pat-bernard", &p).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().contains_key("location"));
    // The body id must be the URL id.
    let r = app.put("Patient/other-id", &p).await;
    assert_eq!(r.status(), 400);
    assert_eq!(json(r).await["issue"][0]["expression"][0], "Patient.id");
}

async fn delete_keeps_history_and_reads_gone(app: &TestApp) {
    let id = app.create(&patient("161051234567944", "Petit")).await;
    assert_eq!(app.delete(&format!("Patient/{id}")).await.status(), 204);
    assert_eq!(app.get(&format!("Patient/{id}")).await.status(), 410);
    // Deleting again changes nothing.
    assert_eq!(app.delete(&format!("Patient/{id}")).await.status(), 204);
    let h = json(app.get(&format!("Patient/{id}/_history")).await).await;
    assert_eq!(h["type"], "history");
    let entries = h["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    assert_eq!(entries[1]["request"]["method"], "POST");
    assert_eq!(entries[1]["resource"]["name"][0]["family"], "Petit");
    // The version before the deletion is still readable.
    assert_eq!(app.get(&format!("Patient/{id}/_history/1")).await.status(), 200);
    // The deleted resource is not found by search.
    let s = json(app.get(&format!("Patient?_id={id}")).await).await;
    assert_eq!(s["total"], 0);
    assert_eq!(app.delete("Patient/never-was").await.status(), 404);
}

async fn prefer_return(app: &TestApp) {
    let p = patient("161051234567053", "Moreau");
    let minimal = app
        .req(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(p.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(minimal.status(), 201);
    assert!(minimal.headers().contains_key("location"));
    assert!(minimal.text().await.unwrap().is_empty());
    // Another patient: one INS is one patient.
    let other = patient("161051234567152", "Moreau");
    let oo = app
        .req(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=OperationOutcome")
        .body(other.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(oo.status(), 201);
    assert_eq!(json(oo).await["resourceType"], "OperationOutcome");
}

async fn bad_input_gets_an_operation_outcome(app: &TestApp) {
    let send = |path: &str, ct: &str, body: &str| {
        app.req(Method::POST, path)
            .header("content-type", ct.to_string())
            .body(body.to_string())
            .send()
    };
    let cases = [
        ("Patient", "application/fhir+json", "{not json", 400),
        (
            "Patient",
            "application/fhir+json",
            r#"{"resourceType":"Observation","status":"final"}"#,
            400,
        ),
        (
            "Patient",
            "application/fhir+json",
            r#"{"resourceType":"Patient","id":"bad id!"}"#,
            400,
        ),
        (
            "Patient",
            "application/fhir+json",
            r#"{"resourceType":"NotAType"}"#,
            400,
        ),
        ("Patient", "application/fhir+json", r#"[1,2]"#, 400),
        ("Patient", "application/xml", "<Patient/>", 415),
        (
            "NotAType",
            "application/fhir+json",
            r#"{"resourceType":"Patient"}"#,
            404,
        ),
    ];
    for (path, ct, body, status) in cases {
        let r = send(path, ct, body).await.unwrap();
        assert_eq!(r.status(), status, "{path} {ct} {body}");
        let oo = json(r).await;
        assert_eq!(oo["resourceType"], "OperationOutcome", "{body}");
        assert!(oo["issue"][0]["diagnostics"].as_str().is_some());
    }
    let r = app.get("Patient/bad%20id").await;
    assert_eq!(r.status(), 400);
    let r = app
        .client
        .get(app.url("Patient/1"))
        .header("accept", "application/fhir+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    let r = app.get("Patient?_format=xml").await;
    assert_eq!(r.status(), 406);
    let r = app.req(Method::POST, "Patient/1").send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(json(r).await["resourceType"], "OperationOutcome");
    // Nothing was half-written.
    assert_eq!(json(app.get("Patient/_history").await).await.get("entry"), None);
}

async fn json_patch(app: &TestApp) {
    let id = app.create(&patient("161051234567152", "Roux")).await;
    let ops = json!([{"op": "replace", "path": "/name/0/family", "value": "Leroux"}]);
    let r = app
        .req(Method::PATCH, &format!("Patient/{id}"))
        .header("content-type", "application/json-patch+json")
        .body(ops.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = json(r).await;
    assert_eq!(v["name"][0]["family"], "Leroux");
    assert_eq!(v["meta"]["versionId"], "2");
    let bad = json!([{"op": "replace", "path": "/resourceType", "value": "Observation"}]);
    let r = app
        .req(Method::PATCH, &format!("Patient/{id}"))
        .header("content-type", "application/json-patch+json")
        .body(bad.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
}

async fn capability_statement_tells_the_truth(app: &TestApp) {
    let cs = json(app.get("metadata").await).await;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let patient = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    let params: Vec<&str> = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(params.contains(&"identifier") && params.contains(&"birthdate"));
    assert!(!params.contains(&"_text") && !params.contains(&"_content"));
}

async fn health(app: &TestApp) {
    // Health and metrics need no token; they hold no patient data.
    let root = app.base.trim_end_matches("/fhir");
    for path in ["health/live", "health/ready", "metrics"] {
        let r = app.anonymous.get(format!("{root}/{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

on_both_backends!(
    created_resource_reads_back_byte_for_byte,
    a_created_resource_reads_back_byte_for_byte
);
on_both_backends!(updates_version_and_honour_if_match, update_versions_and_if_match);
on_both_backends!(update_creates_with_client_id, update_as_create_with_a_client_id);
on_both_backends!(delete_keeps_history, delete_keeps_history_and_reads_gone);
on_both_backends!(prefer_header, prefer_return);
on_both_backends!(bad_input, bad_input_gets_an_operation_outcome);
on_both_backends!(patch_with_json_patch, json_patch);
on_both_backends!(capabilities, capability_statement_tells_the_truth);
on_both_backends!(health_and_metrics, health);
