//! Tests of `molt_agent::fsops`: extraction beneath a slot handle, escapes refused, the snapshot clone, the `current` swap under crashes, and "no space".
//!
//! They need root (owners, mknod, tmpfs mounts, chroot): without it each test prints
//! "skipped: needs root" and returns.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use molt_agent::fsops::{
    clone_tree, read_current, swap_current, swap_current_with, sync_tree, sync_tree_with,
    CopyMethod, CrashAfter, ErrorKind, ExtractStats, Extractor, FsError, RealFs, Recorder, SlotDir,
    Step, CURRENT, CURRENT_NEW, TMP_PREFIX,
};
use molt_engine::bundle::policy::compare_paths;
use molt_engine::bundle::zstd::LibZstd;
use molt_engine::bundle::{Buffers, Decoder, EntryKind, Specials, Trust, TrustedKey};
use molt_engine::Limits;
use molt_test_support::bundle::{
    self, delete, dir, fifo, file, hardlink, symlink as link, text, Spec, E, K,
};
use molt_test_support::scratch::{Scratch, Tmpfs};
use molt_test_support::{noise, root_or_skip};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Builds a signed bundle of `entries` (sorted here) with the shared builder, and returns
/// it with the signer's public key.
fn build(entries: &[E], full: bool, specials: Specials) -> (Vec<u8>, [u8; 32]) {
    let mut entries = entries.to_vec();
    entries.sort_by(|a, b| compare_paths(&a.path, &b.path));
    let spec = Spec {
        entries,
        full,
        specials,
        comment: "fsops test".into(),
        ..Spec::default()
    };
    let public = *spec.keys[0].verifying_key().as_bytes();
    (bundle::build(&spec), public)
}

/// What stopped an extraction.
#[derive(Debug)]
enum Fail {
    Decode(molt_engine::Error),
    Fs(FsError),
}

impl Fail {
    fn fs(self) -> FsError {
        match self {
            Fail::Fs(e) => e,
            Fail::Decode(e) => panic!("expected a file-system error, got the decoder's: {e}"),
        }
    }
}

/// Verifies and decodes `bundle` (fed in 4 KiB pieces, as a download would) and applies
/// every event to `slot` / `staging`, optionally stopping after `stop` mutating operations.
fn extract_with(
    bundle: &[u8],
    public: &[u8; 32],
    slot: &SlotDir,
    staging: &SlotDir,
    stop: Option<u64>,
) -> Result<ExtractStats, Fail> {
    let keys = [TrustedKey::from_bytes(public).expect("key")];
    let limits = Limits::DEFAULT;
    let (m, w, r) = Buffers::required(&limits, 64 * 1024);
    let (mut mb, mut wb, mut rb) = (vec![0u8; m], vec![0u8; w], vec![0u8; r]);
    let mut d = Decoder::new(
        Trust::Pinned {
            keys: &keys,
            revoked: &[],
        },
        limits,
        LibZstd::new().expect("zstd"),
        Buffers {
            manifest: &mut mb,
            wire: &mut wb,
            raw: &mut rb,
        },
    );
    let mut x = Extractor::new(slot, staging).map_err(Fail::Fs)?;
    if let Some(n) = stop {
        x.stop_after(n);
    }
    for piece in bundle.chunks(4096) {
        let mut rest = piece;
        loop {
            let f = d.feed(rest).map_err(Fail::Decode)?;
            rest = &rest[f.consumed..];
            match f.event {
                None => break,
                Some(ev) => x.apply(&ev).map_err(Fail::Fs)?,
            }
        }
    }
    d.finish().map_err(Fail::Decode)?;
    x.finish().map_err(Fail::Fs)
}

fn extract(
    bundle: &[u8],
    public: &[u8; 32],
    slot: &SlotDir,
    staging: &SlotDir,
) -> Result<ExtractStats, Fail> {
    extract_with(bundle, public, slot, staging, None)
}

/// One node of a tree, as compared by the tests.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: (i64, i64),
        digest: String,
    },
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: (i64, i64),
    },
    Link {
        target: PathBuf,
        uid: u32,
        gid: u32,
    },
    Special {
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
    },
}

/// Every node beneath `root` (not following symlinks), keyed by relative path.
fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let node = if ft.is_symlink() {
                Node::Link {
                    target: fs::read_link(&p).unwrap(),
                    uid: m.uid(),
                    gid: m.gid(),
                }
            } else if ft.is_dir() {
                todo.push(p.clone());
                Node::Dir {
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                }
            } else if ft.is_file() {
                Node::File {
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    digest: blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string(),
                }
            } else {
                Node::Special {
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    rdev: m.rdev(),
                }
            };
            out.insert(rel, node);
        }
    }
    out
}

/// The change time of every node beneath `root`: any write, chmod, chown, link or rename
/// of a node changes it, so equal maps prove nothing was modified.
fn ctimes(root: &Path) -> BTreeMap<String, (i64, i64)> {
    let mut out = BTreeMap::new();
    let m = fs::symlink_metadata(root).unwrap();
    out.insert(String::new(), (m.ctime(), m.ctime_nsec()));
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p.clone());
            }
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(rel, (m.ctime(), m.ctime_nsec()));
        }
    }
    out
}

