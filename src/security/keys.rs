//! Client keys: generating a key pair for a client (the demo client, the
//! `clients add --generate-key` command), publishing its public part as a
//! JWKS, and signing a client assertion with it (the `token` command).

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate a key pair: {0}")]
    Generate(String),
    #[error("the private key is not a PEM EC P-384 or RSA key: {0}")]
    Pem(String),
}

/// A new ES384 (P-384) key pair: the private key as PKCS#8 PEM, and the
/// public key as a JWKS document with `kid`.
pub fn generate_es384(kid: &str) -> Result<(String, String), KeyError> {
    let pair =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(|e| KeyError::Generate(e.to_string()))?;
    let pem = pair.serialize_pem();
    let jwks = public_jwks(&pem, kid)?;
    Ok((pem, jwks))
}

fn load(pem: &str) -> Result<(EncodingKey, Algorithm), KeyError> {
    match EncodingKey::from_ec_pem(pem.as_bytes()) {
        Ok(k) => Ok((k, Algorithm::ES384)),
        Err(_) => EncodingKey::from_rsa_pem(pem.as_bytes())
            .map(|k| (k, Algorithm::RS384))
            .map_err(|e| KeyError::Pem(e.to_string())),
    }
}

/// The JWKS holding the public part of a private key.
pub fn public_jwks(pem: &str, kid: &str) -> Result<String, KeyError> {
    let (key, alg) = load(pem)?;
    let mut jwk = Jwk::from_encoding_key(&key, alg).map_err(|e| KeyError::Pem(e.to_string()))?;
    jwk.common.key_id = Some(kid.to_string());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(if alg == Algorithm::ES384 {
        KeyAlgorithm::ES384
    } else {
        KeyAlgorithm::RS384
    });
    serde_json::to_string(&JwkSet { keys: vec![jwk] }).map_err(|e| KeyError::Pem(e.to_string()))
}

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    jti: String,
}

/// A SMART client assertion for `client_id`, valid for one minute.
pub fn sign_assertion(client_id: &str, token_endpoint: &str, pem: &str, kid: &str) -> Result<String, KeyError> {
    let (key, alg) = load(pem)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    header.typ = Some("JWT".into());
    let claims = Assertion {
        iss: client_id,
        sub: client_id,
        aud: token_endpoint,
        exp: now + 60,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    encode(&header, &claims, &key).map_err(|e| KeyError::Pem(e.to_string()))
}
