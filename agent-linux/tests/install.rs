//! End-to-end tests of `molt-agent install`, `status` and `rollback` through the real binary: full and patch installs, a failure in every stage under every rollback policy, `kill -9` in every phase, every bad-bundle class of reliability.md items 9–16, HTTP resume, manual rollback.
//!
//! Each test gets its own temporary root and configuration (see `common`), builds
//! its bundles in-process with the engine's encoder, signs them with a key the
//! device trusts, and drives the agent as an operator would. Scripts prove they ran
//! (or did not) through marker files, and the active snapshot is compared digest by
//! digest with what the bundle carried, or fingerprinted before and after.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use molt_engine::bundle::{Manifest, PackageManager, Specials};
use molt_engine::Limits;

// ---------------------------------------------------------------------------------------
// Shared bundles and checks
// ---------------------------------------------------------------------------------------

/// Version 1: files in nested directories, a multi-chunk binary, a symlink.
fn v1() -> Spec {
    Spec::full(
        "1.0.0",
        1,
        &[
            ("app/a", b"A1\n"),
            ("app/b", b"B1\n"),
            ("app/old", b"to be deleted\n"),
            ("app/sub/deep.bin", &noise(1, 40_000)),
            ("etc/app.conf", b"port=80\n"),
        ],
    )
    .with("app/link", Node::Symlink("b".into()))
    .with(
        "app/run.sh",
        Node::File(b"#!/bin/sh\necho hi\n".to_vec(), 0o755),
    )
}

/// Version 2 as a full bundle: one file changed, one gone, one new.
fn v2_full() -> Spec {
    Spec::full(
        "2.0.0",
        2,
        &[
            ("app/a", b"A2\n"),
            ("app/b", b"B1\n"),
            ("app/c", b"C2\n"),
            ("app/sub/deep.bin", &noise(2, 40_000)),
            ("etc/app.conf", b"port=8080\n"),
        ],
    )
}

fn v3_full() -> Spec {
    Spec::full("3.0.0", 3, &[("app/a", b"A3\n"), ("app/three", b"3\n")])
}

/// A rooted device (see [`Device::rooted`]) already on v1, the start of most tests.
fn rooted_on_v1() -> Option<Device> {
    let d = Device::rooted()?;
    d.install_ok(&v1());
    Some(d)
}

/// `spec` with both rollback policies: a rollback command that leaves the `rollback`
/// marker, and a reboot.
fn with_full_rollback(mut spec: Spec, d: &Device) -> Spec {
    spec.rollback_command = Some(sh(format!("touch {}", d.marker("rollback").display())));
    spec.reboot = true;
    spec
}

/// Arms `spec` so that any script of its recipe leaves a marker: a bad bundle must run none.
fn armed(spec: Spec, d: &Device) -> Spec {
    let mut spec = with_full_rollback(spec, d);
    spec.before = Some(sh(format!("touch {}", d.marker("before").display())));
    spec.after = Some(sh(format!("touch {}", d.marker("after").display())));
    spec.health = Some((sh(format!("touch {}", d.marker("health").display())), 1, 0));
    spec
}

const SCRIPT_MARKERS: [&str; 5] = ["before", "after", "health", "rollback", "rebooted"];

/// Asserts the active snapshot is exactly `want`.
fn assert_tree(d: &Device, want: &Tree, what: &str) {
    let got = d.tree();
    assert!(
        &got == want,
        "{what}: the active snapshot ({}) differs from the bundle:\n{}\n{}",
        d.current_link().display(),
        diff(want, &got),
        d.recover()
    );
}

/// `current` and the record agree on the active slot, and the journal is settled.
fn assert_settled(d: &Device, what: &str) -> String {
    let st = d.recover();
    assert_eq!(
        install_phase(&st),
        "idle",
        "{what}: journal not settled:\n{st}"
    );
    let link = d.current_link();
    let slot = link.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        active_slot(&st).as_deref(),
        Some(slot.as_str()),
        "{what}: `current` ({}) and the slot record disagree:\n{st}",
        link.display()
    );
    st
}

// ---------------------------------------------------------------------------------------
// 1. Successful installs
// ---------------------------------------------------------------------------------------

/// A full install fills an empty slot; a patch on top replaces, adds and deletes, carries
/// every untouched file over from the active snapshot and never modifies that snapshot.
#[test]
fn a_full_install_then_a_patch_on_top() {
    let Some(d) = Device::rooted() else {
        return;
    };
    let st = d.recover();
    assert!(
        st.contains("factory"),
        "a new device runs its factory slot:\n{st}"
    );
    assert_eq!(install_phase(&st), "idle");

    let mut s1 = v1();
    let env = d.marker("env");
    s1.before = Some(sh(format!(
        "echo \"before $MOLT_PHASE $MOLT_OLD_VERSION $MOLT_NEW_VERSION\" >> {}",
        env.display()
    )));
    s1.after = Some(sh(format!(
        "echo \"after $MOLT_PHASE $(readlink $MOLT_CURRENT) $(cat $MOLT_NEW_SLOT/app/a)\" >> {}",
        env.display()
    )));
    s1.health = Some((sh("test -e \"$MOLT_NEW_SLOT/app/b\""), 1, 0));
    d.install_ok(&s1);
    assert_tree(&d, &s1.tree(), "after the full install");
    let first = d.current_link();
    let st = assert_settled(&d, "full install");
    assert!(st.contains("1.0.0"), "{st}");
    assert!(d.last_result().contains("succeeded"), "{}", d.last_result());
    assert_eq!(
        fs::read_to_string(&env).unwrap(),
        format!(
            "before before factory 1.0.0\nafter after {} A1\n",
            first.display()
        ),
        "scripts see the phase, both versions, and `current` naming the new slot after the swap"
    );

    // The patch: app/a replaced, app/c and app/sub/new added, app/old deleted.
    let old_dir = d.current_dir();
    let old_fp = fingerprint(&old_dir);
    let mut s2 = Spec::patch(
        "2.0.0",
        2,
        &[
            ("app/a", b"A2\n"),
            ("app/c", b"C2\n"),
            ("app/sub/new.txt", b"new\n"),
        ],
        &["app/old"],
    );
    s2.base_version = "1.0.0".into();
    d.install_ok(&s2);
    assert_ne!(d.current_link(), first, "the patch went to the other slot");
    let want = s2.applied_to(&s1.tree());
    assert!(!want.contains_key("app/old") && want.contains_key("app/b"));
    assert_tree(&d, &want, "after the patch");
    assert_eq!(
        fingerprint(&old_dir),
        old_fp,
        "the patch modified the snapshot it started from"
    );
    let st = assert_settled(&d, "patch install");
    assert!(st.contains("2.0.0") && st.contains("1.0.0"), "{st}");
    assert!(d.last_result().contains("succeeded"), "{}", d.last_result());
    let out = d.agent(&["status"], None).out;
    assert!(out.contains("version 2.0.0"), "{out}");

    // A patch made for another base version is refused and changes nothing.
    let fp = d.fingerprint();
    let mut wrong = armed(Spec::patch("3.0.0", 3, &[("app/a", b"A3\n")], &[]), &d);
    wrong.base_version = "1.0.0".into();
    d.install_fails("wrong-base.molt", &wrong);
    d.assert_last_result("patch for version 1.0.0");
    assert_eq!(d.fingerprint(), fp);
    for m in SCRIPT_MARKERS {
        assert!(!d.marker(m).exists(), "{m} ran for a refused bundle");
    }
}

/// Copies the host's bash and the libraries it needs into bundle entries, so a chroot of
/// the slot can run scripts.
fn bash_entries() -> Vec<(String, Vec<u8>)> {
    let bash = ["/usr/bin/bash", "/bin/bash"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("bash on the host");
    let ldd = std::process::Command::new("ldd")
        .arg(bash)
        .output()
        .expect("ldd");
    let mut files: Vec<PathBuf> = String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    files.push(bash.to_path_buf());
    let mut out: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|f| {
            (
                f.strip_prefix("/").unwrap().to_string_lossy().into_owned(),
                fs::read(f).unwrap(),
            )
        })
        .collect();
    out.push(("bin/bash".into(), fs::read(bash).unwrap()));
    out
}

/// The patch's new slot starts as a clone of the active one; a chroot script that appends
/// to a carried-over file changes only the new slot's copy.
#[test]
fn a_chroot_script_appending_to_a_carried_over_file_leaves_the_active_slot_alone() {
    let Some(d) = Device::rooted() else {
        return;
    };
    let mut s1 = Spec::full("1.0.0", 1, &[("app/data.txt", b"line 1\n")]);
    s1.chunk_size = 1024 * 1024;
    for (p, c) in bash_entries() {
        s1 = s1.with(&p, Node::File(c, 0o755));
    }
    d.install_ok(&s1);
    let old_dir = d.current_dir();
    let old_fp = fingerprint(&old_dir);

    let mut s2 = Spec::patch("2.0.0", 2, &[("app/other", b"x\n")], &[]);
    s2.before = Some(Script {
        // Builtins only: the slot has bash and nothing else.
        text: "echo 'line 2' >> /app/data.txt; echo inside /app/*".into(),
        chroot: true,
        timeout_secs: 10,
    });
    s2.after = Some(Script {
        text: "echo 'line 3' >> /app/data.txt".into(),
        chroot: true,
        timeout_secs: 10,
    });
    d.install_ok(&s2);
    assert_eq!(
        fs::read_to_string(d.current_dir().join("app/data.txt")).unwrap(),
        "line 1\nline 2\nline 3\n"
    );
    assert_eq!(
        fs::read_to_string(old_dir.join("app/data.txt")).unwrap(),
        "line 1\n",
        "a write in the new slot reached the active slot's file"
    );
    assert_eq!(fingerprint(&old_dir), old_fp);
    assert!(
        d.log().contains("inside /app/data.txt"),
        "the before script ran in a chroot of the new slot:\n{}",
        d.log()
    );
}

// ---------------------------------------------------------------------------------------
// 2. A failure in each stage, with each rollback policy
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    Before,
    After,
    HealthCheck,
    Timeout,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    RevertOnly,
    RollbackCommand,
    Reboot,
}

