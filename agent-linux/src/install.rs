//! The install pipeline: drives the engine's update state machine and carries out each action it returns on this device.
//!
//! The contract (docs/state-machine.md): feed an event to `step`, journal the
//! next state durably, then carry out its actions; each action's result is the
//! next event. Because the state is journaled before anything happens, a crash
//! at any instant leaves every decision recorded and only effects possibly
//! missing, and `Event::Restarted` on the next start decides what to redo.
//!
//! # Data directory
//!
//! ```text
//! <data_dir>/
//!   current -> slots/a     the active snapshot (a symlink swapped by rename)
//!   slots/a/  slots/b/     the two snapshots
//!   slot.rec               the engine's A/B record (two CRC copies)
//!   journal                the update state (two CRC copies)
//!   staging/               the in-flight bundle: manifest, head, source, download
//!                          checkpoint and `.molt/` files
//!   install.log            what every phase and command did (bounded)
//!   status                 the last report, one line
//!   slot-note              what became of the inactive slot's previous snapshot
//!   boot_id                the boot this agent last ran in (trial counting)
//!   lock                   one agent at a time
//! ```
//!
//! # Driven by the daemon
//!
//! The daemon (`crate::daemon`) adds three things through [`Hooks`]: a
//! [`Reporter`] that receives every phase, progress, log line and final result
//! of a controller deployment (and queues them durably for the controller), the
//! credential for the controller's bundle URLs, and an abort flag. The driver
//! looks at the flag before each outstanding action and after it returns, and
//! feeds `Event::Abort` once; long actions (the download, the before and after
//! commands, the health check, the package managers) watch the flag themselves
//! and stop early, answering with a failure whose cause the machine then
//! records as the abort. `Event::Reported` for a controller deployment is fed
//! only by [`Device::acknowledge`], when the controller has the final report.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use molt_engine::bundle::Manifest;
use molt_engine::protocol::{deployment_id, deployment_number};
use molt_engine::slot::{Loaded, Slot, SlotRecord, Status};
use molt_engine::text::Escaped;
use molt_engine::update::{
    settle_orphaned_trial, step, Action, Attempt, Budget, Cause, CauseKind, DeploymentId, Event,
    OrphanedTrial, Outcome, Phase, Report, Retry, RetryAction, State,
};

use crate::config::Config;
use crate::exec::{self, CommandSpec, Status as ExitStatus};
use crate::fsops::{self, SlotDir};
use crate::journal::Journal;
use crate::mounts::{self, BindSpec, ChrootMounts};
use crate::packages;
use crate::perms;
use crate::slotfile::FileStore;

mod download;
mod hooks;
mod note;
mod status;
mod writer;

pub use hooks::{Busy, Hooks, Reporter};
pub use status::peek_status;

/// Names inside the data directory.
pub mod layout {
    /// The active-snapshot link.
    pub const CURRENT: &str = "current";
    /// The slots' parent directory.
    pub const SLOTS: &str = "slots";
    /// The slot record file.
    pub const RECORD: &str = "slot.rec";
    /// The update-state journal.
    pub const JOURNAL: &str = "journal";
    /// Staging for the in-flight bundle.
    pub const STAGING: &str = "staging";
    /// The signed manifest of the in-flight bundle, kept for the phases after a restart.
    pub const MANIFEST: &str = "staging/manifest.bin";
    /// Where the in-flight bundle comes from (a path or URL), for resuming.
    pub const SOURCE: &str = "staging/source";
    /// Bundle-internal files (`.molt/`).
    pub const BUNDLE_FILES: &str = "staging/bundle";
    /// The bundle's first bytes (header, signatures, manifest), which a resume verifies again.
    pub const HEAD: &str = "staging/head";
    /// The last download checkpoint (decoder and extractor state at a chunk boundary).
    pub const CHECKPOINT: &str = "staging/checkpoint";
    /// The install log.
    pub const LOG: &str = "install.log";
    /// The last report.
    pub const STATUS: &str = "status";
    /// The boot id the agent last ran in.
    pub const BOOT_ID: &str = "boot_id";
    /// The lock file.
    pub const LOCK: &str = "lock";
    /// The bind mounts of a packages stage in progress (removed when they are undone).
    pub const MOUNTS: &str = "mounts";
    /// What became of the inactive slot's previous snapshot, and why (install/note.rs).
    pub const SLOT_NOTE: &str = "slot-note";
}

/// The slot directory's name (`a` or `b`).
pub fn slot_name(s: Slot) -> &'static str {
    match s {
        Slot::A => "a",
        Slot::B => "b",
    }
}

/// How logs name a deployment: the controller's number, or a local install's random id.
fn label(d: DeploymentId) -> String {
    deployment_number(d).map_or_else(|| d.to_string(), |n| n.to_string())
}

/// Largest install log before it is cut to its second half.
const LOG_LIMIT: u64 = 1024 * 1024;

/// Cuts the run of NUL bytes a power cut can leave at the end of the install log
/// and returns how many there were. The log is appended without fsync (it is a
/// record for people, not state); after a cut the file system may keep its new
/// size but not the data, which reads back as zeros.
fn trim_trailing_nuls(path: &Path) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let block = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(block)?;
        match block.iter().rposition(|&b| b != 0) {
            Some(i) => {
                end = start + i as u64 + 1;
                break;
            }
            None => end = start,
        }
    }
    if end < len {
        f.set_len(end)?;
    }
    Ok(len - end)
}

