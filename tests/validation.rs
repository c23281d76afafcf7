//! Validation on every write and through `$validate`: the guide's profiles
//! and the French identity rules, on SQLite and PostgreSQL. A refused write
//! is a 422 whose OperationOutcome points at the faulty element, and
//! nothing of it is stored.

#![allow(clippy::unwrap_used)]

mod common;

use common::apa::{INS_TEST, identity_status, patient_with_ins, prescription, referral};
use common::{TestApp, json};
use reqwest::Method;
use serde_json::{Value, json};

/// Test INS of Claire Martin, key included (2800175123456 → 10).
const INS_OK: &str = "280017512345610";
const RPPS_OK: &str = "10001234565";
const SIRET_OK: &str = "12345678200010";

/// The locations of the error issues of an OperationOutcome.
fn errors_at(oo: &Value) -> Vec<String> {
    oo["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "error")
        .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

async fn refused(app: &TestApp, path: &str, body: &Value) -> Vec<String> {
    let r = app.post(path, body).await;
    assert_eq!(r.status(), 422, "{path}: {body}");
    let oo = json(r).await;
    assert_eq!(oo["resourceType"], "OperationOutcome");
    errors_at(&oo)
}

async fn count(app: &TestApp, query: &str) -> u64 {
    let r = json(app.get(&format!("{query}&_summary=count")).await).await;
    r["total"].as_u64().unwrap()
}

/// The GP practice software's prescription: patient, prescription and
/// referral to an MSS, linked by urn:uuid.
fn prescription_bundle(ins: &str) -> Value {
    let patient = "urn:uuid:0b5e7a1c-0000-4000-8000-000000000001";
    let sr = "urn:uuid:0b5e7a1c-0000-4000-8000-000000000002";
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": patient, "resource": patient_with_ins(ins, "Martin"),
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": sr, "resource": prescription(patient, "PractitionerRole/dr-dupont"),
         "request": {"method": "POST", "url": "ServiceRequest"}},
        {"resource": referral(sr, patient, "Organization/cabinet-dupont", "Organization/mss-a"),
         "request": {"method": "POST", "url": "Task"}}
    ]})
}

async fn a_complete_prescription_is_accepted(app: &TestApp) {
    let r = app.post("", &prescription_bundle(INS_OK)).await;
    assert_eq!(r.status(), 200);
    let b = json(r).await;
    for e in b["entry"].as_array().unwrap() {
        assert_eq!(e["response"]["status"], "201 Created");
    }
    assert_eq!(count(app, &format!("Patient?identifier={INS_TEST}|{INS_OK}")).await, 1);
}

async fn a_wrong_ins_key_refuses_the_whole_prescription(app: &TestApp) {
    // The last digit of the key mistyped.
    let at = refused(app, "", &prescription_bundle("280017512345611")).await;
    assert_eq!(at, ["Bundle.entry[0].resource.identifier[0].value"]);
    assert_eq!(
        count(app, &format!("Patient?identifier={INS_TEST}|280017512345611")).await,
        0
    );
    assert_eq!(count(app, "ServiceRequest?status=active").await, 0);
    assert_eq!(count(app, "Task?status=requested").await, 0);
}

async fn identity_rules_of_professionals_and_organisations(app: &TestApp) {
    // RPPS: its last digit is a Luhn key.
    let practitioner = |rpps: &str| {
        json!({"resourceType": "Practitioner",
               "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": rpps}],
               "name": [{"family": "Dupont"}]})
    };
    assert_eq!(
        refused(app, "Practitioner", &practitioner("10001234567")).await,
        ["Practitioner.identifier[0].value"]
    );
    app.create(&practitioner(RPPS_OK)).await;
    assert_eq!(
        count(app, "Practitioner?identifier=https://rpps.esante.gouv.fr|10001234567").await,
        0
    );
    // SIRET: Luhn on the 14 digits (and on its SIREN).
    let organization = |siret: &str| {
        json!({"resourceType": "Organization", "name": "MSS A",
               "identifier": [{"system": "https://sirene.fr", "value": siret}]})
    };
    assert_eq!(
        refused(app, "Organization", &organization("12345678200011")).await,
        ["Organization.identifier[0].value"]
    );
    app.create(&organization(SIRET_OK)).await;
    assert_eq!(
        count(app, "Organization?identifier=https://sirene.fr|12345678200011").await,
        0
    );
}

