//! The packages stage for real: apt, pip, pip3 and npm run inside a chroot of the new slot, a Debian root filesystem built by `cargo xtask rootfs`; the active slot never sees a package change.
//!
//! Every test starts a device whose factory slot is a copy of that root
//! filesystem, then installs a patch bundle whose recipe lists packages. The
//! offline tests ship a .deb built with dpkg-deb, wheels built here and an npm
//! tarball laid out as `npm pack` would, so they need no network; the registry
//! test installs one small real package per manager and skips, saying why, when
//! a registry cannot be reached.

mod common;

use std::fs;
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use molt_engine::bundle::PackageManager;

/// The test root filesystem: `MOLT_TEST_ROOTFS` (CI sets it), else where `cargo xtask
/// rootfs` puts it. `None` (with the reason printed) when the tests cannot run.
fn rootfs() -> Option<PathBuf> {
    if !root_or_skip() {
        return None;
    }
    let explicit = std::env::var_os("MOLT_TEST_ROOTFS").map(PathBuf::from);
    let path = explicit.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/molt-rootfs/bookworm")
    });
    if path.join("usr/bin/dpkg").exists() {
        return Some(path);
    }
    // CI names the root filesystem explicitly: there, missing is a failure.
    assert!(
        explicit.is_none(),
        "MOLT_TEST_ROOTFS={} holds no root filesystem",
        path.display()
    );
    println!(
        "skipped: no test root filesystem at {} (run `cargo xtask rootfs` first)",
        path.display()
    );
    None
}

/// A device whose factory slot (A) is a copy of the root filesystem, on a scratch XFS
/// when there is one (this machine's root ext4 copies the 40,000-file tree in about
/// 30 s; XFS in 3, and the agent's slot clone is then a reflink per file). Keep the
/// scratch alive as long as the device (declare it first: it is dropped last).
fn device(rootfs: &Path) -> (Option<Scratch>, Device) {
    let scratch = Scratch::xfs(8 << 30);
    let d = match &scratch {
        Some(s) => Device::in_dir(s.path()),
        None => Device::new(),
    };
    let a = d.data().join("slots/a");
    fs::create_dir_all(&a).unwrap();
    let st = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(format!("{}/.", rootfs.display()))
        .arg(&a)
        .status()
        .unwrap();
    assert!(st.success(), "copying the root filesystem");
    // The first start provisions the record and points `current` at the factory slot.
    d.recover();
    (scratch, d)
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{cmd:?}: {text}");
    text
}

/// Runs `script` with bash inside a chroot of `root` (no mounts: enough for python3 and node).
fn in_chroot(root: &Path, script: &str) -> (bool, String) {
    let o = Command::new("/usr/sbin/chroot")
        .arg(root)
        .args(["/bin/bash", "-c", script])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/root")
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A .deb built with dpkg-deb: `/usr/bin/<name>` prints `hello from <name>`; `preinst`
/// runs first if given.
fn deb(dir: &Path, name: &str, preinst: Option<&str>) -> Vec<u8> {
    let root = dir.join(format!("deb-{name}"));
    fs::create_dir_all(root.join("DEBIAN")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: molt tests <tests@molt.invalid>\nDescription: molt package test\n"
        ),
    )
    .unwrap();
    let exe = |p: &Path, text: &str| {
        fs::write(p, text).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    };
    exe(
        &root.join("usr/bin").join(name),
        &format!("#!/bin/sh\necho hello from {name}\n"),
    );
    if let Some(p) = preinst {
        exe(&root.join("DEBIAN/preinst"), &format!("#!/bin/sh\n{p}\n"));
    }
    let out = dir.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&root)
        .arg(&out));
    fs::read(out).unwrap()
}

