//! Bundle format v1 end to end: round trips, any input split, truncation, bit flips, signatures, policy rules, limits and bombs.

mod common;

use common::*;
use molt_engine::bundle::format::{EntryTable, KeyId, Payload};
use molt_engine::bundle::zstd::{LibZstd, RuZstd};
use molt_engine::bundle::{Decoder, Specials, Trust, TrustedKey};
use molt_engine::error::{LimitKind, Rule};
use molt_engine::{Error, Limits};
use proptest::prelude::*;

fn sample() -> Vec<u8> {
    build(&Spec {
        entries: sample_tree(),
        ..Spec::default()
    })
}

#[test]
fn round_trip_reproduces_every_entry() {
    let tree = sample_tree();
    let bytes = sample();
    let (evs, r) = decode(&bytes);
    r.unwrap();
    assert_eq!(
        evs.first(),
        Some(&Ev::Manifest(Some(molt_engine::bundle::format::key_id(
            key(1).verifying_key().as_bytes()
        ))))
    );
    assert_eq!(evs.last(), Some(&Ev::Done));
    let got = files(&evs);
    assert_eq!(got.len(), tree.len());
    for (e, (path, content)) in tree.iter().zip(&got) {
        assert_eq!(&e.path, path);
        if let K::File(c) = &e.kind {
            assert_eq!(c, content, "{path}");
        }
    }
    // Every entry is bracketed by a start and an end.
    let starts = evs.iter().filter(|e| matches!(e, Ev::Start(..))).count();
    let ends = evs.iter().filter(|e| matches!(e, Ev::End)).count();
    assert_eq!((starts, ends), (tree.len(), tree.len()));
}

#[test]
fn both_zstd_backends_give_the_same_events() {
    let bytes = sample();
    let (a, ra) = decode(&bytes);
    let (b, rb) = decode_ruzstd(&bytes, &[]);
    ra.unwrap();
    rb.unwrap();
    assert_eq!(a, b);
}

#[test]
fn manifest_is_readable_after_verification() {
    let spec = Spec {
        entries: sample_tree(),
        ..Spec::default()
    };
    let bytes = build(&spec);
    let limits = Limits::DEFAULT;
    let mut bufs = Bufs::sized(&limits, limits.max_chunk_size);
    let mut d = Decoder::new(pinned(), limits, LibZstd::new().unwrap(), bufs.lend());
    let f = d.feed(&bytes).unwrap();
    assert!(matches!(
        f.event,
        Some(molt_engine::bundle::Event::ManifestVerified { .. })
    ));
    let m = d.manifest().unwrap();
    assert_eq!(m.version, "1.0.0");
    assert_eq!(m.compatible, "test-board");
    assert_eq!(m.entries.count as usize, sample_tree().len());
    assert_eq!(m.check_compatible("other-board"), Err(Error::Incompatible));
    assert_eq!(
        m.check_floor(6),
        Err(Error::Downgrade {
            release: 5,
            floor: 6
        })
    );
    assert_eq!(m.check_floor(5), Ok(()));
}

