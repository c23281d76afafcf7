//! Hardening at the door: rate limits (per client, per peer address),
//! request bodies (size, JSON nesting depth, repeated keys) and the request timeout, each
//! refused with an OperationOutcome.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::fhir::error::FhirError;
use crate::fhir::resource;

/// How often idle keys are dropped from the limiters, so that their state
/// does not grow with every client or address ever seen.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

/// The keyed rate limiters; `None` when switched off.
pub struct RateLimits {
    clients: Option<DefaultKeyedRateLimiter<String>>,
    peers: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

fn quota(per_sec: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_sec)?;
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)))
}

impl RateLimits {
    /// `per_sec == 0` switches a limit off; a burst of 0 means one second's worth.
    pub fn new(client: (u32, u32), peer: (u32, u32)) -> Arc<RateLimits> {
        let limits = Arc::new(RateLimits {
            clients: quota(client.0, client.1).map(RateLimiter::keyed),
            peers: quota(peer.0, peer.1).map(RateLimiter::keyed),
        });
        // The task ends with the last reference to the limiters.
        let weak: Weak<RateLimits> = Arc::downgrade(&limits);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut tick = tokio::time::interval(HOUSEKEEPING);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(l) = weak.upgrade() else { break };
                    l.forget_idle();
                    let (clients, peers) = l.tracked();
                    metrics::gauge!("apa_rate_limit_keys", "by" => "client").set(clients as f64);
                    metrics::gauge!("apa_rate_limit_keys", "by" => "address").set(peers as f64);
                }
            });
        }
        limits
    }

    /// Drops the keys whose bucket is full again (they hold no information).
    pub fn forget_idle(&self) {
        if let Some(l) = &self.clients {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.peers {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys currently held (clients, peers).
    pub fn tracked(&self) -> (usize, usize) {
        (
            self.clients.as_ref().map_or(0, |l| l.len()),
            self.peers.as_ref().map_or(0, |l| l.len()),
        )
    }

    /// One request of an authenticated client.
    pub fn client(&self, client_id: &str) -> Result<(), Throttled> {
        let Some(l) = &self.clients else { return Ok(()) };
        l.check_key(&client_id.to_string()).map_err(|not_until| Throttled {
            wait: not_until.wait_time_from(DefaultClock::default().now()),
            whom: "client",
        })
    }

    /// One request from a peer address without a valid token.
    pub fn peer(&self, ip: Option<IpAddr>) -> Result<(), Throttled> {
        let (Some(l), Some(ip)) = (&self.peers, ip) else {
            return Ok(());
        };
        l.check_key(&ip).map_err(|not_until| Throttled {
            wait: not_until.wait_time_from(DefaultClock::default().now()),
            whom: "address",
        })
    }
}

/// Over a rate limit: how long to wait, and whose limit it is.
#[derive(Debug)]
pub struct Throttled {
    wait: Duration,
    whom: &'static str,
}

impl IntoResponse for Throttled {
    /// 429 with `Retry-After` in whole seconds (rounded up, at least 1).
    fn into_response(self) -> Response {
        let secs = self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0);
        let secs = secs.max(1);
        metrics::counter!("apa_throttled_requests_total", "by" => self.whom).increment(1);
        let mut resp = FhirError::new(
            429,
            "throttled",
            format!("too many requests from this {}; retry in {secs} s", self.whom),
        )
        .into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        resp
    }
}

/// The peer address of the connection (absent when the app is driven
/// without a listener, as in unit tests).
pub fn peer_ip(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
}

/// Middleware: the per-peer limit, for the routes outside `/fhir`.
pub async fn per_peer(State(limits): State<Arc<RateLimits>>, req: Request, next: Next) -> Response {
    if let Err(throttled) = limits.peer(peer_ip(&req)) {
        return throttled.into_response();
    }
    next.run(req).await
}

/// What a request body may be.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub max_json_depth: usize,
}

fn too_large(max: usize) -> Response {
    FhirError::new(
        413,
        "too-long",
        format!("the request body is larger than the limit of {max} bytes"),
    )
    .into_response()
}

/// Middleware: reads the body of POST, PUT and PATCH up to the size limit
/// (413 past it) and, unless it is a form, refuses JSON nested deeper than
/// the depth limit or repeating a key in an object (400) before any parser
/// sees it: serde_json would keep the last of two keys, so what is stored
/// would not be what a reader of the body sees first.
pub async fn guard_body(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        return next.run(req).await;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return too_large(limits.max_bytes);
    }
    let base_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    let is_form = base_type.as_deref() == Some("application/x-www-form-urlencoded");
    // Every body the handlers read as JSON (FHIR, JSON Patch, the flat
    // API's) is JSON or untyped; CSV keeps only the depth check it had.
    let is_json = base_type.as_deref().is_none_or(|t| t.contains("json"));
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, limits.max_bytes).await {
        Ok(b) => b,
        Err(e) if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) => {
            return too_large(limits.max_bytes);
        }
        Err(_) => return FhirError::structure("the request body could not be read").into_response(),
    };
    if !is_form && let Err(fault) = resource::check_shape(&bytes, limits.max_json_depth, is_json) {
        return fault.into_error(&bytes).into_response();
    }
    crate::security::audit::note_body(&bytes);
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Is any object or array of `json` nested deeper than `max` levels?
/// Malformed input is answered by the parser, not here.
pub fn json_depth_exceeds(json: &[u8], max: usize) -> bool {
    resource::check_shape(json, max, false).is_err()
}

/// Middleware: a request not answered within `timeout` is abandoned (its
/// work cancelled) and answered 503.
pub async fn timeout(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::warn!(timeout_secs = timeout.as_secs(), "request timed out");
            FhirError::new(
                503,
                "timeout",
                format!(
                    "the request was not answered within {} s; it was abandoned",
                    timeout.as_secs()
                ),
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn depth_counts_objects_and_arrays() {
        assert!(!json_depth_exceeds(nested(64).as_bytes(), 64));
        assert!(json_depth_exceeds(nested(65).as_bytes(), 64));
        assert!(json_depth_exceeds(br#"{"a":{"b":[{"c":1}]}}"#, 3));
        assert!(!json_depth_exceeds(br#"{"a":{"b":[{"c":1}]}}"#, 4));
        // Siblings do not add up.
        assert!(!json_depth_exceeds(br#"[[1],[2],[3],{"x":[4]}]"#, 3));
        assert!(json_depth_exceeds(br#"[[1],[2],[3],{"x":[4]}]"#, 2));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let s = format!(r#"{{"text":"{}","q":"\"[[[","e":"\\"}}"#, "[{".repeat(100));
        assert!(!json_depth_exceeds(s.as_bytes(), 1));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let throttled = |ms| {
            Throttled {
                wait: Duration::from_millis(ms),
                whom: "client",
            }
            .into_response()
        };
        let r = throttled(1200);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let r = throttled(10);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[tokio::test]
    async fn a_client_over_its_burst_waits_and_idle_keys_are_forgotten() {
        let l = RateLimits::new((10, 2), (0, 0));
        assert!(l.client("a").is_ok());
        assert!(l.client("a").is_ok());
        assert!(l.client("a").is_err());
        // Another client has its own bucket; peers are not limited.
        assert!(l.client("b").is_ok());
        assert!(l.peer(Some(IpAddr::from([127, 0, 0, 1]))).is_ok());
        assert_eq!(l.tracked(), (2, 0));
        tokio::time::sleep(Duration::from_millis(600)).await;
        l.forget_idle();
        assert_eq!(l.tracked(), (0, 0));
    }
}
