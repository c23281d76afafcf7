//! An MSS that sees no patient tries to learn who Nathalie Le Bihan is
//! from her INS alone, as an attacker did (issue 17): it probes the
//! identity traits one at a time with conditional creates, the INS with
//! plain creates, and patient and Task ids with updates. Every refusal is
//! the same, byte for byte; the failures are limited and audited as
//! security events; she stays out of its reach. A GP practice that
//! really identifies her leaves an AuditEvent her own practice reads.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use apa_gateway::demo;
use common::{TestApp, bearer_client, json, register_client};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const SCOPE: &str = "system/*.rs system/Patient.cru system/ServiceRequest.cru system/Task.cru system/AuditEvent.rs";
const INS_SYSTEM: &str = "urn:oid:1.2.250.1.213.1.4.10";
/// Nathalie Le Bihan's test INS (demo territory).
const VICTIM_INS: &str = "268053523812380";
const BY_INS: &str = "identifier=urn:oid:1.2.250.1.213.1.4.10|268053523812380";

async fn org(app: &TestApp, id: &str) -> Client {
    bearer_client(&register_client(app.running(), id, Some(id), SCOPE).await.token)
}

/// What a refusal says: status and every issue's code, text and location.
async fn answer(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let body = json(r).await;
    let issues: Vec<Value> = body["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| json!([i["code"], i["diagnostics"], i["expression"]]))
        .collect();
    (status, Value::Array(issues))
}

/// Her Patient as the attacker would write it: the stored one, without
/// the server's id and meta.
async fn her_identity(app: &TestApp) -> Value {
    let mut p = json(app.get("Patient/patient-le-bihan").await).await;
    let o = p.as_object_mut().unwrap();
    o.remove("id");
    o.remove("meta");
    p
}

async fn conditional_create(app: &TestApp, client: &Client, p: &Value) -> reqwest::Response {
    client
        .post(app.url("Patient"))
        .header("If-None-Exist", BY_INS)
        .json(p)
        .send()
        .await
        .unwrap()
}

fn birth_place(p: &mut Value) -> &mut Value {
    let ext = p["extension"].as_array_mut().unwrap();
    let bp = ext
        .iter_mut()
        .find(|e| e["url"] == "http://hl7.org/fhir/StructureDefinition/patient-birthPlace")
        .unwrap();
    &mut bp["valueAddress"]["extension"][0]["valueCoding"]["code"]
}

/// Her identity with one thing changed or left out, as the probes vary it.
fn probes(her: &Value) -> Vec<(&'static str, Value)> {
    let with = |f: &dyn Fn(&mut Value)| {
        let mut p = her.clone();
        f(&mut p);
        p
    };
    vec![
        ("another birth date", with(&|p| p["birthDate"] = json!("1968-05-12"))),
        (
            "another birth name",
            with(&|p| p["name"][0]["family"] = json!("Le Guen")),
        ),
        ("another first name", with(&|p| p["name"][0]["given"] = json!(["Anne"]))),
        ("another sex", with(&|p| p["gender"] = json!("male"))),
        ("another birth place", with(&|p| *birth_place(p) = json!("29019"))),
        ("born abroad", with(&|p| *birth_place(p) = json!("99134"))),
        (
            "no birth place",
            with(&|p| {
                let ext = p["extension"].as_array_mut().unwrap();
                ext.retain(|e| e["url"] != "http://hl7.org/fhir/StructureDefinition/patient-birthPlace");
            }),
        ),
        (
            "no first name",
            with(&|p| drop(p["name"][0].as_object_mut().unwrap().remove("given"))),
        ),
        (
            "no birth date",
            with(&|p| drop(p.as_object_mut().unwrap().remove("birthDate"))),
        ),
        ("no sex", with(&|p| drop(p.as_object_mut().unwrap().remove("gender")))),
        (
            "the INS alone",
            with(&|p| {
                let o = p.as_object_mut().unwrap();
                for k in ["name", "birthDate", "gender", "address"] {
                    o.remove(k);
                }
            }),
        ),
    ]
}

async fn the_mss_probes_her_traits_and_learns_nothing(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    // Her diagnosis, which the attacker is after.
    let condition = app
        .create(&json!({
            "resourceType": "Condition",
            "subject": {"reference": "Patient/patient-le-bihan"},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "E11"}]}
        }))
        .await;
    let mss = org(app, "mss-vilaine-active").await;
    let her = her_identity(app).await;

    // A plain create carrying her INS: what a refused identification gets.
    let expected = answer(mss.post(app.url("Patient")).json(&her).send().await.unwrap()).await;
    assert_eq!(expected.0, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", expected.1);
    assert_eq!(expected.1[0][0], "security");
    assert_eq!(expected.1[0][2], json!(["Patient.identifier"]));

    // One trait at a time, or left out: the same answer every time.
    for (what, probe) in probes(&her) {
        let got = answer(conditional_create(app, &mss, &probe).await).await;
        assert_eq!(got, expected, "{what}");
    }
    // A patient never registered, sent with a trait left out: refused the
    // same way, so that "incomplete" says nothing of who exists.
    let mut stranger = probes(&her).remove(6).1;
    stranger["identifier"][0]["value"] = json!("157092901912393");
    let got = answer(
        mss.post(app.url("Patient"))
            .header("If-None-Exist", format!("identifier={INS_SYSTEM}|157092901912393"))
            .json(&stranger)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got, expected);
    // The same probes in a transaction: one answer too.
    let bundle = |p: &Value, cond: Option<&str>| {
        let mut request = json!({"method": "POST", "url": "Patient"});
        if let Some(c) = cond {
            request["ifNoneExist"] = json!(c);
        }
        json!({"resourceType": "Bundle", "type": "transaction",
               "entry": [{"fullUrl": "urn:uuid:7d3c1f1e-0000-4000-8000-000000000001", "resource": p, "request": request}]})
    };
    let in_bundle = answer(mss.post(app.url("")).json(&bundle(&her, None)).send().await.unwrap()).await;
    for (what, probe) in probes(&her) {
        let got = answer(
            mss.post(app.url(""))
                .json(&bundle(&probe, Some(BY_INS)))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got, in_bundle, "{what} in a transaction");
    }

    // The takeover failed: she and her diagnosis stay out of its reach,
    // and no second Patient holds her INS.
    let read = |path: String| mss.get(app.url(&path)).send();
    assert_eq!(read("Patient/patient-le-bihan".into()).await.unwrap().status(), 404);
    assert_eq!(read(format!("Condition/{condition}")).await.unwrap().status(), 404);
    let holders = json(
        app.get(&format!("Patient?identifier={INS_SYSTEM}|{VICTIM_INS}&_total=accurate"))
            .await,
    )
    .await;
    assert_eq!(holders["total"], 1);
}

