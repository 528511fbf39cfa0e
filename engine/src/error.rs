//! The one error type of the bundle boundary: every way a bundle can be refused, with where it happened.

use core::fmt;

/// Which [`crate::Limits`] field a bundle exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LimitKind {
    /// `max_manifest_len`.
    ManifestLen,
    /// `max_entries`.
    Entries,
    /// `max_path_len`.
    PathLen,
    /// `max_path_depth`.
    PathDepth,
    /// `max_file_size`.
    FileSize,
    /// `max_total_size`.
    TotalSize,
    /// `max_payload_len`.
    PayloadLen,
    /// `max_chunk_size` (also bounds the zstd window).
    ChunkSize,
    /// A manifest field longer than the format allows (see docs/bundle-format.md).
    FieldLen,
}

impl LimitKind {
    /// The name of the limit as it appears in the agent's configuration.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::ManifestLen => "max_manifest_len",
            LimitKind::Entries => "max_entries",
            LimitKind::PathLen => "max_path_len",
            LimitKind::PathDepth => "max_path_depth",
            LimitKind::FileSize => "max_file_size",
            LimitKind::TotalSize => "max_total_size",
            LimitKind::PayloadLen => "max_payload_len",
            LimitKind::ChunkSize => "max_chunk_size",
            LimitKind::FieldLen => "manifest field length",
        }
    }
}

/// An entry-policy rule that an entry broke (see `bundle::policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// The path is empty.
    EmptyPath,
    /// The path starts with `/`.
    AbsolutePath,
    /// The path has an empty component (`a//b` or a trailing `/`).
    EmptyComponent,
    /// The path has a `.` or `..` component.
    DotComponent,
    /// The path contains a NUL byte.
    NulByte,
    /// The path sorts before or equal to the previous entry's (entries are strictly sorted, so this is also how duplicates are caught).
    NotSorted,
    /// The entry sits beneath an earlier entry of the bundle that is not a directory (a symlink, a file, a deletion).
    BeneathNonDirectory,
    /// In a full bundle, the entry's parent directory is not an entry of the bundle.
    MissingParent,
    /// A path component longer than [`crate::limits::MAX_NAME_LEN`] bytes (`NAME_MAX`): no
    /// Linux filesystem can create it.
    LongComponent,
    /// A symlink target that is empty or holds a NUL byte. Targets are not otherwise
    /// checked: a link means something only inside the snapshot (see docs/bundle-format.md).
    BadSymlinkTarget,
    /// A hardlink whose target is not a valid path sorting before the link, or lies under
    /// the reserved `.molt/` directory (which never reaches the snapshot).
    BadHardlink,
    /// In a full bundle, a hardlink whose target is not an earlier regular file of the bundle.
    HardlinkTargetMissing,
    /// A hardlink whose target is an entry of the bundle other than a regular file.
    HardlinkTargetNotFile,
    /// A hardlink whose target lies beneath a symlink, file or deletion of the bundle.
    HardlinkTargetBeneathNonDirectory,
    /// A hardlink that the manifest does not declare.
    UndeclaredHardlink,
    /// A device node that the manifest does not declare.
    UndeclaredDevice,
    /// A FIFO that the manifest does not declare.
    UndeclaredFifo,
    /// A socket that the manifest does not declare.
    UndeclaredSocket,
    /// Setuid or setgid bits that the manifest does not declare.
    UndeclaredSetid,
    /// Mode bits outside `0o7777`.
    BadMode,
    /// A deletion in a full bundle (a full bundle is exactly its tree).
    DeleteInFullBundle,
    /// Something other than a file or directory under the reserved `.molt/` directory.
    ReservedPath,
}

impl Rule {
    /// A short sentence naming the rule.
    pub fn describe(self) -> &'static str {
        match self {
            Rule::EmptyPath => "empty path",
            Rule::AbsolutePath => "absolute path",
            Rule::EmptyComponent => "path has an empty component",
            Rule::DotComponent => "path has a `.` or `..` component",
            Rule::NulByte => "path contains a NUL byte",
            Rule::NotSorted => "path is a duplicate or out of order",
            Rule::BeneathNonDirectory => {
                "path lies beneath a symlink, file or deletion of the bundle"
            }
            Rule::MissingParent => "parent directory is not in the full bundle",
            Rule::LongComponent => "a path component is longer than 255 bytes",
            Rule::BadSymlinkTarget => "symlink target is empty or contains a NUL byte",
            Rule::BadHardlink => {
                "hardlink target is not a valid path sorting before the link, or lies under `.molt/`"
            }
            Rule::HardlinkTargetMissing => {
                "hardlink target is not an earlier regular file of the full bundle"
            }
            Rule::HardlinkTargetNotFile => {
                "hardlink target is a directory, symlink, deletion or special file of the bundle, not a regular file"
            }
            Rule::HardlinkTargetBeneathNonDirectory => {
                "hardlink target lies beneath a symlink, file or deletion of the bundle"
            }
            Rule::UndeclaredHardlink => "hardlink not declared in the manifest",
            Rule::UndeclaredDevice => "device node not declared in the manifest",
            Rule::UndeclaredFifo => "FIFO not declared in the manifest",
            Rule::UndeclaredSocket => "socket not declared in the manifest",
            Rule::UndeclaredSetid => "setuid/setgid bit not declared in the manifest",
            Rule::BadMode => "mode has bits outside 0o7777",
            Rule::DeleteInFullBundle => "deletion in a full bundle",
            Rule::ReservedPath => "only files and directories may live under `.molt/`",
        }
    }
}

