//! `Extractor`: applies the bundle decoder's entry events to a slot, beneath its directory handle.
//!
//! Each entry lands in its final place only when it is complete: a file is written to
//! a temporary name in its directory (`.molt-tmp.<n>`, created with `O_EXCL |
//! O_NOFOLLOW`) and `renameat(2)`-ed over the destination at `EntryEnd`, after the
//! decoder has checked its digest; symlinks, hardlinks and special files are created
//! under a temporary name and renamed the same way. So a patch never leaves a half
//! file, and an existing symlink at the destination is replaced, never written through.
//!
//! Nothing is fsynced here: one `syncfs(2)` on the slot handle
//! ([`SlotDir::sync`](super::SlotDir::sync)) makes the whole tree durable before the
//! swap, instead of an fsync storm of one per file.
//!
//! Memory does not grow with the bundle: the state is the file being written, the
//! directories still open on the current path (at most the policy's path depth, each
//! kept to set its mode and mtime once its children are in), and one cached parent.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::mem;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use molt_engine::bundle::{EntryHeader, EntryKind, Event};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::beneath::{
    fstat, join, lstat_at, mode, owner, remove_at, resolve_dir, secs, times, SlotDir,
};
use super::error::{ErrorKind, FsError};

/// Prefix of the temporary names entries are created under before the rename into place.
pub const TMP_PREFIX: &str = ".molt-tmp.";

/// How many temporary names are tried when earlier ones exist.
const TMP_TRIES: u32 = 1000;

/// Counts of what an extraction did (for the install log).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractStats {
    /// Regular files written (into the slot or staging).
    pub files: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hardlinks created.
    pub hardlinks: u64,
    /// Paths deleted (`Delete` entries that found something).
    pub deleted: u64,
    /// FIFOs, sockets and device nodes created.
    pub specials: u64,
    /// Entries under `.molt/` that went to the staging directory.
    pub internal: u64,
}

/// `3 files (12345 bytes), 2 directories, 1 symlink`: what a device log says.
impl std::fmt::Display for ExtractStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        super::write_counts(
            f,
            &[
                (self.files, "file", "files"),
                (self.dirs, "directory", "directories"),
                (self.symlinks, "symlink", "symlinks"),
                (self.hardlinks, "hardlink", "hardlinks"),
                (self.specials, "special file", "special files"),
                (self.deleted, "deletion", "deletions"),
                (self.internal, "package file staged", "package files staged"),
            ],
        )?;
        write!(f, "; {} bytes of file content", self.bytes)
    }
}

/// Which directory handle an entry goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Target {
    Slot,
    Staging,
}

/// A directory of the bundle whose subtree is still being written: its mode and mtime are
/// set when the stream leaves it, so that creating children neither fails on a read-only
/// mode nor bumps the mtime afterwards.
struct OpenDir {
    target: Target,
    path: String,
    fd: Arc<OwnedFd>,
    perm: u32,
    mtime: i64,
}

/// The file entry being written: what a checkpoint saves of it, and its open handles.
struct Pending {
    state: PendingState,
    dir: Arc<OwnedFd>,
    file: File,
}

// A file in progress is read and updated field by field in many places; reaching
// its saved state through `Deref` keeps those places short.
impl std::ops::Deref for Pending {
    type Target = PendingState;
    fn deref(&self) -> &PendingState {
        &self.state
    }
}

impl std::ops::DerefMut for Pending {
    fn deref_mut(&mut self) -> &mut PendingState {
        &mut self.state
    }
}

