//! Organisations keep their own directory: on the demo territory, MSS
//! Vilaine Active tries to rewrite, delete, forge or take over MSS Bouger+'s
//! programme (which routing follows), Bouger+'s Organization and another
//! practice's staff, and is refused; it keeps its own programme, staff and
//! physicians up to date; the operator edits anything.

#![allow(clippy::unwrap_used)]

mod common;

use apa_gateway::demo;
use common::{TestApp, bearer_client, json, register_client};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};

async fn client_of(app: &TestApp, organization: &str) -> Client {
    let c = register_client(app.running(), organization, Some(organization), "system/*.cruds").await;
    bearer_client(&c.token)
}

/// The status, and the code and location of the first issue.
async fn refusal(r: Response) -> (StatusCode, String, String) {
    let status = r.status();
    let oo = json(r).await;
    let first = |k: &str| oo["issue"][0][k].as_str().unwrap_or_default().to_string();
    let at = oo["issue"][0]["expression"][0].as_str().unwrap_or_default().to_string();
    (status, first("code"), at)
}

fn forbidden_at(at: &str) -> (StatusCode, String, String) {
    (StatusCode::FORBIDDEN, "forbidden".into(), at.into())
}

async fn patch_as(app: &TestApp, client: &Client, path: &str, ops: &Value) -> Response {
    client
        .request(Method::PATCH, app.url(path))
        .header("content-type", "application/json-patch+json")
        .body(ops.to_string())
        .send()
        .await
        .unwrap()
}

fn provided_by(mut programme: Value, org: &str) -> Value {
    programme["providedBy"] = json!({"reference": org});
    programme
}

/// A new programme like `model`, without its id and version.
fn another_programme(model: &Value, name: &str) -> Value {
    let mut new = model.clone();
    if let Some(o) = new.as_object_mut() {
        o.remove("id");
        o.remove("meta");
    }
    new["name"] = json!(name);
    new
}

async fn an_mss_cannot_rewrite_delete_or_forge_another_mss_programme(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let vilaine = client_of(app, "mss-vilaine-active").await;
    let bouger = json(app.get("HealthcareService/programme-bouger-plus").await).await;

    // Vilaine Active closes Bouger+'s programme, so that routing sends
    // Bouger+'s patients elsewhere…
    let mut closed = bouger.clone();
    closed["active"] = json!(false);
    let r = app
        .send_as(
            &vilaine,
            Method::PUT,
            "HealthcareService/programme-bouger-plus",
            &closed,
        )
        .await;
    assert_eq!(refusal(r).await, forbidden_at("HealthcareService"));
    // …takes it over…
    let taken = provided_by(bouger.clone(), "Organization/mss-vilaine-active");
    let r = app
        .send_as(&vilaine, Method::PUT, "HealthcareService/programme-bouger-plus", &taken)
        .await;
    assert_eq!(refusal(r).await, forbidden_at("HealthcareService"));
    // …or deletes it.
    let r = app
        .send_as(
            &vilaine,
            Method::DELETE,
            "HealthcareService/programme-bouger-plus",
            &Value::Null,
        )
        .await;
    assert_eq!(refusal(r).await, forbidden_at("HealthcareService"));
    let stored = json(app.get("HealthcareService/programme-bouger-plus").await).await;
    assert_eq!(stored, bouger, "Bouger+'s programme is untouched");

    // It announces a programme run by Bouger+, on /fhir and in a transaction.
    let forged = another_programme(&bouger, "Bouger+ Cesson (sic)");
    let r = app.send_as(&vilaine, Method::POST, "HealthcareService", &forged).await;
    assert_eq!(refusal(r).await, forbidden_at("HealthcareService.providedBy"));
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": forged, "request": {"method": "POST", "url": "HealthcareService"}}
    ]});
    let r = app.send_as(&vilaine, Method::POST, "", &bundle).await;
    assert_eq!(refusal(r).await, forbidden_at("Bundle.entry[0].resource.providedBy"));
    let found = json(
        app.get("HealthcareService?organization=Organization/mss-bouger-plus")
            .await,
    )
    .await;
    assert_eq!(found["entry"].as_array().map_or(0, Vec::len), 1, "{found}");
}