#[test]
fn empty_bundle_round_trips() {
    let bytes = build(&Spec::default());
    let (evs, r) = decode(&bytes);
    r.unwrap();
    assert_eq!(evs.len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// Any split of the input yields exactly the same events.
    #[test]
    fn every_split_gives_the_same_events(mut cuts in proptest::collection::vec(0usize..70_000, 0..40)) {
        let bytes = sample();
        cuts.sort_unstable();
        let (whole, rw) = decode(&bytes);
        let (split, rs) = decode_ruzstd(&bytes, &cuts);
        prop_assert!(rw.is_ok() && rs.is_ok());
        prop_assert_eq!(whole, split);
    }

    /// Generated trees of random files round-trip.
    #[test]
    fn generated_trees_round_trip(sizes in proptest::collection::vec(0usize..40_000, 1..12), seed in any::<u64>()) {
        let mut entries = vec![dir("d")];
        for (i, s) in sizes.iter().enumerate() {
            entries.push(file(&format!("d/f{i:03}"), &noise(seed ^ i as u64, *s)));
        }
        let bytes = build(&Spec { entries: entries.clone(), ..Spec::default() });
        let (evs, r) = decode(&bytes);
        prop_assert!(r.is_ok());
        let got = files(&evs);
        for (e, (p, c)) in entries.iter().zip(&got) {
            prop_assert_eq!(&e.path, p);
            if let K::File(want) = &e.kind { prop_assert_eq!(want, c); }
        }
    }
}

/// A small bundle (two chunks) so that every truncation length can be tried.
fn small() -> Vec<u8> {
    let big: Vec<u8> = noise(3, 20_000);
    build(&Spec {
        entries: vec![
            dir("a"),
            file("a/b", b"bee"),
            file("a/c", &big),
            symlink("a/d", "b"),
        ],
        ..Spec::default()
    })
}

#[test]
fn truncation_at_every_length_is_a_specific_error() {
    let bytes = small();
    for len in 0..bytes.len() {
        let (_, r) = decode_ruzstd(&bytes[..len], &[]);
        assert_eq!(r, Err(Error::Truncated { at: len as u64 }), "length {len}");
    }
    decode_ruzstd(&bytes, &[]).1.unwrap();
}

#[test]
fn bit_flips_anywhere_are_refused_without_panic() {
    let bytes = small();
    // 3000 flips sampled from noise: five bytes each, four for the position and one for the bit.
    for f in noise(0x1234_5678, 3000 * 5).chunks_exact(5) {
        let pos = u32::from_le_bytes([f[0], f[1], f[2], f[3]]) as usize % bytes.len();
        let bit = f[4] % 8;
        let mut b = bytes.clone();
        b[pos] ^= 1 << bit;
        let (_, r) = decode_ruzstd(&b, &[]);
        assert!(r.is_err(), "flip of bit {bit} at byte {pos} went unnoticed");
    }
}

#[test]
fn payload_change_is_caught_at_the_chunk_where_it_diverges() {
    let bytes = small();
    // The earlier chunks decode, the changed last one fails.
    let (evs, r) = decode(&last_frame_changed(&bytes));
    let chunk = refusal!(r, "chunk digest", Error::ChunkDigest { chunk, .. } => chunk);
    assert!(chunk >= 1, "chunk {chunk}");
    // Events from the earlier, verified chunk were delivered; none from the bad one.
    assert!(evs.iter().any(|e| matches!(e, Ev::Start(..))));
    assert!(!evs.contains(&Ev::Done));
}

#[test]
fn trailing_data_is_refused() {
    let mut b = small();
    let n = b.len() as u64;
    b.push(0);
    assert_eq!(decode(&b).1, Err(Error::TrailingData { at: n }));
}

/// Decodes `bytes` in one piece with ruzstd, trusting `keys` except those `revoked`.
fn decode_trusting(bytes: &[u8], keys: &[TrustedKey], revoked: &[KeyId]) -> Result<(), Error> {
    let trust = Trust::Pinned { keys, revoked };
    decode_with(bytes, &[], trust, limits(), RuZstd::new()).1
}

#[test]
fn unknown_revoked_and_wrong_keys_are_refused() {
    let bytes = small();
    let other = [trusted(&key(9))];
    let r = decode_trusting(&bytes, &other, &[]);
    assert!(matches!(r, Err(Error::UnknownKey { .. })), "{r:?}");
    let mine = [trusted(&key(1))];
    let r = decode_trusting(&bytes, &mine, &[mine[0].id]);
    assert_eq!(r, Err(Error::RevokedKey { key_id: mine[0].id }));
    // A manifest byte changed after signing.
    let mut b = bytes.clone();
    let manifest_byte = 16 + 4 + 72 + 3;
    b[manifest_byte] ^= 1;
    let (_, r) = decode(&b);
    assert_eq!(r, Err(Error::BadSignature { key_id: mine[0].id }));
    // No signatures at all.
    let mut b = bytes.clone();
    b[16] = 0;
    assert_eq!(decode(&b).1, Err(Error::BadSignatureCount { count: 0 }));
}

#[test]
fn rotation_accepts_either_of_two_signatures() {
    let spec = Spec {
        entries: sample_tree(),
        keys: vec![key(1), key(2)],
        ..Spec::default()
    };
    let bytes = build(&spec);
    for k in [key(1), key(2)] {
        let t = [trusted(&k)];
        decode_trusting(&bytes, &t, &[]).unwrap();
    }
}

#[test]
fn inspect_only_skips_signatures_but_not_the_chain() {
    let bytes = small();
    let (evs, r) = decode_with(&bytes, &[], Trust::InspectOnly, limits(), RuZstd::new());
    r.unwrap();
    assert_eq!(evs[0], Ev::Manifest(None));
    let mut b = bytes.clone();
    let last = b.len() - 3;
    b[last] ^= 1;
    let (_, r) = decode_with(&b, &[], Trust::InspectOnly, limits(), RuZstd::new());
    assert!(matches!(r, Err(Error::ChunkDigest { .. })));
}

#[test]
fn not_a_bundle_and_future_versions_are_named() {
    assert_eq!(
        decode(b"PK\x03\x04 this is a zip file, not a bundle").1,
        Err(Error::BadMagic)
    );
    let mut b = small();
    b[8] = 2;
    assert_eq!(
        decode(&b).1,
        Err(Error::UnsupportedVersion { major: 2, minor: 0 })
    );
}

/// Builds with the policy off in the encoder, then expects the decoder to refuse with `rule`.
fn refused(entries: Vec<E>, full: bool, specials: Specials) -> Result<(), Error> {
    let spec = Spec {
        entries,
        full,
        specials,
        check_policy: false,
        ..Spec::default()
    };
    // The encoder with its policy on refuses the same input.
    assert!(try_build(&Spec {
        check_policy: true,
        ..spec.clone()
    })
    .is_err());
    decode(&build(&spec)).1
}

fn rule(r: Result<(), Error>) -> Rule {
    refusal!(r, "policy", Error::Policy { rule, .. } => rule)
}

#[test]
fn policy_dotdot() {
    assert_eq!(
        rule(refused(
            vec![file("../etc/passwd", b"x")],
            false,
            Specials::default()
        )),
        Rule::DotComponent
    );
    assert_eq!(
        rule(refused(
            vec![dir("a"), file("a/../../x", b"x")],
            true,
            Specials::default()
        )),
        Rule::DotComponent
    );
}

#[test]
fn policy_absolute() {
    assert_eq!(
        rule(refused(
            vec![file("/etc/passwd", b"x")],
            false,
            Specials::default()
        )),
        Rule::AbsolutePath
    );
}

#[test]
fn policy_empty_component_and_empty_path() {
    assert_eq!(
        rule(refused(
            vec![file("a//b", b"x")],
            false,
            Specials::default()
        )),
        Rule::EmptyComponent
    );
    assert_eq!(
        rule(refused(vec![file("a/", b"x")], false, Specials::default())),
        Rule::EmptyComponent
    );
    assert_eq!(
        rule(refused(vec![file("", b"x")], false, Specials::default())),
        Rule::EmptyPath
    );
}

#[test]
fn policy_nul() {
    assert_eq!(
        rule(refused(
            vec![file("a\0b", b"x")],
            false,
            Specials::default()
        )),
        Rule::NulByte
    );
}

#[test]
fn policy_duplicates_and_order() {
    assert_eq!(
        rule(refused(
            vec![file("a", b"x"), file("a", b"y")],
            false,
            Specials::default()
        )),
        Rule::NotSorted
    );
    assert_eq!(
        rule(refused(
            vec![file("b", b"x"), file("a", b"y")],
            false,
            Specials::default()
        )),
        Rule::NotSorted
    );
}

/// Symlink targets are data: one rule (non-empty, no NUL, within `max_path_len`), not a
/// lexical guess at where a chain of links leads. `d/s -> ..` plus
/// `d/t -> s/d/s/../../canary` passed the old link-by-link check and resolved outside the
/// slot on the host; now every target is accepted and molt never follows one on the host.
#[test]
fn symlink_targets_are_data_only_empty_and_nul_are_refused() {
    for (entries, full) in [
        (vec![symlink("l", "../outside")], false),
        (vec![dir("a"), symlink("a/l", "../../x")], true),
        (vec![symlink("l", "/../etc")], false),
        (
            vec![
                dir("d"),
                symlink("d/s", ".."),
                symlink("d/t", "s/d/s/d/s/d/s/../../../../../../canary"),
            ],
            true,
        ),
    ] {
        let bytes = build(&Spec {
            entries,
            full,
            ..Spec::default()
        });
        decode(&bytes).1.unwrap();
    }
    for target in ["", "a\0b"] {
        assert_eq!(
            rule(refused(
                vec![symlink("l", target)],
                false,
                Specials::default()
            )),
            Rule::BadSymlinkTarget
        );
    }
}

#[test]
fn absolute_symlink_inside_the_snapshot_is_allowed() {
    let bytes = build(&Spec {
        entries: vec![symlink("l", "/etc/app.conf")],
        full: false,
        ..Spec::default()
    });
    decode(&bytes).1.unwrap();
}

#[test]
fn policy_write_through_symlink() {
    assert_eq!(
        rule(refused(
            vec![symlink("a", "b"), file("a/passwd", b"x")],
            false,
            Specials::default()
        )),
        Rule::BeneathNonDirectory
    );
    assert_eq!(
        rule(refused(
            vec![file("a", b"x"), file("a/b", b"y")],
            false,
            Specials::default()
        )),
        Rule::BeneathNonDirectory
    );
    assert_eq!(
        rule(refused(
            vec![delete("a"), file("a/b", b"y")],
            false,
            Specials::default()
        )),
        Rule::BeneathNonDirectory
    );
}

#[test]
fn policy_missing_parent_in_full_bundle() {
    assert_eq!(
        rule(refused(vec![file("a/b", b"x")], true, Specials::default())),
        Rule::MissingParent
    );
    // In a patch bundle the parent may already exist in the active snapshot.
    decode(&build(&Spec {
        entries: vec![file("a/b", b"x")],
        full: false,
        ..Spec::default()
    }))
    .1
    .unwrap();
}

#[test]
fn policy_delete_only_in_patch() {
    assert_eq!(
        rule(refused(vec![delete("a")], true, Specials::default())),
        Rule::DeleteInFullBundle
    );
    decode(&build(&Spec {
        entries: vec![delete("a")],
        full: false,
        ..Spec::default()
    }))
    .1
    .unwrap();
}

#[test]
fn policy_specials_need_declaration() {
    let hl = entry("b", K::Hardlink("a".into()), 0o644);
    assert_eq!(
        rule(refused(
            vec![file("a", b"x"), hl.clone()],
            false,
            Specials::default()
        )),
        Rule::UndeclaredHardlink
    );
    let dev = entry("null", K::CharDev, 0o666);
    assert_eq!(
        rule(refused(vec![dev.clone()], false, Specials::default())),
        Rule::UndeclaredDevice
    );
    let fifo = entry("p", K::Fifo, 0o644);
    assert_eq!(
        rule(refused(vec![fifo.clone()], false, Specials::default())),
        Rule::UndeclaredFifo
    );
    let sock = entry("s", K::Socket, 0o644);
    assert_eq!(
        rule(refused(vec![sock.clone()], false, Specials::default())),
        Rule::UndeclaredSocket
    );
    let suid = entry("su", K::File(b"x".to_vec()), 0o4755);
    assert_eq!(
        rule(refused(vec![suid.clone()], false, Specials::default())),
        Rule::UndeclaredSetid
    );
    let sgid = entry("sg", K::File(b"x".to_vec()), 0o2755);
    assert_eq!(
        rule(refused(vec![sgid], false, Specials::default())),
        Rule::UndeclaredSetid
    );
    // Declared, they pass.
    let all = Specials {
        setid: true,
        hardlinks: true,
        devices: true,
        fifos: true,
        sockets: true,
    };
    let spec = Spec {
        entries: vec![file("a", b"x"), hl, dev, fifo, sock, suid],
        full: false,
        specials: all,
        ..Spec::default()
    };
    decode(&build(&spec)).1.unwrap();
}

#[test]
fn policy_hardlink_target_must_come_earlier() {
    let all = Specials {
        hardlinks: true,
        ..Specials::default()
    };
    let hl = entry("a", K::Hardlink("z".into()), 0o644);
    assert_eq!(rule(refused(vec![hl], false, all)), Rule::BadHardlink);
    let into_molt = entry("a", K::Hardlink(".molt/p".into()), 0o644);
    assert_eq!(
        rule(refused(vec![into_molt], false, all)),
        Rule::BadHardlink
    );
}

#[test]
fn policy_path_components_are_at_most_255_bytes() {
    let long = entry(
        &format!("a{}", "n".repeat(255)),
        K::File(b"x".to_vec()),
        0o644,
    );
    assert_eq!(
        rule(refused(vec![long], false, Specials::default())),
        Rule::LongComponent
    );
    let ok = entry(&"n".repeat(255), K::File(b"x".to_vec()), 0o644);
    let bytes = build(&Spec {
        entries: vec![ok],
        full: false,
        ..Spec::default()
    });
    decode(&bytes).1.unwrap();
}

#[test]
fn policy_bad_mode_and_reserved_dir() {
    let m = entry("a", K::File(b"x".to_vec()), 0o100644);
    assert_eq!(
        rule(refused(vec![m], false, Specials::default())),
        Rule::BadMode
    );
    assert_eq!(
        rule(refused(
            vec![symlink(".molt/x", "y")],
            false,
            Specials::default()
        )),
        Rule::ReservedPath
    );
}

#[test]
fn failed_path_names_the_offender() {
    let spec = Spec {
        entries: vec![file("ok", b"1"), file("../evil", b"x")],
        full: false,
        check_policy: false,
        ..Spec::default()
    };
    let bytes = build(&spec);
    let limits = Limits::DEFAULT;
    let mut bufs = Bufs::sized(&limits, limits.max_chunk_size);
    let mut d = Decoder::new(pinned(), limits, RuZstd::new(), bufs.lend());
    let mut rest = &bytes[..];
    let err = loop {
        match d.feed(rest) {
            Ok(f) => {
                rest = &rest[f.consumed..];
                if f.event.is_none() {
                    panic!("decoded a bad bundle")
                }
            }
            Err(e) => break e,
        }
    };
    assert_eq!(
        err,
        Error::Policy {
            rule: Rule::DotComponent,
            entry: 1
        }
    );
    assert_eq!(d.failed_path(), "../evil");
    // A failed decoder accepts nothing more.
    assert_eq!(d.feed(b"more").unwrap_err(), Error::Finished);
}

fn decode_limited(bytes: &[u8], l: Limits) -> Result<(), Error> {
    decode_pinned(bytes, &[], l, RuZstd::new()).1
}

fn limit(r: Result<(), Error>) -> LimitKind {
    refusal!(r, "limit", Error::Limit { limit, .. } => limit)
}

#[test]
fn each_limit_is_enforced() {
    let bytes = sample();
    let d = Limits::DEFAULT;
    assert_eq!(
        limit(decode_limited(
            &bytes,
            Limits {
                max_manifest_len: 40,
                ..d
            }
        )),
        LimitKind::ManifestLen
    );
    assert_eq!(
        limit(decode_limited(
            &bytes,
            Limits {
                max_entries: 3,
                ..d
            }
        )),
        LimitKind::Entries
    );
    assert_eq!(
        limit(decode_limited(
            &bytes,
            Limits {
                max_path_len: 8,
                ..d
            }
        )),
        LimitKind::PathLen
    );
    assert_eq!(
        limit(decode_limited(
            &bytes,
            Limits {
                max_path_depth: 1,
                ..d
            }
        )),
        LimitKind::PathDepth
    );
    assert_eq!(
        limit(decode_limited(
            &bytes,
            Limits {
                max_file_size: 1000,
                ..d
            }
        )),
        LimitKind::FileSize
    );
    assert_eq!(
        limit(decode_limited(
            &bytes,
            Limits {
                max_total_size: 1000,
                ..d
            }
        )),
        LimitKind::TotalSize
    );
    assert_eq!(
        limit(decode_limited(
            &bytes,
            Limits {
                max_payload_len: 1000,
                ..d
            }
        )),
        LimitKind::PayloadLen
    );
    let big = build(&Spec {
        entries: sample_tree(),
        chunk_size: 64 * 1024,
        ..Spec::default()
    });
    assert_eq!(
        limit(decode_limited(
            &big,
            Limits {
                max_chunk_size: 32 * 1024,
                ..d
            }
        )),
        LimitKind::ChunkSize
    );
}

#[test]
fn many_empty_files_hit_the_entry_limit() {
    let mut entries = vec![dir("d")];
    for i in 0..2001 {
        entries.push(file(&format!("d/{i:06}"), b""));
    }
    let bytes = build(&Spec {
        entries,
        ..Spec::default()
    });
    assert_eq!(
        limit(decode_limited(
            &bytes,
            Limits {
                max_entries: 2000,
                ..Limits::DEFAULT
            }
        )),
        LimitKind::Entries
    );
    decode_limited(&bytes, Limits::DEFAULT).unwrap();
}

fn crafted_manifest<'a>(spec: &'a Spec, count: u32) -> molt_engine::bundle::Manifest<'a> {
    let mut m = manifest(spec);
    m.payload = Payload {
        chunk_count: 0,
        chunk_size: 16 * 1024,
        wire_len: 0,
        raw_len: 0,
        first_chunk: [0; 32],
    };
    m.entries = EntryTable {
        count,
        digest: [0; 32],
        file_bytes: 0,
        specials: Specials::default(),
    };
    m
}