fn leftovers(root: &Path) -> Vec<String> {
    tree(root)
        .into_keys()
        .filter(|p| p.rsplit('/').next().unwrap_or(p).starts_with(TMP_PREFIX))
        .collect()
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

/// A temporary root for a test that needs root, or `None` (skipped) without it.
fn env() -> Option<Env> {
    if !root_or_skip() {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    Some(Env { _tmp: tmp, root })
}

/// [`env`] with a directory `outside` beside the slots holding the host file `name`
/// with `text`: what an escape would reach.
fn env_with_outside(name: &str, text: &[u8]) -> Option<(Env, PathBuf)> {
    let env = env()?;
    let outside = env.root.join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join(name), text).unwrap();
    Some((env, outside))
}

/// The content of each file among `entries`, by path.
fn file_contents(entries: &[E]) -> BTreeMap<&str, Vec<u8>> {
    entries
        .iter()
        .filter_map(|e| match &e.kind {
            K::File(c) => Some((e.path.as_str(), c.clone())),
            _ => None,
        })
        .collect()
}

fn slot(path: &Path, label: &str) -> SlotDir {
    SlotDir::create(path).unwrap().with_label(label)
}

// ---------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------

fn full_tree() -> Vec<E> {
    let text = text(40_000);
    vec![
        dir(".molt"),
        dir(".molt/packages"),
        file(".molt/packages/tool.deb", &noise(9, 30_000)),
        dir("app"),
        file("app/big.bin", &noise(1, 200_000)).mtime(1_600_000_000),
        dir("app/lib")
            .mode(0o750)
            .owner(1234, 5678)
            .mtime(1_500_000_000),
        file("app/lib/empty", b""),
        file("app/lib/text.txt", &text).owner(1234, 5678),
        hardlink("app/lib/z-link", "app/lib/text.txt"),
        link("app/link", "lib/text.txt"),
        file("app/run.sh", b"#!/bin/sh\necho hi\n").mode(0o755),
        file("app/suid", b"x").mode(0o4755),
        dir("etc"),
        file("etc/app.conf", b"port=80\n").mode(0o600),
        fifo("etc/pipe"),
        dir("ro").mode(0o555),
        file("ro/inside", b"read-only dir content\n").mode(0o444),
    ]
}

fn all_specials() -> Specials {
    Specials {
        setid: true,
        hardlinks: true,
        fifos: true,
        ..Specials::default()
    }
}

/// The expected node of a bundle entry after extraction (as root).
fn expected(e: &E) -> Option<Node> {
    let mtime = (e.mtime, 0);
    match &e.kind {
        K::File(c) => Some(Node::File {
            mode: 0o100000 | e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime,
            digest: blake3::hash(c).to_hex().to_string(),
        }),
        K::Dir => Some(Node::Dir {
            mode: 0o040000 | e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime,
        }),
        K::Symlink(t) => Some(Node::Link {
            target: t.into(),
            uid: e.uid,
            gid: e.gid,
        }),
        K::Fifo => Some(Node::Special {
            mode: 0o010000 | e.mode,
            uid: e.uid,
            gid: e.gid,
            rdev: 0,
        }),
        K::Hardlink(_) | K::Delete => None,
        K::Socket | K::CharDev => unreachable!("these tests ship no sockets or devices"),
    }
}

/// A full bundle lands byte for byte, with modes (setuid, read-only directories), owners
/// and mtimes; `.molt/` entries go to staging only; hardlinks share the inode; no
/// temporary names are left.
#[test]
fn full_bundle_extracts_exactly() {
    let Some(env) = env() else {
        return;
    };
    let entries = full_tree();
    let (bundle, public) = build(&entries, true, all_specials());
    let s = slot(&env.root.join("b"), "slot b");
    let st = slot(&env.root.join("staging"), "staging");
    let stats = extract(&bundle, &public, &s, &st).unwrap();
    assert_eq!(stats.internal, 3);
    assert_eq!(stats.hardlinks, 1);
    assert_eq!(stats.specials, 1);
    assert_eq!(stats.symlinks, 1);
    sync_tree(&s).unwrap();
    sync_tree(&st).unwrap();

    let got = tree(&env.root.join("b"));
    let staged = tree(&env.root.join("staging"));
    for e in &entries {
        let (where_, other) = if e.path.starts_with(".molt") {
            (&staged, &got)
        } else {
            (&got, &staged)
        };
        assert!(!other.contains_key(&e.path), "{} in the wrong tree", e.path);
        match &e.kind {
            K::Hardlink(t) => {
                let a = fs::metadata(env.root.join("b").join(&e.path)).unwrap();
                let b = fs::metadata(env.root.join("b").join(t)).unwrap();
                assert_eq!(a.ino(), b.ino(), "{} is a hardlink of {t}", e.path);
                assert_eq!(a.nlink(), 2);
            }
            _ => assert_eq!(where_.get(&e.path), expected(e).as_ref(), "{}", e.path),
        }
    }
    assert_eq!(
        got.len() + staged.len(),
        entries.len(),
        "nothing extra: {got:#?}"
    );
    assert!(leftovers(&env.root.join("b")).is_empty());
}

/// A patch replaces a file, a directory by a file, a file by a directory, a file and a
/// symlink by symlinks, updates a directory's mode, deletes a whole tree (whose symlink
/// to the outside is removed, not followed) and a missing path.
#[test]
fn patch_over_existing_tree() {
    let Some((env, outside)) = env_with_outside("keep", b"outside") else {
        return;
    };
    let base = vec![
        dir("app"),
        file("app/conf", b"old conf"),
        dir("app/data"),
        dir("app/data/deep"),
        file("app/data/deep/x", b"x"),
        file("app/file-to-dir", b"soon a dir"),
        file("app/file-to-link", b"soon a link"),
        link("app/link", "conf"),
        dir("app/old"),
        file("app/old/a", &noise(2, 70_000)),
        dir("app/old/sub"),
        file("app/old/sub/b", b"b"),
        dir("keep").mode(0o700),
        file("keep/same", b"untouched"),
    ];
    let (bundle, public) = build(&base, true, Specials::default());
    let s = slot(&env.root.join("b"), "slot b");
    let st = slot(&env.root.join("staging"), "staging");
    extract(&bundle, &public, &s, &st).unwrap();
    // A symlink to the outside inside the tree that gets deleted.
    symlink(&outside, env.root.join("b/app/old/sub/escape")).unwrap();
    let before = tree(&env.root.join("b"));

    let patch = vec![
        file("app/conf", b"new conf"),
        file("app/data", &noise(3, 40_000)),
        dir("app/file-to-dir").mode(0o711),
        file("app/file-to-dir/inside", b"in"),
        link("app/file-to-link", "conf"),
        link("app/link", "data"),
        delete("app/missing"),
        delete("app/old"),
        delete("nowhere/at/all"),
        dir("keep").mode(0o750),
    ];
    let (bundle, public) = build(&patch, false, Specials::default());
    let stats = extract(&bundle, &public, &s, &st).unwrap();
    assert_eq!(stats.deleted, 1, "only app/old existed");

    let got = tree(&env.root.join("b"));
    for e in &patch {
        match &e.kind {
            K::Delete => assert!(
                !got.keys()
                    .any(|k| k == &e.path || k.starts_with(&format!("{}/", e.path))),
                "{} deleted",
                e.path
            ),
            _ => assert_eq!(got.get(&e.path), expected(e).as_ref(), "{}", e.path),
        }
    }
    assert!(
        !got.contains_key("app/data/deep"),
        "the replaced dir's tree is gone"
    );
    assert_eq!(got.get("keep/same"), before.get("keep/same"));
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"outside");
    assert!(leftovers(&env.root.join("b")).is_empty());
}