/// A pure-Python wheel for module `module` (`GREETING = "hello"`), with a valid RECORD.
fn wheel(dir: &Path, module: &str) -> (String, Vec<u8>) {
    let file = format!("{module}-1.0-py3-none-any.whl");
    let out = dir.join(&file);
    let py = r#"
import base64, hashlib, zipfile, sys
out, mod = sys.argv[1], sys.argv[2]
dist = mod + "-1.0.dist-info"
files = {
    mod + "/__init__.py": 'GREETING = "hello"\n',
    dist + "/METADATA": "Metadata-Version: 2.1\nName: " + mod + "\nVersion: 1.0\n",
    dist + "/WHEEL": "Wheel-Version: 1.0\nGenerator: molt-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(out, "w") as z:
    for name, text in files.items():
        data = text.encode()
        z.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(dist + "/RECORD,,")
    z.writestr(dist + "/RECORD", "\n".join(record) + "\n")
"#;
    run(Command::new("python3")
        .args(["-c", py])
        .arg(&out)
        .arg(module));
    (file, fs::read(out).unwrap())
}

/// An npm tarball as `npm pack` makes it: `package/package.json` and `package/index.js`.
fn npm_tarball(dir: &Path, name: &str) -> (String, Vec<u8>) {
    let root = dir.join(format!("npm-{name}"));
    fs::create_dir_all(root.join("package")).unwrap();
    fs::write(
        root.join("package/package.json"),
        format!("{{\"name\": \"{name}\", \"version\": \"1.0.0\", \"main\": \"index.js\"}}\n"),
    )
    .unwrap();
    fs::write(
        root.join("package/index.js"),
        "module.exports = 'hello from npm';\n",
    )
    .unwrap();
    let file = format!("{name}-1.0.0.tgz");
    run(Command::new("tar")
        .arg("-czf")
        .arg(dir.join(&file))
        .arg("-C")
        .arg(&root)
        .arg("package"));
    (file.clone(), fs::read(dir.join(file)).unwrap())
}

/// A patch bundle (on any base) carrying shipped package files.
fn patch(version: &str, release: u64) -> Spec {
    let mut s = Spec::patch(
        version,
        release,
        &[("etc/molt-test-version", version.as_bytes())],
        &[],
    );
    for d in [".molt", ".molt/packages"] {
        s = s.with(d, Node::Dir(0o755));
    }
    s
}

/// [`ship`] for the usual test .deb: the apt package `name` in `{name}_1.0_all.deb`.
fn ship_deb(s: Spec, name: &str, bytes: Vec<u8>) -> Spec {
    ship(
        s,
        PackageManager::Apt,
        name,
        &format!("{name}_1.0_all.deb"),
        bytes,
    )
}

fn ship(mut s: Spec, manager: PackageManager, name: &str, file: &str, bytes: Vec<u8>) -> Spec {
    let dir = format!(".molt/packages/{}", manager.name());
    if !s.entries.iter().any(|e| e.path == dir) {
        s = s.with(&dir, Node::Dir(0o755));
    }
    let path = format!("{dir}/{file}");
    s.package_files.push((manager, name.into(), path.clone()));
    s.with(&path, Node::File(bytes, 0o644))
}

/// Mount points below `dir` (from /proc/self/mountinfo).
fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap().display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&format!("{dir}/")))
        .collect()
}

fn assert_no_mounts(d: &Device) {
    let left = mounts_below(&d.data());
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}

#[test]
fn shipped_packages_install_offline_for_every_manager_and_roll_back_with_the_snapshot() {
    let Some(rootfs) = rootfs() else { return };
    let (_scratch, d) = device(&rootfs);
    let tmp = tempfile::tempdir().unwrap();
    let mut s = patch("2.0.0", 2);
    s = ship_deb(s, "molt-hello", deb(tmp.path(), "molt-hello", None));
    let (f, w) = wheel(tmp.path(), "molt_pip_hello");
    s = ship(s, PackageManager::Pip, "molt_pip_hello", &f, w);
    let (f, w) = wheel(tmp.path(), "molt_pip3_hello");
    s = ship(s, PackageManager::Pip3, "molt_pip3_hello", &f, w);
    let (f, t) = npm_tarball(tmp.path(), "molt-npm-hello");
    s = ship(s, PackageManager::Npm, "molt-npm-hello", &f, t);
    // The after script runs in the new snapshot and uses every package.
    s.after = Some(Script {
        text: "molt-hello && python3 -c 'import molt_pip_hello, molt_pip3_hello' && \
               node -e \"console.log(require('/opt/app/node_modules/molt-npm-hello'))\""
            .into(),
        chroot: true,
        timeout_secs: 60,
    });
    let old = d.current_dir();
    let old_fp = fingerprint(&old);
    let r = d.install_bytes("v2.molt", &build(&s), None);
    assert_eq!(r.code, Some(0), "{}\n{}", r.out, d.log());
    let log = d.log();
    assert!(log.contains("hello from molt-hello"), "{log}");
    assert!(log.contains("hello from npm"), "{log}");
    assert_no_mounts(&d);
    assert_eq!(fingerprint(&old), old_fp, "the old snapshot changed");

    let new = d.current_dir();
    assert_ne!(new, old);
    let (ok, out) = in_chroot(
        &new,
        "dpkg -s molt-hello | grep -q 'Status: install ok installed' && molt-hello",
    );
    assert!(ok, "{out}");
    let (ok, out) = in_chroot(
        &new,
        "python3 -c 'import molt_pip_hello, molt_pip3_hello; print(molt_pip_hello.GREETING)'",
    );
    assert!(ok && out.contains("hello"), "{out}");
    let (ok, out) = in_chroot(
        &new,
        "node -e \"console.log(require('/opt/app/node_modules/molt-npm-hello'))\"",
    );
    assert!(ok && out.contains("hello from npm"), "{out}");
    // No package manager cache stayed behind in the snapshot.
    assert!(!new.join("tmp/molt-npm-cache").exists());
    assert!(fs::read_dir(new.join("var/cache/apt/archives"))
        .unwrap()
        .flatten()
        .all(|e| !e.file_name().to_string_lossy().ends_with(".deb")));

    // The old snapshot never saw them; rolling back by hand brings it back.
    assert!(!old.join("usr/bin/molt-hello").exists());
    let r = d.agent(&["rollback"], None);
    assert_eq!(r.code, Some(0), "{}", r.out);
    assert_eq!(d.current_dir(), old);
    assert!(!d.current_dir().join("usr/bin/molt-hello").exists());
    let (ok, _) = in_chroot(&d.current_dir(), "python3 -c 'import molt_pip_hello'");
    assert!(!ok, "the pip package is in the rolled-back root");
    assert!(!d
        .current_dir()
        .join("opt/app/node_modules/molt-npm-hello")
        .exists());
}

