//! The fetching phase: streams a bundle through the verifying decoder into the inactive slot, saving a resume checkpoint every few MiB so a restarted agent continues where it stopped.
//!
//! # Resume across a restart
//!
//! Every [`CHECKPOINT_BYTES`] (or [`CHECKPOINT_SECS`] on a slow link) at a chunk
//! boundary, the slot and staging filesystems are flushed with one `syncfs` each,
//! then `staging/checkpoint` is replaced atomically with the decoder's checkpoint
//! (engine: `Decoder::checkpoint`), the extractor's state (directories still open,
//! the file in progress) and the server's validator. The order matters: the
//! checkpoint never describes bytes that are not durable.
//!
//! After a restart the state machine asks for `Fetch { resume: true }`. The agent
//! then feeds the bundle's first bytes (kept in `staging/head`) to a fresh decoder,
//! which verifies the manifest again with today's keys, applies the checkpoint,
//! re-hashes the part of the file in progress that is already on disk, sweeps the
//! one temporary file the crash may have left, and asks the source for the rest
//! (`Range` for HTTP, a seek for a file). Anything that does not fit (no
//! checkpoint, another bundle, a server that ignores `Range`, a damaged partial
//! file) falls back to downloading from the start: a resume is an optimisation,
//! never a way around verification.
//!
//! # Abort and progress
//!
//! The read loop looks at the daemon's abort flag after every read and stops
//! with an `Aborted` failure (the state machine then rolls back: nothing of the
//! recipe has run, and the active slot was never touched). It also hands the
//! bundle position to the reporter, which sends progress at most once a second.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use molt_engine::bundle::zstd::LibZstd;
use molt_engine::bundle::{
    Buffers, BundleKind, Decoder, Event as BundleEvent, Manifest, Trust, CHECKPOINT_MAX,
};
use molt_engine::slot::{Slot, Status};
use molt_engine::update::{CauseKind, Plan};
use molt_engine::Error as BundleError;
use molt_engine::Limits;
use serde::{Deserialize, Serialize};

use super::note::SlotNote;
use super::writer::{Flusher, Writer};
use super::{layout, slot_name, write_durable, Device};
use crate::fetch;
use crate::fsops::{self, ExtractState, SlotDir, TMP_PREFIX};

/// Download progress between two checkpoints, at most (bytes of the bundle).
pub const CHECKPOINT_BYTES: u64 = 32 * 1024 * 1024;

/// Time between two checkpoints, at most, while bytes arrive (a slow link still saves progress).
pub const CHECKPOINT_SECS: u64 = 15;

/// Time between two checkpoints, at least: a fast source redoes at most this much
/// work after a power cut instead of waiting for a syncfs every [`CHECKPOINT_BYTES`].
pub const CHECKPOINT_MIN_MILLIS: u64 = 2000;

/// Test hooks (environment, `test-hooks` builds only): a smaller checkpoint
/// interval, and a `kill -9` of the agent once the download passes a byte offset,
/// for the restart tests.
fn test_hook(name: &str) -> Option<u64> {
    crate::crashpoint::var(name)?.parse().ok()
}

/// Why the phase failed, as the state machine's cause plus a sentence for the log.
type Failure = (CauseKind, String);

/// What `staging/checkpoint` holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    /// The engine's checkpoint record (CRC-protected, bound to the bundle).
    decoder: Vec<u8>,
    extract: ExtractState,
    validator: Option<String>,
}

/// One attempt's result: done, failed, or a resume that did not fit (start over).
enum Attempt {
    Done(Plan),
    Failed(Failure),
    CannotResume(String),
}

fn fs_failure(e: fsops::FsError) -> Failure {
    let kind = if e.is_no_space() {
        CauseKind::NoSpace
    } else {
        CauseKind::Io
    };
    (kind, e.to_string())
}

fn bundle_failure(e: BundleError, path: &str) -> Failure {
    let kind = match e {
        BundleError::Incompatible => CauseKind::Incompatible,
        BundleError::Downgrade { .. } => CauseKind::Downgrade,
        _ => CauseKind::BadBundle,
    };
    let mut why = format!("bundle refused: {e}");
    if matches!(e, BundleError::Policy { .. }) && !path.is_empty() {
        why.push_str(&format!(" (`{path}`)"));
    }
    (kind, why)
}

