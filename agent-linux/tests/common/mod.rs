//! Helpers for the end-to-end install tests: signed test bundles built in-process, a device in a temp root driven through the real `molt-agent` binary, tree digests, and bundle surgery.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Cursor;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ed25519_dalek::{Signer, SigningKey};
use molt_engine::bundle::encoder::{Encoder, EncoderOptions};
use molt_engine::bundle::format::{
    key_id, EntryTable, Payload, CHUNK_HEADER_LEN, FORMAT_MAJOR, FORMAT_MINOR, HEADER_LEN, MAGIC,
};
use molt_engine::bundle::policy::compare_paths;
use molt_engine::bundle::verify::signed_message;
use molt_engine::bundle::{
    BundleKind, Command as Cmd, EntryHeader, EntryKind, HealthCheck, Manifest, Package,
    PackageManager, Recipe, Rollback, Specials,
};
use molt_engine::Limits;

/// The agent binary under test.
pub const AGENT: &str = env!("CARGO_BIN_EXE_molt-agent");

/// The device's `compatible` string.
pub const BOARD: &str = "test-board";

/// The release key every test device trusts.
pub fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

/// A second key, trusted by devices that test revocation.
pub fn key2() -> SigningKey {
    SigningKey::from_bytes(&[43; 32])
}

/// A key no device trusts.
pub fn stranger() -> SigningKey {
    SigningKey::from_bytes(&[99; 32])
}

/// The public half of `k` as the config wants it (64 hex digits).
pub fn pub_hex(k: &SigningKey) -> String {
    hex::encode(k.verifying_key().as_bytes())
}

/// The key id of `k` as `revoked_keys` wants it (16 hex digits).
pub fn id_hex(k: &SigningKey) -> String {
    hex::encode(key_id(k.verifying_key().as_bytes()))
}

/// True when running as root; otherwise prints the skip line.
pub fn root_or_skip() -> bool {
    if rustix::process::geteuid().is_root() {
        true
    } else {
        println!("skipped: needs root (slot handles, chown, chroot)");
        false
    }
}

// Not every test that includes this module uses it (as with `dead_code` above).
#[allow(unused_imports)]
pub use molt_engine::testing::noise;

/// One entry of a test bundle.
#[derive(Clone, Debug)]
pub enum Node {
    File(Vec<u8>, u32),
    Dir(u32),
    Symlink(String),
    Hardlink(String),
    Delete,
    CharDev,
    Fifo,
    Socket,
}

/// A recipe command.
#[derive(Clone, Debug)]
pub struct Script {
    pub text: String,
    pub chroot: bool,
    pub timeout_secs: u32,
}

/// A host command with a 10 s timeout.
pub fn sh(text: impl Into<String>) -> Script {
    Script {
        text: text.into(),
        chroot: false,
        timeout_secs: 10,
    }
}

/// Everything a test bundle is made of.
#[derive(Clone, Debug)]
pub struct Spec {
    pub version: String,
    pub release: u64,
    pub full: bool,
    pub base_version: String,
    pub compatible: String,
    pub allow_downgrade: bool,
    pub comment: String,
    /// Entries; sorted (and given their parent directories in a full bundle) unless `raw_order`.
    pub entries: Vec<(String, Node)>,
    /// Keep `entries` exactly as given (crafted bundles).
    pub raw_order: bool,
    /// Run the encoder's entry and manifest checks (off to craft bad bundles).
    pub check_policy: bool,
    pub specials: Specials,
    pub before: Option<Script>,
    pub after: Option<Script>,
    pub health: Option<(Script, u16, u32)>,
    pub rollback_command: Option<Script>,
    pub revert: bool,
    pub reboot: bool,
    pub packages: Vec<(PackageManager, String)>,
    /// Packages shipped in the bundle: manager, name, the file's path in the bundle
    /// (`.molt/packages/<manager>/<file>`; add the file entry itself with [`Spec::with`]).
    pub package_files: Vec<(PackageManager, String, String)>,
    pub keys: Vec<SigningKey>,
    pub chunk_size: u32,
    /// Encoder limits (raise `max_manifest_len` to craft an oversized manifest).
    pub limits: Limits,
}

