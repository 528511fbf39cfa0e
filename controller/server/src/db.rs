//! The SQLite database: opening it (WAL, synchronous=FULL), the versioned schema migrations, and running queries off the async threads.
//!
//! One connection behind a mutex: SQLite has one writer at a time anyway, and
//! every state change is one transaction, so a `kill -9` at any instant leaves
//! the database as it was before or after a change, never between. Queries run
//! on tokio's blocking pool because a commit with `synchronous=FULL` waits for
//! the disk.
//!
//! Times are stored as Unix seconds and shown as RFC 3339 (UTC) by [`rfc3339`].

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::error::AppError;

/// The schema, one migration per element; migration N brings `user_version`
/// from N to N+1. Append only: a released migration is never edited.
const MIGRATIONS: &[&str] = &[
    r#"
-- Settings that live with the data: the operator token's hash.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

CREATE TABLE groups (
    id               INTEGER PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    -- Shown to operators (`GET /groups`), so kept as is, not hashed.
    enrollment_token TEXT NOT NULL UNIQUE,
    created          INTEGER NOT NULL
);

CREATE TABLE devices (
    id              TEXT PRIMARY KEY,          -- dev_…
    credential_hash BLOB NOT NULL UNIQUE,      -- BLAKE3 of the bearer secret
    name            TEXT NOT NULL,
    group_id        INTEGER NOT NULL REFERENCES groups(id),
    compatible      TEXT NOT NULL,
    agent_version   TEXT NOT NULL,
    active_version  TEXT NOT NULL,
    enrolled        INTEGER NOT NULL,
    last_seen       INTEGER
);
CREATE INDEX devices_by_group ON devices(group_id);

-- A stored, verified bundle: the file is <data>/bundles/<blake3>.bundle.
CREATE TABLE updates (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    version    TEXT NOT NULL UNIQUE,
    compatible TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('full', 'patch')),
    size       INTEGER NOT NULL,
    blake3     TEXT NOT NULL UNIQUE,
    comment    TEXT NOT NULL,
    recipe     TEXT NOT NULL,                  -- JSON, as `molt bundle inspect --json`
    created    INTEGER NOT NULL
);

CREATE TABLE deployments (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    update_id  INTEGER NOT NULL REFERENCES updates(id),
    group_name TEXT NOT NULL,                  -- '' for a device list
    comment    TEXT NOT NULL,
    created    INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    aborted    INTEGER                         -- when an operator aborted it
);

-- The devices of a deployment, fixed when it is made, and where each one is.
CREATE TABLE targets (
    deployment_id   INTEGER NOT NULL REFERENCES deployments(id),
    device_id       TEXT NOT NULL REFERENCES devices(id),
    state           TEXT NOT NULL CHECK (state IN ('pending', 'downloading', 'installing',
                        'success', 'failed', 'rolled_back', 'aborted')),
    phase           TEXT NOT NULL DEFAULT '',
    progress_done   INTEGER,
    progress_total  INTEGER,
    message         TEXT,
    last_seq        INTEGER NOT NULL DEFAULT 0,
    -- An operator aborted it while the device was not final: tell it on its next poll.
    abort_requested INTEGER NOT NULL DEFAULT 0,
    -- The device itself reported a final state (an operator's abort of a pending
    -- device is final too, but the device may not know yet).
    final_reported  INTEGER NOT NULL DEFAULT 0,
    log_bytes       INTEGER NOT NULL DEFAULT 0,
    updated         INTEGER NOT NULL,
    PRIMARY KEY (deployment_id, device_id)
) WITHOUT ROWID;
CREATE INDEX targets_by_device ON targets(device_id, deployment_id);

-- Report log text, one row per report; the oldest rows go once a target holds
-- more than the log limit.
CREATE TABLE logs (
    deployment_id INTEGER NOT NULL,
    device_id     TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    text          TEXT NOT NULL,
    PRIMARY KEY (deployment_id, device_id, seq)
) WITHOUT ROWID;
"#,
    r#"
