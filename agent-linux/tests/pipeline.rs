//! The install pipeline through the real `molt-agent` binary: success, rollback policies, a crash in every phase, a tampered bundle.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use molt_engine::bundle::encoder::EncoderOptions;
use molt_test_support::bundle::{build, delete, dir, file, sh, Spec};
use molt_test_support::http::RangeServer;
use molt_test_support::keys::{key, pub_hex};
use molt_test_support::root_or_skip;

const AGENT: &str = env!("CARGO_BIN_EXE_molt-agent");

struct Stages<'a> {
    before: Option<&'a str>,
    after: Option<&'a str>,
    rollback: Option<&'a str>,
    reboot: bool,
}

const PLAIN: Stages<'static> = Stages {
    before: None,
    after: None,
    rollback: None,
    reboot: false,
};

/// A bundle of `files` (path → content, parents created) for `version`.
fn bundle(
    version: &str,
    release: u64,
    full: bool,
    files: &[(&str, &str)],
    deletes: &[&str],
    s: &Stages<'_>,
) -> Vec<u8> {
    let mut entries = Vec::new();
    for (p, c) in files {
        // A patch names the parents too, as a full bundle does.
        let mut parent = Path::new(p).parent();
        while let Some(d) = parent.filter(|d| !d.as_os_str().is_empty()) {
            entries.push(dir(&d.to_string_lossy()));
            parent = d.parent();
        }
        entries.push(file(p, c.as_bytes()));
    }
    entries.extend(deletes.iter().map(|d| delete(d)));
    build(&Spec {
        full,
        entries: entries.into_iter().map(|e| e.mtime(0)).collect(),
        before: s.before.map(sh),
        after: s.after.map(sh),
        rollback_command: s.rollback.map(sh),
        reboot: s.reboot,
        chunk_size: EncoderOptions::default().chunk_size,
        ..Spec::full(version, release, &[])
    })
}

/// A full bundle of `files` without scripts.
fn plain_full(version: &str, release: u64, files: &[(&str, &str)]) -> Vec<u8> {
    bundle(version, release, true, files, &[], &PLAIN)
}

/// A rooted device (see [`Device::rooted`]) on 1.0.0 (`app/a` = `A1`), and its `current`.
fn on_a1() -> Option<(Device, PathBuf)> {
    let d = Device::rooted()?;
    d.install_ok("v1", "v1.molt", &plain_full("1.0.0", 1, &[("app/a", "A1")]));
    let old = d.current();
    Some((d, old))
}

/// Version 2.0.0 (`app/a` = `A2`) with the scripts of `stages`.
fn v2_a2(stages: &Stages<'_>) -> Vec<u8> {
    bundle("2.0.0", 2, true, &[("app/a", "A2")], &[], stages)
}

/// A full bundle whose `app/a` is a 60 000-character text cycling through the first
/// `letters` letters (several chunks, for a download cut part-way): the text, the bundle.
fn long_text_bundle(version: &str, release: u64, letters: u8) -> (String, Vec<u8>) {
    let text: String = (0..60_000)
        .map(|i| char::from(b'a' + (i % u32::from(letters)) as u8))
        .collect();
    let b = plain_full(version, release, &[("app/a", &text)]);
    (text, b)
}

struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    /// A new device for a test that needs root, or `None` (skipped) without it.
    fn rooted() -> Option<Device> {
        root_or_skip().then(Device::new)
    }

    fn new() -> Device {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "root = \"{root}\"\ncompatible = \"test-board\"\ntrusted_keys = [\"{key}\"]\nreboot_command = \"touch {root}/rebooted\"\n",
            root = dir.path().display(),
            key = pub_hex(&key())
        );
        fs::write(dir.path().join("agent.toml"), cfg).unwrap();
        Device { dir }
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn data(&self) -> PathBuf {
        self.root().join("var/lib/molt")
    }
    fn agent(&self, args: &[&str], crash_at: Option<&str>) -> (i32, String) {
        let mut c = Command::new(AGENT);
        c.arg("-c")
            .arg(self.root().join("agent.toml"))
            .args(args)
            .env("MOLT_LOG", "warn");
        if let Some(p) = crash_at {
            c.env("MOLT_TEST_CRASH_AT", p);
        }
        let o = c.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code().unwrap_or(-9), text)
    }
    fn install(&self, name: &str, bytes: &[u8], crash_at: Option<&str>) -> (i32, String) {
        let p = self.root().join(name);
        fs::write(&p, bytes).unwrap();
        self.agent(&["install", p.to_str().unwrap()], crash_at)
    }
    fn current(&self) -> PathBuf {
        fs::read_link(self.data().join("current")).unwrap()
    }
    fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.data().join("current").join(rel)).ok()
    }
    /// Installs `bytes` from the file `name`, expecting success; `what` names the case.
    fn install_ok(&self, what: &str, name: &str, bytes: &[u8]) {
        let (code, out) = self.install(name, bytes, None);
        assert_eq!(code, 0, "{what}: installing {name}: {out}");
    }
    /// Installs `bytes` from the file `name`, expecting a failure (exit 1); the output.
    fn install_fails(&self, name: &str, bytes: &[u8]) -> String {
        let (code, out) = self.install(name, bytes, None);
        assert_eq!(code, 1, "{out}");
        out
    }
    /// Installs `bundle` from a local HTTP server that serves it twice, cutting the
    /// first answer after `cut_after` bytes and honouring `Range` or not.
    fn install_over_http(
        &self,
        bundle: Vec<u8>,
        cut_after: usize,
        honour_range: bool,
    ) -> (i32, String) {
        let url = serve(bundle, 2, Some(cut_after), honour_range);
        self.agent(&["install", &url], None)
    }
    /// A marker file in the root, and a command that touches it.
    fn marker(&self, name: &str) -> (PathBuf, String) {
        let marker = self.root().join(name);
        let touch = format!("touch {}", marker.display());
        (marker, touch)
    }
    /// Asserts the device is still on the 1.0.0 of [`on_a1`], whose `current` was `old`.
    fn assert_still_on_a1(&self, old: &Path) {
        assert_eq!(self.current(), old);
        assert_eq!(self.read("app/a").as_deref(), Some("A1"));
    }
    /// `molt-agent recover`: settles an interrupted install, then prints the status.
    fn recover(&self) -> String {
        self.agent(&["recover"], None).1
    }
}

#[test]
fn full_then_patch_install() {
    let Some(d) = Device::rooted() else {
        return;
    };
    let v1 = plain_full(
        "1.0.0",
        1,
        &[("app/a", "A1"), ("app/b", "B1"), ("app/old", "x")],
    );
    d.install_ok("v1", "v1.molt", &v1);
    let first = d.current();
    assert_eq!(d.read("app/a").as_deref(), Some("A1"));
    let patch = bundle(
        "2.0.0",
        2,
        false,
        &[("app/a", "A2"), ("app/c", "C2")],
        &["app/old"],
        &PLAIN,
    );
    d.install_ok("the patch", "v2.molt", &patch);
    assert_ne!(d.current(), first);
    assert_eq!(d.read("app/a").as_deref(), Some("A2"));
    assert_eq!(
        d.read("app/b").as_deref(),
        Some("B1"),
        "carried over from the active snapshot"
    );
    assert_eq!(d.read("app/c").as_deref(), Some("C2"));
    assert_eq!(d.read("app/old"), None, "deleted");
    // The previous snapshot is untouched by the patch.
    assert_eq!(
        fs::read_to_string(d.data().join(&first).join("app/a")).unwrap(),
        "A1"
    );
    let st = d.recover();
    assert!(
        st.contains("2.0.0") && st.contains("1.0.0") && st.contains("succeeded"),
        "{st}"
    );
    // A manual rollback goes back, and current follows.
    let (code, out) = d.agent(&["rollback"], None);
    assert_eq!(code, 0, "{out}");
    assert_eq!(d.current(), first);
}

#[test]
fn failing_after_rolls_back_and_runs_the_policy() {
    let Some((d, old)) = on_a1() else {
        return;
    };
    let (marker, touch) = d.marker("rollback-ran");
    let rb = format!("echo rolling back; {touch}");
    let stages = Stages {
        before: Some("echo before"),
        after: Some("echo broken >&2; exit 3"),
        rollback: Some(&rb),
        reboot: true,
    };
    let out = d.install_fails("v2.molt", &v2_a2(&stages));
    assert!(out.contains("rolled back"), "{out}");
    d.assert_still_on_a1(&old);
    assert!(marker.exists(), "rollback command ran");
    assert!(d.root().join("rebooted").exists(), "reboot command ran");
    let log = fs::read_to_string(d.data().join("install.log")).unwrap();
    assert!(
        log.contains("broken") && log.contains("rolling back"),
        "{log}"
    );
}

