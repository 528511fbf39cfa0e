//! Resume checkpoints: a decoder restarted from any chunk boundary reproduces exactly the events of an uninterrupted run; damaged or foreign checkpoints are refused.

mod common;

use common::*;
use molt_engine::bundle::zstd::LibZstd;
use molt_engine::bundle::{Decoder, Event, Resume, Trust, CHECKPOINT_MAX};
use molt_engine::Error;

/// A decoder that has been fed `head` (the bundle's first bytes, through its manifest).
fn headed<'b, 'k>(
    bufs: &'b mut Bufs,
    trust: Trust<'k>,
    head: &[u8],
) -> Result<Decoder<'b, 'k, LibZstd>, Error> {
    let mut d = Decoder::new(trust, limits(), LibZstd::new().unwrap(), bufs.lend());
    let mut rest = head;
    while !rest.is_empty() {
        let f = d.feed(rest)?;
        rest = &rest[f.consumed..];
    }
    Ok(d)
}

fn record(ev: Event<'_>, evs: &mut Vec<Ev>) {
    match ev {
        Event::ManifestVerified { key_id } => evs.push(Ev::Manifest(key_id)),
        Event::EntryStart(h) => evs.push(Ev::Start(h.path.to_string(), format!("{:?}", h.kind))),
        Event::Data(d) => evs.push(Ev::Data(d.to_vec())),
        Event::EntryEnd => evs.push(Ev::End),
        Event::Done => evs.push(Ev::Done),
    }
}

/// Feeds `input` to the end, recording events; after every quiet point, offers a
/// checkpoint to `on_checkpoint` with the events so far.
fn run(
    d: &mut Decoder<'_, '_, LibZstd>,
    input: &[u8],
    step: usize,
    evs: &mut Vec<Ev>,
    mut on_checkpoint: impl FnMut(Vec<u8>, &[Ev]),
) -> Result<(), Error> {
    let mut cp = vec![0u8; CHECKPOINT_MAX];
    for piece in input.chunks(step.max(1)) {
        let mut rest = piece;
        loop {
            let f = d.feed(rest)?;
            rest = &rest[f.consumed..];
            match f.event {
                Some(ev) => record(ev, evs),
                None => break,
            }
        }
        if let Some(n) = d.checkpoint(&mut cp)? {
            on_checkpoint(cp[..n].to_vec(), evs);
        }
    }
    d.finish()
}

/// Feeds the rest of `bytes` from a resumed decoder's offset `r` to the end, in
/// pieces of 4096 bytes, recording events and taking no checkpoints.
fn run_rest(
    d: &mut Decoder<'_, '_, LibZstd>,
    bytes: &[u8],
    r: &Resume,
    evs: &mut Vec<Ev>,
) -> Result<(), Error> {
    run(d, &bytes[r.offset as usize..], 4096, evs, |_, _| {})
}

/// The bytes of the file being written when `evs` stops (the caller's "disk").
fn open_file_prefix(evs: &[Ev]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in evs {
        match e {
            Ev::Start(..) => out.clear(),
            Ev::Data(d) => out.extend_from_slice(d),
            _ => {}
        }
    }
    out
}

fn bundle() -> Vec<u8> {
    let mut entries = sample_tree();
    // Files larger than a chunk, so boundaries fall inside files as well as between entries.
    entries.push(dir("var"));
    entries.push(file("var/huge.bin", &noise(9, 140_000)));
    entries.push(file("var/small", b"tail"));
    build(&Spec {
        entries,
        chunk_size: 16 * 1024,
        ..Spec::default()
    })
}

#[test]
fn resuming_from_every_chunk_boundary_reproduces_the_stream() {
    let bytes = bundle();
    let trust = pinned();
    let mut bufs = Bufs::new();
    let mut d = Decoder::new(trust, limits(), LibZstd::new().unwrap(), bufs.lend());
    let mut full = Vec::new();
    let mut cps: Vec<(Vec<u8>, usize)> = Vec::new();
    run(&mut d, &bytes, 1000, &mut full, |cp, evs| {
        cps.push((cp, evs.len()))
    })
    .unwrap();
    let head_len = d.head_bytes().len() + d.manifest_bytes().len();
    drop(d);
    cps.dedup_by(|a, b| a.0 == b.0);
    assert!(cps.len() > 10, "only {} checkpoints", cps.len());

    let mut mid_file = 0;
    for (cp, seen) in &cps {
        let mut bufs = Bufs::new();
        let mut d = Decoder::new(trust, limits(), LibZstd::new().unwrap(), bufs.lend());
        let mut evs = Vec::new();
        // The bundle's first bytes again: the manifest is verified anew.
        let mut rest = &bytes[..head_len];
        loop {
            let f = d.feed(rest).unwrap();
            rest = &rest[f.consumed..];
            match f.event {
                Some(ev) => record(ev, &mut evs),
                None => break,
            }
        }
        assert_eq!(evs.len(), 1, "only the manifest event");
        let r = d.resume(cp).unwrap();
        let prefix = open_file_prefix(&full[..*seen]);
        if r.file_prefix > 0 {
            mid_file += 1;
            assert_eq!(r.file_prefix, prefix.len() as u64);
            // Fed back in odd pieces, as a reader of the partial file would.
            for piece in prefix.chunks(777) {
                d.rehash_prefix(piece).unwrap();
            }
        }
        let mut tail = Vec::new();
        run_rest(&mut d, &bytes, &r, &mut tail).unwrap();
        let mut joined = full[..*seen].to_vec();
        joined.extend(tail);
        assert_eq!(files(&joined), files(&full), "resumed at byte {}", r.offset);
        assert_eq!(joined.last(), Some(&Ev::Done));
    }
    assert!(
        mid_file > 3,
        "some checkpoints fall inside a file ({mid_file})"
    );
}

