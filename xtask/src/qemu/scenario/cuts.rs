//! The power-cut rounds of `qemu-test`: where each round cuts (`kill -9` of QEMU) an install, one round from deployment to the checks after the next boot, and where a cut actually landed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::console::Snapshot;
use super::{Cx, Unit, CHECKPOINT_BYTES, INSTALL_LIMIT};
use crate::qemu::disk;
use crate::qemu::vm::End;

/// Where an install is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    /// While the bundle streams into the inactive slot.
    Streaming,
    /// During a durable commit step: the seal (every file and the slot synced), the
    /// swap of `current` (rename, directory fsync), or the slot record's commit after
    /// the health check.
    Commit,
    /// Right after the swap of `current`, before the update is confirmed.
    AfterSwap,
}

/// One power-cut round.
pub(super) struct Cut {
    pub(super) kind: Kind,
    /// The agent's console line the cut is timed from: `deployment N: <phase>`, or
    /// (for `stream`) the line saying the signed manifest verified and the payload
    /// starts streaming.
    after: &'static str,
    /// How long after that line QEMU is killed.
    delay_ms: u64,
    /// `MOLT_TEST_PAUSE_AT` for the cut boot: holds the agent before the phase's action,
    /// so a cut during the pause lands exactly there.
    pause: Option<&'static str>,
}

/// The rounds, in order; `--rounds N` runs the first N. Timed cuts land wherever the
/// install is at that moment (the report says where); paused ones are exact.
pub(super) const CUTS: &[Cut] = &[
    cut(Kind::Streaming, "stream", 150, None),
    cut(Kind::Commit, "sealing", 0, None),
    cut(Kind::AfterSwap, "after", 500, Some("after:3000")),
    cut(Kind::Streaming, "stream", 900, None),
    cut(Kind::Commit, "sealing", 20, None),
    cut(Kind::AfterSwap, "after", 0, None),
    cut(Kind::Streaming, "stream", 1300, None),
    cut(Kind::Commit, "committing", 500, Some("committing:3000")),
    cut(Kind::AfterSwap, "health-check", 0, None),
    cut(Kind::Commit, "swapping", 0, None),
    cut(Kind::Streaming, "stream", 500, None),
    cut(Kind::AfterSwap, "swapping", 500, Some("after:3000")),
];

/// A row of [`CUTS`].
const fn cut(kind: Kind, after: &'static str, delay_ms: u64, pause: Option<&'static str>) -> Cut {
    Cut {
        kind,
        after,
        delay_ms,
        pause,
    }
}

/// The fewest rounds a CI run may do (issue 7).
pub(super) const MIN_ROUNDS: usize = 10;

/// How one round went, for the report.
pub(super) struct RoundResult {
    pub(super) name: String,
    pub(super) kind: Kind,
    pub(super) landed: String,
    pub(super) in_window: bool,
    pub(super) after_cut: &'static str,
    pub(super) outcome: String,
    pub(super) secs: f64,
}

/// One power-cut round: cut the install, boot again, check what the device comes up on
/// and that the update then completes or is reported failed.
pub(super) fn round(
    cx: &Cx,
    u: &Unit,
    name: &str,
    cut: &Cut,
    update: u64,
    logs: &mut Vec<PathBuf>,
) -> Result<RoundResult> {
    let t = Instant::now();
    let (disk, id) = cx.deployed_disk(u, name, update)?;
    let mut args = vec![("molt_checkpoint", CHECKPOINT_BYTES.to_string())];
    if let Some(p) = cut.pause {
        args.push(("molt_pause", p.to_string()));
    }
    let mut vm = cx.boot(&format!("{name}-cut"), &disk, &args, INSTALL_LIMIT, logs)?;
    let trigger = match cut.after {
        "stream" => "verified; writing slot".to_string(),
        phase => format!("deployment {id}: {phase}"),
    };
    vm.wait_for(&trigger, INSTALL_LIMIT)?;
    std::thread::sleep(Duration::from_millis(cut.delay_ms));
    vm.kill9()?;
    let (landed, in_window) = landing(&vm.console(), id, cut.kind);
    drop(vm);

    let (end, c) = cx.boot_to_end(&format!("{name}-after"), &disk, &[], logs)?;
    ensure!(
        end == End::PowerOff,
        "the boot after the cut ended with {end:?}"
    );
    c.expect_clean("boot")?;
    c.expect_clean("final")?;
    c.expect_ok(
        "MOLT-AGENT-EXIT rc=",
        "molt-agent run --once failed after the cut",
    )?;
    let mut seen = Vec::new();
    for tag in ["raw", "settled"] {
        let snap = c.snapshot(tag)?;
        seen.push(whole(cx, &snap).with_context(|| format!("after the cut ({tag})"))?);
    }
    let state = cx.ctl.wait_final(id, &u.device, Duration::from_secs(30))?;
    let last = c.snapshot("final")?;
    let final_is = whole(cx, &last).context("at the end")?;
    match state.as_str() {
        "success" => ensure!(
            final_is == "new",
            "the controller says success but the device is on the {final_is} snapshot"
        ),
        "failed" | "rolled_back" => ensure!(
            final_is == "old",
            "the controller says {state} but the device is on the {final_is} snapshot"
        ),
        other => bail!("deployment {id} ended `{other}`"),
    }
    Ok(RoundResult {
        name: name.to_string(),
        kind: cut.kind,
        landed,
        in_window,
        after_cut: if seen[0] == "new" {
            "new snapshot"
        } else {
            "old snapshot"
        },
        outcome: state,
        secs: t.elapsed().as_secs_f64(),
    })
}