#[test]
fn a_huge_zstd_window_is_refused_before_decompression() {
    let spec = Spec::default();
    // Magic, descriptor (2-byte content size, not single segment), window 8 MiB, content size 300.
    let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD, 0x40, 13 << 3];
    frame.extend_from_slice(&(300u16 - 256).to_le_bytes());
    frame.extend_from_slice(&[1, 0, 0]);
    let b = assemble(crafted_manifest(&spec, 1), &[(frame, 300)], &spec.keys);
    let r = decode_limited(
        &b,
        Limits {
            max_chunk_size: 1024 * 1024,
            ..Limits::DEFAULT
        },
    );
    assert!(
        matches!(r, Err(Error::BadFrame { chunk: 0, why }) if why.contains("window")),
        "{r:?}"
    );
}

/// A chunk of `raw` compressed as one frame, followed by `extra` bytes.
fn frame_then(raw: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut frame = zstd::bulk::compress(raw, 3).unwrap();
    frame.extend_from_slice(extra);
    frame
}

/// Decodes `b` with both backends and with a chain-only decoder (which decompresses
/// nothing): each must refuse chunk 0 with a frame error containing `why`.
fn refused_by_every_decoder(b: &[u8], why: &str) {
    let k = [trusted(&key(1))];
    let pinned = || Trust::Pinned {
        keys: &k,
        revoked: &[],
    };
    let chain_only = {
        let l = Limits::DEFAULT;
        let mut bufs = Bufs::chain_only(&l, 64 * 1024);
        let mut d = Decoder::new(pinned(), l, RuZstd::new(), bufs.lend()).chain_only();
        let mut rest = b;
        loop {
            match d.feed(rest) {
                Err(e) => break Err(e),
                Ok(f) if f.consumed == 0 && f.event.is_none() => break d.finish(),
                Ok(f) => rest = &rest[f.consumed..],
            }
        }
    };
    for (how, r) in [
        (
            "ruzstd",
            decode_with(b, &[], pinned(), Limits::DEFAULT, RuZstd::new()).1,
        ),
        (
            "libzstd",
            decode_with(b, &[], pinned(), Limits::DEFAULT, LibZstd::new().unwrap()).1,
        ),
        ("chain only", chain_only),
    ] {
        assert!(
            matches!(r, Err(Error::BadFrame { chunk: 0, why: w }) if w.contains(why)),
            "{how}, {why}: {r:?}"
        );
    }
}

