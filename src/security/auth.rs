//! SMART on FHIR Backend Services: clients authenticate at the token
//! endpoint with a signed JWT (RS384 or ES384, `private_key_jwt`) and get a
//! short-lived access token, which every FHIR request then carries.
//!
//! Access tokens are JWTs signed (HS256) with a secret kept in the database,
//! so that every gateway replica accepts the tokens of the others; they
//! carry the client, its organisation and the granted scopes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use serde::{Deserialize, Serialize};

use super::Caller;
use super::cache::TtlCache;
use super::certs::{PeerCertificate, same_thumbprint};
use super::oidc::{Oidc, OidcSettings};
use super::scopes::Scopes;
use crate::store::{ClientRecord, Store, StoreError};

/// Client assertions may not live longer than this (SMART: 5 minutes).
const MAX_ASSERTION_LIFETIME: u64 = 300;
/// Clock skew tolerated between a client and the gateway.
const LEEWAY: u64 = 30;
/// No refused client authentication is answered sooner: well above what a
/// lookup and a signature check take, so that none of them shows.
const CLIENT_REFUSAL_FLOOR: Duration = Duration::from_millis(100);
const CLIENT_CACHE_TTL: Duration = Duration::from_secs(10);
const JWKS_CACHE_TTL: Duration = Duration::from_secs(300);

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// What the token endpoint tells a client whose authentication failed,
/// whatever the reason: an unknown client, a revoked one, a bad signature
/// or a replayed assertion must read alike, or the answer tells an
/// attacker which client ids exist and which keys are worth forging.
pub const CLIENT_AUTHENTICATION_FAILED: &str = "client authentication failed";

/// An OAuth 2.0 error of the token endpoint (RFC 6749 §5.2).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}: {reason}")]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    /// What the client is told.
    pub description: String,
    /// Why, for the audit trail and the logs only: for `invalid_client` it
    /// says more than the client may learn. Names no person.
    pub reason: String,
}

impl OAuthError {
    /// Every client-authentication failure: 401 (RFC 6749 §5.2 allows it
    /// for `invalid_client` whichever way the client authenticated), one
    /// description for all.
    fn client(reason: impl Into<String>) -> Self {
        OAuthError {
            status: 401,
            error: "invalid_client",
            description: CLIENT_AUTHENTICATION_FAILED.into(),
            reason: reason.into(),
        }
    }

    /// A malformed request or a refused scope: what is wrong depends only
    /// on the request (or, for scopes, on an authenticated client), so it
    /// is said.
    pub fn request(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        let description = description.into();
        OAuthError {
            status,
            error,
            reason: description.clone(),
            description,
        }
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "token endpoint storage failure");
        OAuthError::request(500, "server_error", "the token could not be issued")
    }
}

/// Why a request's bearer token was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("this endpoint needs an access token (Authorization: Bearer …); get one at {0}")]
    Missing(String),
    #[error("the access token is invalid or expired")]
    Invalid,
    #[error("the client of this access token has been revoked")]
    Revoked,
    #[error("the access token is bound to another TLS client certificate than the one presented")]
    CertificateMismatch,
    #[error("the professional practises at no organisation registered with this gateway")]
    NoOrganisation,
}

#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub scope: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    iat: u64,
    jti: String,
    scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    org: Option<String>,
    /// RFC 8705: the token is bound to this client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cnf: Option<Confirmation>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Confirmation {
    #[serde(rename = "x5t#S256")]
    x5t_s256: String,
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: String,
    exp: u64,
    jti: String,
}

