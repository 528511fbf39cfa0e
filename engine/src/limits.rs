//! The one `Limits` struct that bounds everything the engine accepts from a bundle.

/// Capacity of the engine's path buffers. No limit may exceed it.
pub const PATH_CAPACITY: usize = 4096;

/// Longest path component, in bytes: Linux's `NAME_MAX`, which every filesystem a
/// device could extract to enforces. A fixed rule rather than a [`Limits`] field, so
/// that no configuration lets through a name that no device can create.
pub const MAX_NAME_LEN: usize = 255;

/// Bounds enforced on every bundle, in the decoder and in the entry policy.
///
/// A bundle that exceeds any of them is refused with [`crate::Error::Limit`]
/// naming the limit. Defaults are generous for an application tree and small
/// enough that a hostile bundle cannot exhaust a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest signed manifest, in bytes.
    pub max_manifest_len: u32,
    /// Most entries (files, directories, links, deletions) in one bundle.
    pub max_entries: u32,
    /// Longest entry path or symlink target, in bytes (at most [`PATH_CAPACITY`]).
    pub max_path_len: u32,
    /// Deepest entry path, in components.
    pub max_path_depth: u32,
    /// Largest single file, in bytes.
    pub max_file_size: u64,
    /// Largest sum of file sizes (the uncompressed tree), in bytes.
    pub max_total_size: u64,
    /// Largest payload on the wire (compressed chunks and their headers), in bytes.
    pub max_payload_len: u64,
    /// Largest uncompressed chunk, in bytes; also the largest zstd window accepted.
    pub max_chunk_size: u32,
}

impl Limits {
    /// The defaults used by the agent and the CLI unless configured otherwise.
    pub const DEFAULT: Limits = Limits {
        max_manifest_len: 64 * 1024,
        max_entries: 1_000_000,
        max_path_len: PATH_CAPACITY as u32,
        max_path_depth: 64,
        max_file_size: 16 * 1024 * 1024 * 1024,
        max_total_size: 64 * 1024 * 1024 * 1024,
        max_payload_len: 64 * 1024 * 1024 * 1024,
        max_chunk_size: 4 * 1024 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
