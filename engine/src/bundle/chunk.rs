//! The bundle's fixed head and its chunk chain, parsed and checked in one place: the decoder uses it, and so do host tools that read chunks themselves.
//!
//! The layouts are in docs/bundle-format.md. Code outside the engine never reads
//! the format by offset (a tidy rule checks): what it needs from a bundle's bytes
//! is here, as functions over whole byte slices, with no I/O.
//!
//! [`Chain`] follows the chunk chain a whole chunk at a time, from the signed
//! `first_chunk` digest: a chunk's bytes are hashed and checked before anything
//! looks inside its frame, so whoever decompresses only what [`Chain::chunk`]
//! returned never hands zstd a byte the signature does not cover.

use crate::bundle::format::{
    max_wire_chunk, Digest, KeyId, Payload, CHUNK_HEADER_LEN, FORMAT_MAJOR, HEADER_LEN, MAGIC,
    MAX_SIGNATURES, SIG_BLOCK_PREFIX, SIG_RECORD_LEN,
};
use crate::bundle::zstd::check_frame;
use crate::error::Error;

/// Whether `prefix` (the first bytes of a file, any number of them) could start a
/// bundle: it agrees with the magic as far as it goes. For tools that want to say
/// "not a molt bundle" after a few bytes rather than "truncated" at the end.
pub fn could_be_bundle(prefix: &[u8]) -> bool {
    let n = prefix.len().min(MAGIC.len());
    prefix.get(..n) == MAGIC.get(..n)
}

/// Whether `bytes` start with the whole bundle magic: a molt bundle rather than
/// anything else, before a single signature is checked.
pub fn starts_with_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&MAGIC)
}

/// A bundle's fixed header and signature block, as read before anything is verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Format major version (the decoder refuses any but [`FORMAT_MAJOR`]).
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// Length of the signed manifest, in bytes.
    pub manifest_len: u32,
    /// Number of signature records (1 to [`MAX_SIGNATURES`] in a valid bundle).
    pub signatures: u8,
}

impl Head {
    /// Bytes [`Head::parse`] needs: the fixed header and the signature count.
    pub const LEN: usize = HEADER_LEN + SIG_BLOCK_PREFIX;
    /// Bytes that cover the head and the largest signature block: enough to read every
    /// key id with [`Head::key_ids`].
    pub const MAX_WITH_SIGNATURES: usize = Self::LEN + MAX_SIGNATURES * SIG_RECORD_LEN;

    /// Parses the first [`Head::LEN`] bytes of `bytes`. Checks the magic and that the
    /// bytes are there, nothing else: the version, the signature count and the
    /// reserved bytes are the decoder's to judge.
    pub fn parse(bytes: &[u8]) -> Result<Head, Error> {
        if !could_be_bundle(bytes) {
            return Err(Error::BadMagic);
        }
        let Some(&[_, _, _, _, _, _, _, _, a0, a1, i0, i1, m0, m1, m2, m3, signatures, ..]) =
            bytes.get(..Self::LEN)
        else {
            return Err(Error::Truncated {
                at: bytes.len() as u64,
            });
        };
        Ok(Head {
            major: u16::from_le_bytes([a0, a1]),
            minor: u16::from_le_bytes([i0, i1]),
            manifest_len: u32::from_le_bytes([m0, m1, m2, m3]),
            signatures,
        })
    }

    /// Whether this engine implements the head's format version.
    pub fn supported(&self) -> bool {
        self.major == FORMAT_MAJOR
    }

    /// The key ids of the signature records found in `bytes` (the file's start), at most
    /// [`MAX_SIGNATURES`], as far as `bytes` reaches. Unverified: for display only.
    pub fn key_ids<'a>(&self, bytes: &'a [u8]) -> impl Iterator<Item = KeyId> + 'a {
        let count = usize::from(self.signatures).min(MAX_SIGNATURES);
        (0..count).filter_map(move |i| {
            let at = Self::LEN + i * SIG_RECORD_LEN;
            bytes.get(at..at + 8)?.try_into().ok()
        })
    }

    /// Offset of the first chunk header: after the head, signatures and manifest.
    pub fn payload_start(&self) -> u64 {
        (Self::LEN + usize::from(self.signatures) * SIG_RECORD_LEN) as u64
            + u64::from(self.manifest_len)
    }
}

/// A chunk header: the compressed and raw lengths and the next chunk's digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Length of the zstd frame that follows the header.
    pub wire: u32,
    /// Length the frame decompresses to.
    pub raw: u32,
    /// Digest of the next chunk (header and frame); all zero after the last.
    pub next: Digest,
}

impl ChunkHeader {
    /// Length of a chunk header on the wire.
    pub const LEN: usize = CHUNK_HEADER_LEN;

