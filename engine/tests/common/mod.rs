//! Shared helpers for the bundle tests: decode bundles into owned events; bundles are built by `molt-test-support`.
#![allow(dead_code)]

use molt_engine::bundle::zstd::{LibZstd, RuZstd};
use std::sync::OnceLock;

use molt_engine::bundle::{Buffers, Decoder, Decompressor, Event, Trust, TrustedKey};
use molt_engine::{Error, Limits};

// The one bundle builder and the seeded keys every suite shares (`key(1)` signs `Spec::default()`).
#[allow(unused_imports)]
pub use molt_test_support::bundle::{
    build, build_with, delete, dir, entry, file, manifest, symlink, text, try_build, Spec, E, K,
};
pub use molt_test_support::keys::{seeded as key, trusted};

/// An owned decoder event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    Manifest(Option<[u8; 8]>),
    Start(String, String),
    Data(Vec<u8>),
    End,
    Done,
}

pub fn limits() -> Limits {
    Limits::DEFAULT
}

/// What the error in `$r` carries: `$r` must be an `Err` matching `$pat`, and `$out`
/// is taken from it; any other result fails the test, saying which error was expected.
// Not every test binary that includes this module uses it.
#[allow(unused_macros)]
macro_rules! refusal {
    ($r:expr, $what:literal, $pat:pat => $out:expr) => {
        match $r {
            Err($pat) => $out,
            other => panic!(concat!("expected a ", $what, " error, got {:?}"), other),
        }
    };
}
#[allow(unused_imports)]
pub(crate) use refusal;

/// `bytes` with a byte inside the last chunk's frame flipped (a bundle ends with its
/// last frame, and five bytes from the end is inside any frame the tests build).
pub fn last_frame_changed(bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let at = b.len() - 5;
    b[at] ^= 0xff;
    b
}

/// Owned decoder buffers, lent to one decoder at a time.
pub struct Bufs {
    manifest: Vec<u8>,
    wire: Vec<u8>,
    raw: Vec<u8>,
}

impl Bufs {
    /// Buffers for bundles within the default limits with chunks of at most 64 KiB.
    pub fn new() -> Self {
        Self::sized(&limits(), 64 * 1024)
    }

    /// Buffers for bundles within `limits` with chunks of at most `chunk_size`.
    pub fn sized(limits: &Limits, chunk_size: u32) -> Self {
        let (m, w, r) = Buffers::required(limits, chunk_size);
        Bufs {
            manifest: vec![0; m],
            wire: vec![0; w],
            raw: vec![0; r],
        }
    }

    /// As [`Bufs::sized`] but with no raw buffer at all, which a chain-only decoder never touches.
    pub fn chain_only(limits: &Limits, chunk_size: u32) -> Self {
        Bufs {
            raw: Vec::new(),
            ..Self::sized(limits, chunk_size)
        }
    }

    pub fn lend(&mut self) -> Buffers<'_> {
        Buffers {
            manifest: &mut self.manifest,
            wire: &mut self.wire,
            raw: &mut self.raw,
        }
    }
}

/// Decodes `bytes` fed in pieces cut at `cuts` (sorted offsets), with the given backend.
pub fn decode_with<Z: Decompressor>(
    bytes: &[u8],
    cuts: &[usize],
    trust: Trust<'_>,
    limits: Limits,
    z: Z,
) -> (Vec<Ev>, Result<(), Error>) {
    let mut bufs = Bufs::sized(&limits, 64 * 1024);
    let mut d = Decoder::new(trust, limits, z, bufs.lend());
    let mut evs = Vec::new();
    let mut start = 0;
    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c <= bytes.len()).collect();
    bounds.push(bytes.len());
    for end in bounds {
        let mut rest = &bytes[start..end.max(start)];
        start = end.max(start);
        loop {
            match d.feed(rest) {
                Err(e) => return (evs, Err(e)),
                Ok(f) => {
                    rest = &rest[f.consumed..];
                    match f.event {
                        None => break,
                        Some(Event::ManifestVerified { key_id }) => evs.push(Ev::Manifest(key_id)),
                        Some(Event::EntryStart(h)) => {
                            evs.push(Ev::Start(h.path.to_string(), format!("{:?}", h.kind)))
                        }
                        Some(Event::Data(d)) => evs.push(Ev::Data(d.to_vec())),
                        Some(Event::EntryEnd) => evs.push(Ev::End),
                        Some(Event::Done) => evs.push(Ev::Done),
                    }
                }
            }
        }
    }
    let r = d.finish();
    (evs, r)
}

/// Trust in the test key `key(1)` alone (what `Spec::default()` signs with), nothing revoked.
pub fn pinned() -> Trust<'static> {
    static KEYS: OnceLock<[TrustedKey; 1]> = OnceLock::new();
    Trust::Pinned {
        keys: KEYS.get_or_init(|| [trusted(&key(1))]),
        revoked: &[],
    }
}

/// Decodes with the pinned test key (`key(1)`, as `Spec::default()` signs), fed in
/// pieces cut at `cuts`, under `limits`, with the given backend.
pub fn decode_pinned<Z: Decompressor>(
    bytes: &[u8],
    cuts: &[usize],
    limits: Limits,
    z: Z,
) -> (Vec<Ev>, Result<(), Error>) {
    decode_with(bytes, cuts, pinned(), limits, z)
}

/// Decodes with the pinned test key and libzstd, in one piece.
pub fn decode(bytes: &[u8]) -> (Vec<Ev>, Result<(), Error>) {
    decode_pinned(bytes, &[], limits(), LibZstd::new().unwrap())
}

/// Decodes with the pinned test key and ruzstd, fed in pieces cut at `cuts`.
pub fn decode_ruzstd(bytes: &[u8], cuts: &[usize]) -> (Vec<Ev>, Result<(), Error>) {
    decode_pinned(bytes, cuts, limits(), RuZstd::new())
}

/// Joins the Data events of each file, for comparing trees.
pub fn files(evs: &[Ev]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for e in evs {
        match e {
            Ev::Start(p, _) => out.push((p.clone(), Vec::new())),
            Ev::Data(d) => out.last_mut().unwrap().1.extend_from_slice(d),
            _ => {}
        }
    }
    out
}

// Not every test that includes this module uses it (as with `dead_code` above).
#[allow(unused_imports)]
pub use molt_engine::testing::noise;

/// A small tree: directories, text, random data, a symlink, a file spanning several chunks.
pub fn sample_tree() -> Vec<E> {
    let text = text(40_000);
    vec![
        dir("app"),
        file("app/big.bin", &noise(1, 50_000)),
        dir("app/lib"),
        file("app/lib/empty", b""),
        file("app/lib/text.txt", &text),
        symlink("app/link", "lib/text.txt"),
        file("app/run.sh", b"#!/bin/sh\necho hi\n"),
        dir("etc"),
        file("etc/app.conf", b"port=80\n"),
    ]
}

#[allow(unused_imports)] // Not every test binary crafts bundles.
pub use molt_engine::testing::assemble;