async fn an_ins_travels_only_with_a_qualified_identity(app: &TestApp) {
    for status in ["VALI", "PROV"] {
        let mut p = patient_with_ins(INS_OK, "Martin");
        p["extension"] = json!([identity_status(status)]);
        let at = refused(app, "Patient", &p).await;
        assert!(at.contains(&"Patient.identifier[0]".to_string()), "{status}: {at:?}");
    }
    // Without the INS, the same identity is accepted.
    let mut p = patient_with_ins(INS_OK, "Martin");
    p["extension"] = json!([identity_status("VALI")]);
    p["identifier"] = json!([{"system": "https://cabinet-dupont.example/patients", "value": "4711"}]);
    app.create(&p).await;
    assert_eq!(count(app, &format!("Patient?identifier={INS_TEST}|{INS_OK}")).await, 0);
}

async fn the_prescription_profile_is_enforced(app: &TestApp) {
    let patient = app.create(&patient_with_ins(INS_OK, "Martin")).await;
    let sr = || prescription(&format!("Patient/{patient}"), "PractitionerRole/dr-dupont");
    // 9 months: the programme lasts 3 to 6 (apa-sr-2).
    let mut long = sr();
    long["occurrenceTiming"]["repeat"]["boundsDuration"]["value"] = json!(9);
    assert_eq!(refused(app, "ServiceRequest", &long).await, ["ServiceRequest"]);
    // A duration in weeks is not one of months.
    let mut weeks = sr();
    weeks["occurrenceTiming"]["repeat"]["boundsDuration"]["code"] = json!("wk");
    let at = refused(app, "ServiceRequest", &weeks).await;
    assert!(
        at.contains(&"ServiceRequest.occurrenceTiming.repeat.boundsDuration.code".to_string()),
        "{at:?}"
    );
    // No reason (apa-sr-1).
    let mut no_reason = sr();
    no_reason.as_object_mut().unwrap().remove("reasonCode");
    assert_eq!(refused(app, "ServiceRequest", &no_reason).await, ["ServiceRequest"]);
    // A functional limitation outside its value set; the intensity missing.
    let mut ext = sr();
    ext["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] = json!("extreme");
    ext["extension"].as_array_mut().unwrap().remove(1);
    let at = refused(app, "ServiceRequest", &ext).await;
    assert_eq!(
        at,
        [
            "ServiceRequest.extension",
            "ServiceRequest.extension[0].valueCodeableConcept"
        ]
    );
    // A subject that is not a patient.
    let mut group = sr();
    group["subject"] = json!({"reference": "Group/g1"});
    assert_eq!(refused(app, "ServiceRequest", &group).await, ["ServiceRequest.subject"]);
    // A profile of ours that does not exist.
    let mut unknown = sr();
    unknown["meta"] = json!({"profile": ["https://apa-gateway.fr/fhir/StructureDefinition/apa-nope"]});
    assert_eq!(
        refused(app, "ServiceRequest", &unknown).await,
        ["ServiceRequest.meta.profile[0]"]
    );
    assert_eq!(
        count(app, &format!("ServiceRequest?subject=Patient/{patient}")).await,
        0
    );
    // 6 months is within bounds.
    let mut six = sr();
    six["occurrenceTiming"]["repeat"]["boundsDuration"]["value"] = json!(6);
    app.create(&six).await;
}

async fn an_assessment_in_the_wrong_unit_is_refused(app: &TestApp) {
    let patient = app.create(&patient_with_ins(INS_OK, "Martin")).await;
    let walk = |unit: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes", "code": "PhysicalActivity"}]},
                         {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "activity"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "64098-7"}]},
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": "2026-11-12T10:00:00+01:00",
            "valueQuantity": {"value": 0.42, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
    };
    assert_eq!(
        refused(app, "Observation", &walk("km")).await,
        ["Observation.valueQuantity.code"]
    );
    assert_eq!(count(app, "Observation?code=64098-7").await, 0);
    let mut metres = walk("m");
    metres["valueQuantity"]["value"] = json!(420);
    app.create(&metres).await;
    assert_eq!(count(app, "Observation?code=64098-7").await, 1);
}

