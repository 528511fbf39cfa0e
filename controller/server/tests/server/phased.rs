//! Phased rollouts as devices and operators see them: waves offered one after another, a soak that survives a `kill -9`, a failing canary halting the deployment, a resume with a new plan, and plans refused by field.

use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;

/// A controller with a stored update and group `fleet` of `n` devices named `gw-0`…
struct Fleet {
    f: Fixture,
    c: Controller,
    token: String,
    update: u64,
    devices: Vec<Dev>,
}

fn fleet(n: usize) -> Fleet {
    let Stored {
        f,
        c,
        token,
        update,
        ..
    } = stored("2.0.0");
    let devices = enrolled(&c, &token, "fleet", n, "gw");
    Fleet {
        f,
        c,
        token,
        update,
        devices,
    }
}

impl Fleet {
    fn deploy(&self, plan: Value) -> Value {
        post_ok(
            &self.c.api("/deployments"),
            &self.token,
            json!({"update": self.update, "group": "fleet", "plan": plan}),
            201,
        )
    }

    /// The devices a poll offers deployment `dep` to now.
    fn offered(&self, dep: u64) -> Vec<usize> {
        (0..self.devices.len())
            .filter(|&i| {
                let o = poll(&self.c, &self.devices[i], None);
                o["action"] == "install" && o["deployment"] == dep
            })
            .collect()
    }

    /// Device `i` installs deployment `dep` and ends in `state`.
    fn finish(&self, i: usize, dep: u64, state: &str) {
        let d = &self.devices[i];
        assert_eq!(report(&self.c, d, dep, 1, "downloading", "").status, 200);
        assert_eq!(report(&self.c, d, dep, 2, state, "").status, 200);
    }

    fn details(&self, dep: u64) -> Value {
        get_ok(&self.c.api(&format!("/deployments/{dep}")), &self.token)
    }
}

fn id(d: &Value) -> u64 {
    d["id"].as_u64().unwrap()
}

