//! Bundle format v1: the byte layout constants, the signed manifest and the entry header types.
//!
//! docs/bundle-format.md is the normative description; this file is its only
//! implementation of the types (the decoder and encoder both use them).

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, LimitKind};
use crate::Limits;

/// The first eight bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"MOLTBNDL";
/// The format major version this engine reads and writes. A different major is refused.
pub const FORMAT_MAJOR: u16 = 1;
/// The format minor version this engine writes. Minor versions only append to the manifest;
/// a reader ignores manifest bytes it does not know (see docs/bundle-format.md).
pub const FORMAT_MINOR: u16 = 0;
/// Length of the fixed header: magic, major, minor, manifest length.
pub const HEADER_LEN: usize = 16;
/// Length of the signature block's fixed part: count and three reserved bytes.
pub const SIG_BLOCK_PREFIX: usize = 4;
/// Length of one signature record: key id and ed25519 signature.
pub const SIG_RECORD_LEN: usize = 8 + 64;
/// Most signatures a bundle may carry (to sign with an old and a new key during rotation).
pub const MAX_SIGNATURES: usize = 4;
/// Length of a chunk header: compressed length, raw length, digest of the next chunk.
pub const CHUNK_HEADER_LEN: usize = 40;
/// Smallest chunk size a manifest may declare; an entry header always fits in one chunk.
pub const MIN_CHUNK_SIZE: u32 = 16 * 1024;
/// Default uncompressed chunk size written by the encoder.
pub const DEFAULT_CHUNK_SIZE: u32 = 1024 * 1024;
/// Domain separation for the signed message.
pub const SIGNATURE_CONTEXT: &[u8] = b"molt bundle v1 manifest\0";
/// Directory of bundle-internal artifacts (shipped package files): extracted to staging, not into the snapshot.
pub const RESERVED_DIR: &str = ".molt";
/// Most packages a recipe may list.
pub const MAX_PACKAGES: usize = 64;

/// Largest compressed size accepted for a chunk of `chunk_size` raw bytes
/// (zstd's worst-case expansion plus frame overhead, rounded up).
pub const fn max_wire_chunk(chunk_size: u32) -> u32 {
    chunk_size + chunk_size / 128 + 512
}

/// A BLAKE3 digest.
pub type Digest = [u8; 32];
/// A key id: the first 8 bytes of the BLAKE3 digest of the ed25519 public key.
pub type KeyId = [u8; 8];

/// The key id of an ed25519 public key.
pub fn key_id(public_key: &[u8; 32]) -> KeyId {
    let d = blake3::hash(public_key);
    let mut id = [0u8; 8];
    id.copy_from_slice(d.as_bytes().get(..8).unwrap_or(&[0; 8]));
    id
}

/// Whether the bundle replaces the whole tree or patches the active one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BundleKind<'a> {
    /// The new snapshot is exactly the bundle's tree.
    Full,
    /// The new snapshot is the active one plus the bundle's entries and deletions.
    Patch {
        /// The version the active snapshot must have; empty means any.
        base_version: &'a str,
    },
}

/// A bash command or script of the recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command<'a> {
    /// The script, run by `bash -c` with stdin closed.
    pub script: &'a str,
    /// Run inside a chroot of the new snapshot instead of on the host.
    pub chroot: bool,
    /// Seconds before the whole process group is killed.
    pub timeout_secs: u32,
}

/// The health check run after the after command: it must pass within its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck<'a> {
    /// The check; exit status 0 means healthy.
    #[serde(borrow)]
    pub command: Command<'a>,
    /// How many times the check is tried before the update fails.
    pub attempts: u16,
    /// Seconds between attempts.
    pub interval_secs: u32,
}

/// A package manager of the recipe's packages stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PackageManager {
    /// `apt-get install` / `dpkg -i`.
    Apt,
    /// `pip install`.
    Pip,
    /// `pip3 install`.
    Pip3,
    /// `npm install`.
    Npm,
}

impl PackageManager {
    /// The name used in recipes.
    pub fn name(self) -> &'static str {
        match self {
            PackageManager::Apt => "apt",
            PackageManager::Pip => "pip",
            PackageManager::Pip3 => "pip3",
            PackageManager::Npm => "npm",
        }
    }
}

