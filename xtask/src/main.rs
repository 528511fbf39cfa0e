//! `cargo xtask`: molt's repository automation (CI, tidy, fuzzing, benchmarks), written in Rust so it runs wherever cargo does.
//!
//! `cargo xtask` is an alias (see `.cargo/config.toml`) for `cargo run --package xtask --`.
//! Each task lives in its own module with its arguments (a clap `Args` struct); this
//! file only gathers them into one command line and holds the few helpers they share
//! for running commands.

mod bench;
mod ci;
mod demo;
mod fuzz;
mod proc;
mod qemu;
mod rootfs;
mod size;
mod tidy;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

/// `cargo xtask TASK [ARGS]`; without a task, the list of tasks.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "molt's repository automation: CI, tidy, fuzzing, benchmarks, the demo and the QEMU device test"
)]
struct Cli {
    #[command(subcommand)]
    task: Option<Task>,
}

#[derive(Subcommand)]
enum Task {
    /// Run exactly what CI runs, stopping at the first failure.
    ///
    /// fmt, tidy, clippy, the no_std build, docs, the fuzz build, the size example,
    /// the test rootfs, the tests, the demo smoke, the QEMU device test and the bench
    /// smoke.
    Ci,
    /// Check the repository rules no compiler checks.
    ///
    /// A `//!` line opens every .rs file; the bundle format is read only in the
    /// engine; the crates' direct dependencies resolve to one version each; the paths
    /// ARCHITECTURE.md's code map names exist.
    Tidy,
    /// Build molt-engine without std for thumbv7em-none-eabihf.
    Nostd,
    /// Build the `decode` fuzz target (engine/fuzz) and run it from a seed corpus.
    Fuzz(fuzz::Options),
    /// Flash and RAM of the engine on thumbv7em (builds engine/size-probe).
    EngineSize,
    /// Run benchmarks against their baselines and rewrite docs/benchmarks.md.
    ///
    /// Without NAME every benchmark runs; a run rewrites only the rows and sections of
    /// the benchmarks it ran. `--smoke` runs each once and writes nothing (CI).
    Bench(bench::Options),
    /// Build the Debian tree the package tests chroot into (as root; cached).
    ///
    /// A minimal bookworm with python3-pip and npm, built once and cached in
    /// target/molt-rootfs/bookworm.
    Rootfs(rootfs::Options),
    /// Run molt: a controller and an enrolled demo device, and print the walkthrough.
    ///
    /// The controller keeps its data in target/demo; Ctrl-C stops both. `--smoke` runs
    /// the walkthrough itself and stops (CI).
    Demo(demo::Options),
    /// Build the emulated aarch64 test device from qemu/device.toml, cached in target/qemu/.
    ///
    /// Debian's arm64 kernel and busybox, a static molt-agent, an ext4 data disk.
    QemuImage(qemu::ImageOptions),
    /// Boot the emulated device under QEMU against a real controller.
    ///
    /// Enroll, deploy, reboot, a rollback with reboot, and power-cut rounds (kill -9 of
    /// QEMU), on several devices at once.
    QemuTest(qemu::TestOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(task) = cli.task else {
        // `cargo xtask` alone lists the tasks (rust-analyzer's habit), and succeeds.
        let _ = Cli::command().print_help();
        return ExitCode::SUCCESS;
    };
    match run(task) {
        Ok(()) => ExitCode::SUCCESS,
        // `cargo xtask ci` has printed why, and must end on its test summary.
        Err(e) if e.is::<ci::Failed>() => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    let root = project_root();
    match task {
        Task::Ci => ci::run(&root),
        Task::Tidy => {
            tidy::check(&root)?;
            println!("tidy: ok");
            Ok(())
        }
        Task::EngineSize => size::run(&root),
        Task::Nostd => ci::nostd(&root),
        Task::Fuzz(opts) => fuzz::run(&root, &opts),
        Task::Bench(opts) => bench::run(&root, &opts),
        Task::Rootfs(opts) => rootfs::run(&root, &opts),
        Task::Demo(opts) => demo::run(&root, &opts),
        Task::QemuImage(opts) => qemu::image_task(&root, &opts),
        Task::QemuTest(opts) => qemu::test_task(&root, &opts),
    }
}

/// The workspace root: xtask always lives one level below it.
fn project_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().unwrap_or(dir).to_path_buf()
}

/// A `cargo` command run from `root`, using the same cargo that started xtask.
fn cargo(root: &Path) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(root);
    cmd
}

/// Builds molt's binaries (`molt`, `molt-controller`, `molt-agent`), in release mode
/// or the dev profile, and returns the directory they are in.
fn build_bins(root: &Path, release: bool) -> Result<PathBuf> {
    let mut cmd = cargo(root);
    cmd.args([
        "build",
        "-p",
        "molt-cli",
        "-p",
        "molt-controller",
        "-p",
        "molt-agent",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    Ok(root.join("target").join(profile))
}

/// Whether this process runs as root (effective uid 0), from /proc: xtask has no libc.
pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// How a command is shown in logs: environment overrides, `cargo` by its short name, then the arguments.
fn display(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    let program = Path::new(cmd.get_program());
    parts.push(
        program
            .file_name()
            .unwrap_or(OsStr::new("?"))
            .to_string_lossy()
            .into_owned(),
    );
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` quietly and returns its stdout, failing with everything it printed
/// unless it exits 0.
fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Echoes and runs `cmd`, failing unless it exits successfully.
fn run_cmd(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    println!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way the repository's scripts and docs spell a task (.ci/, README.md, docs/,
    /// qemu/, the tasks themselves) still parses.
    #[test]
    fn every_documented_invocation_parses() {
        for line in [
            "",
            "help",
            "--help",
            "ci",
            "tidy",
            "nostd",
            "engine-size",
            "fuzz",
            "fuzz --seconds 60",
            "fuzz --build-only",
            "bench",
            "bench list",
            "bench --smoke",
            "bench footprint",
            "bench install-local poll --rounds 10",
            "bench --rounds 3 decode",
            "rootfs",
            "rootfs --print-path",
            "rootfs --rebuild",
            "demo",
            "demo --smoke",
            "demo --listen 127.0.0.1:9000",
            "qemu-image",
            "qemu-image --refetch",
            "qemu-test",
            "qemu-test --rounds 3 --jobs 1 --echo",
        ] {
            let args = std::iter::once("xtask").chain(line.split_whitespace());
            match Cli::try_parse_from(args) {
                Ok(_) => {}
                Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {}
                Err(e) => panic!("`cargo xtask {line}`: {e}"),
            }
        }
    }

    #[test]
    fn bad_invocations_are_refused() {
        for line in [
            "tidy extra",
            "bench no-such-bench",
            "bench --rounds 0",
            "fuzz --seconds x",
            "nope",
        ] {
            let args = std::iter::once("xtask").chain(line.split_whitespace());
            assert!(Cli::try_parse_from(args).is_err(), "`cargo xtask {line}`");
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