#[test]
fn a_chunk_is_exactly_one_zstd_frame() {
    let spec = Spec::default();
    let raw = b"hello, frames. ".repeat(20);
    let n = raw.len() as u32;
    let one = |extra: &[u8]| {
        assemble(
            crafted_manifest(&spec, 1),
            &[(frame_then(&raw, extra), n)],
            &spec.keys,
        )
    };
    // The plain frame passes the frame check (the crafted entries fail later).
    let plain = decode_limited(&one(&[]), Limits::DEFAULT);
    assert!(!matches!(plain, Err(Error::BadFrame { .. })), "{plain:?}");

    // An empty frame declaring a 96 MiB window after the real one: ruzstd allocated
    // 128 MiB for it when only the first frame's header was checked.
    let mut empty = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, (16 << 3) | 4];
    empty.extend_from_slice(&[1, 0, 0]);
    refused_by_every_decoder(&one(&empty), "after the zstd frame");
    // A skippable frame: signed bytes that no decoder would ever look at.
    let mut skip = 0x184D_2A50u32.to_le_bytes().to_vec();
    skip.extend_from_slice(&4u32.to_le_bytes());
    skip.extend_from_slice(b"hide");
    refused_by_every_decoder(&one(&skip), "after the zstd frame");
    // One stray byte, and the same frame twice.
    refused_by_every_decoder(&one(&[0]), "after the zstd frame");
    refused_by_every_decoder(&one(&frame_then(&raw, &[])), "after the zstd frame");
    // A frame cut short.
    for cut in [1, 4] {
        let mut f = frame_then(&raw, &[]);
        f.truncate(f.len() - cut);
        let b = assemble(crafted_manifest(&spec, 1), &[(f, n)], &spec.keys);
        refused_by_every_decoder(&b, "cut short");
    }
}

