//! The recipe file (TOML): parsing, checking against the engine's rules, and planning the bundle's entries.
//!
//! A recipe mirrors the six stages of an update (general details, before, files,
//! packages, after with its health check, rollback); docs/recipe.md describes every
//! field. [`load`] turns one into a [`Plan`]: every field checked, scripts read,
//! directories walked, and the entries sorted in the engine's order, so the build
//! that follows only streams bytes. Every error names the recipe field or the file
//! that caused it, because the operator fixes the recipe, not the manifest.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use molt_engine::bundle::format::{
    EntryTable, Payload, DEFAULT_CHUNK_SIZE, MAX_PACKAGES, RESERVED_DIR,
};
use molt_engine::bundle::policy::{check_path, compare_paths, BadPath};
use molt_engine::bundle::{
    BundleKind, Command, HealthCheck, Manifest, Package, PackageManager, Recipe, Rollback, Specials,
};
use molt_engine::{Error, Limits};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Default timeout of the before, after and rollback commands, in seconds.
pub const DEFAULT_TIMEOUT: u32 = 300;
/// Default timeout of one health-check attempt, in seconds.
pub const DEFAULT_HEALTH_TIMEOUT: u32 = 30;

// ---------------------------------------------------------------------------
// The file as written: serde types, every table closed with `deny_unknown_fields`
// so a misspelt key is an error instead of a silently ignored setting.

/// A recipe file exactly as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    /// The update version (required).
    pub version: String,
    /// The hardware or product the bundle is for (required).
    pub compatible: String,
    /// Anti-rollback counter; defaults to the build time in Unix seconds.
    pub release: Option<u64>,
    /// Allow installing below the device's release floor.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// The group the controller deploys to first; not part of the bundle.
    pub target_group: Option<String>,
    /// Free text for operators.
    #[serde(default)]
    pub comment: String,
    /// Patch (default) or full.
    #[serde(default)]
    pub kind: Kind,
    /// Patch only: the version the device must be on; absent means any.
    pub base_version: Option<String>,
    /// Allow setuid/setgid files (declared in the manifest).
    #[serde(default)]
    pub allow_setid: bool,
    /// Paths to delete from the snapshot (patch only).
    #[serde(default)]
    pub delete: Vec<String>,
    /// Stage 2: run before anything changes.
    pub before: Option<CommandSpec>,
    /// Stage 3: files and directories.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Stage 4: packages.
    #[serde(default)]
    pub packages: PackagesSpec,
    /// Stage 5: run once the new snapshot is active.
    pub after: Option<CommandSpec>,
    /// Stage 5: must pass after `after`.
    pub health_check: Option<HealthSpec>,
    /// Stage 6: what to do on failure.
    #[serde(default)]
    pub rollback: RollbackSpec,
}

impl RecipeFile {
    /// Every path the recipe reads, with the field that names it (`[before] script`,
    /// `[[files]] #2 source`, `packages.apt #1 file`), in recipe order: what a client
    /// must send beside the recipe for a server-side build, and what the server checks
    /// it received.
    pub fn named_paths(&self) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        let scripts = [
            (
                "[before]",
                self.before.as_ref().and_then(|c| c.script.clone()),
            ),
            (
                "[after]",
                self.after.as_ref().and_then(|c| c.script.clone()),
            ),
            (
                "[health_check]",
                self.health_check.as_ref().and_then(|c| c.script.clone()),
            ),
            ("[rollback]", self.rollback.script.clone()),
        ];
        for (table, script) in scripts {
            if let Some(s) = script {
                out.push((format!("{table} script"), s));
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            out.push((format!("[[files]] #{} source", i + 1), f.source.clone()));
        }
        let p = &self.packages;
        for (mgr, items) in [
            ("apt", &p.apt),
            ("pip", &p.pip),
            ("pip3", &p.pip3),
            ("npm", &p.npm),
        ] {
            for (i, item) in items.iter().enumerate() {
                if let PackageItem::Long(t) = item {
                    if let Some(file) = &t.file {
                        out.push((format!("packages.{mgr} #{} file", i + 1), file.clone()));
                    }
                }
            }
        }
        out
    }
}

/// Whether the bundle patches the active snapshot or replaces it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Active snapshot plus the bundle's entries and deletions (the micro-update model).
    #[default]
    Patch,
    /// Exactly the bundle's tree.
    Full,
}

/// `[before]` and `[after]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// An inline bash command or script.
    pub run: Option<String>,
    /// A script file, relative to the recipe's directory, embedded in the manifest.
    pub script: Option<PathBuf>,
    /// Run inside a chroot of the new snapshot.
    #[serde(default)]
    pub chroot: bool,
    /// Seconds before the command is killed.
    pub timeout: Option<u32>,
}

/// `[health_check]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// The check; exit status 0 means healthy.
    pub run: Option<String>,
    /// A script file instead of `run`.
    pub script: Option<PathBuf>,
    /// Run inside a chroot of the new snapshot.
    #[serde(default)]
    pub chroot: bool,
    /// Seconds per attempt.
    pub timeout: Option<u32>,
    /// Attempts before the update fails.
    #[serde(default = "default_attempts")]
    pub attempts: u16,
    /// Seconds between attempts.
    #[serde(default = "default_interval")]
    pub interval: u32,
}

fn default_attempts() -> u16 {
    3
}