/// A symlink planted in the slot cannot redirect a write, a deletion or a hardlink
/// outside it, whether absolute (like `etc -> /etc`) or relative (`../outside`): the entry
/// is refused as an escape and nothing outside changes. Entries that replace the symlink
/// itself do so without following it.
#[test]
fn symlinks_in_the_slot_never_redirect_entries() {
    let Some((env, outside)) = env_with_outside("passwd", b"root:x:0:0\n") else {
        return;
    };
    let sp = env.root.join("b");
    let s = slot(&sp, "slot b");
    let st = slot(&env.root.join("staging"), "staging");
    // `etc` stands for `/etc` (an absolute link; the real /etc is not risked in a test).
    symlink(&outside, sp.join("etc")).unwrap();
    symlink("../outside", sp.join("etc2")).unwrap();
    fs::create_dir(sp.join("ok")).unwrap();
    let outside_before = tree(&outside);

    for entries in [
        vec![file("etc/passwd", b"pwned\n")],
        vec![file("etc2/passwd", b"pwned\n")],
        vec![file("etc/new-file", b"pwned\n")],
        vec![delete("etc/passwd")],
        vec![delete("etc2/passwd")],
        vec![dir("etc/sub")],
    ] {
        let (bundle, public) = build(&entries, false, Specials::default());
        let err = extract(&bundle, &public, &s, &st).unwrap_err().fs();
        assert_eq!(err.kind(), ErrorKind::Escape, "{err}");
        assert!(err.to_string().contains(&entries[0].path), "{err}");
        assert!(err.to_string().contains("slot b"), "{err}");
        assert_eq!(
            tree(&outside),
            outside_before,
            "outside untouched after {err}"
        );
    }

    // A hardlink whose target resolves through the symlink.
    let entries = vec![hardlink("ok/pw", "etc/passwd")];
    let (bundle, public) = build(
        &entries,
        false,
        Specials {
            hardlinks: true,
            ..Specials::default()
        },
    );
    let err = extract(&bundle, &public, &s, &st).unwrap_err().fs();
    assert_eq!(err.kind(), ErrorKind::Escape, "{err}");
    assert!(!sp.join("ok/pw").exists());

    // Replacing the links themselves: a file over `etc`, a directory over `etc2`.
    let entries = vec![
        file("etc", b"now a file"),
        dir("etc2"),
        file("etc2/passwd", b"mine"),
    ];
    let (bundle, public) = build(&entries, false, Specials::default());
    extract(&bundle, &public, &s, &st).unwrap();
    assert!(fs::symlink_metadata(sp.join("etc")).unwrap().is_file());
    assert!(fs::symlink_metadata(sp.join("etc2")).unwrap().is_dir());
    assert_eq!(fs::read(sp.join("etc2/passwd")).unwrap(), b"mine");
    assert_eq!(tree(&outside), outside_before);
    println!("refused as expected; outside untouched");
}

