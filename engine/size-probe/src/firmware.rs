//! What the probe (main.rs) and its baseline (bin/primitives.rs) share, so that they differ only in the work they measure: the heap, the pinned key, how the result is reported, the panic handler.

use core::mem::MaybeUninit;
use core::panic::PanicInfo;

use embedded_alloc::LlffHeap as Heap;

#[global_allocator]
static HEAP: Heap = Heap::empty();

/// The release key pinned in both firmwares.
pub const PUBLIC_KEY: [u8; 32] = [
    0xea, 0x4a, 0x6c, 0x63, 0xe2, 0x9c, 0x52, 0x0a, 0xbe, 0xf5, 0x50, 0x7b, 0x13, 0x2e, 0xc5, 0xf9,
    0x95, 0x47, 0x76, 0xae, 0xbe, 0xbd, 0xe1, 0x42, 0x64, 0x05, 0xfc, 0xbc, 0x15, 0x54, 0xe7, 0x11,
];

/// Where the input sits in memory-mapped external flash.
pub const INPUT_ADDR: usize = 0x9000_0000;

/// Gives the allocator its 96 KiB heap, for ruzstd's per-frame window and tables.
/// Called once, first thing in `main`. Inlined, as the code was when each
/// firmware spelled it out, so that sharing it moves no byte of either.
#[inline(always)]
pub fn init_heap() {
    const HEAP_SIZE: usize = 96 * 1024;
    static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
    // SAFETY: called once, before any allocation.
    unsafe { HEAP.init(core::ptr::addr_of_mut!(HEAP_MEM) as usize, HEAP_SIZE) }
}

/// Reports `ok` through a register a test harness could read; then idles.
#[inline(always)]
pub fn report(ok: bool) -> ! {
    // SAFETY: a scratch word in RAM the linker leaves free.
    unsafe { core::ptr::write_volatile(0x2003_FFF0 as *mut u32, ok as u32) };
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {}
}
