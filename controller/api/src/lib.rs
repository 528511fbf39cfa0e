//! The operator API's messages (docs/api.md), shared by the server and the `molt` CLI; the device messages live in `molt_engine::protocol`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub use molt_engine::protocol::{ApiError, DeviceState, Failure};

pub mod plan;

use plan::RolloutPlan;

/// `GET /api/v1/groups` item; also the answer to `POST /api/v1/groups`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The group's name.
    pub name: String,
    /// How many devices it holds.
    pub devices: u64,
    /// The token devices enroll with (`molt-agent enroll --token`).
    pub enrollment_token: String,
    /// The plan of a deployment to the group that names none.
    #[serde(default)]
    pub default_plan: RolloutPlan,
    /// A device that joins the group (enrolls, or is moved in) gets the group's
    /// latest deployment, unless it was aborted.
    #[serde(default = "yes")]
    pub pick_up_joiners: bool,
}

fn yes() -> bool {
    true
}

/// `PATCH /api/v1/groups/{name}` body; what is left out stays.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    /// The plan of a deployment to the group that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_plan: Option<RolloutPlan>,
    /// Whether devices joining the group get its latest deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pick_up_joiners: Option<bool>,
}

/// `POST /api/v1/groups` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewGroup {
    /// 1–64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
}

/// A device as operators see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// `dev_…`.
    pub id: String,
    /// The name it enrolled with.
    pub name: String,
    /// Its group.
    pub group: String,
    /// The agent's version.
    pub agent_version: String,
    /// Its `compatible` string.
    pub compatible: String,
    /// The version of its active snapshot.
    pub active_version: String,
    /// The version a rollback would return to (its inactive snapshot), when it has one.
    #[serde(default)]
    pub inactive_version: Option<String>,
    /// When it last polled (RFC 3339, UTC), if ever.
    pub last_seen: Option<String>,
    /// `idle`, `updating` or `offline` (not seen for three poll intervals).
    pub status: String,
}

/// `GET /api/v1/devices/{id}`: the device and every deployment it took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDetails {
    /// The device as the list shows it.
    #[serde(flatten)]
    pub device: Device,
    /// Its deployments, newest first.
    pub deployments: Vec<DeviceDeployment>,
}

/// One deployment a device took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDeployment {
    /// The deployment.
    pub deployment: u64,
    /// Its update's version.
    pub version: String,
    /// The device's state in it.
    pub state: DeviceState,
    /// The last phase it reported.
    pub phase: String,
    /// Its last message.
    pub message: Option<String>,
    /// When it last changed (RFC 3339, UTC).
    pub updated: String,
}

/// `PATCH /api/v1/devices/{id}` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePatch {
    /// Move the device to this group.
    pub group: Option<String>,
}

/// `DELETE /api/v1/devices/{id}` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRemoved {
    /// The removed device.
    pub device: String,
    /// Its unfinished deployment targets, now aborted.
    pub cancelled: u64,
}

/// A stored update (a signed bundle).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// The update's number.
    pub id: u64,
    /// The bundle's version (unique).
    pub version: String,
    /// The hardware it is for.
    pub compatible: String,
    /// `full` or `patch`.
    pub kind: String,
    /// Bundle size in bytes.
    pub size: u64,
    /// BLAKE3 of the bundle file, hex.
    pub blake3: String,
    /// The operator's comment.
    pub comment: String,
    /// When it was stored (RFC 3339, UTC).
    pub created: String,
    /// The signed recipe (`molt bundle inspect --json` shows the same shape).
    pub recipe: SignedRecipe,
    /// The id (hex) of the key whose signature the controller verified; empty for
    /// an update stored before the controller kept it.
    #[serde(default)]
    pub signer: String,
    /// The deployments that used it, oldest first; one that none used can be deleted.
    #[serde(default)]
    pub deployments: Vec<u64>,
}

/// `DELETE /api/v1/updates/{id}` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateDeleted {
    /// The deleted update.
    pub id: u64,
    /// Its version, free to be uploaded again.
    pub version: String,
}

/// The recipe a bundle's manifest signed, as the controller stores it with the update
/// and serves it, and as `molt bundle inspect --json` prints it. Every field has a
/// default, so a row stored by an older controller still reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignedRecipe {
    /// Run before anything changes.
    pub before: Option<RecipeCommand>,
    /// Packages installed inside the new snapshot.
    pub packages: Vec<RecipePackage>,
    /// Where npm installs, inside the snapshot; none means the app directory.
    pub npm_prefix: Option<String>,
    /// Run once the new snapshot is active.
    pub after: Option<RecipeCommand>,
    /// Must pass after the after command.
    pub health_check: Option<RecipeHealthCheck>,
    /// What a failure does.
    pub rollback: RecipeRollback,
}

