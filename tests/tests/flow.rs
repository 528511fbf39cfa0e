//! The micro-updates flow end to end between real processes: a controller, four agents each in its own temp root, and the `molt` CLI, over loopback.

use std::fs;
use std::path::Path;
use std::time::Duration;

use molt_test_support::*;

const LONG: Duration = Duration::from_secs(120);

/// A recipe directory: `app/hello.txt` and scripts; `after` as given.
fn recipe(dir: &Path, version: &str, after: &str, rollback_marker: &Path) -> std::path::PathBuf {
    fs::create_dir_all(dir.join("app")).unwrap();
    fs::write(dir.join("app/hello.txt"), format!("hello {version}\n")).unwrap();
    fs::write(dir.join("app/big.bin"), vec![7u8; 3 << 20]).unwrap();
    let text = format!(
        r#"version = "{version}"
compatible = "{BOARD}"
comment = "e2e {version}"
kind = "full"

[before]
run = "echo before $MOLT_NEW_VERSION"

[[files]]
source = "app"
destination = "/opt/app"

[after]
run = "{after}"

[rollback]
revert = true
run = "echo rolled back; touch {marker}"
"#,
        marker = rollback_marker.display()
    );
    let path = dir.join("recipe.toml");
    fs::write(&path, text).unwrap();
    path
}

/// Builds and signs `recipe` with `molt bundle build`.
fn bundle(recipe: &Path, secret: &Path) -> std::path::PathBuf {
    let out = recipe.with_extension("molt");
    molt_build(recipe, &out, secret);
    out
}

fn group_token(ctl: &Controller, group: &str) -> String {
    ctl.molt(&["groups", "create", group]).ok();
    let groups = ctl.get("/api/v1/groups");
    let created = groups
        .as_array()
        .and_then(|all| all.iter().find(|g| g["name"] == group));
    let token = created.and_then(|g| g["enrollment_token"].as_str());
    token.expect("the new group's enrollment token").to_string()
}

fn update_id(ctl: &Controller, version: &str) -> u64 {
    let ups = ctl.get("/api/v1/updates");
    ups.as_array()
        .unwrap()
        .iter()
        .find(|u| u["version"] == version)
        .and_then(|u| u["id"].as_u64())
        .unwrap_or_else(|| panic!("update {version} not listed: {ups}"))
}

/// The newest deployment's id.
fn newest_deployment(ctl: &Controller) -> u64 {
    ctl.get("/api/v1/deployments")[0]["id"].as_u64().unwrap()
}

/// Waits until deployment `id` is no longer in progress; returns its row.
fn settle(ctl: &Controller, id: u64, limit: Duration) -> serde_json::Value {
    wait_for(limit, &format!("deployment {id} to finish"), || {
        let d = ctl.get(&format!("/api/v1/deployments/{id}"));
        (d["state"] != "in_progress").then_some(d)
    })
}

struct Fleet {
    _tmp: tempfile::TempDir,
    secret: std::path::PathBuf,
    ctl: Controller,
    test: Vec<Device>,
    production: Vec<Device>,
    dir: std::path::PathBuf,
}

impl Fleet {
    /// Builds the recipe `name` (see [`recipe`]) as a bundle, pushes it with `push_extra`
    /// arguments and deploys it to group `test`: the new deployment's id.
    fn deploy_to_test(
        &self,
        name: &str,
        version: &str,
        after: &str,
        rollback_marker: &Path,
        push_extra: &[&str],
    ) -> u64 {
        let r = recipe(&self.dir.join(name), version, after, rollback_marker);
        let b = bundle(&r, &self.secret);
        let mut push = vec!["update", "push", b.to_str().unwrap()];
        push.extend_from_slice(push_extra);
        self.ctl.molt(&push).ok();
        let up = update_id(&self.ctl, version);
        self.ctl
            .molt(&["deploy", &up.to_string(), "--group", "test"])
            .ok();
        newest_deployment(&self.ctl)
    }
}

