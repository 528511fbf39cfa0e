//! The operator CLI `molt`: argument parsing and output only; the work is in the `molt_controller` library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use molt_controller::inspect::{self, human};
use molt_controller::{build, keys};
use molt_engine::bundle::TrustedKey;
use molt_engine::Error;

/// molt: over-the-air updates for Linux edge devices (operator CLI).
#[derive(Parser)]
#[command(name = "molt", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Generate an ed25519 signing key pair: PREFIX.secret and PREFIX.pub.
    Keygen {
        /// Path prefix of the key files (`keys/release` writes keys/release.secret and keys/release.pub).
        #[arg(short, long, value_name = "PREFIX")]
        output: PathBuf,
    },
    /// Build, inspect and verify update bundles.
    #[command(subcommand)]
    Bundle(BundleCmd),
}

#[derive(Subcommand)]
enum BundleCmd {
    /// Build a signed bundle from a recipe (see docs/recipe.md).
    Build {
        /// The recipe file (TOML).
        recipe: PathBuf,
        /// The bundle file to write (replaced atomically if it exists).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// A secret key from `molt keygen`; repeat to sign with up to 4 keys (key rotation).
        #[arg(long = "key", value_name = "SECRET", required = true)]
        keys: Vec<PathBuf>,
    },
    /// Show a bundle's manifest, recipe and entries.
    Inspect {
        /// The bundle file.
        file: PathBuf,
        /// A public key to check the signature with; without one the signature is NOT checked.
        #[arg(long = "key", value_name = "PUB")]
        keys: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Verify a bundle completely, as a device would: signature, chunks, entries, digests.
    Verify {
        /// The bundle file.
        file: PathBuf,
        /// A trusted public key; repeat to trust several.
        #[arg(long = "key", value_name = "PUB", required = true)]
        keys: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Top::Keygen { output } => {
            let g = keys::generate(&output)?;
            eprintln!(
                "wrote {} (secret: keep it off devices and out of version control) and {}",
                g.secret.display(),
                g.public.display()
            );
            println!("{}", hex::encode(g.id));
            Ok(ExitCode::SUCCESS)
        }
        Top::Bundle(BundleCmd::Build {
            recipe,
            output,
            keys: key_files,
        }) => {
            let secrets = key_files
                .iter()
                .map(|p| keys::read_secret(p))
                .collect::<Result<Vec<_>>>()?;
            let progress = progress_bar();
            let built = build::build(&recipe, &output, &secrets, &progress);
            progress.finish_and_clear();
            let b = built?;
            let ids: Vec<String> = b.key_ids.iter().map(hex::encode).collect();
            println!(
                "built {}: version {} ({}), {} entries, {} of files, {} in {} chunk(s), signed by {}",
                b.path.display(),
                b.version,
                if b.full { "full" } else { "patch" },
                b.entries,
                human(b.file_bytes),
                human(b.bundle_len),
                b.chunks,
                ids.join(", ")
            );
            if let Some(g) = b.target_group {
                println!(
                    "target group: {g} (for the controller's deployment; not part of the bundle)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Top::Bundle(BundleCmd::Inspect {
            file,
            keys: key_files,
            json,
        }) => {
            let trusted = public_keys(&key_files)?;
            let d = inspect::decode(&file, &trusted, true, None)?;
            if json {
                let text = serde_json::to_string_pretty(&inspect::render_json(&file, &d))
                    .context("cannot format JSON")?;
                println!("{text}");
            } else {
                print!("{}", inspect::render_text(&file, &d));
            }
            match &d.refusal {
                None => Ok(ExitCode::SUCCESS),
                Some(r) => {
                    eprintln!("error: {}: {r}", file.display());
                    if matches!(
                        r.error,
                        Error::UnknownKey { .. }
                            | Error::BadSignature { .. }
                            | Error::RevokedKey { .. }
                    ) {
                        eprintln!("(inspect without --key shows the contents without checking the signature)");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Top::Bundle(BundleCmd::Verify {
            file,
            keys: key_files,
        }) => {
            let trusted = public_keys(&key_files)?;
            let progress = progress_bar();
            progress.set_message("verifying");
            progress.set_length(std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0));
            let verified = inspect::verify(&file, &trusted, Some(&progress));
            progress.finish_and_clear();
            match verified {
                Ok(v) => {
                    println!(
                        "OK {}: version {} for {} (release {}), {} entries, {} of files, {} bundle, signed by {}",
                        file.display(),
                        v.version,
                        v.compatible,
                        v.release,
                        v.entries,
                        human(v.file_bytes),
                        human(v.file_len),
                        hex::encode(v.key_id)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("FAILED {}: {e:#}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

fn public_keys(files: &[PathBuf]) -> Result<Vec<TrustedKey>> {
    files
        .iter()
        .map(|p: &PathBuf| keys::read_public(Path::new(p)))
        .collect()
}

/// A byte progress bar on stderr, or a hidden one when stderr is not a terminal
/// (CI logs and pipes get the one-line summary only).
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>9} [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
