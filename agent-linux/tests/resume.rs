//! A download cut by `kill -9` continues after the restart from its last checkpoint, from a file or over HTTP, and ends in a snapshot byte-identical to an uninterrupted install's.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use molt_test_support::http::RangeServer;

/// Small and multi-chunk files in several directories: the checkpoints fall between
/// entries and inside files, and directories are still open at some of them.
fn spec() -> Spec {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for d in 0..4 {
        for i in 0..12 {
            files.push((
                format!("app/d{d}/f{i:02}.bin"),
                noise(d * 100 + i, 3_000 + 700 * i as usize),
            ));
        }
        files.push((format!("app/d{d}/big.bin"), noise(900 + d, 180_000)));
    }
    files.push(("opt/huge.bin".into(), noise(7, 420_000)));
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let mut s = Spec::full("2.0.0", 2, &refs);
    s.chunk_size = 16 * 1024;
    s
}

const EVERY: &str = "65536";

/// The fingerprint of the snapshot an uninterrupted install of `bundle` produces.
fn reference(bundle: &[u8]) -> String {
    let d = Device::new();
    let r = d.install_bytes("ref.molt", bundle, None);
    assert_eq!(r.code, Some(0), "{}", r.out);
    d.fingerprint()
}

/// `molt-agent install SOURCE` with a checkpoint every [`EVERY`] bytes, killed (-9)
/// once `at` bytes of the bundle have been read.
fn install_killed_at(d: &Device, source: &str, at: u64) -> Run {
    d.agent_env(
        &["install", source],
        &[
            ("MOLT_TEST_CHECKPOINT_BYTES", EVERY),
            ("MOLT_TEST_CRASH_AT_BYTE", &at.to_string()),
        ],
    )
}

/// The bundle of [`spec`] and the fingerprint of its uninterrupted install, for a test
/// that needs root (`None`, skipped, without it).
fn bundle_and_reference() -> Option<(Vec<u8>, String)> {
    if !root_or_skip() {
        return None;
    }
    let bundle = build(&spec());
    let want = reference(&bundle);
    Some((bundle, want))
}

/// The byte offset the log says the download resumed at.
fn resumed_at(log: &str) -> Option<u64> {
    let rest = log.split("resuming the download at byte ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn kill_9_anywhere_in_the_download_resumes_to_the_same_snapshot() {
    let Some((bundle, want)) = bundle_and_reference() else {
        return;
    };
    let len = bundle.len() as u64;
    let mut resumed = 0;
    for pct in [3u64, 20, 37, 52, 68, 83, 96] {
        let at = len * pct / 100;
        let d = Device::new();
        let p = d.root().join("bundles/b.molt");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &bundle).unwrap();
        let cut = install_killed_at(&d, p.to_str().unwrap(), at);
        assert!(
            cut.killed(),
            "at {pct}%: the agent should have died: {}",
            cut.out
        );
        // The next start settles the install: the download resumes and the install ends.
        let status = d.recover();
        assert!(
            d.last_result().contains("succeeded"),
            "at {pct}%: {}\n{status}\n{}",
            d.last_result(),
            d.log()
        );
        assert_eq!(
            d.fingerprint(),
            want,
            "at {pct}%: the snapshot differs\n{}",
            d.log()
        );
        match resumed_at(&d.log()) {
            Some(from) => {
                resumed += 1;
                assert!(
                    from > 0 && from <= at,
                    "at {pct}% ({at}): resumed at {from}"
                );
                assert!(
                    at - from <= 65_536 + 300_000,
                    "at {pct}%: resumed far back, at {from}"
                );
            }
            None => assert!(
                d.log().contains("no usable download checkpoint"),
                "at {pct}%: neither resumed nor said why\n{}",
                d.log()
            ),
        }
        assert!(
            !d.data().join("staging/checkpoint").exists(),
            "checkpoint left behind"
        );
    }
    assert!(resumed >= 5, "only {resumed} runs resumed");
}

/// A one-file HTTP server on 127.0.0.1 that records the `Range` start of every request
/// (0 without one) and answers ranges unless `honour_range` is false.
fn serve(body: Vec<u8>, honour_range: bool) -> (String, Arc<Mutex<Vec<u64>>>) {
    let s = RangeServer::start(body, honour_range, usize::MAX, None);
    (s.url, s.starts)
}

