//! The bundle encoder and signer (host side, behind the `encoder` feature): entries in, a signed bundle out.
//!
//! Entries are added in sorted order; their headers and content are cut into
//! chunks of at most `chunk_size` raw bytes, each compressed into its own zstd
//! frame and spooled. Each chunk header carries the digest of the *next* chunk,
//! so `finish` walks the spool backwards once to compute the chain, then writes
//! header, signatures, manifest and chunks front to back. The spool (a temporary
//! file in the CLI) keeps memory bounded by a few chunks per compressor thread
//! (packer.rs) plus 32 bytes per chunk.

// The encoder runs on the operator's side over trusted input; fixed-size header
// arithmetic reads more clearly with plain indexing.
#![allow(clippy::indexing_slicing)]

use std::io::{self, Read, Seek, SeekFrom, Write};

use ed25519_dalek::{Signer, SigningKey};

use crate::bundle::format::{
    chain_entry, key_id, Digest, EntryHeader, EntryKind, EntryTable, Manifest, Payload, Specials,
    CHUNK_HEADER_LEN, DEFAULT_CHUNK_SIZE, FORMAT_MAJOR, FORMAT_MINOR, HEADER_LEN, MAGIC,
    MAX_SIGNATURES, MIN_CHUNK_SIZE, SIG_BLOCK_PREFIX, SIG_RECORD_LEN,
};
use crate::bundle::links::Hardlinks;
use crate::bundle::packer::{ChunkMeta, Packer, Spool};
use crate::bundle::policy::Policy;
use crate::bundle::verify::signed_message;
use crate::Limits;

/// How to build a bundle.
#[derive(Clone, Copy, Debug)]
pub struct EncoderOptions {
    /// Uncompressed bytes per chunk (at least 16 KiB).
    pub chunk_size: u32,
    /// zstd compression level.
    pub level: i32,
    /// Run the entry policy on what is added (off only to craft bad bundles in tests).
    pub check_policy: bool,
    /// Limits for the policy check.
    pub limits: Limits,
    /// Threads compressing chunks while the caller packs the next ones; 0 compresses
    /// in the caller's thread. The output is identical either way.
    pub compress_threads: usize,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: 3,
            check_policy: true,
            limits: Limits::DEFAULT,
            // Every core, up to 8: chunks are independent frames, and the caller's
            // own thread mostly reads. Each thread holds a zstd context and two
            // frame buffers (a few MiB), so a large machine does not get hundreds.
            compress_threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(8)),
        }
    }
}

/// What `finish` produced.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// Total bundle length in bytes.
    pub bundle_len: u64,
    /// Number of entries.
    pub entries: u32,
    /// Number of chunks.
    pub chunks: u32,
    /// Sum of file sizes.
    pub file_bytes: u64,
}

/// Builds one bundle.
pub struct Encoder<S: Read + Write + Seek> {
    packer: Packer<S>,
    /// Where the payload starts in the spool (0 unless laid out in place).
    start: u64,
    opts: EncoderOptions,
    raw: Vec<u8>,
    count: u32,
    chain: Digest,
    file_bytes: u64,
    specials: Specials,
    policy: Option<Policy>,
    /// The hardlink rule the bounded policy cannot check (see `links`).
    links: Option<Hardlinks>,
    header_buf: Vec<u8>,
    copy_buf: Vec<u8>,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// The BLAKE3 digest and length of everything `r` yields.
pub fn digest_reader(r: &mut impl Read) -> io::Result<(Digest, u64)> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(buf.get(..k).unwrap_or(&[]));
        n += k as u64;
    }
    Ok((*h.finalize().as_bytes(), n))
}