impl Spec {
    /// A full bundle of `files` (path, content), mode 0644, parents added.
    pub fn full(version: &str, release: u64, files: &[(&str, &[u8])]) -> Spec {
        Spec {
            version: version.into(),
            release,
            full: true,
            base_version: String::new(),
            compatible: BOARD.into(),
            allow_downgrade: false,
            comment: String::new(),
            entries: files
                .iter()
                .map(|(p, c)| (p.to_string(), Node::File(c.to_vec(), 0o644)))
                .collect(),
            raw_order: false,
            check_policy: true,
            specials: Specials::default(),
            before: None,
            after: None,
            health: None,
            rollback_command: None,
            revert: true,
            reboot: false,
            packages: Vec::new(),
            package_files: Vec::new(),
            keys: vec![key()],
            chunk_size: 16 * 1024,
            limits: Limits::DEFAULT,
        }
    }

    /// A patch bundle: `files` replace or add, `deletes` are removed.
    pub fn patch(version: &str, release: u64, files: &[(&str, &[u8])], deletes: &[&str]) -> Spec {
        let mut s = Spec::full(version, release, files);
        s.full = false;
        s.entries
            .extend(deletes.iter().map(|d| (d.to_string(), Node::Delete)));
        s
    }

    /// Adds an entry.
    pub fn with(mut self, path: &str, node: Node) -> Spec {
        self.entries.push((path.into(), node));
        self
    }

    /// The entries in bundle order.
    pub fn ordered(&self) -> Vec<(String, Node)> {
        if self.raw_order {
            return self.entries.clone();
        }
        let mut map: BTreeMap<String, Node> = BTreeMap::new();
        for (p, n) in &self.entries {
            if self.full {
                let mut parent = Path::new(p).parent();
                while let Some(d) = parent.filter(|d| !d.as_os_str().is_empty()) {
                    map.entry(d.to_string_lossy().into_owned())
                        .or_insert(Node::Dir(0o755));
                    parent = d.parent();
                }
            }
            map.insert(p.clone(), n.clone());
        }
        let mut v: Vec<(String, Node)> = map.into_iter().collect();
        v.sort_by(|a, b| compare_paths(&a.0, &b.0));
        v
    }

    /// The tree a full bundle installs (or a patch's entries, deletions left out).
    pub fn tree(&self) -> Tree {
        let mut t = Tree::new();
        for (p, n) in self.ordered() {
            if let Some(k) = Kind::of(&n) {
                t.insert(p, k);
            }
        }
        t
    }

    /// This bundle's effect on `base` (a patch), or its tree (a full bundle).
    pub fn applied_to(&self, base: &Tree) -> Tree {
        if self.full {
            return self.tree();
        }
        let mut t = base.clone();
        for (p, n) in self.ordered() {
            match Kind::of(&n) {
                Some(k) => {
                    t.insert(p, k);
                }
                None => {
                    let prefix = format!("{p}/");
                    t.retain(|q, _| q != &p && !q.starts_with(&prefix));
                }
            }
        }
        t
    }
}

fn script(s: &Script) -> Cmd<'_> {
    Cmd {
        script: &s.text,
        chroot: s.chroot,
        timeout_secs: s.timeout_secs,
    }
}

/// The manifest of `spec`, payload fields left for the encoder to fill in.
pub fn manifest(spec: &Spec) -> Manifest<'_> {
    let mut m = Manifest {
        version: &spec.version,
        compatible: &spec.compatible,
        release: spec.release,
        allow_downgrade: spec.allow_downgrade,
        kind: if spec.full {
            BundleKind::Full
        } else {
            BundleKind::Patch {
                base_version: &spec.base_version,
            }
        },
        created: 0,
        comment: &spec.comment,
        recipe: Recipe {
            before: spec.before.as_ref().map(script),
            packages: Default::default(),
            npm_prefix: None,
            after: spec.after.as_ref().map(script),
            health_check: spec
                .health
                .as_ref()
                .map(|(s, attempts, interval)| HealthCheck {
                    command: script(s),
                    attempts: *attempts,
                    interval_secs: *interval,
                }),
            rollback: Rollback {
                revert: spec.revert,
                command: spec.rollback_command.as_ref().map(script),
                reboot: spec.reboot,
            },
        },
        payload: Payload::default(),
        entries: EntryTable {
            specials: spec.specials,
            ..EntryTable::default()
        },
    };
    for (manager, name) in &spec.packages {
        m.recipe
            .packages
            .push(Package {
                manager: *manager,
                name,
                version: None,
                file: None,
            })
            .unwrap();
    }
    for (manager, name, file) in &spec.package_files {
        m.recipe
            .packages
            .push(Package {
                manager: *manager,
                name,
                version: None,
                file: Some(file),
            })
            .unwrap();
    }
    m
}

