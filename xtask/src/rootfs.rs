//! `cargo xtask rootfs`: builds, once, the minimal Debian bookworm tree (dpkg, apt, python3-pip, npm) that the agent's package tests chroot into, cached under target/.
//!
//! Recipe: `debootstrap --variant=minbase` from the Debian mirror this machine's own
//! apt sources name (or `MOLT_DEBIAN_MIRROR`), then `apt-get install` of the packages
//! inside a chroot. Two steps because debootstrap's `--include` cannot order npm's many
//! node-* dependencies.
//!
//! The tree is built in a temporary sibling directory and renamed into place only after
//! every step and check passed and a marker file was written, so a half-built tree is
//! never used. Bump [`RECIPE_VERSION`] whenever the recipe changes: a cached tree with
//! another version in its marker is rebuilt from scratch.
//!
//! Every mount made inside the tree is undone, also when a step fails, and nothing is
//! deleted or renamed while /proc/self/mountinfo still shows a mount beneath it: a
//! leftover bind mount of /dev would turn a later `rm -rf` of the tree into deleting
//! the host's device nodes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::display;

/// Written as the marker's first line; a cached tree whose marker says otherwise is rebuilt.
/// Bump it whenever anything below changes what ends up in the tree.
pub const RECIPE_VERSION: &str = "molt-rootfs 2";

/// The Debian release the tests run against.
const SUITE: &str = "bookworm";

/// Present at the top of a finished tree, holding [`RECIPE_VERSION`] on its first line.
const MARKER: &str = ".molt-rootfs-ok";

/// Overrides the mirror read from the machine's apt sources.
const ENV_MIRROR: &str = "MOLT_DEBIAN_MIRROR";

/// Where `cargo xtask ci` tells the tests the tree is.
pub const ENV_TEST_ROOTFS: &str = "MOLT_TEST_ROOTFS";

/// Installed by apt-get inside the chroot. With `--no-install-recommends`, python3-pip
/// does not pull setuptools and wheel, yet the tests build a wheel offline inside the
/// chroot with `pip wheel --no-deps --no-build-isolation`, which needs both.
const PACKAGES: &[&str] = &["python3-pip", "python3-setuptools", "python3-wheel", "npm"];

/// Run inside the finished tree before it is accepted: each must exit 0.
const CHECKS: &[(&str, &[&str])] = &[
    ("dpkg --version", &["dpkg", "--version"]),
    ("apt-get --version", &["apt-get", "--version"]),
    // setuptools first: importing pip before it in one process trips setuptools'
    // distutils shim (an AssertionError about distutils/core.py), which never happens
    // in real use since pip runs setuptools in a child process.
    (
        "import setuptools, wheel, pip",
        &["python3", "-c", "import setuptools, wheel, pip"],
    ),
    ("pip3 --version", &["pip3", "--version"]),
    ("npm --version", &["npm", "--version"]),
    ("pip wheel, offline", &["sh", "-c", WHEEL_PROBE]),
];

/// Builds a one-module wheel offline, the way the package tests do, and prints its name.
const WHEEL_PROBE: &str = r#"set -e
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/src/molt_probe"
: > "$d/src/molt_probe/__init__.py"
cat > "$d/src/pyproject.toml" <<EOF
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"
[project]
name = "molt-probe"
version = "0.1"
EOF
pip wheel -q --no-deps --no-build-isolation --no-index -w "$d/out" "$d/src"
ls "$d/out""#;

/// PEP 668: bookworm's pip refuses `pip install` into the system Python unless told
/// otherwise, and the tests install packages into the chroot's system Python on purpose.
const PIP_CONF: &str = "[global]\nbreak-system-packages = true\n";

/// The build machine's CA bundle.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The test tree trusts the CAs the build machine trusts: where the registries are
/// reached through a TLS-inspecting egress proxy (as on our CI machines), its CA is only
/// in the host's bundle, and pip and npm in the chroot would refuse the registries.
/// pip (Debian's, through python3-certifi) reads the system bundle; node carries its own
/// list, so npm is pointed at the bundle with `cafile`.
fn trust_host_cas(tree: &Path) -> Result<()> {
    let Ok(bundle) = fs::read(HOST_CA_BUNDLE) else {
        return Ok(());
    };
    let dst = tree.join(HOST_CA_BUNDLE.trim_start_matches('/'));
    if let Some(dir) = dst.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::write(&dst, bundle).with_context(|| format!("cannot write {}", dst.display()))?;
    write_file(
        &tree.join("etc/npmrc"),
        &format!("cafile={HOST_CA_BUNDLE}\n"),
    )
}

