//! The `apa-gateway` command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use apa_gateway::config::Config;
use apa_gateway::security::keys::{generate_es384, public_jwks, sign_assertion};
use apa_gateway::security::scopes::Scopes;
use apa_gateway::store::{ClientRecord, Store};
use apa_gateway::{clock, demo, server, telemetry};

/// mimalloc rather than glibc's allocator (Cargo.toml says why).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Secure FHIR R4 gateway for the French sport-santé sector")]
struct Cli {
    /// Settings file (TOML). Default: ./apa-gateway.toml when present.
    #[arg(long, global = true, env = "APA_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the FHIR API (the default).
    Serve {
        /// Load the demo territory, register a client per organisation of
        /// it and print how to get their tokens.
        #[arg(long)]
        demo: bool,
    },
    /// Write a self-signed certificate and its key (PEM) for local HTTPS:
    /// then set `tls_cert` and `tls_key`.
    GenCert {
        /// Folder to write cert.pem and key.pem into.
        #[arg(long, default_value = "data/tls")]
        out: PathBuf,
        /// Host names and addresses the certificate is for.
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
    },
    /// Load an MSS CSV export (assessments or session attendance) as the
    /// flat API would, as the gateway itself (audited), and print a
    /// summary: rows accepted, rows refused with their reasons.
    Import {
        /// The CSV file (`;`-separated, decimal commas, as MSS software
        /// exports; see docs/flat-api.md for the columns).
        file: PathBuf,
        /// What the file holds. Default: told from its header line.
        #[arg(long, value_enum)]
        kind: Option<ImportKind>,
    },
    /// Registered clients (SMART backend services).
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Get an access token for a client, signing its assertion with its
    /// private key (what a client's software does), and print it.
    Token {
        #[arg(long)]
        client_id: String,
        /// The client's private key (PEM, EC P-384 or RSA).
        #[arg(long)]
        key: PathBuf,
        /// The key id registered in the client's JWKS.
        #[arg(long)]
        kid: Option<String>,
        /// Scopes to ask for (only those registered for the client are granted).
        #[arg(long, default_value = "system/*.cruds operator")]
        scope: String,
        /// FHIR base URL of the gateway. Default: from the settings.
        #[arg(long)]
        url: Option<String>,
        /// With mutual TLS: the client's certificate and its key (PEM).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The CA the gateway's certificate is checked against (PEM),
        /// instead of the system's.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ImportKind {
    Assessments,
    Attendance,
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Register a client (or replace the registration of the same id).
    Add(AddClient),
    /// List the registered clients.
    List,
    /// Revoke a client: its tokens stop working within seconds.
    Revoke { id: String },
}

#[derive(Args)]
struct AddClient {
    #[arg(long)]
    name: String,
    /// The Organization it acts for (an Organization id or a SIRET).
    #[arg(long)]
    organization: Option<String>,
    /// SMART scopes it may be granted, e.g. "system/ServiceRequest.cruds system/Patient.rs".
    #[arg(long)]
    scope: String,
    /// Its public keys, as a JWKS file.
    #[arg(long, group = "keys")]
    jwks_file: Option<PathBuf>,
    /// Where its public keys are published.
    #[arg(long, group = "keys")]
    jwks_url: Option<String>,
    /// Generate a key pair, write the private key to this file, register the public one.
    #[arg(long, group = "keys")]
    generate_key: Option<PathBuf>,
    /// Client id. Default: a new UUID.
    #[arg(long)]
    id: Option<String>,
    /// Its TLS client certificate (PEM): with mutual TLS, the client must
    /// present it, and its tokens are bound to it.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Msg(String),
    #[error(transparent)]
    Store(#[from] apa_gateway::store::StoreError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error(transparent)]
    Key(#[from] apa_gateway::security::keys::KeyError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve { demo: false });
    let _telemetry = if matches!(command, Command::Serve { .. }) {
        match telemetry::init(&cfg) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let result = match command {
        Command::Serve { demo } => serve(&cfg, demo).await,
        Command::Clients(c) => clients(&cfg, c).await,
        Command::Import { file, kind } => import(&cfg, &file, kind).await,
        Command::GenCert { out, hosts } => gen_cert(&out, hosts),
        Command::Token {
            client_id,
            key,
            kid,
            scope,
            url,
            tls_cert,
            tls_key,
            tls_ca,
        } => match token_http(tls_cert.zip(tls_key), tls_ca) {
            Ok(http) => token(&cfg, &http, &client_id, &key, kid, &scope, url).await,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apa-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: &Config, demo: bool) -> Result<(), CliError> {
    let running = server::start(cfg).await?;
    tracing::info!(addr = %running.addr, base = %running.base, "apa-gateway listening");
    if demo {
        demo_mode(cfg, &running).await?;
    }
    running.wait().await;
    Ok(())
}

/// `import`: the file is read whole (exports are a few MB at most), mapped
/// row by row, and each patient's assessment or programme stored in one
/// transaction through the same code as `POST /apa/v1/…` with `text/csv`.
/// It acts as the gateway (the operator runs it on the gateway's own
/// database): compartments do not restrict it, every write is audited
/// with the gateway as the client. Rows already imported are found by
/// their business identifiers, not stored twice.
async fn import(cfg: &Config, file: &Path, kind: Option<ImportKind>) -> Result<(), CliError> {
    use apa_gateway::apa::flat::csv as flat_csv;
    use apa_gateway::security::audit::{self, AuditScope, Gateway, RequestInfo};
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use std::io::IsTerminal;
    use std::sync::Arc;

    let body = std::fs::read(file).map_err(|e| CliError::Io(file.display().to_string(), e))?;
    let kind = kind.unwrap_or_else(|| {
        let header = String::from_utf8_lossy(body.split(|b| *b == b'\n').next().unwrap_or_default()).to_lowercase();
        if header.contains("parcours") || header.contains("seance") || header.contains("programme_id") {
            ImportKind::Attendance
        } else {
            ImportKind::Assessments
        }
    });
    let batch = match kind {
        ImportKind::Assessments => flat_csv::assessments(&body),
        ImportKind::Attendance => flat_csv::attendance(&body),
    }
    .map_err(|p| CliError::Msg(format!("{}: {}: {}", file.display(), p.location, p.message)))?;
    let store = Store::open(&cfg.database_url, cfg.db_pool_size).await?;
    let base = match &cfg.public_url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => format!("{}://{}/fhir", cfg.scheme(), cfg.listen),
    };
    let rules: apa_gateway::fhir::rules::SharedRules = Arc::new(apa_gateway::apa::rules::ApaRules::new());
    let bar = ProgressBar::with_draw_target(
        Some(batch.rows as u64),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} rows ({eta})") {
        bar.set_style(style);
    }
    let caller = apa_gateway::security::Caller::system();
    let scope = AuditScope::new(
        Arc::new(Gateway::new(&base)),
        RequestInfo {
            interaction: "transaction",
            started: clock::now_micros(),
            ..RequestInfo::default()
        },
    );
    let report = scope
        .run_in(async {
            audit::note_caller(&caller);
            apa_gateway::http::flat::run_csv(&store, &rules, &base, &caller, batch, &|n| bar.inc(n)).await
        })
        .await;
    bar.finish_and_clear();
    store.close().await;
    let created = report.resources.iter().filter(|r| r.status == "created").count();
    println!(
        "{}: {} rows, {} accepted, {} refused; {} resources created, {} already stored",
        file.display(),
        report.rows,
        report.accepted,
        report.refused.len(),
        created,
        report.resources.len() - created
    );
    for r in &report.refused {
        println!("refused {}: {}", r.location, r.message);
    }
    Ok(())
}

/// The folder that holds the data: the SQLite database's, or ./data.
fn data_dir(cfg: &Config) -> PathBuf {
    cfg.database_url
        .strip_prefix("sqlite://")
        .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// Loads the demo territory, registers its clients (each with a key pair
/// kept under the data folder) and prints how to get their tokens.
/// Authentication stays on.
async fn demo_mode(cfg: &Config, running: &server::Running) -> Result<(), CliError> {
    let loaded = demo::load(running)
        .await
        .map_err(|e| CliError::Msg(format!("loading the demo territory: {e}")))?;
    let dir = data_dir(cfg);
    let mut lines = Vec::new();
    for client in demo::CLIENTS {
        let key = dir.join(client.key_file());
        let kid = format!("{}-key", client.id);
        if !key.exists() {
            let (pem, _) = generate_es384(&kid)?;
            write_private(&key, &pem)?;
        }
        // Registered again at every start: the database may be new, the key not.
        let pem = std::fs::read_to_string(&key).map_err(|e| CliError::Io(key.display().to_string(), e))?;
        running
            .store
            .save_client(ClientRecord {
                id: client.id.into(),
                name: client.name.into(),
                organization: client.organization.map(str::to_string),
                scope: client.scope.into(),
                jwks: Some(public_jwks(&pem, &kid)?),
                jwks_url: None,
                tls_cert_sha256: None,
                created: clock::now_micros(),
                revoked: None,
            })
            .await?;
        lines.push(format!(
            "  {var}=$(cargo run --release -q -- token --client-id {id} --key {key})\n      # {sees}",
            var = client.var,
            id = client.id,
            key = key.display(),
            sees = client.sees,
        ));
    }
    let territory = match loaded {
        demo::Loaded { created, present: 0 } => format!("loaded ({created} resources)"),
        demo::Loaded { created: 0, .. } => "already loaded: nothing changed".to_string(),
        demo::Loaded { created, present } => {
            format!("completed ({created} resources created, {present} already there)")
        }
    };
    println!(
        "\nDemo mode: the demo territory (fixtures/demo/territory.json) is {territory}.\n\
         One client per organisation is registered, its private key under {dir}.\n\
         Get an access token for each (valid {life} s; run the line again for a new one):\n\n\
         {lines}\n\n\
         Organisation compartments at work: the MSS that owns Nathalie Le Bihan's referral reads her record, the other MSS gets 404:\n\n  \
         curl -s -H \"Authorization: Bearer $BOUGER\" {base}/Patient/patient-le-bihan\n  \
         curl -s -H \"Authorization: Bearer $VILAINE\" {base}/Patient/patient-le-bihan\n",
        dir = dir.display(),
        life = cfg.token_lifetime_secs,
        lines = lines.join("\n"),
        base = running.base,
    );
    Ok(())
}

fn write_private(path: &Path, pem: &str) -> Result<(), CliError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CliError::Io(dir.display().to_string(), e))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    use std::io::Write;
    opts.open(path)
        .and_then(|mut f| f.write_all(pem.as_bytes()))
        .map_err(|e| CliError::Io(path.display().to_string(), e))
}

fn gen_cert(out: &Path, hosts: Vec<String>) -> Result<(), CliError> {
    let pair = rcgen::generate_simple_self_signed(hosts).map_err(|e| CliError::Msg(format!("certificate: {e}")))?;
    std::fs::create_dir_all(out).map_err(|e| CliError::Io(out.display().to_string(), e))?;
    let cert = out.join("cert.pem");
    std::fs::write(&cert, pair.cert.pem()).map_err(|e| CliError::Io(cert.display().to_string(), e))?;
    let key = out.join("key.pem");
    write_private(&key, &pair.signing_key.serialize_pem())?;
    println!(
        "wrote {} and {}\nserve HTTPS with: APA_TLS_CERT={} APA_TLS_KEY={} apa-gateway serve",
        cert.display(),
        key.display(),
        cert.display(),
        key.display()
    );
    Ok(())
}

async fn clients(cfg: &Config, cmd: ClientsCommand) -> Result<(), CliError> {
    let store = Store::open(&cfg.database_url, 1).await?;
    let result = match cmd {
        ClientsCommand::Add(a) => add_client(&store, a).await,
        ClientsCommand::List => {
            for c in store.clients().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    c.id,
                    c.name,
                    c.organization.as_deref().unwrap_or("-"),
                    c.scope,
                    c.tls_cert_sha256
                        .as_deref()
                        .map_or("-".to_string(), |t| format!("x5t#S256={t}")),
                    if c.revoked.is_some() { "revoked" } else { "active" }
                );
            }
            Ok(())
        }
        ClientsCommand::Revoke { id } => {
            if store.revoke_client(&id, clock::now_micros()).await? {
                println!("client {id} revoked");
                Ok(())
            } else {
                Err(CliError::Msg(format!("no client {id}")))
            }
        }
    };
    store.close().await;
    result
}

async fn add_client(store: &Store, a: AddClient) -> Result<(), CliError> {
    Scopes::parse(&a.scope).map_err(|e| CliError::Msg(e.to_string()))?;
    let id = a.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let (jwks, jwks_url) = match (a.jwks_file, a.jwks_url, a.generate_key) {
        (Some(f), None, None) => {
            let doc = std::fs::read_to_string(&f).map_err(|e| CliError::Io(f.display().to_string(), e))?;
            serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&doc)
                .map_err(|e| CliError::Msg(format!("{} is not a JWKS: {e}", f.display())))?;
            (Some(doc), None)
        }
        (None, Some(u), None) => (None, Some(u)),
        (None, None, Some(path)) => {
            let (pem, jwks) = generate_es384(&format!("{id}-key"))?;
            write_private(&path, &pem)?;
            eprintln!("private key written to {} (key id {id}-key)", path.display());
            (Some(jwks), None)
        }
        _ => {
            return Err(CliError::Msg(
                "give one of --jwks-file, --jwks-url or --generate-key".into(),
            ));
        }
    };
    let tls_cert_sha256 = match &a.tls_cert {
        None => None,
        Some(f) => {
            let pem = std::fs::read(f).map_err(|e| CliError::Io(f.display().to_string(), e))?;
            Some(
                apa_gateway::security::certs::thumbprint_of_pem(&pem)
                    .map_err(|e| CliError::Msg(format!("{}: {e}", f.display())))?,
            )
        }
    };
    store
        .save_client(ClientRecord {
            id: id.clone(),
            name: a.name,
            organization: a.organization,
            scope: a.scope,
            jwks,
            jwks_url,
            tls_cert_sha256,
            created: clock::now_micros(),
            revoked: None,
        })
        .await?;
    println!("{id}");
    Ok(())
}