#[test]
fn a_frame_that_inflates_past_its_signed_size_is_refused() {
    let spec = Spec::default();
    // 10 MiB of zeros compress to a few hundred bytes; the chunk claims 1000.
    let zeros = vec![0u8; 10 * 1024 * 1024];
    let frame = zstd::bulk::compress(&zeros, 19).unwrap();
    let b = assemble(
        crafted_manifest(&spec, 1),
        &[(frame.clone(), 1000)],
        &spec.keys,
    );
    assert!(matches!(
        decode_limited(&b, Limits::DEFAULT),
        Err(Error::BadFrame { .. })
    ));
    // A frame with no declared content size is refused too, whatever it would inflate to.
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_contentsize(false).unwrap();
    std::io::Write::write_all(&mut enc, &zeros[..100_000]).unwrap();
    let frame = enc.finish().unwrap();
    let b = assemble(crafted_manifest(&spec, 1), &[(frame, 1000)], &spec.keys);
    assert!(matches!(
        decode_limited(&b, Limits::DEFAULT),
        Err(Error::BadFrame { .. })
    ));
}

#[test]
fn entries_missing_or_unlisted_are_refused() {
    // The manifest lists two entries but the payload carries one.
    let spec = Spec {
        entries: vec![file("a", b"x")],
        full: false,
        ..Spec::default()
    };
    let good = build(&spec);
    let (evs, r) = decode(&good);
    r.unwrap();
    assert!(evs.len() > 2);
    let one = {
        let mut enc_spec = spec.clone();
        enc_spec.entries.push(file("b", b"y"));
        enc_spec
    };
    // Sign a manifest claiming entries the payload lacks: take the two-entry manifest's counts
    // with the one-entry payload by re-assembling the frames.
    let frame = zstd::bulk::compress(&raw_entries(&spec.entries), 3).unwrap();
    let raw_len = raw_entries(&spec.entries).len() as u32;
    // `spec`'s manifest with one chunk of 16 KiB and an entry table that claims
    // `count` entries of `file_bytes` bytes in all.
    let claiming = |spec, count, file_bytes| {
        let mut m = manifest(spec);
        m.payload.chunk_size = 16 * 1024;
        m.entries = EntryTable {
            count,
            digest: [0; 32],
            file_bytes,
            specials: Specials::default(),
        };
        m
    };
    let mut m = claiming(&one, 2, 2);
    m.payload.raw_len = raw_len as u64;
    let b = assemble(m, &[(frame.clone(), raw_len)], &spec.keys);
    assert!(
        matches!(decode(&b).1, Err(Error::EntryTable { .. })),
        "{:?}",
        decode(&b).1
    );
    // A manifest listing zero entries with a payload that carries one.
    let m = claiming(&spec, 0, 0);
    let b = assemble(m, &[(frame, raw_len)], &spec.keys);
    assert!(
        matches!(
            decode(&b).1,
            Err(Error::EntryTable { .. }) | Err(Error::Field { .. })
        ),
        "{:?}",
        decode(&b).1
    );
}

