//! The device's enrollment with a controller: `molt-agent enroll` asks for a credential, and `<data>/controller.json` (mode 0600) keeps it with the controller's URL and the device id.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use molt_engine::protocol::EnrollRequest;
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::outbox::{self, Outbox};

/// The file in the data directory.
pub const FILE: &str = "controller.json";

/// What enrolling gave the device.
#[derive(Clone, Serialize, Deserialize)]
pub struct Enrollment {
    /// The controller's base URL (`https://host[:port]`, no trailing `/`).
    pub controller: String,
    /// The device's id on the controller (`dev_…`).
    pub device_id: String,
    /// The device's secret for `Authorization: Bearer`.
    pub credential: String,
    /// The group the token enrolled it in.
    pub group: String,
}

impl std::fmt::Debug for Enrollment {
    // The credential stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("controller", &self.controller)
            .field("device_id", &self.device_id)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

fn path(data: &Path) -> PathBuf {
    data.join(FILE)
}

impl Enrollment {
    /// The stored enrollment, or `None` when the device never enrolled.
    pub fn load(data: &Path) -> Result<Option<Enrollment>> {
        let p = path(data);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .with_context(|| format!("{} is damaged (enroll again with --force)", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
        }
    }

    /// Stores the enrollment durably (mode 0600: the credential is a secret).
    pub fn save(&self, data: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| anyhow!("encoding: {e}"))?;
        outbox::write_durable(&path(data), &bytes)
    }

    /// The client of the enrolled controller, with the credential.
    pub fn client(&self, cfg: &Config) -> Result<Client> {
        Client::new(cfg, &self.controller, Some(self.credential.clone()))
    }
}

/// What `molt-agent enroll` needs besides the configuration.
pub struct EnrollArgs<'a> {
    /// The controller's base URL.
    pub controller: &'a str,
    /// The group's enrollment token.
    pub token: &'a str,
    /// The device's name (default: the host name).
    pub name: Option<&'a str>,
    /// The active snapshot's version.
    pub active_version: String,
    /// Replace an existing enrollment.
    pub force: bool,
}

/// The host name, for a device enrolled without `--name`.
pub fn hostname() -> String {
    let u = rustix::system::uname();
    u.nodename().to_string_lossy().into_owned()
}

/// Enrolls the device with the controller and stores the answer in `data`.
pub fn enroll(cfg: &Config, data: &Path, args: &EnrollArgs<'_>) -> Result<Enrollment> {
    let base = args.controller.trim().trim_end_matches('/');
    let rest = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"));
    if rest.is_none_or(str::is_empty) {
        bail!("--controller {base:?}: must be an http:// or https:// URL with a host");
    }
    if let Some(old) = Enrollment::load(data)? {
        if !args.force {
            bail!(
                "already enrolled with {} as {}; pass --force to enroll again (the controller will see a new device)",
                old.controller,
                old.device_id
            );
        }
    }
    let client = Client::new(cfg, base, None)?;
    let req = EnrollRequest {
        token: args.token.to_owned(),
        name: args.name.map_or_else(hostname, str::to_owned),
        compatible: cfg.compatible.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        active_version: args.active_version.clone(),
    };
    let resp = client.enroll(&req).map_err(|e| match e {
        ClientError::Refused { status: 401, .. } => {
            anyhow!("the controller at {base} refused the enrollment token (401): {e}")
        }
        e => anyhow!(e),
    })?;
    let enrollment = Enrollment {
        controller: base.to_owned(),
        device_id: resp.device_id,
        credential: resp.credential,
        group: resp.group,
    };
    // Reports queued for an earlier identity would be refused under the new one.
    Outbox::open(data)?.clear()?;
    enrollment.save(data)?;
    Ok(enrollment)
}
