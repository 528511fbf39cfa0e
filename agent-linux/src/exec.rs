//! Command runner for the recipe's scripts: bash with stdin closed, a clean environment, a timeout that kills the whole process group, bounded output capture.
//!
//! The recipe's commands (before, after, health check, rollback) and the agent's own
//! (reboot, package managers) run on devices nobody is watching, so a command must
//! never wait for a person and never outlive its budget:
//!
//! * **No person to answer.** stdin is `/dev/null`, so `read` fails and `cat` sees
//!   end of file at once. The child calls `setsid(2)`, so it has no controlling
//!   terminal and opening `/dev/tty` fails (`ENXIO`) instead of blocking.
//!   `DEBIAN_FRONTEND=noninteractive` is always set, after the caller's variables,
//!   so no caller can turn debconf's prompts back on.
//! * **A clean, known environment.** The agent's own environment is not passed on:
//!   only [`BASE_ENV`] plus the caller's variables ([`CommandSpec::env`]), so a
//!   script behaves the same under systemd, in a test and from a shell.
//!   bash runs as `bash --noprofile --norc -c SCRIPT NAME`, so no rc file changes
//!   it, and `$0` (the prefix of bash's own error messages) is the command's name.
//! * **A budget for the whole group.** `setsid(2)` also makes the child the leader
//!   of a new process group, which its children (and their children) inherit. At
//!   the deadline the runner sends `SIGTERM` to the group (`kill(2)` with `-pgid`),
//!   waits [`CommandSpec::kill_grace`] for it to empty, then sends `SIGKILL`.
//!   Once it has killed, it stops reading: a process that left the group
//!   (`setsid`, a double-forking daemon) and still holds the output pipes cannot
//!   make the runner wait.
//! * **Cancellable.** With [`CommandSpec::with_cancel`], setting the flag (an
//!   operator abort, seen by another thread) ends the command as a timeout does:
//!   `SIGTERM` to the group, `SIGKILL` after the grace period. The runner looks at
//!   the flag every [`CANCEL_TICK`]; the outcome is [`Status::Cancelled`], so the
//!   caller can tell an abort from a failure.
//! * **Chroot without a chroot binary.** With [`CommandSpec::chroot`], the child
//!   calls `chroot(2)` and `chdir(2)` before `execve(2)`, so the slot needs bash
//!   but not coreutils' `chroot`. It then drops `CAP_SYS_CHROOT` from its
//!   capability bounding set (`prctl(PR_CAPBSET_DROP)`), so bash and everything it
//!   starts lose the capability at `execve(2)`: the classic escape (chroot into a
//!   subdirectory, `chdir("..")` up past the old root) needs it. A root process
//!   keeps other ways out (mounting the host's disk, `ptrace`); containing those
//!   needs namespaces, which belong to whoever prepares the chroot's mounts.
//!
//! # Output capture
//!
//! stdout and stderr are two pipes read by one thread with `poll(2)`, so a
//! command that fills one pipe while the runner waits on the other cannot
//! deadlock. Both go into one log, **interleaved line by line in arrival order**
//! (a partial line waits for its newline, up to [`LINE_MAX`] bytes, so a line of
//! stdout is never cut in two by a line of stderr). Arrival order is what the
//! runner can observe: lines written to both pipes within one wake-up (the same
//! instant, in practice) may come out in either order. Only a single pipe for
//! both would give the exact order, and it would lose which stream a line came
//! from. Each line can also be handed to a callback as it arrives ([`run_with`]),
//! for live logs, with its [`Stream`].
//!
//! The log is bounded by [`CommandSpec::capture_limit`] (the agent's
//! `log_capture_bytes`): it keeps the **first half and the last half** and
//! replaces the middle with `[... K bytes elided ...]`. The head says what the
//! command set out to do, the tail why it failed; memory stays at the limit
//! however much the command prints.
//!
//! # Background processes
//!
//! When the command exits normally, processes it left in the background keep
//! running: an `after` script may start a service that way. If one of them still
//! holds the output pipes, the runner reads for at most [`LINGER_AFTER_EXIT`]
//! more, then closes its end and reports [`CommandOutcome::output_left_open`].
//! Such a process gets `SIGPIPE` on its next write to them, so a script that
//! starts something long-lived should redirect its output (or use systemd).

