//! The audit trail: every interaction, refusals included, leaves an
//! AuditEvent; the trail cannot be changed through the API and only a
//! scope naming AuditEvent reads it.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{TestApp, audit_trail, bearer_client, json, register_client, token_endpoint, wait_for_audit};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The operator's security officer: allowed to read the whole audit trail
/// (an organisation's auditor would see the events of its patients only).
async fn auditor(app: &TestApp) -> Client {
    bearer_client(
        &register_client(app.running(), "auditor", None, "system/AuditEvent.rs operator")
            .await
            .token,
    )
}

/// The AuditEvents matching `query` (`AuditEvent?{query}`).
async fn events(app: &TestApp, auditor: &Client, query: &str) -> Vec<Value> {
    let (status, events) = audit_trail(app, auditor, query).await;
    assert_eq!(status, 200, "search AuditEvent?{query}");
    events
}

fn subtype(e: &Value) -> &str {
    e["subtype"][0]["code"].as_str().unwrap_or_default()
}

fn client_id(e: &Value) -> &str {
    e["agent"][0]["who"]["identifier"]["value"].as_str().unwrap_or_default()
}

fn entities(e: &Value) -> Vec<&str> {
    e["entity"]
        .as_array()
        .map(|es| es.iter().filter_map(|x| x["what"]["reference"].as_str()).collect())
        .unwrap_or_default()
}

/// What every event holds, whatever it records (BALP shape, ANS limits).
fn check_shape(e: &Value) {
    assert_eq!(e["resourceType"], "AuditEvent");
    assert!(e["subtype"].as_array().is_none_or(|s| s.len() == 1), "{e}");
    assert!(e["period"]["start"].is_string(), "{e}");
    assert!(e["recorded"].is_string(), "{e}");
    let agents = e["agent"].as_array().unwrap();
    assert_eq!(agents.len(), 2, "{e}");
    assert!(agents.iter().all(|a| a["who"].is_object()), "{e}");
    assert_eq!(agents[0]["requestor"], true);
    assert_eq!(agents[1]["requestor"], false);
    assert_eq!(e["source"]["observer"]["type"], "Device");
}

