//! `cargo xtask bench [NAME…]`: molt measured against baselines run in the same invocation; prints a table and rewrites docs/benchmarks.md.
//!
//! A benchmark is an entry in [`BENCHMARKS`]: a name, a line saying what it
//! measures, and a function that returns summary [`Row`]s (one figure each,
//! with its baseline and target) and a markdown section with the details and the
//! exact commands. Without names every benchmark runs, in order; a benchmark that
//! fails is reported and the others still run. Absolute seconds on a shared
//! 2-core machine are informational: the figures are ratios against baselines
//! timed in interleaved rounds of the same run (see [`util::interleave`]).
//!
//! docs/benchmarks.md keeps a summary table (one row per figure) and one section
//! per benchmark; a run replaces only the rows and sections of the benchmarks it
//! ran, so `cargo xtask bench poll` does not erase the install figures.

mod build;
mod decode;
mod digest;
mod engine_size;
mod footprint;
mod install;
mod peer;
mod poll;
mod serve;
mod servers;
mod slot;
mod swap;
mod util;
mod workload;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub(crate) use util::Stats;

use crate::build_bins;

/// One benchmark `cargo xtask bench` knows.
pub struct Bench {
    /// The name given on the command line, and its section in docs/benchmarks.md.
    pub name: &'static str,
    /// What it measures, one line.
    pub about: &'static str,
    /// Whether it measures in rounds (`--rounds`); sizes are measured once.
    pub rounds: bool,
    /// Runs it.
    pub run: fn(&mut Ctx) -> Result<Outcome>,
}

/// Every benchmark, in the order `cargo xtask bench` runs and reports them.
pub const BENCHMARKS: &[Bench] = &[
    Bench {
        name: "install-local",
        about: "`molt-agent install FILE` onto a loop-mounted ext4 vs `zstd -dc | tar -x && sync` (root)",
        rounds: true,
        run: install::local,
    },
    Bench {
        name: "install-http",
        about: "`molt-agent install URL` from molt-controller vs `curl | zstd -dc | tar -x && sync` from nginx (root)",
        rounds: true,
        run: install::http,
    },
    Bench {
        name: "install-peer",
        about: "`molt-agent install FILE` vs SWUpdate installing the same tree from a signed .swu (root)",
        rounds: true,
        run: peer::run,
    },
    Bench {
        name: "memory",
        about: "agent peak RSS installing a 20 MiB and a 200 MiB bundle: flat, ≤ 16 MiB (root)",
        rounds: true,
        run: install::memory,
    },
    Bench {
        name: "durability",
        about: "durable install vs molt's own `durable = false` (root)",
        rounds: true,
        run: install::durability,
    },
    Bench {
        name: "swap",
        about: "the atomic swap for 5,000- and 50,000-file snapshots: ≤ 10 ms, independent of size (root)",
        rounds: true,
        run: swap::run,
    },
    Bench {
        name: "decode",
        about: "decoder throughput (verify + decompress, no writes) vs `zstd -dc`",
        rounds: true,
        run: decode::run,
    },
    Bench {
        name: "digest",
        about: "`molt digest TREE` (BLAKE3 per file, one thread) vs `find | xargs -0 b3sum --num-threads 1`",
        rounds: true,
        run: digest::run,
    },
    Bench {
        name: "bundle-build",
        about: "`molt bundle build` vs `tar -cf - -C tree . | zstd -3 -T1`: speed ≥ 1.0×, size ≤ 1.0×",
        rounds: true,
        run: build::run,
    },
    Bench {
        name: "poll",
        about: "`wrk` on `POST /device/poll` with 10,000 devices vs nginx serving a static answer, 1 core each",
        rounds: true,
        run: poll::run,
    },
    Bench {
        name: "serve",
        about: "8 and 64 concurrent bundle downloads from the controller vs nginx `sendfile on`, and its RSS",
        rounds: true,
        run: serve::run,
    },
    Bench {
        name: "footprint",
        about: "molt-agent static musl size (aarch64, x86_64) ≤ 4 MiB; idle daemon RSS ≤ 4 MiB (root)",
        rounds: false,
        run: footprint::run,
    },
    Bench {
        name: "engine-size",
        about: "the engine's flash on thumbv7em (size probe) vs the primitives alone: ≤ 64 KiB",
        rounds: false,
        run: engine_size::run,
    },
];