use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal};

/// The environment every command starts from (the agent's own is not inherited).
pub const BASE_ENV: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
];

/// Set last, over the caller's variables: package managers must never prompt.
pub const FORCED_ENV: &[(&str, &str)] = &[("DEBIAN_FRONTEND", "noninteractive")];

/// Default [`CommandSpec::timeout`] (the recipe's default command timeout).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default [`CommandSpec::kill_grace`].
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
/// Default [`CommandSpec::capture_limit`] (the agent's default `log_capture_bytes`).
pub const DEFAULT_CAPTURE_LIMIT: usize = 64 * 1024;
/// How long output is still read after the command exited while a background
/// process holds the pipes.
pub const LINGER_AFTER_EXIT: Duration = Duration::from_secs(1);
/// Longest line kept whole: a longer run of bytes without a newline is passed on
/// in pieces of this size, so a command printing megabytes without a newline
/// cannot grow the runner's memory.
pub const LINE_MAX: usize = 8 * 1024;

/// How often a running command's cancel flag is looked at: an abort ends a
/// command within this (plus the group's reaction to `SIGTERM`).
pub const CANCEL_TICK: Duration = Duration::from_millis(100);

/// Bytes read from a pipe at once; one read per pipe per wake-up, so a flood on
/// one pipe cannot starve the other or the deadline check.
const READ_CHUNK: usize = 64 * 1024;
/// How often the runner looks when nothing can wake it: kernels before 5.3 have
/// no `pidfd_open(2)`, and an empty process group sends no event.
const TICK: Duration = Duration::from_millis(20);
/// Reads allowed in a final drain after a kill; bounds the drain even if a
/// process outside the group keeps writing.
const DRAIN_READS: usize = 32;

/// One command to run.
#[derive(Clone, Debug)]
pub struct CommandSpec {
    /// What the command is (`before`, `health check`, `reboot`): bash's `$0`, and
    /// the first word of the outcome's [`Display`](fmt::Display).
    pub name: String,
    /// The bash script, run as `bash --noprofile --norc -c SCRIPT NAME`.
    pub script: String,
    /// Run inside a chroot of this directory (`chroot(2)` in the child). The
    /// directory must hold bash and what it needs; mounting `/proc` or `/dev`
    /// there, if the script needs them, is the caller's job.
    pub chroot: Option<PathBuf>,
    /// Working directory; inside the chroot when there is one. Default `/`.
    pub cwd: Option<PathBuf>,
    /// Variables added to [`BASE_ENV`] (they may override it, but not
    /// [`FORCED_ENV`]), such as `MOLT_OLD_SLOT` or `MOLT_PHASE`.
    pub env: Vec<(OsString, OsString)>,
    /// Wall-clock budget; at the deadline the whole process group is killed.
    pub timeout: Duration,
    /// Time between `SIGTERM` and `SIGKILL` when the deadline passes.
    pub kill_grace: Duration,
    /// Bytes of output kept (first and last halves).
    pub capture_limit: usize,
    /// When this flag becomes true the command is killed like a timeout and
    /// ends as [`Status::Cancelled`] (an operator abort).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl CommandSpec {
    /// A command with the defaults: no chroot, working directory `/`, no extra
    /// variables, [`DEFAULT_TIMEOUT`], [`DEFAULT_KILL_GRACE`], [`DEFAULT_CAPTURE_LIMIT`].
    pub fn new(name: impl Into<String>, script: impl Into<String>) -> Self {
        CommandSpec {
            name: name.into(),
            script: script.into(),
            chroot: None,
            cwd: None,
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            kill_grace: DEFAULT_KILL_GRACE,
            capture_limit: DEFAULT_CAPTURE_LIMIT,
            cancel: None,
        }
    }

