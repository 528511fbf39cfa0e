//! Tests of the chroot mounts (root only): what is mounted and how, teardown, symlinked targets refused, resolv.conf symlinks resolved inside the slot, crash cleanup.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use molt_agent::mounts::{cleanup_stale, mounts_below, BindSpec, ChrootMounts};
use molt_test_support::root_or_skip;

/// Last line of defence, declared right after a temporary directory so it drops
/// first: whatever a failing test left mounted beneath the directory is detached
/// before `TempDir` removes the tree (which would otherwise walk into the bind of
/// the host's `/dev` and delete device nodes).
struct DetachBelow(PathBuf);

impl Drop for DetachBelow {
    fn drop(&mut self) {
        let Ok(dir) = self.0.canonicalize() else {
            return;
        };
        for _ in 0..4 {
            let Ok(mut left) = mounts_below(&dir) else {
                return;
            };
            if left.is_empty() {
                return;
            }
            left.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for p in left {
                let _ = rustix::mount::unmount(
                    &p,
                    rustix::mount::UnmountFlags::DETACH | rustix::mount::UnmountFlags::NOFOLLOW,
                );
            }
        }
    }
}

/// A test's temporary directory behind its safety net (the net is declared first, so
/// it drops first), where slots, package files and the mounts record go.
struct Bench {
    _net: DetachBelow,
    tmp: tempfile::TempDir,
}

/// A new bench for a test that needs root, or `None` (skipped) without it.
fn bench() -> Option<Bench> {
    if !root_or_skip() {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let _net = DetachBelow(tmp.path().to_path_buf());
    Some(Bench { _net, tmp })
}

impl Bench {
    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Where the mounts record goes.
    fn record(&self) -> PathBuf {
        self.path().join("mounts")
    }

    /// A minimal slot called `name` (see [`make_slot`]).
    fn slot(&self, name: &str, resolv: Option<&str>) -> PathBuf {
        let slot = self.path().join(name);
        make_slot(&slot, resolv);
        slot
    }

    /// Slot `slot` set up with package files bound read-only: the slot, the package
    /// files, the mounts.
    fn mounted_with_packages(&self) -> (PathBuf, PathBuf, ChrootMounts) {
        let slot = self.slot("slot", None);
        let packages = make_packages(self.path());
        let m = setup_with_packages(&slot, &packages, &self.record()).unwrap();
        (slot, packages, m)
    }

    /// A directory outside every slot holding the host file `name` with `text`.
    fn outside(&self, name: &str, text: &[u8]) -> PathBuf {
        let outside = self.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join(name), text).unwrap();
        outside
    }
}

/// Makes `slot`'s `etc/resolv.conf` a symlink to `target` and sets up its mounts; the
/// mounts and the slot's canonical path.
fn setup_with_resolv_link(
    slot: &Path,
    target: impl AsRef<Path>,
    record: &Path,
) -> (ChrootMounts, PathBuf) {
    std::os::unix::fs::symlink(target, slot.join("etc/resolv.conf")).unwrap();
    let m = ChrootMounts::setup(slot, &[], record).unwrap();
    (m, slot.canonicalize().unwrap())
}

/// Sets up `slot`'s mounts with the package files bound read-only at `run/molt/packages`.
fn setup_with_packages(
    slot: &Path,
    packages: &Path,
    record: &Path,
) -> anyhow::Result<ChrootMounts> {
    ChrootMounts::setup(
        slot,
        &[BindSpec::read_only(packages, "run/molt/packages")],
        record,
    )
}

/// Asserts nothing is mounted below `dir`.
fn assert_nothing_mounted_below(dir: &Path) {
    let left = mountinfo_below(dir);
    assert!(left.is_empty(), "{left:?}");
}

/// A minimal slot: `bin/`, `etc/` (with `resolv.conf` when `resolv` is given), `run/`.
fn make_slot(slot: &Path, resolv: Option<&str>) {
    fs::create_dir_all(slot.join("bin")).unwrap();
    fs::create_dir_all(slot.join("etc")).unwrap();
    if let Some(text) = resolv {
        fs::write(slot.join("etc/resolv.conf"), text).unwrap();
    }
}

