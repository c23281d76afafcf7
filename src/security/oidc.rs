//! Bearer tokens of an external OpenID Connect issuer for health
//! professionals (Pro Santé Connect and the like): signed by the issuer's
//! keys (its JWKS), for our audience, at the required authentication level
//! (`acr`). The professional is known by the national id (idNatPs) and the
//! sites they practise at (SIRET or FINESS of each activity), which tie
//! them to a registered organisation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::scopes::Scopes;

/// Keys are fetched again after this, and when a token names an unknown
/// key id (the issuer rotated its keys), at most once per `MIN_REFETCH`.
const JWKS_TTL: Duration = Duration::from_secs(600);
const MIN_REFETCH: Duration = Duration::from_secs(30);
/// After a failed fetch, requests are not held up by another one for this long.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
const LEEWAY: u64 = 30;

/// The settings of the external issuer.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// `iss` of its tokens.
    pub issuer: String,
    pub jwks_url: String,
    /// The `aud` its tokens must carry (our client id at the issuer).
    pub audience: String,
    /// The `acr` its tokens must carry (e.g. `eidas1`); none: not checked.
    pub required_acr: Option<String>,
    /// The scopes a professional gets.
    pub scopes: Scopes,
}

/// A professional, as the issuer vouches for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Professional {
    /// The national id of the professional (idNatPs).
    pub id: String,
    /// SIRET or FINESS of the sites of their activities, in the token's order.
    pub sites: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the token is not signed by a key of the issuer")]
    UnknownKey,
    #[error("the issuer's keys could not be fetched")]
    Jwks,
    #[error("the token was refused: {0}")]
    Invalid(String),
    #[error("the token's authentication level (acr) is not the one required")]
    Acr,
    #[error("the token names no professional (preferred_username / SubjectNameID)")]
    NoProfessional,
}

/// The claims read from the issuer's tokens (domain brief §2.8).
#[derive(Debug, Deserialize)]
struct Claims {
    acr: Option<String>,
    preferred_username: Option<String>,
    #[serde(rename = "SubjectNameID")]
    subject_name_id: Option<String>,
    #[serde(rename = "SubjectRefPro")]
    subject_ref_pro: Option<SubjectRefPro>,
}

#[derive(Debug, Default, Deserialize)]
struct SubjectRefPro {
    #[serde(default)]
    exercices: Vec<Exercice>,
}

#[derive(Debug, Default, Deserialize)]
struct Exercice {
    #[serde(default)]
    activities: Vec<Activity>,
}

#[derive(Debug, Default, Deserialize)]
struct Activity {
    #[serde(rename = "numeroSiretSite")]
    siret: Option<String>,
    #[serde(rename = "numeroFinessSite")]
    finess: Option<String>,
}

#[derive(Default)]
struct KeyCache {
    keys: Option<(Instant, Arc<JwkSet>)>,
    /// When keys were last fetched because of an unknown key id.
    last_miss: Option<Instant>,
    /// When a fetch last failed.
    last_failure: Option<Instant>,
}

pub struct Oidc {
    settings: OidcSettings,
    http: reqwest::Client,
    cache: Mutex<KeyCache>,
}

/// Only asymmetric signatures: a symmetric one would need a secret shared
/// with the issuer, and `none` is no signature.
fn allowed(alg: Algorithm) -> bool {
    use Algorithm::*;
    matches!(
        alg,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA
    )
}

impl Oidc {
    pub fn new(settings: OidcSettings, http: reqwest::Client) -> Oidc {
        Oidc {
            settings,
            http,
            cache: Mutex::new(KeyCache::default()),
        }
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    /// Is this token (by its unverified `iss`) one of this issuer's?
    pub fn is_from_issuer(&self, unverified_iss: &str) -> bool {
        unverified_iss == self.settings.issuer
    }

    async fn fetch(&self) -> Result<Arc<JwkSet>, OidcError> {
        let set: JwkSet = self
            .http
            .get(&self.settings.jwks_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| {
                tracing::warn!(error = %e, "OIDC issuer JWKS fetch failed");
                OidcError::Jwks
            })?
            .json()
            .await
            .map_err(|_| OidcError::Jwks)?;
        Ok(Arc::new(set))
    }

    /// The key `kid` of the issuer (the only key when the token names none).
    async fn key(&self, kid: Option<&str>) -> Result<Jwk, OidcError> {
        let find = |set: &JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let mut cache = self.cache.lock().await;
        let set = match &cache.keys {
            Some((at, set)) if at.elapsed() < JWKS_TTL => set.clone(),
            _ => self.refresh(&mut cache).await?,
        };
        if let Some(k) = find(&set) {
            return Ok(k);
        }
        // An unknown key id: the issuer may have rotated its keys.
        if cache.last_miss.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return Err(OidcError::UnknownKey);
        }
        cache.last_miss = Some(Instant::now());
        let set = self.refresh(&mut cache).await?;
        find(&set).ok_or(OidcError::UnknownKey)
    }