/// Installs v1, then a v2 that fails in `stage`, under every rollback policy; the device
/// must end on v1, whole, with a final status naming the cause, and take the next update.
fn fails_in(stage: Stage) {
    if !root_or_skip() {
        return;
    }
    for policy in [Policy::RevertOnly, Policy::RollbackCommand, Policy::Reboot] {
        let what = format!("{stage:?} fails, policy {policy:?}");
        let d = Device::new();
        let s1 = v1();
        d.install_ok(&s1);
        let (link, fp) = (d.current_link(), d.fingerprint());

        let mut s2 = v2_full();
        s2.before = Some(sh("echo before-ok"));
        s2.after = Some(sh("echo after-ok"));
        s2.health = Some((sh("true"), 1, 0));
        let pidfile = d.marker("sleeper.pid");
        let health_log = d.marker("health.log");
        match stage {
            Stage::Before => s2.before = Some(sh("echo before-broke >&2; exit 1")),
            Stage::After => s2.after = Some(sh("echo after-broke >&2; exit 1")),
            Stage::HealthCheck => {
                s2.health = Some((
                    sh(format!(
                        "echo attempt >> {}; echo unhealthy; exit 3",
                        health_log.display()
                    )),
                    2,
                    0,
                ))
            }
            Stage::Timeout => {
                s2.after = Some(Script {
                    text: format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
                    chroot: false,
                    timeout_secs: 1,
                })
            }
        }
        match policy {
            Policy::RevertOnly => {}
            Policy::RollbackCommand => {
                s2.rollback_command = Some(sh(format!(
                    "echo rollback-output-for-$MOLT_NEW_VERSION; touch {}",
                    d.marker("rollback").display()
                )))
            }
            Policy::Reboot => s2.reboot = true,
        }
        let started = Instant::now();
        let r = d.install_bytes("v2.molt", &build(&s2), None);
        let took = started.elapsed();
        assert_eq!(r.code, Some(1), "{what}: exit code: {}", r.out);

        // On the old snapshot, whole and untouched.
        assert_eq!(d.current_link(), link, "{what}: current moved");
        assert_tree(&d, &s1.tree(), &what);
        assert_eq!(d.fingerprint(), fp, "{what}: the old snapshot changed");
        assert_settled(&d, &what);

        // The final status names the outcome and the cause.
        let (outcome, cause) = match stage {
            Stage::Before => ("failed", "before: exited with status 1"),
            Stage::After => ("rolled back", "after: exited with status 1"),
            Stage::HealthCheck => ("rolled back", "health-check: health check failed"),
            Stage::Timeout => ("rolled back", "after: timed out"),
        };
        let last = d.last_result();
        assert!(
            last.contains(&format!("{outcome} ({cause})")),
            "{what}: final status `{last}`"
        );
        assert!(r.out.contains(outcome), "{what}: printed `{}`", r.out);
        let log = d.log();
        match stage {
            Stage::Before => assert!(log.contains("before-broke"), "{what}: {log}"),
            Stage::After => assert!(log.contains("after-broke"), "{what}: {log}"),
            Stage::HealthCheck => {
                assert_eq!(
                    fs::read_to_string(&health_log).unwrap().lines().count(),
                    2,
                    "{what}: the health check gets its two attempts"
                );
                assert!(log.contains("unhealthy"), "{what}: {log}");
            }
            Stage::Timeout => {
                assert!(took < Duration::from_secs(8), "{what}: took {took:?}");
                let pid = read_pid(&pidfile);
                assert!(
                    !alive(pid),
                    "{what}: the timed-out command's child {pid} survived"
                );
            }
        }

        // The rollback policy ran as the recipe said, and only that.
        let ran_command = d.marker("rollback").exists();
        let rebooted = d.marker("rebooted").exists();
        assert_eq!(
            ran_command,
            policy == Policy::RollbackCommand,
            "{what}: rollback command"
        );
        assert_eq!(
            log.contains("rollback-output-for-2.0.0"),
            policy == Policy::RollbackCommand,
            "{what}: the rollback command's output belongs in install.log:\n{log}"
        );
        assert_eq!(rebooted, policy == Policy::Reboot, "{what}: reboot command");
        if policy == Policy::Reboot {
            assert!(log.contains("rebooting-now"), "{what}: {log}");
        }

        // The device takes the next update (into the slot the failure left behind).
        let s3 = v3_full();
        d.install_ok(&s3);
        assert_tree(&d, &s3.tree(), &format!("{what}, then v3"));
    }
}

/// A failing before command never swaps; a failing after command, a failing health
/// check and a command timeout (which kills the command's process group) swap back.
#[test]
fn a_failure_in_each_stage_applies_each_policy() {
    for stage in [
        Stage::Before,
        Stage::After,
        Stage::HealthCheck,
        Stage::Timeout,
    ] {
        fails_in(stage);
    }
}

/// The health check's attempts are spaced by its interval (the engine's `Retry`,
/// timed by the agent's clock): a check that fails once and then passes commits, and
/// its second attempt starts at least `interval_secs` after the first one ended.
#[test]
fn a_health_check_that_passes_on_its_second_attempt_waits_the_interval_first() {
    let Some(d) = rooted_on_v1() else {
        return;
    };
    let (tried, times) = (d.marker("tried"), d.marker("times"));
    let mut s2 = v2_full();
    s2.health = Some((
        sh(format!(
            "date +%s%N >> {times}; test -e {tried} && exit 0; touch {tried}; exit 1",
            times = times.display(),
            tried = tried.display()
        )),
        3,
        1,
    ));
    d.install_ok(&s2);
    assert_tree(
        &d,
        &s2.tree(),
        "after a health check that passed on its second attempt",
    );
    let starts: Vec<u128> = fs::read_to_string(&times)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(starts.len(), 2, "a pass ends the attempts: {starts:?}");
    assert!(
        starts[1] - starts[0] >= 1_000_000_000,
        "the second attempt waited the interval: {starts:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 3. kill -9 in every phase
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ends {
    Old,
    New,
}

/// For each phase: install v1, install v2 with the agent killed right after it journals
/// entry into the phase, restart (`status` settles the journal), and check the device is
/// on exactly v1 or v2 as `ends` says for the phase, whole, with `current`, the record
/// and the journal agreeing; then install v3.
fn crash_sweep(
    scenario: &str,
    make_v2: impl Fn(&Device) -> Spec,
    phases: &[&str],
    ends: impl Fn(&str) -> Ends,
) {
    if !root_or_skip() {
        return;
    }
    for &phase in phases {
        let expect = ends(phase);
        let what = format!("{scenario}, killed in {phase}");
        let d = Device::new();
        let s1 = v1();
        d.install_ok(&s1);
        let s2 = make_v2(&d);
        let r = d.install_bytes("v2.molt", &build(&s2), Some(phase));
        assert!(
            r.killed(),
            "{what}: the agent never reached the phase (exit {:?}): {}\n{}",
            r.code,
            r.out,
            d.log()
        );

        let st = assert_settled(&d, &what);
        let got = d.tree();
        let ended = if got == s1.tree() {
            Ends::Old
        } else if got == s2.tree() {
            Ends::New
        } else {
            panic!(
                "{what}: a mixed snapshot; against v1:\n{}against v2:\n{}{st}",
                diff(&s1.tree(), &got),
                diff(&s2.tree(), &got)
            );
        };
        assert_eq!(ended, expect, "{what}:\n{st}\n{}", d.log());
        // The final report after a crash in `done` is the subject of its own test below.
        if phase != "done" {
            let last = d.last_result();
            match ended {
                Ends::New => assert!(last.contains("succeeded"), "{what}: `{last}`"),
                Ends::Old => assert!(
                    last.contains("failed") || last.contains("rolled back"),
                    "{what}: `{last}`"
                ),
            }
        }

        let s3 = v3_full();
        d.install_ok(&s3);
        assert_tree(&d, &s3.tree(), &format!("{what}, then v3"));
        assert_settled(&d, &format!("{what}, then v3"));
    }
}

/// Every phase of a successful install. A crash before the swap fails the install
/// (half-run commands are not resumed), except the download, which is resumed; after the
/// swap the new snapshot is on trial and its phase runs again.
#[test]
fn kill_9_in_every_phase_of_a_successful_install() {
    crash_sweep(
        "successful install",
        |_| {
            let mut s = v2_full();
            s.before = Some(sh("true"));
            s.after = Some(sh("true"));
            s.health = Some((sh("true"), 1, 0));
            s
        },
        &[
            "fetching",
            "before",
            "sealing",
            "swapping",
            "after",
            "health-check",
            "committing",
            "done",
        ],
        |phase| match phase {
            "before" | "sealing" | "swapping" => Ends::Old,
            _ => Ends::New,
        },
    );
}

/// Every phase of an install whose after command fails, with a rollback command and a
/// reboot: the rollback phases are crash-safe too.
#[test]
fn kill_9_in_every_phase_of_a_failing_install_with_full_rollback() {
    crash_sweep(
        "after fails",
        |d| {
            let mut s = with_full_rollback(v2_full(), d);
            s.before = Some(sh("true"));
            s.after = Some(sh("exit 1"));
            s
        },
        &[
            "fetching",
            "before",
            "sealing",
            "swapping",
            "after",
            "swapping-back",
            "reverting",
            "rollback-command",
            "rebooting",
            "done",
        ],
        |_| Ends::Old,
    );
}

/// A failing health check (revert only), and a recipe with packages on a slot that is no
/// root file system (no bash to chroot into: the packages phase fails), so the packages
/// phase is crossed too. Real package installs: tests/packages.rs.
#[test]
fn kill_9_in_the_health_check_and_packages_phases() {
    crash_sweep(
        "health check fails",
        |_| {
            let mut s = v2_full();
            s.health = Some((sh("exit 1"), 1, 0));
            s
        },
        &["health-check", "swapping-back", "reverting"],
        |_| Ends::Old,
    );
    crash_sweep(
        "packages",
        |d| {
            let mut s = with_full_rollback(v2_full(), d);
            s.packages = vec![(PackageManager::Apt, "hello".into())];
            s
        },
        &["packages", "reverting", "rollback-command", "rebooting"],
        |_| Ends::Old,
    );
}

/// Installs v2 (full) with `after` as its after command, the agent killed right after
/// it journals entry into `phase`; returns that v2.
fn v2_killed_in(d: &Device, phase: &str, after: &str) -> Spec {
    let mut s2 = v2_full();
    s2.after = Some(sh(after));
    let r = d.install_bytes("v2.molt", &build(&s2), Some(phase));
    assert!(
        r.killed(),
        "not killed in {phase}: exit {:?}: {}",
        r.code,
        r.out
    );
    s2
}

/// A crash right after `done` is journaled, before the final report is written: the
/// restart must send the same final report again (docs/state-machine.md, restart in `Done`).
#[test]

fn kill_9_right_after_done_is_journaled_still_leaves_the_final_report() {
    if !root_or_skip() {
        return;
    }
    for (after, want) in [
        ("true", "succeeded"),
        ("exit 1", "rolled back (after: exited with status 1)"),
    ] {
        let d = Device::new();
        d.install_ok(&v1());
        v2_killed_in(&d, "done", after);
        assert_settled(&d, "killed in done");
        let last = d.last_result();
        assert!(
            last.contains(want),
            "after `{after}`: the final report was lost; the last report is `{last}`"
        );
    }
}

/// A new snapshot whose after phase kills the agent on every start runs out of its trial
/// budget and the device falls back to the old snapshot.
#[test]
fn a_snapshot_that_keeps_dying_in_its_trial_runs_out_of_trials() {
    if !root_or_skip() {
        return;
    }
    let d = Device::with(Opts {
        trial_boots: Some(2),
        ..Opts::default()
    });
    let s1 = v1();
    d.install_ok(&s1);
    v2_killed_in(&d, "after", "true");
    let mut restarts = 0;
    loop {
        let r = d.agent(&["recover"], Some("after"));
        if !r.killed() {
            assert_eq!(r.code, Some(0), "{}", r.out);
            break;
        }
        restarts += 1;
        assert!(
            restarts <= 5,
            "the trial counter does not bound the retries"
        );
    }
    assert!(
        restarts <= 2,
        "{restarts} restarts with a budget of 2 trials"
    );
    assert_settled(&d, "trials exhausted");
    assert_tree(&d, &s1.tree(), "trials exhausted");
    assert!(
        d.last_result().contains("restarted too often"),
        "{}",
        d.last_result()
    );
}

// ---------------------------------------------------------------------------------------
// 4. Bad bundles: refused before any script runs, the active slot byte-identical
// ---------------------------------------------------------------------------------------

/// A device on v1, ready to be offered bad bundles (root only, else `None`).
fn victim(o: Opts) -> Option<Device> {
    if !root_or_skip() {
        return None;
    }
    let d = Device::with(o);
    d.install_ok(&v1());
    Some(d)
}

/// The good v2 that bad bundles are made from, as bytes and parsed.
fn good_v2_parts(d: &Device) -> (Vec<u8>, Parts) {
    let b = build(&good_v2(d));
    let p = parse(&b);
    (b, p)
}

/// Offers each `(name, bundle, expected words in the final status)` to the device and
/// checks it is refused in the download phase, runs no script, leaves the active slot
/// byte-identical and nothing named `evil` anywhere; collects every failure.
fn refuse_all<'a>(d: &Device, cases: impl IntoIterator<Item = (String, Vec<u8>, &'a str)>) {
    let cases: Vec<_> = cases.into_iter().collect();
    let link = d.current_link();
    let fp = d.fingerprint();
    let mut failures = Vec::new();
    let mut previous = d.last_result();
    let n = cases.len();
    for (name, bytes, want) in cases {
        let r = d.install_bytes("bad.molt", &bytes, None);
        let last = d.last_result();
        println!("{name}: {}", last.trim());
        let mut problems = Vec::new();
        if r.code != Some(1) {
            problems.push(format!("exit {:?} signal {:?}", r.code, r.signal));
        }
        if last == previous {
            problems.push("no final status was written".into());
        }
        if !last.contains("failed (fetching: ") {
            problems.push("not refused while fetching".into());
        }
        if !last.contains(want) {
            problems.push(format!("the final status does not say `{want}`"));
        }
        for m in SCRIPT_MARKERS {
            if d.marker(m).exists() {
                problems.push(format!("the {m} script ran"));
                let _ = fs::remove_file(d.marker(m));
            }
        }
        if d.current_link() != link {
            problems.push(format!("current moved to {}", d.current_link().display()));
        }
        if d.fingerprint() != fp {
            problems.push("the active slot changed".into());
        }
        let evil = find_evil(d.root());
        if !evil.is_empty() {
            problems.push(format!("entries landed: {evil:?}"));
        }
        let st = d.recover();
        if install_phase(&st) != "idle" {
            problems.push(format!("journal not settled: {}", install_phase(&st)));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{name}: {}\n    final status: {}\n    output: {}",
                problems.join("; "),
                last.trim(),
                r.out.trim()
            ));
        }
        previous = last;
    }
    assert!(
        failures.is_empty(),
        "{} of {n} bad bundles were not handled:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Still healthy: a good bundle installs.
    let good = Spec::full("9.0.0", 900, &[("app/ok", b"ok\n")]);
    d.install_ok(&good);
    assert_tree(d, &good.tree(), "a good bundle after the bad ones");
}