async fn every_interaction_is_audited(app: &TestApp) {
    let auditor = auditor(app).await;
    let anonymous = &app.anonymous;

    // No token: 401, the client unknown.
    let r = anonymous.get(app.url("Patient?family=doe")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // A token that is no token, and one forged in the name of a client.
    assert_eq!(
        bearer_client("garbage")
            .get(app.url("Patient"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"iss": "x", "sub": "impostor", "aud": app.base, "exp": now() + 60, "scope": "system/*.cruds"}),
        &EncodingKey::from_secret(b"not the gateway's secret"),
    )
    .unwrap();
    assert_eq!(
        bearer_client(&forged)
            .get(app.url("Patient"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let refused = wait_for_audit(app, &auditor, "outcome=4&subtype=search-type", 3).await;
    for e in &refused {
        check_shape(e);
        assert!(e["outcomeDesc"].as_str().unwrap().starts_with("HTTP 401"), "{e}");
        assert_eq!(e["agent"][0]["network"]["address"], "127.0.0.1");
    }
    let unknown: Vec<&Value> = refused.iter().filter(|e| client_id(e).is_empty()).collect();
    assert_eq!(unknown.len(), 2, "no token and an unreadable one: {refused:#?}");
    assert!(
        unknown
            .iter()
            .all(|e| e["agent"][0]["who"]["display"] == "unidentified client")
    );
    // The query is recorded (base64, as BALP does), in the protected trail.
    let no_token = refused
        .iter()
        .find(|e| {
            e["entity"].as_array().is_some_and(|es| {
                es.iter().any(|x| {
                    x["query"]
                        .as_str()
                        .is_some_and(|q| base64::engine::general_purpose::STANDARD.decode(q).unwrap() == b"family=doe")
                })
            })
        })
        .expect("the query of the refused search");
    assert!(client_id(no_token).is_empty());
    let claimed = events(app, &auditor, "outcome=4&agent:identifier=impostor").await;
    assert_eq!(claimed.len(), 1);
    assert!(
        claimed[0]["agent"][0]["who"]["display"]
            .as_str()
            .unwrap()
            .contains("not verified")
    );

    // A refused token request.
    let r = Client::new()
        .post(token_endpoint(&app.base))
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", "not.a.jwt"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let logins = wait_for_audit(
        app,
        &auditor,
        "outcome=4&subtype=http://dicom.nema.org/resources/ontology/DCM|110122",
        1,
    )
    .await;
    check_shape(&logins[0]);
    assert_eq!(logins[0]["type"]["code"], "110114");

    // A write is recorded in its own transaction: visible at once.
    let pid = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    let created = events(app, &auditor, &format!("entity=Patient/{pid}&subtype=create")).await;
    assert_eq!(created.len(), 1, "the create's event is committed with it");
    let c = &created[0];
    check_shape(c);
    assert_eq!(c["action"], "C");
    assert_eq!(c["outcome"], "0");
    assert_eq!(client_id(c), "operator");
    assert_eq!(
        entities(c),
        [format!("Patient/{pid}/_history/1"), format!("Patient/{pid}")]
    );
    assert_eq!(c["entity"][1]["role"]["code"], "1", "the patient entity");

    // Update, then read (recorded off the response's path), search, delete.
    let r = app
        .put(
            &format!("Patient/{pid}"),
            &json!({"resourceType": "Patient", "id": pid, "active": false}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let updated = events(app, &auditor, &format!("entity=Patient/{pid}&action=U")).await;
    assert_eq!(updated.len(), 1);
    assert_eq!(subtype(&updated[0]), "update");
    assert_eq!(entities(&updated[0])[0], format!("Patient/{pid}/_history/2"));

    let oid = app
        .create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "steps"}, "subject": {"reference": format!("Patient/{pid}")}}))
        .await;
    assert_eq!(app.get(&format!("Observation/{oid}")).await.status(), 200);
    let read = wait_for_audit(app, &auditor, &format!("entity=Observation/{oid}&subtype=read"), 1).await;
    assert_eq!(read[0]["action"], "R");
    // The patient the read Observation concerns.
    assert_eq!(
        entities(&read[0]),
        [format!("Observation/{oid}/_history/1"), format!("Patient/{pid}")]
    );
    assert_eq!(app.get(&format!("Observation?patient={pid}")).await.status(), 200);
    let searched = wait_for_audit(app, &auditor, &format!("patient={pid}&subtype=search-type"), 1).await;
    assert_eq!(searched[0]["action"], "E");
    assert_eq!(searched[0]["entity"][0]["role"]["code"], "24", "the query entity");
    // The same search by POST: its form body is the query the event
    // records, and it names the patient as well.
    let r = app
        .req(Method::POST, "Observation/_search?_count=5")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("patient={pid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // (The auditor's own searches name the patient too: look for this one.)
    let posted = format!("_count=5&patient={pid}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queries: Vec<String> = events(app, &auditor, &format!("patient={pid}&subtype=search-type"))
            .await
            .iter()
            .filter_map(|e| e["entity"][0]["query"].as_str().map(str::to_string))
            .map(|q| {
                use base64::Engine;
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(q).unwrap()).unwrap()
            })
            .collect();
        if queries.contains(&posted) {
            break;
        }
        assert!(Instant::now() < deadline, "no event records {posted}: {queries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(app.delete(&format!("Observation/{oid}")).await.status(), 204);
    let deleted = events(app, &auditor, &format!("entity=Observation/{oid}&action=D")).await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(entities(&deleted[0])[0], format!("Observation/{oid}/_history/2"));

    // Not found, and an invalid body: refused, recorded, nothing written.
    assert_eq!(app.get("Patient/nobody-here").await.status(), 404);
    let missing = wait_for_audit(app, &auditor, "entity=Patient/nobody-here", 1).await;
    assert_eq!(missing[0]["outcome"], "4");
    assert!(missing[0]["outcomeDesc"].as_str().unwrap().starts_with("HTTP 404"));
    let r = app
        .req(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .body("{\"resourceType\": \"Patient\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let invalid = wait_for_audit(app, &auditor, "subtype=create&outcome=4", 1).await;
    assert_eq!(client_id(&invalid[0]), "operator");
    assert!(invalid[0]["outcomeDesc"].as_str().unwrap().starts_with("HTTP 400"));

    // Missing scope: 403, the client known.
    let reader = register_client(app.running(), "reader", Some("org-gp"), "system/Patient.rs").await;
    let r = bearer_client(&reader.token)
        .get(app.url("Observation"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let forbidden = wait_for_audit(app, &auditor, "agent:identifier=reader&outcome=4", 1).await;
    assert!(forbidden[0]["outcomeDesc"].as_str().unwrap().starts_with("HTTP 403"));
    assert!(
        forbidden[0]["agent"][0]["who"]["display"]
            .as_str()
            .unwrap()
            .contains("org-gp")
    );

    // A transaction: one event, in its transaction, naming every entry.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "active": true}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:p"}}, "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = app.post("", &tx).await;
    assert_eq!(r.status(), 200);
    let b = json(r).await;
    let new_patient = b["entry"][0]["response"]["location"]
        .as_str()
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap()
        .to_string();
    let txs = events(app, &auditor, "subtype=transaction").await;
    assert_eq!(txs.len(), 1);
    let what = entities(&txs[0]);
    assert_eq!(what.len(), 3, "two entries and their patient: {what:?}");
    assert!(what.contains(&format!("Patient/{new_patient}").as_str()));

    // A transaction refused for one entry: its event says which, not what.
    let refused = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "active": true}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": "sometimes"}, "request": {"method": "POST", "url": "Patient"}}
    ]});
    assert_eq!(app.post("", &refused).await.status(), 422);
    let failed = wait_for_audit(app, &auditor, "subtype=transaction&outcome=4", 1).await;
    assert_eq!(failed[0]["outcomeDesc"], "HTTP 422 (code-invalid) at Bundle.entry[1]");

    // A batch: each write entry in its own transaction, and the batch itself.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": format!("Patient/{pid}")}}
    ]});
    assert_eq!(app.post("", &batch).await.status(), 200);
    wait_for_audit(app, &auditor, "subtype=batch", 1).await;
    assert_eq!(
        events(app, &auditor, "subtype=create&outcome=0").await.len(),
        3,
        "the Patient, the Observation and the batch entry (the transaction is one event)"
    );
}

