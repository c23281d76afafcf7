//! The flat API `/apa/v1` along the pathway, on the demo territory: the GP
//! software without FHIR prescribes, the MSS software posts its assessment
//! export, its attendance export and the outcomes; what is wrong in the
//! input is refused with its location, and every request is idempotent.

#![allow(clippy::unwrap_used)]

mod common;

use apa_gateway::demo;
use common::{TestApp, bearer_client, json, register_client};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};

const PRESCRIPTION: &str = include_str!("../fixtures/flat/prescription.json");
const ASSESSMENT: &str = include_str!("../fixtures/flat/assessment.json");
const ASSESSMENTS_CSV: &str = include_str!("../fixtures/flat/assessments.csv");
const ATTENDANCE_CSV: &str = include_str!("../fixtures/flat/attendance.csv");
const OUTCOME: &str = include_str!("../fixtures/flat/outcome.json");

fn flat_url(app: &TestApp, path: &str) -> String {
    format!("{}/apa/v1/{path}", app.base.trim_end_matches("/fhir"))
}

async fn post(app: &TestApp, path: &str, content_type: &str, body: &str, key: Option<&str>) -> Response {
    let mut r = app
        .client
        .post(flat_url(app, path))
        .header("content-type", content_type)
        .body(body.to_string());
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    r.send().await.unwrap()
}

async fn post_json(app: &TestApp, path: &str, body: &Value) -> Response {
    post(app, path, "application/json", &body.to_string(), None).await
}