/// Environment variables passed into the chroot when set here, so apt inside reaches
/// the registry the same way the host does.
const PASSED_ENV: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

/// `cargo xtask rootfs [--print-path] [--rebuild]`.
#[derive(clap::Args)]
pub struct Options {
    /// Print only the tree's path on stdout (progress goes to stderr), for scripts.
    #[arg(long)]
    print_path: bool,
    /// Build from scratch even when a valid cached tree exists.
    #[arg(long)]
    rebuild: bool,
}

/// Where progress lines go: stdout, or stderr when stdout must carry the path alone.
#[derive(Clone, Copy)]
pub enum Progress {
    Stdout,
    Stderr,
}

/// Progress lines, and the transcript file the commands' own output goes to: debootstrap
/// and apt-get print some 2,600 lines per build, which would bury the CI log. The
/// transcript is kept, and its end is shown when a command fails.
struct Log {
    progress: Progress,
    transcript: Option<PathBuf>,
}

impl Log {
    fn say(&self, msg: &str) {
        match self.progress {
            Progress::Stdout => println!("{msg}"),
            Progress::Stderr => eprintln!("{msg}"),
        }
    }

    /// Where a child's stdout and stderr go.
    fn child_output(&self) -> Result<(Stdio, Stdio)> {
        if let Some(path) = &self.transcript {
            let file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            return Ok((file.try_clone()?.into(), file.into()));
        }
        Ok(match self.progress {
            Progress::Stdout => (Stdio::inherit(), Stdio::inherit()),
            Progress::Stderr => (std::io::stderr().into(), Stdio::inherit()),
        })
    }

    /// The transcript's length, where the next command's output starts.
    fn mark(&self) -> usize {
        self.transcript
            .as_ref()
            .and_then(|path| fs::metadata(path).ok())
            .map_or(0, |m| m.len() as usize)
    }

    /// The last lines the transcript got since `mark`, to show under an error.
    fn tail(&self, mark: usize) -> String {
        let Some(path) = &self.transcript else {
            return String::new();
        };
        let text = fs::read(path).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(mark..).unwrap_or_default());
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(TAIL_LINES);
        format!(
            "\n--- last lines of {} ---\n{}",
            path.display(),
            lines[from..].join("\n")
        )
    }
}

/// How much of the transcript a failure shows.
const TAIL_LINES: usize = 40;

/// `cargo xtask rootfs`.
pub fn run(root: &Path, opts: &Options) -> Result<()> {
    let progress = if opts.print_path {
        Progress::Stderr
    } else {
        Progress::Stdout
    };
    let dir = ensure(root, opts.rebuild, progress)?;
    if opts.print_path {
        println!("{}", dir.display());
    }
    Ok(())
}

/// The cached tree's path: `<target dir>/molt-rootfs/bookworm`.
pub fn cache_dir(root: &Path) -> Result<PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        // Cargo reads a relative CARGO_TARGET_DIR from the current directory, and xtask
        // runs in the directory cargo was started from.
        Some(dir) if !dir.is_empty() => std::path::absolute(&dir).with_context(|| {
            format!("cannot resolve CARGO_TARGET_DIR={}", dir.to_string_lossy())
        })?,
        _ => root.join("target"),
    };
    Ok(target.join("molt-rootfs").join(SUITE))
}

/// The cached tree, if it is complete and of the current recipe. Builds nothing.
pub fn ready(root: &Path) -> Result<Option<PathBuf>> {
    let dir = cache_dir(root)?;
    Ok(marker_ok(&dir).then_some(dir))
}

fn marker_ok(dir: &Path) -> bool {
    fs::read_to_string(dir.join(MARKER)).is_ok_and(|s| s.lines().next() == Some(RECIPE_VERSION))
}

