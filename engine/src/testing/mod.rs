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
