//! Resume checkpoints: the decoder's whole state at a chunk boundary, in a few hundred bytes, so a restarted agent continues a download where it stopped.
//!
//! # Why at chunk boundaries
//!
//! Between two chunks the decoder holds nothing that is not in this record: the
//! wire and raw buffers are spent, entry headers never cross a chunk (the
//! encoder guarantees it), and the next chunk's expected digest comes from the
//! previous chunk's header. The one thing that cannot be written down is the
//! BLAKE3 state of a file that spans the boundary, so the record says how many
//! of that file's bytes were already delivered, and the caller feeds them back
//! from where it wrote them ([`Decoder::rehash_prefix`]) before feeding the
//! bundle again. Those bytes are then checked by the file's signed digest like
//! any others: a prefix damaged on disk fails the entry, it is not trusted.
//!
//! # Safety of a damaged record
//!
//! The record carries a CRC-32C and is bound to the bundle by its signed
//! first-chunk and entry-table digests. It can only be applied to a decoder
//! that has just verified that bundle's manifest (so signatures, revocation and
//! limits are checked again with today's keys), and everything after it is
//! still verified by the signed chains: a wrong record makes the resume fail,
//! never lets unsigned data through.

use crc::{Crc, CRC_32_ISCSI};
use serde::{Deserialize, Serialize};

use super::{Decoder, EntryPhase, State};
use crate::bundle::chunk::Chain;
use crate::bundle::format::Digest;
use crate::bundle::zstd::Decompressor;
use crate::error::Error;
use crate::limits::PATH_CAPACITY;

const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// Format tag of the record; bump it when [`Record`] changes.
const TAG: u32 = 0x4d43_5031; // "MCP1"

/// Largest encoded checkpoint: the fixed fields plus two policy paths.
pub const CHECKPOINT_MAX: usize = 2 * PATH_CAPACITY + 512;

/// Where to continue after [`Decoder::resume`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// Byte offset in the bundle to continue reading from.
    pub offset: u64,
    /// Chunks already applied.
    pub chunk: u32,
    /// Bytes of the file in progress that were already delivered and must be fed back
    /// through [`Decoder::rehash_prefix`] (0 when the boundary fell between entries).
    pub file_prefix: u64,
}

#[derive(Serialize, Deserialize)]
struct Record<'a> {
    tag: u32,
    first_chunk: Digest,
    table: Digest,
    offset: u64,
    chunk_index: u32,
    expected: Digest,
    wire_seen: u64,
    raw_seen: u64,
    /// `(size, remaining, digest)` of the file that spans the boundary.
    file: Option<(u64, u64, Digest)>,
    entries_seen: u32,
    chain: Digest,
    file_bytes: u64,
    #[serde(borrow)]
    policy: (u32, &'a str, bool, bool, &'a str),
}

fn bad(what: &'static str) -> Error {
    Error::Malformed { what, at: 0 }
}

impl<Z: Decompressor> Decoder<'_, '_, Z> {
    /// Writes a checkpoint into `out` and returns its length, or `None` when the decoder
    /// is not between two chunks (call it after a `feed` whose event was `None`; most
    /// such moments are). The checkpoint describes the bundle up to [`Resume::offset`]:
    /// bytes of the next chunk already buffered are simply read again after a resume.
    pub fn checkpoint(&self, out: &mut [u8]) -> Result<Option<usize>, Error> {
        if !matches!(self.state, State::ChunkHeader | State::ChunkBody)
            || self.prefix_need > 0
            || self.chain_only
        {
            return Ok(None);
        }
        let file = match self.entry {
            EntryPhase::Header => None,
            EntryPhase::File {
                size,
                remaining,
                digest,
            } => Some((size, remaining, digest)),
            // A non-file entry always ends inside its chunk.
            EntryPhase::End => return Ok(None),
        };
        let Some(policy) = self.policy.as_ref() else {
            return Ok(None);
        };
        let rec = Record {
            tag: TAG,
            first_chunk: self.payload.first_chunk,
            table: self.table.digest,
            offset: self.chunk_start,
            chunk_index: self.chunks.index(),
            expected: self.chunks.expected(),
            wire_seen: self.chunks.seen().0,
            raw_seen: self.chunks.seen().1,
            file,
            entries_seen: self.entries_seen,
            chain: self.chain,
            file_bytes: self.file_bytes,
            policy: policy.save(),
        };
        let body_cap = out.len().saturating_sub(4);
        let body = out
            .get_mut(..body_cap)
            .ok_or(Error::BufferTooSmall { need: 4 })?;
        let n = postcard::to_slice(&rec, body)
            .map_err(|_| Error::BufferTooSmall {
                need: CHECKPOINT_MAX as u32,
            })?
            .len();
        let crc = CRC.checksum(out.get(..n).unwrap_or(&[]));
        let tail = out
            .get_mut(n..n + 4)
            .ok_or(Error::BufferTooSmall { need: n as u32 + 4 })?;
        tail.copy_from_slice(&crc.to_le_bytes());
        Ok(Some(n + 4))
    }

