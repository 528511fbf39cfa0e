//! The benchmarks' shared workload: a deterministic ~200 MiB tree of ~5,000 files, its signed bundle and its `tar | zstd -3` twin, cached under target/bench/workload/.
//!
//! The tree is shaped like a root file system (many small text files, a few
//! hundred medium ones, a few dozen 1–10 MiB binaries; text compresses, noise
//! does not) and generated from a seed, so two machines measure the same bytes
//! and a cached tree is reused only when the marker beside it names the same
//! plan. A one-tenth tree (`tree-20`) serves the flat-memory check.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::util::{fill, Rng};
use crate::run_cmd;

/// Where the workload lives, relative to the workspace root.
pub const DIR: &str = "target/bench/workload";

/// The workload's seed: change it (or the classes) and the cached trees are rebuilt.
const SEED: u64 = 0x6d6f_6c74_0001;
/// A size class of the tree: `count` files between `lo` and `hi` bytes, drawn as
/// `lo * (hi/lo)^(u^skew)`: log-uniform for `skew = 1`, leaning to the small end
/// above it (real trees have many more 20 KiB files than 900 KiB ones).
struct Class {
    count: usize,
    lo: f64,
    hi: f64,
    skew: f64,
}

pub const KIB: f64 = 1024.0;
pub const MIB: f64 = 1024.0 * 1024.0;

/// The full-size tree: 300 files under 1 KiB, 3,750 of 1–16 KiB, 900 of 16 KiB–1 MiB,
/// 40 of 1–10 MiB; about 200 MiB. The skews were picked to land near that total.
const CLASSES: [Class; 4] = [
    Class {
        count: 300,
        lo: 16.0,
        hi: KIB,
        skew: 1.0,
    },
    Class {
        count: 3750,
        lo: KIB,
        hi: 16.0 * KIB,
        skew: 1.0,
    },
    Class {
        count: 900,
        lo: 16.0 * KIB,
        hi: MIB,
        skew: 3.0,
    },
    Class {
        count: 40,
        lo: MIB,
        hi: 10.0 * MIB,
        skew: 3.0,
    },
];

/// What a file holds.
#[derive(Clone, Copy)]
enum Content {
    /// Words: compresses well (configuration, scripts, sources).
    Text,
    /// Noise: does not compress (images, already-compressed data).
    Noise,
    /// Alternating 64 KiB runs of both, like an executable with code and tables.
    Mixed,
}

/// One file of a tree.
struct Planned {
    path: String,
    size: usize,
    content: Content,
    seed: u64,
}

/// The files of a tree with `1/divisor` of the full counts, in a deterministic
/// order and layout: 8 × 16 directories, files spread across them at random.
fn plan(divisor: usize) -> Vec<Planned> {
    let mut rng = Rng::new(SEED ^ divisor as u64);
    let mut files: Vec<(usize, Content)> = Vec::new();
    for (ci, c) in CLASSES.iter().enumerate() {
        let n = (c.count / divisor).max(1);
        for j in 0..n {
            // Stratified draws: one per 1/n slice of the distribution, so a small
            // class (40 binaries) still spans its range instead of clumping.
            let u = (j as f64 + rng.unit()) / n as f64;
            let size = (c.lo * (c.hi / c.lo).powf(u.powf(c.skew))) as usize;
            let content = match ci {
                0 | 1 if rng.below(10) < 7 => Content::Text,
                2 if rng.below(2) == 0 => Content::Text,
                3 => Content::Mixed,
                _ => Content::Noise,
            };
            files.push((size, content));
        }
    }
    // Shuffle so each directory holds a mix of sizes, as real ones do.
    for i in (1..files.len()).rev() {
        files.swap(i, rng.below(i as u64 + 1) as usize);
    }
    files
        .into_iter()
        .enumerate()
        .map(|(i, (size, content))| {
            let ext = match content {
                Content::Text => "txt",
                Content::Noise => "dat",
                Content::Mixed => "bin",
            };
            Planned {
                path: format!("d{}/s{:02}/f{i:05}.{ext}", rng.below(8), rng.below(16)),
                size,
                content,
                seed: SEED
                    .wrapping_add((divisor as u64) << 32)
                    .wrapping_add(i as u64),
            }
        })
        .collect()
}

/// A generated tree: where it is, its file count and bytes.
pub struct Tree {
    /// The directory holding the tree.
    pub dir: PathBuf,
    /// How many regular files it has.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
}

