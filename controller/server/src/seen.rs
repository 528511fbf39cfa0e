//! What the poll path keeps in memory so that an idle device's poll costs no disk write: the credential → device cache, each device's versions as stored, and `last_seen` times written to the database in batches.
//!
//! Every poll used to be a durable transaction (an fsync) just to move
//! `last_seen`. Now a poll that reports the versions the database already holds
//! only notes the time here; [`Seen::flush`] writes the noted times in one
//! transaction every [`FLUSH_SECS`], before any operator listing reads them (so
//! what operators see is exact), and when the server shuts down. A crash loses
//! at most the last few seconds of `last_seen`, never a version change, a
//! report or an enrollment: those still commit before they are answered.
//!
//! Device credentials never change and devices are never deleted, so a
//! credential found once maps to the same device for the life of the process.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use rusqlite::{params, Connection, TransactionBehavior};

use super::error::AppError;
use super::Shared;

/// Seconds between two writes of the noted `last_seen` times.
pub const FLUSH_SECS: u64 = 5;

/// The versions a device reports in every poll.
#[derive(Clone, PartialEq, Eq)]
pub struct Versions {
    pub active_version: String,
    pub agent_version: String,
    pub compatible: String,
    pub inactive_version: Option<String>,
}

#[derive(Default)]
struct Polled {
    /// The versions the database holds for the device, when known.
    stored: Option<Versions>,
    /// A poll time not yet written to the database.
    pending: Option<i64>,
}

/// The in-memory side of device polls (see the module docs).
#[derive(Default)]
pub struct Seen {
    /// Credential hash → device id: only credentials that were found.
    creds: RwLock<HashMap<[u8; 32], String>>,
    devices: Mutex<HashMap<String, Polled>>,
}

impl Seen {
    fn devices(&self) -> MutexGuard<'_, HashMap<String, Polled>> {
        // Nothing below can leave the map half-updated, so a poisoned lock is usable.
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device a credential hash belongs to, if it was seen before.
    pub fn device(&self, cred: &blake3::Hash) -> Option<String> {
        let creds = self.creds.read().unwrap_or_else(|e| e.into_inner());
        creds.get(cred.as_bytes()).cloned()
    }

    /// Forgets `device` entirely: its credential no longer finds it (call under the
    /// database's write lock, once the removal is written).
    pub fn revoke(&self, device: &str) {
        let mut creds = self.creds.write().unwrap_or_else(|e| e.into_inner());
        creds.retain(|_, d| d != device);
        drop(creds);
        self.devices().remove(device);
    }

    /// Remembers that `cred` is `device`'s credential.
    pub fn remember(&self, cred: &blake3::Hash, device: &str) {
        let mut creds = self.creds.write().unwrap_or_else(|e| e.into_inner());
        creds.insert(*cred.as_bytes(), device.to_owned());
    }

    /// A poll at `t` reporting `v`: notes the time and returns true when the
    /// database already holds `v`, else returns false (the caller writes `v`
    /// durably, then calls [`Seen::stored`]).
    pub fn poll(&self, device: &str, v: &Versions, t: i64) -> bool {
        let mut devices = self.devices();
        match devices.get_mut(device) {
            Some(p) if p.stored.as_ref() == Some(v) => {
                p.pending = Some(p.pending.map_or(t, |old| old.max(t)));
                true
            }
            _ => false,
        }
    }

    /// The database now holds `v` for `device` (call with the database locked, after the commit).
    pub fn stored(&self, device: &str, v: Versions) {
        self.devices().entry(device.to_owned()).or_default().stored = Some(v);
    }

    /// The database's versions of `device` are changing elsewhere (a report):
    /// the next poll writes its versions again.
    pub fn forget(&self, device: &str) {
        if let Some(p) = self.devices().get_mut(device) {
            p.stored = None;
        }
    }

