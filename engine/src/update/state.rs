//! The persisted state of the update state machine and the small value types it is made of: phases, plans, budgets, causes and outcomes.
//!
//! Everything here is `Copy`, fixed-size and serde-serializable, so the agent
//! can journal a [`State`] with postcard after every transition. Enum variants
//! are encoded by their index: new variants are only ever appended, so a
//! journal written by an older agent still reads.

use core::fmt;

use serde::{Deserialize, Serialize};

use super::action::Report;
use crate::bundle::format::Recipe;
use crate::slot::Slot;

/// Serde support for [`Slot`], which the slot record encodes with its own byte
/// layout and so does not derive serde itself. The index encoding (A = 0,
/// B = 1) matches the record's byte values.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Slot")]
pub(crate) enum SlotDef {
    A,
    B,
}

/// The opaque id of one deployment, as the controller (or a local install) names it.
///
/// Fixed-size so the state stays `Copy` and its encoding has a bound; the
/// engine only compares it and hands it back in reports.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct DeploymentId(pub [u8; 16]);

impl fmt::Display for DeploymentId {
    /// Lower-case hex, 32 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Where an install stands. The phase is what the agent journals and what the
/// controller sees in progress reports.
///
/// Install phases run in declaration order from [`Phase::Fetching`] to
/// [`Phase::Committing`] (phases the recipe has nothing for are skipped);
/// the rollback phases [`Phase::SwappingBack`] to [`Phase::Rebooting`] run in
/// declaration order after a failure or an abort (again skipping what does
/// not apply). Every phase except [`Phase::Idle`] and [`Phase::Done`] has
/// exactly one outstanding action whose result the machine waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Phase {
    /// No install in progress.
    Idle,
    /// Streaming the signed bundle, verifying it and extracting it into the inactive slot; nothing active changes.
    Fetching,
    /// Running the recipe's before command.
    Before,
    /// Installing apt, pip and npm packages inside a chroot of the new slot.
    Packages,
    /// Making the new slot durable (syncfs or fsync of every file and directory).
    Sealing,
    /// Switching `current` to the new slot atomically and durably, or reconciling what `current` names after a crash or a failed swap.
    Swapping,
    /// Running the recipe's after command, now on the new slot.
    After,
    /// Running the recipe's health check, within its timeout.
    HealthCheck,
    /// Marking the new slot confirmed and raising the version floor.
    Committing,
    /// Switching `current` back to the old slot, durably (rollback after the swap).
    SwappingBack,
    /// Discarding the failed snapshot in the inactive slot (the rollback policy's `revert`).
    Reverting,
    /// Running the recipe's rollback command.
    RollbackCommand,
    /// Rebooting the device (the rollback policy's `reboot`); the restart that follows finishes it.
    Rebooting,
    /// The install ended and its final report was emitted; waiting for the controller to acknowledge it.
    Done,
}

// `Phase::ALL` holds every variant once, in declaration order, which is also
// their encoding; a variant appended without extending it fails the build.
const _: () = {
    let mut rest: &[Phase] = &Phase::ALL;
    let mut index = 0;
    while let [phase, tail @ ..] = rest {
        assert!(*phase as usize == index);
        index += 1;
        rest = tail;
    }
    assert!(Phase::Done as usize + 1 == Phase::ALL.len());
};

impl Phase {
    /// Every phase, in declaration order: the order the install phases and the
    /// rollback phases each run in.
    pub const ALL: [Phase; 14] = [
        Phase::Idle,
        Phase::Fetching,
        Phase::Before,
        Phase::Packages,
        Phase::Sealing,
        Phase::Swapping,
        Phase::After,
        Phase::HealthCheck,
        Phase::Committing,
        Phase::SwappingBack,
        Phase::Reverting,
        Phase::RollbackCommand,
        Phase::Rebooting,
        Phase::Done,
    ];

    /// Whether this is one of the install phases, [`Phase::Fetching`] to [`Phase::Committing`].
    pub fn is_install(self) -> bool {
        matches!(
            self,
            Phase::Fetching
                | Phase::Before
                | Phase::Packages
                | Phase::Sealing
                | Phase::Swapping
                | Phase::After
                | Phase::HealthCheck
                | Phase::Committing
        )
    }

