//! `SlotDir`: a directory handle beneath which every path resolves, and tree removal that never follows a symlink or crosses a mount.
//!
//! Every multi-component path is resolved with `openat2(2)` and
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`;
//! the last component is then acted on with an `*at` call relative to the
//! resolved parent (and `O_NOFOLLOW` / `AT_SYMLINK_NOFOLLOW` where the call
//! would otherwise follow it). So a path can neither climb out of the handle
//! with `..`, nor be redirected by a symlink planted in the slot, nor wander
//! into a mount point (a leftover bind mount of `/dev` or `/` in a chroot):
//! the kernel refuses, whatever the engine's policy let through.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{
    self as rfs, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, StatxFlags, Timespec,
};
use rustix::io::Errno;
use rustix::path::Arg;

use super::error::{ErrorKind, FsError};

/// The resolution flags used for every path beneath a handle.
pub(crate) const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// How often an `openat2` that raced with a rename (`EAGAIN`) is retried.
const RESOLVE_RETRIES: usize = 16;

/// Opens the directory `rel` beneath `dirfd` (`""` is `dirfd` itself), read-only.
///
/// `openat2(dirfd, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC, RESOLVE)`; see [`RESOLVE`].
/// Without `O_NOFOLLOW` on purpose: then `RESOLVE_NO_SYMLINKS` covers the last component
/// too, and a symlink anywhere in `rel` fails with `ELOOP` (an escape attempt) rather than
/// `ENOTDIR`. `EAGAIN` (a concurrent rename during a `RESOLVE_BENEATH` walk) is retried.
pub(crate) fn resolve_dir<P: Arg + Copy>(dirfd: BorrowedFd<'_>, rel: P) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut tries = 0;
    loop {
        match rfs::openat2(dirfd, rel, flags, Mode::empty(), RESOLVE) {
            Err(Errno::AGAIN) if tries < RESOLVE_RETRIES => tries += 1,
            Err(Errno::INTR) => {}
            r => return r,
        }
    }
}

/// Splits a relative path into its parent (possibly `""`) and last component.
///
/// Refuses absolute paths, NUL bytes, and a last component that is empty, `.` or `..`
/// (an `*at` call on those would not name a new entry). `..` inside the parent is left to
/// `openat2`, whose `RESOLVE_BENEATH` refuses it if it climbs out of the handle.
pub(crate) fn split_path(rel: &str) -> Option<(&str, &str)> {
    if rel.starts_with('/') || rel.contains('\0') {
        return None;
    }
    let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    Some((parent, name))
}

/// The metadata `fsops` needs, from `statx(2)` (portable field types on every architecture).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub kind: FileType,
    /// Permission bits including setuid, setgid and sticky (`& 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub rdev: rfs::Dev,
    pub dev: (u32, u32),
    pub ino: u64,
}

fn timespec(t: rfs::StatxTimestamp) -> Timespec {
    Timespec {
        tv_sec: t.tv_sec,
        // Always below 10^9, so it fits every architecture's `tv_nsec` (an `i32` on 32-bit
        // ARM, where `From<u32>` does not exist).
        tv_nsec: t.tv_nsec as _,
    }
}

impl Meta {
    fn from_statx(s: &rfs::Statx) -> Self {
        Meta {
            kind: FileType::from_raw_mode(u32::from(s.stx_mode)),
            perm: u32::from(s.stx_mode) & 0o7777,
            uid: s.stx_uid,
            gid: s.stx_gid,
            size: s.stx_size,
            nlink: s.stx_nlink,
            atime: timespec(s.stx_atime),
            mtime: timespec(s.stx_mtime),
            rdev: rfs::makedev(s.stx_rdev_major, s.stx_rdev_minor),
            dev: (s.stx_dev_major, s.stx_dev_minor),
            ino: s.stx_ino,
        }
    }
}