/// A directory of "package files" to bind read-only.
fn make_packages(dir: &Path) -> PathBuf {
    let p = dir.join("packages");
    fs::create_dir_all(p.join("apt")).unwrap();
    fs::write(p.join("apt/x.deb"), b"not really a deb").unwrap();
    p
}

/// `(mount point, per-mount options, optional fields)` of each line of
/// /proc/self/mountinfo, parsed here independently of the code under test.
fn mountinfo() -> Vec<(PathBuf, String, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-").unwrap();
            let point = f[4].replace("\\040", " ");
            (PathBuf::from(point), f[5].to_owned(), f[6..sep].join(" "))
        })
        .collect()
}

/// The mountinfo lines strictly below `dir`.
fn mountinfo_below(dir: &Path) -> Vec<(PathBuf, String, String)> {
    mountinfo()
        .into_iter()
        .filter(|(p, _, _)| p.starts_with(dir) && p != dir)
        .collect()
}

fn host_resolv() -> Option<Vec<u8>> {
    fs::read("/etc/resolv.conf").ok()
}

fn is_erofs(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EROFS)
}

#[test]
fn mounts_what_a_package_manager_needs_and_teardown_removes_it_all() {
    let Some(b) = bench() else {
        return;
    };
    let slot = b.slot("slot", Some("nameserver 192.0.2.1\n"));
    let packages = make_packages(b.path());
    let record = b.record();
    let slot = slot.canonicalize().unwrap();

    let m = ChrootMounts::setup(
        &slot,
        &[BindSpec::read_only(&packages, "/run/molt/packages")],
        &record,
    )
    .unwrap();
    assert_eq!(m.slot(), slot);
    assert!(record.exists(), "the record exists while mounted");

    let mut expected: Vec<PathBuf> = ["proc", "proc/sys", "sys", "dev", "dev/pts"]
        .iter()
        .map(|p| slot.join(p))
        .collect();
    if host_resolv().is_some() {
        expected.push(slot.join("etc/resolv.conf"));
    }
    expected.push(slot.join("run/molt/packages"));
    assert_eq!(m.mount_points(), expected);
    let seen: Vec<PathBuf> = mountinfo_below(&slot).into_iter().map(|l| l.0).collect();
    assert_eq!(
        seen, expected,
        "mountinfo shows exactly these mounts, in order"
    );
    assert_eq!(mounts_below(&slot).unwrap(), expected);

    for (point, opts, optional) in mountinfo_below(&slot) {
        // Private: no peer group, so nothing propagates to or from the host.
        assert!(
            !optional.contains("shared:") && !optional.contains("master:"),
            "{} propagates: {optional}",
            point.display()
        );
        let ro = opts.split(',').any(|o| o == "ro");
        let want_ro = ["proc/sys", "sys", "etc/resolv.conf", "run/molt/packages"]
            .iter()
            .any(|r| point == slot.join(r));
        assert_eq!(ro, want_ro, "{} options {opts}", point.display());
    }

    // proc works: our own process is there.
    let ls = Command::new("ls")
        .arg(slot.join("proc/self"))
        .output()
        .unwrap();
    assert!(ls.status.success());
    assert!(String::from_utf8_lossy(&ls.stdout)
        .lines()
        .any(|l| l == "status"));
    // dev works.
    let null = fs::metadata(slot.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    fs::write(slot.join("dev/null"), b"discarded").unwrap();
    assert!(slot.join("dev/pts/ptmx").exists());
    // The kernel's settings cannot be changed from the chroot.
    let e = fs::OpenOptions::new()
        .write(true)
        .open(slot.join("proc/sys/kernel/hostname"))
        .unwrap_err();
    assert!(is_erofs(&e), "{e}");
    // The host's resolver configuration, read-only.
    if let Some(host) = host_resolv() {
        assert_eq!(fs::read(slot.join("etc/resolv.conf")).unwrap(), host);
        let e = fs::write(slot.join("etc/resolv.conf"), b"nameserver 203.0.113.9\n").unwrap_err();
        assert!(is_erofs(&e), "{e}");
    }
    assert_eq!(
        fs::read(slot.join("run/molt/packages/apt/x.deb")).unwrap(),
        b"not really a deb"
    );

    m.teardown().unwrap();
    assert_nothing_mounted_below(&slot);
    // What setup created is gone; what was there stays.
    for gone in ["proc", "sys", "dev", "run"] {
        assert!(
            fs::symlink_metadata(slot.join(gone)).is_err(),
            "{gone} was created by setup and should be removed"
        );
    }
    assert!(slot.join("bin").is_dir());
    assert_eq!(
        fs::read_to_string(slot.join("etc/resolv.conf")).unwrap(),
        "nameserver 192.0.2.1\n",
        "the slot's own resolv.conf is untouched"
    );
    assert!(!record.exists(), "a clean teardown removes the record");
    assert!(packages.join("apt/x.deb").exists());
}

#[test]
fn existing_mount_points_are_kept_and_a_missing_resolv_conf_is_created_then_removed() {
    let Some(b) = bench() else {
        return;
    };
    let slot = b.slot("slot", None);
    for d in ["proc", "sys", "dev/pts"] {
        fs::create_dir_all(slot.join(d)).unwrap();
    }
    let record = b.record();
    let m = ChrootMounts::setup(&slot, &[], &record).unwrap();
    if let Some(host) = host_resolv() {
        assert_eq!(fs::read(slot.join("etc/resolv.conf")).unwrap(), host);
    }
    drop(m); // drop tears down as well
    let slot = slot.canonicalize().unwrap();
    assert_nothing_mounted_below(&slot);
    for kept in ["proc", "sys", "dev/pts"] {
        assert!(slot.join(kept).is_dir(), "{kept} existed before and stays");
    }
    assert!(
        fs::symlink_metadata(slot.join("etc/resolv.conf")).is_err(),
        "the empty resolv.conf made as a mount point is removed"
    );
    assert!(!record.exists());
}

#[test]
fn read_only_bind_refuses_writes() {
    let Some(b) = bench() else {
        return;
    };
    let (slot, packages, m) = b.mounted_with_packages();
    let inside = slot.join("run/molt/packages");
    for e in [
        fs::write(inside.join("new.deb"), b"x").unwrap_err(),
        fs::write(inside.join("apt/x.deb"), b"x").unwrap_err(),
        fs::remove_file(inside.join("apt/x.deb")).unwrap_err(),
        fs::create_dir(inside.join("d")).unwrap_err(),
        fs::set_permissions(inside.join("apt/x.deb"), fs::Permissions::from_mode(0o777))
            .unwrap_err(),
    ] {
        assert!(is_erofs(&e), "expected EROFS, got {e}");
    }
    // The source itself stays writable for the agent.
    fs::write(packages.join("apt/y.deb"), b"y").unwrap();
    assert!(inside.join("apt/y.deb").exists());
    m.teardown().unwrap();
    assert_eq!(
        fs::read(packages.join("apt/x.deb")).unwrap(),
        b"not really a deb"
    );
}

#[test]
fn a_busy_mount_is_detached_after_retries() {
    let Some(b) = bench() else {
        return;
    };
    let (slot, _packages, m) = b.mounted_with_packages();
    // A process left behind in the chroot holding a file open keeps the mount busy.
    let held = fs::File::open(slot.join("run/molt/packages/apt/x.deb")).unwrap();
    let started = std::time::Instant::now();
    m.teardown().unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(500),
        "retried before detaching"
    );
    assert_nothing_mounted_below(&slot.canonicalize().unwrap());
    // Detached, not gone for its user: the open file still reads.
    let mut text = String::new();
    std::io::Read::read_to_string(&mut &held, &mut text).unwrap();
    assert_eq!(text, "not really a deb");
    assert!(!b.record().exists());
}

