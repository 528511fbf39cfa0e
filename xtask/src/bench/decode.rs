//! `bench decode`: the engine's decoder (verify + decompress, nothing written) against `zstd -dc` of the same tree.
//!
//! `molt bundle verify` checks the signature, every chunk digest, decompresses
//! with libzstd, applies the entry policy and checks every file digest; the
//! baseline only decompresses the workload's tar.zst to /dev/null. Informational:
//! it shows what verification costs over bare decompression.

use std::process::Command;

use anyhow::Result;

use super::util::{interleave, require, throughput_table, time, Side};
use super::workload::mib;
use super::{Ctx, Outcome, Row, Verdict};

/// `bench decode`.
pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    require(&[("zstd", "zstd"), ("tar", "tar")])?;
    let bins = ctx.bins()?;
    let wl = ctx.workload()?;
    let big = &wl.big;
    let pubkey = wl.dir.join("bench.pub");
    let stats = interleave(
        "decode",
        ctx.rounds,
        &mut [
            Side {
                name: "molt verify",
                run: Box::new(|| {
                    time(
                        Command::new(&bins.molt)
                            .args(["bundle", "verify"])
                            .arg(&big.bundle)
                            .arg("--key")
                            .arg(&pubkey),
                    )
                }),
            },
            Side {
                name: "zstd -dc",
                run: Box::new(|| time(Command::new("zstd").arg("-dcq").arg(&big.tarzst))),
            },
        ],
    )?;
    let (m, z) = (stats[0], stats[1]);
    let tree = mib(big.tree.bytes);
    let table = throughput_table(
        tree,
        &[
            (
                "`molt bundle verify tree-200.molt --key bench.pub`",
                &big.bundle,
                "",
                m,
            ),
            (
                "`zstd -dc tree-200.tar.zst > /dev/null`",
                &big.tarzst,
                "",
                z,
            ),
        ],
    );
    let details = format!(
        "{table}\nVerification is signature + chunk digests + decompression + entry policy + \
         file digests; the baseline only decompresses.\n"
    );
    let r = m.median / z.median;
    Ok(Outcome {
        rows: vec![Row {
            id: "decode".into(),
            what: "`molt bundle verify`: signature, digests, decompression, policy".into(),
            baseline: "`zstd -dc tree.tar.zst > /dev/null`".into(),
            result: format!("{r:.2}× time ({:.3} s vs {:.3} s)", m.median, z.median),
            target: "— (informational)".into(),
            verdict: Verdict::Info,
        }],
        details,
    })
}
