//! Routing on the demo territory around Rennes: a prescription with no
//! chosen performer is referred to the Maison Sport-Santé of the patient's
//! commune whose programme fits, or to the CPTS; the directory is searched
//! by commune, condition and limitation level; the CPTS sees the referrals
//! of its territory unless the patient opposes it.
//!
//! The territory: MSS Bouger+ covers Rennes (35238) and Saint-Jacques
//! (35281), its programme has a physiotherapist and takes severe
//! limitations; MSS Vilaine Active covers Rennes, Cesson-Sévigné (35051)
//! and Betton (35024), its programme (APA teachers, sport educators) takes
//! up to moderate; the CPTS Rennes Est covers the four communes. Jean-Yves
//! Tanguy lives in Cesson, Nathalie Le Bihan in Rennes.

#![allow(clippy::unwrap_used)]

mod common;

use apa_gateway::demo::{self, CLIENTS, TERRITORY};
use common::{TestApp, bearer_client, json, register_client};
use reqwest::StatusCode;
use serde_json::{Value, json};

const LIMITATION_EXT: &str = "https://apa-gateway.fr/fhir/StructureDefinition/apa-functional-limitation";
const LIMITATION: &str = "https://apa-gateway.fr/fhir/CodeSystem/functional-limitation";
const CONDITION: &str = "https://apa-gateway.fr/fhir/CodeSystem/condition-group";
const RECIPIENT_KIND: &str = "https://apa-gateway.fr/fhir/CodeSystem/recipient-kind";
const INSEE: &str = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code";

/// A demo organisation's software, with the demo's scopes.
struct Org {
    http: reqwest::Client,
    base: String,
}

impl Org {
    async fn demo(app: &TestApp, id: &str) -> Org {
        let c = CLIENTS.iter().find(|c| c.id == id).unwrap();
        let token = register_client(app.running(), c.id, c.organization, c.scope)
            .await
            .token;
        Org {
            http: bearer_client(&token),
            base: app.base.clone(),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}/{path}", self.base)).send().await.unwrap()
    }