    /// Fetches the keys. While the issuer cannot be reached, the keys
    /// fetched before still serve, and it is asked again only every
    /// `RETRY_AFTER_FAILURE`.
    async fn refresh(&self, cache: &mut KeyCache) -> Result<Arc<JwkSet>, OidcError> {
        let stale = cache.keys.as_ref().map(|(_, set)| set.clone());
        if cache.last_failure.is_some_and(|at| at.elapsed() < RETRY_AFTER_FAILURE) {
            return stale.ok_or(OidcError::Jwks);
        }
        match self.fetch().await {
            Ok(set) => {
                cache.keys = Some((Instant::now(), set.clone()));
                cache.last_failure = None;
                Ok(set)
            }
            Err(e) => {
                cache.last_failure = Some(Instant::now());
                stale.ok_or(e)
            }
        }
    }

    /// Checks a token of the issuer and says which professional it is for.
    pub async fn verify(&self, token: &str) -> Result<Professional, OidcError> {
        let header = decode_header(token).map_err(|e| OidcError::Invalid(e.to_string()))?;
        if !allowed(header.alg) {
            return Err(OidcError::Invalid(format!(
                "{:?} signatures are not accepted",
                header.alg
            )));
        }
        let jwk = self.key(header.kid.as_deref()).await?;
        if jwk
            .common
            .key_algorithm
            .is_some_and(|alg| alg != KeyAlgorithm::from(header.alg))
        {
            return Err(OidcError::Invalid("the token's alg is not its key's".into()));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| OidcError::UnknownKey)?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.settings.issuer]);
        v.set_audience(&[&self.settings.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        v.leeway = LEEWAY;
        let claims = decode::<Claims>(token, &key, &v)
            .map_err(|e| OidcError::Invalid(e.to_string()))?
            .claims;
        if let Some(required) = &self.settings.required_acr
            && claims.acr.as_deref() != Some(required.as_str())
        {
            return Err(OidcError::Acr);
        }
        let id = non_empty(claims.preferred_username)
            .or_else(|| non_empty(claims.subject_name_id))
            .ok_or(OidcError::NoProfessional)?;
        Ok(Professional {
            id,
            sites: sites(claims.subject_ref_pro.unwrap_or_default()),
        })
    }
}

/// PSC sends absent values as empty strings.
fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

/// The SIRET, then the FINESS, of each activity of each exercise.
fn sites(pro: SubjectRefPro) -> Vec<String> {
    pro.exercices
        .into_iter()
        .flat_map(|e| e.activities)
        .flat_map(|a| [non_empty(a.siret), non_empty(a.finess)])
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_come_from_every_activity_and_empty_values_are_skipped() {
        let c: Claims = serde_json::from_value(serde_json::json!({
            "preferred_username": "810002345678",
            "SubjectRefPro": {"codeCivilite": "M", "exercices": [
                {"codeProfession": "10", "activities": [
                    {"numeroSiretSite": "", "numeroFinessSite": "", "raisonSocialeSite": "CABINET"},
                    {"numeroSiretSite": "12345678900017", "numeroFinessSite": ""}]},
                {"codeProfession": "10", "activities": [{"numeroFinessSite": "750000001"}]}]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            sites(c.subject_ref_pro.unwrap_or_default()),
            ["12345678900017", "750000001"]
        );
    }

    #[test]
    fn only_asymmetric_algorithms() {
        assert!(allowed(Algorithm::RS256) && allowed(Algorithm::ES256));
        assert!(!allowed(Algorithm::HS256));
    }
}