/// Paths below `root` whose name mentions `evil`, plus the host-side escape targets.
fn find_evil(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().contains("evil") {
                out.push(p.clone());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.extend(
        [escape_target()]
            .into_iter()
            .filter(|p| fs::symlink_metadata(p).is_ok()),
    );
    out
}

/// Where an escaping entry would land on the host.
fn escape_target() -> PathBuf {
    PathBuf::from(format!(
        "/tmp/molt-install-test-evil-{}",
        std::process::id()
    ))
}

fn good_v2(d: &Device) -> Spec {
    let mut s = armed(v2_full(), d);
    s.comment = "a comment to flip".into();
    s
}

#[test]
fn truncated_bundles_are_refused() {
    let Some(d) = victim(Opts::default()) else {
        return;
    };
    let (b, p) = good_v2_parts(&d);
    let c = &p.chunk_offsets;
    let mut cuts = vec![
        0,
        1,
        7,
        8,
        15,
        16,
        19,
        20,
        60,
        91,
        92,
        p.payload_start - p.manifest.len() / 2,
        p.payload_start - 1,
        p.payload_start,
        p.payload_start + 20,
        p.payload_start + 40,
        p.payload_start + 41,
        c[1] - 1,
        c[1] + 100,
        b.len() / 2,
        c[c.len() - 1],
        b.len() - 1,
    ];
    cuts.sort_unstable();
    cuts.dedup();
    refuse_all(
        &d,
        cuts.into_iter()
            .map(|n| (format!("cut at {n}"), b[..n].to_vec(), "truncated")),
    );
}

#[test]
fn bit_flips_anywhere_are_refused() {
    let Some(d) = victim(Opts::default()) else {
        return;
    };
    let (b, p) = good_v2_parts(&d);
    let comment = b
        .windows(17)
        .position(|w| w == b"a comment to flip")
        .unwrap();
    let last = p.chunk_offsets.len() - 1;
    let mut positions = vec![
        0,
        7,
        8,
        10,
        12,
        13,
        16,
        20,
        27,
        28,
        60,
        91,
        92,
        comment + 3,
        p.payload_start - 1,
        p.payload_start,
        p.payload_start + 4,
        p.payload_start + 8,
        p.payload_start + 39,
        p.payload_start + 40,
        p.payload_start + 45,
        p.chunk_offsets[1] - 1,
        p.chunk_offsets[1] + 10,
        p.chunk_offsets[last] + 41,
        b.len() - 1,
    ];
    // And a few pseudo-random positions.
    positions.extend(
        noise(7, 16)
            .chunks(2)
            .map(|w| (usize::from(w[0]) << 8 | usize::from(w[1])) * 7919 % b.len()),
    );
    let flipped = positions.into_iter().enumerate().map(|(i, at)| {
        let mut x = b.clone();
        x[at] ^= 1 << (i % 8);
        (
            format!("bit {} of byte {at} flipped", i % 8),
            x,
            "bundle refused",
        )
    });
    refuse_all(&d, flipped);
}

/// The payload of one signed bundle spliced onto another's signed head: refused at the first
/// chunk that differs, by its digest; a manifest changed after signing: refused by the signature.
#[test]
fn payload_or_manifest_changed_after_signing_is_refused() {
    let Some(d) = victim(Opts::default()) else {
        return;
    };
    // Two bundles identical up to the fourth chunk: x1 spans chunks 0-3, x2 differs.
    let make = |tail: &[u8]| {
        let mut s = armed(
            Spec::full(
                "2.0.0",
                2,
                &[("app/x1", &noise(11, 60_000)), ("app/x2", tail)],
            ),
            &d,
        );
        s.comment = "a comment to flip".into();
        build(&s)
    };
    let a = make(&noise(12, 30_000));
    let b = make(&noise(13, 30_000));
    let (pa, pb) = (parse(&a), parse(&b));
    let k = (0..pa.chunks.len())
        .find(|&i| pa.chunks[i] != pb.chunks[i])
        .unwrap();
    assert!(
        k >= 3,
        "the bundles should share their first chunks (k = {k})"
    );
    let mut spliced = a[..pa.chunk_offsets[k]].to_vec();
    spliced.extend_from_slice(&b[pb.chunk_offsets[k]..]);
    let mut whole_payload = a[..pa.payload_start].to_vec();
    whole_payload.extend_from_slice(&b[pb.payload_start..]);
    let mut manifest_changed = a.clone();
    let at = a
        .windows(17)
        .position(|w| w == b"a comment to flip")
        .unwrap();
    manifest_changed[at] = b'A';
    let chunk_k = format!("payload chunk {k} at byte {}", pa.chunk_offsets[k]);
    refuse_all(
        &d,
        vec![
            (
                format!("payload from chunk {k} on replaced"),
                spliced,
                chunk_k.as_str(),
            ),
            (
                "whole payload replaced".into(),
                whole_payload,
                "payload chunk 0 at byte",
            ),
            (
                "manifest comment changed".into(),
                manifest_changed,
                "manifest altered after signing",
            ),
        ],
    );
}

#[test]
fn unknown_revoked_and_malformed_signatures_are_refused() {
    let Some(d) = victim(Opts {
        extra_keys: vec![key2()],
        revoked: vec![key2()],
        ..Opts::default()
    }) else {
        return;
    };
    let spec = good_v2(&d);
    let with_keys = |keys: Vec<_>| {
        let mut s = spec.clone();
        s.keys = keys;
        build(&s)
    };
    let good = build(&spec);
    let sig_count = |n: u8| {
        let mut x = good.clone();
        x[16] = n;
        x
    };
    refuse_all(
        &d,
        vec![
            (
                "unknown key".into(),
                with_keys(vec![stranger()]),
                "signed by unknown key",
            ),
            (
                "revoked key".into(),
                with_keys(vec![key2()]),
                "signed by revoked key",
            ),
            (
                "trusted and revoked key".into(),
                with_keys(vec![key(), key2()]),
                "signed by revoked key",
            ),
            ("no signature".into(), sig_count(0), "0 signatures"),
            ("five signatures".into(), sig_count(5), "5 signatures"),
            (
                "two signatures claimed, one present".into(),
                sig_count(2),
                "does not verify",
            ),
        ],
    );
}

/// Entries that break the path, link and special-file rules, written with the encoder's
/// own checks switched off.
#[test]
fn path_link_and_special_file_attacks_are_refused() {
    let Some(d) = victim(Opts::default()) else {
        return;
    };
    let escape = escape_target();
    let escape = escape.to_str().unwrap();
    let deep = format!("{}evil", "d/".repeat(70));
    let long = format!("app/{}evil", "x".repeat(5000));
    let long_name = format!("app/evil{}", "n".repeat(252));
    let up = format!("{}{}", "../".repeat(12), escape.trim_start_matches('/'));
    let file = |c: &str| Node::File(c.as_bytes().to_vec(), 0o644);
    let symlink = |t: &str| Node::Symlink(t.into());
    let hardlink = |t: &str| Node::Hardlink(t.into());
    let dir = || Node::Dir(0o755);
    // What the manifest declares: nothing, or hardlinks (so that the link itself is judged).
    let none = Specials::default();
    let linked = Specials {
        hardlinks: true,
        ..Specials::default()
    };
    // A case: its name, the bundle's entries, what the manifest declares, the refusal's words.
    type Case<'a> = (&'a str, Vec<(String, Node)>, Specials, &'a str);
    let listed = |name, entries: Vec<(&str, Node)>, specials, want| -> Case<'_> {
        let entries = entries.into_iter().map(|(p, n)| (p.to_string(), n));
        (name, entries.collect(), specials, want)
    };
    // Most attacks are entries beneath `app/`, which the bundle holds first.
    let in_app = |name, entries: Vec<(&str, Node)>, specials, want| -> Case<'_> {
        listed(
            name,
            [vec![("app", dir())], entries].concat(),
            specials,
            want,
        )
    };
    // A declared hardlink `link` (path, target) beneath `app/`, after the entries `before`.
    let hardlinked = |name, before: Vec<(&str, Node)>, link: (&str, &str), want| -> Case<'_> {
        let entries = [before, vec![(link.0, hardlink(link.1))]].concat();
        in_app(name, entries, linked, want)
    };
    // The cases run in this order, each changing the final status line.
    let mut cases: Vec<Case<'_>> = Vec::new();
    // A file at a path no entry may have (beneath `app/` where the path says so).
    for (name, path, want) in [
        ("`..` inside a path", "app/../evil", "`.` or `..` component"),
        ("leading `..` to the host", &up, "`.` or `..` component"),
        ("absolute path", escape, "absolute path"),
        ("empty component", "app//evil", "empty component"),
        ("NUL in a path", "app/evil\0x", "NUL byte"),
        ("over-long path", &long, "max_path_len"),
        ("over-deep path", &deep, "max_path_depth"),
    ] {
        cases.push(match path.starts_with("app/") {
            true => in_app(name, vec![(path, file("x"))], none, want),
            false => listed(name, vec![(path, file("x"))], none, want),
        });
    }
    cases.extend([
        in_app(
            "duplicate path",
            vec![("app/dup", file("x")), ("app/dup", file("y"))],
            none,
            "duplicate or out of order",
        ),
        listed(
            "parent missing from a full bundle",
            vec![("app/evil", file("x"))],
            none,
            "parent directory is not in the full bundle",
        ),
        in_app(
            "entry written through a symlink of the bundle",
            vec![("app/l", symlink("/")), ("app/l/evil", file("x"))],
            none,
            "beneath a symlink, file or deletion",
        ),
        in_app(
            "undeclared hardlink",
            vec![("app/a", file("x")), ("app/evil", hardlink("app/a"))],
            none,
            "hardlink not declared",
        ),
        hardlinked(
            "hardlink to the host",
            vec![],
            ("app/evil", "../etc/passwd"),
            "hardlink target is not a valid path",
        ),
        hardlinked(
            "hardlink to a missing file",
            vec![],
            ("app/evil", "app/a"),
            "the hardlink's target does not exist",
        ),
        hardlinked(
            "hardlink to a directory",
            vec![("app/d", dir())],
            ("app/evil", "app/d"),
            "the hardlink's target is not a regular file",
        ),
        hardlinked(
            "hardlink to a symlink",
            vec![("app/a", symlink("/etc/shadow"))],
            ("app/evil", "app/a"),
            "the hardlink's target is not a regular file",
        ),
        hardlinked(
            "hardlink through a symlink of the bundle",
            vec![("app/l", symlink("/"))],
            ("app/m", "app/l/etc/passwd"),
            "passes through a symlink",
        ),
        in_app(
            "hardlink to a later entry",
            vec![("app/evil", hardlink("app/z")), ("app/z", file("x"))],
            linked,
            "sorting before the link",
        ),
        listed(
            "hardlink to a file under .molt/",
            vec![
                (".molt", dir()),
                (".molt/p", file("x")),
                ("app", dir()),
                ("app/evil", hardlink(".molt/p")),
            ],
            linked,
            "lies under `.molt/`",
        ),
        in_app(
            "path component of 256 bytes",
            vec![(&long_name, file("x"))],
            none,
            "longer than 255 bytes",
        ),
    ]);
    // One entry at `app/evil` of a kind or mode the manifest does not declare.
    for (name, node, want) in [
        ("device node", Node::CharDev, "device node not declared"),
        ("FIFO", Node::Fifo, "FIFO not declared"),
        ("socket", Node::Socket, "socket not declared"),
        (
            "setuid file",
            Node::File(b"x".to_vec(), 0o4755),
            "setuid/setgid bit not declared",
        ),
        (
            "setgid file",
            Node::File(b"x".to_vec(), 0o2755),
            "setuid/setgid bit not declared",
        ),
        (
            "mode bits outside 0o7777",
            Node::File(b"x".to_vec(), 0o100644),
            "mode has bits outside",
        ),
        (
            "deletion in a full bundle",
            Node::Delete,
            "deletion in a full bundle",
        ),
    ] {
        cases.push(in_app(name, vec![("app/evil", node)], none, want));
    }
    cases.push(listed(
        "symlink under .molt/",
        vec![(".molt", dir()), (".molt/evil", symlink("x"))],
        none,
        "only files and directories may live under `.molt/`",
    ));
    let bundles = cases.into_iter().map(|(name, entries, specials, want)| {
        let mut s = armed(Spec::full("2.0.0", 2, &[]), &d);
        s.entries = entries.into_iter().map(|(p, n)| n.at(&p)).collect();
        s.raw_order = true;
        s.check_policy = false;
        s.specials = specials;
        (name.to_string(), build(&s), want)
    });
    refuse_all(&d, bundles);
}

