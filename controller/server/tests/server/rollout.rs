//! A rollout as devices see it: offers, reports, downloads with ranges, logs, abort, deploy to others, and a `kill -9` in the middle.

use std::fs;

use serde_json::{json, Value};

use crate::harness::*;

/// A controller with a stored update, the groups `test` (two devices) and
/// `production` (one), and a deployment of the update to `test`.
struct Rollout {
    f: Fixture,
    c: Controller,
    token: String,
    bundle: Vec<u8>,
    a: Dev,
    b: Dev,
    p: Dev,
    dep: u64,
}

fn rollout() -> Rollout {
    let Stored {
        f,
        c,
        token,
        bundle,
        update,
        ..
    } = stored("1.5.0");
    let test = group(&c, &token, "test");
    let prod = group(&c, &token, "production");
    let a = enroll(&c, &test, "gw-a", "acme-gw");
    let b = enroll(&c, &test, "gw-b", "acme-gw");
    let p = enroll(&c, &prod, "gw-p", "acme-gw");
    let d = post_ok(
        &c.api("/deployments"),
        &token,
        json!({"update": update, "group": "test", "comment": "first"}),
        201,
    );
    assert_eq!(d["state"], "in_progress");
    assert_eq!(d["counts"]["pending"], 2);
    assert_eq!(d["group"], "test");
    let dep = d["id"].as_u64().unwrap();
    Rollout {
        f,
        c,
        token,
        bundle,
        a,
        b,
        p,
        dep,
    }
}

fn interval(v: &Value) -> u64 {
    v["poll_interval_secs"].as_u64().unwrap()
}

#[test]
fn devices_get_offers_report_and_download_with_ranges() {
    let r = rollout();
    let c = &r.c;
    let hash = blake3::hash(&r.bundle).to_hex().to_string();
    for d in [&r.a, &r.b] {
        let o = poll(c, d, None);
        assert_eq!(o["action"], "install", "{o}");
        assert_eq!(o["deployment"], r.dep);
        assert_eq!(o["version"], "1.5.0");
        assert_eq!(o["bundle_size"], r.bundle.len());
        assert_eq!(o["bundle_blake3"], hash.as_str());
        assert!((4..=6).contains(&interval(&o)), "{o}");
    }
    let idle = poll(c, &r.p, None);
    assert_eq!(idle["action"], "none");
    assert!((48..=72).contains(&interval(&idle)), "{idle}");

    // The whole bundle, then a range of it, then a stale If-Range.
    let url = c.api(&format!("/device/deployments/{}/bundle", r.dep));
    let whole = get(&url, &r.a.cred);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, r.bundle);
    let etag = whole.etag.clone().unwrap();
    assert_eq!(etag, format!("\"{hash}\""));
    let part = get_with(&url, &r.a.cred, &[("Range", "bytes=1000-")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, r.bundle[1000..]);
    let len = r.bundle.len();
    assert_eq!(
        part.content_range.unwrap(),
        format!("bytes 1000-{}/{len}", len - 1)
    );
    let fresh = get_with(
        &url,
        &r.a.cred,
        &[("Range", "bytes=10-19"), ("If-Range", &etag)],
    );
    assert_eq!(fresh.status, 206);
    assert_eq!(fresh.body, r.bundle[10..20]);
    let stale = get_with(
        &url,
        &r.a.cred,
        &[("Range", "bytes=10-"), ("If-Range", "\"another\"")],
    );
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body.len(), len);
    let past = get_with(&url, &r.a.cred, &[("Range", &format!("bytes={len}-"))]);
    assert_eq!(past.status, 416);
    let foreign = get(&url, &r.p.cred);
    assert_eq!(foreign.status, 403, "not its deployment");

    // Reports: idempotent by seq, closed after a final state.
    let ok = report(c, &r.a, r.dep, 1, "downloading", "fetching 1.5.0\n");
    assert_eq!(ok.json(), json!({"accepted": true, "closed": false}));
    let dup = report(c, &r.a, r.dep, 1, "downloading", "fetching 1.5.0\n");
    assert_eq!(dup.json(), json!({"accepted": false, "closed": false}));
    let busy = poll(c, &r.a, Some(r.dep));
    assert_eq!(busy["action"], "none", "no offer once the device reported");
    assert!((4..=6).contains(&interval(&busy)));
    let done = report(c, &r.a, r.dep, 2, "success", "committed\n");
    assert_eq!(done.json(), json!({"accepted": true, "closed": true}));
    let late = report(c, &r.a, r.dep, 3, "failed", "");
    assert_eq!(late.json(), json!({"accepted": false, "closed": true}));
    assert_eq!(report(c, &r.p, r.dep, 1, "downloading", "").status, 403);
    assert_eq!(report(c, &r.p, 999, 1, "downloading", "").status, 404);

    let log = get(
        &c.api(&format!("/deployments/{}/devices/{}/log", r.dep, r.a.id)),
        &r.token,
    );
    assert_eq!(log.status, 200);
    assert!(
        log.content_type.starts_with("text/plain"),
        "{}",
        log.content_type
    );
    assert_eq!(
        String::from_utf8(log.body).unwrap(),
        "fetching 1.5.0\ncommitted\n"
    );

    let details = get_ok(&c.api(&format!("/deployments/{}", r.dep)), &r.token);
    assert_eq!(state_of(&details, &r.a.id), "success");
    assert_eq!(state_of(&details, &r.b.id), "pending");
    let recent = get_ok(&c.api("/deployments"), &r.token);
    assert_eq!(recent[0]["counts"]["success"], 1);
    assert_eq!(recent[0]["counts"]["pending"], 1);
    assert_eq!(recent[0]["state"], "in_progress");
    let devices = get_ok(&c.api("/devices?group=test"), &r.token);
    assert_eq!(devices.as_array().unwrap().len(), 2);
    let b = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == r.b.id.as_str())
        .unwrap();
    assert_eq!(b["status"], "updating");

    // Deploy to others: the same update to production.
    let other = post_ok(
        &c.api(&format!("/deployments/{}/deploy-to-others", r.dep)),
        &r.token,
        json!({"group": "production"}),
        201,
    );
    assert_eq!(other["update"], recent[0]["update"]);
    assert_eq!(other["group"], "production");
    assert_eq!(other["comment"], "first");
    let o = poll(c, &r.p, None);
    assert_eq!(o["action"], "install");
    assert_eq!(o["deployment"], other["id"]);
}