fn default_interval() -> u32 {
    5
}

fn default_true() -> bool {
    true
}

/// `[rollback]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackSpec {
    /// Return to the previous snapshot's files.
    #[serde(default = "default_true")]
    pub revert: bool,
    /// A command to run after reverting.
    pub run: Option<String>,
    /// A script file instead of `run`.
    pub script: Option<PathBuf>,
    /// Run the command inside a chroot of the (restored) snapshot.
    #[serde(default)]
    pub chroot: bool,
    /// Seconds before the command is killed.
    pub timeout: Option<u32>,
    /// Reboot the device last.
    #[serde(default)]
    pub reboot: bool,
}

impl Default for RollbackSpec {
    fn default() -> Self {
        RollbackSpec {
            revert: true,
            run: None,
            script: None,
            chroot: false,
            timeout: None,
            reboot: false,
        }
    }
}

/// One `[[files]]` item.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// A file or directory, relative to the recipe's directory.
    pub source: PathBuf,
    /// Where it goes inside the snapshot.
    pub destination: String,
    /// Permission bits of the destination itself, as octal text (`"0755"`).
    pub mode: Option<String>,
    /// Owner of every entry from this source (default 0).
    pub uid: Option<u32>,
    /// Group of every entry from this source (default 0).
    pub gid: Option<u32>,
}

/// `[packages]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagesSpec {
    /// `apt-get install` / `dpkg -i`.
    #[serde(default)]
    pub apt: Vec<PackageItem>,
    /// `pip install`.
    #[serde(default)]
    pub pip: Vec<PackageItem>,
    /// `pip3 install`.
    #[serde(default)]
    pub pip3: Vec<PackageItem>,
    /// `npm install`.
    #[serde(default)]
    pub npm: Vec<PackageItem>,
    /// Where npm installs, inside the snapshot.
    pub npm_prefix: Option<String>,
}

/// A package as written: `"name"`, `"name=version"` (npm `"name@version"`) or a table.
#[derive(Debug, Clone)]
pub enum PackageItem {
    /// The short string form.
    Short(String),
    /// The table form.
    Long(PackageTable),
}

/// The table form of a package.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageTable {
    /// Package name.
    pub name: String,
    /// Exact version.
    pub version: Option<String>,
    /// A local package file to ship in the bundle, relative to the recipe's directory.
    pub file: Option<PathBuf>,
}

// A hand-written impl rather than `#[serde(untagged)]`: untagged enums report
// "did not match any variant", hiding the real problem (say, an unknown key in the table).
impl<'de> Deserialize<'de> for PackageItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PackageItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a package: "name", "name=version" or { name, version, file }"#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PackageItem, E> {
                Ok(PackageItem::Short(s.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PackageItem, A::Error> {
                PackageTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(PackageItem::Long)
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// The plan: what the build writes.

/// A command as the manifest carries it.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// The script text.
    pub script: String,
    /// Run in a chroot of the new snapshot.
    pub chroot: bool,
    /// Seconds.
    pub timeout: u32,
}

impl Cmd {
    fn as_command(&self) -> Command<'_> {
        Command {
            script: &self.script,
            chroot: self.chroot,
            timeout_secs: self.timeout,
        }
    }
}

/// The health check with its retry budget.
#[derive(Debug, Clone)]
pub struct Health {
    /// The check.
    pub command: Cmd,
    /// Attempts before the update fails.
    pub attempts: u16,
    /// Seconds between attempts.
    pub interval: u32,
}

/// What to do when a stage fails.
#[derive(Debug, Clone)]
pub struct RollbackPlan {
    /// Return to the previous snapshot.
    pub revert: bool,
    /// Run after reverting.
    pub command: Option<Cmd>,
    /// Reboot last.
    pub reboot: bool,
}

/// A package as the manifest carries it.
#[derive(Debug, Clone)]
pub struct Pkg {
    /// Which manager installs it.
    pub manager: PackageManager,
    /// Name.
    pub name: String,
    /// Exact version.
    pub version: Option<String>,
    /// Path of the shipped file inside the bundle (under `.molt/packages/`).
    pub file: Option<String>,
    /// How the recipe names it, for messages.
    pub label: String,
}

/// What an entry of the plan is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedKind {
    /// A regular file copied from `source`.
    File {
        /// The file on the build machine.
        source: PathBuf,
        /// Its size when the recipe was planned.
        size: u64,
    },
    /// A directory.
    Dir,
    /// A symbolic link, kept as a link.
    Symlink {
        /// The link's target, verbatim.
        target: String,
    },
    /// Removes the path from the snapshot.
    Delete,
}

/// How firmly a directory entry was asked for; a collision keeps the firmer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// Added because a full bundle needs every parent.
    Implicit,
    /// Found while walking a directory source.
    Walked,
    /// The destination of a `[[files]]` item itself.
    Named,
}

/// One entry of the bundle, before its content is read.
#[derive(Debug, Clone)]
pub struct PlannedEntry {
    /// Relative, normalized path inside the snapshot (or under `.molt/`).
    pub path: String,
    /// What it is.
    pub kind: PlannedKind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, Unix seconds.
    pub mtime: i64,
    /// Index into [`Plan::origins`]: which part of the recipe asked for it.
    pub origin: usize,
    rank: Rank,
}

