//! The plans of the hot queries on a database that grew while the gateway
//! served, as a new deployment's does: the store starts empty, the writer
//! commits thousands of prescriptions, then an organisation with 50 patients
//! and one with thousands read, search and page. Every statement they ran
//! must reach the compartment tables and the search index through their
//! keys: a full scan of one grows with the database. On PostgreSQL it found
//! two that did not (docs/storage.md).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::exec::{Frag, capture, explain};
use super::{Grant, HistoryQuery, Method, Store, Visibility, Write};
use crate::clock::now_micros;
use crate::fhir::interaction::index_of;
use crate::fhir::search::parse::{ParseOptions, parse_search};
use crate::fhir::search::registry::Registry;

const PATIENTS: usize = 4_000;
/// The small organisation's patients are the first ones.
const SMALL: usize = 50;
const INS: &str = "urn:oid:1.2.250.1.213.1.4.10";

fn small() -> Visibility {
    Visibility::Party(Some("Organization/small".into()))
}
fn big() -> Visibility {
    Visibility::Party(Some("Organization/big".into()))
}

fn write(json: serde_json::Value, patient: &str, party: &str) -> Write {
    let body = Bytes::from(json.to_string());
    let res = crate::fhir::resource::parse(&body, None).expect("a valid resource");
    Write {
        index: index_of(&res),
        resource_type: res.resource_type.clone(),
        id: res.json["id"].as_str().unwrap_or_default().to_string(),
        version: 1,
        updated: now_micros(),
        method: Method::Create,
        body: Some(body),
        pk: None,
        patients: vec![patient.to_string()],
        grants: vec![Grant {
            party: party.into(),
            patient: patient.into(),
            denied: false,
        }],
    }
}

/// A patient's prescription as a GP's software sends it, with one assessment.
fn prescription(i: usize) -> Vec<Write> {
    let p = format!("p{i}");
    let party = if i < SMALL {
        "Organization/small"
    } else {
        "Organization/big"
    };
    let subject = json!({"reference": format!("Patient/{p}")});
    vec![
        write(
            json!({"resourceType": "Patient", "id": p,
                   "identifier": [{"system": INS, "value": format!("{:015}", 100_000_000_000_000u64 + i as u64)}],
                   "name": [{"family": "Martin", "given": ["Anne"]}], "birthDate": "1960-01-01"}),
            &p,
            party,
        ),
        write(
            json!({"resourceType": "ServiceRequest", "id": format!("s{i}"), "status": "active",
                   "intent": "order", "subject": subject}),
            &p,
            party,
        ),
        write(
            json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                   "subject": subject, "effectiveDateTime": format!("2026-{:02}-{:02}", 1 + i % 12, 1 + i % 28),
                   "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}),
            &p,
            party,
        ),
    ]
}