/// The raw entry stream for `entries`, as the encoder lays it out in one chunk.
fn raw_entries(entries: &[E]) -> Vec<u8> {
    use molt_engine::bundle::{EntryHeader, EntryKind};
    let mut out = Vec::new();
    for e in entries {
        let K::File(c) = &e.kind else {
            panic!("files only")
        };
        let h = EntryHeader {
            path: &e.path,
            kind: EntryKind::File {
                size: c.len() as u64,
                digest: *blake3::hash(c).as_bytes(),
            },
            mode: e.mode,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
        };
        let enc = postcard::to_allocvec(&h).unwrap();
        out.extend_from_slice(&(enc.len() as u16).to_le_bytes());
        out.extend_from_slice(&enc);
        out.extend_from_slice(c);
    }
    out
}

#[test]
fn malicious_manifest_fields_are_refused() {
    use molt_engine::bundle::{Command, Package, PackageManager};
    let spec = Spec::default();
    let check = |f: &dyn Fn(&mut molt_engine::bundle::Manifest<'_>)| {
        let mut m = manifest(&spec);
        f(&mut m);
        let b = build_with(
            &Spec {
                check_policy: false,
                ..spec.clone()
            },
            m,
        )
        .unwrap();
        decode(&b).1
    };
    let field = |r: Result<(), Error>| refusal!(r, "field", Error::Field { field, .. } => field);
    assert_eq!(field(check(&|m| m.version = "../../etc")), "version");
    assert_eq!(field(check(&|m| m.version = "")), "version");
    assert_eq!(field(check(&|m| m.compatible = "")), "compatible");
    // Package names that would escape a directory or pass as an option, and a file outside the bundle.
    let packages = [
        (PackageManager::Apt, "../evil", None, "recipe.packages.name"),
        (
            PackageManager::Pip,
            "--index-url=http://x",
            None,
            "recipe.packages.name",
        ),
        (
            PackageManager::Apt,
            "app",
            Some("/tmp/x.deb"),
            "recipe.packages.file",
        ),
        (PackageManager::Npm, "a/b", None, "recipe.packages.name"),
    ];
    for (manager, name, file, expected) in packages {
        let package = Package {
            manager,
            name,
            version: None,
            file,
        };
        assert_eq!(
            field(check(&|m| {
                m.recipe.packages.push(package).unwrap();
            })),
            expected,
            "{name}"
        );
    }
    let command = |script, timeout_secs| Command {
        script,
        chroot: false,
        timeout_secs,
    };
    let no_timeout = command("echo hi", 0);
    assert_eq!(
        field(check(&|m| m.recipe.before = Some(no_timeout))),
        "recipe.before"
    );
    let nul = command("echo\0hi", 5);
    assert_eq!(
        field(check(&|m| m.recipe.after = Some(nul))),
        "recipe.after"
    );
    // Huge numbers in the payload binding.
    let mut m = manifest(&spec);
    m.payload = Payload {
        chunk_count: u32::MAX,
        chunk_size: u32::MAX,
        wire_len: u64::MAX,
        raw_len: u64::MAX,
        first_chunk: [0; 32],
    };
    let b = assemble(m, &[], &spec.keys);
    assert!(decode(&b).1.is_err());
}