/// Symlink targets are data (docs/bundle-format.md, "Links"). The chain `d/s -> ..` plus
/// `d/t -> s/d/s/d/s/d/s/../../…/canary` looks harmless link by link, yet resolved from
/// the slot's directory on the host it reaches a file outside the slot. The rule is that
/// nothing of molt follows a slot's link on the host, so the chain is installed verbatim,
/// a patch clones it as links, and the file it names on the host is never touched.
#[test]
fn symlink_chains_are_installed_verbatim_and_never_followed_on_the_host() {
    let Some(d) = rooted_on_v1() else {
        return;
    };
    let canary = d.root().join("canary");
    fs::write(&canary, "host file\n").unwrap();
    // From a slot's root, this many `..` reach the device root (both slots sit alike).
    let ups = d
        .current_dir()
        .strip_prefix(d.root())
        .unwrap()
        .components()
        .count();
    let target = format!("s/d/s/d/s/d/s/{}canary", "../".repeat(ups));
    let v2 = v2_full()
        .with("d", Node::Dir(0o755))
        .with("d/s", Node::Symlink("..".into()))
        .with("d/t", Node::Symlink(target.clone()));
    d.install_ok(&v2);
    let slot = d.current_dir();
    assert_eq!(
        fs::read_link(slot.join("d/s")).unwrap(),
        PathBuf::from("..")
    );
    assert_eq!(
        fs::read_link(slot.join("d/t")).unwrap(),
        PathBuf::from(&target)
    );
    // What a host program that follows the link would reach: why the agent never does.
    assert_eq!(
        fs::canonicalize(slot.join("d/t")).unwrap(),
        fs::canonicalize(&canary).unwrap()
    );

    d.install_ok(&Spec::patch("3.0.0", 3, &[("app/a", b"A3\n")], &[]));
    let slot = d.current_dir();
    assert_eq!(
        fs::read_link(slot.join("d/t")).unwrap(),
        PathBuf::from(&target)
    );
    assert_eq!(fs::read_to_string(&canary).unwrap(), "host file\n");
}

/// A patch starts from the active snapshot, which may hold symlinks the bundle's policy
/// never saw (the running application made them). No entry and no deletion may go through
/// them: extraction happens beneath the slot's directory handle.
#[test]
fn a_patch_cannot_write_or_delete_through_a_symlink_of_the_active_snapshot() {
    let Some(d) = Device::rooted() else {
        return;
    };
    let mut s1 = v1();
    s1 = s1.with("app/root", Node::Symlink("/".into()));
    d.install_ok(&s1);
    // What the running application did to its own snapshot.
    let outside = PathBuf::from(format!(
        "/tmp/molt-install-test-outside-{}",
        std::process::id()
    ));
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), "host file\n").unwrap();
    let active = d.current_dir();
    std::os::unix::fs::symlink(&outside, active.join("app/abs")).unwrap();
    std::os::unix::fs::symlink(
        format!("{}{}", "../".repeat(12), outside.display()).replace("//", "/"),
        active.join("app/rel"),
    )
    .unwrap();
    let host_before = fingerprint(&outside);

    let cases: Vec<(&str, Spec)> = vec![
        (
            "write through an absolute symlink",
            Spec::patch("2.0.0", 2, &[("app/abs/evil", b"x")], &[]),
        ),
        (
            "write through a relative symlink",
            Spec::patch("2.0.0", 2, &[("app/rel/evil", b"x")], &[]),
        ),
        (
            "write through the bundle-made symlink to /",
            Spec::patch("2.0.0", 2, &[("app/root/evil", b"x")], &[]),
        ),
        (
            "delete through an absolute symlink",
            Spec::patch("2.0.0", 2, &[], &["app/abs/victim"]),
        ),
        (
            "delete through a relative symlink",
            Spec::patch("2.0.0", 2, &[], &["app/rel/victim"]),
        ),
    ];
    let bundles = cases
        .into_iter()
        .map(|(name, s)| {
            (
                name.to_string(),
                build(&armed(s, &d)),
                "passes through a symlink",
            )
        })
        .collect::<Vec<_>>();
    let result = std::panic::catch_unwind(|| refuse_all(&d, bundles));
    let host_after = fingerprint(&outside);
    let landed = fs::read_dir(&outside).unwrap().count();
    let _ = fs::remove_dir_all(&outside);
    assert_eq!(host_before, host_after, "a patch changed a host directory");
    assert_eq!(landed, 1, "a patch wrote into a host directory");
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn bundles_for_other_hardware_or_below_the_floor_are_refused() {
    let Some(d) = Device::rooted() else {
        return;
    };
    let mut s10 = Spec::full("10.0.0", 10, &[("app/a", b"ten\n")]);
    s10.before = Some(sh("true"));
    d.install_ok(&s10);
    let mut other = good_v2(&d);
    other.release = 20;
    other.compatible = "other-board".into();
    let mut old = good_v2(&d);
    old.release = 5;
    let mut patch_other_base = armed(Spec::patch("11.0.0", 11, &[("app/a", b"x")], &[]), &d);
    patch_other_base.base_version = "9.0.0".into();
    let cases = vec![
        (
            "compatible differs".to_string(),
            build(&other),
            "bundle is for other hardware",
        ),
        (
            "release 5 below the floor 10".to_string(),
            build(&old),
            "below the device's floor 10",
        ),
        (
            "patch for another base version".to_string(),
            build(&patch_other_base),
            "patch for version 9.0.0",
        ),
    ];
    // refuse_all ends with a good install (release 900), which raises the floor further.
    refuse_all(&d, cases);
    // A signed manifest that allows the downgrade installs.
    let mut down = Spec::full("5.0.0", 5, &[("app/a", b"five\n")]);
    down.allow_downgrade = true;
    d.install_ok(&down);
    assert_tree(&d, &down.tree(), "allowed downgrade");
    // The floor stays: a plain older bundle is still refused.
    let plain = armed(Spec::full("6.0.0", 6, &[("app/a", b"six\n")]), &d);
    d.install_fails("six.molt", &plain);
    d.assert_last_result("below the device's floor 900");
    assert_tree(&d, &down.tree(), "after the refused downgrade");
}

