//! `bench swap`: how long the atomic swap of `current` takes for a 5,000-file and a 50,000-file snapshot (it must not grow with the snapshot).
//!
//! The swap is one `rename(2)` of a new `current` symlink over the old one, with
//! the fsyncs that make it durable and the journal record around it: nothing in
//! it walks the snapshot. The figure is the span of the agent's `swapping` phase,
//! from the moment its `deployment ID: swapping` line reaches stderr to the next
//! phase's line (so it includes journaling the next phase), over full installs of
//! the workload's tree (~5,000 files) and of a tree of 50,000 small files.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::install::{cannot_install, phase_times, Device};
use super::slot::reset;
use super::util::{fill, Stats};
use super::workload::{write_recipe, Workload};
use super::{Ctx, Outcome, Row, Verdict};
use crate::run_cmd;

const WHAT: &str = "the atomic swap of `current` (span of the `swapping` phase)";
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
            fs::write(sub.join(format!("f{i:05}.txt")), fill(i as u64, 64 + i % 512, true))?;
        }
        fs::write(&marker, &want)?;
    }
    let recipe = wl.dir.join("tree-50k.toml");
    write_recipe(&recipe, &dir)?;
    let bundle = wl.dir.join("tree-50k.molt");
    run_cmd(
        Command::new(molt)
            .args(["bundle", "build"])
            .arg(&recipe)
            .arg("-o")
            .arg(&bundle)
            .arg("--key")
            .arg(&wl.secret),
    )?;
    Ok(bundle)
}

/// `bench swap`.
pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let target = "≤ 10 ms at both sizes";
    if let Some(why) = cannot_install() {
        return Ok(Outcome::skipped("swap", WHAT, "—", target, &why));
    }
    let bins = ctx.bins()?;
    let wl = ctx.workload()?;
    let work = ctx.work("swap")?;
    let many = many_files(&wl, &bins.molt)?;
    let dev = Device::create(&work, &wl, "")?;
    let sets = [
        (format!("{} files", wl.big.tree.files), wl.big.bundle.clone()),
        (format!("{MANY} files"), many),
    ];
    let mut spans: Vec<Vec<f64>> = vec![Vec::new(), Vec::new()];
    // One warm-up install of each, then the rounds, alternating the two sizes.
    for round in 0..=ctx.rounds {
        for (i, (name, bundle)) in sets.iter().enumerate() {
            reset(&[&dev.var])?;
            let phases = phase_times(&mut dev.install(&bins.agent, &bundle.to_string_lossy()))?;
            let swap = phases
                .iter()
                .find(|(p, _)| p == "swapping")
                .map(|(_, s)| *s)
                .with_context(|| format!("no swapping phase in the agent's log ({name})"))?;
            println!(
                "swap round {round:2}{}: {name}: {:.2} ms",
                if round == 0 { " (warm-up)" } else { "" },
                swap * 1e3
            );
            if round > 0 {
                spans[i].push(swap * 1e3);
            }
        }
    }
    reset(&[&dev.var])?;
    let fs_desc = dev.target.describe();
    drop(dev);
    let stats: Vec<Stats> = spans.iter().map(|v| Stats::of(v)).collect();
    let mut details = String::from("| snapshot | swap ms, median (min–max) |\n|---|---:|\n");
    for ((name, _), s) in sets.iter().zip(&stats) {
        let _ = writeln!(details, "| {name} | {} |", s.show(2));
    }
    let _ = write!(
        details,
        "\nEach round installs both bundles onto a fresh device ({fs_desc}) and takes the span \
         of the `swapping` phase from the agent's log lines (`deployment ID: swapping` to the \
         next phase): the rename of the new `current` symlink, its fsyncs, and journaling the \
         next phase.\n\n\
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