async fn an_mss_cannot_edit_another_organisation_or_its_staff(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let vilaine = client_of(app, "mss-vilaine-active").await;

    // Vilaine Active rewrites Bouger+'s Organization (its territory decides routing).
    let mut bouger = json(app.get("Organization/mss-bouger-plus").await).await;
    bouger["name"] = json!("Bouger+ (fermé)");
    let r = app
        .send_as(&vilaine, Method::PUT, "Organization/mss-bouger-plus", &bouger)
        .await;
    assert_eq!(refusal(r).await, forbidden_at("Organization"));
    // Or puts Bouger+'s SIRET on its own Organization, so that a client
    // registered later under that SIRET would act for Vilaine Active.
    let mut own = json(app.get("Organization/mss-vilaine-active").await).await;
    own["identifier"] = bouger["identifier"].clone();
    let r = app
        .send_as(&vilaine, Method::PUT, "Organization/mss-vilaine-active", &own)
        .await;
    assert_eq!(refusal(r).await, forbidden_at("Organization.identifier"));

    // It ends Dr Riou's role at the MSP de Cesson.
    let ended = json!([{"op": "add", "path": "/active", "value": false}]);
    let r = patch_as(app, &vilaine, "PractitionerRole/dr-riou-msp-cesson", &ended).await;
    assert_eq!(refusal(r).await, forbidden_at("PractitionerRole"));
    // Or moves the role to itself, to prescribe as Dr Riou.
    let moved = json!([{"op": "replace", "path": "/organization/reference",
                        "value": "Organization/mss-vilaine-active"}]);
    let r = patch_as(app, &vilaine, "PractitionerRole/dr-riou-msp-cesson", &moved).await;
    assert_eq!(refusal(r).await, forbidden_at("PractitionerRole"));

    // Dr Riou has no role at Vilaine Active: it neither changes nor deletes him.
    let mut riou = json(app.get("Practitioner/dr-riou").await).await;
    riou["name"][0]["family"] = json!("Riou-Vilaine");
    let r = app.send_as(&vilaine, Method::PUT, "Practitioner/dr-riou", &riou).await;
    assert_eq!(refusal(r).await, forbidden_at("Practitioner"));
    let r = app
        .send_as(&vilaine, Method::DELETE, "Practitioner/dr-riou", &Value::Null)
        .await;
    assert_eq!(refusal(r).await, forbidden_at("Practitioner"));
}

async fn an_mss_keeps_its_own_directory_up_to_date(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let vilaine = client_of(app, "mss-vilaine-active").await;

    // It renames its programme…
    let mut own = json(app.get("HealthcareService/programme-vilaine-bouge").await).await;
    own["name"] = json!("Vilaine Bouge — saison 2");
    let r = app
        .send_as(&vilaine, Method::PUT, "HealthcareService/programme-vilaine-bouge", &own)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // …but does not hand it over to Bouger+.
    let handed = provided_by(json(r).await, "Organization/mss-bouger-plus");
    let r = app
        .send_as(
            &vilaine,
            Method::PUT,
            "HealthcareService/programme-vilaine-bouge",
            &handed,
        )
        .await;
    assert_eq!(refusal(r).await, forbidden_at("HealthcareService.providedBy"));

    // It opens a second programme of its own.
    let second = another_programme(&own, "Vilaine Bouge — seniors");
    let r = app.send_as(&vilaine, Method::POST, "HealthcareService", &second).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // It registers its new physiotherapist and their role at the MSS, and
    // may then correct their record; deleting it is the operator's.
    let kine = json!({"resourceType": "Practitioner", "active": true,
        "name": [{"family": "Morvan", "given": ["Gwenola"]}]});
    let r = app.send_as(&vilaine, Method::POST, "Practitioner", &kine).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut kine = json(r).await;
    let kine_id = kine["id"].as_str().unwrap().to_string();
    let role = json!({"resourceType": "PractitionerRole", "active": true,
        "practitioner": {"reference": format!("Practitioner/{kine_id}")},
        "organization": {"reference": "Organization/mss-vilaine-active"}});
    let r = app.send_as(&vilaine, Method::POST, "PractitionerRole", &role).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    kine["name"][0]["given"] = json!(["Gwénola"]);
    let r = app
        .send_as(&vilaine, Method::PUT, &format!("Practitioner/{kine_id}"), &kine)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .send_as(
            &vilaine,
            Method::DELETE,
            &format!("Practitioner/{kine_id}"),
            &Value::Null,
        )
        .await;
    assert_eq!(refusal(r).await, forbidden_at("Practitioner"));

    // A role it declares at Bouger+ is Bouger+'s to declare.
    let mut elsewhere = role;
    elsewhere["organization"]["reference"] = json!("Organization/mss-bouger-plus");
    let r = app
        .send_as(&vilaine, Method::POST, "PractitionerRole", &elsewhere)
        .await;
    assert_eq!(refusal(r).await, forbidden_at("PractitionerRole.organization"));
}

async fn the_operator_edits_anyones_directory(app: &TestApp) {
    demo::load(app.running()).await.unwrap();
    let mut closed = json(app.get("HealthcareService/programme-bouger-plus").await).await;
    closed["active"] = json!(false);
    let r = app.put("HealthcareService/programme-bouger-plus", &closed).await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut bouger = json(app.get("Organization/mss-bouger-plus").await).await;
    bouger["name"] = json!("Maison Sport-Santé Bouger+");
    let r = app.put("Organization/mss-bouger-plus", &bouger).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .req(Method::PATCH, "PractitionerRole/dr-riou-msp-cesson")
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "add", "path": "/active", "value": false}]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

on_both_backends!(
    another_mss_programme,
    an_mss_cannot_rewrite_delete_or_forge_another_mss_programme
);
on_both_backends!(
    another_organisation_and_staff,
    an_mss_cannot_edit_another_organisation_or_its_staff
);
on_both_backends!(own_directory, an_mss_keeps_its_own_directory_up_to_date);
on_both_backends!(operator_edits_anything, the_operator_edits_anyones_directory);