/// Fills the store as clients would: many small commits, several at once.
async fn grow(store: &Store) {
    let mut tasks = tokio::task::JoinSet::new();
    let store = Arc::new(store.clone());
    for chunk in (0..PATIENTS).collect::<Vec<_>>().chunks(PATIENTS / 16) {
        let chunk = chunk.to_vec();
        let store = store.clone();
        tasks.spawn(async move {
            for group in chunk.chunks(4) {
                let writes: Vec<Write> = group.iter().flat_map(|i| prescription(*i)).collect();
                store
                    .write(Visibility::All, move |tx| {
                        Box::pin(async move { tx.put_all(writes).await })
                    })
                    .await
                    .expect("write");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn search(rtype: &str, query: &[(&str, String)]) -> crate::fhir::search::model::SearchRequest {
    let pairs: Vec<(String, String)> = query.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    parse_search(Registry::r4(), Some(rtype), &pairs, &ParseOptions::default()).expect("a valid search")
}

/// What a client of each organisation does most, as the statements it ran.
async fn hot_statements(store: &Store) -> Vec<Frag> {
    let mut all = Vec::new();
    for (vis, i) in [(small(), 7), (big(), PATIENTS - 7)] {
        let p = format!("Patient/p{i}");
        let ins = format!("{INS}|{:015}", 100_000_000_000_000u64 + i as u64);
        let (_, frags) = capture::statements(async {
            let found = store.read("Patient", &format!("p{i}"), &vis).await.expect("read");
            assert!(found.is_some(), "the organisation sees its patient");
            store.read("Observation", &format!("o{i}"), &vis).await.expect("read");
            store
                .vread("ServiceRequest", &format!("s{i}"), 1, &vis)
                .await
                .expect("vread");
            let history = HistoryQuery {
                resource_type: Some("Observation".into()),
                id: Some(format!("o{i}")),
                count: 20,
                ..HistoryQuery::default()
            };
            store.history(&history, &vis).await.expect("history");
            for req in [
                search("Patient", &[("identifier", ins.clone())]),
                search("ServiceRequest", &[("subject", p.clone()), ("status", "active".into())]),
                search(
                    "Observation",
                    &[
                        ("code", "http://loinc.org|29463-7".into()),
                        ("date", "2026-03-03".into()),
                        ("_count", "20".into()),
                    ],
                ),
                search(
                    "Observation",
                    &[("subject", p.clone()), ("_include", "Observation:subject".into())],
                ),
                search(
                    "Patient",
                    &[("_id", format!("p{i}")), ("_revinclude", "Observation:subject".into())],
                ),
            ] {
                let page = store.search(&req, &vis).await.expect("search");
                assert!(!page.matches.is_empty() || req.resource_type.as_deref() == Some("Observation"));
            }
        })
        .await;
        all.extend(frags);
    }
    all
}

/// The steps of `plan` that read a whole table of the compartment or of
/// the search index instead of seeking in one of its keys.
fn scans(dialect: super::Dialect, plan: &[String]) -> Vec<String> {
    let big_tables = [
        "resource",
        "resource_version",
        "resource_patient",
        "access_grant",
        "idx_token",
        "idx_string",
        "idx_date",
        "idx_reference",
    ];
    plan.iter()
        .filter(|step| match dialect {
            super::Dialect::Sqlite => {
                // "SCAN t" reads every row; "SCAN t USING [COVERING] INDEX"
                // walks an index in order (paging in pk order does that and
                // stops at the page); an automatic index is built per query.
                let automatic = step.contains("AUTOMATIC");
                let full = step.starts_with("SCAN ") && !step.contains(" USING ");
                automatic || (full && big_tables.iter().any(|t| step.split_whitespace().nth(1) == Some(t)))
            }
            super::Dialect::Postgres => {
                step.contains("Seq Scan on") && big_tables.iter().any(|t| step.contains(&format!("Seq Scan on {t} ")))
            }
        })
        .cloned()
        .collect()
}

async fn the_hot_queries_use_their_keys_after_growing(store: Store) {
    grow(&store).await;
    // The last refresh is the writer's; let it finish (PostgreSQL's runs in
    // the background).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let statements = hot_statements(&store).await;
    assert!(statements.len() > 20, "{} statements", statements.len());
    let dialect = store.dialect();
    let mut bad = Vec::new();
    for frag in &statements {
        let plan = store
            .with_conn(async |c| explain(c, frag).await)
            .await
            .expect("explain");
        let found = scans(dialect, &plan);
        if !found.is_empty() {
            bad.push(format!("{}\n  {}", frag.sql, plan.join("\n  ")));
        }
    }
    assert!(
        bad.is_empty(),
        "statements that scan a growing table:\n{}",
        bad.join("\n\n")
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_plans_stay_on_the_keys_as_the_database_fills() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&format!("sqlite://{}/plans.db", dir.path().display()), 4)
        .await
        .expect("store");
    the_hot_queries_use_their_keys_after_growing(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_plans_stay_on_the_keys_as_the_database_fills() {
    use sqlx::Connection;
    let url = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("plans_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&url)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432 (README: Test it)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await
        .expect("create schema");
    let sep = if url.contains('?') { '&' } else { '?' };
    let store = Store::open(&format!("{url}{sep}options=-c%20search_path%3D{schema}"), 4)
        .await
        .expect("store");
    the_hot_queries_use_their_keys_after_growing(store).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .expect("drop schema");
}
