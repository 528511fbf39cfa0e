//! `Decoder::chain_only`: the head, signature, manifest and chunk chain checked without decompressing, and every change to the file still refused.

mod common;

use common::*;
use molt_engine::bundle::zstd::{DecompressError, Decompressor};
use molt_engine::bundle::{Decoder, Event, Trust};
use molt_engine::Error;

/// A decompressor a chain-only decoder must never call.
struct Never;

impl Decompressor for Never {
    fn decompress_frame(&mut self, _: &[u8], _: &mut [u8]) -> Result<usize, DecompressError> {
        panic!("a chain-only decoder decompressed a frame");
    }
}

/// A bundle of several 16 KiB chunks, with files, a directory and a symlink.
fn bundle() -> Vec<u8> {
    let mut entries = sample_tree();
    entries.push(file("zzz-big", &noise(7, 70_000)));
    build(&Spec {
        entries,
        ..Spec::default()
    })
}

#[derive(Debug, PartialEq)]
enum Seen {
    Manifest,
    Done,
}

/// Feeds `bytes` in pieces of `step` bytes to a chain-only decoder with no raw buffer
/// at all, trusting `key(1)`; returns its events, the end result, and whether a
/// checkpoint was ever offered.
fn chain(bytes: &[u8], step: usize) -> (Vec<Seen>, Result<(), Error>, bool) {
    let keys = [trusted(&key(1))];
    let limits = limits();
    let mut bufs = Bufs::chain_only(&limits, 64 * 1024);
    let mut d = Decoder::new(
        Trust::Pinned {
            keys: &keys,
            revoked: &[],
        },
        limits,
        Never,
        bufs.lend(),
    )
    .chain_only();
    let (mut seen, mut offered) = (Vec::new(), false);
    let mut cp = vec![0u8; 4096];
    for piece in bytes.chunks(step.max(1)) {
        let mut rest = piece;
        loop {
            let f = match d.feed(rest) {
                Ok(f) => f,
                Err(e) => return (seen, Err(e), offered),
            };
            rest = &rest[f.consumed..];
            match f.event {
                None => break,
                Some(Event::ManifestVerified { key_id }) => {
                    assert_eq!(key_id, Some(keys[0].id));
                    seen.push(Seen::Manifest);
                }
                Some(Event::Done) => seen.push(Seen::Done),
                Some(other) => panic!("a chain-only decoder emitted {other:?}"),
            }
        }
        offered |= matches!(d.checkpoint(&mut cp), Ok(Some(_)));
    }
    let r = d.finish();
    (seen, r, offered)
}

#[test]
fn a_good_bundle_passes_in_any_pieces_without_decompressing() {
    let bytes = bundle();
    // Several chunks, or the test would not walk a chain.
    assert!(bytes.len() > 3 * 16 * 1024, "{} bytes", bytes.len());
    for step in [1, 7, 40, 4096, bytes.len()] {
        let (seen, r, offered) = chain(&bytes, step);
        assert_eq!(r, Ok(()), "pieces of {step}");
        assert_eq!(seen, [Seen::Manifest, Seen::Done], "pieces of {step}");
        assert!(!offered, "a chain-only decoder offered a checkpoint");
    }
    // The same bytes decode in full, so the two modes agree on a good bundle.
    assert_eq!(decode(&bytes).1, Ok(()));
}

#[test]
fn an_empty_bundle_passes() {
    let bytes = build(&Spec::default());
    let (seen, r, _) = chain(&bytes, 4096);
    assert_eq!(r, Ok(()));
    assert_eq!(seen, [Seen::Manifest, Seen::Done]);
}

#[test]
fn a_change_to_any_byte_is_refused() {
    // Every byte is under the signature (header, manifest), the chain (chunk headers
    // and frames) or is a key id or signature itself: flipping any one must fail.
    let bytes = build(&Spec {
        entries: vec![
            dir("a"),
            file("a/b", b"bee"),
            file("a/c", &noise(3, 20_000)),
        ],
        ..Spec::default()
    });
    for pos in 0..bytes.len() {
        let mut b = bytes.clone();
        b[pos] ^= 0x10;
        let (_, r, _) = chain(&b, 4096);
        assert!(r.is_err(), "a flip at byte {pos} of {} passed", bytes.len());
    }
}

#[test]
fn a_changed_frame_is_named_by_its_chunk() {
    let b = last_frame_changed(&bundle());
    let chunk =
        refusal!(chain(&b, 4096).1, "chunk digest", Error::ChunkDigest { chunk, .. } => chunk);
    assert!(chunk >= 2, "chunk {chunk}");
}

#[test]
fn truncation_and_trailing_bytes_are_refused() {
    let bytes = bundle();
    for len in (0..bytes.len()).step_by(97) {
        assert_eq!(
            chain(&bytes[..len], 4096).1,
            Err(Error::Truncated { at: len as u64 }),
            "length {len}"
        );
    }
    let mut b = bytes.clone();
    b.push(0);
    assert_eq!(
        chain(&b, 4096).1,
        Err(Error::TrailingData {
            at: bytes.len() as u64
        })
    );
}

#[test]
fn an_unknown_key_is_refused_before_any_chunk() {
    let bytes = build(&Spec {
        entries: vec![file("x", b"x")],
        keys: vec![key(2)],
        ..Spec::default()
    });
    let (seen, r, _) = chain(&bytes, 4096);
    assert!(matches!(r, Err(Error::UnknownKey { .. })), "{r:?}");
    assert!(seen.is_empty());
}
