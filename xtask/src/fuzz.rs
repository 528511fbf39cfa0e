//! `cargo xtask fuzz`: builds and runs the cargo-fuzz target `decode` (engine/fuzz) on a stable toolchain.
//!
//! cargo-fuzz passes nightly-only flags to rustc (`-Zsanitizer=address` among them).
//! Rather than requiring a nightly toolchain, which a fresh CI machine may not have,
//! we set `RUSTC_BOOTSTRAP=1`, which lets the stable compiler accept them; the
//! sanitizer runtimes ship with the stable standard library for x86_64 Linux.
//!
//! The seed corpus is generated, not committed: `engine/fuzz/examples/seeds.rs`
//! writes a few valid bundles signed with the key `fuzz_decode` trusts into
//! `engine/fuzz/corpus/decode/` (gitignored), next to whatever the fuzzer has found.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{cargo, run_cmd};

/// The fuzz target's name (`engine/fuzz/fuzz_targets/decode.rs`).
const TARGET: &str = "decode";

/// How long `cargo xtask fuzz` runs when `--seconds` is not given.
const DEFAULT_SECONDS: u64 = 60;

/// `cargo xtask fuzz [--seconds N] [--build-only]`.
#[derive(clap::Args)]
pub struct Options {
    /// How long the fuzzer runs, in seconds.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SECONDS)]
    seconds: u64,
    /// Build the target and its seed corpus, but do not run it.
    #[arg(long)]
    build_only: bool,
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    build(root)?;
    if opts.build_only {
        return Ok(());
    }
    let corpus = root.join("engine/fuzz/corpus").join(TARGET);
    run_cmd(
        cargo(root)
            .args([
                "run",
                "--quiet",
                "--manifest-path",
                "engine/fuzz/Cargo.toml",
            ])
            .args(["--example", "seeds", "--"])
            .arg(&corpus),
    )
    .context("cannot generate the seed corpus")?;
    run_cmd(
        fuzz_cargo(root)
            .args(["fuzz", "run", TARGET])
            .arg("--")
            .arg(format!("-max_total_time={}", opts.seconds)),
    )
}

/// Builds the fuzz target (instrumented, as `cargo fuzz run` would) and the seed generator.
pub fn build(root: &Path) -> Result<()> {
    require_cargo_fuzz(root)?;
    run_cmd(fuzz_cargo(root).args(["fuzz", "build", TARGET]))?;
    // Built here too so that CI notices when an engine change breaks the seed generator.
    run_cmd(
        cargo(root)
            .args([
                "build",
                "--quiet",
                "--manifest-path",
                "engine/fuzz/Cargo.toml",
            ])
            .args(["--example", "seeds"]),
    )
}

/// `cargo` set up for cargo-fuzz: run from `engine/` (cargo-fuzz looks for `./fuzz`), stable allowed.
fn fuzz_cargo(root: &Path) -> Command {
    let mut cmd = cargo(&root.join("engine"));
    cmd.env("RUSTC_BOOTSTRAP", "1");
    cmd
}

fn require_cargo_fuzz(root: &Path) -> Result<()> {
    let found = cargo(root)
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        bail!(
            "cargo-fuzz is not installed: run `cargo install cargo-fuzz --locked` (.ci/run does)"
        );
    }
    Ok(())
}
