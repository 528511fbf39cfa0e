//! Snapshot clone: makes the inactive slot a copy of the active one for a patch bundle, sharing file data by reflink where the filesystem can, never writing to the active slot.
//!
//! The cost grows with the number of files rather than their bytes where the
//! filesystem allows: each regular file is cloned with `ioctl(FICLONE)` (btrfs, XFS
//! with reflink, bcachefs, OCFS2: the copy shares extents copy-on-write, so a later
//! write to it allocates new blocks and never touches the active slot). The first
//! `EOPNOTSUPP` / `EXDEV` / `EINVAL` switches, for the rest of the tree, to
//! `copy_file_range(2)` (in-kernel copy, server-side on NFS), and its refusal to a
//! plain `pread`/`pwrite` loop.
//!
//! Hardlinks between the slots are never used: a chroot step appending to a file in
//! the new slot would write through to the active one. Hardlinks *within* the active
//! tree are copied as separate files (counted in [`CloneReport::hardlinks_split`]); a
//! package manager that relies on them still sees correct content.
//!
//! Preserved: file type, permission bits (with setuid/setgid/sticky), owner (when
//! running as root), modification and access times, symlink targets (never
//! followed), device numbers, and extended attributes of files and directories
//! (file capabilities, ACLs, SELinux labels). Not preserved: xattrs of symlinks and
//! special files, and times of nanosecond precision on filesystems without them.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Mode, OFlags, XattrFlags};
use rustix::io::Errno;

use super::beneath::{fstat, is_dot, lstat_at, mode, owner, times, Meta, SlotDir, RESOLVE};
use super::error::{ErrorKind, FsError};
use super::extract::TMP_PREFIX;

/// How file content was copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMethod {
    /// `ioctl(FICLONE)`: extents shared copy-on-write; no data copied.
    Reflink,
    /// `copy_file_range(2)`: copied inside the kernel.
    CopyFileRange,
    /// `pread(2)` / `pwrite(2)` through a user-space buffer.
    ReadWrite,
}

impl CopyMethod {
    /// A short name for the log.
    pub fn name(self) -> &'static str {
        match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::CopyFileRange => "copy_file_range",
            CopyMethod::ReadWrite => "read/write",
        }
    }
}

impl fmt::Display for CopyMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`clone_tree`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloneReport {
    /// The copy method the filesystem supported, as detected on the first non-empty file
    /// (`None` if no file had content).
    pub method: Option<CopyMethod>,
    /// Regular files copied.
    pub files: u64,
    /// Files cloned with `FICLONE`.
    pub reflinked: u64,
    /// Files copied with `copy_file_range`.
    pub range_copied: u64,
    /// Files copied with `pread`/`pwrite`.
    pub read_written: u64,
    /// Bytes of regular-file content (shared or copied).
    pub bytes: u64,
    /// Directories created (the root not counted).
    pub dirs: u64,
    /// Symlinks recreated.
    pub symlinks: u64,
    /// FIFOs, sockets and device nodes recreated.
    pub specials: u64,
    /// Files with more than one link in the active tree, each copied separately.
    pub hardlinks_split: u64,
}

/// `12 files (3 reflinked), 4 directories, 2 symlinks; 5678 bytes, by reflink`.
impl fmt::Display for CloneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::write_counts(
            f,
            &[
                (self.files, "file", "files"),
                (self.dirs, "directory", "directories"),
                (self.symlinks, "symlink", "symlinks"),
                (self.specials, "special file", "special files"),
                (
                    self.hardlinks_split,
                    "hardlinked file copied on its own",
                    "hardlinked files copied on their own",
                ),
            ],
        )?;
        write!(f, "; {} bytes", self.bytes)?;
        match self.method {
            Some(m) => write!(f, ", by {m}"),
            None => Ok(()),
        }
    }
}

