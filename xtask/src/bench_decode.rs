//! `cargo xtask bench decode`: the engine's decoder (verify + decompress) against `zstd -dc` of the same tree, in one run.
//!
//! Workload: a deterministic ~100 MiB tree (half incompressible noise, half
//! compressible text, files of 4 KiB to 4 MiB), bundled by `molt bundle build`
//! and, for the baseline, tarred and compressed with `zstd -3`. Each round runs
//! `molt bundle verify` (signature, every chunk digest, libzstd decompression,
//! the entry policy, every file digest) and `zstd -dc tree.tar.zst > /dev/null`,
//! interleaved so machine noise hits both alike; the first round is a warm-up.
//! The figure is the ratio of medians (molt / zstd; below 1 is faster).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{cargo, run_cmd};

const ROUNDS: usize = 11;

/// Deterministic bytes: xorshift noise, or text from a small vocabulary.
fn fill(seed: u64, len: usize, text: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    if !text {
        return (0..len).map(|_| next() as u8).collect();
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
        let w = WORDS[(next() % WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
        out.push(if next() % 12 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// Writes the tree once; reuses it when the marker says it is complete.
fn make_tree(dir: &Path) -> Result<u64> {
    let marker = dir.join(".complete");
    let mut total = 0u64;
    let sizes: Vec<usize> = (0..200u64)
        .map(|i| match i % 10 {
            0 => 4 * 1024 * 1024,
            1..=3 => 512 * 1024,
            _ => 4 * 1024 + (i as usize * 7919) % (200 * 1024),
        })
        .collect();
    let rebuild = !marker.exists();
    if rebuild {
        let _ = fs::remove_dir_all(dir);
    }
    for (i, size) in sizes.iter().enumerate() {
        let sub = dir.join(format!("d{:02}", i % 16));
        let path = sub.join(format!(
            "f{i:04}.{}",
            if i % 2 == 0 { "bin" } else { "txt" }
        ));
        if rebuild {
            fs::create_dir_all(&sub)?;
            fs::write(&path, fill(i as u64 + 1, *size, i % 2 == 1))?;
        }
        total += *size as u64;
    }
    if rebuild {
        fs::write(&marker, b"")?;
    }
    Ok(total)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(t.elapsed().as_secs_f64())
}

pub fn run(root: &Path, _args: &[String]) -> Result<()> {
    for tool in ["zstd", "tar"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("`{tool}` is missing: `apt-get install {tool}` (or run .ci/run once)");
        }
    }
    run_cmd(cargo(root).args([
        "build",
        "--release",
        "-p",
        "molt-controller",
        "--bin",
        "molt",
    ]))?;
    let molt = root.join("target/release/molt");
    let work = root.join("target/bench/decode");
    let tree = work.join("tree");
    fs::create_dir_all(&work)?;
    let tree_bytes = make_tree(&tree)?;
    let key = work.join("bench");
    if !work.join("bench.secret").exists() {
        run_cmd(Command::new(&molt).arg("keygen").arg("-o").arg(&key))?;
    }
    let recipe = work.join("recipe.toml");
    fs::write(
        &recipe,
        "version = \"1.0.0\"\ncompatible = \"bench\"\nkind = \"full\"\n\n[[files]]\nsource = \"tree\"\ndestination = \"app\"\n",
    )?;
    let bundle = work.join("tree.molt");
    run_cmd(
        Command::new(&molt)
            .args(["bundle", "build"])
            .arg(&recipe)
            .arg("-o")
            .arg(&bundle)
            .arg("--key")
            .arg(work.join("bench.secret")),
    )?;
    let tarzst = work.join("tree.tar.zst");
    let sh = format!(
        "tar -cf - -C {} . | zstd -3 -T1 -q -f -o {}",
        tree.display(),
        tarzst.display()
    );
    run_cmd(Command::new("sh").arg("-c").arg(&sh))?;
    let pubkey = work.join("bench.pub");
    let mut molt_t = Vec::new();
    let mut zstd_t = Vec::new();
    for round in 0..ROUNDS {
        let m = time(
            Command::new(&molt)
                .args(["bundle", "verify"])
                .arg(&bundle)
                .arg("--key")
                .arg(&pubkey),
        )?;
        let z = time(Command::new("zstd").arg("-dc").arg("-q").arg(&tarzst))?;
        if round > 0 {
            molt_t.push(m);
            zstd_t.push(z);
        }
    }
    let (mmin, mmax) = min_max(&molt_t);
    let (zmin, zmax) = min_max(&zstd_t);
    let (mm, zm) = (median(&mut molt_t), median(&mut zstd_t));
    let mib = tree_bytes as f64 / (1024.0 * 1024.0);
    let bundle_len = fs::metadata(&bundle)?.len() as f64 / (1024.0 * 1024.0);
    let tar_len = fs::metadata(&tarzst)?.len() as f64 / (1024.0 * 1024.0);
    let table = format!(
        "| what | median s | min s | max s | MiB/s (tree) |\n|---|---:|---:|---:|---:|\n\
         | `molt bundle verify` ({bundle_len:.1} MiB bundle) | {mm:.3} | {mmin:.3} | {mmax:.3} | {:.0} |\n\
         | `zstd -dc tree.tar.zst` ({tar_len:.1} MiB) | {zm:.3} | {zmin:.3} | {zmax:.3} | {:.0} |\n\n\
         **ratio molt / zstd: {:.2}×** (median of {} interleaved rounds after a warm-up; tree {mib:.0} MiB)\n",
        mib / mm,
        mib / zm,
        mm / zm,
        ROUNDS - 1
    );
    println!("\n{table}");
    write_report(root, "decode", &table)?;
    Ok(())
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// Replaces the `## NAME` section of docs/benchmarks.md with `body`, keeping the others.
pub fn write_report(root: &Path, name: &str, body: &str) -> Result<()> {
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