    /// Whether this is one of the rollback phases, [`Phase::SwappingBack`] to [`Phase::Rebooting`].
    pub fn is_rolling_back(self) -> bool {
        matches!(
            self,
            Phase::SwappingBack | Phase::Reverting | Phase::RollbackCommand | Phase::Rebooting
        )
    }

    /// Whether an operator abort is still honoured in this phase: every install phase before [`Phase::Committing`].
    pub fn abortable(self) -> bool {
        self.is_install() && self != Phase::Committing
    }

    /// The phase's name as reports and logs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Fetching => "fetching",
            Phase::Before => "before",
            Phase::Packages => "packages",
            Phase::Sealing => "sealing",
            Phase::Swapping => "swapping",
            Phase::After => "after",
            Phase::HealthCheck => "health-check",
            Phase::Committing => "committing",
            Phase::SwappingBack => "swapping-back",
            Phase::Reverting => "reverting",
            Phase::RollbackCommand => "rollback-command",
            Phase::Rebooting => "rebooting",
            Phase::Done => "done",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the recipe's rollback stage asks for when an install fails or is aborted.
///
/// The steps run in field order: revert, then the command, then the reboot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RollbackPolicy {
    /// Discard the failed snapshot in the inactive slot, so only the old files remain (the recipe's default is on).
    pub revert: bool,
    /// The recipe has a rollback command to run.
    pub command: bool,
    /// Reboot the device last.
    pub reboot: bool,
}

impl Default for RollbackPolicy {
    /// The recipe's defaults: revert, no command, no reboot.
    fn default() -> Self {
        RollbackPolicy {
            revert: true,
            command: false,
            reboot: false,
        }
    }
}

/// Which stages of the recipe have work to do. Known only once the bundle's
/// signed manifest has verified, so it arrives with [`super::Event::Fetched`],
/// never from the controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Plan {
    /// The recipe has a before command.
    pub before: bool,
    /// The recipe lists packages.
    pub packages: bool,
    /// The recipe has an after command.
    pub after: bool,
    /// The recipe has a health check.
    pub health_check: bool,
    /// What to do on failure or abort.
    pub rollback: RollbackPolicy,
}

impl Plan {
    /// The plan of a verified recipe.
    pub fn from_recipe(recipe: &Recipe<'_>) -> Plan {
        Plan {
            before: recipe.before.is_some(),
            packages: !recipe.packages.is_empty(),
            after: recipe.after.is_some(),
            health_check: recipe.health_check.is_some(),
            rollback: RollbackPolicy {
                revert: recipe.rollback.revert,
                command: recipe.rollback.command.is_some(),
                reboot: recipe.rollback.reboot,
            },
        }
    }
}

/// How much recovery one install may use, from the agent's configuration.
/// Both counters live in the journaled state, so a device that keeps crashing
/// still runs out of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Budget {
    /// How many times a download interrupted by a restart may be resumed before the install fails.
    pub fetch_resumes: u8,
    /// How many restarts during the after command or health check the new snapshot survives before it is rolled back.
    pub trials: u8,
}

impl Default for Budget {
    /// Three resumed downloads, two trial restarts.
    fn default() -> Self {
        Budget {
            fetch_resumes: 3,
            trials: 2,
        }
    }
}

/// Why a phase failed. The agent keeps the details (command output, the bundle
/// error, the errno) in its log; this is the part that is journaled and reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CauseKind {
    /// The bundle was refused: signature, digest, format, entry policy or a limit.
    BadBundle,
    /// The bundle is for other hardware (its `compatible` string differs).
    Incompatible,
    /// The bundle's release is below the device's version floor and no downgrade is allowed.
    Downgrade,
    /// The download failed after the agent's own retries.
    Network,
    /// The disk filled up.
    NoSpace,
    /// A file-system operation failed (write, fsync, rename); never retried.
    Io,
    /// A command exited with this non-zero status (128 + n for signal n).
    Exit(i32),
    /// A command ran past its timeout and was killed.
    Timeout,
    /// The health check did not pass within its attempts.
    Unhealthy,
    /// The agent stopped the action for its own reasons (for example, it is shutting down).
    Cancelled,
    /// A restart interrupted a phase that is not resumed.
    Interrupted,
    /// The download was interrupted more often than the budget's `fetch_resumes`.
    ResumesExhausted,
    /// The new snapshot restarted more often than the budget's `trials`.
    TrialsExhausted,
    /// An operator aborted the deployment.
    Aborted,
    /// A patch bundle was made for another version than the active snapshot's.
    WrongBase,
}