pub struct Auth {
    store: Store,
    secret: Vec<u8>,
    issuer: String,
    token_endpoint: String,
    audience: String,
    lifetime: u64,
    http: reqwest::Client,
    clients: TtlCache<Option<Arc<ClientRecord>>>,
    jwks: TtlCache<Arc<JwkSet>>,
    /// The external issuer of professionals' tokens, if configured.
    oidc: Option<Oidc>,
    /// The client registered for an organisation (SIRET, FINESS or id).
    organisations: TtlCache<Option<Arc<ClientRecord>>>,
    /// Registered organisation (id, SIRET…) → Organization id.
    resolved: TtlCache<Option<String>>,
    /// Mutual TLS is on: tokens are bound to the client's certificate.
    certificate_bound: bool,
    /// Our access tokens already checked, until they expire.
    verified: VerifiedTokens,
}

/// What checking one of our access tokens found, kept until it expires: a
/// client sends the same token with each request for its lifetime, and
/// checking its signature and claims again each time cost a read by id
/// about 44,000 instructions, a sixth of the whole read (callgrind,
/// docs/benchmark.md). What may change meanwhile is still checked on every
/// request: expiry, the certificate binding, the client's revocation.
#[derive(Default)]
struct VerifiedTokens(std::sync::Mutex<HashMap<Box<str>, Verified>>);

#[derive(Clone)]
struct Verified {
    caller: Caller,
    /// `exp`: seconds since the epoch.
    expires: u64,
    /// `cnf.x5t#S256`.
    bound: Option<String>,
}

/// Entries kept at most: only tokens whose signature was checked get one,
/// so an unauthenticated sender cannot fill it.
const VERIFIED_TOKENS_MAX: usize = 10_000;

impl VerifiedTokens {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Verified>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token's check, if done and not expired. (The map's hasher is
    /// keyed at random, so a forged token cannot be made to land next to a
    /// kept one and time the comparison.)
    fn get(&self, token: &str, now: u64) -> Option<Verified> {
        self.map().get(token).filter(|v| now < v.expires).cloned()
    }

    fn put(&self, token: &str, v: Verified, now: u64) {
        let mut map = self.map();
        if map.len() >= VERIFIED_TOKENS_MAX {
            map.retain(|_, v| now < v.expires);
            if map.len() >= VERIFIED_TOKENS_MAX {
                map.clear();
            }
        }
        map.insert(token.into(), v);
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    /// `base` is the FHIR base URL (`https://host/fhir`): the audience of
    /// access tokens. The token endpoint is `<root>/auth/token`.
    /// Says (in the SMART configuration) that access tokens are bound to
    /// the client's TLS certificate (RFC 8705): mutual TLS is on.
    pub fn bind_tokens_to_certificates(&mut self) {
        self.certificate_bound = true;
    }

    pub fn certificate_bound(&self) -> bool {
        self.certificate_bound
    }

    pub async fn new(
        store: Store,
        base: &str,
        lifetime_secs: u64,
        oidc: Option<OidcSettings>,
    ) -> Result<Auth, StoreError> {
        let fresh: Vec<u8> = (0..4).flat_map(|_| *uuid::Uuid::new_v4().as_bytes()).collect();
        let secret = store.server_secret("access-token-hs256", fresh).await?;
        let root = base.trim_end_matches('/').trim_end_matches("/fhir").to_string();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Ok(Auth {
            store,
            secret,
            token_endpoint: format!("{root}/auth/token"),
            issuer: root,
            audience: base.trim_end_matches('/').to_string(),
            lifetime: lifetime_secs,
            oidc: oidc.map(|o| Oidc::new(o, http.clone())),
            http,
            clients: TtlCache::new(CLIENT_CACHE_TTL),
            jwks: TtlCache::new(JWKS_CACHE_TTL),
            organisations: TtlCache::new(CLIENT_CACHE_TTL),
            resolved: TtlCache::new(CLIENT_CACHE_TTL),
            certificate_bound: false,
            verified: VerifiedTokens::default(),
        })
    }

    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    async fn client(&self, id: &str) -> Result<Option<Arc<ClientRecord>>, StoreError> {
        self.clients
            .get_or_load(id, async || Ok(self.store.client(id).await?.map(Arc::new)))
            .await
    }

    async fn keys_of(&self, client: &ClientRecord) -> Result<Arc<JwkSet>, OAuthError> {
        if let Some(doc) = &client.jwks {
            let set: JwkSet = serde_json::from_str(doc)
                .map_err(|_| OAuthError::client("the client's registered JWKS is not valid"))?;
            return Ok(Arc::new(set));
        }
        let Some(url) = &client.jwks_url else {
            return Err(OAuthError::client("the client has no registered keys"));
        };
        self.jwks
            .get_or_load(url, async || {
                let set: JwkSet = self
                    .http
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|_| OAuthError::client("the client's JWKS URL could not be fetched"))?
                    .json()
                    .await
                    .map_err(|_| OAuthError::client("the client's JWKS URL did not return a JWKS"))?;
                Ok(Arc::new(set))
            })
            .await
    }

