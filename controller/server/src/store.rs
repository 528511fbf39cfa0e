//! The bundle store on disk: `<data>/bundles/<blake3>.bundle`, with uploads streamed into `<data>/tmp/` and moved into the store only once they verified and their row commits.
//!
//! A bundle becomes visible in exactly one step: the transaction that inserts its
//! `updates` row also renames the verified temporary file into the store, and
//! commits last. A crash before the commit leaves at most an unreferenced file,
//! which [`Store::sweep`] removes at the next start together with every leftover
//! temporary, so a half-uploaded or unverified bundle is never served.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use axum::body::Body;
use futures_util::StreamExt;
use molt_engine::bundle::chunk::{could_be_bundle, Head};
use rusqlite::{params, OptionalExtension, TransactionBehavior};
use tempfile::{NamedTempFile, TempDir};
use tokio::io::AsyncWriteExt;

use super::db::{now, Db};
use super::error::AppError;
use super::Shared;
use molt_api::Update;
use molt_bundle::inspect;

/// Where bundles and temporaries live.
pub struct Store {
    bundles: PathBuf,
    tmp: PathBuf,
}

impl Store {
    /// Opens the store under `data`, creating its directories and removing every
    /// temporary a previous run left (an upload or build it did not finish).
    pub fn open(data: &Path) -> Result<Store> {
        let s = Store {
            bundles: data.join("bundles"),
            tmp: data.join("tmp"),
        };
        if s.tmp.exists() {
            // Leftovers are garbage, never state: failing to remove one is worth a
            // warning, not a refusal to start.
            if let Err(e) = fs::remove_dir_all(&s.tmp) {
                tracing::warn!("cannot clear {}: {e}", s.tmp.display());
            }
        }
        for d in [&s.bundles, &s.tmp] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        Ok(s)
    }

    /// The file of the bundle with this BLAKE3.
    pub fn bundle_path(&self, blake3: &str) -> PathBuf {
        self.bundles.join(format!("{blake3}.bundle"))
    }

    /// A new temporary file (removed when dropped unless persisted).
    pub fn temp_file(&self) -> Result<NamedTempFile, AppError> {
        NamedTempFile::new_in(&self.tmp).map_err(|e| {
            AppError::internal(format!(
                "cannot create a file in {}: {e}",
                self.tmp.display()
            ))
        })
    }

    /// A new temporary directory (removed when dropped).
    pub fn temp_dir(&self) -> Result<TempDir, AppError> {
        TempDir::new_in(&self.tmp).map_err(|e| {
            AppError::internal(format!(
                "cannot create a directory in {}: {e}",
                self.tmp.display()
            ))
        })
    }

