//! The host side of the QEMU test: a real `molt-controller serve` on the host's loopback and the `molt` operator CLI against it, as the end-to-end tests drive them.
//!
//! The controller builds and signs pushed recipes with `<data>/signing.secret`; the
//! guest trusts `<data>/signing.pub`. The process is killed (by its pid) when this
//! value is dropped, so a failing test leaves nothing running.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{cargo, run_cmd};

/// The host binaries, built with the dev profile: `cargo xtask ci` has built them for
/// the tests already, so this costs nothing there (a release build would add minutes).
pub struct Bins {
    controller: PathBuf,
    molt: PathBuf,
}

impl Bins {
    /// Builds `molt-controller` and `molt` if needed.
    pub fn build(root: &Path) -> Result<Bins> {
        run_cmd(cargo(root).args(["build", "-p", "molt-cli", "-p", "molt-controller", "--bins"]))?;
        let dir = root.join("target/debug");
        Ok(Bins {
            controller: dir.join("molt-controller"),
            molt: dir.join("molt"),
        })
    }
}

/// A running controller.
pub struct Controller {
    child: Child,
    /// Its data directory.
    pub data: PathBuf,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    token: String,
    molt: PathBuf,
    home: PathBuf,
}

impl Controller {
    /// Starts `molt-controller serve` on a free loopback port with a 1 s poll interval.
    pub fn start(bins: &Bins, data: &Path, log: &Path) -> Result<Controller> {
        let log_file = fs::File::create(log)?;
        let mut child = Command::new(&bins.controller)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0", "--poll-interval", "1"])
            .env("MOLT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", bins.controller.display()))?;
        let stdout = child.stdout.take().context("controller stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the controller printed no `listening on` line (its log: {})",
                    log.display()
                );
            }
        };
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .with_context(|| format!("no port in the controller's address `{url}`"))?;
        let token = fs::read_to_string(data.join("operator-token"))
            .context("the controller wrote no operator-token")?
            .trim()
            .to_string();
        let home = data.with_file_name("home");
        fs::create_dir_all(&home)?;
        Ok(Controller {
            child,
            data: data.to_path_buf(),
            port,
            token,
            molt: bins.molt.clone(),
            home,
        })
    }

    /// The public key (64 hex digits) the controller signs server-side builds with.
    pub fn signing_key(&self) -> Result<String> {
        let path = self.data.join("signing.pub");
        let key = fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .trim()
            .to_string();
        if key.len() != 64 || !key.chars().all(|c| c.is_ascii_hexdigit()) {
            bail!("{} does not hold 64 hex digits", path.display());
        }
        Ok(key)
    }

    /// Runs `molt ARGS --json` against this controller; its JSON answer.
    pub fn molt_json(&self, args: &[&str]) -> Result<Value> {
        let out = Command::new(&self.molt)
            .args(args)
            .arg("--json")
            .env("MOLT_CONTROLLER", format!("http://127.0.0.1:{}", self.port))
            .env("MOLT_TOKEN", &self.token)
            // No saved login of whoever runs this leaks in.
            .env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .stdin(Stdio::null())
            .output()
            .context("cannot run molt")?;
        if !out.status.success() {
            bail!(
                "`molt {}` failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("`molt {} --json` printed no JSON", args.join(" ")))
    }

    /// Creates `group`; its enrollment token.
    pub fn create_group(&self, group: &str) -> Result<String> {
        self.molt_json(&["groups", "create", group])?;
        let groups = self.molt_json(&["groups"])?;
        groups
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["name"] == group)
            .and_then(|g| g["enrollment_token"].as_str())
            .map(str::to_string)
            .with_context(|| format!("group {group} has no enrollment token: {groups}"))
    }

    /// `molt update push RECIPE`: the controller builds and signs it; the update's id.
    pub fn push(&self, recipe: &Path) -> Result<u64> {
        let path = recipe.to_str().context("recipe path is not UTF-8")?;
        let v = self.molt_json(&["update", "push", path])?;
        v["id"]
            .as_u64()
            .with_context(|| format!("`molt update push` answered without an id: {v}"))
    }

    /// The device named `name`, as `molt devices` lists it.
    pub fn device(&self, name: &str) -> Result<Option<Value>> {
        let v = self.molt_json(&["devices"])?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .find(|d| d["name"] == name)
            .cloned())
    }

    /// `molt deploy UPDATE --device NAME`; the deployment's id.
    pub fn deploy(&self, update: u64, device: &str) -> Result<u64> {
        let v = self.molt_json(&["deploy", &update.to_string(), "--device", device])?;
        v["id"]
            .as_u64()
            .with_context(|| format!("`molt deploy` answered without an id: {v}"))
    }

    /// The state (`pending`, `downloading`, …, `success`, `rolled_back`) of `device`
    /// in deployment `id`, from `molt status ID`.
    pub fn device_state(&self, id: u64, device: &str) -> Result<String> {
        let v = self.molt_json(&["status", &id.to_string()])?;
        let devices = v["devices"]
            .as_array()
            .with_context(|| format!("`molt status {id}` lists no devices: {v}"))?;
        devices
            .iter()
            .find(|d| d["name"] == device || d["device"] == device)
            .and_then(|d| d["state"].as_str())
            .map(str::to_string)
            .with_context(|| format!("deployment {id} has no device {device}: {v}"))
    }

    /// Waits (at most `limit`) until `device` is final in deployment `id`; the state.
    pub fn wait_final(&self, id: u64, device: &str, limit: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let s = self.device_state(id, device)?;
            if FINAL.contains(&s.as_str()) {
                return Ok(s);
            }
            if start.elapsed() > limit {
                bail!("deployment {id}: {device} is still `{s}` after {limit:?}");
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A device's final states in a deployment (docs/api.md).
pub const FINAL: &[&str] = &["success", "failed", "rolled_back", "aborted"];

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
