//! Disk images on the host: golden copies and qcow2 overlays, and what a disk holds read without booting it (e2fsck -fn, debugfs), compared as trees of sha256 digests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::output;
use crate::run_cmd;

/// A snapshot as the test compares it: relative path → sha256 (hex) of every regular file.
pub type Tree = BTreeMap<String, String>;

/// A sparse copy of a raw image.
pub fn copy_raw(from: &Path, to: &Path) -> Result<()> {
    let _ = fs::remove_file(to);
    run_cmd(Command::new("cp").arg("--sparse=always").arg(from).arg(to))
}

/// A fresh qcow2 overlay over a raw base: the base is never written.
pub fn overlay(base: &Path, ov: &Path) -> Result<()> {
    let _ = fs::remove_file(ov);
    output(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(base)
            .arg(ov),
    )?;
    Ok(())
}

/// What the host finds on a (stopped) guest's disk.
pub struct OnDisk {
    /// `e2fsck -fn`'s exit code and output.
    pub fsck: (i32, String),
    /// Where `<data_dir>/current` points.
    pub current: String,
    /// The active snapshot's files.
    pub tree: Tree,
}

/// Reads `disk` (raw or qcow2) without booting it; `scratch` is a directory it may fill.
pub fn inspect(disk: &Path, data_dir: &str, scratch: &Path) -> Result<OnDisk> {
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch)?;
    let raw = scratch.join("disk.raw");
    output(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(disk)
            .arg(&raw),
    )?;
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&raw)
        .output()
        .context("cannot run e2fsck")?;
    let fsck = (
        fsck.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        ),
    );
    let stat = debugfs(&raw, &format!("stat /{data_dir}/current"))?;
    let current = stat
        .split("Fast link dest: \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .with_context(|| {
            format!("/{data_dir}/current is not a symbolic link on the disk:\n{stat}")
        })?
        .to_string();
    let dump = scratch.join("current");
    fs::create_dir_all(&dump)?;
    debugfs(
        &raw,
        &format!("rdump /{data_dir}/{current} {}", dump.display()),
    )?;
    let slot = current.rsplit('/').next().unwrap_or(&current);
    let tree = hash_tree(&dump.join(slot))?;
    let _ = fs::remove_file(&raw);
    Ok(OnDisk {
        fsck,
        current,
        tree,
    })
}

/// Runs one debugfs request against an image (read-only); its output.
fn debugfs(raw: &Path, request: &str) -> Result<String> {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(raw)
        .output()
        .context("cannot run debugfs")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("`debugfs -R '{request}'` failed: {text}");
    }
    Ok(text)
}

/// Every regular file below `dir`, hashed.
pub fn hash_tree(dir: &Path) -> Result<Tree> {
    let mut tree = Tree::new();
    walk(dir, "", &mut tree)?;
    Ok(tree)
}

fn walk(dir: &Path, prefix: &str, tree: &mut Tree) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let e = e?;
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let ty = e.file_type()?;
        if ty.is_dir() {
            walk(&e.path(), &format!("{name}/"), tree)?;
        } else if ty.is_file() {
            let bytes = fs::read(e.path())?;
            tree.insert(name, hex(&Sha256::digest(&bytes)));
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// How two trees differ, for a failure message (at most a few lines).
pub fn diff(want: &Tree, got: &Tree) -> String {
    let mut lines = Vec::new();
    for (p, d) in want {
        match got.get(p) {
            None => lines.push(format!("missing {p}")),
            Some(g) if g != d => lines.push(format!("differs {p}")),
            _ => {}
        }
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        lines.push(format!("extra {p}"));
    }
    lines.truncate(8);
    lines.join(", ")
}