/// Manifest fields no honest encoder writes, validly signed (a buggy or subverted build
/// pipeline holding the key): huge strings, bad words, impossible numbers, invalid UTF-8.
#[test]
fn malicious_manifest_fields_are_refused() {
    let Some(d) = victim(Opts::default()) else {
        return;
    };
    let base = || {
        let mut s = good_v2(&d);
        s.check_policy = false;
        s
    };
    let mut cases: Vec<(String, Vec<u8>, &str)> = Vec::new();
    // A case: the base bundle with `edit` applied.
    let mut add = |name: &str, want: &'static str, edit: &dyn Fn(&mut Spec)| {
        let mut s = base();
        edit(&mut s);
        cases.push((name.to_string(), build(&s), want));
    };
    // Text fields too long, or holding what the field may not.
    let version: fn(&mut Spec, String) = |s, v| s.version = v;
    let compatible: fn(&mut Spec, String) = |s, v| s.compatible = v;
    let comment: fn(&mut Spec, String) = |s, v| s.comment = v;
    for (name, field, value, want) in [
        (
            "100-character version",
            version,
            "1".repeat(100),
            "manifest field `version`",
        ),
        (
            "version with `..` and `/`",
            version,
            "../../evil".into(),
            "manifest field `version`",
        ),
        (
            "300-character compatible",
            compatible,
            "b".repeat(300),
            "manifest field `compatible`",
        ),
        (
            "5000-character comment",
            comment,
            "c".repeat(5000),
            "manifest field `comment`",
        ),
        (
            "NUL in the comment",
            comment,
            "nul\0here".into(),
            "manifest field `comment`",
        ),
    ] {
        add(name, want, &|s| field(s, value.clone()));
    }
    add(
        "40 KiB before script",
        "manifest field `recipe.before`",
        &|s| {
            s.before = Some(sh(format!(
                "touch {}; # {}",
                d.marker("before").display(),
                "x".repeat(40_000)
            )));
        },
    );
    add("zero timeout", "manifest field `recipe.before`", &|s| {
        s.before.as_mut().unwrap().timeout_secs = 0;
    });
    add(
        "timeout of 136 years",
        "manifest field `recipe.after`",
        &|s| {
            s.after.as_mut().unwrap().timeout_secs = u32::MAX;
        },
    );
    add(
        "zero health-check attempts",
        "manifest field `recipe.health_check.attempts`",
        &|s| s.health.as_mut().unwrap().1 = 0,
    );
    add(
        "huge health-check interval",
        "manifest field `recipe.health_check.interval_secs`",
        &|s| s.health.as_mut().unwrap().2 = u32::MAX,
    );
    for name in ["../evil", "a/b", "-rf", "two words", ""] {
        add(
            &format!("package name {name:?}"),
            "manifest field `recipe.packages.name`",
            &|s| s.packages = vec![(PackageManager::Apt, name.into())],
        );
    }
    add("70 KB manifest", "limit max_manifest_len exceeded", &|s| {
        s.comment = "c".repeat(70_000);
        s.limits = Limits {
            max_manifest_len: 1 << 20,
            ..Limits::DEFAULT
        };
    });

    // Numbers and bytes no encoder writes: re-sign an edited manifest.
    let good = build(&base());
    let p = parse(&good);
    let resign = |edit: &dyn Fn(&mut Manifest<'_>)| {
        let mut m = Manifest::decode(&p.manifest).unwrap();
        edit(&mut m);
        assemble(&m, &p.chunks, &[key()])
    };
    for (name, field, want) in [
        (
            "u32::MAX entries",
            "entries.count",
            "limit max_entries exceeded",
        ),
        (
            "u64::MAX file bytes",
            "entries.file_bytes",
            "limit max_total_size exceeded",
        ),
        (
            "u32::MAX chunk size",
            "payload.chunk_size",
            "limit max_chunk_size exceeded",
        ),
        (
            "u64::MAX wire length",
            "payload.wire_len",
            "limit max_payload_len exceeded",
        ),
        (
            "u64::MAX raw length",
            "payload.raw_len",
            "manifest field `payload`",
        ),
        (
            "u32::MAX chunks",
            "payload.chunk_count",
            "manifest field `payload`",
        ),
    ] {
        cases.push((
            name.into(),
            resign(&|m| edit_number(m, field, |_| u64::MAX)),
            want,
        ));
    }
    // Invalid UTF-8 in the version (the manifest's first field: a length byte, then text).
    let mut mb = p.manifest.clone();
    assert_eq!(&mb[1..6], b"2.0.0");
    mb[1..3].copy_from_slice(&[0xC3, 0x28]);
    cases.push((
        "invalid UTF-8 in the version".into(),
        assemble_bytes(&mb, &p.chunks, &[key()]),
        "malformed manifest",
    ));
    cases.push((
        "4 MiB zstd frame in a 16 KiB chunk".into(),
        bomb(&d),
        "payload chunk 0: frame content size differs from the chunk header",
    ));
    // A manifest cut short (and signed that way).
    cases.push((
        "signed manifest cut short".into(),
        assemble_bytes(&p.manifest[..p.manifest.len() / 2], &p.chunks, &[key()]),
        "bundle refused",
    ));
    refuse_all(&d, cases);
}

/// Sets the manifest's number `field` to `to` of its value (a 32-bit field saturates at
/// its maximum).
fn edit_number(m: &mut Manifest<'_>, field: &str, to: impl Fn(u64) -> u64) {
    let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let (e, p) = (&mut m.entries, &mut m.payload);
    match field {
        "entries.count" => e.count = narrow(to(e.count.into())),
        "entries.file_bytes" => e.file_bytes = to(e.file_bytes),
        "payload.chunk_size" => p.chunk_size = narrow(to(p.chunk_size.into())),
        "payload.wire_len" => p.wire_len = to(p.wire_len),
        "payload.raw_len" => p.raw_len = to(p.raw_len),
        "payload.chunk_count" => p.chunk_count = narrow(to(p.chunk_count.into())),
        _ => unreachable!("no manifest number {field}"),
    }
}

/// A decompression bomb: a 4 MiB chunk of zeros (a few hundred bytes on the wire), validly
/// signed, in a bundle whose manifest says 16 KiB chunks.
fn bomb(d: &Device) -> Vec<u8> {
    let mut spec = good_v2(d);
    spec.chunk_size = 4 * 1024 * 1024;
    spec.entries = vec![file("zeros", &vec![0; 4 * 1024 * 1024 - 64])];
    spec.check_policy = false;
    let p = parse(&build(&spec));
    assert_eq!(p.chunks.len(), 1);
    assert!(p.chunks[0].1.len() < 16 * 1024);
    let chunks = vec![(16 * 1024, p.chunks[0].1.clone())];
    let mut m = Manifest::decode(&p.manifest).unwrap();
    let (first, wire) = payload_of(&chunks);
    m.payload.chunk_size = 16 * 1024;
    m.payload.raw_len = 16 * 1024;
    m.payload.wire_len = wire;
    m.payload.first_chunk = first;
    m.entries.file_bytes = 0;
    assemble(&m, &chunks, &[key()])
}