    /// Kills the command's process group once `flag` is set (checked every
    /// [`CANCEL_TICK`]); a flag already set when the command starts kills it at once.
    pub fn with_cancel(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Adds an environment variable.
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs inside a chroot of `dir`.
    pub fn with_chroot(mut self, dir: impl Into<PathBuf>) -> Self {
        self.chroot = Some(dir.into());
        self
    }

    /// Sets the working directory (inside the chroot, if any).
    pub fn with_cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Sets the number of output bytes kept.
    pub fn with_capture_limit(mut self, bytes: usize) -> Self {
        self.capture_limit = bytes;
        self
    }
}

/// Which pipe a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// It exited with this code.
    Exited(i32),
    /// A signal the runner did not send killed it (a crash, or the script killed itself).
    Signaled(i32),
    /// It ran past its timeout and the runner killed its process group.
    TimedOut {
        /// The timeout it exceeded.
        limit: Duration,
        /// The group did not empty within the grace period after `SIGTERM`, so
        /// `SIGKILL` was sent.
        sigkill: bool,
    },
    /// Its cancel flag was set ([`CommandSpec::with_cancel`]) and the runner
    /// killed its process group.
    Cancelled {
        /// The group did not empty within the grace period after `SIGTERM`.
        sigkill: bool,
    },
}

/// What running a command produced.
#[derive(Clone, Debug)]
pub struct CommandOutcome {
    /// The command's name, from its [`CommandSpec`].
    pub name: String,
    /// How it ended.
    pub status: Status,
    /// From start until its main process ended (for a timeout: until the runner
    /// had it killed).
    pub duration: Duration,
    /// stdout and stderr interleaved by line, at most the capture limit plus the
    /// elision marker; invalid UTF-8 is replaced.
    pub output: String,
    /// Every byte the command wrote to stdout and stderr, kept or not.
    pub output_bytes: u64,
    /// Bytes left out of [`CommandOutcome::output`].
    pub elided_bytes: u64,
    /// A process still held the output pipes when the runner stopped reading.
    pub output_left_open: bool,
}

impl CommandOutcome {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == Status::Exited(0)
    }
}

impl fmt::Display for CommandOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ran = secs(self.duration);
        match self.status {
            Status::Exited(code) => write!(f, "{}: exit {code} after {ran}", self.name)?,
            Status::Signaled(sig) => write!(
                f,
                "{}: killed by {} after {ran}",
                self.name,
                signal_name(sig)
            )?,
            Status::TimedOut { limit, sigkill } => write!(
                f,
                "{}: timed out after {ran} (limit {}), process group killed with {}",
                self.name,
                secs(limit),
                if sigkill { "SIGKILL" } else { "SIGTERM" }
            )?,
            Status::Cancelled { sigkill } => write!(
                f,
                "{}: cancelled after {ran}, process group killed with {}",
                self.name,
                if sigkill { "SIGKILL" } else { "SIGTERM" }
            )?,
        }
        if self.output_left_open {
            f.write_str("; a background process kept its output open")?;
        }
        Ok(())
    }
}

/// A duration as seconds with one decimal: "0.4 s".
fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// `SIGTERM` for 15; a number for signals without a common name.
fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    name.to_owned()
}

/// Runs `spec` to completion (or to its timeout) and reports how it went.
///
/// An `Err` means the command could not be started (no bash, a failed
/// `chroot(2)`, a missing working directory) or the runner itself failed; a
/// command that ran and failed is an `Ok` whose [`CommandOutcome::success`] is false.
pub fn run(spec: &CommandSpec) -> Result<CommandOutcome> {
    run_with(spec, |_, _| {})
}

