//! Chroot mounts for the packages stage: `/proc`, `/sys`, `/dev`, `/dev/pts`, `resolv.conf` and read-only binds inside a slot, recorded durably, always unmounted, and cleaned up after a crash.
//!
//! Package managers run in a chroot of the inactive slot, so what they install
//! rolls back with the slot. They need `/proc`, `/sys`, `/dev` (and `/dev/pts`),
//! a resolver configuration, and the bundle's shipped package files. A
//! [`ChrootMounts`] guard mounts all of them and unmounts them again
//! ([`ChrootMounts::teardown`], or best effort on drop). Rules:
//!
//! * **Nothing through a symlink.** The slot is untrusted: a slot whose `proc` is a
//!   symlink to `/etc` would otherwise have the host's `/etc` mounted over. Every
//!   target is opened one component at a time with `O_PATH | O_NOFOLLOW`, each
//!   component checked (a symlink is refused, an intermediate must be a
//!   directory), and the mount made onto `/proc/self/fd/N` of the final handle, so
//!   what was checked is what gets mounted on, even if the slot changes meanwhile.
//!   Every target is checked before the first mount, so a refused slot gets no
//!   mount at all.
//! * **Nothing created outside the slot.** Missing mount points are created
//!   inside the slot (and removed at teardown); nothing is created beneath one of
//!   our own mounts (`dev/pts` lives in the host's `/dev`), and `etc/resolv.conf`
//!   when it is a symlink is resolved as the chroot would see it (the slot as `/`),
//!   never out of the slot.
//! * **No propagation to or from the host.** Binds are not recursive (`/dev/pts`
//!   is bound on its own), and each new mount is made `MS_PRIVATE` before anything
//!   is mounted beneath it. Otherwise, on a host whose mounts are shared (systemd's
//!   default), unmounting beneath a bind that is a peer of the host's `/sys` or
//!   `/dev` would unmount the host's own submounts too.
//! * **Least authority.** `/proc` is a fresh `proc` mount (nosuid, nodev, noexec)
//!   with `/proc/sys` bound read-only over itself, so a maintainer script's
//!   `sysctl` cannot change the running kernel; `/sys`, `resolv.conf` and the
//!   extra binds are read-only (nosuid, nodev, noexec), so nothing in the chroot
//!   can write the host's files through them. `/dev` and `/dev/pts` stay writable
//!   (`/dev/null`).
//! * **A record survives a crash.** Before each mount or creation, the record
//!   file the caller names (`<data_dir>/mounts`) is rewritten durably (temporary
//!   file, fsync, rename, fsync of the directory). [`cleanup_stale`], run at every
//!   agent start, unmounts whatever `/proc/self/mountinfo` shows inside a slot
//!   (record or not), removes what the record says was created, then the record.
//!
//! Unmounting retries on `EBUSY` a few times, then detaches (`MNT_DETACH`): a
//! process left behind in the chroot must not keep a bind of `/dev` inside a slot
//! that is later removed or copied.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use molt_mountinfo::unescape;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, StatxFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

/// How often a busy (`EBUSY`) mount is retried before it is detached.
const UNMOUNT_TRIES: u32 = 5;
/// Pause between two tries; doubled each time (0.1 + 0.2 + 0.4 + 0.8 s).
const UNMOUNT_PAUSE: Duration = Duration::from_millis(100);
/// Symlinks followed when resolving `etc/resolv.conf` inside the slot (Linux's own limit).
const MAX_SYMLINKS: u32 = 40;
/// First line of the record file.
const RECORD_MAGIC: &str = "molt-chroot-mounts 1";
/// Flags of every read-only bind: besides read-only, nothing there needs to be
/// executable, setuid or a device.
const RO_BIND: MountFlags = MountFlags::BIND
    .union(MountFlags::RDONLY)
    .union(MountFlags::NOSUID)
    .union(MountFlags::NODEV)
    .union(MountFlags::NOEXEC);

/// An extra bind mount into the slot (such as the bundle's package files at `run/molt/packages`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindSpec {
    /// A host path (file or directory), trusted: it is resolved normally.
    pub source: PathBuf,
    /// Where, inside the slot (`run/molt/packages`; a leading `/` is ignored). Must be
    /// plain names (no `.`, `..`), and must not lie inside another of the mounts.
    pub target: PathBuf,
    /// Remount read-only (and nosuid, nodev, noexec) after binding.
    pub read_only: bool,
}

impl BindSpec {
    /// A read-only bind of `source` at `target` inside the slot.
    pub fn read_only(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        BindSpec {
            source: source.into(),
            target: target.into(),
            read_only: true,
        }
    }
}

/// What a mount point is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    /// Anything but a directory or a symlink (a bind of a file).
    File,
}

/// Where a planned mount comes from.
#[derive(Clone, Debug)]
enum Source {
    /// A fresh `proc` instance.
    Proc,
    /// A bind of this host path.
    Host(PathBuf),
    /// The target bound over itself (to make it read-only).
    Itself,
}