/// The version and entry-table digest of the local bundle file at `path`, from its
/// verified manifest (its head only is read), if this device would accept it
/// (compatible, not below the release floor `floor`).
pub(super) fn peek_manifest(
    path: &str,
    cfg: &crate::config::Config,
    floor: u64,
) -> anyhow::Result<(String, [u8; 32])> {
    let mut f = File::open(path)?;
    let limits = cfg.limits;
    let (m, w, _) = Buffers::required(&limits, limits.max_chunk_size);
    let (mut mb, mut wb) = (vec![0u8; m], vec![0u8; w]);
    let trust = Trust::Pinned {
        keys: &cfg.trusted_keys,
        revoked: &cfg.revoked_keys,
    };
    let bufs = Buffers {
        manifest: &mut mb,
        wire: &mut wb,
        raw: &mut [],
    };
    let mut dec = Decoder::new(trust, limits, LibZstd::new()?, bufs).chain_only();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        anyhow::ensure!(n > 0, "{path} ends before its manifest");
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let fed = dec.feed(rest).map(|f| {
                (
                    f.consumed,
                    matches!(f.event, Some(BundleEvent::ManifestVerified { .. })),
                )
            });
            let (consumed, verified) = fed.map_err(|e| anyhow::anyhow!("{e}"))?;
            if verified {
                let m =
                    Manifest::decode(dec.manifest_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
                m.check_compatible(&cfg.compatible)
                    .and_then(|()| m.check_floor(floor))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                return Ok((m.version.to_owned(), m.entries.digest));
            }
            rest = &rest[consumed..];
        }
    }
}

/// Checks the local bundle file at `path` as far as it can be without decompressing:
/// head, signature, manifest, and every chunk's digest in the signed chain.
fn chain_check(
    path: &str,
    trust: Trust<'_>,
    limits: Limits,
    buf: &mut [u8],
) -> Result<(), Failure> {
    let mut f = File::open(path).map_err(|e| {
        (
            CauseKind::Network,
            format!("cannot open bundle file {path}: {e}"),
        )
    })?;
    let (m, w, _) = Buffers::required(&limits, limits.max_chunk_size);
    let (mut mb, mut wb) = (vec![0u8; m], vec![0u8; w]);
    let z = LibZstd::new().map_err(|e| (CauseKind::Io, format!("zstd: {e}")))?;
    let bufs = Buffers {
        manifest: &mut mb,
        wire: &mut wb,
        raw: &mut [],
    };
    let mut dec = Decoder::new(trust, limits, z, bufs).chain_only();
    let refused = |dec: &Decoder<'_, '_, LibZstd>, e| bundle_failure(e, dec.failed_path());
    loop {
        let n = f.read(buf).map_err(|e| {
            (
                CauseKind::Io,
                format!("cannot read bundle file {path}: {e}"),
            )
        })?;
        if n == 0 {
            return dec.finish().map_err(|e| refused(&dec, e));
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let fed = dec.feed(rest).map(|f| f.consumed);
            rest = &rest[fed.map_err(|e| refused(&dec, e))?..];
        }
    }
}

impl Device {
    /// Streams the bundle into `slot` with full verification; returns the signed recipe's
    /// plan. With `resume`, continues from the last checkpoint if there is a usable one.
    pub(super) fn fetch(&mut self, slot: Slot, resume: bool) -> Result<Plan, Failure> {
        if slot == self.record.active() {
            return Err((
                CauseKind::Io,
                "refusing to write into the active slot".into(),
            ));
        }
        let source = fs::read_to_string(self.data.join(layout::SOURCE))
            .map_err(|e| (CauseKind::Io, format!("no bundle source recorded: {e}")))?;
        let saved = if resume { self.load_checkpoint() } else { None };
        if resume && saved.is_none() {
            self.log("no usable download checkpoint: downloading from the start");
        }
        let attempt = match saved {
            Some(s) => self.download(slot, &source, Some(s)),
            None => self.download(slot, &source, None),
        };
        let result = match attempt {
            Attempt::Done(plan) => Ok(plan),
            Attempt::Failed(f) => Err(f),
            Attempt::CannotResume(why) => {
                self.log(&format!(
                    "cannot resume the download ({why}): downloading from the start"
                ));
                match self.download(slot, &source, None) {
                    Attempt::Done(plan) => Ok(plan),
                    Attempt::Failed(f) => Err(f),
                    Attempt::CannotResume(why) => Err((CauseKind::Io, why)),
                }
            }
        };
        match result {
            Ok(plan) => {
                // Nothing left to resume: a later restart goes on with the next phase.
                let _ = fs::remove_file(self.data.join(layout::CHECKPOINT));
                Ok(plan)
            }
            Err(f) => Err(self.fetch_failed(slot, f)),
        }
    }

