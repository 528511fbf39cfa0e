//! The hardlink rule a bounded decoder cannot check: a link's target is a regular file that the bundle made earlier (or, in a patch, one it left alone).
//!
//! [`crate::bundle::policy`] checks each entry in constant memory, which is enough for
//! everything but hardlinks: whether `b -> a` is sound depends on what `a` was, any
//! number of entries back. On a device the filesystem answers that (the agent links
//! only to an existing regular file of the slot, resolved without following a
//! symlink), so the decoder does not carry this index. The host tools do
//! (`molt bundle verify`, `inspect` and the encoder), so that a full bundle that
//! verifies also installs on an empty device.
//!
//! The index remembers every entry's path and class, but only when the manifest
//! declares hardlinks: a bundle without them costs nothing.

use alloc::collections::BTreeMap;
use alloc::string::String;

use crate::bundle::format::{EntryHeader, EntryKind, Specials};
use crate::bundle::policy::parent;
use crate::error::Rule;

/// What an earlier entry left at its path, as far as a hardlink is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// A regular file (a `File`, or a `Hardlink` that passed, which names one).
    File,
    /// A directory.
    Dir,
    /// Anything a hardlink may neither target nor pass through: a symlink, a
    /// deletion, a device node, a FIFO, a socket.
    Other,
}

/// The hardlink checker's memory across the entries of one bundle.
#[derive(Debug)]
pub struct Hardlinks {
    full: bool,
    active: bool,
    seen: BTreeMap<String, Class>,
}

impl Hardlinks {
    /// A checker for one bundle of the given kind and declared specials.
    pub fn new(full: bool, specials: Specials) -> Self {
        Hardlinks {
            full,
            active: specials.hardlinks,
            seen: BTreeMap::new(),
        }
    }

    /// Checks the next entry, in stream order, after [`crate::bundle::policy::Policy`]
    /// accepted it, and remembers it.
    ///
    /// A hardlink's target must be a regular file: in a full bundle, an earlier `File`
    /// or `Hardlink` entry (the slot starts empty); in a patch, either such an entry or
    /// a path the bundle does not touch, as long as nothing the bundle put on the way
    /// is a symlink, file or deletion (the device would refuse to resolve through it).
    pub fn check(&mut self, e: &EntryHeader<'_>) -> Result<(), Rule> {
        if !self.active {
            return Ok(());
        }
        let class = match e.kind {
            EntryKind::File { .. } => Class::File,
            EntryKind::Dir => Class::Dir,
            EntryKind::Hardlink { target } => {
                self.target(target)?;
                Class::File
            }
            EntryKind::Symlink { .. }
            | EntryKind::Delete
            | EntryKind::CharDevice { .. }
            | EntryKind::BlockDevice { .. }
            | EntryKind::Fifo
            | EntryKind::Socket => Class::Other,
        };
        // `.molt/` entries go to staging, never into the slot: nothing can link to them.
        if !e.is_internal() {
            self.seen.insert(String::from(e.path), class);
        }
        Ok(())
    }

    fn target(&self, target: &str) -> Result<(), Rule> {
        match self.seen.get(target) {
            Some(Class::File) => return Ok(()),
            Some(_) => return Err(Rule::HardlinkTargetNotFile),
            None if self.full => return Err(Rule::HardlinkTargetMissing),
            None => {}
        }
        let mut p = parent(target);
        while !p.is_empty() {
            if matches!(self.seen.get(p), Some(Class::File | Class::Other)) {
                return Err(Rule::HardlinkTargetBeneathNonDirectory);
            }
            p = parent(p);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::format::plain_entry as entry;

    fn file(path: &str) -> EntryHeader<'_> {
        entry(
            path,
            EntryKind::File {
                size: 0,
                digest: [0; 32],
            },
        )
    }

    fn link<'a>(path: &'a str, target: &'a str) -> EntryHeader<'a> {
        entry(path, EntryKind::Hardlink { target })
    }

    const LINKS: Specials = Specials {
        hardlinks: true,
        devices: false,
        fifos: false,
        sockets: false,
        setid: false,
    };

    fn run(full: bool, entries: &[EntryHeader<'_>]) -> Result<(), Rule> {
        let mut h = Hardlinks::new(full, LINKS);
        entries.iter().try_for_each(|e| h.check(e))
    }

    #[test]
    fn full_bundles_link_only_to_earlier_regular_files() {
        let d = entry("d", EntryKind::Dir);
        assert_eq!(run(true, &[d, file("d/a"), link("d/b", "d/a")]), Ok(()));
        // A link to a link is a link to its file.
        assert_eq!(
            run(
                true,
                &[d, file("d/a"), link("d/b", "d/a"), link("d/c", "d/b")]
            ),
            Ok(())
        );
        assert_eq!(
            run(true, &[d, link("d/b", "d/a")]),
            Err(Rule::HardlinkTargetMissing)
        );
        assert_eq!(
            run(true, &[d, entry("d/e", EntryKind::Dir), link("d/f", "d/e")]),
            Err(Rule::HardlinkTargetNotFile)
        );
        assert_eq!(
            run(
                true,
                &[
                    d,
                    entry("d/a", EntryKind::Symlink { target: "x" }),
                    link("d/b", "d/a")
                ]
            ),
            Err(Rule::HardlinkTargetNotFile)
        );
        assert_eq!(
            run(
                true,
                &[d, entry("d/a", EntryKind::Fifo), link("d/b", "d/a")]
            ),
            Err(Rule::HardlinkTargetNotFile)
        );
        // `.molt/` files are extracted to staging, not the slot.
        let m = entry(".molt", EntryKind::Dir);
        assert_eq!(
            run(true, &[m, file(".molt/p"), link("x", ".molt/p")]),
            Err(Rule::HardlinkTargetMissing)
        );
    }

    #[test]
    fn patches_may_link_to_the_base_but_not_through_what_they_replace() {
        assert_eq!(run(false, &[link("b", "base/file")]), Ok(()));
        assert_eq!(
            run(false, &[entry("a", EntryKind::Delete), link("b", "a")]),
            Err(Rule::HardlinkTargetNotFile)
        );
        assert_eq!(
            run(
                false,
                &[
                    entry("a", EntryKind::Symlink { target: "/" }),
                    link("b", "a/etc/passwd")
                ]
            ),
            Err(Rule::HardlinkTargetBeneathNonDirectory)
        );
        assert_eq!(
            run(false, &[entry("a", EntryKind::Delete), link("b", "a/x/y")]),
            Err(Rule::HardlinkTargetBeneathNonDirectory)
        );
        assert_eq!(
            run(false, &[entry("a", EntryKind::Dir), link("b", "a/x/y")]),
            Ok(())
        );
    }

    #[test]
    fn nothing_is_remembered_without_declared_hardlinks() {
        let mut h = Hardlinks::new(true, Specials::default());
        h.check(&file("a")).unwrap();
        assert!(h.seen.is_empty());
    }
}
