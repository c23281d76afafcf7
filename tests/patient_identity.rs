//! One patient, one INS, across organisations: a GP practice registers a
//! new patient with its prescription; another practice identifies the same
//! patient by the INS and the same identity traits and joins the care;
//! other traits under the INS, a second Patient with the INS, or a
//! prescription naming a patient's id without identifying them are refused.

#![allow(clippy::unwrap_used)]

mod common;

use apa_gateway::demo;
use common::{TestApp, apa, bearer_client, json, register_client};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

const GP_SCOPE: &str = "system/*.rs system/Patient.cru system/ServiceRequest.cru system/Task.cru";
/// A test INS (INS-NIR-TEST): a man born in September 1957 in Brest (29019).
const INS: &str = "157092901912393";

fn flat_url(app: &TestApp, path: &str) -> String {
    format!("{}/apa/v1/{path}", app.base.trim_end_matches("/fhir"))
}

async fn practice(app: &TestApp, id: &str) -> Client {
    bearer_client(&register_client(app.running(), id, Some(id), GP_SCOPE).await.token)
}

async fn prescribe(app: &TestApp, gp: &Client, body: &Value) -> Response {
    gp.post(flat_url(app, "prescriptions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// Dr Lebreton's prescription for Yannick Guérin, who lives in Rennes,
/// with his qualified identity.
fn prescription_with_identity(source_id: &str, rpps: &str) -> Value {
    json!({
        "source_id": source_id,
        "patient": {
            "ins": INS,
            "ins_kind": "TEST",
            "identity": {
                "status": "QUAL",
                "birth_name": "Guérin",
                "first_names": "Yannick Pierre",
                "birth_date": "1957-09-14",
                "sex": "M",
                "birth_place": "29019"
            },
            "address": {"lines": ["12 rue de Brest"], "postal_code": "35000", "city": "Rennes", "insee": "35238"}
        },
        "prescriber": {"rpps": rpps},
        "date": "2026-11-02",
        "reason": {"icd10": "E11", "condition_group": "diabete-t2"},
        "functional_limitation": "moderee",
        "intensity": "moderee",
        "activities": ["endurance"],
        "duration_months": 3,
        "session_minutes": 60,
        "sessions_per_week": 2
    })
}

fn listed<'a>(body: &'a Value, rtype: &str) -> Vec<&'a Value> {
    body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resourceType"] == rtype)
        .collect()
}

async fn status_of(client: &Client, app: &TestApp, path: &str) -> StatusCode {
    client.get(app.url(path)).send().await.unwrap().status()
}

/// Patients holding the INS, as the operator counts them.
async fn holders_of_ins(app: &TestApp) -> u64 {
    let q = format!("Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|{INS}&_total=accurate");
    json(app.get(&q).await).await["total"].as_u64().unwrap()
}

/// Dr Lebreton's practice registers Yannick Guérin with his prescription:
/// its client, and the response.
async fn lebreton_registers_guerin(app: &TestApp) -> (Client, Value) {
    let colombier = practice(app, "cabinet-colombier").await;
    let sent = prescription_with_identity("COL-2026-200", "99700314521");
    let r = prescribe(app, &colombier, &sent).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body = json(r).await;
    (colombier, body)
}

async fn a_gp_registers_a_new_patient_with_the_prescription(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let (colombier, body) = lebreton_registers_guerin(app).await;
    // The patient registered, the prescription stored, the referral routed.
    let patient = listed(&body, "Patient")[0];
    assert_eq!(patient["status"], "created");
    assert_eq!(patient["source"], "$.patient");
    let task = listed(&body, "Task")[0];
    assert_eq!(task["status"], "created");
    assert_eq!(task["source"], "added by the gateway");
    let notes = body["notes"].to_string();
    assert!(
        notes.contains(&format!("routed: Task/{}", task["id"].as_str().unwrap())),
        "{notes}"
    );
    // The practice sees its new patient, as FR Core's INS profile shapes him.
    let id = patient["id"].as_str().unwrap();
    let p = json(colombier.get(app.url(&format!("Patient/{id}"))).send().await.unwrap()).await;
    assert_eq!(p["name"][0]["family"], "Guérin");
    assert_eq!(p["name"][0]["given"][0], "Yannick");
    assert_eq!(p["identifier"][0]["value"], INS);
    assert_eq!(p["gender"], "male");
    assert_eq!(p["address"][0]["city"], "Rennes");
    // The MSS the referral was routed to sees him too.
    let task = json(app.get(&format!("Task/{}", task["id"].as_str().unwrap())).await).await;
    assert_eq!(task["for"]["reference"], format!("Patient/{id}"));

    // Without the identity, an INS the practice does not know is refused,
    // saying how to register the patient.
    let mut unknown = prescription_with_identity("COL-2026-201", "99700314521");
    unknown["patient"] = json!({"ins": "268053523812380", "ins_kind": "TEST"});
    let msp = practice(app, "msp-cesson").await;
    let r = prescribe(app, &msp, &unknown).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let b = json(r).await;
    assert_eq!(b["issue"][0]["expression"][0], "$.patient.ins");
    assert!(
        b["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("patient.identity"),
        "{b}"
    );
}

async fn another_practice_identifies_the_same_patient(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let (_, body) = lebreton_registers_guerin(app).await;
    let id = listed(&body, "Patient")[0]["id"].as_str().unwrap().to_string();

    // Before: the MSP of Cesson-Sévigné does not see him.
    let msp = practice(app, "msp-cesson").await;
    assert_eq!(
        status_of(&msp, app, &format!("Patient/{id}")).await,
        StatusCode::NOT_FOUND
    );
    // Dr Riou prescribes for him, the traits typed as her software has them.
    let mut riou = prescription_with_identity("MSP-2026-031", "99700314935");
    riou["patient"]["identity"]["birth_name"] = json!("GUERIN");
    riou["patient"]["identity"]["first_names"] = json!("YANNICK PIERRE");
    let r = prescribe(app, &msp, &riou).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body = json(r).await;
    // Identified, not registered again, and not changed.
    let patient = listed(&body, "Patient")[0];
    assert_eq!(patient["id"], id.as_str());
    assert_eq!(patient["status"], "existing");
    assert_eq!(holders_of_ins(app).await, 1);
    // Now part of his care, the MSP reads him and its prescription.
    assert_eq!(status_of(&msp, app, &format!("Patient/{id}")).await, StatusCode::OK);
    let sr = listed(&body, "ServiceRequest")[0]["id"].as_str().unwrap();
    let sr = json(msp.get(app.url(&format!("ServiceRequest/{sr}"))).send().await.unwrap()).await;
    assert_eq!(sr["subject"]["reference"], format!("Patient/{id}"));
}

async fn the_same_ins_with_other_traits_is_refused(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    lebreton_registers_guerin(app).await;

    // Another birth date under the same INS: an identity collision or a
    // typing error, never merged; the stored traits are not disclosed.
    let msp = practice(app, "msp-cesson").await;
    let mut wrong = prescription_with_identity("MSP-2026-032", "99700314935");
    wrong["patient"]["identity"]["birth_date"] = json!("1957-09-04");
    let r = prescribe(app, &msp, &wrong).await;
    // The one answer of a refused identification (tests/identity_oracle.rs):
    // it names no trait.
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let b = json(r).await;
    assert_eq!(b["issue"][0]["code"], "security");
    let msg = b["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(msg.starts_with("the patient is not identified"), "{msg}");
    assert!(!msg.contains("1957-09-14"), "{msg}");
    // Nothing of the refused prescription was stored.
    let q = "ServiceRequest?identifier=MSP-2026-032&_total=accurate";
    assert_eq!(json(app.get(q).await).await["total"], 0);
    assert_eq!(holders_of_ins(app).await, 1);

    // An INS sent for an identity that is not qualified: refused at once.
    let mut provisional = prescription_with_identity("MSP-2026-033", "99700314935");
    provisional["patient"]["identity"]["status"] = json!("PROV");
    let r = prescribe(app, &msp, &provisional).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json(r).await["issue"][0]["expression"][0], "$.patient.identity.status");
}

async fn naming_a_patient_by_id_does_not_open_the_compartment(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    // Jean-Yves Tanguy is a patient of the MSP of Cesson-Sévigné. The
    // Colombier practice learnt his id and writes a prescription for him,
    // by its own doctor: refused, and he stays out of its compartment.
    let colombier = practice(app, "cabinet-colombier").await;
    let sr = apa::prescription("Patient/patient-tanguy", "PractitionerRole/dr-lebreton-colombier");
    let r = colombier
        .post(app.url("ServiceRequest"))
        .json(&sr)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        status_of(&colombier, app, "Patient/patient-tanguy").await,
        StatusCode::NOT_FOUND
    );
    // Registering a second Patient under his INS is refused too: the INS
    // names one person, identified by a conditional create.
    let mut twin = json(app.get("Patient/patient-tanguy").await).await;
    let fields = twin.as_object_mut().unwrap();
    fields.remove("id");
    fields.remove("meta");
    // Outside its compartment, answered as any refused identification.
    let r = colombier.post(app.url("Patient")).json(&twin).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let b = json(r).await;
    assert_eq!(b["issue"][0]["code"], "security");
}

/// The README's example: Dr Riou's software registers Yannick Guérin, who
/// lives in Cesson-Sévigné, with his first prescription
/// (`fixtures/flat/prescription-new-patient.json`).
async fn the_new_patient_fixture_is_registered_and_referred(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let msp = practice(app, "msp-cesson").await;
    let fixture: Value = serde_json::from_str(include_str!("../fixtures/flat/prescription-new-patient.json")).unwrap();
    let r = prescribe(app, &msp, &fixture).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body = json(r).await;
    assert_eq!(listed(&body, "Patient")[0]["status"], "created");
    // Obesity, moderate limitation, in Cesson: Vilaine Active's programme.
    let task = listed(&body, "Task")[0]["id"].as_str().unwrap().to_string();
    let task = json(app.get(&format!("Task/{task}")).await).await;
    assert_eq!(task["owner"]["reference"], "Organization/mss-vilaine-active");
    let patient = listed(&body, "Patient")[0]["id"].as_str().unwrap().to_string();
    let p = json(app.get(&format!("Patient/{patient}")).await).await;
    assert_eq!(p["birthDate"], "1957-09-14");
    assert_eq!(p["identifier"][0]["value"], INS);
}

on_both_backends!(new_patient_fixture, the_new_patient_fixture_is_registered_and_referred);
on_both_backends!(gp_registers_patient, a_gp_registers_a_new_patient_with_the_prescription);
on_both_backends!(
    another_practice_identifies,
    another_practice_identifies_the_same_patient
);
on_both_backends!(other_traits_refused, the_same_ins_with_other_traits_is_refused);
on_both_backends!(id_is_not_identity, naming_a_patient_by_id_does_not_open_the_compartment);
