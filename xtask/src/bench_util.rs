//! Helpers the benchmarks share: deterministic content, timing a command, order statistics, and the docs/benchmarks.md report.
//!
//! Every benchmark generates its workload from a seed (so two machines measure
//! the same bytes and a cached workload can be checked against its recipe) and
//! reports a ratio against a baseline measured in the same invocation (so the
//! figure survives a slower or noisier machine).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// A xorshift64 generator: deterministic, fast, and good enough for workloads
/// (not for anything that must be unpredictable).
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator whose sequence depends only on `seed` (0 is fine: it is mixed first).
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A uniform number in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        // The top 53 bits fill an f64 mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform number in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Deterministic bytes: xorshift noise (incompressible), or text from a small
/// vocabulary (compresses about 4:1 with zstd -3, like configuration and scripts).
pub(crate) fn fill(seed: u64, len: usize, text: bool) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    if !text {
        return (0..len).map(|_| rng.next_u64() as u8).collect();
    }
    const WORDS: &[&str] = &[
        "update",
        "device",
        "snapshot",
        "bundle",
        "verify",
        "chunk",
        "rollback",
        "agent",
        "controller",
        "group",
        "deploy",
        "signal",
        "status",
        "error",
        "sensor",
        "value",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        let w = WORDS[rng.below(WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
        out.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// The median; sorts `v` (which must not be empty).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The smallest and largest value.
pub(crate) fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// Runs `cmd` to completion and returns its wall-clock seconds; fails, with its
/// stderr, unless it exits successfully. Stdout is discarded.
pub(crate) fn time(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            crate::display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}

/// Fails with an installation hint unless `tool --version` runs.
pub(crate) fn require_tools(tools: &[&str]) -> Result<()> {
    for tool in tools {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("`{tool}` is missing: `apt-get install {tool}` (or run .ci/run once)");
        }
    }
    Ok(())
}

/// Replaces the `## NAME` section of docs/benchmarks.md with `body`, keeping the others.
pub(crate) fn write_report(root: &Path, name: &str, body: &str) -> Result<()> {
    let path: PathBuf = root.join("docs/benchmarks.md");
    let old = fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nWritten by `cargo xtask bench NAME`; every figure is a ratio against a baseline run in the same invocation.\n".into()
    });
    let machine = machine();
    let section =
        format!("## {name}\n\nCommand: `cargo xtask bench {name}`. Machine: {machine}.\n\n{body}");
    let header = format!("## {name}\n");
    let mut out = String::new();
    let mut skipping = false;
    let mut replaced = false;
    for line in old.lines() {
        if line.starts_with("## ") {
            skipping = format!("{line}\n") == header;
            if skipping && !replaced {
                out.push_str(&section);
                out.push('\n');
                replaced = true;
            }
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !replaced {
        out.push('\n');
        out.push_str(&section);
    }
    let mut f = fs::File::create(&path)?;
    f.write_all(out.as_bytes())?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The CPU model and core count, for the report.
fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{cpu}, {cores} cores")
}
