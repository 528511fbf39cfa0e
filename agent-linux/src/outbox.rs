//! The report outbox: every report for the controller is written here durably, with its `seq`, before it is sent, so reports survive a crash, a reboot and a controller outage.
//!
//! ```text
//! <data>/outbox/
//!   <N>/                  one directory per controller deployment N
//!     <seq>.json          a report not yet acknowledged (the protocol's Report, as sent)
//!     state.json          {"next": seq, "final_queued": bool, "closed": bool}
//! ```
//!
//! Every file is replaced whole (temporary file, fsync, rename, directory
//! fsync). Queuing writes the report file first and `state.json` second; on
//! reading, the next `seq` is the larger of `state.json`'s and one past the
//! highest report file, so a crash between the two writes never reuses a `seq`
//! (a reused `seq` would be dropped by the controller as a duplicate).
//!
//! The sender takes reports in order: the lowest deployment first, then the
//! lowest `seq`. An acknowledged report (any 2xx: accepted or duplicate) is
//! deleted; a crash before the delete only resends it, which the controller
//! answers as a duplicate. A deployment the controller closed (its final state
//! is recorded, or it is not this device's) keeps only `state.json` with
//! `closed`, so nothing more is queued or sent for it and a repeated offer of it
//! is recognised; the oldest closed directories are pruned.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{anyhow, Context, Result};
use molt_engine::protocol::Report;
use serde::{Deserialize, Serialize};

/// The outbox's directory inside the data directory.
pub const DIR: &str = "outbox";

/// Closed deployments remembered (to recognise a repeated offer); older ones are pruned.
pub const KEEP_CLOSED: usize = 64;

/// `state.json` of one deployment.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct DepState {
    /// The `seq` the next report gets (from 1).
    next: u64,
    /// The final report was queued (a restart in `Done` emits it again: not queued twice).
    final_queued: bool,
    /// The controller closed the deployment: nothing more is queued or sent.
    closed: bool,
}

/// A queued report, as the sender takes it.
#[derive(Clone, Debug)]
pub struct Pending {
    /// The controller deployment.
    pub deployment: u64,
    /// The report (its `seq` inside).
    pub report: Report,
    path: PathBuf,
}

/// The outbox of one data directory. Its methods may be called from several
/// threads (the driver queues, the sender sends): one lock orders them.
pub struct Outbox {
    dir: PathBuf,
    lock: Mutex<()>,
}

/// Replaces `path` with `bytes` durably: temporary file (mode 0600), fsync, rename, directory fsync.
pub fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let what = || format!("cannot write {}", path.display());
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(what)?;
        f.write_all(bytes).with_context(what)?;
        crate::durability::sync_all(&f).with_context(what)?;
    }
    fs::rename(&tmp, path).with_context(what)?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| crate::durability::sync_all(&d))
            .with_context(|| format!("cannot fsync {}", dir.display()))?;
    }
    Ok(())
}

impl Outbox {
    /// The outbox in `data` for reading only: creates nothing (`molt-agent status`).
    pub fn peek(data: &Path) -> Result<Outbox> {
        Ok(Outbox {
            dir: data.join(DIR),
            lock: Mutex::new(()),
        })
    }

    /// Opens (creating if needed) the outbox in `data`.
    pub fn open(data: &Path) -> Result<Outbox> {
        let dir = data.join(DIR);
        crate::perms::dir(&dir, crate::perms::PRIVATE_DIR)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Outbox {
            dir,
            lock: Mutex::new(()),
        })
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves no half-done state behind (each
        // file is replaced whole), so a poisoned lock is still usable.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dep_dir(&self, deployment: u64) -> PathBuf {
        self.dir.join(deployment.to_string())
    }

