//! What the daemon plugs into the install driver: the [`Reporter`] of a controller deployment's phases, progress, log and result, the controller's credential, and the abort flag.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use molt_engine::update::{AbortRefusal, CauseKind, DeploymentId, Outcome, Phase};

use crate::fetch::Bearer;

/// Where a controller deployment's reports go besides the install log (the
/// daemon's outbox). Called on the driver's thread; an implementation that
/// cannot queue a report logs why: the install goes on, and a final report that
/// was not queued is emitted again after the next restart (the journal stays in
/// `Done` until [`super::Device::acknowledge`]).
pub trait Reporter: Send {
    /// The install of `deployment` entered `phase` (install and rollback phases alike).
    fn phase(&self, deployment: DeploymentId, phase: Phase, active_version: &str);
    /// Download progress: `done` bytes of the bundle of `total` (if known).
    fn progress(&self, deployment: DeploymentId, done: u64, total: Option<u64>);
    /// The install ended; `cause` is why it failed (`None` when it succeeded), and
    /// `message` says how in words (the cause and the failure's details).
    fn finished(
        &self,
        deployment: DeploymentId,
        outcome: Outcome,
        cause: Option<CauseKind>,
        message: &str,
        active_version: &str,
    );
    /// An operator abort was not applied, and why.
    fn abort_refused(&self, deployment: DeploymentId, why: AbortRefusal, active_version: &str);
    /// One line of the install log (agent lines and command output).
    fn log(&self, line: &str);
}

/// What the daemon plugs into the driver; [`Hooks::default`] is a local install's:
/// no reporter, no credential, a flag nobody sets.
#[derive(Default)]
pub struct Hooks {
    /// Receives a controller deployment's reports.
    pub reporter: Option<Arc<dyn Reporter + Sync>>,
    /// The credential for the controller's bundle URLs.
    pub bearer: Option<Bearer>,
    /// Set (by the daemon's poller) when an operator aborted the deployment in progress.
    pub abort: Arc<AtomicBool>,
}

/// The error [`super::Device::open`] gives when another agent holds the data directory's lock.
#[derive(Debug)]
pub struct Busy(pub PathBuf);

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "another molt-agent is using {}", self.0.display())
    }
}

impl std::error::Error for Busy {}