impl<S: Read + Write + Seek + Send + 'static> Encoder<S> {
    /// An encoder spooling compressed chunks into `spool` (an empty temporary file or a `Cursor<Vec<u8>>`).
    /// `full` and `specials` must match the manifest passed to `finish`.
    pub fn new(spool: S, opts: EncoderOptions, full: bool, specials: Specials) -> io::Result<Self> {
        Self::with_layout(spool, 0, opts, full, specials)
    }

    fn with_layout(
        spool: S,
        start: u64,
        opts: EncoderOptions,
        full: bool,
        specials: Specials,
    ) -> io::Result<Self> {
        if opts.chunk_size < MIN_CHUNK_SIZE || opts.chunk_size > opts.limits.max_chunk_size {
            return Err(invalid(format!(
                "chunk size {} outside {MIN_CHUNK_SIZE}..={}",
                opts.chunk_size, opts.limits.max_chunk_size
            )));
        }
        let spool = Spool {
            file: spool,
            len: start,
            slots: start > 0,
            chunks: Vec::new(),
            raw_len: 0,
        };
        let packer = Packer::new(spool, opts.level, opts.compress_threads)?;
        Ok(Encoder {
            packer,
            start,
            opts,
            raw: Vec::with_capacity(opts.chunk_size as usize),
            count: 0,
            chain: [0; 32],
            file_bytes: 0,
            specials,
            policy: opts
                .check_policy
                .then(|| Policy::new(opts.limits, specials, full)),
            links: opts.check_policy.then(|| Hardlinks::new(full, specials)),
            header_buf: Vec::new(),
            copy_buf: vec![0u8; 256 * 1024],
        })
    }

    /// Adds a regular file whose whole content is in memory, read once: the entry
    /// has `meta`'s path, mode, owner and mtime and is a `File` of `content`'s size
    /// and BLAKE3 digest, computed here (`meta.kind` is ignored, so no digest can
    /// disagree with the bytes). Returns the digest.
    pub fn add_file_bytes(&mut self, meta: &EntryHeader<'_>, content: &[u8]) -> io::Result<Digest> {
        let digest = *blake3::hash(content).as_bytes();
        let header = EntryHeader {
            kind: EntryKind::File {
                size: content.len() as u64,
                digest,
            },
            ..*meta
        };
        self.add_header(&header)?;
        self.push_raw(content)?;
        self.file_bytes += content.len() as u64;
        Ok(digest)
    }

    /// Adds an entry. For a file, `content` must yield exactly `size` bytes whose digest is
    /// the header's (see [`digest_reader`]); other kinds take no content.
    pub fn add(
        &mut self,
        header: &EntryHeader<'_>,
        content: Option<&mut dyn Read>,
    ) -> io::Result<()> {
        self.add_header(header)?;
        if let EntryKind::File { size, .. } = header.kind {
            let r =
                content.ok_or_else(|| invalid(format!("{}: file without content", header.path)))?;
            let mut left = size;
            if self.copy_buf.is_empty() {
                // An earlier add failed midway and did not give the buffer back.
                self.copy_buf = vec![0u8; 256 * 1024];
            }
            let mut buf = core::mem::take(&mut self.copy_buf);
            // Hash while streaming: a source that changes between digesting and adding
            // must fail here, not produce a signed bundle that no device accepts.
            let mut hasher = blake3::Hasher::new();
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let dst = buf.get_mut(..want).unwrap_or(&mut []);
                let k = r.read(dst)?;
                if k == 0 {
                    return Err(invalid(format!(
                        "{}: content shorter than its size",
                        header.path
                    )));
                }
                let piece = buf.get(..k).unwrap_or(&[]);
                hasher.update(piece);
                self.push_raw(piece)?;
                left -= k as u64;
            }
            // One copy buffer for the whole bundle, not an allocation per file.
            self.copy_buf = buf;
            if let EntryKind::File { digest, .. } = header.kind {
                if hasher.finalize().as_bytes() != &digest {
                    return Err(invalid(format!(
                        "{}: content does not match its digest (did the file change while it was read?)",
                        header.path
                    )));
                }
            }
            self.file_bytes += size;
        }
        Ok(())
    }

    /// Checks and encodes `header` into the stream, never across a chunk boundary.
    fn add_header(&mut self, header: &EntryHeader<'_>) -> io::Result<()> {
        if let Some(p) = self.policy.as_mut() {
            p.check(header)
                .map_err(|e| invalid(format!("{}: {e}", header.path)))?;
        }
        if let Some(l) = self.links.as_mut() {
            l.check(header)
                .map_err(|r| invalid(format!("{}: {}", header.path, r.describe())))?;
        }
        self.header_buf.clear();
        self.header_buf.extend_from_slice(&[0, 0]);
        let encoded = postcard::to_extend(header, core::mem::take(&mut self.header_buf))
            .map_err(|e| invalid(format!("{}: cannot encode header: {e}", header.path)))?;
        self.header_buf = encoded;
        let len = self.header_buf.len() - 2;
        let len16 =
            u16::try_from(len).map_err(|_| invalid(format!("{}: header too long", header.path)))?;
        if let Some(l) = self.header_buf.get_mut(..2) {
            l.copy_from_slice(&len16.to_le_bytes());
        }
        // An entry header never crosses a chunk boundary, so the decoder parses it in place.
        if self.raw.len() + self.header_buf.len() > self.opts.chunk_size as usize {
            self.flush_chunk()?;
        }
        self.chain = chain_entry(&self.chain, self.header_buf.get(2..).unwrap_or(&[]));
        let hb = core::mem::take(&mut self.header_buf);
        self.push_raw(&hb)?;
        self.header_buf = hb;
        self.count += 1;
        Ok(())
    }

    fn push_raw(&mut self, mut data: &[u8]) -> io::Result<()> {
        let cap = self.opts.chunk_size as usize;
        while !data.is_empty() {
            let room = cap - self.raw.len();
            let (now, later) = data.split_at(room.min(data.len()));
            self.raw.extend_from_slice(now);
            data = later;
            if self.raw.len() == cap {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.raw.is_empty() {
            return Ok(());
        }
        self.packer
            .pack(&mut self.raw, self.opts.chunk_size as usize)
    }

    /// Completes the payload, fills in `manifest.payload` and `manifest.entries`, signs with
    /// every key in `keys` (1 to 4) and writes the bundle to `out`.
    pub fn finish(
        self,
        manifest: Manifest<'_>,
        keys: &[SigningKey],
        out: &mut impl Write,
    ) -> io::Result<Summary> {
        let (mut packer, sealed) = self.seal(manifest, keys)?;
        if packer.slots {
            return Err(invalid(
                "an encoder made with new_in_place ends with finish_in_place",
            ));
        }
        out.write_all(&sealed.prefix)?;
        let mut frame = Vec::new();
        for (i, c) in packer.chunks.iter().enumerate() {
            let next = sealed.digests.get(i + 1).copied().unwrap_or([0; 32]);
            read_frame(&mut packer.file, c, &mut frame)?;
            out.write_all(&chunk_header(c, &next))?;
            out.write_all(&frame)?;
        }
        out.flush()?;
        Ok(sealed.summary)
    }

    /// Stops packing, computes the chunk chain, fills in `manifest.payload` and
    /// `manifest.entries`, and signs: the bundle's first bytes and every chunk's digest.
    fn seal(
        mut self,
        mut manifest: Manifest<'_>,
        keys: &[SigningKey],
    ) -> io::Result<(Spool<S>, Sealed)> {
        if keys.is_empty() || keys.len() > MAX_SIGNATURES {
            return Err(invalid(format!(
                "1 to {MAX_SIGNATURES} signing keys needed"
            )));
        }
        self.flush_chunk()?;
        let mut packer = self.packer.finish()?;
        packer.file.flush()?;
        // Walk the chunks backwards: each header carries the digest of its successor.
        // The frames were hashed when spooled; only their headers are hashed now.
        let mut digests = vec![[0u8; 32]; packer.chunks.len()];
        let mut next = [0u8; 32];
        for (i, c) in packer.chunks.iter().enumerate().rev() {
            next = c.hash.digest(&chunk_header(c, &next));
            if let Some(d) = digests.get_mut(i) {
                *d = next;
            }
        }
        let wire_len = packer
            .chunks
            .iter()
            .map(|c| CHUNK_HEADER_LEN as u64 + u64::from(c.wire))
            .sum();
        manifest.payload = Payload {
            chunk_count: packer.chunks.len() as u32,
            chunk_size: self.opts.chunk_size,
            wire_len,
            raw_len: packer.raw_len,
            first_chunk: digests.first().copied().unwrap_or([0; 32]),
        };
        manifest.entries = EntryTable {
            count: self.count,
            digest: self.chain,
            file_bytes: self.file_bytes,
            specials: self.specials,
        };
        if self.opts.check_policy {
            manifest
                .validate(&self.opts.limits)
                .map_err(|e| invalid(e.to_string()))?;
        }
        let manifest_bytes = postcard::to_allocvec(&manifest)
            .map_err(|e| invalid(format!("cannot encode manifest: {e}")))?;
        if manifest_bytes.len() > self.opts.limits.max_manifest_len as usize {
            return Err(invalid(format!(
                "manifest is {} bytes, over the {}-byte limit devices enforce (shorten scripts or comment)",
                manifest_bytes.len(),
                self.opts.limits.max_manifest_len
            )));
        }
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&MAGIC);
        header[8..10].copy_from_slice(&FORMAT_MAJOR.to_le_bytes());
        header[10..12].copy_from_slice(&FORMAT_MINOR.to_le_bytes());
        header[12..16].copy_from_slice(&(manifest_bytes.len() as u32).to_le_bytes());
        let msg = signed_message(&header, &manifest_bytes);
        let mut prefix = Vec::with_capacity(prefix_room(&self.opts.limits) as usize);
        prefix.extend_from_slice(&header);
        prefix.extend_from_slice(&[keys.len() as u8, 0, 0, 0]);
        for k in keys {
            prefix.extend_from_slice(&key_id(k.verifying_key().as_bytes()));
            prefix.extend_from_slice(&k.sign(&msg).to_bytes());
        }
        prefix.extend_from_slice(&manifest_bytes);
        let summary = Summary {
            bundle_len: prefix.len() as u64 + wire_len,
            entries: self.count,
            chunks: packer.chunks.len() as u32,
            file_bytes: self.file_bytes,
        };
        Ok((
            packer,
            Sealed {
                prefix,
                digests,
                summary,
            },
        ))
    }
}