/// One mount to make.
#[derive(Clone, Debug)]
struct Planned {
    /// Relative to the slot, plain names only.
    target: PathBuf,
    source: Source,
    kind: Kind,
    read_only: bool,
    /// A failure before anything is mounted skips this mount (with a log line)
    /// instead of failing the setup: `resolv.conf` only matters for registry packages.
    optional: bool,
}

/// One entry of the record file (paths relative to the slot).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// About to be (or already) mounted here.
    Mount(PathBuf),
    /// A directory we created as (or on the way to) a mount point.
    Dir(PathBuf),
    /// An empty file we created as a mount point.
    File(PathBuf),
}

/// The record file: which slot, what is mounted, what was created.
#[derive(Clone, Debug)]
struct Record {
    file: PathBuf,
    slot: PathBuf,
    entries: Vec<Entry>,
}

/// The chroot's mounts inside one slot; unmounted by [`ChrootMounts::teardown`] or,
/// best effort, on drop.
#[derive(Debug)]
pub struct ChrootMounts {
    /// The slot, canonical (as `/proc/self/mountinfo` shows it).
    slot: PathBuf,
    /// `O_PATH` handle of the slot: every target is opened beneath it.
    slot_fd: OwnedFd,
    record: Record,
    /// What is mounted (relative), in mount order.
    mounted: Vec<(PathBuf, Kind)>,
    /// Set once unmounting was attempted, so drop after teardown does nothing.
    released: bool,
}