#[test]
fn invalid_utf8_in_the_manifest_is_malformed() {
    let spec = Spec::default();
    let mut m = manifest(&spec);
    m.comment = "\u{e9}\u{e9}\u{e9}";
    let b = assemble(m, &[], &spec.keys);
    // Corrupt the UTF-8 of the comment and re-sign: still refused, as malformed.
    let mb_start = 16 + 4 + 72;
    let pos = b[mb_start..]
        .windows(2)
        .position(|w| w == [0xc3, 0xa9])
        .unwrap()
        + mb_start;
    let mut raw = b[mb_start..].to_vec();
    raw[pos - mb_start] = 0xff;
    let resigned = resign(&b[..16], &raw);
    assert!(
        matches!(
            decode(&resigned).1,
            Err(Error::Malformed {
                what: "manifest",
                ..
            })
        ),
        "{:?}",
        decode(&resigned).1
    );
}

/// Signs `manifest` (arbitrary bytes) with the test key under the given header.
fn resign(header: &[u8], manifest: &[u8]) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let mut hdr = [0u8; 16];
    hdr.copy_from_slice(header);
    hdr[12..16].copy_from_slice(&(manifest.len() as u32).to_le_bytes());
    let msg = molt_engine::bundle::verify::signed_message(&hdr, manifest);
    let k = key(1);
    let mut out = hdr.to_vec();
    out.extend_from_slice(&[1, 0, 0, 0]);
    out.extend_from_slice(&molt_engine::bundle::format::key_id(
        k.verifying_key().as_bytes(),
    ));
    out.extend_from_slice(&k.sign(&msg).to_bytes());
    out.extend_from_slice(manifest);
    out
}

#[test]
fn fuzz_entry_point_survives_garbage() {
    molt_engine::bundle::fuzz_decode(&[]);
    molt_engine::bundle::fuzz_decode(b"MOLTBNDL\x01\x00\x00\x00\xff\xff\xff\xff\x01\x00\x00\x00");
    molt_engine::bundle::fuzz_decode(&small());
}

