//! The referral workflow on the demo territory: Dr Lebreton (Cabinet du
//! Colombier) prescribed APA to Nathalie Le Bihan and addressed the
//! referral to MSS Bouger+. The MSS accepts or refuses it, runs the
//! programme, ends it; the prescriber cancels it or completes the
//! prescription; a physiotherapist renews it once. Every refused move
//! leaves the stored state as it was.

#![allow(clippy::unwrap_used)]

mod common;

use apa_gateway::demo::{self, CLIENTS};
use common::{TestApp, bearer_client, json, register_client};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};

const TASK: &str = "Task/referral-le-bihan";
const PRESCRIPTION: &str = "ServiceRequest/prescription-le-bihan";
const PATIENT: &str = "Patient/patient-le-bihan";
const TRE_G15: &str = "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante";
const NO_PHYSIO_RENEWAL: &str = "https://apa-gateway.fr/fhir/StructureDefinition/apa-no-physio-renewal";
const RESULTING_ACTIVITY: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes";

/// A client acting for one organisation of the territory.
struct Party {
    http: Client,
    base: String,
}

impl Party {
    /// The demo client of `id`, with the demo's scopes.
    async fn demo(app: &TestApp, id: &str) -> Party {
        let c = CLIENTS.iter().find(|c| c.id == id).unwrap();
        Party::new(app, c.id, c.organization, c.scope).await
    }

    async fn new(app: &TestApp, id: &str, organization: Option<&str>, scope: &str) -> Party {
        let token = register_client(app.running(), id, organization, scope).await.token;
        Party {
            http: bearer_client(&token),
            base: app.base.clone(),
        }
    }

    async fn get(&self, path: &str) -> Response {
        self.http.get(format!("{}/{path}", self.base)).send().await.unwrap()
    }

    async fn read(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        json(r).await
    }

