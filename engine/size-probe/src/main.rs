//! A minimal thumbv7em firmware: verify and decode a molt bundle from memory-mapped flash, to measure the engine's size.
//!
//! It does what a constrained device's updater does: check the signature with a
//! pinned key, then stream the payload through the decoder (chunk digests,
//! ruzstd, entry policy, file digests) and hand each file's bytes to a sink.
//! RAM: the three buffers below (4 + 16.5 + 16 KiB), the decoder (~12 KiB on
//! the stack) and a 96 KiB heap for ruzstd's per-frame window and tables.
#![no_std]
#![no_main]

mod firmware;

use cortex_m_rt::entry;
use firmware::{init_heap, report, INPUT_ADDR, PUBLIC_KEY};
use molt_engine::bundle::zstd::RuZstd;
use molt_engine::bundle::{Buffers, Decoder, Event, Trust, TrustedKey};
use molt_engine::Limits;

// The input at INPUT_ADDR: the bundle's length (u32), then the bundle.

const LIMITS: Limits = Limits {
    max_manifest_len: 4096,
    max_chunk_size: 16 * 1024,
    max_entries: 4096,
    max_path_len: 256,
    max_path_depth: 16,
    max_file_size: 64 * 1024 * 1024,
    max_total_size: 64 * 1024 * 1024,
    max_payload_len: 64 * 1024 * 1024,
};

static mut MANIFEST: [u8; 4096] = [0; 4096];
static mut WIRE: [u8; 40 + 16 * 1024 + 16 * 1024 / 128 + 512] =
    [0; 40 + 16 * 1024 + 16 * 1024 / 128 + 512];
static mut RAW: [u8; 16 * 1024] = [0; 16 * 1024];

#[entry]
fn main() -> ! {
    init_heap();
    // SAFETY: the external flash is mapped read-only at INPUT_ADDR for the firmware's lifetime.
    let bundle = unsafe {
        let len = core::ptr::read_volatile(INPUT_ADDR as *const u32) as usize;
        core::slice::from_raw_parts((INPUT_ADDR + 4) as *const u8, len)
    };
    let ok = match TrustedKey::from_bytes(&PUBLIC_KEY) {
        Ok(key) => run(key, bundle),
        Err(_) => false,
    };
    report(ok)
}

fn run(key: TrustedKey, bundle: &[u8]) -> bool {
    let keys = [key];
    // SAFETY: main runs once; these statics are only borrowed here.
    let bufs = unsafe {
        Buffers {
            manifest: &mut *core::ptr::addr_of_mut!(MANIFEST),
            wire: &mut *core::ptr::addr_of_mut!(WIRE),
            raw: &mut *core::ptr::addr_of_mut!(RAW),
        }
    };
    let mut d = Decoder::new(
        Trust::Pinned {
            keys: &keys,
            revoked: &[],
        },
        LIMITS,
        RuZstd::new(),
        bufs,
    );
    let mut sink = 0u32;
    let mut rest = bundle;
    loop {
        let f = match d.feed(rest) {
            Ok(f) => f,
            Err(_) => return false,
        };
        rest = rest.get(f.consumed..).unwrap_or(&[]);
        match f.event {
            None => break,
            Some(Event::Data(bytes)) => {
                // Stand-in for writing to the inactive slot's flash.
                for b in bytes {
                    sink = sink.wrapping_add(u32::from(*b));
                }
            }
            Some(Event::EntryStart(h)) => sink = sink.wrapping_add(h.path.len() as u32),
            Some(_) => {}
        }
    }
    core::hint::black_box(sink);
    d.finish().is_ok()
}
