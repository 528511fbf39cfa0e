//! The events the agent feeds into the update state machine: offers, results of the actions it carried out, aborts and restarts.

use serde::{Deserialize, Serialize};

use super::state::{Budget, Cause, DeploymentId, Phase, Plan, SlotDef};
use crate::slot::Slot;

/// Something that happened, handed to [`super::step`].
///
/// Results of actions name the phase they answer, so a stale or duplicated
/// result is recognised and rejected instead of moving the wrong phase on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Event {
    /// A deployment is offered (by the controller on a poll, or from a local file); accepted when idle or done.
    Start {
        /// Its id, echoed in every report.
        deployment: DeploymentId,
        /// The inactive slot, which the update is written into.
        #[serde(with = "SlotDef")]
        target: Slot,
        /// How much recovery this install may use.
        budget: Budget,
    },
    /// The `Fetch` action finished: the bundle verified and is extracted; the plan comes from its signed recipe.
    Fetched(Plan),
    /// The outstanding action of this phase succeeded (every phase but `Fetching`, which answers with `Fetched`).
    Completed(Phase),
    /// The outstanding action of `cause.phase` failed, timed out, or was cancelled.
    Failed(Cause),
    /// The answer to `Reconcile`: the slot `current` names on disk, now made durable.
    Current(#[serde(with = "SlotDef")] Slot),
    /// An operator aborted this deployment (seen on a poll).
    Abort(DeploymentId),
    /// The agent started again and read this state from its journal.
    Restarted {
        /// The device booted since the state was journaled (the agent compares boot ids); false for a restart of the agent alone.
        rebooted: bool,
    },
    /// The controller acknowledged the final report of this deployment.
    Reported(DeploymentId),
}