    /// The resources a search returns (matches only).
    async fn found(&self, query: &str) -> Vec<Value> {
        let r = self.get(query).await;
        assert_eq!(r.status(), StatusCode::OK, "{query}");
        json(r).await["entry"]
            .as_array()
            .map(|es| {
                es.iter()
                    .filter(|e| e["search"]["mode"] != "include")
                    .map(|e| e["resource"].clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn ids(&self, query: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .found(query)
            .await
            .iter()
            .map(|r| format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()))
            .collect();
        ids.sort();
        ids
    }

    /// Creates a resource asking for the OperationOutcome: (status, id
    /// from Location, outcome).
    async fn create(&self, resource: &Value) -> (StatusCode, Option<String>, Value) {
        let rtype = resource["resourceType"].as_str().unwrap();
        let r = self
            .http
            .post(format!("{}/{rtype}", self.base))
            .header("content-type", "application/fhir+json")
            .header("prefer", "return=OperationOutcome")
            .body(resource.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let id = r
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.split(&format!("{rtype}/")).nth(1))
            .and_then(|rest| rest.split('/').next())
            .map(str::to_string);
        (status, id, json(r).await)
    }

    /// The referral Tasks of a prescription, as this organisation sees them.
    async fn referrals(&self, prescription: &str) -> Vec<Value> {
        self.found(&format!("Task?focus=ServiceRequest/{prescription}")).await
    }
}

/// An APA prescription shaped like the demo's: `level` of functional
/// limitation, `condition` group, for `patient` by `requester`.
fn prescription(patient: &str, requester: &str, level: &str, condition: &str) -> Value {
    let bundle: Value = serde_json::from_str(TERRITORY).unwrap();
    let mut sr = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .find(|r| r["resourceType"] == "ServiceRequest")
        .unwrap();
    let o = sr.as_object_mut().unwrap();
    o.remove("id");
    o.insert("subject".into(), json!({"reference": format!("Patient/{patient}")}));
    o.insert(
        "requester".into(),
        json!({"reference": format!("PractitionerRole/{requester}")}),
    );
    o.insert("authoredOn".into(), json!("2026-11-20"));
    sr["extension"][0] = json!({"url": LIMITATION_EXT,
        "valueCodeableConcept": {"coding": [{"system": LIMITATION, "code": level}]}});
    sr["reasonCode"] = json!([{"coding": [{"system": CONDITION, "code": condition}]}]);
    sr
}

/// The issues of an OperationOutcome after the first (the write itself).
fn notes(outcome: &Value) -> Vec<(String, String)> {
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .map(|i| {
            (
                i["severity"].as_str().unwrap().to_string(),
                i["diagnostics"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Prescribes and returns the prescription's id and its referral Task as
/// the prescriber sees it (none when it was not routed).
async fn prescribe(gp: &Org, sr: &Value) -> (String, Vec<(String, String)>, Option<Value>) {
    let (status, id, outcome) = gp.create(sr).await;
    assert_eq!(status, StatusCode::CREATED, "{outcome}");
    let id = id.unwrap();
    let mut tasks = gp.referrals(&id).await;
    assert!(tasks.len() <= 1, "{tasks:?}");
    (id, notes(&outcome), tasks.pop())
}

async fn a_moderate_limitation_in_cesson_goes_to_the_mss_covering_cesson(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let gp = Org::demo(app, "msp-cesson").await;
    let vilaine = Org::demo(app, "mss-vilaine-active").await;
    let bouger = Org::demo(app, "mss-bouger-plus").await;
    // Dr Riou prescribes for Jean-Yves Tanguy, who lives in Cesson, without
    // choosing where he goes.
    let sr = prescription("patient-tanguy", "dr-riou-msp-cesson", "moderee", "diabete-t2");
    let (id, notes, task) = prescribe(&gp, &sr).await;
    let task = task.expect("a referral");
    assert_eq!(task["owner"]["reference"], "Organization/mss-vilaine-active");
    assert_eq!(task["status"], "requested");
    assert_eq!(task["intent"], "order");
    assert_eq!(task["code"]["coding"][0]["code"], "fulfill");
    assert_eq!(task["focus"]["reference"], format!("ServiceRequest/{id}"));
    assert_eq!(task["for"]["reference"], "Patient/patient-tanguy");
    assert_eq!(task["requester"]["reference"], "PractitionerRole/dr-riou-msp-cesson");
    assert_eq!(
        task["meta"]["profile"][0],
        "https://apa-gateway.fr/fhir/StructureDefinition/apa-referral-task"
    );
    assert!(task["authoredOn"].as_str().is_some());
    // The response said where it went.
    let task_id = task["id"].as_str().unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].0, "information");
    assert!(notes[0].1.contains(&format!("Task/{task_id}")), "{notes:?}");
    assert!(notes[0].1.contains("Organization/mss-vilaine-active"), "{notes:?}");
    // The MSS it is addressed to sees the referral and the patient; the other does not.
    assert_eq!(vilaine.get(&format!("Task/{task_id}")).await.status(), StatusCode::OK);
    assert_eq!(vilaine.get("Patient/patient-tanguy").await.status(), StatusCode::OK);
    assert_eq!(
        bouger.get(&format!("Task/{task_id}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        bouger.get("Patient/patient-tanguy").await.status(),
        StatusCode::NOT_FOUND
    );
}

async fn a_severe_limitation_goes_to_the_programme_with_a_physiotherapist(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let gp = Org::demo(app, "cabinet-colombier").await;
    let vilaine = Org::demo(app, "mss-vilaine-active").await;
    // Nathalie Le Bihan lives in Rennes, which both MSS cover; her walking
    // distance fell under 150 m.
    let sr = prescription("patient-le-bihan", "dr-le-goff-colombier", "severe", "diabete-t2");
    let (_, _, task) = prescribe(&gp, &sr).await;
    assert_eq!(
        task.expect("a referral")["owner"]["reference"],
        "Organization/mss-bouger-plus"
    );
    // Nor when the GP chooses it: refused, the choice pointed at.
    let mut chosen = sr.clone();
    chosen["performer"] = json!([{"reference": "HealthcareService/programme-vilaine-bouge"}]);
    let (status, _, outcome) = gp.create(&chosen).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{outcome}");
    assert_eq!(outcome["issue"][0]["code"], "business-rule");
    assert_eq!(outcome["issue"][0]["expression"][0], "ServiceRequest.performer[0]");
    chosen["performer"] = json!([{"reference": "HealthcareService/programme-bouger-plus"}]);
    let (_, notes, task) = prescribe(&gp, &chosen).await;
    assert!(task.is_none() && notes.is_empty(), "{notes:?}");
    // Never to the programme without health professionals, whatever it
    // would claim: Vilaine Active cannot even say it takes severe
    // limitations (the programme profile's apa-prog-1)…
    let mut programme = json(app.get("HealthcareService/programme-vilaine-bouge").await).await;
    programme["characteristic"]
        .as_array_mut()
        .unwrap()
        .push(json!({"coding": [{"system": LIMITATION, "code": "severe"}]}));
    let r = app.put("HealthcareService/programme-vilaine-bouge", &programme).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        json(r).await["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("apa-prog-1")
    );
    // …and routing does not trust the levels a programme lists anyway
    // (unit test `a_severe_limitation_never_goes_to_a_programme_without_health_professionals`
    // in apa::routing).
    let (_, _, task) = prescribe(&gp, &sr).await;
    assert_eq!(
        task.expect("a referral")["owner"]["reference"],
        "Organization/mss-bouger-plus"
    );
    assert!(
        vilaine
            .found("Task?owner=Organization/mss-vilaine-active")
            .await
            .is_empty()
    );
    // Bouger+ closes its programme: no MSS of Rennes can take her, the CPTS does.
    let mut closed = json(app.get("HealthcareService/programme-bouger-plus").await).await;
    closed["active"] = json!(false);
    assert_eq!(
        app.put("HealthcareService/programme-bouger-plus", &closed)
            .await
            .status(),
        StatusCode::OK
    );
    let (_, notes, task) = prescribe(&gp, &sr).await;
    assert_eq!(
        task.expect("a referral")["owner"]["reference"],
        "Organization/cpts-rennes-est"
    );
    assert!(notes[0].1.contains("no programme"), "{notes:?}");
}

async fn no_fitting_mss_goes_to_the_cpts_of_the_commune(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let gp = Org::demo(app, "msp-cesson").await;
    let cpts = Org::demo(app, "cpts-rennes-est").await;
    // Severe, in Cesson: Vilaine Active does not take it, Bouger+ does not
    // cover Cesson.
    let severe = prescription("patient-tanguy", "dr-riou-msp-cesson", "severe", "diabete-t2");
    let (severe_id, _, task) = prescribe(&gp, &severe).await;
    let task = task.expect("a referral");
    assert_eq!(task["owner"]["reference"], "Organization/cpts-rennes-est");
    // The CPTS cannot hand it over to the MSS without health professionals…
    let focus = format!("ServiceRequest/{severe_id}");
    let cpts_ref = "Organization/cpts-rennes-est";
    let handover = common::apa::referral(
        &focus,
        "Patient/patient-tanguy",
        cpts_ref,
        "Organization/mss-vilaine-active",
    );
    let (status, _, outcome) = cpts.create(&handover).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{outcome}");
    assert_eq!(outcome["issue"][0]["code"], "business-rule");
    assert_eq!(outcome["issue"][0]["expression"][0], "Task.owner");
    // …but can to the one whose programme has a physiotherapist.
    let handover = common::apa::referral(
        &focus,
        "Patient/patient-tanguy",
        cpts_ref,
        "Organization/mss-bouger-plus",
    );
    let (status, _, outcome) = cpts.create(&handover).await;
    assert_eq!(status, StatusCode::CREATED, "{outcome}");
    // A condition the programme of Cesson does not take: the CPTS too.
    let cancer = prescription("patient-tanguy", "dr-riou-msp-cesson", "moderee", "cancer");
    let (_, _, other) = prescribe(&gp, &cancer).await;
    assert_eq!(
        other.expect("a referral")["owner"]["reference"],
        "Organization/cpts-rennes-est"
    );
    // The CPTS finds both referrals addressed to it and reads the patient.
    let owned = cpts.found("Task?owner=Organization/cpts-rennes-est").await;
    assert_eq!(owned.len(), 2);
    let handed = format!("Task?owner=Organization/mss-bouger-plus&focus={focus}");
    assert_eq!(cpts.found(&handed).await.len(), 1);
    assert_eq!(cpts.get("Patient/patient-tanguy").await.status(), StatusCode::OK);
}

async fn a_chosen_performer_is_not_routed_and_nobody_covering_is_said(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let gp = Org::demo(app, "msp-cesson").await;
    // Dr Riou chose the MSS himself.
    let mut chosen = prescription("patient-tanguy", "dr-riou-msp-cesson", "moderee", "diabete-t2");
    chosen["performer"] = json!([{"reference": "Organization/mss-bouger-plus"}]);
    let (_, notes, task) = prescribe(&gp, &chosen).await;
    assert!(task.is_none());
    assert!(notes.is_empty(), "{notes:?}");
    // A patient of Saint-Brieuc (22278), a commune nobody of the
    // gateway covers: stored without a referral, and the response says so.
    let (status, patient, _) = gp
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Le Floch"}],
            "address": [{"use": "home", "city": "Saint-Brieuc", "extension": [{"url": INSEE,
                "valueCoding": {"system": "https://mos.esante.gouv.fr/NOS/TRE_R13-Commune/FHIR/TRE-R13-Commune", "code": "22278"}}]}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let patient = patient.unwrap();
    let far = prescription(&patient, "dr-riou-msp-cesson", "moderee", "diabete-t2");
    let (id, notes, task) = prescribe(&gp, &far).await;
    assert!(task.is_none());
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0].0, "warning");
    assert!(notes[0].1.contains("22278"), "{notes:?}");
    assert_eq!(gp.get(&format!("ServiceRequest/{id}")).await.status(), StatusCode::OK);
    // In a transaction, the warning is the entry's outcome.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": far, "request": {"method": "POST", "url": "ServiceRequest"}}]});
    let r = gp
        .http
        .post(&gp.base)
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let response = json(r).await;
    let outcome = &response["entry"][0]["response"]["outcome"];
    assert_eq!(outcome["issue"][0]["severity"], "warning", "{response}");
    assert_eq!(outcome["issue"][0]["expression"][0], "ServiceRequest.performer");
    // A prescription sent with its referral Task in one transaction is not
    // routed again.
    let with_task = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b6f5a52-1d0c-4b8e-9a43-6a3f0e1d2c01",
         "resource": prescription("patient-tanguy", "dr-riou-msp-cesson", "moderee", "diabete-t2"),
         "request": {"method": "POST", "url": "ServiceRequest"}},
        {"resource": {"resourceType": "Task", "status": "requested", "intent": "order",
            "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
            "authoredOn": "2026-11-23T10:00:00+01:00",
            "focus": {"reference": "urn:uuid:0b6f5a52-1d0c-4b8e-9a43-6a3f0e1d2c01"},
            "for": {"reference": "Patient/patient-tanguy"},
            "requester": {"reference": "PractitionerRole/dr-riou-msp-cesson"},
            "owner": {"reference": "Organization/mss-bouger-plus"}},
         "request": {"method": "POST", "url": "Task"}}]});
    let r = gp
        .http
        .post(&gp.base)
        .header("content-type", "application/fhir+json")
        .body(with_task.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let response = json(r).await;
    let location = response["entry"][0]["response"]["location"].as_str().unwrap();
    let sr = location.split('/').nth(1).unwrap();
    let tasks = gp.referrals(sr).await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["owner"]["reference"], "Organization/mss-bouger-plus");
}

async fn the_directory_is_searched_by_commune_condition_and_level(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    for who in ["msp-cesson", "cpts-rennes-est"] {
        let org = Org::demo(app, who).await;
        assert_eq!(
            org.ids("Organization?territory=35051").await,
            ["Organization/cpts-rennes-est", "Organization/mss-vilaine-active"],
            "{who}"
        );
        assert_eq!(
            org.ids("Organization?territory=35281&type=MSS").await,
            ["Organization/mss-bouger-plus"],
            "{who}"
        );
        // Programmes through their organisation's territory.
        assert_eq!(
            org.ids("HealthcareService?organization.territory=35238").await,
            [
                "HealthcareService/programme-bouger-plus",
                "HealthcareService/programme-vilaine-bouge"
            ],
            "{who}"
        );
        assert_eq!(
            org.ids("HealthcareService?organization.territory=35051&condition=diabete-t2&limitation-level=moderee")
                .await,
            ["HealthcareService/programme-vilaine-bouge"],
            "{who}"
        );
        assert_eq!(
            org.ids("HealthcareService?organization.territory=35238&limitation-level=severe")
                .await,
            ["HealthcareService/programme-bouger-plus"],
            "{who}"
        );
        assert_eq!(
            org.ids(&format!(
                "HealthcareService?staff-kind=https://apa-gateway.fr/fhir/CodeSystem/staff-kind|MK&condition={CONDITION}|cancer"
            ))
            .await,
            ["HealthcareService/programme-bouger-plus"],
            "{who}"
        );
        assert!(
            org.ids("HealthcareService?organization.territory=35051&limitation-level=severe")
                .await
                .is_empty()
        );
        assert!(
            org.ids("HealthcareService?organization.territory=22278")
                .await
                .is_empty()
        );
        // The programmes with their organisations, in one request.
        let page = json(
            org.get("HealthcareService?condition=hta&_include=HealthcareService:organization")
                .await,
        )
        .await;
        let entries = page["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "{page}");
        assert_eq!(entries[1]["resource"]["id"], "mss-vilaine-active");
    }
    // Prescriptions by level, for the coordinators.
    assert_eq!(
        Org::demo(app, "cabinet-colombier")
            .await
            .ids("ServiceRequest?functional-limitation=moderee")
            .await,
        ["ServiceRequest/prescription-le-bihan"]
    );
    // The CapabilityStatement lists the package's parameters.
    let cs = json(
        app.anonymous
            .get(format!("{}/metadata", app.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let params = |t: &str| -> Vec<(String, String)> {
        cs["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == t)
            .unwrap()["searchParam"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["definition"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert!(params("Organization").contains(&(
        "territory".into(),
        "https://apa-gateway.fr/fhir/SearchParameter/organization-territory".into()
    )));
    for code in ["condition", "limitation-level", "staff-kind"] {
        assert!(params("HealthcareService").iter().any(|(c, _)| c == code), "{code}");
    }
    assert!(
        params("ServiceRequest")
            .iter()
            .any(|(c, _)| c == "functional-limitation")
    );
}

async fn the_cpts_sees_the_referrals_of_its_territory_unless_the_patient_opposes(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let cpts = Org::demo(app, "cpts-rennes-est").await;
    let gp = Org::demo(app, "cabinet-colombier").await;
    // The demo referral of Nathalie Le Bihan (Rennes) is in its territory.
    assert_eq!(cpts.get("Task/referral-le-bihan").await.status(), StatusCode::OK);
    assert_eq!(cpts.get("Patient/patient-le-bihan").await.status(), StatusCode::OK);
    assert_eq!(
        cpts.get("ServiceRequest/prescription-le-bihan").await.status(),
        StatusCode::OK
    );
    // Jean-Yves Tanguy lives in Cesson but nobody referred him yet.
    assert_eq!(cpts.get("Patient/patient-tanguy").await.status(), StatusCode::NOT_FOUND);
    // A patient of Saint-Brieuc, referred by the same practice to Bouger+:
    // outside the CPTS's territory.
    let (status, far, _) = gp
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Le Floch"}],
            "address": [{"use": "home", "extension": [{"url": INSEE,
                "valueCoding": {"system": "https://mos.esante.gouv.fr/NOS/TRE_R13-Commune/FHIR/TRE-R13-Commune", "code": "22278"}}]}]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let far = far.unwrap();
    let mut sr = prescription(&far, "dr-lebreton-colombier", "moderee", "diabete-t2");
    sr["performer"] = json!([{"reference": "Organization/mss-bouger-plus"}]);
    let (sr_id, _, _) = prescribe(&gp, &sr).await;
    let (status, task, _) = gp
        .create(
            &json!({"resourceType": "Task", "status": "requested", "intent": "order",
            "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
            "authoredOn": "2026-11-23T10:00:00+01:00",
            "focus": {"reference": format!("ServiceRequest/{sr_id}")}, "for": {"reference": format!("Patient/{far}")},
            "requester": {"reference": "PractitionerRole/dr-lebreton-colombier"},
            "owner": {"reference": "Organization/mss-bouger-plus"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        cpts.get(&format!("Task/{}", task.unwrap())).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        cpts.get(&format!("Patient/{far}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        cpts.ids("Patient?_count=50").await,
        ["Patient/patient-le-bihan"],
        "the CPTS sees the patients of its territory's referrals only"
    );
    // Nathalie Le Bihan tells her GP she does not want the CPTS to see her data.
    let opposition = json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/patient-le-bihan"},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": {"type": "deny",
                      "actor": [{"role": {"coding": [{"system": RECIPIENT_KIND, "code": "CPTS"}]},
                                 "reference": {"display": "toute CPTS"}}]}});
    let (status, _, _) = gp.create(&opposition).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(cpts.get("Task/referral-le-bihan").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        cpts.get("Patient/patient-le-bihan").await.status(),
        StatusCode::NOT_FOUND
    );
    // A new referral of hers is not shown to the CPTS either, while the
    // MSS it goes to sees it.
    let sr = prescription("patient-le-bihan", "dr-lebreton-colombier", "severe", "diabete-t2");
    let (_, _, task) = prescribe(&gp, &sr).await;
    let task = task.expect("a referral");
    let path = format!("Task/{}", task["id"].as_str().unwrap());
    assert_eq!(cpts.get(&path).await.status(), StatusCode::NOT_FOUND);
    let bouger = Org::demo(app, "mss-bouger-plus").await;
    assert_eq!(bouger.get(&path).await.status(), StatusCode::OK);
    assert!(cpts.ids("Patient?_count=50").await.is_empty());
}

on_both_backends!(
    moderate_in_cesson,
    a_moderate_limitation_in_cesson_goes_to_the_mss_covering_cesson
);
on_both_backends!(
    severe_to_physiotherapist,
    a_severe_limitation_goes_to_the_programme_with_a_physiotherapist
);
on_both_backends!(no_fitting_mss, no_fitting_mss_goes_to_the_cpts_of_the_commune);
on_both_backends!(
    chosen_performer_and_nobody,
    a_chosen_performer_is_not_routed_and_nobody_covering_is_said
);
on_both_backends!(directory, the_directory_is_searched_by_commune_condition_and_level);
on_both_backends!(
    cpts_territory,
    the_cpts_sees_the_referrals_of_its_territory_unless_the_patient_opposes
);

/// Resources stored by a gateway that did not index the package's
/// parameters yet (their rows missing, no record of the parameters, or a
/// record of other ones) are indexed again at the next start: a search on
/// the new parameters misses none of them.
async fn stored_resources_are_indexed_again(database_url: String) {
    use apa_gateway::config::Config;
    use apa_gateway::server;
    let cfg = Config {
        listen: "127.0.0.1:0".into(),
        database_url: database_url.clone(),
        db_pool_size: 2,
        ..Config::default()
    };
    let running = server::start(&cfg).await.unwrap();
    demo::load(&running).await.unwrap();
    running.stop().await;
    // Organizations as if stored before any record: their token rows gone,
    // no fingerprint. Programmes as if indexed with other parameters.
    let statements = [
        "DELETE FROM idx_token WHERE pk IN (SELECT pk FROM resource WHERE rtype = 'Organization')",
        "DELETE FROM index_fingerprint WHERE rtype = 'Organization'",
        "DELETE FROM idx_token WHERE pk IN (SELECT pk FROM resource WHERE rtype = 'HealthcareService')",
        "UPDATE index_fingerprint SET fingerprint = 0 WHERE rtype = 'HealthcareService'",
    ];
    {
        use sqlx::Connection;
        if database_url.starts_with("sqlite") {
            let mut c = sqlx::SqliteConnection::connect(&database_url).await.unwrap();
            for s in statements {
                sqlx::raw_sql(s).execute(&mut c).await.unwrap();
            }
        } else {
            let mut c = sqlx::PgConnection::connect(&database_url).await.unwrap();
            for s in statements {
                sqlx::raw_sql(s).execute(&mut c).await.unwrap();
            }
        }
    }
    let running = server::start(&cfg).await.unwrap();
    let token = register_client(&running, "operator", None, "system/*.rs operator")
        .await
        .token;
    let http = bearer_client(&token);
    let count = |query: &'static str| {
        let http = http.clone();
        let url = format!("{}/{query}", running.base);
        async move {
            let page = json(http.get(url).send().await.unwrap()).await;
            page["entry"].as_array().map_or(0, Vec::len)
        }
    };
    assert_eq!(count("Organization?territory=35051").await, 2);
    assert_eq!(
        count("Organization?identifier=https://sirene.fr|81122334600016").await,
        1
    );
    assert_eq!(count("HealthcareService?limitation-level=severe").await, 1);
    assert_eq!(count("HealthcareService?condition=hta").await, 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_resources_are_indexed_again_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    stored_resources_are_indexed_again(format!("sqlite://{}/apa.db", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_resources_are_indexed_again_postgres() {
    use sqlx::Connection;
    let (schema, url) = common::fresh_pg_schema().await;
    stored_resources_are_indexed_again(url).await;
    let mut c = sqlx::PgConnection::connect(&common::pg_url()).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut c)
        .await
        .unwrap();
}