/// A controller trusting a fresh key, and two running devices in each of `test` and `production`.
fn fleet(via: Option<&dyn Fn(&Controller) -> String>) -> Fleet {
    let tmp = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(tmp.path());
    let ctl = Controller::start(
        &tmp.path().join("controller"),
        &["--trusted-key", &public, "--poll-interval", "1"],
    );
    let url = via.map(|f| f(&ctl)).unwrap_or_else(|| ctl.url.clone());
    let mut groups = Vec::new();
    for g in ["test", "production"] {
        let token = group_token(&ctl, g);
        let mut devs = Vec::new();
        for i in 1..=2 {
            let mut d = Device::new(&format!("{g}-{i}"), &public);
            d.enroll(&url, &token);
            d.run();
            devs.push(d);
        }
        groups.push(devs);
    }
    let production = groups.pop().unwrap();
    let test = groups.pop().unwrap();
    let dir = tmp.path().join("recipes");
    Fleet {
        secret,
        ctl,
        test,
        production,
        dir,
        _tmp: tmp,
    }
}

#[test]
fn deploy_to_test_then_to_others() {
    if !root_or_skip() {
        return;
    }
    let f = fleet(None);
    let marker = f.dir.join("never");
    let first = f.deploy_to_test(
        "v1",
        "1.0.0",
        "echo after $MOLT_NEW_VERSION",
        &marker,
        &["--comment", "first"],
    );
    let d = settle(&f.ctl, first, LONG);
    assert_eq!(d["state"], "success", "{d:#}");
    assert_eq!(d["counts"]["success"], 2, "{d:#}");
    for dev in &f.test {
        assert_eq!(
            dev.read("opt/app/hello.txt").as_deref(),
            Some("hello 1.0.0\n")
        );
        assert_eq!(dev.current().unwrap(), Path::new("slots/b"));
    }
    for dev in &f.production {
        assert_eq!(
            dev.read("opt/app/hello.txt"),
            None,
            "production got it too early"
        );
    }

    f.ctl
        .molt(&[
            "deploy-to-others",
            &first.to_string(),
            "--group",
            "production",
        ])
        .ok();
    let second = newest_deployment(&f.ctl);
    assert_ne!(second, first);
    let d = settle(&f.ctl, second, LONG);
    assert_eq!(d["state"], "success", "{d:#}");
    for dev in &f.production {
        assert_eq!(
            dev.read("opt/app/hello.txt").as_deref(),
            Some("hello 1.0.0\n")
        );
        assert_eq!(dev.current().unwrap(), Path::new("slots/b"));
    }

    // Recent updates: both rows, with their counts.
    let rows = f.ctl.get("/api/v1/deployments");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, group) in rows.iter().zip(["production", "test"]) {
        assert_eq!(row["group"], group);
        assert_eq!(row["version"], "1.0.0");
        assert_eq!(row["counts"]["success"], 2);
        assert_eq!(row["state"], "success");
    }
    let table = f.ctl.molt(&["status"]).ok();
    assert!(
        table.contains("production") && table.contains("test"),
        "{table}"
    );
    assert!(table.contains("1.0.0"), "{table}");
    // The after script's output reached the controller.
    let log = f
        .ctl
        .molt(&["logs", &first.to_string(), &f.test[0].name])
        .ok();
    assert!(log.contains("after 1.0.0"), "{log}");
    assert!(!marker.exists(), "the rollback command ran");
}

#[test]
fn a_failing_after_rolls_back_and_the_output_is_visible() {
    if !root_or_skip() {
        return;
    }
    let f = fleet(None);
    let marker = f.dir.join("rolled-back");
    let id = f.deploy_to_test("bad", "2.0.0", "echo about to fail; exit 3", &marker, &[]);
    let d = settle(&f.ctl, id, LONG);
    assert_eq!(d["counts"]["rolled_back"], 2, "{d:#}");
    assert_eq!(d["state"], "failed", "{d:#}");
    assert!(marker.exists(), "the rollback command did not run");
    for dev in &f.test {
        assert_eq!(
            dev.read("opt/app/hello.txt"),
            None,
            "{} kept the failed files",
            dev.name
        );
        let log = f.ctl.molt(&["logs", &id.to_string(), &dev.name]).ok();
        assert!(log.contains("about to fail"), "{log}");
        assert!(log.contains("rolled back"), "{log}");
    }
}