impl<S: Read + Write + Seek + Truncate + Send + 'static> Encoder<S> {
    /// An encoder that writes the bundle into `file` itself (an empty file): frames
    /// are spooled past room for the largest header, signatures and manifest, each
    /// behind room for its chunk header, and [`Encoder::finish_in_place`] moves them
    /// down once. Same bytes as [`Encoder::new`] + [`Encoder::finish`], without a
    /// second file: half the page cache and writes for a large bundle.
    pub fn new_in_place(
        file: S,
        opts: EncoderOptions,
        full: bool,
        specials: Specials,
    ) -> io::Result<Self> {
        let room = prefix_room(&opts.limits);
        Self::new_in_place_at(file, opts, full, specials, room)
    }

    /// Like [`Encoder::new_in_place`], with the frames spooled right after `prefix`
    /// bytes: when the prefix comes out that long (see [`prefix_len`]), the frames
    /// are already where they belong and finishing writes only the chunk headers
    /// and the prefix, instead of moving the whole payload. Any other length is
    /// still correct: the payload then moves, down or up.
    pub fn new_in_place_at(
        file: S,
        opts: EncoderOptions,
        full: bool,
        specials: Specials,
        prefix: u64,
    ) -> io::Result<Self> {
        let mut file = file;
        // At least one byte, so the spool is marked as laid out in place.
        let start = prefix.max(1);
        file.seek(SeekFrom::Start(start))?;
        Self::with_layout(file, start, opts, full, specials)
    }

    /// Like [`Encoder::finish`] for an encoder from [`Encoder::new_in_place`]: the
    /// bundle is then the file's content (cut to its length); returns the file.
    pub fn finish_in_place(
        self,
        manifest: Manifest<'_>,
        keys: &[SigningKey],
    ) -> io::Result<(Summary, S)> {
        let start = self.start;
        let (mut packer, sealed) = self.seal(manifest, keys)?;
        if !packer.slots {
            return Err(invalid(
                "finish_in_place needs an encoder made with new_in_place",
            ));
        }
        let f = &mut packer.file;
        let prefix = sealed.prefix.len() as u64;
        let end = sealed.summary.bundle_len;
        let header = |i: usize, c: &ChunkMeta| {
            chunk_header(c, &sealed.digests.get(i + 1).copied().unwrap_or([0; 32]))
        };
        if prefix == start {
            // The frames are in place behind their headers' room: fill it in.
            for (i, c) in packer.chunks.iter().enumerate() {
                f.seek(SeekFrom::Start(c.offset - CHUNK_HEADER_LEN as u64))?;
                f.write_all(&header(i, c))?;
            }
        } else {
            // Every chunk (header and frame) moves by the same distance: front to back
            // when down, back to front when up, so each is read before anything is
            // written over it.
            let mut dests = Vec::with_capacity(packer.chunks.len());
            let mut at = prefix;
            for c in &packer.chunks {
                dests.push(at);
                at += CHUNK_HEADER_LEN as u64 + u64::from(c.wire);
            }
            let mut order: Vec<usize> = (0..packer.chunks.len()).collect();
            if prefix > start {
                order.reverse();
            }
            let mut buf = Vec::new();
            for i in order {
                let c = &packer.chunks[i];
                buf.resize(CHUNK_HEADER_LEN + c.wire as usize, 0);
                f.seek(SeekFrom::Start(c.offset))?;
                f.read_exact(&mut buf[CHUNK_HEADER_LEN..])?;
                buf[..CHUNK_HEADER_LEN].copy_from_slice(&header(i, c));
                f.seek(SeekFrom::Start(dests[i]))?;
                f.write_all(&buf)?;
            }
        }
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&sealed.prefix)?;
        f.flush()?;
        f.truncate_to(end)?;
        Ok((sealed.summary, packer.file))
    }
}

