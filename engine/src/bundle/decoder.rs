//! The push decoder: bytes in, in any split; verified events out; memory bounded by the caller's buffers.
//!
//! # Memory
//!
//! The decoder never allocates. Its own state is a fixed-size struct (about
//! 12 KiB: two [`PATH_CAPACITY`] path buffers, two BLAKE3 hashers, the header
//! block). The caller hands in three buffers ([`Buffers`]): the manifest (at
//! most `Limits::max_manifest_len`), one chunk on the wire
//! (`CHUNK_HEADER_LEN + max_wire_chunk(chunk_size)`) and one decompressed chunk
//! (`chunk_size`). With the default 1 MiB chunks that is about 2.1 MiB in all,
//! whatever the bundle's size; [`Buffers::required`] computes it.
//!
//! # Order of checks
//!
//! 1. Header: magic, format major, manifest length against the limits.
//! 2. Manifest: signatures against the pinned keys, then field validation.
//! 3. Each chunk: buffered whole, its BLAKE3 digest compared with the one the
//!    signed chain expects, and only then checked to be exactly one zstd frame
//!    (header and block walk) and decompressed into exactly the signed size.
//! 4. Each entry: the policy, the entry-table hash chain, and for files the
//!    content digest at the end.
//! 5. The end: exact chunk count, payload length, entry count, table digest
//!    and total size; anything after the signed end is refused.
//!
//! [`PATH_CAPACITY`]: crate::limits::PATH_CAPACITY

use crate::bundle::chunk::{Chain, Head};
use crate::bundle::format::{
    max_wire_chunk, BundleKind, Digest, EntryHeader, EntryKind, EntryTable, KeyId, Manifest,
    Payload, CHUNK_HEADER_LEN, HEADER_LEN, MAGIC, MAX_SIGNATURES, SIG_BLOCK_PREFIX, SIG_RECORD_LEN,
};
use crate::bundle::policy::Policy;
use crate::bundle::verify::{check_signatures, signed_message, Trust};
use crate::bundle::zstd::Decompressor;
use crate::error::{Error, LimitKind};
use crate::Limits;

mod checkpoint;
pub use checkpoint::{Resume, CHECKPOINT_MAX};

/// Longest header block: fixed header, signature block prefix and the most signatures.
const HEAD_CAP: usize = HEADER_LEN + SIG_BLOCK_PREFIX + MAX_SIGNATURES * SIG_RECORD_LEN;

/// The working memory the caller lends the decoder.
pub struct Buffers<'b> {
    /// Holds the manifest for the decoder's lifetime.
    pub manifest: &'b mut [u8],
    /// Holds one chunk as it arrives (header and compressed frame).
    pub wire: &'b mut [u8],
    /// Holds one decompressed chunk.
    pub raw: &'b mut [u8],
}

impl Buffers<'_> {
    /// Sizes `(manifest, wire, raw)` needed for bundles within `limits` with chunks of at most `chunk_size`.
    pub const fn required(limits: &Limits, chunk_size: u32) -> (usize, usize, usize) {
        (
            limits.max_manifest_len as usize,
            CHUNK_HEADER_LEN + max_wire_chunk(chunk_size) as usize,
            chunk_size as usize,
        )
    }
}