    /// The token endpoint: `client_credentials` with a client assertion;
    /// `peer` is the TLS client certificate of the connection, if any.
    pub async fn token(&self, req: TokenRequest, peer: Option<&PeerCertificate>) -> Result<TokenResponse, OAuthError> {
        let started = tokio::time::Instant::now();
        let issued = self.issue(req, peer).await;
        // An unknown client is refused after one lookup, a known one after
        // its signature is checked too: without a common floor the time of
        // the answer would tell what its words do not.
        if matches!(&issued, Err(e) if e.error == "invalid_client") {
            tokio::time::sleep_until(started + CLIENT_REFUSAL_FLOOR).await;
        }
        issued
    }

    async fn issue(&self, req: TokenRequest, peer: Option<&PeerCertificate>) -> Result<TokenResponse, OAuthError> {
        if req.grant_type.as_deref() != Some("client_credentials") {
            return Err(OAuthError::request(
                400,
                "unsupported_grant_type",
                "grant_type must be client_credentials",
            ));
        }
        if req.client_assertion_type.as_deref() != Some(ASSERTION_TYPE) {
            return Err(OAuthError::request(
                400,
                "invalid_request",
                format!("client_assertion_type must be {ASSERTION_TYPE}"),
            ));
        }
        let assertion = req
            .client_assertion
            .as_deref()
            .ok_or_else(|| OAuthError::request(400, "invalid_request", "client_assertion is missing"))?;
        let header =
            decode_header(assertion).map_err(|_| OAuthError::client("the client assertion is not a signed JWT"))?;
        if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
            return Err(OAuthError::client(
                "client assertions must be signed with RS384 or ES384",
            ));
        }
        let client_id =
            unverified_issuer(assertion).ok_or_else(|| OAuthError::client("the client assertion has no iss"))?;
        // Always fresh here: a revocation must stop new tokens at once.
        let client = self
            .store
            .client(&client_id)
            .await?
            .ok_or_else(|| OAuthError::client("unknown client"))?;
        if client.revoked.is_some() {
            return Err(OAuthError::client("revoked client"));
        }
        check_certificate(&client, peer)?;
        let keys = self.keys_of(&client).await?;
        let jwk = match &header.kid {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| OAuthError::client("no registered key of the client matches the assertion's kid"))?;
        let key =
            DecodingKey::from_jwk(jwk).map_err(|_| OAuthError::client("the client's registered key is not usable"))?;
        let mut v = Validation::new(header.alg);
        v.set_audience(&[&self.token_endpoint]);
        v.set_issuer(&[&client.id]);
        v.sub = Some(client.id.clone());
        v.leeway = LEEWAY;
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let claims = decode::<AssertionClaims>(assertion, &key, &v)
            .map_err(|e| {
                // serde's messages quote what the client sent: kept out of the trail.
                use jsonwebtoken::errors::ErrorKind;
                OAuthError::client(match e.kind() {
                    ErrorKind::Json(_) | ErrorKind::Utf8(_) | ErrorKind::Base64(_) => {
                        "the client assertion's claims are not readable".to_string()
                    }
                    _ => format!("the client assertion was refused: {e}"),
                })
            })?
            .claims;
        let now = now();
        if claims.exp > now + MAX_ASSERTION_LIFETIME + LEEWAY {
            return Err(OAuthError::client(
                "the client assertion expires more than 5 minutes from now",
            ));
        }
        if claims.jti.is_empty() || claims.iss != client.id {
            return Err(OAuthError::client("the client assertion needs a jti"));
        }
        if !self
            .store
            .claim_jti(&client.id, &claims.jti, claims.exp as i64, now as i64)
            .await?
        {
            return Err(OAuthError::client(
                "this client assertion was already used (jti replay)",
            ));
        }
        let requested = Scopes::parse(req.scope.as_deref().unwrap_or_default())
            .map_err(|e| OAuthError::request(400, "invalid_scope", e.to_string()))?;
        let registered = Scopes::parse(&client.scope).unwrap_or_default();
        let granted = registered.grant(&requested);
        if granted.is_empty() {
            return Err(OAuthError::request(
                400,
                "invalid_scope",
                "none of the requested scopes is granted to this client",
            ));
        }
        let scope = granted.to_string();
        // The token names the Organization resource the client acts for,
        // so that its compartment is known without a lookup per request.
        let org = self.organization_of(&client).await?;
        let access = AccessClaims {
            iss: self.issuer.clone(),
            sub: client.id.clone(),
            aud: self.audience.clone(),
            exp: now + self.lifetime,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            scope: scope.clone(),
            org,
            cnf: peer.map(|p| Confirmation {
                x5t_s256: p.thumbprint.clone(),
            }),
        };
        let token = encode(
            &Header::new(Algorithm::HS256),
            &access,
            &EncodingKey::from_secret(&self.secret),
        )
        .map_err(|_| OAuthError::request(500, "server_error", "the token could not be signed"))?;
        tracing::info!(client = %client.id, "access token issued");
        Ok(TokenResponse {
            access_token: token,
            token_type: "bearer".into(),
            expires_in: self.lifetime,
            scope,
        })
    }

    /// Checks a bearer token, and that it is bound to the TLS client
    /// certificate of the connection if either has one, and says who calls.
    pub async fn authenticate(&self, token: &str, peer: Option<&PeerCertificate>) -> Result<Caller, AuthError> {
        if let Some(oidc) = &self.oidc
            && unverified_issuer(token).is_some_and(|iss| oidc.is_from_issuer(&iss))
        {
            return self.authenticate_professional(oidc, token).await;
        }
        let now = now();
        let Verified { caller, bound, .. } = match self.verified.get(token, now) {
            Some(v) => v,
            None => {
                let v = self.verify(token)?;
                self.verified.put(token, v.clone(), now);
                v
            }
        };
        match (bound.as_deref(), peer) {
            (None, None) => {}
            (Some(b), Some(p)) if same_thumbprint(b, &p.thumbprint) => {}
            _ => return Err(AuthError::CertificateMismatch),
        }
        match self.client(&caller.client_id).await {
            Ok(Some(c)) if c.revoked.is_none() => {}
            Ok(_) => return Err(AuthError::Revoked),
            Err(_) => return Err(AuthError::Invalid),
        }
        Ok(caller)
    }

    /// Checks one of our access tokens: signature, issuer, audience, expiry.
    fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[&self.audience]);
        v.set_issuer(&[&self.issuer]);
        // Clocks of other replicas may be a little behind.
        v.leeway = 5;
        let claims = decode::<AccessClaims>(token, &DecodingKey::from_secret(&self.secret), &v)
            .map_err(|_| AuthError::Invalid)?
            .claims;
        Ok(Verified {
            expires: claims.exp + v.leeway,
            bound: claims.cnf.map(|c| c.x5t_s256),
            caller: Caller {
                client_id: claims.sub,
                organization: claims.org,
                scopes: Scopes::parse(&claims.scope).map_err(|_| AuthError::Invalid)?,
                professional: None,
            },
        })
    }

    /// A professional's token of the external issuer: they act for the
    /// first organisation of their activities registered here, with the
    /// scopes configured for professionals.
    async fn authenticate_professional(&self, oidc: &Oidc, token: &str) -> Result<Caller, AuthError> {
        let pro = oidc.verify(token).await.map_err(|e| {
            tracing::info!(reason = %e, "professional's token refused");
            AuthError::Invalid
        })?;
        for site in &pro.sites {
            if let Some(client) = self.organisation(site).await.map_err(|_| AuthError::Invalid)? {
                return Ok(Caller {
                    client_id: client.id.clone(),
                    organization: self.organization_of(&client).await.map_err(|_| AuthError::Invalid)?,
                    scopes: oidc.settings().scopes.clone(),
                    professional: Some(pro.id),
                });
            }
        }
        Err(AuthError::NoOrganisation)
    }

    /// The Organization resource a client acts for (see
    /// `compartment::resolve_organization`), cached briefly.
    async fn organization_of(&self, client: &ClientRecord) -> Result<Option<String>, StoreError> {
        let Some(registered) = client.organization.as_deref() else {
            return Ok(None);
        };
        self.resolved
            .get_or_load(registered, async || {
                super::compartment::resolve_organization(&self.store, registered).await
            })
            .await
    }

    async fn organisation(&self, site: &str) -> Result<Option<Arc<ClientRecord>>, StoreError> {
        self.organisations
            .get_or_load(site, async || {
                Ok(self
                    .store
                    .clients_of_organization(site)
                    .await?
                    .into_iter()
                    .next()
                    .map(Arc::new))
            })
            .await
    }

    pub fn missing(&self) -> AuthError {
        AuthError::Missing(self.token_endpoint.clone())
    }
}

