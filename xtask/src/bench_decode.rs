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
use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::bench_util::{fill, median, min_max, require_tools, time, write_report};
use crate::{cargo, run_cmd};

const ROUNDS: usize = 11;

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

pub fn run(root: &Path, _args: &[String]) -> Result<()> {
    require_tools(&["zstd", "tar"])?;
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
