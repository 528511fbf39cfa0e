//! The device protocol's messages (JSON over HTTP, see docs/api.md): enrollment, poll and status reports, defined once for the agent and the controller.
//!
//! The engine does no I/O: these are plain serde types. The agent serializes
//! them with `serde_json` and the controller deserializes them, so both sides
//! compile against one definition. Needs the `alloc` feature (owned strings:
//! log text and messages carry escapes that borrowed strings cannot).
//!
//! Versioning: every route lives under [`API_PREFIX`]; fields may be added
//! (unknown fields are ignored on both sides), never removed or retyped within
//! `v1`.

use alloc::string::String;

use serde::{Deserialize, Serialize};

use crate::update::{CauseKind, DeploymentId, FailureClass, Outcome, Phase};

/// Every route's prefix.
pub const API_PREFIX: &str = "/api/v1";

/// Largest log text one report may carry; the agent sends longer output in several reports.
pub const MAX_REPORT_LOG: usize = 64 * 1024;

/// Largest `message` a report may carry, in bytes: a sentence or a few, not a log
/// (the agent shortens a longer one; the controller refuses it).
pub const MAX_REPORT_MESSAGE: usize = 4 * 1024;

/// Largest short string a device sends (name, compatible, versions, phase), in bytes.
pub const MAX_DEVICE_FIELD: usize = 256;

/// `POST /api/v1/device/enroll`: a device joins a group with the group's enrollment token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The group's enrollment token (from the operator).
    pub token: String,
    /// A name for people (the host name by default); need not be unique.
    pub name: String,
    /// The device's `compatible` string (bundles for other hardware are not offered).
    pub compatible: String,
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub agent_version: String,
    /// The version of the active snapshot.
    pub active_version: String,
}

/// The answer to an enrollment (201).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The device's id, as the operator API shows it.
    pub device_id: String,
    /// The device's secret for `Authorization: Bearer`; shown once, stored hashed by the controller.
    pub credential: String,
    /// The group the token enrolled it in.
    pub group: String,
    /// Seconds until the first poll.
    pub poll_interval_secs: u32,
}

/// `POST /api/v1/device/poll`: once per communication cycle, with what the device is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollRequest {
    /// The version of the active snapshot.
    pub active_version: String,
    /// The agent's version.
    pub agent_version: String,
    /// The device's `compatible` string.
    pub compatible: String,
    /// The deployment the device is installing and has not yet reported final, if any:
    /// the controller answers [`PollAction::Abort`] when it was aborted.
    pub in_progress: Option<u64>,
    /// The version in the inactive slot when it is a snapshot a rollback could
    /// return to; absent when the slot is empty or unusable, and from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive_version: Option<String>,
}

/// What the controller wants the device to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum PollAction {
    /// Nothing to do.
    None,
    /// Install this deployment's bundle.
    Install(Offer),
    /// Abort this deployment (the one the device said it is installing).
    Abort {
        /// The deployment to abort.
        deployment: u64,
    },
}

/// A poll's answer: the action, and when to poll next (with jitter already applied).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollResponse {
    /// What to do.
    #[serde(flatten)]
    pub action: PollAction,
    /// Seconds until the next poll.
    pub poll_interval_secs: u32,
}

/// A deployment offered to a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The deployment's id.
    pub deployment: u64,
    /// The update's version.
    pub version: String,
    /// Where to download the bundle: a path on the controller
    /// (`/api/v1/device/deployments/{id}/bundle`), fetched with the device's credential.
    pub bundle_path: String,
    /// The bundle's size in bytes.
    pub bundle_size: u64,
    /// BLAKE3 of the whole bundle file, lower-case hex (also its `ETag`).
    pub bundle_blake3: String,
}

/// A device's state in one deployment, as the operator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Not started yet (the device has not polled since the deployment was made).
    Pending,
    /// Fetching and verifying the bundle.
    Downloading,
    /// Any phase after the download up to the commit.
    Installing,
    /// Committed: the new snapshot is active.
    Success,
    /// Failed; the device stayed on its old snapshot.
    Failed,
    /// Failed after the swap; the device went back to its old snapshot.
    RolledBack,
    /// Aborted by an operator before it committed.
    Aborted,
}