/// Returns the cached tree, building it first when it is missing, stale or `rebuild` is set.
pub fn ensure(root: &Path, rebuild: bool, progress: Progress) -> Result<PathBuf> {
    let dir = cache_dir(root)?;
    let mut log = Log {
        progress,
        transcript: None,
    };
    if !rebuild && marker_ok(&dir) {
        log.say(&format!("rootfs: cached at {}", dir.display()));
        return Ok(dir);
    }
    if !crate::is_root() {
        bail!(
            "`cargo xtask rootfs` needs root to build {}: debootstrap creates device nodes \
             and chroot needs /proc mounted (run it as root)",
            dir.display()
        );
    }
    if !on_path("debootstrap") {
        bail!("debootstrap is not installed: `apt-get install debootstrap` (.ci/run does this)");
    }
    let parent = dir.parent().context("the rootfs cache dir has no parent")?;
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    remove_stale(parent, &log)?;
    let transcript = parent.join(format!("{SUITE}.build.log"));
    write_file(&transcript, "")?;
    log.say(&format!(
        "rootfs: the output of the commands below goes to {}",
        transcript.display()
    ));
    log.transcript = Some(transcript);
    // Checked before minutes of building: the old tree must be replaceable at the end.
    if dir.exists() {
        refuse_if_mounted(&dir)?;
    }
    let mirror = mirror()?;

    let start = Instant::now();
    let tmp = parent.join(format!("{SUITE}.tmp-{}", std::process::id()));
    log.say(&format!(
        "rootfs: building Debian {SUITE} from {mirror} in {}",
        tmp.display()
    ));
    if let Err(e) = build(&tmp, &mirror, &log) {
        // Kept for inspection (debootstrap leaves its log in debootstrap/ inside it); the
        // next run removes it as stale. build() has unmounted everything or said why not.
        log.say(&format!(
            "rootfs: build FAILED; the partial tree stays at {} until the next run",
            tmp.display()
        ));
        return Err(e);
    }
    replace(&tmp, &dir, &log)?;
    log.say(&format!(
        "rootfs: built {} ({}) in {:.0}s",
        dir.display(),
        tree_size(&dir),
        start.elapsed().as_secs_f64()
    ));
    Ok(dir)
}

/// Every step of the recipe, into the empty directory `tmp`; on success the tree holds
/// its marker and nothing is mounted beneath it.
fn build(tmp: &Path, mirror: &str, log: &Log) -> Result<()> {
    fs::create_dir(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    // mountinfo shows resolved paths, so everything below works on the resolved one.
    let tmp = &fs::canonicalize(tmp)?;
    // Created before debootstrap so that its sweep also catches the /proc and /sys that
    // debootstrap mounts itself and might leave behind when it fails.
    let mut mounts = Mounts::new(tmp, log);

    let t = Instant::now();
    let mut debootstrap = Command::new("debootstrap");
    debootstrap.arg("--variant=minbase");
    if mirror.starts_with("https:") {
        // apt inside the chroot must verify the mirror's certificate too.
        debootstrap.arg("--include=ca-certificates");
    }
    debootstrap.arg(SUITE).arg(tmp).arg(mirror);
    step(&mut debootstrap, log)?;
    log.say(&format!(
        "rootfs: debootstrap done in {:.0}s",
        t.elapsed().as_secs_f64()
    ));

    let t = Instant::now();
    copy_resolv_conf(tmp)?;
    mounts.mount(&["-t", "proc", "proc"], "proc")?;
    // dpkg needs /dev/null and friends; apt-get runs dpkg on a pty from /dev/pts.
    mounts.mount(&["--bind", "/dev"], "dev")?;
    mounts.mount(&["--bind", "/dev/pts"], "dev/pts")?;
    step(&mut chroot(tmp, &["apt-get", "update"]), log)?;
    let mut install = chroot(
        tmp,
        &["apt-get", "install", "-y", "--no-install-recommends"],
    );
    install.args(PACKAGES);
    step(&mut install, log)?;
    // Drops the downloaded .debs but keeps /var/lib/apt/lists: the tests also run a real
    // `apt-get install` inside the tree when the registry is reachable.
    step(&mut chroot(tmp, &["apt-get", "clean"]), log)?;
    write_file(&tmp.join("etc/pip.conf"), PIP_CONF)?;
    trust_host_cas(tmp)?;
    log.say(&format!(
        "rootfs: packages installed in {:.0}s",
        t.elapsed().as_secs_f64()
    ));

    for (what, args) in CHECKS {
        sanity_check(tmp, what, args, log)?;
    }
    mounts.release()?;

    write_file(
        &tmp.join(MARKER),
        &format!(
            "{RECIPE_VERSION}\nsuite: {SUITE}\nmirror: {mirror}\npackages: {}\n",
            PACKAGES.join(" ")
        ),
    )
}

/// Moves the finished `tmp` to `dir`, replacing (then deleting) any tree already there.
fn replace(tmp: &Path, dir: &Path, log: &Log) -> Result<()> {
    refuse_if_mounted(tmp)?;
    let rename = |from: &Path, to: &Path| {
        fs::rename(from, to)
            .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
    };
    if fs::symlink_metadata(dir).is_err() {
        return rename(tmp, dir);
    }
    // Moved aside rather than deleted first, so the swap itself is two renames.
    refuse_if_mounted(dir)?;
    let old = dir.with_file_name(format!("{SUITE}.old-{}", std::process::id()));
    rename(dir, &old)?;
    rename(tmp, dir)?;
    log.say(&format!(
        "rootfs: removing the previous tree {}",
        old.display()
    ));
    remove_tree(&old, false, log)
}

/// Removes `bookworm.tmp-PID` and `bookworm.old-PID` left by a build that crashed,
/// unmounting whatever it left mounted inside them first.
fn remove_stale(parent: &Path, log: &Log) -> Result<()> {
    let entries =
        fs::read_dir(parent).with_context(|| format!("cannot list {}", parent.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = [".tmp-", ".old-"]
            .iter()
            .find_map(|infix| name.strip_prefix(&format!("{SUITE}{infix}")))
        else {
            continue;
        };
        if pid
            .parse::<u32>()
            .is_ok_and(|pid| pid != std::process::id() && xtask_alive(pid))
        {
            bail!(
                "another `cargo xtask rootfs` (pid {pid}) is building in {}: wait for it",
                entry.path().display()
            );
        }
        log.say(&format!(
            "rootfs: removing {} left by an interrupted build",
            entry.path().display()
        ));
        remove_tree(&entry.path(), true, log)?;
    }
    Ok(())
}

/// Whether `pid` is a running xtask (and so perhaps still building its tmp dir).
fn xtask_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "xtask")
}