#[test]
fn a_failing_after_script_rolls_the_packages_back_too() {
    let Some(rootfs) = rootfs() else { return };
    let (_scratch, d) = device(&rootfs);
    let tmp = tempfile::tempdir().unwrap();
    let mut s = ship_deb(
        patch("2.0.0", 2),
        "molt-hello",
        deb(tmp.path(), "molt-hello", None),
    );
    s.after = Some(sh("exit 4"));
    let old_fp = d.fingerprint();
    d.install_fails("v2.molt", &s);
    d.assert_last_result("rolled back");
    assert_eq!(d.fingerprint(), old_fp, "the active root changed");
    assert!(!d.current_dir().join("usr/bin/molt-hello").exists());
    assert_no_mounts(&d);
}

#[test]
fn failing_installs_fail_before_the_swap_with_the_tools_error() {
    let Some(rootfs) = rootfs() else { return };
    let (_scratch, d) = device(&rootfs);
    let old_fp = d.fingerprint();
    let old = d.current_link();
    let tmp = tempfile::tempdir().unwrap();
    // After an apt failure: apt's error in `log` (this install's part of the log), the
    // active root as it was, no mounts left.
    let assert_apt_failed = |log: &str| {
        assert!(log.contains("E: "), "apt's error is in the log:\n{log}");
        assert_eq!(d.current_link(), old);
        assert_eq!(d.fingerprint(), old_fp, "the active root changed");
        assert_no_mounts(&d);
    };

    // A .deb that is not one.
    let s = ship_deb(
        patch("2.0.0", 2),
        "molt-broken",
        b"this is not a debian archive\n".to_vec(),
    );
    d.install_fails("broken.molt", &s);
    d.assert_last_result("packages");
    assert_apt_failed(&d.log());

    // A wheel pip cannot install, then a package the registry does not have (with no
    // network apt-get update fails instead; either way apt's error is reported).
    let (f, _) = wheel(tmp.path(), "molt_ok");
    let s = ship(
        patch("2.0.1", 3),
        PackageManager::Pip3,
        "molt_bad",
        &f,
        b"not a zip".to_vec(),
    );
    d.install_fails("badwheel.molt", &s);
    assert!(
        d.log().contains("ERROR"),
        "pip's error is in the log:\n{}",
        d.log()
    );

    let mut s = patch("2.0.2", 4);
    s.packages = vec![(PackageManager::Apt, "molt-no-such-package".into())];
    d.install_fails("missing.molt", &s);
    let log = d.log();
    assert_apt_failed(&log[log.rfind("apt packages: in a chroot").unwrap()..]);
}

