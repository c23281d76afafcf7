//! The demo territory of `serve --demo`: the gateway accepts it entirely,
//! loading it again changes nothing, and each demo organisation sees what
//! the README says it sees.

#![allow(clippy::unwrap_used)]

mod common;

use apa_gateway::demo::{self, CLIENTS, Loaded, TERRITORY};
use common::{TestApp, bearer_client, json, register_client};
use reqwest::StatusCode;
use serde_json::Value;

/// `Type/id` of every resource of the territory.
fn territory_ids() -> Vec<String> {
    let bundle: Value = serde_json::from_str(TERRITORY).unwrap();
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["url"].as_str().unwrap().to_string())
        .collect()
}

/// The current version of every resource of the territory, as the
/// operator reads it.
async fn versions(app: &TestApp) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for id in territory_ids() {
        let r = app.get(&id).await;
        assert_eq!(r.status(), StatusCode::OK, "{id}");
        let body = json(r).await;
        out.push((
            id,
            body["meta"]["versionId"].as_str().unwrap().to_string(),
            body["meta"]["lastUpdated"].as_str().unwrap().to_string(),
        ));
    }
    out
}

async fn the_demo_start_loads_the_territory_once(app: &TestApp) {
    let total = territory_ids().len();
    let first = demo::load(app.running()).await.unwrap();
    assert_eq!(
        first,
        Loaded {
            created: total,
            present: 0
        }
    );
    let before = versions(app).await;
    assert!(before.iter().all(|(_, v, _)| v == "1"), "{before:?}");

    // A second start: nothing is written, nothing changes.
    let history = json(app.get("_history?_count=1000").await).await["entry"]
        .as_array()
        .unwrap()
        .len();
    let second = demo::load(app.running()).await.unwrap();
    assert_eq!(
        second,
        Loaded {
            created: 0,
            present: total
        }
    );
    assert_eq!(versions(app).await, before);
    let after = json(app.get("_history?_count=1000").await).await["entry"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, history);

    // The load is recorded with the gateway as the client: one AuditEvent
    // per patient it concerns (IHE BALP), each naming every resource.
    let auditor = register_client(app.running(), "auditor", None, "system/AuditEvent.rs operator").await;
    let found = bearer_client(&auditor.token)
        .get(format!("{}/AuditEvent?subtype=transaction", app.base))
        .send()
        .await
        .unwrap();
    let events = json(found).await;
    let events = events["entry"].as_array().unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    for e in events {
        assert_eq!(e["resource"]["agent"][0]["who"]["identifier"]["value"], "apa-gateway");
        assert_eq!(e["resource"]["entity"].as_array().unwrap().len(), total + 1);
    }
}

async fn a_client_may_post_the_territory_and_the_demo_start_then_adds_nothing(app: &TestApp) {
    let bundle: Value = serde_json::from_str(TERRITORY).unwrap();
    let r = app.post("", &bundle).await;
    assert_eq!(r.status(), StatusCode::OK);
    let response = json(r).await;
    let entries = response["entry"].as_array().unwrap();
    assert_eq!(entries.len(), territory_ids().len());
    for (e, id) in entries.iter().zip(territory_ids()) {
        assert_eq!(e["response"]["status"], "201 Created", "{id}");
    }
    let loaded = demo::load(app.running()).await.unwrap();
    assert_eq!(loaded.created, 0);
    assert!(versions(app).await.iter().all(|(_, v, _)| v == "1"));
}

async fn a_resource_deleted_while_exploring_stays_deleted(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    assert_eq!(
        app.delete("Task/referral-le-bihan").await.status(),
        StatusCode::NO_CONTENT
    );
    let again = demo::load(app.running()).await.unwrap();
    assert_eq!(again.created, 0);
    assert_eq!(app.get("Task/referral-le-bihan").await.status(), StatusCode::GONE);
}

/// What the README's walk-through shows: the prescriber's practice, the
/// MSS that owns the referral and the CPTS of her commune see the patient;
/// the other MSS and the other practice do not; everyone sees the directory.
async fn each_demo_organisation_sees_its_compartment(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let patient = "Patient/patient-le-bihan";
    for c in CLIENTS {
        // The demo's own scopes, through the real token endpoint.
        let token = register_client(app.running(), c.id, c.organization, c.scope)
            .await
            .token;
        let http = bearer_client(&token);
        let get = |path: &str| http.get(format!("{}/{path}", app.base)).send();
        let expected = match c.id {
            "demo" | "cabinet-colombier" | "mss-bouger-plus" | "cpts-rennes-est" => StatusCode::OK,
            _ => StatusCode::NOT_FOUND,
        };
        assert_eq!(
            get(patient).await.unwrap().status(),
            expected,
            "{} reads {patient}",
            c.id
        );
        assert_eq!(
            get("Task/referral-le-bihan").await.unwrap().status(),
            expected,
            "{} reads the referral",
            c.id
        );
        let directory = json(get("HealthcareService?_count=50").await.unwrap()).await;
        assert_eq!(directory["entry"].as_array().map_or(0, Vec::len), 2, "{}", c.id);
        let others = json(get("Patient?_count=50").await.unwrap()).await;
        let seen = others["entry"].as_array().map_or(0, Vec::len);
        // Their GP's practice sees each patient (Dr Lebreton is Solène
        // Guillou's too, Dr Riou Jean-Yves Tanguy's).
        let expected = match c.id {
            "demo" => 3,
            "cabinet-colombier" => 2,
            "msp-cesson" | "mss-bouger-plus" | "cpts-rennes-est" => 1,
            _ => 0,
        };
        assert_eq!(seen, expected, "{} searches patients", c.id);
    }
}

/// The last step of the README's walk-through: the MSS that owns the
/// referral accepts it; the other MSS cannot even find it.
async fn the_mss_that_owns_the_referral_accepts_it(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let accept = r#"[{"op":"replace","path":"/status","value":"accepted"}]"#;
    let mss = |id: &'static str| async move {
        let c = CLIENTS.iter().find(|c| c.id == id).unwrap();
        bearer_client(
            &register_client(app.running(), c.id, c.organization, c.scope)
                .await
                .token,
        )
    };
    let patch = |http: reqwest::Client| async move {
        http.patch(format!("{}/Task/referral-le-bihan", app.base))
            .header("content-type", "application/json-patch+json")
            .body(accept)
            .send()
            .await
            .unwrap()
    };
    let other = patch(mss("mss-vilaine-active").await).await;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    let owner = patch(mss("mss-bouger-plus").await).await;
    assert_eq!(owner.status(), StatusCode::OK);
    assert_eq!(json(owner).await["status"], "accepted");
}

on_both_backends!(loads_once, the_demo_start_loads_the_territory_once);
on_both_backends!(
    posted_by_a_client,
    a_client_may_post_the_territory_and_the_demo_start_then_adds_nothing
);
on_both_backends!(deleted_stays_deleted, a_resource_deleted_while_exploring_stays_deleted);
on_both_backends!(compartments, each_demo_organisation_sees_its_compartment);
on_both_backends!(referral_accepted, the_mss_that_owns_the_referral_accepts_it);
