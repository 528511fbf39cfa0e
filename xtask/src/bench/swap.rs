//! `bench swap`: how long the atomic swap of `current` takes for a 5,000-file and a 50,000-file snapshot (it must not grow with the snapshot).
//!
//! The swap is one `rename(2)` of a new `current` symlink over the old one, with
//! the directory fsyncs that make it durable: nothing in it walks the snapshot.
//! The figure is what the agent logs for it (`swapped: current -> … in X ms`, timed
//! around `fsops::swap_current`), over full installs of the workload's tree (~5,000
//! files) and of a tree of 50,000 small files. Beside it, the span of the whole
//! `swapping` phase from the agent's log lines (the slot record's trial mark, the
//! swap, journaling the next phase).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::install::{install_skipped, phase_times, Device};
use super::slot::reset;
use super::util::{fill, Stats};
use super::workload::{build_bundle, Workload};
use super::{Ctx, Outcome, Row, Verdict};

/// The milliseconds of a `swapped: current -> … in X ms` log line.
fn swapped_ms(line: &str) -> Option<f64> {
    let rest = &line[line.find("swapped: current -> ")?..];
    rest.rsplit(" in ")
        .next()?
        .strip_suffix(" ms")?
        .trim()
        .parse()
        .ok()
}

const WHAT: &str = "the atomic swap of `current` (rename + fsyncs, as the agent logs it)";
/// Files in the big snapshot.
const MANY: usize = 50_000;

/// A tree of `MANY` small text files in 500 directories (deterministic), and its bundle.
fn many_files(wl: &Workload, molt: &Path) -> Result<std::path::PathBuf> {
    let dir = wl.dir.join("tree-50k");
    let marker = wl.dir.join("tree-50k.complete");
    let want = format!("files {MANY} v1\n");
    if fs::read_to_string(&marker).ok().as_deref() != Some(want.as_str()) {
        println!("generating {} ({MANY} files)", dir.display());
        let _ = fs::remove_file(&marker);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        for i in 0..MANY {
            let sub = dir.join(format!("d{:03}", i % 500));
            if i < 500 {
                fs::create_dir_all(&sub)?;
            }
            fs::write(
                sub.join(format!("f{i:05}.txt")),
                fill(i as u64, 64 + i % 512, true),
            )?;
        }
        fs::write(&marker, &want)?;
    }
    build_bundle(molt, &wl.secret, &dir)
}

/// `bench swap`.
pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let target = "≤ 10 ms at both sizes";
    if let Some(skipped) = install_skipped("swap", WHAT, "—", target) {
        return Ok(skipped);
    }
    let bins = ctx.bins()?;
    let wl = ctx.workload()?;
    let work = ctx.work("swap")?;
    let many = many_files(&wl, &bins.molt)?;
    let dev = Device::create(&work, &wl, "")?;
    let sets = [
        (
            format!("{} files", wl.big.tree.files),
            wl.big.bundle.clone(),
        ),
        (format!("{MANY} files"), many),
    ];
    let mut swaps: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    let mut spans: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    // One warm-up install of each, then the rounds, alternating the two sizes.
    for round in 0..=ctx.rounds {
        for (i, (name, bundle)) in sets.iter().enumerate() {
            reset(&[&dev.var])?;
            let (phases, log) =
                phase_times(&mut dev.install(&bins.agent, &bundle.to_string_lossy()))?;
            let span = phases
                .iter()
                .find(|(p, _)| p == "swapping")
                .map(|(_, s)| *s * 1e3)
                .with_context(|| format!("no swapping phase in the agent's log ({name})"))?;
            let swap = log.lines().find_map(swapped_ms).with_context(|| {
                format!("no `swapped: … in X ms` line in the agent's log ({name})")
            })?;
            println!(
                "swap round {round:2}{}: {name}: swap {swap:.2} ms, swapping phase {span:.2} ms",
                if round == 0 { " (warm-up)" } else { "" },
            );
            if round > 0 {
                swaps[i].push(swap);
                spans[i].push(span);
            }
        }
    }
    let fs_desc = dev.close(&[])?;
    let stats: Vec<Stats> = swaps.iter().map(|v| Stats::of(v)).collect();
    let phase: Vec<Stats> = spans.iter().map(|v| Stats::of(v)).collect();
    let mut details = String::from(
        "| snapshot | swap ms, median (min–max) | whole `swapping` phase ms |\n|---|---:|---:|\n",
    );
    for (((name, _), s), p) in sets.iter().zip(&stats).zip(&phase) {
        let _ = writeln!(details, "| {name} | {} | {} |", s.show(2), p.show(2));
    }
    let _ = write!(
        details,
        "\nEach round installs both bundles onto a fresh device ({fs_desc}). The swap is what \
         the agent logs as `swapped: current -> slots/X in Y ms`, timed around \
         `fsops::swap_current`: a new symlink, a directory fsync, the rename over `current`, \
         a directory fsync. The phase is the span between the agent's `deployment ID: swapping` \
         line and the next phase's, which adds the slot record's trial mark (an fdatasync) and \
         journaling the next phase (another).\n\n\
         ```sh\n\
         rm -rf mnt/var && sync\n\
         molt-agent -c agent.toml install tree-200.molt   # and tree-50k.molt\n\
         ```\n"
    );
    let worst = stats.iter().map(|s| s.median).fold(0.0, f64::max);
    Ok(Outcome {
        rows: vec![Row {
            id: "swap".into(),
            what: WHAT.into(),
            baseline: "—".into(),
            result: format!(
                "**{:.2} ms** at {}, **{:.2} ms** at {}",
                stats[0].median, sets[0].0, stats[1].median, sets[1].0
            ),
            target: target.into(),
            verdict: Verdict::from(worst <= 10.0),
        }],
        details,
    })
}