/// Makes `target` a copy of the tree at `active`, first emptying `target` completely (it
/// may hold a failed earlier attempt kept for inspection).
///
/// `target` is a handle, not a path, so that the `syncfs(2)` that later makes the slot
/// durable ([`SlotDir::sync`] on the same handle) reports writeback errors of this copy too.
///
/// The active tree is only read: directories and files are opened `O_RDONLY | O_NOFOLLOW
/// | O_NOATIME` (the last when permitted), entries are examined with
/// `statx(AT_SYMLINK_NOFOLLOW)`, symlinks read with `readlinkat`. Directories are entered
/// with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`, so a mount
/// point inside the active tree refuses the clone ([`ErrorKind::Escape`]) rather than
/// copying a foreign filesystem into the snapshot. The walk keeps one pair of directory
/// descriptors per level (an explicit stack, no recursion); directory modes and times are
/// set once their contents are in.
///
/// On the target: `mkdirat`, `openat(O_CREAT | O_EXCL | O_NOFOLLOW)` of a temporary
/// name, the copy (see the module docs), `symlinkat`, `mknodat`, then `fchown` (as
/// root), `fchmod`, `fsetxattr`, `futimens` (or their `*at` forms with
/// `AT_SYMLINK_NOFOLLOW`), and for a file `renameat` to its name. Nothing is fsynced.
///
/// On error (a full disk is the usual one) no file is left under its own name with less
/// than its content, and the temporary file being written is removed; what was copied
/// before stays, for the caller to remove ([`SlotDir::clear`]) so that the space is
/// freed. [`content_bytes`] says how much the copy needed.
pub fn clone_tree(active: &Path, target: &SlotDir) -> Result<CloneReport, FsError> {
    let active_label = active.display().to_string();
    let src_root = open_noatime(|extra| {
        rfs::open(
            active,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | extra,
            Mode::empty(),
        )
    })
    .map_err(|e| FsError::from_errno("open", "", &active_label, e))?;
    let src_meta =
        fstat(src_root.as_fd()).map_err(|e| FsError::from_errno("stat", "", &active_label, e))?;
    let dst_meta =
        fstat(target.as_fd()).map_err(|e| FsError::from_errno("stat", "", target.label(), e))?;
    if (src_meta.dev, src_meta.ino) == (dst_meta.dev, dst_meta.ino) {
        return Err(FsError::other(
            ErrorKind::BadPath,
            "clone into",
            "",
            target.label(),
            "it is the active slot itself",
        ));
    }
    target.clear()?;
    let mut c = Cloner {
        target,
        active_label,
        as_root: rustix::process::geteuid().is_root(),
        method: CopyMethod::Reflink,
        buf: Vec::new(),
        report: CloneReport::default(),
        target_id: (dst_meta.dev, dst_meta.ino),
        path: String::new(),
        tmp_seq: 0,
    };
    c.walk(src_root, src_meta)?;
    Ok(c.report)
}

/// Opens with `O_NOATIME` (so that even the access time of the active slot stays as it
/// was), or without it where not permitted (`EPERM`: not the owner and no `CAP_FOWNER`).
fn open_noatime(open: impl Fn(OFlags) -> Result<OwnedFd, Errno>) -> Result<OwnedFd, Errno> {
    match open(OFlags::NOATIME) {
        Err(Errno::PERM) => open(OFlags::empty()),
        r => r,
    }
}

/// One directory level of the walk.
struct Level {
    src: Dir,
    dst: OwnedFd,
    meta: Meta,
    /// Length of this directory's path in `Cloner::path`.
    path_len: usize,
}

struct Cloner<'t> {
    target: &'t SlotDir,
    active_label: String,
    as_root: bool,
    method: CopyMethod,
    buf: Vec<u8>,
    report: CloneReport,
    target_id: ((u32, u32), u64),
    /// The relative path of the entry being copied, for error messages.
    path: String,
    /// The number of the last temporary file name tried.
    tmp_seq: u64,
}

/// Errors that mean "this filesystem (pair) cannot do that copy method": fall back.
fn unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::NOSYS
    )
}