impl ChrootMounts {
    /// Mounts, inside `slot_root`: a fresh `proc` at `proc` (with `proc/sys` read-only),
    /// `/sys` at `sys` (read-only), `/dev` at `dev`, `/dev/pts` at `dev/pts`, the host's
    /// `/etc/resolv.conf` at `etc/resolv.conf` (read-only; skipped with a log line when
    /// the host has none or the slot's cannot be resolved inside the slot), then each of
    /// `extra` in order. Missing mount points are created in the slot.
    ///
    /// `record_file` (such as `<data_dir>/mounts`) is written before each mount and
    /// removed by a clean teardown; it must not exist yet (run [`cleanup_stale`] first).
    /// On any error, whatever was already mounted is unmounted again before returning.
    pub fn setup(slot_root: &Path, extra: &[BindSpec], record_file: &Path) -> Result<Self> {
        let slot = slot_root
            .canonicalize()
            .with_context(|| format!("chroot mounts: slot {}", slot_root.display()))?;
        let slot_fd = rfs::open(
            &slot,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
        .with_context(|| format!("chroot mounts: open slot {}", slot.display()))?;
        if fs::symlink_metadata(record_file).is_ok() {
            bail!(
                "chroot mounts: record {} exists: an earlier chroot was not cleaned up (run cleanup_stale first)",
                record_file.display()
            );
        }
        let already = mounts_below(&slot)?;
        if let Some(first) = already.first() {
            bail!(
                "chroot mounts: slot {} already has {} mount(s) inside (first: {}); run cleanup_stale first",
                slot.display(),
                already.len(),
                first.display()
            );
        }
        let plan = plan(slot_fd.as_fd(), &slot, extra)?;

        let mut this = ChrootMounts {
            record: Record {
                file: record_file.to_path_buf(),
                slot: slot.clone(),
                entries: Vec::new(),
            },
            slot,
            slot_fd,
            mounted: Vec::new(),
            released: false,
        };
        for p in &plan {
            let result = this.mount_one(p);
            let Err(e) = result else { continue };
            if p.optional && !this.mounted.iter().any(|(t, _)| *t == p.target) {
                tracing::warn!("chroot mounts: skipped: {e:#}");
                continue;
            }
            if let Err(undo) = this.release() {
                tracing::error!("chroot mounts: undoing a failed setup: {undo:#}");
            }
            return Err(e);
        }
        tracing::info!(
            slot = %this.slot.display(),
            "chroot mounts: {} mounted",
            this.mounted.len()
        );
        Ok(this)
    }

    /// The slot (canonical path).
    pub fn slot(&self) -> &Path {
        &self.slot
    }

    /// The absolute mount points, in mount order.
    pub fn mount_points(&self) -> Vec<PathBuf> {
        self.mounted
            .iter()
            .map(|(t, _)| self.slot.join(t))
            .collect()
    }

    /// Unmounts everything in reverse order, then removes the mount points it created
    /// and the record file. Every mount is attempted; the error names each that failed
    /// (the record then stays, for [`cleanup_stale`]).
    pub fn teardown(mut self) -> Result<()> {
        self.release()
    }

    /// Mounts one planned mount; records it (and any creation) first.
    fn mount_one(&mut self, p: &Planned) -> Result<()> {
        let at = self.slot.join(&p.target);
        // Nothing is created beneath one of our own mounts: `dev` is the host's /dev.
        let create = !self.mounted.iter().any(|(m, _)| p.target.starts_with(m));
        let fd = {
            let (slot_fd, slot, record) = (self.slot_fd.as_fd(), &self.slot, &mut self.record);
            let mut note = |rel: &Path, kind: Kind| {
                record.entries.push(match kind {
                    Kind::Dir => Entry::Dir(rel.to_path_buf()),
                    Kind::File => Entry::File(rel.to_path_buf()),
                });
                record.persist()
            };
            walk(
                slot_fd,
                slot,
                &p.target,
                p.kind,
                if create { Some(&mut note) } else { None },
            )?
        };
        self.record.entries.push(Entry::Mount(p.target.clone()));
        self.record.persist()?;

        let fd_path = proc_fd_path(fd.as_fd());
        let mounted = match &p.source {
            Source::Proc => {
                let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
                rustix::mount::mount("proc", &fd_path, "proc", flags, None::<&std::ffi::CStr>)
                    .or_else(|e| {
                        // A fresh proc can be refused (a container without its own PID
                        // namespace); the host's, bound, serves package managers as well.
                        tracing::warn!(
                            "chroot mounts: fresh proc at {} refused ({e}); binding /proc instead",
                            at.display()
                        );
                        rustix::mount::mount_bind("/proc", &fd_path)
                    })
            }
            Source::Host(src) => rustix::mount::mount_bind(src, &fd_path),
            Source::Itself => rustix::mount::mount_bind(&fd_path, &fd_path),
        };
        mounted
            .map_err(io::Error::from)
            .with_context(|| format!("chroot mounts: mount {} at {}", p.source, at.display()))?;
        drop(fd);
        self.mounted.push((p.target.clone(), p.kind));

        // Reopen: the handle now leads to the new mount's root, not to the directory
        // beneath it.
        let top = walk(self.slot_fd.as_fd(), &self.slot, &p.target, p.kind, None)?;
        let top_path = proc_fd_path(top.as_fd());
        rustix::mount::mount_change(&top_path, MountPropagationFlags::PRIVATE)
            .map_err(io::Error::from)
            .with_context(|| format!("chroot mounts: make {} private", at.display()))?;
        if p.read_only {
            rustix::mount::mount_remount(&top_path, RO_BIND, "")
                .map_err(io::Error::from)
                .with_context(|| format!("chroot mounts: remount {} read-only", at.display()))?;
        }
        tracing::debug!("chroot mounts: {} at {}", p.source, at.display());
        Ok(())
    }

    /// Unmounts in reverse order, then removes what was created and the record. Runs once.
    fn release(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        let mut failed = Vec::new();
        for (rel, kind) in self.mounted.iter().rev() {
            let at = self.slot.join(rel);
            // The chroot had root: make sure the path still leads to our mount
            // without a symlink before handing it to umount2(2), which would follow
            // a symlink planted in a parent (UMOUNT_NOFOLLOW covers only the last).
            if let Err(e) = walk(self.slot_fd.as_fd(), &self.slot, rel, *kind, None) {
                failed.push(format!("{}: not unmounted: {e:#}", at.display()));
                continue;
            }
            match unmount(&at) {
                Ok(how) => tracing::debug!("chroot mounts: unmounted {} ({how:?})", at.display()),
                Err(e) if e == Errno::INVAL => {
                    tracing::warn!("chroot mounts: {} was no longer mounted", at.display());
                }
                Err(e) => failed.push(format!("{}: umount: {}", at.display(), io::Error::from(e))),
            }
        }
        self.mounted.clear();
        if !failed.is_empty() {
            bail!(
                "chroot mounts: unmounting in {} failed ({} kept for cleanup_stale): {}",
                self.slot.display(),
                self.record.file.display(),
                failed.join("; ")
            );
        }
        remove_created(self.slot_fd.as_fd(), &self.slot, &self.record.entries);
        self.record.remove()
    }
}

impl Drop for ChrootMounts {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::error!("{e:#}");
        }
    }
}

/// Unmounts whatever a crashed agent left mounted inside a slot, then removes the
/// mount points the record says were created and the record itself. Returns what it
/// unmounted (deepest first).
///
/// `slots_root` is the directory holding the slot directories (`<data_dir>/slots`).
/// Every mount point at least two components below it (inside a slot: `slots/b/proc`)
/// is unmounted, whether or not `record_file` exists, plus anything inside the slot
/// the record names. A filesystem mounted on a slot directory itself (`slots/b`, a
/// slot on its own partition) is left alone. Busy mounts are retried, then detached.
pub fn cleanup_stale(record_file: &Path, slots_root: &Path) -> Result<Vec<PathBuf>> {
    cleanup_stale_inner(record_file, slots_root)
}