    /// Reads the first [`CHUNK_HEADER_LEN`] bytes of `b` (zeros where `b` is shorter:
    /// callers hand it whole headers).
    pub fn parse(b: &[u8]) -> ChunkHeader {
        let byte = |i: usize| b.get(i).copied().unwrap_or(0);
        let u32_at =
            |i: usize| u32::from_le_bytes([byte(i), byte(i + 1), byte(i + 2), byte(i + 3)]);
        let mut next = [0u8; 32];
        for (i, n) in next.iter_mut().enumerate() {
            *n = byte(8 + i);
        }
        ChunkHeader {
            wire: u32_at(0),
            raw: u32_at(4),
            next,
        }
    }

    /// The whole chunk's length on the wire: header and frame.
    pub fn chunk_len(&self) -> usize {
        CHUNK_HEADER_LEN + self.wire as usize
    }
}

/// Where a chain stands: what the next chunk must hash to, and what has been seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    payload: Payload,
    max_window: u64,
    expected: Digest,
    index: u32,
    wire_seen: u64,
    raw_seen: u64,
}

impl Chain {
    /// A chain starting at `payload.first_chunk`, whose frames may declare windows up to
    /// `max_window` bytes (the limits' `max_chunk_size`).
    pub fn new(payload: Payload, max_window: u64) -> Chain {
        Chain {
            payload,
            max_window,
            expected: payload.first_chunk,
            index: 0,
            wire_seen: 0,
            raw_seen: 0,
        }
    }

    /// A chain taken up again where a checkpoint left it (the decoder's resume).
    pub(crate) fn resume(
        payload: Payload,
        max_window: u64,
        index: u32,
        expected: Digest,
        seen: (u64, u64),
    ) -> Chain {
        Chain {
            payload,
            max_window,
            expected,
            index,
            wire_seen: seen.0,
            raw_seen: seen.1,
        }
    }

    /// The digest the next chunk must have (what a checkpoint records).
    pub(crate) fn expected(&self) -> Digest {
        self.expected
    }

    /// Whether every chunk the manifest signed has been checked.
    pub fn is_done(&self) -> bool {
        self.index >= self.payload.chunk_count
    }

    /// Index of the next chunk.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Compressed bytes (headers included) and raw bytes of the chunks checked so far.
    pub fn seen(&self) -> (u64, u64) {
        (self.wire_seen, self.raw_seen)
    }

    /// Checks the lengths of the next chunk's header (`at`: its offset in the file, for
    /// errors) before its frame is read: how many bytes to read is decided here.
    pub fn header(&self, header: &[u8], at: u64) -> Result<ChunkHeader, Error> {
        let h = ChunkHeader::parse(header);
        if h.wire == 0 || h.wire > max_wire_chunk(self.payload.chunk_size) {
            return Err(Error::Malformed {
                what: "chunk header (compressed length)",
                at,
            });
        }
        if h.raw == 0 || h.raw > self.payload.chunk_size {
            return Err(Error::Malformed {
                what: "chunk header (raw length)",
                at,
            });
        }
        let end = self.wire_seen + h.chunk_len() as u64;
        if end > self.payload.wire_len {
            return Err(Error::Malformed {
                what: "chunk header (runs past the signed payload length)",
                at,
            });
        }
        Ok(h)
    }

    /// Checks a whole chunk (its header and frame, exactly [`ChunkHeader::chunk_len`]
    /// bytes, `at` its offset) against the chain: its digest first, so nothing unsigned
    /// is parsed, then the frame's shape (exactly one zstd frame of the declared size)
    /// and where the chain ends. Returns the header and the frame, which may then be
    /// decompressed, and moves on to the next chunk.
    pub fn chunk<'a>(
        &mut self,
        bytes: &'a [u8],
        at: u64,
    ) -> Result<(ChunkHeader, &'a [u8]), Error> {
        let chunk = self.index;
        if blake3::hash(bytes).as_bytes() != &self.expected {
            return Err(Error::ChunkDigest { chunk, at });
        }
        let h = ChunkHeader::parse(bytes);
        let frame = bytes.get(CHUNK_HEADER_LEN..).unwrap_or(&[]);
        let info =
            check_frame(frame, self.max_window).map_err(|why| Error::BadFrame { chunk, why })?;
        if info.content_size != u64::from(h.raw) {
            return Err(Error::BadFrame {
                chunk,
                why: "frame content size differs from the chunk header",
            });
        }
        self.wire_seen += bytes.len() as u64;
        self.raw_seen += u64::from(h.raw);
        if self.raw_seen > self.payload.raw_len {
            return Err(Error::Malformed {
                what: "chunk (more data than the signed raw length)",
                at,
            });
        }
        self.index += 1;
        let last = self.index == self.payload.chunk_count;
        if last != (h.next == [0; 32]) {
            return Err(Error::Malformed {
                what: "chunk header (chain end does not match the chunk count)",
                at,
            });
        }
        self.expected = h.next;
        Ok((h, frame))
    }
}
