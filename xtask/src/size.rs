//! `cargo xtask engine-size`: builds the thumbv7em size probe and reports the engine's flash and RAM cost.
//!
//! The probe (engine/size-probe) is a complete Cortex-M4F firmware that verifies and
//! decodes a bundle from mapped flash with the engine (ed25519, BLAKE3, ruzstd, the
//! policy). Its ELF section sizes are the honest measure of what a device pays.
//! The ELF is read here directly (a few header fields) so no binutils for ARM are needed.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::{cargo, run_cmd};

/// Flash and RAM use of the probe, in bytes.
pub struct Size {
    /// Code, read-only data, vector table and initialized data (stored in flash).
    pub flash: u64,
    /// Zero-initialized and initialized data, including the decoder's buffers and heap.
    pub ram: u64,
    /// Per-section sizes for the report.
    pub sections: Vec<(String, u64)>,
}

/// Builds the probe (release: opt-level "z", LTO) and measures it.
pub fn measure(root: &Path) -> Result<Size> {
    let dir = root.join("engine/size-probe");
    let mut cmd = cargo(root);
    cmd.current_dir(&dir)
        .args(["build", "--release", "--target", "thumbv7em-none-eabihf"]);
    run_cmd(&mut cmd)?;
    let elf = dir.join("target/thumbv7em-none-eabihf/release/molt-engine-size-probe");
    let bytes = fs::read(&elf).with_context(|| format!("cannot read {}", elf.display()))?;
    sections(&bytes)
}

pub fn run(root: &Path) -> Result<()> {
    let s = measure(root)?;
    for (name, size) in &s.sections {
        println!("  {name:<16} {size:>8}");
    }
    println!(
        "engine-size: flash {} bytes ({:.1} KiB), RAM {} bytes ({:.1} KiB) on thumbv7em-none-eabihf (opt-level z, LTO)",
        s.flash,
        s.flash as f64 / 1024.0,
        s.ram,
        s.ram as f64 / 1024.0
    );
    Ok(())
}

fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        b.get(at..at + 2).context("short ELF")?.try_into()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        b.get(at..at + 4).context("short ELF")?.try_into()?,
    ))
}

/// Sums the allocated sections of a 32-bit little-endian ELF.
fn sections(b: &[u8]) -> Result<Size> {
    if b.get(..4) != Some(b"\x7fELF") || b.get(4) != Some(&1) || b.get(5) != Some(&1) {
        bail!("not a 32-bit little-endian ELF file");
    }
    let shoff = u32_at(b, 0x20)? as usize;
    let shentsize = u16_at(b, 0x2e)? as usize;
    let shnum = u16_at(b, 0x30)? as usize;
    let shstrndx = u16_at(b, 0x32)? as usize;
    let sh = |i: usize| shoff + i * shentsize;
    let strtab = u32_at(b, sh(shstrndx) + 0x10)? as usize;
    let mut out = Size {
        flash: 0,
        ram: 0,
        sections: Vec::new(),
    };
    const SHF_ALLOC: u32 = 2;
    const SHT_NOBITS: u32 = 8;
    for i in 0..shnum {
        let base = sh(i);
        let name_off = u32_at(b, base)? as usize;
        let kind = u32_at(b, base + 4)?;
        let flags = u32_at(b, base + 8)?;
        let addr = u32_at(b, base + 0x0c)?;
        let size = u64::from(u32_at(b, base + 0x14)?);
        if flags & SHF_ALLOC == 0 || size == 0 {
            continue;
        }
        let name_bytes = b.get(strtab + name_off..).context("bad section name")?;
        let end = name_bytes.iter().position(|&c| c == 0).unwrap_or(0);
        let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
        // RAM starts at 0x2000_0000 on Cortex-M; .data lives in both (flash image, RAM copy).
        let in_ram = addr >= 0x2000_0000;
        if kind != SHT_NOBITS {
            out.flash += size;
        }
        if in_ram {
            out.ram += size;
        }
        out.sections.push((name, size));
    }
    Ok(out)
}