#[test]
fn waves_start_one_after_another_and_a_soak_survives_a_kill() {
    let mut fl = fleet(6);
    let d = fl.deploy(json!({"waves": ["2", "100%"], "soak_secs": 3}));
    let dep = id(&d);
    assert_eq!(d["state"], "in_progress");
    assert_eq!(
        d["rollout"]["wave"], 1,
        "the empty canary wave passed at once: {d}"
    );
    assert_eq!(d["rollout"]["waves"], 2);

    let first = fl.offered(dep);
    assert_eq!(first.len(), 2, "exactly the first wave is offered");
    let waves: Vec<u64> = fl.details(dep)["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["wave"].as_u64().unwrap())
        .collect();
    assert_eq!(waves.iter().filter(|&&w| w == 1).count(), 2, "{waves:?}");
    assert_eq!(waves.iter().filter(|&&w| w == 2).count(), 4, "{waves:?}");

    fl.finish(first[0], dep, "success");
    assert!(
        fl.offered(dep).len() <= 1,
        "the second wave waits for the first"
    );
    fl.finish(first[1], dep, "success");
    let soaking = fl.details(dep);
    assert!(soaking["rollout"]["soak_until"].is_string(), "{soaking}");
    assert!(
        fl.offered(dep).is_empty(),
        "nothing new starts during the soak"
    );

    // A kill -9 during the soak: the restarted controller ends it from the database.
    fl.c.kill();
    let (c, _) = fl.f.start(&[]);
    fl.c = c;
    let started = Instant::now();
    let second = loop {
        let o = fl.offered(dep);
        if !o.is_empty() {
            break o;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the soak never ended"
        );
        sleep(Duration::from_millis(250));
    };
    assert_eq!(second.len(), 4);
    assert!(second.iter().all(|i| !first.contains(i)), "no device twice");
    for i in second {
        fl.finish(i, dep, "success");
    }
    let done = fl.details(dep);
    assert_eq!(done["state"], "success", "{done}");
    assert_eq!(done["rollout"]["wave"], 2);
    assert!(done["rollout"]["soak_until"].is_null(), "{done}");
}

#[test]
fn a_failing_canary_halts_the_deployment_and_a_resume_goes_on() {
    let fl = fleet(5);
    let d = fl.deploy(json!({
        "canaries": ["gw-3"], "waves": ["40%", "100%"], "halt_at": "1",
    }));
    let dep = id(&d);
    assert_eq!(fl.offered(dep), [3], "only the canary starts");
    fl.finish(3, dep, "failed");
    let halted = fl.details(dep);
    assert_eq!(halted["state"], "halted", "{halted}");
    assert_eq!(
        halted["rollout"]["halted"],
        "1 of 5 devices in all failed; the plan halts at 1"
    );
    assert!(
        fl.offered(dep).is_empty(),
        "no device of a later wave started"
    );
    let counts = &halted["counts"];
    assert_eq!(
        (counts["failed"].as_u64(), counts["pending"].as_u64()),
        (Some(1), Some(4))
    );

    // Resuming with the same plan: the failure before the resume no longer counts.
    let resumed = post_ok(
        &fl.c.api(&format!("/deployments/{dep}/resume")),
        &fl.token,
        json!({}),
        200,
    );
    assert!(resumed["rollout"]["halted"].is_null(), "{resumed}");
    let next = fl.offered(dep);
    assert_eq!(
        next.len(),
        1,
        "40% of 5 is 2 devices, the canary one of them: {next:?}"
    );
    // A second resume of a deployment that is not halted is a conflict.
    post(
        &fl.c.api(&format!("/deployments/{dep}/resume")),
        &fl.token,
        json!({}),
    )
    .refused(409, "is not halted");
}

#[test]
fn a_halt_while_devices_install_stops_new_starts_and_can_abort_them() {
    let fl = fleet(4);
    let d = fl.deploy(json!({
        "waves": ["50%", "100%"], "halt_at": "50%", "halt_scope": "wave",
        "abort_in_flight": true,
    }));
    let dep = id(&d);
    let first = fl.offered(dep);
    assert_eq!(first.len(), 2);
    let busy = &fl.devices[first[1]];
    assert_eq!(report(&fl.c, busy, dep, 1, "installing", "").status, 200);
    fl.finish(first[0], dep, "rolled_back");
    let halted = fl.details(dep);
    assert_eq!(halted["state"], "halted", "{halted}");
    assert_eq!(
        halted["rollout"]["halted"],
        "1 of 2 devices of wave 1 failed; the plan halts at 50%"
    );
    // The device still installing hears the abort; the others get nothing.
    let o = poll(&fl.c, busy, Some(dep));
    assert_eq!(o["action"], "abort", "{o}");
    assert!(fl.offered(dep).is_empty());
}

#[test]
fn a_resume_with_a_new_plan_makes_the_started_devices_its_first_wave() {
    let fl = fleet(10);
    let d = fl.deploy(json!({"waves": ["10%", "100%"], "success_percent": 100}));
    let dep = id(&d);
    let first = fl.offered(dep);
    assert_eq!(first.len(), 1);
    fl.finish(first[0], dep, "failed");
    let halted = fl.details(dep);
    assert_eq!(
        halted["rollout"]["halted"],
        "wave 1 succeeded on 0 of 1 devices, below the 100% the plan asks"
    );
    let resumed = post_ok(
        &fl.c.api(&format!("/deployments/{dep}/resume")),
        &fl.token,
        json!({"plan": {"waves": ["50%", "100%"]}}),
        200,
    );
    assert_eq!(resumed["rollout"]["plan"]["waves"], json!(["50%", "100%"]));
    // 50% of 10 is 5 devices, one of which (the failed one) had started.
    assert_eq!(fl.offered(dep).len(), 4);
}

#[test]
fn plans_are_checked_before_anything_is_written() {
    let fl = fleet(2);
    let url = fl.c.api("/deployments");
    for (plan, says) in [
        (
            json!({"waves": ["10%", "50%"]}),
            "waves: the last wave must be 100%",
        ),
        (
            json!({"waves": ["0%", "100%"]}),
            "\"0%\": a share is 1% to 100%",
        ),
        (
            json!({"waves": ["\u{1b}[2J", "100%"]}),
            "a number of devices or a share",
        ),
        (
            json!({"canaries": ["gw-9"]}),
            "canaries: \"gw-9\" is not a device of this deployment",
        ),
        (json!({"success_percent": 250}), "success_percent"),
        (json!({"halt_at": "0"}), "halting at 0 failures"),
        (
            json!({"halt_scope": "everywhere"}),
            "expected `wave` or `overall`",
        ),
        (
            json!({"soak_secs": 999_999_999}),
            "soak_secs: 999999999 is more than a week",
        ),
        (json!({"wave": ["100%"]}), "unknown field `wave`"),
    ] {
        let a = post(
            &url,
            &fl.token,
            json!({"update": fl.update, "group": "fleet", "plan": plan}),
        );
        assert_eq!(a.status, 400, "{plan}: {}", a.text());
        let e = a.error();
        assert!(e.contains(says), "{plan}: {e}");
        assert!(!e.chars().any(char::is_control), "{plan}: {e:?}");
    }
    let list = get_ok(&url, &fl.token);
    assert_eq!(
        list.as_array().unwrap().len(),
        0,
        "nothing was made: {list}"
    );
}

/// `PATCH /groups/{name}` with `body`.
fn patch_group(fl: &Fleet, name: &str, body: Value) -> Answer {
    request(
        "PATCH",
        &fl.c.api(&format!("/groups/{name}")),
        Some(&fl.token),
        &[("Content-Type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
}

#[test]
fn a_group_default_plan_applies_when_a_deployment_names_none() {
    let fl = fleet(3);
    let g = patch_group(
        &fl,
        "fleet",
        json!({"default_plan": {"waves": ["1", "100%"], "halt_at": "1"}}),
    );
    assert_eq!(g.status, 200, "{}", g.text());
    assert_eq!(g.json()["default_plan"]["waves"], json!(["1", "100%"]));
    assert_eq!(g.json()["pick_up_joiners"], true);
    let d = post_ok(
        &fl.c.api("/deployments"),
        &fl.token,
        json!({"update": fl.update, "group": "fleet"}),
        201,
    );
    assert_eq!(d["rollout"]["plan"]["halt_at"], "1", "{d}");
    assert_eq!(fl.offered(id(&d)).len(), 1);
    // A plan given explicitly wins; the default one is checked when it is set.
    let e = post_ok(
        &fl.c.api("/deployments"),
        &fl.token,
        json!({"update": fl.update, "group": "fleet", "again": true, "plan": {"waves": ["100%"]}}),
        201,
    );
    assert_eq!(e["rollout"]["plan"]["halt_at"], Value::Null, "{e}");
    patch_group(&fl, "fleet", json!({"default_plan": {"waves": ["50%"]}}))
        .refused(400, "default_plan: waves: the last wave must be 100%");
    patch_group(&fl, "nowhere", json!({"pick_up_joiners": false})).refused(404, "nowhere");
    patch_group(&fl, "fleet", json!({"pickup": false})).refused(400, "unknown field");
}

#[test]
fn devices_that_join_a_group_mid_rollout_get_its_latest_deployment() {
    let fl = fleet(2);
    let d = fl.deploy(json!({"waves": ["50%", "100%"], "soak_secs": 600}));
    let dep = id(&d);
    let first = fl.offered(dep);
    assert_eq!(first.len(), 1);
    let token = get_ok(&fl.c.api("/groups"), &fl.token)[0]["enrollment_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // A new device joins: it is a target, in the last wave, so it waits its turn.
    let late = enroll(&fl.c, &token, "gw-late", "acme-gw");
    let details = fl.details(dep);
    assert_eq!(state_of(&details, &late.id), "pending");
    let wave = |details: &Value, dev: &str| {
        details["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == dev)
            .unwrap()["wave"]
            .clone()
    };
    assert_eq!(wave(&details, &late.id), 2);
    assert_eq!(
        poll(&fl.c, &late, None)["action"],
        "none",
        "its wave has not started"
    );
    // A device of other hardware, or one already running the version, is left out.
    let other = enroll(&fl.c, &token, "gw-other", "other-board");
    let current = request(
        "POST",
        &fl.c.api("/device/enroll"),
        None,
        &[],
        Some(
            json!({"token": token, "name": "gw-current", "compatible": "acme-gw",
                   "agent_version": "0.1.0", "active_version": "2.0.0"})
            .to_string()
            .as_bytes(),
        ),
    )
    .json();
    let ids: Vec<String> = fl.details(dep)["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        !ids.contains(&other.id)
            && !ids.contains(&current["device_id"].as_str().unwrap().to_owned())
    );
    // Moved in from another group: picked up too; with pick-up off: not.
    let lab = group(&fl.c, &fl.token, "lab");
    let moved = enroll(&fl.c, &lab, "gw-moved", "acme-gw");
    let patch = |dev: &Dev, to: &str| {
        request(
            "PATCH",
            &fl.c.api(&format!("/devices/{}", dev.id)),
            Some(&fl.token),
            &[("Content-Type", "application/json")],
            Some(json!({"group": to}).to_string().as_bytes()),
        )
    };
    assert_eq!(patch(&moved, "fleet").status, 200);
    assert_eq!(state_of(&fl.details(dep), &moved.id), "pending");
    assert_eq!(
        patch_group(&fl, "fleet", json!({"pick_up_joiners": false})).status,
        200
    );
    let ignored = enroll(&fl.c, &token, "gw-ignored", "acme-gw");
    assert!(!fl.details(dep).to_string().contains(&ignored.id));
}

#[test]
fn a_failed_device_says_whether_another_try_could_pass() {
    let fl = fleet(3);
    let dep = id(&fl.deploy(json!({})));
    let url = fl.c.api(&format!("/device/deployments/{dep}/report"));
    let send = |i: usize, failure: Value| {
        post(
            &url,
            &fl.devices[i].cred,
            json!({"seq": 1, "state": "failed", "phase": "fetching", "progress": null,
                   "message": "download failed", "log": "", "active_version": "factory",
                   "failure": failure}),
        )
    };
    assert_eq!(
        send(0, json!({"cause": "network", "class": "transient"})).status,
        200
    );
    assert_eq!(
        send(1, json!({"cause": "exit", "class": "deterministic"})).status,
        200
    );
    // An agent from before the field sends none.
    assert_eq!(
        report(&fl.c, &fl.devices[2], dep, 1, "failed", "").status,
        200
    );
    let details = fl.details(dep);
    let failure = |i: usize| {
        details["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == fl.devices[i].id.as_str())
            .unwrap()["failure"]
            .clone()
    };
    assert_eq!(
        failure(0),
        json!({"cause": "network", "class": "transient"})
    );
    assert_eq!(
        failure(1),
        json!({"cause": "exit", "class": "deterministic"})
    );
    assert_eq!(failure(2), Value::Null);
    // Hostile values are refused, naming the field; nothing is recorded.
    let dep2 = id(&post_ok(
        &fl.c.api("/deployments"),
        &fl.token,
        json!({"update": fl.update, "group": "fleet", "again": true}),
        201,
    ));
    let url2 = fl.c.api(&format!("/device/deployments/{dep2}/report"));
    for (failure, says) in [
        (
            json!({"cause": "x".repeat(10_000), "class": "transient"}),
            "`failure.cause` is 10000 bytes long",
        ),
        (
            json!({"cause": "", "class": "transient"}),
            "`failure.cause` is empty",
        ),
        (
            json!({"cause": "network", "class": "maybe"}),
            "unknown variant `maybe`",
        ),
    ] {
        let a = post(
            &url2,
            &fl.devices[0].cred,
            json!({"seq": 1, "state": "failed", "phase": "x", "progress": null,
                   "message": null, "log": "", "active_version": "factory",
                   "failure": failure}),
        );
        assert_eq!(a.status, 400, "{}", a.text());
        assert!(a.error().contains(says), "{}", a.error());
    }
    assert_eq!(state_of(&fl.details(dep2), &fl.devices[0].id), "pending");
}
