//! What became of the inactive slot's previous snapshot: `slot-note`, written before an install empties or overwrites that slot, completed with the reason when the install fails, read by `status` and `rollback`.
//!
//! The slot record (engine) says only that the inactive slot is Empty after a failed
//! install; it keeps no version for content that was never completed, and no reason.
//! Without this note an operator sees "nothing to roll back to" and cannot tell that
//! the snapshot that was there a minute ago was overwritten by a download refused
//! half-way, or that a patch's copy of the active slot ran out of space. The note is
//! shown only while it still describes the slot: the record calls that slot Empty and
//! it is not the active one ([`SlotNote::applies`]); any later install into the slot
//! writes its own note before touching it.

use std::fs;
use std::path::Path;

use molt_engine::slot::{Slot, SlotRecord, Status};
use molt_engine::text::Escaped;
use serde::{Deserialize, Serialize};

use super::{layout, slot_name, write_durable};

/// The note on `slot-note` (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct SlotNote {
    /// The slot the install wrote into (`a` or `b`).
    pub slot: String,
    /// The install, as logs name its deployment.
    pub deployment: String,
    /// The version of the snapshot the slot held as a rollback target (Good) before the
    /// install emptied it; `None` if it held none.
    pub previous: Option<String>,
    /// The version being installed.
    pub version: String,
    /// Where the bundle came from (a path or URL).
    pub source: String,
    /// Why the install failed, once it has.
    pub why: Option<String>,
}

impl SlotNote {
    /// The note in `data`, if there is a readable one.
    pub fn load(data: &Path) -> Option<SlotNote> {
        let bytes = fs::read(data.join(layout::SLOT_NOTE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Replaces the note durably: it must be on disk before the slot is emptied.
    pub fn save(&self, data: &Path) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        write_durable(&data.join(layout::SLOT_NOTE), &bytes)
    }

    /// Removes the note (after a failed save, so that an older one cannot speak for
    /// this install); a missing note is fine.
    pub fn remove(data: &Path) -> std::io::Result<()> {
        match fs::remove_file(data.join(layout::SLOT_NOTE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether this note is about `slot` and the install `deployment`.
    pub fn is_for(&self, slot: Slot, deployment: &str) -> bool {
        self.slot == slot_name(slot) && self.deployment == deployment
    }

    /// The slot the note is about.
    pub fn slot(&self) -> Option<Slot> {
        match self.slot.as_str() {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }

    /// Whether the note still describes the slot as `r` has it: inactive and Empty.
    pub fn applies(&self, r: &SlotRecord) -> bool {
        self.slot()
            .is_some_and(|s| s != r.active() && r.slot(s).status == Status::Empty)
    }

    /// What happened, as one sentence without a final stop: `slot a held the previous
    /// snapshot 1.0.0 until the install of 2.0.0 from URL overwrote it; that install
    /// failed: bundle refused: …`. Untrusted text (source, reason) is escaped.
    pub fn sentence(&self) -> String {
        let what = format!(
            "the install of {} from {}",
            self.version,
            Escaped::new(&self.source)
        );
        let mut s = match &self.previous {
            Some(v) => format!(
                "slot {} held the previous snapshot (version {v}) until {what} overwrote it",
                self.slot
            ),
            None => format!("slot {} was emptied for {what}", self.slot),
        };
        match &self.why {
            Some(why) => s.push_str(&format!("; that install failed: {}", Escaped::new(why))),
            None => s.push_str("; that install did not finish"),
        }
        s
    }
}