/// Builds a signed bundle; panics if the encoder refuses.
pub fn build(spec: &Spec) -> Vec<u8> {
    try_build(spec).unwrap_or_else(|e| panic!("building {}: {e}", spec.version))
}

/// Builds a signed bundle.
pub fn try_build(spec: &Spec) -> std::io::Result<Vec<u8>> {
    let opts = EncoderOptions {
        chunk_size: spec.chunk_size,
        check_policy: spec.check_policy,
        limits: spec.limits,
        ..EncoderOptions::default()
    };
    let mut enc = Encoder::new(Cursor::new(Vec::new()), opts, spec.full, spec.specials)?;
    for (path, node) in spec.ordered() {
        let (kind, content, mode) = match &node {
            Node::File(c, mode) => (
                EntryKind::File {
                    size: c.len() as u64,
                    digest: *blake3::hash(c).as_bytes(),
                },
                Some(c.as_slice()),
                *mode,
            ),
            Node::Dir(mode) => (EntryKind::Dir, None, *mode),
            Node::Symlink(t) => (EntryKind::Symlink { target: t }, None, 0o777),
            Node::Hardlink(t) => (EntryKind::Hardlink { target: t }, None, 0o644),
            Node::Delete => (EntryKind::Delete, None, 0),
            Node::CharDev => (EntryKind::CharDevice { major: 1, minor: 3 }, None, 0o666),
            Node::Fifo => (EntryKind::Fifo, None, 0o644),
            Node::Socket => (EntryKind::Socket, None, 0o644),
        };
        let h = EntryHeader {
            path: &path,
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
        };
        let mut c = content.map(Cursor::new);
        enc.add(&h, c.as_mut().map(|c| c as &mut dyn std::io::Read))?;
    }
    let mut out = Vec::new();
    enc.finish(manifest(spec), &spec.keys, &mut out)?;
    Ok(out)
}