    fn load_checkpoint(&self) -> Option<(Vec<u8>, Saved)> {
        let head = fs::read(self.data.join(layout::HEAD)).ok()?;
        let bytes = fs::read(self.data.join(layout::CHECKPOINT)).ok()?;
        let saved: Saved = postcard::from_bytes(&bytes).ok()?;
        Some((head, saved))
    }

    fn save_checkpoint(
        &self,
        slot_dir: &SlotDir,
        staging: &SlotDir,
        decoder: &[u8],
        extract: ExtractState,
        validator: &Option<String>,
    ) -> Result<(), Failure> {
        // Durable data first: the checkpoint must never describe bytes still in the page cache.
        fsops::sync_tree(slot_dir).map_err(fs_failure)?;
        fsops::sync_tree(staging).map_err(fs_failure)?;
        let saved = Saved {
            decoder: decoder.to_vec(),
            extract,
            validator: validator.clone(),
        };
        let bytes = postcard::to_allocvec(&saved)
            .map_err(|e| (CauseKind::Io, format!("cannot encode the checkpoint: {e}")))?;
        write_durable(&self.data.join(layout::CHECKPOINT), &bytes)
            .map_err(|e| (CauseKind::Io, format!("cannot save the checkpoint: {e}")))
    }

    /// The first manifest check of a fresh download: compatibility, version floor, patch
    /// base; then the record says the slot is being staged, and only then is the slot
    /// emptied (or, for a patch, started from the active snapshot).
    fn begin(&mut self, slot: Slot, slot_dir: &SlotDir, m: &Manifest<'_>) -> Result<(), Failure> {
        let active = self.record.active();
        // What the slot holds now, before the record forgets it: a fresh download after
        // an interrupted one of the same install finds the slot Staging, and the first
        // attempt's note already says what was there.
        let deployment = self
            .state
            .deployment()
            .map(super::label)
            .unwrap_or_default();
        let previous = match SlotNote::load(&self.data).filter(|n| n.is_for(slot, &deployment)) {
            Some(n) => n.previous,
            None => {
                let info = self.record.slot(slot);
                (info.status == Status::Good).then(|| info.version.as_str().to_owned())
            }
        };
        m.check_base(self.record.slot(active).version.as_str())
            .map_err(|e| (CauseKind::WrongBase, e.to_string()))?;
        self.record
            .begin_staging(m.version, m.release, m.entries.digest, m.allow_downgrade)
            .map_err(|e| {
                let kind = match e {
                    molt_engine::slot::Error::Downgrade { .. } => CauseKind::Downgrade,
                    _ => CauseKind::Io,
                };
                (kind, format!("slot record: {e}"))
            })?;
        self.save_record()
            .map_err(|e| (CauseKind::Io, format!("{e:#}")))?;
        // Durably before the slot is emptied, so that `status`, `rollback` and the final
        // report can say what was lost even after a crash.
        let note = SlotNote {
            slot: slot_name(slot).to_owned(),
            deployment,
            previous,
            version: m.version.to_owned(),
            source: fs::read_to_string(self.data.join(layout::SOURCE)).unwrap_or_default(),
            why: None,
        };
        if let Err(e) = note.save(&self.data) {
            self.log(&format!(
                "cannot write {}: {e}; `status` will not say what slot {} held",
                self.data.join(layout::SLOT_NOTE).display(),
                slot_name(slot)
            ));
            // An older note must not speak for this install.
            let _ = SlotNote::remove(&self.data);
        }
        // The slot is emptied only now that the manifest verified and the record says it
        // is being staged: a refused bundle must not wipe the snapshot a manual rollback
        // needs.
        if let BundleKind::Patch { .. } = m.kind {
            let report = match fsops::clone_tree(&self.slot_path(active), slot_dir) {
                Ok(r) => r,
                Err(e) => return Err(self.clone_failed(slot, slot_dir, m.version, e)),
            };
            self.log(&format!(
                "patch: slot {} starts as a copy of slot {} ({report})",
                slot_name(slot),
                slot_name(active)
            ));
        } else {
            slot_dir.clear().map_err(fs_failure)?;
        }
        Ok(())
    }