#[test]
fn kill_9_during_dpkg_leaves_no_mounts_or_processes_after_the_restart() {
    let Some(rootfs) = rootfs() else { return };
    let (_scratch, d) = device(&rootfs);
    let old_fp = d.fingerprint();
    let tmp = tempfile::tempdir().unwrap();
    let s = ship_deb(
        patch("2.0.0", 2),
        "molt-slow",
        deb(
            tmp.path(),
            "molt-slow",
            Some("touch /tmp/molt-preinst-started; sleep 120"),
        ),
    );
    let p = d.root().join("bundles/slow.molt");
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, build(&s)).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_molt-agent"))
        .arg("--config")
        .arg(d.root().join("agent.toml"))
        .arg("install")
        .arg(&p)
        .env("MOLT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let marker = d.data().join("slots/b/tmp/molt-preinst-started");
    let start = Instant::now();
    while !marker.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "dpkg's preinst never started:\n{}",
            d.log()
        );
        assert!(
            agent.try_wait().unwrap().is_none(),
            "the agent ended:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = mounts_below(&d.data());
    assert!(
        during.len() >= 4,
        "the chroot mounts are up while dpkg runs: {during:?}"
    );
    agent.kill().unwrap();
    agent.wait().unwrap();

    // The restart kills what still runs in the chroot, unmounts, and settles the install.
    let st = d.recover();
    assert_eq!(install_phase(&st), "idle", "{st}");
    assert_no_mounts(&d);
    let log = d.log();
    assert!(
        log.contains("killed 1 process") || log.contains("process(es) left running"),
        "{log}"
    );
    assert!(log.contains("unmounted what a crash left"), "{log}");
    assert_eq!(d.fingerprint(), old_fp, "the active root changed");
    let slots = d.data().join("slots").canonicalize().unwrap();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(root) = fs::read_link(e.path().join("root")) {
            assert!(
                !root.starts_with(&slots),
                "process {:?} still runs in a slot",
                e.file_name()
            );
        }
    }
    // The device still installs.
    let r = d.install_bytes("after.molt", &build(&patch("3.0.0", 3)), None);
    assert_eq!(r.code, Some(0), "{}\n{}", r.out, d.log());
}

/// Whether `host:port` accepts a TCP connection within a few seconds.
fn reachable(host: &str, port: u16) -> bool {
    let Ok(mut addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(5)).is_ok())
}

/// The host of the Debian mirror the test root filesystem's apt uses.
fn apt_mirror_host(rootfs: &Path) -> Option<String> {
    let text = fs::read_to_string(rootfs.join("etc/apt/sources.list"))
        .or_else(|_| fs::read_to_string(rootfs.join("etc/apt/sources.list.d/debian.sources")))
        .ok()?;
    let url = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .find(|w| w.starts_with("http"))?;
    Some(url.split('/').nth(2)?.to_string())
}

#[test]
fn one_real_package_from_each_registry_when_the_network_allows() {
    let Some(rootfs) = rootfs() else { return };
    let mut s = patch("2.0.0", 2);
    let mut checks = Vec::new();
    let mut skipped = Vec::new();
    match apt_mirror_host(&rootfs) {
        Some(h) if reachable(&h, 80) => {
            s.packages.push((PackageManager::Apt, "hello".into()));
            checks.push("hello | grep -q 'Hello, world'");
        }
        h => skipped.push(format!("apt (mirror {h:?} unreachable)")),
    }
    if reachable("pypi.org", 443) && reachable("files.pythonhosted.org", 443) {
        s.packages.push((PackageManager::Pip3, "six".into()));
        checks.push("python3 -c 'import six'");
    } else {
        skipped.push("pip3 (pypi.org unreachable)".into());
    }
    if reachable("registry.npmjs.org", 443) {
        s.packages.push((PackageManager::Npm, "is-number".into()));
        checks.push("node -e \"require('/opt/app/node_modules/is-number')\"");
    } else {
        skipped.push("npm (registry.npmjs.org unreachable)".into());
    }
    for m in &skipped {
        println!("skipped: {m}");
    }
    if checks.is_empty() {
        return;
    }
    let (_scratch, d) = device(&rootfs);
    let r = d.install_bytes("registry.molt", &build(&s), None);
    assert_eq!(r.code, Some(0), "{}\n{}", r.out, d.log());
    let (ok, out) = in_chroot(&d.current_dir(), &checks.join(" && "));
    assert!(ok, "{out}\n{}", d.log());
    assert_no_mounts(&d);
    let _ = std::io::stdout().flush();
}
