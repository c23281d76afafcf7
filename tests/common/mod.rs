//! Starts the real gateway on a free port, on SQLite or PostgreSQL, for
//! the integration tests. PostgreSQL runs at 127.0.0.1:5432 (trust auth,
//! database `test`, or TEST_DATABASE_URL); each app gets a schema of its own.

#![allow(dead_code, clippy::unwrap_used)]

pub mod apa;
pub mod psc;

use apa_gateway::config::Config;
use apa_gateway::server::{self, Running};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestApp {
    pub base: String,
    /// The PostgreSQL schema of this app, dropped when it stops.
    pg_schema: Option<String>,
    /// Sends the token of a client with every scope (`system/*.cruds`).
    pub client: Client,
    /// Sends no token at all.
    pub anonymous: Client,
    pub backend: Backend,
    /// Its database, for scenarios that set it up as an earlier release
    /// left it (`TestApp::sql`).
    database_url: String,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

pub fn pg_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub async fn fresh_pg_schema() -> (String, String) {
    use sqlx::Connection;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::PgConnection::connect(&pg_url())
        .await
        .expect("PostgreSQL must be running at 127.0.0.1:5432 (see README)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut c)
        .await
        .expect("create schema");
    let sep = if pg_url().contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}options=-c%20search_path%3D{schema}", pg_url());
    (schema, url)
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// `spawn_app` with some settings changed.
pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let (pg_schema, database_url) = match backend {
        Backend::Sqlite => (None, format!("sqlite://{}/apa.db", dir.path().display())),
        Backend::Postgres => {
            let (schema, url) = fresh_pg_schema().await;
            (Some(schema), url)
        }
    };
    let mut cfg = Config {
        listen: "127.0.0.1:0".into(),
        database_url,
        db_pool_size: 4,
        ..Config::default()
    };
    configure(&mut cfg);
    let running = server::start(&cfg).await.expect("gateway starts");
    let database_url = cfg.database_url.clone();
    // Over HTTPS the test brings its own HTTP clients (trust, certificates).
    let client = match cfg.tls_cert {
        None => bearer_client(
            &register_client(&running, "operator", None, "system/*.cruds operator")
                .await
                .token,
        ),
        Some(_) => Client::new(),
    };
    TestApp {
        base: running.base.clone(),
        pg_schema,
        client,
        anonymous: Client::new(),
        backend,
        database_url,
        running: Some(running),
        _dir: dir,
    }
}

/// A registered client of a test app: its id, private key, and a token.
pub struct TestClient {
    pub id: String,
    pub pem: String,
    pub kid: String,
    pub token: String,
}

pub fn bearer_client(token: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header value"),
    );
    Client::builder().default_headers(headers).build().expect("client")
}

pub fn token_endpoint(base: &str) -> String {
    format!("{}/auth/token", base.trim_end_matches("/fhir"))
}

/// Registers a client (ES384 key) and obtains a token for `scope` through
/// the real token endpoint.
pub async fn register_client(running: &Running, id: &str, organization: Option<&str>, scope: &str) -> TestClient {
    register_client_via(&Client::new(), running, id, organization, scope, None).await
}

/// `register_client` with the client's TLS certificate thumbprint, asking
/// for the token with `http` (which presents that certificate).
pub async fn register_client_via(
    http: &Client,
    running: &Running,
    id: &str,
    organization: Option<&str>,
    scope: &str,
    tls_cert_sha256: Option<String>,
) -> TestClient {
    use apa_gateway::security::keys::{generate_es384, sign_assertion};
    let kid = format!("{id}-key");
    let (pem, jwks) = generate_es384(&kid).expect("key pair");
    running
        .store
        .save_client(apa_gateway::store::ClientRecord {
            id: id.to_string(),
            name: id.to_string(),
            organization: organization.map(str::to_string),
            scope: scope.to_string(),
            jwks: Some(jwks),
            jwks_url: None,
            tls_cert_sha256,
            created: 0,
            revoked: None,
        })
        .await
        .expect("client registered");
    let endpoint = token_endpoint(&running.base);
    let assertion = sign_assertion(id, &endpoint, &pem, &kid).expect("assertion");
    let r = http
        .post(&endpoint)
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
            ("scope", scope),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(r.status(), 200, "token for {id}");
    let body: Value = r.json().await.expect("token json");
    TestClient {
        id: id.to_string(),
        pem,
        kid,
        token: body["access_token"].as_str().expect("access_token").to_string(),
    }
}