/// Like [`run`], and hands each line of output to `on_line` as it arrives
/// (without its newline; invalid UTF-8 replaced; lines longer than [`LINE_MAX`]
/// in pieces). It runs on the calling thread, between reads.
pub fn run_with(
    spec: &CommandSpec,
    mut on_line: impl FnMut(Stream, &str),
) -> Result<CommandOutcome> {
    let place = match &spec.chroot {
        Some(dir) => format!(" in a chroot of {}", dir.display()),
        None => String::new(),
    };
    if let Some(dir) = &spec.chroot {
        // The child can report only an errno, and ENOENT from chroot(2), chdir(2)
        // and execve(2) reads the same; naming the usual culprit here saves a
        // guess. (A check, not a guarantee: the child still fails safely if the
        // directory goes away in between.)
        if !dir.is_dir() {
            anyhow::bail!(
                "cannot start `{}`{place}: {} is not a directory",
                spec.name,
                dir.display()
            );
        }
    }
    let mut child = spawn(spec).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::NotFound {
            if spec.chroot.is_some() {
                " (is bash installed there, and does the working directory exist in it?)"
            } else {
                " (is bash installed, and does the working directory exist?)"
            }
        } else {
            ""
        };
        anyhow::Error::new(e).context(format!("cannot start `{}`{place}{hint}", spec.name))
    })?;
    let pid = Pid::from_child(&child);
    let outcome = supervise(spec, &mut child, pid, &mut on_line);
    if outcome.is_err() {
        // The runner itself failed (poll, read or wait returned an error the
        // loop cannot handle). Leave nothing behind: no running group, no zombie.
        signal_group(pid, Signal::KILL);
        let _ = child.wait();
    }
    outcome
}

/// Reads the output of the started `child` (leader of process group `pid`),
/// enforces the deadline and collects the outcome.
fn supervise<F: FnMut(Stream, &str)>(
    spec: &CommandSpec,
    child: &mut Child,
    pid: Pid,
    on_line: &mut F,
) -> Result<CommandOutcome> {
    let mut s = Supervision::new(spec, child, pid, on_line)?;
    loop {
        s.reap()?;
        let now = Instant::now();
        let next = match s.killing {
            None => s.while_running(now)?,
            Some((term_at, _)) => s.while_killing(term_at, now)?,
        };
        match next {
            Next::Done => break,
            Next::Check => continue,
            Next::Wait => s.wait_and_read(now)?,
        }
    }
    s.drain()?;
    s.outcome()
}

/// What the supervision loop does after a check.
enum Next {
    /// The command is over: drain the pipes and report.
    Done,
    /// Something changed (a signal went out): check again at once.
    Check,
    /// Nothing to do until output, the child's exit or the next deadline.
    Wait,
}

/// One command's supervision: its pipes, its exit, and the kill in progress.
struct Supervision<'a, F: FnMut(Stream, &str)> {
    spec: &'a CommandSpec,
    child: &'a mut Child,
    pid: Pid,
    start: Instant,
    deadline: Option<Instant>,
    pipes: Vec<Pipe>,
    pidfd: Option<OwnedFd>,
    sink: Sink<'a, F>,
    buf: Vec<u8>,
    exited: Option<(ExitStatus, Instant)>,
    /// Set when the deadline passed (or the cancel flag was set): when SIGTERM
    /// went out, and whether SIGKILL followed.
    killing: Option<(Instant, bool)>,
    cancelled: bool,
    left_open: bool,
}