#[test]
fn damaged_foreign_or_misfed_checkpoints_are_refused() {
    let bytes = bundle();
    let other = build(&Spec {
        entries: sample_tree(),
        chunk_size: 16 * 1024,
        ..Spec::default()
    });
    let trust = pinned();
    // A checkpoint inside a file, from the middle of the bundle.
    let mut bufs = Bufs::new();
    let mut d = Decoder::new(trust, limits(), LibZstd::new().unwrap(), bufs.lend());
    let mut evs = Vec::new();
    let mut found: Option<(Vec<u8>, usize)> = None;
    run(&mut d, &bytes, 1000, &mut evs, |cp, evs| {
        if found.is_none() && !open_file_prefix(evs).is_empty() && evs.len() > 20 {
            found = Some((cp, evs.len()));
        }
    })
    .unwrap();
    let head_len = d.head_bytes().len() + d.manifest_bytes().len();
    drop(d);
    let (cp, seen) = found.expect("a checkpoint inside a file");
    let prefix = open_file_prefix(&evs[..seen]);

    let fresh = |input: &[u8]| -> Vec<u8> { input[..head_len.min(input.len())].to_vec() };
    let resume_on = |head: &[u8], cp: &[u8]| -> Result<u64, Error> {
        let mut bufs = Bufs::new();
        headed(&mut bufs, trust, head)?
            .resume(cp)
            .map(|r| r.file_prefix)
    };
    // Every single bit flip is caught by the checksum.
    for i in 0..cp.len() {
        let mut bad = cp.clone();
        bad[i] ^= 0x10;
        assert!(
            matches!(
                resume_on(&fresh(&bytes), &bad),
                Err(Error::Malformed { .. })
            ),
            "flip at {i}"
        );
    }
    assert!(resume_on(&fresh(&bytes), &cp[..cp.len() - 1]).is_err());
    assert!(resume_on(&fresh(&bytes), &[]).is_err());
    // Another bundle's manifest: the checkpoint belongs elsewhere.
    let other_head_len = {
        let mut bufs = Bufs::new();
        let mut d = Decoder::new(trust, limits(), LibZstd::new().unwrap(), bufs.lend());
        let mut rest = &other[..];
        loop {
            let f = d.feed(rest).unwrap();
            rest = &rest[f.consumed..];
            if matches!(f.event, Some(Event::ManifestVerified { .. })) {
                break;
            }
        }
        d.head_bytes().len() + d.manifest_bytes().len()
    };
    let e = resume_on(&other[..other_head_len], &cp).unwrap_err();
    assert!(e.to_string().contains("another bundle"), "{e}");

    // A prefix that differs from what was delivered fails that file's digest.
    let mut bufs = Bufs::new();
    let mut d = headed(&mut bufs, trust, &bytes[..head_len]).unwrap();
    let r = d.resume(&cp).unwrap();
    // Feeding the bundle before the prefix is refused.
    assert!(d.feed(&bytes[r.offset as usize..]).is_err());
    let mut bufs = Bufs::new();
    let mut d = headed(&mut bufs, trust, &bytes[..head_len]).unwrap();
    let r = d.resume(&cp).unwrap();
    let mut wrong = prefix.clone();
    wrong[0] ^= 1;
    d.rehash_prefix(&wrong).unwrap();
    let mut sink = Vec::new();
    let e = run_rest(&mut d, &bytes, &r, &mut sink).unwrap_err();
    assert!(matches!(e, Error::EntryDigest { .. }), "{e}");
    // And more prefix than the checkpoint says is refused.
    let mut bufs = Bufs::new();
    let mut d = headed(&mut bufs, trust, &bytes[..head_len]).unwrap();
    d.resume(&cp).unwrap();
    let mut long = prefix;
    long.push(0);
    assert!(d.rehash_prefix(&long).is_err());
}
