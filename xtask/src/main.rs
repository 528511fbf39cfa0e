//! `cargo xtask`: molt's repository automation (CI, tidy, fuzzing, benchmarks), written in Rust so it runs wherever cargo does.
//!
//! `cargo xtask` is an alias (see `.cargo/config.toml`) for `cargo run --package xtask --`.
//! Each task lives in its own module; this file only parses arguments and holds the
//! few helpers they share for running commands.

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
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

const HELP: &str = "\
cargo xtask TASK [ARGS]

Tasks:
  ci                         run exactly what CI runs (fmt, tidy, clippy, no_std build,
                             docs, fuzz build, size example, test rootfs, tests, demo smoke,
                             QEMU device test, bench smoke), stopping at the first failure
  tidy                       check repository rules (every .rs file starts with a //! line)
  nostd                      build molt-engine without std for thumbv7em-none-eabihf
  fuzz [--seconds N] [--build-only]
                             build the `decode` fuzz target (engine/fuzz) and run it for
                             N seconds (default 60) from a generated seed corpus
  engine-size                flash and RAM of the engine on thumbv7em (builds engine/size-probe)
  bench [NAME…] [--rounds N] [--smoke]
                             run benchmarks (all without NAME; `bench list` names them) and write
                             docs/benchmarks.md; --smoke: one round each, nothing written (CI)
  rootfs [--print-path] [--rebuild]
                             build (once, as root) the minimal Debian bookworm tree with
                             python3-pip and npm that package tests chroot into, cached in
                             target/molt-rootfs/bookworm; --print-path prints only its path
  demo [--listen ADDR] [--smoke]
                             run molt: a controller (default 127.0.0.1:8080, data in target/demo)
                             and an enrolled demo device, then print the walkthrough; Ctrl-C
                             stops both. --smoke runs the walkthrough itself and stops (CI)
  qemu-image [--refetch]     build the emulated aarch64 test device from qemu/device.toml: Debian's
                             arm64 kernel and busybox, a static molt-agent, an ext4 data disk
                             (cached in target/qemu/; --refetch downloads the packages again)
  qemu-test [--rounds N] [--jobs N] [--echo]
                             boot it under QEMU against a real controller: enroll, deploy, reboot,
                             a rollback with reboot, and N power-cut rounds (kill -9 of QEMU),
                             on N devices at once (default 2); --echo shows the consoles
  help                       print this help
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        // `cargo xtask ci` has printed why, and must end on its test summary.
        Err(e) if e.is::<ci::Failed>() => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let root = project_root();
    let Some((task, rest)) = args.split_first() else {
        print!("{HELP}");
        return Ok(());
    };
    match task.as_str() {
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(())
        }
        "ci" => {
            no_args(task, rest)?;
            ci::run(&root)
        }
        "tidy" => {
            no_args(task, rest)?;
            tidy::check(&root)?;
            println!("tidy: ok");
            Ok(())
        }
        "engine-size" => {
            no_args(task, rest)?;
            size::run(&root)
        }
        "nostd" => {
            no_args(task, rest)?;
            ci::nostd(&root)
        }
        "fuzz" => fuzz::run(&root, &fuzz::Options::parse(rest)?),
        "bench" => bench::run(&root, rest),
        "rootfs" => rootfs::run(&root, &rootfs::Options::parse(rest)?),
        "demo" => demo::run(&root, &demo::Options::parse(rest)?),
        "qemu-image" => qemu::image_task(&root, rest),
        "qemu-test" => qemu::test_task(&root, rest),
        other => bail!("unknown task `{other}`\n\n{HELP}"),
    }
}

fn no_args(task: &str, rest: &[String]) -> Result<()> {
    if let Some(extra) = rest.first() {
        bail!("`{task}` takes no arguments (got `{extra}`)");
    }
    Ok(())
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