impl<'a, F: FnMut(Stream, &str)> Supervision<'a, F> {
    fn new(
        spec: &'a CommandSpec,
        child: &'a mut Child,
        pid: Pid,
        on_line: &'a mut F,
    ) -> Result<Self> {
        let start = Instant::now();
        let mut pipes = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            pipes.push(Pipe::new(OwnedFd::from(out), Stream::Stdout)?);
        }
        if let Some(err) = child.stderr.take() {
            pipes.push(Pipe::new(OwnedFd::from(err), Stream::Stderr)?);
        }
        // pidfd_open(2) (Linux 5.3+) makes the child's exit an event poll(2) can
        // wait for; without it the runner looks every TICK.
        let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok();
        Ok(Supervision {
            spec,
            child,
            pid,
            start,
            deadline: start.checked_add(spec.timeout),
            pipes,
            pidfd,
            sink: Sink {
                capture: Capture::new(spec.capture_limit),
                on_line,
                total: 0,
            },
            buf: vec![0u8; READ_CHUNK],
            exited: None,
            killing: None,
            cancelled: false,
            left_open: false,
        })
    }

    /// Reaps the main process if it has exited (without waiting).
    fn reap(&mut self) -> Result<()> {
        if self.exited.is_none() {
            if let Some(status) = self.child.try_wait().context("waitpid")? {
                self.exited = Some((status, Instant::now()));
            }
        }
        Ok(())
    }

    /// Before any kill: done when the command exited and its output closed (or
    /// stayed open too long); a cancel or the deadline starts the kill.
    fn while_running(&mut self, now: Instant) -> Result<Next> {
        let open = self.pipes.iter().any(|p| p.open);
        if let Some((_, at)) = self.exited {
            if !open {
                return Ok(Next::Done);
            }
            if now >= at + LINGER_AFTER_EXIT {
                self.left_open = true;
                return Ok(Next::Done);
            }
        } else if self.spec.cancelled() {
            tracing::warn!(
                command = %self.spec.name,
                "cancelled: sending SIGTERM to its process group"
            );
            self.terminate(now);
            self.cancelled = true;
            return Ok(Next::Check);
        } else if self.deadline.is_some_and(|d| now >= d) {
            tracing::warn!(
                command = %self.spec.name,
                "timed out after {}: sending SIGTERM to its process group",
                secs(self.spec.timeout)
            );
            self.terminate(now);
            return Ok(Next::Check);
        }
        Ok(Next::Wait)
    }

    /// SIGTERM to the whole group, the start of a kill.
    fn terminate(&mut self, now: Instant) {
        signal_group(self.pid, Signal::TERM);
        self.killing = Some((now, false));
    }

    /// After SIGTERM at `term_at`: done when the group is gone; SIGKILL (and a
    /// reap) once the grace period ran out.
    fn while_killing(&mut self, term_at: Instant, now: Instant) -> Result<Next> {
        // Done once the main process is gone and nothing else is left in the
        // group; zombies count as members until their parent reaps them.
        let group_gone = self.exited.is_some()
            && matches!(
                rustix::process::test_kill_process_group(self.pid),
                Err(Errno::SRCH)
            );
        if group_gone {
            return Ok(Next::Done);
        }
        if now >= term_at + self.spec.kill_grace {
            tracing::warn!(command = %self.spec.name, "still running after SIGTERM: sending SIGKILL");
            signal_group(self.pid, Signal::KILL);
            self.killing = Some((term_at, true));
            if self.exited.is_none() {
                // SIGKILL cannot be caught, so this wait is short (unless the
                // process is stuck in the kernel, which no signal fixes).
                let status = self.child.wait().context("waitpid")?;
                self.exited = Some((status, Instant::now()));
            }
            return Ok(Next::Done);
        }
        Ok(Next::Wait)
    }

    /// When the loop must look again even if nothing happens: the linger after
    /// exit, the deadline, the cancel flag's tick, the kill's grace period.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        match (self.killing, self.exited) {
            (None, Some((_, exit_at))) => at(exit_at + LINGER_AFTER_EXIT),
            (None, None) => {
                if let Some(d) = self.deadline {
                    at(d);
                }
                if self.spec.cancel.is_some() {
                    at(now + CANCEL_TICK);
                }
            }
            (Some((term_at, _)), _) => {
                at(term_at + self.spec.kill_grace);
                at(now + TICK);
            }
        }
        if self.exited.is_none() && self.pidfd.is_none() {
            at(now + TICK);
        }
        wake
    }

    /// Sleeps until output, the child's exit, or the next thing to check, and
    /// reads what arrived.
    fn wait_and_read(&mut self, now: Instant) -> Result<()> {
        let wake = self.next_wake(now);
        let wait_for_exit = if self.exited.is_none() {
            self.pidfd.as_ref()
        } else {
            None
        };
        let ready = poll(
            &self.pipes,
            wait_for_exit,
            wake.map(|w| w.saturating_duration_since(now)),
        )?;
        for (pipe, ready) in self.pipes.iter_mut().zip(ready) {
            if ready {
                pipe.read_once(&mut self.buf, &mut self.sink)?;
            }
        }
        Ok(())
    }

    /// After a kill, or when something outside the group holds the pipes, takes
    /// only what is already buffered: waiting for end of file could be forever.
    fn drain(&mut self) -> Result<()> {
        for pipe in &mut self.pipes {
            for _ in 0..DRAIN_READS {
                if !pipe.open || !pipe.read_once(&mut self.buf, &mut self.sink)? {
                    break;
                }
            }
            if pipe.open {
                self.left_open = true;
            }
            pipe.flush(&mut self.sink);
        }
        Ok(())
    }

    /// The outcome: how the command ended, how long it took, what it wrote.
    fn outcome(self) -> Result<CommandOutcome> {
        let (status, ended) = match self.exited {
            Some(e) => e,
            None => {
                // Unreachable by construction (every way out of the loop has a
                // status), but a wait is the honest fallback rather than a panic.
                let status = self.child.wait().context("waitpid")?;
                (status, Instant::now())
            }
        };
        let status = match self.killing {
            Some((_, sigkill)) if self.cancelled => Status::Cancelled { sigkill },
            Some((_, sigkill)) => Status::TimedOut {
                limit: self.spec.timeout,
                sigkill,
            },
            None => match (status.code(), status.signal()) {
                (Some(code), _) => Status::Exited(code),
                (None, Some(sig)) => Status::Signaled(sig),
                (None, None) => Status::Exited(-1),
            },
        };
        let total = self.sink.total;
        let (output, elided_bytes) = self.sink.capture.finish();
        Ok(CommandOutcome {
            name: self.spec.name.clone(),
            status,
            duration: ended.saturating_duration_since(self.start),
            output,
            output_bytes: total,
            elided_bytes,
            output_left_open: self.left_open,
        })
    }
}