/// Kills (SIGKILL) every process whose root directory is inside `slots_root`: what a
/// crashed agent's packages stage left running in a chroot (a dpkg maintainer script,
/// a pip build). They would keep the bind mounts busy and keep writing into a slot
/// nobody drives any more. Returns their process ids. A power cut leaves none; this
/// is for an agent killed on a running system.
pub fn kill_chrooted(slots_root: &Path) -> Vec<i32> {
    let Ok(root) = slots_root.canonicalize() else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    // Twice: a process can fork between the scan and the kill.
    for _ in 0..2 {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            break;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            // The kernel shows a chrooted process's root as the path of its root directory.
            let Ok(proc_root) = std::fs::read_link(e.path().join("root")) else {
                continue;
            };
            if !proc_root.starts_with(&root) {
                continue;
            }
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                if rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok()
                    && !killed.contains(&pid)
                {
                    killed.push(pid);
                }
            }
        }
    }
    if !killed.is_empty() {
        // Give the kernel a moment to reap them so their mounts are no longer busy.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    killed
}

fn cleanup_stale_inner(record_file: &Path, slots_root: &Path) -> Result<Vec<PathBuf>> {
    let record = match Record::load(record_file) {
        Ok(r) => r,
        Err(e) => {
            // An unreadable record must not keep the mounts: mountinfo still says
            // what is mounted; only the created mount points stay behind.
            tracing::warn!("{e:#}; unmounting by /proc/self/mountinfo alone");
            None
        }
    };
    let root = slots_root
        .canonicalize()
        .or_else(|_| std::path::absolute(slots_root))
        .with_context(|| format!("cleanup of chroot mounts: {}", slots_root.display()))?;
    // The record names a slot; it is trusted only inside `slots_root`, so a damaged
    // record cannot widen the cleanup to the whole host.
    let record = record.filter(|r| {
        let inside = r.slot.starts_with(&root);
        if !inside {
            tracing::warn!(
                "chroot mount record {}: slot {} is not inside {}: ignored",
                record_file.display(),
                r.slot.display(),
                root.display()
            );
        }
        inside
    });
    let recorded_slot = record.as_ref().map(|r| r.slot.clone());
    let ours = |p: &Path| {
        p.strip_prefix(&root)
            .is_ok_and(|rest| rest.components().count() >= 2)
            || recorded_slot
                .as_deref()
                .is_some_and(|s| p.starts_with(s) && p != s)
    };

    let mut unmounted = Vec::new();
    let mut failed = Vec::new();
    // Several passes: a detached parent can reveal nothing new, but a mount that
    // propagated or was stacked twice shows up again in the next read.
    for _ in 0..3 {
        let mut targets: Vec<PathBuf> = mount_points()?
            .into_iter()
            .rev()
            .filter(|p| ours(p))
            .collect();
        if targets.is_empty() {
            break;
        }
        // Deepest first; the stable sort keeps later mounts (reversed order) first
        // among equals, so a stack at one point comes off from the top.
        targets.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        failed.clear();
        let mut progress = false;
        for t in targets {
            match unmount(&t) {
                Ok(how) => {
                    tracing::warn!(
                        "cleanup of chroot mounts: unmounted stale {} ({how:?})",
                        t.display()
                    );
                    unmounted.push(t);
                    progress = true;
                }
                Err(e) => failed.push(format!("{}: {}", t.display(), io::Error::from(e))),
            }
        }
        if !progress {
            break;
        }
    }
    let left: Vec<PathBuf> = mount_points()?.into_iter().filter(|p| ours(p)).collect();
    if !left.is_empty() {
        bail!(
            "cleanup of chroot mounts below {}: still mounted: {} ({})",
            root.display(),
            molt_mountinfo::describe(&left),
            failed.join("; ")
        );
    }
    if let Some(r) = &record {
        match rfs::open(
            &r.slot,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => remove_created(fd.as_fd(), &r.slot, &r.entries),
            Err(e) => tracing::warn!(
                "cleanup of chroot mounts: slot {}: {}; created mount points not removed",
                r.slot.display(),
                io::Error::from(e)
            ),
        }
    }
    let tmp = Record::tmp_path(record_file);
    if fs::symlink_metadata(&tmp).is_ok() {
        fs::remove_file(&tmp).with_context(|| format!("remove {}", tmp.display()))?;
    }
    if fs::symlink_metadata(record_file).is_ok() {
        Record::remove_file(record_file)?;
    }
    Ok(unmounted)
}

/// The mount points strictly inside `dir`, per `/proc/self/mountinfo`, in mount order.
/// `dir` is compared as given: pass a canonical path.
pub fn mounts_below(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(mount_points()?
        .into_iter()
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect())
}

/// Every mount point of this process's mount namespace, in `/proc/self/mountinfo` order.
fn mount_points() -> Result<Vec<PathBuf>> {
    Ok(molt_mountinfo::mount_points()?)
}