/// An entry for a hostile event at `path` (mode 0644, root's, mtime 0); its header
/// claims whatever kind the test gives `header_as`.
fn hostile(path: &str) -> E {
    file(path, b"").mtime(0)
}

/// Even events the engine's policy would never let through (as if it had a bug) cannot
/// leave the slot: `..` climbing out is refused by `RESOLVE_BENEATH`, absolute and dot
/// paths are refused outright, and a symlink created by an earlier entry does not carry a
/// later entry outside.
#[test]
fn hostile_events_cannot_leave_the_slot() {
    let Some(env) = env() else {
        return;
    };
    let sp = env.root.join("slots/b");
    fs::create_dir_all(&sp).unwrap();
    fs::create_dir(sp.join("a")).unwrap();
    let s = slot(&sp, "slot b");
    let st = slot(&env.root.join("staging"), "staging");
    let before = tree(&env.root);
    let size = EntryKind::File {
        size: 1,
        digest: [0; 32],
    };

    let mut x = Extractor::new(&s, &st).unwrap();
    for (path, kind) in [
        ("a/../../x", ErrorKind::Escape),
        ("a/../../../x", ErrorKind::Escape),
        ("/abs", ErrorKind::BadPath),
        ("..", ErrorKind::BadPath),
        ("a/..", ErrorKind::BadPath),
        ("a/.", ErrorKind::BadPath),
        ("a/", ErrorKind::BadPath),
    ] {
        let err = x.entry_start(&hostile(path).header_as(size)).unwrap_err();
        assert_eq!(err.kind(), kind, "{path}: {err}");
    }
    // `a/../b` stays beneath the slot: allowed by the kernel, lands inside.
    x.entry_start(&hostile("a/../inside").header_as(size))
        .unwrap();
    x.data(b"!").unwrap();
    x.entry_end().unwrap();
    // A symlink entry pointing out, then an entry through it.
    x.entry_start(&hostile("out").header_as(EntryKind::Symlink { target: "../.." }))
        .unwrap();
    x.entry_end().unwrap();
    let err = x
        .entry_start(&hostile("out/x").header_as(size))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Escape, "{err}");
    let err = x
        .entry_start(&hostile("a/hl").header_as(EntryKind::Hardlink { target: "out/x" }))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Escape, "{err}");
    // Out-of-order events are refused, not guessed at.
    assert_eq!(x.data(b"x").unwrap_err().kind(), ErrorKind::Sequence);
    assert_eq!(x.entry_end().unwrap_err().kind(), ErrorKind::Sequence);
    x.finish().unwrap();

    let mut after = tree(&env.root);
    assert!(after.remove("slots/b/inside").is_some());
    assert!(after.remove("slots/b/out").is_some());
    // The slot directory's own mtime changed; nothing else anywhere did.
    after.remove("slots/b");
    let mut before = before;
    before.remove("slots/b");
    assert_eq!(after, before);

    // The slot handle's own helpers refuse the same way.
    assert_eq!(s.open_dir("a/../..").unwrap_err().kind(), ErrorKind::Escape);
    assert_eq!(s.remove("out/x").unwrap_err().kind(), ErrorKind::Escape);
    assert_eq!(
        s.open_file("out/passwd").unwrap_err().kind(),
        ErrorKind::Escape
    );
}

/// A crash after every single mutating operation of a patch leaves every path either
/// with its old content or its complete new content, never a half file; only temporary
/// names are debris.
#[test]
fn interrupted_patch_never_leaves_a_half_file() {
    let Some(env) = env() else {
        return;
    };
    let base = vec![
        dir("d"),
        file("d/a", &noise(4, 50_000)),
        file("d/b", b"old b"),
        file("d/c", b"old c"),
    ];
    let patch = vec![
        file("d/a", &noise(5, 60_000)),
        file("d/b", b"new b"),
        file("d/new", &noise(6, 20_000)),
        delete("d/c"),
    ];
    let (base_bundle, public) = build(&base, true, Specials::default());
    let (patch_bundle, _) = build(&patch, false, Specials::default());
    let (old, new) = (file_contents(&base), file_contents(&patch));

    let mut n = 0u64;
    loop {
        let sp = env.root.join(format!("run{n}"));
        let s = slot(&sp, "slot b");
        let st = slot(&env.root.join(format!("staging{n}")), "staging");
        extract(&base_bundle, &public, &s, &st).unwrap();
        let r = extract_with(&patch_bundle, &public, &s, &st, Some(n));
        for p in ["d/a", "d/b", "d/c", "d/new"] {
            match fs::read(sp.join(p)) {
                Ok(got) => assert!(
                    old.get(p) == Some(&got) || new.get(p) == Some(&got),
                    "after {n} operations {p} is neither old nor new ({} bytes)",
                    got.len()
                ),
                Err(_) => assert!(
                    !old.contains_key(p) || !new.contains_key(p),
                    "after {n} operations {p} vanished"
                ),
            }
        }
        match r {
            Ok(_) => break,
            Err(e) => assert_eq!(e.fs().kind(), ErrorKind::Crashed),
        }
        n += 1;
        assert!(n < 1000, "the patch never completes");
    }
    println!("patch swept over {n} crash points");
    assert!(n > 10);
}

