//! The caller is the author: on the demo territory, a GP practice and an
//! MSS try to write in another organisation's name — on /fhir, in a
//! transaction, through the flat API and its CSV — and are refused at the
//! element that names the other; writing as themselves, as a professional
//! with their Pro Santé Connect token, or as the operator, works.

#![allow(clippy::unwrap_used)]

mod common;

use apa_gateway::config::Config;
use apa_gateway::demo;
use common::apa::{body_weight, prescription};
use common::psc::{AUDIENCE, ISSUER};
use common::{TestApp, bearer_client, json, register_client};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ASSESSMENT: &str = include_str!("../fixtures/flat/assessment.json");
const ASSESSMENTS_CSV: &str = include_str!("../fixtures/flat/assessments.csv");
const SIRET_BOUGER: &str = "88765432500018";
const SIRET_VILAINE: &str = "81122334600016";
const SIRET_COLOMBIER: &str = "84512379300018";

async fn client_of(app: &TestApp, organization: &str) -> Client {
    let c = register_client(app.running(), organization, Some(organization), "system/*.cruds").await;
    bearer_client(&c.token)
}

fn flat_url(app: &TestApp, path: &str) -> String {
    format!("{}/apa/v1/{path}", app.base.trim_end_matches("/fhir"))
}

async fn post_flat(app: &TestApp, client: &Client, path: &str, content_type: &str, body: String) -> Response {
    client
        .post(flat_url(app, path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// The status, and the code and location of the first issue.
async fn refusal(r: Response) -> (StatusCode, String, String) {
    let status = r.status();
    let oo = json(r).await;
    let at = oo["issue"][0]["expression"][0].as_str().unwrap_or_default().to_string();
    (
        status,
        oo["issue"][0]["code"].as_str().unwrap_or_default().to_string(),
        at,
    )
}

fn performed_by(mut obs: Value, who: &str) -> Value {
    obs["performer"] = json!([{"reference": who}]);
    obs
}

async fn a_gp_practice_cannot_prescribe_in_another_practices_name(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let colombier = client_of(app, "cabinet-colombier").await;
    let cesson = client_of(app, "msp-cesson").await;

    // Cabinet du Colombier prescribes for its patient Solène Guillou in
    // Dr Riou's name (MSP de Cesson).
    let forged = prescription("Patient/patient-guillou", "PractitionerRole/dr-riou-msp-cesson");
    let r = app.send_as(&colombier, Method::POST, "ServiceRequest", &forged).await;
    assert_eq!(
        refusal(r).await,
        (
            StatusCode::FORBIDDEN,
            "forbidden".into(),
            "ServiceRequest.requester".into()
        )
    );
    // Nothing was stored, and Cesson's compartment did not gain her.
    let r = app
        .send_as(&cesson, Method::GET, "Patient/patient-guillou", &Value::Null)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let found = json(app.get("ServiceRequest?subject=Patient/patient-guillou").await).await;
    assert_eq!(found["entry"].as_array().map_or(0, Vec::len), 0, "{found}");

    // Dr Riou as a Practitioner alone, without a role at the practice: refused too.
    let forged = prescription("Patient/patient-guillou", "Practitioner/dr-riou");
    let r = app.send_as(&colombier, Method::POST, "ServiceRequest", &forged).await;
    assert_eq!(refusal(r).await.2, "ServiceRequest.requester");

    // In Dr Lebreton's name (its own physician), or as the Practitioner who
    // practises there, it is the practice's prescription.
    let own = prescription("Patient/patient-guillou", "PractitionerRole/dr-lebreton-colombier");
    let r = app.send_as(&colombier, Method::POST, "ServiceRequest", &own).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let own = prescription("Patient/patient-guillou", "Practitioner/dr-le-goff");
    let r = app.send_as(&colombier, Method::POST, "ServiceRequest", &own).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // A new role at its own practice, written in the same transaction, is its own too.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:5e0c7a2e-5b0e-4c55-9a8c-1f7f3c1a0001",
         "resource": {"resourceType": "PractitionerRole", "active": true,
                      "practitioner": {"reference": "Practitioner/dr-le-goff"},
                      "organization": {"reference": "Organization/cabinet-colombier"}},
         "request": {"method": "POST", "url": "PractitionerRole"}},
        {"resource": prescription("Patient/patient-guillou", "urn:uuid:5e0c7a2e-5b0e-4c55-9a8c-1f7f3c1a0001"),
         "request": {"method": "POST", "url": "ServiceRequest"}}
    ]});
    let r = app.send_as(&colombier, Method::POST, "", &bundle).await;
    assert_eq!(r.status(), StatusCode::OK, "{}", json(r).await);
    // …but not a role it writes at another practice.
    let mut bundle = bundle;
    bundle["entry"][0]["resource"]["organization"]["reference"] = json!("Organization/msp-cesson");
    let r = app.send_as(&colombier, Method::POST, "", &bundle).await;
    assert_eq!(refusal(r).await.2, "Bundle.entry[1].resource.requester");
}

