//! Batch and transaction Bundles, conditional interactions.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestApp, bearer_client, json, register_client};
use reqwest::Method;
use serde_json::{Value, json};

/// The ServiceRequest of `prescription`: its subject, requester and reason
/// are the Bundle's other entries.
fn prescription_with_reason() -> Value {
    let mut sr = common::apa::prescription(
        "urn:uuid:11111111-1111-4111-8111-111111111111",
        "urn:uuid:22222222-2222-4222-8222-222222222222",
    );
    sr["reasonReference"] = json!([{"reference": "urn:uuid:33333333-3333-4333-8333-333333333333"}]);
    sr
}

/// A GP's prescription: Patient, Practitioner, Condition, ServiceRequest
/// and Observation linked by urn:uuid.
fn prescription(ins: &str) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
             "resource": {"resourceType": "Patient", "extension": [common::apa::qualified_identity()],
                "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": ins}],
                "name": [{"family": "Lefèvre", "given": ["Anne"]}], "birthDate": "1958-02-03"},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222",
             "resource": {"resourceType": "Practitioner",
                "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": "10001234565"}]},
             "request": {"method": "POST", "url": "Practitioner"}},
            {"fullUrl": "urn:uuid:33333333-3333-4333-8333-333333333333",
             "resource": {"resourceType": "Condition",
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11"}]},
                "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}},
             "request": {"method": "POST", "url": "Condition"}},
            {"fullUrl": "urn:uuid:44444444-4444-4444-8444-444444444444",
             "resource": prescription_with_reason(),
             "request": {"method": "POST", "url": "ServiceRequest"}},
            {"fullUrl": "urn:uuid:55555555-5555-4555-8555-555555555555",
             "resource": {"resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": "http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes", "code": "PhysicalActivity"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"},
                "effectiveDateTime": "2025-01-15T09:30:00+01:00",
                "valueQuantity": {"value": 81.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    })
}

async fn a_transaction_stores_all_and_links_them(app: &TestApp) {
    let r = app.post("", &prescription("258020312345641")).await;
    assert_eq!(r.status(), 200);
    let b = json(r).await;
    assert_eq!(b["type"], "transaction-response");
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 5, "one response entry per request entry, in order");
    for (e, t) in entries
        .iter()
        .zip(["Patient", "Practitioner", "Condition", "ServiceRequest", "Observation"])
    {
        assert_eq!(e["response"]["status"], "201 Created");
        assert!(
            e["response"]["location"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{t}/"))
        );
    }
    let loc = |i: usize| {
        entries[i]["response"]["location"]
            .as_str()
            .unwrap()
            .split("/_history")
            .next()
            .unwrap()
            .to_string()
    };
    let sr = json(app.get(&loc(3)).await).await;
    assert_eq!(sr["subject"]["reference"], loc(0), "urn:uuid rewritten to the new id");
    assert_eq!(sr["requester"]["reference"], loc(1));
    assert_eq!(sr["reasonReference"][0]["reference"], loc(2));
}

async fn a_failing_entry_stores_nothing(app: &TestApp) {
    let mut b = prescription("258020312345740");
    // The third entry names another type than its URL.
    b["entry"][2]["request"]["url"] = json!("Observation");
    let r = app.post("", &b).await;
    assert_eq!(r.status(), 400);
    let oo = json(r).await;
    assert!(
        oo["issue"][0]["expression"][0]
            .as_str()
            .unwrap()
            .starts_with("Bundle.entry[2]"),
        "{oo}"
    );
    // An If-Match failing inside the transaction also stores nothing.
    let id = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    let mut b = prescription("258020312345839");
    b["entry"].as_array_mut().unwrap().push(json!({
        "resource": {"resourceType": "Patient", "id": id, "active": false},
        "request": {"method": "PUT", "url": format!("Patient/{id}"), "ifMatch": "W/\"9\""}
    }));
    let r = app.post("", &b).await;
    assert_eq!(r.status(), 412);
    for t in ["Practitioner", "Condition", "ServiceRequest", "Observation"] {
        let s = json(app.get(&format!("{t}?_summary=count")).await).await;
        assert_eq!(s["total"], 0, "no {t} stored");
    }
    let h = json(app.get("_history").await).await;
    assert_eq!(
        h["entry"].as_array().map(Vec::len),
        Some(1),
        "only the Patient created outside the transaction"
    );
}

async fn a_batch_runs_each_entry_on_its_own(app: &TestApp) {
    let b = json!({
        "resourceType": "Bundle", "type": "batch",
        "entry": [
            {"resource": {"resourceType": "Patient", "active": true}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            {"resource": {"resourceType": "Patient", "id": "x"}, "request": {"method": "PUT", "url": "Observation/x"}},
            {"request": {"method": "GET", "url": "metadata-nope/1/2/3/4"}},
            {"resource": {"resourceType": "Patient", "gender": "sometimes"}, "request": {"method": "POST", "url": "Patient"}}
        ]
    });
    let r = json(app.post("", &b).await).await;
    assert_eq!(r["type"], "batch-response");
    let statuses: Vec<&str> = r["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "404 Not Found",
            "400 Bad Request",
            "400 Bad Request",
            "422 Unprocessable Entity"
        ]
    );
    assert_eq!(r["entry"][1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    // A refused write says where it stands in the Bundle, as in a
    // transaction: its request, its resource's element. (A GET entry's
    // outcome is the one of the same request alone.)
    let at = |i: usize| r["entry"][i]["response"]["outcome"]["issue"][0]["expression"][0].clone();
    assert!(at(2).as_str().unwrap().starts_with("Bundle.entry[2]"), "{r}");
    assert_eq!(at(4), "Bundle.entry[4].resource.gender", "{r}");
}

async fn transaction_order_put_delete_and_get(app: &TestApp) {
    let keep = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    let drop = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    let b = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"request": {"method": "GET", "url": format!("Patient/{keep}")}},
            {"resource": {"resourceType": "Patient", "id": keep, "active": false},
             "request": {"method": "PUT", "url": format!("Patient/{keep}")}},
            {"request": {"method": "DELETE", "url": format!("Patient/{drop}")}}
        ]
    });
    let r = json(app.post("", &b).await).await;
    let e = r["entry"].as_array().unwrap();
    // GET runs after the writes of the transaction.
    assert_eq!(e[0]["resource"]["active"], false);
    assert_eq!(e[1]["response"]["status"], "200 OK");
    assert_eq!(e[2]["response"]["status"], "204 No Content");
    assert_eq!(app.get(&format!("Patient/{drop}")).await.status(), 410);
}