/// One of the recipe's commands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecipeCommand {
    /// The shell script.
    pub script: String,
    /// Whether it runs chrooted into the new snapshot.
    pub chroot: bool,
    /// Seconds before it is killed.
    pub timeout: u32,
}

/// A package the recipe installs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecipePackage {
    /// `apt`, `pip`, `pip3` or `npm`.
    pub manager: String,
    /// The package's name.
    pub name: String,
    /// An exact version, if pinned.
    pub version: Option<String>,
    /// A package file shipped in the bundle, if any.
    pub file: Option<String>,
}

/// The recipe's health check.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecipeHealthCheck {
    /// The shell script.
    pub script: String,
    /// Whether it runs chrooted into the new snapshot.
    pub chroot: bool,
    /// Seconds before one attempt is killed.
    pub timeout: u32,
    /// How many times it may run before the update fails.
    pub attempts: u16,
    /// Seconds between attempts.
    pub interval: u32,
}

/// The recipe's rollback policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecipeRollback {
    /// Return to the previous snapshot's files.
    pub revert: bool,
    /// A command run after reverting.
    pub command: Option<RecipeCommand>,
    /// Reboot the device last.
    pub reboot: bool,
}

/// `POST /api/v1/deployments` body: an update to a group, or to a list of devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDeployment {
    /// The update's number.
    pub update: u64,
    /// The target group (or `devices`).
    pub group: Option<String>,
    /// The target devices (or `group`).
    pub devices: Option<Vec<String>>,
    /// A comment for later reference.
    #[serde(default)]
    pub comment: String,
    /// Deploy even to devices that an unfinished deployment of the same update
    /// already targets (otherwise `409`). Left out of the JSON when false, so a
    /// plain request reads as it always did.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub again: bool,
    /// How the deployment reaches its devices; left out, the group's default plan
    /// (all at once for a device list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<RolloutPlan>,
}

/// `POST /api/v1/deployments/{id}/deploy-to-others` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployToOthers {
    /// The other group.
    pub group: String,
    /// The new deployment's plan; left out, the other group's default plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<RolloutPlan>,
}

/// `POST /api/v1/deployments/{id}/resume` body: go on after a halt, with the same
/// plan or a new one for the devices not started yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// Replaces the plan; the devices started so far become its first wave.
    #[serde(default)]
    pub plan: Option<RolloutPlan>,
}

/// Where a deployment's plan stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The plan.
    pub plan: RolloutPlan,
    /// The wave in progress: 0 is the canaries' (empty when the plan names none),
    /// then the plan's waves from 1.
    pub wave: u32,
    /// The plan's waves, the canaries' not counted.
    pub waves: u32,
    /// Why the plan halted the deployment, if it did and no operator resumed it.
    pub halted: Option<String>,
    /// When the wave in progress ends its soak (RFC 3339, UTC), when only the soak is left.
    pub soak_until: Option<String>,
}

impl Rollout {
    /// Where a phased deployment stands, for people: `wave 2 of 3 (2 canaries, 1%,
    /// 10%, 100%); next wave at 95% success; soak 10m; halts at 2 failures in all`.
    /// Only numbers and fixed words: a canary's name is not in it.
    /// `None` for a deployment to every device at once. The soak's end is left to
    /// the caller, which shows times its own way.
    pub fn summary(&self) -> Option<String> {
        if self.plan.is_default() {
            return None;
        }
        let at = if self.wave == 0 {
            "the canaries".to_owned()
        } else {
            format!("wave {} of {}", self.wave, self.waves)
        };
        Some(format!(
            "{at} ({}){}",
            self.plan.sizes().join(", "),
            self.plan.terms()
        ))
    }
}

/// How many devices of a deployment are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Not started.
    pub pending: u64,
    /// Downloading.
    pub downloading: u64,
    /// Installing.
    pub installing: u64,
    /// Committed.
    pub success: u64,
    /// Failed on the old snapshot.
    pub failed: u64,
    /// Failed after the swap and went back.
    pub rolled_back: u64,
    /// Aborted.
    pub aborted: u64,
}