    async fn send(&self, method: Method, path: &str, body: &Value) -> Response {
        self.http
            .request(method, format!("{}/{path}", self.base))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn patch(&self, path: &str, ops: Value) -> Response {
        self.http
            .patch(format!("{}/{path}", self.base))
            .header("content-type", "application/json-patch+json")
            .body(ops.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Moves the referral to `status`, with a reason when one is given.
    async fn move_referral(&self, status: &str, reason: Option<&str>) -> Response {
        let mut ops = vec![json!({"op": "replace", "path": "/status", "value": status})];
        if let Some(text) = reason {
            ops.push(json!({"op": "add", "path": "/statusReason", "value": {"text": text}}));
        }
        self.patch(TASK, Value::Array(ops)).await
    }

    /// Moves the referral and drops the reason of its previous status (add
    /// then remove, so that the patch applies whether or not there was one).
    async fn move_referral_without_reason(&self, status: &str) -> Response {
        let ops = json!([
            {"op": "replace", "path": "/status", "value": status},
            {"op": "add", "path": "/statusReason", "value": {"text": "-"}},
            {"op": "remove", "path": "/statusReason"}
        ]);
        self.patch(TASK, ops).await
    }

    /// Creates a resource and returns `Type/id`.
    async fn create(&self, resource: &Value) -> String {
        let rtype = resource["resourceType"].as_str().unwrap();
        let r = self.send(Method::POST, rtype, resource).await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "create {rtype}: {}",
            r.text().await.unwrap()
        );
        format!("{rtype}/{}", json(r).await["id"].as_str().unwrap())
    }
}

/// The profile invariant that states the same rule as the workflow: the
/// validation, which runs first, refuses such a Task before the workflow
/// sees it.
const PROFILE_TWINS: &[(&str, &str)] = &[
    ("apa-wf-task-reason", "(apa-task-1)"),
    (
        "apa-wf-task-status",
        "(Task.status): no code from the required value set",
    ),
];

/// Asserts a refusal: its status, the rule named and the element pointed at.
async fn refused(r: Response, status: StatusCode, rule: &str, element: &str) {
    let actual = r.status();
    let outcome = json(r).await;
    assert_eq!(actual, status, "{outcome}");
    let issue = &outcome["issue"][0];
    let diagnostics = issue["diagnostics"].as_str().unwrap();
    if let Some((_, key)) = PROFILE_TWINS.iter().find(|(r, _)| *r == rule)
        && diagnostics.contains(key)
    {
        return;
    }
    assert!(diagnostics.starts_with(&format!("[{rule}]")), "{diagnostics}");
    assert_eq!(issue["expression"][0], element, "{outcome}");
}

/// The referral as the operator reads it: (status, version).
async fn referral(app: &TestApp) -> (String, String) {
    let t = json(app.get(TASK).await).await;
    (
        t["status"].as_str().unwrap().to_string(),
        t["meta"]["versionId"].as_str().unwrap().to_string(),
    )
}

/// The programme MSS Bouger+ opens for the patient, from 16 November.
fn programme() -> Value {
    json!({"resourceType": "EpisodeOfCare",
        "meta": {"profile": ["https://apa-gateway.fr/fhir/StructureDefinition/apa-programme-episode"]},
        "status": "planned",
        "type": [{"coding": [{"system": "https://apa-gateway.fr/fhir/CodeSystem/sport-sante", "code": "PROG-APA"}]}],
        "patient": {"reference": PATIENT},
        "managingOrganization": {"reference": "Organization/mss-bouger-plus"},
        "period": {"start": "2026-11-16"},
        "referralRequest": [{"reference": PRESCRIPTION}]})
}

/// A session of the programme (`kind` from the session-kind code system):
/// attended (`finished`) or missed (`cancelled`).
fn session(episode: &str, n: u32, kind: &str, status: &str, day: &str) -> Value {
    let mut period = json!({"start": format!("{day}T10:00:00+01:00")});
    if status == "finished" {
        period["end"] = json!(format!("{day}T11:00:00+01:00"));
    }
    json!({"resourceType": "Encounter",
        "meta": {"profile": ["https://apa-gateway.fr/fhir/StructureDefinition/apa-session"]},
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "VN"}]},
                        "system": "https://bouger-plus.example/seances", "value": format!("S-{n}")}],
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [{"coding": [{"system": "https://apa-gateway.fr/fhir/CodeSystem/session-kind", "code": kind}]}],
        "subject": {"reference": PATIENT},
        "episodeOfCare": [{"reference": episode}],
        "basedOn": [{"reference": PRESCRIPTION}],
        "period": period,
        "serviceProvider": {"reference": "Organization/mss-bouger-plus"}})
}

fn orientation(episode: &str) -> Value {
    json!({"resourceType": "Observation",
        "meta": {"profile": ["https://apa-gateway.fr/fhir/StructureDefinition/apa-obs-orientation"]},
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/workflow-episodeOfCare",
                       "valueReference": {"reference": episode}}],
        "status": "final",
        "category": [{"coding": [{"system": "http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes",
                                  "code": "PhysicalActivity"}]}],
        "code": {"coding": [{"system": "https://apa-gateway.fr/fhir/CodeSystem/sport-sante", "code": "ORIENTATION"}]},
        "subject": {"reference": PATIENT},
        "effectiveDateTime": "2027-02-19",
        "valueCodeableConcept": {"coding": [{"system": "https://apa-gateway.fr/fhir/CodeSystem/orientation", "code": "CLUB-SS"}]}})
}

