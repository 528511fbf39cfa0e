//! The entry policy: which paths, links, kinds and modes a bundle may contain, checked in bounded memory.
//!
//! Entries arrive strictly sorted component by component (`a` < `a/b` < `a-b`),
//! so everything the policy needs to remember fits in two path buffers: the
//! previous entry (catches duplicates, disorder and entries written beneath a
//! symlink or file) and the innermost open directory (catches missing parents
//! in full bundles). The agent still extracts beneath a directory handle: this
//! policy is the first line, not the only one.

use core::cmp::Ordering;

use crate::bundle::format::{is_internal_path, EntryHeader, EntryKind, Specials};
use crate::error::{Error, LimitKind, Rule};
use crate::limits::{Limits, MAX_NAME_LEN, PATH_CAPACITY};

/// Why a path is not acceptable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPath {
    /// It breaks a rule.
    Rule(Rule),
    /// It exceeds a limit.
    Limit(LimitKind),
}

/// Checks that `path` is relative and normalized: no empty, `.` or `..`
/// components, no NUL, no component longer than [`MAX_NAME_LEN`], within the
/// length and depth limits.
pub fn check_path(path: &str, limits: &Limits) -> Result<(), BadPath> {
    if path.is_empty() {
        return Err(BadPath::Rule(Rule::EmptyPath));
    }
    if path.len() > limits.max_path_len as usize || path.len() > PATH_CAPACITY {
        return Err(BadPath::Limit(LimitKind::PathLen));
    }
    if path.contains('\0') {
        return Err(BadPath::Rule(Rule::NulByte));
    }
    if path.starts_with('/') {
        return Err(BadPath::Rule(Rule::AbsolutePath));
    }
    let mut depth = 0u32;
    for c in path.split('/') {
        match c {
            "" => return Err(BadPath::Rule(Rule::EmptyComponent)),
            "." | ".." => return Err(BadPath::Rule(Rule::DotComponent)),
            c if c.len() > MAX_NAME_LEN => return Err(BadPath::Rule(Rule::LongComponent)),
            _ => depth += 1,
        }
    }
    if depth > limits.max_path_depth {
        return Err(BadPath::Limit(LimitKind::PathDepth));
    }
    Ok(())
}

/// Orders paths component by component: as bytes, with `/` below every other byte.
pub fn compare_paths(a: &str, b: &str) -> Ordering {
    let key = |c: u8| if c == b'/' { 0u16 } else { u16::from(c) + 1 };
    a.bytes().map(key).cmp(b.bytes().map(key))
}

/// Whether `ancestor` is a proper ancestor directory of `path`.
fn is_ancestor(ancestor: &str, path: &str) -> bool {
    path.len() > ancestor.len()
        && path.starts_with(ancestor)
        && path.as_bytes().get(ancestor.len()) == Some(&b'/')
}

pub(crate) fn parent(path: &str) -> &str {
    path.rfind('/').and_then(|i| path.get(..i)).unwrap_or("")
}

/// A path copied into a fixed buffer.
struct PathBuf {
    buf: [u8; PATH_CAPACITY],
    len: usize,
}