#[test]
fn abort_stops_what_has_not_committed() {
    let r = rollout();
    let c = &r.c;
    let t = get_ok(&c.api("/groups"), &r.token)[0]["enrollment_token"].clone();
    let late = enroll(c, t.as_str().unwrap(), "gw-late", "acme-gw");
    // A device list deployment holding a, b and the third: a commits, b is in progress.
    let u = get_ok(&c.api("/updates"), &r.token)[0]["id"].clone();
    let d = post_ok(
        &c.api("/deployments"),
        &r.token,
        // Asked explicitly: a and b are still in the first deployment of this update.
        json!({"update": u, "devices": [r.a.id, r.b.id, late.id], "again": true}),
        201,
    );
    assert_eq!(d["group"], "");
    let dep2 = d["id"].as_u64().unwrap();
    // The first deployment goes first: finish it for a and b.
    for d in [&r.a, &r.b] {
        assert_eq!(report(c, d, r.dep, 1, "success", "").status, 200);
    }
    assert_eq!(poll(c, &r.a, None)["deployment"], dep2);
    assert_eq!(report(c, &r.a, dep2, 1, "success", "").status, 200);
    assert_eq!(report(c, &r.b, dep2, 1, "installing", "").status, 200);

    let abort = c.api(&format!("/deployments/{dep2}/abort"));
    let res = post_ok(&abort, &r.token, json!({}), 200);
    let mut aborted: Vec<String> = serde_json::from_value(res["aborted"].clone()).unwrap();
    aborted.sort();
    let mut want = vec![r.b.id.clone(), late.id.clone()];
    want.sort();
    assert_eq!(aborted, want);
    assert_eq!(
        res["not_aborted"],
        json!([{"device": r.a.id, "state": "success", "reason": "already committed"}])
    );
    let details = get_ok(&c.api(&format!("/deployments/{dep2}")), &r.token);
    assert_eq!(
        state_of(&details, &late.id),
        "aborted",
        "pending: aborted at once"
    );
    assert_eq!(
        state_of(&details, &r.b.id),
        "installing",
        "told on its next poll"
    );

    let told = poll(c, &r.b, Some(dep2));
    assert_eq!(told["action"], "abort");
    assert_eq!(told["deployment"], dep2);
    assert_eq!(poll(c, &late, None)["action"], "none");
    let fin = report(c, &r.b, dep2, 2, "aborted", "aborted by the operator\n");
    assert_eq!(fin.json(), json!({"accepted": true, "closed": true}));
    assert_eq!(poll(c, &r.b, Some(dep2))["action"], "none");

    let recent = get_ok(&c.api("/deployments"), &r.token);
    assert_eq!(recent[0]["id"], dep2);
    assert_eq!(recent[0]["state"], "aborted");
    assert_eq!(recent[0]["counts"]["aborted"], 2);
    assert_eq!(recent[0]["counts"]["success"], 1);
    assert_eq!(recent[1]["state"], "success");
    let again = post(&abort, &r.token, json!({}));
    assert_eq!(again.status, 409);
}