/// The signed manifest binds the exact length and every entry: trailing bytes, entries
/// missing from the manifest or from the payload, a stream longer than signed, a chunk
/// that inflates past its signed size, and the configured limits.
#[test]
fn the_signed_manifest_binds_length_entries_and_size() {
    let Some(d) = victim(Opts {
        limits: vec![
            "max_entries = 100".into(),
            "max_file_size = 65536".into(),
            "max_chunk_size = 1048576".into(),
        ],
        ..Opts::default()
    }) else {
        return;
    };
    let (good, p) = good_v2_parts(&d);
    let resign = |edit: &dyn Fn(&mut Manifest<'_>)| {
        let mut m = Manifest::decode(&p.manifest).unwrap();
        edit(&mut m);
        assemble(&m, &p.chunks, &[key()])
    };
    let mut cases: Vec<(String, Vec<u8>, &str)> = vec![
        (
            "trailing garbage".into(),
            [good.as_slice(), b"garbage"].concat(),
            "data beyond the signed end",
        ),
        (
            "one trailing zero byte".into(),
            [good.as_slice(), &[0]].concat(),
            "data beyond the signed end",
        ),
        (
            "a second copy appended".into(),
            [good.as_slice(), good.as_slice()].concat(),
            "data beyond the signed end",
        ),
    ];
    // Counts and lengths one off what the bundle holds.
    for (name, field, by, want) in [
        (
            "manifest lists one entry more",
            "entries.count",
            1,
            "entries do not match the signed manifest",
        ),
        (
            "manifest lists one entry fewer",
            "entries.count",
            -1,
            "data after the last entry",
        ),
        (
            "one file byte more signed",
            "entries.file_bytes",
            1,
            "total file size differs",
        ),
        (
            "raw length one byte short",
            "payload.raw_len",
            -1,
            "more data than the signed raw length",
        ),
        (
            "wire length one byte short",
            "payload.wire_len",
            -1,
            "runs past the signed payload length",
        ),
        (
            "one chunk fewer signed",
            "payload.chunk_count",
            -1,
            "manifest field `payload`",
        ),
    ] {
        let edit = |m: &mut Manifest<'_>| edit_number(m, field, |v| v.wrapping_add_signed(by));
        cases.push((name.into(), resign(&edit), want));
    }
    cases.push((
        "entry table digest differs".into(),
        resign(&|m| m.entries.digest[0] ^= 1),
        "entries do not match the signed manifest",
    ));

    // A stream longer than signed: a valid chunk after the last one; and a chunk more than
    // the signed chain (re-chained, so the first chunk no longer matches the manifest).
    let first_chunk = &good[p.chunk_offsets[0]..p.chunk_offsets[1]];
    cases.push((
        "a valid chunk after the signed end".into(),
        [good.as_slice(), first_chunk].concat(),
        "data beyond the signed end",
    ));
    let mut extra = p.chunks.clone();
    extra.push(p.chunks[0].clone());
    cases.push((
        "a chunk more than signed".into(),
        assemble(&Manifest::decode(&p.manifest).unwrap(), &extra, &[key()]),
        "payload chunk 0 at byte",
    ));
    cases.push((
        "4 MiB zstd frame in a 16 KiB chunk, 1 MiB window limit".into(),
        bomb(&d),
        "payload chunk 0: zstd window larger than the chunk size limit",
    ));

    // The device's own limits.
    let many: Vec<(String, Vec<u8>)> = (0..120)
        .map(|i| (format!("app/f{i:03}"), Vec::new()))
        .collect();
    let refs: Vec<(&str, &[u8])> = many
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    cases.push((
        "more entries than max_entries".into(),
        build(&armed(Spec::full("2.0.0", 2, &refs), &d)),
        "limit max_entries exceeded",
    ));
    let big = noise(3, 100_000);
    cases.push((
        "a file over max_file_size".into(),
        build(&armed(Spec::full("2.0.0", 2, &[("app/big", &big)]), &d)),
        "limit max_file_size exceeded",
    ));
    let mut wide = armed(Spec::full("2.0.0", 2, &[("app/a", b"x")]), &d);
    wide.chunk_size = 2 * 1024 * 1024;
    cases.push((
        "chunks over max_chunk_size".into(),
        build(&wide),
        "limit max_chunk_size exceeded",
    ));
    refuse_all(&d, cases);
}

// ---------------------------------------------------------------------------------------
// 5. HTTP
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Serve {
    /// Answers `Range: bytes=N-` with 206 and the right `Content-Range`.
    Honest,
    /// Answers every request with 200 and the whole file.
    IgnoresRange,
    /// Answers a range request with a range one byte off.
    WrongRange,
    /// Answers the right range, but with another ETag (the file changed).
    ChangedFile,
}

/// A one-file HTTP/1.1 server on 127.0.0.1. Response `i` is cut after `cuts[i]` body bytes
/// (the connection then closes, as a network drop would); `seen` records each request's
/// `Range` header.
struct Server {
    url: String,
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

fn serve(body: Vec<u8>, cuts: Vec<usize>, mode: Serve) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v2.molt", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("range:") {
                    range = Some(v.trim().to_string());
                }
            }
            log.lock().unwrap().push(range.clone());
            let start: usize = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse().ok())
                .unwrap_or(0);
            let (status, from, etag) = match (mode, start) {
                (_, 0) | (Serve::IgnoresRange, _) => ("200 OK", 0, "\"v1\""),
                (Serve::Honest, s) => ("206 Partial Content", s, "\"v1\""),
                (Serve::WrongRange, s) => ("206 Partial Content", s + 1, "\"v1\""),
                (Serve::ChangedFile, s) => ("206 Partial Content", s, "\"v2\""),
            };
            let part = &body[from.min(body.len())..];
            let mut head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: {etag}\r\nConnection: close\r\n",
                part.len()
            );
            if from > 0 || status.starts_with("206") {
                head.push_str(&format!(
                    "Content-Range: bytes {from}-{}/{}\r\n",
                    body.len() - 1,
                    body.len()
                ));
            }
            head.push_str("\r\n");
            let n = cuts.get(i).copied().unwrap_or(usize::MAX).min(part.len());
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&part[..n]);
            let _ = conn.flush();
            let _ = conn.shutdown(Shutdown::Both);
        }
    });
    Server { url, seen }
}

/// A bundle of a few hundred KB of incompressible files.
fn http_v2(d: &Device) -> Spec {
    armed(
        Spec::full(
            "2.0.0",
            2,
            &[
                ("app/a", &noise(21, 90_000)),
                ("app/b", &noise(22, 90_000)),
                ("app/c", &noise(23, 90_000)),
            ],
        ),
        d,
    )
}

#[test]
fn an_http_download_that_drops_twice_resumes_with_range_and_installs() {
    let Some(d) = victim(Opts::default()) else {
        return;
    };
    let mut s2 = http_v2(&d);
    s2.before = None;
    s2.after = None;
    s2.health = None;
    let body = build(&s2);
    let server = serve(body.clone(), vec![60_000, 50_000], Serve::Honest);
    let r = d.agent(&["install", &server.url], None);
    assert_eq!(r.code, Some(0), "{}\n{}", r.out, d.log());
    assert_tree(&d, &s2.tree(), "after a resumed download");
    assert_eq!(
        *server.seen.lock().unwrap(),
        vec![
            None,
            Some("bytes=60000-".to_string()),
            Some("bytes=110000-".to_string())
        ],
        "the agent should resume exactly where each connection dropped"
    );
    assert_settled(&d, "resumed download");
}

#[test]
fn an_http_server_that_ignores_or_misanswers_range_is_refused() {
    let Some(d) = victim(Opts::default()) else {
        return;
    };
    let body = build(&http_v2(&d));
    let link = d.current_link();
    let fp = d.fingerprint();
    for (mode, want) in [
        (Serve::IgnoresRange, "ignored the Range request"),
        (Serve::WrongRange, "the server answered"),
        (Serve::ChangedFile, "changed between requests"),
    ] {
        let server = serve(body.clone(), vec![60_000], mode);
        let r = d.agent(&["install", &server.url], None);
        assert_eq!(r.code, Some(1), "{mode:?}: {}", r.out);
        let last = d.last_result();
        assert!(
            last.contains("failed (fetching: download failed)") && last.contains(want),
            "{mode:?}: final status `{last}`"
        );
        assert_eq!(d.current_link(), link, "{mode:?}");
        assert_eq!(d.fingerprint(), fp, "{mode:?}: the active slot changed");
        for m in SCRIPT_MARKERS {
            assert!(!d.marker(m).exists(), "{mode:?}: the {m} script ran");
        }
        assert_eq!(server.seen.lock().unwrap().len(), 2, "{mode:?}");
        assert_settled(&d, &format!("{mode:?}"));
    }
}

// ---------------------------------------------------------------------------------------
// 6. Manual rollback
// ---------------------------------------------------------------------------------------

#[test]
fn manual_rollback_after_two_installs_switches_back_and_current_follows() {
    let Some(d) = rooted_on_v1() else {
        return;
    };
    let s1 = v1();
    let slot1 = d.current_link();
    let s2 = v2_full();
    d.install_ok(&s2);
    let slot2 = d.current_link();
    assert_ne!(slot1, slot2);
    let fp2 = d.fingerprint();

    let r = d.agent(&["rollback"], None);
    assert_eq!(r.code, Some(0), "{}", r.out);
    let name1 = slot1.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        r.out.contains(&format!("slot {name1} is active")),
        "{}",
        r.out
    );
    assert_eq!(d.current_link(), slot1, "current follows the rollback");
    assert_tree(&d, &s1.tree(), "after the manual rollback");
    let st = assert_settled(&d, "manual rollback");
    assert_eq!(active_slot(&st).as_deref(), Some(name1.as_str()));
    assert_eq!(
        fingerprint(&d.data().join(&slot2)),
        fp2,
        "the snapshot left behind is kept as it was"
    );

    // Both snapshots are good, so the operator can switch forward again, and back.
    assert_eq!(d.agent(&["rollback"], None).code, Some(0));
    assert_eq!(d.current_link(), slot2);
    assert_tree(&d, &s2.tree(), "rolled forward");
    assert_eq!(d.agent(&["rollback"], None).code, Some(0));
    assert_eq!(d.current_link(), slot1);

    // The next install goes into the slot not in use and leaves the active one alone.
    let fp1 = d.fingerprint();
    let s3 = v3_full();
    d.install_ok(&s3);
    assert_eq!(d.current_link(), slot2);
    assert_tree(&d, &s3.tree(), "install after a rollback");
    assert_eq!(fingerprint(&d.data().join(&slot1)), fp1);
    assert_settled(&d, "install after a rollback");
}

/// A bundle refused before its manifest is verified never staged anything: the slot record
/// still calls the inactive slot the good previous snapshot, so that snapshot must still be
/// there for `molt-agent rollback`.
#[test]

fn a_refused_bundle_leaves_the_previous_snapshot_for_a_manual_rollback() {
    let Some(d) = rooted_on_v1() else {
        return;
    };
    let slot1 = d.current_link();
    d.install_ok(&v2_full());
    let mut other = good_v2(&d);
    other.compatible = "other-board".into();
    for (name, bytes) in [
        ("garbage", b"garbage".to_vec()),
        ("other hardware", build(&other)),
    ] {
        let r = d.install_bytes("bad.molt", &bytes, None);
        assert_eq!(r.code, Some(1), "{name}: {}", r.out);
    }
    let r = d.agent(&["rollback"], None);
    if r.code == Some(0) {
        // The record offered the previous snapshot: it must be there, whole.
        assert_eq!(d.current_link(), slot1);
        assert_tree(&d, &v1().tree(), "manual rollback after refused bundles");
    } else {
        // Or the agent knows the slot is gone and refuses; the device stays on v2.
        assert_tree(&d, &v2_full().tree(), "refused manual rollback");
    }
}

/// Reliability item 5: a zero-length journal while the new snapshot is on trial. The
/// journal reads as idle; the device must still end on a whole snapshot that is not left
/// on trial forever, and take the next update.
#[test]

fn a_lost_journal_during_a_trial_does_not_wedge_the_device() {
    let Some(d) = rooted_on_v1() else {
        return;
    };
    let s2 = v2_killed_in(&d, "after", "true");
    fs::write(d.data().join("journal"), b"").unwrap();
    let st = assert_settled(&d, "lost journal");
    let got = d.tree();
    assert!(
        got == v1().tree() || got == s2.tree(),
        "a mixed snapshot:\n{st}"
    );
    let s3 = v3_full();
    let r = d.install_bytes("v3.molt", &build(&s3), None);
    assert_eq!(r.code, Some(0), "{}\n{}", r.out, d.recover());
    assert_tree(&d, &s3.tree(), "v3 after a lost journal");
}