impl Cloner<'_> {
    fn src_err(&self, op: &'static str, e: Errno) -> FsError {
        FsError::resolve(op, &self.path, &self.active_label, e)
    }

    fn dst_err(&self, op: &'static str, e: Errno) -> FsError {
        FsError::from_errno(op, &self.path, self.target.label(), e)
    }

    fn walk(&mut self, src_root: OwnedFd, root_meta: Meta) -> Result<(), FsError> {
        let mut stack = vec![Level {
            src: Dir::new(src_root).map_err(|e| self.src_err("list", e))?,
            dst: self.target.dup()?,
            meta: root_meta,
            path_len: 0,
        }];
        while let Some(top) = stack.last_mut() {
            let entry = match top.src.read() {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => {
                    self.path.truncate(top.path_len);
                    return Err(self.src_err("list", e));
                }
                None => {
                    self.path.truncate(top.path_len);
                    let src = top.src.fd().map_err(|e| self.src_err("list", e))?;
                    self.set_meta(top.dst.as_fd(), Some(src), &top.meta)?;
                    stack.pop();
                    continue;
                }
            };
            let name = entry.file_name();
            if is_dot(name) {
                continue;
            }
            self.path.truncate(top.path_len);
            if top.path_len > 0 {
                self.path.push('/');
            }
            self.path.push_str(&name.to_string_lossy());
            let sdir = top.src.fd().map_err(|e| self.src_err("list", e))?;
            let ddir = top.dst.as_fd();
            let Some(m) = lstat_at(sdir, name).map_err(|e| self.src_err("stat", e))? else {
                continue;
            };
            match m.kind {
                FileType::Directory => {
                    let level = self.enter_dir(sdir, ddir, name, m)?;
                    stack.push(level);
                }
                FileType::RegularFile => self.copy_file(sdir, ddir, name, &m)?,
                FileType::Symlink => self.copy_symlink(sdir, ddir, name, &m)?,
                FileType::Fifo
                | FileType::CharacterDevice
                | FileType::BlockDevice
                | FileType::Socket => self.copy_node(ddir, name, &m)?,
                FileType::Unknown => {
                    return Err(FsError::other(
                        ErrorKind::Io,
                        "copy",
                        &self.path,
                        &self.active_label,
                        "unknown file type",
                    ))
                }
            }
        }
        Ok(())
    }

    fn enter_dir(
        &mut self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &std::ffi::CStr,
        m: Meta,
    ) -> Result<Level, FsError> {
        if (m.dev, m.ino) == self.target_id {
            return Err(FsError::other(
                ErrorKind::BadPath,
                "copy",
                &self.path,
                &self.active_label,
                "the target slot lies inside the active slot",
            ));
        }
        let src = open_noatime(|extra| {
            rfs::openat2(
                sdir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | extra,
                Mode::empty(),
                RESOLVE,
            )
        })
        .map_err(|e| self.src_err("open", e))?;
        // Owner-only until the contents are in and the real mode is set.
        rfs::mkdirat(ddir, name, Mode::from_raw_mode(0o700))
            .map_err(|e| self.dst_err("mkdir", e))?;
        let dst = rfs::openat2(
            ddir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| self.dst_err("open", e))?;
        self.report.dirs += 1;
        Ok(Level {
            src: Dir::new(src).map_err(|e| self.src_err("list", e))?,
            dst,
            meta: m,
            path_len: self.path.len(),
        })
    }

    fn copy_file(
        &mut self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &std::ffi::CStr,
        m: &Meta,
    ) -> Result<(), FsError> {
        let src = open_noatime(|extra| {
            rfs::openat(
                sdir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | extra,
                Mode::empty(),
            )
        })
        .map_err(|e| self.src_err("open", e))?;
        // Written under a temporary name and renamed once complete, as the extractor
        // does: a copy cut short (a full disk, an I/O error, a crash) must never sit in
        // the snapshot under the name of the file it failed to copy.
        let (tmp, dst) = self.create_tmp(ddir)?;
        let copied = self.fill(&src, &dst, m).and_then(|()| {
            rfs::renameat(ddir, tmp.as_c_str(), ddir, name).map_err(|e| self.dst_err("rename", e))
        });
        if let Err(e) = copied {
            // Frees the space at once, which matters after `ENOSPC`.
            let _ = rfs::unlinkat(ddir, tmp.as_c_str(), AtFlags::empty());
            return Err(e);
        }
        self.report.files += 1;
        self.report.bytes += m.size;
        if m.nlink > 1 {
            self.report.hardlinks_split += 1;
        }
        Ok(())
    }

    /// Creates a new temporary file in `ddir` (`O_CREAT | O_EXCL`, mode 0600) named
    /// `.molt-tmp.clone.<n>`: the extractor's prefix ([`TMP_PREFIX`]), so the sweep of a
    /// resumed download treats both alike. A name the active tree itself uses in that
    /// directory is skipped.
    fn create_tmp(&mut self, ddir: BorrowedFd<'_>) -> Result<(CString, OwnedFd), FsError> {
        loop {
            self.tmp_seq += 1;
            let tmp = CString::new(format!("{TMP_PREFIX}clone.{}", self.tmp_seq))
                .map_err(|_| self.dst_err("create", Errno::INVAL))?;
            match rfs::openat(
                ddir,
                tmp.as_c_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => return Ok((tmp, fd)),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(self.dst_err("create", e)),
            }
        }
    }

    /// The content and metadata of a file being copied, into its temporary file.
    fn fill(&mut self, src: &OwnedFd, dst: &OwnedFd, m: &Meta) -> Result<(), FsError> {
        if m.size > 0 {
            self.copy_data(src, dst, m.size)?;
        }
        self.set_meta(dst.as_fd(), Some(src.as_fd()), m)
    }

    /// Copies `size` bytes with the best method that works, downgrading once for good.
    fn copy_data(&mut self, src: &OwnedFd, dst: &OwnedFd, size: u64) -> Result<(), FsError> {
        if self.method == CopyMethod::Reflink {
            match rfs::ioctl_ficlone(dst, src) {
                Ok(()) => {
                    self.report.reflinked += 1;
                    self.report.method = Some(CopyMethod::Reflink);
                    return Ok(());
                }
                Err(e) if unsupported(e) => self.method = CopyMethod::CopyFileRange,
                Err(e) => return Err(self.dst_err("clone", e)),
            }
        }
        let mut done = 0u64;
        if self.method == CopyMethod::CopyFileRange {
            let (mut off_in, mut off_out) = (0u64, 0u64);
            while done < size {
                let want = usize::try_from(size - done)
                    .unwrap_or(usize::MAX)
                    .min(1 << 30);
                match rfs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
                    // The source is shorter than its stat said: copy what is there.
                    Ok(0) => break,
                    Ok(n) => done += n as u64,
                    Err(Errno::INTR) => {}
                    Err(e) if unsupported(e) => {
                        self.method = CopyMethod::ReadWrite;
                        break;
                    }
                    Err(e) => return Err(self.dst_err("copy", e)),
                }
            }
            if self.method == CopyMethod::CopyFileRange {
                self.report.range_copied += 1;
                self.report.method = Some(CopyMethod::CopyFileRange);
                return Ok(());
            }
        }
        if self.buf.is_empty() {
            self.buf = vec![0u8; 256 * 1024];
        }
        while done < size {
            let n = match rustix::io::pread(src, &mut self.buf[..], done) {
                Ok(0) => break,
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(self.src_err("read", e)),
            };
            let mut chunk = self.buf.get(..n).unwrap_or(&[]);
            let mut at = done;
            while !chunk.is_empty() {
                match rustix::io::pwrite(dst, chunk, at) {
                    Ok(w) => {
                        chunk = chunk.get(w..).unwrap_or(&[]);
                        at += w as u64;
                    }
                    Err(Errno::INTR) => {}
                    Err(e) => return Err(self.dst_err("write", e)),
                }
            }
            done += n as u64;
        }
        self.report.read_written += 1;
        self.report.method = Some(CopyMethod::ReadWrite);
        Ok(())
    }

    fn copy_symlink(
        &mut self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &std::ffi::CStr,
        m: &Meta,
    ) -> Result<(), FsError> {
        let target = rfs::readlinkat(sdir, name, Vec::new())
            .map_err(|e| self.src_err("read the link", e))?;
        rfs::symlinkat(target.as_c_str(), ddir, name).map_err(|e| self.dst_err("symlink", e))?;
        self.set_node_meta(ddir, name, m, false)?;
        self.report.symlinks += 1;
        Ok(())
    }

    fn copy_node(
        &mut self,
        ddir: BorrowedFd<'_>,
        name: &std::ffi::CStr,
        m: &Meta,
    ) -> Result<(), FsError> {
        rfs::mknodat(ddir, name, m.kind, Mode::from_raw_mode(0o600), m.rdev)
            .map_err(|e| self.dst_err("mknod", e))?;
        self.set_node_meta(ddir, name, m, true)?;
        self.report.specials += 1;
        Ok(())
    }

    /// Owner, mode, xattrs and times of an open file or directory. `fchown` comes first
    /// because it clears setuid/setgid and the `security.capability` xattr.
    fn set_meta(
        &self,
        dst: BorrowedFd<'_>,
        src: Option<BorrowedFd<'_>>,
        m: &Meta,
    ) -> Result<(), FsError> {
        if self.as_root {
            let (u, g) = owner(m.uid, m.gid);
            rfs::fchown(dst, u, g).map_err(|e| self.dst_err("set the owner of", e))?;
        }
        rfs::fchmod(dst, mode(m.perm)).map_err(|e| self.dst_err("set the mode of", e))?;
        if let Some(src) = src {
            copy_xattrs(src, dst)
                .map_err(|e| self.dst_err("copy the extended attributes of", e))?;
        }
        rfs::futimens(dst, &times(m.atime, m.mtime))
            .map_err(|e| self.dst_err("set the mtime of", e))
    }

    /// Owner, mode (not for symlinks) and times of a node, by name, not following it.
    fn set_node_meta(
        &self,
        ddir: BorrowedFd<'_>,
        name: &std::ffi::CStr,
        m: &Meta,
        set_mode: bool,
    ) -> Result<(), FsError> {
        if self.as_root {
            let (u, g) = owner(m.uid, m.gid);
            rfs::chownat(ddir, name, u, g, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| self.dst_err("set the owner of", e))?;
        }
        if set_mode {
            // We just created this node with mknodat; it is not a symlink.
            rfs::chmodat(ddir, name, mode(m.perm), AtFlags::empty())
                .map_err(|e| self.dst_err("set the mode of", e))?;
        }
        rfs::utimensat(
            ddir,
            name,
            &times(m.atime, m.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.dst_err("set the mtime of", e))
    }
}