impl DeviceState {
    /// Every state, in display order.
    pub const ALL: [DeviceState; 7] = [
        DeviceState::Pending,
        DeviceState::Downloading,
        DeviceState::Installing,
        DeviceState::Success,
        DeviceState::Failed,
        DeviceState::RolledBack,
        DeviceState::Aborted,
    ];

    /// The name used in JSON, the database and tables (`rolled_back`).
    pub const fn name(self) -> &'static str {
        match self {
            DeviceState::Pending => "pending",
            DeviceState::Downloading => "downloading",
            DeviceState::Installing => "installing",
            DeviceState::Success => "success",
            DeviceState::Failed => "failed",
            DeviceState::RolledBack => "rolled_back",
            DeviceState::Aborted => "aborted",
        }
    }

    /// Parses [`DeviceState::name`].
    pub fn from_name(s: &str) -> Option<DeviceState> {
        DeviceState::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Whether the device is done with the deployment.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            DeviceState::Success
                | DeviceState::Failed
                | DeviceState::RolledBack
                | DeviceState::Aborted
        )
    }

    /// The state an install in `phase` reports: downloading while fetching, installing
    /// in every later phase (rollback phases included, until the final outcome).
    pub const fn of_phase(phase: Phase) -> DeviceState {
        match phase {
            Phase::Idle => DeviceState::Pending,
            Phase::Fetching => DeviceState::Downloading,
            _ => DeviceState::Installing,
        }
    }

    /// The final state of an outcome.
    pub const fn of_outcome(outcome: Outcome) -> DeviceState {
        match outcome {
            Outcome::Succeeded => DeviceState::Success,
            Outcome::Failed => DeviceState::Failed,
            Outcome::RolledBack => DeviceState::RolledBack,
            Outcome::Aborted => DeviceState::Aborted,
        }
    }
}

/// Bytes done of a total (the download), for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// `POST /api/v1/device/deployments/{id}/report`: a phase change, progress, log output
/// or the final result.
///
/// Idempotent: `seq` rises by one with each new report of a deployment on a device,
/// and a report whose `seq` the controller already has changes nothing (it is
/// answered as a duplicate), so the agent simply resends until it gets an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The report's sequence number within this deployment on this device, from 1.
    pub seq: u64,
    /// The device's state.
    pub state: DeviceState,
    /// The install phase (`Phase::name`: `fetching`, `after`, `swapping-back`, …).
    pub phase: String,
    /// Download progress, while downloading.
    pub progress: Option<Progress>,
    /// A sentence for people: the failure's cause, or what is happening.
    pub message: Option<String>,
    /// Log text produced since the previous report (script output, agent lines), at
    /// most [`MAX_REPORT_LOG`] bytes; may be empty.
    pub log: String,
    /// The version of the active snapshot now.
    pub active_version: String,
    /// A final report of a failure: its cause, and whether another try could
    /// pass, for the controller's retry policy. Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// Why an install failed, as a final report says it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// [`CauseKind::name`](crate::update::CauseKind::name): `network`, `exit`, …
    pub cause: String,
    /// [`CauseKind::class`](crate::update::CauseKind::class).
    pub class: FailureClass,
}

impl Failure {
    /// The failure a report names for `cause`; `None` for an abort.
    pub fn of(cause: CauseKind) -> Option<Failure> {
        Some(Failure {
            cause: cause.name().into(),
            class: cause.class()?,
        })
    }
}

/// The answer to a report (200).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportResponse {
    /// False when the controller already had this `seq` (nothing changed).
    pub accepted: bool,
    /// True when the deployment is closed for this device (its final state is
    /// recorded): stop sending reports for it.
    pub closed: bool,
}

/// The body of every error answer (4xx, 5xx), from either API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What was wrong, and where (a field, an id).
    pub error: String,
}

/// The engine's id for a controller deployment number: the number, big-endian, in the
/// last eight bytes (the first eight are zero; local installs use random ids, whose
/// first eight bytes are almost never all zero).
pub const fn deployment_id(n: u64) -> DeploymentId {
    let b = n.to_be_bytes();
    DeploymentId([
        0, 0, 0, 0, 0, 0, 0, 0, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
    ])
}

/// The controller deployment number of an engine id made by [`deployment_id`].
pub fn deployment_number(id: DeploymentId) -> Option<u64> {
    let (hi, lo) = id.0.split_at(8);
    if hi.iter().any(|&b| b != 0) {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(lo);
    Some(u64::from_be_bytes(b))
}
