//! Shared helpers for the bundle tests: build bundles from owned entries, decode them into owned events.
#![allow(dead_code)]

use std::io::Cursor;

use ed25519_dalek::SigningKey;
use molt_engine::bundle::encoder::{Encoder, EncoderOptions};
use molt_engine::bundle::format::{EntryTable, Payload};
use molt_engine::bundle::zstd::{LibZstd, RuZstd};
use molt_engine::bundle::{
    Buffers, BundleKind, Decoder, Decompressor, EntryHeader, EntryKind, Event, Manifest, Recipe,
    Specials, Trust, TrustedKey,
};
use molt_engine::{Error, Limits};

/// A test signing key from a fixed seed.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn trusted(k: &SigningKey) -> TrustedKey {
    TrustedKey::from_bytes(k.verifying_key().as_bytes()).unwrap()
}

/// An entry with owned fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct E {
    pub path: String,
    pub kind: K,
    pub mode: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum K {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
    Delete,
    Fifo,
    Socket,
    CharDev,
}

pub fn file(path: &str, content: &[u8]) -> E {
    E {
        path: path.into(),
        kind: K::File(content.to_vec()),
        mode: 0o644,
    }
}
pub fn dir(path: &str) -> E {
    E {
        path: path.into(),
        kind: K::Dir,
        mode: 0o755,
    }
}
pub fn symlink(path: &str, target: &str) -> E {
    E {
        path: path.into(),
        kind: K::Symlink(target.into()),
        mode: 0o777,
    }
}
pub fn delete(path: &str) -> E {
    E {
        path: path.into(),
        kind: K::Delete,
        mode: 0,
    }
}

/// How to build a test bundle.
#[derive(Clone)]
pub struct Spec {
    pub entries: Vec<E>,
    pub full: bool,
    pub specials: Specials,
    pub chunk_size: u32,
    pub check_policy: bool,
    pub compatible: String,
    pub release: u64,
    pub keys: Vec<SigningKey>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            entries: vec![],
            full: true,
            specials: Specials::default(),
            chunk_size: 16 * 1024,
            check_policy: true,
            compatible: "test-board".into(),
            release: 5,
            keys: vec![key(1)],
        }
    }
}

pub fn manifest<'a>(spec: &'a Spec) -> Manifest<'a> {
    Manifest {
        version: "1.0.0",
        compatible: &spec.compatible,
        release: spec.release,
        allow_downgrade: false,
        kind: if spec.full {
            BundleKind::Full
        } else {
            BundleKind::Patch { base_version: "" }
        },
        created: 0,
        comment: "test",
        recipe: Recipe::default(),
        payload: Payload::default(),
        entries: EntryTable {
            specials: spec.specials,
            ..EntryTable::default()
        },
    }
}

/// Builds a bundle; panics on encoder errors (tests that expect the encoder to refuse use `try_build`).
pub fn build(spec: &Spec) -> Vec<u8> {
    try_build(spec).unwrap()
}

pub fn try_build(spec: &Spec) -> std::io::Result<Vec<u8>> {
    build_with(spec, manifest(spec))
}

pub fn build_with(spec: &Spec, m: Manifest<'_>) -> std::io::Result<Vec<u8>> {
    let opts = EncoderOptions {
        chunk_size: spec.chunk_size,
        check_policy: spec.check_policy,
        ..EncoderOptions::default()
    };
    let mut enc = Encoder::new(Cursor::new(Vec::new()), opts, spec.full, spec.specials)?;
    for e in &spec.entries {
        let (kind, content) = match &e.kind {
            K::File(c) => (
                EntryKind::File {
                    size: c.len() as u64,
                    digest: *blake3::hash(c).as_bytes(),
                },
                Some(c.as_slice()),
            ),
            K::Dir => (EntryKind::Dir, None),
            K::Symlink(t) => (EntryKind::Symlink { target: t }, None),
            K::Hardlink(t) => (EntryKind::Hardlink { target: t }, None),
            K::Delete => (EntryKind::Delete, None),
            K::Fifo => (EntryKind::Fifo, None),
            K::Socket => (EntryKind::Socket, None),
            K::CharDev => (EntryKind::CharDevice { major: 1, minor: 3 }, None),
        };
        let h = EntryHeader {
            path: &e.path,
            kind,
            mode: e.mode,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
        };
        let mut c = content.map(Cursor::new);
        enc.add(&h, c.as_mut().map(|c| c as &mut dyn std::io::Read))?;
    }
    let mut out = Vec::new();
    enc.finish(m, &spec.keys, &mut out)?;
    Ok(out)
}

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

/// Decodes `bytes` fed in pieces cut at `cuts` (sorted offsets), with the given backend.
pub fn decode_with<Z: Decompressor>(
    bytes: &[u8],
    cuts: &[usize],
    trust: Trust<'_>,
    limits: Limits,
    z: Z,
) -> (Vec<Ev>, Result<(), Error>) {
    let (m, w, r) = Buffers::required(&limits, 64 * 1024);
    let (mut mb, mut wb, mut rb) = (vec![0u8; m], vec![0u8; w], vec![0u8; r]);
    let mut d = Decoder::new(
        trust,
        limits,
        z,
        Buffers {
            manifest: &mut mb,
            wire: &mut wb,
            raw: &mut rb,
        },
    );
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

/// Decodes with the pinned test key and libzstd, in one piece.
pub fn decode(bytes: &[u8]) -> (Vec<Ev>, Result<(), Error>) {
    let k = [trusted(&key(1))];
    decode_with(
        bytes,
        &[],
        Trust::Pinned {
            keys: &k,
            revoked: &[],
        },
        limits(),
        LibZstd::new().unwrap(),
    )
}

pub fn decode_ruzstd(bytes: &[u8], cuts: &[usize]) -> (Vec<Ev>, Result<(), Error>) {
    let k = [trusted(&key(1))];
    decode_with(
        bytes,
        cuts,
        Trust::Pinned {
            keys: &k,
            revoked: &[],
        },
        limits(),
        RuZstd::new(),
    )
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
    let text: Vec<u8> = b"hello molt\n"
        .iter()
        .copied()
        .cycle()
        .take(40_000)
        .collect();
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