/// Deletes a tree, never while anything is mounted beneath it. `unmount` allows
/// unmounting such leftovers first (for trees of crashed builds); otherwise it fails.
fn remove_tree(path: &Path, unmount: bool, log: &Log) -> Result<()> {
    let real =
        fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    // A build killed hard leaves its chroot'ed apt-get running; deleting the tree under
    // it (and unmounting its /dev) would only make a confusing mess of both.
    let inside = processes_rooted_in(&real);
    if !inside.is_empty() {
        bail!(
            "processes still run chroot'ed in {} (pids {}): wait for them or end them",
            real.display(),
            inside.join(" ")
        );
    }
    if unmount {
        for point in mounts_under(&real)?.iter().rev() {
            // Best effort: whatever stays mounted is caught just below.
            let _ = umount(point, log);
        }
    }
    refuse_if_mounted(&real)?;
    fs::remove_dir_all(&real).with_context(|| format!("cannot remove {}", real.display()))
}

/// The pids whose root directory is at or beneath `dir` (a resolved path).
fn processes_rooted_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|root| root.starts_with(dir))
        })
        .collect()
}

fn refuse_if_mounted(path: &Path) -> Result<()> {
    let real =
        fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    let left = mounts_under(&real)?;
    if !left.is_empty() {
        bail!(
            "{} still has mounts beneath it ({}): unmount them first",
            real.display(),
            molt_mountinfo::describe(&left)
        );
    }
    Ok(())
}

/// The mounts made inside a tree being built. `release` (or, on an error path, drop)
/// unmounts them in reverse order, then sweeps whatever else mountinfo still shows
/// beneath the tree.
struct Mounts<'a> {
    root: PathBuf,
    made: Vec<PathBuf>,
    released: bool,
    log: &'a Log,
}

impl<'a> Mounts<'a> {
    fn new(root: &Path, log: &'a Log) -> Self {
        Mounts {
            root: root.to_path_buf(),
            made: Vec::new(),
            released: false,
            log,
        }
    }

    /// `mount ARGS ROOT/REL`.
    fn mount(&mut self, args: &[&str], rel: &str) -> Result<()> {
        let point = self.root.join(rel);
        let mut cmd = Command::new("mount");
        cmd.args(args).arg(&point);
        let result = step(&mut cmd, self.log);
        // Recorded even if mount reported failure but mounted anyway.
        if result.is_ok() || mounts_under(&point)?.contains(&point) {
            self.made.push(point);
        }
        result
    }

