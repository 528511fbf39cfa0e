//! The `durable` switch (agent.toml): whether the agent makes every write durable before it counts (the default), or leaves writeback to the kernel.
//!
//! Non-durable mode exists to measure what durability costs
//! (`cargo xtask bench durability`) and for devices whose root is volatile
//! anyway (tmpfs, a container's overlay). It skips every `fsync`, `fdatasync` and
//! `syncfs`, so a power cut can lose or tear an update and the slot record: the
//! agent says so when it starts. It is process-wide because durability is a
//! property of the device, set once from the configuration before any write.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

static DURABLE: AtomicBool = AtomicBool::new(true);

/// Sets the mode for the rest of the process (from `Config::durable`).
pub fn set(durable: bool) {
    DURABLE.store(durable, Ordering::Relaxed);
}

/// Whether writes are made durable (the default).
pub fn on() -> bool {
    DURABLE.load(Ordering::Relaxed)
}

/// `fsync(2)` of `f`, unless non-durable.
pub fn sync_all(f: &File) -> io::Result<()> {
    if on() {
        f.sync_all()
    } else {
        Ok(())
    }
}

/// `fdatasync(2)` of `f`, unless non-durable.
pub fn sync_data(f: &File) -> io::Result<()> {
    if on() {
        f.sync_data()
    } else {
        Ok(())
    }
}