#[test]
fn a_failing_before_never_swaps() {
    let Some((d, old)) = on_a1() else {
        return;
    };
    let stages = Stages {
        before: Some("exit 7"),
        ..PLAIN
    };
    d.install_fails("v2.molt", &v2_a2(&stages));
    assert_eq!(d.current(), old);
    assert!(d.recover().contains("status 7"), "{}", d.recover());
}

#[test]
fn a_tampered_bundle_runs_no_script_and_changes_nothing() {
    let Some((d, old)) = on_a1() else {
        return;
    };
    let (marker, before) = d.marker("before-ran");
    let mut b = bundle(
        "2.0.0",
        2,
        true,
        &[("app/a", &"A2".repeat(1000))],
        &[],
        &Stages {
            before: Some(&before),
            ..PLAIN
        },
    );
    let n = b.len();
    b[n - 20] ^= 0x40;
    d.install_fails("bad.molt", &b);
    assert!(!marker.exists(), "no script may run for a bad bundle");
    d.assert_still_on_a1(&old);
    assert!(
        d.recover().contains("does not match its signed digest"),
        "{}",
        d.recover()
    );
}

/// Kill the agent right after it journals entry into each phase, restart it, and check the
/// device is on a whole old or new snapshot with the journal settled.
#[test]
fn kill_9_in_every_phase_recovers_to_a_whole_snapshot() {
    if !root_or_skip() {
        return;
    }
    let ok = Stages {
        before: Some("true"),
        after: Some("true"),
        ..PLAIN
    };
    let failing = Stages {
        before: Some("true"),
        after: Some("exit 1"),
        rollback: Some("true"),
        reboot: true,
    };
    let phases_ok = [
        "fetching",
        "before",
        "sealing",
        "swapping",
        "after",
        "committing",
        "done",
    ];
    let phases_fail = [
        "swapping-back",
        "reverting",
        "rollback-command",
        "rebooting",
    ];
    for (stages, phases) in [(&ok, &phases_ok[..]), (&failing, &phases_fail[..])] {
        for phase in phases {
            let what = format!("phase {phase}");
            let d = Device::new();
            let v1 = plain_full("1.0.0", 1, &[("app/a", "A1"), ("app/b", "B1")]);
            d.install_ok(&what, "v1.molt", &v1);
            let v2 = bundle(
                "2.0.0",
                2,
                true,
                &[("app/a", "A2"), ("app/b", "B2")],
                &[],
                stages,
            );
            let (code, out) = d.install("v2.molt", &v2, Some(phase));
            assert_eq!(
                code, -9,
                "phase {phase}: the test hook should have killed the agent: {out}"
            );
            // The restart settles the journal.
            let st = d.recover();
            assert!(st.contains("install       idle"), "phase {phase}: {st}");
            let (a, b) = (d.read("app/a").unwrap(), d.read("app/b").unwrap());
            assert!(
                (a == "A1" && b == "B1") || (a == "A2" && b == "B2"),
                "phase {phase}: mixed snapshot {a} {b}"
            );
            // And the device takes the next update.
            let v3 = plain_full("3.0.0", 3, &[("app/a", "A3"), ("app/b", "B3")]);
            d.install_ok(&what, "v3.molt", &v3);
            assert_eq!(d.read("app/a").as_deref(), Some("A3"));
        }
    }
}

/// A one-file HTTP/1.1 server on 127.0.0.1 for `requests` connections. `drop_first_after`
/// cuts the first response after that many body bytes; `honour_range` false answers
/// every request with the whole file (a server that ignores `Range`).
fn serve(
    body: Vec<u8>,
    requests: usize,
    drop_first_after: Option<usize>,
    honour_range: bool,
) -> String {
    RangeServer::start(body, honour_range, requests, drop_first_after).url
}

#[test]
fn http_download_resumes_after_a_drop() {
    let Some(d) = Device::rooted() else {
        return;
    };
    let (big, b) = long_text_bundle("1.0.0", 1, 26);
    let (code, out) = d.install_over_http(b.clone(), b.len() / 2, true);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("dropped") || out.contains("retrying"),
        "the first connection should have dropped: {out}"
    );
    assert_eq!(d.read("app/a").as_deref(), Some(big.as_str()));
}

#[test]
fn http_server_that_ignores_range_is_refused() {
    let Some((d, old)) = on_a1() else {
        return;
    };
    let (_, b) = long_text_bundle("2.0.0", 2, 7);
    let (code, out) = d.install_over_http(b.clone(), b.len() / 3, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        d.recover().contains("ignored the Range request"),
        "{}",
        d.recover()
    );
    d.assert_still_on_a1(&old);
}
