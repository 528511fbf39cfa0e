//! The actions the update state machine asks the agent to carry out, and the reports it sends to the controller.

use core::fmt;

use serde::{Deserialize, Serialize};

use super::state::{Cause, DeploymentId, Outcome, Phase, SlotDef};
use crate::slot::Slot;

/// Something for the agent to do. Every action except `Report`, `Cancel` and
/// `AbortRefused` is the phase's outstanding action: the agent answers it
/// with exactly one event (`Fetched`, `Completed(phase)`, `Failed(cause)` or
/// `Current(slot)`), or with `Restarted` if it crashed meanwhile.
///
/// The agent journals the transition's `next` state durably *before* it
/// carries out any action, so a crash can leave an action half done. After
/// the crash, [`super::Event::Restarted`] decides per phase whether it runs
/// again: `Fetch` (resumed), `Reconcile`, `RunAfter` and `CheckHealth` (on
/// trial), `Commit`, `SwapBack`, `Revert` and `Reboot` do, so the agent
/// makes them idempotent; `RunBefore`, `InstallPackages`, `Seal`, `Swap` and
/// `RunRollbackCommand` never run twice (see [`super::step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Action {
    /// Stream the deployment's bundle, verify it and extract it into `slot`; answer `Fetched(plan)`. With `resume`, continue a download that a restart interrupted.
    Fetch {
        /// What to download.
        deployment: DeploymentId,
        /// The inactive slot to extract into.
        #[serde(with = "SlotDef")]
        slot: Slot,
        /// Continue from what is already downloaded instead of starting over.
        resume: bool,
    },
    /// Run the recipe's before command (in a chroot of `slot` if the recipe says so).
    RunBefore {
        /// The new slot.
        #[serde(with = "SlotDef")]
        slot: Slot,
    },
    /// Install the recipe's packages with the package managers running in a chroot of `slot`.
    InstallPackages {
        /// The new slot.
        #[serde(with = "SlotDef")]
        slot: Slot,
    },
    /// Make `slot` durable: syncfs (or fsync every file and directory); an error is final, never retried.
    Seal {
        /// The new slot.
        #[serde(with = "SlotDef")]
        slot: Slot,
    },
    /// Switch `current` to `slot` atomically, then fsync its directory.
    Swap {
        /// The new slot.
        #[serde(with = "SlotDef")]
        slot: Slot,
    },
    /// Read which slot `current` names, fsync its directory so that answer is durable, and answer `Current(slot)`. It has no failure answer: the agent retries until it can read the link.
    Reconcile,
    /// Run the recipe's after command, now on the new slot (in a chroot of `slot` if the recipe says so).
    RunAfter {
        /// The new, now active, slot.
        #[serde(with = "SlotDef")]
        slot: Slot,
    },
    /// Run the recipe's health check with its attempts and timeout.
    CheckHealth {
        /// The new, now active, slot.
        #[serde(with = "SlotDef")]
        slot: Slot,
    },
    /// Mark `slot` confirmed and raise the version floor to its release, durably.
    Commit {
        /// The new, now active, slot.
        #[serde(with = "SlotDef")]
        slot: Slot,
    },
    /// Switch `current` back to `slot`, the old slot, atomically and durably.
    SwapBack {
        /// The old slot.
        #[serde(with = "SlotDef")]
        slot: Slot,
    },
    /// Discard the failed snapshot in `slot` (the inactive one) so that only the old files remain; never the slot `current` names.
    Revert {
        /// The failed new slot.
        #[serde(with = "SlotDef")]
        slot: Slot,
    },
    /// Run the recipe's rollback command, on the old snapshot.
    RunRollbackCommand,
    /// Reboot the device; the restart that follows finishes the rollback.
    Reboot,
    /// Stop the outstanding action as soon as it safely can (kill the command, stop the download); its result still comes back as an event.
    Cancel,
    /// Send this report to the controller.
    Report(Report),
    /// Tell the controller that its abort was not applied, and why.
    AbortRefused {
        /// The deployment the abort named.
        deployment: DeploymentId,
        /// Why it was refused.
        why: AbortRefusal,
    },
}

impl Action {
    /// The slot whose files or whose place in `current` this action changes, if any.
    ///
    /// This is what the invariant "nothing touches the active slot before the
    /// swap" is checked against: before `Swap`, every slot named here is the
    /// inactive one.
    pub fn slot(&self) -> Option<Slot> {
        match *self {
            Action::Fetch { slot, .. }
            | Action::RunBefore { slot }
            | Action::InstallPackages { slot }
            | Action::Seal { slot }
            | Action::Swap { slot }
            | Action::RunAfter { slot }
            | Action::CheckHealth { slot }
            | Action::Commit { slot }
            | Action::SwapBack { slot }
            | Action::Revert { slot } => Some(slot),
            Action::Reconcile
            | Action::RunRollbackCommand
            | Action::Reboot
            | Action::Cancel
            | Action::Report(_)
            | Action::AbortRefused { .. } => None,
        }
    }

    /// The final report this action carries, if it is one.
    pub fn final_report(&self) -> Option<Report> {
        match *self {
            Action::Report(report @ Report::Final { .. }) => Some(report),
            _ => None,
        }
    }
}

/// A status message for the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Report {
    /// The install entered `phase` (install and rollback phases alike).
    Progress {
        /// The deployment.
        deployment: DeploymentId,
        /// The phase entered.
        phase: Phase,
    },
    /// The install ended: emitted once per install when it reaches `Done` (and again only if a restart leaves it unknown whether it was sent).
    Final {
        /// The deployment.
        deployment: DeploymentId,
        /// How it ended.
        outcome: Outcome,
        /// The failure or abort that ended it; `None` when it succeeded.
        cause: Option<Cause>,
        /// The first rollback step that failed, if any.
        rollback_error: Option<Cause>,
    },
}

/// Why an operator abort was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AbortRefusal {
    /// The device is not installing this deployment.
    NotRunning,
    /// The deployment is committing or committed: the new snapshot stays.
    Committed,
    /// The install already failed and is rolling back (or has ended): its final report will say how.
    AlreadyEnding,
}

impl fmt::Display for AbortRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AbortRefusal::NotRunning => "the device is not installing this deployment",
            AbortRefusal::Committed => "the deployment is already committed",
            AbortRefusal::AlreadyEnding => "the install already failed and is rolling back",
        })
    }
}