/// Starts bash with the spec's environment, stdin on `/dev/null`, stdout and
/// stderr on pipes, in a new session (and chroot).
fn spawn(spec: &CommandSpec) -> io::Result<Child> {
    let mut cmd = Command::new("bash");
    cmd.args(["--noprofile", "--norc", "-c"])
        .arg(&spec.script)
        .arg(&spec.name)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in BASE_ENV {
        cmd.env(k, v);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    for (k, v) in FORCED_ENV {
        cmd.env(k, v);
    }

    // Everything the child needs is allocated here, before fork: between fork and
    // execve only async-signal-safe calls are allowed, so no allocation.
    let root = spec
        .chroot
        .as_deref()
        .map(|p| c_path(p.as_os_str()))
        .transpose()?;
    let cwd = c_path(
        spec.cwd
            .as_deref()
            .map_or(OsStr::new("/"), |p| p.as_os_str()),
    )?;
    let pre_exec = move || -> io::Result<()> {
        // setsid(2): a new session and process group led by the child, so the
        // deadline's kill(-pgid) reaches every descendant, and no controlling
        // terminal for anything to prompt on.
        rustix::process::setsid()?;
        if let Some(root) = &root {
            // chroot(2) then chdir(2): chroot alone leaves the working directory
            // outside the new root.
            rustix::process::chroot(root.as_c_str())?;
        }
        rustix::process::chdir(cwd.as_c_str())?;
        if root.is_some() {
            // prctl(PR_CAPBSET_DROP, CAP_SYS_CHROOT): bash and its children lose the
            // capability at execve(2), which closes the chroot-in-a-chroot escape.
            rustix::thread::remove_capability_from_bounding_set(
                rustix::thread::CapabilitySet::SYS_CHROOT,
            )?;
        }
        Ok(())
    };
    // SAFETY: the closure makes only raw system calls (setsid, chroot, chdir,
    // prctl) on memory prepared before the fork; it does not allocate, lock or
    // touch state shared with other threads, as `pre_exec` requires.
    unsafe {
        cmd.pre_exec(pre_exec);
    }
    cmd.spawn()
}

/// A path as a C string, refusing interior NULs.
fn c_path(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {p:?} contains a NUL byte"),
        )
    })
}