#[test]
fn a_symlinked_mount_point_is_refused_without_mounting_anything() {
    let Some(b) = bench() else {
        return;
    };
    let outside = b.outside("passwd", b"root:x:0:0\n");
    let record = b.record();

    // `proc` -> a directory of the host: mounting there would cover the host's files.
    let slot = b.slot("slot", None);
    std::os::unix::fs::symlink(&outside, slot.join("proc")).unwrap();
    let before = listing(&slot);
    let e = ChrootMounts::setup(&slot, &[], &record).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("symlink") && msg.contains("proc"), "{msg}");
    assert_nothing_mounted_below(b.path());
    assert_eq!(listing(&slot), before, "nothing created in the slot");
    assert_eq!(listing(&outside), vec!["passwd".to_string()]);
    assert!(!record.exists(), "nothing to record");

    // A symlink in the middle of an extra bind's target: refused the same way.
    let slot2 = b.slot("slot2", None);
    std::os::unix::fs::symlink(&outside, slot2.join("run")).unwrap();
    let packages = make_packages(b.path());
    let e = setup_with_packages(&slot2, &packages, &record).unwrap_err();
    assert!(format!("{e:#}").contains("symlink"), "{e:#}");
    assert_nothing_mounted_below(b.path());
    assert_eq!(listing(&outside), vec!["passwd".to_string()]);

    // `..` in an extra target is refused before anything happens.
    let e = ChrootMounts::setup(
        &slot2,
        &[BindSpec::read_only(&packages, "etc/../../x")],
        &record,
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("plain names"), "{e:#}");
    // So is a target inside one of the system mounts (it would be the host's /dev).
    let slot3 = b.slot("slot3", None);
    let e = ChrootMounts::setup(&slot3, &[BindSpec::read_only(&packages, "dev/x")], &record)
        .unwrap_err();
    assert!(format!("{e:#}").contains("inside the mount"), "{e:#}");
    assert_nothing_mounted_below(b.path());
    assert!(!record.exists());
}

