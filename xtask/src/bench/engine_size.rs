//! `bench engine-size`: the engine's flash on a Cortex-M4F (the size probe) against a firmware holding only the primitives it builds on.
//!
//! Both firmwares are in engine/size-probe and build in one cargo invocation, so
//! they share crate versions, features and profile (opt-level "z", fat LTO, panic
//! abort): the probe verifies and decodes a bundle with molt-engine; the baseline
//! calls ed25519-dalek `verify_strict`, BLAKE3 and ruzstd's frame decoder directly.
//! The target is on the probe's flash: the whole engine must fit 64 KiB.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::Result;

use super::{Ctx, Outcome, Row, Verdict};
use crate::ci::target_installed;
use crate::size::{self, kib, Size, BUILD, TARGET};

/// The probe's flash must stay at or below this.
const TARGET_FLASH: u64 = 64 * 1024;

/// `bench engine-size`.
pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let what = "engine verify + decode probe: flash on thumbv7em (opt-level z, LTO)";
    let base = "the primitives alone (ed25519 verify, BLAKE3, ruzstd)";
    let target = format!("≤ {} KiB", TARGET_FLASH / 1024);
    if !target_installed(TARGET)? {
        return Ok(Outcome::skipped(
            "engine-size",
            what,
            base,
            &target,
            &format!("the {TARGET} standard library is missing (`rustup target add {TARGET}`)"),
        ));
    }
    let s = size::measure(&ctx.root)?;
    let (p, b) = (&s.probe, &s.baseline);
    let added = p.flash as f64 - b.flash as f64;
    let mut rows = vec![Row {
        id: "engine-size".into(),
        what: what.into(),
        baseline: format!("{base}: {:.1} KiB", kib(b.flash)),
        result: format!(
            "**{:.1} KiB** ({} B; the engine adds {:.1} KiB)",
            kib(p.flash),
            p.flash,
            added / 1024.0
        ),
        target: target.clone(),
        verdict: Verdict::from(p.flash <= TARGET_FLASH),
    }];
    rows.push(Row {
        id: "engine-ram".into(),
        what: "the probe's static RAM: decoder buffers (36.5 KiB) and ruzstd's heap (96 KiB)"
            .into(),
        baseline: format!("{:.1} KiB", kib(b.ram)),
        result: format!("{:.1} KiB", kib(p.ram)),
        target: "— (informational)".into(),
        verdict: Verdict::Info,
    });
    Ok(Outcome {
        rows,
        details: details(p, b, &target),
    })
}

/// The section and per-crate tables, and the commands.
fn details(p: &Size, b: &Size, target: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Flash is the vector table, code and read-only data (`.data`'s flash image \
         included); RAM is `.data`, `.bss` and `.uninit`. Target: probe flash {target}.\n"
    );
    out.push_str("| section | probe (engine) B | baseline (primitives) B |\n|---|---:|---:|\n");
    let names: BTreeSet<&str> = p
        .sections
        .iter()
        .chain(&b.sections)
        .map(|(n, _)| n.as_str())
        .collect();
    let get = |s: &Size, n: &str| {
        s.sections
            .iter()
            .find(|(m, _)| m == n)
            .map_or(0, |(_, v)| *v)
    };
    for n in names {
        let _ = writeln!(out, "| `{n}` | {} | {} |", get(p, n), get(b, n));
    }
    let _ = writeln!(
        out,
        "| **flash** | **{}** ({:.1} KiB) | **{}** ({:.1} KiB) |\n| **RAM** | {} | {} |\n",
        p.flash,
        kib(p.flash),
        b.flash,
        kib(b.flash),
        p.ram,
        b.ram
    );
    out.push_str(
        "Where the flash goes, by crate (sized symbols; code inlined into a firmware's \
         `main` counts there, which in the probe is mostly the decoder):\n\n\
         | crate | probe B | baseline B | difference |\n|---|---:|---:|---:|\n",
    );
    // Each firmware's own crate is its `main`, with whatever was inlined into it.
    let firmware = |c: &str| match c {
        "molt_engine_size_probe" | "primitives" => "firmware `main` (inlined code)".to_string(),
        c => format!("`{c}`"),
    };
    let mut by_crate: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (c, n) in &p.crates {
        by_crate.entry(firmware(c)).or_default().0 += n;
    }
    for (c, n) in &b.crates {
        by_crate.entry(firmware(c)).or_default().1 += n;
    }
    let mut crates: Vec<(String, u64, u64)> = by_crate
        .into_iter()
        .map(|(c, (pb, bb))| (c, pb, bb))
        .collect();
    crates.sort_by_key(|c| std::cmp::Reverse(c.1.max(c.2)));
    for (c, pb, bb) in crates {
        let _ = writeln!(out, "| {c} | {pb} | {bb} | {:+} |", pb as i64 - bb as i64);
    }
    let _ = write!(
        out,
        "\nBoth use molt-engine's `compact` feature (sha2's loop-based SHA-512 instead of \
         its unrolled rounds: about 9 KiB less; it hashes one manifest per bundle).\n\n\
         Commands:\n\n```sh\ncd engine/size-probe\n{BUILD}\n\
         # probe: target/{TARGET}/release/molt-engine-size-probe (src/main.rs)\n\
         # baseline: target/{TARGET}/release/primitives (src/bin/primitives.rs)\n\
         llvm-size -A target/{TARGET}/release/molt-engine-size-probe   # or: cargo xtask engine-size\n\
         llvm-nm --size-sort -S -r --demangle target/{TARGET}/release/molt-engine-size-probe | head -40\n```\n"
    );
    out
}
