//! The one test-bundle builder: entries with owned fields, a [`Spec`] of everything a bundle is made of, built and signed in-process with the engine's encoder.
//!
//! The engine's tests write entries as [`E`] (`file`, `dir`, ... and
//! `Spec { entries, ..Spec::default() }`, kept in the order given); the agent's
//! tests as [`Spec::full`] / [`Spec::patch`] with [`Node`]s (sorted, parents added).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use ed25519_dalek::SigningKey;
use molt_engine::bundle::encoder::{Encoder, EncoderOptions};
use molt_engine::bundle::format::{EntryTable, Payload};
use molt_engine::bundle::policy::compare_paths;
use molt_engine::bundle::{
    BundleKind, Command as Cmd, EntryHeader, EntryKind, HealthCheck, Manifest, Package,
    PackageManager, Recipe, Rollback, Specials,
};
use molt_engine::Limits;

use crate::keys::{key, seeded};

/// The `compatible` string of every test device and bundle.
pub const BOARD: &str = "test-board";

/// What an entry is, with its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum K {
    /// A regular file and its content.
    File(Vec<u8>),
    /// A directory.
    Dir,
    /// A symlink and its target.
    Symlink(String),
    /// A hardlink to an earlier file.
    Hardlink(String),
    /// A patch's deletion.
    Delete,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
    /// A character device (1, 3: /dev/null).
    CharDev,
}

/// An entry with owned fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct E {
    /// Its path in the bundle.
    pub path: String,
    /// What it is.
    pub kind: K,
    /// Permission bits (and setuid, setgid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// An entry owned by root with the tests' fixed mtime.