/// What the decoder found; borrowed from its buffers until the next call.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'d> {
    /// The manifest's signature verified and its fields are valid; read it with [`Decoder::manifest`].
    ManifestVerified {
        /// The key whose signature verified (`None` only with [`Trust::InspectOnly`]).
        key_id: Option<KeyId>,
    },
    /// An entry begins. Files are followed by `Data` events for their content.
    EntryStart(EntryHeader<'d>),
    /// A piece of the current file's content (already verified against the chunk chain).
    Data(&'d [u8]),
    /// The current entry is complete; for files, the content matched its digest.
    EntryEnd,
    /// The whole bundle is verified; any further input is an error.
    Done,
}

/// The result of one [`Decoder::feed`] call.
#[derive(Debug)]
pub struct Feed<'d> {
    /// How many bytes of the input were used; hand the rest back on the next call.
    pub consumed: usize,
    /// An event to handle before the next call, or `None` when all input was used and more is needed.
    pub event: Option<Event<'d>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    Manifest,
    ChunkHeader,
    ChunkBody,
    Raw,
    Done,
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryPhase {
    /// The next bytes of the entry stream are an entry header.
    Header,
    /// Inside a file's content.
    File {
        size: u64,
        remaining: u64,
        digest: Digest,
    },
    /// A non-file entry was announced; `EntryEnd` comes next.
    End,
}

/// What `feed` will emit once the loop ends (kept borrow-free so the loop can mutate freely).
enum Emit {
    Manifest,
    EntryStart { start: usize, len: usize },
    Data { start: usize, len: usize },
    EntryEnd,
    Done,
}

/// The streaming bundle decoder and verifier.
pub struct Decoder<'b, 'k, Z: Decompressor> {
    trust: Trust<'k>,
    limits: Limits,
    z: Z,
    bufs: Buffers<'b>,
    state: State,
    /// Bytes consumed since the start of the bundle.
    offset: u64,
    head: [u8; HEAD_CAP],
    head_have: usize,
    head_need: usize,
    manifest_len: usize,
    manifest_have: usize,
    key_id: Option<KeyId>,
    payload: Payload,
    table: EntryTable,
    /// The chunk chain: what the next chunk must hash to, and what was seen.
    chunks: Chain,
    chunk_start: u64,
    chunk_have: usize,
    chunk_need: usize,
    raw_pos: usize,
    raw_len: usize,
    entry: EntryPhase,
    entries_seen: u32,
    chain: Digest,
    file_bytes: u64,
    hasher: blake3::Hasher,
    policy: Option<Policy>,
    /// After a resume inside a file: bytes of its content still to be re-hashed.
    prefix_need: u64,
    /// Check the chunk chain only: no decompression, no entries ([`Decoder::chain_only`]).
    chain_only: bool,
}

impl<'b, 'k, Z: Decompressor> Decoder<'b, 'k, Z> {
    /// A decoder for one bundle.
    pub fn new(trust: Trust<'k>, limits: Limits, z: Z, bufs: Buffers<'b>) -> Self {
        Decoder {
            trust,
            limits,
            z,
            bufs,
            state: State::Head,
            offset: 0,
            head: [0; HEAD_CAP],
            head_have: 0,
            head_need: HEADER_LEN + SIG_BLOCK_PREFIX,
            manifest_len: 0,
            manifest_have: 0,
            key_id: None,
            payload: Payload::default(),
            table: EntryTable::default(),
            chunks: Chain::new(Payload::default(), 0),
            chunk_start: 0,
            chunk_have: 0,
            chunk_need: CHUNK_HEADER_LEN,
            raw_pos: 0,
            raw_len: 0,
            entry: EntryPhase::Header,
            entries_seen: 0,
            chain: [0; 32],
            file_bytes: 0,
            hasher: blake3::Hasher::new(),
            policy: None,
            prefix_need: 0,
            chain_only: false,
        }
    }

    /// Makes this decoder check only what lies outside the compressed data: the head, the
    /// signature, the manifest and, for every chunk, its digest in the chain, its lengths
    /// and that it is exactly one zstd frame, then the payload's signed totals. Nothing is decompressed
    /// and no entry is read, so the decompressor is never called, the raw buffer may be
    /// empty and the only events are [`Event::ManifestVerified`] and [`Event::Done`]; no
    /// checkpoint is offered.
    ///
    /// For a bundle whose entries were just produced by the encoder: `molt bundle build`
    /// checks the file it wrote this way, at hashing speed. A device, and the controller
    /// receiving an upload, always decode in full.
    pub fn chain_only(mut self) -> Self {
        self.chain_only = true;
        self
    }

    /// The verified manifest (after [`Event::ManifestVerified`]).
    pub fn manifest(&self) -> Result<Manifest<'_>, Error> {
        if matches!(self.state, State::Head | State::Manifest) {
            return Err(Error::Truncated { at: self.offset });
        }
        let bytes = self
            .bufs
            .manifest
            .get(..self.manifest_len)
            .ok_or(Error::BufferTooSmall {
                need: self.manifest_len as u32,
            })?;
        Manifest::decode(bytes)
    }

    /// The raw signed manifest bytes (after [`Event::ManifestVerified`]).
    pub fn manifest_bytes(&self) -> &[u8] {
        self.bufs.manifest.get(..self.manifest_len).unwrap_or(&[])
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// Index of the chunk being read, and how many chunks the bundle has.
    pub fn chunk_progress(&self) -> (u32, u32) {
        (self.chunks.index(), self.payload.chunk_count)
    }

    /// The path of the last entry the policy looked at: after a policy error, the offending one.
    pub fn failed_path(&self) -> &str {
        self.policy.as_ref().map(|p| p.last_path()).unwrap_or("")
    }

    /// Whether the bundle was read to its verified end.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Call at end of input: an error unless the bundle was complete.
    pub fn finish(&self) -> Result<(), Error> {
        if self.state == State::Done {
            Ok(())
        } else {
            Err(Error::Truncated { at: self.offset })
        }
    }

    /// Feeds bytes. Returns how many were consumed and at most one event. Call again with
    /// the unconsumed rest (possibly empty) until the event is `None`, then feed new input.
    pub fn feed(&mut self, input: &[u8]) -> Result<Feed<'_>, Error> {
        match self.step(input) {
            Ok((consumed, emit)) => Ok(Feed {
                consumed,
                event: self.event(emit)?,
            }),
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    fn event(&self, emit: Option<Emit>) -> Result<Option<Event<'_>>, Error> {
        Ok(match emit {
            None => None,
            Some(Emit::Manifest) => Some(Event::ManifestVerified {
                key_id: self.key_id,
            }),
            Some(Emit::EntryStart { start, len }) => {
                let bytes = self.bufs.raw.get(start..start + len).unwrap_or(&[]);
                let (h, _) = postcard::take_from_bytes::<EntryHeader<'_>>(bytes).map_err(|_| {
                    Error::Malformed {
                        what: "entry header",
                        at: self.offset,
                    }
                })?;
                Some(Event::EntryStart(h))
            }
            Some(Emit::Data { start, len }) => Some(Event::Data(
                self.bufs.raw.get(start..start + len).unwrap_or(&[]),
            )),
            Some(Emit::EntryEnd) => Some(Event::EntryEnd),
            Some(Emit::Done) => Some(Event::Done),
        })
    }

    fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Emit>), Error> {
        if self.prefix_need > 0 {
            return Err(Error::Malformed {
                what: "resume (the file prefix was not re-hashed)",
                at: self.offset,
            });
        }
        let mut used = 0usize;
        loop {
            let rest = input.get(used..).unwrap_or(&[]);
            match self.state {
                State::Failed => return Err(Error::Finished),
                State::Done => {
                    if rest.is_empty() {
                        return Ok((used, None));
                    }
                    return Err(Error::TrailingData { at: self.offset });
                }
                State::Head => {
                    let n = take(&mut self.head, &mut self.head_have, self.head_need, rest);
                    used += n;
                    self.offset += n as u64;
                    // Say "not a bundle" as soon as the magic differs, not "truncated" at EOF.
                    let seen = self.head_have.min(MAGIC.len());
                    if self.head.get(..seen) != MAGIC.get(..seen) {
                        return Err(Error::BadMagic);
                    }
                    if self.head_have < self.head_need {
                        return Ok((used, None));
                    }
                    self.on_head()?;
                }
                State::Manifest => {
                    let n = take(
                        self.bufs.manifest,
                        &mut self.manifest_have,
                        self.manifest_len,
                        rest,
                    );
                    used += n;
                    self.offset += n as u64;
                    if self.manifest_have < self.manifest_len {
                        return Ok((used, None));
                    }
                    self.on_manifest()?;
                    return Ok((used, Some(Emit::Manifest)));
                }
                State::ChunkHeader | State::ChunkBody => {
                    let n = take(self.bufs.wire, &mut self.chunk_have, self.chunk_need, rest);
                    used += n;
                    self.offset += n as u64;
                    if self.chunk_have < self.chunk_need {
                        return Ok((used, None));
                    }
                    if self.state == State::ChunkHeader {
                        self.on_chunk_header()?;
                    } else {
                        self.on_chunk_body()?;
                    }
                }
                State::Raw => {
                    if let Some(emit) = self.raw_step()? {
                        return Ok((used, Some(emit)));
                    }
                }
            }
        }
    }

    fn on_head(&mut self) -> Result<(), Error> {
        let at = self.offset;
        // The same reading of the fixed header that host tools use (`chunk::Head`).
        let h = Head::parse(&self.head)?;
        if !h.supported() {
            return Err(Error::UnsupportedVersion {
                major: h.major,
                minor: h.minor,
            });
        }
        if self.head_need == Head::LEN {
            let count = h.signatures;
            if count == 0 || usize::from(count) > MAX_SIGNATURES {
                return Err(Error::BadSignatureCount { count });
            }
            if self.head.get(HEADER_LEN + 1..HEADER_LEN + 4) != Some(&[0, 0, 0][..]) {
                return Err(Error::Malformed {
                    what: "signature block (reserved bytes)",
                    at,
                });
            }
            self.head_need += usize::from(count) * SIG_RECORD_LEN;
            return Ok(());
        }
        let len = h.manifest_len;
        if len > self.limits.max_manifest_len {
            return Err(Error::Limit {
                limit: LimitKind::ManifestLen,
                at: 12,
            });
        }
        if len as usize > self.bufs.manifest.len() {
            return Err(Error::BufferTooSmall { need: len });
        }
        if len == 0 {
            return Err(Error::Malformed {
                what: "header (empty manifest)",
                at: 12,
            });
        }
        self.manifest_len = len as usize;
        self.state = State::Manifest;
        Ok(())
    }

    fn on_manifest(&mut self) -> Result<(), Error> {
        let at = self.offset;
        let mut header = [0u8; HEADER_LEN];
        if let Some(h) = self.head.get(..HEADER_LEN) {
            header.copy_from_slice(h);
        }
        let manifest_bytes = self.bufs.manifest.get(..self.manifest_len).unwrap_or(&[]);
        let msg = signed_message(&header, manifest_bytes);
        let count = usize::from(self.head.get(HEADER_LEN).copied().unwrap_or(0));
        let sigs = self
            .head
            .get(
                HEADER_LEN + SIG_BLOCK_PREFIX
                    ..HEADER_LEN + SIG_BLOCK_PREFIX + count * SIG_RECORD_LEN,
            )
            .unwrap_or(&[]);
        let records = sigs.chunks_exact(SIG_RECORD_LEN).filter_map(|r| {
            let (id, sig) = r.split_at(8);
            Some((
                <&KeyId>::try_from(id).ok()?,
                <&[u8; 64]>::try_from(sig).ok()?,
            ))
        });
        self.key_id = check_signatures(&self.trust, records, &msg)?;
        let m = Manifest::decode(manifest_bytes).map_err(|_| Error::Malformed {
            what: "manifest",
            at: at - self.manifest_len as u64,
        })?;
        m.validate(&self.limits)?;
        let (_, wire_need, raw_need) = Buffers::required(&self.limits, m.payload.chunk_size);
        if self.bufs.wire.len() < wire_need {
            return Err(Error::BufferTooSmall {
                need: wire_need as u32,
            });
        }
        if self.bufs.raw.len() < raw_need && !self.chain_only {
            return Err(Error::BufferTooSmall {
                need: raw_need as u32,
            });
        }
        self.payload = m.payload;
        self.table = m.entries;
        self.chunks = Chain::new(m.payload, u64::from(self.limits.max_chunk_size));
        self.policy = Some(Policy::new(
            self.limits,
            m.entries.specials,
            matches!(m.kind, BundleKind::Full),
        ));
        self.chunk_start = self.offset;
        self.state = if self.payload.chunk_count == 0 {
            State::Raw
        } else {
            State::ChunkHeader
        };
        Ok(())
    }

    fn on_chunk_header(&mut self) -> Result<(), Error> {
        let h = self.chunks.header(self.bufs.wire, self.chunk_start)?;
        self.chunk_need = h.chunk_len();
        self.state = State::ChunkBody;
        Ok(())
    }

    fn on_chunk_body(&mut self) -> Result<(), Error> {
        let at = self.chunk_start;
        let chunk = self.chunks.index();
        let bytes = self.bufs.wire.get(..self.chunk_need).unwrap_or(&[]);
        // Digest, frame shape and chain end, in that order: nothing unsigned reaches zstd.
        let (h, frame) = self.chunks.chunk(bytes, at)?;
        let r = h.raw as usize;
        if !self.chain_only {
            let dst = self
                .bufs
                .raw
                .get_mut(..r)
                .ok_or(Error::BufferTooSmall { need: h.raw })?;
            let n = self
                .z
                .decompress_frame(frame, dst)
                .map_err(|_| Error::Decompress { chunk })?;
            if n != r {
                return Err(Error::Decompress { chunk });
            }
        }
        let last = self.chunks.is_done();
        self.raw_pos = 0;
        self.raw_len = r;
        self.chunk_have = 0;
        self.chunk_need = CHUNK_HEADER_LEN;
        self.chunk_start = self.offset;
        // Chain only: no entry stream to walk, so straight on to the next chunk (the
        // last one goes to `Raw`, which then checks the totals).
        self.state = if self.chain_only && !last {
            State::ChunkHeader
        } else {
            State::Raw
        };
        Ok(())
    }

    /// Advances through the decompressed chunk; returns an event, or `None` after
    /// switching to the next chunk (or to the end).
    fn raw_step(&mut self) -> Result<Option<Emit>, Error> {
        if self.chain_only {
            self.payload_totals()?;
            self.state = State::Done;
            return Ok(Some(Emit::Done));
        }
        let at = self.offset;
        match self.entry {
            EntryPhase::End => {
                self.entry = EntryPhase::Header;
                return Ok(Some(Emit::EntryEnd));
            }
            EntryPhase::File {
                remaining: 0,
                digest,
                ..
            } => {
                let actual = self.hasher.finalize();
                if actual.as_bytes() != &digest {
                    return Err(Error::EntryDigest {
                        entry: self.entries_seen.saturating_sub(1),
                    });
                }
                self.entry = EntryPhase::Header;
                return Ok(Some(Emit::EntryEnd));
            }
            EntryPhase::File {
                size,
                remaining,
                digest,
            } => {
                let avail = self.raw_len - self.raw_pos;
                if avail == 0 {
                    return self.next_chunk_or_end();
                }
                let n = usize::try_from(remaining).unwrap_or(usize::MAX).min(avail);
                let start = self.raw_pos;
                if let Some(data) = self.bufs.raw.get(start..start + n) {
                    self.hasher.update(data);
                }
                self.raw_pos += n;
                self.entry = EntryPhase::File {
                    size,
                    remaining: remaining - n as u64,
                    digest,
                };
                return Ok(Some(Emit::Data { start, len: n }));
            }
            EntryPhase::Header => {}
        }
        if self.raw_pos == self.raw_len {
            return self.next_chunk_or_end();
        }
        if self.entries_seen == self.table.count {
            return Err(Error::EntryTable {
                what: "data after the last entry",
            });
        }
        // An entry header never crosses a chunk boundary (the encoder guarantees it),
        // so it is parsed in place from the decompressed chunk.
        let raw = self.bufs.raw.get(self.raw_pos..self.raw_len).unwrap_or(&[]);
        if raw.len() < 2 {
            return Err(Error::Malformed {
                what: "entry header (crosses a chunk boundary)",
                at,
            });
        }
        let len = usize::from(le_u16(raw, 0));
        let encoded = raw.get(2..2 + len).ok_or(Error::Malformed {
            what: "entry header (crosses a chunk boundary)",
            at,
        })?;
        let (h, rest) = postcard::take_from_bytes::<EntryHeader<'_>>(encoded).map_err(|_| {
            Error::Malformed {
                what: "entry header",
                at,
            }
        })?;
        if !rest.is_empty() {
            return Err(Error::Malformed {
                what: "entry header (trailing bytes)",
                at,
            });
        }
        if let Some(policy) = self.policy.as_mut() {
            policy.check(&h).map_err(|e| match e {
                Error::Limit { limit, .. } => Error::Limit { limit, at },
                other => other,
            })?;
        }
        self.chain = crate::bundle::format::chain_entry(&self.chain, encoded);
        self.entries_seen += 1;
        self.entry = match h.kind {
            EntryKind::File { size, digest } => {
                self.file_bytes = self.file_bytes.saturating_add(size);
                if self.file_bytes > self.table.file_bytes {
                    return Err(Error::EntryTable {
                        what: "files larger than the signed total",
                    });
                }
                self.hasher.reset();
                EntryPhase::File {
                    size,
                    remaining: size,
                    digest,
                }
            }
            _ => EntryPhase::End,
        };
        let start = self.raw_pos + 2;
        self.raw_pos += 2 + len;
        Ok(Some(Emit::EntryStart { start, len }))
    }

    fn next_chunk_or_end(&mut self) -> Result<Option<Emit>, Error> {
        if !self.chunks.is_done() {
            self.state = State::ChunkHeader;
            return Ok(None);
        }
        if self.entry != EntryPhase::Header {
            return Err(Error::EntryTable {
                what: "the last file ends early",
            });
        }
        if self.entries_seen != self.table.count {
            return Err(Error::EntryTable {
                what: "entries listed in the manifest are missing",
            });
        }
        if self.chain != self.table.digest {
            return Err(Error::EntryTable {
                what: "entry table digest differs",
            });
        }
        if self.file_bytes != self.table.file_bytes {
            return Err(Error::EntryTable {
                what: "total file size differs",
            });
        }
        self.payload_totals()?;
        self.state = State::Done;
        Ok(Some(Emit::Done))
    }

    /// After the last chunk: the payload's lengths must be the signed ones.
    fn payload_totals(&self) -> Result<(), Error> {
        let (wire_seen, raw_seen) = self.chunks.seen();
        if wire_seen != self.payload.wire_len || raw_seen != self.payload.raw_len {
            return Err(Error::Malformed {
                what: "payload (length differs from the signed one)",
                at: self.offset,
            });
        }
        Ok(())
    }
}

/// Copies up to `need - *have` bytes of `src` into `dst[*have..]`; returns how many.
fn take(dst: &mut [u8], have: &mut usize, need: usize, src: &[u8]) -> usize {
    let n = need.saturating_sub(*have).min(src.len());
    if let (Some(d), Some(s)) = (dst.get_mut(*have..*have + n), src.get(..n)) {
        d.copy_from_slice(s);
        *have += n;
        n
    } else {
        0
    }
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_le_bytes)
        .unwrap_or(0)
}