/// After a power cut the install log can end in zeros (appended without fsync; the
/// file system kept the size, not the data). The next start cuts them and says so.
#[test]
fn nuls_a_power_cut_left_in_the_install_log_are_cut_at_the_next_start() {
    let Some(d) = Device::rooted() else {
        return;
    };
    let r = d.install_bytes("v1.molt", &build(&v1()), None);
    assert_eq!(r.code, Some(0), "{}", r.out);
    let log = d.data().join("install.log");
    let before = fs::read(&log).unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&vec![0u8; 100_000]).unwrap();
    drop(f);
    let r = d.agent(&["recover"], None);
    assert_eq!(r.code, Some(0), "{}", r.out);
    let after = fs::read(&log).unwrap();
    assert!(!after.contains(&0), "NUL bytes left in install.log");
    assert!(after.starts_with(&before), "the log's own lines must stay");
    let text = String::from_utf8(after).unwrap();
    assert!(
        text.contains("dropped 100000 NUL bytes"),
        "the cut is not logged:\n{text}"
    );
}

/// `durable = false` (the mode `cargo xtask bench durability` compares against) installs
/// the same snapshot, says at every start that a power cut can tear it, and a large file
/// crosses the writing thread in pieces without losing a byte.
#[test]
fn a_non_durable_device_installs_the_same_snapshot_and_says_what_it_risks() {
    let Some(d) = Device::rooted() else {
        return;
    };
    let cfg = d.root().join("agent.toml");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, format!("durable = false\n{text}")).unwrap();
    let spec = v1().with(
        "app/big.bin",
        Node::File(noise(7, 3 * 1024 * 1024 + 17), 0o644),
    );
    let r = d.install_bytes("1.0.0.molt", &build(&spec), None);
    assert_eq!(r.code, Some(0), "{}", r.out);
    assert!(
        r.out.contains("durable = false") && r.out.contains("power cut"),
        "the agent warns about non-durable mode: {}",
        r.out
    );
    assert_tree(&d, &spec.tree(), "after a non-durable install");
}

// ---------------------------------------------------------------------------------------
// Local users: `status` writes nothing, state is private whatever the umask
// ---------------------------------------------------------------------------------------

/// The bytes of the agent's state files (record, journal), to show a command left them alone.
fn state_bytes(d: &Device) -> Vec<Option<Vec<u8>>> {
    ["slot.rec", "journal", "status", "staging/source"]
        .iter()
        .map(|f| fs::read(d.data().join(f)).ok())
        .collect()
}

#[test]
fn status_is_read_only_after_a_crash_and_on_a_new_device() {
    let Some(d) = Device::rooted() else {
        return;
    };
    // A new device: the factory slot is shown, and nothing is created.
    let st = d.status();
    assert!(st.contains("factory"), "{st}");
    assert!(!d.data().exists(), "status created {}", d.data().display());

    d.install_ok(&v1());
    let ran = d.marker("after-ran");
    // Killed right after journaling the after phase, before the command ran.
    v2_killed_in(&d, "after", &format!("echo ran >> {}", ran.display()));
    let before = state_bytes(&d);
    for _ in 0..2 {
        let st = d.status();
        assert_eq!(install_phase(&st), "after", "{st}");
        assert!(
            st.contains("interrupted") && st.contains("molt-agent recover"),
            "{st}"
        );
    }
    assert!(!ran.exists(), "status ran the after command");
    assert!(state_bytes(&d) == before, "status changed the state files");
    // `recover` settles it: the after command runs once, and the install ends.
    let st = d.recover();
    assert_eq!(install_phase(&st), "idle", "{st}");
    assert_eq!(fs::read_to_string(&ran).unwrap(), "ran\n");
    assert!(d.last_result().contains("succeeded"), "{}", d.last_result());
    assert!(!d.status().contains("agent         not running"));
}

/// Runs the agent with `args` under `umask 000`.
fn agent_umask_000(d: &Device, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut c = std::process::Command::new(AGENT);
    c.arg("--config")
        .arg(d.root().join("agent.toml"))
        .args(args)
        .env("MOLT_LOG", "warn");
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    c.output().unwrap()
}

/// Every path below `dir` (symlinks included), depth first.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            walk(&p, out);
        }
    }
}

