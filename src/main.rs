//! The `apa-gateway` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use apa_gateway::config::Config;
use apa_gateway::{server, telemetry};

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
    Serve,
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
    let _telemetry = match telemetry::init(&cfg) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => match server::start(&cfg).await {
            Ok(running) => {
                tracing::info!(addr = %running.addr, base = %running.base, "apa-gateway listening");
                running.wait().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("apa-gateway: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
