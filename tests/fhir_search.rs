//! Search as a CPTS coordination tool would use it.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{TestApp, json};
use reqwest::Method;
use serde_json::{Value, json};

const INS: &str = "urn:oid:1.2.250.1.213.1.4.10";

async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let b = json(app.get(query).await).await;
    assert_eq!(b["resourceType"], "Bundle", "{query}: {b}");
    b["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn seed(app: &TestApp) -> (String, String, String) {
    let pat = app
        .create(
            &json!({"resourceType": "Patient", "extension": [common::apa::qualified_identity()], 
            "identifier": [{"system": INS, "value": "258020300000115"}],
            "name": [{"family": "Lefèvre", "given": ["Hélène"]}],
            "birthDate": "1958-02-03", "gender": "female",
            "address": [{"city": "Saint-Étienne", "postalCode": "42000"}]}),
        )
        .await;
    let other = app
        .create(
            &json!({"resourceType": "Patient", "extension": [common::apa::qualified_identity()], 
            "identifier": [{"system": INS, "value": "170010100000989"}],
            "name": [{"family": "Lefort"}], "birthDate": "1970-01-01", "gender": "male"}),
        )
        .await;
    let gp = app
        .create(&json!({"resourceType": "Practitioner", "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": "10001234565"}], "name": [{"family": "Durand"}]}))
        .await;
    for (status, who) in [("active", &pat), ("on-hold", &pat), ("completed", &other)] {
        let mut sr = common::apa::prescription(&format!("Patient/{who}"), &format!("Practitioner/{gp}"));
        sr["status"] = json!(status);
        app.create(&sr).await;
    }
    for (day, kg) in [("2025-01-10", "81.5"), ("2025-02-10", "80"), ("2025-03-10", "78.25")] {
        let body = format!(
            r#"{{"resourceType":"Observation","status":"final","category":[{{"coding":[{{"system":"http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes","code":"PhysicalActivity"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"29463-7"}}]}},"subject":{{"reference":"Patient/{pat}"}},"effectiveDateTime":"{day}T09:00:00Z","valueQuantity":{{"value":{kg},"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}}}"#
        );
        let r = app
            .req(Method::POST, "Observation")
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    (pat, other, gp)
}

async fn parameters_of_every_type(app: &TestApp) {
    let (pat, other, gp) = seed(app).await;
    // token, with and without system
    assert_eq!(
        ids(app, &format!("Patient?identifier={INS}|258020300000115")).await,
        [pat.as_str()]
    );
    assert_eq!(ids(app, "Patient?identifier=258020300000115").await, [pat.as_str()]);
    assert_eq!(
        ids(app, "Patient?identifier=http://other|258020300000115").await.len(),
        0
    );
    // string: prefix, case- and accent-insensitive; :exact; :contains
    let mut both = ids(app, "Patient?family=lef").await;
    both.sort();
    let mut expected = vec![pat.clone(), other.clone()];
    expected.sort();
    assert_eq!(both, expected);
    assert_eq!(ids(app, "Patient?family=LEFEVRE").await, [pat.as_str()]);
    assert_eq!(ids(app, "Patient?family:exact=Lefèvre").await, [pat.as_str()]);
    assert_eq!(ids(app, "Patient?family:exact=lefèvre").await.len(), 0);
    assert_eq!(ids(app, "Patient?address-city:contains=etienne").await, [pat.as_str()]);
    // date with prefixes
    assert_eq!(ids(app, "Patient?birthdate=1958").await, [pat.as_str()]);
    assert_eq!(ids(app, "Patient?birthdate=lt1960-01-01").await, [pat.as_str()]);
    assert_eq!(ids(app, "Patient?birthdate=ge1960").await, [other.as_str()]);
    assert_eq!(
        ids(app, "Observation?date=ge2025-02-01&date=lt2025-03-01").await.len(),
        1
    );
    // reference, plain and typed, and token OR
    assert_eq!(
        ids(
            app,
            &format!("ServiceRequest?subject=Patient/{pat}&status=active,on-hold")
        )
        .await
        .len(),
        2
    );
    assert_eq!(
        ids(app, &format!("ServiceRequest?patient={pat}&status=active"))
            .await
            .len(),
        1
    );
    assert_eq!(
        ids(app, &format!("ServiceRequest?requester:Practitioner={gp}"))
            .await
            .len(),
        3
    );
    // quantity and number prefixes
    assert_eq!(
        ids(app, "Observation?value-quantity=gt79|http://unitsofmeasure.org|kg")
            .await
            .len(),
        2
    );
    assert_eq!(ids(app, "Observation?value-quantity=80||kg").await.len(), 1);
    // :missing and :not
    assert_eq!(ids(app, "Patient?address:missing=true").await, [other.as_str()]);
    assert_eq!(ids(app, "ServiceRequest?status:not=completed").await.len(), 2);
    // _id and _lastUpdated
    assert_eq!(ids(app, &format!("Patient?_id={pat}")).await, [pat.as_str()]);
    assert_eq!(ids(app, "Patient?_lastUpdated=gt2000-01-01").await.len(), 2);
    assert_eq!(ids(app, "Patient?_lastUpdated=lt2000-01-01").await.len(), 0);
}

