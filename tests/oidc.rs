//! Professionals' tokens from an external OpenID Connect issuer (Pro Santé
//! Connect-like): the issuer's keys are served by a wiremock server, its
//! tokens are signed here.

#![allow(clippy::unwrap_used)]

mod common;

use apa_gateway::config::Config;
use apa_gateway::security::auth::Auth;
use apa_gateway::security::oidc::OidcSettings;
use apa_gateway::security::scopes::Scopes;
use common::psc::{AUDIENCE, ISSUER};
use common::{TestApp, bearer_client, json, register_client};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SIRET_GP: &str = "12345678200010";
const ID_NAT_PS: &str = "810002345678";

/// A signing key of the issuer.
struct IssuerKey {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Jwk,
}

impl IssuerKey {
    fn es256(kid: &str) -> IssuerKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Self::from(
            kid,
            EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(),
            Algorithm::ES256,
        )
    }

    fn rs256(kid: &str) -> IssuerKey {
        let pem = include_str!("../fixtures/keys/test-client-rsa.pem");
        Self::from(
            kid,
            EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            Algorithm::RS256,
        )
    }

    fn from(kid: &str, key: EncodingKey, alg: Algorithm) -> IssuerKey {
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        jwk.common.key_algorithm = Some(KeyAlgorithm::from(alg));
        IssuerKey {
            kid: kid.into(),
            alg,
            key,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        encode(&h, claims, &self.key).unwrap()
    }
}