/// A bundle taken apart: the manifest bytes and the payload's chunks (claimed raw length, zstd frame).
pub struct Parts {
    pub manifest: Vec<u8>,
    pub chunks: Vec<(u32, Vec<u8>)>,
    /// Offset of the first chunk header.
    pub payload_start: usize,
    /// Offset of each chunk header.
    pub chunk_offsets: Vec<usize>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Splits a well-formed bundle into its parts.
pub fn parse(b: &[u8]) -> Parts {
    assert_eq!(&b[..8], &MAGIC);
    let mlen = le32(b, 12) as usize;
    let nsig = usize::from(b[HEADER_LEN]);
    let mstart = HEADER_LEN + 4 + nsig * 72;
    let manifest = b[mstart..mstart + mlen].to_vec();
    let payload_start = mstart + mlen;
    let mut at = payload_start;
    let (mut chunks, mut chunk_offsets) = (Vec::new(), Vec::new());
    while at < b.len() {
        let wire = le32(b, at) as usize;
        let raw = le32(b, at + 4);
        chunk_offsets.push(at);
        chunks.push((
            raw,
            b[at + CHUNK_HEADER_LEN..at + CHUNK_HEADER_LEN + wire].to_vec(),
        ));
        at += CHUNK_HEADER_LEN + wire;
    }
    Parts {
        manifest,
        chunks,
        payload_start,
        chunk_offsets,
    }
}

/// The digest of the first chunk and the wire length of `chunks`, as a manifest must sign them.
pub fn payload_of(chunks: &[(u32, Vec<u8>)]) -> ([u8; 32], u64) {
    let digests = chain(chunks);
    let wire = chunks
        .iter()
        .map(|f| (CHUNK_HEADER_LEN + f.1.len()) as u64)
        .sum();
    (digests.first().copied().unwrap_or([0; 32]), wire)
}

fn chunk_header(f: &(u32, Vec<u8>), next: &[u8; 32]) -> Vec<u8> {
    let mut h = Vec::with_capacity(CHUNK_HEADER_LEN);
    h.extend_from_slice(&(f.1.len() as u32).to_le_bytes());
    h.extend_from_slice(&f.0.to_le_bytes());
    h.extend_from_slice(next);
    h
}

/// Each chunk's digest (over its header, which carries the next chunk's digest, and its frame).
fn chain(chunks: &[(u32, Vec<u8>)]) -> Vec<[u8; 32]> {
    let mut digests = vec![[0u8; 32]; chunks.len()];
    let mut next = [0u8; 32];
    for (i, f) in chunks.iter().enumerate().rev() {
        let mut h = blake3::Hasher::new();
        h.update(&chunk_header(f, &next));
        h.update(&f.1);
        next = *h.finalize().as_bytes();
        digests[i] = next;
    }
    digests
}

/// Signs `m` exactly as given with `keys` and appends `chunks` (their chain recomputed).
pub fn assemble(m: &Manifest<'_>, chunks: &[(u32, Vec<u8>)], keys: &[SigningKey]) -> Vec<u8> {
    assemble_bytes(&postcard::to_allocvec(m).unwrap(), chunks, keys)
}

/// Signs raw manifest bytes (which need not decode) and appends `chunks`.
pub fn assemble_bytes(mb: &[u8], chunks: &[(u32, Vec<u8>)], keys: &[SigningKey]) -> Vec<u8> {
    let digests = chain(chunks);
    let mut hdr = [0u8; HEADER_LEN];
    hdr[..8].copy_from_slice(&MAGIC);
    hdr[8..10].copy_from_slice(&FORMAT_MAJOR.to_le_bytes());
    hdr[10..12].copy_from_slice(&FORMAT_MINOR.to_le_bytes());
    hdr[12..16].copy_from_slice(&(mb.len() as u32).to_le_bytes());
    let msg = signed_message(&hdr, mb);
    let mut out = hdr.to_vec();
    out.extend_from_slice(&[keys.len() as u8, 0, 0, 0]);
    for k in keys {
        out.extend_from_slice(&key_id(k.verifying_key().as_bytes()));
        out.extend_from_slice(&k.sign(&msg).to_bytes());
    }
    out.extend_from_slice(mb);
    for (i, f) in chunks.iter().enumerate() {
        out.extend_from_slice(&chunk_header(
            f,
            &digests.get(i + 1).copied().unwrap_or([0; 32]),
        ));
        out.extend_from_slice(&f.1);
    }
    out
}

/// What a path is, for comparing installed trees with bundles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// BLAKE3 digest (hex) and permission bits.
    File(String, u32),
    Dir,
    Symlink(String),
}

impl Kind {
    fn of(n: &Node) -> Option<Kind> {
        match n {
            Node::File(c, mode) => Some(Kind::File(blake3::hash(c).to_hex().to_string(), *mode)),
            Node::Dir(_) => Some(Kind::Dir),
            Node::Symlink(t) => Some(Kind::Symlink(t.clone())),
            _ => None,
        }
    }
}

/// A tree: relative path to kind.
pub type Tree = BTreeMap<String, Kind>;

/// Reads the tree below `dir` (not following symlinks).
pub fn scan(dir: &Path) -> Tree {
    let mut t = Tree::new();
    walk(dir, "", &mut |rel, path, md| {
        let k = if md.file_type().is_symlink() {
            Kind::Symlink(fs::read_link(path).unwrap().to_string_lossy().into_owned())
        } else if md.is_dir() {
            Kind::Dir
        } else {
            let bytes = fs::read(path).unwrap();
            Kind::File(
                blake3::hash(&bytes).to_hex().to_string(),
                md.permissions().mode() & 0o7777,
            )
        };
        t.insert(rel.to_string(), k);
    });
    t
}

fn walk(dir: &Path, prefix: &str, f: &mut dyn FnMut(&str, &Path, &fs::Metadata)) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names {
        let rel = if prefix.is_empty() {
            n.to_string_lossy().into_owned()
        } else {
            format!("{prefix}/{}", n.to_string_lossy())
        };
        let path = dir.join(&n);
        let md = fs::symlink_metadata(&path).unwrap();
        f(&rel, &path, &md);
        if md.is_dir() {
            walk(&path, &rel, f);
        }
    }
}

