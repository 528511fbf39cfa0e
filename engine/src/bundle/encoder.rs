//! The bundle encoder and signer (host side, behind the `encoder` feature): entries in, a signed bundle out.
//!
//! Entries are added in sorted order; their headers and content are cut into
//! chunks of at most `chunk_size` raw bytes, each compressed into its own zstd
//! frame and spooled. Each chunk header carries the digest of the *next* chunk,
//! so `finish` walks the spool backwards once to compute the chain, then writes
//! header, signatures, manifest and chunks front to back. The spool (a temporary
//! file in the CLI) keeps memory bounded by one chunk plus 32 bytes per chunk.

// The encoder runs on the operator's side over trusted input; fixed-size header
// arithmetic reads more clearly with plain indexing.
#![allow(clippy::indexing_slicing)]

use std::io::{self, Read, Seek, SeekFrom, Write};

use ed25519_dalek::{Signer, SigningKey};

use crate::bundle::format::{
    chain_entry, key_id, Digest, EntryHeader, EntryKind, EntryTable, Manifest, Payload, Specials,
    CHUNK_HEADER_LEN, DEFAULT_CHUNK_SIZE, FORMAT_MAJOR, FORMAT_MINOR, HEADER_LEN, MAGIC,
    MAX_SIGNATURES, MIN_CHUNK_SIZE,
};
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
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: 3,
            check_policy: true,
            limits: Limits::DEFAULT,
        }
    }
}

struct ChunkMeta {
    offset: u64,
    wire: u32,
    raw: u32,
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
    spool: S,
    spool_len: u64,
    opts: EncoderOptions,
    zstd: zstd::bulk::Compressor<'static>,
    raw: Vec<u8>,
    frame: Vec<u8>,
    chunks: Vec<ChunkMeta>,
    count: u32,
    chain: Digest,
    file_bytes: u64,
    raw_len: u64,
    specials: Specials,
    policy: Option<Policy>,
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

impl<S: Read + Write + Seek> Encoder<S> {
    /// An encoder spooling compressed chunks into `spool` (an empty temporary file or a `Cursor<Vec<u8>>`).
    /// `full` and `specials` must match the manifest passed to `finish`.
    pub fn new(spool: S, opts: EncoderOptions, full: bool, specials: Specials) -> io::Result<Self> {
        if opts.chunk_size < MIN_CHUNK_SIZE || opts.chunk_size > opts.limits.max_chunk_size {
            return Err(invalid(format!(
                "chunk size {} outside {MIN_CHUNK_SIZE}..={}",
                opts.chunk_size, opts.limits.max_chunk_size
            )));
        }
        let zstd = zstd::bulk::Compressor::new(opts.level)?;
        Ok(Encoder {
            spool,
            spool_len: 0,
            opts,
            zstd,
            raw: Vec::with_capacity(opts.chunk_size as usize),
            frame: Vec::new(),
            chunks: Vec::new(),
            count: 0,
            chain: [0; 32],
            file_bytes: 0,
            raw_len: 0,
            specials,
            policy: opts
                .check_policy
                .then(|| Policy::new(opts.limits, specials, full)),
            header_buf: Vec::new(),
            copy_buf: vec![0u8; 256 * 1024],
        })
    }

    /// Adds an entry. For a file, `content` must yield exactly `size` bytes whose digest is
    /// the header's (see [`digest_reader`]); other kinds take no content.
    pub fn add(
        &mut self,
        header: &EntryHeader<'_>,
        content: Option<&mut dyn Read>,
    ) -> io::Result<()> {
        if let Some(p) = self.policy.as_mut() {
            p.check(header)
                .map_err(|e| invalid(format!("{}: {e}", header.path)))?;
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
        self.frame.clear();
        self.frame
            .reserve(zstd::zstd_safe::compress_bound(self.raw.len()));
        self.zstd.compress_to_buffer(&self.raw, &mut self.frame)?;
        self.spool.write_all(&self.frame)?;
        self.chunks.push(ChunkMeta {
            offset: self.spool_len,
            wire: self.frame.len() as u32,
            raw: self.raw.len() as u32,
        });
        self.spool_len += self.frame.len() as u64;
        self.raw_len += self.raw.len() as u64;
        self.raw.clear();
        Ok(())
    }

    /// Completes the payload, fills in `manifest.payload` and `manifest.entries`, signs with
    /// every key in `keys` (1 to 4) and writes the bundle to `out`.
    pub fn finish(
        mut self,
        mut manifest: Manifest<'_>,
        keys: &[SigningKey],
        out: &mut impl Write,
    ) -> io::Result<Summary> {
        if keys.is_empty() || keys.len() > MAX_SIGNATURES {
            return Err(invalid(format!(
                "1 to {MAX_SIGNATURES} signing keys needed"
            )));
        }
        self.flush_chunk()?;
        self.spool.flush()?;
        // Walk the chunks backwards: each header carries the digest of its successor.
        let mut digests = vec![[0u8; 32]; self.chunks.len()];
        let mut next = [0u8; 32];
        let mut frame = Vec::new();
        for (i, c) in self.chunks.iter().enumerate().rev() {
            read_frame(&mut self.spool, c, &mut frame)?;
            let mut h = blake3::Hasher::new();
            h.update(&chunk_header(c, &next));
            h.update(&frame);
            next = *h.finalize().as_bytes();
            if let Some(d) = digests.get_mut(i) {
                *d = next;
            }
        }
        let wire_len = self
            .chunks
            .iter()
            .map(|c| CHUNK_HEADER_LEN as u64 + u64::from(c.wire))
            .sum();
        manifest.payload = Payload {
            chunk_count: self.chunks.len() as u32,
            chunk_size: self.opts.chunk_size,
            wire_len,
            raw_len: self.raw_len,
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
        let mut written = 0u64;
        out.write_all(&header)?;
        out.write_all(&[keys.len() as u8, 0, 0, 0])?;
        written += HEADER_LEN as u64 + 4;
        for k in keys {
            out.write_all(&key_id(k.verifying_key().as_bytes()))?;
            out.write_all(&k.sign(&msg).to_bytes())?;
            written += 72;
        }
        out.write_all(&manifest_bytes)?;
        written += manifest_bytes.len() as u64;
        for (i, c) in self.chunks.iter().enumerate() {
            let next = digests.get(i + 1).copied().unwrap_or([0; 32]);
            read_frame(&mut self.spool, c, &mut frame)?;
            out.write_all(&chunk_header(c, &next))?;
            out.write_all(&frame)?;
        }
        written += wire_len;
        out.flush()?;
        Ok(Summary {
            bundle_len: written,
            entries: self.count,
            chunks: self.chunks.len() as u32,
            file_bytes: self.file_bytes,
        })
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
