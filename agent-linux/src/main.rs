//! molt-agent's command line: parse flags, load the configuration, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use molt_agent::config::{Config, DEFAULT_PATH};
use molt_agent::daemon;
use molt_agent::enrollment::{self, EnrollArgs, Enrollment};
use molt_agent::install::{self, Busy, Device, Hooks};
use molt_agent::outbox::Outbox;
use molt_engine::update::Outcome;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

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
    /// Install a bundle from a file or an http(s):// URL, atomically, with rollback on failure.
    Install {
        /// A bundle file or URL.
        source: String,
    },
    /// Show the slots, their versions, the last result, the log's tail and the controller.
    Status,
    /// Switch back to the previous snapshot by hand.
    Rollback,
    /// Settle an install a crash or reboot interrupted, then print the status.
    Recover,
    /// Enroll this device with a controller (stores its credential in the data directory).
    Enroll {
        /// The controller's URL (default: `controller` from the configuration).
        #[arg(long)]
        controller: Option<String>,
        /// The group's enrollment token (from `molt groups`).
        #[arg(long)]
        token: String,
        /// The device's name on the controller (default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// Enroll again although already enrolled (the controller sees a new device).
        #[arg(long)]
        force: bool,
    },
    /// Run the daemon: settle, poll the controller, install what it offers, report back.
    Run {
        /// Return once nothing is left to do (offers installed, reports delivered,
        /// the controller answering `none`) instead of polling forever.
        #[arg(long)]
        once: bool,
    },
}

fn main() -> ExitCode {
    // Before anything is created: modes never depend on the inherited umask.
    molt_agent::perms::set_umask();
    let cli = Cli::parse();
    if !matches!(cli.command, Cmd::Run { .. }) {
        // `molt-agent status | head` ends quietly, as Unix tools do (Rust ignores
        // SIGPIPE, so the print would panic). Not the daemon: a journald restart
        // must not kill it.
        // SAFETY: no other thread exists yet; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // MOLT_LOG: a level, or `target=level` directives separated by commas; info
    // when unset or unreadable. `Targets` rather than `EnvFilter`: no regex
    // engine in the static binary.
    let filter = std::env::var("MOLT_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    // Colour only for a person at a terminal who has not asked for none
    // (no-color.org): escape codes in a journal or a log file are noise.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .finish()
        .with(filter)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("molt-agent: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Opens the device; when it is enrolled, its controller deployments' reports go
/// to the outbox (sent by `run`) and the controller's bundle URLs get the credential.
fn open(cfg: &Config) -> Result<Device> {
    let hooks = match Enrollment::load(&cfg.data_dir())? {
        Some(e) => daemon::hooks(cfg, &e)?.0,
        None => Hooks::default(),
    };
    Device::open_with(cfg.clone(), hooks)
}

/// The enrollment lines of `status`.
fn controller_status(cfg: &Config) -> String {
    let data = cfg.data_dir();
    match Enrollment::load(&data) {
        Ok(Some(e)) => {
            let pending = Outbox::peek(&data)
                .and_then(|o| o.pending())
                .map_or_else(|e| format!("unknown ({e:#})"), |n| n.to_string());
            format!(
                "controller    {}\ndevice id     {} (group {})\nreports queued {pending}\n",
                e.controller, e.device_id, e.group
            )
        }
        Ok(None) => "controller    (not enrolled)\n".into(),
        Err(e) => format!("controller    {e:#}\n"),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let cfg = Config::load(&cli.config)
        .with_context(|| format!("configuration {}", cli.config.display()))?;
    match cli.command {
        Cmd::Install { source } => {
            let mut dev = open(&cfg)?;
            if let Some(why) = dev.nothing_to_install(&source) {
                println!("{}", molt_engine::text::Escaped::new(&why));
                return Ok(ExitCode::SUCCESS);
            }
            let outcome = dev.install(&source)?;
            println!("{outcome}");
            // Why, where the person who ran it looks: "failed" alone sends them to
            // `status` or the log.
            if outcome != Outcome::Succeeded {
                if let Some(line) = dev.last_final_line() {
                    eprintln!("molt-agent: {line}");
                }
            }
            Ok(if outcome == Outcome::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        // Read-only: it takes no lock and settles nothing, so it never runs a
        // script, spends a trial boot or creates a file. Only `recover`,
        // `install` and `run` settle an interrupted install.
        Cmd::Status => {
            print!("{}", install::peek_status(&cfg)?);
            print!("{}", controller_status(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        // Opening the device already settled the journal; saying so is all that is left.
        Cmd::Recover => {
            match open(&cfg) {
                Ok(dev) => print!("{}", dev.status()),
                // The daemon holds the lock (and settled at its start): show what the
                // files say, settling nothing.
                Err(e) if e.downcast_ref::<Busy>().is_some() => {
                    print!("{}", install::peek_status(&cfg)?);
                }
                Err(e) => return Err(e),
            }
            print!("{}", controller_status(&cfg));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rollback => {
            let mut dev = open(&cfg)?;
            let to = dev.rollback()?;
            println!("rolled back: slot {} is active", install::slot_name(to));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Enroll {
            controller,
            token,
            name,
            force,
        } => {
            let Some(url) = controller.or_else(|| cfg.controller.clone()) else {
                anyhow::bail!(
                    "enroll needs --controller URL (or `controller` in the configuration)"
                );
            };
            // Held until the end: a running daemon (which holds the lock) must not
            // have its identity and outbox replaced underneath it.
            let dev = open(&cfg)?;
            let active_version = dev.active_version();
            let args = EnrollArgs {
                controller: &url,
                token: &token,
                name: name.as_deref(),
                active_version,
                force,
            };
            let result = enrollment::enroll(&cfg, &cfg.data_dir(), &args);
            drop(dev);
            match result {
                Ok(e) => {
                    println!(
                        "enrolled with {} as {} (group {})",
                        e.controller, e.device_id, e.group
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("molt-agent: enroll failed: {e:#}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Cmd::Run { once } => {
            daemon::run(cfg, daemon::Options { once })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