async fn a_transaction_with_an_invalid_third_entry_stores_nothing(app: &TestApp) {
    let mut b = prescription_bundle(INS_OK);
    // The referral has no owner: nobody would receive it.
    b["entry"][2]["resource"].as_object_mut().unwrap().remove("owner");
    let at = refused(app, "", &b).await;
    assert_eq!(at, ["Bundle.entry[2].resource.owner"]);
    assert_eq!(count(app, &format!("Patient?identifier={INS_TEST}|{INS_OK}")).await, 0);
    assert_eq!(count(app, "ServiceRequest?status=active").await, 0);
    let h = json(app.get("_history").await).await;
    assert_eq!(h["entry"].as_array().map_or(0, Vec::len), 0, "nothing written");
}

async fn validate_operation(app: &TestApp) {
    let post = |path: &str, body: Value| {
        app.req(Method::POST, path)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
    };
    // A valid resource: one information issue.
    let good = prescription("Patient/p1", "PractitionerRole/dr-dupont");
    let r = post("ServiceRequest/$validate", good.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let oo = json(r).await;
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"].as_array().unwrap().len(), 1);
    assert_eq!(oo["issue"][0]["severity"], "information");
    // An invalid one: 200 all the same, every issue listed with its location.
    let mut bad = good.clone();
    bad["occurrenceTiming"]["repeat"]["boundsDuration"]["value"] = json!(9);
    bad.as_object_mut().unwrap().remove("requester");
    let r = post("ServiceRequest/$validate", bad.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let mut at = errors_at(&json(r).await);
    at.sort();
    assert_eq!(at, ["ServiceRequest", "ServiceRequest.requester"]);
    // In Parameters, against a named profile, on an instance.
    let patient = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Martin"}]});
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": patient},
        {"name": "profile", "valueCanonical": "https://apa-gateway.fr/fhir/StructureDefinition/apa-patient"},
        {"name": "mode", "valueCode": "update"}]});
    let r = post("Patient/p1/$validate", params).await.unwrap();
    assert_eq!(r.status(), 200);
    let mut at = errors_at(&json(r).await);
    at.sort();
    assert_eq!(at, ["Patient.birthDate", "Patient.gender", "Patient.identifier"]);
    // The identity rules too.
    let r = post("Patient/$validate", patient_with_ins("280017512345611", "Martin"))
        .await
        .unwrap();
    assert_eq!(errors_at(&json(r).await), ["Patient.identifier[0].value"]);
    // A Bundle: each entry as a transaction would check it.
    let mut tx = prescription_bundle(INS_OK);
    tx["entry"][2]["resource"].as_object_mut().unwrap().remove("owner");
    let r = post("Bundle/$validate", tx).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(errors_at(&json(r).await), ["Bundle.entry[2].resource.owner"]);
    // Nothing was stored.
    assert_eq!(count(app, "ServiceRequest?status=active").await, 0);
    assert_eq!(count(app, "Task?status=requested").await, 0);
    assert_eq!(app.get("Patient/p1").await.status(), 404);
    // Malformed requests are 4xx.
    assert_eq!(post("Patient/$validate", json!([1])).await.unwrap().status(), 400);
    assert_eq!(post("Patient/$validate", good.clone()).await.unwrap().status(), 400);
    let other_id = json!({"resourceType": "Patient", "id": "p2"});
    assert_eq!(post("Patient/p1/$validate", other_id).await.unwrap().status(), 400);
    assert_eq!(post("Nope/$validate", good.clone()).await.unwrap().status(), 404);
    // It needs read or create on the type.
    let reader = common::register_client(app.running(), "patients-only", None, "system/Patient.rs").await;
    let r = common::bearer_client(&reader.token)
        .post(app.url("ServiceRequest/$validate"))
        .header("content-type", "application/fhir+json")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // And the CapabilityStatement says so.
    let cs = json(app.get("metadata").await).await;
    let sr = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "ServiceRequest")
        .unwrap()
        .clone();
    assert_eq!(sr["operation"][0]["name"], "validate");
}

on_both_backends!(complete_prescription, a_complete_prescription_is_accepted);
on_both_backends!(wrong_ins_key, a_wrong_ins_key_refuses_the_whole_prescription);
on_both_backends!(rpps_and_siret, identity_rules_of_professionals_and_organisations);
on_both_backends!(ins_only_when_qualified, an_ins_travels_only_with_a_qualified_identity);
on_both_backends!(prescription_profile, the_prescription_profile_is_enforced);
on_both_backends!(assessment_unit, an_assessment_in_the_wrong_unit_is_refused);
on_both_backends!(
    invalid_third_entry,
    a_transaction_with_an_invalid_third_entry_stores_nothing
);
on_both_backends!(validate, validate_operation);