fn end_of_pathway_report(orientation: &str) -> Value {
    json!({"resourceType": "DiagnosticReport",
        "meta": {"profile": ["https://apa-gateway.fr/fhir/StructureDefinition/apa-end-of-pathway-report"]},
        "basedOn": [{"reference": PRESCRIPTION}],
        "status": "final",
        "category": [{"coding": [{"system": "http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes",
                                  "code": "PhysicalActivity"}]}],
        "code": {"coding": [{"system": "https://apa-gateway.fr/fhir/CodeSystem/sport-sante", "code": "BILAN-FINAL"}]},
        "subject": {"reference": PATIENT},
        "effectivePeriod": {"start": "2026-11-17", "end": "2027-02-19"},
        "issued": "2027-02-19T16:00:00+01:00",
        "performer": [{"reference": "Organization/mss-bouger-plus"}],
        "result": [{"reference": orientation}],
        "conclusion": "Progression au test de marche de 6 minutes ; orientation vers un club sport-santé."})
}

/// The whole pathway, as the MSS and the GP practice live it.
async fn the_pathway_from_prescription_to_follow_up(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let gp = Party::demo(app, "cabinet-colombier").await;
    let mss = Party::demo(app, "mss-bouger-plus").await;

    // The MSS finds the referral addressed to it and accepts it.
    let inbox = mss
        .read("Task?owner=Organization/mss-bouger-plus&status=requested")
        .await;
    assert_eq!(inbox["entry"][0]["resource"]["id"], "referral-le-bihan");
    let r = mss.move_referral("accepted", None).await;
    assert_eq!(r.status(), StatusCode::OK);

    // It enrols the patient in its programme, then the initial bilan
    // takes place: the programme is under way.
    let episode = mss.create(&programme()).await;
    assert_eq!(mss.read(&episode).await["status"], "planned");
    mss.create(&session(&episode, 1, "bilan-initial", "finished", "2026-11-17"))
        .await;
    let started = mss.read(&episode).await;
    assert_eq!(started["status"], "active");
    assert_eq!(started["meta"]["versionId"], "2");
    assert_eq!(started["period"]["start"], "2026-11-16");
    assert_eq!(
        started["statusHistory"],
        json!([{"status": "planned", "period": {"end": "2026-11-17T10:00:00+01:00"}}])
    );
    let r = mss.move_referral("in-progress", None).await;
    assert_eq!(r.status(), StatusCode::OK);

    // A sprained ankle: the referral waits, saying why, then resumes.
    let r = mss.move_referral("on-hold", None).await;
    refused(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "apa-wf-task-reason",
        "Task.statusReason",
    )
    .await;
    let r = mss.move_referral("on-hold", Some("Entorse de la cheville")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = mss.move_referral("in-progress", None).await;
    refused(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "apa-wf-task-reason",
        "Task.statusReason",
    )
    .await;
    let r = mss
        .patch(
            TASK,
            json!([{"op": "replace", "path": "/status", "value": "in-progress"},
                   {"op": "remove", "path": "/statusReason"}]),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Sessions, one missed; the programme stays as it is.
    mss.create(&session(&episode, 2, "seance", "finished", "2026-11-19"))
        .await;
    mss.create(&session(&episode, 3, "seance", "cancelled", "2026-11-24"))
        .await;
    mss.create(&session(&episode, 4, "seance", "finished", "2026-11-26"))
        .await;
    assert_eq!(mss.read(&episode).await["meta"]["versionId"], "2");

    // Final bilan, orientation, report; the MSS completes the referral
    // with the report as its output: the programme is finished.
    mss.create(&session(&episode, 5, "bilan-final", "finished", "2027-02-19"))
        .await;
    let orientation = mss.create(&orientation(&episode)).await;
    let report = mss.create(&end_of_pathway_report(&orientation)).await;
    let r = mss
        .patch(
            TASK,
            json!([
                {"op": "replace", "path": "/status", "value": "completed"},
                {"op": "add", "path": "/executionPeriod", "value": {"start": "2026-11-17", "end": "2027-02-19"}},
                {"op": "add", "path": "/output", "value": [
                    {"type": {"coding": [{"system": RESULTING_ACTIVITY, "code": "resulting-activity"}]},
                     "valueReference": {"reference": report}}]}
            ]),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let finished = mss.read(&episode).await;
    assert_eq!(finished["status"], "finished");
    assert_eq!(finished["period"]["end"], "2027-02-19");
    assert_eq!(finished["statusHistory"][1]["status"], "active");

    // The GP reads the report and closes the prescription.
    let task = gp.read(TASK).await;
    assert_eq!(task["output"][0]["valueReference"]["reference"], report.as_str());
    assert!(gp.read(&report).await["conclusion"].is_string());
    let r = gp
        .patch(
            PRESCRIPTION,
            json!([{"op": "replace", "path": "/status", "value": "completed"}]),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);

    // Six months later, the follow-up call: recorded, the programme stays
    // finished.
    mss.create(&session(&episode, 6, "suivi-6m", "finished", "2027-08-19"))
        .await;
    let after = mss.read(&episode).await;
    assert_eq!(after["status"], "finished");
    assert_eq!(after["meta"]["versionId"], "3");

    // What is over stays over.
    let r = mss.move_referral("in-progress", None).await;
    refused(r, StatusCode::CONFLICT, "apa-wf-task-final", "Task.status").await;
    assert_eq!(referral(app).await.0, "completed");
    let mut again = after.clone();
    again["status"] = json!("active");
    let r = mss.send(Method::PUT, &episode, &again).await;
    refused(
        r,
        StatusCode::CONFLICT,
        "apa-wf-episode-transition",
        "EpisodeOfCare.status",
    )
    .await;
    let r = gp
        .patch(
            PRESCRIPTION,
            json!([{"op": "replace", "path": "/status", "value": "active"}]),
        )
        .await;
    refused(
        r,
        StatusCode::CONFLICT,
        "apa-wf-prescription-transition",
        "ServiceRequest.status",
    )
    .await;
}

async fn a_refusal_says_why(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let mss = Party::demo(app, "mss-bouger-plus").await;
    let r = mss.move_referral("rejected", None).await;
    refused(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "apa-wf-task-reason",
        "Task.statusReason",
    )
    .await;
    assert_eq!(referral(app).await, ("requested".into(), "1".into()));
    let r = mss
        .move_referral("rejected", Some("Programme complet jusqu'en mars"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json(r).await["statusReason"]["text"], "Programme complet jusqu'en mars");
    // A refusal is final.
    let r = mss.move_referral_without_reason("accepted").await;
    refused(r, StatusCode::CONFLICT, "apa-wf-task-final", "Task.status").await;
    assert_eq!(referral(app).await, ("rejected".into(), "2".into()));
}

async fn the_prescriber_cancels_the_referral(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let gp = Party::demo(app, "cabinet-colombier").await;
    let mss = Party::demo(app, "mss-bouger-plus").await;
    // Cancelling is the prescriber's move, not the provider's.
    let r = mss.move_referral("cancelled", Some("Patiente injoignable")).await;
    refused(r, StatusCode::FORBIDDEN, "apa-wf-task-party", "Task.status").await;
    // And the provider's answer is not the prescriber's.
    let r = gp.move_referral("accepted", None).await;
    refused(r, StatusCode::FORBIDDEN, "apa-wf-task-party", "Task.status").await;
    let r = gp.move_referral("cancelled", None).await;
    refused(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "apa-wf-task-reason",
        "Task.statusReason",
    )
    .await;
    assert_eq!(referral(app).await, ("requested".into(), "1".into()));
    let r = gp
        .move_referral("cancelled", Some("La patiente déménage à Lorient"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = mss.move_referral_without_reason("accepted").await;
    refused(r, StatusCode::CONFLICT, "apa-wf-task-final", "Task.status").await;
    assert_eq!(referral(app).await, ("cancelled".into(), "2".into()));
}

async fn only_the_parties_of_the_referral_touch_it(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let gp = Party::demo(app, "cabinet-colombier").await;
    let bouger = Party::demo(app, "mss-bouger-plus").await;
    let vilaine = Party::demo(app, "mss-vilaine-active").await;
    let cpts = Party::demo(app, "cpts-rennes-est").await;

    // The other MSS cannot even find it; the CPTS of the patient's
    // territory sees it but does not answer for the MSS.
    assert_eq!(
        vilaine.move_referral("accepted", None).await.status(),
        StatusCode::NOT_FOUND
    );
    let r = cpts.move_referral("accepted", None).await;
    refused(r, StatusCode::FORBIDDEN, "apa-wf-task-party", "Task.status").await;
    let mut stolen = json(app.get(TASK).await).await;
    stolen["status"] = json!("accepted");
    stolen["owner"] = json!({"reference": "Organization/mss-vilaine-active"});
    let r = vilaine.send(Method::PUT, TASK, &stolen).await;
    assert!(r.status().is_client_error(), "{}", r.status());
    assert_eq!(referral(app).await, ("requested".into(), "1".into()));

    // What the referral is about does not change.
    let mut other = json(app.get(TASK).await).await;
    other["focus"] = json!({"reference": "ServiceRequest/another"});
    let r = gp.send(Method::PUT, TASK, &other).await;
    refused(r, StatusCode::UNPROCESSABLE_ENTITY, "apa-wf-task-fixed", "Task.focus").await;

    // A new referral is issued as requested, by its requester.
    let mut second = json(app.get(TASK).await).await;
    second.as_object_mut().unwrap().remove("id");
    second.as_object_mut().unwrap().remove("meta");
    second["status"] = json!("accepted");
    let r = gp.send(Method::POST, "Task", &second).await;
    refused(r, StatusCode::UNPROCESSABLE_ENTITY, "apa-wf-task-start", "Task.status").await;
    // Not by another organisation in the prescriber's name.
    second["status"] = json!("requested");
    let r = cpts.send(Method::POST, "Task", &second).await;
    refused(r, StatusCode::FORBIDDEN, "apa-wf-task-party", "Task.requester").await;
    // A physician named as a Practitioner acts for the practices of their
    // PractitionerRoles: Dr Le Goff's is the Cabinet du Colombier.
    second["requester"] = json!({"reference": "Practitioner/dr-le-goff"});
    let r = cpts.send(Method::POST, "Task", &second).await;
    refused(r, StatusCode::FORBIDDEN, "apa-wf-task-party", "Task.requester").await;
    let r = gp.send(Method::POST, "Task", &second).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // MSS Bouger+ cannot take the patient in and hands the referral over
    // to MSS Vilaine Active, which accepts it; Bouger+ no longer moves it.
    let r = bouger
        .patch(
            TASK,
            json!([{"op": "replace", "path": "/owner", "value": {"reference": "Organization/mss-vilaine-active"}}]),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = vilaine.move_referral("accepted", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = bouger.move_referral("on-hold", Some("Blessure")).await;
    refused(r, StatusCode::FORBIDDEN, "apa-wf-task-party", "Task.status").await;
    let r = bouger
        .patch(
            TASK,
            json!([{"op": "replace", "path": "/owner", "value": {"reference": "Organization/mss-bouger-plus"}}]),
        )
        .await;
    refused(r, StatusCode::FORBIDDEN, "apa-wf-task-party", "Task.owner").await;
    assert_eq!(referral(app).await, ("accepted".into(), "3".into()));
}

async fn only_the_prescriber_completes_the_prescription(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let gp = Party::demo(app, "cabinet-colombier").await;
    // The MSS's software, allowed to write prescriptions (its
    // physiotherapist renews them), is not the prescriber.
    let mss = Party::new(
        app,
        "bouger-plus-kine",
        Some("mss-bouger-plus"),
        "system/*.rs system/ServiceRequest.cru",
    )
    .await;
    let complete = json!([{"op": "replace", "path": "/status", "value": "completed"}]);
    let r = mss.patch(PRESCRIPTION, complete.clone()).await;
    refused(
        r,
        StatusCode::FORBIDDEN,
        "apa-wf-prescription-party",
        "ServiceRequest.status",
    )
    .await;
    assert_eq!(json(app.get(PRESCRIPTION).await).await["status"], "active");
    let r = gp.patch(PRESCRIPTION, complete).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json(r).await["status"], "completed");
}

/// A renewal of `original` by `requester`, for the prescription's patient.
async fn renewal(app: &TestApp, original: &str, requester: &str) -> Value {
    let mut sr = json(app.get(original).await).await;
    let obj = sr.as_object_mut().unwrap();
    obj.remove("id");
    obj.remove("meta");
    sr["replaces"] = json!([{"reference": original}]);
    sr["requester"] = json!({"reference": requester});
    sr["authoredOn"] = json!("2027-02-22");
    sr
}

async fn a_physiotherapist_renews_once_unless_forbidden(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    // A physiotherapist works in MSS Bouger+'s programme.
    let r = app
        .put(
            "Practitioner/kine-morel",
            &json!({"resourceType": "Practitioner", "id": "kine-morel",
                "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": "10101010105"}],
                "name": [{"family": "Morel", "given": ["Anne"]}],
                "qualification": [{"code": {"coding": [{"system": TRE_G15, "code": "70"}]}}]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .put(
            "PractitionerRole/kine-morel-bouger-plus",
            &json!({"resourceType": "PractitionerRole", "id": "kine-morel-bouger-plus", "active": true,
                "practitioner": {"reference": "Practitioner/kine-morel"},
                "organization": {"reference": "Organization/mss-bouger-plus"},
                "code": [{"coding": [{"system": TRE_G15, "code": "70", "display": "Masseur-Kinésithérapeute"}]}]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let kine = Party::new(
        app,
        "bouger-plus-kine",
        Some("mss-bouger-plus"),
        "system/*.rs system/ServiceRequest.cru",
    )
    .await;
    let gp = Party::demo(app, "cabinet-colombier").await;
    let role = "PractitionerRole/kine-morel-bouger-plus";

    // The physiotherapist does not prescribe…
    let mut own = renewal(app, PRESCRIPTION, role).await;
    own.as_object_mut().unwrap().remove("replaces");
    let r = kine.send(Method::POST, "ServiceRequest", &own).await;
    refused(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "apa-wf-prescriber",
        "ServiceRequest.requester",
    )
    .await;
    // Nor does the programme's APA teacher.
    let r = app
        .put(
            "PractitionerRole/eapa-roux-bouger-plus",
            &json!({"resourceType": "PractitionerRole", "id": "eapa-roux-bouger-plus", "active": true,
                "organization": {"reference": "Organization/mss-bouger-plus"},
                "code": [{"coding": [{"system": "https://apa-gateway.fr/fhir/CodeSystem/staff-kind", "code": "EAPA"}]}]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut teacher = own.clone();
    teacher["requester"] = json!({"reference": "PractitionerRole/eapa-roux-bouger-plus"});
    let r = kine.send(Method::POST, "ServiceRequest", &teacher).await;
    refused(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "apa-wf-prescriber",
        "ServiceRequest.requester",
    )
    .await;
    // … but renews Dr Lebreton's prescription, once.
    let first = kine.create(&renewal(app, PRESCRIPTION, role).await).await;
    let r = kine
        .send(Method::POST, "ServiceRequest", &renewal(app, PRESCRIPTION, role).await)
        .await;
    refused(
        r,
        StatusCode::CONFLICT,
        "apa-wf-renewal-once",
        "ServiceRequest.replaces[0]",
    )
    .await;
    // Nor the renewal itself.
    let r = kine
        .send(Method::POST, "ServiceRequest", &renewal(app, &first, role).await)
        .await;
    refused(
        r,
        StatusCode::CONFLICT,
        "apa-wf-renewal-once",
        "ServiceRequest.replaces[0]",
    )
    .await;
    // A physician renews as often as they prescribe.
    gp.create(&renewal(app, PRESCRIPTION, "PractitionerRole/dr-le-goff-colombier").await)
        .await;

    // Dr Lebreton prescribes to Solène Guillou and forbids the
    // physiotherapist's renewal.
    let mut forbidden = json(app.get(PRESCRIPTION).await).await;
    let obj = forbidden.as_object_mut().unwrap();
    obj.remove("id");
    obj.remove("meta");
    forbidden["subject"] = json!({"reference": "Patient/patient-guillou"});
    forbidden["extension"]
        .as_array_mut()
        .unwrap()
        .push(json!({"url": NO_PHYSIO_RENEWAL, "valueBoolean": true}));
    let guillou = gp.create(&forbidden).await;
    let r = kine
        .send(Method::POST, "ServiceRequest", &renewal(app, &guillou, role).await)
        .await;
    refused(
        r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "apa-wf-renewal-forbidden",
        "ServiceRequest.replaces[0]",
    )
    .await;
    let renewals = json(app.get("ServiceRequest?_count=20").await).await;
    assert_eq!(renewals["entry"].as_array().unwrap().len(), 4);
}

/// An MSS importing a programme with its first attended session in one
/// transaction: the programme is stored under way.
async fn a_programme_imported_with_its_first_session_is_under_way(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let mss = Party::demo(app, "mss-bouger-plus").await;
    let episode = "urn:uuid:5d0c1e52-3b1a-4c1e-9a55-000000000001";
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": episode, "resource": programme(), "request": {"method": "POST", "url": "EpisodeOfCare"}},
        {"resource": session(episode, 1, "bilan-initial", "finished", "2026-11-17"),
         "request": {"method": "POST", "url": "Encounter"}}
    ]});
    let r = mss.send(Method::POST, "", &bundle).await;
    assert_eq!(r.status(), StatusCode::OK);
    let response = json(r).await;
    let location = response["entry"][0]["response"]["location"].as_str().unwrap();
    let id = location.split("/_history").next().unwrap();
    let stored = mss.read(id).await;
    assert_eq!(stored["status"], "active");
    assert_eq!(stored["meta"]["versionId"], "1");
}

/// A transaction with a refused move stores none of its entries; a status
/// outside the workflow is refused.
async fn a_refused_move_stores_nothing_of_its_transaction(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let mss = Party::demo(app, "mss-bouger-plus").await;
    let mut rejected = json(app.get(TASK).await).await;
    rejected["status"] = json!("rejected");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": programme(), "request": {"method": "POST", "url": "EpisodeOfCare"}},
        {"resource": rejected, "request": {"method": "PUT", "url": TASK}}
    ]});
    let r = mss.send(Method::POST, "", &bundle).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let programmes = json(app.get("EpisodeOfCare?_summary=count").await).await;
    assert_eq!(programmes["total"], 0);
    assert_eq!(referral(app).await, ("requested".into(), "1".into()));

    let r = mss.move_referral("received", None).await;
    refused(r, StatusCode::UNPROCESSABLE_ENTITY, "apa-wf-task-status", "Task.status").await;
    assert_eq!(referral(app).await, ("requested".into(), "1".into()));
}

on_both_backends!(pathway, the_pathway_from_prescription_to_follow_up);
on_both_backends!(nothing_stored, a_refused_move_stores_nothing_of_its_transaction);
on_both_backends!(refusal, a_refusal_says_why);
on_both_backends!(cancellation, the_prescriber_cancels_the_referral);
on_both_backends!(parties, only_the_parties_of_the_referral_touch_it);
on_both_backends!(prescription_completed, only_the_prescriber_completes_the_prescription);
on_both_backends!(renewal_once, a_physiotherapist_renews_once_unless_forbidden);
on_both_backends!(
    imported_programme,
    a_programme_imported_with_its_first_session_is_under_way
);
