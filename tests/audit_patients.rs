//! The trail of a patient holds every attempt that concerned her, refused
//! ones included: the data protection officer finds them by `patient=` as
//! by `entity=`, and the organisation that tried learns nothing of her
//! through the trail.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::apa::{INS_TEST, body_weight, patient_with_ins};
use common::{TestApp, audit_trail, bearer_client, json, register_client, wait_for_audit};
use reqwest::{Client, Method};
use serde_json::Value;

const NATHALIE_INS: &str = "280017512345610";
/// An INS nobody holds, valid all the same.
const NOBODY_INS: &str = "280017512345611";

async fn client(app: &TestApp, id: &str, org: Option<&str>, scope: &str) -> Client {
    bearer_client(&register_client(app.running(), id, org, scope).await.token)
}

fn subtype(e: &Value) -> &str {
    e["subtype"][0]["code"].as_str().unwrap_or_default()
}

fn ids(events: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = events.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

fn decoded_query(e: &Value) -> Option<String> {
    e["entity"].as_array()?.iter().find_map(|x| {
        let q = base64::engine::general_purpose::STANDARD
            .decode(x["query"].as_str()?)
            .ok()?;
        String::from_utf8(q).ok()
    })
}

async fn a_dpo_finds_every_attempt_on_a_patient_and_the_mss_learns_nothing(app: &TestApp) {
    // The GP practice registers Nathalie and her weight.
    let gp = client(app, "cabinet-app", Some("cabinet-colombier"), "system/*.cruds").await;
    let r = app
        .send_as(
            &gp,
            Method::POST,
            "Patient",
            &patient_with_ins(NATHALIE_INS, "Le Bihan"),
        )
        .await;
    assert_eq!(r.status(), 201);
    let nathalie = json(r).await["id"].as_str().unwrap().to_string();
    let r = app
        .send_as(
            &gp,
            Method::POST,
            "Observation",
            &body_weight(&format!("Patient/{nathalie}"), 72.0),
        )
        .await;
    assert_eq!(r.status(), 201);
    let weight = json(r).await["id"].as_str().unwrap().to_string();

    // An MSS that does not see her, and may read the trail of its patients.
    let mss = client(
        app,
        "vilaine-app",
        Some("mss-vilaine-active"),
        "system/*.cruds system/AuditEvent.rs",
    )
    .await;
    let of_mss = "agent:identifier=vilaine-app";
    let ins = format!("{INS_TEST}|{NATHALIE_INS}");
    // As a client's URL carries it.
    let ins_query = format!("identifier={INS_TEST}%7C{NATHALIE_INS}");
    let send = |method: Method, path: &str| {
        mss.request(method, app.url(path))
            .header("content-type", "application/fhir+json")
    };

    // It tries, six ways.
    let r = send(Method::GET, &format!("Patient/{nathalie}")).send().await.unwrap();
    assert_eq!(r.status(), 404, "her record");
    let r = send(Method::GET, &format!("Observation/{weight}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "her weight");
    let r = mss.get(app.url(&format!("Patient?{ins_query}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        json(r).await["entry"].as_array().is_none_or(Vec::is_empty),
        "her INS finds nobody"
    );
    let r = send(Method::POST, "Patient")
        .header("if-none-exist", format!("identifier={ins}"))
        .body(patient_with_ins(NATHALIE_INS, "Autre").to_string())
        .send()
        .await
        .unwrap();
    let conditional = r.status().as_u16();
    assert!((400..500).contains(&conditional), "a create on her INS: {conditional}");
    let r = send(Method::POST, "Observation")
        .body(body_weight(&format!("Patient/{nathalie}"), 90.0).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a weight about her");
    let mut replaced = patient_with_ins(NATHALIE_INS, "Le Bihan");
    replaced["id"] = nathalie.clone().into();
    let r = send(Method::PUT, &format!("Patient/{nathalie}"))
        .body(replaced.to_string())
        .send()
        .await
        .unwrap();
    let update = r.status().as_u16();
    assert!((400..500).contains(&update), "her record replaced: {update}");

    // The DPO finds each attempt in her trail.
    let dpo = client(app, "dpo", None, "system/AuditEvent.rs operator").await;
    let hers = format!("patient=Patient/{nathalie}&{of_mss}");
    let found = wait_for_audit(app, &dpo, &hers, 6).await;
    assert_eq!(found.len(), 6, "{found:#?}");
    let one = |pred: &dyn Fn(&Value) -> bool, what: &str| -> Value {
        let matching: Vec<&Value> = found.iter().filter(|e| pred(e)).collect();
        assert_eq!(matching.len(), 1, "{what}: {found:#?}");
        matching[0].clone()
    };
    let names = |e: &Value, r: &str| {
        e["entity"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["what"]["reference"] == r)
    };
    one(
        &|e| subtype(e) == "read" && names(e, &format!("Observation/{weight}")),
        "her weight read",
    );
    one(
        &|e| subtype(e) == "read" && !names(e, &format!("Observation/{weight}")),
        "her record read",
    );
    one(&|e| subtype(e) == "update", "her record replaced");
    one(&|e| subtype(e) == "search-type", "her INS searched");
    for e in &found {
        // Every event of her trail names her, as BALP's "with Patient".
        let her = e["entity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["role"]["code"] == "1")
            .unwrap_or_else(|| panic!("no patient in {e}"));
        assert_eq!(her["what"]["reference"], format!("Patient/{nathalie}"));
        assert_eq!(her["type"]["code"], "1");
        if subtype(e) != "search-type" {
            assert_ne!(e["outcome"], "0", "a refusal: {e}");
        }
    }
    let search = found.iter().find(|e| subtype(e) == "search-type").unwrap();
    assert_eq!(decoded_query(search).as_deref(), Some(ins_query.as_str()));
    assert_eq!(
        found.iter().filter(|e| subtype(e) == "create").count(),
        2,
        "the conditional create and the weight"
    );
    // By entity, the same events.
    let (_, by_entity) = audit_trail(app, &dpo, &format!("entity=Patient/{nathalie}&{of_mss}")).await;
    assert_eq!(ids(&by_entity), ids(&found));
    // And in her whole trail, the GP practice's creates beside them.
    let (_, all) = audit_trail(app, &dpo, &format!("patient=Patient/{nathalie}")).await;
    let (_, all_by_entity) = audit_trail(app, &dpo, &format!("entity=Patient/{nathalie}")).await;
    assert_eq!(ids(&all), ids(&all_by_entity));
    assert!(all.len() >= 8, "{all:#?}");

    // The MSS searches the trail: nothing of her, by any filter.
    for q in [
        format!("patient=Patient/{nathalie}"),
        format!("entity=Patient/{nathalie}"),
        format!("entity=Observation/{weight}"),
    ] {
        let (status, events) = audit_trail(app, &mss, &q).await;
        assert_eq!(status, 200, "{q}");
        assert!(events.is_empty(), "{q}: {events:#?}");
    }
    let (_, own) = audit_trail(app, &mss, of_mss).await;
    let text = serde_json::to_string(&own).unwrap();
    assert!(!text.contains(&nathalie), "her id in {text}");
    let encoded_ins = base64::engine::general_purpose::STANDARD.encode(&ins_query);
    assert!(
        !text.contains(NATHALIE_INS) && !text.contains(&encoded_ins),
        "her INS in {text}"
    );
    for e in &found {
        let r = mss
            .get(app.url(&format!("AuditEvent/{}", e["id"].as_str().unwrap())))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }

    // Nor whether an INS is held: a search by an INS nobody holds leaves
    // an event the MSS is not shown either, as the one by hers.
    let r = mss
        .get(app.url(&format!("Patient?identifier={INS_TEST}%7C{NOBODY_INS}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let patient_searches = format!("subtype=search-type&{of_mss}&entity=Patient/{nathalie}");
    let by_ins = |events: &[Value], ins: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| decoded_query(e).is_some_and(|q| q.contains(ins)))
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let nobody = loop {
        let (_, searches) = audit_trail(app, &dpo, &format!("subtype=search-type&{of_mss}")).await;
        if let [one] = by_ins(&searches, NOBODY_INS).as_slice() {
            break one.clone();
        }
        assert!(Instant::now() < deadline, "{searches:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        nobody["entity"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["role"]["code"] != "1"),
        "an INS nobody holds names no patient: {nobody}"
    );
    // Her trail holds the search by her INS, not the other.
    let (_, of_her) = audit_trail(app, &dpo, &patient_searches).await;
    assert_eq!(by_ins(&of_her, NATHALIE_INS).len(), 1);
    assert!(by_ins(&of_her, NOBODY_INS).is_empty());
    // The MSS sees its searches of the trail, none of the two by INS.
    let (_, own_searches) = audit_trail(app, &mss, &format!("subtype=search-type&{of_mss}")).await;
    assert!(!own_searches.is_empty());
    for ins in [NATHALIE_INS, NOBODY_INS] {
        assert!(by_ins(&own_searches, ins).is_empty(), "{own_searches:#?}");
    }
}

on_both_backends!(
    a_dpo_finds_every_attempt_on_a_patient,
    a_dpo_finds_every_attempt_on_a_patient_and_the_mss_learns_nothing
);