/// Writes the tree `name` (`1/divisor` of the full size) under `work`, unless the
/// marker beside it shows the same plan was already written completely.
pub fn make_tree(work: &Path, name: &str, divisor: usize) -> Result<Tree> {
    let files = plan(divisor);
    let bytes: u64 = files.iter().map(|f| f.size as u64).sum();
    let dir = work.join(name);
    // The marker lives beside the tree, not in it, so neither the bundle nor the
    // tarball carries it; its text identifies the plan, so a changed generator
    // never reuses a stale tree.
    let marker = work.join(format!("{name}.complete"));
    let want = format!(
        "seed {SEED:#x} divisor {divisor} files {} bytes {bytes}\n",
        files.len()
    );
    if fs::read_to_string(&marker).ok().as_deref() != Some(want.as_str()) {
        println!(
            "generating {} ({} files, {:.0} MiB)",
            dir.display(),
            files.len(),
            bytes as f64 / MIB
        );
        let _ = fs::remove_file(&marker);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        for f in &files {
            let path = dir.join(&f.path);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let data = match f.content {
                Content::Text => fill(f.seed, f.size, true),
                Content::Noise => fill(f.seed, f.size, false),
                Content::Mixed => {
                    let mut v = Vec::with_capacity(f.size);
                    let mut k = 0u64;
                    while v.len() < f.size {
                        let run = (64 * 1024).min(f.size - v.len());
                        v.extend(fill(f.seed ^ (k << 40), run, k % 2 == 0));
                        k += 1;
                    }
                    v
                }
            };
            fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))?;
        }
        fs::write(&marker, &want)?;
    }
    Ok(Tree {
        dir,
        files: files.len(),
        bytes,
    })
}

/// A generated tree with its signed molt bundle and its `tar | zstd -3 -T1` archive.
pub struct Built {
    /// The tree itself.
    pub tree: Tree,
    /// `molt bundle build` of the tree (`kind = "full"`, destination `/`).
    pub bundle: PathBuf,
    /// `tar -cf - -C tree . | zstd -3 -T1`.
    pub tarzst: PathBuf,
}

/// Everything the benchmarks share, built once per `cargo xtask bench` run.
pub struct Workload {
    /// target/bench/workload.
    pub dir: PathBuf,
    /// The full tree (~200 MiB, ~5,000 files).
    pub big: Built,
    /// A tenth of it, for the flat-memory check.
    pub small: Built,
    /// The signing key's secret half (`bench.secret`) and its public key text.
    pub secret: PathBuf,
    /// The public key, as agent.toml's `trusted_keys` wants it.
    pub public: String,
}

/// Generates (or reuses) the trees and builds their bundle and tarball with the
/// release `molt` at `molt`. Bundles are rebuilt every run: `molt bundle build` is
/// what is measured, and a stale bundle from an older format must never be installed.
pub fn prepare(root: &Path, molt: &Path) -> Result<Workload> {
    let dir = root.join(DIR);
    fs::create_dir_all(&dir)?;
    let key = dir.join("bench");
    let secret = dir.join("bench.secret");
    if !secret.exists() {
        run_cmd(Command::new(molt).arg("keygen").arg("-o").arg(&key))?;
    }
    let public = fs::read_to_string(dir.join("bench.pub"))
        .context("cannot read the bench key's public half")?
        .trim()
        .to_string();
    let build = |name: &str, divisor: usize| -> Result<Built> {
        let tree = make_tree(&dir, name, divisor)?;
        let bundle = build_bundle(molt, &secret, &tree.dir)?;
        let tarzst = dir.join(format!("{name}.tar.zst"));
        run_cmd(Command::new("sh").arg("-c").arg(format!(
            "tar -cf - -C '{}' . | zstd -3 -T1 -q -f -o '{}'",
            tree.dir.display(),
            tarzst.display()
        )))?;
        Ok(Built {
            tree,
            bundle,
            tarzst,
        })
    };
    let big = build("tree-200", 1)?;
    let small = build("tree-20", 10)?;
    Ok(Workload {
        dir,
        big,
        small,
        secret,
        public,
    })
}

/// `molt bundle build` of the tree at `tree` into `<tree>.molt` beside it (a full
/// bundle, destination `/`, recipe `<tree>.toml`), signed with `secret`.
pub fn build_bundle(molt: &Path, secret: &Path, tree: &Path) -> Result<PathBuf> {
    let recipe = tree.with_extension("toml");
    write_recipe(&recipe, tree)?;
    let bundle = tree.with_extension("molt");
    run_cmd(
        Command::new(molt)
            .args(["bundle", "build"])
            .arg(&recipe)
            .arg("-o")
            .arg(&bundle)
            .arg("--key")
            .arg(secret),
    )?;
    Ok(bundle)
}

/// The recipe of a full bundle of `tree`, at the snapshot root.
pub fn write_recipe(path: &Path, tree: &Path) -> Result<()> {
    // A fixed release keeps builds reproducible; the data dir is recreated before
    // every install, so the device's version floor never refuses it.
    let recipe = format!(
        "version = \"1.0.0\"\ncompatible = \"bench\"\nrelease = 1\nkind = \"full\"\n\n\
         [[files]]\nsource = \"{}\"\ndestination = \"/\"\n",
        tree.file_name().unwrap_or_default().to_string_lossy()
    );
    fs::write(path, recipe)?;
    Ok(())
}

/// A size in MiB, for reports.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// The size of the file at `p` in MiB (0 if it cannot be read).
pub fn file_mib(p: &Path) -> f64 {
    fs::metadata(p).map(|m| mib(m.len())).unwrap_or(0.0)
}
