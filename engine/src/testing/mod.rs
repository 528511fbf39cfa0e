//! Test doubles shared by the engine's tests and the agent's tests (behind the `testing` feature), and the tests' deterministic noise.

mod tearing;

pub use tearing::{RecordStore, Tear, TearingError, TearingStore};

/// `len` pseudo-random bytes that depend only on `seed`: incompressible test
/// content (zstd cannot shrink it, so a bundle is as large as its data and
/// spans as many chunks as the data asks for) that every run reproduces, so
/// a failing case can be replayed from its seed.
///
/// A xorshift64 generator (shifts 13, 7, 17) taking the low byte of each
/// step: a few lines with no RNG crate to depend on, and the same bytes on
/// every platform and toolchain, which a seeded RNG crate does not promise
/// across versions. Not for anything that must be unpredictable.
///
/// The seed is multiplied by 2^64 / φ and made odd first, so small seeds
/// (0, 1, 2, ...) give unrelated streams and 0 does not stall the generator
/// at 0. `noise(1, n)` therefore starts from `0x9E37_79B9_7F4A_7C15`.
/// It returns a `Vec`, so it needs the `alloc` feature besides `testing`.
#[cfg(feature = "alloc")]
pub fn noise(seed: u64, len: usize) -> alloc::vec::Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Assembles a signed bundle from hand-made zstd frames, for crafting payloads the encoder
/// would never write: chunk i is `frames[i].0` (any bytes) with `frames[i].1` as the raw
/// length its header claims. The engine's tests and the fuzz seeds use it (`std` only).
#[cfg(feature = "std")]
// A test helper: a panic here is a failed test, not a device down.
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
pub fn assemble(
    mut m: crate::bundle::Manifest<'_>,
    frames: &[(std::vec::Vec<u8>, u32)],
    keys: &[ed25519_dalek::SigningKey],
) -> std::vec::Vec<u8> {
    use crate::bundle::format::{key_id, FORMAT_MAJOR, MAGIC};
    use crate::bundle::verify::signed_message;
    use ed25519_dalek::Signer;
    use std::vec;
    use std::vec::Vec;
    let mut digests = vec![[0u8; 32]; frames.len()];
    let mut next = [0u8; 32];
    let header = |f: &(Vec<u8>, u32), next: &[u8; 32]| {
        let mut h = Vec::new();
        h.extend_from_slice(&(f.0.len() as u32).to_le_bytes());
        h.extend_from_slice(&f.1.to_le_bytes());
        h.extend_from_slice(next);
        h
    };
    for (i, f) in frames.iter().enumerate().rev() {
        let mut h = blake3::Hasher::new();
        h.update(&header(f, &next));
        h.update(&f.0);
        next = *h.finalize().as_bytes();
        digests[i] = next;
    }
    m.payload.chunk_count = frames.len() as u32;
    if m.payload.chunk_size == 0 {
        m.payload.chunk_size = 16 * 1024;
    }
    m.payload.wire_len = frames.iter().map(|f| 40 + f.0.len() as u64).sum();
    if m.payload.raw_len == 0 {
        m.payload.raw_len = frames.iter().map(|f| u64::from(f.1)).sum();
    }
    m.payload.first_chunk = digests.first().copied().unwrap_or([0; 32]);
    let mb = postcard::to_allocvec(&m).unwrap();
    let mut hdr = [0u8; 16];
    hdr[..8].copy_from_slice(&MAGIC);
    hdr[8..10].copy_from_slice(&FORMAT_MAJOR.to_le_bytes());
    hdr[12..16].copy_from_slice(&(mb.len() as u32).to_le_bytes());
    let msg = signed_message(&hdr, &mb);
    let mut out = hdr.to_vec();
    out.extend_from_slice(&[keys.len() as u8, 0, 0, 0]);
    for k in keys {
        out.extend_from_slice(&key_id(k.verifying_key().as_bytes()));
        out.extend_from_slice(&k.sign(&msg).to_bytes());
    }
    out.extend_from_slice(&mb);
    for (i, f) in frames.iter().enumerate() {
        out.extend_from_slice(&header(f, &digests.get(i + 1).copied().unwrap_or([0; 32])));
        out.extend_from_slice(&f.0);
    }
    out
}