async fn conditional_create_update_delete(app: &TestApp) {
    let p = json!({"resourceType": "Patient", "extension": [common::apa::qualified_identity()], "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "170010100000197"}]});
    let create = |q: &'static str| {
        app.req(Method::POST, "Patient")
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", q)
            .body(p.to_string())
            .send()
    };
    let q = "identifier=urn:oid:1.2.250.1.213.1.4.10|170010100000197";
    let first = create(q).await.unwrap();
    assert_eq!(first.status(), 201);
    let id = json(first).await["id"].as_str().unwrap().to_string();
    let again = create(q).await.unwrap();
    assert_eq!(again.status(), 200, "an existing match is returned, not duplicated");
    assert_eq!(json(again).await["id"], id.as_str());
    // A second Patient under the INS: refused, one INS is one patient.
    let r = app.post("Patient", &p).await;
    assert_eq!(r.status(), 409);
    assert_eq!(json(r).await["issue"][0]["code"], "duplicate");
    // Two matches of a criterion that is no national identifier: refused.
    let mut local = p.clone();
    local["identifier"] = json!([{"system": "https://cabinet.example/ipp", "value": "IPP-77"}]);
    app.create(&local).await;
    app.create(&local).await;
    let r = app
        .req(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "identifier=https://cabinet.example/ipp|IPP-77")
        .body(local.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);

    // Conditional update of a unique match, and creation when none.
    let q2 = "identifier=urn:oid:1.2.250.1.213.1.4.10|170010100000296";
    let mut p2 = p.clone();
    p2["identifier"][0]["value"] = json!("170010100000296");
    let r = app.put(&format!("Patient?{q2}"), &p2).await;
    assert_eq!(r.status(), 201);
    let id2 = json(r).await["id"].as_str().unwrap().to_string();
    p2["active"] = json!(true);
    let r = app.put(&format!("Patient?{q2}"), &p2).await;
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["id"], id2.as_str());
    // Conditional delete.
    assert_eq!(app.delete(&format!("Patient?{q2}")).await.status(), 204);
    assert_eq!(app.get(&format!("Patient/{id2}")).await.status(), 410);
    assert_eq!(
        app.delete("Patient?identifier=https://cabinet.example/ipp|IPP-77")
            .await
            .status(),
        412,
        "two matches are not deleted"
    );
}

