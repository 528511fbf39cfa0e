//! Abort, authentication and crashes end to end: an abort during a slow download, credentials checked on every route, and `kill -9` of the controller and of an agent mid-rollout.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use molt_engine::testing::noise;
use molt_test_support::*;

const LONG: Duration = Duration::from_secs(180);

/// A full bundle of one text file and 4 MiB of data (slow to fetch through a SlowLink).
fn bundle(dir: &Path, version: &str, secret: &Path) -> PathBuf {
    fs::create_dir_all(dir.join("app")).unwrap();
    fs::write(dir.join("app/hello.txt"), format!("hello {version}\n")).unwrap();
    // Incompressible, so the bundle is as large as the data.
    fs::write(dir.join("app/data.bin"), noise(1, 4 << 20)).unwrap();
    fs::write(
        dir.join("recipe.toml"),
        format!(
            "version = \"{version}\"\ncompatible = \"{BOARD}\"\nkind = \"full\"\n\n\
             [[files]]\nsource = \"app\"\ndestination = \"/opt/app\"\n"
        ),
    )
    .unwrap();
    let out = dir.join("bundle.molt");
    molt_build(&dir.join("recipe.toml"), &out, secret);
    out
}

struct Setup {
    tmp: tempfile::TempDir,
    secret: PathBuf,
    public: String,
    ctl: Controller,
    link: SlowLink,
    devices: Vec<Device>,
}

/// A controller, a slow link in front of it, and `n` running devices in group `test`
/// that reach the controller through the link.
fn setup(n: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(tmp.path());
    let ctl = Controller::start(
        &tmp.path().join("controller"),
        &["--trusted-key", &public, "--poll-interval", "1"],
    );
    // 256 KiB/s: a 4 MiB bundle takes about 16 s.
    let link = SlowLink::new(&ctl.url, 256 * 1024);
    link.throttle.store(false, Ordering::Relaxed);
    ctl.molt(&["groups", "create", "test"]).ok();
    let token = ctl.get("/api/v1/groups")[0]["enrollment_token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut devices = Vec::new();
    for i in 1..=n {
        let mut d = Device::new(&format!("dev-{i}"), &public);
        d.enroll(&link.url, &token);
        d.run();
        devices.push(d);
    }
    Setup {
        tmp,
        secret,
        public,
        ctl,
        link,
        devices,
    }
}

fn push_and_deploy(s: &Setup, version: &str) -> u64 {
    let b = bundle(&s.tmp.path().join(version), version, &s.secret);
    s.ctl.molt(&["update", "push", b.to_str().unwrap()]).ok();
    let ups = s.ctl.get("/api/v1/updates");
    let id = ups
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["version"] == version)
        .and_then(|u| u["id"].as_u64())
        .unwrap();
    s.ctl
        .molt(&["deploy", &id.to_string(), "--group", "test"])
        .ok();
    s.ctl.get("/api/v1/deployments")[0]["id"].as_u64().unwrap()
}

fn details(ctl: &Controller, id: u64) -> serde_json::Value {
    ctl.get(&format!("/api/v1/deployments/{id}"))
}

fn wait_state(
    ctl: &Controller,
    id: u64,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for(LONG, what, || {
        let d = details(ctl, id);
        pred(&d).then_some(d)
    })
}

#[test]
fn abort_during_a_slow_download_keeps_the_old_snapshot() {
    if !root_or_skip() {
        return;
    }
    let s = setup(2);
    s.link.throttle.store(true, Ordering::Relaxed);
    let id = push_and_deploy(&s, "1.0.0");
    wait_state(&s.ctl, id, "both devices downloading", |d| {
        d["counts"]["downloading"] == 2
    });
    let out = s.ctl.molt(&["abort", &id.to_string()]).ok();
    assert!(out.contains("dev-1") && out.contains("dev-2"), "{out}");
    let d = wait_state(&s.ctl, id, "the abort to reach both devices", |d| {
        d["state"] != "in_progress"
    });
    assert_eq!(d["counts"]["aborted"], 2, "{d:#}");
    assert_eq!(d["state"], "aborted");
    for dev in &s.devices {
        assert_eq!(
            dev.current().as_deref(),
            Some(Path::new("slots/a")),
            "{}",
            dev.name
        );
        assert_eq!(dev.read("opt/app/hello.txt"), None);
    }

    // An abort after every device committed is refused, and says why.
    s.link.throttle.store(false, Ordering::Relaxed);
    let id = push_and_deploy(&s, "2.0.0");
    let d = wait_state(&s.ctl, id, "the second deployment", |d| {
        d["state"] != "in_progress"
    });
    assert_eq!(d["state"], "success", "{d:#}");
    let out = s.ctl.molt(&["abort", &id.to_string()]);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        ["committed", "final", "finished"]
            .iter()
            .any(|w| format!("{}{}", out.stdout, out.stderr).contains(w)),
        "{out:?}"
    );
    for dev in &s.devices {
        assert_eq!(
            dev.read("opt/app/hello.txt").as_deref(),
            Some("hello 2.0.0\n")
        );
    }
}