impl fmt::Display for CauseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CauseKind::BadBundle => f.write_str("bundle refused"),
            CauseKind::Incompatible => f.write_str("bundle is for other hardware"),
            CauseKind::Downgrade => f.write_str("release below the version floor"),
            CauseKind::Network => f.write_str("download failed"),
            CauseKind::NoSpace => f.write_str("no space left"),
            CauseKind::Io => f.write_str("file-system error"),
            CauseKind::Exit(code) => write!(f, "exited with status {code}"),
            CauseKind::Timeout => f.write_str("timed out"),
            CauseKind::Unhealthy => f.write_str("health check failed"),
            CauseKind::Cancelled => f.write_str("cancelled by the agent"),
            CauseKind::Interrupted => f.write_str("interrupted by a restart"),
            CauseKind::ResumesExhausted => f.write_str("download interrupted too often"),
            CauseKind::TrialsExhausted => f.write_str("new snapshot restarted too often"),
            CauseKind::Aborted => f.write_str("aborted by an operator"),
            CauseKind::WrongBase => f.write_str("patch is for another version"),
        }
    }
}

impl CauseKind {
    /// A short, stable name for machines (`network`, `exit`, …): what a report to
    /// the controller carries.
    pub fn name(&self) -> &'static str {
        match self {
            CauseKind::BadBundle => "bad-bundle",
            CauseKind::Incompatible => "incompatible",
            CauseKind::Downgrade => "downgrade",
            CauseKind::Network => "network",
            CauseKind::NoSpace => "no-space",
            CauseKind::Io => "io",
            CauseKind::Exit(_) => "exit",
            CauseKind::Timeout => "timeout",
            CauseKind::Unhealthy => "unhealthy",
            CauseKind::Cancelled => "cancelled",
            CauseKind::Interrupted => "interrupted",
            CauseKind::ResumesExhausted => "resumes-exhausted",
            CauseKind::TrialsExhausted => "trials-exhausted",
            CauseKind::Aborted => "aborted",
            CauseKind::WrongBase => "wrong-base",
        }
    }

    /// Whether trying the same update again could end otherwise: the network, the
    /// disk, a timeout, a restart or power loss may pass; a refused bundle, a script
    /// or health check that failed, or the wrong hardware or base will not. `None`
    /// for an operator's abort, which is no failure of the update.
    pub fn class(&self) -> Option<FailureClass> {
        match self {
            CauseKind::Network
            | CauseKind::NoSpace
            | CauseKind::Io
            | CauseKind::Timeout
            | CauseKind::Cancelled
            | CauseKind::Interrupted
            | CauseKind::ResumesExhausted
            | CauseKind::TrialsExhausted => Some(FailureClass::Transient),
            CauseKind::BadBundle
            | CauseKind::Incompatible
            | CauseKind::Downgrade
            | CauseKind::Exit(_)
            | CauseKind::Unhealthy
            | CauseKind::WrongBase => Some(FailureClass::Deterministic),
            CauseKind::Aborted => None,
        }
    }
}

/// Whether another try of the same update could end otherwise ([`CauseKind::class`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureClass {
    /// It may pass: the network, the disk's free space, a timeout, a power loss.
    Transient,
    /// It will end the same: the bundle or the recipe itself.
    Deterministic,
}

/// A failure and the phase it happened in: what a final report names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cause {
    /// The phase that failed.
    pub phase: Phase,
    /// Why.
    pub kind: CauseKind,
}

impl Cause {
    /// A cause.
    pub fn new(phase: Phase, kind: CauseKind) -> Cause {
        Cause { phase, kind }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.phase, self.kind)
    }
}

/// How an install ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Outcome {
    /// Committed: the new snapshot is active and confirmed.
    Succeeded,
    /// Failed; the device never left the old snapshot, or it did and could not swap back (see the report's `rollback_error`).
    Failed,
    /// Failed after the swap, and the device swapped back to the old snapshot.
    RolledBack,
    /// An operator aborted it before commit; the device stayed on or returned to the old snapshot unless the report's `rollback_error` says otherwise.
    Aborted,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled back",
            Outcome::Aborted => "aborted",
        })
    }
}

