//! Starting and stopping the gateway.

mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use axum::ServiceExt;
use tokio::net::TcpListener;
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

use std::sync::Arc;

use crate::config::Config;
use crate::fhir::interaction::capabilities::capability_statement;
use crate::fhir::rules::SharedRules;
use crate::http::metrics_access::MetricsAccess;
use crate::http::{AppState, Limits, router};
use crate::security::auth::Auth;
use crate::security::oidc::OidcSettings;
use crate::security::scopes::Scopes;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// A started gateway.
pub struct Running {
    pub addr: SocketAddr,
    pub store: Store,
    /// The rules every write goes through (the demo loader uses them too).
    pub rules: SharedRules,
    pub base: String,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops taking requests, lets in-flight ones finish, then waits for
    /// the last writes to commit.
    /// Waits until the server stops (on SIGTERM / Ctrl-C).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

/// Resources stored while the server indexed other search parameters
/// (before a package SearchParameter was added or changed) are indexed
/// again before anything is served, so that no search misses them.
async fn index_again_if_changed(store: &Store) -> Result<(), ServerError> {
    use crate::fhir::search::extract::Extractor;
    use crate::fhir::search::registry::Registry;
    let base = Registry::base_r4().map_err(|e| ServerError::Config(format!("R4 definitions: {e}")))?;
    let before = Extractor::new(&base);
    let now = Extractor::r4();
    let types = Registry::r4().resource_types();
    let current = types.iter().map(|t| (t.clone(), now.fingerprint(t))).collect();
    let unrecorded = types.iter().map(|t| (t.clone(), before.fingerprint(t))).collect();
    let index: crate::store::IndexFn = Arc::new(|rtype: &str, body: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(body)
            .map(|json| {
                Extractor::r4()
                    .extract(rtype, &json)
                    .into_iter()
                    .map(|(def, v)| (def.code.clone(), v))
                    .collect()
            })
            .unwrap_or_default()
    });
    store.reindex_changed(current, unrecorded, index).await?;
    Ok(())
}

/// Opens the database, binds the listener (port 0 picks a free port) and
/// serves until `stop` or until the process receives SIGTERM / Ctrl-C.
pub async fn start(cfg: &Config) -> Result<Running, ServerError> {
    let store = Store::open(&cfg.database_url, cfg.db_pool_size).await?;
    index_again_if_changed(&store).await?;
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| ServerError::Listen(cfg.listen.clone(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Listen(cfg.listen.clone(), e))?;
    let base = match &cfg.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => format!("{}://{addr}/fhir", cfg.scheme()),
    };
    let tls = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => Some(tls::rustls_config(cert, key, cfg.tls_client_ca.as_deref())?),
        (None, None) if cfg.tls_client_ca.is_some() => {
            return Err(ServerError::Tls("tls_client_ca needs tls_cert and tls_key".into()));
        }
        (None, None) => None,
        _ => return Err(ServerError::Tls("tls_cert and tls_key go together".into())),
    };
    let mut auth = Auth::new(store.clone(), &base, cfg.token_lifetime_secs, oidc_settings(cfg)?).await?;
    if cfg.tls_client_ca.is_some() {
        auth.bind_tokens_to_certificates();
    }
    let rules: SharedRules = Arc::new(crate::apa::rules::ApaRules::with_identification_limit(
        cfg.identification_failures_max,
        std::time::Duration::from_secs(cfg.identification_window_secs),
    ));
    let state = AppState {
        store: store.clone(),
        rules: rules.clone(),
        base: base.clone().into(),
        metrics: crate::telemetry::metrics(),
        auth: Arc::new(auth),
        audit: Arc::new(crate::security::audit::Gateway::new(&base)),
        search_limits: cfg.search_limits(),
        capabilities: serde_json::to_vec(&capability_statement(
            &base,
            env!("CARGO_PKG_VERSION"),
            crate::BUILD_DATE,
        ))
        .unwrap_or_default()
        .into(),
        rate_limits: crate::http::limits::RateLimits::new(
            (cfg.rate_limit_client_per_sec, cfg.rate_limit_client_burst),
            (cfg.rate_limit_peer_per_sec, cfg.rate_limit_peer_burst),
        ),
    };
    let app = router(
        state,
        &Limits {
            max_body_bytes: cfg.max_body_bytes,
            max_json_depth: cfg.max_json_depth,
            request_timeout: Duration::from_secs(cfg.request_timeout_secs),
            metrics_access: Arc::new(
                MetricsAccess::new(cfg.metrics_token.as_deref(), cfg.metrics_allow.as_deref())
                    .map_err(|e| ServerError::Config(e.to_string()))?,
            ),
        },
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let store_for_close = store.clone();
    let task = tokio::spawn(async move {
        let stop = async move {
            tokio::select! {
                _ = rx => {}
                _ = termination() => tracing::info!("termination signal received, finishing in-flight requests"),
            }
        };
        // `/fhir/` is `/fhir`: normalise before routing.
        let app = NormalizePathLayer::trim_trailing_slash().layer(app);
        // The peer address keys the rate limits of unauthenticated requests
        // and goes into the audit trail (agent.network).
        let app = ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<SocketAddr>(app);
        let served = match tls {
            None => axum::serve(listener, app).with_graceful_shutdown(stop).await,
            Some(tls) => {
                // HTTPS: on stop, in-flight requests get up to 30 s.
                let handle = axum_server::Handle::new();
                let on_stop = handle.clone();
                tokio::spawn(async move {
                    stop.await;
                    on_stop.graceful_shutdown(Some(Duration::from_secs(30)));
                });
                let server = listener
                    .into_std()
                    .and_then(axum_server::from_tcp)
                    .map(|s| s.acceptor(tls::ClientCertAcceptor::new(tls)));
                match server {
                    Ok(server) => server.handle(handle).serve(app).await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "server error");
        }
        store_for_close.close().await;
        tracing::info!("stopped");
    });
    Ok(Running {
        addr,
        store,
        rules,
        base,
        shutdown: tx,
        task,
    })
}

/// The external OpenID Connect issuer, when `oidc_issuer` is set.
fn oidc_settings(cfg: &Config) -> Result<Option<OidcSettings>, ServerError> {
    let Some(issuer) = &cfg.oidc_issuer else {
        return Ok(None);
    };
    let needed = |v: &Option<String>, name: &str| {
        v.clone()
            .ok_or_else(|| ServerError::Config(format!("oidc_issuer needs {name}")))
    };
    Ok(Some(OidcSettings {
        issuer: issuer.clone(),
        jwks_url: needed(&cfg.oidc_jwks_url, "oidc_jwks_url")?,
        audience: needed(&cfg.oidc_audience, "oidc_audience")?,
        required_acr: Some(cfg.oidc_required_acr.clone()).filter(|a| !a.is_empty()),
        scopes: Scopes::parse(&cfg.oidc_scope).map_err(|e| ServerError::Config(format!("oidc_scope: {e}")))?,
    }))
}

async fn termination() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
