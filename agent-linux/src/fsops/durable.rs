//! Durability and the `current` swap: the `FsOps` seam every commit-protocol step goes through, its real, recording and crash-after-N implementations, `sync_tree`, `swap_current` and `read_current`.
//!
//! The protocol follows reliability.md: make the staged slot durable with one
//! `syncfs(2)` (an error is fatal, never retried), then publish it by renaming a new
//! symlink over `current`, fsyncing the directory before and after the rename. Each
//! single step is one [`FsOps`] call, so a test can stop after any of them
//! ([`CrashAfter`]) or record them all ([`Recorder`]) and replay every prefix.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::beneath::{lstat_at, split_path, SlotDir, RESOLVE};
use super::error::{ErrorKind, FsError};
use crate::crashpoint;

/// The name of the link that names the active slot, in the data directory.
pub const CURRENT: &str = "current";
/// The name the next `current` link is created under before it is renamed over `current`.
pub const CURRENT_NEW: &str = "current.new";

/// The single file-system steps of the commit protocol. Every implementation performs
/// exactly one syscall-level effect per call (plus the opens it needs), so a crash can be
/// simulated between any two of them.
///
/// `dir` is an existing directory; `name` is one path component within it (no `/`, not
/// `.` or `..`) and is never followed if it is a symlink.
pub trait FsOps {
    /// Creates or truncates `dir/name` (mode `0o644`) and writes `bytes`:
    /// `openat(O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW)`, `write(2)`. Not fsynced.
    fn write(&mut self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FsError>;
    /// `fsync(2)` of the file `dir/name`.
    fn fsync(&mut self, dir: &Path, name: &str) -> Result<(), FsError>;
    /// `fsync(2)` of the directory `dir` itself: makes its entries (creations, renames,
    /// unlinks) durable.
    fn fsync_dir(&mut self, dir: &Path) -> Result<(), FsError>;
    /// `renameat(2)` of `dir/from` over `dir/to` (atomic, not durable until [`FsOps::fsync_dir`]).
    fn rename(&mut self, dir: &Path, from: &str, to: &str) -> Result<(), FsError>;
    /// `symlinkat(2)`: creates `dir/name` pointing at `target`.
    fn symlink(&mut self, dir: &Path, name: &str, target: &str) -> Result<(), FsError>;
    /// `mkdirat(2)`: creates the directory `dir/name`.
    fn mkdir(&mut self, dir: &Path, name: &str, mode: u32) -> Result<(), FsError>;
    /// `unlinkat(2)` of a file or symlink `dir/name`.
    fn unlink(&mut self, dir: &Path, name: &str) -> Result<(), FsError>;
    /// `syncfs(2)` on a slot's handle: every write to its filesystem becomes durable, and
    /// writeback errors since the handle was opened are reported.
    fn syncfs(&mut self, slot: &SlotDir) -> Result<(), FsError>;
}

/// One recorded [`FsOps`] call, owned (with the written bytes, so it can be replayed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// [`FsOps::write`].
    Write {
        /// Directory.
        dir: PathBuf,
        /// File name.
        name: String,
        /// Content.
        bytes: Vec<u8>,
    },
    /// [`FsOps::fsync`].
    Fsync {
        /// Directory.
        dir: PathBuf,
        /// File name.
        name: String,
    },
    /// [`FsOps::fsync_dir`].
    FsyncDir {
        /// Directory.
        dir: PathBuf,
    },
    /// [`FsOps::rename`].
    Rename {
        /// Directory.
        dir: PathBuf,
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// [`FsOps::symlink`].
    Symlink {
        /// Directory.
        dir: PathBuf,
        /// Link name.
        name: String,
        /// Link target.
        target: String,
    },
    /// [`FsOps::mkdir`].
    Mkdir {
        /// Directory.
        dir: PathBuf,
        /// New directory's name.
        name: String,
        /// Permission bits.
        mode: u32,
    },
    /// [`FsOps::unlink`].
    Unlink {
        /// Directory.
        dir: PathBuf,
        /// Name.
        name: String,
    },
    /// [`FsOps::syncfs`] (replayed as `syncfs` on a handle opened at `path`).
    Syncfs {
        /// The slot's path.
        path: PathBuf,
    },
}

impl Step {
    /// Performs this step again through `ops`.
    pub fn replay(&self, ops: &mut dyn FsOps) -> Result<(), FsError> {
        match self {
            Step::Write { dir, name, bytes } => ops.write(dir, name, bytes),
            Step::Fsync { dir, name } => ops.fsync(dir, name),
            Step::FsyncDir { dir } => ops.fsync_dir(dir),
            Step::Rename { dir, from, to } => ops.rename(dir, from, to),
            Step::Symlink { dir, name, target } => ops.symlink(dir, name, target),
            Step::Mkdir { dir, name, mode } => ops.mkdir(dir, name, *mode),
            Step::Unlink { dir, name } => ops.unlink(dir, name),
            Step::Syncfs { path } => ops.syncfs(&SlotDir::open(path)?),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Write { dir, name, bytes } => {
                write!(
                    f,
                    "write {} ({} bytes)",
                    dir.join(name).display(),
                    bytes.len()
                )
            }
            Step::Fsync { dir, name } => write!(f, "fsync {}", dir.join(name).display()),
            Step::FsyncDir { dir } => write!(f, "fsync {}/", dir.display()),
            Step::Rename { dir, from, to } => {
                write!(f, "rename {} -> {to}", dir.join(from).display())
            }
            Step::Symlink { dir, name, target } => {
                write!(f, "symlink {} -> {target}", dir.join(name).display())
            }
            Step::Mkdir { dir, name, mode } => {
                write!(f, "mkdir {} ({mode:o})", dir.join(name).display())
            }
            Step::Unlink { dir, name } => write!(f, "unlink {}", dir.join(name).display()),
            Step::Syncfs { path } => write!(f, "syncfs {}", path.display()),
        }
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

fn place(dir: &Path) -> String {
    dir.display().to_string()
}

fn open_dir(dir: &Path) -> Result<OwnedFd, FsError> {
    rfs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FsError::from_errno("open", "", &place(dir), e))
}

fn check_name<'n>(op: &'static str, dir: &Path, name: &'n str) -> Result<&'n str, FsError> {
    match split_path(name) {
        Some(("", n)) => Ok(n),
        _ => Err(FsError::other(
            ErrorKind::BadPath,
            op,
            name,
            &place(dir),
            "not a single path component",
        )),
    }
}

/// The real calls; the [`FsOps`] impl adds the crash-sweep hook after each.
impl RealFs {
    fn do_write(&mut self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FsError> {
        let name = check_name("write", dir, name)?;
        let d = open_dir(dir)?;
        let fd = rfs::openat(
            &d,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| FsError::resolve("create", name, &place(dir), e))?;
        std::fs::File::from(fd)
            .write_all(bytes)
            .map_err(|e| FsError::io("write", name, &place(dir), e))
    }

    fn do_fsync(&mut self, dir: &Path, name: &str) -> Result<(), FsError> {
        let name = check_name("fsync", dir, name)?;
        let d = open_dir(dir)?;
        let fd = rfs::openat(
            &d,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::resolve("open", name, &place(dir), e))?;
        if !crate::durability::on() {
            return Ok(());
        }
        rfs::fsync(&fd).map_err(|e| FsError::from_errno("fsync", name, &place(dir), e))
    }

    fn do_fsync_dir(&mut self, dir: &Path) -> Result<(), FsError> {
        let d = open_dir(dir)?;
        if !crate::durability::on() {
            return Ok(());
        }
        rfs::fsync(&d).map_err(|e| FsError::from_errno("fsync", "", &place(dir), e))
    }

    fn do_rename(&mut self, dir: &Path, from: &str, to: &str) -> Result<(), FsError> {
        let from = check_name("rename", dir, from)?;
        let to = check_name("rename", dir, to)?;
        let d = open_dir(dir)?;
        rfs::renameat(&d, from, &d, to)
            .map_err(|e| FsError::from_errno("rename", from, &place(dir), e))
    }

    fn do_symlink(&mut self, dir: &Path, name: &str, target: &str) -> Result<(), FsError> {
        let name = check_name("symlink", dir, name)?;
        let d = open_dir(dir)?;
        rfs::symlinkat(target, &d, name)
            .map_err(|e| FsError::from_errno("symlink", name, &place(dir), e))
    }

    fn do_mkdir(&mut self, dir: &Path, name: &str, mode: u32) -> Result<(), FsError> {
        let name = check_name("mkdir", dir, name)?;
        let d = open_dir(dir)?;
        rfs::mkdirat(&d, name, super::beneath::mode(mode))
            .map_err(|e| FsError::from_errno("mkdir", name, &place(dir), e))
    }

    fn do_unlink(&mut self, dir: &Path, name: &str) -> Result<(), FsError> {
        let name = check_name("unlink", dir, name)?;
        let d = open_dir(dir)?;
        rfs::unlinkat(&d, name, rfs::AtFlags::empty())
            .map_err(|e| FsError::from_errno("unlink", name, &place(dir), e))
    }

    fn do_syncfs(&mut self, slot: &SlotDir) -> Result<(), FsError> {
        slot.sync()
    }
}

impl FsOps for RealFs {
    fn write(&mut self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FsError> {
        self.do_write(dir, name, bytes)
            .map(|()| crashpoint::after("write"))
    }

    fn fsync(&mut self, dir: &Path, name: &str) -> Result<(), FsError> {
        self.do_fsync(dir, name)
            .map(|()| crashpoint::after("fsync"))
    }

    fn fsync_dir(&mut self, dir: &Path) -> Result<(), FsError> {
        self.do_fsync_dir(dir)
            .map(|()| crashpoint::after("directory fsync"))
    }

    fn rename(&mut self, dir: &Path, from: &str, to: &str) -> Result<(), FsError> {
        self.do_rename(dir, from, to)
            .map(|()| crashpoint::after("rename"))
    }

    fn symlink(&mut self, dir: &Path, name: &str, target: &str) -> Result<(), FsError> {
        self.do_symlink(dir, name, target)
            .map(|()| crashpoint::after("symlink"))
    }

    fn mkdir(&mut self, dir: &Path, name: &str, mode: u32) -> Result<(), FsError> {
        self.do_mkdir(dir, name, mode)
            .map(|()| crashpoint::after("mkdir"))
    }

    fn unlink(&mut self, dir: &Path, name: &str) -> Result<(), FsError> {
        self.do_unlink(dir, name)
            .map(|()| crashpoint::after("unlink"))
    }

    fn syncfs(&mut self, slot: &SlotDir) -> Result<(), FsError> {
        self.do_syncfs(slot).map(|()| crashpoint::after("syncfs"))
    }
}

/// Passes every call to an inner [`FsOps`] and records it as a [`Step`].
#[derive(Debug, Default)]
pub struct Recorder<O = RealFs> {
    inner: O,
    steps: Vec<Step>,
}

impl<O: FsOps> Recorder<O> {
    /// Records the calls made through `inner`.
    pub fn new(inner: O) -> Self {
        Recorder {
            inner,
            steps: Vec::new(),
        }
    }

