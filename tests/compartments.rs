//! Organisation compartments: a GP practice refers a patient to a Maison
//! Sport-Santé; another MSS must not learn anything about that patient, by
//! any route, until a referral makes it part of the patient's care.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestApp, bearer_client, json, register_client};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const INS: &str = "urn:oid:1.2.250.1.213.1.4.10";

/// A client acting for one organisation.
struct Org {
    http: Client,
    base: String,
}

impl Org {
    async fn new(app: &TestApp, client_id: &str, organization: &str) -> Org {
        let c = register_client(app.running(), client_id, Some(organization), "system/*.cruds").await;
        Org {
            http: bearer_client(&c.token),
            base: app.base.clone(),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}/{path}", self.base)).send().await.unwrap()
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .request(method, format!("{}/{path}", self.base))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// The ids of the resources of `rtype` in a search result (matches and
    /// included alike).
    async fn found(&self, query: &str, rtype: &str) -> Vec<String> {
        let r = self.get(query).await;
        assert_eq!(r.status(), StatusCode::OK, "{query}");
        let bundle = json(r).await;
        bundle["entry"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e["resource"]["resourceType"] == rtype)
                    .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

struct Territory {
    gp: Org,
    mss_a: Org,
    mss_b: Org,
    patient: String,
    referral: String,
    task: String,
}

/// Two MSS and a GP practice; the GP prescribes APA to a patient and
/// addresses the referral to MSS A.
async fn a_gp_refers_a_patient_to_mss_a(app: &TestApp) -> Territory {
    for (id, name) in [
        ("cabinet-dupont", "Cabinet du Dr Dupont"),
        ("mss-a", "Maison Sport-Santé A"),
        ("mss-b", "Maison Sport-Santé B"),
    ] {
        let r = app
            .put(
                &format!("Organization/{id}"),
                &json!({"resourceType": "Organization", "id": id, "name": name}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    // Dr Dupont prescribes for the practice.
    let r = app
        .put(
            "PractitionerRole/dr-dupont",
            &json!({"resourceType": "PractitionerRole", "id": "dr-dupont",
                    "practitioner": {"display": "Dr Dupont"},
                    "organization": {"reference": "Organization/cabinet-dupont"}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let gp = Org::new(app, "gp-software", "cabinet-dupont").await;
    let mss_a = Org::new(app, "mss-a-software", "mss-a").await;
    let mss_b = Org::new(app, "mss-b-software", "Organization/mss-b").await;
    let prescription = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:8c1d0f46-0001-4c55-9a0e-000000000001",
             // A qualified identity carries all its traits with the INS.
             "resource": {"resourceType": "Patient", "extension": [common::apa::qualified_identity(),
                              {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                               "valueAddress": {"extension": [{"url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code",
                                                               "valueCoding": {"code": "75056"}}]}}],
                          "identifier": [{"system": INS, "value": "280017512345610"}],
                          "name": [{"use": "official", "family": "Martin", "given": ["Claire"]}],
                          "gender": "female", "birthDate": "1980-01-15"},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:8c1d0f46-0001-4c55-9a0e-000000000002",
             "resource": common::apa::prescription(
                 "urn:uuid:8c1d0f46-0001-4c55-9a0e-000000000001", "PractitionerRole/dr-dupont"),
             "request": {"method": "POST", "url": "ServiceRequest"}},
            {"fullUrl": "urn:uuid:8c1d0f46-0001-4c55-9a0e-000000000003",
             "resource": common::apa::referral(
                 "urn:uuid:8c1d0f46-0001-4c55-9a0e-000000000002", "urn:uuid:8c1d0f46-0001-4c55-9a0e-000000000001",
                 "Organization/cabinet-dupont", "Organization/mss-a"),
             "request": {"method": "POST", "url": "Task"}}
        ]
    });
    let r = gp.send(reqwest::Method::POST, "", &prescription).await;
    assert_eq!(r.status(), StatusCode::OK);
    let bundle = json(r).await;
    let id = |i: usize| {
        bundle["entry"][i]["response"]["location"]
            .as_str()
            .unwrap()
            .split('/')
            .nth(1)
            .unwrap()
            .to_string()
    };
    Territory {
        patient: id(0),
        referral: id(1),
        task: id(2),
        gp,
        mss_a,
        mss_b,
    }
}

async fn the_referred_patient_is_seen_by_the_gp_and_the_mss_it_is_addressed_to(app: &TestApp) {
    let t = a_gp_refers_a_patient_to_mss_a(app).await;
    let patient = format!("Patient/{}", t.patient);
    assert_eq!(t.gp.get(&patient).await.status(), StatusCode::OK);
    assert_eq!(t.mss_a.get(&patient).await.status(), StatusCode::OK);
    assert_eq!(
        t.mss_a.get(&format!("ServiceRequest/{}", t.referral)).await.status(),
        StatusCode::OK
    );
    // The MSS records the initial assessment.
    let bilan = common::apa::body_weight(&patient, 82.5);
    let r = t.mss_a.send(reqwest::Method::POST, "Observation", &bilan).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(t.gp.found("Observation?code=29463-7", "Observation").await.len(), 1);
    // The operator sees everything.
    assert_eq!(app.get(&patient).await.status(), StatusCode::OK);
    // Organisations, practitioners… concern no patient: everyone sees them.
    assert_eq!(t.mss_b.get("Organization/mss-a").await.status(), StatusCode::OK);
}

async fn another_mss_learns_nothing_of_the_patient(app: &TestApp) {
    let t = a_gp_refers_a_patient_to_mss_a(app).await;
    let bilan = common::apa::body_weight(&format!("Patient/{}", t.patient), 82.5);
    assert_eq!(
        t.mss_a
            .send(reqwest::Method::POST, "Observation", &bilan)
            .await
            .status(),
        StatusCode::CREATED
    );
    let b = &t.mss_b;
    let p = &t.patient;
    // read, vread, history: absent.
    for path in [
        format!("Patient/{p}"),
        format!("Patient/{p}/_history/1"),
        format!("Patient/{p}/_history"),
        format!("ServiceRequest/{}", t.referral),
        format!("Task/{}", t.task),
    ] {
        let r = b.get(&path).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(json(r).await["resourceType"], "OperationOutcome");
    }
    // search, by every route that could lead to it.
    for (query, rtype) in [
        (format!("Patient?identifier={INS}|280017512345610"), "Patient"),
        ("Patient?family=martin".to_string(), "Patient"),
        (format!("Observation?subject=Patient/{p}"), "Observation"),
        ("Observation?subject:Patient.family=martin".to_string(), "Observation"),
        ("Patient?_has:Observation:subject:code=29463-7".to_string(), "Patient"),
        ("Organization?_id=mss-a&_revinclude=Task:owner".to_string(), "Task"),
        (
            "Organization?_id=cabinet-dupont&_revinclude=ServiceRequest:requester".to_string(),
            "ServiceRequest",
        ),
        (
            "Organization?_id=mss-a&_revinclude:iterate=Task:owner&_revinclude:iterate=ServiceRequest:subject"
                .to_string(),
            "ServiceRequest",
        ),
        (
            "Task?owner=Organization/mss-a&_include=Task:patient".to_string(),
            "Patient",
        ),
        ("Task?owner=Organization/mss-a".to_string(), "Task"),
        ("Patient?_total=accurate".to_string(), "Patient"),
        ("_history".to_string(), "Patient"),
        ("Observation/_history".to_string(), "Observation"),
    ] {
        assert!(b.found(&query, rtype).await.is_empty(), "{query} disclosed a {rtype}");
    }
    let r = b.get("Patient?_summary=count").await;
    assert_eq!(json(r).await["total"], 0);
    // a transaction or batch reads nothing more.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{p}")}},
        {"request": {"method": "GET", "url": format!("Observation?subject=Patient/{p}")}}
    ]});
    let r = json(b.send(reqwest::Method::POST, "", &batch).await).await;
    assert!(r["entry"][0]["response"]["status"].as_str().unwrap().starts_with("404"));
    assert_eq!(r["entry"][1]["resource"]["total"], 0);
    // and writes cannot reach it: no overwrite, no deletion, no data added.
    let r = b
        .send(
            reqwest::Method::PUT,
            &format!("Patient/{p}"),
            &json!({"resourceType": "Patient", "id": p, "name": [{"family": "Intrus"}]}),
        )
        .await;
    // Refused as any write its compartment does not admit: no hint the id exists.
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = b.http.delete(format!("{}/Patient/{p}", b.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = b.send(reqwest::Method::POST, "Observation", &bilan).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": bilan, "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = b.send(reqwest::Method::POST, "", &tx).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Each of these attempts is in the audit trail, as a failure naming the
    // patient: the operator's security officer finds MSS B's read of it.
    let officer = bearer_client(
        &register_client(app.running(), "security-officer", None, "system/AuditEvent.rs operator")
            .await
            .token,
    );
    let query = format!(
        "{}/AuditEvent?entity=Patient/{p}&subtype=read&outcome=4&agent:identifier=mss-b-software",
        app.base
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let found = json(officer.get(&query).send().await.unwrap()).await;
        if found["entry"].as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no AuditEvent of MSS B's refused read"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The patient is untouched.
    let r = json(app.get(&format!("Patient/{p}")).await).await;
    assert_eq!(r["meta"]["versionId"], "1");
    assert_eq!(
        app.get(&format!("Observation?subject=Patient/{p}&_summary=count"))
            .await
            .json::<Value>()
            .await
            .unwrap()["total"],
        1
    );
}

async fn a_referral_handed_over_opens_the_patient_to_the_new_mss(app: &TestApp) {
    let t = a_gp_refers_a_patient_to_mss_a(app).await;
    let patient = format!("Patient/{}", t.patient);
    // MSS A cannot take the patient in and hands the referral to MSS B.
    let task = json(t.mss_a.get(&format!("Task/{}", t.task)).await).await;
    let mut handed = task.clone();
    handed["owner"] = json!({"reference": "Organization/mss-b"});
    let r = t
        .mss_a
        .send(reqwest::Method::PUT, &format!("Task/{}", t.task), &handed)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(t.mss_b.get(&patient).await.status(), StatusCode::OK);
    // An MSS that owned the referral keeps seeing what it took part in.
    assert_eq!(t.mss_a.get(&patient).await.status(), StatusCode::OK);
}

async fn a_deleted_resource_stays_inside_its_compartment(app: &TestApp) {
    let t = a_gp_refers_a_patient_to_mss_a(app).await;
    let r =
        t.gp.http
            .delete(format!("{}/ServiceRequest/{}", t.gp.base, t.referral))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        t.gp.get(&format!("ServiceRequest/{}", t.referral)).await.status(),
        StatusCode::GONE
    );
    // Its history, with the patient reference, stays out of other hands.
    let path = format!("ServiceRequest/{}/_history/1", t.referral);
    assert_eq!(t.gp.get(&path).await.status(), StatusCode::OK);
    assert_eq!(t.mss_b.get(&path).await.status(), StatusCode::NOT_FOUND);
    assert!(
        t.mss_b
            .found("ServiceRequest/_history", "ServiceRequest")
            .await
            .is_empty()
    );
}

async fn a_client_without_organisation_sees_no_patient(app: &TestApp) {
    let t = a_gp_refers_a_patient_to_mss_a(app).await;
    let c = register_client(app.running(), "unaffiliated", None, "system/*.rs").await;
    let http = bearer_client(&c.token);
    let r = http
        .get(format!("{}/Patient/{}", app.base, t.patient))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http.get(format!("{}/Organization", app.base)).send().await.unwrap();
    assert_eq!(json(r).await["entry"].as_array().map(Vec::len), Some(3));
}

async fn an_organisation_registered_by_siret_acts_for_its_organization_resource(app: &TestApp) {
    let r = app
        .put(
            "Organization/mss-siret",
            &json!({"resourceType": "Organization", "id": "mss-siret",
                    "identifier": [{"system": "https://sirene.fr", "value": "12345678200010"}]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let gp = Org::new(app, "gp", "cabinet").await;
    let mss = Org::new(app, "mss-by-siret", "12345678200010").await;
    let p = json(
        gp.send(
            reqwest::Method::POST,
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Petit"}]}),
        )
        .await,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(mss.get(&format!("Patient/{p}")).await.status(), StatusCode::NOT_FOUND);
    // Dr Petit prescribes in the practice's name: his role there (AUTHORSHIP).
    let role = json!({"resourceType": "PractitionerRole", "practitioner": {"reference": "Practitioner/dr-petit"},
                      "organization": {"reference": "Organization/cabinet"}});
    let r = gp.send(reqwest::Method::POST, "PractitionerRole", &role).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let role = format!("PractitionerRole/{}", json(r).await["id"].as_str().unwrap());
    let prescription = common::apa::prescription(&format!("Patient/{p}"), &role);
    let r = gp.send(reqwest::Method::POST, "ServiceRequest", &prescription).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let sr = format!("ServiceRequest/{}", json(r).await["id"].as_str().unwrap());
    let task = common::apa::referral(
        &sr,
        &format!("Patient/{p}"),
        "Organization/cabinet",
        "Organization/mss-siret",
    );
    assert_eq!(
        gp.send(reqwest::Method::POST, "Task", &task).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(mss.get(&format!("Patient/{p}")).await.status(), StatusCode::OK);
}

const RECIPIENT_KIND: &str = "https://apa-gateway.fr/fhir/CodeSystem/recipient-kind";

async fn the_patient_opposes_sharing_with_the_cpts(app: &TestApp) {
    let t = a_gp_refers_a_patient_to_mss_a(app).await;
    let r = app
        .put(
            "Organization/cpts-est",
            &json!({"resourceType": "Organization", "id": "cpts-est", "name": "CPTS Est",
                    "type": [{"coding": [{"system": RECIPIENT_KIND, "code": "CPTS"}]}]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let cpts = Org::new(app, "cpts-software", "cpts-est").await;
    let patient = format!("Patient/{}", t.patient);
    // The GP asks the CPTS to coordinate the pathway.
    let coordination = common::apa::referral(
        &format!("ServiceRequest/{}", t.referral),
        &patient,
        "Organization/cabinet-dupont",
        "Organization/cpts-est",
    );
    assert_eq!(
        t.gp.send(reqwest::Method::POST, "Task", &coordination).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(cpts.get(&patient).await.status(), StatusCode::OK);
    // The patient tells the GP they do not want the CPTS to see their data.
    let opposition = json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": {"type": "deny",
                      "actor": [{"role": {"coding": [{"system": RECIPIENT_KIND, "code": "CPTS"}]},
                                 "reference": {"display": "toute CPTS"}}]}});
    let r = t.gp.send(reqwest::Method::POST, "Consent", &opposition).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let consent = json(r).await;
    let consent_id = consent["id"].as_str().unwrap();
    assert_eq!(cpts.get(&patient).await.status(), StatusCode::NOT_FOUND);
    assert!(cpts.found("Task?owner=Organization/cpts-est", "Task").await.is_empty());
    // The MSS the patient goes to is not concerned.
    assert_eq!(t.mss_a.get(&patient).await.status(), StatusCode::OK);
    // The patient changes their mind: the consent is withdrawn.
    let mut withdrawn = consent.clone();
    withdrawn["status"] = json!("inactive");
    let r =
        t.gp.send(reqwest::Method::PUT, &format!("Consent/{consent_id}"), &withdrawn)
            .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(cpts.get(&patient).await.status(), StatusCode::OK);
    // Opposed again, then the Consent deleted: the opposition goes with it.
    let r =
        t.gp.send(reqwest::Method::PUT, &format!("Consent/{consent_id}"), &consent)
            .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(cpts.get(&patient).await.status(), StatusCode::NOT_FOUND);
    let r =
        t.gp.http
            .delete(format!("{}/Consent/{consent_id}", t.gp.base))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(cpts.get(&patient).await.status(), StatusCode::OK);
}

on_both_backends!(consent_opposes_cpts, the_patient_opposes_sharing_with_the_cpts);
on_both_backends!(
    referred_patient_seen_by_gp_and_mss,
    the_referred_patient_is_seen_by_the_gp_and_the_mss_it_is_addressed_to
);
on_both_backends!(other_mss_learns_nothing, another_mss_learns_nothing_of_the_patient);
on_both_backends!(
    handed_over_referral,
    a_referral_handed_over_opens_the_patient_to_the_new_mss
);
on_both_backends!(deleted_stays_inside, a_deleted_resource_stays_inside_its_compartment);
on_both_backends!(
    no_organisation_no_patient,
    a_client_without_organisation_sees_no_patient
);
on_both_backends!(
    organisation_by_siret,
    an_organisation_registered_by_siret_acts_for_its_organization_resource
);