/// How long the bundle's prefix (fixed header, `keys` signatures, manifest) is for
/// `manifest` as given: with its payload and entry table filled with estimates, a
/// hint for [`Encoder::new_in_place_at`] (the lengths of postcard's variable-length
/// integers are what matter, not the values).
pub fn prefix_len(manifest: &Manifest<'_>, keys: usize) -> io::Result<u64> {
    let len = postcard::to_allocvec(manifest)
        .map_err(|e| invalid(format!("cannot encode manifest: {e}")))?
        .len();
    Ok((HEADER_LEN + SIG_BLOCK_PREFIX + keys * SIG_RECORD_LEN + len) as u64)
}

/// What sealing produced: the bytes before the first chunk, each chunk's digest.
struct Sealed {
    prefix: Vec<u8>,
    digests: Vec<Digest>,
    summary: Summary,
}

/// The most bytes header, signature block and manifest can take under `limits`.
fn prefix_room(limits: &Limits) -> u64 {
    (HEADER_LEN + SIG_BLOCK_PREFIX + SIG_RECORD_LEN * MAX_SIGNATURES) as u64
        + u64::from(limits.max_manifest_len)
}

/// A spool that can be cut to a length: what [`Encoder::new_in_place`] writes into.
pub trait Truncate {
    /// Cuts (or extends) the content to `len` bytes.
    fn truncate_to(&mut self, len: u64) -> io::Result<()>;
}