/// What one benchmark measured: summary rows and its docs/benchmarks.md section.
pub struct Outcome {
    /// One row per figure, for the summary table.
    pub rows: Vec<Row>,
    /// Markdown: tables, notes and the exact commands (without the `## name` heading).
    pub details: String,
}

impl Outcome {
    /// One skipped row, with the reason as the section.
    pub fn skipped(id: &str, what: &str, base: &str, target: &str, why: &str) -> Outcome {
        println!("bench {id}: skipped: {why}");
        Outcome {
            rows: vec![Row::skipped(id, what, base, target, why)],
            details: format!("Skipped on this machine: {why}.\n"),
        }
    }
}

/// One figure of the summary table.
pub struct Row {
    /// The figure's id (a benchmark may report several, e.g. per workload).
    pub id: String,
    /// What molt did.
    pub what: String,
    /// What it was compared with, run in the same invocation (or `—`).
    pub baseline: String,
    /// The figure, e.g. `0.87× (0.61 s vs 0.70 s)`.
    pub result: String,
    /// The target, e.g. `≤ 0.9×`.
    pub target: String,
    /// Whether the target was met.
    pub verdict: Verdict,
}

/// Whether a figure meets its target.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// Measured, no target to compare with.
    Info,
    /// Not measured on this machine (the result says why).
    Skipped,
}

impl Verdict {
    fn mark(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::Info => "—",
            Verdict::Skipped => "skipped",
        }
    }

    /// Met if `ok`, else missed.
    pub fn from(ok: bool) -> Verdict {
        if ok {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }
}

impl Row {
    /// A time ratio (molt's median seconds / the baseline's), which must stay at or below `at_most`.
    pub fn time_ratio(
        id: &str,
        what: &str,
        baseline: &str,
        molt: Stats,
        base: Stats,
        at_most: f64,
    ) -> Row {
        let r = molt.median / base.median;
        Row {
            id: id.into(),
            what: what.into(),
            baseline: baseline.into(),
            result: format!(
                "**{r:.2}×** time ({:.3} s vs {:.3} s)",
                molt.median, base.median
            ),
            target: format!("≤ {at_most:.2}×"),
            verdict: Verdict::from(r <= at_most),
        }
    }

    /// A speed ratio (the baseline's median seconds / molt's), which must reach `at_least`.
    pub fn speed_ratio(
        id: &str,
        what: &str,
        baseline: &str,
        molt: Stats,
        base: Stats,
        at_least: f64,
    ) -> Row {
        let r = base.median / molt.median;
        Row {
            id: id.into(),
            what: what.into(),
            baseline: baseline.into(),
            result: format!(
                "**{r:.2}×** speed ({:.3} s vs {:.3} s)",
                molt.median, base.median
            ),
            target: format!("≥ {at_least:.2}× speed"),
            verdict: Verdict::from(r >= at_least),
        }
    }

    /// A figure that could not be measured here, with the reason.
    pub fn skipped(id: &str, what: &str, baseline: &str, target: &str, why: &str) -> Row {
        Row {
            id: id.into(),
            what: what.into(),
            baseline: baseline.into(),
            result: format!("skipped: {why}"),
            target: target.into(),
            verdict: Verdict::Skipped,
        }
    }

    fn line(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} |",
            self.id,
            self.what,
            self.baseline,
            self.result,
            self.target,
            self.verdict.mark()
        )
    }
}

/// The release binaries the benchmarks run.
#[derive(Clone)]
pub struct Bins {
    pub molt: PathBuf,
    pub agent: PathBuf,
    pub controller: PathBuf,
}

/// What a benchmark gets: the workspace, the round count, and the shared binaries
/// and workload, each built at most once per invocation.
pub struct Ctx {
    /// The workspace root.
    pub root: PathBuf,
    /// Measured rounds per side after the warm-up (at least 10 for a report).
    pub rounds: usize,
    /// A `--smoke` run: the dev-profile binaries the tests already built will do.
    smoke: bool,
    bins: Option<Bins>,
    workload: Option<std::rc::Rc<workload::Workload>>,
}