/// kill(2) to the process group `pgid`. A group that is already gone is fine.
fn signal_group(pgid: Pid, sig: Signal) {
    if let Err(e) = rustix::process::kill_process_group(pgid, sig) {
        if e != Errno::SRCH {
            tracing::warn!("kill(-{}, {:?}): {e}", pgid.as_raw_nonzero(), sig);
        }
    }
}

/// poll(2) on the open pipes and, if given, the child's pidfd; returns which
/// pipes are ready (readable, closed or in error). `None` waits without limit.
fn poll(pipes: &[Pipe], pidfd: Option<&OwnedFd>, timeout: Option<Duration>) -> Result<Vec<bool>> {
    let mut fds: Vec<libc::pollfd> = pipes
        .iter()
        .map(|p| libc::pollfd {
            // A negative fd is ignored by poll(2): closed pipes stay in place so
            // indices line up with `pipes`.
            fd: if p.open { p.fd.as_raw_fd() } else { -1 },
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    if let Some(fd) = pidfd {
        fds.push(libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    // Round up: rounding down would wake just before the deadline and spin.
    let ms = timeout.map_or(-1, |t| {
        i32::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
    });
    loop {
        // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err).context("poll");
        }
    }
    Ok(fds
        .iter()
        .take(pipes.len())
        .map(|f| f.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect())
}

/// Where output goes: the bounded capture, the line callback, the byte count.
struct Sink<'a, F: FnMut(Stream, &str)> {
    capture: Capture,
    on_line: &'a mut F,
    total: u64,
}

impl<F: FnMut(Stream, &str)> Sink<'_, F> {
    /// One line (or a piece of an over-long one) of `stream`; `bytes` include its newline if it has one.
    fn line(&mut self, stream: Stream, bytes: &[u8]) {
        self.capture.push(bytes);
        let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        (self.on_line)(stream, &String::from_utf8_lossy(text));
    }
}

/// The read end of stdout or stderr, and the partial line read from it so far.
struct Pipe {
    fd: OwnedFd,
    stream: Stream,
    open: bool,
    pending: Vec<u8>,
}

impl Pipe {
    /// Takes the pipe and makes reads non-blocking, so a drain never waits.
    fn new(fd: OwnedFd, stream: Stream) -> Result<Self> {
        let flags = rustix::fs::fcntl_getfl(&fd).context("fcntl(F_GETFL)")?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)
            .context("fcntl(F_SETFL, O_NONBLOCK)")?;
        Ok(Pipe {
            fd,
            stream,
            open: true,
            pending: Vec::new(),
        })
    }

    /// One read(2); returns whether it got bytes. End of file closes the pipe.
    fn read_once<F: FnMut(Stream, &str)>(
        &mut self,
        buf: &mut [u8],
        sink: &mut Sink<'_, F>,
    ) -> Result<bool> {
        let n = loop {
            match rustix::io::read(&self.fd, &mut *buf) {
                Ok(n) => break n,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(false),
                Err(e) => return Err(io::Error::from(e)).context("read from a command's output"),
            }
        };
        if n == 0 {
            self.open = false;
            self.flush(sink);
            return Ok(false);
        }
        let data = buf.get(..n).unwrap_or_default();
        sink.total += n as u64;
        self.feed(data, sink);
        Ok(true)
    }

    /// Splits `data` into lines, completing the pending one first.
    fn feed<F: FnMut(Stream, &str)>(&mut self, mut data: &[u8], sink: &mut Sink<'_, F>) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            let (line, rest) = data.split_at(i + 1);
            if self.pending.is_empty() {
                sink.line(self.stream, line);
            } else {
                self.pending.extend_from_slice(line);
                sink.line(self.stream, &self.pending);
                self.pending.clear();
            }
            data = rest;
        }
        self.pending.extend_from_slice(data);
        while self.pending.len() >= LINE_MAX {
            let piece: Vec<u8> = self.pending.drain(..LINE_MAX).collect();
            sink.line(self.stream, &piece);
        }
    }

    /// Passes on a last line that has no newline.
    fn flush<F: FnMut(Stream, &str)>(&mut self, sink: &mut Sink<'_, F>) {
        if !self.pending.is_empty() {
            let last = std::mem::take(&mut self.pending);
            sink.line(self.stream, &last);
        }
    }
}