/// Why a bundle was refused. Offsets (`at`) count bytes from the start of the bundle file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The file does not start with the bundle magic: not a molt bundle.
    BadMagic,
    /// A bundle format major version this engine does not implement.
    UnsupportedVersion {
        /// Major version found in the header.
        major: u16,
        /// Minor version found in the header.
        minor: u16,
    },
    /// The input ended before the bundle did.
    Truncated {
        /// How many bytes had arrived.
        at: u64,
    },
    /// Bytes arrived after the signed end of the bundle.
    TrailingData {
        /// Offset of the first extra byte.
        at: u64,
    },
    /// A structure could not be decoded (bad encoding, invalid UTF-8, bad enum tag, inconsistent sizes).
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Where.
        at: u64,
    },
    /// The signature block is empty or has more signatures than allowed.
    BadSignatureCount {
        /// The count found.
        count: u8,
    },
    /// No signature was made by a pinned key.
    UnknownKey {
        /// The key id of the first signature.
        key_id: [u8; 8],
    },
    /// The bundle is signed by a key that the device has revoked.
    RevokedKey {
        /// The revoked key's id.
        key_id: [u8; 8],
    },
    /// A signature from a pinned key does not verify: the manifest was changed after signing.
    BadSignature {
        /// The key id of the signature that failed.
        key_id: [u8; 8],
    },
    /// A chunk's digest differs from the one the signed chain expects: the payload was changed after signing.
    ChunkDigest {
        /// Index of the chunk.
        chunk: u32,
        /// Offset where the chunk starts.
        at: u64,
    },
    /// A zstd frame is not acceptable (not a single plain frame, dictionaries, missing content size, window too large).
    BadFrame {
        /// Index of the chunk.
        chunk: u32,
        /// Why.
        why: &'static str,
    },
    /// The zstd decoder failed, or produced a size other than the signed one.
    Decompress {
        /// Index of the chunk.
        chunk: u32,
    },
    /// A bundle exceeds a configured limit.
    Limit {
        /// Which limit.
        limit: LimitKind,
        /// Where.
        at: u64,
    },
    /// An entry breaks the entry policy.
    Policy {
        /// Which rule.
        rule: Rule,
        /// Index of the entry (0-based); the decoder's `failed_path()` names it.
        entry: u32,
    },
    /// A file's content does not match the digest in its entry.
    EntryDigest {
        /// Index of the entry.
        entry: u32,
    },
    /// The entries do not match what the manifest committed to (count, digest of the table, total size).
    EntryTable {
        /// What differed.
        what: &'static str,
    },
    /// A manifest field is invalid.
    Field {
        /// The field, as named in docs/bundle-format.md.
        field: &'static str,
        /// Why.
        why: &'static str,
    },
    /// The bundle is for other hardware.
    Incompatible,
    /// The bundle's release is below the device's version floor and does not allow a downgrade.
    Downgrade {
        /// The bundle's release counter.
        release: u64,
        /// The device's floor.
        floor: u64,
    },
    /// The caller's buffers are too small for this bundle's manifest or chunk size.
    BufferTooSmall {
        /// Bytes needed.
        need: u32,
    },
    /// The decoder already failed or finished; it accepts no more input.
    Finished,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::BadMagic => f.write_str("not a molt bundle (bad magic)"),
            Error::UnsupportedVersion { major, minor } => {
                write!(f, "unsupported bundle format version {major}.{minor} (this molt reads 1.x)")
            }
            Error::Truncated { at } => write!(f, "bundle truncated after {at} bytes"),
            Error::TrailingData { at } => {
                write!(f, "data beyond the signed end of the bundle at byte {at}")
            }
            Error::Malformed { what, at } => write!(f, "malformed {what} at byte {at}"),
            Error::BadSignatureCount { count } => {
                write!(f, "bundle has {count} signatures (1 to 4 allowed)")
            }
            Error::UnknownKey { key_id } => {
                write!(f, "bundle is signed by unknown key ")?;
                hex(f, &key_id)
            }
            Error::RevokedKey { key_id } => {
                write!(f, "bundle is signed by revoked key ")?;
                hex(f, &key_id)
            }
            Error::BadSignature { key_id } => {
                write!(f, "signature by key ")?;
                hex(f, &key_id)?;
                write!(f, " does not verify: manifest altered after signing")
            }
            Error::ChunkDigest { chunk, at } => write!(
                f,
                "payload chunk {chunk} at byte {at} does not match its signed digest"
            ),
            Error::BadFrame { chunk, why } => write!(f, "payload chunk {chunk}: {why}"),
            Error::Decompress { chunk } => {
                write!(f, "payload chunk {chunk} does not decompress to its signed size")
            }
            Error::Limit { limit, at } => {
                write!(f, "limit {} exceeded at byte {at}", limit.name())
            }
            Error::Policy { rule, entry } => write!(f, "entry {entry}: {}", rule.describe()),
            Error::EntryDigest { entry } => {
                write!(f, "entry {entry}: content does not match its digest")
            }
            Error::EntryTable { what } => {
                write!(f, "entries do not match the signed manifest: {what}")
            }
            Error::Field { field, why } => write!(f, "manifest field `{field}`: {why}"),
            Error::Incompatible => f.write_str("bundle is for other hardware (compatible string differs)"),
            Error::Downgrade { release, floor } => write!(
                f,
                "bundle release {release} is below the device's floor {floor} and does not allow a downgrade"
            ),
            Error::BufferTooSmall { need } => {
                write!(f, "decoder buffers too small: {need} bytes needed")
            }
            Error::Finished => f.write_str("decoder already finished or failed"),
        }
    }
}

fn hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