/// Download progress reports at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The device: configuration, record, journal and the state machine's state.
pub struct Device {
    cfg: Config,
    data: PathBuf,
    store: FileStore,
    record: SlotRecord,
    journal: Journal,
    state: State,
    /// The human-readable reason of the last failure, for the log and the final report.
    last_error: Option<String>,
    /// Test hook: SIGKILL ourselves right after journaling entry into this phase.
    crash_at: Option<String>,
    /// Test hook: sleep this long before the outstanding action of `pause_at`'s phase
    /// starts, after its progress report (`MOLT_TEST_PAUSE_AT=<phase>:<millis>`), so a
    /// test can abort in a short phase such as `committing`.
    pause_at: Option<(String, Duration)>,
    hooks: Hooks,
    /// The deployment an abort was already fed for (the flag stays set; one abort is enough).
    abort_fed: Option<DeploymentId>,
    /// When the last progress report went out.
    last_progress: Option<Instant>,
    /// The outcome of the last final report made by this process.
    last_final: Option<Outcome>,
    /// That report's line.
    last_final_line: Option<String>,
    /// The source of the interrupted install that opening the device settled, and
    /// how it ended (see [`Device::nothing_to_install`]).
    settled: Option<(String, Outcome)>,
    _lock: File,
}

fn urandom16() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom")?;
    Ok(b)
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = perms::state_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        crate::durability::sync_all(&f)?;
    }
    crate::crashpoint::after("file write and fsync");
    fs::rename(&tmp, path)?;
    crate::crashpoint::after("file rename");
    if let Some(dir) = path.parent() {
        crate::durability::sync_all(&File::open(dir)?)?;
    }
    crate::crashpoint::after("directory fsync");
    Ok(())
}

impl Device {
    /// Opens the data directory: takes the lock, loads (or provisions) the slot record,
    /// repairs a missing `current` link from it, and settles any install a crash interrupted.
    pub fn open(cfg: Config) -> Result<Device> {
        Device::open_with(cfg, Hooks::default())
    }

    /// [`Device::open`] with the daemon's hooks: the reporter sees the reports the
    /// settling produces (a final report a crash may have lost is emitted again).
    pub fn open_with(cfg: Config, hooks: Hooks) -> Result<Device> {
        let mut dev = Device::open_unsettled(cfg, hooks)?;
        dev.settle()?;
        Ok(dev)
    }