/// A checked recipe, ready to build.
#[derive(Debug)]
pub struct Plan {
    /// The update version.
    pub version: String,
    /// The compatible string.
    pub compatible: String,
    /// Anti-rollback counter.
    pub release: u64,
    /// Whether the release may go below the device's floor.
    pub allow_downgrade: bool,
    /// For the controller; not in the bundle.
    pub target_group: Option<String>,
    /// Free text.
    pub comment: String,
    /// Full or patch.
    pub kind: Kind,
    /// Patch only; empty means any.
    pub base_version: String,
    /// Build time, Unix seconds.
    pub created: u64,
    /// `[before]`.
    pub before: Option<Cmd>,
    /// `[after]`.
    pub after: Option<Cmd>,
    /// `[health_check]`.
    pub health_check: Option<Health>,
    /// `[rollback]`.
    pub rollback: RollbackPlan,
    /// `[packages]`, in recipe order (apt, pip, pip3, npm).
    pub packages: Vec<Pkg>,
    /// `packages.npm_prefix`, normalized.
    pub npm_prefix: Option<String>,
    /// Every entry, sorted with `policy::compare_paths`, no duplicates.
    pub entries: Vec<PlannedEntry>,
    /// Descriptions of where entries came from (`[[files]] #2 (source "app")`).
    pub origins: Vec<String>,
    /// Special entries to declare.
    pub specials: Specials,
}

/// Reads, checks and plans the recipe at `path`, built at `time`.
pub fn load(path: &Path, time: BuildTime) -> Result<Plan> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read recipe {}", path.display()))?;
    let file: RecipeFile = toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    plan(file, dir, time).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

/// The environment variable of the reproducible-builds convention: a build's time,
/// in Unix seconds, given by whoever wants to rebuild the same bytes.
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";

/// When a bundle is built, as far as its bytes are concerned.
///
/// The clock is the only input of a build that is not in the recipe, its sources or
/// the key, so it is read once, here. With `SOURCE_DATE_EPOCH` set, the build does
/// not read it at all, and no entry's mtime is later than that time: a fresh checkout
/// stamps every file with the time of the checkout, and two checkouts of one commit
/// must still build one bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildTime {
    /// The manifest's `created`, the default `release`, and the mtime of the
    /// directories and deletions the recipe implies.
    pub created: u64,
    /// Whether entries' mtimes are clamped to `created` (`SOURCE_DATE_EPOCH` given).
    pub clamp: bool,
}

impl BuildTime {
    /// Now, with sources' mtimes kept as they are.
    pub fn now() -> Self {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        BuildTime {
            created,
            clamp: false,
        }
    }

    /// `SOURCE_DATE_EPOCH` when it is set (refused when it is not a number of seconds,
    /// as the convention asks: a silent fallback to the clock would break the
    /// reproducibility it was set for), else [`BuildTime::now`].
    pub fn from_env() -> Result<Self> {
        match std::env::var_os(SOURCE_DATE_EPOCH) {
            None => Ok(Self::now()),
            Some(v) => Self::parse_epoch(&v.to_string_lossy()),
        }
    }

    /// A `SOURCE_DATE_EPOCH` value: decimal Unix seconds.
    pub fn parse_epoch(value: &str) -> Result<Self> {
        let digits = value.trim();
        match digits.parse::<u64>() {
            // i64 is what an entry's mtime holds.
            Ok(created) if !digits.starts_with('+') && created <= i64::MAX as u64 => {
                Ok(BuildTime {
                    created,
                    clamp: true,
                })
            }
            _ => bail!(
                "{SOURCE_DATE_EPOCH}={:?} is not a time in Unix seconds (e.g. `git log -1 --format=%ct`)",
                value
            ),
        }
    }
}

