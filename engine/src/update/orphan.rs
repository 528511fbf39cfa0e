//! Settling an orphaned trial: a snapshot on trial that no install in flight can confirm any more.

use super::state::{Phase, State};
use crate::slot::{Slot, SlotRecord, Status};

/// What [`settle_orphaned_trial`] decided, and what the caller carries out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OrphanedTrial {
    /// Nothing to settle: an install is in flight (its own phases decide its
    /// trial: commit, roll back, or count a restart), or the active slot is not
    /// on trial. The record did not change.
    None,
    /// The active slot `from` was on trial and nothing could confirm it; the
    /// record now marks it Bad and has `to`, which is Good, active. Save the
    /// record, then point `current` at `to`.
    FellBack {
        /// The slot whose trial was orphaned, now Bad.
        from: Slot,
        /// The Good slot now active.
        to: Slot,
    },
    /// The active slot is on trial and the other slot is not Good, so there is
    /// nothing to fall back to. The record did not change: running the
    /// unconfirmed snapshot beats running none, as in the boot decision's last
    /// resort, and an install that does come up healthy can still confirm it.
    NoFallback {
        /// The slot left on trial.
        slot: Slot,
    },
}

/// Decides what becomes of a trial when the journal shows no install in flight.
///
/// Only an install in its after or health-check phase may confirm a trial. When
/// the journal is idle (it was lost or torn, or it was never written because
/// the trial was started by hand), nothing ever will, and an unconfirmed
/// snapshot is never kept: the record falls back to the Good slot, as
/// [`SlotRecord::reject`] does after a failed health check. The caller calls
/// this once the journal's restart has been settled ([`super::Event::Restarted`]),
/// so a phase other than [`Phase::Idle`] is an install that still owns its trial.
///
/// Changes only `record` in memory, like the slot record's own decisions; the
/// caller saves it before acting on [`OrphanedTrial::FellBack`].
pub fn settle_orphaned_trial(state: &State, record: &mut SlotRecord) -> OrphanedTrial {
    let active = record.active();
    if state.phase() != Phase::Idle || record.slot(active).status != Status::Trial {
        return OrphanedTrial::None;
    }
    match record.reject() {
        Ok(to) => OrphanedTrial::FellBack { from: active, to },
        // `reject` refuses, leaving the record unchanged, only when the other slot
        // is not Good (the active one was just seen on trial).
        Err(_) => OrphanedTrial::NoFallback { slot: active },
    }
}