/// The stored resources a response lists, of one type.
fn ids(body: &Value, rtype: &str) -> Vec<String> {
    body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resourceType"] == rtype)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

async fn read(app: &TestApp, rtype: &str, id: &str) -> Value {
    let r = app.get(&format!("{rtype}/{id}")).await;
    assert_eq!(r.status(), StatusCode::OK, "{rtype}/{id}");
    json(r).await
}

async fn count(app: &TestApp, query: &str) -> usize {
    let b = json(app.get(&format!("{query}&_total=accurate")).await).await;
    b["total"].as_u64().unwrap() as usize
}

/// The first issue's location and message of a refusal.
fn first_issue(body: &Value) -> (String, String) {
    let i = &body["issue"][0];
    (
        i["expression"][0].as_str().unwrap_or_default().to_string(),
        i["diagnostics"].as_str().unwrap_or_default().to_string(),
    )
}

async fn the_gp_software_prescribes_without_fhir(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    // Dr Riou's software sends the prescription for Jean-Yves Tanguy.
    let r = post(app, "prescriptions", "application/json", PRESCRIPTION, None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body = json(r).await;
    let sr_id = &ids(&body, "ServiceRequest")[0];
    assert_eq!(body["resources"][0]["status"], "created");
    assert_eq!(body["resources"][0]["source"], "$");
    let sr = read(app, "ServiceRequest", sr_id).await;
    // The patient found by INS, the prescriber by RPPS, the chosen MSS by SIRET.
    assert_eq!(sr["subject"]["reference"], "Patient/patient-tanguy");
    assert_eq!(sr["requester"]["reference"], "Practitioner/dr-riou");
    assert_eq!(sr["performer"][0]["reference"], "Organization/mss-vilaine-active");
    assert_eq!(
        sr["meta"]["profile"][0],
        "https://apa-gateway.fr/fhir/StructureDefinition/apa-prescription"
    );
    assert_eq!(sr["occurrenceTiming"]["repeat"]["frequency"], 2);

    // Sent again without a key: found by its number, nothing new.
    let again = post(app, "prescriptions", "application/json", PRESCRIPTION, None).await;
    assert_eq!(again.status(), StatusCode::OK);
    let again = json(again).await;
    assert_eq!(&ids(&again, "ServiceRequest"), std::slice::from_ref(sr_id));
    assert_eq!(again["resources"][0]["status"], "existing");
    assert_eq!(count(app, "ServiceRequest?subject=Patient/patient-tanguy").await, 1);

    // A patient the gateway does not know: refused where the input names them.
    let mut unknown: Value = serde_json::from_str(PRESCRIPTION).unwrap();
    unknown["patient"]["ins"] = json!("189127512501282");
    unknown["source_id"] = json!("ORD-2026-0002");
    let r = post_json(app, "prescriptions", &unknown).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let (at, msg) = first_issue(&json(r).await);
    assert_eq!(at, "$.patient.ins");
    assert!(msg.contains("matches no resources"), "{msg}");

    // Faults of the input itself, all listed with their locations.
    let mut bad: Value = serde_json::from_str(PRESCRIPTION).unwrap();
    bad["duration_months"] = json!(12);
    bad["prescriber"]["rpps"] = json!("99700314936");
    let r = post_json(app, "prescriptions", &bad).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(r).await;
    let at: Vec<&str> = body["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    assert_eq!(at, ["$.prescriber.rpps", "$.duration_months"]);
    // Not JSON at all: refused, located by line and column.
    let r = post(app, "prescriptions", "application/json", "{\"patient\": ", None).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(first_issue(&json(r).await).0.starts_with("line 1, column"));
    let r = post(app, "prescriptions", "text/csv", "a;b\n1;2\n", None).await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

/// A GP practice's own client: its compartment and scopes apply as on /fhir.
async fn a_gp_practice_prescribes_for_its_patient_only(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let scope = "system/*.rs system/Patient.cru system/ServiceRequest.cru system/Task.cru";
    let colombier = register_client(app.running(), "cabinet-colombier", Some("cabinet-colombier"), scope).await;
    let gp = bearer_client(&colombier.token);
    let send = async |body: &Value| {
        gp.post(flat_url(app, "prescriptions"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    };
    // Dr Lebreton prescribes a new programme to Nathalie Le Bihan, whom the
    // practice referred before.
    let mut again: Value = serde_json::from_str(PRESCRIPTION).unwrap();
    again["source_id"] = json!("COL-2026-118");
    again["patient"]["ins"] = json!("268053523812380");
    again["prescriber"]["rpps"] = json!("99700314521");
    again["performer"]["siret"] = json!("88765432500018");
    let r = send(&again).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = &ids(&json(r).await, "ServiceRequest")[0];
    assert_eq!(
        read(app, "ServiceRequest", id).await["subject"]["reference"],
        "Patient/patient-le-bihan"
    );
    // Jean-Yves Tanguy is no patient of this practice: not found for it.
    let r = send(&serde_json::from_str(PRESCRIPTION).unwrap()).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(first_issue(&json(r).await).0, "$.patient.ins");
    // Its scopes do not cover Observations: an assessment is refused.
    let r = gp
        .post(flat_url(app, "assessments"))
        .header("content-type", "application/json")
        .body(ASSESSMENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

async fn the_mss_posts_its_assessment_export(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    // MSS Bouger+ exports its initial assessments: weight in kg and height
    // in cm (or m), blood pressure in cmHg, decimal commas, some bad rows.
    let r = post(app, "assessments", "text/csv; charset=utf-8", ASSESSMENTS_CSV, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let report = json(r).await;
    assert_eq!(report["rows"], 14);
    assert_eq!(report["accepted"], 11);
    let refused: Vec<(u64, &str)> = report["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["line"].as_u64().unwrap(), x["location"].as_str().unwrap()))
        .collect();
    assert_eq!(
        refused,
        [
            (11, "line 11, column unite"),
            (12, "line 12, column valeur"),
            (15, "line 15, column ins")
        ]
    );
    let unit = &report["refused"][0]["message"];
    assert!(unit.as_str().unwrap().contains("unit 'fois' is not accepted"), "{unit}");
    assert!(unit.as_str().unwrap().contains("reps"), "{unit}");

    // Observations in canonical UCUM, claiming their profiles.
    let observations = ids(&report, "Observation");
    let mut by_code = std::collections::HashMap::new();
    for id in &observations {
        let o = read(app, "Observation", id).await;
        assert_eq!(o["status"], "final");
        assert!(o["meta"]["profile"][0].as_str().unwrap().contains("/apa-obs-"));
        let code = o["code"]["coding"][0]["code"].as_str().unwrap().to_string();
        by_code.entry(code).or_insert_with(Vec::new).push(o);
    }
    let le_bihan = |o: &&Value| o["subject"]["reference"] == "Patient/patient-le-bihan";
    let weight = by_code["29463-7"].iter().find(le_bihan).unwrap();
    assert_eq!(
        weight["valueQuantity"],
        json!({"value": 86.4, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"})
    );
    assert_eq!(weight["performer"][0]["reference"], "Organization/mss-bouger-plus");
    let bp = &by_code["85354-9"][0];
    assert_eq!(bp["component"][0]["valueQuantity"]["value"], json!(140));
    assert_eq!(bp["component"][1]["valueQuantity"]["value"], json!(88));
    assert_eq!(bp["component"][1]["valueQuantity"]["code"], "mm[Hg]");
    // The BMI derived from weight and height, for each patient: 86.4 kg at
    // 162 cm, 64 kg at 1,58 m.
    let bmis = &by_code["39156-5"];
    assert_eq!(bmis.len(), 2);
    let bmi = bmis.iter().find(le_bihan).unwrap();
    assert_eq!(bmi["valueQuantity"]["value"], json!(32.9));
    assert_eq!(bmi["valueQuantity"]["code"], "kg/m2");
    assert_eq!(
        bmi["derivedFrom"][0]["reference"],
        format!("Observation/{}", weight["id"].as_str().unwrap())
    );
    let other = bmis.iter().find(|o| !le_bihan(o)).unwrap();
    assert_eq!(other["valueQuantity"]["value"], json!(25.6));
    let grip = &by_code["GRIP-L"][0];
    assert_eq!(grip["valueQuantity"]["value"], json!(24.5));

    // The same export again: every row found, nothing stored twice.
    let before = count(app, "Observation?status=final").await;
    let again = json(post(app, "assessments", "text/csv", ASSESSMENTS_CSV, None).await).await;
    assert_eq!(again["accepted"], 11);
    assert!(
        again["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "existing")
    );
    assert_eq!(count(app, "Observation?status=final").await, before);
}

async fn an_assessment_in_json_is_converted_and_bad_values_are_refused(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let r = post(app, "assessments", "application/json", ASSESSMENT, None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body = json(r).await;
    // 15 tests, systolic and diastolic in one Observation, plus the BMI.
    assert_eq!(ids(&body, "Observation").len(), 15);
    let warnings: Vec<&str> = body["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["message"].as_str().unwrap())
        .collect();
    assert!(
        warnings.contains(&"1.62 m converted to 162 cm (body height)"),
        "{warnings:?}"
    );
    assert!(warnings.iter().any(|w| w.starts_with("BMI 32.9")), "{warnings:?}");
    let height = body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["source"] == "$.tests[1]")
        .unwrap();
    let height = read(app, "Observation", height["id"].as_str().unwrap()).await;
    assert_eq!(height["valueQuantity"]["value"], json!(162));
    assert_eq!(height["valueQuantity"]["code"], "cm");
    assert_eq!(height["note"][0]["text"], "Valeur transmise : 1.62 m");

    // An unknown unit: refused, naming it and the accepted ones.
    let mut bad: Value = serde_json::from_str(ASSESSMENT).unwrap();
    bad["source_id"] = json!("BIL-2026-0500");
    bad["tests"][2]["unit"] = json!("pouces");
    let r = post_json(app, "assessments", &bad).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = json(r).await;
    let (at, msg) = first_issue(&body);
    assert_eq!(at, "$.tests[2].unit");
    assert_eq!(body["issue"][0]["code"], "code-invalid");
    assert!(
        msg.starts_with("unit 'pouces' is not accepted for waist circumference (accepted: m, cm, mm"),
        "{msg}"
    );
    // A value out of plausible bounds (a weight in grams labelled kg).
    let mut bad: Value = serde_json::from_str(ASSESSMENT).unwrap();
    bad["tests"][0]["value"] = json!(86400);
    let r = post_json(app, "assessments", &bad).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let (at, msg) = first_issue(&json(r).await);
    assert_eq!(at, "$.tests[0].value");
    assert_eq!(msg, "86400 kg is not a plausible body weight (expected 10 to 350 kg)");
    // Nothing of the refused requests was stored.
    assert_eq!(count(app, "Observation?status=final").await, 15);
}

async fn the_same_idempotency_key_gives_the_same_answer_once(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let mut first: Value = serde_json::from_str(ASSESSMENT).unwrap();
    first["source_id"] = Value::Null;
    let body = first.to_string();
    let a = post(app, "assessments", "application/json", &body, Some("bilan-42")).await;
    assert_eq!(a.status(), StatusCode::CREATED);
    assert!(a.headers().get("idempotent-replayed").is_none());
    let a = json(a).await;
    let b = post(app, "assessments", "application/json", &body, Some("bilan-42")).await;
    assert_eq!(b.status(), StatusCode::CREATED);
    assert_eq!(b.headers()["idempotent-replayed"], "true");
    assert_eq!(json(b).await, a);
    assert_eq!(count(app, "Observation?status=final").await, 15);

    // The same key with another payload: 409, nothing written.
    let mut other = first.clone();
    other["tests"][0]["value"] = json!(87);
    let c = post_json_with_key(app, &other, "bilan-42").await;
    assert_eq!(c.status(), StatusCode::CONFLICT);
    assert_eq!(first_issue(&json(c).await).0, "Idempotency-Key");
    assert_eq!(count(app, "Observation?status=final").await, 15);

    // Keys are per client: another client's same key is its own. Its
    // request names the same assessment (same patient, MSS and date): the
    // stored Observations are found, not changed (a correction is a FHIR
    // update), and the response says so.
    let mss = register_client(app.running(), "mss-flat", None, "system/*.cruds operator").await;
    let r = bearer_client(&mss.token)
        .post(flat_url(app, "assessments"))
        .header("content-type", "application/json")
        .header("idempotency-key", "bilan-42")
        .body(other.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = json(r).await;
    assert_eq!(ids(&r, "Observation"), ids(&a, "Observation"));
    assert!(r["warnings"].as_array().unwrap().iter().any(|w| {
        w["location"] == "$.tests[0]"
            && w["message"]
                .as_str()
                .unwrap()
                .starts_with("already stored as Observation/")
    }));
    // A key that is not one.
    let bad = post(app, "assessments", "application/json", &body, Some(" ")).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

/// The MSS software, timing out, sends the same assessment several times at
/// once under one key: one request stores it with its key's record in the
/// same transaction; every other one answers with that record.
async fn concurrent_retries_under_one_key_get_one_answer(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let send = || post(app, "assessments", "application/json", ASSESSMENT, Some("bilan-77"));
    let answers = futures_util::future::join_all((0..6).map(|_| send())).await;
    let mut bodies = Vec::new();
    let mut first_hand = 0;
    for r in answers {
        assert_eq!(r.status(), StatusCode::CREATED);
        if r.headers().get("idempotent-replayed").is_none() {
            first_hand += 1;
        }
        bodies.push(json(r).await);
    }
    assert_eq!(
        first_hand, 1,
        "one request ran, the others were answered from its record"
    );
    assert!(bodies.iter().all(|b| *b == bodies[0]));
    assert_eq!(count(app, "Observation?status=final").await, 15);
}

async fn post_json_with_key(app: &TestApp, body: &Value, key: &str) -> Response {
    post(app, "assessments", "application/json", &body.to_string(), Some(key)).await
}

async fn the_mss_posts_attendance_then_the_outcome(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let r = post(app, "attendance", "text/csv", ATTENDANCE_CSV, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let report = json(r).await;
    assert_eq!(report["accepted"], 5);
    assert_eq!(report["refused"][0]["location"], "line 7, column present");
    let episode = ids(&report, "EpisodeOfCare");
    assert_eq!(episode.len(), 1);
    let eoc = read(app, "EpisodeOfCare", &episode[0]).await;
    assert_eq!(eoc["patient"]["reference"], "Patient/patient-le-bihan");
    assert_eq!(eoc["managingOrganization"]["reference"], "Organization/mss-bouger-plus");
    assert_eq!(
        eoc["referralRequest"][0]["reference"],
        "ServiceRequest/prescription-le-bihan"
    );
    let sessions = ids(&report, "Encounter");
    assert_eq!(sessions.len(), 5);
    let mut statuses = Vec::new();
    for id in &sessions {
        let e = read(app, "Encounter", id).await;
        assert_eq!(
            e["episodeOfCare"][0]["reference"],
            format!("EpisodeOfCare/{}", episode[0])
        );
        statuses.push(e["status"].as_str().unwrap().to_string());
    }
    assert_eq!(statuses, ["finished", "finished", "cancelled", "finished", "finished"]);

    // One more session in JSON: the programme is found, not created again.
    let more = json!({
        "patient": {"ins": "268053523812380", "ins_kind": "TEST"},
        "mss": {"siret": "88765432500018"},
        "programme": {"source_id": "PRG-2026-017", "start": "09/03/2026", "prescription": "prescription-le-bihan"},
        "sessions": [{"source_id": "SEA-0107", "date": "2026-04-02", "minutes": 60, "attended": true}]
    });
    let r = post_json(app, "attendance", &more).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body = json(r).await;
    assert_eq!(ids(&body, "EpisodeOfCare"), episode);
    assert_eq!(body["resources"][0]["status"], "existing");

    // The outcome of the programme and its 6-month follow-up.
    let r = post(app, "outcomes", "application/json", OUTCOME, None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let body = json(r).await;
    assert_eq!(ids(&body, "EpisodeOfCare"), episode);
    let mut codes = Vec::new();
    for id in ids(&body, "Observation") {
        let o = read(app, "Observation", &id).await;
        assert_eq!(
            o["extension"][0]["valueReference"]["reference"],
            format!("EpisodeOfCare/{}", episode[0])
        );
        codes.push(o["code"]["coding"][0]["code"].as_str().unwrap().to_string());
        if codes.last().unwrap() == "ATTEND-RATE" {
            assert_eq!(o["valueQuantity"]["value"], json!(83.3));
            assert_eq!(
                o["effectivePeriod"],
                json!({"start": "2026-03-09", "end": "2026-06-05"})
            );
        }
    }
    assert_eq!(codes, ["ORIENTATION", "ATTEND-RATE", "ADHERENCE-6M"]);
    // A follow-up without its answer.
    let r = post_json(
        app,
        "outcomes",
        &json!({
            "patient": {"ins": "268053523812380", "ins_kind": "TEST"},
            "mss": {"siret": "88765432500018"},
            "programme": {"source_id": "PRG-2026-017", "start": "09/03/2026", "prescription": "prescription-le-bihan"},
            "follow_up_6m": {"date": "2026-12-07"}
        }),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(first_issue(&json(r).await).0, "$.follow_up_6m.active");

    // A programme naming a prescription the gateway does not hold.
    let mut wrong = more.clone();
    wrong["programme"]["source_id"] = json!("PRG-2026-999");
    wrong["programme"]["prescription"] = json!("ServiceRequest/no-such-prescription");
    let r = post_json(app, "attendance", &wrong).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(first_issue(&json(r).await).0, "$.programme.prescription");
    // In a CSV, at its cell.
    let csv = ATTENDANCE_CSV.replace("prescription-le-bihan", "no-such-prescription");
    let report = json(post(app, "attendance", "text/csv", &csv, None).await).await;
    assert_eq!(report["issue"][0]["expression"][0], "line 2, column prescription");
}

/// Every operation the OpenAPI document lists answers (a POST with an
/// empty object is refused for its content, never 404 or 405); the flat
/// API needs a token like /fhir, its document does not.
async fn the_openapi_document_matches_the_routes(app: &TestApp) {
    let r = app.anonymous.get(flat_url(app, "openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc = json(r).await;
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 5);
    for (path, ops) in paths {
        let url = format!("{}{path}", app.base.trim_end_matches("/fhir"));
        for method in ops.as_object().unwrap().keys() {
            let r = match method.as_str() {
                "get" => app.client.get(&url).send().await.unwrap(),
                "post" => {
                    let r = app
                        .client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body("{}")
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{method} {path}");
                    let anonymous = app.anonymous.post(&url).body("{}").send().await.unwrap();
                    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{path}");
                    r
                }
                other => panic!("{other} {path}"),
            };
            assert!(r.status().is_success() || r.status().is_client_error(), "{path}");
        }
    }
    let r = app.client.get(flat_url(app, "nothing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// The flat API is audited like the FHIR API: one AuditEvent per write.
async fn a_flat_request_is_audited(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let auditor = register_client(app.running(), "auditor", None, "system/AuditEvent.rs operator").await;
    let events = async || {
        let r = bearer_client(&auditor.token)
            .get(format!("{}/AuditEvent?subtype=transaction&_count=1000", app.base))
            .send()
            .await
            .unwrap();
        json(r).await["entry"].as_array().map_or(0, Vec::len)
    };
    let before = events().await;
    let r = post(app, "prescriptions", "application/json", PRESCRIPTION, None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(events().await, before + 1);
}

on_both_backends!(gp_prescribes, the_gp_software_prescribes_without_fhir);
on_both_backends!(gp_practice_compartment, a_gp_practice_prescribes_for_its_patient_only);
on_both_backends!(mss_assessment_export, the_mss_posts_its_assessment_export);
on_both_backends!(
    assessment_json,
    an_assessment_in_json_is_converted_and_bad_values_are_refused
);
on_both_backends!(idempotency_key, the_same_idempotency_key_gives_the_same_answer_once);
on_both_backends!(concurrent_key, concurrent_retries_under_one_key_get_one_answer);
on_both_backends!(attendance_and_outcome, the_mss_posts_attendance_then_the_outcome);
on_both_backends!(openapi, the_openapi_document_matches_the_routes);
on_both_backends!(audited, a_flat_request_is_audited);

/// `apa-gateway import` on a temporary SQLite database holding the demo
/// territory: the MSS export is loaded with a summary of the rows accepted
/// and refused, each refusal with its reason; loading it again stores
/// nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_command_loads_an_mss_export() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/import.db", dir.path().display());
    let app = common::spawn_app_with(common::Backend::Sqlite, |c| c.database_url = url.clone()).await;
    demo::load(app.running()).await.unwrap();
    app.stop().await;

    let import = |file: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_apa-gateway"))
            .current_dir(dir.path())
            .args([
                "import",
                &format!("{}/fixtures/flat/{file}", env!("CARGO_MANIFEST_DIR")),
            ])
            .env("APA_DATABASE_URL", &url)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (ok, out, err) = import("assessments.csv");
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].ends_with("assessments.csv: 14 rows, 11 accepted, 3 refused; 12 resources created, 0 already stored"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("refused line 11, column unite: unit 'fois' is not accepted"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("refused line 12, column valeur: 140 {score} is not a plausible"),
        "{out}"
    );
    assert!(lines[3].starts_with("refused line 15, column ins: "), "{out}");
    assert_eq!(lines.len(), 4);
    // The progress bar is not drawn when stderr is not a terminal.
    assert!(err.is_empty(), "{err}");

    let (ok, out, _) = import("assessments.csv");
    assert!(ok);
    assert!(
        out.lines()
            .next()
            .unwrap()
            .ends_with("11 accepted, 3 refused; 0 resources created, 12 already stored"),
        "{out}"
    );

    // The attendance export is told apart by its header.
    let (ok, out, _) = import("attendance.csv");
    assert!(ok);
    assert!(
        out.starts_with(&format!(
            "{}/fixtures/flat/attendance.csv: 6 rows, 5 accepted, 1 refused; 6 resources created",
            env!("CARGO_MANIFEST_DIR")
        )),
        "{out}"
    );

    let (ok, _, err) = import("missing.csv");
    assert!(!ok);
    assert!(err.contains("missing.csv"), "{err}");
}
