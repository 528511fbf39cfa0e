//! The operator token, credentials, uploads and every kind of bad input: each a JSON error naming what was wrong, and nothing half-stored.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};

use crate::harness::*;

#[test]
fn the_first_start_prints_the_token_and_a_restart_keeps_it() {
    let f = Fixture::new();
    let (mut c, token) = f.start(&[]);
    assert_eq!(c.printed_token.as_deref(), Some(token.as_str()));
    assert!(token.len() > 40, "{token}");
    let mode = fs::metadata(f.data().join("operator-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(f.data().join("signing.secret").exists());
    assert!(f.data().join("signing.pub").exists());
    assert_eq!(get(&c.api("/groups"), &token).status, 200);
    c.kill();

    let (c, again) = f.start(&[]);
    assert_eq!(c.printed_token, None, "a restart prints no new token");
    assert_eq!(again, token);
    assert_eq!(get_ok(&c.api("/groups"), &token), json!([]));

    let none = request("GET", &c.api("/groups"), None, &[], None);
    none.refused(401, "Authorization");
    let wrong = get(&c.api("/groups"), "mop_nope");
    wrong.refused_exactly(401, "unknown credential");
}

#[test]
fn credentials_are_kept_to_their_routes() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    let dev = one_test_device(&c, &token, "gw-1");
    let a = get(&c.api("/devices"), &dev.cred);
    a.refused(403, "device credential");
    let a = post(
        &c.api("/device/poll"),
        &token,
        json!({"active_version": "1", "agent_version": "1", "compatible": "acme-gw", "in_progress": null}),
    );
    assert_eq!(a.status, 403, "the operator token is not a device");
    let bad = request(
        "POST",
        &c.api("/device/enroll"),
        None,
        &[],
        Some(br#"{"token":"grp_nope","name":"x","compatible":"y","agent_version":"1","active_version":"1"}"#),
    );
    bad.refused_exactly(401, "unknown enrollment token");
}

#[test]
fn bad_input_is_a_json_error_naming_the_problem() {
    let f = Fixture::new();
    let (c, token) = f.start(&[]);
    let groups = c.api("/groups");

    let a = request("POST", &groups, Some(&token), &[], Some(b"{\"name\": "));
    assert_eq!(a.status, 400);
    assert!(a.error().starts_with("invalid JSON body"), "{}", a.error());
    let a = post(&groups, &token, json!({"nom": "x"}));
    a.refused(400, "missing field `name`");

    let big = json!({ "name": "x".repeat(1100 * 1024) }).to_string();
    let a = over_limit(&groups, &token, "application/json", big.as_bytes());
    a.refused(413, "1024 KiB");

    let a = post(&groups, &token, json!({"name": "no spaces"}));
    a.refused(400, "no spaces");
    group(&c, &token, "test");
    let a = post(&groups, &token, json!({"name": "test"}));
    a.refused_exactly(409, "group `test` exists already");

    for (path, want) in [
        ("/deployments/99", "deployment 99 does not exist"),
        ("/nowhere", "no route GET /api/v1/nowhere"),
        ("/devices?group=ghosts", "group `ghosts` does not exist"),
    ] {
        let a = get(&c.api(path), &token);
        assert_eq!(a.status, 404, "{path}");
        assert_eq!(a.error(), want);
    }
    let a = get(&c.api("/deployments/seven"), &token);
    a.refused(400, "seven");
    let a = request("DELETE", &groups, Some(&token), &[], None);
    assert_eq!(a.status, 405);
    assert!(!a.error().is_empty());
    let a = request(
        "PATCH",
        &c.api("/devices/dev_nope"),
        Some(&token),
        &[],
        Some(br#"{"group":"test"}"#),
    );
    a.refused_exactly(404, "device dev_nope does not exist");
}

#[test]
fn uploads_are_verified_whole_and_nothing_is_half_stored() {
    let f = Fixture::new();
    let (ours, ours_pub) = key(f.dir.path(), "ours");
    let (theirs, _) = key(f.dir.path(), "theirs");
    let (c, token) = f.start(&["--trusted-key", &ours_pub]);
    let bundles = f.data().join("bundles");
    let tmp = f.data().join("tmp");

    let a = upload(&c, &token, b"definitely not a bundle");
    assert_eq!(a.status, 400);
    assert!(
        a.error().starts_with("bundle refused: not a molt bundle"),
        "{}",
        a.error()
    );

    let foreign = bundle(f.dir.path(), "9.9.9", &theirs);
    let a = upload(&c, &token, &foreign);
    assert_eq!(a.status, 400);
    assert!(
        a.error()
            .starts_with("bundle refused: bundle is signed by unknown key"),
        "{}",
        a.error()
    );

    let good = bundle(f.dir.path(), "1.0.0", &ours);
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 100);
    let a = upload(&c, &token, &truncated);
    a.refused(400, "truncated");

    assert_eq!(get_ok(&c.api("/updates"), &token), json!([]));
    assert!(listing(&bundles).is_empty());
    assert!(listing(&tmp).is_empty(), "{:?}", listing(&tmp));

    let a = upload(&c, &token, &good);
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let u = a.json();
    assert_eq!(u["version"], "1.0.0");
    assert_eq!(u["compatible"], "acme-gw");
    assert_eq!(u["kind"], "patch");
    assert_eq!(u["size"], good.len());
    assert_eq!(u["comment"], "from the test");
    assert_eq!(u["blake3"], blake3::hash(&good).to_hex().as_str());
    assert_eq!(u["recipe"]["after"]["script"], "systemctl start app");
    assert!(u["created"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        listing(&bundles),
        [format!("{}.bundle", blake3::hash(&good).to_hex())]
    );

    let again = bundle(&f.path("again"), "1.0.0", &ours);
    let a = upload(&c, &token, &again);
    a.refused(409, "version 1.0.0 exists already");
    assert_eq!(
        get_ok(&c.api("/updates"), &token).as_array().unwrap().len(),
        1
    );
    assert_eq!(listing(&bundles).len(), 1);
    assert!(listing(&tmp).is_empty());
}

#[test]
fn an_upload_over_the_limit_is_refused() {
    let f = Fixture::new();
    let (c, token) = f.start(&["--max-bundle-bytes", "4096"]);
    let a = over_limit(
        &c.api("/updates"),
        &token,
        "application/octet-stream",
        &vec![7u8; 64 * 1024],
    );
    a.refused(413, "4096 bytes");
    // Without a Content-Length (chunked), the count while streaming stops it.
    let mut body = b"MOLTBNDL".to_vec();
    body.resize(64 * 1024, 7);
    let res = ureq::post(&c.api("/updates"))
        .set("Authorization", &format!("Bearer {token}"))
        .send(std::io::Cursor::new(body));
    match res {
        Err(ureq::Error::Status(413, r)) => {
            let v: serde_json::Value = r.into_json().unwrap();
            assert!(v["error"].as_str().unwrap().contains("4096 bytes"), "{v}");
        }
        // The server may close the connection before the client finished sending.
        Err(ureq::Error::Transport(_)) => {}
        other => panic!("expected 413, got {other:?}"),
    }
    assert!(listing(&f.data().join("tmp")).is_empty());
}

#[test]
fn deployments_refuse_what_cannot_be_deployed() {
    let Stored {
        f: _data,
        c,
        token,
        update,
        ..
    } = stored("1.0.0");
    let test = group(&c, &token, "test");
    group(&c, &token, "empty");
    let deps = c.api("/deployments");

    let a = post(&deps, &token, json!({"update": update, "group": "empty"}));
    a.refused_exactly(400, "group `empty` has no devices");
    let a = post(&deps, &token, json!({"update": update, "group": "ghosts"}));
    assert_eq!(a.status, 404);
    let a = post(&deps, &token, json!({"update": 42, "group": "test"}));
    a.refused_exactly(404, "update 42 does not exist");
    let a = post(&deps, &token, json!({"update": update, "devices": []}));
    assert_eq!(a.status, 400);
    let a = post(
        &deps,
        &token,
        json!({"update": update, "devices": ["dev_ghost"]}),
    );
    a.refused_exactly(400, "unknown devices: dev_ghost");
    let a = post(&deps, &token, json!({"update": update}));
    assert_eq!(a.status, 400);

    enroll(&c, &test, "good", "acme-gw");
    let odd = enroll(&c, &test, "odd", "other-board");
    let a = post(&deps, &token, json!({"update": update, "group": "test"}));
    assert_eq!(a.status, 400);
    assert!(
        a.error()
            .contains(&format!("{} (odd: other-board)", odd.id)),
        "{}",
        a.error()
    );
    assert_eq!(get_ok(&deps, &token), json!([]), "nothing was half-made");
}

/// The device `id` in `GET /devices`.
fn listed(c: &Controller, token: &str, id: &str) -> serde_json::Value {
    let all = get_ok(&c.api("/devices"), token);
    let d = all.as_array().unwrap().iter().find(|d| d["id"] == id);
    d.cloned().unwrap_or_else(|| panic!("{id} not in {all}"))
}

#[test]
fn polls_move_last_seen_in_listings_at_once_and_a_graceful_stop_keeps_it() {
    // An idle poll only notes last_seen in memory; listings write the noted times
    // first, and so does a graceful stop, so neither shows an older time.
    let f = Fixture::new();
    let (mut c, token) = f.start(&[]);
    let dev = one_test_device(&c, &token, "gw-1");
    let enrolled = listed(&c, &token, &dev.id)["last_seen"].clone();
    // last_seen has one-second resolution (RFC 3339 strings of one format sort by time).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    poll(&c, &dev, None);
    let d = listed(&c, &token, &dev.id);
    assert!(
        d["last_seen"].as_str() > enrolled.as_str(),
        "{d} vs {enrolled}"
    );
    assert_eq!(d["status"], "idle");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    poll(&c, &dev, None);
    c.stop();
    let (c, _) = f.start(&[]);
    let after = listed(&c, &token, &dev.id);
    assert!(
        after["last_seen"].as_str() > d["last_seen"].as_str(),
        "{after} vs {d}"
    );

    // A changed version is written before the poll is answered: a kill -9 keeps it.
    let a = post(
        &c.api("/device/poll"),
        &dev.cred,
        json!({"active_version": "2.0", "agent_version": "0.2.0",
               "compatible": "acme-gw", "in_progress": null}),
    );
    assert_eq!(a.status, 200);
    let mut c = c;
    c.kill();
    let (c, _) = f.start(&[]);
    let d = listed(&c, &token, &dev.id);
    assert_eq!(d["active_version"], "2.0", "{d}");
    assert_eq!(d["agent_version"], "0.2.0", "{d}");
}

#[test]
fn updates_say_who_signed_them_and_what_used_them_and_unused_ones_can_be_deleted() {
    let s = stored("1.0.0");
    let (c, token) = (&s.c, &s.token);
    let test = group(c, token, "test");
    enroll(c, &test, "gw-1", "acme-gw");
    let dep = post_ok(
        &c.api("/deployments"),
        token,
        json!({"update": s.update, "group": "test"}),
        201,
    )["id"]
        .clone();
    let spare = upload(c, token, &bundle(s.f.dir.path(), "1.0.1", &s.key)).json();
    let list = get_ok(&c.api("/updates"), token);
    let used = &list[1];
    assert_eq!(used["version"], "1.0.0");
    assert_eq!(used["deployments"], json!([dep]));
    assert_eq!(used["signer"].as_str().unwrap().len(), 16, "{used}");
    assert_eq!(list[0]["deployments"], json!([]));

    let url = |id: &Value| c.api(&format!("/updates/{id}"));
    let del = |id: &Value| request("DELETE", &url(id), Some(token), &[], None);
    del(&json!(s.update)).refused(409, &format!("is used by deployment(s) {dep}"));
    del(&json!(999)).refused(404, "update 999 does not exist");
    let file = s.f.data().join(format!(
        "bundles/{}.bundle",
        spare["blake3"].as_str().unwrap()
    ));
    assert!(file.exists());
    let gone = del(&spare["id"]);
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert_eq!(gone.json(), json!({"id": spare["id"], "version": "1.0.1"}));
    assert!(!file.exists(), "the bundle file went with the row");
    assert_eq!(
        get_ok(&c.api("/updates"), token).as_array().unwrap().len(),
        1
    );
    // The version is free again.
    assert_eq!(
        upload(c, token, &bundle(s.f.dir.path(), "1.0.1", &s.key)).status,
        201
    );
    // Without the operator token: refused.
    assert_eq!(
        request("DELETE", &url(&json!(s.update)), None, &[], None).status,
        401
    );
}

#[test]
fn a_device_shows_its_versions_and_every_deployment_it_took() {
    let s = stored("1.0.0");
    let (c, token) = (&s.c, &s.token);
    let dev = one_test_device(c, token, "gw-1");
    let url = c.api(&format!("/devices/{}", dev.id));
    let before = get_ok(&url, token);
    assert_eq!(before["inactive_version"], Value::Null);
    assert_eq!(before["deployments"], json!([]));
    let dep = post_ok(
        &c.api("/deployments"),
        token,
        json!({"update": s.update, "group": "test"}),
        201,
    )["id"]
        .clone();
    assert_eq!(
        report(c, &dev, dep.as_u64().unwrap(), 1, "success", "").status,
        200
    );
    // The next poll names its rollback target.
    let polled = post(
        &c.api("/device/poll"),
        &dev.cred,
        json!({"active_version": "1.0.0", "agent_version": "0.1.0", "compatible": "acme-gw",
               "in_progress": null, "inactive_version": "factory"}),
    );
    assert_eq!(polled.status, 200, "{}", polled.text());
    let after = get_ok(&url, token);
    assert_eq!(
        (&after["active_version"], &after["inactive_version"]),
        (&json!("1.0.0"), &json!("factory"))
    );
    assert_eq!(after["deployments"][0]["deployment"], dep);
    assert_eq!(after["deployments"][0]["version"], "1.0.0");
    assert_eq!(after["deployments"][0]["state"], "success");
    assert_eq!(
        get_ok(&c.api("/devices"), token)[0]["inactive_version"],
        "factory"
    );
    // Unknown, and hostile.
    get(&c.api("/devices/dev_nope"), token).refused(404, "device dev_nope does not exist");
    post(
        &c.api("/device/poll"),
        &dev.cred,
        json!({"active_version": "1.0.0", "agent_version": "0.1.0", "compatible": "acme-gw",
               "in_progress": null, "inactive_version": "v".repeat(5000)}),
    )
    .refused(400, "`inactive_version` is 5000 bytes long");
}