    /// Applies a checkpoint to a decoder that has just emitted `ManifestVerified` for the
    /// same bundle (feed it the bundle's first bytes, up to the first chunk, again).
    /// Then feed the file prefix back if [`Resume::file_prefix`] is not 0, and continue
    /// feeding the bundle from [`Resume::offset`].
    pub fn resume(&mut self, checkpoint: &[u8]) -> Result<Resume, Error> {
        if self.state != State::ChunkHeader || self.chunks.index() != 0 || self.chunk_have != 0 {
            return Err(bad("resume (only right after the manifest)"));
        }
        let split = checkpoint
            .len()
            .checked_sub(4)
            .ok_or(bad("checkpoint (truncated)"))?;
        let (body, crc) = checkpoint.split_at(split);
        if CRC.checksum(body).to_le_bytes() != crc {
            return Err(bad("checkpoint (checksum)"));
        }
        let rec: Record<'_> = postcard::from_bytes(body).map_err(|_| bad("checkpoint"))?;
        if rec.tag != TAG {
            return Err(bad("checkpoint (format tag)"));
        }
        if rec.first_chunk != self.payload.first_chunk || rec.table != self.table.digest {
            return Err(bad("checkpoint (belongs to another bundle)"));
        }
        let consistent = rec.chunk_index <= self.payload.chunk_count
            && rec.offset == self.chunk_start.saturating_add(rec.wire_seen)
            && rec.wire_seen <= self.payload.wire_len
            && rec.raw_seen <= self.payload.raw_len
            && rec.entries_seen <= self.table.count
            && rec.file_bytes <= self.table.file_bytes
            && (rec.chunk_index == self.payload.chunk_count) == (rec.expected == [0; 32])
            && rec.file.is_none_or(|(size, rem, _)| rem <= size);
        if !consistent {
            return Err(bad("checkpoint (inconsistent with the manifest)"));
        }
        if rec.chunk_index == self.payload.chunk_count {
            // Every chunk was applied: nothing is left to resume; start over instead.
            return Err(bad("checkpoint (at the end of the bundle)"));
        }
        let policy = self
            .policy
            .as_mut()
            .ok_or(bad("resume (only right after the manifest)"))?;
        policy.restore(rec.policy)?;
        self.offset = rec.offset;
        self.chunk_start = rec.offset;
        self.chunks = Chain::resume(
            self.payload,
            u64::from(self.limits.max_chunk_size),
            rec.chunk_index,
            rec.expected,
            (rec.wire_seen, rec.raw_seen),
        );
        self.entries_seen = rec.entries_seen;
        self.chain = rec.chain;
        self.file_bytes = rec.file_bytes;
        self.hasher.reset();
        let mut file_prefix = 0;
        self.entry = match rec.file {
            None => EntryPhase::Header,
            Some((size, remaining, digest)) => {
                file_prefix = size - remaining;
                EntryPhase::File {
                    size,
                    remaining,
                    digest,
                }
            }
        };
        self.prefix_need = file_prefix;
        Ok(Resume {
            offset: rec.offset,
            chunk: rec.chunk_index,
            file_prefix,
        })
    }

    /// Feeds back bytes of the file in progress that were delivered before the checkpoint,
    /// in order, until [`Resume::file_prefix`] bytes have been given. More is an error.
    pub fn rehash_prefix(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let n = bytes.len() as u64;
        if n > self.prefix_need {
            self.state = State::Failed;
            return Err(bad("resume (more file prefix than the checkpoint says)"));
        }
        self.hasher.update(bytes);
        self.prefix_need -= n;
        Ok(())
    }

    /// The header and signature block, as read (after `ManifestVerified`). With
    /// [`Decoder::manifest_bytes`] they are the bundle's first bytes, which a resume feeds
    /// again.
    pub fn head_bytes(&self) -> &[u8] {
        if matches!(self.state, State::Head) {
            return &[];
        }
        self.head.get(..self.head_need).unwrap_or(&[])
    }
}