    /// Seqs of the report files of `dir`, ascending.
    fn seqs(dir: &Path) -> Result<Vec<u64>> {
        let mut v = Vec::new();
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(v),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        };
        for e in entries {
            let e = e.with_context(|| format!("cannot list {}", dir.display()))?;
            let name = e.file_name();
            if let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                v.push(seq);
            }
        }
        v.sort_unstable();
        Ok(v)
    }

    fn load_state(&self, deployment: u64) -> Result<DepState> {
        let dir = self.dep_dir(deployment);
        let path = dir.join("state.json");
        let mut st: DepState = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is damaged", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DepState::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let seqs = Self::seqs(&dir)?;
        if let Some(max) = seqs.last() {
            st.next = st.next.max(max + 1);
        }
        st.next = st.next.max(1);
        Ok(st)
    }

    fn save_state(&self, deployment: u64, st: &DepState) -> Result<()> {
        let bytes = serde_json::to_vec(st).map_err(|e| anyhow!("encoding state.json: {e}"))?;
        write_durable(&self.dep_dir(deployment).join("state.json"), &bytes)
    }

    /// Queues `report` for `deployment` durably, giving it the next `seq`; returns
    /// the `seq`, or `None` when the deployment is closed or (for a final report)
    /// its final report was already queued.
    pub fn enqueue(&self, deployment: u64, mut report: Report) -> Result<Option<u64>> {
        let _g = self.guard();
        let dir = self.dep_dir(deployment);
        if !dir.is_dir() {
            crate::perms::dir(&dir, crate::perms::PRIVATE_DIR)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            if let Some(parent) = dir.parent() {
                File::open(parent)
                    .and_then(|d| crate::durability::sync_all(&d))
                    .with_context(|| format!("cannot fsync {}", parent.display()))?;
            }
        }
        let mut st = self.load_state(deployment)?;
        let is_final = report.state.is_final();
        if st.closed || st.final_queued {
            return Ok(None);
        }
        report.seq = st.next;
        let bytes = serde_json::to_vec(&report).map_err(|e| anyhow!("encoding a report: {e}"))?;
        write_durable(&dir.join(format!("{}.json", report.seq)), &bytes)?;
        st.next = report.seq + 1;
        st.final_queued = is_final;
        self.save_state(deployment, &st)?;
        Ok(Some(report.seq))
    }

    /// Controller deployments with a directory here, ascending.
    fn deployments(&self) -> Result<Vec<u64>> {
        let mut v: Vec<u64> = fs::read_dir(&self.dir)
            .with_context(|| format!("cannot list {}", self.dir.display()))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// The next report to send: the lowest deployment's lowest `seq`. A report file
    /// that does not decode (it cannot be sent, ever) is removed with a warning.
    pub fn next(&self) -> Result<Option<Pending>> {
        let _g = self.guard();
        for deployment in self.deployments()? {
            let dir = self.dep_dir(deployment);
            for seq in Self::seqs(&dir)? {
                let path = dir.join(format!("{seq}.json"));
                let bytes =
                    fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                match serde_json::from_slice::<Report>(&bytes) {
                    Ok(report) => {
                        return Ok(Some(Pending {
                            deployment,
                            report,
                            path,
                        }))
                    }
                    Err(e) => {
                        tracing::warn!("dropping unreadable report {}: {e}", path.display());
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        Ok(None)
    }

    /// The controller has `p` (accepted or a duplicate): it is not sent again.
    pub fn sent(&self, p: &Pending) -> Result<()> {
        let _g = self.guard();
        // Not fsynced: if the removal is lost in a crash, the report is sent again
        // and answered as a duplicate.
        match fs::remove_file(&p.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", p.path.display())),
        }
    }

    /// The controller closed `deployment` (or will never take its reports): drops
    /// what is queued for it and refuses whatever comes later.
    pub fn close(&self, deployment: u64) -> Result<()> {
        let _g = self.guard();
        let mut st = self.load_state(deployment)?;
        let dir = self.dep_dir(deployment);
        crate::perms::dir(&dir, crate::perms::PRIVATE_DIR)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        st.closed = true;
        self.save_state(deployment, &st)?;
        for seq in Self::seqs(&dir)? {
            let _ = fs::remove_file(dir.join(format!("{seq}.json")));
        }
        self.prune()
    }

    /// Removes the oldest closed deployments beyond [`KEEP_CLOSED`].
    fn prune(&self) -> Result<()> {
        let closed: Vec<u64> = self
            .deployments()?
            .into_iter()
            .filter(|d| self.load_state(*d).is_ok_and(|s| s.closed))
            .collect();
        for d in closed.iter().take(closed.len().saturating_sub(KEEP_CLOSED)) {
            let _ = fs::remove_dir_all(self.dep_dir(*d));
        }
        Ok(())
    }

    /// Whether this device has queued anything for `deployment` (it started it once).
    pub fn knows(&self, deployment: u64) -> bool {
        self.dep_dir(deployment).is_dir()
    }

    /// Whether the controller has `deployment`'s final report: it was queued and
    /// everything queued was acknowledged, or the controller closed the deployment.
    pub fn delivered(&self, deployment: u64) -> Result<bool> {
        let _g = self.guard();
        let st = self.load_state(deployment)?;
        Ok(st.closed || (st.final_queued && Self::seqs(&self.dep_dir(deployment))?.is_empty()))
    }

    /// Reports waiting to be sent.
    pub fn pending(&self) -> Result<usize> {
        let _g = self.guard();
        if !self.dir.exists() {
            return Ok(0);
        }
        let mut n = 0;
        for d in self.deployments()? {
            n += Self::seqs(&self.dep_dir(d))?.len();
        }
        Ok(n)
    }

    /// Forgets everything (a new enrollment: the old identity's reports cannot be sent).
    pub fn clear(&self) -> Result<()> {
        let _g = self.guard();
        fs::remove_dir_all(&self.dir)
            .with_context(|| format!("cannot remove {}", self.dir.display()))?;
        crate::perms::dir(&self.dir, crate::perms::PRIVATE_DIR)
            .with_context(|| format!("cannot create {}", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_engine::protocol::DeviceState;

    fn report(state: DeviceState) -> Report {
        Report {
            seq: 0,
            state,
            phase: "fetching".into(),
            progress: None,
            message: None,
            log: String::new(),
            active_version: "1".into(),
            failure: None,
        }
    }

    /// Queues a report of `state` for deployment `d`: its seq, or `None` when the
    /// deployment's final report was queued already.
    fn seq(o: &Outbox, d: u64, state: DeviceState) -> Option<u64> {
        o.enqueue(d, report(state)).expect("enqueue")
    }

    /// Sends (and so deletes) every queued report; returns (deployment, seq) in order.
    fn send_all(o: &Outbox) -> Vec<(u64, u64)> {
        let mut order = Vec::new();
        while let Some(p) = o.next().expect("next") {
            order.push((p.deployment, p.report.seq));
            o.sent(&p).expect("sent");
        }
        order
    }

    #[test]
    fn seqs_rise_survive_sending_and_are_never_reused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let o = Outbox::open(tmp.path()).expect("open");
        assert_eq!(seq(&o, 7, DeviceState::Downloading), Some(1));
        assert_eq!(seq(&o, 7, DeviceState::Installing), Some(2));
        let p = o.next().expect("next").expect("a report");
        assert_eq!((p.deployment, p.report.seq), (7, 1));
        o.sent(&p).expect("sent");
        let p = o.next().expect("next").expect("a report");
        o.sent(&p).expect("sent");
        assert!(o.next().expect("next").is_none());
        // Everything sent and deleted: the counter still goes on (a reopened outbox too).
        let o = Outbox::open(tmp.path()).expect("reopen");
        assert_eq!(seq(&o, 7, DeviceState::Installing), Some(3));
    }

    #[test]
    fn a_crash_between_the_report_and_the_counter_does_not_reuse_the_seq() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let o = Outbox::open(tmp.path()).expect("open");
        seq(&o, 3, DeviceState::Downloading);
        // As if the agent died after writing report 2 but before state.json.
        let dir = tmp.path().join(DIR).join("3");
        let mut r = report(DeviceState::Installing);
        r.seq = 2;
        fs::write(dir.join("2.json"), serde_json::to_vec(&r).expect("json")).expect("write");
        assert_eq!(seq(&o, 3, DeviceState::Installing), Some(3));
    }

    #[test]
    fn one_final_report_and_nothing_after_a_close() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let o = Outbox::open(tmp.path()).expect("open");
        assert!(!o.knows(9));
        seq(&o, 9, DeviceState::Installing);
        assert!(o.knows(9));
        assert_eq!(seq(&o, 9, DeviceState::Success), Some(2));
        // A restart in Done emits the final report again: it is not queued twice.
        assert_eq!(seq(&o, 9, DeviceState::Success), None);
        assert!(!o.delivered(9).expect("delivered"));
        send_all(&o);
        assert!(o.delivered(9).expect("delivered"));

        seq(&o, 10, DeviceState::Installing);
        o.close(10).expect("close");
        assert_eq!(o.pending().ok(), Some(0));
        assert!(o.delivered(10).expect("delivered"));
        assert_eq!(seq(&o, 10, DeviceState::Failed), None);
    }

    #[test]
    fn reports_go_out_by_deployment_then_seq() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let o = Outbox::open(tmp.path()).expect("open");
        for d in [12, 3, 12, 3] {
            seq(&o, d, DeviceState::Installing);
        }
        assert_eq!(send_all(&o), [(3, 1), (3, 2), (12, 1), (12, 2)]);
    }
}