impl Counts {
    /// Adds one device in `state`.
    pub fn add(&mut self, state: DeviceState) {
        *self.slot(state) += 1;
    }

    /// The count of `state`.
    pub fn get(&self, state: DeviceState) -> u64 {
        match state {
            DeviceState::Pending => self.pending,
            DeviceState::Downloading => self.downloading,
            DeviceState::Installing => self.installing,
            DeviceState::Success => self.success,
            DeviceState::Failed => self.failed,
            DeviceState::RolledBack => self.rolled_back,
            DeviceState::Aborted => self.aborted,
        }
    }

    fn slot(&mut self, state: DeviceState) -> &mut u64 {
        match state {
            DeviceState::Pending => &mut self.pending,
            DeviceState::Downloading => &mut self.downloading,
            DeviceState::Installing => &mut self.installing,
            DeviceState::Success => &mut self.success,
            DeviceState::Failed => &mut self.failed,
            DeviceState::RolledBack => &mut self.rolled_back,
            DeviceState::Aborted => &mut self.aborted,
        }
    }

    /// Devices in all.
    pub fn total(&self) -> u64 {
        DeviceState::ALL.iter().map(|s| self.get(*s)).sum()
    }
}

/// One row of "recent updates": a deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The deployment's number.
    pub id: u64,
    /// The update's number.
    pub update: u64,
    /// The update's version.
    pub version: String,
    /// The target group (empty for a device list).
    pub group: String,
    /// `in_progress`, `halted`, `success`, `failed` or `aborted`.
    pub state: String,
    /// Devices per state.
    pub counts: Counts,
    /// When it was made (RFC 3339, UTC).
    pub created: String,
    /// Who made it.
    pub created_by: String,
    /// The operator's comment.
    pub comment: String,
    /// Its plan and where it stands.
    #[serde(default)]
    pub rollout: Rollout,
}

/// One device's line in a deployment's details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentDevice {
    /// `dev_…`.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its state in this deployment.
    pub state: DeviceState,
    /// The last install phase it reported.
    pub phase: String,
    /// Download progress, if reported.
    pub progress: Option<molt_engine::protocol::Progress>,
    /// The last message (the failure's cause).
    pub message: Option<String>,
    /// When it last changed (RFC 3339, UTC).
    pub updated: String,
    /// Its wave: 0 for a canary, then the plan's waves from 1.
    #[serde(default)]
    pub wave: u32,
    /// Why it failed, as its final report named it, and whether another try could pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// `GET /api/v1/deployments/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentDetails {
    /// The recent-updates row.
    #[serde(flatten)]
    pub deployment: Deployment,
    /// Every device of the deployment.
    pub devices: Vec<DeploymentDevice>,
}

/// A device an abort did not apply to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotAborted {
    /// `dev_…`.
    pub device: String,
    /// Its state.
    pub state: DeviceState,
    /// Why (`already committed`, `already finished`).
    pub reason: String,
}

/// `POST /api/v1/deployments/{id}/abort` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortResult {
    /// The deployment.
    pub deployment: u64,
    /// Devices the abort applies to (pending ones at once, others on their next poll).
    pub aborted: Vec<String>,
    /// Devices it does not apply to.
    pub not_aborted: Vec<NotAborted>,
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for a path segment or a query value).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use plan::{parse_waves, HaltScope, Threshold};

    #[test]
    fn a_summary_says_where_the_plan_stands_in_words() {
        assert_eq!(Rollout::default().summary(), None);
        let mut r = Rollout {
            plan: RolloutPlan {
                waves: parse_waves("1%,10%,100%").unwrap(),
                canaries: vec!["gw-\u{1b}[2J".into()],
                success_percent: 95,
                soak_secs: 600,
                halt_at: Some(Threshold::Count(1)),
                halt_scope: HaltScope::Wave,
                abort_in_flight: false,
            },
            wave: 0,
            waves: 3,
            halted: None,
            soak_until: None,
        };
        assert_eq!(
            r.summary().unwrap(),
            "the canaries (1 canary, 1%, 10%, 100%); next wave at 95% success; soak 10m; \
             halts at 1 failure in a wave"
        );
        r.wave = 2;
        r.plan.halt_at = Some(Threshold::Percent(5));
        r.plan.canaries.push("gw-2".into());
        assert_eq!(
            r.summary().unwrap(),
            "wave 2 of 3 (2 canaries, 1%, 10%, 100%); next wave at 95% success; soak 10m; \
             halts at 5% failures in a wave"
        );
    }
}