#[test]
fn a_short_file_that_is_not_a_bundle_says_so() {
    assert_eq!(decode(b"hello").1, Err(Error::BadMagic));
    assert_eq!(decode(b"MOLT").1, Err(Error::Truncated { at: 4 }));
}

#[test]
fn npm_scoped_packages_are_accepted_and_other_slashes_refused() {
    use molt_engine::bundle::{Package, PackageManager};
    let spec = Spec::default();
    let with = |p: Package<'static>| {
        let mut m = manifest(&spec);
        m.recipe.packages.push(p).unwrap();
        build_with(&spec, m)
    };
    let scoped = Package {
        manager: PackageManager::Npm,
        name: "@types/node",
        version: Some("20.1.0"),
        file: None,
    };
    decode(&with(scoped).unwrap()).1.unwrap();
    for bad in ["@/node", "@types/../x", "@types/a/b"] {
        let p = Package {
            manager: PackageManager::Npm,
            name: bad,
            version: None,
            file: None,
        };
        assert!(with(p).is_err(), "{bad}");
    }
    let apt = Package {
        manager: PackageManager::Apt,
        name: "@types/node",
        version: None,
        file: None,
    };
    assert!(with(apt).is_err());
}

#[test]
fn the_encoder_refuses_what_devices_would() {
    use molt_engine::bundle::encoder::{Encoder, EncoderOptions};
    use molt_engine::bundle::{EntryHeader, EntryKind};
    // Content that does not match the digest given in the header.
    let mut enc = Encoder::new(
        std::io::Cursor::new(Vec::new()),
        EncoderOptions::default(),
        false,
        Specials::default(),
    )
    .unwrap();
    let h = EntryHeader {
        path: "a",
        kind: EntryKind::File {
            size: 3,
            digest: [0; 32],
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
    };
    let err = enc.add(&h, Some(&mut &b"abc"[..])).unwrap_err();
    assert!(
        err.to_string().contains("does not match its digest"),
        "{err}"
    );
    // A manifest over the device limit.
    let spec = Spec::default();
    let long = "x".repeat(30_000);
    let mut m = manifest(&spec);
    m.recipe.before = Some(molt_engine::bundle::Command {
        script: &long,
        chroot: false,
        timeout_secs: 5,
    });
    m.recipe.after = Some(molt_engine::bundle::Command {
        script: &long,
        chroot: false,
        timeout_secs: 5,
    });
    m.recipe.health_check = Some(molt_engine::bundle::HealthCheck {
        command: molt_engine::bundle::Command {
            script: &long,
            chroot: false,
            timeout_secs: 5,
        },
        attempts: 1,
        interval_secs: 1,
    });
    let err = build_with(&spec, m).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
}

/// `bundle::chunk` reads what host tools need without the decoder: the head (key ids,
/// where the payload starts) and the chunk chain, checked a whole chunk at a time, the
/// digest before anything else, so a flipped byte stops the walk at that chunk.
#[test]
fn the_head_and_the_chain_read_without_the_decoder() {
    use molt_engine::bundle::chunk::{could_be_bundle, Chain, ChunkHeader, Head};
    use molt_engine::bundle::Manifest;
    let bytes = build(&Spec {
        entries: vec![file("a", &molt_engine::testing::noise(3, 100_000))],
        chunk_size: 16 * 1024,
        ..Spec::default()
    });
    assert!(could_be_bundle(&bytes[..3]) && !could_be_bundle(b"MOLTX"));
    assert_eq!(Head::parse(b"not a bundle at all!"), Err(Error::BadMagic));
    assert!(matches!(
        Head::parse(&bytes[..12]),
        Err(Error::Truncated { .. })
    ));
    let head = Head::parse(&bytes).unwrap();
    assert!(head.supported());
    let ids: Vec<_> = head.key_ids(&bytes).collect();
    assert_eq!(
        ids,
        vec![molt_engine::bundle::format::key_id(
            &key(1).verifying_key().to_bytes()
        )]
    );
    let start = head.payload_start() as usize;
    let manifest = Manifest::decode(&bytes[start - head.manifest_len as usize..start]).unwrap();
    let walk = |bytes: &[u8]| -> Result<u32, Error> {
        let mut chain = Chain::new(manifest.payload, 1 << 20);
        let mut at = start;
        while !chain.is_done() {
            let h = chain.header(&bytes[at..at + ChunkHeader::LEN], at as u64)?;
            chain.chunk(&bytes[at..at + h.chunk_len()], at as u64)?;
            at += h.chunk_len();
        }
        assert_eq!(at, bytes.len());
        Ok(chain.index())
    };
    let chunks = walk(&bytes).unwrap();
    assert!(chunks > 2, "{chunks} chunks");
    let mut bad = bytes.clone();
    let second = start + ChunkHeader::parse(&bytes[start..]).chunk_len() + ChunkHeader::LEN + 10;
    bad[second] ^= 1;
    assert!(matches!(
        walk(&bad),
        Err(Error::ChunkDigest { chunk: 1, .. })
    ));
}
