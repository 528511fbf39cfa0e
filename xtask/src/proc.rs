//! A child process that is stopped, by its own pid, when dropped: the demo's controller and device, and the benchmarks' servers and agents.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// A child process stopped when dropped, by its pid: SIGTERM, then SIGKILL (and
/// SIGKILL to its children, e.g. nginx's worker) if it has not exited after 5 s.
pub(crate) struct Proc {
    child: Child,
    name: &'static str,
    /// Where its output goes.
    pub log: PathBuf,
}

impl Proc {
    /// Guards `child`, called `name` in messages, whose output goes to `log`.
    pub fn new(child: Child, name: &'static str, log: PathBuf) -> Proc {
        Proc { child, name, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Why it is no longer running, if it is not.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status})", self.name)),
            Ok(None) => None,
            Err(e) => Some(format!("{}: {e}", self.name)),
        }
    }

    /// Fails with the end of its log if it has exited.
    pub fn check(&mut self) -> Result<()> {
        if let Some(why) = self.exited() {
            bail!("{why}:\n{}", self.tail());
        }
        Ok(())
    }

    /// The last lines of its log, for when it died.
    pub fn tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops it: SIGTERM lets molt-controller flush and nginx take its worker down.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = self.child.id().to_string();
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        for c in children.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", c]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
