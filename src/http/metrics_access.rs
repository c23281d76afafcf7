//! Who may read `/metrics`. Its counters name clients, routes and error
//! rates: enough to map the gateway's users and probe its weak spots, so it
//! is not public. By default only loopback peers (a Prometheus agent or
//! sidecar on the same host) read it; with `metrics_token` set, only
//! requests carrying that bearer token do, from any address — loopback
//! included, so that a token once configured cannot be sidestepped by a
//! local process. `metrics_allow` narrows (or, without a token, replaces)
//! the addresses allowed.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::fhir::error::FhirError;

use super::limits::peer_ip;

/// The access rule of `/metrics`, built once from the settings.
#[derive(Debug, Clone)]
pub struct MetricsAccess {
    /// SHA-256 of the token: compared digest to digest, so that the time a
    /// comparison takes says nothing of the token, not even its length.
    token: Option<[u8; 32]>,
    /// Addresses allowed; `None`: any (only with a token).
    allow: Option<Vec<IpNet>>,
}

/// A setting of `/metrics` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MetricsAccessError {
    #[error("metrics_token is empty: unset it, or set a long random token")]
    EmptyToken,
    #[error("metrics_allow: {0:?} is neither an IP address nor a CIDR block")]
    BadAddress(String),
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Default for MetricsAccess {
    /// Loopback only, no token.
    fn default() -> Self {
        MetricsAccess {
            token: None,
            allow: Some(loopback()),
        }
    }
}

fn loopback() -> Vec<IpNet> {
    [IpAddr::from([127, 0, 0, 0]), IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])]
        .into_iter()
        .zip([8, 128])
        .filter_map(|(addr, prefix)| IpNet::new(addr, prefix).ok())
        .collect()
}

impl MetricsAccess {
    /// `allow` entries are addresses (`10.0.0.5`, `::1`) or CIDR blocks
    /// (`10.0.0.0/8`).
    pub fn new(token: Option<&str>, allow: Option<&[String]>) -> Result<MetricsAccess, MetricsAccessError> {
        let token = match token {
            Some(t) if t.trim().is_empty() => return Err(MetricsAccessError::EmptyToken),
            Some(t) => Some(digest(t.trim().as_bytes())),
            None => None,
        };
        let allow = match allow {
            Some(list) => Some(
                list.iter()
                    .map(|a| {
                        let a = a.trim();
                        a.parse::<IpNet>()
                            .or_else(|_| a.parse::<IpAddr>().map(IpNet::from))
                            .map_err(|_| MetricsAccessError::BadAddress(a.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None if token.is_some() => None,
            None => Some(loopback()),
        };
        Ok(MetricsAccess { token, allow })
    }

    fn address_allowed(&self, peer: Option<IpAddr>) -> bool {
        let Some(allow) = &self.allow else { return true };
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        peer.map(|ip| ip.to_canonical())
            .is_some_and(|ip| allow.iter().any(|net| net.contains(&ip)))
    }

    fn token_presented(&self, req: &Request) -> bool {
        let Some(expected) = &self.token else { return true };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        presented.is_some_and(|t| bool::from(digest(t.as_bytes()).ct_eq(expected)))
    }
}

/// Middleware of the `/metrics` route. A peer outside the allowed
/// addresses gets the gateway's answer to an unknown path: the endpoint's
/// existence is not its business. Within them, a missing or wrong token is
/// a 401 with a challenge, since the caller is the monitoring of the
/// operator, who has to know what to fix.
pub async fn guard(State(access): State<Arc<MetricsAccess>>, req: Request, next: Next) -> Response {
    if !access.address_allowed(peer_ip(&req)) {
        return super::handlers::not_found().await.into_response();
    }
    if !access.token_presented(&req) {
        let mut resp = FhirError::new(401, "login", "the metrics need the bearer token set as metrics_token")
            .at("Authorization")
            .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="apa-gateway-metrics""#),
        );
        return resp;
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn by_default_only_loopback_peers_are_allowed() {
        let a = MetricsAccess::default();
        for peer in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(a.address_allowed(ip(peer)), "{peer}");
        }
        for peer in ["10.0.0.1", "192.168.1.20", "::2", "fe80::1"] {
            assert!(!a.address_allowed(ip(peer)), "{peer}");
        }
        assert!(!a.address_allowed(None), "an unknown peer is not loopback");
    }

    #[test]
    fn a_token_alone_opens_every_address_and_an_allow_list_narrows_it() {
        let token_only = MetricsAccess::new(Some("s3cret"), None).expect("valid");
        assert!(token_only.address_allowed(ip("203.0.113.7")));
        let allow = ["10.1.0.0/16".to_string(), "192.0.2.4".to_string()];
        let narrowed = MetricsAccess::new(Some("s3cret"), Some(&allow)).expect("valid");
        assert!(narrowed.address_allowed(ip("10.1.200.3")));
        assert!(narrowed.address_allowed(ip("192.0.2.4")));
        assert!(!narrowed.address_allowed(ip("192.0.2.5")));
        assert!(!narrowed.address_allowed(ip("127.0.0.1")));
    }

    /// `APA_METRICS_ALLOW=[10.0.0.0/8, 192.0.2.7]`, as figment reads an
    /// environment variable's value.
    #[test]
    fn the_allow_list_is_written_as_a_list_in_the_environment() {
        let value: figment::value::Value = "[10.0.0.0/8, 192.0.2.7]".parse().expect("infallible");
        let list: Vec<String> = value.deserialize().expect("a list of strings");
        assert_eq!(list, ["10.0.0.0/8", "192.0.2.7"]);
        assert!(MetricsAccess::new(None, Some(&list)).is_ok());
    }

    #[test]
    fn unusable_settings_stop_the_start() {
        assert!(matches!(
            MetricsAccess::new(Some("  "), None),
            Err(MetricsAccessError::EmptyToken)
        ));
        let bad = ["10.0.0.0/33".to_string()];
        assert!(matches!(
            MetricsAccess::new(None, Some(&bad)),
            Err(MetricsAccessError::BadAddress(_))
        ));
    }
}
