//! `cargo xtask ci`: runs exactly what CI runs, step by step.
//!
//! Cheap checks come first and stop the run at the first failure, so a formatting
//! slip fails in seconds. From the test suite on, no failure stops the others: every
//! test binary runs (`--no-fail-fast`), and the demo, QEMU and benchmark steps run
//! after a failed test step too, so one flaky test cannot hide the state of the rest.
//! The suite's summary is the last thing printed, failed or not, as a plain
//! `tests: N passed, N failed, N skipped` line, so whoever reads the end of the log
//! sees how many tests ran.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{cargo, display, fuzz, qemu, rootfs, run_cmd, tidy};

/// The environment variable naming the file root-only tests log their skips to
/// (`molt_test_support::root::SKIP_LOG`).
const SKIP_LOG: &str = "MOLT_TEST_SKIP_LOG";

/// The embedded target the engine must build for without `std`.
const NOSTD_TARGET: &str = "thumbv7em-none-eabihf";

/// Set (by `.ci/run`) when the no_std target could not be installed on this machine: the
/// no_std steps are then reported as skipped instead of failing the run.
const ALLOW_MISSING_TARGET: &str = "MOLT_ALLOW_MISSING_TARGET";

/// What a step reports when it succeeds.
enum Outcome {
    Passed,
    Skipped(String),
    Tests(TestCounts),
}

/// A CI step: its name, what it runs from the workspace root, and whether a failure
/// stops the run (checks) or only marks it failed (tests).
type Step = (&'static str, fn(&Path) -> Result<Outcome>, Stop);

/// What a failed step does to the steps after it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// A check, or what the tests need: nothing after it runs.
    Run,
    /// A test: the rest still run, and the run fails at the end.
    No,
}

const STEPS: &[Step] = &[
    ("fmt", fmt, Stop::Run),
    ("tidy", tidy_step, Stop::Run),
    ("clippy", clippy, Stop::Run),
    ("nostd", nostd_step, Stop::Run),
    ("doc", doc, Stop::Run),
    ("fuzz-build", fuzz_build, Stop::Run),
    ("engine-size", engine_size, Stop::Run),
    ("rootfs", rootfs_step, Stop::Run),
    ("test", test, Stop::No),
    ("demo", demo_smoke, Stop::No),
    ("qemu", qemu_step, Stop::No),
    ("bench", bench_smoke, Stop::No),
];

/// The error `run` returns once it has printed why: `main` exits non-zero without
/// printing it again, so the test summary stays the last line.
#[derive(Debug)]
pub struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ci failed")
    }
}

impl std::error::Error for Failed {}