/// A client acting for organisation `org`, with every scope but the trail's.
async fn org_client(app: &TestApp, id: &str, org: &str) -> Client {
    bearer_client(
        &register_client(app.running(), id, Some(org), "system/*.cruds")
            .await
            .token,
    )
}

/// Creates `resource` as `client`; its id.
async fn create_as(app: &TestApp, client: &Client, resource: &Value) -> String {
    let r = app
        .send_as(
            client,
            Method::POST,
            resource["resourceType"].as_str().unwrap(),
            resource,
        )
        .await;
    assert_eq!(r.status(), 201);
    json(r).await["id"].as_str().unwrap().to_string()
}

fn decoded_query(e: &Value) -> Option<String> {
    e["entity"].as_array()?.iter().find_map(|x| {
        let q = base64::engine::general_purpose::STANDARD
            .decode(x["query"].as_str()?)
            .ok()?;
        String::from_utf8(q).ok()
    })
}

/// An event without what differs between two records of the same request:
/// its id and when it happened.
fn timeless(e: &Value) -> Value {
    let mut e = e.clone();
    if let Some(o) = e.as_object_mut() {
        for k in ["id", "meta", "recorded", "period"] {
            o.remove(k);
        }
    }
    e
}

/// A patient read through a batch is in their trail: each GET entry leaves
/// the event the same request sent alone leaves, failures included, and a
/// patient of another organisation is not named by A's refused read.
async fn each_get_entry_of_a_bundle_is_audited(app: &TestApp) {
    let auditor = auditor(app).await;
    let a = org_client(app, "mss-a-app", "org-a").await;
    let b = org_client(app, "mss-b-app", "org-b").await;
    let pa = create_as(app, &a, &json!({"resourceType": "Patient", "active": true})).await;
    create_as(
        app,
        &a,
        &json!({"resourceType": "Observation", "status": "final", "code": {"text": "steps"},
                "subject": {"reference": format!("Patient/{pa}")}}),
    )
    .await;
    // Registered by the other organisation: not in A's compartment.
    let pb = create_as(app, &b, &json!({"resourceType": "Patient", "active": true})).await;
    let of_a = "agent:identifier=mss-a-app";

    let urls = [
        format!("Patient/{pa}"),
        format!("Observation?patient={pa}"),
        "Patient/nobody-here".to_string(),
        format!("Patient/{pb}"),
    ];
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": urls
        .iter()
        .map(|u| json!({"request": {"method": "GET", "url": u}}))
        .collect::<Vec<_>>()});
    let r = app.send_as(&a, Method::POST, "", &batch).await;
    assert_eq!(r.status(), 200);
    let statuses: Vec<String> = json(r).await["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["200 OK", "200 OK", "404 Not Found", "404 Not Found"]);

    // The batch and its four GET entries (A's token request and creates
    // aside).
    let reads_of_a = format!("{of_a}&subtype=batch,read,search-type");
    let batch_events = wait_for_audit(app, &auditor, &reads_of_a, 5).await;
    assert_eq!(batch_events.len(), 5, "{batch_events:#?}");
    let the_batch: Vec<&Value> = batch_events.iter().filter(|e| subtype(e) == "batch").collect();
    assert_eq!(the_batch.len(), 1);
    for e in &batch_events {
        check_shape(e);
        assert_eq!(client_id(e), "mss-a-app");
        assert_eq!(e["agent"][0]["network"]["address"], "127.0.0.1");
        // The Bundle's start.
        assert_eq!(e["period"], the_batch[0]["period"], "{e}");
    }
    let find = |pred: &dyn Fn(&Value) -> bool| -> Value {
        let found: Vec<&Value> = batch_events.iter().filter(|e| pred(e)).collect();
        assert_eq!(found.len(), 1, "{batch_events:#?}");
        found[0].clone()
    };

    // The read of A's patient: the version read, the patient concerned.
    let read = find(&|e| subtype(e) == "read" && e["outcome"] == "0");
    assert_eq!(read["action"], "R");
    assert_eq!(
        entities(&read),
        [format!("Patient/{pa}/_history/1"), format!("Patient/{pa}")]
    );
    assert_eq!(read["entity"][1]["role"]["code"], "1", "the patient entity");
    let trail = events(app, &auditor, &format!("patient={pa}&subtype=read&{of_a}")).await;
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0]["id"], read["id"], "in the patient's trail");
    assert_eq!(
        events(app, &auditor, &format!("entity=Patient/{pa}&subtype=read&{of_a}"))
            .await
            .len(),
        1
    );

    // The search: its query, and the patient it names.
    let search = find(&|e| subtype(e) == "search-type");
    assert_eq!(search["action"], "E");
    assert_eq!(search["outcome"], "0");
    assert_eq!(
        decoded_query(&search).as_deref(),
        Some(format!("patient={pa}").as_str())
    );
    assert_eq!(entities(&search), [format!("Patient/{pa}")]);
    let trail = events(app, &auditor, &format!("patient={pa}&subtype=search-type&{of_a}")).await;
    assert_eq!(trail.len(), 1);
    assert_eq!(trail[0]["id"], search["id"]);

    // The missing resource: a failed read, of the patient asked for.
    let missing = find(&|e| entities(e).first() == Some(&"Patient/nobody-here"));
    assert_eq!(subtype(&missing), "read");
    assert_eq!(missing["outcome"], "4");
    assert_eq!(missing["outcomeDesc"], "HTTP 404 (not-found)");
    assert_eq!(events(app, &auditor, "entity=Patient/nobody-here").await.len(), 1);
    assert_eq!(events(app, &auditor, "patient=nobody-here").await.len(), 1);

    // The other organisation's patient: a failed read that names what was
    // asked, and the patient, in her trail (which A, not granted her, is
    // never shown: tests/audit_patients.rs).
    let hidden = find(&|e| entities(e).first() == Some(&format!("Patient/{pb}").as_str()));
    assert_eq!(subtype(&hidden), "read");
    assert_eq!(hidden["outcome"], "4");
    assert_eq!(hidden["outcomeDesc"], "HTTP 404 (not-found)");
    assert_eq!(hidden["entity"][1]["role"]["code"], "1", "{hidden}");
    assert_eq!(events(app, &auditor, &format!("patient={pb}&{of_a}")).await.len(), 1);

    // The same requests sent on their own are recorded alike.
    for u in &urls {
        a.get(app.url(u)).send().await.unwrap();
    }
    let with_alone = wait_for_audit(app, &auditor, &reads_of_a, 9).await;
    assert_eq!(with_alone.len(), 9);
    let batch_ids: Vec<&Value> = batch_events.iter().map(|e| &e["id"]).collect();
    let alone: Vec<Value> = with_alone
        .iter()
        .filter(|e| !batch_ids.contains(&&e["id"]))
        .map(timeless)
        .collect();
    assert_eq!(alone.len(), 4);
    for entry in [&read, &search, &missing, &hidden] {
        let entry = timeless(entry);
        assert!(alone.contains(&entry), "{entry:#} not among {alone:#?}");
    }

    // A transaction's GET entries too, beside its own event committed with
    // its write.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": format!("Patient/{pa}")}},
         "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": format!("Patient/{pa}")}}
    ]});
    let r = app.send_as(&a, Method::POST, "", &tx).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        events(app, &auditor, &format!("subtype=transaction&{of_a}"))
            .await
            .len(),
        1
    );
    let reads = wait_for_audit(app, &auditor, &format!("patient={pa}&subtype=read&{of_a}"), 3).await;
    assert_eq!(reads.len(), 3, "the batch's, alone, the transaction's");
}