#[test]
fn a_kill_9_mid_rollout_loses_nothing() {
    let mut r = rollout();
    assert_eq!(poll(&r.c, &r.a, None)["action"], "install");
    assert!(report(&r.c, &r.a, r.dep, 1, "downloading", "part one\n").json()["accepted"] == true);
    r.c.kill();
    // Leftovers of a crash: a half upload and a bundle whose row never committed.
    fs::write(r.f.data().join("tmp/.tmpUPLOAD"), b"half").unwrap();
    fs::write(r.f.data().join("bundles/0000.bundle"), b"orphan").unwrap();

    let (c, token) = r.f.start(&["--trusted-key", &key_hex(&r.f)]);
    assert_eq!(c.printed_token, None);
    assert_eq!(token, r.token);
    assert!(listing(&r.f.data().join("tmp")).is_empty());
    assert_eq!(listing(&r.f.data().join("bundles")).len(), 1);

    let details = get_ok(&c.api(&format!("/deployments/{}", r.dep)), &token);
    assert_eq!(state_of(&details, &r.a.id), "downloading");
    assert_eq!(state_of(&details, &r.b.id), "pending");
    assert_eq!(details["devices"].as_array().unwrap().len(), 2);
    let dup = report(&c, &r.a, r.dep, 1, "downloading", "part one\n");
    assert_eq!(dup.json(), json!({"accepted": false, "closed": false}));
    assert_eq!(poll(&c, &r.a, Some(r.dep))["action"], "none");
    assert_eq!(poll(&c, &r.b, None)["action"], "install");
    let url = c.api(&format!("/device/deployments/{}/bundle", r.dep));
    let part = get_with(&url, &r.a.cred, &[("Range", "bytes=5000-")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, r.bundle[5000..]);
    let done = report(&c, &r.a, r.dep, 2, "success", "part two\n");
    assert_eq!(done.json(), json!({"accepted": true, "closed": true}));
    let log = get(
        &c.api(&format!("/deployments/{}/devices/{}/log", r.dep, r.a.id)),
        &token,
    );
    assert_eq!(String::from_utf8(log.body).unwrap(), "part one\npart two\n");
    r.c = c;
}

#[test]
fn a_log_keeps_its_last_mebibyte() {
    let r = rollout();
    let c = &r.c;
    let line = |i: usize| format!("{i:05} {}\n", "x".repeat(60 * 1024));
    for i in 1..=20 {
        let a = report(c, &r.a, r.dep, i as u64, "downloading", &line(i));
        assert_eq!(a.json()["accepted"], true);
    }
    let log = get(
        &c.api(&format!("/deployments/{}/devices/{}/log", r.dep, r.a.id)),
        &r.token,
    );
    let text = String::from_utf8(log.body).unwrap();
    assert_eq!(text.len(), 1024 * 1024);
    assert!(text.ends_with(&line(20)));
    assert!(!text.contains(&line(3)), "the oldest text went first");
    let too_long = report(
        c,
        &r.a,
        r.dep,
        21,
        "downloading",
        &"y".repeat(64 * 1024 + 1),
    );
    too_long.refused(413, "at most 65536");
}

/// The `--trusted-key` of the rollout fixture.
fn key_hex(f: &Fixture) -> String {
    fs::read_to_string(f.dir.path().join("k.pub"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A report with every field given.
fn report_with(r: &Rollout, seq: u64, state: &str, active: &str, message: &str) -> Answer {
    post(
        &r.c.api(&format!("/device/deployments/{}/report", r.dep)),
        &r.a.cred,
        json!({"seq": seq, "state": state, "phase": "fetching", "progress": null,
               "message": message, "log": "", "active_version": active}),
    )
}

/// The device `id` as the operator's listing shows it.
fn device_row(r: &Rollout, id: &str) -> Value {
    let all = get_ok(&r.c.api("/devices"), &r.token);
    let d = all.as_array().unwrap().iter().find(|d| d["id"] == id);
    d.cloned().unwrap_or_else(|| panic!("{id} not in {all}"))
}

#[test]
fn a_refused_report_changes_nothing() {
    let r = rollout();
    let a = r.a.id.clone();
    let ok = report_with(&r, 2, "downloading", "v-accepted", "fetching");
    assert_eq!(ok.json(), json!({"accepted": true, "closed": false}));
    assert_eq!(device_row(&r, &a)["active_version"], "v-accepted");

    // A duplicate and a stale seq: refused, and the device row keeps what it had.
    for seq in [2, 1] {
        let old = report_with(&r, seq, "downloading", "v-replayed", "replayed");
        assert_eq!(old.json(), json!({"accepted": false, "closed": false}));
        assert_eq!(device_row(&r, &a)["active_version"], "v-accepted");
    }
    let fin = report_with(&r, 3, "success", "1.5.0", "done");
    assert_eq!(fin.json(), json!({"accepted": true, "closed": true}));
    // After the final report: closed, and still nothing written.
    let late = report_with(&r, 4, "failed", "v-late", "late");
    assert_eq!(late.json(), json!({"accepted": false, "closed": true}));
    assert_eq!(device_row(&r, &a)["active_version"], "1.5.0");
    let details = get_ok(&r.c.api(&format!("/deployments/{}", r.dep)), &r.token);
    assert_eq!(state_of(&details, &a), "success");
}

#[test]
fn device_supplied_strings_are_bounded() {
    let r = rollout();
    // `message`: at most MAX_REPORT_MESSAGE (4 KiB); the 900 KB one was stored whole.
    let long = "m".repeat(molt_engine::protocol::MAX_REPORT_MESSAGE + 1);
    let big = report_with(&r, 1, "downloading", "factory", &long);
    assert_eq!(big.status, 413, "{}", big.text());
    assert!(big.text().contains("`message`"), "{}", big.text());
    let fits = "m".repeat(molt_engine::protocol::MAX_REPORT_MESSAGE);
    let ok = report_with(&r, 1, "downloading", "factory", &fits);
    assert_eq!(ok.json()["accepted"], true);
    // The short fields: name, compatible, versions, phase.
    let field = "v".repeat(molt_engine::protocol::MAX_DEVICE_FIELD + 1);
    let bad = report_with(&r, 2, "downloading", &field, "x");
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("active_version"), "{}", bad.text());
    let bad = post(
        &r.c.api("/device/poll"),
        &r.a.cred,
        json!({"compatible": "acme-gw", "agent_version": field, "active_version": "factory"}),
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
}

#[test]
fn a_removed_device_is_refused_at_once_and_its_unfinished_targets_cancelled() {
    let mut r = rollout();
    // Device a has its credential cached (a poll) and is in flight.
    assert_eq!(poll(&r.c, &r.a, None)["action"], "install");
    let ok = report(&r.c, &r.a, r.dep, 1, "downloading", "fetching\n");
    assert_eq!(ok.json()["accepted"], true);

    let url = r.c.api(&format!("/devices/{}", r.a.id));
    // Only an operator removes devices.
    assert_eq!(
        request("DELETE", &url, Some(&r.b.cred), &[], None).status,
        403
    );
    let gone = request("DELETE", &url, Some(&r.token), &[], None);
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert_eq!(gone.json(), json!({"device": r.a.id, "cancelled": 1}));

    // Refused at once, although its credential was in the cache.
    let polled = post(
        &r.c.api("/device/poll"),
        &r.a.cred,
        json!({"compatible": "acme-gw", "agent_version": "0.1.0", "active_version": "factory"}),
    );
    assert_eq!(polled.status, 401, "{}", polled.text());
    assert_eq!(report(&r.c, &r.a, r.dep, 2, "success", "").status, 401);
    let bundle = get(
        &r.c.api(&format!("/device/deployments/{}/bundle", r.dep)),
        &r.a.cred,
    );
    assert_eq!(bundle.status, 401);

    // Gone from the lists; its history stays, cancelled.
    let devices = get_ok(&r.c.api("/devices"), &r.token);
    assert!(!devices.to_string().contains(&r.a.id), "{devices}");
    let groups = get_ok(&r.c.api("/groups"), &r.token);
    let test = groups
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "test")
        .unwrap();
    assert_eq!(test["devices"], 1);
    let details = get_ok(&r.c.api(&format!("/deployments/{}", r.dep)), &r.token);
    assert_eq!(state_of(&details, &r.a.id), "aborted");
    // The other device goes on.
    assert_eq!(poll(&r.c, &r.b, None)["action"], "install");
    assert_eq!(
        request("DELETE", &url, Some(&r.token), &[], None).status,
        404
    );

    // And after a restart.
    r.c.kill();
    let (c, _) = r.f.start(&[]);
    let polled = post(
        &c.api("/device/poll"),
        &r.a.cred,
        json!({"compatible": "acme-gw", "agent_version": "0.1.0", "active_version": "factory"}),
    );
    assert_eq!(polled.status, 401);
    assert_eq!(poll(&c, &r.b, None)["action"], "install");
}

#[test]
fn a_second_unfinished_deployment_of_one_update_is_refused_unless_asked() {
    let r = rollout();
    let c = &r.c;
    let u = get_ok(&c.api("/updates"), &r.token)[0]["id"].clone();
    // Deployment 1 (the group `test`: a and b) is unfinished: a second one of the
    // same update to an overlapping set of devices would install it twice.
    for body in [
        json!({"update": u, "group": "test"}),
        json!({"update": u, "devices": [r.b.id]}),
    ] {
        let a = post(&c.api("/deployments"), &r.token, body);
        assert_eq!(a.status, 409, "{}", a.text());
        let msg = a.json()["error"].as_str().unwrap().to_owned();
        assert!(
            msg.contains("already being deployed")
                && msg.contains(&r.b.id)
                && msg.contains("again"),
            "{msg}"
        );
    }
    // Other devices are fine, and so is an explicit repeat.
    post_ok(
        &c.api("/deployments"),
        &r.token,
        json!({"update": u, "group": "production"}),
        201,
    );
    post_ok(
        &c.api("/deployments"),
        &r.token,
        json!({"update": u, "devices": [r.a.id], "again": true}),
        201,
    );
    // Once a device's targets are final, the update may go to it again.
    for (dev, seq) in [(&r.a, 1), (&r.b, 1)] {
        poll(c, dev, None);
        let done = report(c, dev, r.dep, seq, "success", "");
        assert_eq!(done.json()["closed"], true);
    }
    let a = post(
        &c.api("/deployments"),
        &r.token,
        json!({"update": u, "devices": [r.b.id]}),
    );
    assert_eq!(a.status, 201, "{}", a.text());
}