/// A new device installing `bundle` over HTTP (Range honoured or not), killed once `at`
/// bytes were read, then restarted (`recover`); the Range starts the server saw.
fn killed_over_http_then_recovered(
    bundle: &[u8],
    honour_range: bool,
    at: u64,
) -> (Device, Arc<Mutex<Vec<u64>>>) {
    let (url, seen) = serve(bundle.to_vec(), honour_range);
    let d = Device::new();
    let cut = install_killed_at(&d, &url, at);
    assert!(cut.killed(), "{}", cut.out);
    d.recover();
    (d, seen)
}

#[test]
fn http_download_resumes_with_range_after_a_restart() {
    let Some((bundle, want)) = bundle_and_reference() else {
        return;
    };
    let (d, seen) = killed_over_http_then_recovered(&bundle, true, bundle.len() as u64 * 6 / 10);
    assert!(
        d.last_result().contains("succeeded"),
        "{}\n{}",
        d.last_result(),
        d.log()
    );
    assert_eq!(d.fingerprint(), want);
    let from = resumed_at(&d.log()).expect("the log names the resume offset");
    let requests = seen.lock().unwrap().clone();
    assert_eq!(
        requests,
        vec![0, from],
        "the restart asked for the rest only"
    );
}

#[test]
fn a_server_that_ignores_range_after_a_restart_means_starting_over() {
    let Some((bundle, want)) = bundle_and_reference() else {
        return;
    };
    let (d, seen) = killed_over_http_then_recovered(&bundle, false, bundle.len() as u64 / 2);
    let log = d.log();
    assert!(log.contains("cannot resume the download"), "{log}");
    assert!(log.contains("ignored the Range request"), "{log}");
    assert!(
        d.last_result().contains("succeeded"),
        "{}\n{log}",
        d.last_result()
    );
    assert_eq!(d.fingerprint(), want);
    let requests = seen.lock().unwrap().clone();
    assert_eq!(
        requests.len(),
        3,
        "first try, refused range, full download: {requests:?}"
    );
    assert_eq!(requests[2], 0);
}

#[test]
fn a_patch_resumes_without_cloning_the_active_snapshot_again() {
    if !root_or_skip() {
        return;
    }
    let base = build(&spec());
    let changed: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("app/d{i}/new.bin"), noise(500 + i, 150_000)))
        .chain([("opt/huge.bin".to_string(), noise(8, 300_000))])
        .collect();
    let refs: Vec<(&str, &[u8])> = changed
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let mut p = Spec::patch("2.1.0", 3, &refs, &["app/d1/f03.bin"]);
    p.base_version = "2.0.0".into();
    let patch = build(&p);
    let want = {
        let d = Device::new();
        assert_eq!(d.install_bytes("base.molt", &base, None).code, Some(0));
        let r = d.install_bytes("patch.molt", &patch, None);
        assert_eq!(r.code, Some(0), "{}", r.out);
        // Contents, kinds and modes (a patch bumps the mtimes of the directories it
        // writes into, so two devices' fingerprints differ by the clock).
        d.tree()
    };
    let d = Device::new();
    assert_eq!(d.install_bytes("base.molt", &base, None).code, Some(0));
    let old = d.fingerprint();
    let path = d.root().join("bundles/patch.molt");
    std::fs::write(&path, &patch).unwrap();
    let at = patch.len() as u64 * 7 / 10;
    let cut = install_killed_at(&d, path.to_str().unwrap(), at);
    assert!(cut.killed(), "{}", cut.out);
    // Before the restart settles anything, the active snapshot is untouched.
    assert_eq!(d.fingerprint(), old);
    d.recover();
    let log = d.log();
    assert!(resumed_at(&log).is_some(), "{log}");
    assert_eq!(log.matches("starts as a copy of slot").count(), 1, "{log}");
    assert!(
        d.last_result().contains("succeeded"),
        "{}\n{log}",
        d.last_result()
    );
    let got = d.tree();
    assert!(got == want, "{}", diff(&want, &got));
}