/// Plans `file`, resolving sources against `dir`, built at `time`.
pub fn plan(file: RecipeFile, dir: &Path, time: BuildTime) -> Result<Plan> {
    let created = time.created;
    let full = file.kind == Kind::Full;
    if full && file.base_version.is_some() {
        bail!("`base_version` applies to patch bundles only (this recipe has kind = \"full\")");
    }
    if full && !file.delete.is_empty() {
        bail!(
            "`delete` is only possible in a patch bundle: a full bundle replaces the whole tree \
             (this recipe has kind = \"full\")"
        );
    }
    let mut plan = Plan {
        version: file.version,
        compatible: file.compatible,
        release: file.release.unwrap_or(created),
        allow_downgrade: file.allow_downgrade,
        target_group: file.target_group,
        comment: file.comment,
        kind: file.kind,
        base_version: file.base_version.unwrap_or_default(),
        created,
        before: command(file.before, "[before]", dir, DEFAULT_TIMEOUT)?,
        after: command(file.after, "[after]", dir, DEFAULT_TIMEOUT)?,
        health_check: None,
        rollback: RollbackPlan {
            revert: file.rollback.revert,
            command: None,
            reboot: file.rollback.reboot,
        },
        packages: Vec::new(),
        npm_prefix: None,
        entries: Vec::new(),
        origins: Vec::new(),
        specials: Specials::default(),
    };
    if let Some(h) = file.health_check {
        let spec = CommandSpec {
            run: h.run,
            script: h.script,
            chroot: h.chroot,
            timeout: h.timeout,
        };
        let cmd = command(Some(spec), "[health_check]", dir, DEFAULT_HEALTH_TIMEOUT)?
            .ok_or_else(|| anyhow!("[health_check]: needs `run` or `script`"))?;
        plan.health_check = Some(Health {
            command: cmd,
            attempts: h.attempts,
            interval: h.interval,
        });
    }
    let r = file.rollback;
    if r.run.is_some() || r.script.is_some() {
        let spec = CommandSpec {
            run: r.run,
            script: r.script,
            chroot: r.chroot,
            timeout: r.timeout,
        };
        plan.rollback.command = command(Some(spec), "[rollback]", dir, DEFAULT_TIMEOUT)?;
    } else if r.timeout.is_some() || r.chroot {
        bail!("[rollback]: `timeout` and `chroot` apply to a command; add `run` or `script`");
    }
    if let Some(prefix) = file.packages.npm_prefix.as_deref() {
        plan.npm_prefix = Some(
            prefix
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_owned(),
        );
    }

    let mut planner = Planner {
        dir,
        full,
        allow_setid: file.allow_setid,
        created: created as i64,
        clamp: time.clamp,
        entries: Vec::new(),
        origins: Vec::new(),
        setid_used: false,
    };
    for (mgr, items) in [
        (PackageManager::Apt, &file.packages.apt),
        (PackageManager::Pip, &file.packages.pip),
        (PackageManager::Pip3, &file.packages.pip3),
        (PackageManager::Npm, &file.packages.npm),
    ] {
        for (i, item) in items.iter().enumerate() {
            let pkg = planner.package(mgr, i, item)?;
            plan.packages.push(pkg);
        }
    }
    if plan.packages.len() > MAX_PACKAGES {
        bail!(
            "[packages]: {} packages listed; a bundle carries at most {MAX_PACKAGES}",
            plan.packages.len()
        );
    }
    // The manifest's fields are checked before any file is read, so a typo in the
    // version does not cost a walk of a large tree.
    plan.check_fields()?;
    plan.check_manifest_size()?;

    for (i, spec) in file.files.iter().enumerate() {
        planner.source(i, spec)?;
    }
    for (i, p) in file.delete.iter().enumerate() {
        planner.deletion(i, p)?;
    }
    planner.finish()?;
    plan.specials.setid = planner.setid_used;
    plan.entries = planner.entries;
    plan.origins = planner.origins;
    Ok(plan)
}

/// Turns a `[before]`-like table into a command: exactly one of `run` and `script`.
fn command(
    spec: Option<CommandSpec>,
    table: &str,
    dir: &Path,
    timeout: u32,
) -> Result<Option<Cmd>> {
    let Some(spec) = spec else { return Ok(None) };
    let script = match (spec.run, spec.script) {
        (Some(_), Some(_)) => bail!("{table}: give either `run` or `script`, not both"),
        (None, None) => bail!("{table}: needs `run` (a command) or `script` (a file)"),
        (Some(run), None) => run,
        (None, Some(file)) => {
            let p = dir.join(&file);
            fs::read_to_string(&p)
                .with_context(|| format!("{table} script: cannot read {}", p.display()))?
        }
    };
    Ok(Some(Cmd {
        script,
        chroot: spec.chroot,
        timeout: spec.timeout.unwrap_or(timeout),
    }))
}

impl Plan {
    /// Whether this is a full bundle.
    pub fn is_full(&self) -> bool {
        self.kind == Kind::Full
    }