async fn chains_reverse_chains_and_includes(app: &TestApp) {
    let (pat, _other, gp) = seed(app).await;
    assert_eq!(
        ids(
            app,
            &format!("ServiceRequest?subject:Patient.identifier={INS}|258020300000115")
        )
        .await
        .len(),
        2
    );
    assert_eq!(ids(app, "Observation?subject.family=lefevre").await.len(), 3);
    assert_eq!(
        ids(app, "Patient?_has:Observation:subject:code=29463-7").await,
        [pat.as_str()]
    );
    assert_eq!(
        ids(app, "Patient?_has:ServiceRequest:subject:status=completed")
            .await
            .len(),
        1
    );
    // _include pulls the referenced resources in, once each.
    let b = json(
        app.get(&format!(
            "ServiceRequest?subject=Patient/{pat}&_include=ServiceRequest:requester"
        ))
        .await,
    )
    .await;
    let modes: Vec<(&str, &str)> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["search"]["mode"].as_str().unwrap(),
                e["resource"]["resourceType"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(modes.iter().filter(|m| m.0 == "match").count(), 2);
    assert_eq!(
        modes.iter().filter(|m| m.0 == "include").collect::<Vec<_>>(),
        [&("include", "Practitioner")]
    );
    // _revinclude, and :iterate from there to the requester.
    let b = json(
        app.get(&format!(
            "Patient?_id={pat}&_revinclude=ServiceRequest:subject&_include:iterate=ServiceRequest:requester"
        ))
        .await,
    )
    .await;
    let types: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types.iter().filter(|t| **t == "ServiceRequest").count(), 2);
    assert!(types.contains(&"Practitioner"), "{types:?}");
    let _ = gp;
}

async fn paging_returns_each_match_exactly_once(app: &TestApp) {
    let entries: Vec<Value> = (0..250)
        .map(|i| json!({"resource": {"resourceType": "Patient", "active": true, "identifier": [{"system": "urn:test", "value": format!("p{i}")}]},
                         "request": {"method": "POST", "url": "Patient"}}))
        .collect();
    let r = app
        .post(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let mut seen = HashSet::new();
    let mut next = Some(app.url("Patient?active=true&_count=40&_total=accurate"));
    let mut pages = 0;
    while let Some(url) = next {
        let b = json(app.get(&url).await).await;
        assert_eq!(b["total"], 250);
        for e in b["entry"].as_array().unwrap() {
            assert!(
                seen.insert(e["resource"]["id"].as_str().unwrap().to_string()),
                "returned twice"
            );
        }
        next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        if pages > 0 {
            assert!(
                b["link"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l["relation"] == "previous")
            );
        }
        pages += 1;
    }
    assert_eq!(seen.len(), 250);
    assert_eq!(pages, 7);
    // Sorted paging too.
    let mut seen = HashSet::new();
    let mut next = Some(app.url("Patient?active=true&_count=100&_sort=-_lastUpdated"));
    while let Some(url) = next {
        let b = json(app.get(&url).await).await;
        for e in b["entry"].as_array().unwrap() {
            assert!(seen.insert(e["resource"]["id"].as_str().unwrap().to_string()));
        }
        next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 250);
}

async fn result_parameters(app: &TestApp) {
    let (pat, other, _) = seed(app).await;
    let count = json(app.get("Patient?_summary=count").await).await;
    assert_eq!(count["total"], 2);
    assert!(count.get("entry").is_none());
    let sorted = ids(app, "Patient?_sort=-birthdate").await;
    assert_eq!(sorted, [other.clone(), pat.clone()]);
    let sorted = ids(app, "Patient?_sort=family").await;
    assert_eq!(
        sorted,
        [pat.clone(), other.clone()],
        "Lefèvre sorts as lefevre, before lefort"
    );
    let b = json(app.get(&format!("Patient?_id={pat}&_elements=birthDate")).await).await;
    let r = &b["entry"][0]["resource"];
    assert_eq!(r["birthDate"], "1958-02-03");
    assert!(r.get("name").is_none());
    assert!(
        r["meta"]["tag"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["code"] == "SUBSETTED")
    );
    // Unknown parameters: refused by default; under handling=lenient
    // ignored, left out of the self link and named in an outcome entry.
    let lenient = app
        .client
        .get(app.url("Patient?foo=bar&gender=male"))
        .header("prefer", "handling=lenient")
        .send()
        .await
        .unwrap();
    assert_eq!(lenient.status(), 200);
    let b = json(lenient).await;
    let self_link = b["link"][0]["url"].as_str().unwrap();
    assert!(
        !self_link.contains("foo") && self_link.contains("gender=male"),
        "{self_link}"
    );
    assert_eq!(b["entry"][0]["search"]["mode"], "outcome");
    assert_eq!(b["entry"][0]["resource"]["issue"][0]["expression"][0], "foo");
    let strict = app.get("Patient?foo=bar").await;
    assert_eq!(strict.status(), 400);
    assert_eq!(json(strict).await["resourceType"], "OperationOutcome");
    // Bad values are a 400 with the parameter named.
    let bad = app.get("Patient?birthdate=not-a-date").await;
    assert_eq!(bad.status(), 400);
    // POST _search
    let r = app
        .req(Method::POST, "Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("gender=male")
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await["entry"].as_array().unwrap().len(), 1);
}

on_both_backends!(search_parameter_types, parameters_of_every_type);
on_both_backends!(search_chains_and_includes, chains_reverse_chains_and_includes);
on_both_backends!(search_paging, paging_returns_each_match_exactly_once);
on_both_backends!(search_result_parameters, result_parameters);