/// A digest of everything observable about the tree below `dir`: names, types, content,
/// link targets, permission bits, owners and modification times. Equal fingerprints mean
/// the tree is byte-identical.
pub fn fingerprint(dir: &Path) -> String {
    let mut h = blake3::Hasher::new();
    walk(dir, "", &mut |rel, path, md| {
        let mut line = format!(
            "{rel}\0{:o}\0{}:{}\0{}.{}\0",
            md.mode(),
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec()
        );
        if md.file_type().is_symlink() {
            line.push_str(&fs::read_link(path).unwrap().to_string_lossy());
        } else if md.is_file() {
            line.push_str(&blake3::hash(&fs::read(path).unwrap()).to_hex());
        }
        h.update(line.as_bytes());
        h.update(b"\n");
    });
    h.finalize().to_hex().to_string()
}

/// Describes how two trees differ (empty when equal).
pub fn diff(want: &Tree, got: &Tree) -> String {
    let mut s = String::new();
    for (p, k) in want {
        match got.get(p) {
            None => writeln!(s, "  missing {p} ({k:?})").unwrap(),
            Some(g) if g != k => writeln!(s, "  differs {p}: want {k:?}, got {g:?}").unwrap(),
            _ => {}
        }
    }
    for (p, k) in got {
        if !want.contains_key(p) {
            writeln!(s, "  extra {p} ({k:?})").unwrap();
        }
    }
    s
}

/// The outcome of one agent run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub out: String,
}

impl Run {
    pub fn killed(&self) -> bool {
        self.signal == Some(9)
    }
}

/// Configuration knobs of a test device.
#[derive(Clone, Default)]
pub struct Opts {
    /// Extra trusted keys (beside [`key()`]).
    pub extra_keys: Vec<SigningKey>,
    pub revoked: Vec<SigningKey>,
    /// Lines for the `[limits]` table.
    pub limits: Vec<String>,
    pub trial_boots: Option<u8>,
}