async fn ids_it_cannot_see_are_answered_like_ids_it_may_not_use(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let mss = org(app, "mss-vilaine-active").await;
    let put = |path: &str, body: &Value| mss.put(app.url(path)).json(body).send();

    // A Task that exists (her referral) and one that never did, both about her.
    let mut task = json(app.get("Task/referral-le-bihan").await).await;
    task.as_object_mut().unwrap().remove("meta");
    let taken = answer(put("Task/referral-le-bihan", &task).await.unwrap()).await;
    task["id"] = json!("never-used-task");
    let free = answer(put("Task/never-used-task", &task).await.unwrap()).await;
    assert_eq!(taken.0, StatusCode::FORBIDDEN);
    assert_eq!(taken, free);

    // Patients: Jean-Yves Tanguy's id, and a new id for a Patient linked to
    // Nathalie Le Bihan, whom the MSS may not write about.
    let tanguy = json!({"resourceType": "Patient", "id": "patient-tanguy",
                        "name": [{"family": "Martin", "given": ["Paul"]}]});
    let taken = answer(put("Patient/patient-tanguy", &tanguy).await.unwrap()).await;
    let linked = json!({"resourceType": "Patient", "id": "never-used-patient",
                        "link": [{"other": {"reference": "Patient/patient-le-bihan"}, "type": "seealso"}]});
    let free = answer(put("Patient/never-used-patient", &linked).await.unwrap()).await;
    assert_eq!(taken.0, StatusCode::FORBIDDEN);
    assert_eq!(taken, free);

    // Her own id with her INS: no hint that the id is hers.
    let mut her = her_identity(app).await;
    let plain = answer(mss.post(app.url("Patient")).json(&her).send().await.unwrap()).await;
    her["id"] = json!("patient-le-bihan");
    let by_id = answer(put("Patient/patient-le-bihan", &her).await.unwrap()).await;
    assert_eq!(by_id, plain);
    assert_eq!(
        json(app.get("Patient/patient-le-bihan").await).await["meta"]["versionId"],
        "1"
    );
}