/// One package to install inside the new snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package<'a> {
    /// Which manager installs it.
    pub manager: PackageManager,
    /// The package name (no `/`, no `..`, no leading `-`, no whitespace).
    pub name: &'a str,
    /// An optional exact version.
    pub version: Option<&'a str>,
    /// An optional package file shipped in the bundle under `.molt/` (a .deb, a wheel, an npm tarball).
    pub file: Option<&'a str>,
}

/// What to do when any stage fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback<'a> {
    /// Return to the previous snapshot's files (default on).
    pub revert: bool,
    /// A command to run after reverting.
    #[serde(borrow)]
    pub command: Option<Command<'a>>,
    /// Reboot the device last.
    pub reboot: bool,
}

/// The recipe's default (docs/recipe.md): revert to the previous snapshot's files,
/// no command, no reboot.
impl Default for Rollback<'_> {
    fn default() -> Self {
        Rollback {
            revert: true,
            command: None,
            reboot: false,
        }
    }
}

/// The recipe's stages that the device executes (files are the payload's entries).
/// The default runs nothing, installs nothing and rolls back by reverting.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe<'a> {
    /// Run before anything changes.
    #[serde(borrow)]
    pub before: Option<Command<'a>>,
    /// Packages installed inside the new snapshot.
    #[serde(borrow)]
    pub packages: heapless::Vec<Package<'a>, MAX_PACKAGES>,
    /// Where npm installs (inside the snapshot); `None` means the app directory.
    pub npm_prefix: Option<&'a str>,
    /// Run once the new snapshot is active.
    #[serde(borrow)]
    pub after: Option<Command<'a>>,
    /// Must pass after the after command.
    #[serde(borrow)]
    pub health_check: Option<HealthCheck<'a>>,
    /// What to do on failure.
    #[serde(borrow)]
    pub rollback: Rollback<'a>,
}

/// Special entries the manifest declares; without a declaration they are refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Specials {
    /// Setuid and setgid bits.
    pub setid: bool,
    /// Hardlinks.
    pub hardlinks: bool,
    /// Character and block devices.
    pub devices: bool,
    /// FIFOs.
    pub fifos: bool,
    /// Sockets.
    pub sockets: bool,
}

/// The payload as the signature binds it. The default (all zero) is what a
/// manifest holds before the encoder fills it in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Number of chunks.
    pub chunk_count: u32,
    /// Largest uncompressed size of a chunk.
    pub chunk_size: u32,
    /// Exact length of the payload on the wire (chunk headers and frames).
    pub wire_len: u64,
    /// Exact length of the uncompressed entry stream.
    pub raw_len: u64,
    /// BLAKE3 digest of chunk 0 (header and frame); each chunk header carries the next one's.
    pub first_chunk: Digest,
}

/// The entry table as the signature binds it. The default (empty, no specials)
/// is what a manifest holds before the encoder fills it in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryTable {
    /// Number of entries.
    pub count: u32,
    /// The hash chain over every encoded entry header (path, type, mode, owner, size, content digest).
    pub digest: Digest,
    /// Sum of file sizes.
    pub file_bytes: u64,
    /// Declared special entries.
    pub specials: Specials,
}

/// The signed manifest of a bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest<'a> {
    /// The update version, for example `1.4.2`.
    pub version: &'a str,
    /// The hardware or product this bundle is for; must equal the device's.
    pub compatible: &'a str,
    /// Monotonic release counter for anti-rollback.
    pub release: u64,
    /// Allows installing below the device's version floor.
    pub allow_downgrade: bool,
    /// Full tree or patch.
    #[serde(borrow)]
    pub kind: BundleKind<'a>,
    /// Creation time, seconds since the Unix epoch (informational).
    pub created: u64,
    /// Free text for operators.
    pub comment: &'a str,
    /// The stages the device runs.
    #[serde(borrow)]
    pub recipe: Recipe<'a>,
    /// The payload binding.
    pub payload: Payload,
    /// The entry table binding.
    pub entries: EntryTable,
}

/// Longest update version.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest compatible string.
pub const MAX_COMPATIBLE_LEN: usize = 128;
/// Longest comment.
pub const MAX_COMMENT_LEN: usize = 4096;
/// Longest script.
pub const MAX_SCRIPT_LEN: usize = 32 * 1024;
/// Longest package name or version.
pub const MAX_PACKAGE_FIELD_LEN: usize = 214;
/// Longest command timeout: one day.
pub const MAX_TIMEOUT_SECS: u32 = 24 * 3600;

