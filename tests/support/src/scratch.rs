//! Loop-mounted scratch file systems: an XFS image with reflinks, for tests that clone whole trees (root only: it mounts).

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
