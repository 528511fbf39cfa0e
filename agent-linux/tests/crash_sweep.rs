//! The whole install sequence under a power cut after every single durable operation: each journal and record write and fsync, each durable file replacement step, each step of the `current` swap, each syncfs. Every prefix recovers to a whole snapshot.
//!
//! `MOLT_TEST_CRASH_AFTER_OPS=N` (agent-linux/src/crashpoint.rs) makes the agent
//! SIGKILL itself right after its N-th durable operation; the sweep runs N = 1, 2, …
//! until an install survives. After each death the next start (`molt-agent recover`)
//! settles the journal, and the test checks that `current` names a snapshot
//! byte-identical to the old or the new version, that the record agrees with the
//! link, and that the device still installs the next update.

mod common;

use common::*;

fn v1() -> Spec {
    Spec::full(
        "1.0.0",
        1,
        &[
            ("app/a", b"A1\n"),
            ("app/b", &noise(1, 30_000)),
            ("etc/app.conf", b"port=80\n"),
        ],
    )
}

fn v2(after_ok: bool) -> Spec {
    let mut s = Spec::full(
        "2.0.0",
        2,
        &[
            ("app/a", b"A2\n"),
            ("app/c", &noise(2, 50_000)),
            ("etc/app.conf", b"port=81\n"),
        ],
    );
    s.after = Some(sh(if after_ok { "true" } else { "exit 3" }));
    s.health = Some((sh("test -e \"$MOLT_NEW_SLOT/app/c\""), 1, 0));
    s
}

fn v3() -> Spec {
    Spec::full("3.0.0", 3, &[("app/a", b"A3\n")])
}

/// Fingerprints of the old and the new snapshot, from devices that never crashed.
fn references(after_ok: bool) -> (String, Option<String>) {
    let d = Device::new();
    d.install_ok(&v1());
    let old = d.fingerprint();
    let r = d.install_bytes("v2.molt", &build(&v2(after_ok)), None);
    let new = (r.code == Some(0)).then(|| d.fingerprint());
    (old, new)
}

fn sweep(after_ok: bool) {
    let (old, new) = references(after_ok);
    let bundle = build(&v2(after_ok));
    let mut seen = std::collections::BTreeSet::new();
    for n in 1..400u32 {
        let d = Device::new();
        d.install_ok(&v1());
        let p = d.root().join("bundles/v2.molt");
        std::fs::write(&p, &bundle).unwrap();
        let run = d.agent_env(
            &["install", p.to_str().unwrap()],
            &[("MOLT_TEST_CRASH_AFTER_OPS", &n.to_string())],
        );
        let points = n - 1;
        if !run.killed() {
            // The install ran to its end before the N-th operation: the sweep is complete.
            println!("{points} crash points; recovered to: {seen:?}");
            assert!(
                points > 20,
                "only {points} crash points: is the hook wired?"
            );
            // Early cuts recover to the old snapshot; with a passing after-script, late
            // cuts to the new one.
            assert!(seen.contains("old"));
            assert_eq!(seen.contains("new"), after_ok);
            return;
        }
        let what = run
            .out
            .lines()
            .find(|l| l.contains("test crash"))
            .unwrap_or("?")
            .to_string();
        let st = d.recover();
        assert_eq!(
            install_phase(&st),
            "idle",
            "after {what}: not settled\n{st}\n{}",
            d.log()
        );
        let link = d.current_link();
        let slot = link.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            active_slot(&st).as_deref(),
            Some(slot.as_str()),
            "after {what}:\n{st}"
        );
        let fp = d.fingerprint();
        if fp != old {
            assert_eq!(
                Some(&fp),
                new.as_ref(),
                "after {what}: neither whole snapshot\n{}",
                d.log()
            );
            assert!(
                st.contains("2.0.0"),
                "after {what}: on the new snapshot, but\n{st}"
            );
        }
        seen.insert(if fp == old { "old" } else { "new" });
        // Still a working device.
        let r = d.install_bytes("v3.molt", &build(&v3()), None);
        assert_eq!(
            r.code,
            Some(0),
            "after {what}: the next install fails: {}\n{}",
            r.out,
            d.log()
        );
    }
    panic!("the install never completed within 400 operations");
}

#[test]
fn every_prefix_of_a_successful_install_recovers() {
    if !root_or_skip() {
        return;
    }
    sweep(true);
}

#[test]
fn every_prefix_of_a_rolled_back_install_recovers() {
    if !root_or_skip() {
        return;
    }
    sweep(false);
}