pub fn run(root: &Path) -> Result<()> {
    let start = Instant::now();
    let mut done: Vec<(&str, Duration, String)> = Vec::new();
    let mut tests = None;
    let mut failures = Vec::new();
    for &(name, step, stop) in STEPS {
        println!("\n==> ci: step `{name}`");
        let t = Instant::now();
        let result = step(root);
        let took = t.elapsed();
        let note = match result {
            Ok(Outcome::Passed) => "ok".to_string(),
            Ok(Outcome::Skipped(why)) => format!("skipped: {why}"),
            Ok(Outcome::Tests(counts)) => {
                tests = Some(counts);
                "ok".to_string()
            }
            Err(e) => {
                if let Some(counts) = e.downcast_ref::<TestsFailed>() {
                    tests = Some(counts.0.clone());
                }
                failures.push(format!(
                    "ci: step `{name}` FAILED after {}:\n{e:#}",
                    secs(took)
                ));
                if stop == Stop::Run {
                    done.push((name, took, "FAILED".to_string()));
                    break;
                }
                "FAILED".to_string()
            }
        };
        println!("==> ci: step `{}` {note} ({})", name, secs(took));
        done.push((name, took, note));
    }
    print_timings(&done, start.elapsed());
    for f in &failures {
        println!("\n{f}");
    }
    if let Some(t) = tests {
        println!(
            "tests: {} passed, {} failed, {} skipped",
            t.passed, t.failed, t.skipped
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failed.into())
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn print_timings(done: &[(&str, Duration, String)], total: Duration) {
    println!("\nci: step timings");
    for (name, took, note) in done {
        println!("  {name:<13} {:>8}  {note}", secs(*took));
    }
    println!("  {:<13} {:>8}", "total", secs(total));
}

fn fmt(root: &Path) -> Result<Outcome> {
    run_cmd(cargo(root).args(["fmt", "--all", "--check"]))?;
    // The fuzz crate is its own workspace, so `--all` above does not reach it.
    run_cmd(cargo(root).args([
        "fmt",
        "--all",
        "--check",
        "--manifest-path",
        "engine/fuzz/Cargo.toml",
    ]))?;
    Ok(Outcome::Passed)
}

/// The README's first command and walkthrough, run unattended (`cargo xtask demo --smoke`).
fn demo_smoke(root: &Path) -> Result<Outcome> {
    run_cmd(cargo(root).args(["xtask", "demo", "--smoke"]))?;
    Ok(Outcome::Passed)
}

/// `cargo xtask bench --smoke`: every benchmark once, end to end, against its real
/// baselines (nginx, wrk, SWUpdate, tar, zstd, b3sum), so that the measuring tool
/// cannot rot between measurements; it writes no figures (docs/benchmarks.md comes
/// from a quiet machine and 10 rounds).
fn bench_smoke(root: &Path) -> Result<Outcome> {
    run_cmd(cargo(root).args(["xtask", "bench", "--smoke"]))?;
    Ok(Outcome::Passed)
}

/// `cargo xtask qemu-test`: the emulated aarch64 device, its rollback and power cuts
/// (qemu/README.md). Outside CI a machine without QEMU skips it, loudly; `.ci/run`
/// installs QEMU, and there (`CI` set) a missing tool fails the step.
fn qemu_step(root: &Path) -> Result<Outcome> {
    if !qemu::installed() && std::env::var_os("CI").is_none() {
        let why = "qemu-system-aarch64 is not installed (.ci/run installs it, see qemu/README.md)";
        println!("WARNING: {why}");
        return Ok(Outcome::Skipped(why.to_string()));
    }
    qemu::test_task(root, &qemu::TestOptions::default())?;
    Ok(Outcome::Passed)
}

fn tidy_step(root: &Path) -> Result<Outcome> {
    tidy::check(root)?;
    Ok(Outcome::Passed)
}

fn clippy(root: &Path) -> Result<Outcome> {
    run_cmd(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    Ok(Outcome::Passed)
}

fn nostd_step(root: &Path) -> Result<Outcome> {
    if let Some(why) = missing_target_allowed()? {
        return Ok(Outcome::Skipped(why));
    }
    nostd(root)?;
    Ok(Outcome::Passed)
}

/// `cargo xtask nostd`: the engine without `std` (and so without `alloc`) for a Cortex-M4F.
pub fn nostd(root: &Path) -> Result<()> {
    require_target()?;
    run_cmd(cargo(root).args([
        "build",
        "-p",
        "molt-engine",
        "--no-default-features",
        "--target",
        NOSTD_TARGET,
    ]))
}

fn doc(root: &Path) -> Result<Outcome> {
    run_cmd(cargo(root).env("RUSTDOCFLAGS", "-D warnings").args([
        "doc",
        "--workspace",
        "--no-deps",
    ]))?;
    Ok(Outcome::Passed)
}

fn fuzz_build(root: &Path) -> Result<Outcome> {
    fuzz::build(root)?;
    Ok(Outcome::Passed)
}

/// Builds the thumbv7em size probe: the engine must keep fitting a Cortex-M4F.
fn engine_size(root: &Path) -> Result<Outcome> {
    if let Some(why) = missing_target_allowed()? {
        return Ok(Outcome::Skipped(why));
    }
    require_target()?;
    crate::size::run(root)?;
    Ok(Outcome::Passed)
}

/// `Some(reason)` when the embedded target is missing and `.ci/run` said that is expected here.
fn missing_target_allowed() -> Result<Option<String>> {
    if target_installed(NOSTD_TARGET)? || std::env::var_os(ALLOW_MISSING_TARGET).is_none() {
        return Ok(None);
    }
    let why =
        format!("{NOSTD_TARGET} is not installed and could not be ({ALLOW_MISSING_TARGET} is set)");
    println!("WARNING: {why}");
    Ok(Some(why))
}

fn require_target() -> Result<()> {
    if !target_installed(NOSTD_TARGET)? {
        bail!("the {NOSTD_TARGET} standard library is not installed: run `rustup target add {NOSTD_TARGET}`");
    }
    Ok(())
}

/// Whether `target`'s standard library is installed (`rustup target add`).
pub(crate) fn target_installed(target: &str) -> Result<bool> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run `rustc --print sysroot`")?;
    if !out.status.success() {
        bail!("`rustc --print sysroot` failed ({})", out.status);
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir())
}

/// Builds the Debian tree the agent's package tests chroot into (cached: seconds when
/// it exists), so that `test` can hand it to them. Building it needs root.
fn rootfs_step(root: &Path) -> Result<Outcome> {
    if !crate::is_root() {
        let why = "not root: the package tests will skip, because building the test rootfs \
                   needs root (debootstrap, chroot)";
        println!("{why}");
        return Ok(Outcome::Skipped(why.to_string()));
    }
    rootfs::ensure(root, false, rootfs::Progress::Stdout)?;
    Ok(Outcome::Passed)
}

/// Totals over every `test result:` line cargo test printed.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
struct TestCounts {
    passed: u64,
    failed: u64,
    /// `#[ignore]`d tests, and root-only tests that returned early without root.
    skipped: u64,
}

impl TestCounts {
    /// Adds one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line; other lines are ignored.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        let rest = rest.split_once(". ").map_or(rest, |(_, r)| r);
        for part in rest.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.skipped += n,
                _ => {}
            }
        }
    }
}