/// A batch write that failed, or changed nothing, leaves the event the same
/// request sent alone leaves (which resource, why it failed); one that
/// stored its change leaves the event committed with it, and no other.
async fn each_write_entry_of_a_batch_is_audited(app: &TestApp) {
    let auditor = auditor(app).await;
    let a = org_client(app, "batch-writer", "org-a").await;
    let known = json!({"resourceType": "Patient", "active": true,
                       "identifier": [{"system": "urn:test:local", "value": "known"}]});
    let pid = create_as(app, &a, &known).await;
    let of_a = "agent:identifier=batch-writer&subtype=batch,create,update,delete";

    // What each refused or idle entry asks, as a request of its own too.
    let invalid = json!({"resourceType": "Patient", "gender": "robot"});
    let stale = json!({"resourceType": "Patient", "id": pid, "active": false});
    let trail = json!({"resourceType": "AuditEvent", "id": "forged"});
    let nobody = "Patient?identifier=urn:test:local|nobody";
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "active": true}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": invalid, "request": {"method": "POST", "url": "Patient"}},
        {"resource": stale, "request": {"method": "PUT", "url": format!("Patient/{pid}"), "ifMatch": "W/\"9\""}},
        {"resource": trail, "request": {"method": "PUT", "url": "AuditEvent/forged"}},
        {"request": {"method": "DELETE", "url": nobody}},
        {"resource": known, "request": {"method": "POST", "url": "Patient",
                                        "ifNoneExist": "identifier=urn:test:local|known"}}
    ]});
    let r = app.send_as(&a, Method::POST, "", &batch).await;
    assert_eq!(r.status(), 200);
    let responses: Vec<Value> = json(r).await["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"].clone())
        .collect();
    let statuses: Vec<&str> = responses.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "422 Unprocessable Entity",
            "412 Precondition Failed",
            "405 Method Not Allowed",
            "204 No Content",
            "200 OK"
        ]
    );
    let created = responses[0]["location"].as_str().unwrap().to_string();
    assert_eq!(
        responses[5]["location"].as_str().unwrap(),
        format!("Patient/{pid}/_history/1"),
        "the conditional create found the known patient"
    );

    // The first create, the batch and its six entries.
    let found = wait_for_audit(app, &auditor, of_a, 8).await;
    assert_eq!(found.len(), 8, "{found:#?}");
    let the_batch: Vec<&Value> = found.iter().filter(|e| subtype(e) == "batch").collect();
    assert_eq!(the_batch.len(), 1);
    let entries: Vec<&Value> = found
        .iter()
        .filter(|e| e["period"] == the_batch[0]["period"] && subtype(e) != "batch")
        .collect();
    assert_eq!(entries.len(), 6, "each entry, with the batch's start: {found:#?}");
    for e in &entries {
        check_shape(e);
        assert_eq!(client_id(e), "batch-writer");
    }
    let find = |pred: &dyn Fn(&Value) -> bool| -> Value {
        let hits: Vec<&&Value> = entries.iter().filter(|e| pred(e)).collect();
        assert_eq!(hits.len(), 1, "{entries:#?}");
        (*hits[0]).clone()
    };

    // The create that stored its Patient: committed with it, once.
    let stored = find(&|e| entities(e).first() == Some(&created.as_str()));
    assert_eq!((subtype(&stored), stored["outcome"].as_str()), ("create", Some("0")));

    // The invalid create: failed, and why.
    let refused_create = find(&|e| subtype(e) == "create" && e["outcome"] == "4");
    assert_eq!(refused_create["action"], "C");
    let why = refused_create["outcomeDesc"].as_str().unwrap();
    assert!(why.starts_with("HTTP 422 ("), "{why}");
    assert!(entities(&refused_create).is_empty(), "nothing was stored");

    // The stale update and the update of the trail: failed, naming what
    // they meant to change, and the patient it concerned.
    let stale_update = find(&|e| entities(e) == [format!("Patient/{pid}"), format!("Patient/{pid}")]);
    assert_eq!(stale_update["entity"][1]["role"]["code"], "1", "the patient");
    assert_eq!(
        (subtype(&stale_update), stale_update["action"].as_str()),
        ("update", Some("U"))
    );
    assert_eq!(stale_update["outcome"], "4");
    assert!(stale_update["outcomeDesc"].as_str().unwrap().starts_with("HTTP 412 ("));
    let forged = find(&|e| entities(e) == ["AuditEvent/forged"]);
    assert_eq!(subtype(&forged), "update");
    assert!(forged["outcomeDesc"].as_str().unwrap().starts_with("HTTP 405 ("));

    // The conditional delete that matched nothing: done, nothing deleted.
    let idle_delete = find(&|e| subtype(e) == "delete");
    assert_eq!(
        (idle_delete["action"].as_str(), idle_delete["outcome"].as_str()),
        (Some("D"), Some("0"))
    );

    // The conditional create that matched: recorded apart (nothing was
    // stored), naming the patient it found.
    let matched = find(&|e| entities(e).first() == Some(&format!("Patient/{pid}/_history/1").as_str()));
    assert_eq!((subtype(&matched), matched["outcome"].as_str()), ("create", Some("0")));
    assert_eq!(
        entities(&matched),
        [format!("Patient/{pid}/_history/1"), format!("Patient/{pid}")]
    );

    // The same requests sent alone are recorded alike.
    let send = |method: Method, path: &str, body: Option<&Value>| {
        let mut req = a
            .request(method, app.url(path))
            .header("content-type", "application/fhir+json");
        if let Some(b) = body {
            req = req.body(b.to_string());
        }
        req
    };
    let alone = [
        (send(Method::POST, "Patient", Some(&batch["entry"][1]["resource"])), 422),
        (
            send(
                Method::PUT,
                &format!("Patient/{pid}"),
                Some(&batch["entry"][2]["resource"]),
            )
            .header("if-match", "W/\"9\""),
            412,
        ),
        (
            send(Method::PUT, "AuditEvent/forged", Some(&batch["entry"][3]["resource"])),
            405,
        ),
        (send(Method::DELETE, nobody, None), 204),
        (
            send(Method::POST, "Patient", Some(&batch["entry"][5]["resource"]))
                .header("if-none-exist", "identifier=urn:test:local|known"),
            200,
        ),
    ];
    for (req, status) in alone {
        assert_eq!(req.send().await.unwrap().status(), status);
    }
    let with_alone = wait_for_audit(app, &auditor, of_a, 13).await;
    assert_eq!(with_alone.len(), 13, "{with_alone:#?}");
    let seen: Vec<&Value> = found.iter().map(|e| &e["id"]).collect();
    let alone: Vec<Value> = with_alone
        .iter()
        .filter(|e| !seen.contains(&&e["id"]))
        .map(timeless)
        .collect();
    for entry in [&refused_create, &stale_update, &forged, &idle_delete, &matched] {
        let entry = timeless(entry);
        assert!(alone.contains(&entry), "{entry:#} not among {alone:#?}");
    }
}

