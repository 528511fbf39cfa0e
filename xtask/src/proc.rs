//! A child process that is stopped, by its own pid, when dropped: the demo's controller and device, and the benchmarks' servers and agents.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

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

    /// Spawns `cmd` (a server that prints `listening on URL` on stdout once it
    /// accepts connections) with stderr to `log`, and waits up to 30 s for that line;
    /// returns the guard and the URL. `echo` prints every stdout line, indented (the
    /// demo shows the server's banner; benchmarks keep quiet).
    pub fn spawn_listening(
        cmd: &mut Command,
        name: &'static str,
        log: PathBuf,
        echo: bool,
    ) -> Result<(Proc, String)> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log)?);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut proc = Proc::new(child, name, log);
        let (tx, rx) = mpsc::channel();
        // Reads to the end, so the server never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if echo {
                    println!("  | {line}");
                }
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => Ok((proc, url)),
            Err(_) => {
                proc.check()?;
                bail!("{name} did not start listening:\n{}", proc.tail())
            }
        }
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