/// Copies every extended attribute of `src` to `dst` (`flistxattr`, `fgetxattr`,
/// `fsetxattr`). A source filesystem without xattrs (`EOPNOTSUPP`) has nothing to copy.
fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Result<(), Errno> {
    let len = match rfs::flistxattr_query(src) {
        Ok(0) | Err(Errno::OPNOTSUPP) => return Ok(()),
        Ok(n) => n,
        Err(e) => return Err(e),
    };
    let mut names = vec![0u8; len];
    let n = rfs::flistxattr(src, &mut names[..])?;
    let mut value = Vec::new();
    for name in names.get(..n).unwrap_or(&[]).split(|b| *b == 0) {
        if name.is_empty() {
            continue;
        }
        let vlen = match rfs::fgetxattr_query(src, name) {
            Ok(v) => v,
            // Removed between the list and the read.
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e),
        };
        value.resize(vlen, 0);
        let k = rfs::fgetxattr(src, name, &mut value[..])?;
        rfs::fsetxattr(
            dst,
            name,
            value.get(..k).unwrap_or(&[]),
            XattrFlags::empty(),
        )?;
    }
    Ok(())
}

/// The bytes of regular-file content in the tree at `dir` (symlinks not followed, each
/// hardlink counted, as [`clone_tree`] copies it): what a byte copy of the tree needs,
/// for the message after a clone ran out of space.
pub fn content_bytes(dir: &Path) -> Result<u64, FsError> {
    let label = dir.display().to_string();
    let mut total = 0u64;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let rel = d.strip_prefix(dir).unwrap_or(&d).display().to_string();
        let entries = std::fs::read_dir(&d).map_err(|e| FsError::io("list", &rel, &label, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| FsError::io("list", &rel, &label, e))?;
            let m = entry
                .metadata()
                .map_err(|e| FsError::io("stat", &rel, &label, e))?;
            if m.is_dir() {
                todo.push(entry.path());
            } else if m.is_file() {
                total = total.saturating_add(m.len());
            }
        }
    }
    Ok(total)
}
