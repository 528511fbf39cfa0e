//! Bundle format v1: layout and manifest types, the streaming decoder, signature and policy checks, the zstd seam and the encoder.

pub mod chunk;
pub mod decoder;
#[cfg(feature = "encoder")]
pub mod encoder;
pub mod format;
#[cfg(feature = "encoder")]
mod frame_hash;
#[cfg(feature = "alloc")]
pub mod links;
#[cfg(feature = "encoder")]
mod packer;
pub mod policy;
pub mod verify;
pub mod zstd;

pub use decoder::{Buffers, Decoder, Event, Feed, Resume, CHECKPOINT_MAX};
pub use format::{
    BundleKind, Command, EntryHeader, EntryKind, HealthCheck, Manifest, Package, PackageManager,
    Recipe, Rollback, Specials, WrongBase,
};
pub use verify::{Trust, TrustedKey};
pub use zstd::Decompressor;

/// The secret seed of the key `fuzz_decode` trusts, so seed corpora can be signed validly.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub const FUZZ_SEED: [u8; 32] = [7; 32];

/// Decodes `data` split at `split` with a fixed test key and small buffers, checking only
/// that nothing panics and that both halves of the split agree. The fuzz target calls it.
#[cfg(all(feature = "testing", feature = "ruzstd"))]
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    use alloc::vec;
    let public = ed25519_dalek::SigningKey::from_bytes(&FUZZ_SEED).verifying_key();
    let key = match TrustedKey::from_bytes(public.as_bytes()) {
        Ok(k) => k,
        Err(_) => return,
    };
    let keys = [key];
    let limits = crate::Limits {
        max_manifest_len: 16 * 1024,
        max_chunk_size: 64 * 1024,
        max_entries: 10_000,
        ..crate::Limits::DEFAULT
    };
    let (m, w, r) = Buffers::required(&limits, limits.max_chunk_size);
    let (mut mb, mut wb, mut rb) = (vec![0u8; m], vec![0u8; w], vec![0u8; r]);
    for trust in [
        Trust::Pinned {
            keys: &keys,
            revoked: &[],
        },
        Trust::InspectOnly,
    ] {
        let mut d = Decoder::new(
            trust,
            limits,
            zstd::RuZstd::new(),
            Buffers {
                manifest: &mut mb,
                wire: &mut wb,
                raw: &mut rb,
            },
        );
        let mut rest = data;
        while let Ok(f) = d.feed(rest) {
            let done = f.event.is_none();
            rest = rest.get(f.consumed..).unwrap_or(&[]);
            if done {
                break;
            }
        }
        let _ = d.finish();
    }
}