    /// Opens the data directory like [`Device::open`] but leaves an interrupted
    /// install to [`Device::settle`], so the daemon can watch for an abort (its
    /// poller needs the deployment in progress, [`Device::in_progress`]) while the
    /// settling resumes a download or reruns a health check.
    pub fn open_unsettled(cfg: Config, hooks: Hooks) -> Result<Device> {
        crate::durability::set(cfg.durable);
        if !cfg.durable {
            tracing::warn!(
                "durable = false: nothing is fsynced, a power cut can tear an update or lose the slot record"
            );
        }
        let data = cfg.data_dir();
        // Explicit modes (perms.rs): the data directory and `slots/` are read by
        // services through `current`; staging is the agent's alone. The slots'
        // own modes are the snapshots' and are left as they are.
        for (d, mode) in [
            (data.clone(), perms::SHARED_DIR),
            (data.join(layout::SLOTS), perms::SHARED_DIR),
            (data.join(layout::STAGING), perms::PRIVATE_DIR),
        ] {
            perms::dir(&d, mode).with_context(|| format!("cannot create {}", d.display()))?;
        }
        for slot in ["a", "b"] {
            let d = data.join(layout::SLOTS).join(slot);
            fs::DirBuilder::new()
                .mode(perms::SHARED_DIR)
                .create(&d)
                .or_else(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(e),
                })
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
        // 0600: flock needs no write access, so a lock file others can open is a
        // lock any local user can hold, blocking every install and recovery.
        let lock = perms::state_file()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data.join(layout::LOCK))
            .context("cannot open the lock file")?;
        perms::tighten(&lock, perms::STATE_FILE).context("cannot set the lock file's mode")?;
        rustix::fs::flock(
            lock.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .map_err(|_| anyhow::Error::new(Busy(data.clone())))?;
        let log_nuls = trim_trailing_nuls(&data.join(layout::LOG)).unwrap_or(0);
        // Before anything touches a slot: a crash during a packages stage can leave
        // processes running in the chroot and bind mounts of /proc and /dev inside the
        // slot, and a later clear or clone of that slot must never walk into them.
        let slots = data.join(layout::SLOTS);
        let killed = mounts::kill_chrooted(&slots);
        let unmounted = mounts::cleanup_stale(&data.join(layout::MOUNTS), &slots)
            .context("cannot undo the bind mounts a crash left in a slot")?;
        let mut store = FileStore::open(&data.join(layout::RECORD))
            .with_context(|| format!("cannot open {}", data.join(layout::RECORD).display()))?;
        let record = match SlotRecord::load(&mut store)
            .map_err(|e| anyhow!("slot record {}: {e}", store.path().display()))?
        {
            Loaded::Found(r) => r,
            Loaded::Fresh => {
                // A new device: whatever slot A holds is the factory snapshot.
                let r = SlotRecord::new(Slot::A, "factory", 0, [0; 32])
                    .map_err(|e| anyhow!("cannot provision the slot record: {e}"))?;
                r.save(&mut store)
                    .map_err(|e| anyhow!("cannot save the slot record: {e}"))?;
                r
            }
        };
        let (journal, state) = Journal::open(&data.join(layout::JOURNAL))
            .with_context(|| format!("cannot open the journal in {}", data.display()))?;
        let mut dev = Device {
            data,
            store,
            record,
            journal,
            state,
            last_error: None,
            crash_at: crate::crashpoint::var("MOLT_TEST_CRASH_AT"),
            pause_at: crate::crashpoint::var("MOLT_TEST_PAUSE_AT").and_then(|v| {
                let (phase, ms) = v.split_once(':')?;
                Some((phase.to_owned(), Duration::from_millis(ms.parse().ok()?)))
            }),
            hooks,
            abort_fed: None,
            last_progress: None,
            last_final: None,
            last_final_line: None,
            settled: None,
            cfg,
            _lock: lock,
        };
        if let Some(notice) = dev.journal.notice() {
            dev.log(notice);
        }
        if log_nuls > 0 {
            dev.log(&format!(
                "dropped {log_nuls} NUL bytes a power cut left at the end of the install log"
            ));
        }
        if !killed.is_empty() {
            dev.log(&format!(
                "killed {} process(es) left running in a slot's chroot: {killed:?}",
                killed.len()
            ));
        }
        if !unmounted.is_empty() {
            dev.log(&format!(
                "unmounted what a crash left in a slot: {}",
                unmounted
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        dev.repair_current()?;
        Ok(dev)
    }

    /// Settles an install a crash or reboot interrupted (`Event::Restarted`), and
    /// ends a local install's `Done`; a controller deployment's `Done` waits for
    /// [`Device::acknowledge`] when a reporter is attached.
    pub fn settle(&mut self) -> Result<()> {
        let rebooted = self.note_boot()?;
        let interrupted = (!matches!(self.state.phase(), Phase::Idle | Phase::Done))
            .then(|| fs::read_to_string(self.data.join(layout::SOURCE)).ok())
            .flatten();
        // Done too: a crash right after journaling Done may have lost the final report,
        // and Restarted sends it again (reports are idempotent).
        if self.state.phase() != Phase::Idle {
            self.log(&format!(
                "restart: settling deployment {} interrupted in phase {} (rebooted: {rebooted})",
                self.state.deployment().map(label).unwrap_or_default(),
                self.state.phase().name()
            ));
            self.drive(Event::Restarted { rebooted })?;
        }
        if self.state.phase() == Phase::Done {
            if let Some(d) = self.state.deployment() {
                // Local installs have no controller: the log is the report's receiver.
                // Without a reporter nothing would ever acknowledge the report either.
                if deployment_number(d).is_none() || self.hooks.reporter.is_none() {
                    self.drive(Event::Reported(d))?;
                }
            }
        }
        if let (Some(source), Some(outcome)) = (interrupted, self.last_final) {
            self.settled = Some((source, outcome));
        }
        self.settle_orphaned_trial()
    }

    /// Why installing `source` now would change nothing, if it would not: the
    /// install of this very source that a crash interrupted has just been finished
    /// by opening the device, or (for a local file) the bundle is the active
    /// snapshot already. Installing it again would put the same version in both
    /// slots, lose the rollback target and run its scripts twice. A source that
    /// cannot be read is not judged here: the install reports it.
    pub fn nothing_to_install(&self, source: &str) -> Option<String> {
        if let Some((s, Outcome::Succeeded)) = &self.settled {
            if s == source {
                return Some(format!(
                    "the install of {source} that was interrupted has just been finished; \
                     it is not installed again"
                ));
            }
        }
        if source.starts_with("http://") || source.starts_with("https://") {
            return None;
        }
        let (version, digest) =
            download::peek_manifest(source, &self.cfg, self.record.floor()).ok()?;
        let active = self.record.slot(self.record.active());
        (active.status == Status::Good
            && active.version.as_str() == version
            && active.digest == digest)
            .then(|| {
                format!(
                    "{source} is version {version}, the active snapshot already (slot {}); \
                     nothing to do",
                    slot_name(self.record.active())
                )
            })
    }

    /// The controller deployment being installed or awaiting the acknowledgement
    /// of its final report (what a poll's `in_progress` says), if any.
    pub fn in_progress(&self) -> Option<u64> {
        if self.state.phase() == Phase::Idle {
            return None;
        }
        self.state.deployment().and_then(deployment_number)
    }

    /// The controller acknowledged `deployment`'s final report (or closed it):
    /// feeds `Event::Reported` if the journal still waits for it.
    pub fn acknowledge(&mut self, deployment: u64) -> Result<()> {
        let id = deployment_id(deployment);
        if self.state.phase() == Phase::Done && self.state.deployment() == Some(id) {
            self.drive(Event::Reported(id))?;
        }
        Ok(())
    }

    /// The version of the active snapshot.
    pub fn active_version(&self) -> String {
        self.record
            .slot(self.record.active())
            .version
            .as_str()
            .to_owned()
    }

    /// The version in the inactive slot, when it holds a snapshot a rollback could
    /// return to.
    pub fn inactive_version(&self) -> Option<String> {
        let info = self.record.slot(self.record.active().other());
        (info.status == Status::Good).then(|| info.version.as_str().to_owned())
    }

    /// The abort flag the daemon's poller sets.
    pub fn abort_flag(&self) -> Arc<AtomicBool> {
        self.hooks.abort.clone()
    }

    fn abort_requested(&self) -> bool {
        self.hooks.abort.load(Ordering::SeqCst)
    }

    /// Feeds `Event::Abort` once per deployment when the flag is set.
    fn take_abort(&mut self) -> Result<()> {
        if !self.abort_requested() {
            return Ok(());
        }
        let Some(d) = self.state.deployment() else {
            return Ok(());
        };
        if self.state.phase() == Phase::Idle || self.abort_fed == Some(d) {
            return Ok(());
        }
        self.abort_fed = Some(d);
        self.log(&format!(
            "deployment {}: aborted by an operator in phase {}",
            label(d),
            self.state.phase().name()
        ));
        let t = match step(&self.state, Event::Abort(d)) {
            Ok(t) => t,
            Err(rejected) => {
                self.log(&format!("abort rejected: {rejected:?}"));
                return Ok(());
            }
        };
        self.journal
            .write(&t.next)
            .context("cannot write the journal (the install stops here)")?;
        self.state = t.next;
        // Only `Cancel` and `AbortRefused` come back from an abort: the outstanding
        // action (if any) is still the one running, and its result follows.
        for action in t.actions {
            if let Some(ev) = self.perform(action)? {
                self.log(&format!("unexpected result {ev:?} of an abort's action"));
            }
        }
        Ok(())
    }

    /// Sleeps `d`, or less if an abort arrives; returns whether it did.
    fn sleep_unless_aborted(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            if self.abort_requested() {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            std::thread::sleep((end - now).min(exec::CANCEL_TICK));
        }
    }

    /// Passes download progress to the reporter, at most once per [`PROGRESS_EVERY`].
    fn progress(&mut self, done: u64, total: Option<u64>) {
        let (Some(r), Some(d)) = (&self.hooks.reporter, self.state.deployment()) else {
            return;
        };
        if self
            .last_progress
            .is_some_and(|at| at.elapsed() < PROGRESS_EVERY)
        {
            return;
        }
        self.last_progress = Some(Instant::now());
        r.progress(d, done, total);
    }

    /// A trial that no install in flight can confirm (a lost or torn journal) is never
    /// kept: the engine decides (`settle_orphaned_trial`), this carries it out.
    fn settle_orphaned_trial(&mut self) -> Result<()> {
        match settle_orphaned_trial(&self.state, &mut self.record) {
            OrphanedTrial::FellBack { from, to } => {
                self.save_record()?;
                fsops::swap_current(&self.data, &self.slot_rel(to))?;
                self.log(&format!(
                    "slot {} was on trial with no install in flight (journal lost?): back on slot {}",
                    slot_name(from),
                    slot_name(to)
                ));
            }
            OrphanedTrial::NoFallback { slot } => self.log(&format!(
                "slot {} is on trial with no fallback: {}",
                slot_name(slot),
                molt_engine::slot::Error::NoFallback
            )),
            _ => {}
        }
        Ok(())
    }

    /// `current` must always name a slot: a device whose link is missing (first start,
    /// or a manual deletion) gets it back from the record.
    fn repair_current(&mut self) -> Result<()> {
        if fsops::read_current(&self.data)?.is_none() {
            let target = self.slot_rel(self.record.active());
            fsops::swap_current(&self.data, &target)?;
            self.log(&format!(
                "current was missing: pointed it at {}",
                target.display()
            ));
        }
        Ok(())
    }

    /// Counts a boot for a trial outside an install (an install in flight counts its own).
    fn note_boot(&mut self) -> Result<bool> {
        let now = boot_id();
        let path = self.data.join(layout::BOOT_ID);
        let last = fs::read_to_string(&path).unwrap_or_default();
        let rebooted = !last.trim().is_empty() && last.trim() != now;
        if last.trim() != now {
            write_durable(&path, now.as_bytes())?;
        }
        Ok(rebooted)
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The slot record as loaded.
    pub fn record(&self) -> &SlotRecord {
        &self.record
    }

    /// The state machine's state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    fn slot_rel(&self, s: Slot) -> PathBuf {
        Path::new(layout::SLOTS).join(slot_name(s))
    }

    fn slot_path(&self, s: Slot) -> PathBuf {
        self.data.join(self.slot_rel(s))
    }

    fn save_record(&mut self) -> Result<()> {
        self.record
            .save(&mut self.store)
            .map_err(|e| anyhow!("cannot save the slot record: {e}"))
    }

    /// Appends a line to the install log, to tracing and to the report, with every
    /// control character escaped: a path or a script's output can neither split
    /// the line nor reach a terminal as an escape sequence (molt_engine::text).
    pub fn log(&self, line: &str) {
        let escaped = Escaped::new(line).to_string();
        let line = escaped.as_str();
        tracing::info!("{line}");
        let path = self.data.join(layout::LOG);
        if fs::metadata(&path)
            .map(|m| m.len() > LOG_LIMIT)
            .unwrap_or(false)
        {
            if let Ok(old) = fs::read(&path) {
                let keep = old.len() / 2;
                let _ = fs::write(&path, &old[keep..]);
            }
        }
        if let Ok(mut f) = perms::state_file().create(true).append(true).open(&path) {
            let _ = writeln!(f, "{line}");
        }
        if let Some(r) = &self.hooks.reporter {
            r.log(line);
        }
    }

    /// Installs the bundle at `source` (a path or an http(s) URL) and returns how it ended.
    pub fn install(&mut self, source: &str) -> Result<Outcome> {
        let deployment = DeploymentId(urandom16()?);
        let outcome = self.run_install(source, deployment)?;
        self.drive(Event::Reported(deployment))?;
        Ok(outcome)
    }

    /// Installs the controller's deployment `number` from `url` (fetched with the
    /// hooks' credential) and returns how it ended. The journal stays in `Done`
    /// until the controller has the final report: see [`Device::acknowledge`].
    pub fn install_deployment(&mut self, number: u64, url: &str) -> Result<Outcome> {
        self.run_install(url, deployment_id(number))
    }

    fn run_install(&mut self, source: &str, deployment: DeploymentId) -> Result<Outcome> {
        if !matches!(self.state.phase(), Phase::Idle | Phase::Done) {
            bail!(
                "an install is in progress (phase {}); it is settled on the next start",
                self.state.phase().name()
            );
        }
        perms::dir(&self.data.join(layout::STAGING), perms::PRIVATE_DIR)?;
        write_durable(&self.data.join(layout::SOURCE), source.as_bytes())?;
        self.last_error = None;
        self.last_progress = None;
        self.log(&format!(
            "install {source} as deployment {}",
            label(deployment)
        ));
        self.drive(Event::Start {
            deployment,
            target: self.record.inactive(),
            budget: Budget {
                fetch_resumes: 3,
                trials: self.cfg.trial_boots,
            },
        })?;
        self.state
            .outcome()
            .ok_or_else(|| anyhow!("install stopped in phase {}", self.state.phase().name()))
    }

    /// Feeds one event and every event its actions produce, until the machine waits.
    pub fn drive(&mut self, first: Event) -> Result<()> {
        let mut next = Some(first);
        while let Some(ev) = next.take() {
            let t = match step(&self.state, ev) {
                Ok(t) => t,
                Err(rejected) => {
                    self.log(&format!(
                        "event {ev:?} rejected in phase {}: {rejected:?}",
                        self.state.phase().name()
                    ));
                    return Ok(());
                }
            };
            self.journal
                .write(&t.next)
                .context("cannot write the journal (the install stops here)")?;
            self.state = t.next;
            if self.crash_at.as_deref() == Some(self.state.phase().name()) {
                // Test hook: die as a power cut would, right after the journal write.
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::KILL,
                );
            }
            for action in t.actions {
                let outstanding = !matches!(
                    action,
                    Action::Report(_) | Action::Cancel | Action::AbortRefused { .. }
                );
                // An abort is fed between actions, never in the middle of one: before
                // an outstanding action starts, and before its result is fed.
                if outstanding {
                    if let Some((_, pause)) = self
                        .pause_at
                        .as_ref()
                        .filter(|(p, _)| p == self.state.phase().name())
                    {
                        std::thread::sleep(*pause);
                    }
                    self.take_abort()?;
                }
                if let Some(ev) = self.perform(action)? {
                    self.take_abort()?;
                    next = Some(ev);
                }
            }
        }
        Ok(())
    }

    fn fail(&mut self, phase: Phase, kind: CauseKind, why: String) -> Option<Event> {
        self.log(&format!("{} failed: {why}", phase.name()));
        self.last_error = Some(why);
        Some(Event::Failed(Cause::new(phase, kind)))
    }

    fn perform(&mut self, action: Action) -> Result<Option<Event>> {
        Ok(match action {
            Action::Report(r) => {
                self.report(&r);
                None
            }
            Action::AbortRefused { deployment, why } => {
                self.log(&format!("abort of {} refused: {why}", label(deployment)));
                let version = self.active_version();
                if let Some(r) = &self.hooks.reporter {
                    r.abort_refused(deployment, why, &version);
                }
                None
            }
            Action::Cancel => None,
            Action::Fetch { slot, resume, .. } => match self.fetch(slot, resume) {
                Ok(plan) => Some(Event::Fetched(plan)),
                Err((kind, why)) => self.fail(Phase::Fetching, kind, why),
            },
            Action::RunBefore { slot } => self.run_stage(Phase::Before, slot),
            Action::InstallPackages { slot } => self.install_packages(slot),
            Action::Seal { slot } => {
                match SlotDir::open(self.slot_path(slot)).and_then(|d| fsops::sync_tree(&d)) {
                    Ok(()) => Some(Event::Completed(Phase::Sealing)),
                    Err(e) => self.fail(Phase::Sealing, CauseKind::Io, e.to_string()),
                }
            }
            Action::Swap { slot } => match self.swap_to(slot) {
                Ok(()) => Some(Event::Completed(Phase::Swapping)),
                Err(e) => self.fail(Phase::Swapping, CauseKind::Io, format!("{e:#}")),
            },
            Action::Reconcile => Some(Event::Current(self.reconcile()?)),
            Action::RunAfter { slot } => self.run_stage(Phase::After, slot),
            Action::CheckHealth { slot } => self.run_stage(Phase::HealthCheck, slot),
            Action::Commit { .. } => match self
                .record
                .confirm()
                .map_err(|e| anyhow!("{e}"))
                .and_then(|()| self.save_record())
            {
                Ok(()) => Some(Event::Completed(Phase::Committing)),
                Err(e) => self.fail(Phase::Committing, CauseKind::Io, format!("{e:#}")),
            },
            Action::SwapBack { slot } => match self.swap_back(slot) {
                Ok(()) => Some(Event::Completed(Phase::SwappingBack)),
                Err(e) => self.fail(Phase::SwappingBack, CauseKind::Io, format!("{e:#}")),
            },
            Action::Revert { slot } => {
                // The failed snapshot is never activated again; its files stay for
                // inspection until the next install empties the slot.
                if self.record.slot(slot).status == Status::Staging {
                    let _ = self.record.cancel_staging();
                    self.save_record()?;
                }
                self.note_failure(slot);
                // A download that failed for lack of space left nothing (download.rs).
                let empty =
                    fs::read_dir(self.slot_path(slot)).is_ok_and(|mut d| d.next().is_none());
                self.log(&format!(
                    "reverted: slot {} is not used; {}",
                    slot_name(slot),
                    if empty {
                        "it is empty"
                    } else {
                        "its files are kept for inspection until the next update"
                    }
                ));
                Some(Event::Completed(Phase::Reverting))
            }
            Action::RunRollbackCommand => {
                self.run_stage(Phase::RollbackCommand, self.record.active())
            }
            Action::Reboot => {
                let spec = CommandSpec::new("reboot", self.cfg.reboot_command.clone())
                    .with_timeout(self.cfg.timeouts.command)
                    .with_capture_limit(self.cfg.log_capture_bytes);
                self.log(&format!("rebooting: {}", self.cfg.reboot_command));
                match exec::run(&spec) {
                    // Still alive: the command returned (a test double, or a delayed reboot).
                    Ok(o) if o.success() => Some(Event::Completed(Phase::Rebooting)),
                    Ok(o) => self.fail(Phase::Rebooting, CauseKind::Io, o.to_string()),
                    Err(e) => self.fail(Phase::Rebooting, CauseKind::Io, format!("{e:#}")),
                }
            }
            _ => {
                self.log(&format!("unknown action {action:?}"));
                None
            }
        })
    }

    /// Completes the slot note of this install with why it failed, when a phase after
    /// the download failed (a failed download completed it already): `status` and
    /// `rollback` then say what replaced the previous snapshot, and why it is gone.
    fn note_failure(&self, slot: Slot) {
        let deployment = self.state.deployment().map(label).unwrap_or_default();
        let Some(mut note) =
            note::SlotNote::load(&self.data).filter(|n| n.is_for(slot, &deployment))
        else {
            return;
        };
        if note.why.is_some() {
            return;
        }
        let Some(why) = &self.last_error else {
            return;
        };
        note.why = Some(why.clone());
        if let Err(e) = note.save(&self.data) {
            self.log(&format!(
                "cannot write {}: {e}",
                self.data.join(layout::SLOT_NOTE).display()
            ));
        }
    }

    /// The final report this process made last (`deployment 12: failed (…): …`), as the
    /// status file and the controller got it.
    pub fn last_final_line(&self) -> Option<&str> {
        self.last_final_line.as_deref()
    }

    fn report(&mut self, r: &Report) {
        let line = match r {
            Report::Progress { deployment, phase } => {
                format!("deployment {}: {}", label(*deployment), phase.name())
            }
            Report::Final {
                deployment,
                outcome,
                cause,
                rollback_error,
            } => {
                self.last_final = Some(*outcome);
                let mut s = format!("deployment {}: {outcome}", label(*deployment));
                if let Some(c) = cause {
                    s.push_str(&format!(" ({c})"));
                }
                if let (Some(why), false) = (&self.last_error, *outcome == Outcome::Succeeded) {
                    s.push_str(&format!(": {why}"));
                }
                if let Some(rb) = rollback_error {
                    s.push_str(&format!("; rollback step failed: {rb}"));
                }
                s
            }
            other => format!("{other:?}"),
        };
        // One line, whatever paths or messages it quotes (molt_engine::text).
        let line = Escaped::new(&line).to_string();
        if matches!(r, Report::Final { .. }) {
            self.last_final_line = Some(line.clone());
        }
        self.log(&line);
        let status = self.data.join(layout::STATUS);
        if let Err(e) = write_durable(&status, line.as_bytes()) {
            // Reported, not silent: `status` would otherwise show an older result.
            self.log(&format!("cannot write {}: {e}", status.display()));
        }
        let version = self.active_version();
        if let Some(rep) = &self.hooks.reporter {
            match *r {
                Report::Progress { deployment, phase } => rep.phase(deployment, phase, &version),
                Report::Final {
                    deployment,
                    outcome,
                    cause,
                    ..
                } => rep.finished(deployment, outcome, cause.map(|c| c.kind), &line, &version),
                _ => {}
            }
        }
    }

    fn manifest_bytes(&self) -> Result<Vec<u8>> {
        fs::read(self.data.join(layout::MANIFEST)).context("the in-flight manifest is missing")
    }

    /// Runs `stage` of `phase` with the in-flight manifest, or fails the phase when
    /// the manifest cannot be read.
    fn with_manifest(
        &mut self,
        phase: Phase,
        stage: impl FnOnce(&mut Self, &Manifest<'_>) -> Option<Event>,
    ) -> Option<Event> {
        let bytes = match self.manifest_bytes() {
            Ok(b) => b,
            Err(e) => return self.fail(phase, CauseKind::Io, format!("{e:#}")),
        };
        let m = match Manifest::decode(&bytes) {
            Ok(m) => m,
            Err(e) => return self.fail(phase, CauseKind::Io, format!("stored manifest: {e}")),
        };
        stage(self, &m)
    }

    /// Logs a command's outcome and, indented, what it printed.
    fn log_outcome(&self, o: &exec::CommandOutcome) {
        self.log(&format!("{o}"));
        for line in o.output.lines() {
            self.log(&format!("  | {line}"));
        }
    }

    /// The packages stage: each package manager the recipe uses runs inside a chroot of
    /// the new slot, with /proc, /sys, /dev and resolv.conf bound in and the bundle's
    /// shipped package files read-only at /run/molt/packages; the mounts are always
    /// undone before the stage ends (and after a crash, on the next start).
    fn install_packages(&mut self, slot: Slot) -> Option<Event> {
        self.with_manifest(Phase::Packages, |d, m| d.packages_stage(slot, m))
    }

    fn packages_stage(&mut self, slot: Slot, m: &Manifest<'_>) -> Option<Event> {
        let phase = Phase::Packages;
        let steps = packages::plan(&m.recipe, packages::SHIPPED_DIR_IN_CHROOT);
        if steps.is_empty() {
            return Some(Event::Completed(phase));
        }
        let shipped = self
            .data
            .join(layout::BUNDLE_FILES)
            .join(".molt")
            .join("packages");
        if let Err(e) = fs::create_dir_all(&shipped) {
            return self.fail(
                phase,
                CauseKind::Io,
                format!("cannot create {}: {e}", shipped.display()),
            );
        }
        let slot_dir = self.slot_path(slot);
        let binds = [BindSpec::read_only(
            &shipped,
            packages::SHIPPED_DIR_IN_CHROOT,
        )];
        let mounts = match ChrootMounts::setup(&slot_dir, &binds, &self.data.join(layout::MOUNTS)) {
            Ok(m) => m,
            Err(e) => {
                return self.fail(
                    phase,
                    CauseKind::Io,
                    format!(
                        "cannot prepare the chroot of slot {}: {e:#}",
                        slot_name(slot)
                    ),
                )
            }
        };
        let mut failed = None;
        for step in steps {
            self.log(&format!(
                "{}: in a chroot of slot {}",
                step.label,
                slot_name(slot)
            ));
            let spec = CommandSpec::new(step.label.clone(), step.script)
                .with_chroot(mounts.slot())
                .with_timeout(self.cfg.timeouts.packages)
                .with_capture_limit(self.cfg.log_capture_bytes)
                .with_env("HOME", "/root")
                .with_env("npm_config_cache", packages::NPM_CACHE_IN_CHROOT)
                .with_env("MOLT_PHASE", phase.name())
                .with_env("MOLT_NEW_VERSION", m.version)
                .with_cancel(self.hooks.abort.clone());
            match exec::run(&spec) {
                Ok(o) => {
                    self.log_outcome(&o);
                    if !o.success() {
                        let kind = match o.status {
                            ExitStatus::Cancelled { .. } => CauseKind::Aborted,
                            ExitStatus::TimedOut { .. } => CauseKind::Timeout,
                            ExitStatus::Exited(code) => CauseKind::Exit(code),
                            ExitStatus::Signaled(_) => CauseKind::Exit(-1),
                        };
                        failed = Some((kind, o.to_string()));
                        break;
                    }
                }
                Err(e) => {
                    failed = Some((CauseKind::Io, format!("{}: {e:#}", step.label)));
                    break;
                }
            }
        }
        // Unmounted before anything else looks at the slot: sealing, swapping or a revert
        // must never meet the host's /proc or /dev inside it.
        if let Err(e) = mounts.teardown() {
            let why = format!(
                "cannot undo the chroot mounts of slot {}: {e:#}",
                slot_name(slot)
            );
            return self.fail(phase, CauseKind::Io, why);
        }
        let cache = packages::NPM_CACHE_IN_CHROOT.trim_start_matches('/');
        if let Err(e) = SlotDir::open(&slot_dir).and_then(|d| d.remove(cache)) {
            self.log(&format!(
                "cannot remove npm's cache from slot {}: {e}",
                slot_name(slot)
            ));
        }
        match failed {
            Some((kind, why)) => self.fail(phase, kind, why),
            None => Some(Event::Completed(phase)),
        }
    }

    /// Runs the recipe's command for `phase` (before, after, health check, rollback).
    fn run_stage(&mut self, phase: Phase, slot: Slot) -> Option<Event> {
        self.with_manifest(phase, |d, m| d.command_stage(phase, slot, m))
    }

    fn command_stage(&mut self, phase: Phase, slot: Slot, m: &Manifest<'_>) -> Option<Event> {
        let (cmd, mut retry) = match phase {
            Phase::Before => (m.recipe.before, Retry::once()),
            Phase::After => (m.recipe.after, Retry::once()),
            Phase::HealthCheck => match m.recipe.health_check {
                Some(h) => (Some(h.command), Retry::health_check(&h)),
                None => (None, Retry::once()),
            },
            Phase::RollbackCommand => (m.recipe.rollback.command, Retry::once()),
            _ => (None, Retry::once()),
        };
        let Some(cmd) = cmd else {
            return Some(Event::Completed(phase));
        };
        let target = self.state.target().unwrap_or(slot);
        let old_slot = target.other();
        let mut spec = CommandSpec::new(phase.name(), cmd.script)
            .with_timeout(Duration::from_secs(u64::from(cmd.timeout_secs)))
            .with_capture_limit(self.cfg.log_capture_bytes)
            .with_env("MOLT_PHASE", phase.name())
            .with_env("MOLT_DATA_DIR", self.data.as_os_str())
            .with_env("MOLT_OLD_SLOT", self.slot_path(old_slot).as_os_str())
            .with_env("MOLT_NEW_SLOT", self.slot_path(target).as_os_str())
            .with_env(
                "MOLT_OLD_VERSION",
                self.record.slot(old_slot).version.as_str(),
            )
            .with_env("MOLT_NEW_VERSION", m.version)
            .with_env("MOLT_CURRENT", self.data.join(layout::CURRENT).as_os_str());
        if cmd.chroot {
            spec = spec.with_chroot(self.slot_path(slot));
        }
        // Only the install's own commands stop for an abort: a rollback command runs
        // to its end, since it is what undoes the install.
        let abortable = phase.abortable();
        if abortable {
            spec = spec.with_cancel(self.hooks.abort.clone());
        }
        // The engine's `Retry` says when to run the next attempt and when to stop;
        // the clock, the sleeping and the abort are this loop's.
        let epoch = Instant::now();
        let now = || u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut last = None;
        let mut next = retry.handle_timeout(now());
        loop {
            match next {
                RetryAction::Run { .. } => {}
                RetryAction::Wait { until } => {
                    let pause = Duration::from_millis(until.saturating_sub(now()));
                    if !abortable {
                        std::thread::sleep(pause);
                    } else if self.sleep_unless_aborted(pause) {
                        return self.fail(
                            phase,
                            CauseKind::Aborted,
                            "aborted by an operator".into(),
                        );
                    }
                    next = retry.handle_timeout(now());
                    continue;
                }
                RetryAction::Passed => return Some(Event::Completed(phase)),
                RetryAction::GaveUp | RetryAction::Running => break,
            }
            match exec::run(&spec) {
                Ok(o) => {
                    self.log_outcome(&o);
                    let outcome = match o.status {
                        _ if o.success() => Attempt::Passed,
                        ExitStatus::Cancelled { .. } => Attempt::Stopped,
                        _ => Attempt::Failed,
                    };
                    last = Some(o);
                    next = retry.record(outcome, now());
                }
                Err(e) => return self.fail(phase, CauseKind::Io, format!("{e:#}")),
            }
        }
        let o = last?;
        let kind = match (phase, o.status) {
            (_, ExitStatus::Cancelled { .. }) => CauseKind::Aborted,
            (_, ExitStatus::TimedOut { .. }) => CauseKind::Timeout,
            (Phase::HealthCheck, _) => CauseKind::Unhealthy,
            (_, ExitStatus::Exited(code)) => CauseKind::Exit(code),
            (_, ExitStatus::Signaled(_)) => CauseKind::Exit(-1),
        };
        self.fail(phase, kind, o.to_string())
    }

    fn swap_to(&mut self, slot: Slot) -> Result<()> {
        // The record first: after a crash between the two, Reconcile reads the link
        // and makes the record agree with it.
        if self.record.active() != slot {
            self.record
                .mark_trial(self.cfg.trial_boots.max(1))
                .map_err(|e| anyhow!("slot record: {e}"))?;
            self.save_record()?;
        }
        // Timed for the log (and `cargo xtask bench swap`): the swap is a rename and
        // its fsyncs, nothing that grows with the snapshot.
        let t = std::time::Instant::now();
        fsops::swap_current(&self.data, &self.slot_rel(slot))?;
        self.log(&format!(
            "swapped: current -> {} in {:.2} ms",
            self.slot_rel(slot).display(),
            t.elapsed().as_secs_f64() * 1e3
        ));
        Ok(())
    }

    fn swap_back(&mut self, slot: Slot) -> Result<()> {
        fsops::swap_current(&self.data, &self.slot_rel(slot))?;
        if self.record.active() != slot {
            self.record
                .reject()
                .map_err(|e| anyhow!("slot record: {e}"))?;
            self.save_record()?;
        }
        self.log(&format!(
            "swapped back: current -> {}",
            self.slot_rel(slot).display()
        ));
        Ok(())
    }

    /// Reads which slot `current` names and makes the record agree with it.
    fn reconcile(&mut self) -> Result<Slot> {
        let link = fsops::read_current(&self.data)?.ok_or_else(|| anyhow!("current is missing"))?;
        let slot = if link.ends_with("b") {
            Slot::B
        } else {
            Slot::A
        };
        if self.record.active() != slot {
            if self.record.slot(slot).status == Status::Staging {
                self.record
                    .mark_trial(self.cfg.trial_boots.max(1))
                    .map_err(|e| anyhow!("{e}"))?;
            } else {
                self.record.reject().map_err(|e| anyhow!("{e}"))?;
            }
            self.save_record()?;
        }
        self.log(&format!(
            "reconciled: current names slot {}",
            slot_name(slot)
        ));
        Ok(slot)
    }

    /// Switches back to the previous snapshot by hand (`molt-agent rollback`).
    pub fn rollback(&mut self) -> Result<Slot> {
        if !matches!(self.state.phase(), Phase::Idle | Phase::Done) {
            bail!(
                "an install is in progress (phase {})",
                self.state.phase().name()
            );
        }
        let to = self.record.switch_back().map_err(|e| {
            // "Nothing to roll back to" alone hides that a failed install overwrote
            // the previous snapshot a moment ago: say which, and why.
            match note::SlotNote::load(&self.data).filter(|n| n.applies(&self.record)) {
                Some(n) => anyhow!("cannot roll back: {e}: {}", n.sentence()),
                None => anyhow!("cannot roll back: {e}"),
            }
        })?;
        self.save_record()?;
        fsops::swap_current(&self.data, &self.slot_rel(to))?;
        self.log(&format!(
            "manual rollback: current -> {}",
            self.slot_rel(to).display()
        ));
        Ok(to)
    }

    /// A human-readable status: slots, versions, the last result and the log's tail.
    pub fn status(&self) -> String {
        status::render(&self.data, &self.record, &self.state)
    }
}