impl PathBuf {
    const fn new() -> Self {
        PathBuf {
            buf: [0; PATH_CAPACITY],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        self.buf
            .get(..self.len)
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    fn set(&mut self, s: &str) {
        let n = s.len().min(PATH_CAPACITY);
        if let (Some(dst), Some(src)) = (self.buf.get_mut(..n), s.as_bytes().get(..n)) {
            dst.copy_from_slice(src);
            self.len = n;
        }
    }

    fn truncate_to_parent(&mut self) {
        let p = parent(self.as_str()).len();
        self.len = p;
    }
}

/// The policy checker's state across the entries of one bundle.
pub struct Policy {
    limits: Limits,
    specials: Specials,
    full: bool,
    index: u32,
    prev: PathBuf,
    prev_is_dir: bool,
    has_prev: bool,
    open_dir: PathBuf,
}

impl Policy {
    /// A checker for one bundle.
    pub fn new(limits: Limits, specials: Specials, full: bool) -> Self {
        Policy {
            limits,
            specials,
            full,
            index: 0,
            prev: PathBuf::new(),
            prev_is_dir: false,
            has_prev: false,
            open_dir: PathBuf::new(),
        }
    }

    /// What a resume checkpoint must carry: entry index, previous path and kind, open directory.
    pub(crate) fn save(&self) -> (u32, &str, bool, bool, &str) {
        (
            self.index,
            self.prev.as_str(),
            self.prev_is_dir,
            self.has_prev,
            self.open_dir.as_str(),
        )
    }

    /// Restores what [`Policy::save`] returned. The paths are checked like any entry's,
    /// so a damaged checkpoint cannot smuggle in a path the policy would refuse.
    pub(crate) fn restore(
        &mut self,
        (index, prev, prev_is_dir, has_prev, open_dir): (u32, &str, bool, bool, &str),
    ) -> Result<(), Error> {
        for p in [prev, open_dir] {
            if !p.is_empty() && check_path(p, &self.limits).is_err() {
                return Err(Error::Malformed {
                    what: "checkpoint (policy path)",
                    at: 0,
                });
            }
        }
        self.index = index;
        self.prev.set(prev);
        self.prev_is_dir = prev_is_dir;
        self.has_prev = has_prev;
        self.open_dir.set(open_dir);
        Ok(())
    }

    /// The path of the last entry checked (the offending one after an error).
    pub fn last_path(&self) -> &str {
        self.prev.as_str()
    }

    /// Checks the next entry, in stream order.
    pub fn check(&mut self, e: &EntryHeader<'_>) -> Result<(), Error> {
        let entry = self.index;
        let fail = |rule| Error::Policy { rule, entry };
        let limit = |limit| Error::Limit { limit, at: 0 };
        let result = self.check_inner(e);
        // Remember the path even when it fails, so the error can name it.
        self.prev.set(e.path);
        self.has_prev = true;
        self.prev_is_dir = matches!(e.kind, EntryKind::Dir);
        self.index = self.index.saturating_add(1);
        result.map_err(|b| match b {
            BadPath::Rule(r) => fail(r),
            BadPath::Limit(l) => limit(l),
        })
    }

    fn check_inner(&mut self, e: &EntryHeader<'_>) -> Result<(), BadPath> {
        let path = e.path;
        check_path(path, &self.limits)?;
        if self.has_prev {
            let prev = self.prev.as_str();
            if compare_paths(prev, path) != Ordering::Less {
                return Err(BadPath::Rule(Rule::NotSorted));
            }
            // Sorted order puts a path's descendants right after it, so an entry
            // beneath a bundle symlink, file or deletion always follows it directly.
            if !self.prev_is_dir && is_ancestor(prev, path) {
                return Err(BadPath::Rule(Rule::BeneathNonDirectory));
            }
        }
        if self.full {
            let want = parent(path);
            while !(self.open_dir.as_str() == want || is_ancestor(self.open_dir.as_str(), want))
                && self.open_dir.len > 0
            {
                self.open_dir.truncate_to_parent();
            }
            if self.open_dir.as_str() != want {
                return Err(BadPath::Rule(Rule::MissingParent));
            }
        }
        if e.mode & !0o7777 != 0 {
            return Err(BadPath::Rule(Rule::BadMode));
        }
        let setuid = e.mode & 0o4000 != 0;
        let setgid = e.mode & 0o2000 != 0;
        // A setgid directory only makes new files inherit its group: common and harmless.
        let setid = setuid || (setgid && !matches!(e.kind, EntryKind::Dir));
        if setid && !self.specials.setid {
            return Err(BadPath::Rule(Rule::UndeclaredSetid));
        }
        if e.is_internal() && !matches!(e.kind, EntryKind::File { .. } | EntryKind::Dir) {
            return Err(BadPath::Rule(Rule::ReservedPath));
        }
        match e.kind {
            EntryKind::File { size, .. } => {
                if size > self.limits.max_file_size {
                    return Err(BadPath::Limit(LimitKind::FileSize));
                }
            }
            EntryKind::Dir => {
                if self.full {
                    self.open_dir.set(path);
                }
            }
            EntryKind::Symlink { target } => {
                // Only what no filesystem can store. Where the target leads is not
                // checked, on purpose: a link is only ever followed inside the snapshot
                // (once it is `/`, or in the chroot, where `..` stops at the root), and
                // molt never follows a slot's link from the host. A lexical check could
                // not be complete anyway: `d/s -> ..` and `d/t -> s/d/s/../../canary`
                // each look harmless alone. See docs/bundle-format.md, "Links".
                if target.is_empty() || target.contains('\0') {
                    return Err(BadPath::Rule(Rule::BadSymlinkTarget));
                }
                if target.len() > self.limits.max_path_len as usize {
                    return Err(BadPath::Limit(LimitKind::PathLen));
                }
            }
            EntryKind::Hardlink { target } => {
                if !self.specials.hardlinks {
                    return Err(BadPath::Rule(Rule::UndeclaredHardlink));
                }
                // Whether the target is an earlier regular file needs a memory of the
                // bundle's files, which a bounded decoder has not: `links::Hardlinks`
                // checks that on the host, the agent's filesystem on the device.
                if check_path(target, &self.limits).is_err()
                    || compare_paths(target, path) != Ordering::Less
                    || is_internal_path(target)
                {
                    return Err(BadPath::Rule(Rule::BadHardlink));
                }
            }
            EntryKind::Delete => {
                if self.full {
                    return Err(BadPath::Rule(Rule::DeleteInFullBundle));
                }
            }
            EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } => {
                if !self.specials.devices {
                    return Err(BadPath::Rule(Rule::UndeclaredDevice));
                }
            }
            EntryKind::Fifo => {
                if !self.specials.fifos {
                    return Err(BadPath::Rule(Rule::UndeclaredFifo));
                }
            }
            EntryKind::Socket => {
                if !self.specials.sockets {
                    return Err(BadPath::Rule(Rule::UndeclaredSocket));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_order_puts_children_right_after_parent() {
        assert_eq!(compare_paths("a", "a/b"), Ordering::Less);
        assert_eq!(compare_paths("a/b", "a-b"), Ordering::Less);
        assert_eq!(compare_paths("a/z", "a0"), Ordering::Less);
        assert_eq!(compare_paths("a", "a"), Ordering::Equal);
    }

    #[test]
    fn a_component_may_be_255_bytes_not_256() {
        let l = Limits::DEFAULT;
        let ok = "n".repeat(255);
        let long = "n".repeat(256);
        assert_eq!(check_path(&ok, &l), Ok(()));
        assert_eq!(check_path(&format!("a/{ok}/b"), &l), Ok(()));
        assert_eq!(
            check_path(&format!("a/{long}/b"), &l),
            Err(BadPath::Rule(Rule::LongComponent))
        );
        assert_eq!(
            check_path(&long, &l),
            Err(BadPath::Rule(Rule::LongComponent))
        );
    }
}