impl Ctx {
    /// Builds molt, molt-agent and molt-controller in release mode (once); a smoke run
    /// takes the dev profile's, which `cargo xtask ci` has built by then (the smoke
    /// checks that the benchmarks work, not how fast: no release build for it).
    pub fn bins(&mut self) -> Result<Bins> {
        if self.bins.is_none() {
            let dir = build_bins(&self.root, !self.smoke)?;
            self.bins = Some(Bins {
                molt: dir.join("molt"),
                agent: dir.join("molt-agent"),
                controller: dir.join("molt-controller"),
            });
        }
        Ok(self.bins.clone().expect("just built"))
    }

    /// The shared trees, bundles and tarballs (generated or reused once).
    pub fn workload(&mut self) -> Result<std::rc::Rc<workload::Workload>> {
        if self.workload.is_none() {
            let bins = self.bins()?;
            self.workload = Some(std::rc::Rc::new(workload::prepare(&self.root, &bins.molt)?));
        }
        Ok(self.workload.clone().expect("just prepared"))
    }

    /// A scratch directory for benchmark `name`: target/bench/NAME, created.
    pub fn work(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join("target/bench").join(name);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }
}

/// Prints the benchmark names.
pub fn list() {
    println!("benchmarks (cargo xtask bench [NAME…] [--rounds N]; no NAME runs them all):");
    for b in BENCHMARKS {
        println!("  {:<14} {}", b.name, b.about);
    }
}

/// `cargo xtask bench [list | NAME…] [--rounds N] [--smoke]`.
#[derive(clap::Args)]
pub struct Options {
    /// Benchmarks to run, in the order given (every one without NAME); `list` names
    /// them and runs none.
    #[arg(value_name = "NAME", value_parser = names())]
    names: Vec<String>,
    /// Measured rounds per side after the warm-up.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// One round each, the table printed, docs/benchmarks.md left alone (what CI runs).
    #[arg(long)]
    smoke: bool,
}

/// The NAMEs `cargo xtask bench` takes: `list`, then every benchmark with what it measures.
fn names() -> clap::builder::PossibleValuesParser {
    let list = clap::builder::PossibleValue::new("list").help("name the benchmarks, run none");
    let benches = BENCHMARKS
        .iter()
        .map(|b| clap::builder::PossibleValue::new(b.name).help(b.about));
    clap::builder::PossibleValuesParser::new(std::iter::once(list).chain(benches))
}

/// `cargo xtask bench [list | NAME…] [--rounds N] [--smoke]`.
///
/// `--smoke` (what `cargo xtask ci` runs) proves every benchmark still works end to
/// end: one measured round each, the table printed, docs/benchmarks.md left alone (a
/// single round on a busy CI machine is no measurement). Under CI (`CI` set) a skipped
/// benchmark fails the smoke, since CI has root, loop devices and every tool
/// `.ci/run` installs; elsewhere skips are listed as warnings.
pub fn run(root: &Path, opts: &Options) -> Result<()> {
    if opts.names.iter().any(|n| n == "list") {
        list();
        return Ok(());
    }
    let smoke = opts.smoke;
    let mut rounds = usize::from(opts.rounds);
    let mut names: Vec<&Bench> = opts
        .names
        .iter()
        .filter_map(|n| BENCHMARKS.iter().find(|b| b.name == *n))
        .collect();
    if names.is_empty() {
        names = BENCHMARKS.iter().collect();
    }
    if smoke {
        rounds = 1;
    }
    let mut ctx = Ctx {
        root: root.to_path_buf(),
        rounds,
        smoke,
        bins: None,
        workload: None,
    };
    let mut done: Vec<(&Bench, Outcome)> = Vec::new();
    let mut failed = Vec::new();
    for b in names {
        println!("\n== bench {} ==", b.name);
        match (b.run)(&mut ctx) {
            Ok(outcome) => {
                for r in &outcome.rows {
                    println!("{}", r.line());
                }
                done.push((b, outcome));
            }
            Err(e) => {
                eprintln!("bench {}: FAILED: {e:#}", b.name);
                failed.push(b.name);
            }
        }
    }
    if !done.is_empty() {
        println!("\n{}", summary_header());
        for (_, o) in &done {
            for r in &o.rows {
                println!("{}", r.line());
            }
        }
        if smoke {
            println!("\n(smoke: one round each; docs/benchmarks.md not written)");
        } else {
            write_report(root, &done, rounds)?;
        }
    }
    if !failed.is_empty() {
        bail!("benchmarks failed: {}", failed.join(", "));
    }
    if smoke {
        let skipped: Vec<String> = done
            .iter()
            .flat_map(|(_, o)| &o.rows)
            .filter(|r| r.verdict == Verdict::Skipped)
            .map(|r| format!("{}: {}", r.id, r.result))
            .collect();
        // A machine .ci/run could not give the no_std target is already degraded, loudly.
        let strict = std::env::var_os("CI").is_some()
            && std::env::var_os("MOLT_ALLOW_MISSING_TARGET").is_none();
        if !skipped.is_empty() {
            if strict {
                bail!(
                    "benchmarks skipped in the smoke run:\n{}",
                    skipped.join("\n")
                );
            }
            println!("WARNING: skipped here:\n{}", skipped.join("\n"));
        }
    }
    Ok(())
}