async fn conditional_references_in_a_transaction(app: &TestApp) {
    let pid = app
        .create(&json!({"resourceType": "Patient", "extension": [common::apa::qualified_identity()], "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "170010100000395"}]}))
        .await;
    let b = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:66666666-6666-4666-8666-666666666666",
             "resource": {"resourceType": "Patient", "extension": [common::apa::qualified_identity()], "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "170010100000395"}]},
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:oid:1.2.250.1.213.1.4.10|170010100000395"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "poids"},
                "subject": {"reference": "urn:uuid:66666666-6666-4666-8666-666666666666"},
                "performer": [{"reference": "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|170010100000395"}]},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let r = app.post("", &b).await;
    assert_eq!(r.status(), 200);
    let r = json(r).await;
    assert_eq!(
        r["entry"][0]["response"]["status"], "200 OK",
        "the existing patient stands for the entry"
    );
    let obs = json(app.get(r["entry"][1]["response"]["location"].as_str().unwrap()).await).await;
    assert_eq!(obs["subject"]["reference"], format!("Patient/{pid}"));
    assert_eq!(obs["performer"][0]["reference"], format!("Patient/{pid}"));
}

/// The local identifier of a GP practice's patients.
const IPP: &str = "https://cabinet-dupont.example/ipp";

/// A conditional update whose criteria find one patient but whose body
/// names another must not overwrite the body's id: alone it gets 400
/// (R4 http.html#cond-update), and so does the same request in a Bundle.
async fn a_conditional_update_naming_another_patient_is_refused_in_a_bundle(app: &TestApp) {
    let r = app
        .put(
            "Organization/cabinet-dupont",
            &json!({"resourceType": "Organization", "id": "cabinet-dupont", "name": "Cabinet du Dr Dupont"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let gp = bearer_client(
        &register_client(app.running(), "gp-software", Some("cabinet-dupont"), "system/*.cruds")
            .await
            .token,
    );
    // The GP's software registered patient A under its local identifier.
    let a = json!({"resourceType": "Patient", "identifier": [{"system": IPP, "value": "IPP-A"}],
                   "name": [{"family": "Abalain", "given": ["Anne"]}]});
    let r = app.send_as(&gp, Method::POST, "Patient", &a).await;
    assert_eq!(r.status(), 201);
    let a_id = json(r).await["id"].as_str().unwrap().to_string();
    // It then sends A's record again by identifier, but with the id of
    // another patient, B, in the body.
    let criteria = format!("Patient?identifier={IPP}|IPP-A");
    let mut b = a.clone();
    b["id"] = json!("patient-b");
    b["name"][0]["family"] = json!("Bernard");
    let alone = app.send_as(&gp, Method::PUT, &criteria, &b).await;
    assert_eq!(alone.status(), 400, "the request alone");
    let alone = json(alone).await;
    assert_eq!(alone["issue"][0]["expression"][0], "Patient.id", "{alone}");

    let a_is_untouched = || async {
        let r = gp.get(app.url(&format!("Patient/{a_id}"))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let stored = json(r).await;
        assert_eq!(stored["meta"]["versionId"], "1", "A keeps its version: {stored}");
        assert_eq!(stored["name"][0]["family"], "Abalain");
        // The operator sees every organisation's data: B is nowhere.
        assert_eq!(app.get("Patient/patient-b").await.status(), 404, "B was not created");
    };

    // In a batch, the entry fails as the request alone does.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": b, "request": {"method": "PUT", "url": criteria}}
    ]});
    let r = app.send_as(&gp, Method::POST, "", &batch).await;
    assert_eq!(r.status(), 200);
    let r = json(r).await;
    let response = &r["entry"][0]["response"];
    assert_eq!(response["status"], "400 Bad Request", "{r}");
    let issue = &response["outcome"]["issue"][0];
    assert_eq!(issue["code"], alone["issue"][0]["code"]);
    assert_eq!(issue["expression"][0], "Bundle.entry[0].resource.id", "{r}");
    a_is_untouched().await;

    // In a transaction, it fails the whole Bundle: the patient registered
    // in the same transaction is not stored either.
    let c = json!({"resourceType": "Patient", "identifier": [{"system": IPP, "value": "IPP-C"}],
                   "name": [{"family": "Cadiou", "given": ["Claire"]}]});
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": c, "request": {"method": "POST", "url": "Patient"}},
        {"resource": b, "request": {"method": "PUT", "url": criteria}}
    ]});
    let r = app.send_as(&gp, Method::POST, "", &transaction).await;
    assert_eq!(r.status(), 400);
    let oo = json(r).await;
    assert_eq!(oo["issue"][0]["expression"][0], "Bundle.entry[1].resource.id", "{oo}");
    a_is_untouched().await;
    let found = json(app.get(&format!("Patient?identifier={IPP}|IPP-C&_summary=count")).await).await;
    assert_eq!(found["total"], 0, "nothing of the transaction is stored");
}

/// R4 (3.1.0.11.2): a transaction fails when two entries write the same
/// resource, conditional ones included once resolved. A conditional update
/// and a plain update of the same patient must not both apply, one over
/// the other, in an order the client cannot see.
async fn a_conditional_write_may_not_target_a_resource_another_entry_writes(app: &TestApp) {
    let a = json!({"resourceType": "Patient", "identifier": [{"system": IPP, "value": "IPP-D"}],
                   "name": [{"family": "Derrien", "given": ["Denise"]}]});
    let r = app.post("Patient", &a).await;
    assert_eq!(r.status(), 201);
    let id = json(r).await["id"].as_str().unwrap().to_string();
    let criteria = format!("Patient?identifier={IPP}|IPP-D");
    let renamed = |family: &str| {
        let mut p = a.clone();
        p["id"] = json!(id);
        p["name"][0]["family"] = json!(family);
        p
    };
    let is_untouched = || async {
        let stored = json(app.get(&format!("Patient/{id}")).await).await;
        assert_eq!(stored["meta"]["versionId"], "1", "{stored}");
        assert_eq!(stored["name"][0]["family"], "Derrien");
    };

    // A conditional update that finds the patient a plain update writes.
    let both_updates = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": renamed("Le Gall"), "request": {"method": "PUT", "url": format!("Patient/{id}")}},
        {"resource": renamed("Le Bihan"), "request": {"method": "PUT", "url": criteria}}
    ]});
    let r = app.post("", &both_updates).await;
    assert_eq!(r.status(), 400);
    let oo = json(r).await;
    assert_eq!(oo["issue"][0]["expression"][0], "Bundle.entry[1]", "{oo}");
    let said = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        said.contains(&format!("Patient/{id} is the target of more than one entry")),
        "{said}"
    );
    is_untouched().await;

    // A conditional delete of the patient a plain update writes.
    let update_and_delete = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": renamed("Le Gall"), "request": {"method": "PUT", "url": format!("Patient/{id}")}},
        {"request": {"method": "DELETE", "url": criteria}}
    ]});
    let r = app.post("", &update_and_delete).await;
    assert_eq!(r.status(), 400);
    assert_eq!(json(r).await["issue"][0]["expression"][0], "Bundle.entry[1]");
    is_untouched().await;

    // Each alone still works: the conditional update writes version 2.
    let one = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": renamed("Le Bihan"), "request": {"method": "PUT", "url": criteria}}
    ]});
    assert_eq!(app.post("", &one).await.status(), 200);
    let stored = json(app.get(&format!("Patient/{id}")).await).await;
    assert_eq!(stored["meta"]["versionId"], "2");
    assert_eq!(stored["name"][0]["family"], "Le Bihan");
}

on_both_backends!(transaction_stores_and_links, a_transaction_stores_all_and_links_them);
on_both_backends!(transaction_is_atomic, a_failing_entry_stores_nothing);
on_both_backends!(batch_entries_are_independent, a_batch_runs_each_entry_on_its_own);
on_both_backends!(transaction_processing_order, transaction_order_put_delete_and_get);
on_both_backends!(conditional_interactions, conditional_create_update_delete);
on_both_backends!(conditional_references, conditional_references_in_a_transaction);
on_both_backends!(
    conditional_update_id_mismatch_in_bundles,
    a_conditional_update_naming_another_patient_is_refused_in_a_bundle
);
on_both_backends!(
    conditional_write_of_another_entry_target,
    a_conditional_write_may_not_target_a_resource_another_entry_writes
);