/// HEAD is served by the GET routes: recorded as the read it is.
async fn a_head_request_is_audited_as_its_get(app: &TestApp) {
    let auditor = auditor(app).await;
    let a = org_client(app, "header", "org-a").await;
    let pid = create_as(app, &a, &json!({"resourceType": "Patient", "active": true})).await;
    for method in [Method::HEAD, Method::GET] {
        let r = a
            .request(method, app.url(&format!("Patient/{pid}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let reads = wait_for_audit(app, &auditor, "agent:identifier=header&subtype=read", 2).await;
    assert_eq!(reads.len(), 2, "{reads:#?}");
    assert_eq!(timeless(&reads[0]), timeless(&reads[1]));
    assert_eq!(
        entities(&reads[0]),
        [format!("Patient/{pid}/_history/1"), format!("Patient/{pid}")]
    );
}

async fn the_trail_is_read_only_and_needs_its_own_scope(app: &TestApp) {
    let auditor = auditor(app).await;
    let pid = app.create(&json!({"resourceType": "Patient"})).await;
    let event = &events(app, &auditor, &format!("entity=Patient/{pid}")).await[0];
    let eid = event["id"].as_str().unwrap().to_string();

    // Nobody changes it, not even a client registered with AuditEvent.cruds.
    let writer = register_client(app.running(), "audit-writer", None, "system/AuditEvent.cruds").await;
    let w = bearer_client(&writer.token);
    let send = |client: &Client, method: Method, path: &str, body: Option<Value>| {
        let mut r = client
            .request(method, app.url(path))
            .header("content-type", "application/fhir+json");
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        r.send()
    };
    let fake = json!({"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded": "2026-01-01T00:00:00Z", "agent": [{"requestor": true}], "source": {"observer": {"display": "x"}}});
    let mut replaced = fake.clone();
    replaced["id"] = json!(eid);
    for client in [&app.client, &w] {
        let attempts = [
            send(client, Method::POST, "AuditEvent", Some(fake.clone()))
                .await
                .unwrap(),
            send(
                client,
                Method::PUT,
                &format!("AuditEvent/{eid}"),
                Some(replaced.clone()),
            )
            .await
            .unwrap(),
            client
                .patch(app.url(&format!("AuditEvent/{eid}")))
                .header("content-type", "application/json-patch+json")
                .body(json!([{"op": "replace", "path": "/outcome", "value": "0"}]).to_string())
                .send()
                .await
                .unwrap(),
            send(client, Method::DELETE, &format!("AuditEvent/{eid}"), None)
                .await
                .unwrap(),
            send(client, Method::DELETE, "AuditEvent?outcome=0", None)
                .await
                .unwrap(),
            send(client, Method::PUT, "AuditEvent?outcome=0", Some(fake.clone()))
                .await
                .unwrap(),
        ];
        for r in attempts {
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
            let oo = json(r).await;
            assert_eq!(oo["resourceType"], "OperationOutcome");
            assert_eq!(oo["issue"][0]["code"], "not-supported");
        }
    }
    // Nor inside a transaction or a batch.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": format!("AuditEvent/{eid}")}}
    ]});
    assert_eq!(app.post("", &tx).await.status(), 405);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": fake, "request": {"method": "POST", "url": "AuditEvent"}},
        {"request": {"method": "DELETE", "url": format!("AuditEvent/{eid}")}}
    ]});
    let b = json(app.post("", &batch).await).await;
    for e in b["entry"].as_array().unwrap() {
        assert_eq!(e["response"]["status"], "405 Method Not Allowed");
    }
    // Still there, unchanged, and the attempts are on the record.
    let r = auditor.get(app.url(&format!("AuditEvent/{eid}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["meta"]["versionId"], "1");
    let attempts = wait_for_audit(app, &auditor, &format!("entity=AuditEvent/{eid}&action=D&outcome=4"), 2).await;
    assert!(attempts.iter().any(|e| client_id(e) == "audit-writer"));
    let r = auditor.get(app.url("AuditEvent?_count=1000")).send().await.unwrap();
    let all = json(r).await;
    assert!(
        all["entry"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["resource"]["recorded"] != "2026-01-01T00:00:00Z"),
        "no client-made AuditEvent"
    );

    // A wildcard scope does not disclose the trail, by any path.
    let op = &app.client;
    assert_eq!(op.get(app.url("AuditEvent")).send().await.unwrap().status(), 403);
    assert_eq!(
        op.get(app.url(&format!("AuditEvent/{eid}")))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(op.get(app.url("?_type=AuditEvent")).send().await.unwrap().status(), 403);
    assert_eq!(
        op.get(app.url(&format!("Patient?_has:AuditEvent:entity:outcome=0&_id={pid}")))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    for path in [
        "_history?_count=1000".to_string(),
        "?_count=1000".to_string(),
        format!("Patient?_id={pid}&_revinclude=AuditEvent:entity"),
    ] {
        let b = json(op.get(app.url(&path)).send().await.unwrap()).await;
        let types: Vec<&str> = b["entry"]
            .as_array()
            .map(|es| {
                es.iter()
                    .filter_map(|e| e["resource"]["resourceType"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert!(!types.contains(&"AuditEvent"), "{path}: {types:?}");
    }
    // A registration with a wildcard does not grant the trail either.
    let wild = register_client(app.running(), "wild", None, "system/*.cruds").await;
    let endpoint = token_endpoint(&app.base);
    let assertion = apa_gateway::security::keys::sign_assertion(&wild.id, &endpoint, &wild.pem, &wild.kid).unwrap();
    let r = Client::new()
        .post(&endpoint)
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
            ("scope", "system/AuditEvent.rs"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json(r).await["error"], "invalid_scope");

    // The CapabilityStatement lists what works on AuditEvent, nothing more.
    let cs = json(app.get("metadata").await).await;
    let ae = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "AuditEvent")
        .unwrap()
        .clone();
    let codes: Vec<&str> = ae["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    // Events never change: no history, version 1 only.
    assert_eq!(codes, ["read", "vread", "search-type"]);
}

/// An auditor reads the trail of one patient page by page, newest first,
/// and is told when a filter cannot be applied rather than served more
/// than asked.
async fn the_trail_pages_by_date_and_refuses_what_it_cannot_filter(app: &TestApp) {
    let auditor = auditor(app).await;
    let pid = json(
        app.post("Patient", &json!({"resourceType": "Patient", "active": true}))
            .await,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..4 {
        assert_eq!(app.get(&format!("Patient/{pid}")).await.status(), 200);
    }
    wait_for_audit(app, &auditor, &format!("patient={pid}&subtype=read"), 4).await;
    // (The auditor's own searches naming the patient are in the trail too.)
    let mut url = app.url(&format!(
        "AuditEvent?patient={pid}&subtype=create,read&_sort=-date&_count=2"
    ));
    let mut seen: Vec<(String, String)> = Vec::new();
    for _ in 0..10 {
        let page = json(auditor.get(&url).send().await.unwrap()).await;
        for e in page["entry"].as_array().unwrap() {
            let e = &e["resource"];
            seen.push((e["recorded"].as_str().unwrap().into(), e["id"].as_str().unwrap().into()));
            assert_eq!(
                e["entity"].as_array().unwrap().last().unwrap()["what"]["reference"],
                format!("Patient/{pid}")
            );
        }
        let next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next");
        match next {
            Some(l) => url = l["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    // The create and the four reads, newest first, each once.
    assert_eq!(seen.len(), 5, "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted);
    // The create (recorded with the write) and the reads (recorded after
    // them, on SQLite in a file of their own) read back by id.
    let created = &seen[4].1;
    assert_eq!(
        auditor
            .get(app.url(&format!("AuditEvent/{created}")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // One event reads back by id, at version 1 only.
    let id = &seen[0].1;
    assert_eq!(
        auditor
            .get(app.url(&format!("AuditEvent/{id}")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        auditor
            .get(app.url(&format!("AuditEvent/{id}/_history/1")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        auditor
            .get(app.url(&format!("AuditEvent/{id}/_history/2")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    for refused in [
        "type=rest",
        "agent=Device/x",
        "_include=AuditEvent:patient",
        "_summary=count",
        "date=ne2026-01-01",
    ] {
        let r = auditor
            .get(app.url(&format!("AuditEvent?{refused}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{refused}");
        assert_eq!(json(r).await["resourceType"], "OperationOutcome");
    }
    assert_eq!(
        auditor
            .get(app.url(&format!("AuditEvent/{id}/_history")))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
}

on_both_backends!(
    the_trail_pages_newest_first,
    the_trail_pages_by_date_and_refuses_what_it_cannot_filter
);
on_both_backends!(every_interaction_leaves_an_audit_event, every_interaction_is_audited);
on_both_backends!(
    every_get_entry_of_a_bundle_leaves_an_audit_event,
    each_get_entry_of_a_bundle_is_audited
);
on_both_backends!(
    every_write_entry_of_a_batch_leaves_an_audit_event,
    each_write_entry_of_a_batch_is_audited
);
on_both_backends!(a_head_request_is_audited_as_read, a_head_request_is_audited_as_its_get);
on_both_backends!(
    the_audit_trail_is_read_only,
    the_trail_is_read_only_and_needs_its_own_scope
);

/// Versions stored before 2026-11 have no patients in their row: the
/// record of their read still names the patient, found in the body.
async fn a_version_stored_without_its_patients_is_audited_with_them(app: &TestApp) {
    let auditor = auditor(app).await;
    let pid = app.create(&json!({"resourceType": "Patient", "active": true})).await;
    let oid = app
        .create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "steps"}, "subject": {"reference": format!("Patient/{pid}")}}))
        .await;
    // Stored now, the version names its patient in its row.
    assert_eq!(app.get(&format!("Observation/{oid}")).await.status(), 200);
    // As an earlier release stored it.
    app.sql("UPDATE resource_version SET patients = NULL").await;
    assert_eq!(app.get(&format!("Observation/{oid}")).await.status(), 200);
    assert_eq!(app.get(&format!("Observation/{oid}/_history/1")).await.status(), 200);
    assert_eq!(app.get(&format!("Patient/{pid}")).await.status(), 200);

    let reads = wait_for_audit(app, &auditor, &format!("patient={pid}&subtype=read,vread"), 4).await;
    assert_eq!(reads.len(), 4, "{reads:#?}");
    let of_observation: Vec<Vec<&str>> = reads
        .iter()
        .filter(|e| entities(e)[0].starts_with("Observation/"))
        .map(entities)
        .collect();
    assert_eq!(of_observation.len(), 3);
    for e in of_observation {
        assert_eq!(e, [format!("Observation/{oid}/_history/1"), format!("Patient/{pid}")]);
    }
}

on_both_backends!(
    a_version_stored_before_its_patients_is_audited_with_them,
    a_version_stored_without_its_patients_is_audited_with_them
);

/// Events stored before 2026-11 have every resource they name in
/// `audit_entity`, none in their row: an `entity=` search still finds them.
async fn events_of_an_earlier_release_are_found_by_entity(app: &TestApp) {
    let auditor = auditor(app).await;
    let oid = app
        .create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "steps"}}))
        .await;
    let by_entity = format!("entity=Observation/{oid}");
    let created = events(app, &auditor, &by_entity).await;
    assert_eq!(created.len(), 1);
    // As an earlier release stored it.
    app.sql(
        "INSERT INTO audit_entity (ref, event) SELECT entity, id FROM audit_event WHERE entity IS NOT NULL; \
         UPDATE audit_event SET entity = NULL",
    )
    .await;
    let found = events(app, &auditor, &by_entity).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["id"], created[0]["id"]);
    assert_eq!(entities(&found[0])[0], format!("Observation/{oid}/_history/1"));
}

on_both_backends!(
    an_event_of_an_earlier_release_is_found_by_entity,
    events_of_an_earlier_release_are_found_by_entity
);

/// Records queued when the gateway stops are stored before it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_queued_at_shutdown_are_stored() {
    use apa_gateway::config::Config;
    use apa_gateway::store::AuditQuery;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/apa.db", dir.path().display());
    let cfg = Config {
        listen: "127.0.0.1:0".into(),
        database_url: url.clone(),
        db_pool_size: 2,
        ..Config::default()
    };
    let running = apa_gateway::server::start(&cfg).await.unwrap();
    let token = register_client(&running, "op", None, "system/*.cruds").await.token;
    let c = bearer_client(&token);
    let reads = 200;
    let base = running.base.clone();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..reads {
        let (c, base) = (c.clone(), base.clone());
        tasks.spawn(async move { c.get(format!("{base}/Patient/none")).send().await.unwrap().status() });
    }
    while let Some(s) = tasks.join_next().await {
        assert_eq!(s.unwrap(), 404);
    }
    running.stop().await;
    let store = apa_gateway::store::Store::open(&url, 1).await.unwrap();
    let all = AuditQuery {
        count: 1000,
        ..AuditQuery::default()
    };
    let stored = store
        .audit_search(&all, &apa_gateway::store::Visibility::All)
        .await
        .unwrap()
        .records
        .len();
    // The reads, and the token request.
    assert_eq!(stored, reads + 1);
    store.close().await;
}
