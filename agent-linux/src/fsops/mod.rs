//! File-system operations of the agent: extraction beneath a directory handle, the snapshot clone, durability and the `current` swap.
//!
//! * [`SlotDir`] (beneath.rs): a directory handle; every path resolves beneath it with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
//!   RESOLVE_NO_XDEV)`, so no entry lands outside the slot or is written through a
//!   symlink, whatever the engine's policy let through. No `openat2`, no extraction.
//! * [`Extractor`] (extract.rs): applies the decoder's `EntryStart` / `Data` /
//!   `EntryEnd` events to a slot (and `.molt/` entries to a staging directory), each
//!   entry renamed into place only when complete; no per-file fsync.
//! * [`clone_tree`] (snapshot.rs): the inactive slot as a copy of the active one, by
//!   reflink where possible, never writing to the active slot.
//! * [`sync_tree`], [`swap_current`], [`read_current`] (durable.rs): one `syncfs`, then
//!   an atomic and durable swap of the `current` symlink; every step goes through the
//!   [`FsOps`] trait so crash sweeps can stop after any single one ([`CrashAfter`],
//!   [`Recorder`]).
//!
//! Errors are one type, [`FsError`], naming the operation, path and slot; its
//! [`ErrorKind`] tells "no space" ([`FsError::is_no_space`]) and "escape attempt" apart
//! from other I/O failures.
//!
//! Linux only, synchronous: run it on a blocking thread from async code.

mod beneath;
mod durable;
mod error;
mod extract;
mod snapshot;

pub use beneath::SlotDir;
pub use durable::{
    read_current, swap_current, swap_current_with, sync_tree, sync_tree_with, CrashAfter, FsOps,
    RealFs, Recorder, Step, CURRENT, CURRENT_NEW,
};
pub use error::{ErrorKind, FsError};
pub use extract::{ExtractState, ExtractStats, Extractor, TMP_PREFIX};
pub use snapshot::{clone_tree, content_bytes, CloneReport, CopyMethod};

/// Writes `counts` for people: the non-zero ones, as `3 files, 1 directory`, or
/// `nothing` when all are zero. Summaries of extracts and clones use it, so device
/// logs read as sentences, not as Rust's `Debug` output.
pub(crate) fn write_counts(
    f: &mut std::fmt::Formatter<'_>,
    counts: &[(u64, &str, &str)],
) -> std::fmt::Result {
    let mut first = true;
    for &(n, one, many) in counts.iter().filter(|c| c.0 > 0) {
        if !first {
            f.write_str(", ")?;
        }
        first = false;
        write!(f, "{n} {}", if n == 1 { one } else { many })?;
    }
    if first {
        f.write_str("nothing")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{CloneReport, CopyMethod, ExtractStats};

    #[test]
    fn summaries_read_as_sentences() {
        let s = ExtractStats {
            files: 1,
            bytes: 42,
            dirs: 2,
            ..ExtractStats::default()
        };
        assert_eq!(
            s.to_string(),
            "1 file, 2 directories; 42 bytes of file content"
        );
        assert_eq!(
            ExtractStats::default().to_string(),
            "nothing; 0 bytes of file content"
        );
        let c = CloneReport {
            method: Some(CopyMethod::CopyFileRange),
            files: 3,
            reflinked: 0,
            range_copied: 3,
            read_written: 0,
            bytes: 9,
            dirs: 1,
            symlinks: 1,
            specials: 0,
            hardlinks_split: 0,
        };
        assert_eq!(
            c.to_string(),
            "3 files, 1 directory, 1 symlink; 9 bytes, by copy_file_range"
        );
    }
}