    /// The calls so far (including ones that failed), in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The recorded calls.
    pub fn into_steps(self) -> Vec<Step> {
        self.steps
    }
}

impl<O: FsOps> FsOps for Recorder<O> {
    fn write(&mut self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FsError> {
        self.steps.push(Step::Write {
            dir: dir.to_owned(),
            name: name.to_owned(),
            bytes: bytes.to_vec(),
        });
        self.inner.write(dir, name, bytes)
    }
    fn fsync(&mut self, dir: &Path, name: &str) -> Result<(), FsError> {
        self.steps.push(Step::Fsync {
            dir: dir.to_owned(),
            name: name.to_owned(),
        });
        self.inner.fsync(dir, name)
    }
    fn fsync_dir(&mut self, dir: &Path) -> Result<(), FsError> {
        self.steps.push(Step::FsyncDir {
            dir: dir.to_owned(),
        });
        self.inner.fsync_dir(dir)
    }
    fn rename(&mut self, dir: &Path, from: &str, to: &str) -> Result<(), FsError> {
        self.steps.push(Step::Rename {
            dir: dir.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
        });
        self.inner.rename(dir, from, to)
    }
    fn symlink(&mut self, dir: &Path, name: &str, target: &str) -> Result<(), FsError> {
        self.steps.push(Step::Symlink {
            dir: dir.to_owned(),
            name: name.to_owned(),
            target: target.to_owned(),
        });
        self.inner.symlink(dir, name, target)
    }
    fn mkdir(&mut self, dir: &Path, name: &str, mode: u32) -> Result<(), FsError> {
        self.steps.push(Step::Mkdir {
            dir: dir.to_owned(),
            name: name.to_owned(),
            mode,
        });
        self.inner.mkdir(dir, name, mode)
    }
    fn unlink(&mut self, dir: &Path, name: &str) -> Result<(), FsError> {
        self.steps.push(Step::Unlink {
            dir: dir.to_owned(),
            name: name.to_owned(),
        });
        self.inner.unlink(dir, name)
    }
    fn syncfs(&mut self, slot: &SlotDir) -> Result<(), FsError> {
        self.steps.push(Step::Syncfs {
            path: slot.path().to_owned(),
        });
        self.inner.syncfs(slot)
    }
}

/// Lets the first `n` calls through to an inner [`FsOps`], then fails every later call
/// with [`ErrorKind::Crashed`] without performing it: the state on disk is what a crash
/// right after call `n` leaves (as far as the page cache shows it; see the sweep tests).
#[derive(Debug)]
pub struct CrashAfter<O = RealFs> {
    inner: O,
    left: usize,
    crashed: bool,
}

impl<O: FsOps> CrashAfter<O> {
    /// Allows `n` calls through `inner`.
    pub fn new(inner: O, n: usize) -> Self {
        CrashAfter {
            inner,
            left: n,
            crashed: false,
        }
    }