impl<'a> Manifest<'a> {
    /// Decodes a manifest from its signed bytes. Bytes after the known fields are a
    /// later minor version's additions and are ignored.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        postcard::take_from_bytes::<Manifest<'a>>(bytes)
            .map(|(m, _rest)| m)
            .map_err(|_| Error::Malformed {
                what: "manifest",
                at: 0,
            })
    }

    /// Checks every field against the format's rules and `limits`; see docs/bundle-format.md.
    pub fn validate(&self, limits: &Limits) -> Result<(), Error> {
        check_version(self.version, "version")?;
        field_len(self.compatible, MAX_COMPATIBLE_LEN, "compatible")?;
        if self.compatible.is_empty() || self.compatible.chars().any(|c| c.is_control()) {
            return Err(Error::Field {
                field: "compatible",
                why: "must be non-empty printable text",
            });
        }
        if let BundleKind::Patch { base_version } = self.kind {
            if !base_version.is_empty() {
                check_version(base_version, "kind.base_version")?;
            }
        }
        field_len(self.comment, MAX_COMMENT_LEN, "comment")?;
        no_nul(self.comment, "comment")?;
        let r = &self.recipe;
        check_command(r.before.as_ref(), "recipe.before")?;
        check_command(r.after.as_ref(), "recipe.after")?;
        if let Some(h) = &r.health_check {
            check_command(Some(&h.command), "recipe.health_check")?;
            if h.attempts == 0 {
                return Err(Error::Field {
                    field: "recipe.health_check.attempts",
                    why: "must be at least 1",
                });
            }
            if h.interval_secs > MAX_TIMEOUT_SECS {
                return Err(Error::Field {
                    field: "recipe.health_check.interval_secs",
                    why: "longer than a day",
                });
            }
        }
        check_command(r.rollback.command.as_ref(), "recipe.rollback.command")?;
        if let Some(prefix) = r.npm_prefix {
            if crate::bundle::policy::check_path(prefix, limits).is_err() {
                return Err(Error::Field {
                    field: "recipe.npm_prefix",
                    why: "must be a relative, normalized path inside the snapshot",
                });
            }
        }
        for p in &r.packages {
            // npm scoped packages (`@scope/name`) are the one place a `/` is meaningful.
            let name = match (p.manager, p.name.strip_prefix('@')) {
                (PackageManager::Npm, Some(scoped)) => match scoped.split_once('/') {
                    Some((scope, name)) if !scope.is_empty() => {
                        check_package_word(scope, "recipe.packages.name")?;
                        name
                    }
                    _ => p.name,
                },
                _ => p.name,
            };
            check_package_word(name, "recipe.packages.name")?;
            if let Some(v) = p.version {
                check_package_word(v, "recipe.packages.version")?;
            }
            if let Some(file) = p.file {
                let under_reserved = file
                    .strip_prefix(RESERVED_DIR)
                    .is_some_and(|rest| rest.starts_with('/'));
                if !under_reserved || crate::bundle::policy::check_path(file, limits).is_err() {
                    return Err(Error::Field {
                        field: "recipe.packages.file",
                        why: "must be a normalized path under `.molt/`",
                    });
                }
            }
        }
        let p = &self.payload;
        within(
            (MIN_CHUNK_SIZE..=limits.max_chunk_size).contains(&p.chunk_size),
            LimitKind::ChunkSize,
        )?;
        within(p.wire_len <= limits.max_payload_len, LimitKind::PayloadLen)?;
        let max_wire = u64::from(p.chunk_count)
            .saturating_mul(u64::from(max_wire_chunk(p.chunk_size)) + CHUNK_HEADER_LEN as u64);
        let max_raw = u64::from(p.chunk_count).saturating_mul(u64::from(p.chunk_size));
        if p.wire_len > max_wire
            || p.raw_len > max_raw
            || p.wire_len < u64::from(p.chunk_count) * CHUNK_HEADER_LEN as u64
        {
            return Err(Error::Field {
                field: "payload",
                why: "lengths inconsistent with the chunk count",
            });
        }
        let e = &self.entries;
        within(e.count <= limits.max_entries, LimitKind::Entries)?;
        within(e.file_bytes <= limits.max_total_size, LimitKind::TotalSize)?;
        if e.file_bytes > p.raw_len || (e.count > 0 && p.chunk_count == 0) {
            return Err(Error::Field {
                field: "entries",
                why: "sizes inconsistent with the payload",
            });
        }
        Ok(())
    }

    /// Refuses a bundle for other hardware.
    pub fn check_compatible(&self, device: &str) -> Result<(), Error> {
        if self.compatible == device {
            Ok(())
        } else {
            Err(Error::Incompatible)
        }
    }

    /// Refuses a release below the device's version floor unless the manifest allows a downgrade.
    pub fn check_floor(&self, floor: u64) -> Result<(), Error> {
        if self.release >= floor || self.allow_downgrade {
            Ok(())
        } else {
            Err(Error::Downgrade {
                release: self.release,
                floor,
            })
        }
    }

    /// Refuses a patch made for another version than `active`, the version of
    /// the active snapshot it would start from. A full bundle, and a patch whose
    /// base version is empty (made for any version), pass.
    ///
    /// A patch carries only what changed from its base: applied to another
    /// snapshot it would produce a tree nobody built or tested. The refusal is
    /// its own type rather than an [`Error`] variant because it names both
    /// versions, borrowed from the manifest and the caller, while [`Error`]
    /// stays small and `'static` for the decoder.
    pub fn check_base<'s>(&'s self, active: &'s str) -> Result<(), WrongBase<'s>> {
        match self.kind {
            BundleKind::Patch { base_version }
                if !base_version.is_empty() && base_version != active =>
            {
                Err(WrongBase {
                    base: base_version,
                    active,
                })
            }
            _ => Ok(()),
        }
    }
}

