//! A fresh loop-mounted ext4 for the install benchmarks, created and torn down by the task.
//!
//! The machine's own root file system is a poor, noisy target (shared, full of
//! other writers, maybe not ext4); a sparse image formatted for each run starts
//! every benchmark from the same empty file system.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::util::quiet;

/// The image's size: room for two 200 MiB trees plus ext4's overhead, with slack
/// so the file system never runs near full (which would slow block allocation).
const IMAGE_BYTES: u64 = 2 << 30;

/// Whether `dir` is a mount point now, from /proc/self/mounts.
fn is_mounted(dir: &Path) -> bool {
    let Ok(canon) = dir.canonicalize() else {
        return false;
    };
    let canon = canon.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some(canon.as_str()))
        })
        .unwrap_or(false)
}

/// A loop-mounted ext4 created for this run. Dropping it unmounts the file system,
/// detaches the loop device and deletes the image, whatever happened meanwhile:
/// a failed round must not leave a mount or a loop device behind.
pub struct LoopMount {
    img: PathBuf,
    /// Where the file system is mounted.
    pub mnt: PathBuf,
    /// The loop device, `/dev/loopN`.
    pub dev: String,
    mounted: bool,
}

impl LoopMount {
    /// A description for the report.
    pub fn describe(&self) -> String {
        format!(
            "ext4 on {} ({} MiB sparse image)",
            self.dev,
            IMAGE_BYTES >> 20
        )
    }

    /// Creates the image, formats, attaches and mounts it; on failure everything
    /// done so far is undone and the error says which step failed.
    pub fn create(work: &Path) -> Result<LoopMount> {
        let img = work.join("slot.img");
        let mnt = work.join("mnt");
        // A run killed by Ctrl-C never reaches Drop: clean up what it left first.
        if is_mounted(&mnt) {
            println!("unmounting {} left by an earlier run", mnt.display());
            quiet(Command::new("umount").arg(&mnt))?;
        }
        if img.exists() {
            let attached = quiet(Command::new("losetup").arg("-j").arg(&img))?;
            for dev in attached.lines().filter_map(|l| l.split(':').next()) {
                println!("detaching {dev} left by an earlier run");
                quiet(Command::new("losetup").arg("-d").arg(dev))?;
            }
            fs::remove_file(&img)?;
        }
        fs::create_dir_all(&mnt)?;
        // set_len on a new file makes it sparse: no 1 GiB of zeros written.
        fs::File::create(&img)?.set_len(IMAGE_BYTES)?;
        // Inode tables and the journal are initialised now rather than lazily by
        // the kernel's ext4lazyinit thread after mounting, which would write in the
        // background during the first rounds.
        quiet(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
                .arg(&img),
        )?;
        // Direct I/O to the image: the loop device then writes through to the disk
        // like a real block device, without a second copy of every block in the
        // host's page cache (which made durable runs vary with memory pressure).
        let dev = quiet(
            Command::new("losetup")
                .args(["--find", "--show", "--direct-io=on"])
                .arg(&img),
        )
        .context("no loop device")?
        .trim()
        .to_string();
        let mut guard = LoopMount {
            img,
            mnt,
            dev,
            mounted: false,
        };
        quiet(Command::new("mount").arg(&guard.dev).arg(&guard.mnt))?;
        guard.mounted = true;
        Ok(guard)
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = quiet(Command::new("umount").arg(&self.mnt)) {
                eprintln!("bench: {e:#}; unmounting lazily");
                let _ = quiet(Command::new("umount").arg("-l").arg(&self.mnt));
            }
        }
        if let Err(e) = quiet(Command::new("losetup").arg("-d").arg(&self.dev)) {
            eprintln!("bench: cannot detach {}: {e:#}", self.dev);
        }
        let _ = fs::remove_file(&self.img);
    }
}

/// Removes `paths` (if present) and flushes every file system: untimed, so the
/// next timed run starts with the same free space and no writeback pending.
pub fn reset(paths: &[&Path]) -> Result<()> {
    for p in paths {
        if p.exists() {
            fs::remove_dir_all(p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    quiet(&mut Command::new("sync"))?;
    Ok(())
}

/// [`reset`]s the agent's `var` and a baseline's target `dir`, then makes `dir` again,
/// empty and flushed: it exists before the timed run, as a mounted partition would.
pub fn empty_target(var: &Path, dir: &Path) -> Result<()> {
    reset(&[var, dir])?;
    fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    quiet(&mut Command::new("sync"))?;
    Ok(())
}

/// Fails unless the two trees hold the same names and bytes (`diff -r`), so a
/// round that wrote less than the whole tree cannot pass for a fast one.
pub fn same_tree(want: &Path, got: &Path) -> Result<()> {
    quiet(Command::new("diff").arg("-rq").arg(want).arg(got))
        .with_context(|| format!("{} differs from {}", got.display(), want.display()))?;
    Ok(())
}