/// Whether a snapshot is the whole old (factory) or the whole new tree: "old" or "new".
fn whole(cx: &Cx, snap: &Snapshot) -> Result<&'static str> {
    if snap.tree == cx.factory && snap.current == "slots/a" {
        return Ok("old");
    }
    if snap.tree == cx.good && snap.current == "slots/b" {
        return Ok("new");
    }
    bail!(
        "current -> {} is neither the whole old nor the whole new snapshot (vs old: {}; vs new: {})",
        snap.current,
        disk::diff(&cx.factory, &snap.tree),
        disk::diff(&cx.good, &snap.tree)
    )
}

/// Where the cut landed, from the agent's last console line before it, and whether
/// that is inside the window the round aims at.
fn landing(console: &[String], id: u64, kind: Kind) -> (String, bool) {
    let prefix = format!("deployment {id}: ");
    let mut phase = String::from("(before the install)");
    let mut extracted = false;
    for line in console {
        if let Some(rest) = line.split(&prefix).nth(1) {
            let word = rest.split_whitespace().next().unwrap_or("");
            if !word.is_empty() && word != "installing" {
                phase = word.to_string();
            }
        }
        if line.contains("extracted ") {
            extracted = true;
        }
    }
    let landed = if phase == "fetching" {
        format!(
            "fetching ({})",
            if extracted {
                "payload extracted"
            } else {
                "streaming"
            }
        )
    } else {
        phase.clone()
    };
    let in_window = match kind {
        Kind::Streaming => phase == "fetching" && !extracted,
        Kind::Commit => ["sealing", "swapping", "committing"].contains(&phase.as_str()),
        Kind::AfterSwap => phase == "after" || phase == "health-check",
    };
    (landed, in_window)
}

/// Every kind of cut point must have been hit, as intended, by at least one round.
pub(super) fn check_coverage(rounds: &[RoundResult], asked: usize) -> Result<()> {
    let mut hits: BTreeMap<Kind, usize> = BTreeMap::new();
    for r in rounds.iter().filter(|r| r.in_window) {
        *hits.entry(r.kind).or_default() += 1;
    }
    if asked >= MIN_ROUNDS {
        for kind in [Kind::Streaming, Kind::Commit, Kind::AfterSwap] {
            ensure!(
                hits.get(&kind).copied().unwrap_or(0) > 0,
                "no round cut power {kind:?} as intended: {:?}",
                rounds
                    .iter()
                    .map(|r| (&r.name, &r.landed))
                    .collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_landing_is_the_last_phase_the_agent_printed() {
        let lines: Vec<String> = [
            " INFO deployment 7: installing version 1.0.0",
            " INFO deployment 7: fetching",
            " INFO bundle 1.0.0 (release 1, patch) verified; writing slot b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            landing(&lines, 7, Kind::Streaming),
            ("fetching (streaming)".to_string(), true)
        );
        let mut more = lines.clone();
        more.push(" INFO extracted 2 files; 10 bytes of file content".into());
        more.push(" INFO deployment 7: sealing".into());
        assert_eq!(
            landing(&more, 7, Kind::Streaming),
            ("sealing".to_string(), false)
        );
        assert_eq!(
            landing(&more, 7, Kind::Commit),
            ("sealing".to_string(), true)
        );
        // Another deployment's lines do not count.
        assert_eq!(landing(&more, 8, Kind::AfterSwap).0, "(before the install)");
    }
}
