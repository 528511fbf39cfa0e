//! Helpers the benchmarks share: deterministic content, timing a command, order statistics and interleaved rounds.
//!
//! Every benchmark generates its workload from a seed (so two machines measure
//! the same bytes and a cached workload can be checked against its recipe) and
//! reports a ratio against a baseline measured in the same invocation (so the
//! figure survives a slower or noisier machine).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::workload::file_mib;
use crate::display;

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
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(secs)
}

/// Runs `cmd` under GNU time (`/usr/bin/time -f FORMAT -o OUT`, keeping its
/// environment) and returns the numbers of the line it wrote: `%M` peak RSS in KiB,
/// `%O` file-system output blocks, `%e %U %S` wall, user and system seconds.
pub(crate) fn gnu_time(format: &str, out: &Path, cmd: &Command) -> Result<Vec<f64>> {
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", format, "-o"])
        .arg(out)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    quiet(&mut timed)?;
    let text = fs::read_to_string(out)?;
    let nums: Vec<f64> = text
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    if nums.len() != format.split_whitespace().count() {
        bail!("unexpected /usr/bin/time output for `{format}`: {text:?}");
    }
    Ok(nums)
}

/// Fails with an installation hint unless every program (paired with the Debian
/// package that provides it) is on the PATH or in /usr/sbin, /sbin.
pub(crate) fn require(programs: &[(&str, &str)]) -> Result<()> {
    for (program, package) in programs {
        let found = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|d| d.join(program).is_file())
        });
        if !found {
            bail!("`{program}` is missing: `apt-get install -y {package}` (or run .ci/run once)");
        }
    }
    Ok(())
}

/// The one root check, at the crate's root; the benchmarks name it from here.
pub(crate) use crate::is_root;

/// Runs `cmd` quietly; fails with its output unless it succeeds. Returns stdout.
pub(crate) use crate::output as quiet;

/// The median, smallest and largest of a set of measurements.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    /// Summarizes `v` (which must not be empty).
    pub(crate) fn of(v: &[f64]) -> Stats {
        let mut v = v.to_vec();
        let (min, max) = min_max(&v);
        Stats {
            median: median(&mut v),
            min,
            max,
        }
    }

    /// `median (min–max)` with `digits` decimals, for tables.
    pub(crate) fn show(&self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }
}

/// One side of an interleaved comparison: a name for progress lines, and a run
/// that does its own untimed preparation and returns the seconds it measured.
pub(crate) struct Side<'a> {
    pub name: &'a str,
    pub run: Box<dyn FnMut() -> Result<f64> + 'a>,
}

/// Runs every side once as a warm-up, then `rounds` rounds of every side, starting
/// each round with a different side so none always follows another's writeback
/// or cache state. Returns each side's measured seconds (the warm-up excluded).
pub(crate) fn interleave(label: &str, rounds: usize, sides: &mut [Side<'_>]) -> Result<Vec<Stats>> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    for round in 0..=rounds {
        let mut line = Vec::new();
        for k in 0..sides.len() {
            let i = (round + k) % sides.len();
            let secs = (sides[i].run)()
                .with_context(|| format!("{label}: {} (round {round})", sides[i].name))?;
            if round > 0 {
                samples[i].push(secs);
            }
            line.push((i, secs));
        }
        line.sort_by_key(|(i, _)| *i);
        let shown: Vec<String> = line
            .iter()
            .map(|(i, s)| format!("{} {s:.3} s", sides[*i].name))
            .collect();
        println!(
            "{label} round {round:2}{}: {}",
            if round == 0 { " (warm-up)" } else { "" },
            shown.join(", ")
        );
    }
    Ok(samples.iter().map(|v| Stats::of(v)).collect())
}

/// The table a throughput benchmark's section opens with. Per side: what ran and the
/// size of the file it read (`(12.3 MiB bundle)`; `kind` may be empty), its median
/// seconds (min–max), and the tree's MiB over that median.
pub(crate) fn throughput_table(tree_mib: f64, sides: &[(&str, &Path, &str, Stats)]) -> String {
    let mut table = String::from("| what | median s (min–max) | MiB/s (tree) |\n|---|---:|---:|\n");
    for (what, file, kind, s) in sides {
        let size = format!("{:.1} MiB {kind}", file_mib(file));
        table.push_str(&format!(
            "| {what} ({}) | {} | {:.0} |\n",
            size.trim_end(),
            s.show(3),
            tree_mib / s.median
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throughput_table_has_a_row_per_side() {
        let (m, b) = (Stats::of(&[2.0, 1.0, 3.0]), Stats::of(&[4.0]));
        let file = std::env::temp_dir().join(format!("xtask-table-{}", std::process::id()));
        fs::write(&file, vec![0; 3 << 19]).unwrap();
        let table = throughput_table(
            200.0,
            &[("`molt`", &file, "bundle", m), ("`tar`", &file, "", b)],
        );
        fs::remove_file(&file).unwrap();
        assert_eq!(
            table,
            "| what | median s (min–max) | MiB/s (tree) |\n|---|---:|---:|\n\
             | `molt` (1.5 MiB bundle) | 2.000 (1.000–3.000) | 100 |\n\
             | `tar` (1.5 MiB) | 4.000 (4.000–4.000) | 50 |\n"
        );
    }
}
