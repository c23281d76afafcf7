//! Settings: built-in defaults, then a TOML file, then environment
//! variables (`APA_*`, and `DATABASE_URL`), the later winning. Every
//! setting is listed in the README.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address and port to listen on.
    pub listen: String,
    /// `sqlite://path` (embedded, default) or `postgres://user@host/db`.
    pub database_url: String,
    /// Database connections for reads (one more is used for writes).
    pub db_pool_size: u32,
    /// Public base URL of the FHIR API (as clients reach it, behind any
    /// proxy). Default: `http://<listen>/fhir`.
    pub public_url: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// A request taking longer is answered 503.
    pub request_timeout_secs: u64,
    /// `text` or `json` log lines on stderr.
    pub log_format: String,
    /// OTLP/HTTP endpoint (e.g. `http://127.0.0.1:4318`) to export traces to.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported traces.
    pub service_name: String,
    /// Lifetime of the access tokens the token endpoint issues.
    pub token_lifetime_secs: u64,
    /// PEM certificate chain and private key: when both are set the
    /// gateway serves HTTPS only (`apa-gateway gen-cert` makes a
    /// self-signed pair for local use).
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// PEM CA certificate(s): when set (with `tls_cert`/`tls_key`), every
    /// client must present a certificate signed by one of them (mutual
    /// TLS), registered to the client it authenticates as.
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// Deepest nesting of objects and arrays accepted in a JSON body.
    pub max_json_depth: usize,
    /// Requests per second (sustained) and burst allowed to one client;
    /// `0` per second switches the limit off.
    pub rate_limit_client_per_sec: u32,
    pub rate_limit_client_burst: u32,
    /// The same for one peer IP address, on the token endpoint, the other
    /// endpoints outside `/fhir` and every request without a valid token.
    pub rate_limit_peer_per_sec: u32,
    pub rate_limit_peer_burst: u32,
    /// An external OpenID Connect issuer of professionals' tokens (Pro
    /// Santé Connect): its `iss`, the URL of its keys (JWKS), the audience
    /// its tokens must carry, the `acr` they must carry (empty: any), and
    /// the scopes professionals get.
    pub oidc_issuer: Option<String>,
    pub oidc_jwks_url: Option<String>,
    pub oidc_audience: Option<String>,
    pub oidc_required_acr: String,
    pub oidc_scope: String,
    /// When set, `/metrics` is served only to requests carrying it as a
    /// bearer token (from any address, loopback included).
    pub metrics_token: Option<String>,
    /// Addresses or CIDR blocks `/metrics` is served to. Default: loopback
    /// only without `metrics_token`, any address with it.
    pub metrics_allow: Option<Vec<String>>,
    /// How much one search may ask for (over it: 400 `too-costly`):
    /// parameters (a repeated name counting each time), comma-separated
    /// values in one parameter and in the whole search, `_include` and
    /// `_revinclude` parameters.
    pub search_max_params: usize,
    pub search_max_or_values: usize,
    pub search_max_values_total: usize,
    pub search_max_includes: usize,
    /// Refused identifications of one INS by one organisation allowed per
    /// `identification_window_secs` (then 429); `0` switches the limit off.
    pub identification_failures_max: u32,
    pub identification_window_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://data/apa-gateway.db".into(),
            db_pool_size: 8,
            public_url: None,
            max_body_bytes: 16 * 1024 * 1024,
            request_timeout_secs: 30,
            log_format: "text".into(),
            otlp_endpoint: None,
            service_name: "apa-gateway".into(),
            token_lifetime_secs: 300,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_json_depth: 64,
            rate_limit_client_per_sec: 200,
            rate_limit_client_burst: 1000,
            rate_limit_peer_per_sec: 20,
            rate_limit_peer_burst: 100,
            oidc_issuer: None,
            oidc_jwks_url: None,
            oidc_audience: None,
            oidc_required_acr: "eidas1".into(),
            oidc_scope: "user/*.rs".into(),
            metrics_token: None,
            metrics_allow: None,
            search_max_params: 64,
            search_max_or_values: 100,
            search_max_values_total: 500,
            search_max_includes: 16,
            identification_failures_max: 5,
            identification_window_secs: 3600,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads the settings; `file` defaults to `apa-gateway.toml` when it exists.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(f) if !f.exists() => return Err(ConfigError(format!("{} does not exist", f.display()))),
            Some(f) => fig = fig.merge(Toml::file(f)),
            None => fig = fig.merge(Toml::file("apa-gateway.toml")),
        }
        fig = fig
            .merge(Env::prefixed("APA_"))
            .merge(Env::raw().only(&["DATABASE_URL"]).map(|_| "database_url".into()));
        fig.extract().map_err(|e| ConfigError(e.to_string()))
    }

    pub fn base_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("{}://{}/fhir", self.scheme(), self.listen),
        }
    }

    pub fn search_limits(&self) -> crate::fhir::search::parse::SearchLimits {
        crate::fhir::search::parse::SearchLimits {
            max_params: self.search_max_params,
            max_or_values: self.search_max_or_values,
            max_values_total: self.search_max_values_total,
            max_includes: self.search_max_includes,
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() { "https" } else { "http" }
    }
}
