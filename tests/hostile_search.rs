//! Hostile and careless search input: a query string built to blow up the
//! SQL, parameters the gateway does not know, values no database can hold.
//! Every one of them gets a 4xx OperationOutcome naming the parameter, never
//! a 5xx, and no parameter is ever silently dropped so that the search
//! widens to the caller's whole compartment.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestApp, json};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A 400 OperationOutcome whose issue names `param`, with `code`.
async fn assert_refused(r: reqwest::Response, param: &str, code: &str, what: &str) {
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
    let body = json(r).await;
    assert_eq!(body["resourceType"], "OperationOutcome", "{what}");
    let issue = &body["issue"][0];
    assert_eq!(issue["code"], code, "{what}: {body}");
    assert_eq!(issue["expression"][0], param, "{what}: {body}");
    assert!(issue["diagnostics"].as_str().unwrap().contains(param), "{what}: {body}");
}

async fn lenient(app: &TestApp, path: &str) -> reqwest::Response {
    app.req(Method::GET, path)
        .header("prefer", "handling=lenient")
        .send()
        .await
        .unwrap()
}

/// The ids of the matches of a searchset.
fn matches(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn three_patients(app: &TestApp) {
    for (ins, family, gender) in [
        ("280017512345610", "Martin", "female"),
        ("180017512345759", "Durand", "male"),
        ("280017512345808", "Petit", "female"),
    ] {
        let mut p = common::apa::patient_with_ins(ins, family);
        p["gender"] = json!(gender);
        app.create(&p).await;
    }
}

async fn a_query_string_built_to_blow_up_the_sql_is_refused(app: &TestApp) {
    three_patients(app).await;
    // 932 repeated parameters once took SQLite past its expression depth.
    let repeated = vec!["_id=x"; 932].join("&");
    let r = app.get(&format!("Patient?{repeated}")).await;
    assert_refused(r, "_id", "too-costly", "932 repeated _id").await;
    // 1,000 OR values in one parameter.
    let codes: Vec<String> = (0..1000).map(|i| format!("http://loinc.org|{i}-1")).collect();
    let r = app.get(&format!("Observation?code={}", codes.join(","))).await;
    assert_refused(r, "code", "too-costly", "1,000 OR values").await;
    // The same through POST _search, whose body has no URL length limit.
    let body = vec!["name=martin"; 5000].join("&");
    let r = app
        .req(Method::POST, "Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_refused(r, "name", "too-costly", "POST _search with 5,000 parameters").await;
    // Many lists, each allowed, over the total.
    let list = codes[..99].join(",");
    let many = vec![format!("code={list}"); 6].join("&");
    let r = app.get(&format!("Observation?{many}")).await;
    assert_refused(r, "code", "too-costly", "6 lists of 99 values").await;
    let includes = vec!["_include=Observation:subject"; 20].join("&");
    let r = app.get(&format!("Observation?{includes}")).await;
    assert_refused(r, "_include", "too-costly", "20 _include").await;
    // Just under the limits, the search runs.
    let ids: Vec<String> = (0..100).map(|i| format!("id-{i}")).collect();
    let r = app.get(&format!("Patient?_id={}", ids.join(","))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .get(&format!("Patient?{}", vec!["gender=female"; 60].join("&")))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(matches(&json(r).await).len(), 2);
}

async fn unknown_parameters_are_refused_unless_the_client_asks_for_lenient(app: &TestApp) {
    three_patients(app).await;
    for unknown in ["foo", "_filter", "_text", "_content", "_contained", "_query"] {
        let path = format!("Patient?gender=female&{unknown}=x");
        let r = app.get(&path).await;
        assert_refused(r, unknown, "invalid", &format!("{path} with no Prefer")).await;
        let r = app
            .req(Method::GET, &path)
            .header("prefer", "handling=strict")
            .send()
            .await
            .unwrap();
        assert_refused(r, unknown, "invalid", &format!("{path} under handling=strict")).await;
        // Lenient: ignored, and the Bundle says so.
        let r = lenient(app, &path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let b = json(r).await;
        let outcome = &b["entry"][0];
        assert_eq!(outcome["search"]["mode"], "outcome", "{b}");
        assert_eq!(outcome["resource"]["resourceType"], "OperationOutcome");
        assert_eq!(outcome["resource"]["issue"][0]["severity"], "warning");
        assert_eq!(outcome["resource"]["issue"][0]["expression"][0], unknown);
        assert!(!b["link"][0]["url"].as_str().unwrap().contains(unknown));
        // Never wider: exactly the search without the unknown parameter.
        let without = json(app.get("Patient?gender=female").await).await;
        assert_eq!(matches(&b), matches(&without), "{path}");
        assert_eq!(b["total"], without["total"]);
    }
    // POST _search follows the same rule.
    let r = app
        .req(Method::POST, "Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("gender=male&_text=durand")
        .send()
        .await
        .unwrap();
    assert_refused(r, "_text", "invalid", "POST _search with _text").await;
    // `_format` is content negotiation, not a filter: always accepted.
    let r = app.get("Patient?gender=male&_format=json").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(matches(&json(r).await).len(), 1);
}

async fn a_batch_search_entry_follows_the_bundle_prefer_and_conditional_writes_are_always_strict(app: &TestApp) {
    three_patients(app).await;
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient?gender=male&_content=x"}}]});
    let r = app.post("", &batch).await;
    assert_eq!(r.status(), StatusCode::OK);
    let b = json(r).await;
    assert!(
        b["entry"][0]["response"]["status"].as_str().unwrap().starts_with("400"),
        "{b}"
    );
    let r = app
        .req(Method::POST, "")
        .header("content-type", "application/fhir+json")
        .header("prefer", "handling=lenient")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    let b = json(r).await;
    assert!(
        b["entry"][0]["response"]["status"].as_str().unwrap().starts_with("200"),
        "{b}"
    );
    let searchset = &b["entry"][0]["resource"];
    assert_eq!(searchset["entry"][0]["search"]["mode"], "outcome", "{b}");
    assert_eq!(matches(searchset).len(), 1);
    // A conditional create that ignored `foo` would match every patient
    // and create nothing: refused whatever the client prefers.
    let r = app
        .req(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("prefer", "handling=lenient")
        .header("if-none-exist", "foo=bar")
        .body(common::apa::patient_with_ins("180017512345957", "Leroy").to_string())
        .send()
        .await
        .unwrap();
    assert_refused(r, "foo", "invalid", "If-None-Exist: foo=bar").await;
    let r = app
        .req(Method::DELETE, "Patient?_filter=x")
        .header("prefer", "handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json(app.get("Patient?_summary=count").await).await["total"],
        3,
        "nothing was deleted"
    );
}

/// Inputs that once reached, or could reach, a 5xx: each must be a 200 or a
/// 4xx OperationOutcome.
async fn hostile_values_never_reach_a_server_error(app: &TestApp) {
    three_patients(app).await;
    let long = "a".repeat(20_000);
    let deep_uri = format!("http://example.org/{}", vec!["a"; 200].join("/"));
    let many_sort = vec!["_id"; 100].join(",");
    let many_elements: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
    let refused: Vec<(String, &str)> = vec![
        ("Patient?_count=-1".into(), "_count"),
        ("Patient?_count=1e9".into(), "_count"),
        ("Observation?value-quantity=1e400".into(), "value-quantity"),
        ("Observation?value-quantity=0e99999".into(), "value-quantity"),
        ("Observation?date=2024-13-45".into(), "date"),
        ("Observation?date=gt99999".into(), "date"),
        ("Patient?name=a%00b".into(), "name"),
        ("Patient?_offset=18446744073709551615&_sort=_id".into(), "_offset"),
        ("Patient?_sort=nope".into(), "_sort"),
        ("Task?_sort=status".into(), "_sort"),
        ("?_include=*".into(), "_include"),
        ("Patient?gender:contains=x".into(), "gender:contains"),
        ("Patient?birthdate:exact=2024".into(), "birthdate:exact"),
        ("Patient?name:missing=maybe".into(), "name:missing"),
        ("Patient?_id:not=x".into(), "_id:not"),
        (format!("ValueSet?url:above={deep_uri}"), "url:above"),
        (
            "Task?focus:ServiceRequest.subject:Patient.organization.partof.partof.partof.name=x".into(),
            "focus:ServiceRequest.subject:Patient.organization.partof.partof.partof.name",
        ),
        (
            "Patient?_has:Observation:subject:_has:Observation:subject:_has:Observation:subject:_has:Observation:subject:_has:Observation:subject:code=x".into(),
            "_has:Observation:subject:_has:Observation:subject:_has:Observation:subject:_has:Observation:subject:_has:Observation:subject:code",
        ),
        ("Patient?identifier=a|b|c".into(), "identifier"),
        ("Observation?subject=Patient/../x".into(), "subject"),
        ("Observation?code-value-quantity=x".into(), "code-value-quantity"),
    ];
    for (path, param) in &refused {
        let r = app.get(path).await;
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        let body = json(r).await;
        assert_eq!(body["resourceType"], "OperationOutcome", "{path}");
        assert_eq!(body["issue"][0]["expression"][0], *param, "{path}: {body}");
    }
    let accepted: Vec<String> = vec![
        "Patient?_count=99999999999999999999".into(),
        "Observation?value-quantity=0.00001e-2147483648".into(),
        "Observation?value-quantity=ap1e300".into(),
        "Patient?birthdate=ap0001".into(),
        "Patient?birthdate=ap9999-12-31T23:59:59.999999+14:00".into(),
        "Patient?birthdate=ne2024&_lastUpdated=ne2024".into(),
        "Patient?name=%F0%9F%98%80%E2%80%AE".into(),
        "Patient?name=%ZZ%E0%A4".into(),
        "Patient?name:contains=%25_%5C".into(),
        format!("Patient?name={long}"),
        format!("Patient?name:contains={long}"),
        "Patient?_id=%E0%A4".into(),
        "Patient?_id:missing=true".into(),
        "Patient?_page_after=-9223372036854775808".into(),
        format!("Patient?_sort={many_sort}"),
        "Patient?_sort=birthdate,-name,family,-given,address,-_lastUpdated,_id".into(),
        format!("Patient?_elements={}", many_elements.join(",")),
        "Patient?_summary=true&_elements=name&_total=accurate".into(),
        "Patient?_include=*&_revinclude=Observation:*".into(),
        "Patient?_include:iterate=*&_revinclude:iterate=Observation:*&_revinclude:iterate=Task:*".into(),
        "Observation?subject=urn:&subject=http://".into(),
        "Observation?value-quantity=5||".into(),
        "Patient?identifier=|&identifier=x|".into(),
        "?_type=Patient&_count=1".into(),
        "Patient?_has:Observation:subject:code=x&_has:Task:patient:status=requested".into(),
        format!("ValueSet?url:above=http://example.org/{}", vec!["a"; 60].join("/")),
    ];
    for path in &accepted {
        let r = app.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}: {}", r.text().await.unwrap());
    }
}

on_both_backends!(blow_up_the_sql, a_query_string_built_to_blow_up_the_sql_is_refused);
on_both_backends!(
    unknown_parameters,
    unknown_parameters_are_refused_unless_the_client_asks_for_lenient
);
on_both_backends!(
    batch_and_conditional,
    a_batch_search_entry_follows_the_bundle_prefer_and_conditional_writes_are_always_strict
);
on_both_backends!(hostile_values, hostile_values_never_reach_a_server_error);
