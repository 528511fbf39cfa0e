//! Helpers for the end-to-end install tests: a device in a temp root driven through the real `molt-agent` binary, and what its status says; bundles, keys, trees and scratch file systems come from `molt-test-support`.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::SigningKey;

// Not every test that includes this module uses all of them (as with `dead_code` above).
#[allow(unused_imports)]
pub use molt_test_support::{
    bundle::*, escape::assert_inert, keys::*, noise, raw::*, root_or_skip, scratch::*, tree::*,
};

/// The agent binary under test.
pub const AGENT: &str = env!("CARGO_BIN_EXE_molt-agent");

/// The outcome of one agent run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub out: String,
}

impl Run {
    pub fn killed(&self) -> bool {
        self.signal == Some(9)
    }
}

/// Configuration knobs of a test device.
#[derive(Clone, Default)]
pub struct Opts {
    /// Extra trusted keys (beside [`key()`]).
    pub extra_keys: Vec<SigningKey>,
    pub revoked: Vec<SigningKey>,
    /// Lines for the `[limits]` table.
    pub limits: Vec<String>,
    pub trial_boots: Option<u8>,
}

/// A device: a temp root with a config, driven through the agent binary.
pub struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    /// A new device for a test that needs root, or `None` when the test is skipped
    /// (not root): the opening every such test shares.
    pub fn rooted() -> Option<Device> {
        root_or_skip().then(Device::new)
    }

    pub fn new() -> Device {
        Device::with(Opts::default())
    }

    pub fn with(o: Opts) -> Device {
        Device::with_in(o, &std::env::temp_dir())
    }

    /// A device whose root is a new directory inside `parent` (a scratch file system).
    pub fn in_dir(parent: &Path) -> Device {
        Device::with_in(Opts::default(), parent)
    }

    fn with_in(o: Opts, parent: &Path) -> Device {
        let dir = tempfile::tempdir_in(parent).unwrap();
        let root = dir.path().display().to_string();
        let mut keys = vec![pub_hex(&key())];
        keys.extend(o.extra_keys.iter().map(pub_hex));
        let quote = |v: Vec<String>| {
            v.iter()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut cfg = format!(
            "root = \"{root}\"\ncompatible = \"{BOARD}\"\ntrusted_keys = [{}]\nrevoked_keys = [{}]\nreboot_command = \"echo rebooting-now; touch {root}/markers/rebooted\"\n",
            quote(keys),
            quote(o.revoked.iter().map(id_hex).collect()),
        );
        if let Some(t) = o.trial_boots {
            writeln!(cfg, "trial_boots = {t}").unwrap();
        }
        cfg.push_str("\n[timeouts]\ncommand_secs = 10\ndownload_stall_secs = 5\n");
        if !o.limits.is_empty() {
            cfg.push_str("\n[limits]\n");
            for l in &o.limits {
                writeln!(cfg, "{l}").unwrap();
            }
        }
        fs::create_dir_all(dir.path().join("markers")).unwrap();
        fs::write(dir.path().join("agent.toml"), cfg).unwrap();
        Device { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn data(&self) -> PathBuf {
        self.root().join("var/lib/molt")
    }

    /// A marker file path scripts may touch.
    pub fn marker(&self, name: &str) -> PathBuf {
        self.root().join("markers").join(name)
    }

    /// Runs the agent with `args`; `crash_at` sets the kill -9 test hook.
    pub fn agent(&self, args: &[&str], crash_at: Option<&str>) -> Run {
        match crash_at {
            Some(p) => self.agent_env(args, &[("MOLT_TEST_CRASH_AT", p)]),
            None => self.agent_env(args, &[]),
        }
    }

    /// The agent with this device's config, logging at `log` (`MOLT_LOG`), and none
    /// of the test hooks the test process itself may have in its environment.
    pub fn command(&self, log: &str) -> Command {
        let mut c = Command::new(AGENT);
        c.arg("--config")
            .arg(self.root().join("agent.toml"))
            .env("MOLT_LOG", log);
        for hook in [
            "MOLT_TEST_CRASH_AT",
            "MOLT_TEST_CRASH_AT_BYTE",
            "MOLT_TEST_CHECKPOINT_BYTES",
            "MOLT_TEST_PAUSE_AT",
        ] {
            c.env_remove(hook);
        }
        c
    }

    /// Runs the agent with `args` and extra environment (test hooks).
    pub fn agent_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.command("warn");
        c.args(args).envs(env.iter().copied());
        let o = c.output().unwrap();
        Run {
            code: o.status.code(),
            signal: o.status.signal(),
            out: format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        }
    }

    /// Writes `bytes` to a file in the root and installs it.
    pub fn install_bytes(&self, name: &str, bytes: &[u8], crash_at: Option<&str>) -> Run {
        let p = self.root().join("bundles").join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        self.agent(&["install", p.to_str().unwrap()], crash_at)
    }

    /// Builds and installs `spec`, expecting success.
    pub fn install_ok(&self, spec: &Spec) {
        let r = self.install_bytes(&format!("{}.molt", spec.version), &build(spec), None);
        assert_eq!(
            r.code,
            Some(0),
            "installing {} should succeed: {}\n{}",
            spec.version,
            r.out,
            self.status()
        );
    }

    /// Builds and installs `spec` from a file called `name`, expecting the agent to
    /// refuse it or fail (exit 1).
    pub fn install_fails(&self, name: &str, spec: &Spec) -> Run {
        let r = self.install_bytes(name, &build(spec), None);
        assert_eq!(r.code, Some(1), "{}", r.out);
        r
    }

    /// Asserts the last final report (the `status` file) says `want`.
    pub fn assert_last_result(&self, want: &str) {
        let last = self.last_result();
        assert!(last.contains(want), "{last}");
    }

    /// Where `current` points (relative, as stored).
    pub fn current_link(&self) -> PathBuf {
        fs::read_link(self.data().join("current")).unwrap()
    }

    /// The active snapshot's directory.
    pub fn current_dir(&self) -> PathBuf {
        self.data().join(self.current_link())
    }

    /// The active snapshot's tree.
    pub fn tree(&self) -> Tree {
        scan(&self.current_dir())
    }

    /// The active snapshot's fingerprint.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.current_dir())
    }

    /// `molt-agent recover`: settles an interrupted install (the next start after a
    /// crash), then prints the status.
    pub fn recover(&self) -> String {
        let r = self.agent(&["recover"], None);
        assert_eq!(r.code, Some(0), "recover failed: {}", r.out);
        r.out
    }

    /// `molt-agent status`: read only, settles nothing.
    pub fn status(&self) -> String {
        let r = self.agent(&["status"], None);
        assert_eq!(r.code, Some(0), "status failed: {}", r.out);
        r.out
    }

    /// The last final report (the `status` file).
    pub fn last_result(&self) -> String {
        fs::read_to_string(self.data().join("status")).unwrap_or_default()
    }

    /// The install log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.data().join("install.log")).unwrap_or_default()
    }
}

/// The pid a test script wrote to `file`.
pub fn read_pid(file: &Path) -> u32 {
    fs::read_to_string(file).unwrap().trim().parse().unwrap()
}

/// Whether process `pid` is still running (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The `install` line of a status report (the journal's phase).
pub fn install_phase(status: &str) -> &str {
    status
        .lines()
        .find_map(|l| l.strip_prefix("install"))
        .map(str::trim)
        .unwrap_or("?")
}

/// The slot the status report marks active (`a` or `b`).
pub fn active_slot(status: &str) -> Option<String> {
    status
        .lines()
        .find(|l| l.starts_with("slot ") && l.ends_with("(active)"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
}