    /// Writes the noted poll times in one transaction (never moving a `last_seen`
    /// back); a failed write puts them back for the next flush. Blocking: call it
    /// with the connection locked, on a thread that may wait for the disk.
    pub fn flush(&self, conn: &mut Connection) -> Result<(), AppError> {
        let batch: Vec<(String, i64)> = {
            let mut devices = self.devices();
            devices
                .iter_mut()
                .filter_map(|(id, p)| p.pending.take().map(|t| (id.clone(), t)))
                .collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let written = (|| -> Result<(), AppError> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut st = tx.prepare_cached(
                    "UPDATE devices SET last_seen = MAX(COALESCE(last_seen, 0), ?2) WHERE id = ?1",
                )?;
                for (id, t) in &batch {
                    st.execute(params![id, t])?;
                }
            }
            tx.commit()?;
            Ok(())
        })();
        match written {
            Ok(()) => {
                tracing::debug!("wrote last_seen of {} device(s)", batch.len());
                Ok(())
            }
            Err(e) => {
                let mut devices = self.devices();
                for (id, t) in batch {
                    let p = devices.entry(id).or_default();
                    p.pending = Some(p.pending.map_or(t, |old| old.max(t)));
                }
                Err(e)
            }
        }
    }
}

/// Flushes `state`'s poll times every [`FLUSH_SECS`] on a thread of its own,
/// until the state is gone.
pub fn start_flusher(state: Weak<Shared>) {
    let spawned = std::thread::Builder::new()
        .name("last-seen".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(FLUSH_SECS));
            let Some(state) = state.upgrade() else {
                return;
            };
            let written = state.seen.flush(&mut state.db.lock());
            if let Err(e) = written {
                tracing::warn!("cannot write last_seen times: {}", e.message);
            }
        });
    if let Err(e) = spawned {
        // Then the times are written only when operators list devices and at shutdown.
        tracing::warn!("cannot start the last_seen writer: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(active: &str) -> Versions {
        Versions {
            active_version: active.into(),
            agent_version: "0.1.0".into(),
            compatible: "c".into(),
            inactive_version: None,
        }
    }

    use crate::db::Db;

    #[test]
    fn polls_write_only_changes_and_flush_keeps_the_latest_time() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("db.sqlite")).unwrap();
        db.lock()
            .execute_batch(
                "INSERT INTO groups (id, name, enrollment_token, created) VALUES (1, 'g', 't', 0);
                 INSERT INTO devices (id, credential_hash, name, group_id, compatible,
                     agent_version, active_version, enrolled, last_seen)
                 VALUES ('d', x'00', 'd', 1, 'c', '0.1.0', '1', 0, 50);",
            )
            .unwrap();
        let seen = Seen::default();
        let last_seen = || -> i64 {
            db.lock()
                .query_row("SELECT last_seen FROM devices WHERE id = 'd'", [], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        // Unknown versions: the caller must write them.
        assert!(!seen.poll("d", &v("1"), 100));
        seen.stored("d", v("1"));
        assert!(seen.poll("d", &v("1"), 120));
        assert!(seen.poll("d", &v("1"), 110));
        assert_eq!(last_seen(), 50, "nothing written before the flush");
        seen.flush(&mut db.lock()).unwrap();
        assert_eq!(last_seen(), 120, "the latest noted time");
        // A report wrote a newer time (and maybe versions) meanwhile: never moved back.
        db.lock()
            .execute("UPDATE devices SET last_seen = 200 WHERE id = 'd'", [])
            .unwrap();
        assert!(seen.poll("d", &v("1"), 150));
        seen.flush(&mut db.lock()).unwrap();
        assert_eq!(last_seen(), 200);
        // Changed versions, or versions a report may have changed, are written again.
        assert!(!seen.poll("d", &v("2"), 210));
        seen.forget("d");
        assert!(!seen.poll("d", &v("1"), 220));
    }

    #[test]
    fn credentials_are_remembered() {
        let seen = Seen::default();
        let h = blake3::hash(b"secret");
        assert_eq!(seen.device(&h), None);
        seen.remember(&h, "dev_1");
        assert_eq!(seen.device(&h).as_deref(), Some("dev_1"));
    }
}