    /// Whether a call was refused.
    pub fn crashed(&self) -> bool {
        self.crashed
    }

    /// The inner implementation.
    pub fn into_inner(self) -> O {
        self.inner
    }

    fn gate(&mut self, op: &'static str, dir: &Path, name: &str) -> Result<(), FsError> {
        if self.left == 0 {
            self.crashed = true;
            return Err(FsError::other(
                ErrorKind::Crashed,
                op,
                name,
                &place(dir),
                "simulated crash",
            ));
        }
        self.left -= 1;
        Ok(())
    }
}

impl<O: FsOps> FsOps for CrashAfter<O> {
    fn write(&mut self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FsError> {
        self.gate("write", dir, name)?;
        self.inner.write(dir, name, bytes)
    }
    fn fsync(&mut self, dir: &Path, name: &str) -> Result<(), FsError> {
        self.gate("fsync", dir, name)?;
        self.inner.fsync(dir, name)
    }
    fn fsync_dir(&mut self, dir: &Path) -> Result<(), FsError> {
        self.gate("fsync", dir, "")?;
        self.inner.fsync_dir(dir)
    }
    fn rename(&mut self, dir: &Path, from: &str, to: &str) -> Result<(), FsError> {
        self.gate("rename", dir, from)?;
        self.inner.rename(dir, from, to)
    }
    fn symlink(&mut self, dir: &Path, name: &str, target: &str) -> Result<(), FsError> {
        self.gate("symlink", dir, name)?;
        self.inner.symlink(dir, name, target)
    }
    fn mkdir(&mut self, dir: &Path, name: &str, mode: u32) -> Result<(), FsError> {
        self.gate("mkdir", dir, name)?;
        self.inner.mkdir(dir, name, mode)
    }
    fn unlink(&mut self, dir: &Path, name: &str) -> Result<(), FsError> {
        self.gate("unlink", dir, name)?;
        self.inner.unlink(dir, name)
    }
    fn syncfs(&mut self, slot: &SlotDir) -> Result<(), FsError> {
        self.gate("sync", slot.path(), "")?;
        self.inner.syncfs(slot)
    }
}

impl<T: FsOps + ?Sized> FsOps for &mut T {
    fn write(&mut self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), FsError> {
        (**self).write(dir, name, bytes)
    }
    fn fsync(&mut self, dir: &Path, name: &str) -> Result<(), FsError> {
        (**self).fsync(dir, name)
    }
    fn fsync_dir(&mut self, dir: &Path) -> Result<(), FsError> {
        (**self).fsync_dir(dir)
    }
    fn rename(&mut self, dir: &Path, from: &str, to: &str) -> Result<(), FsError> {
        (**self).rename(dir, from, to)
    }
    fn symlink(&mut self, dir: &Path, name: &str, target: &str) -> Result<(), FsError> {
        (**self).symlink(dir, name, target)
    }
    fn mkdir(&mut self, dir: &Path, name: &str, mode: u32) -> Result<(), FsError> {
        (**self).mkdir(dir, name, mode)
    }
    fn unlink(&mut self, dir: &Path, name: &str) -> Result<(), FsError> {
        (**self).unlink(dir, name)
    }
    fn syncfs(&mut self, slot: &SlotDir) -> Result<(), FsError> {
        (**self).syncfs(slot)
    }
}

/// Makes a staged slot durable: one `syncfs(2)` on its handle (see [`SlotDir::sync`]).
///
/// Call it on the handle the slot was cloned and extracted through, so that writeback
/// errors of those writes are reported. Any error is fatal for the update: do not retry
/// and then swap.
pub fn sync_tree(slot: &SlotDir) -> Result<(), FsError> {
    sync_tree_with(&mut RealFs, slot)
}

/// [`sync_tree`] through `ops`.
pub fn sync_tree_with(ops: &mut dyn FsOps, slot: &SlotDir) -> Result<(), FsError> {
    ops.syncfs(slot)
}

/// Publishes `new_target` (a relative path from `data_dir`, e.g. `slots/b`, naming an
/// existing directory) as `data_dir/current`, atomically and durably.
///
/// The steps, each one [`FsOps`] call:
///
/// 1. `unlinkat(current.new)`, only if a crashed earlier swap left one;
/// 2. `symlinkat(new_target, current.new)`;
/// 3. `fsync(data_dir)`: the new link is durable before anything names it (a symlink
///    cannot be fsynced itself; its directory can);
/// 4. `renameat(current.new, current)`: atomically replaces the old link;
/// 5. `fsync(data_dir)`: the rename is durable.
///
/// A crash after any prefix leaves `current` naming the old slot (steps 1–3, or 4 not yet
/// on disk) or the new one (after 4), never nothing: `rename(2)` replaces the old link in
/// one step, it never removes it first. Running the swap again after a crash completes it.
/// The slot must already be durable ([`sync_tree`]) before this is called.
pub fn swap_current(data_dir: &Path, new_target: &Path) -> Result<(), FsError> {
    swap_current_with(&mut RealFs, data_dir, new_target)
}

/// [`swap_current`] through `ops`.
pub fn swap_current_with(
    ops: &mut dyn FsOps,
    data_dir: &Path,
    new_target: &Path,
) -> Result<(), FsError> {
    let label = place(data_dir);
    let target = new_target
        .to_str()
        .filter(|t| !t.is_empty() && !t.starts_with('/'));
    let Some(target) = target else {
        return Err(FsError::other(
            ErrorKind::BadPath,
            "publish",
            &new_target.display().to_string(),
            &label,
            "the slot must be named by a relative path",
        ));
    };
    // Never publish a link to nothing: the target must be a directory beneath data_dir,
    // reached without symlinks (a read-only check, not a step of the protocol). Unlike
    // paths inside a slot it may be a mount point: a slot can be its own partition.
    let d = open_dir(data_dir)?;
    rfs::openat2(
        &d,
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE.difference(ResolveFlags::NO_XDEV),
    )
    .map_err(|e| FsError::resolve("publish", target, &label, e))?;
    if lstat_at(d.as_fd(), CURRENT_NEW)
        .map_err(|e| FsError::from_errno("stat", CURRENT_NEW, &label, e))?
        .is_some()
    {
        ops.unlink(data_dir, CURRENT_NEW)?;
    }
    ops.symlink(data_dir, CURRENT_NEW, target)?;
    ops.fsync_dir(data_dir)?;
    ops.rename(data_dir, CURRENT_NEW, CURRENT)?;
    ops.fsync_dir(data_dir)
}

/// The target of `data_dir/current` (`readlinkat(2)`), or `None` if there is no link yet
/// (a device that never installed). A `current` that is not a symlink is an error.
pub fn read_current(data_dir: &Path) -> Result<Option<PathBuf>, FsError> {
    let label = place(data_dir);
    let d = open_dir(data_dir)?;
    match rfs::readlinkat(&d, CURRENT, Vec::new()) {
        Ok(t) => Ok(Some(PathBuf::from(OsString::from_vec(t.into_bytes())))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(FsError::from_errno("read the link", CURRENT, &label, e)),
    }
}