    /// The failure of a patch's copy of the active slot into `slot`: the partial copy is
    /// removed at once (on a full disk it holds the space everything else needs, the
    /// status file included), and the reason says what ran out, where, and by how much.
    fn clone_failed(
        &self,
        slot: Slot,
        slot_dir: &SlotDir,
        version: &str,
        e: fsops::FsError,
    ) -> Failure {
        let active = self.record.active();
        let (s, a) = (slot_name(slot), slot_name(active));
        let (kind, mut why) = if e.is_no_space() {
            (
                CauseKind::NoSpace,
                format!("no space left to copy slot {a} into slot {s} for patch {version}: {e}"),
            )
        } else {
            (
                CauseKind::Io,
                format!("cannot copy slot {a} into slot {s} for patch {version}: {e}"),
            )
        };
        let cleared = slot_dir.clear();
        if e.is_no_space() {
            if let Ok(need) = fsops::content_bytes(&self.slot_path(active)) {
                why.push_str(&format!("; the copy needs {need} bytes of file content"));
            }
            if let Ok(st) = rustix::fs::statvfs(self.slot_path(slot)) {
                why.push_str(&format!(
                    "; {} bytes are free on the file system of slot {s}",
                    st.f_bavail.saturating_mul(st.f_frsize)
                ));
            }
        }
        match cleared {
            Ok(()) => why.push_str(&format!(
                "; the partial copy was removed, slot {s} is empty"
            )),
            Err(c) => why.push_str(&format!("; the partial copy could not be removed: {c}")),
        }
        (kind, why)
    }

    /// Completes the note of an install that emptied `slot` and failed while fetching,
    /// and says in the failure what the slot lost: a bundle is verified as it is written,
    /// so one refused part-way has already replaced the rollback target. After a full
    /// disk, what was written is removed so that the space comes back.
    fn fetch_failed(&self, slot: Slot, (kind, mut why): Failure) -> Failure {
        let deployment = self
            .state
            .deployment()
            .map(super::label)
            .unwrap_or_default();
        let Some(mut note) = SlotNote::load(&self.data).filter(|n| n.is_for(slot, &deployment))
        else {
            // This install never emptied the slot: whatever it held is still there.
            return (kind, why);
        };
        if kind == CauseKind::NoSpace {
            let path = self.slot_path(slot);
            let written = fs::read_dir(&path).is_ok_and(|mut d| d.next().is_some());
            if written {
                match self.free_slot(&path) {
                    Ok(()) => why.push_str(&format!(
                        "; what was written of slot {} was removed to free the space",
                        slot_name(slot)
                    )),
                    Err(e) => why.push_str(&format!(
                        "; what was written of slot {} could not be removed: {e}",
                        slot_name(slot)
                    )),
                }
            }
        }
        note.why = Some(why.clone());
        if let Err(e) = note.save(&self.data) {
            self.log(&format!(
                "cannot write {}: {e}",
                self.data.join(layout::SLOT_NOTE).display()
            ));
        }
        if let Some(v) = &note.previous {
            let how = if kind == CauseKind::BadBundle {
                " (a bundle is verified as it streams into the slot, so one refused \
                 part-way has already replaced what was there)"
            } else {
                ""
            };
            why.push_str(&format!(
                "; the previous snapshot (version {v}) in slot {}, the rollback target, was already \
                 overwritten by this install{how}, so `molt-agent rollback` has nothing to \
                 switch to until an update succeeds",
                slot_name(slot)
            ));
        }
        (kind, why)
    }