// ---------------------------------------------------------------------------------------
// Snapshot clone
// ---------------------------------------------------------------------------------------

/// A host shell that can run inside a copied tree: a static busybox if there is one,
/// else the dynamic /bin/sh with the libraries `ldd` names. Returns (source, destination
/// inside the tree) pairs, or `None` when neither is available.
fn shell_files() -> Option<Vec<(PathBuf, PathBuf)>> {
    for bb in ["/bin/busybox", "/usr/bin/busybox", "/sbin/busybox"] {
        let out = Command::new("ldd").arg(bb).output();
        let is_static = match &out {
            Ok(o) => {
                String::from_utf8_lossy(&o.stdout).contains("not a dynamic")
                    || String::from_utf8_lossy(&o.stderr).contains("not a dynamic")
            }
            Err(_) => false,
        };
        if Path::new(bb).exists() && is_static {
            return Some(vec![(bb.into(), "bin/sh".into())]);
        }
    }
    let sh = fs::canonicalize("/bin/sh").ok()?;
    let out = Command::new("ldd").arg(&sh).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let mut files = vec![(sh, PathBuf::from("bin/sh"))];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            let real = fs::canonicalize(&p).ok()?;
            files.push((real, p.strip_prefix("/").ok()?.to_path_buf()));
        }
    }
    Some(files)
}

