//! The engine-size baseline: a thumbv7em firmware with only the primitives the engine builds on (ed25519 verify, BLAKE3, ruzstd), no engine.
//!
//! `cargo xtask bench engine-size` sets its flash against the probe's (src/main.rs):
//! the difference is what the engine itself adds on top of the crates any
//! verify-and-decompress updater would link anyway. Same package, so the same
//! crate versions and features (including molt-engine's `compact`, which reaches
//! sha2), the same profile, memory map and heap. Its inputs come from mapped
//! flash through volatile reads, so the compiler cannot fold any of the work away.
#![no_std]
#![no_main]

// The probe's heap, key, report and panic handler, so that only the work differs.
#[path = "../firmware.rs"]
mod firmware;

use cortex_m_rt::entry;
use ed25519_dalek::{Signature, VerifyingKey};
use firmware::{init_heap, report, INPUT_ADDR, PUBLIC_KEY};

// The input at INPUT_ADDR: a 64-byte signature, the signed message's length
// (u32 LE) and bytes, then a zstd frame's length and bytes.

/// The decompressed frame (a small buffer: one chunk).
static mut RAW: [u8; 16 * 1024] = [0; 16 * 1024];

#[entry]
fn main() -> ! {
    init_heap();
    // SAFETY: the external flash is mapped read-only at INPUT_ADDR for the firmware's lifetime.
    let (sig, message, frame) = unsafe {
        let sig = &*(INPUT_ADDR as *const [u8; 64]);
        let len = core::ptr::read_volatile((INPUT_ADDR + 64) as *const u32) as usize;
        let message = core::slice::from_raw_parts((INPUT_ADDR + 68) as *const u8, len);
        let at = INPUT_ADDR + 68 + len;
        let flen = core::ptr::read_volatile(at as *const u32) as usize;
        (
            sig,
            message,
            core::slice::from_raw_parts((at + 4) as *const u8, flen),
        )
    };
    // SAFETY: main runs once; RAW is only borrowed here.
    let raw = unsafe { &mut *core::ptr::addr_of_mut!(RAW) };
    let ok = run(sig, message, frame, raw);
    report(ok)
}

/// What the engine's primitives do for one bundle: a strict signature check
/// with a pinned key and its BLAKE3 key id, a streaming BLAKE3 digest, and one
/// zstd frame decoded into a fixed buffer and hashed in one go.
fn run(sig: &[u8; 64], message: &[u8], frame: &[u8], raw: &mut [u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&PUBLIC_KEY) else {
        return false;
    };
    let key_id = blake3::hash(&PUBLIC_KEY);
    if key
        .verify_strict(message, &Signature::from_bytes(sig))
        .is_err()
    {
        return false;
    }
    let mut h = blake3::Hasher::new();
    h.update(message);
    let digest = h.finalize();
    let mut z = ruzstd::decoding::FrameDecoder::new();
    let Ok(n) = z.decode_all(frame, raw) else {
        return false;
    };
    let file = blake3::hash(raw.get(..n).unwrap_or(&[]));
    core::hint::black_box((key_id, digest, file));
    true
}