    /// Sum of the planned file sizes (for the progress bar).
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                PlannedKind::File { size, .. } => size,
                _ => 0,
            })
            .sum()
    }

    /// Where entry `e` came from, for messages.
    pub fn origin(&self, e: &PlannedEntry) -> &str {
        self.origins
            .get(e.origin)
            .map(String::as_str)
            .unwrap_or("the recipe")
    }

    /// The manifest, with `packages` limited to `only` when given (used to find which
    /// package the engine refuses). Payload and entry table are placeholders the encoder fills.
    fn manifest_with(&self, only: Option<usize>) -> Result<Manifest<'_>> {
        let mut recipe = Recipe {
            before: self.before.as_ref().map(Cmd::as_command),
            packages: Default::default(),
            npm_prefix: self.npm_prefix.as_deref(),
            after: self.after.as_ref().map(Cmd::as_command),
            health_check: self.health_check.as_ref().map(|h| HealthCheck {
                command: h.command.as_command(),
                attempts: h.attempts,
                interval_secs: h.interval,
            }),
            rollback: Rollback {
                revert: self.rollback.revert,
                command: self.rollback.command.as_ref().map(Cmd::as_command),
                reboot: self.rollback.reboot,
            },
        };
        for (i, p) in self.packages.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            recipe
                .packages
                .push(Package {
                    manager: p.manager,
                    name: &p.name,
                    version: p.version.as_deref(),
                    file: p.file.as_deref(),
                })
                .map_err(|_| anyhow!("[packages]: a bundle carries at most {MAX_PACKAGES}"))?;
        }
        Ok(Manifest {
            version: &self.version,
            compatible: &self.compatible,
            release: self.release,
            allow_downgrade: self.allow_downgrade,
            kind: if self.is_full() {
                BundleKind::Full
            } else {
                BundleKind::Patch {
                    base_version: &self.base_version,
                }
            },
            created: self.created,
            comment: &self.comment,
            recipe,
            payload: Payload {
                chunk_count: 0,
                chunk_size: DEFAULT_CHUNK_SIZE,
                wire_len: 0,
                raw_len: 0,
                first_chunk: [0; 32],
            },
            entries: EntryTable {
                specials: self.specials,
                ..EntryTable::default()
            },
        })
    }

    /// The manifest to hand to the encoder (which fills in payload and entries).
    pub fn manifest(&self) -> Result<Manifest<'_>> {
        self.manifest_with(None)
    }

    /// Runs the engine's `Manifest::validate` (the same check the encoder and every
    /// device run) and names the recipe field behind any refusal.
    pub fn check_fields(&self) -> Result<()> {
        let limits = Limits::DEFAULT;
        let Err(e) = self.manifest()?.validate(&limits) else {
            return Ok(());
        };
        let Error::Field { field, why } = e else {
            bail!("{e}");
        };
        if field.starts_with("recipe.packages.") {
            // The engine does not say which package; validate them one at a time to find it.
            for (i, p) in self.packages.iter().enumerate() {
                if let Err(Error::Field { field, why }) =
                    self.manifest_with(Some(i))?.validate(&limits)
                {
                    let part = field.rsplit('.').next().unwrap_or(field);
                    let value = match part {
                        "version" => p.version.as_deref().unwrap_or(""),
                        "file" => p.file.as_deref().unwrap_or(""),
                        _ => &p.name,
                    };
                    let list = p.label.split(" (").next().unwrap_or(&p.label);
                    bail!("{list}: {part} `{value}`: {why}");
                }
            }
        }
        bail!("{}: {why}", recipe_field(field));
    }

    /// Refuses a manifest that certainly exceeds what devices accept, before any file is
    /// read. Its strings alone are a lower bound on its encoded size; a manifest just
    /// under the limit is caught exactly by the self-check after the build.
    fn check_manifest_size(&self) -> Result<()> {
        let cmds = [&self.before, &self.after, &self.rollback.command]
            .into_iter()
            .flatten()
            .chain(self.health_check.as_ref().map(|h| &h.command));
        let strings: usize = cmds.map(|c| c.script.len()).sum::<usize>()
            + self.version.len()
            + self.compatible.len()
            + self.comment.len()
            + self.base_version.len()
            + self.npm_prefix.as_ref().map_or(0, String::len)
            + self
                .packages
                .iter()
                .map(|p| {
                    p.name.len()
                        + p.version.as_ref().map_or(0, String::len)
                        + p.file.as_ref().map_or(0, String::len)
                })
                .sum::<usize>();
        let max = Limits::DEFAULT.max_manifest_len as usize;
        if strings > max {
            bail!(
                "the scripts, comment and packages add up to {strings} bytes; a manifest holds \
                 at most {max} (put long scripts in the app's files and run them from there)"
            );
        }
        Ok(())
    }
}

/// The recipe's name for a manifest field the engine names.
pub fn recipe_field(engine_field: &str) -> String {
    match engine_field {
        "kind.base_version" => "base_version".into(),
        "recipe.before" => "[before]".into(),
        "recipe.after" => "[after]".into(),
        "recipe.health_check" => "[health_check]".into(),
        "recipe.health_check.attempts" => "health_check.attempts".into(),
        "recipe.health_check.interval_secs" => "health_check.interval".into(),
        "recipe.rollback.command" => "[rollback]".into(),
        "recipe.npm_prefix" => "packages.npm_prefix".into(),
        other => format!("`{other}`"),
    }
}

/// An entry's metadata.
#[derive(Debug, Clone, Copy)]
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// Builds the entry list: sources walked, deletions, shipped package files, parents.
struct Planner<'a> {
    dir: &'a Path,
    full: bool,
    allow_setid: bool,
    created: i64,
    /// No mtime later than `created` (see [`BuildTime`]).
    clamp: bool,
    entries: Vec<PlannedEntry>,
    origins: Vec<String>,
    setid_used: bool,
}

/// Why a path is refused, in words.
fn bad_path(b: BadPath) -> String {
    match b {
        BadPath::Rule(r) => r.describe().to_owned(),
        BadPath::Limit(l) => format!("exceeds the {} limit", l.name()),
    }
}

/// Strips leading and trailing `/` (destinations are snapshot-relative; `/opt/app` is
/// accepted because that is how people write them), then checks what is left.
/// Returns an empty string for the snapshot root.
fn snapshot_path(raw: &str) -> Result<String, String> {
    let p = raw.trim_start_matches('/').trim_end_matches('/');
    if p.is_empty() {
        return Ok(String::new());
    }
    check_path(p, &Limits::DEFAULT).map_err(bad_path)?;
    if p == RESERVED_DIR || p.starts_with(&format!("{RESERVED_DIR}/")) {
        return Err(format!(
            "`{RESERVED_DIR}/` is reserved for the bundle's own files (shipped packages)"
        ));
    }
    Ok(p.to_owned())
}

/// Where a relative symlink at `link` pointing to `target` lands in the snapshot when its
/// `..` climbs above the root (where resolution stops, as the kernel's does at `/`), or
/// `None` if it never does. Read lexically: the build-time lint of [`Plan`], not a device
/// rule (see docs/bundle-format.md, "Links").
fn climbs_above_root(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut at: Vec<&str> = link.split('/').collect();
    at.pop();
    let mut climbed = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => climbed |= at.pop().is_none(),
            c => at.push(c),
        }
    }
    climbed.then(|| at.join("/"))
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