/// A patch made for another version than the active snapshot's: [`Manifest::check_base`]'s refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrongBase<'a> {
    /// The version the patch was made for (its `kind.base_version`).
    pub base: &'a str,
    /// The version of the active snapshot.
    pub active: &'a str,
}

impl fmt::Display for WrongBase<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "patch for version {}, but the active snapshot is {}",
            self.base, self.active
        )
    }
}

/// `Ok` when the manifest keeps to `limit` (`ok`), else [`Error::Limit`] for it,
/// at byte 0 because it is the manifest as a whole that asks for too much.
fn within(ok: bool, limit: LimitKind) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::Limit { limit, at: 0 })
    }
}

/// `Ok` when `field` is `ok`, else [`Error::Field`] naming it and `why` it is refused.
fn field_ok(ok: bool, field: &'static str, why: &'static str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::Field { field, why })
    }
}

fn field_len(s: &str, max: usize, field: &'static str) -> Result<(), Error> {
    field_ok(s.len() <= max, field, "too long")
}

fn no_nul(s: &str, field: &'static str) -> Result<(), Error> {
    field_ok(!s.contains('\0'), field, "contains a NUL byte")
}

/// Whether `s` contains `..`: a byte scan, because `str::contains` with a string
/// pattern links core's two-way searcher (about 0.5 KiB of flash on thumbv7em).
fn has_dot_dot(s: &str) -> bool {
    s.as_bytes().windows(2).any(|w| w == b"..")
}

/// Versions are short words of `[A-Za-z0-9._+~-]`, so they are safe in file names and log lines.
fn check_version(v: &str, field: &'static str) -> Result<(), Error> {
    field_len(v, MAX_VERSION_LEN, field)?;
    let ok = !v.is_empty()
        && !v.starts_with(['.', '-'])
        && !has_dot_dot(v)
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'~' | b'-'));
    field_ok(
        ok,
        field,
        "must be 1-64 characters of A-Z a-z 0-9 . _ + ~ -, not starting with . or -",
    )
}

fn check_command(c: Option<&Command<'_>>, field: &'static str) -> Result<(), Error> {
    let Some(c) = c else { return Ok(()) };
    field_len(c.script, MAX_SCRIPT_LEN, field)?;
    no_nul(c.script, field)?;
    field_ok(!c.script.trim().is_empty(), field, "empty script")?;
    field_ok(
        (1..=MAX_TIMEOUT_SECS).contains(&c.timeout_secs),
        field,
        "timeout must be 1 second to 1 day",
    )
}