fn set_mtime(p: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 123_456_789,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Builds an active tree with every kind of node and attribute the clone must keep.
fn make_active(active: &Path, outside: &Path) {
    fs::create_dir_all(active.join("app/lib")).unwrap();
    fs::create_dir_all(active.join("data")).unwrap();
    fs::write(active.join("data/file.txt"), b"line 1\n").unwrap();
    fs::write(active.join("app/empty"), b"").unwrap();
    fs::write(active.join("app/big.bin"), noise(7, 3 << 20)).unwrap();
    fs::write(active.join("app/lib/small"), b"small").unwrap();
    fs::hard_link(
        active.join("app/lib/small"),
        active.join("app/lib/small-link"),
    )
    .unwrap();
    fs::write(active.join("app/suid"), b"s").unwrap();
    fs::set_permissions(active.join("app/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(active.join("app/lib/small"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(active.join("app/lib"), Some(42), Some(43)).unwrap();
    symlink("lib/small", active.join("app/rel-link")).unwrap();
    symlink(outside, active.join("app/abs-link")).unwrap();
    symlink("/does/not/exist", active.join("app/dangling")).unwrap();
    std::os::unix::fs::lchown(active.join("app/rel-link"), Some(7), Some(8)).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        active.join("app/pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o620),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        active.join("app/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    // A user xattr (ext4 and tmpfs keep them); if unsupported the clone has none either.
    let _ = rustix::fs::setxattr(
        active.join("data/file.txt"),
        "user.molt",
        b"kept",
        rustix::fs::XattrFlags::empty(),
    );
    fs::create_dir(active.join("ro")).unwrap();
    fs::write(active.join("ro/f"), b"ro").unwrap();
    fs::set_permissions(active.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    for p in [
        "app/big.bin",
        "app/lib/small",
        "app/rel-link",
        "app/lib",
        "ro",
        "app",
        "",
    ] {
        set_mtime(&active.join(p), 1_650_000_000);
    }
}

/// `clone_tree` empties the target (a failed earlier attempt with a read-only directory
/// and a symlink to the outside: removed, not followed), copies every node with its
/// mode, owner, mtime, symlink target and xattrs, reports its copy method, and never
/// modifies the active slot (every change time is the same afterwards). Then a write to a
/// file of the clone (a real `chroot` shell appending, when a shell can run inside the
/// slot) leaves the active file unchanged: no hardlinks between slots.
#[test]
fn clone_copies_everything_and_never_writes_the_active_slot() {
    let Some((env, outside)) = env_with_outside("keep", b"outside") else {
        return;
    };
    let active = env.root.join("slots/a");
    make_active(&active, &outside);
    let shell = shell_files();
    if let Some(files) = &shell {
        for (src, dst) in files {
            let d = active.join(dst);
            fs::create_dir_all(d.parent().unwrap()).unwrap();
            fs::copy(src, &d).unwrap();
        }
    }
    // A failed earlier attempt in the target.
    let target_path = env.root.join("slots/b");
    fs::create_dir_all(target_path.join("junk/ro")).unwrap();
    fs::write(target_path.join("junk/ro/x"), b"x").unwrap();
    fs::set_permissions(
        target_path.join("junk/ro"),
        fs::Permissions::from_mode(0o555),
    )
    .unwrap();
    symlink(&outside, target_path.join("junk/out")).unwrap();
    fs::write(
        target_path.join("data"),
        b"a file where the clone has a dir",
    )
    .unwrap();

    let active_tree = tree(&active);
    let active_ctimes = ctimes(&active);
    let target = slot(&target_path, "slot b");
    let report = clone_tree(&active, &target).unwrap();
    sync_tree(&target).unwrap();
    println!("clone: {report:?}");

    assert_eq!(
        tree(&target_path),
        active_tree,
        "the clone equals the active tree"
    );
    assert_eq!(
        ctimes(&active),
        active_ctimes,
        "the active slot was not modified"
    );
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"outside");
    let count = |f: fn(&Node) -> bool| active_tree.values().filter(|n| f(n)).count() as u64;
    assert_eq!(report.files, count(|n| matches!(n, Node::File { .. })));
    assert_eq!(report.dirs, count(|n| matches!(n, Node::Dir { .. })));
    assert_eq!(report.symlinks, 3);
    assert_eq!(report.specials, 2);
    assert_eq!(report.hardlinks_split, 2);
    let method = report.method.expect("some file had data");
    assert_eq!(
        report.reflinked + report.range_copied + report.read_written,
        report.files - 1,
        "every non-empty file copied once"
    );
    println!("clone method on this filesystem: {method}");
    if method != CopyMethod::Reflink {
        println!("reflink unsupported here (FICLONE refused); fell back to {method}");
    }
    // Hardlinks inside the tree became separate files.
    let a = fs::metadata(target_path.join("app/lib/small")).unwrap();
    let b = fs::metadata(target_path.join("app/lib/small-link")).unwrap();
    assert_ne!(a.ino(), b.ino());
    let mut v = [0u8; 16];
    if let Ok(n) = rustix::fs::getxattr(active.join("data/file.txt"), "user.molt", &mut v[..]) {
        let mut w = [0u8; 16];
        let m = rustix::fs::getxattr(target_path.join("data/file.txt"), "user.molt", &mut w[..])
            .expect("xattr copied");
        assert_eq!(&w[..m], &v[..n]);
    }

    // The proof: a write to a file of the clone leaves the active slot's file unchanged.
    let active_file = fs::read(active.join("data/file.txt")).unwrap();
    match &shell {
        Some(_) => {
            let st = Command::new("chroot")
                .arg(&target_path)
                .args(["/bin/sh", "-c", "echo x >> /data/file.txt"])
                .status()
                .expect("run chroot");
            assert!(st.success(), "chroot shell failed: {st}");
            println!("appended through a real chroot shell");
        }
        None => {
            use std::io::Write;
            fs::OpenOptions::new()
                .append(true)
                .open(target_path.join("data/file.txt"))
                .unwrap()
                .write_all(b"x\n")
                .unwrap();
            println!("no shell can run inside the slot: appended directly with std::fs");
        }
    }
    assert_eq!(
        fs::read(target_path.join("data/file.txt")).unwrap(),
        b"line 1\nx\n"
    );
    assert_eq!(fs::read(active.join("data/file.txt")).unwrap(), active_file);
    assert_eq!(
        ctimes(&active),
        active_ctimes,
        "the active slot was not modified"
    );

    // A second clone over the modified target starts from scratch.
    clone_tree(&active, &target).unwrap();
    assert_eq!(tree(&target_path), active_tree);
    // The target cannot be the active slot itself.
    let same = SlotDir::open(&active).unwrap();
    assert_eq!(
        clone_tree(&active, &same).unwrap_err().kind(),
        ErrorKind::BadPath
    );
    assert_eq!(ctimes(&active), active_ctimes);
}

/// A mount point inside the target (a leftover bind mount) or inside the active tree
/// refuses the clone: the mounted filesystem is neither emptied nor copied.
#[test]
fn clone_refuses_to_cross_mount_points() {
    let Some(env) = env() else {
        return;
    };
    let active = env.root.join("a");
    let target_path = env.root.join("b");
    fs::create_dir_all(active.join("x")).unwrap();
    fs::write(active.join("x/f"), b"f").unwrap();
    // A small tmpfs mounted at `dir` (made here) holding the file `name`.
    let tmpfs_with = |dir: &Path, name: &str, bytes: &[u8]| {
        fs::create_dir_all(dir).unwrap();
        let m = Tmpfs::mount(dir, c"size=64k");
        fs::write(dir.join(name), bytes).unwrap();
        m
    };
    let clone_is_refused = || {
        let target = slot(&target_path, "slot b");
        let err = clone_tree(&active, &target).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Escape, "{err}");
        println!("{err}");
    };
    let m = tmpfs_with(&target_path.join("dev"), "precious", b"keep");
    clone_is_refused();
    assert_eq!(fs::read(target_path.join("dev/precious")).unwrap(), b"keep");
    drop(m);

    let _m = tmpfs_with(&active.join("proc"), "secret", b"s");
    clone_is_refused();
    assert!(!target_path.join("proc/secret").exists());
}

// ---------------------------------------------------------------------------------------
// Durability and the swap
// ---------------------------------------------------------------------------------------

fn data_dir(root: &Path) -> PathBuf {
    let d = root.join("data");
    fs::create_dir_all(d.join("slots/a")).unwrap();
    fs::create_dir_all(d.join("slots/b")).unwrap();
    d
}

/// Every prefix of the recorded commit protocol (syncfs, then the swap), cut after each
/// single operation, leaves `current` naming the old or the new slot, never nothing; and
/// running the swap again afterwards completes it (a stale `current.new` included).
#[test]
fn swap_every_prefix_leaves_old_or_new() {
    let Some(env) = env() else {
        return;
    };
    let d = data_dir(&env.root);
    let old = Path::new("slots/a");
    let new = Path::new("slots/b");

    // Record the whole protocol once.
    let mut rec = Recorder::new(RealFs);
    swap_current_with(&mut rec, &d, old).unwrap();
    let setup = rec.steps().len();
    let slot_b = SlotDir::open(d.join("slots/b")).unwrap();
    sync_tree_with(&mut rec, &slot_b).unwrap();
    swap_current_with(&mut rec, &d, new).unwrap();
    let steps = rec.into_steps()[setup..].to_vec();
    for s in &steps {
        println!("step: {s}");
    }
    assert!(matches!(steps[0], Step::Syncfs { .. }));
    assert!(steps
        .iter()
        .any(|s| matches!(s, Step::Rename { to, .. } if to == CURRENT)));
    assert_eq!(read_current(&d).unwrap().as_deref(), Some(new));

    for n in 0..=steps.len() {
        // Fresh state: current -> slots/a, plus (for odd n) a stale current.new.
        let _ = fs::remove_file(d.join(CURRENT_NEW));
        swap_current(&d, old).unwrap();
        if n % 2 == 1 {
            symlink("slots/garbage", d.join(CURRENT_NEW)).unwrap();
        }
        let mut ops = CrashAfter::new(RealFs, n);
        let r =
            sync_tree_with(&mut ops, &slot_b).and_then(|()| swap_current_with(&mut ops, &d, new));
        let stale = n % 2 == 1;
        // A stale current.new adds one unlink step.
        let total = steps.len() + usize::from(stale);
        assert_eq!(r.is_ok(), n >= total, "prefix {n}: {r:?}");
        if let Err(e) = &r {
            assert_eq!(e.kind(), ErrorKind::Crashed);
        }
        let cur = read_current(&d).unwrap();
        assert!(
            cur.as_deref() == Some(old) || cur.as_deref() == Some(new),
            "prefix {n}: current is {cur:?}"
        );
        // Recovery: run the swap again.
        swap_current(&d, new).unwrap();
        assert_eq!(read_current(&d).unwrap().as_deref(), Some(new));
        assert!(fs::symlink_metadata(d.join(CURRENT_NEW)).is_err());
    }

    // Replaying every recorded prefix step by step shows the same.
    for k in 0..=steps.len() {
        swap_current(&d, old).unwrap();
        for s in &steps[..k] {
            s.replay(&mut RealFs).unwrap();
        }
        let cur = read_current(&d).unwrap();
        assert!(
            cur.as_deref() == Some(old) || cur.as_deref() == Some(new),
            "replay {k}: {cur:?}"
        );
        let _ = fs::remove_file(d.join(CURRENT_NEW));
    }

    // A first install has no `current`; publishing a missing or escaping slot is refused.
    let fresh = env.root.join("fresh");
    fs::create_dir_all(fresh.join("slots/a")).unwrap();
    assert_eq!(read_current(&fresh).unwrap(), None);
    assert_eq!(
        swap_current(&fresh, Path::new("slots/nope"))
            .unwrap_err()
            .errno(),
        Some(libc::ENOENT)
    );
    assert_eq!(
        swap_current(&fresh, Path::new("../data/slots/a"))
            .unwrap_err()
            .kind(),
        ErrorKind::Escape
    );
    assert_eq!(
        swap_current(&fresh, Path::new("/slots/a"))
            .unwrap_err()
            .kind(),
        ErrorKind::BadPath
    );
    assert_eq!(read_current(&fresh).unwrap(), None);
    swap_current(&fresh, Path::new("slots/a")).unwrap();
    assert_eq!(
        read_current(&fresh).unwrap().as_deref(),
        Some(Path::new("slots/a"))
    );
    // A slot that is its own mount (a partition) can be published.
    fs::create_dir(fresh.join("slots/m")).unwrap();
    let _m = Tmpfs::mount(&fresh.join("slots/m"), c"size=64k");
    swap_current(&fresh, Path::new("slots/m")).unwrap();
    assert_eq!(
        read_current(&fresh).unwrap().as_deref(),
        Some(Path::new("slots/m"))
    );
}

/// A full slot (a 64 KiB tmpfs) fails the extraction with the "no space" error naming the
/// file and the slot; the temporary file is removed; the other slot stays byte-identical
/// and unmodified. The tmpfs is unmounted even if the test fails.
#[test]
fn no_space_is_reported_and_the_other_slot_is_untouched() {
    let Some(env) = env() else {
        return;
    };
    let d = data_dir(&env.root);
    let (bundle, public) = build(
        &[
            dir("app"),
            file("app/conf", b"c"),
            file("app/big.bin", &noise(8, 512 * 1024)),
        ],
        true,
        Specials::default(),
    );
    let a = slot(&d.join("slots/a"), "slot a");
    let st = slot(&d.join("staging"), "staging");
    extract(&bundle, &public, &a, &st).unwrap();
    let a_tree = tree(&d.join("slots/a"));
    let a_ctimes = ctimes(&d.join("slots/a"));

    let _m = Tmpfs::mount(&d.join("slots/b"), c"size=64k");
    let b = slot(&d.join("slots/b"), "slot b");
    let err = extract(&bundle, &public, &b, &st).unwrap_err().fs();
    assert!(err.is_no_space(), "{err}");
    assert_eq!(err.kind(), ErrorKind::NoSpace);
    assert_eq!(err.errno(), Some(libc::ENOSPC));
    assert_eq!(
        err.to_string(),
        "cannot write app/big.bin in slot b: No space left on device"
    );
    assert!(
        leftovers(&d.join("slots/b")).is_empty(),
        "the temporary file was removed"
    );
    // The clone into a full slot fails the same way, and (hardening item 9) leaves no
    // file cut short under its own name and no temporary file: what is there is whole.
    let err = clone_tree(&d.join("slots/a"), &b).unwrap_err();
    assert!(err.is_no_space(), "{err}");
    println!("{err}");
    assert!(
        leftovers(&d.join("slots/b")).is_empty(),
        "a temporary file was left"
    );
    // Directories of a clone cut short keep their working mode; files must be whole.
    for (path, what) in tree(&d.join("slots/b")) {
        if !matches!(what, Node::File { .. }) {
            continue;
        }
        assert_eq!(
            a_tree.get(&path),
            Some(&what),
            "{path} in slot b is not a whole copy of slot a's"
        );
    }

    assert_eq!(tree(&d.join("slots/a")), a_tree);
    assert_eq!(ctimes(&d.join("slots/a")), a_ctimes);
    drop(b);
}

/// On a filesystem with reflinks (a loop-mounted XFS image, when `mkfs.xfs` is installed)
/// every non-empty file is cloned with `FICLONE`, and a write to the clone still leaves
/// the active file unchanged (copy-on-write).
#[test]
fn clone_reflinks_where_the_filesystem_can() {
    if !root_or_skip() {
        return;
    }
    let Some(scratch) = Scratch::xfs(512 << 20) else {
        println!("skipped: the reflink path is not exercised here");
        return;
    };
    let mnt = scratch.path();
    let active = mnt.join("a");
    fs::create_dir_all(active.join("d")).unwrap();
    fs::write(active.join("d/big"), noise(11, 4 << 20)).unwrap();
    fs::write(active.join("d/small"), b"small\n").unwrap();
    fs::write(active.join("empty"), b"").unwrap();
    let before = tree(&active);
    let target = slot(&mnt.join("b"), "slot b");
    let report = clone_tree(&active, &target).unwrap();
    sync_tree(&target).unwrap();
    println!("clone on XFS: {report:?}");
    assert_eq!(report.method, Some(CopyMethod::Reflink));
    assert_eq!(report.reflinked, 2);
    assert_eq!(tree(&mnt.join("b")), before);
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("b/d/big"))
            .unwrap();
        f.write_all(b"appended").unwrap();
    }
    assert_eq!(
        tree(&active),
        before,
        "the active file is unchanged after writing the clone"
    );
    drop(target);
}

/// Across filesystems (ext4 or whatever holds the temp dir, into a tmpfs slot) neither
/// `FICLONE` nor, on current kernels, `copy_file_range` works: the clone detects that and
/// still produces an identical tree with the fallback.
#[test]
fn clone_falls_back_across_filesystems() {
    let Some(env) = env() else {
        return;
    };
    let active = env.root.join("a");
    fs::create_dir_all(active.join("d")).unwrap();
    fs::write(active.join("d/big"), noise(12, 1 << 20)).unwrap();
    fs::write(active.join("d/small"), b"small\n").unwrap();
    let before = tree(&active);
    let tp = env.root.join("b");
    fs::create_dir(&tp).unwrap();
    let _m = Tmpfs::mount(&tp, c"size=16m");
    let target = slot(&tp, "slot b");
    let report = clone_tree(&active, &target).unwrap();
    println!("clone across filesystems: {report:?}");
    assert_ne!(report.method, Some(CopyMethod::Reflink));
    assert!(report.method.is_some());
    assert_eq!(report.range_copied + report.read_written, 2);
    assert_eq!(tree(&tp), before);
    drop(target);
}