async fn an_mss_cannot_record_an_assessment_in_another_mss_name(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let bouger = client_of(app, "mss-bouger-plus").await;

    // MSS Bouger+ records Nathalie Le Bihan's weight as Vilaine Active's.
    let forged = performed_by(
        body_weight("Patient/patient-le-bihan", 86.4),
        "Organization/mss-vilaine-active",
    );
    let r = app.send_as(&bouger, Method::POST, "Observation", &forged).await;
    assert_eq!(
        refusal(r).await,
        (
            StatusCode::FORBIDDEN,
            "forbidden".into(),
            "Observation.performer[0]".into()
        )
    );
    // A display alone cannot be checked: refused as well.
    let unnamed = performed_by(body_weight("Patient/patient-le-bihan", 86.4), "");
    let mut unnamed = unnamed;
    unnamed["performer"] = json!([{"display": "MSS Vilaine Active"}]);
    let r = app.send_as(&bouger, Method::POST, "Observation", &unnamed).await;
    assert_eq!(refusal(r).await.2, "Observation.performer[0]");

    // The same in a transaction, after one of its own: refused at that entry.
    let own = performed_by(
        body_weight("Patient/patient-le-bihan", 86.0),
        "Organization/mss-bouger-plus",
    );
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": own, "request": {"method": "POST", "url": "Observation"}},
        {"resource": forged, "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = app.send_as(&bouger, Method::POST, "", &bundle).await;
    assert_eq!(
        refusal(r).await,
        (
            StatusCode::FORBIDDEN,
            "forbidden".into(),
            "Bundle.entry[1].resource.performer[0]".into()
        )
    );
    let stored = json(app.get("Observation?subject=Patient/patient-le-bihan").await).await;
    assert_eq!(stored["entry"].as_array().map_or(0, Vec::len), 0, "nothing stored");

    // Its own assessment is stored.
    let r = app.send_as(&bouger, Method::POST, "Observation", &own).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // Updating it without naming anyone new is fine; naming Vilaine Active is not.
    let mut stored = json(r).await;
    stored["status"] = json!("amended");
    let id = stored["id"].as_str().unwrap().to_string();
    let r = app
        .send_as(&bouger, Method::PUT, &format!("Observation/{id}"), &stored)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut stored = json(r).await;
    stored["performer"] = json!([{"reference": "Organization/mss-vilaine-active"}]);
    let r = app
        .send_as(&bouger, Method::PUT, &format!("Observation/{id}"), &stored)
        .await;
    assert_eq!(refusal(r).await.2, "Observation.performer[0]");

    // The operator (the demo's loader, support) names anyone.
    let r = app
        .post(
            "Observation",
            &performed_by(
                body_weight("Patient/patient-le-bihan", 86.2),
                "Organization/mss-vilaine-active",
            ),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

async fn an_mss_cannot_post_its_exports_under_another_siret(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let bouger = client_of(app, "mss-bouger-plus").await;

    // Flat JSON under Vilaine Active's SIRET: refused at the field.
    let json_body = ASSESSMENT.replace(SIRET_BOUGER, SIRET_VILAINE);
    let r = post_flat(app, &bouger, "assessments", "application/json", json_body).await;
    let (status, code, at) = refusal(r).await;
    assert_eq!(
        (status, code.as_str(), at.as_str()),
        (StatusCode::FORBIDDEN, "forbidden", "$.mss.siret")
    );

    // The CSV export under Vilaine Active's SIRET: its rows are refused at
    // their SIRET cell (the export's other faulty rows with their own fault).
    let csv = ASSESSMENTS_CSV.replace(SIRET_BOUGER, SIRET_VILAINE);
    let r = post_flat(app, &bouger, "assessments", "text/csv", csv).await;
    assert!(r.status().is_client_error());
    let report = json(r).await;
    let issues = report["issue"].as_array().unwrap();
    let forbidden: Vec<&str> = issues
        .iter()
        .filter(|i| i["code"] == "forbidden")
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    assert!(!forbidden.is_empty(), "{report}");
    assert!(forbidden.iter().all(|at| at.ends_with("column siret_mss")), "{report}");
    assert_eq!(forbidden[0], "line 2, column siret_mss", "{report}");
    let stored = json(app.get("Observation?subject=Patient/patient-le-bihan").await).await;
    assert_eq!(stored["entry"].as_array().map_or(0, Vec::len), 0, "nothing stored");

    // Under its own SIRET, its export is taken.
    let r = post_flat(app, &bouger, "assessments", "application/json", ASSESSMENT.to_string()).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{}", json(r).await);
}

// --- A professional with a Pro Santé Connect token -------------------------

/// Dr Lebreton's idNatPs (fixtures/demo/territory.json).
const LEBRETON: &str = "899700314521";

fn psc_key() -> (EncodingKey, Jwk) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
    (key, jwk)
}

fn psc_token(key: &EncodingKey, id_nat_ps: &str, siret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "iat": now, "acr": "eidas1",
        "sub": format!("f:0f5ab7b0:{id_nat_ps}"), "preferred_username": id_nat_ps,
        "SubjectRefPro": {"exercices": [{"codeProfession": "10", "activities": [
            {"codeModeExercice": "L", "numeroSiretSite": siret, "numeroFinessSite": ""}]}]}
    });
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some("k1".into());
    encode(&h, &claims, key).unwrap()
}