fn summary_header() -> String {
    "| id | what | baseline (same run) | result (median) | target | |\n|---|---|---|---|---|---|"
        .into()
}

/// Rewrites docs/benchmarks.md: the summary rows and sections of the benchmarks
/// just run replace their old ones; everything else is kept, in [`BENCHMARKS`] order.
fn write_report(root: &Path, done: &[(&Bench, Outcome)], rounds: usize) -> Result<()> {
    let path = root.join("docs/benchmarks.md");
    let old = fs::read_to_string(&path).unwrap_or_default();
    // The old file's sections by name, and its summary rows by benchmark.
    let mut sections: Vec<(String, String)> = Vec::new();
    let mut cur: Option<(String, String)> = None;
    for line in old.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            sections.extend(cur.take());
            cur = Some((h.trim().to_string(), String::new()));
        } else if let Some((_, body)) = cur.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    sections.extend(cur.take());
    let old_summary = sections
        .iter()
        .find(|(n, _)| n == "Summary")
        .map(|(_, b)| b.clone())
        .unwrap_or_default();
    // Summary rows end with an HTML comment naming their benchmark, so a partial
    // run knows which old rows to keep.
    let tag = |name: &str| format!("<!-- {name} -->");
    let machine = machine();
    let date = today();
    let mut out = String::from(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench` (every benchmark) or `cargo xtask bench NAME…` (some; \
         `cargo xtask bench list` names them). Every figure is a ratio against a baseline run in \
         the same invocation: both sides run in interleaved rounds after a warm-up, and the figure \
         is the ratio of their medians; each section shows medians with min–max. Absolute seconds \
         on a shared 2-core machine are informational only. `cargo xtask ci` runs every \
         benchmark once (`cargo xtask bench --smoke`, which writes nothing here) so that the \
         task keeps working between measurements.\n\n\
         Install benchmarks write into a fresh loop-mounted ext4 image the task creates (and \
         removes); they need root and loop devices and say so when skipped.\n\n",
    );
    out.push_str("## Summary\n\n");
    out.push_str(&summary_header());
    out.push('\n');
    for b in BENCHMARKS {
        if let Some((_, o)) = done.iter().find(|(d, _)| d.name == b.name) {
            for r in &o.rows {
                let _ = writeln!(out, "{} {}", r.line(), tag(b.name));
            }
        } else {
            for l in old_summary.lines().filter(|l| l.ends_with(&tag(b.name))) {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    for b in BENCHMARKS {
        if let Some((_, o)) = done.iter().find(|(d, _)| d.name == b.name) {
            let _ = write!(
                out,
                "\n## {}\n\nRun: `cargo xtask bench {}`{} on {date}; {machine}.\n\n{}",
                b.name,
                b.name,
                if b.rounds {
                    format!(" ({rounds} measured rounds after a warm-up)")
                } else {
                    String::new()
                },
                o.details.trim_end()
            );
            out.push('\n');
        } else if let Some((_, body)) = sections.iter().find(|(n, _)| n == b.name) {
            let _ = write!(out, "\n## {}\n{}", b.name, body.trim_end_matches('\n'));
            out.push('\n');
        }
    }
    fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Today's date (UTC), from `date`: xtask carries no time crate.
fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "an unknown date".into())
}

/// The machine, for the report: CPU model, cores, memory, kernel, OS and rustc.
pub(crate) fn machine() -> String {
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_gib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|kib| kib / (1024.0 * 1024.0))
        .unwrap_or(0.0);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown OS".into());
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB, Linux {kernel}, {os}, {rustc}")
}
