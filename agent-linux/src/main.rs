//! molt-agent's command line: parse flags, load the configuration, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use molt_agent::config::{Config, DEFAULT_PATH};
use molt_agent::install::Device;
use molt_engine::update::Outcome;

/// The molt device agent: installs signed bundles into the inactive A/B snapshot.
#[derive(Parser)]
#[command(name = "molt-agent", version)]
struct Cli {
    /// The configuration file.
    #[arg(long, short, default_value = DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install a bundle from a file or an http:// URL, atomically, with rollback on failure.
    Install {
        /// A bundle file or URL.
        source: String,
    },
    /// Show the slots, their versions, the last result and the log's tail.
    Status,
    /// Switch back to the previous snapshot by hand.
    Rollback,
    /// Settle an install a crash or reboot interrupted, then print the status (run at boot).
    Recover,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOLT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("molt-agent: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cfg = Config::load(&cli.config)
        .with_context(|| format!("configuration {}", cli.config.display()))?;
    let mut dev = Device::open(cfg)?;
    match cli.command {
        Cmd::Install { source } => {
            let outcome = dev.install(&source)?;
            println!("{outcome}");
            Ok(if outcome == Outcome::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        // Opening the device already settled the journal; saying so is all that is left.
        Cmd::Status | Cmd::Recover => {
            print!("{}", dev.status());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rollback => {
            let to = dev.rollback()?;
            println!(
                "rolled back: slot {} is active",
                molt_agent::install::slot_name(to)
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