/// The inverse of [`unescape`] for the record: whitespace, backslash and control bytes
/// as `\ooo`, so one path is one word of one line.
fn escape(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b == b'\\' || b == b' ' || !(0x21..0x7f).contains(&b) {
            out.push_str(&format!("\\{b:03o}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// `umount2(path, UMOUNT_NOFOLLOW)`, retried on `EBUSY`, then with `MNT_DETACH`.
fn unmount(path: &Path) -> Result<Unmounted, Errno> {
    let mut pause = UNMOUNT_PAUSE;
    for _ in 0..UNMOUNT_TRIES {
        match rustix::mount::unmount(path, UnmountFlags::NOFOLLOW) {
            Ok(()) => return Ok(Unmounted::Clean),
            Err(Errno::BUSY) => {
                std::thread::sleep(pause);
                pause *= 2;
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    tracing::warn!(
        "chroot mounts: {} still busy: detaching it (MNT_DETACH)",
        path.display()
    );
    rustix::mount::unmount(path, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)?;
    Ok(Unmounted::Detached)
}

/// How a mount came off.
#[derive(Clone, Copy, Debug)]
enum Unmounted {
    Clean,
    /// Busy: detached from the tree, freed once its last user lets go.
    Detached,
}

/// Host path of the resolver configuration.
const HOST_RESOLV: &str = "/etc/resolv.conf";

/// The mounts to make, every target checked against the slot as it is now (no
/// symlink, intermediates are directories), so a refused slot gets no mount at all.
fn plan(slot_fd: BorrowedFd<'_>, slot: &Path, extra: &[BindSpec]) -> Result<Vec<Planned>> {
    let mut plan = vec![
        Planned {
            target: "proc".into(),
            source: Source::Proc,
            kind: Kind::Dir,
            read_only: false,
            optional: false,
        },
        Planned {
            target: "proc/sys".into(),
            source: Source::Itself,
            kind: Kind::Dir,
            read_only: true,
            optional: false,
        },
        Planned {
            target: "sys".into(),
            source: Source::Host("/sys".into()),
            kind: Kind::Dir,
            read_only: true,
            optional: false,
        },
        Planned {
            target: "dev".into(),
            source: Source::Host("/dev".into()),
            kind: Kind::Dir,
            read_only: false,
            optional: false,
        },
    ];
    if Path::new("/dev/pts").is_dir() {
        plan.push(Planned {
            target: "dev/pts".into(),
            source: Source::Host("/dev/pts".into()),
            kind: Kind::Dir,
            read_only: false,
            optional: false,
        });
    } else {
        tracing::warn!("chroot mounts: the host has no /dev/pts; the chroot gets none");
    }
    match resolv_target(slot_fd, slot, &plan) {
        Ok(Some(target)) => plan.push(Planned {
            target,
            source: Source::Host(HOST_RESOLV.into()),
            kind: Kind::File,
            read_only: true,
            optional: true,
        }),
        Ok(None) => {}
        Err(e) => tracing::warn!("chroot mounts: no resolv.conf in the chroot: {e:#}"),
    }
    for b in extra {
        let target = plain_relative(&b.target)
            .with_context(|| format!("chroot mounts: bind target {}", b.target.display()))?;
        if let Some(outer) = plan.iter().find(|p| target.starts_with(&p.target)) {
            bail!(
                "chroot mounts: bind target {} lies at or inside the mount at {}",
                slot.join(&target).display(),
                slot.join(&outer.target).display()
            );
        }
        let meta = fs::metadata(&b.source)
            .with_context(|| format!("chroot mounts: bind source {}", b.source.display()))?;
        plan.push(Planned {
            target,
            source: Source::Host(b.source.clone()),
            kind: if meta.is_dir() { Kind::Dir } else { Kind::File },
            read_only: b.read_only,
            optional: false,
        });
    }
    // Check before mounting anything. Targets inside an earlier mount (`proc/sys`,
    // `dev/pts`) are checked when mounted, once their parent is the real thing.
    let mut skip = Vec::new();
    for (i, p) in plan.iter().enumerate() {
        let nested = plan
            .get(..i)
            .unwrap_or_default()
            .iter()
            .any(|q| p.target.starts_with(&q.target));
        if nested {
            continue;
        }
        if let Err(e) = check_existing(slot_fd, slot, &p.target, p.kind) {
            if !p.optional {
                return Err(e);
            }
            tracing::warn!("chroot mounts: skipped: {e:#}");
            skip.push(i);
        }
    }
    let plan = plan
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .map(|(_, p)| p)
        .collect();
    Ok(plan)
}

/// Where to mount the host's resolver configuration: `etc/resolv.conf`, or, when the
/// slot's is a symlink, its target resolved as inside the chroot (the slot is `/`,
/// `..` stops there). `None` (with a log line) when the host has none or the target
/// lies inside another mount.
fn resolv_target(
    slot_fd: BorrowedFd<'_>,
    slot: &Path,
    plan: &[Planned],
) -> Result<Option<PathBuf>> {
    match fs::metadata(HOST_RESOLV) {
        Ok(m) if !m.is_dir() => {}
        Ok(_) | Err(_) => {
            tracing::info!("chroot mounts: the host has no {HOST_RESOLV}; the chroot gets none");
            return Ok(None);
        }
    }
    let target = resolve_in_slot(slot_fd, slot, Path::new("etc/resolv.conf"))?;
    if target != Path::new("etc/resolv.conf") {
        tracing::info!(
            "chroot mounts: {}/etc/resolv.conf is a symlink: mounting on {} instead",
            slot.display(),
            slot.join(&target).display()
        );
    }
    if let Some(outer) = plan.iter().find(|p| target.starts_with(&p.target)) {
        tracing::warn!(
            "chroot mounts: {}/etc/resolv.conf leads into the mount at {}: the chroot gets no resolv.conf",
            slot.display(),
            slot.join(&outer.target).display()
        );
        return Ok(None);
    }
    Ok(Some(target))
}

/// Resolves the symlinks of `rel` the way the chroot will: an absolute target starts
/// again at the slot, `..` never climbs above it. Components that do not exist are
/// kept as they are (they will be created). The result is plain names only; the
/// mount itself re-checks it component by component.
fn resolve_in_slot(slot_fd: BorrowedFd<'_>, slot: &Path, rel: &Path) -> Result<PathBuf> {
    let mut todo: Vec<OsString> = rel.iter().rev().map(|c| c.to_os_string()).collect();
    let mut done = PathBuf::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_bytes() {
            b"" | b"." | b"/" => continue,
            b".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let here = done.join(&c);
        match lstat(slot_fd, &here) {
            Ok(Some(FileType::Symlink)) => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    bail!("{}: too many levels of symlinks", slot.join(rel).display());
                }
                let link = rfs::readlinkat(slot_fd, &here, Vec::new())
                    .map_err(io::Error::from)
                    .with_context(|| format!("readlink {}", slot.join(&here).display()))?;
                let link = PathBuf::from(OsString::from_vec(link.into_bytes()));
                if link.is_absolute() {
                    done = PathBuf::new();
                }
                todo.extend(link.iter().rev().map(|c| c.to_os_string()));
            }
            Ok(_) => done = here,
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("stat {}", slot.join(&here).display()))
            }
        }
    }
    if done.as_os_str().is_empty() {
        bail!("{} resolves to the slot itself", slot.join(rel).display());
    }
    Ok(done)
}

/// `rel` with a leading `/` dropped; refused unless it is one or more plain names.
fn plain_relative(rel: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            _ => bail!("must be plain names inside the slot (no `.` or `..`)"),
        }
    }
    if out.as_os_str().is_empty() {
        bail!("must name something inside the slot, not the slot itself");
    }
    Ok(out)
}

/// `statx(dirfd, rel, AT_SYMLINK_NOFOLLOW)`'s file type; `None` if it does not exist.
fn lstat(dirfd: BorrowedFd<'_>, rel: &Path) -> Result<Option<FileType>, Errno> {
    match rfs::statx(dirfd, rel, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE) {
        Ok(s) => Ok(Some(FileType::from_raw_mode(u32::from(s.stx_mode)))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The file type of an open handle.
fn fd_type(fd: BorrowedFd<'_>) -> Result<FileType, Errno> {
    rfs::statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::TYPE)
        .map(|s| FileType::from_raw_mode(u32::from(s.stx_mode)))
}

/// Whether `t` is acceptable where `want` is expected; the error says why not.
fn type_ok(t: FileType, want: Kind, at: &Path) -> Result<()> {
    match (t, want) {
        (FileType::Symlink, _) => bail!(
            "{} is a symlink: refusing to mount through it (a slot must not redirect a mount)",
            at.display()
        ),
        (FileType::Directory, Kind::Dir) => Ok(()),
        (FileType::Directory, Kind::File) => bail!("{} is a directory, not a file", at.display()),
        (_, Kind::Dir) => bail!("{} is not a directory", at.display()),
        (_, Kind::File) => Ok(()),
    }
}

/// Checks the existing components of `rel` without opening or creating anything.
fn check_existing(slot_fd: BorrowedFd<'_>, slot: &Path, rel: &Path, kind: Kind) -> Result<()> {
    let mut here = PathBuf::new();
    let n = rel.components().count();
    for (i, c) in rel.components().enumerate() {
        here.push(c);
        let want = if i + 1 == n { kind } else { Kind::Dir };
        let at = slot.join(&here);
        match lstat(slot_fd, &here) {
            Ok(Some(t)) => type_ok(t, want, &at).context("chroot mounts")?,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(io::Error::from(e))
                    .with_context(|| format!("chroot mounts: stat {}", at.display()))
            }
        }
    }
    Ok(())
}

/// Told about each path [`walk`] is about to create (relative to the slot), before it does.
type OnCreate<'a> = dyn FnMut(&Path, Kind) -> Result<()> + 'a;

/// Opens `rel` beneath `root` one component at a time (`O_PATH | O_NOFOLLOW`), each
/// checked by type, so no symlink anywhere in it is followed; what is returned is the
/// very inode that was checked. Missing components are created when `create` is given
/// (directories 0755, a last `File` as an empty 0644 file), each reported to `create`
/// (which records it) before it is made.
fn walk(
    root: BorrowedFd<'_>,
    slot: &Path,
    rel: &Path,
    kind: Kind,
    mut create: Option<&mut OnCreate<'_>>,
) -> Result<OwnedFd> {
    let n = rel.components().count();
    let mut cur: Option<OwnedFd> = None;
    let mut here = PathBuf::new();
    for (i, c) in rel.components().enumerate() {
        let Component::Normal(name) = c else {
            bail!(
                "chroot mounts: {} is not a plain path",
                slot.join(rel).display()
            );
        };
        here.push(name);
        let at = slot.join(&here);
        let want = if i + 1 == n { kind } else { Kind::Dir };
        let dir = cur.as_ref().map_or(root, |f| f.as_fd());
        let io_err = |what: &str, e: Errno| {
            anyhow!(io::Error::from(e)).context(format!("chroot mounts: {what} {}", at.display()))
        };
        match lstat(dir, Path::new(name)) {
            Ok(Some(t)) => type_ok(t, want, &at).context("chroot mounts")?,
            Ok(None) => {
                let Some(create) = create.as_mut() else {
                    bail!("chroot mounts: {} does not exist", at.display());
                };
                create(&here, want)?;
                match want {
                    Kind::Dir => rfs::mkdirat(dir, name, Mode::from_raw_mode(0o755))
                        .map_err(|e| io_err("create directory", e))?,
                    Kind::File => {
                        rfs::openat(
                            dir,
                            name,
                            OFlags::CREATE
                                | OFlags::EXCL
                                | OFlags::WRONLY
                                | OFlags::NOFOLLOW
                                | OFlags::CLOEXEC,
                            Mode::from_raw_mode(0o644),
                        )
                        .map_err(|e| io_err("create file", e))?;
                    }
                }
            }
            Err(e) => return Err(io_err("stat", e)),
        }
        let mut flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if want == Kind::Dir {
            flags |= OFlags::DIRECTORY;
        }
        let fd = rfs::openat(dir, name, flags, Mode::empty()).map_err(|e| io_err("open", e))?;
        // The entry may have been swapped between the check and the open: check the
        // handle itself, which is what the mount will use.
        let t = fd_type(fd.as_fd()).map_err(|e| io_err("stat", e))?;
        type_ok(t, want, &at).context("chroot mounts")?;
        cur = Some(fd);
    }
    cur.ok_or_else(|| anyhow!("chroot mounts: empty mount target in {}", slot.display()))
}

/// `/proc/self/fd/N` of a handle: a mount there lands on the handle's inode, not on
/// whatever the original path leads to by then.
fn proc_fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Removes, newest first, the directories and empty files the record says were
/// created; best effort (a log line for each left behind), never through a symlink.
fn remove_created(slot_fd: BorrowedFd<'_>, slot: &Path, entries: &[Entry]) {
    for e in entries.iter().rev() {
        let (rel, kind) = match e {
            Entry::Mount(_) => continue,
            Entry::Dir(r) => (r, Kind::Dir),
            Entry::File(r) => (r, Kind::File),
        };
        if let Err(err) = remove_one(slot_fd, slot, rel, kind) {
            tracing::warn!(
                "chroot mounts: left {} in place: {err:#}",
                slot.join(rel).display()
            );
        }
    }
}

/// Removes one created mount point: an empty directory, or an empty file.
fn remove_one(slot_fd: BorrowedFd<'_>, slot: &Path, rel: &Path, kind: Kind) -> Result<()> {
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        bail!("not a path inside the slot");
    };
    let parent_fd;
    let dir = if parent.as_os_str().is_empty() {
        slot_fd
    } else {
        parent_fd = walk(slot_fd, slot, parent, Kind::Dir, None)?;
        parent_fd.as_fd()
    };
    match lstat(dir, Path::new(name)).map_err(io::Error::from)? {
        None => return Ok(()),
        Some(t) => type_ok(t, kind, &slot.join(rel))?,
    }
    let flags = match kind {
        Kind::Dir => AtFlags::REMOVEDIR,
        Kind::File => {
            // Only the empty file we made: anything written there since is kept.
            let st = rfs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::SIZE)
                .map_err(io::Error::from)?;
            if st.stx_size != 0 {
                bail!("it is no longer empty");
            }
            AtFlags::empty()
        }
    };
    rfs::unlinkat(dir, name, flags).map_err(io::Error::from)?;
    Ok(())
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Proc => f.write_str("proc"),
            Source::Host(p) => write!(f, "{}", p.display()),
            Source::Itself => f.write_str("(itself, read-only)"),
        }
    }
}