impl Truncate for std::fs::File {
    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
}

impl Truncate for io::Cursor<Vec<u8>> {
    fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| invalid("length beyond memory"))?;
        self.get_mut().resize(len, 0);
        Ok(())
    }
}

fn chunk_header(c: &ChunkMeta, next: &Digest) -> [u8; CHUNK_HEADER_LEN] {
    let mut h = [0u8; CHUNK_HEADER_LEN];
    h[..4].copy_from_slice(&c.wire.to_le_bytes());
    h[4..8].copy_from_slice(&c.raw.to_le_bytes());
    h[8..].copy_from_slice(next);
    h
}

fn read_frame<S: Read + Seek>(spool: &mut S, c: &ChunkMeta, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.resize(c.wire as usize, 0);
    spool.seek(SeekFrom::Start(c.offset))?;
    spool.read_exact(buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::bundle::format::plain_entry as header;
    use crate::bundle::format::{BundleKind, Recipe};

    fn manifest() -> Manifest<'static> {
        Manifest {
            version: "1.0.0",
            compatible: "test",
            release: 1,
            allow_downgrade: false,
            kind: BundleKind::Full,
            created: 0,
            comment: "encoder paths",
            recipe: Recipe::default(),
            payload: Payload::default(),
            entries: EntryTable::default(),
        }
    }

    /// Files from empty to several chunks, text and noise.
    fn files() -> Vec<(String, Vec<u8>)> {
        [
            0usize,
            1,
            1000,
            16 * 1024,
            40_000,
            100_000,
            3 * 16 * 1024 + 7,
        ]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let data = if i % 2 == 0 {
                (0..n).map(|k| b"molt "[k % 5]).collect()
            } else {
                crate::testing::noise(i as u64, n)
            };
            (format!("d/f{i}"), data)
        })
        .collect()
    }

    /// One bundle through every path: compressor threads (0, 1 or several) or not,
    /// content from a reader or from memory, finished into another writer or in place.
    fn build(threads: usize, bytes: bool, in_place: bool) -> Vec<u8> {
        build_at(threads, bytes, in_place, None)
    }

    /// [`build`], laid out in place after `at` bytes if given.
    fn build_at(threads: usize, bytes: bool, in_place: bool, at: Option<u64>) -> Vec<u8> {
        let opts = EncoderOptions {
            chunk_size: MIN_CHUNK_SIZE,
            compress_threads: threads,
            ..EncoderOptions::default()
        };
        let spool = io::Cursor::new(Vec::new());
        let mut enc = if let Some(at) = at {
            Encoder::new_in_place_at(spool, opts, true, Specials::default(), at).unwrap()
        } else if in_place {
            Encoder::new_in_place(spool, opts, true, Specials::default()).unwrap()
        } else {
            Encoder::new(spool, opts, true, Specials::default()).unwrap()
        };
        enc.add(&header("d", EntryKind::Dir), None).unwrap();
        for (path, data) in files() {
            if bytes {
                let d = enc
                    .add_file_bytes(&header(&path, EntryKind::Dir), &data)
                    .unwrap();
                assert_eq!(&d, blake3::hash(&data).as_bytes());
            } else {
                let (digest, size) = digest_reader(&mut data.as_slice()).unwrap();
                let h = header(&path, EntryKind::File { size, digest });
                enc.add(&h, Some(&mut data.as_slice())).unwrap();
            }
        }
        let key = SigningKey::from_bytes(&[7; 32]);
        if in_place {
            let (summary, file) = enc.finish_in_place(manifest(), &[key]).unwrap();
            let out = file.into_inner();
            assert_eq!(summary.bundle_len, out.len() as u64);
            out
        } else {
            let mut out = Vec::new();
            let summary = enc.finish(manifest(), &[key], &mut out).unwrap();
            assert_eq!(summary.bundle_len, out.len() as u64);
            out
        }
    }

    #[test]
    fn every_path_writes_the_same_bytes() {
        let reference = build(0, false, false);
        assert!(reference.len() > 4 * MIN_CHUNK_SIZE as usize / 2);
        for (threads, bytes, in_place) in [
            (1, false, false),
            (0, true, false),
            (1, true, false),
            (3, true, false),
            (0, false, true),
            (1, true, true),
            (4, false, true),
        ] {
            assert!(
                build(threads, bytes, in_place) == reference,
                "threads {threads}, bytes {bytes}, in place {in_place}"
            );
        }
    }

    #[test]
    fn a_payload_laid_out_at_any_offset_ends_up_in_place() {
        let reference = build(0, false, false);
        let manifest_len = u32::from_le_bytes(reference[12..16].try_into().unwrap());
        let exact =
            (HEADER_LEN + SIG_BLOCK_PREFIX + SIG_RECORD_LEN) as u64 + u64::from(manifest_len);
        // prefix_len gives it from the manifest (only the lengths of its numbers matter).
        let signed: Manifest<'_> = postcard::from_bytes(
            &reference[(exact - u64::from(manifest_len)) as usize..exact as usize],
        )
        .unwrap();
        assert_eq!(prefix_len(&signed, 1).unwrap(), exact);
        let mut guess = signed;
        guess.payload.first_chunk = [0; 32];
        guess.payload.wire_len += 1;
        guess.entries.digest = [0; 32];
        assert_eq!(prefix_len(&guess, 1).unwrap(), exact);
        // Exact (headers filled in place), too short (the payload moves up), too long
        // (it moves down), and the smallest start.
        for at in [exact, exact - 7, 1, exact + 300] {
            assert!(
                build_at(2, true, true, Some(at)) == reference,
                "payload laid out at {at}, prefix {exact}"
            );
        }
    }

    /// A spool that takes `left` bytes, then fails every write (a full disk).
    struct FullDisk {
        inner: io::Cursor<Vec<u8>>,
        left: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if buf.len() > self.left {
                return Err(io::Error::other("no space left on the spool"));
            }
            self.left -= buf.len();
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Read for FullDisk {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.inner.read(buf)
        }
    }

    impl Seek for FullDisk {
        fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
            self.inner.seek(to)
        }
    }

    #[test]
    fn a_failing_spool_stops_every_thread_with_its_error() {
        for threads in [0, 1, 3] {
            for left in [0, 10, 50_000] {
                let opts = EncoderOptions {
                    chunk_size: MIN_CHUNK_SIZE,
                    compress_threads: threads,
                    ..EncoderOptions::default()
                };
                let spool = FullDisk {
                    inner: io::Cursor::new(Vec::new()),
                    left,
                };
                let mut enc = Encoder::new(spool, opts, true, Specials::default()).unwrap();
                // Enough chunks that the queue fills while the spool fails: the
                // producer must get the error, not block on a queue nobody drains.
                let mut failed = None;
                for i in 0..40 {
                    // Incompressible, so the spool fills.
                    let data = crate::testing::noise(i, 40_000);
                    let path = format!("f{i:02}");
                    if let Err(e) = enc.add_file_bytes(&header(&path, EntryKind::Dir), &data) {
                        failed = Some(e);
                        break;
                    }
                }
                let err = match failed {
                    Some(e) => e,
                    None => {
                        let key = SigningKey::from_bytes(&[7; 32]);
                        enc.finish(manifest(), &[key], &mut Vec::new()).unwrap_err()
                    }
                };
                assert!(
                    err.to_string().contains("no space left"),
                    "threads {threads}, {left} bytes: {err}"
                );
            }
        }
    }

    #[test]
    fn finish_and_layout_must_match() {
        let opts = EncoderOptions::default();
        let key = SigningKey::from_bytes(&[7; 32]);
        let enc =
            Encoder::new_in_place(io::Cursor::new(Vec::new()), opts, true, Specials::default())
                .unwrap();
        assert!(enc
            .finish(manifest(), std::slice::from_ref(&key), &mut Vec::new())
            .is_err());
        let enc =
            Encoder::new(io::Cursor::new(Vec::new()), opts, true, Specials::default()).unwrap();
        assert!(enc.finish_in_place(manifest(), &[key]).is_err());
    }
}
