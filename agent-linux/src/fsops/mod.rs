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
pub use snapshot::{clone_tree, CloneReport, CopyMethod};