pub fn entry(path: &str, kind: K, mode: u32) -> E {
    E {
        path: path.into(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
    }
}
/// A regular file, mode 0644.
pub fn file(path: &str, content: &[u8]) -> E {
    entry(path, K::File(content.to_vec()), 0o644)
}
/// A directory, mode 0755.
pub fn dir(path: &str) -> E {
    entry(path, K::Dir, 0o755)
}
/// A symlink to `target`.
pub fn symlink(path: &str, target: &str) -> E {
    entry(path, K::Symlink(target.into()), 0o777)
}
/// A hardlink to the earlier file `target`.
pub fn hardlink(path: &str, target: &str) -> E {
    entry(path, K::Hardlink(target.into()), 0o644)
}
/// A patch's deletion.
pub fn delete(path: &str) -> E {
    entry(path, K::Delete, 0)
}
/// A named pipe, mode 0640.
pub fn fifo(path: &str) -> E {
    entry(path, K::Fifo, 0o640)
}

impl E {
    /// With permission bits `mode`.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
    /// Owned by `uid:gid`.
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    /// With modification time `mtime`.
    pub fn mtime(mut self, mtime: i64) -> Self {
        self.mtime = mtime;
        self
    }

    /// The header the encoder writes for this entry's path, mode, owner and mtime,
    /// with `kind` (which may claim what the entry's content does not: a hostile event).
    pub fn header_as<'a>(&'a self, kind: EntryKind<'a>) -> EntryHeader<'a> {
        EntryHeader {
            path: &self.path,
            kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
        }
    }
}

/// `len` bytes of `hello molt\n` repeated: compressible text, beside
/// [`noise`](crate::noise) which is not.
pub fn text(len: usize) -> Vec<u8> {
    b"hello molt\n".iter().copied().cycle().take(len).collect()
}

/// The agent tests' shorthand for an entry's kind and mode ([`Spec::with`]).
#[derive(Clone, Debug)]
pub enum Node {
    /// Content and mode.
    File(Vec<u8>, u32),
    /// Mode.
    Dir(u32),
    /// Target.
    Symlink(String),
    /// Target.
    Hardlink(String),
    /// A patch's deletion.
    Delete,
    /// /dev/null's numbers, 0666.
    CharDev,
    /// 0644.
    Fifo,
    /// 0644.
    Socket,
}

impl Node {
    /// This node as an entry at `path`.
    pub fn at(self, path: &str) -> E {
        match self {
            Node::File(c, mode) => entry(path, K::File(c), mode),
            Node::Dir(mode) => entry(path, K::Dir, mode),
            Node::Symlink(t) => entry(path, K::Symlink(t), 0o777),
            Node::Hardlink(t) => entry(path, K::Hardlink(t), 0o644),
            Node::Delete => entry(path, K::Delete, 0),
            Node::CharDev => entry(path, K::CharDev, 0o666),
            Node::Fifo => entry(path, K::Fifo, 0o644),
            Node::Socket => entry(path, K::Socket, 0o644),
        }
    }
}

/// A recipe command.
#[derive(Clone, Debug)]
pub struct Script {
    /// The bash script.
    pub text: String,
    /// Run it chrooted into the new snapshot.
    pub chroot: bool,
    /// Its timeout.
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
    /// The manifest's version.
    pub version: String,
    /// The manifest's release number.
    pub release: u64,
    /// A full bundle (else a patch).
    pub full: bool,
    /// A patch's base version.
    pub base_version: String,
    /// The board it is for.
    pub compatible: String,
    /// Whether a lower release may install.
    pub allow_downgrade: bool,
    /// The manifest's comment.
    pub comment: String,
    /// Entries; sorted (and given their parent directories in a full bundle) unless `raw_order`.
    pub entries: Vec<E>,
    /// Keep `entries` exactly as given (crafted bundles, the engine's order tests).
    pub raw_order: bool,
    /// Run the encoder's entry and manifest checks (off to craft bad bundles).
    pub check_policy: bool,
    /// Which special entries the bundle may carry.
    pub specials: Specials,
    /// The recipe's `before` stage.
    pub before: Option<Script>,
    /// The recipe's `after` stage.
    pub after: Option<Script>,
    /// The health check: command, attempts, interval in seconds.
    pub health: Option<(Script, u16, u32)>,
    /// The rollback command.
    pub rollback_command: Option<Script>,
    /// Whether a rollback reverts the files.
    pub revert: bool,
    /// Whether a rollback reboots.
    pub reboot: bool,
    /// Packages from the network: manager, name.
    pub packages: Vec<(PackageManager, String)>,
    /// Packages shipped in the bundle: manager, name, the file's path in the bundle
    /// (`.molt/packages/<manager>/<file>`; add the file entry itself with [`Spec::with`]).
    pub package_files: Vec<(PackageManager, String, String)>,
    /// The signing keys.
    pub keys: Vec<SigningKey>,
    /// The encoder's chunk size.
    pub chunk_size: u32,
    /// Encoder limits (raise `max_manifest_len` to craft an oversized manifest).
    pub limits: Limits,
}

impl Default for Spec {
    /// The engine tests' bundle: version 1.0.0, release 5, signed with `seeded(1)`,
    /// entries in the order given, the default recipe.
    fn default() -> Self {
        Spec {
            version: "1.0.0".into(),
            release: 5,
            full: true,
            base_version: String::new(),
            compatible: BOARD.into(),
            allow_downgrade: false,
            comment: "test".into(),
            entries: Vec::new(),
            raw_order: true,
            check_policy: true,
            specials: Specials::default(),
            before: None,
            after: None,
            health: None,
            rollback_command: None,
            revert: Rollback::default().revert,
            reboot: Rollback::default().reboot,
            packages: Vec::new(),
            package_files: Vec::new(),
            keys: vec![seeded(1)],
            chunk_size: 16 * 1024,
            limits: Limits::DEFAULT,
        }
    }
}

impl Spec {
    /// A full bundle of `files` (path, content), mode 0644, parents added, signed with [`key()`].
    pub fn full(version: &str, release: u64, files: &[(&str, &[u8])]) -> Spec {
        Spec {
            version: version.into(),
            release,
            comment: String::new(),
            entries: files.iter().map(|(p, c)| file(p, c)).collect(),
            raw_order: false,
            keys: vec![key()],
            ..Spec::default()
        }
    }

    /// A patch bundle: `files` replace or add, `deletes` are removed.
    pub fn patch(version: &str, release: u64, files: &[(&str, &[u8])], deletes: &[&str]) -> Spec {
        let mut s = Spec::full(version, release, files);
        s.full = false;
        s.entries.extend(deletes.iter().map(|d| delete(d)));
        s
    }

    /// Adds an entry.
    pub fn with(mut self, path: &str, node: Node) -> Spec {
        self.entries.push(node.at(path));
        self
    }

    /// The entries in bundle order.
    pub fn ordered(&self) -> Vec<E> {
        if self.raw_order {
            return self.entries.clone();
        }
        let mut map: BTreeMap<String, E> = BTreeMap::new();
        for e in &self.entries {
            if self.full {
                let mut parent = Path::new(&e.path).parent();
                while let Some(d) = parent.filter(|d| !d.as_os_str().is_empty()) {
                    let name = d.to_string_lossy().into_owned();
                    map.entry(name.clone()).or_insert_with(|| dir(&name));
                    parent = d.parent();
                }
            }
            map.insert(e.path.clone(), e.clone());
        }
        let mut v: Vec<E> = map.into_values().collect();
        v.sort_by(|a, b| compare_paths(&a.path, &b.path));
        v
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
    let files = spec.package_files.iter().map(|(m, n, f)| (m, n, Some(f)));
    let packages = spec.packages.iter().map(|(m, n)| (m, n, None));
    for (manager, name, file) in packages.chain(files) {
        m.recipe
            .packages
            .push(Package {
                manager: *manager,
                name,
                version: None,
                file: file.map(String::as_str),
            })
            .expect("the recipe's package list has room");
    }
    m
}

/// Builds a signed bundle; panics if the encoder refuses (tests that expect it to
/// refuse use [`try_build`]).
pub fn build(spec: &Spec) -> Vec<u8> {
    try_build(spec).unwrap_or_else(|e| panic!("building {}: {e}", spec.version))
}

/// Builds a signed bundle.
pub fn try_build(spec: &Spec) -> std::io::Result<Vec<u8>> {
    build_with(spec, manifest(spec))
}

/// Builds a signed bundle of `spec`'s entries with the manifest `m`.
pub fn build_with(spec: &Spec, m: Manifest<'_>) -> std::io::Result<Vec<u8>> {
    let opts = EncoderOptions {
        chunk_size: spec.chunk_size,
        check_policy: spec.check_policy,
        limits: spec.limits,
        ..EncoderOptions::default()
    };
    let mut enc = Encoder::new(Cursor::new(Vec::new()), opts, spec.full, spec.specials)?;
    for e in spec.ordered() {
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
        let mut c = content.map(Cursor::new);
        enc.add(
            &e.header_as(kind),
            c.as_mut().map(|c| c as &mut dyn std::io::Read),
        )?;
    }
    let mut out = Vec::new();
    enc.finish(m, &spec.keys, &mut out)?;
    Ok(out)
}