/// Sorted names in `dir`.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_symlinked_resolv_conf_is_followed_only_inside_the_slot() {
    let Some(b) = bench() else {
        return;
    };
    let Some(host) = host_resolv() else {
        eprintln!("skipped: the host has no /etc/resolv.conf");
        return;
    };
    let outside = b.outside("resolv.conf", b"outside\n");
    let record = b.record();

    // systemd-resolved's layout: a relative link into /run, whose target does not
    // exist in an image.
    let slot = b.slot("slot", None);
    fs::create_dir_all(slot.join("run")).unwrap();
    let (m, slot) =
        setup_with_resolv_link(&slot, "../run/systemd/resolve/stub-resolv.conf", &record);
    let target = slot.join("run/systemd/resolve/stub-resolv.conf");
    assert!(m.mount_points().contains(&target), "{:?}", m.mount_points());
    // Read through the symlink, as the chroot's resolver would.
    assert_eq!(fs::read(slot.join("etc/resolv.conf")).unwrap(), host);
    m.teardown().unwrap();
    assert_nothing_mounted_below(&slot);
    assert!(
        fs::symlink_metadata(slot.join("run/systemd")).is_err(),
        "the directories made for the target are removed"
    );
    assert!(slot.join("run").is_dir(), "run existed before");
    assert!(fs::symlink_metadata(slot.join("etc/resolv.conf"))
        .unwrap()
        .file_type()
        .is_symlink());

    // An absolute link to a host file: resolved with the slot as `/`, so it lands on
    // the same path inside the slot, and the host's file is neither covered nor touched.
    let slot2 = b.slot("slot2", None);
    let host_target = outside.join("resolv.conf").canonicalize().unwrap();
    let (m, slot2) = setup_with_resolv_link(&slot2, &host_target, &record);
    let inside = slot2.join(host_target.strip_prefix("/").unwrap());
    assert!(m.mount_points().contains(&inside), "{:?}", m.mount_points());
    assert_eq!(fs::read(&inside).unwrap(), host);
    assert_eq!(fs::read(&host_target).unwrap(), b"outside\n");
    assert!(
        !mountinfo().iter().any(|(p, _, _)| *p == host_target),
        "nothing is mounted on the host's file"
    );
    m.teardown().unwrap();
    assert_nothing_mounted_below(&slot2);
    let first = host_target.components().nth(1).unwrap();
    assert!(
        fs::symlink_metadata(slot2.join(first)).is_err(),
        "the directories made inside the slot are removed"
    );
    assert_eq!(fs::read(&host_target).unwrap(), b"outside\n");

    // A link that climbs with `..`: stops at the slot's root, like a chroot.
    let slot3 = b.slot("slot3", Some("x"));
    fs::rename(slot3.join("etc/resolv.conf"), slot3.join("etc/real.conf")).unwrap();
    let (m, slot3) = setup_with_resolv_link(&slot3, "../../../../../etc/real.conf", &record);
    assert!(m.mount_points().contains(&slot3.join("etc/real.conf")));
    m.teardown().unwrap();
    assert_eq!(fs::read(slot3.join("etc/real.conf")).unwrap(), b"x");
}