    /// Unmounts everything beneath the root; fails unless mountinfo then shows nothing there.
    fn release(&mut self) -> Result<()> {
        self.released = true;
        while let Some(point) = self.made.pop() {
            if let Err(e) = umount(&point, self.log) {
                self.log.say(&format!("rootfs: WARNING: {e:#}"));
            }
        }
        for point in mounts_under(&self.root)?.iter().rev() {
            if let Err(e) = umount(point, self.log) {
                self.log.say(&format!("rootfs: WARNING: {e:#}"));
            }
        }
        refuse_if_mounted(&self.root)
    }
}

impl Drop for Mounts<'_> {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = self.release() {
                self.log.say(&format!("rootfs: WARNING: {e:#}"));
            }
        }
    }
}

/// `umount POINT`, falling back to a lazy `umount -l` when something still holds it busy.
fn umount(point: &Path, log: &Log) -> Result<()> {
    let mut plain = Command::new("umount");
    plain.arg(point);
    if step(&mut plain, log).is_ok() {
        return Ok(());
    }
    let mut lazy = Command::new("umount");
    lazy.arg("-l").arg(point);
    step(&mut lazy, log)
}

/// Mount points at or beneath `dir` (a resolved path), in /proc/self/mountinfo order.
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(molt_mountinfo::mount_points()?
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// Replaces the tree's /etc/resolv.conf with a copy of the host's, so apt inside resolves
/// the mirror. Removed first: if it were a symlink, copying through it would write to a
/// path on the host.
fn copy_resolv_conf(tree: &Path) -> Result<()> {
    let dst = tree.join("etc/resolv.conf");
    if fs::symlink_metadata(&dst).is_ok() {
        fs::remove_file(&dst).with_context(|| format!("cannot remove {}", dst.display()))?;
    }
    fs::copy("/etc/resolv.conf", &dst)
        .with_context(|| format!("cannot copy /etc/resolv.conf to {}", dst.display()))?;
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `chroot TREE ARGS` with a small fixed environment: the host's (cargo's PATH, locale)
/// means nothing inside, and debconf must never wait for an answer.
fn chroot(tree: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.arg(tree)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .env("LC_ALL", "C")
        .env("DEBIAN_FRONTEND", "noninteractive");
    for name in PASSED_ENV {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd
}

/// Runs one of [`CHECKS`] inside the tree and shows the first line it printed.
fn sanity_check(tree: &Path, shown: &str, args: &[&str], log: &Log) -> Result<()> {
    let mut cmd = chroot(tree, args);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", display(&cmd)))?;
    if !out.status.success() {
        bail!(
            "rootfs check `{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or("ok");
    log.say(&format!("rootfs: check `{shown}`: {first}"));
    Ok(())
}

/// Echoes and runs `cmd` with stdin closed (nothing may wait for an answer), failing
/// unless it exits successfully.
fn step(cmd: &mut Command, log: &Log) -> Result<()> {
    let shown = display(cmd);
    log.say(&format!("$ {shown}"));
    let (stdout, stderr) = log.child_output()?;
    let mark = log.mark();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}){}", log.tail(mark));
    }
    Ok(())
}

/// `du -sh` of the tree, for the log; a failure only costs the number.
fn tree_size(dir: &Path) -> String {
    Command::new("du")
        .arg("-sh")
        .arg("--one-file-system")
        .arg(dir)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "size unknown".to_string())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The Debian mirror to bootstrap from: `MOLT_DEBIAN_MIRROR`, else the one this
/// machine's apt already uses, so no host name is written into the code.
fn mirror() -> Result<String> {
    if let Some(m) = std::env::var(ENV_MIRROR)
        .ok()
        .filter(|m| !m.trim().is_empty())
    {
        return Ok(m.trim().to_string());
    }
    const DEB822: &str = "/etc/apt/sources.list.d/debian.sources";
    const LIST: &str = "/etc/apt/sources.list";
    let found = fs::read_to_string(DEB822)
        .ok()
        .and_then(|text| pick_mirror(deb822_sources(&text)))
        .or_else(|| {
            fs::read_to_string(LIST)
                .ok()
                .and_then(|text| pick_mirror(list_sources(&text)))
        });
    found.with_context(|| {
        format!("cannot find a Debian mirror in {DEB822} or {LIST}: set {ENV_MIRROR}=URL")
    })
}

/// One apt source: its URI and the suites it serves.
#[derive(Debug, PartialEq, Eq)]
struct Source {
    uri: String,
    suites: Vec<String>,
}

/// Prefers a source serving [`SUITE`] itself; else any main archive (a `-security`
/// archive has another layout and cannot bootstrap). Only schemes debootstrap fetches.
fn pick_mirror(sources: Vec<Source>) -> Option<String> {
    let usable: Vec<Source> = sources
        .into_iter()
        .filter(|s| {
            ["http://", "https://", "ftp://", "file:/"]
                .iter()
                .any(|p| s.uri.starts_with(p))
        })
        .collect();
    usable
        .iter()
        .find(|s| s.suites.iter().any(|x| x == SUITE))
        .or_else(|| {
            usable
                .iter()
                .find(|s| !s.suites.iter().any(|x| x.contains("security")))
        })
        .map(|s| s.uri.clone())
}

/// The `deb` stanzas of a deb822 `.sources` file.
fn deb822_sources(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut enabled = true;
        for line in stanza.lines() {
            // Comments, and continuation lines (a Signed-By key block) carry nothing here.
            if line.starts_with('#') || line.starts_with(char::is_whitespace) {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let words = || value.split_whitespace().map(str::to_string);
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types = words().collect(),
                "uris" => uris = words().collect(),
                "suites" => suites = words().collect(),
                "enabled" => enabled = value.trim() != "no",
                _ => {}
            }
        }
        if enabled && types.iter().any(|t| t == "deb") {
            out.extend(uris.into_iter().map(|uri| Source {
                uri,
                suites: suites.clone(),
            }));
        }
    }
    out
}

