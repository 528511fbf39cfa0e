//! The human-readable status (`molt-agent status`): slots, versions, the install phase, the last result and the log's tail, also readable while a daemon holds the lock.

use std::fs;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use molt_engine::slot::{Loaded, Slot, SlotRecord};
use molt_engine::update::State;

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
    s.push_str(&format!("install       {}\n", state.phase().name()));
    let last = fs::read_to_string(data.join(layout::STATUS)).unwrap_or_else(|_| "none".into());
    s.push_str(&format!("last result   {}\n", last.trim()));
    if let Ok(log) = fs::read_to_string(data.join(layout::LOG)) {
        let lines: Vec<&str> = log.lines().collect();
        s.push_str("log (last 15 lines)\n");
        for l in &lines[lines.len().saturating_sub(15)..] {
            s.push_str(&format!("  {l}\n"));
        }
    }
    s
}

/// The status without taking the lock or settling anything: for `molt-agent
/// status` while a daemon runs (it only reads the record and the journal, which
/// are written whole, two copies each).
pub fn peek_status(cfg: &Config) -> Result<String> {
    let data = cfg.data_dir();
    let rec = data.join(layout::RECORD);
    let mut store =
        FileStore::open(&rec).with_context(|| format!("cannot open {}", rec.display()))?;
    let record = match SlotRecord::load(&mut store)
        .map_err(|e| anyhow!("slot record {}: {e}", rec.display()))?
    {
        Loaded::Found(r) => r,
        Loaded::Fresh => {
            return Ok(format!(
                "data dir      {}\n(not set up yet)\n",
                data.display()
            ))
        }
    };
    let (_, state) = Journal::open(&data.join(layout::JOURNAL))
        .with_context(|| format!("cannot open the journal in {}", data.display()))?;
    Ok(render(&data, &record, &state))
}
