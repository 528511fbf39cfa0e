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

use molt_engine::bundle::zstd::LibZstd;
use molt_engine::bundle::{
    Buffers, BundleKind, Decoder, Event as BundleEvent, Manifest, Trust, CHECKPOINT_MAX,
};
use molt_engine::slot::{Slot, Status};
use molt_engine::update::{CauseKind, Plan};
use molt_engine::Error as BundleError;
use molt_engine::Limits;

use super::note::SlotNote;
use super::writer::{Flusher, Writer};
use super::{layout, slot_name, write_durable, Device};
use crate::config::Config;
use crate::fetch;
use crate::fsops::{self, Extractor, SlotDir};

mod resume;
use resume::{Cadence, Saved};

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

/// Why one download stopped short of a plan: it failed, or the checkpoint it was to
/// continue from does not fit (then the caller starts over).
enum Stop {
    Failed(Failure),
    CannotResume(String),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Stop {
        Stop::Failed(f)
    }
}

impl Stop {
    /// The failure to report once no further attempt follows.
    fn into_failure(self) -> Failure {
        match self {
            Stop::Failed(f) => f,
            Stop::CannotResume(why) => (CauseKind::Io, why),
        }
    }
}

/// Where a download writes: the inactive slot, and the staging directory for the
/// bundle's own files (packages, scripts).
struct Target {
    slot: Slot,
    dir: SlotDir,
    staging: SlotDir,
}

/// What a download reads from and writes with, fresh or resumed; the plan is known
/// already when a resume verified the stored manifest.
struct Opened<'d> {
    source: fetch::Source,
    extractor: Extractor<'d>,
    plan: Option<Plan>,
}

/// The decoder's memory, sized by the device's limits; the decoder borrows it.
struct Memory {
    manifest: Vec<u8>,
    wire: Vec<u8>,
    raw: Vec<u8>,
}

impl Memory {
    /// `decompress`: room for a decompressed chunk too (a chain-only check needs none).
    fn new(limits: &Limits, decompress: bool) -> Memory {
        let (m, w, r) = Buffers::required(limits, limits.max_chunk_size);
        Memory {
            manifest: vec![0; m],
            wire: vec![0; w],
            raw: vec![0; if decompress { r } else { 0 }],
        }
    }

    fn buffers(&mut self) -> Buffers<'_> {
        Buffers {
            manifest: &mut self.manifest,
            wire: &mut self.wire,
            raw: &mut self.raw,
        }
    }
}

/// The keys the device trusts, from its configuration.
fn pinned(cfg: &Config) -> Trust<'_> {
    Trust::Pinned {
        keys: &cfg.trusted_keys,
        revoked: &cfg.revoked_keys,
    }
}

/// The device's decisions on a verified manifest before anything is written: the
/// compatibility string, then the release floor.
fn accept(m: &Manifest<'_>, cfg: &Config, floor: u64) -> Result<(), BundleError> {
    m.check_compatible(&cfg.compatible)
        .and_then(|()| m.check_floor(floor))
}