/// An extractor's state between two bundle chunks, saved with the decoder's checkpoint
/// so that an agent restarted mid-download continues the same slot
/// ([`Extractor::save`], [`Extractor::resume`]). Everything else an extractor holds is
/// a cache that can be rebuilt from the slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractState {
    /// Directories whose mode and mtime are still to be set: target, path, mode, mtime.
    open_dirs: Vec<(Target, String, u32, i64)>,
    /// The file being written, if a chunk boundary fell inside it.
    pending: Option<PendingState>,
    stats: ExtractStats,
    tmp_seq: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PendingState {
    target: Target,
    path: String,
    tmp: String,
    size: u64,
    written: u64,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl ExtractState {
    /// Bytes of the file in progress already written (the decoder's file prefix).
    pub fn file_prefix(&self) -> u64 {
        self.pending.as_ref().map_or(0, |p| p.written)
    }

    /// The temporary file in progress, relative to its root and whether that root is
    /// staging (`true`) or the slot: the one `.molt-tmp.*` a resume keeps.
    pub fn pending_tmp(&self) -> Option<(bool, String)> {
        self.pending.as_ref().map(|p| {
            let dir = p.path.rsplit_once('/').map_or("", |(d, _)| d);
            (p.target == Target::Staging, join(dir, &p.tmp))
        })
    }
}

enum Entry {
    /// Between entries.
    Idle,
    /// A file entry: `Data` then `EntryEnd`.
    File(Box<Pending>),
    /// A non-file entry, already applied: only `EntryEnd` may follow.
    Applied,
}

/// Applies decoder events to a slot (and `.molt/` entries to a staging directory), beneath
/// their handles. Feed it every event in order with [`Extractor::apply`], then call
/// [`Extractor::finish`]; make the result durable with [`SlotDir::sync`] on both handles.
///
/// What each entry kind does (the destination's parent must exist: in full bundles the
/// policy guarantees a `Dir` entry before, in patches it comes from the cloned snapshot):
///
/// | entry | syscalls |
/// |---|---|
/// | `File` | `openat(tmp, O_CREAT \| O_EXCL \| O_NOFOLLOW)`, `write`, `fchown` (as root), `fchmod`, `futimens`, `renameat` over the destination (a directory in the way is removed first) |
/// | `Dir` | `mkdirat`, or reuse an existing directory; a file or symlink in the way is unlinked (never followed); `fchown` now, `fchmod` and `futimens` when the stream leaves the directory |
/// | `Symlink` | `symlinkat(tmp)`, `fchownat(AT_SYMLINK_NOFOLLOW)`, `utimensat(AT_SYMLINK_NOFOLLOW)`, `renameat` |
/// | `Hardlink` | `linkat(target, tmp)` (target resolved beneath the handle, not followed), `renameat` |
/// | `Delete` | `unlinkat`, or the whole tree for a directory; missing is fine |
/// | FIFO, socket, device | `mknodat(tmp)`, `fchownat`, `fchmodat`, `utimensat`, `renameat` |
///
/// Owners are applied only when the agent runs as root (otherwise files belong to the agent).
/// Modes are always set explicitly, so the umask does not matter.
pub struct Extractor<'a> {
    slots: [&'a SlotDir; 2],
    roots: [Arc<OwnedFd>; 2],
    as_root: bool,
    open_dirs: Vec<OpenDir>,
    cache: Option<(Target, String, Arc<OwnedFd>)>,
    entry: Entry,
    stats: ExtractStats,
    ops: u64,
    stop_after: Option<u64>,
    crashed: bool,
    tmp_seq: u64,
}

fn idx(t: Target) -> usize {
    match t {
        Target::Slot => 0,
        Target::Staging => 1,
    }
}

/// Whether `anc` is a proper ancestor directory of `path`.
fn is_ancestor(anc: &str, path: &str) -> bool {
    path.strip_prefix(anc).is_some_and(|r| r.starts_with('/'))
}

impl<'a> Extractor<'a> {
    /// An extractor writing the snapshot's entries beneath `slot` and bundle-internal
    /// entries (under `.molt/`, kept with their full path) beneath `staging`. Both should
    /// be empty or hold the tree a patch applies to.
    pub fn new(slot: &'a SlotDir, staging: &'a SlotDir) -> Result<Self, FsError> {
        Ok(Extractor {
            slots: [slot, staging],
            roots: [Arc::new(slot.dup()?), Arc::new(staging.dup()?)],
            as_root: rustix::process::geteuid().is_root(),
            open_dirs: Vec::new(),
            cache: None,
            entry: Entry::Idle,
            stats: ExtractStats::default(),
            ops: 0,
            stop_after: None,
            crashed: false,
            tmp_seq: 0,
        })
    }

    /// The state to save with a decoder checkpoint; `None` in the middle of a non-file
    /// entry (which never spans a chunk boundary, so a checkpoint never needs it).
    pub fn save(&self) -> Option<ExtractState> {
        let pending = match &self.entry {
            Entry::Idle => None,
            Entry::Applied => return None,
            Entry::File(p) => Some(p.state.clone()),
        };
        Some(ExtractState {
            open_dirs: self
                .open_dirs
                .iter()
                .map(|d| (d.target, d.path.clone(), d.perm, d.mtime))
                .collect(),
            pending,
            stats: self.stats,
            tmp_seq: self.tmp_seq,
        })
    }

    /// An extractor continuing from `state` on the same slot and staging directories:
    /// reopens the directories still open and the file in progress, cut back to the
    /// length the checkpoint recorded (anything written after it is written again).
    pub fn resume(
        slot: &'a SlotDir,
        staging: &'a SlotDir,
        state: &ExtractState,
    ) -> Result<Self, FsError> {
        let mut x = Extractor::new(slot, staging)?;
        x.stats = state.stats;
        x.tmp_seq = state.tmp_seq;
        for (t, path, perm, mtime) in &state.open_dirs {
            let fd = resolve_dir(x.roots[idx(*t)].as_fd(), path.as_str())
                .map_err(|e| x.resolve_err(*t, "reopen", path, e))?;
            x.open_dirs.push(OpenDir {
                target: *t,
                path: path.clone(),
                fd: Arc::new(fd),
                perm: *perm,
                mtime: *mtime,
            });
        }
        if let Some(p) = &state.pending {
            let t = p.target;
            let (parent, _) = x.slots[idx(t)].split("reopen", &p.path)?;
            let dir = x
                .parent(t, parent)
                .map_err(|e| x.resolve_err(t, "reopen", &p.path, e))?;
            let open = |dir: &OwnedFd| {
                rfs::openat(
                    dir,
                    p.tmp.as_str(),
                    OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            };
            let fd = match open(&dir) {
                Ok(fd) => fd,
                // The file was completed and renamed into place after the checkpoint (the
                // rename is a file's last step, and the temporary was durable at the
                // checkpoint). It is our own inode: take it back and write it again.
                Err(Errno::NOENT) => {
                    let name = p.path.rsplit_once('/').map_or(p.path.as_str(), |(_, n)| n);
                    rfs::renameat(&dir, name, &dir, p.tmp.as_str())
                        .and_then(|()| open(&dir))
                        .map_err(|e| x.err(t, "reopen", &p.path, e))?
                }
                Err(e) => return Err(x.err(t, "reopen", &p.path, e)),
            };
            // Only a regular file nothing else links to may be cut back (a second link
            // would be cut too).
            let meta = fstat(fd.as_fd()).map_err(|e| x.err(t, "reopen", &p.path, e))?;
            if meta.kind != FileType::RegularFile || meta.nlink != 1 {
                return Err(FsError::other(
                    ErrorKind::Sequence,
                    "reopen",
                    &p.path,
                    x.label(t),
                    "the partial file is not a singly-linked regular file",
                ));
            }
            let mut file = File::from(fd);
            let len = file
                .metadata()
                .map_err(|e| FsError::io("reopen", &p.path, x.label(t), e))?
                .len();
            if len < p.written || p.written > p.size {
                return Err(FsError::other(
                    ErrorKind::Sequence,
                    "reopen",
                    &p.path,
                    x.label(t),
                    "the partial file is shorter than the checkpoint says",
                ));
            }
            file.set_len(p.written)
                .and_then(|()| file.seek(SeekFrom::End(0)))
                .map_err(|e| FsError::io("reopen", &p.path, x.label(t), e))?;
            x.entry = Entry::File(Box::new(Pending {
                state: p.clone(),
                dir,
                file,
            }));
        }
        Ok(x)
    }

    /// Reads back what was written of the file in progress, in pieces, for the decoder's
    /// [`rehash_prefix`](molt_engine::bundle::Decoder::rehash_prefix).
    pub fn read_pending(
        &self,
        buf: &mut [u8],
        mut each: impl FnMut(&[u8]) -> Result<(), FsError>,
    ) -> Result<(), FsError> {
        let Entry::File(p) = &self.entry else {
            return Ok(());
        };
        let mut at = 0u64;
        while at < p.written {
            let want = usize::try_from(p.written - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = p
                .file
                .read_at(&mut buf[..want], at)
                .map_err(|e| FsError::io("read back", &p.path, self.label(p.target), e))?;
            if n == 0 {
                return Err(FsError::other(
                    ErrorKind::Sequence,
                    "read back",
                    &p.path,
                    self.label(p.target),
                    "the partial file ended early",
                ));
            }
            each(&buf[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// Test hook for crash sweeps: lets `ops` more mutating syscalls through (each create,
    /// write, owner/mode/time change, rename, mkdir, removal, link or mknod counts one; a
    /// tree removal counts one), then fails every later one with [`ErrorKind::Crashed`]
    /// without performing it, and leaves temporary files behind as a power cut would.
    pub fn stop_after(&mut self, ops: u64) {
        self.stop_after = Some(self.ops.saturating_add(ops));
    }

    /// How many mutating syscalls have been made so far (see [`Extractor::stop_after`]).
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// What has been done so far.
    pub fn stats(&self) -> &ExtractStats {
        &self.stats
    }

    /// Applies one decoder event. `ManifestVerified` and `Done` are ignored.
    pub fn apply(&mut self, event: &Event<'_>) -> Result<(), FsError> {
        match event {
            Event::EntryStart(h) => self.entry_start(h),
            Event::Data(d) => self.data(d),
            Event::EntryEnd => self.entry_end(),
            Event::ManifestVerified { .. } | Event::Done => Ok(()),
        }
    }

    fn label(&self, t: Target) -> &str {
        self.slots[idx(t)].label()
    }

    fn err(&self, t: Target, op: &'static str, path: &str, e: Errno) -> FsError {
        FsError::from_errno(op, path, self.label(t), e)
    }

    fn resolve_err(&self, t: Target, op: &'static str, path: &str, e: Errno) -> FsError {
        FsError::resolve(op, path, self.label(t), e)
    }

    fn sequence(&self, op: &'static str, path: &str, why: &'static str) -> FsError {
        FsError::other(ErrorKind::Sequence, op, path, self.label(Target::Slot), why)
    }

    /// Counts one mutating operation; `true` if the crash hook stops the sequence here.
    fn stopped(&mut self) -> bool {
        if self.stop_after.is_some_and(|n| self.ops >= n) {
            self.crashed = true;
            return true;
        }
        self.ops += 1;
        false
    }

    /// [`Extractor::stopped`] as an error naming the operation.
    fn tick(&mut self, t: Target, op: &'static str, path: &str) -> Result<(), FsError> {
        if self.stopped() {
            return Err(FsError::other(
                ErrorKind::Crashed,
                op,
                path,
                self.label(t),
                "simulated crash",
            ));
        }
        Ok(())
    }

    /// Starts an entry; non-file entries are applied at once.
    pub fn entry_start(&mut self, h: &EntryHeader<'_>) -> Result<(), FsError> {
        if !matches!(self.entry, Entry::Idle) {
            return Err(self.sequence(
                "start",
                h.path,
                "an entry started before the previous one ended",
            ));
        }
        let t = if h.is_internal() {
            Target::Staging
        } else {
            Target::Slot
        };
        let (parent, name) = self.slots[idx(t)].split("create", h.path)?;
        self.close_dirs(Some(h.path))?;
        let dir = match self.parent(t, parent) {
            Ok(d) => d,
            // Deleting beneath a path that is not there (or not a directory) deletes nothing.
            Err(Errno::NOENT) | Err(Errno::NOTDIR) if h.kind == EntryKind::Delete => {
                self.entry = Entry::Applied;
                return Ok(());
            }
            Err(e) => return Err(self.resolve_err(t, "create", h.path, e)),
        };
        if t == Target::Staging {
            self.stats.internal += 1;
        }
        match h.kind {
            EntryKind::File { size, .. } => {
                self.tick(t, "create", h.path)?;
                let (tmp, fd) = self
                    .make_tmp(&dir, |d, n| {
                        rfs::openat(
                            d,
                            n,
                            // Readable too: a resumed install reads the prefix back.
                            OFlags::RDWR
                                | OFlags::CREATE
                                | OFlags::EXCL
                                | OFlags::NOFOLLOW
                                | OFlags::CLOEXEC,
                            Mode::from_raw_mode(0o600),
                        )
                    })
                    .map_err(|e| self.err(t, "create", h.path, e))?;
                self.entry = Entry::File(Box::new(Pending {
                    state: PendingState {
                        target: t,
                        path: h.path.to_owned(),
                        tmp,
                        size,
                        written: 0,
                        perm: h.mode,
                        uid: h.uid,
                        gid: h.gid,
                        mtime: h.mtime,
                    },
                    dir,
                    file: File::from(fd),
                }));
                return Ok(());
            }
            EntryKind::Dir => self.make_dir(t, h, dir, name)?,
            EntryKind::Symlink { target } => {
                self.tick(t, "symlink", h.path)?;
                let (tmp, ()) = self
                    .make_tmp(&dir, |d, n| rfs::symlinkat(target, d, n))
                    .map_err(|e| self.err(t, "symlink", h.path, e))?;
                self.finish_node(t, h, &dir, &tmp, false)?;
                self.place(t, h.path, &dir, &tmp, name)?;
                self.stats.symlinks += 1;
            }
            EntryKind::Hardlink { target } => {
                let (tparent, tname) = self.slots[idx(t)].split("link", target)?;
                let tdir = self
                    .parent(t, tparent)
                    .map_err(|e| self.resolve_err(t, "link", target, e))?;
                // Only a regular file: a directory cannot be linked anyway, and a
                // second name for a symlink, device node or FIFO is nothing a bundle
                // needs. The host's `molt bundle verify` checks the same rule
                // (`links::Hardlinks`), so a verified full bundle does not fail here.
                match lstat_at(tdir.as_fd(), tname) {
                    Ok(Some(m)) if m.kind == FileType::RegularFile => {}
                    Ok(Some(_)) => {
                        return Err(FsError::other(
                            ErrorKind::LinkTarget,
                            "link",
                            h.path,
                            self.label(t),
                            "refused: the hardlink's target is not a regular file",
                        ))
                    }
                    Ok(None) => {
                        return Err(FsError::other(
                            ErrorKind::LinkTarget,
                            "link",
                            h.path,
                            self.label(t),
                            "refused: the hardlink's target does not exist",
                        ))
                    }
                    Err(e) => return Err(self.err(t, "link", target, e)),
                }
                self.tick(t, "link", h.path)?;
                // Flags 0: a symlink as the target is linked itself, not followed.
                let (tmp, ()) = self
                    .make_tmp(&dir, |d, n| {
                        rfs::linkat(&tdir, tname, d, n, AtFlags::empty())
                    })
                    .map_err(|e| self.resolve_err(t, "link", h.path, e))?;
                self.place(t, h.path, &dir, &tmp, name)?;
                // rename(2) between two names of the same inode succeeds and does nothing
                // (a resumed install re-creating a link it already made): drop the spare.
                let _ = rfs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
                self.stats.hardlinks += 1;
            }
            EntryKind::Delete => {
                self.tick(t, "remove", h.path)?;
                let found = remove_at(dir.as_fd(), name)
                    .map_err(|(e, sub)| self.resolve_err(t, "remove", &join(h.path, &sub), e))?;
                // The removed tree may have held a cached directory.
                self.cache = None;
                if found {
                    self.stats.deleted += 1;
                }
            }
            EntryKind::CharDevice { major, minor } => {
                self.make_node(t, h, &dir, name, FileType::CharacterDevice, major, minor)?
            }
            EntryKind::BlockDevice { major, minor } => {
                self.make_node(t, h, &dir, name, FileType::BlockDevice, major, minor)?
            }
            EntryKind::Fifo => self.make_node(t, h, &dir, name, FileType::Fifo, 0, 0)?,
            EntryKind::Socket => self.make_node(t, h, &dir, name, FileType::Socket, 0, 0)?,
        }
        self.entry = Entry::Applied;
        Ok(())
    }

    /// Content of the current file entry.
    pub fn data(&mut self, bytes: &[u8]) -> Result<(), FsError> {
        let (t, overflow) = match &self.entry {
            Entry::File(p) => (
                p.target,
                p.written.saturating_add(bytes.len() as u64) > p.size,
            ),
            _ => return Err(self.sequence("write", "", "data outside a file entry")),
        };
        let failure = if overflow {
            Some((ErrorKind::Sequence, "more data than the entry's size"))
        } else if self.stopped() {
            Some((ErrorKind::Crashed, "simulated crash"))
        } else {
            None
        };
        let Entry::File(p) = &mut self.entry else {
            return Err(self.sequence("write", "", "data outside a file entry"));
        };
        let result = match failure {
            Some((kind, why)) => Err(FsError::other(
                kind,
                "write",
                &p.path,
                self.slots[idx(t)].label(),
                why,
            )),
            None => p
                .file
                .write_all(bytes)
                .map(|()| p.written += bytes.len() as u64)
                .map_err(|e| FsError::io("write", &p.path, self.slots[idx(t)].label(), e)),
        };
        result.map_err(|e| self.abort(e))
    }

    /// Ends the current entry: a file gets its owner, mode and mtime and is renamed into place.
    pub fn entry_end(&mut self) -> Result<(), FsError> {
        match mem::replace(&mut self.entry, Entry::Idle) {
            Entry::Idle => Err(self.sequence("finish", "", "an entry ended that never started")),
            Entry::Applied => Ok(()),
            Entry::File(p) => {
                let r = self.end_file(&p);
                if r.is_err() {
                    self.entry = Entry::File(p);
                    return r.map_err(|e| self.abort(e));
                }
                self.stats.files += 1;
                self.stats.bytes += p.written;
                Ok(())
            }
        }
    }

    fn end_file(&mut self, p: &Pending) -> Result<(), FsError> {
        let t = p.target;
        if p.written != p.size {
            return Err(self.sequence("finish", &p.path, "the file ended before its size"));
        }
        let fd = p.file.as_fd();
        if self.as_root {
            self.tick(t, "set the owner of", &p.path)?;
            let (u, g) = owner(p.uid, p.gid);
            rfs::fchown(fd, u, g).map_err(|e| self.err(t, "set the owner of", &p.path, e))?;
        }
        // After fchown: changing the owner clears setuid and setgid.
        self.tick(t, "set the mode of", &p.path)?;
        rfs::fchmod(fd, mode(p.perm)).map_err(|e| self.err(t, "set the mode of", &p.path, e))?;
        self.tick(t, "set the mtime of", &p.path)?;
        rfs::futimens(fd, &times(secs(p.mtime), secs(p.mtime)))
            .map_err(|e| self.err(t, "set the mtime of", &p.path, e))?;
        let name = p.path.rsplit_once('/').map_or(p.path.as_str(), |(_, n)| n);
        self.place(t, &p.path, &p.dir, &p.tmp, name)
    }

    /// Drops the file in progress after an error: unlinks its temporary name (freeing the
    /// space, which matters after `ENOSPC`) unless a simulated crash is in progress.
    fn abort(&mut self, e: FsError) -> FsError {
        if let Entry::File(p) = mem::replace(&mut self.entry, Entry::Idle) {
            if !self.crashed {
                let _ = rfs::unlinkat(&p.dir, p.tmp.as_str(), AtFlags::empty());
            }
        }
        e
    }

    /// Completes the extraction: sets the mode and mtime of the directories still open.
    /// Fails if an entry is unfinished (its temporary file is removed).
    pub fn finish(mut self) -> Result<ExtractStats, FsError> {
        if !matches!(self.entry, Entry::Idle) {
            let e = self.sequence("finish", "", "the stream ended inside an entry");
            return Err(self.abort(e));
        }
        self.close_dirs(None)?;
        Ok(self.stats)
    }

    /// Sets mode and mtime of every open directory that is not an ancestor of `next`
    /// (all of them for `None`), innermost first.
    fn close_dirs(&mut self, next: Option<&str>) -> Result<(), FsError> {
        while let Some(top) = self.open_dirs.last() {
            if next.is_some_and(|p| is_ancestor(&top.path, p)) {
                break;
            }
            let (t, path) = (top.target, top.path.clone());
            self.tick(t, "set the mode of", &path)?;
            let Some(d) = self.open_dirs.pop() else { break };
            rfs::fchmod(&d.fd, mode(d.perm))
                .map_err(|e| self.err(t, "set the mode of", &path, e))?;
            rfs::futimens(&d.fd, &times(secs(d.mtime), secs(d.mtime)))
                .map_err(|e| self.err(t, "set the mtime of", &path, e))?;
        }
        Ok(())
    }

    /// The directory `parent` beneath target `t`: the root, an open bundle directory, the
    /// cached one, or a fresh `openat2` resolution (then cached).
    fn parent(&mut self, t: Target, parent: &str) -> Result<Arc<OwnedFd>, Errno> {
        if parent.is_empty() {
            return Ok(self.roots[idx(t)].clone());
        }
        if let Some(d) = self.open_dirs.last() {
            if d.target == t && d.path == parent {
                return Ok(d.fd.clone());
            }
        }
        if let Some((ct, cp, fd)) = &self.cache {
            if *ct == t && cp == parent {
                return Ok(fd.clone());
            }
        }
        let fd = Arc::new(resolve_dir(self.roots[idx(t)].as_fd(), parent)?);
        self.cache = Some((t, parent.to_owned(), fd.clone()));
        Ok(fd)
    }

    /// Creates something under a fresh temporary name in `dir` with `make`, trying the next
    /// name while one exists.
    fn make_tmp<R>(
        &mut self,
        dir: &OwnedFd,
        mut make: impl FnMut(BorrowedFd<'_>, &str) -> Result<R, Errno>,
    ) -> Result<(String, R), Errno> {
        for _ in 0..TMP_TRIES {
            let name = format!("{TMP_PREFIX}{}", self.tmp_seq);
            self.tmp_seq += 1;
            match make(dir.as_fd(), &name) {
                Ok(r) => return Ok((name, r)),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Errno::EXIST)
    }

    /// Renames the temporary `tmp` over `name`, removing a directory tree in the way first
    /// (`renameat(2)` replaces files, symlinks and special files atomically, but not a
    /// directory with a non-directory).
    fn place(
        &mut self,
        t: Target,
        path: &str,
        dir: &OwnedFd,
        tmp: &str,
        name: &str,
    ) -> Result<(), FsError> {
        self.tick(t, "rename into place", path)?;
        match rfs::renameat(dir, tmp, dir, name) {
            Ok(()) => return Ok(()),
            Err(Errno::ISDIR) | Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => {}
            Err(e) => {
                let _ = rfs::unlinkat(dir, tmp, AtFlags::empty());
                return Err(self.err(t, "rename into place", path, e));
            }
        }
        self.tick(t, "remove", path)?;
        remove_at(dir.as_fd(), name)
            .map_err(|(e, sub)| self.resolve_err(t, "remove", &join(path, &sub), e))?;
        self.cache = None;
        self.tick(t, "rename into place", path)?;
        rfs::renameat(dir, tmp, dir, name).map_err(|e| self.err(t, "rename into place", path, e))
    }

    fn make_dir(
        &mut self,
        t: Target,
        h: &EntryHeader<'_>,
        dir: Arc<OwnedFd>,
        name: &str,
    ) -> Result<(), FsError> {
        self.tick(t, "mkdir", h.path)?;
        // Owner-only until the stream leaves the directory and its real mode is set.
        let fd = match rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => match resolve_dir(dir.as_fd(), name) {
                Ok(fd) => fd,
                // A file (ENOTDIR) or a symlink (ELOOP under O_NOFOLLOW / RESOLVE_NO_SYMLINKS)
                // is in the way: the bundle says this is a directory, so replace it.
                Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                    self.tick(t, "remove", h.path)?;
                    rfs::unlinkat(&dir, name, AtFlags::empty())
                        .map_err(|e| self.err(t, "remove", h.path, e))?;
                    self.tick(t, "mkdir", h.path)?;
                    rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                        .map_err(|e| self.err(t, "mkdir", h.path, e))?;
                    resolve_dir(dir.as_fd(), name)
                        .map_err(|e| self.resolve_err(t, "open", h.path, e))?
                }
                Err(e) => return Err(self.resolve_err(t, "open", h.path, e)),
            },
            Err(e) => return Err(self.err(t, "mkdir", h.path, e)),
        };
        if self.as_root {
            self.tick(t, "set the owner of", h.path)?;
            let (u, g) = owner(h.uid, h.gid);
            rfs::fchown(&fd, u, g).map_err(|e| self.err(t, "set the owner of", h.path, e))?;
        }
        self.open_dirs.push(OpenDir {
            target: t,
            path: h.path.to_owned(),
            fd: Arc::new(fd),
            perm: h.mode,
            mtime: h.mtime,
        });
        self.stats.dirs += 1;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn make_node(
        &mut self,
        t: Target,
        h: &EntryHeader<'_>,
        dir: &OwnedFd,
        name: &str,
        kind: FileType,
        major: u32,
        minor: u32,
    ) -> Result<(), FsError> {
        self.tick(t, "mknod", h.path)?;
        let dev = rfs::makedev(major, minor);
        let (tmp, ()) = self
            .make_tmp(dir, |d, n| {
                rfs::mknodat(d, n, kind, Mode::from_raw_mode(0o600), dev)
            })
            .map_err(|e| self.err(t, "mknod", h.path, e))?;
        self.finish_node(t, h, dir, &tmp, true)?;
        self.place(t, h.path, dir, &tmp, name)?;
        self.stats.specials += 1;
        Ok(())
    }

    /// Owner, mode (unless a symlink) and mtime of a node created under `tmp`, by name and
    /// without following it (nodes cannot be opened without side effects: a FIFO blocks).
    fn finish_node(
        &mut self,
        t: Target,
        h: &EntryHeader<'_>,
        dir: &OwnedFd,
        tmp: &str,
        set_mode: bool,
    ) -> Result<(), FsError> {
        if self.as_root {
            self.tick(t, "set the owner of", h.path)?;
            let (u, g) = owner(h.uid, h.gid);
            rfs::chownat(dir, tmp, u, g, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| self.err(t, "set the owner of", h.path, e))?;
        }
        if set_mode {
            self.tick(t, "set the mode of", h.path)?;
            // `tmp` was just created by us with O_EXCL semantics and is not a symlink, so
            // fchmodat (which has no working AT_SYMLINK_NOFOLLOW) cannot be redirected.
            rfs::chmodat(dir, tmp, mode(h.mode), AtFlags::empty())
                .map_err(|e| self.err(t, "set the mode of", h.path, e))?;
        }
        self.tick(t, "set the mtime of", h.path)?;
        rfs::utimensat(
            dir,
            tmp,
            &times(secs(h.mtime), secs(h.mtime)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err(t, "set the mtime of", h.path, e))
    }
}

impl Drop for Extractor<'_> {
    fn drop(&mut self) {
        // An extractor dropped mid-file (the download failed, the decoder refused a chunk)
        // removes its temporary file; the slot is rebuilt or discarded anyway.
        if !self.crashed {
            if let Entry::File(p) = &self.entry {
                let _ = rfs::unlinkat(&p.dir, p.tmp.as_str(), AtFlags::empty());
            }
        }
    }
}