/// Moves the tests named in `log` (the skip log: one test name a line, written by
/// `molt_test_support::root_or_skip`) from passed to skipped: libtest counted them
/// as passed because they returned early. Returns their names.
fn move_root_skips(counts: &mut TestCounts, log: &str) -> Vec<String> {
    let skipped: Vec<String> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let n = skipped.len() as u64;
    counts.passed = counts.passed.saturating_sub(n);
    counts.skipped += n;
    skipped
}

/// The test step failed; what it counted up to then.
#[derive(Debug)]
struct TestsFailed(TestCounts, String);

impl std::fmt::Display for TestsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for TestsFailed {}

/// `cargo test --workspace --no-fail-fast`, its output passed through and counted:
/// every test binary runs even when an earlier one failed.
fn test(root: &Path) -> Result<Outcome> {
    let mut cmd = cargo(root);
    cmd.args(["test", "--workspace", "--no-fail-fast"]);
    // Root-only tests log themselves here when they skip (molt_test_support::root).
    let skip_log = std::env::temp_dir().join(format!("molt-test-skips-{}", std::process::id()));
    std::fs::write(&skip_log, "")
        .with_context(|| format!("cannot create {}", skip_log.display()))?;
    cmd.env(SKIP_LOG, &skip_log);
    // Set only when the `rootfs` step left a complete tree and we are root, which the
    // package tests need to chroot into it; without it they skip.
    if crate::is_root() {
        if let Some(dir) = rootfs::ready(root)? {
            cmd.env(rootfs::ENV_TEST_ROOTFS, dir);
        }
    }
    let shown = display(&cmd);
    println!("$ {shown}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let mut counts = TestCounts::default();
    if let Some(stdout) = child.stdout.take() {
        let mut out = std::io::stdout().lock();
        for line in BufReader::new(stdout).lines() {
            let line = line.context("cannot read cargo test output")?;
            counts.add_line(&line);
            writeln!(out, "{line}")?;
            out.flush()?;
        }
    }
    let status = child.wait()?;
    let log = std::fs::read_to_string(&skip_log)
        .with_context(|| format!("cannot read {}", skip_log.display()))?;
    let _ = std::fs::remove_file(&skip_log);
    let root_skips = move_root_skips(&mut counts, &log);
    let mut failures = Vec::new();
    if !root_skips.is_empty() && crate::is_root() {
        // As root nothing may skip for lack of it: a root check that is wrong here
        // would hide those tests from CI for good. They count as failed, not skipped.
        let n = root_skips.len() as u64;
        counts.skipped -= n;
        counts.failed += n;
        failures.push(format!(
            "{n} test(s) skipped for lack of root although running as root:\n  {}",
            root_skips.join("\n  ")
        ));
    }
    if !status.success() {
        // A binary that crashed or did not build prints no result line: it still
        // counts as a failure in the summary.
        let why = if counts.failed == 0 {
            counts.failed = 1;
            " (a test binary failed without a result line: it crashed or did not build; \
             see cargo's errors above)"
        } else {
            ""
        };
        failures.insert(
            0,
            format!(
                "`{shown}` failed ({status}); {} passed, {} failed{why}",
                counts.passed, counts.failed
            ),
        );
    }
    if !failures.is_empty() {
        let msg = failures.join("\n");
        return Err(TestsFailed(counts, msg).into());
    }
    if counts.passed == 0 {
        bail!("`{shown}` ran no test");
    }
    Ok(Outcome::Tests(counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_result_lines_are_summed() {
        let mut c = TestCounts::default();
        c.add_line("test result: ok. 12 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        c.add_line("running 3 tests");
        c.add_line("test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        assert_eq!(
            c,
            TestCounts {
                passed: 13,
                failed: 1,
                skipped: 2
            }
        );
    }

    #[test]
    fn root_skips_move_from_passed_to_skipped() {
        let mut c = TestCounts::default();
        c.add_line("test result: ok. 10 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        let names = move_root_skips(&mut c, "fsops::extract\ninstall_full\n\n");
        assert_eq!(names, ["fsops::extract", "install_full"]);
        assert_eq!(
            c,
            TestCounts {
                passed: 8,
                failed: 0,
                skipped: 3
            }
        );
        // An empty log (as root, or no root-only test ran) changes nothing.
        assert!(move_root_skips(&mut c, "").is_empty());
        assert_eq!(c.passed, 8);
    }
}