impl TestApp {
    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("accept", "application/fhir+json")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.expect("request")
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.req(Method::POST, path)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    pub async fn put(&self, path: &str, body: &Value) -> Response {
        self.req(Method::PUT, path)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    /// Sends FHIR JSON as another client (its own token, its organisation).
    pub async fn send_as(&self, client: &Client, method: Method, path: &str, body: &Value) -> Response {
        client
            .request(method, self.url(path))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.req(Method::DELETE, path).send().await.expect("request")
    }

    /// Creates a resource and returns its id.
    pub async fn create(&self, resource: &Value) -> String {
        let rtype = resource["resourceType"].as_str().expect("resourceType");
        let r = self.post(rtype, resource).await;
        assert_eq!(r.status(), 201, "create {rtype}");
        let body: Value = r.json().await.expect("json");
        body["id"].as_str().expect("id").to_string()
    }

    /// Runs SQL on the app's database, beside the running gateway.
    pub async fn sql(&self, statements: &str) {
        use sqlx::Connection;
        let sql = sqlx::AssertSqlSafe(statements.to_string());
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.database_url)
                    .await
                    .expect("SQLite");
                sqlx::raw_sql(sql).execute(&mut c).await.expect("SQL");
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.database_url)
                    .await
                    .expect("PostgreSQL");
                sqlx::raw_sql(sql).execute(&mut c).await.expect("SQL");
            }
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        if let Some(schema) = self.pg_schema.take() {
            use sqlx::Connection;
            if let Ok(mut c) = sqlx::PgConnection::connect(&pg_url()).await {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                    .execute(&mut c)
                    .await;
            }
        }
    }
}

/// `AuditEvent?{query}` as `who` sees it (up to 1,000): the status and the
/// events.
pub async fn audit_trail(app: &TestApp, who: &Client, query: &str) -> (u16, Vec<Value>) {
    let r = who
        .get(app.url(&format!("AuditEvent?{query}&_count=1000")))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let b = json(r).await;
    let events = b["entry"]
        .as_array()
        .map(|es| es.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default();
    (status, events)
}

/// Reads and refusals are recorded without the response waiting for it:
/// polls (bounded) until `n` events match `AuditEvent?{query}`.
pub async fn wait_for_audit(app: &TestApp, who: &Client, query: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, found) = audit_trail(app, who, query).await;
        assert_eq!(status, 200, "AuditEvent?{query}");
        if found.len() >= n {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} AuditEvent(s) for {query}, found {}: {found:#?}",
            found.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub async fn json(r: Response) -> Value {
    let text = r.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Runs a scenario on SQLite and on PostgreSQL, as two tests.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, $scenario:path) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = common::spawn_app(common::Backend::Sqlite).await;
                $scenario(&app).await;
                app.stop().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let app = common::spawn_app(common::Backend::Postgres).await;
                $scenario(&app).await;
                app.stop().await;
            }
        }
    };
}

/// `on_both_backends!` with some settings changed: `$configure` is a
/// `fn(&mut Config)`.
#[macro_export]
macro_rules! on_both_backends_with {
    ($name:ident, $scenario:path, $configure:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = common::spawn_app_with(common::Backend::Sqlite, $configure).await;
                $scenario(&app).await;
                app.stop().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let app = common::spawn_app_with(common::Backend::Postgres, $configure).await;
                $scenario(&app).await;
                app.stop().await;
            }
        }
    };
}
