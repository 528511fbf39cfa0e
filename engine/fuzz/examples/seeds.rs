//! Writes a small seed corpus for the `decode` fuzz target: valid bundles signed with the fuzz key, and signed chunks a decoder must refuse.
//!
//! Run by `cargo xtask fuzz` into `engine/fuzz/corpus/decode/` (gitignored), so the
//! fuzzer starts from bundles that get past the signature check instead of having to
//! discover the format from nothing. Usage: `seeds OUT_DIR`.

use std::io::Cursor;
use std::path::PathBuf;

use ed25519_dalek::SigningKey;
use molt_engine::bundle::encoder::{digest_reader, Encoder, EncoderOptions};
use molt_engine::bundle::format::{EntryTable, Payload};
use molt_engine::bundle::{
    BundleKind, EntryHeader, EntryKind, Manifest, Recipe, Specials, FUZZ_SEED,
};

/// One entry of a seed bundle, with owned content.
enum Seed {
    File(&'static str, Vec<u8>),
    Dir(&'static str),
    Symlink(&'static str, &'static str),
    Delete(&'static str),
}

fn manifest(full: bool) -> Manifest<'static> {
    Manifest {
        version: "1.0.0",
        compatible: "fuzz-board",
        release: 1,
        allow_downgrade: false,
        kind: if full {
            BundleKind::Full
        } else {
            BundleKind::Patch {
                base_version: "0.9.0",
            }
        },
        created: 0,
        comment: "fuzz seed",
        recipe: Recipe::default(),
        // `Encoder::finish` fills in the payload and the entry table.
        payload: Payload::default(),
        entries: EntryTable::default(),
    }
}

fn bundle(full: bool, entries: &[Seed], key: &SigningKey) -> std::io::Result<Vec<u8>> {
    let opts = EncoderOptions {
        // The smallest chunk size, so a modest file already spans several chunks.
        chunk_size: molt_engine::bundle::format::MIN_CHUNK_SIZE,
        ..EncoderOptions::default()
    };
    let mut enc = Encoder::new(Cursor::new(Vec::new()), opts, full, Specials::default())?;
    for e in entries {
        let (path, kind, content) = match e {
            Seed::File(p, c) => {
                let (digest, size) = digest_reader(&mut c.as_slice())?;
                (*p, EntryKind::File { size, digest }, Some(c.as_slice()))
            }
            Seed::Dir(p) => (*p, EntryKind::Dir, None),
            Seed::Symlink(p, t) => (*p, EntryKind::Symlink { target: t }, None),
            Seed::Delete(p) => (*p, EntryKind::Delete, None),
        };
        let header = EntryHeader {
            path,
            kind,
            mode: if matches!(kind, EntryKind::Dir) {
                0o755
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
        };
        let mut content = content.map(Cursor::new);
        enc.add(
            &header,
            content.as_mut().map(|c| c as &mut dyn std::io::Read),
        )?;
    }
    let mut out = Vec::new();
    enc.finish(manifest(full), std::slice::from_ref(key), &mut out)?;
    Ok(out)
}

/// One zstd frame holding `raw` (under 256 bytes) as a single raw block, made by hand:
/// the seeds need no compressor.
fn raw_frame(raw: &[u8]) -> Vec<u8> {
    let n = raw.len() as u32;
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD, 0x20, n as u8];
    f.extend_from_slice(&(1 | n << 3).to_le_bytes()[..3]);
    f.extend_from_slice(raw);
    f
}

/// A signed one-chunk bundle whose chunk is a valid frame followed by `tail`: the
/// shapes a chunk must refuse (a chunk is exactly one frame).
fn frame_then(tail: &[u8], key: &SigningKey) -> Vec<u8> {
    let raw = b"fuzz seed: a chunk is exactly one zstd frame";
    let mut chunk = raw_frame(raw);
    chunk.extend_from_slice(tail);
    let mut m = manifest(true);
    m.payload.chunk_size = molt_engine::bundle::format::MIN_CHUNK_SIZE;
    m.entries.count = 1;
    molt_engine::testing::assemble(m, &[(chunk, raw.len() as u32)], std::slice::from_ref(key))
}

fn main() -> std::io::Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or_else(|| std::io::Error::other("usage: seeds OUT_DIR"))?;
    std::fs::create_dir_all(&out)?;

    let fuzz_key = SigningKey::from_bytes(&FUZZ_SEED);
    // A key the fuzz target does not trust: only its inspect-only pass gets far.
    let other_key = SigningKey::from_bytes(&[9; 32]);
    // Compressible but not trivially so, and longer than two chunks.
    let big: Vec<u8> = (0..40_000u32).map(|i| (i * 7 / 13 % 251) as u8).collect();

    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("empty-full", bundle(true, &[], &fuzz_key)?),
        (
            "small-tree",
            bundle(
                true,
                &[
                    Seed::Dir("etc"),
                    Seed::File("etc/hostname", b"molt\n".to_vec()),
                    Seed::Symlink("etc/localtime", "../usr/share/zoneinfo/UTC"),
                ],
                &fuzz_key,
            )?,
        ),
        (
            "multi-chunk",
            bundle(
                true,
                &[Seed::Dir("opt"), Seed::File("opt/blob", big)],
                &fuzz_key,
            )?,
        ),
        (
            "patch-delete",
            bundle(
                false,
                &[
                    Seed::File("etc/new.conf", b"x = 1\n".to_vec()),
                    Seed::Delete("etc/old.conf"),
                ],
                &fuzz_key,
            )?,
        ),
        ("one-frame", frame_then(&[], &fuzz_key)),
        // An empty frame declaring a 96 MiB window after the real one.
        (
            "frame-then-window",
            frame_then(
                &[0x28, 0xB5, 0x2F, 0xFD, 0x00, (16 << 3) | 4, 1, 0, 0],
                &fuzz_key,
            ),
        ),
        // A skippable frame hiding four bytes.
        (
            "frame-then-skippable",
            frame_then(
                &[0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, b'h', b'i', b'd', b'e'],
                &fuzz_key,
            ),
        ),
        (
            "untrusted-key",
            bundle(true, &[Seed::File("hello", b"hello".to_vec())], &other_key)?,
        ),
    ];
    for (name, bytes) in &seeds {
        std::fs::write(out.join(name), bytes)?;
    }
    println!("seeds: wrote {} bundles to {}", seeds.len(), out.display());
    Ok(())
}
