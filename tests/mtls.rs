//! Mutual TLS: with a client CA configured, only clients presenting a
//! certificate signed by it get through the handshake; a certificate is
//! registered to one client, the token endpoint refuses an assertion of
//! another client, and access tokens are bound to the certificate.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use apa_gateway::security::certs::thumbprint;
use apa_gateway::security::keys::sign_assertion;
use base64::Engine;
use common::{Backend, TestApp, json, register_client_via, spawn_app_with, token_endpoint};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use reqwest::{Certificate, Client, Identity, StatusCode};
use serde_json::Value;

/// Two years, subdomains included.
const HSTS: &str = "max-age=63072000; includeSubDomains";

/// A certificate authority of the test, and what it signed.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` with `usage`: (certificate PEM, key PEM, DER).
    fn sign(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            thumbprint: thumbprint(cert.der()),
        }
    }

    fn client_cert(&self, name: &str) -> Leaf {
        self.sign(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    /// `x5t#S256`
    thumbprint: String,
}

/// An HTTPS client trusting only the test CA, presenting `cert` if given.
fn https(ca: &Ca, cert: Option<&Leaf>) -> Client {
    let mut b = Client::builder().tls_certs_only([Certificate::from_pem(ca.pem().as_bytes()).unwrap()]);
    if let Some(c) = cert {
        b = b.identity(Identity::from_pem(format!("{}{}", c.cert_pem, c.key_pem).as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn bearer(ca: &Ca, cert: Option<&Leaf>, token: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut b = Client::builder()
        .tls_certs_only([Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .default_headers(headers);
    if let Some(c) = cert {
        b = b.identity(Identity::from_pem(format!("{}{}", c.cert_pem, c.key_pem).as_bytes()).unwrap());
    }
    b.build().unwrap()
}

async fn ask_token(http: &Client, app: &TestApp, assertion: &str) -> reqwest::Response {
    http.post(token_endpoint(&app.base))
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", "system/*.rs"),
        ])
        .send()
        .await
        .unwrap()
}

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

async fn mutual_tls(backend: Backend) {
    let ca = Ca::new("APA test client CA");
    let server = ca.sign(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    };
    let (cert, key, client_ca) = (
        write("server.pem", &server.cert_pem),
        write("server.key", &server.key_pem),
        write("ca.pem", &ca.pem()),
    );
    let app = spawn_app_with(backend, |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        c.tls_client_ca = Some(client_ca);
    })
    .await;
    assert!(app.base.starts_with("https://"));

    let (cert_a, cert_b, cert_unregistered) = (
        ca.client_cert("mss-bouger"),
        ca.client_cert("cabinet-gp"),
        ca.client_cert("nobody"),
    );
    // A certificate of the right CA opens the connection.
    let r = https(&ca, Some(&cert_a)).get(app.url("metadata")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], HSTS);

    // No certificate, or one from another CA: the handshake is refused.
    assert!(https(&ca, None).get(app.url("metadata")).send().await.is_err());
    let stranger = Ca::new("Another CA").client_cert("mss-bouger");
    assert!(
        https(&ca, Some(&stranger))
            .get(app.url("metadata"))
            .send()
            .await
            .is_err()
    );

    // The discovery document says tokens are bound to certificates.
    let smart = https(&ca, Some(&cert_a))
        .get(app.url(".well-known/smart-configuration"))
        .send()
        .await
        .unwrap();
    assert_eq!(json(smart).await["tls_client_certificate_bound_access_tokens"], true);

    // Client A gets a token over a connection with its certificate, bound to it.
    let a = register_client_via(
        &https(&ca, Some(&cert_a)),
        app.running(),
        "mss-bouger",
        Some("org-mss"),
        "system/*.rs",
        Some(cert_a.thumbprint.clone()),
    )
    .await;
    assert_eq!(claims(&a.token)["cnf"]["x5t#S256"], cert_a.thumbprint.as_str());
    let r = bearer(&ca, Some(&cert_a), &a.token)
        .get(app.url("Patient"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b = register_client_via(
        &https(&ca, Some(&cert_b)),
        app.running(),
        "cabinet-gp",
        Some("org-gp"),
        "system/*.rs",
        Some(cert_b.thumbprint.clone()),
    )
    .await;

    // The assertion of client B over the connection of client A's certificate.
    let endpoint = token_endpoint(&app.base);
    let b_assertion = sign_assertion(&b.id, &endpoint, &b.pem, &b.kid).unwrap();
    let r = ask_token(&https(&ca, Some(&cert_a)), &app, &b_assertion).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let mismatch = r.bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&mismatch).unwrap();
    assert_eq!(body["error"], "invalid_client");
    // A certificate of the CA registered to no client.
    let a_assertion = sign_assertion(&a.id, &endpoint, &a.pem, &a.kid).unwrap();
    let r = ask_token(&https(&ca, Some(&cert_unregistered)), &app, &a_assertion).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Both read like the assertion of a client that does not exist: the
    // certificate says nothing of which client ids are registered.
    let (nobody_pem, _) = apa_gateway::security::keys::generate_es384("k").unwrap();
    let nobody = sign_assertion("no-such-client", &endpoint, &nobody_pem, "k").unwrap();
    let r = ask_token(&https(&ca, Some(&cert_a)), &app, &nobody).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let unknown = r.bytes().await.unwrap();
    assert_eq!(mismatch, unknown);
    let r = ask_token(&https(&ca, Some(&cert_unregistered)), &app, &a_assertion).await;
    assert_eq!(r.bytes().await.unwrap(), unknown);

    // A's token used over a connection with another certificate.
    for other in [&cert_b, &cert_unregistered] {
        let r = bearer(&ca, Some(other), &a.token)
            .get(app.url("Patient"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
    }
    // The matching pair still works.
    let r = bearer(&ca, Some(&cert_b), &b.token)
        .get(app.url("Patient"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_sqlite() {
    mutual_tls(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_postgres() {
    mutual_tls(Backend::Postgres).await;
}

/// HTTPS without client certificates: every response, refusals and
/// unknown paths included, tells the browser or client to come back over
/// HTTPS only, and the metrics still know their peer is local.
async fn every_https_response_carries_hsts(backend: Backend) {
    let ca = Ca::new("APA test server CA");
    let server = ca.sign(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    let app = spawn_app_with(backend, |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await;
    let http = https(&ca, None);
    let root = app.base.trim_end_matches("/fhir").to_string();
    for (url, status) in [
        (app.url("metadata"), 200),
        (app.url("Patient"), 401),
        (format!("{root}/nowhere"), 404),
        (format!("{root}/health/live"), 200),
        // Behind TLS the peer address is still known: loopback reads them.
        (format!("{root}/metrics"), 200),
    ] {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), status, "{url}");
        assert_eq!(r.headers()["strict-transport-security"], HSTS, "{url}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{url}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_over_https_sqlite() {
    every_https_response_carries_hsts(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_over_https_postgres() {
    every_https_response_carries_hsts(Backend::Postgres).await;
}

/// The client table as created before mutual TLS.
const OLD_CLIENT_TABLE: &str = "CREATE TABLE client (id TEXT PRIMARY KEY, name TEXT NOT NULL, organization TEXT, \
     scope TEXT NOT NULL, jwks TEXT, jwks_url TEXT, created BIGINT NOT NULL, revoked BIGINT); \
     INSERT INTO client VALUES ('old', 'Old client', NULL, 'system/*.rs', '{\"keys\":[]}', NULL, 1, NULL)";

async fn an_older_database_gets_the_certificate_column(url: &str) {
    use apa_gateway::store::Store;
    // Opened twice: applying the schema again changes nothing.
    for _ in 0..2 {
        let store = Store::open(url, 2).await.unwrap();
        let old = store.client("old").await.unwrap().expect("the old client is kept");
        assert_eq!(old.tls_cert_sha256, None);
        let mut updated = old.clone();
        updated.tls_cert_sha256 = Some("abc".into());
        store.save_client(updated).await.unwrap();
        assert_eq!(
            store.client("old").await.unwrap().unwrap().tls_cert_sha256.as_deref(),
            Some("abc")
        );
        store.save_client(old).await.unwrap();
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_upgrade_sqlite() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/old.db", dir.path().display());
    let mut c = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    sqlx::raw_sql(OLD_CLIENT_TABLE).execute(&mut c).await.unwrap();
    c.close().await.unwrap();
    an_older_database_gets_the_certificate_column(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_upgrade_postgres() {
    use sqlx::Connection;
    let (schema, url) = common::fresh_pg_schema().await;
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(OLD_CLIENT_TABLE).execute(&mut c).await.unwrap();
    an_older_database_gets_the_certificate_column(&url).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut c)
        .await
        .unwrap();
}
