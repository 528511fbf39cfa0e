//! `cargo xtask engine-size`: builds the thumbv7em size probe and its primitives-only baseline and reports the engine's flash and RAM cost.
//!
//! The probe (engine/size-probe, src/main.rs) is a complete Cortex-M4F firmware that
//! verifies and decodes a bundle from mapped flash with the engine (ed25519, BLAKE3,
//! ruzstd, the policy). The baseline (src/bin/primitives.rs) is the same firmware
//! with only those primitives called directly: the difference is what the engine
//! itself costs. Their ELF section sizes are the honest measure of what a device
//! pays. The ELF is read here directly (a few header fields and the symbol table)
//! so no binutils for ARM are needed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::{cargo, run_cmd};

/// The embedded target both firmwares build for.
pub const TARGET: &str = "thumbv7em-none-eabihf";
/// The command that builds both, run in engine/size-probe (shown in reports).
pub const BUILD: &str = "cargo build --release --target thumbv7em-none-eabihf --bins";
/// The probe's binary: the engine's decode + verify.
const PROBE: &str = "molt-engine-size-probe";
/// The baseline's binary: the primitives alone.
const BASELINE: &str = "primitives";

/// Flash and RAM use of one firmware, in bytes.
pub struct Size {
    /// Code, read-only data, vector table and initialized data (stored in flash).
    pub flash: u64,
    /// Zero-initialized and initialized data, including the decoder's buffers and heap.
    pub ram: u64,
    /// Per-section sizes for the report.
    pub sections: Vec<(String, u64)>,
    /// Flash bytes of sized symbols by crate (the first path segment of the
    /// symbol; code inlined into a caller counts for the caller's crate).
    pub crates: BTreeMap<String, u64>,
}

/// The probe and its baseline, built in the same invocation.
pub struct Sizes {
    pub probe: Size,
    pub baseline: Size,
}

/// Builds both firmwares (release: opt-level "z", LTO) and measures them.
pub fn measure(root: &Path) -> Result<Sizes> {
    let dir = root.join("engine/size-probe");
    let mut cmd = cargo(root);
    cmd.current_dir(&dir).args(BUILD.split_whitespace().skip(1));
    run_cmd(&mut cmd)?;
    let elf = |bin: &str| -> Result<Size> {
        let path: PathBuf = dir.join("target").join(TARGET).join("release").join(bin);
        let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        sections(&bytes).with_context(|| format!("cannot measure {}", path.display()))
    };
    Ok(Sizes {
        probe: elf(PROBE)?,
        baseline: elf(BASELINE)?,
    })
}

pub fn run(root: &Path) -> Result<()> {
    let s = measure(root)?;
    for (label, size) in [
        ("probe (engine)", &s.probe),
        ("baseline (primitives)", &s.baseline),
    ] {
        println!("{label}:");
        for (name, bytes) in &size.sections {
            println!("  {name:<16} {bytes:>8}");
        }
    }
    println!(
        "engine-size: flash {} bytes ({:.1} KiB), RAM {} bytes ({:.1} KiB) on {TARGET} (opt-level z, LTO); \
         the primitives alone: flash {} bytes ({:.1} KiB), so the engine adds {:.1} KiB",
        s.probe.flash,
        kib(s.probe.flash),
        s.probe.ram,
        kib(s.probe.ram),
        s.baseline.flash,
        kib(s.baseline.flash),
        (s.probe.flash as f64 - s.baseline.flash as f64) / 1024.0,
    );
    Ok(())
}

/// Bytes as KiB.
pub fn kib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0
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

/// The NUL-terminated string at `at`.
fn c_str(b: &[u8], at: usize) -> Result<String> {
    let s = b.get(at..).context("bad string offset")?;
    let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
    Ok(String::from_utf8_lossy(&s[..end]).into_owned())
}

/// RAM starts at 0x2000_0000 on Cortex-M; below it is flash.
const RAM_START: u32 = 0x2000_0000;

/// Sums the allocated sections of a 32-bit little-endian ELF, and its flash
/// symbols by crate.
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
        crates: BTreeMap::new(),
    };
    const SHF_ALLOC: u32 = 2;
    const SHT_NOBITS: u32 = 8;
    const SHT_SYMTAB: u32 = 2;
    for i in 0..shnum {
        let base = sh(i);
        let name_off = u32_at(b, base)? as usize;
        let kind = u32_at(b, base + 4)?;
        let flags = u32_at(b, base + 8)?;
        let addr = u32_at(b, base + 0x0c)?;
        let size = u64::from(u32_at(b, base + 0x14)?);
        if kind == SHT_SYMTAB {
            symbols(b, base, sh, &mut out.crates)?;
        }
        if flags & SHF_ALLOC == 0 || size == 0 {
            continue;
        }
        let name = c_str(b, strtab + name_off)?;
        // .data lives in both (flash image, RAM copy).
        if kind != SHT_NOBITS {
            out.flash += size;
        }
        if addr >= RAM_START {
            out.ram += size;
        }
        out.sections.push((name, size));
    }
    Ok(out)
}

/// Adds the sized flash symbols of the symbol table at section header `base` to `crates`.
fn symbols(
    b: &[u8],
    base: usize,
    sh: impl Fn(usize) -> usize,
    crates: &mut BTreeMap<String, u64>,
) -> Result<()> {
    let offset = u32_at(b, base + 0x10)? as usize;
    let size = u32_at(b, base + 0x14)? as usize;
    let link = u32_at(b, base + 0x18)? as usize;
    let names = u32_at(b, sh(link) + 0x10)? as usize;
    // Elf32_Sym: name, value, size (u32 each), info, other (u8), shndx (u16).
    for at in (offset..offset + size).step_by(16) {
        let value = u32_at(b, at + 4)?;
        let bytes = u64::from(u32_at(b, at + 8)?);
        let shndx = u16_at(b, at + 14)?;
        if bytes == 0 || shndx == 0 || value >= RAM_START {
            continue;
        }
        let name = c_str(b, names + u32_at(b, at)? as usize)?;
        *crates.entry(crate_of(&name)).or_default() += bytes;
    }
    Ok(())
}

/// The crate a symbol belongs to: the first segment of a legacy-mangled Rust path
/// (`_ZN6ruzstd8decoding…` → `ruzstd`), or for a trait impl
/// (`_ZN…_$LT$$RF$curve25519_dalek..field..` → `curve25519_dalek`) the crate of the
/// implementing type; anything else (compiler-builtins' C names, linker veneers,
/// blanket impls over a type parameter) goes under `other`.
fn crate_of(symbol: &str) -> String {
    let other = || "other".to_string();
    let Some(rest) = symbol.strip_prefix("_ZN") else {
        return other();
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let Ok(len) = rest[..digits].parse::<usize>() else {
        return other();
    };
    let Some(mut name) = rest.get(digits..digits + len) else {
        return other();
    };
    if let Some(ty) = name.strip_prefix("_$LT$") {
        name = ty;
        // References, pointers, `mut` and slices or arrays before the type's path.
        while let Some(t) = ["$RF$", "$BP$", "mut$u20$", "$u5b$"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
        {
            name = t;
        }
        name = name.split(['.', '$']).next().unwrap_or("");
    }
    // Blanket impls name a type parameter or a primitive instead of a crate.
    const PRIMITIVES: &[&str] = &[
        "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
        "f32", "f64", "bool", "char", "str",
    ];
    let crate_like = name.bytes().any(|c| c.is_ascii_lowercase())
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && !PRIMITIVES.contains(&name);
    if crate_like {
        name.into()
    } else {
        other()
    }
}