fn is_ancestor(ancestor: &str, path: &str) -> bool {
    path.len() > ancestor.len()
        && path.starts_with(ancestor)
        && path.as_bytes().get(ancestor.len()) == Some(&b'/')
}

/// Reads permission bits written as octal text: `"0755"`, `"755"` or `"0o755"`.
///
/// Only text is accepted: a bare TOML integer `755` is decimal (0o1363), a mistake
/// nobody would notice until a device ran the file.
fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

fn kind_name(ft: fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_char_device() {
        "a character device"
    } else {
        "an unsupported file type"
    }
}

impl Planner<'_> {
    fn origin(&mut self, label: String) -> usize {
        self.origins.push(label);
        self.origins.len() - 1
    }

    fn push(&mut self, path: String, kind: PlannedKind, a: Attrs, origin: usize, rank: Rank) {
        let mtime = if self.clamp {
            a.mtime.min(self.created)
        } else {
            a.mtime
        };
        self.entries.push(PlannedEntry {
            path,
            kind,
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            mtime,
            origin,
            rank,
        });
    }

    /// Refuses setuid/setgid bits unless the recipe allows them; they are declared in
    /// the manifest so a device can see them before extracting anything.
    fn check_setid(&mut self, path: &Path, mode: u32, is_dir: bool) -> Result<()> {
        let setid = mode & 0o4000 != 0 || (mode & 0o2000 != 0 && !is_dir);
        if setid {
            if !self.allow_setid {
                bail!(
                    "{} has the setuid/setgid bit (mode {mode:04o}); set `allow_setid = true` \
                     in the recipe or clear the bit",
                    path.display()
                );
            }
            self.setid_used = true;
        }
        Ok(())
    }

    /// One `[[files]]` item.
    fn source(&mut self, index: usize, spec: &FileSpec) -> Result<()> {
        let label = format!(
            "[[files]] #{} (source `{}`)",
            index + 1,
            spec.source.display()
        );
        let dest = snapshot_path(&spec.destination)
            .map_err(|why| anyhow!("{label}: destination `{}`: {why}", spec.destination))?;
        let mode = match spec.mode.as_deref() {
            None => None,
            Some(m) => Some(parse_mode(m).ok_or_else(|| {
                anyhow!("{label}: mode `{m}` is not octal permission bits such as \"0755\"")
            })?),
        };
        // Owners are not taken from the build machine, whose user ids mean nothing on a device.
        let owner = Attrs {
            mode: 0,
            uid: spec.uid.unwrap_or(0),
            gid: spec.gid.unwrap_or(0),
            mtime: 0,
        };
        let src = self.dir.join(&spec.source);
        // The named source is followed if it is a symlink: the operator named the thing
        // to ship. Inside a directory, symlinks are kept as symlinks.
        let meta = fs::metadata(&src)
            .with_context(|| format!("{label}: cannot read {}", src.display()))?;
        let origin = self.origin(label.clone());
        if meta.is_dir() {
            if dest.is_empty() {
                if mode.is_some() || spec.uid.is_some() || spec.gid.is_some() {
                    // The root's own attributes belong to the device's snapshot layout.
                    bail!("{label}: `mode`, `uid` and `gid` cannot apply to the snapshot root");
                }
            } else {
                let m = mode.unwrap_or(meta.mode() & 0o7777);
                self.check_setid(&src, m, true)
                    .with_context(|| label.clone())?;
                self.push(
                    dest.clone(),
                    PlannedKind::Dir,
                    Attrs {
                        mode: m,
                        mtime: meta.mtime(),
                        ..owner
                    },
                    origin,
                    Rank::Named,
                );
            }
            self.walk(&src, &dest, owner, origin)
                .with_context(|| label.clone())?;
        } else if meta.is_file() {
            if dest.is_empty() {
                bail!("{label}: a file needs a destination path, not the snapshot root");
            }
            let m = mode.unwrap_or(meta.mode() & 0o7777);
            self.check_setid(&src, m, false)
                .with_context(|| label.clone())?;
            let kind = PlannedKind::File {
                source: src,
                size: meta.len(),
            };
            self.push(
                dest,
                kind,
                Attrs {
                    mode: m,
                    mtime: meta.mtime(),
                    ..owner
                },
                origin,
                Rank::Named,
            );
        } else {
            bail!(
                "{label}: {} is {}; only files, directories and symlinks can be shipped",
                src.display(),
                kind_name(meta.file_type())
            );
        }
        Ok(())
    }

    /// Adds everything below the directory `src`, mapped under `dest`.
    fn walk(&mut self, src: &Path, dest: &str, owner: Attrs, origin: usize) -> Result<()> {
        let list = fs::read_dir(src).with_context(|| format!("cannot list {}", src.display()))?;
        for item in list {
            let item = item.with_context(|| format!("cannot list {}", src.display()))?;
            let path = item.path();
            let name = item.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| anyhow!("{}: file name is not UTF-8", path.display()))?;
            let child = join(dest, name);
            let meta = fs::symlink_metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let ft = meta.file_type();
            let mode = meta.mode() & 0o7777;
            if ft.is_symlink() {
                let target = fs::read_link(&path)
                    .with_context(|| format!("cannot read link {}", path.display()))?;
                let target = target
                    .to_str()
                    .ok_or_else(|| anyhow!("{}: link target is not UTF-8", path.display()))?
                    .to_owned();
                // The encoder would refuse an empty target too, but only by entry number;
                // here the message can name the link on disk.
                if target.is_empty() {
                    bail!("{}: symlink with an empty target", path.display());
                }
                // Devices accept any target (a link is only followed inside the
                // snapshot). A relative one that climbs above the root, though, names
                // something on this machine that the device will not have: almost
                // always a link into the build tree shipped by mistake.
                if let Some(lands) = climbs_above_root(&child, &target) {
                    bail!(
                        "{}: symlink target `{target}` climbs above the snapshot root (as `{child}`): \
                         on the device `..` stops at `/`, so it would point at `/{lands}`; \
                         write the target as the snapshot sees it (absolute if need be)",
                        path.display()
                    );
                }
                let kind = PlannedKind::Symlink { target };
                self.push(
                    child,
                    kind,
                    Attrs {
                        mode: 0o777,
                        mtime: meta.mtime(),
                        ..owner
                    },
                    origin,
                    Rank::Walked,
                );
            } else if ft.is_dir() {
                self.check_setid(&path, mode, true)?;
                self.push(
                    child.clone(),
                    PlannedKind::Dir,
                    Attrs {
                        mode,
                        mtime: meta.mtime(),
                        ..owner
                    },
                    origin,
                    Rank::Walked,
                );
                self.walk(&path, &child, owner, origin)?;
            } else if ft.is_file() {
                self.check_setid(&path, mode, false)?;
                let kind = PlannedKind::File {
                    source: path,
                    size: meta.len(),
                };
                self.push(
                    child,
                    kind,
                    Attrs {
                        mode,
                        mtime: meta.mtime(),
                        ..owner
                    },
                    origin,
                    Rank::Walked,
                );
            } else {
                bail!(
                    "{} is {}; only files, directories and symlinks can be shipped",
                    path.display(),
                    kind_name(ft)
                );
            }
        }
        Ok(())
    }

    /// One `delete` item.
    fn deletion(&mut self, index: usize, raw: &str) -> Result<()> {
        let label = format!("delete #{} (`{raw}`)", index + 1);
        let path = snapshot_path(raw).map_err(|why| anyhow!("{label}: {why}"))?;
        if path.is_empty() {
            bail!("{label}: cannot delete the snapshot root");
        }
        let origin = self.origin(label);
        self.push(
            path,
            PlannedKind::Delete,
            Attrs {
                mode: 0,
                uid: 0,
                gid: 0,
                mtime: self.created,
            },
            origin,
            Rank::Named,
        );
        Ok(())
    }

    /// One package of `[packages]`; a shipped file becomes an entry under `.molt/packages/`.
    fn package(&mut self, mgr: PackageManager, index: usize, item: &PackageItem) -> Result<Pkg> {
        let list = format!("packages.{} #{}", mgr.name(), index + 1);
        let (name, version, file) = match item {
            PackageItem::Short(s) => {
                let (n, v) = split_short(mgr, s).map_err(|why| anyhow!("{list} `{s}`: {why}"))?;
                (n, v, None)
            }
            PackageItem::Long(t) => (t.name.clone(), t.version.clone(), t.file.clone()),
        };
        let label = format!("{list} (`{name}`)");
        let mut shipped = None;
        if let Some(file) = file {
            let src = self.dir.join(&file);
            let meta = fs::metadata(&src)
                .with_context(|| format!("{label}: cannot read package file {}", src.display()))?;
            if !meta.is_file() {
                bail!(
                    "{label}: package file {} is not a regular file",
                    src.display()
                );
            }
            let base = src
                .file_name()
                .and_then(|b| b.to_str())
                .ok_or_else(|| anyhow!("{label}: package file name is not UTF-8"))?;
            let path = format!("{RESERVED_DIR}/packages/{}/{base}", mgr.name());
            check_path(&path, &Limits::DEFAULT)
                .map_err(|b| anyhow!("{label}: package file name `{base}`: {}", bad_path(b)))?;
            let origin = self.origin(label.clone());
            let kind = PlannedKind::File {
                source: src,
                size: meta.len(),
            };
            // Package files are data for the package manager: never executable, owned by root.
            self.push(
                path.clone(),
                kind,
                Attrs {
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: meta.mtime(),
                },
                origin,
                Rank::Named,
            );
            shipped = Some(path);
        }
        Ok(Pkg {
            manager: mgr,
            name,
            version,
            file: shipped,
            label,
        })
    }

    /// Adds parent directories, sorts, and refuses collisions.
    fn finish(&mut self) -> Result<()> {
        // A full bundle must list every parent; a patch bundle lists only what the recipe
        // names, so it does not reset the modes of directories that already exist on the
        // device. `.molt/` is staging, fresh on every install, so it always gets its parents.
        let mut present: HashSet<String> = self.entries.iter().map(|e| e.path.clone()).collect();
        let mut added = Vec::new();
        for e in &self.entries {
            if !self.full && !e.path.starts_with(&format!("{RESERVED_DIR}/")) {
                continue;
            }
            let mut p = e.path.as_str();
            while let Some(i) = p.rfind('/') {
                p = &p[..i];
                if !present.insert(p.to_owned()) {
                    // Already listed (its own parents are handled with it) or already added
                    // (together with its parents): nothing more above it to do.
                    break;
                }
                added.push((p.to_owned(), e.origin));
            }
        }
        for (path, child_origin) in added {
            let label = format!(
                "the parent directories of {}",
                self.origins.get(child_origin).cloned().unwrap_or_default()
            );
            let origin = self.origin(label);
            self.push(
                path,
                PlannedKind::Dir,
                Attrs {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: self.created,
                },
                origin,
                Rank::Implicit,
            );
        }

        // A stable sort keeps recipe order among equal paths, so messages name them in order.
        self.entries.sort_by(|a, b| compare_paths(&a.path, &b.path));
        let mut out: Vec<PlannedEntry> = Vec::with_capacity(self.entries.len());
        for e in std::mem::take(&mut self.entries) {
            let Some(last) = out.last_mut() else {
                out.push(e);
                continue;
            };
            let name = |o: usize| self.origins.get(o).cloned().unwrap_or_default();
            if last.path == e.path {
                if last.kind == PlannedKind::Dir && e.kind == PlannedKind::Dir {
                    // Two sources may share a directory (both write into `opt/app`); the
                    // one that names it explicitly decides its attributes.
                    match e.rank.cmp(&last.rank) {
                        Ordering::Greater => *last = e,
                        Ordering::Less => {}
                        Ordering::Equal => {
                            if (last.mode, last.uid, last.gid) != (e.mode, e.uid, e.gid) {
                                bail!(
                                    "directory `{}` gets different modes or owners from {} \
                                     ({:04o} {}:{}) and {} ({:04o} {}:{})",
                                    e.path,
                                    name(last.origin),
                                    last.mode,
                                    last.uid,
                                    last.gid,
                                    name(e.origin),
                                    e.mode,
                                    e.uid,
                                    e.gid
                                );
                            }
                        }
                    }
                    continue;
                }
                bail!(
                    "two sources map to the same destination `{}`: {} and {}",
                    e.path,
                    name(last.origin),
                    name(e.origin)
                );
            }
            // Sorted order puts descendants right after their ancestor, so checking the
            // previous entry finds anything written beneath a file, symlink or deletion.
            if last.kind != PlannedKind::Dir && is_ancestor(&last.path, &e.path) {
                let what = match last.kind {
                    PlannedKind::Delete => "deletes",
                    PlannedKind::Symlink { .. } => "writes as a symlink",
                    _ => "writes as a file",
                };
                bail!(
                    "`{}` from {} lies beneath `{}`, which {} {what}",
                    e.path,
                    name(e.origin),
                    last.path,
                    name(last.origin)
                );
            }
            out.push(e);
        }
        self.entries = out;
        Ok(())
    }
}