/// The HTTP client of the `token` command: with a client certificate for
/// mutual TLS, trusting a given CA.
fn token_http(identity: Option<(PathBuf, PathBuf)>, ca: Option<PathBuf>) -> Result<reqwest::Client, CliError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| CliError::Io(p.display().to_string(), e));
    let mut b = reqwest::Client::builder();
    if let Some((cert, key)) = identity {
        let mut pem = read(&cert)?;
        pem.extend(read(&key)?);
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| CliError::Msg(format!("{}: {e}", cert.display())))?;
        b = b.identity(id);
    }
    if let Some(ca) = ca {
        let certs = reqwest::Certificate::from_pem_bundle(&read(&ca)?)
            .map_err(|e| CliError::Msg(format!("{}: {e}", ca.display())))?;
        b = b.tls_certs_only(certs);
    }
    b.build().map_err(|e| CliError::Msg(e.to_string()))
}

async fn token(
    cfg: &Config,
    http: &reqwest::Client,
    client_id: &str,
    key: &Path,
    kid: Option<String>,
    scope: &str,
    url: Option<String>,
) -> Result<(), CliError> {
    let pem = std::fs::read_to_string(key).map_err(|e| CliError::Io(key.display().to_string(), e))?;
    let base = url.unwrap_or_else(|| cfg.base_url());
    let endpoint = format!("{}/auth/token", base.trim_end_matches('/').trim_end_matches("/fhir"));
    let kid = kid.unwrap_or_else(|| format!("{client_id}-key"));
    let assertion = sign_assertion(client_id, &endpoint, &pem, &kid)?;
    let r = http
        .post(&endpoint)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", apa_gateway::security::auth::ASSERTION_TYPE),
            ("client_assertion", assertion.as_str()),
            ("scope", scope),
        ])
        .send()
        .await
        .map_err(|e| CliError::Msg(format!("{endpoint}: {e}")))?;
    let status = r.status();
    let body: serde_json::Value = r.json().await.map_err(|e| CliError::Msg(format!("{endpoint}: {e}")))?;
    match body.get("access_token").and_then(|t| t.as_str()) {
        Some(t) if status.is_success() => {
            println!("{t}");
            Ok(())
        }
        _ => Err(CliError::Msg(format!("token refused ({status}): {body}"))),
    }
}