/// Everything the machine knows about the install in progress: the value the
/// agent journals after every transition and hands back to [`super::step`].
///
/// Small and `Copy`, with no borrowed data: its postcard encoding is at most
/// [`State::MAX_ENCODED_LEN`] bytes. Fields are private so that only
/// [`super::step`] moves an install forward; a state read back from a
/// journal is accepted whatever its fields say, and `step` never panics on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct State {
    pub(crate) phase: Phase,
    pub(crate) deployment: DeploymentId,
    /// The slot the update is written into: the inactive one when the install started.
    #[serde(with = "SlotDef")]
    pub(crate) target: Slot,
    /// The slot `current` names, as far as the machine knows (the other one until the swap completes).
    #[serde(with = "SlotDef")]
    pub(crate) current: Slot,
    pub(crate) plan: Plan,
    pub(crate) fetch_resumes_left: u8,
    pub(crate) trials_left: u8,
    /// An operator abort arrived and is applied when the outstanding action reports back.
    pub(crate) abort_requested: bool,
    /// In [`Phase::Swapping`]: a `Reconcile` is outstanding, not a `Swap`.
    pub(crate) reconciling: bool,
    /// `current` named the new slot at some point of this install.
    pub(crate) swapped: bool,
    /// The failure (or abort) that sent the install into rollback.
    pub(crate) cause: Option<Cause>,
    /// The first rollback step that failed, if any.
    pub(crate) rollback_error: Option<Cause>,
}

impl Default for State {
    fn default() -> Self {
        State::IDLE
    }
}

impl State {
    /// The state of a device with no install in progress: what a fresh journal starts from.
    pub const IDLE: State = State {
        phase: Phase::Idle,
        deployment: DeploymentId([0; 16]),
        target: Slot::B,
        current: Slot::A,
        plan: Plan {
            before: false,
            packages: false,
            after: false,
            health_check: false,
            rollback: RollbackPolicy {
                revert: true,
                command: false,
                reboot: false,
            },
        },
        fetch_resumes_left: 0,
        trials_left: 0,
        abort_requested: false,
        reconciling: false,
        swapped: false,
        cause: None,
        rollback_error: None,
    };

    /// An upper bound on the length of a state's postcard encoding, for sizing the journal record.
    pub const MAX_ENCODED_LEN: usize = 64;

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The deployment being installed (or that just ended, in [`Phase::Done`]); `None` when idle.
    pub fn deployment(&self) -> Option<DeploymentId> {
        (self.phase != Phase::Idle).then_some(self.deployment)
    }

    /// The slot the update is written into; `None` when idle.
    pub fn target(&self) -> Option<Slot> {
        (self.phase != Phase::Idle).then_some(self.target)
    }

    /// The slot `current` names as far as the machine knows; `None` when idle.
    pub fn current(&self) -> Option<Slot> {
        (self.phase != Phase::Idle).then_some(self.current)
    }

    /// The recipe's plan (the defaults until the bundle has been fetched).
    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// Resumed downloads still allowed.
    pub fn fetch_resumes_left(&self) -> u8 {
        self.fetch_resumes_left
    }

    /// Trial restarts of the new snapshot still allowed.
    pub fn trials_left(&self) -> u8 {
        self.trials_left
    }

    /// Whether an operator abort is waiting for the outstanding action to report back.
    pub fn abort_requested(&self) -> bool {
        self.abort_requested
    }

    /// The failure or abort that ended (or is ending) the install.
    pub fn cause(&self) -> Option<Cause> {
        self.cause
    }

    /// The first rollback step that failed.
    pub fn rollback_error(&self) -> Option<Cause> {
        self.rollback_error
    }

    /// How the install ended; `None` until [`Phase::Done`].
    pub fn outcome(&self) -> Option<Outcome> {
        if self.phase != Phase::Done {
            return None;
        }
        Some(match self.cause {
            None => Outcome::Succeeded,
            Some(Cause {
                kind: CauseKind::Aborted,
                ..
            }) => Outcome::Aborted,
            Some(_) if self.swapped && self.current != self.target => Outcome::RolledBack,
            Some(_) => Outcome::Failed,
        })
    }

    /// The final report of an ended install; `None` until [`Phase::Done`].
    pub fn final_report(&self) -> Option<Report> {
        self.outcome().map(|outcome| Report::Final {
            deployment: self.deployment,
            outcome,
            cause: self.cause,
            rollback_error: self.rollback_error,
        })
    }
}