#[test]
fn cleanup_stale_unmounts_what_a_crash_left_behind() {
    let Some(b) = bench() else {
        return;
    };
    // A space in the path: mountinfo writes it as `\040`.
    let slots = b.path().join("data dir/slots");
    let slot = b.slot("data dir/slots/b", None);
    let packages = make_packages(b.path());
    let record = b.path().join("data dir/mounts");
    let slot = slot.canonicalize().unwrap();

    // A crash: the guard never runs.
    let m = setup_with_packages(&slot, &packages, &record).unwrap();
    let mounted = m.mount_points();
    std::mem::forget(m);
    assert_eq!(mounts_below(&slot).unwrap(), mounted);
    assert!(record.exists());

    // A new setup refuses while the old mounts are there.
    let e = ChrootMounts::setup(&slot, &[], &record).unwrap_err();
    assert!(format!("{e:#}").contains("cleanup_stale"), "{e:#}");

    let mut unmounted = cleanup_stale(&record, &slots).unwrap();
    assert_nothing_mounted_below(&slot);
    assert!(!record.exists(), "the record is removed");
    // Deepest first.
    let depths: Vec<usize> = unmounted.iter().map(|p| p.components().count()).collect();
    assert!(depths.windows(2).all(|w| w[0] >= w[1]), "{unmounted:?}");
    unmounted.sort();
    let mut want = mounted.clone();
    want.sort();
    assert_eq!(unmounted, want);
    for gone in ["proc", "sys", "dev", "run"] {
        assert!(
            fs::symlink_metadata(slot.join(gone)).is_err(),
            "{gone}: created mount points are removed by the cleanup too"
        );
    }
    assert!(slot.join("bin").is_dir());

    // Nothing to do: fine, and nothing returned.
    assert!(cleanup_stale(&record, &slots).unwrap().is_empty());

    // Without a record (lost, or the crash came before it was written), mountinfo
    // alone is enough.
    let m = ChrootMounts::setup(&slot, &[], &record).unwrap();
    let mounted = m.mount_points();
    std::mem::forget(m);
    fs::remove_file(&record).unwrap();
    let unmounted = cleanup_stale(&record, &slots).unwrap();
    assert_eq!(unmounted.len(), mounted.len(), "{unmounted:?}");
    assert_nothing_mounted_below(&slot);

    // A filesystem mounted on a slot directory itself (a slot on its own partition)
    // is not ours, and stays.
    let other = slots.join("a");
    fs::create_dir_all(&other).unwrap();
    rustix::mount::mount(
        "tmpfs",
        &other,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None::<&std::ffi::CStr>,
    )
    .unwrap();
    let unmounted = cleanup_stale(&record, &slots).unwrap();
    assert!(unmounted.is_empty(), "{unmounted:?}");
    let other = other.canonicalize().unwrap();
    assert!(mountinfo().iter().any(|(p, _, _)| *p == other));
    rustix::mount::unmount(&other, rustix::mount::UnmountFlags::empty()).unwrap();
}

#[test]
fn setup_refuses_while_the_record_exists() {
    let Some(b) = bench() else {
        return;
    };
    let slot = b.slot("slot", None);
    let record = b.record();
    fs::write(&record, b"leftover").unwrap();
    let e = ChrootMounts::setup(&slot, &[], &record).unwrap_err();
    assert!(format!("{e:#}").contains("cleanup_stale"), "{e:#}");
    assert_nothing_mounted_below(b.path());
    // An unreadable record does not stop the cleanup.
    assert!(cleanup_stale(&record, b.path()).unwrap().is_empty());
    assert!(!record.exists());
    let e = fs::metadata(&record).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}