fn jwks(keys: &[&IssuerKey]) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    })
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of a PSC access token of a GP practising at `siret` (the
/// first activity, as often, has no SIRET).
fn professional(siret: &str) -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "iat": now(),
        "sub": format!("f:0f5ab7b0-1a2b-4c3d-9e8f-000000000001:{ID_NAT_PS}"),
        "acr": "eidas1",
        "preferred_username": ID_NAT_PS, "SubjectNameID": ID_NAT_PS,
        "given_name": "Jeanne", "family_name": "Martin",
        "Palier_Authentification": "APPPRIP3^1.2.250.1.213.1.5.1.1.1",
        "SubjectRefPro": {"codeCivilite": "MME", "exercices": [{
            "codeProfession": "10", "codeCategorieProfessionnelle": "C",
            "activities": [
                {"codeModeExercice": "S", "numeroSiretSite": "", "numeroFinessSite": "", "raisonSocialeSite": "CENTRE HOSPITALIER"},
                {"codeModeExercice": "L", "codeSecteurDactivite": "SA07", "numeroSiretSite": siret, "numeroFinessSite": "", "raisonSocialeSite": "CABINET DR MARTIN"}
            ]}]}
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

async fn status(app: &TestApp, token: &str) -> StatusCode {
    bearer_client(token)
        .get(app.url("Patient"))
        .send()
        .await
        .unwrap()
        .status()
}

async fn professionals_of_registered_organisations(app: &TestApp, issuer: &MockServer) {
    let (k1, k2, rsa) = (IssuerKey::es256("k1"), IssuerKey::es256("k2"), IssuerKey::rs256("r1"));
    Mock::given(method("GET"))
        .and(path("/certs"))
        .respond_with(jwks(&[&k1, &rsa]))
        .mount(issuer)
        .await;
    register_client(app.running(), "cabinet-martin", Some(SIRET_GP), "system/*.cruds").await;
    app.create(&json!({"resourceType": "Patient", "active": true})).await;

    // ES256 and RS256 tokens of the issuer work.
    let r = bearer_client(&k1.sign(&professional(SIRET_GP)))
        .get(app.url("Patient"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["resourceType"], "Bundle");
    assert_eq!(status(app, &rsa.sign(&professional(SIRET_GP))).await, 200);
    // The scopes are those configured for professionals (read and search here).
    let r = bearer_client(&k1.sign(&professional(SIRET_GP)))
        .post(app.url("Patient"))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Refused: another authentication level, audience, issuer, expired, not yet valid.
    let refused = [
        with(professional(SIRET_GP), "acr", json!("eidas0")),
        with(professional(SIRET_GP), "acr", Value::Null),
        with(professional(SIRET_GP), "aud", json!("another-service")),
        with(professional(SIRET_GP), "exp", json!(now() - 120)),
        with(professional(SIRET_GP), "nbf", json!(now() + 600)),
    ];
    for claims in refused {
        assert_eq!(
            status(app, &k1.sign(&claims)).await,
            StatusCode::UNAUTHORIZED,
            "{claims}"
        );
    }
    // The professional's id is preferred_username, else SubjectNameID; without either, no access.
    let only_subject_name_id = with(professional(SIRET_GP), "preferred_username", json!(""));
    assert_eq!(status(app, &k1.sign(&only_subject_name_id)).await, 200);
    let anonymous = with(only_subject_name_id, "SubjectNameID", Value::Null);
    assert_eq!(status(app, &k1.sign(&anonymous)).await, StatusCode::UNAUTHORIZED);
    // Signed by a key that is not the issuer's, under a known key id.
    let forger = IssuerKey::es256("k1");
    assert_eq!(
        status(app, &forger.sign(&professional(SIRET_GP))).await,
        StatusCode::UNAUTHORIZED
    );
    // alg none, and HS256 with a secret (as if the JWKS were a shared secret).
    let b64 = |v: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": "k1"})),
        b64(professional(SIRET_GP))
    );
    assert_eq!(status(app, &none).await, StatusCode::UNAUTHORIZED);
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let hs = encode(&h, &professional(SIRET_GP), &EncodingKey::from_secret(b"k1")).unwrap();
    assert_eq!(status(app, &hs).await, StatusCode::UNAUTHORIZED);

    // A professional of no registered organisation, or of a revoked one.
    assert_eq!(
        status(app, &k1.sign(&professional("98765432100019"))).await,
        StatusCode::FORBIDDEN
    );
    register_client(app.running(), "mss-closed", Some("55555555500055"), "system/*.rs").await;
    app.running().store.revoke_client("mss-closed", 1).await.unwrap();
    assert_eq!(
        status(app, &k1.sign(&professional("55555555500055"))).await,
        StatusCode::FORBIDDEN
    );

    // The issuer rotates its keys: an unknown key id makes the gateway fetch
    // them again, once.
    let fetches = || async { issuer.received_requests().await.unwrap().len() };
    assert_eq!(fetches().await, 1);
    Mock::given(method("GET"))
        .and(path("/certs"))
        .respond_with(jwks(&[&k1, &k2]))
        .with_priority(1)
        .mount(issuer)
        .await;
    assert_eq!(status(app, &k2.sign(&professional(SIRET_GP))).await, 200);
    assert_eq!(fetches().await, 2);
    // Unknown key ids right after do not make it fetch again.
    let k3 = IssuerKey::es256("k3");
    for _ in 0..3 {
        assert_eq!(
            status(app, &k3.sign(&professional(SIRET_GP))).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(fetches().await, 2);

    // Who acts: the professional, for the Organization of their activity
    // (registered by its SIRET, found among the stored Organizations).
    let r = app
        .put(
            "Organization/cabinet-martin",
            &json!({"resourceType": "Organization", "id": "cabinet-martin",
                    "identifier": [{"system": "https://sirene.fr", "value": SIRET_GP}]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let auth = Auth::new(
        app.running().store.clone(),
        &app.base,
        300,
        Some(OidcSettings {
            issuer: ISSUER.into(),
            jwks_url: format!("{}/certs", issuer.uri()),
            audience: AUDIENCE.into(),
            required_acr: Some("eidas1".into()),
            scopes: Scopes::parse("user/*.rs").unwrap(),
        }),
    )
    .await
    .unwrap();
    let caller = auth
        .authenticate(&k1.sign(&professional(SIRET_GP)), None)
        .await
        .unwrap();
    assert_eq!(caller.professional.as_deref(), Some(ID_NAT_PS));
    assert_eq!(caller.organization.as_deref(), Some("cabinet-martin"));
    assert_eq!(caller.client_id, "cabinet-martin");

    // The gateway's own clients are unaffected.
    assert_eq!(app.get("Patient").await.status(), 200);

    // The trail names the professional behind the client (agent altId).
    let auditor = bearer_client(
        &register_client(app.running(), "auditor", None, "system/AuditEvent.rs operator")
            .await
            .token,
    );
    let by_professional = |e: &Value| e["agent"][0]["altId"] == ID_NAT_PS;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let found = loop {
        let r = auditor
            .get(app.url("AuditEvent?agent:identifier=cabinet-martin&subtype=search-type&_count=100"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let events: Vec<Value> = json(r).await["entry"]
            .as_array()
            .map(|es| es.iter().map(|e| e["resource"].clone()).collect())
            .unwrap_or_default();
        if let Some(e) = events.into_iter().find(by_professional) {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no event names the professional");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(found["agent"].as_array().map(Vec::len), Some(2));
    assert_eq!(found["agent"][0]["who"]["identifier"]["value"], "cabinet-martin");
    assert!(
        found["agent"][0]["who"]["display"]
            .as_str()
            .is_some_and(|d| d.contains(ID_NAT_PS)),
        "{found}"
    );
}

async fn an_unreachable_issuer_is_not_asked_at_every_request(app: &TestApp, issuer: &MockServer) {
    let k1 = IssuerKey::es256("k1");
    register_client(app.running(), "cabinet-martin", Some(SIRET_GP), "system/*.cruds").await;
    Mock::given(method("GET"))
        .and(path("/certs"))
        .respond_with(ResponseTemplate::new(503))
        .mount(issuer)
        .await;
    let token = k1.sign(&professional(SIRET_GP));
    for _ in 0..3 {
        assert_eq!(status(app, &token).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(issuer.received_requests().await.unwrap().len(), 1);
    // Back up: asked again after a few seconds.
    Mock::given(method("GET"))
        .and(path("/certs"))
        .respond_with(jwks(&[&k1]))
        .with_priority(1)
        .mount(issuer)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(5200)).await;
    assert_eq!(status(app, &token).await, 200);
}

fn psc(issuer_uri: &str) -> impl FnOnce(&mut Config) + use<> {
    common::psc::settings(issuer_uri, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn professionals_sqlite() {
    let issuer = MockServer::start().await;
    let app = common::spawn_app_with(common::Backend::Sqlite, psc(&issuer.uri())).await;
    professionals_of_registered_organisations(&app, &issuer).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn professionals_postgres() {
    let issuer = MockServer::start().await;
    let app = common::spawn_app_with(common::Backend::Postgres, psc(&issuer.uri())).await;
    professionals_of_registered_organisations(&app, &issuer).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_issuer_sqlite() {
    let issuer = MockServer::start().await;
    let app = common::spawn_app_with(common::Backend::Sqlite, psc(&issuer.uri())).await;
    an_unreachable_issuer_is_not_asked_at_every_request(&app, &issuer).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_issuer_postgres() {
    let issuer = MockServer::start().await;
    let app = common::spawn_app_with(common::Backend::Postgres, psc(&issuer.uri())).await;
    an_unreachable_issuer_is_not_asked_at_every_request(&app, &issuer).await;
    app.stop().await;
}