fn zstd_failure(e: io::Error) -> Failure {
    (CauseKind::Io, format!("zstd: {e}"))
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

fn is_http(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// The version and entry-table digest of the local bundle file at `path`, from its
/// verified manifest (its head only is read), if this device would accept it
/// (compatible, not below the release floor `floor`).
pub(super) fn peek_manifest(
    path: &str,
    cfg: &Config,
    floor: u64,
) -> anyhow::Result<(String, [u8; 32])> {
    let mut f = File::open(path)?;
    let mut mem = Memory::new(&cfg.limits, false);
    let z = LibZstd::new()?;
    let mut dec = Decoder::new(pinned(cfg), cfg.limits, z, mem.buffers()).chain_only();
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
                accept(&m, cfg, floor).map_err(|e| anyhow::anyhow!("{e}"))?;
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
    let mut mem = Memory::new(&limits, false);
    let z = LibZstd::new().map_err(zstd_failure)?;
    let mut dec = Decoder::new(trust, limits, z, mem.buffers()).chain_only();
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
        let result = match self.download(slot, &source, saved) {
            Err(Stop::CannotResume(why)) => {
                self.log(&format!(
                    "cannot resume the download ({why}): downloading from the start"
                ));
                self.download(slot, &source, None)
            }
            first => first,
        };
        match result.map_err(Stop::into_failure) {
            Ok(plan) => {
                // Nothing left to resume: a later restart goes on with the next phase.
                let _ = fs::remove_file(self.data.join(layout::CHECKPOINT));
                Ok(plan)
            }
            Err(f) => Err(self.fetch_failed(slot, f)),
        }
    }

    /// One download into `slot`: from the start, or continuing `saved`.
    fn download(
        &mut self,
        slot: Slot,
        source: &str,
        saved: Option<(Vec<u8>, Saved)>,
    ) -> Result<Plan, Stop> {
        let resuming = saved.is_some();
        if !resuming {
            let _ = fs::remove_file(self.data.join(layout::CHECKPOINT));
        }
        let target = self.open_target(slot, resuming)?;
        let limits = self.cfg.limits;
        let mut mem = Memory::new(&limits, true);
        let z = LibZstd::new().map_err(zstd_failure)?;
        // The decoder outlives borrows of `self` (the record and the log are written
        // while it runs), so it trusts a copy of the keys.
        let cfg = self.cfg.clone();
        let trust = pinned(&cfg);
        let mut dec = Decoder::new(trust, limits, z, mem.buffers());
        let mut buf = vec![0u8; 256 * 1024];
        let opened = match saved {
            None => {
                let opened = self.start(source, trust, &target, &mut buf)?;
                // The checkpoint's anchor; written before any checkpoint can name it.
                let _ = fs::remove_file(self.data.join(layout::HEAD));
                opened
            }
            Some((head, saved)) => self
                .resume_at(source, &mut dec, &head, saved, &target, &mut buf)
                .map_err(Stop::CannotResume)?,
        };
        Ok(self.stream(source, &target, &mut dec, opened, &mut buf)?)
    }

    /// The slot's directory and the staging directory, staging emptied unless resuming.
    fn open_target(&self, slot: Slot, resuming: bool) -> Result<Target, Failure> {
        let dir = SlotDir::create(self.slot_path(slot))
            .map_err(fs_failure)?
            .with_label(format!("slot {}", slot_name(slot)));
        let staging = SlotDir::create(self.data.join(layout::BUNDLE_FILES))
            .map_err(fs_failure)?
            .with_label("staging");
        if !resuming {
            staging.clear().map_err(fs_failure)?;
        }
        Ok(Target { slot, dir, staging })
    }

    /// The source and extractor of a download from the start. A local file can be read
    /// twice: its whole chunk chain is checked (hashing only) before the inactive slot
    /// is emptied, so a file a device refuses (cut short, one byte appended, a chunk
    /// altered) costs nothing and the rollback target survives.
    fn start<'d>(
        &self,
        source: &str,
        trust: Trust<'_>,
        target: &'d Target,
        buf: &mut [u8],
    ) -> Result<Opened<'d>, Failure> {
        if !is_http(source) {
            chain_check(source, trust, self.cfg.limits, buf)?;
        }
        let src = self
            .open_source(source, 0, None)
            .map_err(|e| (CauseKind::Network, format!("{e:#}")))?;
        let extractor = Extractor::new(&target.dir, &target.staging).map_err(fs_failure)?;
        Ok(Opened {
            source: src,
            extractor,
            plan: None,
        })
    }

    /// The bundle from byte `at` on; a wait between retries ends when the abort flag is set.
    fn open_source(
        &self,
        source: &str,
        at: u64,
        validator: Option<String>,
    ) -> anyhow::Result<fetch::Source> {
        let bearer = self.hooks.bearer.as_ref();
        let abort = Some(self.hooks.abort.clone());
        fetch::open_abortable(source, &self.cfg, bearer, at, validator, abort)
    }

    /// Reads the source to its end through the decoder. From here the extractor belongs
    /// to the writing thread (writer.rs); this thread reads and decodes, and saves a
    /// checkpoint when one is due. The scope joins the writer however this ends.
    fn stream(
        &mut self,
        source: &str,
        target: &Target,
        dec: &mut Decoder<'_, '_, LibZstd>,
        opened: Opened<'_>,
        buf: &mut [u8],
    ) -> Result<Plan, Failure> {
        let Opened {
            source: src,
            extractor,
            mut plan,
        } = opened;
        let fetch::Source {
            mut reader,
            validator,
            total,
        } = src;
        std::thread::scope(|scope| {
            let mut writer = Writer::spawn(scope, extractor);
            let mut flusher = Flusher::spawn(scope, &target.dir);
            let mut cp = vec![0u8; CHECKPOINT_MAX];
            let mut cadence = Cadence::new(dec.position());
            let crash_at = test_hook("MOLT_TEST_CRASH_AT_BYTE");
            while let Some(n) = self.read_some(&mut *reader, source, dec.position(), buf)? {
                let mut rest = &buf[..n];
                loop {
                    let f = match dec.feed(rest) {
                        Ok(f) => f,
                        Err(e) => return Err(bundle_failure(e, dec.failed_path())),
                    };
                    rest = &rest[f.consumed..];
                    let Some(ev) = f.event else { break };
                    match ev {
                        BundleEvent::ManifestVerified { .. } => {
                            plan = Some(self.on_manifest(target, dec)?);
                        }
                        BundleEvent::Done => {}
                        ev => writer.send(&ev).map_err(fs_failure)?,
                    }
                }
                let at = dec.position();
                self.progress(at, total);
                flusher.poke(at);
                if crash_at.is_some_and(|b| at >= b) {
                    // Test hook: a power cut in the middle of the download.
                    let _ = rustix::process::kill_process(
                        rustix::process::getpid(),
                        rustix::process::Signal::KILL,
                    );
                }
                if cadence.due(at) {
                    if let Ok(Some(len)) = dec.checkpoint(&mut cp) {
                        // The writer answers once it applied everything before: the state
                        // matches the decoder's position.
                        if let Some(state) = writer.state().map_err(fs_failure)? {
                            self.save_checkpoint(target, &cp[..len], state, &validator)?;
                            cadence.saved(at);
                        }
                    }
                }
            }
            dec.finish().map_err(|e| bundle_failure(e, ""))?;
            let stats = writer.finish().map_err(fs_failure)?;
            drop(flusher);
            // syncfs reports only write-back errors seen since *its* descriptor was opened,
            // so the handle that wrote the slot is the one that must flush it; Seal flushes
            // again later for whatever the before script and packages wrote.
            fsops::sync_tree(&target.dir).map_err(fs_failure)?;
            fsops::sync_tree(&target.staging).map_err(fs_failure)?;
            self.log(&format!("extracted {stats}"));
            plan.ok_or_else(|| (CauseKind::BadBundle, "bundle has no manifest".into()))
        })
    }

    /// The next bytes of the bundle into `buf`, `None` at its end. The operator's abort
    /// is looked at before every read; `at` is the decoder's position, for the message.
    fn read_some(
        &self,
        reader: &mut dyn Read,
        source: &str,
        at: u64,
        buf: &mut [u8],
    ) -> Result<Option<usize>, Failure> {
        loop {
            if self.abort_requested() {
                return Err((
                    CauseKind::Aborted,
                    format!("download aborted by an operator at byte {at}"),
                ));
            }
            match reader.read(buf) {
                Ok(0) => return Ok(None),
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The source gives up its retry wait when the abort flag is set
                // (fetch::open_abortable): that is the operator's abort, not the
                // network's failure.
                Err(e) if self.abort_requested() => {
                    return Err((
                        CauseKind::Aborted,
                        format!("download aborted by an operator at byte {at}: {e}"),
                    ))
                }
                Err(e) => return Err((CauseKind::Network, format!("reading {source}: {e}"))),
            }
        }
    }

    /// The manifest of a fresh download verified: the device's checks, the record and
    /// the slot (`begin`), then the manifest and the bundle's head kept durably for a
    /// resume. Returns the signed recipe's plan.
    fn on_manifest(
        &mut self,
        target: &Target,
        dec: &Decoder<'_, '_, LibZstd>,
    ) -> Result<Plan, Failure> {
        let bytes = dec.manifest_bytes().to_vec();
        let m = Manifest::decode(&bytes).map_err(|e| bundle_failure(e, ""))?;
        accept(&m, &self.cfg, self.record.floor()).map_err(|e| bundle_failure(e, ""))?;
        self.begin(target, &m)?;
        write_durable(&self.data.join(layout::MANIFEST), &bytes)
            .map_err(|e| (CauseKind::Io, format!("cannot keep the manifest: {e}")))?;
        let mut head = dec.head_bytes().to_vec();
        head.extend_from_slice(&bytes);
        write_durable(&self.data.join(layout::HEAD), &head)
            .map_err(|e| (CauseKind::Io, format!("cannot keep the bundle head: {e}")))?;
        let kind = if matches!(m.kind, BundleKind::Full) {
            "full"
        } else {
            "patch"
        };
        self.log(&format!(
            "bundle {} (release {}, {kind}) verified; writing slot {}",
            m.version,
            m.release,
            slot_name(target.slot)
        ));
        Ok(Plan::from_recipe(&m.recipe))
    }

    /// The first manifest check of a fresh download: compatibility, version floor, patch
    /// base; then the record says the slot is being staged, and only then is the slot
    /// emptied (or, for a patch, started from the active snapshot).
    fn begin(&mut self, t: &Target, m: &Manifest<'_>) -> Result<(), Failure> {
        let (slot, slot_dir) = (t.slot, &t.dir);
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
}