impl Record {
    /// `<record>.tmp`, beside it (so the rename stays in one directory).
    fn tmp_path(file: &Path) -> PathBuf {
        let mut name = file
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".tmp");
        file.with_file_name(name)
    }

    /// Writes the record durably: temporary file, fsync, rename, fsync of the directory.
    fn persist(&self) -> Result<()> {
        let mut text = format!(
            "{RECORD_MAGIC}\nslot {}\n",
            escape(self.slot.as_os_str().as_bytes())
        );
        for e in &self.entries {
            let (word, p) = match e {
                Entry::Mount(p) => ("mount", p),
                Entry::Dir(p) => ("created-dir", p),
                Entry::File(p) => ("created-file", p),
            };
            text.push_str(&format!("{word} {}\n", escape(p.as_os_str().as_bytes())));
        }
        let tmp = Self::tmp_path(&self.file);
        let write = || -> io::Result<()> {
            let mut f = crate::perms::state_file()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            crate::durability::sync_all(&f)?;
            fs::rename(&tmp, &self.file)?;
            sync_parent(&self.file)
        };
        write().with_context(|| format!("chroot mounts: write record {}", self.file.display()))
    }

    /// Removes the record (and a leftover temporary file), durably.
    fn remove(&self) -> Result<()> {
        let tmp = Self::tmp_path(&self.file);
        if fs::symlink_metadata(&tmp).is_ok() {
            fs::remove_file(&tmp).with_context(|| format!("remove {}", tmp.display()))?;
        }
        if fs::symlink_metadata(&self.file).is_ok() {
            Self::remove_file(&self.file)?;
        }
        Ok(())
    }

    fn remove_file(file: &Path) -> Result<()> {
        fs::remove_file(file)
            .and_then(|()| sync_parent(file))
            .with_context(|| format!("remove chroot mount record {}", file.display()))
    }

    /// Reads a record; `None` if there is none.
    fn load(file: &Path) -> Result<Option<Record>> {
        let bytes = match fs::read(file) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("read chroot mount record {}", file.display()))
            }
        };
        let bad = |why: &str| anyhow!("chroot mount record {}: {why}", file.display());
        let mut lines = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        if lines.next() != Some(RECORD_MAGIC.as_bytes()) {
            return Err(bad("not a record (first line)"));
        }
        let mut slot = None;
        let mut entries = Vec::new();
        for line in lines {
            let (word, rest) = line
                .iter()
                .position(|&b| b == b' ')
                .map(|i| {
                    (
                        line.get(..i).unwrap_or_default(),
                        line.get(i + 1..).unwrap_or_default(),
                    )
                })
                .ok_or_else(|| bad("a line without a path"))?;
            let path = PathBuf::from(OsString::from_vec(unescape(rest)));
            match word {
                b"slot" if path.is_absolute() => slot = Some(path),
                b"mount" => entries.push(Entry::Mount(path)),
                b"created-dir" => entries.push(Entry::Dir(path)),
                b"created-file" => entries.push(Entry::File(path)),
                _ => return Err(bad("unknown line")),
            }
        }
        // Relative paths with `..` would make the cleanup act outside the slot.
        for e in &entries {
            let (Entry::Mount(p) | Entry::Dir(p) | Entry::File(p)) = e;
            if plain_relative(p).ok().as_deref() != Some(p.as_path()) {
                return Err(bad("a path that is not plain names inside the slot"));
            }
        }
        let slot = slot.ok_or_else(|| bad("no slot line"))?;
        Ok(Some(Record {
            file: file.to_path_buf(),
            slot,
            entries,
        }))
    }
}

