//! The human-readable status (`molt-agent status`): slots, versions, the install phase, the last result and the log's tail, also readable while a daemon holds the lock.

use std::fs;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use molt_engine::slot::{Loaded, Slot, SlotRecord};
use molt_engine::text::Escaped;
use molt_engine::update::State;

use super::note::SlotNote;
use super::{layout, slot_name};
use crate::config::Config;
use crate::fsops;
use crate::journal::Journal;
use crate::slotfile::FileStore;

/// The status of `data`, from its record and journal state.
pub(super) fn render(data: &Path, r: &SlotRecord, state: &State) -> String {
    let mut s = String::new();
    let current = fsops::read_current(data).ok().flatten();
    s.push_str(&format!(
        "data dir      {}\ncurrent       {}\nfloor         release {}\n",
        data.display(),
        current
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(missing)".into()),
        r.floor()
    ));
    for slot in [Slot::A, Slot::B] {
        let i = r.slot(slot);
        s.push_str(&format!(
            "slot {}        {:<8} version {:<16} release {}{}\n",
            slot_name(slot),
            format!("{:?}", i.status),
            i.version.as_str(),
            i.release,
            if slot == r.active() { "  (active)" } else { "" }
        ));
    }
    if let Some(n) = SlotNote::load(data).filter(|n| n.applies(r)) {
        let hint = if n.previous.is_some() {
            "; `molt-agent rollback` has nothing to switch to until an update succeeds"
        } else {
            ""
        };
        s.push_str(&format!("slot {} empty  {}{hint}\n", n.slot, n.sentence()));
    }
    s.push_str(&format!("install       {}\n", state.phase().name()));
    let last = fs::read_to_string(data.join(layout::STATUS)).unwrap_or_else(|_| "none".into());
    s.push_str(&format!("last result   {}\n", Escaped::new(last.trim())));
    if let Ok(log) = fs::read_to_string(data.join(layout::LOG)) {
        let lines: Vec<&str> = log.lines().collect();
        s.push_str("log (last 15 lines)\n");
        for l in &lines[lines.len().saturating_sub(15)..] {
            // A log written by an older agent may hold raw control characters.
            s.push_str(&format!("  {}\n", Escaped::new(l)));
        }
    }
    s
}

/// The status as the files say it, read only: `molt-agent status`. It takes no
/// lock, settles nothing and creates nothing, so it is safe beside a running
/// daemon (the record and the journal are written whole, two copies each) and
/// after a crash (it reports the interrupted install; `recover` settles it).
pub fn peek_status(cfg: &Config) -> Result<String> {
    let data = cfg.data_dir();
    let rec = data.join(layout::RECORD);
    let store = FileStore::open_read_only(&rec)
        .with_context(|| format!("cannot open {}", rec.display()))?;
    let loaded = match store {
        Some(mut store) => SlotRecord::load(&mut store)
            .map_err(|e| anyhow!("slot record {}: {e}", rec.display()))?,
        None => Loaded::Fresh,
    };
    let record = match loaded {
        Loaded::Found(r) => r,
        // What the first `recover`, `install` or `run` will record: slot A is the
        // factory snapshot. Shown, not saved.
        Loaded::Fresh => SlotRecord::new(Slot::A, "factory", 0, [0; 32])
            .map_err(|e| anyhow!("cannot describe a new device: {e}"))?,
    };
    let state = Journal::peek(&data.join(layout::JOURNAL))
        .with_context(|| format!("cannot read the journal in {}", data.display()))?;
    let mut s = render(&data, &record, &state);
    let running = lock_held(&data.join(layout::LOCK));
    if running {
        s.push_str("agent         running (another molt-agent holds the lock)\n");
    } else if state.phase() != molt_engine::update::Phase::Idle {
        s.push_str(
            "agent         not running: the install above was interrupted; \
             `molt-agent recover` (or the daemon at its start) settles it\n",
        );
    }
    Ok(s)
}

/// Whether a process holds `flock` on the lock file, read from `/proc/locks`
/// rather than by trying the lock: a probe would hold it for an instant, and a
/// daemon starting in that instant would find it taken.
fn lock_held(lock: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(lock) else {
        return false;
    };
    let dev = meta.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let id = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let Ok(locks) = fs::read_to_string("/proc/locks") else {
        return false;
    };
    // `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`; a waiter's line has `->`.
    locks.lines().any(|l| {
        let mut w = l.split_whitespace().skip(1);
        w.next() == Some("FLOCK") && !l.contains("->") && w.nth(3) == Some(id.as_str())
    })
}