/// The paths among `paths` that user `nobody` can write: a file it can append to,
/// a directory it can create a file in.
fn writable_by_nobody(paths: &[PathBuf]) -> String {
    use std::os::unix::process::CommandExt;
    let script = r#"for p in "$@"; do
        if [ -L "$p" ]; then continue; fi
        if [ -d "$p" ]; then (: > "$p/.nobody") 2>/dev/null && echo "dir $p"
        else (: >> "$p") 2>/dev/null && echo "file $p"; fi
    done; true"#;
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(paths)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn state_stays_private_under_umask_000_and_the_lock_is_root_only() {
    if !root_or_skip() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let d = Device::new();
    // Let other users reach the data directory, as on a device (/var/lib/molt).
    fs::set_permissions(d.root(), fs::Permissions::from_mode(0o755)).unwrap();
    let data = d.data();
    let during = d.marker("writable-during");
    let mut s1 = v1();
    // While the install runs (the new snapshot staged, the old one active): nothing
    // in the data directory may be writable by group or others.
    s1.before = Some(sh(format!(
        "find {} ! -type l -perm /022 -printf '%m %p\\n' > {}",
        data.display(),
        during.display()
    )));
    let p = d.root().join("bundles/v1.molt");
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, build(&s1)).unwrap();
    let o = agent_umask_000(&d, &["install", p.to_str().unwrap()]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        fs::read_to_string(&during).unwrap(),
        "",
        "writable during the install"
    );

    let mut paths = Vec::new();
    walk(&data, &mut paths);
    assert!(paths.len() > 10, "{paths:?}");
    for p in &paths {
        let m = fs::symlink_metadata(p).unwrap();
        if !m.file_type().is_symlink() {
            assert_eq!(
                m.permissions().mode() & 0o022,
                0,
                "{} is {:o}",
                p.display(),
                m.permissions().mode()
            );
        }
    }
    for f in ["journal", "slot.rec", "lock", "status", "install.log"] {
        let mode = fs::metadata(data.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} is {mode:o}");
    }
    for dir in ["staging", "outbox"] {
        if let Ok(m) = fs::metadata(data.join(dir)) {
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{dir}");
        }
    }
    paths.push(data.clone());
    assert_eq!(
        writable_by_nobody(&paths),
        "",
        "an unprivileged user wrote these"
    );

    // The lock: flock needs no write access, so only a file others cannot open at
    // all keeps them from holding it and blocking every install.
    let lock = data.join("lock");
    let held = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("flock")
            .args(["-n", lock.to_str().unwrap(), "true"])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    assert!(!held.status.success(), "nobody took the lock: {held:?}");

    // Files an older agent (or another umask) left wide are tightened at the next start.
    for f in ["journal", "slot.rec", "lock"] {
        fs::set_permissions(data.join(f), fs::Permissions::from_mode(0o666)).unwrap();
    }
    fs::set_permissions(data.join("staging"), fs::Permissions::from_mode(0o777)).unwrap();
    let o = agent_umask_000(&d, &["recover"]);
    assert!(o.status.success(), "{o:?}");
    for f in ["journal", "slot.rec", "lock"] {
        let mode = fs::metadata(data.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f} is {mode:o} after a restart");
    }
    let mode = fs::metadata(data.join("staging"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn logs_carry_no_colour_codes_off_a_terminal() {
    let Some(d) = Device::rooted() else {
        return;
    };
    // Neither to a pipe nor with NO_COLOR set does a log line carry an escape code.
    for (spec, env) in [
        (v1(), vec![("MOLT_LOG", "info")]),
        (v2_full(), vec![("MOLT_LOG", "info"), ("NO_COLOR", "1")]),
    ] {
        let p = d.root().join(format!("{}.molt", spec.version));
        fs::write(&p, build(&spec)).unwrap();
        let r = d.agent_env(&["install", p.to_str().unwrap()], &env);
        assert!(r.out.contains("INFO"), "no log lines to check: {}", r.out);
        assert!(!r.out.contains('\x1b'), "colour codes in {:?}", r.out);
    }
}

#[test]
fn hostile_paths_and_script_output_reach_logs_and_status_escaped() {
    let Some(d) = Device::rooted() else {
        return;
    };
    let evil = "app/x\nFORGED\u{1b}[31m\u{9b}2J";
    let mut s1 = v1().with(evil, Node::File(b"boo".to_vec(), 0o644));
    // A script printing escape sequences, then a refusal quoting the path: the
    // before command fails naming the file, so the path reaches the status line.
    s1.before = Some(sh(format!(
        "printf 'out \\033]0;pwned\\007 \\033[2J\\n'; echo \"missing $MOLT_NEW_SLOT/{}\"; exit 3",
        "app/x"
    )));
    let r = d.install_bytes("v1.molt", &build(&s1), None);
    assert_eq!(r.code, Some(1), "{}", r.out);
    for (what, text) in [
        ("install.log", d.log()),
        ("status", d.last_result()),
        ("stderr", r.out.clone()),
    ] {
        assert_inert(what, &text);
        assert!(!text.contains("\nFORGED"), "{what} forged a line:\n{text}");
    }
    assert!(
        d.log().contains("out \\e]0;pwned\\u{7} \\e[2J"),
        "{}",
        d.log()
    );
    assert_eq!(
        d.last_result().trim_end().lines().count(),
        1,
        "{}",
        d.last_result()
    );
    assert_inert("status", &d.status());
}

/// The v3 bundle, and two copies refused only near their end: one zero byte appended,
/// and one bit flipped in the last chunk.
fn v3_spoilt_at_the_end() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let good = build(&v3_full());
    let mut trailing = good.clone();
    trailing.push(0);
    let mut flipped = good.clone();
    let at = flipped.len() - 10;
    flipped[at] ^= 1;
    (good, trailing, flipped)
}

#[test]
fn a_local_file_refused_anywhere_in_its_chain_keeps_the_rollback_target() {
    let Some(d) = rooted_on_v1() else {
        return;
    };
    d.install_ok(&v2_full());
    // v1 is now the inactive slot: the rollback target.
    let (good, trailing, flipped) = v3_spoilt_at_the_end();
    let cut = good[..good.len() - 1].to_vec();
    for (name, bad) in [("trailing", trailing), ("flipped", flipped), ("cut", cut)] {
        let r = d.install_bytes(&format!("{name}.molt"), &bad, None);
        assert_ne!(r.code, Some(0), "{name}: installed:\n{}", r.out);
        let st = d.status();
        assert!(
            st.contains("version 1.0.0"),
            "{name}: the rollback target is gone:\n{st}"
        );
    }
    let r = d.agent(&["rollback"], None);
    assert_eq!(r.code, Some(0), "{}", r.out);
    assert_tree(&d, &v1().tree(), "rolled back after three refused files");
}

#[test]
fn installing_what_is_already_active_changes_nothing() {
    let Some(d) = Device::rooted() else {
        return;
    };
    let ran = d.marker("after-count");
    let mut s1 = v1();
    s1.after = Some(sh(format!("echo ran >> {}", ran.display())));
    let bundle = build(&s1);
    let r = d.install_bytes("v1.molt", &bundle, None);
    assert_eq!(r.code, Some(0), "{}", r.out);
    let st = d.status();
    // The same file again: a no-op that says so, not a second install into the
    // other slot (which would lose the rollback target and run `after` twice).
    let again = d.install_bytes("v1.molt", &bundle, None);
    assert_eq!(again.code, Some(0), "{}", again.out);
    assert!(
        again.out.contains("the active snapshot already"),
        "{}",
        again.out
    );
    assert_eq!(fs::read_to_string(&ran).unwrap(), "ran\n");
    assert_eq!(d.status(), st, "the second install changed the device");

    // Interrupted by a kill -9 in `after`, then the same command again: opening the
    // device finishes the interrupted install, and that is all.
    let mut s2 = v2_full();
    s2.after = Some(sh(format!("echo ran2 >> {}", ran.display())));
    let b2 = build(&s2);
    assert!(d.install_bytes("v2.molt", &b2, Some("after")).killed());
    let r = d.install_bytes("v2.molt", &b2, None);
    assert_eq!(r.code, Some(0), "{}", r.out);
    assert!(r.out.contains("has just been finished"), "{}", r.out);
    assert_eq!(fs::read_to_string(&ran).unwrap(), "ran\nran2\n");
    let st = d.status();
    assert!(
        st.contains("version 2.0.0") && st.contains("version 1.0.0"),
        "both slots on 2.0.0:\n{st}"
    );
}

// ---------------------------------------------------------------------------------------
// 7. A full disk during a patch's clone (hardening item 9)
// ---------------------------------------------------------------------------------------

/// Every regular file below `dir` whose content is not that of the same path below
/// `like`: a file cut short by a full disk, or anything else that is not a whole copy.
fn not_whole_copies(dir: &Path, like: &Path) -> Vec<String> {
    let (got, want) = (scan(dir), scan(like));
    got.into_iter()
        .filter(|(p, k)| matches!(k, Kind::File(..)) && want.get(p) != Some(k))
        .map(|(p, _)| p)
        .collect()
}

/// The data directory on a 10 MiB file system whose active snapshot holds 6 MiB: the
/// clone a patch starts with cannot fit. The install must fail saying "no space", leave
/// no file cut short under its final name, give the space back, and say in `status`
/// what happened to the inactive slot; the active snapshot and `current` stay as they were.
#[test]
fn a_full_disk_during_a_patch_clone_frees_the_space_and_says_why() {
    if !root_or_skip() {
        return;
    }
    let small = tempfile::tempdir().unwrap();
    let fs_ = Tmpfs::mount(small.path(), c"size=10m");
    let d = Device::in_dir(small.path());
    // Bundles stay off the small file system: only the device's data is on it.
    let bundles = tempfile::tempdir().unwrap();
    let install = |spec: &Spec| {
        let p = bundles.path().join(format!("{}.molt", spec.version));
        fs::write(&p, build(spec)).unwrap();
        d.agent(&["install", p.to_str().unwrap()], None)
    };
    let s1 = Spec::full(
        "1.0.0",
        1,
        &[
            ("app/a", b"A1\n"),
            ("app/big1.bin", &noise(91, 3 << 20)),
            ("app/big2.bin", &noise(92, 3 << 20)),
            ("etc/app.conf", b"port=80\n"),
        ],
    );
    let r = install(&s1);
    assert_eq!(r.code, Some(0), "{}\n{}", r.out, d.log());
    let link = d.current_link();
    let fp = d.fingerprint();
    let active = d.current_dir();
    let inactive_name = if link.ends_with("a") { "b" } else { "a" };
    let inactive = d.data().join("slots").join(inactive_name);
    let free_before = fs_.free();
    assert!(
        free_before < 6 << 20,
        "the test needs less free space ({free_before} bytes) than the active snapshot"
    );

    let mut s2 = Spec::patch("2.0.0", 2, &[("app/a", b"A2\n")], &[]);
    s2.base_version = "1.0.0".into();
    let r = install(&s2);
    assert_eq!(r.code, Some(1), "the patch cannot fit:\n{}", r.out);
    let said = r.out.to_lowercase();
    assert!(
        said.contains("no space"),
        "the install's own output should say why it failed:\n{}",
        r.out
    );

    let cut = not_whole_copies(&inactive, &active);
    assert!(
        cut.is_empty(),
        "files of slot {inactive_name} that are not whole copies: {cut:?}\n{}",
        d.log()
    );
    let free_after = fs_.free();
    assert!(
        free_after + (256 << 10) >= free_before,
        "the partial copy still holds space: {free_before} bytes free before, {free_after} after\n{}",
        d.log()
    );

    let st = d.status();
    let last = d.last_result();
    println!("{}\n{st}", r.out);
    for want in [
        "no space left",
        &format!("slot {inactive_name}"),
        "app/big",
        "partial copy was removed",
    ] {
        assert!(
            last.contains(want),
            "the final report does not say `{want}`: {last}"
        );
    }
    let note = st
        .lines()
        .find(|l| l.starts_with(&format!("slot {inactive_name} empty")))
        .unwrap_or_else(|| panic!("status does not say why slot {inactive_name} is empty:\n{st}"));
    assert!(
        note.contains("no space left") && note.contains("2.0.0"),
        "{note}"
    );

    assert_eq!(d.current_link(), link, "current moved");
    assert_eq!(d.fingerprint(), fp, "the active snapshot changed");
    assert_settled(&d, "a patch that did not fit");

    // A full bundle that does not fit either: the extraction runs out of space after one
    // whole file, and what it wrote goes too.
    let s3 = Spec::full(
        "3.0.0",
        3,
        &[
            ("app/big3.bin", &noise(93, 3 << 20)),
            ("app/big4.bin", &noise(94, 3 << 20)),
        ],
    );
    let r = install(&s3);
    assert_eq!(
        r.code,
        Some(1),
        "the full bundle cannot fit:
{}",
        r.out
    );
    let last = d.last_result();
    assert!(
        last.contains("no space left") && last.contains("removed to free the space"),
        "{last}"
    );
    assert!(
        not_whole_copies(&inactive, &active).is_empty() && scan(&inactive).is_empty(),
        "slot {inactive_name} should be empty: {:?}",
        scan(&inactive)
    );
    let free_after = fs_.free();
    assert!(
        free_after + (256 << 10) >= free_before,
        "the partial extraction still holds space: {free_before} bytes free before, {free_after} after"
    );
    assert_eq!(d.current_link(), link, "current moved");
    assert_eq!(d.fingerprint(), fp, "the active snapshot changed");
    assert_settled(&d, "a full bundle that did not fit");
}

// ---------------------------------------------------------------------------------------
// 8. A download refused part-way (hardening item 10)
// ---------------------------------------------------------------------------------------

/// A streamed bundle is verified as it is written into the inactive slot, so one refused
/// near its end (one byte appended, one byte of its last chunk flipped) has already
/// overwritten the previous snapshot there. The device cannot keep it, but it must say
/// so: in the final report (the status file, what the controller gets), in `status`,
/// and in `molt-agent rollback`'s refusal, each naming the lost version and the refusal.
#[test]
fn a_download_refused_part_way_says_the_rollback_target_was_overwritten() {
    if !root_or_skip() {
        return;
    }
    let (_, trailing, flipped) = v3_spoilt_at_the_end();
    for (name, bad) in [
        ("one byte appended", trailing),
        ("last chunk flipped", flipped),
    ] {
        let d = Device::new();
        d.install_ok(&v1());
        d.install_ok(&v2_full());
        // v1 is now the inactive slot: the rollback target.
        let link = d.current_link();
        let fp = d.fingerprint();
        let target = if link.ends_with("a") { "b" } else { "a" };
        let server = serve(bad, vec![], Serve::Honest);
        let r = d.agent(&["install", &server.url], None);
        assert_eq!(r.code, Some(1), "{name}: installed:\n{}", r.out);

        let last = d.last_result();
        for want in [
            "failed (fetching: bundle refused)",
            &format!("the previous snapshot (version 1.0.0) in slot {target}"),
            "already overwritten",
            "nothing to switch to",
        ] {
            assert!(
                last.contains(want),
                "{name}: the final report does not say `{want}`: {last}"
            );
            assert!(
                r.out.contains(want),
                "{name}: the install's output does not say `{want}`: {}",
                r.out
            );
        }

        let st = d.status();
        let note = st
            .lines()
            .find(|l| l.starts_with(&format!("slot {target} empty")))
            .unwrap_or_else(|| {
                panic!("{name}: status does not say what slot {target} lost:\n{st}")
            });
        for want in [
            "previous snapshot (version 1.0.0)",
            "install of 3.0.0",
            server.url.as_str(),
            "overwrote it",
            "bundle refused",
        ] {
            assert!(
                note.contains(want),
                "{name}: status does not say `{want}`: {note}"
            );
        }

        let rb = d.agent(&["rollback"], None);
        assert_ne!(rb.code, Some(0), "{name}: rolled back to what?\n{}", rb.out);
        for want in [
            "nothing to roll back to",
            &format!("slot {target} held the previous snapshot (version 1.0.0)"),
            "install of 3.0.0",
            "bundle refused",
        ] {
            assert!(
                rb.out.contains(want),
                "{name}: `rollback` does not say `{want}`: {}",
                rb.out
            );
        }
        assert_eq!(d.current_link(), link, "{name}: current moved");
        assert_eq!(d.fingerprint(), fp, "{name}: the active snapshot changed");
        assert_settled(&d, name);

        // The next good install takes the slot, and the note no longer speaks.
        d.install_ok(&v3_full());
        let st = d.status();
        assert!(
            !st.lines().any(|l| l.contains(" empty  ")),
            "{name}: a stale note after a good install:\n{st}"
        );
    }
}
