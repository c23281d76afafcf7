//! One APA pathway end to end, as the software of each party lives it, on
//! the demo territory: the GP software (no FHIR) prescribes, the gateway
//! routes the referral to the MSS of the patient's commune, the MSS accepts
//! it, posts its initial assessment export (CSV), its attendance export,
//! the final assessment, the orientation and the 6-month follow-up, and
//! closes the referral; the programme follows, and the prescriber reads it
//! all.

#![allow(clippy::unwrap_used)]

mod common;

use apa_gateway::demo::{self, CLIENTS};
use common::{TestApp, bearer_client, json, register_client};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

/// A demo organisation's software, with its own token.
struct Software {
    http: Client,
    fhir: String,
    flat: String,
}

impl Software {
    async fn of(app: &TestApp, id: &str) -> Software {
        let c = CLIENTS.iter().find(|c| c.id == id).unwrap();
        let token = register_client(app.running(), c.id, c.organization, c.scope)
            .await
            .token;
        Software {
            http: bearer_client(&token),
            fhir: app.base.clone(),
            flat: format!("{}/apa/v1", app.base.trim_end_matches("/fhir")),
        }
    }

    async fn flat(&self, path: &str, content_type: &str, body: String) -> Value {
        let r = self
            .http
            .post(format!("{}/{path}", self.flat))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = json(r).await;
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn read(&self, path: &str) -> Value {
        let r = self.http.get(format!("{}/{path}", self.fhir)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        json(r).await
    }

    async fn search(&self, query: &str) -> Vec<Value> {
        let b = self.read(query).await;
        b["entry"]
            .as_array()
            .map(|es| es.iter().map(|e| e["resource"].clone()).collect())
            .unwrap_or_default()
    }

    async fn move_task(&self, task: &str, status: &str) -> Response {
        self.http
            .patch(format!("{}/{task}", self.fhir))
            .header("content-type", "application/json-patch+json")
            .body(json!([{"op": "replace", "path": "/status", "value": status}]).to_string())
            .send()
            .await
            .unwrap()
    }
}

const INS: &str = "268053523812380";
const PRESCRIPTION: &str = include_str!("../fixtures/flat/prescription-routed.json");
const BOUGER_SIRET: &str = "88765432500018";

fn assessment_csv(id: &str, date: &str, rows: &[(&str, &str, &str)]) -> String {
    let mut csv = String::from("id_bilan;ins;type_ins;siret_mss;date_bilan;test;valeur;unité;côté;yeux_fermes\r\n");
    for (test, value, unit) in rows {
        csv.push_str(&format!(
            "{id};{INS};TEST;{BOUGER_SIRET};{date};{test};{value};{unit};;\r\n"
        ));
    }
    csv
}

async fn a_prescription_travels_the_whole_pathway(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let gp = Software::of(app, "cabinet-colombier").await;
    let mss = Software::of(app, "mss-bouger-plus").await;

    // Dr Lebreton's software, which has no FHIR, prescribes APA to Nathalie
    // Le Bihan (Rennes, type 2 diabetes, moderate limitation) and leaves the
    // choice of the MSS to the gateway.
    // (fixtures/flat/prescription-routed.json, the README's example)
    let created = gp
        .flat("prescriptions", "application/json", PRESCRIPTION.to_string())
        .await;
    let sr = created["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resourceType"] == "ServiceRequest")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // The gateway referred her to the MSS of her commune whose programme
    // fits: a Task, requested, that the MSS finds among its referrals.
    let tasks = mss.search(&format!("Task?focus=ServiceRequest/{sr}")).await;
    assert_eq!(tasks.len(), 1, "one referral for the prescription");
    let task = format!("Task/{}", tasks[0]["id"].as_str().unwrap());
    assert_eq!(tasks[0]["status"], "requested");
    assert_eq!(tasks[0]["owner"]["reference"], "Organization/mss-bouger-plus");
    assert_eq!(tasks[0]["for"]["reference"], "Patient/patient-le-bihan");

    // The MSS accepts.
    assert_eq!(mss.move_task(&task, "accepted").await.status(), StatusCode::OK);

    // Initial assessment, from the MSS software's CSV export: weight in kg,
    // height in cm, the 6-minute walk; the gateway derives the BMI.
    let initial = mss
        .flat(
            "assessments",
            "text/csv; charset=utf-8",
            assessment_csv(
                "BIL-PATHWAY-1",
                "09/03/2026",
                &[("poids", "86,4", "kg"), ("taille", "162", "cm"), ("tm6", "412", "m")],
            ),
        )
        .await;
    assert_eq!(
        (
            initial["accepted"].as_u64(),
            initial["refused"].as_array().map(Vec::len)
        ),
        (Some(3), Some(0))
    );
    let bmi = mss
        .search("Observation?patient=Patient/patient-le-bihan&code=http://loinc.org|39156-5")
        .await;
    assert_eq!(bmi.len(), 1);
    assert_eq!(bmi[0]["valueQuantity"]["code"], "kg/m2");

    // Sessions: the attendance export, one session missed.
    let mut attendance = String::from(
        "id_parcours;debut_parcours;prescription;ins;type_ins;siret_mss;id_seance;date_seance;duree_min;présent;type_seance\r\n",
    );
    for (n, (date, present)) in [
        ("12/03/2026", "oui"),
        ("16/03/2026", "oui"),
        ("19/03/2026", "non"),
        ("23/03/2026", "oui"),
    ]
    .iter()
    .enumerate()
    {
        attendance.push_str(&format!(
            "PRG-PATHWAY;09/03/2026;{sr};{INS};TEST;{BOUGER_SIRET};SEA-P{n};{date};60;{present};seance\r\n"
        ));
    }
    let sessions = mss.flat("attendance", "text/csv; charset=utf-8", attendance).await;
    assert_eq!(sessions["accepted"], 4, "{sessions}");
    // The programme became active at the first attended session.
    let episodes = mss.search("EpisodeOfCare?patient=Patient/patient-le-bihan").await;
    assert_eq!(episodes.len(), 1);
    assert_eq!(episodes[0]["status"], "active");
    assert_eq!(mss.move_task(&task, "in-progress").await.status(), StatusCode::OK);

    // Final assessment, three months later: she walks further.
    let last = mss
        .flat(
            "assessments",
            "text/csv; charset=utf-8",
            assessment_csv(
                "BIL-PATHWAY-2",
                "05/06/2026",
                &[("poids", "83,1", "kg"), ("taille", "162", "cm"), ("tm6", "468", "m")],
            ),
        )
        .await;
    assert_eq!(last["accepted"], 3, "{last}");
    let walks = mss
        .search("Observation?patient=Patient/patient-le-bihan&code=http://loinc.org|64098-7&_sort=date")
        .await;
    let metres: Vec<String> = walks.iter().map(|o| o["valueQuantity"]["value"].to_string()).collect();
    assert_eq!(metres, ["412", "468"]);

    // Orientation to a sport-santé club, attendance rate, and the 6-month
    // follow-up.
    let outcome = json!({
        "patient": {"ins": INS, "ins_kind": "TEST"},
        "mss": {"siret": BOUGER_SIRET},
        "programme": {"source_id": "PRG-PATHWAY", "start": "2026-03-09", "prescription": sr},
        "end_of_pathway": {"date": "2026-06-05", "orientation": "CLUB-SS", "attendance_rate": {"value": "75", "unit": "%"}},
        "follow_up_6m": {"date": "2026-12-07", "active": true, "method": "appel téléphonique"}
    });
    mss.flat("outcomes", "application/json", outcome.to_string()).await;

    // The MSS closes the referral: the programme is finished.
    assert_eq!(mss.move_task(&task, "completed").await.status(), StatusCode::OK);
    let episode = mss
        .read(&format!("EpisodeOfCare/{}", episodes[0]["id"].as_str().unwrap()))
        .await;
    assert_eq!(episode["status"], "finished");
    // A closed referral stays closed.
    assert_eq!(mss.move_task(&task, "in-progress").await.status(), StatusCode::CONFLICT);

    // The prescriber follows it all from the practice: the referral, the
    // assessments and the outcomes of their patient.
    assert_eq!(gp.read(&task).await["status"], "completed");
    let observations = gp
        .search("Observation?patient=Patient/patient-le-bihan&_count=100")
        .await;
    assert!(observations.len() >= 11, "{} observations", observations.len());
    // The other MSS, which had no part in it, sees none of it.
    let vilaine = Software::of(app, "mss-vilaine-active").await;
    let r = vilaine
        .http
        .get(format!("{}/{task}", vilaine.fhir))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

on_both_backends!(whole_pathway, a_prescription_travels_the_whole_pathway);