/// fsync(2) of the directory holding `file`, so a rename or removal in it is durable.
fn sync_parent(file: &Path) -> io::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    crate::durability::sync_all(&File::open(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_escape_round_trips() {
        let raw = b"/a b/c\\d\ne\x01\xff";
        let e = escape(raw);
        assert!(!e.contains(' ') && !e.contains('\n'), "{e}");
        assert_eq!(unescape(e.as_bytes()), raw);
    }

    #[test]
    fn record_round_trips_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mounts");
        let r = Record {
            file: file.clone(),
            slot: PathBuf::from("/var/lib/molt/slots/b x"),
            entries: vec![
                Entry::Dir("run/molt".into()),
                Entry::Mount("proc".into()),
                Entry::File("etc/resolv.conf".into()),
            ],
        };
        r.persist().unwrap();
        let back = Record::load(&file).unwrap().unwrap();
        assert_eq!(back.slot, r.slot);
        assert_eq!(back.entries, r.entries);
        assert!(!Record::tmp_path(&file).exists());

        fs::write(
            &file,
            format!("{RECORD_MAGIC}\nslot /s\ncreated-dir ../etc\n"),
        )
        .unwrap();
        assert!(Record::load(&file).is_err());
        fs::write(&file, "something else\n").unwrap();
        assert!(Record::load(&file).is_err());
        assert!(Record::load(&dir.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn bind_targets_must_be_plain() {
        assert_eq!(
            plain_relative(Path::new("/run/molt/packages")).unwrap(),
            PathBuf::from("run/molt/packages")
        );
        assert!(plain_relative(Path::new("run/../etc")).is_err());
        assert!(plain_relative(Path::new("/")).is_err());
        assert!(plain_relative(Path::new("")).is_err());
    }
}
