//! `bench digest`: `molt digest TREE` (the BLAKE3 file digests a bundle records, one thread) against `find | xargs -0 b3sum --num-threads 1` over the same tree.
//!
//! Both sides walk the tree and hash every regular file on one hashing thread:
//! molt walks it itself, the baseline lets `find` list it and hands every path to
//! one `b3sum` process (`xargs -s` is raised so it never splits the list into two
//! processes, which would charge the baseline a second start-up). Both print
//! `HEX  PATH` lines to /dev/null. The outputs are compared, untimed, before the
//! rounds: molt's file digest is plain BLAKE3 of the content, so the lines must be
//! the same set as b3sum's (molt prints them in bundle order, find in directory order).

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{bail, Result};

use super::util::{interleave, quiet, require, time, Side};
use super::workload::mib;
use super::{Ctx, Outcome, Row};

/// The baseline, run by `sh` in the workload directory on `tree-200`.
const B3SUM: &str = "find tree-200 -type f -print0 | xargs -0 -s 1048576 b3sum --num-threads 1";

/// `bench digest`.
pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    require(&[
        ("b3sum", "b3sum"),
        ("find", "findutils"),
        ("xargs", "findutils"),
    ])?;
    let bins = ctx.bins()?;
    let wl = ctx.workload()?;
    let tree = &wl.big.tree;
    // Relative paths, so both sides print the same names (and the argument list stays short).
    let molt = || {
        let mut c = Command::new(&bins.molt);
        c.current_dir(&wl.dir).args(["digest", "tree-200"]);
        c
    };
    let b3sum = || {
        let mut c = Command::new("sh");
        c.current_dir(&wl.dir).arg("-c").arg(B3SUM);
        c
    };

    // Same digests, untimed: every line of one is a line of the other.
    let ours = lines(&quiet(&mut molt())?);
    let theirs = lines(&quiet(&mut b3sum())?);
    if ours != theirs {
        let only_molt = ours.difference(&theirs).next().cloned().unwrap_or_default();
        let only_b3 = theirs.difference(&ours).next().cloned().unwrap_or_default();
        bail!(
            "molt digest and b3sum disagree ({} vs {} lines); e.g. molt: {only_molt:?}, b3sum: {only_b3:?}",
            ours.len(),
            theirs.len()
        );
    }
    if ours.len() != tree.files {
        bail!("{} digest lines for {} files", ours.len(), tree.files);
    }
    let b3_version = quiet(Command::new("b3sum").arg("--version"))?
        .trim()
        .to_string();

    let stats = interleave(
        "digest",
        ctx.rounds,
        &mut [
            Side {
                name: "molt digest",
                run: Box::new(|| time(&mut molt())),
            },
            Side {
                name: "b3sum",
                run: Box::new(|| time(&mut b3sum())),
            },
        ],
    )?;
    let (m, b) = (stats[0], stats[1]);
    let size = mib(tree.bytes);
    let details = format!(
        "{files} files, {size:.1} MiB (the shared `tree-200`, in the page cache), hashed on one thread by both sides.\n\n\
         | what | median s (min–max) | MiB/s |\n|---|---:|---:|\n\
         | `molt digest tree-200 > /dev/null` | {} | {:.0} |\n\
         | `{} > /dev/null` ({b3_version}) | {} | {:.0} |\n\n\
         Both commands run in `target/bench/workload`. Both walk the tree (molt itself, the baseline \
         with `find`, whose time counts too) and print `HEX  PATH` per file; `xargs -s 1048576` keeps \
         the {files} paths in one `b3sum` process. Checked before timing: the two outputs hold the same \
         {files} lines, because a bundle's file digest is plain BLAKE3 of the content. molt reads each \
         file in 256 KiB pieces into one reused buffer and hashes with BLAKE3's runtime-detected SIMD; \
         b3sum memory-maps files of 16 KiB and more.\n",
        m.show(3),
        size / m.median,
        B3SUM.replace('|', "\\|"),
        b.show(3),
        size / b.median,
        files = tree.files,
    );
    Ok(Outcome {
        rows: vec![Row::speed_ratio(
            "digest",
            "`molt digest TREE`: BLAKE3 of every file, one thread",
            "`find TREE -type f -print0 \\| xargs -0 b3sum --num-threads 1`",
            m,
            b,
            1.0,
        )],
        details,
    })
}

/// The set of output lines (order differs: molt walks in bundle order, find in directory order).
fn lines(out: &str) -> BTreeSet<String> {
    out.lines().map(str::to_owned).collect()
}