-- Web UI sessions (web/session.rs): the cookie's secret is stored only as its BLAKE3,
-- beside the form token every POST of that session must carry (CSRF).
CREATE TABLE sessions (
    hash    BLOB PRIMARY KEY,
    csrf    TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_by_expiry ON sessions(expires);
"#,
    r#"
-- A removed device (`DELETE /devices/{id}`): its credential hash is replaced by
-- random bytes no secret hashes to, and it leaves every listing; its rows in
-- past deployments stay, so their history and counts do not change.
ALTER TABLE devices ADD COLUMN removed INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- Rollout plans (waves.rs, gates.rs). A deployment's devices start wave by wave:
-- a target may start once its wave is at most the deployment's `wave`. Rows
-- written before plans have the default plan with every device released.
ALTER TABLE deployments ADD COLUMN plan TEXT NOT NULL DEFAULT '';   -- JSON; '' is the default plan
ALTER TABLE deployments ADD COLUMN wave INTEGER NOT NULL DEFAULT 1; -- the wave in progress, from 0
ALTER TABLE deployments ADD COLUMN halted INTEGER;                  -- when the plan halted it
ALTER TABLE deployments ADD COLUMN halt_reason TEXT;
-- Failures before the last resume, which the halt threshold no longer counts.
ALTER TABLE deployments ADD COLUMN halt_base INTEGER NOT NULL DEFAULT 0;
-- When the wave in progress ends its soak: the gate is looked at again then.
ALTER TABLE deployments ADD COLUMN gate_at INTEGER;
ALTER TABLE targets ADD COLUMN wave INTEGER NOT NULL DEFAULT 1;
CREATE INDEX deployments_by_gate ON deployments(gate_at) WHERE gate_at IS NOT NULL;
"#,
    r#"
-- A group's default rollout plan ('' = all at once), and whether a device that
-- joins it gets its latest deployment.
ALTER TABLE groups ADD COLUMN default_plan TEXT NOT NULL DEFAULT '';
ALTER TABLE groups ADD COLUMN pick_up_joiners INTEGER NOT NULL DEFAULT 1;
CREATE INDEX deployments_by_group ON deployments(group_name, id);
-- A failed device's cause as its final report names it (`network`, `exit`, …) and
-- whether another try could pass ('transient' or 'deterministic').
ALTER TABLE targets ADD COLUMN failure_cause TEXT;
ALTER TABLE targets ADD COLUMN failure_class TEXT;
-- The id (hex) of the key whose signature verified an update ('' before this column).
ALTER TABLE updates ADD COLUMN signer TEXT NOT NULL DEFAULT '';
-- The device's rollback target as its last poll said (NULL: none, or not said).
ALTER TABLE devices ADD COLUMN inactive_version TEXT;
CREATE INDEX deployments_by_update ON deployments(update_id);
"#,
];

/// The database handle, cheap to clone: the connection every change goes
/// through, and a second one for [`Db::read`], so that reads (device polls
/// among them) never wait for a commit's fsync: WAL lets a reader see the last
/// committed state while a writer works.
#[derive(Clone)]
pub struct Db {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
}

/// Locks `m` (a panic while locked cannot leave a transaction open, since
/// rusqlite rolls back on drop, so a poisoned lock still guards a consistent connection).
fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Db {
    /// Opens (creating) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Db> {
        let mut conn = Connection::open(path)
            .with_context(|| format!("cannot open the database {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // WAL lets readers run beside the writer; FULL makes every commit durable
        // before it is answered (an acknowledged report survives a power cut).
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            bail!(
                "{}: cannot switch the database to WAL mode (got {mode})",
                path.display()
            );
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn).with_context(|| format!("{}: schema migration", path.display()))?;
        let reader = Connection::open(path)
            .with_context(|| format!("cannot open the database {}", path.display()))?;
        reader.busy_timeout(Duration::from_secs(10))?;
        reader.pragma_update(None, "foreign_keys", "ON")?;
        Ok(Db {
            writer: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
        })
    }

    /// Locks the writing connection (for blocking code: startup, or inside `spawn_blocking`).
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        lock(&self.writer)
    }

    /// Runs `f` on the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, AppError> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || f(&mut db.lock()))
            .await
            .map_err(|e| AppError::internal(format!("database task failed: {e}")))?
    }

    /// Runs `f` in one write transaction and commits it when `f` succeeds.
    pub async fn write<T, F>(&self, f: F) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, AppError> + Send + 'static,
    {
        self.call(move |conn| {
            // IMMEDIATE takes the write lock at once, so reads made to decide a change
            // cannot be invalidated by another writer before the change commits.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

impl Db {
    /// Runs `f` in one read transaction on the reading connection right here,
    /// on the calling (async) thread, if that connection is free; `None` if it
    /// is busy. For short indexed reads on hot paths (a device's poll): the hop
    /// to the blocking pool and back costs more than the read, and the reading
    /// connection never waits for a commit's fsync.
    pub fn read_now<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, AppError>,
    ) -> Option<Result<T, AppError>> {
        let mut conn = match self.reader.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some((|| {
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })())
    }

    /// Runs `f` in one read transaction on the reading connection: a consistent
    /// snapshot of what was committed when it began, across its queries.
    pub async fn read<T, F>(&self, f: F) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, AppError> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&reader);
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| AppError::internal(format!("database task failed: {e}")))?
    }
}

/// Applies the migrations the database has not seen, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    let have: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if have > MIGRATIONS.len() {
        bail!(
            "the database has schema version {have}, newer than this molt-controller knows ({}); \
             run a newer molt-controller",
            MIGRATIONS.len()
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("migration {}", i + 1))?;
        // `user_version` lives in the database header, written by this transaction.
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        tracing::info!("database schema migrated to version {}", i + 1);
    }
    Ok(())
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix seconds as RFC 3339 in UTC (`2026-11-26T10:00:00Z`).
pub fn rfc3339(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A database integer as the API's `u64` (ids, sizes and counts are never negative).
pub fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The API's `u64` as a database integer, refusing values SQLite cannot hold.
pub fn signed(v: u64, what: &str) -> Result<i64, AppError> {
    i64::try_from(v).map_err(|_| AppError::bad_request(format!("{what} {v} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(Db::open(&path).unwrap());
        // Reopening applies nothing twice (a second CREATE TABLE would fail).
        let db = Db::open(&path).unwrap();
        db.lock()
            .pragma_update(None, "user_version", MIGRATIONS.len() + 1)
            .unwrap();
        drop(db);
        let err = format!("{:#}", Db::open(&path).err().unwrap());
        assert!(err.contains("newer than this molt-controller"), "{err}");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
    }
}