/// The `deb` lines of a one-line-style `sources.list`.
fn list_sources(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("deb") {
            continue;
        }
        let mut words = words.peekable();
        // Options: `[arch=amd64 signed-by=...]`, possibly spread over several words.
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push(Source {
                uri: uri.to_string(),
                suites: vec![suite.to_string()],
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_picks_the_main_archive_not_security() {
        let text = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.example.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.example.org/debian-security
Suites: bookworm-security
Components: main
";
        let sources = deb822_sources(text);
        assert_eq!(sources.len(), 2);
        assert_eq!(
            pick_mirror(sources).as_deref(),
            Some("http://deb.example.org/debian")
        );
        // Security listed first changes nothing.
        let (a, b) = text.split_once("\n\n").unwrap();
        assert_eq!(
            pick_mirror(deb822_sources(&format!("{b}\n{a}"))).as_deref(),
            Some("http://deb.example.org/debian")
        );
    }

    #[test]
    fn deb822_skips_deb_src_and_disabled_stanzas() {
        let text = "\
Types: deb-src
URIs: http://src.example.org/debian
Suites: bookworm

Types: deb
Enabled: no
URIs: http://off.example.org/debian
Suites: bookworm

Types: deb
URIs: http://on.example.org/debian
Suites: trixie
";
        assert_eq!(
            pick_mirror(deb822_sources(text)).as_deref(),
            Some("http://on.example.org/debian")
        );
    }

    #[test]
    fn sources_list_lines_with_options_and_comments() {
        let text = "\
# deb http://commented.example.org/debian bookworm main
deb-src http://src.example.org/debian bookworm main
deb [ arch=amd64 signed-by=/k.gpg ] http://sec.example.org/debian-security bookworm-security main
deb [arch=amd64] http://deb.example.org/debian bookworm main # trailing
";
        let sources = list_sources(text);
        assert_eq!(
            sources,
            vec![
                Source {
                    uri: "http://sec.example.org/debian-security".into(),
                    suites: vec!["bookworm-security".into()],
                },
                Source {
                    uri: "http://deb.example.org/debian".into(),
                    suites: vec!["bookworm".into()],
                },
            ]
        );
        assert_eq!(
            pick_mirror(sources).as_deref(),
            Some("http://deb.example.org/debian")
        );
    }

    #[test]
    fn unusable_schemes_are_not_mirrors() {
        let sources = vec![Source {
            uri: "cdrom:[Debian]/".into(),
            suites: vec!["bookworm".into()],
        }];
        assert_eq!(pick_mirror(sources), None);
    }
}