    /// Empties a slot a failed download wrote into, the resume checkpoint first (durably):
    /// a checkpoint must never describe files that are gone.
    fn free_slot(&self, path: &Path) -> anyhow::Result<()> {
        let cp = self.data.join(layout::CHECKPOINT);
        match fs::remove_file(&cp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(anyhow::anyhow!("cannot remove {}: {e}", cp.display()))
            }
            _ => {}
        }
        let staging = self.data.join(layout::STAGING);
        File::open(&staging)
            .and_then(|d| crate::durability::sync_all(&d))
            .map_err(|e| anyhow::anyhow!("cannot sync {}: {e}", staging.display()))?;
        SlotDir::open(path)?.clear()?;
        Ok(())
    }

    fn download(&mut self, slot: Slot, source: &str, saved: Option<(Vec<u8>, Saved)>) -> Attempt {
        macro_rules! fail {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(f) => return Attempt::Failed(f),
                }
            };
        }
        let resuming = saved.is_some();
        if !resuming {
            let _ = fs::remove_file(self.data.join(layout::CHECKPOINT));
        }
        let slot_dir = fail!(SlotDir::create(self.slot_path(slot))
            .map_err(fs_failure)
            .map(|d| d.with_label(format!("slot {}", slot_name(slot)))));
        let staging = fail!(SlotDir::create(self.data.join(layout::BUNDLE_FILES))
            .map_err(fs_failure)
            .map(|d| d.with_label("staging")));
        if !resuming {
            fail!(staging.clear().map_err(fs_failure));
        }

        let limits = self.cfg.limits;
        let (m, w, r) = Buffers::required(&limits, limits.max_chunk_size);
        let (mut mb, mut wb, mut rb) = (vec![0u8; m], vec![0u8; w], vec![0u8; r]);
        let z = fail!(LibZstd::new().map_err(|e| (CauseKind::Io, format!("zstd: {e}"))));
        let (keys, revoked) = (self.cfg.trusted_keys.clone(), self.cfg.revoked_keys.clone());
        let trust = Trust::Pinned {
            keys: &keys,
            revoked: &revoked,
        };
        let mut dec = Decoder::new(
            trust,
            limits,
            z,
            Buffers {
                manifest: &mut mb,
                wire: &mut wb,
                raw: &mut rb,
            },
        );
        let mut buf = vec![0u8; 256 * 1024];
        let mut plan = None;

        // Where the bytes come from, and the extractor continuing or starting the slot.
        let (mut reader, validator, total, extractor) = match saved {
            None => {
                if !source.starts_with("http://") && !source.starts_with("https://") {
                    // A local file can be read twice: its whole chunk chain is checked
                    // (hashing only) before the inactive slot is emptied, so a file a
                    // device refuses (cut short, one byte appended, a chunk altered)
                    // costs nothing and the rollback target survives.
                    fail!(chain_check(source, trust, limits, &mut buf));
                }
                let bearer = self.hooks.bearer.as_ref();
                let abort = Some(self.hooks.abort.clone());
                let src = match fetch::open_abortable(source, &self.cfg, bearer, 0, None, abort) {
                    Ok(s) => s,
                    Err(e) => return Attempt::Failed((CauseKind::Network, format!("{e:#}"))),
                };
                let x = fail!(fsops::Extractor::new(&slot_dir, &staging).map_err(fs_failure));
                (src.reader, src.validator, src.total, x)
            }
            Some((head, saved)) => {
                // The stored first bytes, verified again: the manifest must be the one the
                // record is staging, or this checkpoint is not ours.
                let mut rest = &head[..];
                let mut verified = false;
                while !rest.is_empty() {
                    match dec.feed(rest) {
                        Ok(f) => {
                            rest = &rest[f.consumed..];
                            verified |=
                                matches!(f.event, Some(BundleEvent::ManifestVerified { .. }));
                        }
                        Err(e) => return Attempt::CannotResume(format!("stored head: {e}")),
                    }
                }
                if !verified {
                    return Attempt::CannotResume("stored head holds no manifest".into());
                }
                let bytes = dec.manifest_bytes().to_vec();
                let m = match Manifest::decode(&bytes) {
                    Ok(m) => m,
                    Err(e) => return Attempt::CannotResume(format!("stored manifest: {e}")),
                };
                let info = self.record.slot(slot);
                if info.status != Status::Staging || info.digest != m.entries.digest {
                    return Attempt::CannotResume("the slot record stages another bundle".into());
                }
                if fs::read(self.data.join(layout::MANIFEST)).ok().as_deref() != Some(&bytes[..]) {
                    return Attempt::CannotResume("the kept manifest differs".into());
                }
                plan = Some(Plan::from_recipe(&m.recipe));
                let resume = match dec.resume(&saved.decoder) {
                    Ok(r) => r,
                    Err(e) => return Attempt::CannotResume(e.to_string()),
                };
                // A crash leaves at most the temporary file being written when it struck;
                // it must not reach the snapshot. The checkpoint's own file in progress stays.
                let keep = saved.extract.pending_tmp();
                for (dir, is_staging) in [(&slot_dir, false), (&staging, true)] {
                    let k = keep
                        .as_ref()
                        .filter(|(s, _)| *s == is_staging)
                        .map(|(_, p)| p.as_str());
                    if let Err(e) = dir.remove_named(TMP_PREFIX, k) {
                        return Attempt::CannotResume(e.to_string());
                    }
                }
                let x = match fsops::Extractor::resume(&slot_dir, &staging, &saved.extract) {
                    Ok(x) => x,
                    Err(e) => return Attempt::CannotResume(e.to_string()),
                };
                if resume.file_prefix != saved.extract.file_prefix() {
                    return Attempt::CannotResume("decoder and extractor disagree".into());
                }
                let mut refused = None;
                let read = x.read_pending(&mut buf, |bytes| {
                    if refused.is_none() {
                        refused = dec.rehash_prefix(bytes).err();
                    }
                    Ok(())
                });
                if let Err(e) = read {
                    return Attempt::CannotResume(e.to_string());
                }
                if let Some(e) = refused {
                    return Attempt::CannotResume(e.to_string());
                }
                let bearer = self.hooks.bearer.as_ref();
                let abort = Some(self.hooks.abort.clone());
                let at = resume.offset;
                let src = match fetch::open_abortable(
                    source,
                    &self.cfg,
                    bearer,
                    at,
                    saved.validator,
                    abort,
                ) {
                    Ok(s) => s,
                    Err(e) => return Attempt::CannotResume(format!("{e:#}")),
                };
                let (chunk, chunks) = dec.chunk_progress();
                self.log(&format!(
                    "resuming the download at byte {} (chunk {chunk} of {chunks}, {} bytes of the file in progress kept)",
                    resume.offset, resume.file_prefix
                ));
                (src.reader, src.validator, src.total, x)
            }
        };
        if !resuming {
            // The checkpoint's anchor; written before any checkpoint can name it.
            let _ = fs::remove_file(self.data.join(layout::HEAD));
        }

        // From here the extractor belongs to the writing thread (writer.rs); this thread
        // reads and decodes. The scope joins the writer whatever way this block ends.
        std::thread::scope(|scope| {
            let mut writer = Writer::spawn(scope, extractor);
            let mut flusher = Flusher::spawn(scope, &slot_dir);
            let mut cp = vec![0u8; CHECKPOINT_MAX];
            let mut last_cp = (dec.position(), Instant::now());
            let hook = test_hook("MOLT_TEST_CHECKPOINT_BYTES");
            let every = hook.unwrap_or(CHECKPOINT_BYTES);
            // A checkpoint costs a syncfs, which waits for every byte written since the
            // last one: on a fast source it is cheaper to redo a second of work after a
            // power cut than to stall every 32 MiB (tests set the byte interval alone).
            let min_gap = if hook.is_some() {
                Duration::ZERO
            } else {
                Duration::from_millis(CHECKPOINT_MIN_MILLIS)
            };
            let crash_at = test_hook("MOLT_TEST_CRASH_AT_BYTE");
            'read: loop {
                if self.abort_requested() {
                    return Attempt::Failed((
                        CauseKind::Aborted,
                        format!("download aborted by an operator at byte {}", dec.position()),
                    ));
                }
                let n = match reader.read(&mut buf) {
                    Ok(0) => break 'read,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // The source gives up its retry wait when the abort flag is set
                    // (fetch::open_abortable): that is the operator's abort, not the
                    // network's failure.
                    Err(e) if self.abort_requested() => {
                        return Attempt::Failed((
                            CauseKind::Aborted,
                            format!(
                                "download aborted by an operator at byte {}: {e}",
                                dec.position()
                            ),
                        ))
                    }
                    Err(e) => {
                        return Attempt::Failed((
                            CauseKind::Network,
                            format!("reading {source}: {e}"),
                        ))
                    }
                };
                let mut rest = &buf[..n];
                loop {
                    let f = match dec.feed(rest) {
                        Ok(f) => f,
                        Err(e) => {
                            let p = dec.failed_path().to_string();
                            return Attempt::Failed(bundle_failure(e, &p));
                        }
                    };
                    rest = &rest[f.consumed..];
                    let Some(ev) = f.event else { break };
                    match ev {
                        BundleEvent::ManifestVerified { .. } => {
                            let bytes = dec.manifest_bytes().to_vec();
                            let m =
                                fail!(Manifest::decode(&bytes).map_err(|e| bundle_failure(e, "")));
                            fail!(m
                                .check_compatible(&self.cfg.compatible)
                                .map_err(|e| bundle_failure(e, "")));
                            fail!(m
                                .check_floor(self.record.floor())
                                .map_err(|e| bundle_failure(e, "")));
                            fail!(self.begin(slot, &slot_dir, &m));
                            fail!(write_durable(&self.data.join(layout::MANIFEST), &bytes)
                                .map_err(|e| (
                                    CauseKind::Io,
                                    format!("cannot keep the manifest: {e}")
                                )));
                            let mut head = dec.head_bytes().to_vec();
                            head.extend_from_slice(&bytes);
                            fail!(write_durable(&self.data.join(layout::HEAD), &head).map_err(
                                |e| (CauseKind::Io, format!("cannot keep the bundle head: {e}"))
                            ));
                            self.log(&format!(
                                "bundle {} (release {}, {}) verified; writing slot {}",
                                m.version,
                                m.release,
                                if matches!(m.kind, BundleKind::Full) {
                                    "full"
                                } else {
                                    "patch"
                                },
                                slot_name(slot)
                            ));
                            plan = Some(Plan::from_recipe(&m.recipe));
                        }
                        BundleEvent::Done => {}
                        ev => fail!(writer.send(&ev).map_err(fs_failure)),
                    }
                }
                self.progress(dec.position(), total);
                flusher.poke(dec.position());
                if crash_at.is_some_and(|b| dec.position() >= b) {
                    // Test hook: a power cut in the middle of the download.
                    let _ = rustix::process::kill_process(
                        rustix::process::getpid(),
                        rustix::process::Signal::KILL,
                    );
                }
                let (pos, at) = last_cp;
                let since = at.elapsed();
                let due = (dec.position() - pos >= every && since >= min_gap)
                    || (since >= Duration::from_secs(CHECKPOINT_SECS) && dec.position() > pos);
                if due {
                    if let Ok(Some(len)) = dec.checkpoint(&mut cp) {
                        // The writer answers once it applied everything before: the state
                        // matches the decoder's position.
                        if let Some(state) = fail!(writer.state().map_err(fs_failure)) {
                            fail!(self.save_checkpoint(
                                &slot_dir,
                                &staging,
                                &cp[..len],
                                state,
                                &validator
                            ));
                            last_cp = (dec.position(), Instant::now());
                        }
                    }
                }
            }
            if let Err(e) = dec.finish() {
                return Attempt::Failed(bundle_failure(e, ""));
            }
            let stats = fail!(writer.finish().map_err(fs_failure));
            drop(flusher);
            // syncfs reports only write-back errors seen since *its* descriptor was opened,
            // so the handle that wrote the slot is the one that must flush it; Seal flushes
            // again later for whatever the before script and packages wrote.
            fail!(fsops::sync_tree(&slot_dir).map_err(fs_failure));
            fail!(fsops::sync_tree(&staging).map_err(fs_failure));
            self.log(&format!("extracted {stats}"));
            match plan {
                Some(p) => Attempt::Done(p),
                None => Attempt::Failed((CauseKind::BadBundle, "bundle has no manifest".into())),
            }
        })
    }
}
