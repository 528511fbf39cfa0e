//! A minimal thumbv7em firmware: verify and decode a molt bundle from memory-mapped flash, to measure the engine's size.
//!
//! It does what a constrained device's updater does: check the signature with a
//! pinned key, then stream the payload through the decoder (chunk digests,
//! ruzstd, entry policy, file digests) and hand each file's bytes to a sink.
//! RAM: the three buffers below (4 + 16.5 + 16 KiB), the decoder (~12 KiB on
//! the stack) and a 96 KiB heap for ruzstd's per-frame window and tables.
#![no_std]
#![no_main]

use core::mem::MaybeUninit;
use core::panic::PanicInfo;

use cortex_m_rt::entry;
use embedded_alloc::LlffHeap as Heap;
use molt_engine::bundle::zstd::RuZstd;
use molt_engine::bundle::{Buffers, Decoder, Event, Trust, TrustedKey};
use molt_engine::Limits;

#[global_allocator]
static HEAP: Heap = Heap::empty();

/// The release key pinned in this firmware.
const PUBLIC_KEY: [u8; 32] = [
    0xea, 0x4a, 0x6c, 0x63, 0xe2, 0x9c, 0x52, 0x0a, 0xbe, 0xf5, 0x50, 0x7b, 0x13, 0x2e, 0xc5, 0xf9,
    0x95, 0x47, 0x76, 0xae, 0xbe, 0xbd, 0xe1, 0x42, 0x64, 0x05, 0xfc, 0xbc, 0x15, 0x54, 0xe7, 0x11,
];

/// Where the bundle sits in memory-mapped external flash (first 4 bytes: its length).
const BUNDLE_ADDR: usize = 0x9000_0000;

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
    {
        const HEAP_SIZE: usize = 96 * 1024;
        static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
        // SAFETY: called once, before any allocation.
        unsafe { HEAP.init(core::ptr::addr_of_mut!(HEAP_MEM) as usize, HEAP_SIZE) }
    }
    // SAFETY: the external flash is mapped read-only at BUNDLE_ADDR for the firmware's lifetime.
    let bundle = unsafe {
        let len = core::ptr::read_volatile(BUNDLE_ADDR as *const u32) as usize;
        core::slice::from_raw_parts((BUNDLE_ADDR + 4) as *const u8, len)
    };
    let ok = match TrustedKey::from_bytes(&PUBLIC_KEY) {
        Ok(key) => run(key, bundle),
        Err(_) => false,
    };
    // Report through a register a test harness could read; then idle.
    // SAFETY: a scratch word in RAM the linker leaves free.
    unsafe { core::ptr::write_volatile(0x2003_FFF0 as *mut u32, ok as u32) };
    loop {
        cortex_m::asm::wfi();
    }
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

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {}
}
