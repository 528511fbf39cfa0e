//! The raw bundle assembler and parser: a signed bundle taken apart into its manifest bytes and chunks, and put together again from any manifest bytes and frames, to craft bundles the encoder would never write.
//!
//! This reads and writes the format by offset (the one place outside engine/ that
//! may, `cargo xtask tidy`'s `LAYOUT_ALLOWED`): hostile bundles must be made byte
//! by byte, and the engine under test is the thing that must refuse them.

use ed25519_dalek::{Signer, SigningKey};
use molt_engine::bundle::format::{
    key_id, CHUNK_HEADER_LEN, FORMAT_MAJOR, FORMAT_MINOR, HEADER_LEN, MAGIC,
};
use molt_engine::bundle::verify::signed_message;
use molt_engine::bundle::Manifest;

/// A bundle taken apart: the manifest bytes and the payload's chunks (claimed raw length, zstd frame).
pub struct Parts {
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// Each chunk's claimed raw length and its frame.
    pub chunks: Vec<(u32, Vec<u8>)>,
    /// Offset of the first chunk header.
    pub payload_start: usize,
    /// Offset of each chunk header.
    pub chunk_offsets: Vec<usize>,
}

/// The little-endian `u32` at `at`.
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Splits a well-formed bundle into its parts.
pub fn parse(b: &[u8]) -> Parts {
    assert_eq!(&b[..8], &MAGIC);
    let mlen = le32(b, 12) as usize;
    let nsig = usize::from(b[HEADER_LEN]);
    let mstart = HEADER_LEN + 4 + nsig * 72;
    let manifest = b[mstart..mstart + mlen].to_vec();
    let payload_start = mstart + mlen;
    let mut at = payload_start;
    let (mut chunks, mut chunk_offsets) = (Vec::new(), Vec::new());
    while at < b.len() {
        let wire = le32(b, at) as usize;
        let raw = le32(b, at + 4);
        chunk_offsets.push(at);
        chunks.push((
            raw,
            b[at + CHUNK_HEADER_LEN..at + CHUNK_HEADER_LEN + wire].to_vec(),
        ));
        at += CHUNK_HEADER_LEN + wire;
    }
    Parts {
        manifest,
        chunks,
        payload_start,
        chunk_offsets,
    }
}

/// The digest of the first chunk and the wire length of `chunks`, as a manifest must sign them.
pub fn payload_of(chunks: &[(u32, Vec<u8>)]) -> ([u8; 32], u64) {
    let digests = chain(chunks);
    let wire = chunks
        .iter()
        .map(|f| (CHUNK_HEADER_LEN + f.1.len()) as u64)
        .sum();
    (digests.first().copied().unwrap_or([0; 32]), wire)
}

/// The 40-byte header of chunk `f` whose successor has digest `next`.
fn chunk_header(f: &(u32, Vec<u8>), next: &[u8; 32]) -> Vec<u8> {
    let mut h = Vec::with_capacity(CHUNK_HEADER_LEN);
    h.extend_from_slice(&(f.1.len() as u32).to_le_bytes());
    h.extend_from_slice(&f.0.to_le_bytes());
    h.extend_from_slice(next);
    h
}

/// Each chunk's digest (over its header, which carries the next chunk's digest, and its
/// frame), computed from the last chunk back.
fn chain(chunks: &[(u32, Vec<u8>)]) -> Vec<[u8; 32]> {
    let mut next = [0u8; 32];
    let mut digests: Vec<[u8; 32]> = chunks
        .iter()
        .rev()
        .map(|f| {
            let h = blake3::Hasher::new()
                .update(&chunk_header(f, &next))
                .update(&f.1)
                .finalize();
            next = *h.as_bytes();
            next
        })
        .collect();
    digests.reverse();
    digests
}

/// Signs `m` exactly as given with `keys` and appends `chunks` (their chain recomputed).
pub fn assemble(m: &Manifest<'_>, chunks: &[(u32, Vec<u8>)], keys: &[SigningKey]) -> Vec<u8> {
    assemble_bytes(&postcard::to_allocvec(m).expect("postcard"), chunks, keys)
}

/// Signs raw manifest bytes (which need not decode) and appends `chunks`.
pub fn assemble_bytes(mb: &[u8], chunks: &[(u32, Vec<u8>)], keys: &[SigningKey]) -> Vec<u8> {
    let digests = chain(chunks);
    let mut hdr = [0u8; HEADER_LEN];
    hdr[..8].copy_from_slice(&MAGIC);
    hdr[8..10].copy_from_slice(&FORMAT_MAJOR.to_le_bytes());
    hdr[10..12].copy_from_slice(&FORMAT_MINOR.to_le_bytes());
    hdr[12..16].copy_from_slice(&(mb.len() as u32).to_le_bytes());
    let msg = signed_message(&hdr, mb);
    let mut out = hdr.to_vec();
    out.extend_from_slice(&[keys.len() as u8, 0, 0, 0]);
    for k in keys {
        out.extend_from_slice(&key_id(k.verifying_key().as_bytes()));
        out.extend_from_slice(&k.sign(&msg).to_bytes());
    }
    out.extend_from_slice(mb);
    for (i, f) in chunks.iter().enumerate() {
        out.extend_from_slice(&chunk_header(
            f,
            &digests.get(i + 1).copied().unwrap_or([0; 32]),
        ));
        out.extend_from_slice(&f.1);
    }
    out
}