/// The device's credential, from the file `molt-agent enroll` wrote.
fn credential(dev: &Device) -> String {
    let text = fs::read_to_string(dev.data().join("controller.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["credential"].as_str().unwrap().to_string()
}

fn status(url: &str, auth: Option<&str>, method: &str, body: Option<&str>) -> u16 {
    let mut req = ureq::request(method, url);
    if let Some(a) = auth {
        req = req.set("Authorization", &format!("Bearer {a}"));
    }
    let r = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    match r {
        Ok(resp) => resp.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

#[test]
fn credentials_are_checked_on_every_route() {
    if !root_or_skip() {
        return;
    }
    let s = setup(2);
    let id = push_and_deploy(&s, "1.0.0");
    wait_state(&s.ctl, id, "the deployment", |d| {
        d["state"] != "in_progress"
    });
    let u = &s.ctl.url;
    // No token, a wrong token.
    assert_eq!(
        status(&format!("{u}/api/v1/groups"), None, "GET", None),
        401
    );
    assert_eq!(
        status(&format!("{u}/api/v1/groups"), Some("nope"), "GET", None),
        401
    );
    // A device credential on an operator route.
    let c1 = credential(&s.devices[0]);
    assert_eq!(
        status(&format!("{u}/api/v1/groups"), Some(&c1), "GET", None),
        403
    );
    // A device asking for a deployment that is not its own.
    let other = Device::new("outsider", &s.public);
    s.ctl.molt(&["groups", "create", "elsewhere"]).ok();
    let token = s.ctl.get("/api/v1/groups");
    let token = token
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "elsewhere")
        .and_then(|g| g["enrollment_token"].as_str())
        .unwrap()
        .to_string();
    other.enroll(u, &token);
    let c3 = credential(&other);
    let bundle = format!("{u}/api/v1/device/deployments/{id}/bundle");
    assert_eq!(status(&bundle, Some(&c3), "GET", None), 403);
    let report = format!("{u}/api/v1/device/deployments/{id}/report");
    let body = r#"{"seq": 99, "state": "failed", "phase": "after", "progress": null, "message": "forged", "log": "", "active_version": "x"}"#;
    assert_eq!(status(&report, Some(&c3), "POST", Some(body)), 403);
    assert_eq!(status(&report, None, "POST", Some(body)), 401);
    // The operator token is not a device credential either.
    assert_eq!(status(&bundle, Some(&s.ctl.token), "GET", None), 403);
    let d = details(&s.ctl, id);
    assert_eq!(
        d["counts"]["success"], 2,
        "a forged report changed something: {d:#}"
    );
}

#[test]
fn kill_9_of_the_controller_and_of_an_agent_mid_rollout() {
    if !root_or_skip() {
        return;
    }
    let mut s = setup(3);
    s.link.throttle.store(true, Ordering::Relaxed);
    let id = push_and_deploy(&s, "1.0.0");
    wait_state(&s.ctl, id, "devices downloading", |d| {
        d["counts"]["downloading"].as_u64().unwrap_or(0) >= 2
    });
    // The controller dies mid-rollout and comes back on the same data and port.
    s.ctl.crash_and_restart();
    // An agent dies mid-install and is started again.
    s.devices[0].kill9();
    s.devices[0].run();
    s.link.throttle.store(false, Ordering::Relaxed);
    let d = wait_state(&s.ctl, id, "the rollout to complete", |d| {
        d["state"] != "in_progress"
    });
    assert_eq!(d["state"], "success", "{d:#}");
    assert_eq!(d["counts"]["success"], 3, "{d:#}");
    for dev in &s.devices {
        assert_eq!(
            dev.read("opt/app/hello.txt").as_deref(),
            Some("hello 1.0.0\n"),
            "{}",
            dev.name
        );
    }
    // Exactly one deployment, each device in it once.
    let rows = s.ctl.get("/api/v1/deployments");
    assert_eq!(rows.as_array().unwrap().len(), 1);
    let devs = d["devices"].as_array().unwrap();
    assert_eq!(devs.len(), 3);
}
