//! `molt-controller`: the fleet server's command line (argument parsing, logging set-up, binding); the server itself is the `molt_controller` library.

use std::io::{IsTerminal, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use molt_controller::{self as server, Config, Server};
use tracing_subscriber::EnvFilter;

/// molt's fleet controller: devices, groups, updates and deployments over HTTP.
#[derive(Parser)]
#[command(name = "molt-controller", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the device and operator API (docs/api.md).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The data directory [default: /var/lib/molt-controller as root,
    /// else ~/.local/share/molt-controller].
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Seconds between polls of an idle device (each answer adds ±20 % jitter).
    #[arg(long, value_name = "SECS", default_value_t = server::DEFAULT_POLL_INTERVAL)]
    poll_interval: u32,
    /// A public key (64 hex digits) uploads may be signed with; repeatable. The data
    /// directory's signing key and `<data>/trusted-keys` are always trusted.
    #[arg(long, value_name = "HEX")]
    trusted_key: Vec<String>,
    /// Hold no private key: server-side builds (`molt update push RECIPE`, the web
    /// form) are refused, and only bundles signed elsewhere with a --trusted-key (or
    /// a key in `<data>/trusted-keys`) are accepted. See docs/api.md on what the
    /// controller's own key means for the fleet.
    #[arg(long)]
    no_signing_key: bool,
    /// Most connections open at once; more are closed at once, and logged
    /// (default 16384, and never more than the open-file limit leaves room for).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Largest bundle upload, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = server::DEFAULT_MAX_BUNDLE_BYTES)]
    max_bundle_bytes: u64,
}

fn main() -> ExitCode {
    let filter = EnvFilter::try_from_env("MOLT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout carries the lines scripts read (address, token).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only at a terminal, and never with NO_COLOR set (no-color.org).
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("molt-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let config = Config {
        data: args.data.unwrap_or_else(server::default_data_dir),
        poll_interval_secs: args.poll_interval,
        max_bundle_bytes: args.max_bundle_bytes,
        trusted_keys: args.trusted_key,
        no_signing_key: args.no_signing_key,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(server::tls_config(cert, key)?),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let server = Server::open(&config)?;
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;

    let mut out = std::io::stdout().lock();
    if let Some(token) = &server.new_operator_token {
        writeln!(out, "operator token: {token}")?;
        writeln!(
            out,
            "(shown once; also in {})",
            server.operator_token_file.display()
        )?;
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    writeln!(out, "listening on {scheme}://{addr}")?;
    out.flush()?;
    drop(out);

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(server::serve(
        listener,
        tls,
        server.router(),
        args.max_connections.map(|n| n as usize),
        shutdown_signal(),
    ));
    // A verification or build still running on the blocking pool is not waited for
    // long: its temporaries are removed at the next start.
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Completes on Ctrl-C or SIGTERM (systemd's stop).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
