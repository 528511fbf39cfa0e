//! `bench bundle-build`: `molt bundle build` of the shared tree against `tar -cf - -C tree . | zstd -3 -T1`, in time and in bytes.
//!
//! molt's side is the whole command a user runs: plan the recipe, read, hash,
//! compress, chain and sign, write the bundle, fsync it, read it back through the
//! device's decoder (signature, manifest, chunk chain) and rename it into place.
//! Both sides use both cores: the baseline is two processes, and `zstd -T1` reads
//! and writes on threads beside its compressing one; molt reads and hashes on one
//! thread and compresses chunks on one per core. Both write into the same
//! directory, and each run starts with its output removed so both write a new
//! file. Sizes are deterministic; every run's size is checked against the first.
//! A third side times `molt bundle build --verify`, which decodes the whole bundle
//! as a device would before the rename, to show what that full check costs.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::util::{interleave, require, time, Side};
use super::workload::{mib, MIB};
use super::{Ctx, Outcome, Row, Verdict};

/// The baseline, run by `sh` in the workload directory; `{out}` is the output file.
const TAR_ZSTD: &str = "tar -cf - -C tree-200 . | zstd -3 -T1 -q > {out}";

/// `bench bundle-build`.
pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    require(&[("tar", "tar"), ("zstd", "zstd")])?;
    let bins = ctx.bins()?;
    let wl = ctx.workload()?;
    let work = ctx.work("bundle-build")?;
    let bundle = work.join("tree-200.molt");
    let tarzst = work.join("tree-200.tar.zst");
    let mut molt_sizes = Vec::new();
    let mut verify_sizes = Vec::new();
    let mut tar_sizes = Vec::new();
    let build = |verify: bool| {
        let mut c = Command::new(&bins.molt);
        c.current_dir(&wl.dir)
            .args([
                "bundle",
                "build",
                "tree-200.toml",
                "--key",
                "bench.secret",
                "-o",
            ])
            .arg(&bundle);
        if verify {
            c.arg("--verify");
        }
        c
    };
    let stats = interleave(
        "bundle-build",
        ctx.rounds,
        &mut [
            output_side("molt bundle build", &bundle, &mut molt_sizes, || {
                build(false)
            }),
            output_side("tar | zstd -3 -T1", &tarzst, &mut tar_sizes, || {
                let mut c = Command::new("sh");
                c.current_dir(&wl.dir)
                    .arg("-c")
                    .arg(TAR_ZSTD.replace("{out}", &quote(&tarzst)));
                c
            }),
            // `time` fails if the full decode refuses the bundle, so every round
            // also checks a built bundle as a device would.
            output_side(
                "molt bundle build --verify",
                &bundle,
                &mut verify_sizes,
                || build(true),
            ),
        ],
    )?;
    let (m, t, v) = (stats[0], stats[1], stats[2]);
    molt_sizes.extend_from_slice(&verify_sizes);
    let molt_len = same(&molt_sizes, "bundle")?;
    let tar_len = same(&tar_sizes, "tar.zst")?;

    let tree = &wl.big.tree;
    let size_ratio = molt_len as f64 / tar_len as f64;
    let tree_mib = mib(tree.bytes);
    let details = format!(
        "{files} files, {tree_mib:.1} MiB (the shared `tree-200`, in the page cache); both outputs \
         in `target/bench/bundle-build`, removed before each run.\n\n\
         | what | median s (min–max) | MiB/s (tree) | output bytes |\n|---|---:|---:|---:|\n\
         | `molt bundle build tree-200.toml --key bench.secret -o tree-200.molt` | {} | {:.0} | {molt_len} |\n\
         | `{}` | {} | {:.0} | {tar_len} |\n\
         | the same with `--verify` (the full device decode before the rename) | {} | {:.0} | {molt_len} |\n\n\
         `--verify` adds {:+.3} s ({:.0} %): {:.2}× the baseline's speed. The default build reads \
         back the signature, the manifest and every chunk's digest (every byte as written) but \
         does not decompress the entries it has just made; the controller decodes every upload \
         in full and a device every install.\n\n\
         Size: bundle / tar.zst = {size_ratio:.4} ({:+} bytes); every run produced the same sizes \
         ({} runs each).\n\n\
         molt's time is the whole command: read each file once, hash it (BLAKE3), pack 1 MiB \
         chunks, compress each into its own zstd frame (level 3) on one thread per core, hash \
         each frame as it is written (after the prefix its manifest will need) while a thread \
         `fdatasync`s the file every 16 MiB of sources, chain and sign, fsync beside the \
         read-back (the device's decoder over the head and the chunk chain, \
         `Decoder::chain_only`), rename. The baseline is two processes, tar and `zstd -T1`. \
         Both commands run in `target/bench/workload`.\n\n\
         Where the bytes differ: each chunk is an independent frame (so a device verifies and \
         decompresses one chunk at a time in bounded memory, and resumes between chunks), which \
         loses the matches zstd's 2 MiB window would find across a chunk start; and every file's \
         entry header carries its 32-byte BLAKE3 digest, incompressible ({digest_bytes} bytes \
         for {files} files), where tar's 512-byte headers are mostly zeros.\n",
        m.show(3),
        tree_mib / m.median,
        TAR_ZSTD.replace("{out}", "tree-200.tar.zst").replace('|', "\\|"),
        t.show(3),
        tree_mib / t.median,
        v.show(3),
        tree_mib / v.median,
        v.median - m.median,
        100.0 * (v.median / m.median - 1.0),
        t.median / v.median,
        molt_len as i64 - tar_len as i64,
        tar_sizes.len(),
        files = tree.files,
        digest_bytes = 32 * tree.files,
    );
    Ok(Outcome {
        rows: vec![
            Row::speed_ratio(
                "bundle-build",
                "`molt bundle build` of the tree: read, hash, compress, sign, check the chain",
                "`tar -cf - -C tree . \\| zstd -3 -T1 > x.tar.zst`",
                m,
                t,
                1.0,
            ),
            Row {
                id: "bundle-size".into(),
                what: "bundle bytes (1 MiB independent chunks, zstd -3, per-file digests)".into(),
                baseline: "the same `tar \\| zstd -3 -T1` output's bytes".into(),
                result: format!(
                    "**{size_ratio:.4}×** size ({:.2} MiB vs {:.2} MiB)",
                    molt_len as f64 / MIB,
                    tar_len as f64 / MIB
                ),
                target: "≤ 1.00×".into(),
                verdict: Verdict::from(size_ratio <= 1.0),
            },
        ],
        details,
    })
}

/// Removes `p` if it exists, so the next run writes a new file.
/// A side that writes `out` afresh each round with the timed `command`, and
/// records the size `out` came to in `sizes`.
fn output_side<'a>(
    name: &'a str,
    out: &'a Path,
    sizes: &'a mut Vec<u64>,
    mut command: impl FnMut() -> Command + 'a,
) -> Side<'a> {
    Side {
        name,
        run: Box::new(move || {
            remove(out)?;
            let secs = time(&mut command())?;
            sizes.push(len(out)?);
            Ok(secs)
        }),
    }
}

fn remove(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", p.display()))
        }
        _ => Ok(()),
    }
}

fn len(p: &Path) -> Result<u64> {
    Ok(fs::metadata(p)
        .with_context(|| format!("{} was not written", p.display()))?
        .len())
}

/// The one size every run produced; a difference means the output is not deterministic.
fn same(sizes: &[u64], what: &str) -> Result<u64> {
    match sizes.split_first() {
        Some((first, rest)) if rest.iter().all(|s| s == first) => Ok(*first),
        Some(_) => bail!("the {what} size changed between runs: {sizes:?}"),
        None => bail!("no {what} was built"),
    }
}

/// `p` quoted for `sh`.
fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}