/// The bounded log: the first `limit / 2` bytes, the last `limit - limit / 2`,
/// and a count of what fell between them.
struct Capture {
    head: Vec<u8>,
    head_cap: usize,
    tail: std::collections::VecDeque<u8>,
    tail_cap: usize,
    elided: u64,
}

impl Capture {
    fn new(limit: usize) -> Self {
        let head_cap = limit / 2;
        Capture {
            head: Vec::new(),
            head_cap,
            tail: std::collections::VecDeque::new(),
            tail_cap: limit - head_cap,
            elided: 0,
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.head.extend_from_slice(now);
            bytes = later;
        }
        if bytes.len() >= self.tail_cap {
            self.elided += (self.tail.len() + bytes.len() - self.tail_cap) as u64;
            self.tail.clear();
            self.tail
                .extend(bytes.get(bytes.len() - self.tail_cap..).unwrap_or_default());
            return;
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..overflow);
        self.elided += overflow as u64;
        self.tail.extend(bytes);
    }

    /// The log as text, with the elision marker where bytes were left out.
    fn finish(self) -> (String, u64) {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        if self.elided > 0 {
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("[... {} bytes elided ...]\n", self.elided));
        }
        let tail: Vec<u8> = self.tail.into_iter().collect();
        out.push_str(&String::from_utf8_lossy(&tail));
        (out, self.elided)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_command_is_killed_and_says_so() {
        let flag = Arc::new(AtomicBool::new(false));
        let spec = CommandSpec::new("long", "echo started; sleep 30")
            .with_timeout(Duration::from_secs(60))
            .with_cancel(flag.clone());
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            flag.store(true, Ordering::SeqCst);
        });
        let out = run(&spec).expect("bash runs");
        setter.join().expect("the setter thread");
        assert_eq!(out.status, Status::Cancelled { sigkill: false }, "{out}");
        assert!(out.duration < Duration::from_secs(5), "{out}");
        assert!(out.output.contains("started"), "{}", out.output);
        assert!(out.to_string().contains("cancelled"), "{out}");
    }

    #[test]
    fn a_flag_set_before_the_start_kills_at_once() {
        let spec =
            CommandSpec::new("never", "sleep 30").with_cancel(Arc::new(AtomicBool::new(true)));
        let out = run(&spec).expect("bash runs");
        assert!(matches!(out.status, Status::Cancelled { .. }), "{out}");
        assert!(out.duration < Duration::from_secs(5), "{out}");
    }
}
