//! Scratch file systems for one test (root only: they mount): a loop-mounted XFS image with reflinks, for tests that clone whole trees, and a sized tmpfs.

use std::ffi::CStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop-mounted XFS file system (with reflinks) in a temp dir: a slot clone on it
/// is a reflink per file instead of a data copy. Dropping it unmounts (lazily if
/// still busy) and deletes the image.
pub struct Scratch {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Scratch {
    /// A sparse `size`-byte XFS image mounted in a temp dir; `None` (with the reason
    /// printed) when mkfs.xfs or loop mounts are not available.
    pub fn xfs(size: u64) -> Option<Scratch> {
        let mkfs = ["/usr/sbin/mkfs.xfs", "/sbin/mkfs.xfs", "/usr/bin/mkfs.xfs"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(mkfs) = mkfs else {
            println!("no scratch XFS: mkfs.xfs is not installed");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("scratch.img");
        fs::File::create(&img)
            .and_then(|f| f.set_len(size))
            .expect("scratch image");
        let ok = Command::new(mkfs)
            .args(["-q", "-m", "reflink=1"])
            .arg(&img)
            .status()
            .expect("mkfs.xfs");
        assert!(ok.success(), "mkfs.xfs failed");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).expect("mount point");
        // util-linux mount sets the loop device up with autoclear: unmounting frees it.
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .status()
            .expect("mount");
        if !st.success() {
            println!("no scratch XFS: cannot loop-mount an image here");
            return None;
        }
        Some(Scratch { _dir: dir, mnt })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// A tmpfs mounted for one test, unmounted (lazily if still busy) when dropped, even
/// when the test fails.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs at `at` with `options` (e.g. `size=16m`).
    pub fn mount(at: &Path, options: &CStr) -> Tmpfs {
        use rustix::mount::{mount, MountFlags};
        mount("tmpfs", at, "tmpfs", MountFlags::empty(), options)
            .unwrap_or_else(|e| panic!("mount tmpfs at {}: {e}", at.display()));
        Tmpfs(at.to_path_buf())
    }

    /// Bytes an unprivileged writer could still use.
    pub fn free(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.0).expect("statvfs");
        s.f_bavail * s.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        use rustix::mount::{unmount, UnmountFlags};
        if unmount(&self.0, UnmountFlags::empty()).is_err() {
            let _ = unmount(&self.0, UnmountFlags::DETACH);
        }
    }
}