/// Splits the short form of a package: `name=version` (pip also `name==version`,
/// npm `name@version`, where a leading `@` belongs to a scope, not a version).
fn split_short(mgr: PackageManager, s: &str) -> Result<(String, Option<String>), String> {
    let (name, version) = match mgr {
        PackageManager::Npm => match s.rfind('@') {
            Some(i) if i > 0 => (&s[..i], Some(&s[i + 1..])),
            _ => (s, None),
        },
        PackageManager::Pip | PackageManager::Pip3 => match s.split_once("==") {
            Some((n, v)) => (n, Some(v)),
            None => match s.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (s, None),
            },
        },
        PackageManager::Apt => match s.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        },
    };
    let name = name.trim();
    if name.is_empty() {
        return Err("empty package name".into());
    }
    if name.contains(['<', '>', '!', '~']) {
        return Err("only an exact version can be pinned (name=version)".into());
    }
    match version.map(str::trim) {
        Some("") => Err("empty version after the separator".into()),
        v => Ok((name.to_owned(), v.map(str::to_owned))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_text_only() {
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("644"), Some(0o644));
        assert_eq!(parse_mode("0o4755"), Some(0o4755));
        assert_eq!(parse_mode("0888"), None);
        assert_eq!(parse_mode("17777"), None);
        assert_eq!(parse_mode(""), None);
    }

    #[test]
    fn short_package_forms() {
        let s = |m, t| split_short(m, t);
        assert_eq!(
            s(PackageManager::Apt, "jq=1.6-2"),
            Ok(("jq".into(), Some("1.6-2".into())))
        );
        assert_eq!(
            s(PackageManager::Pip3, "requests==2.31.0"),
            Ok(("requests".into(), Some("2.31.0".into())))
        );
        assert_eq!(
            s(PackageManager::Npm, "left-pad@1.3.0"),
            Ok(("left-pad".into(), Some("1.3.0".into())))
        );
        assert_eq!(
            s(PackageManager::Npm, "@scope"),
            Ok(("@scope".into(), None))
        );
        assert!(s(PackageManager::Pip, "requests>=2").is_err());
        assert!(s(PackageManager::Apt, "jq=").is_err());
    }

    #[test]
    fn destinations_are_snapshot_relative() {
        assert_eq!(snapshot_path("/opt/app/"), Ok("opt/app".into()));
        assert_eq!(snapshot_path("/"), Ok(String::new()));
        assert!(snapshot_path("opt/../etc").is_err());
        assert!(snapshot_path(".molt/x").is_err());
    }
}
