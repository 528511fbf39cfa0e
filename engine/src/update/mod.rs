//! The update state machine: a pure transition function that the agent drives with events and whose actions the agent carries out.
//!
//! One install goes through these phases (phases the recipe has nothing for
//! are skipped):
//!
//! ```text
//! Idle → Fetching → Before → Packages → Sealing → Swapping → After → HealthCheck → Committing → Done
//! ```
//!
//! A failure or an abort sends it through the rollback phases instead, each
//! only if it applies:
//!
//! ```text
//! SwappingBack (if `current` names the new slot) → Reverting (policy) → RollbackCommand (policy) → Rebooting (policy) → Done
//! ```
//!
//! The machine is [`step`]: `(state, event) -> next state + actions`. It does
//! no I/O and reads no clock: downloading, running commands, fsyncing and
//! swapping the `current` link are [`Action`]s that the agent carries out, and
//! their results come back as [`Event`]s. Timeouts are the agent's to measure;
//! they arrive as [`Event::Failed`] with [`CauseKind::Timeout`]. This keeps
//! every decision testable without a file system, a network or fake scripts on
//! `PATH`, and lets the same decisions run on a microcontroller.
//!
//! The [`State`] is small, `Copy` and serde-serializable: the agent journals
//! it ([`journal`]: postcard, in the slot record's two-copy frame with a format
//! byte) after every transition and *before*
//! carrying out the actions, so after a crash [`Event::Restarted`] finds
//! every decision already made and only the effects possibly missing.
//!
//! Beside the machine, [`Retry`] is the timing policy of the health check's
//! attempts (the agent runs them inside `CheckHealth` and passes the time in),
//! and [`settle_orphaned_trial`] decides what becomes of a
//! slot left on trial when the journal shows no install that could confirm it.
//!
//! docs/state-machine.md has the tables: what each phase does on failure,
//! abort and restart.
//!
//! ```
//! use molt_engine::slot::Slot;
//! use molt_engine::update::{step, Action, Budget, DeploymentId, Event, Phase, Plan, State};
//!
//! let deployment = DeploymentId([7; 16]);
//! let t = step(&State::IDLE, Event::Start { deployment, target: Slot::B, budget: Budget::default() })?;
//! assert_eq!(t.next.phase(), Phase::Fetching);
//! assert_eq!(t.actions.last(), Some(&Action::Fetch { deployment, slot: Slot::B, resume: false }));
//!
//! // The agent journals `t.next`, downloads into slot B, and reports back.
//! let t = step(&t.next, Event::Fetched(Plan::default()))?;
//! assert_eq!(t.next.phase(), Phase::Sealing); // no before command, no packages
//! # Ok::<(), molt_engine::update::Rejected>(())
//! ```

mod action;
mod event;
pub mod journal;
mod orphan;
mod retry;
mod state;
mod step;

pub use action::{AbortRefusal, Action, Report};
pub use event::Event;
pub use orphan::{settle_orphaned_trial, OrphanedTrial};
pub use retry::{Attempt, Millis, Retry, RetryAction};
pub use state::{
    Budget, Cause, CauseKind, DeploymentId, FailureClass, Outcome, Phase, Plan, RollbackPolicy,
    State,
};
pub use step::{step, Actions, Rejected, Transition, MAX_ACTIONS};
