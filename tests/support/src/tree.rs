//! Trees as the tests compare them: what a bundle installs, and what a directory holds (kinds, digests, modes), plus a fingerprint of everything observable.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::bundle::{Spec, E, K};

/// What a path is, for comparing installed trees with bundles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// BLAKE3 digest (hex) and permission bits.
    File(String, u32),
    /// A directory.
    Dir,
    /// A symlink and its target.
    Symlink(String),
}

impl Kind {
    /// What `e` leaves in a tree (nothing for deletions and specials).
    fn of(e: &E) -> Option<Kind> {
        match &e.kind {
            K::File(c) => Some(Kind::File(blake3::hash(c).to_hex().to_string(), e.mode)),
            K::Dir => Some(Kind::Dir),
            K::Symlink(t) => Some(Kind::Symlink(t.clone())),
            _ => None,
        }
    }
}

/// A tree: relative path to kind.
pub type Tree = BTreeMap<String, Kind>;

impl Spec {
    /// The tree a full bundle installs (or a patch's entries, deletions left out).
    pub fn tree(&self) -> Tree {
        let mut t = Tree::new();
        for e in self.ordered() {
            if let Some(k) = Kind::of(&e) {
                t.insert(e.path, k);
            }
        }
        t
    }

    /// This bundle's effect on `base` (a patch), or its tree (a full bundle).
    pub fn applied_to(&self, base: &Tree) -> Tree {
        if self.full {
            return self.tree();
        }
        let mut t = base.clone();
        for e in self.ordered() {
            match Kind::of(&e) {
                Some(k) => {
                    t.insert(e.path, k);
                }
                None => {
                    let prefix = format!("{}/", e.path);
                    t.retain(|q, _| q != &e.path && !q.starts_with(&prefix));
                }
            }
        }
        t
    }
}

/// Reads the tree below `dir` (not following symlinks).
pub fn scan(dir: &Path) -> Tree {
    let mut t = Tree::new();
    walk(dir, "", &mut |rel, path, md| {
        let k = if md.file_type().is_symlink() {
            Kind::Symlink(fs::read_link(path).unwrap().to_string_lossy().into_owned())
        } else if md.is_dir() {
            Kind::Dir
        } else {
            let bytes = fs::read(path).unwrap();
            Kind::File(
                blake3::hash(&bytes).to_hex().to_string(),
                md.permissions().mode() & 0o7777,
            )
        };
        t.insert(rel.to_string(), k);
    });
    t
}

/// Calls `f` on every path below `dir`, sorted by name, parents before children.
fn walk(dir: &Path, prefix: &str, f: &mut dyn FnMut(&str, &Path, &fs::Metadata)) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names {
        let rel = if prefix.is_empty() {
            n.to_string_lossy().into_owned()
        } else {
            format!("{prefix}/{}", n.to_string_lossy())
        };
        let path = dir.join(&n);
        let md = fs::symlink_metadata(&path).unwrap();
        f(&rel, &path, &md);
        if md.is_dir() {
            walk(&path, &rel, f);
        }
    }
}

/// A digest of everything observable about the tree below `dir`: names, types, content,
/// link targets, permission bits, owners and modification times. Equal fingerprints mean
/// the tree is byte-identical.
pub fn fingerprint(dir: &Path) -> String {
    let mut h = blake3::Hasher::new();
    walk(dir, "", &mut |rel, path, md| {
        let mut line = format!(
            "{rel}\0{:o}\0{}:{}\0{}.{}\0",
            md.mode(),
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec()
        );
        if md.file_type().is_symlink() {
            line.push_str(&fs::read_link(path).unwrap().to_string_lossy());
        } else if md.is_file() {
            line.push_str(&blake3::hash(&fs::read(path).unwrap()).to_hex());
        }
        h.update(line.as_bytes());
        h.update(b"\n");
    });
    h.finalize().to_hex().to_string()
}

/// Describes how two trees differ (empty when equal).
pub fn diff(want: &Tree, got: &Tree) -> String {
    let mut s = String::new();
    for (p, k) in want {
        match got.get(p) {
            None => writeln!(s, "  missing {p} ({k:?})").unwrap(),
            Some(g) if g != k => writeln!(s, "  differs {p}: want {k:?}, got {g:?}").unwrap(),
            _ => {}
        }
    }
    for (p, k) in got {
        if !want.contains_key(p) {
            writeln!(s, "  extra {p} ({k:?})").unwrap();
        }
    }
    s
}