fn psc(issuer_uri: &str) -> impl FnOnce(&mut Config) + use<> {
    common::psc::settings(issuer_uri, Some("user/*.cruds"))
}

async fn a_professional_prescribes_as_themselves(app: &TestApp, issuer: &MockServer) {
    demo::load(app.running()).await.unwrap();
    let (key, jwk) = psc_key();
    Mock::given(method("GET"))
        .and(path("/certs"))
        .respond_with(ResponseTemplate::new(200).set_body_json(JwkSet { keys: vec![jwk] }))
        .mount(issuer)
        .await;
    register_client(
        app.running(),
        "cabinet-colombier",
        Some(SIRET_COLOMBIER),
        "system/*.cruds",
    )
    .await;
    let lebreton = bearer_client(&psc_token(&key, LEBRETON, SIRET_COLOMBIER));

    // Dr Lebreton prescribes in her own name: her role at the practice, or herself.
    for requester in ["PractitionerRole/dr-lebreton-colombier", "Practitioner/dr-lebreton"] {
        let own = prescription("Patient/patient-guillou", requester);
        let r = app.send_as(&lebreton, Method::POST, "ServiceRequest", &own).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{requester}: {}", json(r).await);
    }
    // Not in the name of her colleague at the same practice.
    for requester in ["PractitionerRole/dr-le-goff-colombier", "Practitioner/dr-le-goff"] {
        let forged = prescription("Patient/patient-guillou", requester);
        let r = app.send_as(&lebreton, Method::POST, "ServiceRequest", &forged).await;
        assert_eq!(refusal(r).await.2, "ServiceRequest.requester", "{requester}");
    }
}

on_both_backends!(
    gp_prescribes_in_another_practices_name,
    a_gp_practice_cannot_prescribe_in_another_practices_name
);
on_both_backends!(
    mss_records_in_another_mss_name,
    an_mss_cannot_record_an_assessment_in_another_mss_name
);
on_both_backends!(
    mss_exports_under_another_siret,
    an_mss_cannot_post_its_exports_under_another_siret
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn professional_as_themselves_sqlite() {
    let issuer = MockServer::start().await;
    let app = common::spawn_app_with(common::Backend::Sqlite, psc(&issuer.uri())).await;
    a_professional_prescribes_as_themselves(&app, &issuer).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn professional_as_themselves_postgres() {
    let issuer = MockServer::start().await;
    let app = common::spawn_app_with(common::Backend::Postgres, psc(&issuer.uri())).await;
    a_professional_prescribes_as_themselves(&app, &issuer).await;
    app.stop().await;
}