async fn repeated_failures_are_throttled_and_audited(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let mss = org(app, "mss-vilaine-active").await;
    let her = her_identity(app).await;
    for day in 1..=5 {
        let mut guess = her.clone();
        guess["birthDate"] = json!(format!("1968-05-0{day}"));
        let r = conditional_create(app, &mss, &guess).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    // The sixth attempt is throttled, even with her true traits: success
    // would confirm the guess the limit is there to stop.
    let r = conditional_create(app, &mss, &her).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait > 0 && wait <= 3600, "{wait}");
    let b = json(r).await;
    assert_eq!(b["resourceType"], "OperationOutcome");
    assert_eq!(b["issue"][0]["code"], "throttled");
    assert_eq!(status(&mss, app, "Patient/patient-le-bihan").await, 404);

    // Each refusal is a security event in the trail, naming no trait.
    let auditor = bearer_client(
        &register_client(app.running(), "auditor", None, "operator system/AuditEvent.rs")
            .await
            .token,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let alerts = loop {
        let url = app.url("AuditEvent?agent:identifier=mss-vilaine-active&_count=100");
        let found = json(auditor.get(url).send().await.unwrap()).await;
        let alerts: Vec<Value> = found["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"].clone())
            .filter(|e| e["outcomeDesc"].as_str().unwrap_or_default().contains("security alert"))
            .collect();
        if alerts.len() >= 5 || Instant::now() > deadline {
            break alerts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(alerts.len(), 5, "{alerts:#?}");
    for a in &alerts {
        let text = a.to_string();
        assert!(!text.contains("1968-05") && !text.contains(VICTIM_INS), "{text}");
    }
}

async fn status(client: &Client, app: &TestApp, path: &str) -> u16 {
    client.get(app.url(path)).send().await.unwrap().status().as_u16()
}

async fn her_practice_sees_who_identified_her(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    // Dr Riou's practice prescribes for her with her qualified identity.
    let msp = org(app, "msp-cesson").await;
    let prescription = json!({
        "source_id": "MSP-2026-077",
        "patient": {
            "ins": VICTIM_INS,
            "ins_kind": "TEST",
            "identity": {"status": "QUAL", "birth_name": "LE BIHAN", "first_names": "Nathalie Anne",
                         "birth_date": "1968-05-21", "sex": "F", "birth_place": "35238"}
        },
        "prescriber": {"rpps": "99700314935"},
        "date": "2026-11-02",
        "reason": {"icd10": "E11", "condition_group": "diabete-t2"},
        "functional_limitation": "moderee",
        "intensity": "moderee",
        "activities": ["endurance"],
        "duration_months": 3,
        "session_minutes": 60,
        "sessions_per_week": 2
    });
    let r = msp
        .post(format!("{}/apa/v1/prescriptions", app.base.trim_end_matches("/fhir")))
        .json(&prescription)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", json(r).await);
    assert_eq!(status(&msp, app, "Patient/patient-le-bihan").await, 200);

    // The Colombier practice, which registered her, reads it in her trail.
    let colombier = org(app, "cabinet-colombier").await;
    let trail = json(
        colombier
            .get(app.url("AuditEvent?patient=Patient/patient-le-bihan&agent:identifier=msp-cesson&_count=100"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let identified: Vec<&Value> = trail["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|e| {
            e["entity"].as_array().into_iter().flatten().any(|x| {
                x["what"]["reference"] == "Patient/patient-le-bihan"
                    && x["role"]["code"] == "1"
                    && x["description"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("identified by INS"))
            })
        })
        .collect();
    assert_eq!(identified.len(), 1, "{trail:#}");
    assert_eq!(identified[0]["outcome"], "0");
    assert_eq!(identified[0]["agent"][0]["who"]["identifier"]["value"], "msp-cesson");
}

/// The probe sends more refused identifications than the limit allows.
fn unlimited(cfg: &mut apa_gateway::config::Config) {
    cfg.identification_failures_max = 0;
}

on_both_backends_with!(trait_probe, the_mss_probes_her_traits_and_learns_nothing, unlimited);
on_both_backends!(id_probe, ids_it_cannot_see_are_answered_like_ids_it_may_not_use);
on_both_backends!(throttled_and_audited, repeated_failures_are_throttled_and_audited);
on_both_backends!(identification_audited, her_practice_sees_who_identified_her);