/// A device: a temp root with a config, driven through the agent binary.
pub struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    pub fn new() -> Device {
        Device::with(Opts::default())
    }

    pub fn with(o: Opts) -> Device {
        Device::with_in(o, &std::env::temp_dir())
    }

    /// A device whose root is a new directory inside `parent` (a scratch file system).
    pub fn in_dir(parent: &Path) -> Device {
        Device::with_in(Opts::default(), parent)
    }

    fn with_in(o: Opts, parent: &Path) -> Device {
        let dir = tempfile::tempdir_in(parent).unwrap();
        let root = dir.path().display().to_string();
        let mut keys = vec![pub_hex(&key())];
        keys.extend(o.extra_keys.iter().map(pub_hex));
        let quote = |v: Vec<String>| {
            v.iter()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut cfg = format!(
            "root = \"{root}\"\ncompatible = \"{BOARD}\"\ntrusted_keys = [{}]\nrevoked_keys = [{}]\nreboot_command = \"echo rebooting-now; touch {root}/markers/rebooted\"\n",
            quote(keys),
            quote(o.revoked.iter().map(id_hex).collect()),
        );
        if let Some(t) = o.trial_boots {
            writeln!(cfg, "trial_boots = {t}").unwrap();
        }
        cfg.push_str("\n[timeouts]\ncommand_secs = 10\ndownload_stall_secs = 5\n");
        if !o.limits.is_empty() {
            cfg.push_str("\n[limits]\n");
            for l in &o.limits {
                writeln!(cfg, "{l}").unwrap();
            }
        }
        fs::create_dir_all(dir.path().join("markers")).unwrap();
        fs::write(dir.path().join("agent.toml"), cfg).unwrap();
        Device { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn data(&self) -> PathBuf {
        self.root().join("var/lib/molt")
    }

    /// A marker file path scripts may touch.
    pub fn marker(&self, name: &str) -> PathBuf {
        self.root().join("markers").join(name)
    }

    /// Runs the agent with `args`; `crash_at` sets the kill -9 test hook.
    pub fn agent(&self, args: &[&str], crash_at: Option<&str>) -> Run {
        match crash_at {
            Some(p) => self.agent_env(args, &[("MOLT_TEST_CRASH_AT", p)]),
            None => self.agent_env(args, &[]),
        }
    }

    /// Runs the agent with `args` and extra environment (test hooks).
    pub fn agent_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = Command::new(AGENT);
        c.arg("--config")
            .arg(self.root().join("agent.toml"))
            .args(args)
            .env("MOLT_LOG", "warn")
            .env_remove("MOLT_TEST_CRASH_AT")
            .env_remove("MOLT_TEST_CRASH_AT_BYTE")
            .env_remove("MOLT_TEST_CHECKPOINT_BYTES");
        c.envs(env.iter().copied());
        let o = c.output().unwrap();
        Run {
            code: o.status.code(),
            signal: o.status.signal(),
            out: format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        }
    }

    /// Writes `bytes` to a file in the root and installs it.
    pub fn install_bytes(&self, name: &str, bytes: &[u8], crash_at: Option<&str>) -> Run {
        let p = self.root().join("bundles").join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        self.agent(&["install", p.to_str().unwrap()], crash_at)
    }

    /// Builds and installs `spec`, expecting success.
    pub fn install_ok(&self, spec: &Spec) {
        let r = self.install_bytes(&format!("{}.molt", spec.version), &build(spec), None);
        assert_eq!(
            r.code,
            Some(0),
            "installing {} should succeed: {}\n{}",
            spec.version,
            r.out,
            self.status()
        );
    }

    /// Where `current` points (relative, as stored).
    pub fn current_link(&self) -> PathBuf {
        fs::read_link(self.data().join("current")).unwrap()
    }

    /// The active snapshot's directory.
    pub fn current_dir(&self) -> PathBuf {
        self.data().join(self.current_link())
    }

    /// The active snapshot's tree.
    pub fn tree(&self) -> Tree {
        scan(&self.current_dir())
    }

    /// The active snapshot's fingerprint.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.current_dir())
    }

    /// `molt-agent recover`: settles an interrupted install (the next start after a
    /// crash), then prints the status.
    pub fn recover(&self) -> String {
        let r = self.agent(&["recover"], None);
        assert_eq!(r.code, Some(0), "recover failed: {}", r.out);
        r.out
    }

    /// `molt-agent status`: read only, settles nothing.
    pub fn status(&self) -> String {
        let r = self.agent(&["status"], None);
        assert_eq!(r.code, Some(0), "status failed: {}", r.out);
        r.out
    }

    /// The last final report (the `status` file).
    pub fn last_result(&self) -> String {
        fs::read_to_string(self.data().join("status")).unwrap_or_default()
    }

    /// The install log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.data().join("install.log")).unwrap_or_default()
    }
}

/// The `install` line of a status report (the journal's phase).
pub fn install_phase(status: &str) -> &str {
    status
        .lines()
        .find_map(|l| l.strip_prefix("install"))
        .map(str::trim)
        .unwrap_or("?")
}

/// The slot the status report marks active (`a` or `b`).
pub fn active_slot(status: &str) -> Option<String> {
    status
        .lines()
        .find(|l| l.starts_with("slot ") && l.ends_with("(active)"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
}

/// A loop-mounted XFS file system (with reflinks) for tests that copy whole root file
/// systems: a slot clone is then a reflink per file instead of a data copy. Dropping it
/// unmounts (lazily if still busy) and deletes the image.
pub struct Scratch {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Scratch {
    /// A sparse `size`-byte XFS image mounted in a temp dir; `None` (with the reason
    /// printed) when mkfs.xfs or loop mounts are not available.
    pub fn xfs(size: u64) -> Option<Scratch> {
        let mkfs = ["/usr/sbin/mkfs.xfs", "/sbin/mkfs.xfs", "/usr/bin/mkfs.xfs"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(mkfs) = mkfs else {
            println!("no mkfs.xfs: using the temp directory's file system (slower clones)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("scratch.img");
        fs::File::create(&img).unwrap().set_len(size).unwrap();
        let ok = Command::new(mkfs)
            .args(["-q", "-m", "reflink=1"])
            .arg(&img)
            .status()
            .unwrap();
        assert!(ok.success(), "mkfs.xfs failed");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        // util-linux mount sets the loop device up with autoclear: unmounting frees it.
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .status()
            .unwrap();
        if !st.success() {
            println!("cannot loop-mount an XFS image: using the temp directory's file system");
            return None;
        }
        Some(Scratch { _dir: dir, mnt })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}