/// `statx(dirfd, name, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS)`; `None` if it does not exist.
pub(crate) fn lstat_at<P: Arg>(dirfd: BorrowedFd<'_>, name: P) -> Result<Option<Meta>, Errno> {
    match rfs::statx(
        dirfd,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) {
        Ok(s) => Ok(Some(Meta::from_statx(&s))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `statx(fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS)`: the metadata of an open file.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> Result<Meta, Errno> {
    rfs::statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS).map(|s| Meta::from_statx(&s))
}

/// Removes `name` in `dirfd`: `unlinkat(2)`, or for a directory its whole tree then
/// `unlinkat(AT_REMOVEDIR)`. Never follows a symlink (a symlink is removed, not its target)
/// and refuses to descend into a mount point (`EXDEV`). Returns `false` if nothing was there.
/// On failure, also returns the path (below `name`) of the entry that failed, `""` for
/// `name` itself.
pub(crate) fn remove_at<P: Arg + Copy>(
    dirfd: BorrowedFd<'_>,
    name: P,
) -> Result<bool, (Errno, String)> {
    let top = |e: Errno| (e, String::new());
    match rfs::unlinkat(dirfd, name, AtFlags::empty()) {
        Ok(()) => return Ok(true),
        Err(Errno::NOENT) => return Ok(false),
        // Linux says EISDIR for a directory (POSIX allows EPERM, which Linux keeps for
        // real permission problems).
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(top(e)),
    }
    let fd = resolve_dir(dirfd, name).map_err(top)?;
    empty_dir(fd.as_fd())?;
    drop(fd);
    rfs::unlinkat(dirfd, name, AtFlags::REMOVEDIR).map_err(top)?;
    Ok(true)
}

/// Joins a failing entry's path below a named directory.
pub(crate) fn join(base: &str, sub: &str) -> String {
    match (base.is_empty(), sub.is_empty()) {
        (true, _) => sub.to_owned(),
        (false, true) => base.to_owned(),
        (false, false) => format!("{base}/{sub}"),
    }
}

/// Unlinks the entry `name` of `dir`, or opens it if it is a directory (to be emptied first).
fn unlink_or_open(dir: &Dir, name: &CStr, kind: FileType) -> Result<Option<Dir>, Errno> {
    let fd = dir.fd()?;
    if kind != FileType::Directory {
        match rfs::unlinkat(fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => return Ok(None),
            Err(Errno::ISDIR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(Dir::new(resolve_dir(fd, name)?)?))
}

/// Removes everything inside the directory `root`, depth first, without recursion (an
/// explicit stack of open directories, one per level) and without following symlinks or
/// crossing mount points (`openat2` with [`RESOLVE`] refuses both). On failure, also
/// returns the relative path of the entry that failed.
///
/// Entries are unlinked while the directory is being read; POSIX leaves it open whether
/// such a stream still returns every remaining entry, so each directory is read again
/// from the start until a pass finds nothing.
pub(crate) fn empty_dir(root: BorrowedFd<'_>) -> Result<(), (Errno, String)> {
    struct Level {
        dir: Dir,
        /// The name in the parent level; `None` for `root`, which is kept.
        name: Option<CString>,
        /// Whether this pass over the directory saw an entry (so it must be read again).
        saw: bool,
    }
    // The path of `name` below the stack, for error messages only.
    fn path(stack: &[Level], name: Option<&CStr>) -> String {
        let names = stack.iter().filter_map(|l| l.name.as_deref()).chain(name);
        let parts: Vec<_> = names.map(CStr::to_string_lossy).collect();
        parts.join("/")
    }
    let mut stack = vec![Level {
        dir: Dir::read_from(root).map_err(|e| (e, String::new()))?,
        name: None,
        saw: false,
    }];
    loop {
        let Some(top) = stack.last_mut() else {
            return Ok(());
        };
        match top.dir.read() {
            Some(Ok(entry)) => {
                let name = entry.file_name();
                if is_dot(name) {
                    continue;
                }
                top.saw = true;
                match unlink_or_open(&top.dir, name, entry.file_type()) {
                    Ok(None) => {}
                    Ok(Some(child)) => stack.push(Level {
                        dir: child,
                        name: Some(name.to_owned()),
                        saw: false,
                    }),
                    Err(e) => return Err((e, path(&stack, Some(name)))),
                }
            }
            Some(Err(e)) => return Err((e, path(&stack, None))),
            None if top.saw => {
                top.saw = false;
                top.dir.rewind();
            }
            None => {
                let done = stack.pop();
                if let (
                    Some(Level {
                        name: Some(name),
                        dir,
                        ..
                    }),
                    Some(parent),
                ) = (done, stack.last())
                {
                    drop(dir);
                    let r = parent
                        .dir
                        .fd()
                        .and_then(|fd| rfs::unlinkat(fd, name.as_c_str(), AtFlags::REMOVEDIR));
                    match r {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err((e, path(&stack, Some(&name)))),
                    }
                }
            }
        }
    }
}

/// Probes `openat2` once on `fd`: a kernel without it (or a seccomp filter that hides it,
/// which older container runtimes answered with `EPERM`) is refused rather than worked around.
fn probe_openat2(fd: BorrowedFd<'_>, place: &str) -> Result<(), FsError> {
    match resolve_dir(fd, c".") {
        Ok(_) => Ok(()),
        Err(Errno::NOSYS) | Err(Errno::PERM) => Err(FsError::resolve(
            "resolve paths beneath",
            "",
            place,
            Errno::NOSYS,
        )),
        Err(e) => Err(FsError::from_errno("open", "", place, e)),
    }
}

/// A directory handle (the root of a snapshot slot, or a staging directory) beneath which
/// every operation resolves: no relative path given to it can reach outside, follow a
/// symlink or cross a mount point.
///
/// The handle also anchors durability: [`SlotDir::sync`] runs `syncfs(2)` on it, and the
/// kernel reports through that descriptor every writeback error of the filesystem since the
/// handle was opened. Open it before writing, keep it until the sync.
#[derive(Debug)]
pub struct SlotDir {
    fd: OwnedFd,
    path: PathBuf,
    label: String,
}

impl SlotDir {
    /// Opens an existing directory: `open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)`, then a
    /// probe of `openat2(2)`. The path itself may contain symlinks (it comes from the
    /// configuration); only paths beneath the handle are confined.
    ///
    /// Errors with [`ErrorKind::Unsupported`] if `openat2` is unavailable (Linux < 5.6).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FsError> {
        let path = path.as_ref();
        let label = path.display().to_string();
        let fd = rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::from_errno("open", "", &label, e))?;
        probe_openat2(fd.as_fd(), &label)?;
        Ok(SlotDir {
            fd,
            path: path.to_owned(),
            label,
        })
    }

    /// Like [`SlotDir::open`], first creating the directory (`mkdir(2)`, mode `0o755`) if it
    /// does not exist. Its parent must exist.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, FsError> {
        let path = path.as_ref();
        match rfs::mkdir(path, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => Self::open(path),
            Err(e) => Err(FsError::from_errno(
                "create",
                "",
                &path.display().to_string(),
                e,
            )),
        }
    }

    /// Names the handle in error messages (for example `slot b`); the default is its path.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// The name used in error messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The path the handle was opened with (for logs, `chroot` and child processes; the
    /// handle's own operations never go through it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn err(&self, op: &'static str, path: &str, e: Errno) -> FsError {
        FsError::from_errno(op, path, &self.label, e)
    }

    pub(crate) fn resolve_err(&self, op: &'static str, path: &str, e: Errno) -> FsError {
        FsError::resolve(op, path, &self.label, e)
    }

    /// Splits `rel` into parent and name, or a [`ErrorKind::BadPath`] error.
    pub(crate) fn split<'p>(
        &self,
        op: &'static str,
        rel: &'p str,
    ) -> Result<(&'p str, &'p str), FsError> {
        split_path(rel).ok_or_else(|| {
            FsError::other(
                ErrorKind::BadPath,
                op,
                rel,
                &self.label,
                "not a relative path ending in a normal component",
            )
        })
    }

    /// Opens the directory `rel` beneath the handle (`""` for the handle itself):
    /// `openat2(O_DIRECTORY, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
    /// RESOLVE_NO_XDEV)`.
    pub fn open_dir(&self, rel: &str) -> Result<OwnedFd, FsError> {
        let target = if rel.is_empty() { "." } else { rel };
        if rel.starts_with('/') {
            return Err(FsError::other(
                ErrorKind::BadPath,
                "open",
                rel,
                &self.label,
                "not a relative path",
            ));
        }
        resolve_dir(self.fd.as_fd(), target).map_err(|e| self.resolve_err("open", rel, e))
    }

    /// Opens the regular file `rel` beneath the handle for reading (`O_RDONLY | O_NOFOLLOW`
    /// after resolving its parent), for example to verify a snapshot's content digests.
    pub fn open_file(&self, rel: &str) -> Result<File, FsError> {
        let (parent, name) = self.split("open", rel)?;
        let dir = self.open_dir(parent)?;
        let fd = rfs::openat(
            &dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| self.resolve_err("open", rel, e))?;
        Ok(File::from(fd))
    }

    /// Removes `rel` beneath the handle: a file, symlink or special file with `unlinkat(2)`,
    /// a directory with its whole tree (never following a symlink, never crossing a mount).
    /// A missing path, or a missing parent, is fine: returns `false`.
    pub fn remove(&self, rel: &str) -> Result<bool, FsError> {
        let (parent, name) = self.split("remove", rel)?;
        let dir = match resolve_dir(
            self.fd.as_fd(),
            if parent.is_empty() { "." } else { parent },
        ) {
            Ok(d) => d,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Ok(false),
            Err(e) => return Err(self.resolve_err("remove", rel, e)),
        };
        remove_at(dir.as_fd(), name)
            .map_err(|(e, sub)| self.resolve_err("remove", &join(rel, &sub), e))
    }

    /// Removes everything inside the handle's directory (the directory itself stays):
    /// emptying a slot before it is rebuilt, even if it holds a failed attempt with
    /// read-only directories or symlinks pointing anywhere (they are removed, not followed).
    /// A mount point inside refuses the whole operation ([`ErrorKind::Escape`]).
    pub fn clear(&self) -> Result<(), FsError> {
        empty_dir(self.fd.as_fd()).map_err(|(e, sub)| self.resolve_err("remove", &sub, e))
    }

    /// Removes every entry named `prefix*` anywhere beneath the handle except `keep` (a
    /// relative path), without following symlinks or crossing mounts; returns how many.
    /// A resumed extraction calls it with the extractor's temporary prefix: a power cut
    /// leaves at most the one temporary file that was being written when it struck, and
    /// it must not end up in the snapshot.
    pub fn remove_named(&self, prefix: &str, keep: Option<&str>) -> Result<u64, FsError> {
        let mut removed = 0;
        // (directory, its path) pairs still to read; depth-first with an explicit stack.
        let root = Dir::new(self.dup()?).map_err(|e| self.err("read", "", e))?;
        let mut todo = vec![(root, String::new())];
        while let Some((mut dir, path)) = todo.pop() {
            while let Some(entry) = dir.read() {
                let entry = entry.map_err(|e| self.err("read", &path, e))?;
                let name = entry.file_name();
                if is_dot(name) {
                    continue;
                }
                let name = name.to_string_lossy().into_owned();
                let rel = join(&path, &name);
                let dfd = dir.fd().map_err(|e| self.err("read", &path, e))?;
                if name.starts_with(prefix) && keep != Some(rel.as_str()) {
                    remove_at(dfd, name.as_str())
                        .map_err(|(e, sub)| self.resolve_err("remove", &join(&rel, &sub), e))?;
                    removed += 1;
                    continue;
                }
                let is_dir = match entry.file_type() {
                    FileType::Directory => true,
                    FileType::Unknown => lstat_at(dfd, name.as_str())
                        .map_err(|e| self.err("stat", &rel, e))?
                        .is_some_and(|m| m.kind == FileType::Directory),
                    _ => false,
                };
                if is_dir {
                    let child = resolve_dir(dfd, name.as_str())
                        .and_then(Dir::new)
                        .map_err(|e| self.resolve_err("open", &rel, e))?;
                    todo.push((child, rel));
                }
            }
        }
        Ok(removed)
    }

    /// Makes everything written to the handle's filesystem durable: `syncfs(2)` on the handle.
    ///
    /// Since Linux 5.8 `syncfs` reports writeback errors that happened since this handle was
    /// opened. An error is fatal for the update: never retry and then publish (after a failed
    /// writeback the kernel may have dropped the dirty pages, so a retry can "succeed" over
    /// lost data).
    pub fn sync(&self) -> Result<(), FsError> {
        if !crate::durability::on() {
            return Ok(());
        }
        rfs::syncfs(&self.fd).map_err(|e| self.err("sync", "", e))
    }

    /// A second descriptor of the handle (`fcntl(F_DUPFD_CLOEXEC)`), sharing its open file
    /// description (and so its writeback-error cursor).
    pub(crate) fn dup(&self) -> Result<OwnedFd, FsError> {
        self.fd
            .try_clone()
            .map_err(|e| FsError::io("open", "", &self.label, e))
    }
}

impl AsFd for SlotDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Whether a C string is the name of a directory's self or parent entry.
pub(crate) fn is_dot(name: &CStr) -> bool {
    name == c"." || name == c".."
}

/// Permission bits (`& 0o7777`) as a rustix `Mode`.
pub(crate) fn mode(perm: u32) -> Mode {
    Mode::from_raw_mode(perm & 0o7777)
}

/// An owner for `fchown(2)`: `None` (leave unchanged) for the reserved id `-1`.
pub(crate) fn owner(uid: u32, gid: u32) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    (
        (uid != u32::MAX).then(|| rustix::fs::Uid::from_raw(uid)),
        (gid != u32::MAX).then(|| rustix::fs::Gid::from_raw(gid)),
    )
}

/// Access and modification times for `futimens(2)` / `utimensat(2)`.
pub(crate) fn times(atime: Timespec, mtime: Timespec) -> rfs::Timestamps {
    rfs::Timestamps {
        last_access: atime,
        last_modification: mtime,
    }
}

/// Whole seconds as a `Timespec`.
pub(crate) fn secs(s: i64) -> Timespec {
    Timespec {
        tv_sec: s,
        tv_nsec: 0,
    }
}