/// Package names and versions reach a package manager's command line: refuse anything
/// that could be a path, an option or a second word.
fn check_package_word(w: &str, field: &'static str) -> Result<(), Error> {
    field_len(w, MAX_PACKAGE_FIELD_LEN, field)?;
    let ok = !w.is_empty()
        && !w.starts_with('-')
        && !has_dot_dot(w)
        && !w.contains('/')
        && w.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'.' | b'_'
                        | b'+'
                        | b'~'
                        | b'-'
                        | b':'
                        | b'='
                        | b'<'
                        | b'>'
                        | b'!'
                        | b'@'
                        | b'^'
                        | b'*'
                        | b','
                )
        });
    field_ok(
        ok,
        field,
        "must be a plain word (no `/`, `..`, whitespace or leading `-`)",
    )
}

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind<'a> {
    /// A regular file whose content follows the header.
    File {
        /// Content length.
        size: u64,
        /// BLAKE3 digest of the content.
        digest: Digest,
    },
    /// A directory.
    Dir,
    /// A symbolic link; its target must resolve inside the snapshot.
    Symlink {
        /// The link target.
        target: &'a str,
    },
    /// A hardlink to an earlier file entry (declared in the manifest only).
    Hardlink {
        /// Path of the earlier entry.
        target: &'a str,
    },
    /// Remove this path from the snapshot (patch bundles only).
    Delete,
    /// A character device (declared only).
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device (declared only).
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A FIFO (declared only).
    Fifo,
    /// A Unix socket (declared only).
    Socket,
}

/// The header of one entry in the payload's entry stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryHeader<'a> {
    /// Relative, normalized path inside the snapshot.
    pub path: &'a str,
    /// What the entry is.
    #[serde(borrow)]
    pub kind: EntryKind<'a>,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
}

/// `kind` at `path` with plain metadata (mode `0o644`, owned by root, time 0): the unit tests' entries.
#[cfg(test)]
pub(crate) fn plain_entry<'a>(path: &'a str, kind: EntryKind<'a>) -> EntryHeader<'a> {
    EntryHeader {
        path,
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
    }
}

impl EntryHeader<'_> {
    /// The content length that follows the header (non-zero only for files).
    pub fn content_len(&self) -> u64 {
        match self.kind {
            EntryKind::File { size, .. } => size,
            _ => 0,
        }
    }

    /// Whether the entry is a bundle-internal artifact under `.molt/` rather than part of the snapshot.
    pub fn is_internal(&self) -> bool {
        is_internal_path(self.path)
    }
}

/// Whether `path` is `.molt` or lies beneath it: bundle-internal, never in the snapshot.
pub fn is_internal_path(path: &str) -> bool {
    path == RESERVED_DIR
        || path
            .strip_prefix(RESERVED_DIR)
            .is_some_and(|r| r.starts_with('/'))
}

/// One step of the entry-table hash chain: `next = BLAKE3(prev || encoded_header)`.
///
/// A chain (rather than one running hash) keeps the state at any entry boundary to 32
/// bytes, so a download can resume after a restart without the hasher's internals.
pub fn chain_entry(prev: &Digest, encoded_header: &[u8]) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(encoded_header);
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(kind: BundleKind<'_>) -> Manifest<'_> {
        Manifest {
            version: "2.0.0",
            compatible: "board",
            release: 2,
            allow_downgrade: false,
            kind,
            created: 0,
            comment: "",
            recipe: Recipe::default(),
            payload: Payload::default(),
            entries: EntryTable::default(),
        }
    }

    #[test]
    fn a_patch_for_the_active_version_passes() {
        let m = manifest(BundleKind::Patch {
            base_version: "1.0.0",
        });
        assert_eq!(m.check_base("1.0.0"), Ok(()));
    }

    #[test]
    fn a_patch_for_another_version_is_refused_naming_both() {
        let m = manifest(BundleKind::Patch {
            base_version: "1.0.0",
        });
        let refused = m.check_base("1.5.0").unwrap_err();
        assert_eq!(
            refused,
            WrongBase {
                base: "1.0.0",
                active: "1.5.0"
            }
        );
        assert_eq!(
            refused.to_string(),
            "patch for version 1.0.0, but the active snapshot is 1.5.0"
        );
    }

    #[test]
    fn a_patch_for_any_version_and_a_full_bundle_pass_on_any_snapshot() {
        let any = manifest(BundleKind::Patch { base_version: "" });
        let full = manifest(BundleKind::Full);
        for active in ["1.0.0", "", "factory"] {
            assert_eq!(any.check_base(active), Ok(()));
            assert_eq!(full.check_base(active), Ok(()));
        }
    }

    #[test]
    fn versions_compare_exactly() {
        // No normalisation: "1.0" is not "1.0.0", and case matters, as in the slot record.
        let m = manifest(BundleKind::Patch {
            base_version: "1.0.0",
        });
        assert!(m.check_base("1.0").is_err());
        assert!(m.check_base("1.0.0 ").is_err());
    }
}