    /// Removes bundle files no update refers to (a crash between the rename and
    /// the commit), and warns about updates whose file is missing.
    pub fn sweep(&self, db: &Db) -> Result<()> {
        let known: HashSet<String> = {
            let conn = db.lock();
            let mut st = conn.prepare("SELECT blake3 FROM updates")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for item in fs::read_dir(&self.bundles)
            .with_context(|| format!("cannot list {}", self.bundles.display()))?
        {
            let path = item?.path();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            if !known.contains(stem) {
                tracing::warn!("removing {}: no update refers to it", path.display());
                fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        for h in &known {
            if !self.bundle_path(h).exists() {
                tracing::error!(
                    "bundle file {} is missing; its update cannot be downloaded",
                    self.bundle_path(h).display()
                );
            }
        }
        Ok(())
    }
}

/// Syncs a directory, making renames and creations in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A body received into a temporary file.
pub struct Received {
    /// The file.
    pub file: NamedTempFile,
    /// BLAKE3 of its content, hex.
    pub blake3: String,
    /// Its size.
    pub size: u64,
}

/// Streams the bundle `body` into a temporary file, hashing it on the way; refuses
/// (413) past `max` bytes, and (400) a body that does not start like a bundle.
pub async fn receive(store: &Store, body: Body, max: u64) -> Result<Received, AppError> {
    let file = store.temp_file()?;
    let std_file = file
        .reopen()
        .map_err(|e| AppError::internal(format!("cannot open {}: {e}", file.path().display())))?;
    let mut out = tokio::fs::File::from_std(std_file);
    let mut hasher = blake3::Hasher::new();
    let mut size: u64 = 0;
    let mut prefix = Vec::with_capacity(Head::LEN);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| AppError::bad_request(format!("upload interrupted: {e}")))?;
        size += chunk.len() as u64;
        if size > max {
            return Err(AppError::too_large(format!(
                "bundle larger than the limit of {max} bytes (--max-bundle-bytes)"
            )));
        }
        // Refuse what is plainly not a bundle at its first bytes, rather than after
        // gigabytes; everything else is the decoder's job once the body is complete.
        if prefix.len() < Head::LEN {
            let n = (Head::LEN - prefix.len()).min(chunk.len());
            prefix.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
            if !could_be_bundle(&prefix) {
                return Err(AppError::bad_request(format!(
                    "bundle refused: {}",
                    molt_engine::Error::BadMagic
                )));
            }
        }
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(|e| AppError::internal(format!("cannot write the upload: {e}")))?;
    }
    out.sync_all()
        .await
        .map_err(|e| AppError::internal(format!("cannot write the upload: {e}")))?;
    Ok(Received {
        file,
        blake3: hasher.finalize().to_hex().to_string(),
        size,
    })
}

/// Verifies a received bundle completely with the trusted keys and stores it as a
/// new update: one transaction inserts the row and renames the file into the store.
/// Blocking: run it on the blocking pool.
pub fn ingest(state: &Shared, got: Received, comment: Option<String>) -> Result<Update, AppError> {
    let path = got.file.path().to_path_buf();
    let decoded = inspect::decode(&path, &state.keys, false, None)
        .map_err(|e| AppError::internal(format!("cannot read the upload: {e:#}")))?;
    if let Some(r) = &decoded.refusal {
        return Err(AppError::bad_request(format!("bundle refused: {r}")));
    }
    let m = decoded
        .manifest()
        .ok_or_else(|| AppError::bad_request("bundle refused: no manifest was read"))?;
    let kind = match m.kind {
        molt_engine::bundle::BundleKind::Full => "full",
        molt_engine::bundle::BundleKind::Patch { .. } => "patch",
    };
    let recipe = inspect::signed_recipe(&m.recipe);
    let recipe_json = serde_json::to_string(&recipe)
        .map_err(|e| AppError::internal(format!("cannot store the recipe: {e}")))?;
    let comment = comment.unwrap_or_else(|| m.comment.to_owned());
    let version = m.version.to_owned();
    let compatible = m.compatible.to_owned();
    let signer = decoded.verified_by.map(hex::encode).unwrap_or_default();
    let created = now();
    let dest = state.store.bundle_path(&got.blake3);

    let mut conn = state.db.lock();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let existing: Option<i64> = tx
        .query_row(
            "SELECT id FROM updates WHERE version = ?1",
            [&version],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = existing {
        return Err(AppError::conflict(format!(
            "version {version} exists already (update {id})"
        )));
    }
    // Equal bytes mean an equal version, so this only guards against a hash collision.
    let same: Option<String> = tx
        .query_row(
            "SELECT version FROM updates WHERE blake3 = ?1",
            [&got.blake3],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(v) = same {
        return Err(AppError::conflict(format!(
            "this bundle is stored already, as version {v}"
        )));
    }
    tx.execute(
        "INSERT INTO updates (version, compatible, kind, size, blake3, comment, recipe, created,
             signer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            version,
            compatible,
            kind,
            super::db::signed(got.size, "bundle size")?,
            got.blake3,
            comment,
            recipe_json,
            created,
            signer
        ],
    )?;
    let id = super::db::unsigned(tx.last_insert_rowid());
    got.file
        .persist(&dest)
        .map_err(|e| AppError::internal(format!("cannot move the bundle into the store: {e}")))?;
    let stored = sync_dir(dest.parent().unwrap_or(Path::new(".")))
        .map_err(|e| AppError::internal(format!("cannot sync the bundle store: {e}")))
        .and_then(|()| tx.commit().map_err(AppError::from));
    if let Err(e) = stored {
        // Not committed: the file must not outlive the row it belongs to.
        let _ = fs::remove_file(&dest);
        return Err(e);
    }
    tracing::info!(
        "stored update {id}: version {version} for {compatible}, {} bytes",
        got.size
    );
    Ok(Update {
        id,
        version,
        compatible,
        kind: kind.to_owned(),
        size: got.size,
        blake3: got.blake3,
        comment,
        created: super::db::rfc3339(created),
        recipe,
        signer,
        deployments: Vec::new(),
    })
}