/// A client registered with a certificate must present it; a certificate
/// presented must be the one registered to the client (mutual TLS).
fn check_certificate(client: &ClientRecord, peer: Option<&PeerCertificate>) -> Result<(), OAuthError> {
    match (client.tls_cert_sha256.as_deref(), peer) {
        (None, None) => Ok(()),
        (Some(registered), Some(p)) if same_thumbprint(registered, &p.thumbprint) => Ok(()),
        (Some(_), None) => Err(OAuthError::client(
            "this client must present its registered TLS client certificate",
        )),
        (_, Some(_)) => Err(OAuthError::client(
            "the TLS client certificate presented is not registered to this client",
        )),
    }
}

/// The `iss` of a JWT, read before its signature can be checked (it names
/// the client whose key checks it).
fn unverified_issuer(jwt: &str) -> Option<String> {
    unverified_claim(jwt, "iss")
}

/// A string claim of a JWT whose signature is not checked: only for what
/// is said about a credential (which key to check it with, which client a
/// refused one claimed to be), never for a decision. Bounded in length.
pub fn unverified_claim(jwt: &str, claim: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get(claim)?
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(cert: Option<&str>) -> ClientRecord {
        ClientRecord {
            id: "c".into(),
            name: "c".into(),
            organization: None,
            scope: "system/*.rs".into(),
            jwks: None,
            jwks_url: None,
            tls_cert_sha256: cert.map(str::to_string),
            created: 0,
            revoked: None,
        }
    }

    fn peer(t: &str) -> PeerCertificate {
        PeerCertificate { thumbprint: t.into() }
    }

    #[test]
    fn a_registered_certificate_must_be_presented_and_match() {
        assert!(check_certificate(&client(None), None).is_ok());
        assert!(check_certificate(&client(Some("t1")), Some(&peer("t1"))).is_ok());
        // Registered with a certificate, none presented (a listener without mutual TLS).
        assert!(check_certificate(&client(Some("t1")), None).is_err());
        assert!(check_certificate(&client(Some("t1")), Some(&peer("t2"))).is_err());
        // A certificate presented for a client registered without one.
        assert!(check_certificate(&client(None), Some(&peer("t1"))).is_err());
    }
}
