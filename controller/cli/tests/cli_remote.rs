//! End-to-end tests of `molt`'s operator commands: against a scripted HTTP server (exact requests, every error path) and against the real `molt-controller`.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use molt_test_support::{path_str as s, stderr_of as stderr, stdout_of as stdout};
use serde_json::{json, Value};
use tempfile::TempDir;

/// A temporary HOME, so no test reads or writes the real `~/.config/molt`.
struct Home {
    dir: TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self) -> PathBuf {
        self.path(".config/molt/cli.toml")
    }

    /// `molt` with this HOME and none of the caller's molt settings.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_molt"));
        c.args(args)
            .env("HOME", self.dir.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("MOLT_CONTROLLER")
            .env_remove("MOLT_TOKEN")
            .env_remove("MOLT_CA")
            .stdin(Stdio::null());
        c
    }

    fn molt(&self, args: &[&str]) -> Output {
        self.molt_env(args, &[])
    }

    /// Runs `molt` with the environment variables `env` added.
    fn molt_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.cmd(args)
            .envs(env.iter().copied())
            .output()
            .expect("molt runs")
    }

    /// Runs `molt` and asserts it succeeded.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.molt(args);
        assert!(
            o.status.success(),
            "molt {args:?} failed:\nstdout: {}\nstderr: {}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    /// Runs `molt`, asserts exit status 1, returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        self.fails_env(args, &[])
    }

    /// Runs `molt` with the environment variables `env` added, asserts exit status 1,
    /// returns stderr.
    fn fails_env(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        refusal(&format!("molt {args:?}"), &self.molt_env(args, env))
    }

    /// `molt login` with the token on standard input.
    fn login(&self, url: &str, token: &str) -> Output {
        self.login_in(url, token, &[], None)
    }

    /// `molt login` with the token on standard input, `extra` arguments, and a working directory.
    fn login_in(&self, url: &str, token: &str, extra: &[&str], cwd: Option<&Path>) -> Output {
        let mut cmd = self.cmd(&["login", "--controller", url]);
        cmd.args(extra);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{token}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

/// Asserts `o`, the output of `what`, is a refusal (exit status 1, not a crash or a
/// success) and returns its stderr.
fn refusal(what: &str, o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what} should fail:\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    stderr(o)
}

// ---------------------------------------------------------------------------
// A scripted controller: answers each request from a closure and records it.

#[derive(Clone, Debug)]
struct Request {
    method: String,
    /// Path and query.
    target: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map_or("", String::as_str)
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

type Handler = dyn Fn(&Request) -> (u16, Value) + Send + Sync;

struct Fake {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    /// Serves `handler` until the test ends; every request needs `Bearer good`, else 401.
    fn start(handler: impl Fn(&Request) -> (u16, Value) + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = Arc::clone(&requests);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let handler = Arc::clone(&handler);
                let seen = Arc::clone(&seen);
                thread::spawn(move || serve(stream, &*handler, &seen));
            }
        });
        Fake { url, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn last(&self, method: &str, path_prefix: &str) -> Request {
        self.requests()
            .into_iter()
            .rev()
            .find(|r| r.method == method && r.target.starts_with(path_prefix))
            .unwrap_or_else(|| panic!("no {method} {path_prefix}: {:?}", self.requests()))
    }
}

fn serve(stream: TcpStream, handler: &Handler, seen: &Mutex<Vec<Request>>) {
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or("").to_owned();
        let target = words.next().unwrap_or("").to_owned();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
        let mut body = Vec::new();
        if let Some(len) = headers.get("content-length") {
            body.resize(len.parse().unwrap(), 0);
            r.read_exact(&mut body).unwrap();
        } else if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        let req = Request {
            method,
            target,
            headers,
            body,
        };
        seen.lock().unwrap().push(req.clone());
        let (status, value) = if req.header("authorization") != "Bearer good" {
            (401, json!({"error": "unknown operator token"}))
        } else {
            handler(&req)
        };
        let (ctype, text) = match value {
            Value::String(t) if status == 200 && req.target.ends_with("/log") => ("text/plain", t),
            v => ("application/json", v.to_string()),
        };
        let answer = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn group(name: &str, devices: u64) -> Value {
    json!({"name": name, "devices": devices, "enrollment_token": format!("grp_{name}")})
}

fn update(id: u64, version: &str) -> Value {
    json!({"id": id, "version": version, "compatible": "acme-gw", "kind": "patch", "size": 2048,
           "blake3": "ab", "comment": "", "created": "2026-11-26T10:00:00Z",
           "recipe": {"target_group": "test"}})
}

fn counts(pending: u64, installing: u64, success: u64) -> Value {
    json!({"pending": pending, "downloading": 0, "installing": installing, "success": success,
           "failed": 0, "rolled_back": 0, "aborted": 0})
}

fn deployment(id: u64) -> Value {
    json!({"id": id, "update": 3, "version": "1.5.0", "group": "test", "state": "in_progress",
           "counts": counts(0, 1, 2), "created": "2026-11-26T10:00:00Z",
           "created_by": "operator", "comment": "canary"})
}

fn details(id: u64) -> Value {
    let mut d = deployment(id);
    d["devices"] = json!([
        {"id": "dev_a", "name": "gw-1", "state": "success", "phase": "committed",
         "progress": null, "message": null, "updated": "2026-11-26T10:01:00Z"},
        {"id": "dev_b", "name": "gw-2", "state": "installing", "phase": "after",
         "progress": {"done": 50, "total": 200}, "message": "running the after script",
         "updated": "2026-11-26T10:01:00Z"},
    ]);
    d
}

/// A controller with two groups, two updates and one deployment.
fn scripted() -> Fake {
    Fake::start(|r| {
        let path = r.target.split('?').next().unwrap();
        match (r.method.as_str(), path) {
            ("GET", "/api/v1/groups") => (200, json!([group("test", 2), group("prod", 0)])),
            ("POST", "/api/v1/groups") => {
                let name = r.json()["name"].as_str().unwrap().to_owned();
                if name == "test" {
                    (409, json!({"error": "group `test` exists"}))
                } else {
                    (201, group(&name, 0))
                }
            }
            ("GET", "/api/v1/devices") => (
                200,
                json!([{"id": "dev_a", "name": "gw-1", "group": "test", "agent_version": "0.1.0",
                        "compatible": "acme-gw", "active_version": "1.4.1",
                        "last_seen": null, "status": "idle"}]),
            ),
            ("DELETE", "/api/v1/devices/dev_a") => {
                (200, json!({"device": "dev_a", "cancelled": 1}))
            }
            ("GET", "/api/v1/updates") => (200, json!([update(3, "1.5.0"), update(2, "1.4.1")])),
            ("POST", "/api/v1/updates") | ("POST", "/api/v1/updates/build") => {
                (201, update(4, "1.6.0"))
            }
            ("POST", "/api/v1/deployments") => {
                if r.json()["group"] == "prod" {
                    (400, json!({"error": "group `prod` has no devices"}))
                } else {
                    (201, deployment(7))
                }
            }
            ("POST", "/api/v1/deployments/7/deploy-to-others") => (201, deployment(8)),
            ("GET", "/api/v1/deployments") => (200, json!([deployment(7)])),
            ("GET", "/api/v1/deployments/7") => (200, details(7)),
            ("POST", "/api/v1/deployments/7/abort") => (
                200,
                json!({"deployment": 7, "aborted": ["dev_b"],
                       "not_aborted": [{"device": "dev_a", "state": "success",
                                        "reason": "already committed"}]}),
            ),
            ("GET", "/api/v1/deployments/7/devices/dev_b/log") => {
                (200, Value::String("fetching\nafter: ok".into()))
            }
            ("GET", "/api/v1/deployments/99") => (404, json!({"error": "no deployment 99"})),
            _ => (404, json!({"error": format!("no route {path}")})),
        }
    })
}

/// The scripted controller and a home logged in to it: where most tests start.
fn scripted_and_logged_in() -> (Fake, Home) {
    let fake = scripted();
    let home = logged_in(&fake);
    (fake, home)
}

/// A home logged in to `fake` (token `good`).
fn logged_in(fake: &Fake) -> Home {
    let home = Home::new();
    let o = home.login(&fake.url, "good");
    assert!(o.status.success(), "login: {}", stderr(&o));
    home
}

#[test]
fn login_checks_the_token_and_saves_it_private() {
    let fake = scripted();
    let home = Home::new();
    let o = home.login(&format!("{}/", fake.url), "good");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("logged in to {} (2 group(s))", fake.url)),
        "{}",
        stdout(&o)
    );
    let text = fs::read_to_string(home.config()).unwrap();
    assert!(
        text.contains(&format!("controller = \"{}\"", fake.url)),
        "{text}"
    );
    assert!(text.contains("token = \"good\""), "{text}");
    let mode = fs::metadata(home.config()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let check = fake.last("GET", "/api/v1/groups");
    assert_eq!(check.header("authorization"), "Bearer good");

    // The saved login is used from now on.
    assert!(home.ok(&["groups"]).contains("grp_test"));

    // A bad token is refused and nothing is saved over the good login.
    let err = refusal("login with a bad token", &home.login(&fake.url, "bad"));
    assert!(err.contains("refused the token"), "{err}");
    assert!(fs::read_to_string(home.config())
        .unwrap()
        .contains("token = \"good\""));

    // --token works as well as standard input; XDG_CONFIG_HOME moves the file.
    let xdg = home.path("xdg");
    let o = home.molt_env(
        &["login", "--controller", &fake.url, "--token", "good"],
        &[("XDG_CONFIG_HOME", s(&xdg))],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(xdg.join("molt/cli.toml").exists());
}

#[test]
fn not_logged_in_says_how_to_log_in() {
    let home = Home::new();
    for args in [&["groups"][..], &["status"], &["updates"], &["devices"]] {
        let err = home.fails(args);
        assert!(
            err.contains("no controller configured: run molt login --controller URL"),
            "{args:?}: {err}"
        );
    }
    let err = home.fails(&["login"]);
    assert!(err.contains("molt login --controller URL"), "{err}");
    let err = home.fails(&["groups", "--controller", "localhost:1"]);
    assert!(err.contains("needs a scheme"), "{err}");
}

#[test]
fn flags_and_environment_override_the_saved_login() {
    let (fake, home) = scripted_and_logged_in();
    // A wrong token in the environment beats the saved good one.
    let err = home.fails_env(&["groups"], &[("MOLT_TOKEN", "wrong")]);
    assert!(
        err.contains("the controller refused the token: run molt login"),
        "{err}"
    );
    // And a flag beats the environment.
    let o = home.molt_env(&["groups", "--token", "good"], &[("MOLT_TOKEN", "wrong")]);
    assert!(o.status.success(), "{}", stderr(&o));

    // With no saved login at all, the environment alone is enough.
    let other = Home::new();
    let o = other.molt_env(
        &["updates"],
        &[("MOLT_CONTROLLER", &fake.url), ("MOLT_TOKEN", "good")],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // The saved token is not sent to another controller.
    let elsewhere = Fake::start(|_| (200, json!([])));
    let err = home.fails(&["groups", "--controller", &elsewhere.url]);
    assert!(err.contains("no operator token for"), "{err}");
    assert!(elsewhere.requests().is_empty());
}

#[test]
fn an_unreachable_controller_is_named() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let home = Home::new();
    let err = home.fails(&["groups", "--controller", &url, "--token", "t"]);
    assert!(
        err.contains(&format!("cannot reach the controller at {url}: ")),
        "{err}"
    );
    let err = refusal("login to nowhere", &home.login(&url, "t"));
    assert!(err.contains("cannot reach the controller"), "{err}");
    assert!(!home.config().exists());
}

#[test]
fn server_errors_show_the_servers_message() {
    let (_fake, home) = scripted_and_logged_in();
    let err = home.fails(&["status", "99"]);
    assert!(err.contains("no deployment 99 (HTTP 404)"), "{err}");
    let err = home.fails(&["groups", "create", "test"]);
    assert!(err.contains("group `test` exists (HTTP 409)"), "{err}");
    let err = home.fails(&["deploy", "1.5.0", "--group", "prod"]);
    assert!(
        err.contains("group `prod` has no devices (HTTP 400)"),
        "{err}"
    );
    let err = home.fails(&["deploy", "9.9.9", "--group", "test"]);
    assert!(
        err.contains("no update with id or version `9.9.9`"),
        "{err}"
    );
}

#[test]
fn groups_devices_and_updates_print_tables_or_json() {
    let (fake, home) = scripted_and_logged_in();
    let out = home.ok(&["groups"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "GROUP  DEVICES  ENROLLMENT TOKEN  DEFAULT PLAN");
    // A controller from before plans sends no default plan: all at once.
    assert_eq!(lines[1], "test   2        grp_test          all at once");
    let v: Value = serde_json::from_str(&home.ok(&["groups", "--json"])).unwrap();
    assert_eq!(v[1]["name"], "prod");

    let out = home.ok(&["groups", "create", "canary"]);
    assert_eq!(
        out,
        "created group canary; devices enroll with its token:\ngrp_canary\n"
    );
    assert_eq!(
        fake.last("POST", "/api/v1/groups").json(),
        json!({"name": "canary"})
    );

    let out = home.ok(&["devices", "--group", "test"]);
    assert!(
        out.starts_with("ID     NAME  GROUP  STATUS  ACTIVE  AGENT  LAST SEEN\n"),
        "{out}"
    );
    assert!(
        out.contains("dev_a  gw-1  test   idle    1.4.1   0.1.0  never"),
        "{out}"
    );
    assert_eq!(
        fake.last("GET", "/api/v1/devices").target,
        "/api/v1/devices?group=test"
    );

    let out = home.ok(&["updates"]);
    assert!(out.starts_with("ID  VERSION"), "{out}");
    assert!(
        out.contains("3   1.5.0    patch  acme-gw     2.0 KiB"),
        "{out}"
    );
}

#[test]
fn deploy_resolves_versions_and_status_shows_counts_and_devices() {
    let (fake, home) = scripted_and_logged_in();
    let out = home.ok(&["deploy", "1.4.1", "--group", "test", "--comment", "try it"]);
    assert!(
        out.contains("deployment 7: update 3 (version 1.5.0) to group test, 3 device(s)"),
        "{out}"
    );
    assert_eq!(
        fake.last("POST", "/api/v1/deployments").json(),
        json!({"update": 2, "group": "test", "devices": null, "comment": "try it"})
    );
    home.ok(&["deploy", "3", "--group", "test"]);
    assert_eq!(fake.last("POST", "/api/v1/deployments").json()["update"], 3);
    home.ok(&["deploy", "3", "--device", "gw-1"]);
    assert_eq!(
        fake.last("POST", "/api/v1/deployments").json()["devices"],
        json!(["dev_a"])
    );
    let o = home.molt(&["deploy", "3"]);
    assert_eq!(o.status.code(), Some(2), "clap wants --group or --device");

    let out = home.ok(&["deploy-to-others", "7", "--group", "prod"]);
    assert!(out.starts_with("deployment 8: "), "{out}");
    assert_eq!(
        fake.last("POST", "/api/v1/deployments/7/deploy-to-others")
            .json(),
        json!({"group": "prod"})
    );

    let out = home.ok(&["status"]);
    assert!(
        out.contains("in progress (1 installing, 2 success)"),
        "{out}"
    );
    assert!(out.contains("canary"), "{out}");
    assert_eq!(
        fake.last("GET", "/api/v1/deployments").target,
        "/api/v1/deployments?limit=20"
    );

    let out = home.ok(&["status", "7"]);
    assert!(
        out.starts_with("deployment 7: update 3 (version 1.5.0) to group test\n"),
        "{out}"
    );
    assert!(
        out.contains("gw-2  installing  after      25%       running the after script"),
        "{out}"
    );
    let v: Value = serde_json::from_str(&home.ok(&["status", "7", "--json"])).unwrap();
    assert_eq!(v["devices"][1]["progress"]["done"], 50);
}

#[test]
fn abort_and_logs_name_the_devices() {
    let (_fake, home) = scripted_and_logged_in();
    let out = home.ok(&["abort", "7"]);
    assert!(
        out.starts_with("deployment 7: 1 device(s) aborted, 1 not\n"),
        "{out}"
    );
    assert!(out.contains("  aborted      gw-2 (dev_b)\n"), "{out}");
    assert!(
        out.contains("  not aborted  gw-1 (dev_a): already committed (success)\n"),
        "{out}"
    );
    // The log by device name, and by id.
    assert_eq!(home.ok(&["logs", "7", "gw-2"]), "fetching\nafter: ok\n");
    assert_eq!(home.ok(&["logs", "7", "dev_b"]), "fetching\nafter: ok\n");
    let err = home.fails(&["logs", "7", "gw-9"]);
    assert!(err.contains("no device `gw-9`"), "{err}");
}

/// A key pair, a small recipe tree and its bundle, in a temporary directory.
struct Release {
    dir: TempDir,
}

const RECIPE: &str = r#"
version = "VERSION"
compatible = "acme-gw"
target_group = "test"
comment = "from the CLI tests"

[[files]]
source = "app"
destination = "/opt/app"

[[files]]
source = "app.env"
destination = "/etc/app.env"

[after]
script = "after.sh"
"#;

impl Release {
    fn new() -> Release {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("app/lib")).unwrap();
        fs::create_dir_all(r.join("app/empty")).unwrap();
        fs::write(r.join("app/main.js"), "console.log('hi');\n").unwrap();
        fs::write(r.join("app/lib/util.js"), "x".repeat(100_000)).unwrap();
        fs::write(r.join("app/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(r.join("app/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("lib/util.js", r.join("app/current")).unwrap();
        fs::write(r.join("app.env"), "PORT=8080\n").unwrap();
        fs::write(r.join("after.sh"), "#!/bin/bash\ntrue\n").unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_molt"))
            .args(["keygen", "-o", s(&r.join("key"))])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        Release { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn recipe(&self, version: &str) -> PathBuf {
        let p = self.path(&format!("recipe-{version}.toml"));
        fs::write(&p, RECIPE.replace("VERSION", version)).unwrap();
        p
    }

    /// Builds the recipe at `version` into a bundle, locally.
    fn bundle(&self, version: &str) -> PathBuf {
        let out = self.path(&format!("app-{version}.molt"));
        let o = Command::new(env!("CARGO_BIN_EXE_molt"))
            .args([
                "bundle",
                "build",
                s(&self.recipe(version)),
                "-o",
                s(&out),
                "--key",
                s(&self.path("key.secret")),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        out
    }

    fn public_key(&self) -> String {
        fs::read_to_string(self.path("key.pub"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

#[test]
fn push_streams_a_bundle_as_it_is() {
    let (fake, home) = scripted_and_logged_in();
    let rel = Release::new();
    let bundle = rel.bundle("1.6.0");
    let out = home.ok(&["update", "push", s(&bundle), "--comment", "fix #2 & more"]);
    assert_eq!(
        out,
        "update 4: version 1.6.0 (patch, 2.0 KiB) for acme-gw\ndeploy it: molt deploy 4 --group GROUP\n"
    );
    let req = fake.last("POST", "/api/v1/updates");
    assert_eq!(
        req.target,
        "/api/v1/updates?comment=fix%20%232%20%26%20more"
    );
    assert_eq!(req.header("content-type"), "application/octet-stream");
    assert_eq!(req.body, fs::read(&bundle).unwrap());

    // A version the controller has already is refused before the upload.
    let before = fake.requests().len();
    let err = home.fails(&["update", "push", s(&rel.bundle("1.5.0"))]);
    assert!(
        err.contains("already has version 1.5.0 (update 3)"),
        "{err}"
    );
    assert!(fake.requests()[before..].iter().all(|r| r.method == "GET"));

    // A broken bundle is refused here.
    let broken = rel.path("broken.molt");
    fs::write(&broken, &fs::read(&bundle).unwrap()[..100]).unwrap();
    let err = home.fails(&["update", "push", s(&broken)]);
    assert!(err.contains("not a usable bundle"), "{err}");
}

/// The parts of a multipart/form-data body: (headers, body) by name.
fn parse_form(content_type: &str, body: &[u8]) -> Vec<(String, HashMap<String, String>, Vec<u8>)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("a boundary")
        .to_owned();
    let delim = format!("--{boundary}");
    let text = body;
    let mut parts = Vec::new();
    let mut at = 0;
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let first = find(text, delim.as_bytes(), 0).unwrap();
    at = at.max(first + delim.len());
    loop {
        if text[at..].starts_with(b"--") {
            break;
        }
        at += 2; // CRLF after the boundary
        let head_end = find(text, b"\r\n\r\n", at).unwrap();
        let head = String::from_utf8(text[at..head_end].to_vec()).unwrap();
        let next = find(text, format!("\r\n{delim}").as_bytes(), head_end + 4).unwrap();
        let content = text[head_end + 4..next].to_vec();
        let headers: HashMap<String, String> = head
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_ascii_lowercase(), v.to_owned())
            })
            .collect();
        let name = headers["content-disposition"]
            .split("name=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned();
        parts.push((name, headers, content));
        at = next + 2 + delim.len();
    }
    parts
}

#[test]
fn push_sends_a_recipe_with_every_file_it_names() {
    let (fake, home) = scripted_and_logged_in();
    let rel = Release::new();
    let recipe = rel.recipe("1.6.0");
    let out = home.ok(&["update", "push", s(&recipe)]);
    assert!(out.starts_with("update 4: version 1.6.0"), "{out}");
    assert!(
        out.ends_with("deploy it: molt deploy 4 --group test\n"),
        "{out}"
    );
    let req = fake.last("POST", "/api/v1/updates/build");
    assert_eq!(req.target, "/api/v1/updates/build");
    let parts = parse_form(req.header("content-type"), &req.body);
    let names: Vec<&str> = parts.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "recipe",
            "after.sh",
            "app",
            "app/current",
            "app/empty",
            "app/lib",
            "app/lib/util.js",
            "app/main.js",
            "app/run.sh",
            "app.env"
        ]
    );
    let part = |n: &str| parts.iter().find(|(name, _, _)| name == n).unwrap();
    assert_eq!(part("recipe").2, fs::read(&recipe).unwrap());
    assert_eq!(part("app/lib/util.js").2, "x".repeat(100_000).as_bytes());
    assert_eq!(part("app/current").1["x-molt-type"], "symlink");
    assert_eq!(part("app/current").2, b"lib/util.js");
    assert_eq!(part("app/run.sh").1["x-molt-mode"], "0755");
    assert_eq!(part("app/empty").1["x-molt-type"], "dir");
    assert_eq!(part("app.env").1["x-molt-type"], "file");
    assert_eq!(
        part("app/lib/util.js").1["content-disposition"],
        "form-data; name=\"app/lib/util.js\"; filename=\"util.js\""
    );

    // A recipe with a mistake is refused here, naming the field, before any upload.
    let bad = rel.path("bad.toml");
    fs::write(
        &bad,
        RECIPE
            .replace("VERSION", "1.7.0")
            .replace("app.env", "gone.env"),
    )
    .unwrap();
    let before = fake.requests().len();
    let err = home.fails(&["update", "push", s(&bad)]);
    assert!(
        err.contains("[[files]] #2") && err.contains("gone.env"),
        "{err}"
    );
    assert_eq!(fake.requests().len(), before);
}

// ---------------------------------------------------------------------------
// Against the real controller.

/// `molt-controller serve` on a free port with a fresh data directory.
struct Controller {
    child: std::process::Child,
    url: String,
    token: String,
    data: TempDir,
}

impl Controller {
    fn start(extra: &[&str]) -> Controller {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(&molt_test_support::bins().controller)
            .args(["serve", "--data", s(data.path()), "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("molt-controller starts");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut url = None;
        let mut seen = String::new();
        for _ in 0..50 {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            seen.push_str(&line);
            if let Some(at) = line.find("listening on ") {
                url = Some(line[at + "listening on ".len()..].trim().to_owned());
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        let url = url.unwrap_or_else(|| panic!("no `listening on` line in:\n{seen}"));
        let token = fs::read_to_string(data.path().join("operator-token"))
            .expect("the operator token is written on first start")
            .trim()
            .to_owned();
        assert!(
            seen.contains(&token),
            "the token is printed on first start:\n{seen}"
        );
        Controller {
            child,
            url,
            token,
            data,
        }
    }

    /// A device of `group` (by its enrollment token), enrolled as the agent would.
    fn enroll(&self, group_token: &str, name: &str) -> (String, String) {
        let v: Value = ureq::post(&format!("{}/api/v1/device/enroll", self.url))
            .send_json(
                json!({"token": group_token, "name": name, "compatible": "acme-gw",
                              "agent_version": "0.1.0", "active_version": "1.0.0"}),
            )
            .expect("enroll")
            .into_json()
            .unwrap();
        (
            v["device_id"].as_str().unwrap().to_owned(),
            v["credential"].as_str().unwrap().to_owned(),
        )
    }

    fn device_post(&self, credential: &str, path: &str, body: Value) -> Value {
        ureq::post(&format!("{}/api/v1/device/{path}", self.url))
            .set("Authorization", &format!("Bearer {credential}"))
            .send_json(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
            .into_json()
            .unwrap()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A logged-in HOME and a controller that trusts `rel`'s key.
fn real(rel: &Release) -> (Controller, Home) {
    let ctl = Controller::start(&["--trusted-key", &rel.public_key()]);
    let home = Home::new();
    let o = home.login(&ctl.url, &ctl.token);
    assert!(o.status.success(), "{}", stderr(&o));
    (ctl, home)
}

/// The first number in `out` after `prefix` (`deployment 7:` → 7).
fn number_after(out: &str, prefix: &str) -> u64 {
    out.split(prefix)
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{prefix}N` in {out}"))
}

#[test]
fn real_controller_login_and_errors() {
    let rel = Release::new();
    let ctl = Controller::start(&[]);
    assert!(ctl.data.path().join("operator-token").exists());
    let home = Home::new();

    // A bad token: message and exit 1, nothing saved.
    let err = refusal(
        "login with a bad token",
        &home.login(&ctl.url, "not-the-token"),
    );
    assert!(err.contains("refused the token"), "{err}");
    assert!(!home.config().exists());
    let o = home.login(&ctl.url, &ctl.token);
    assert!(o.status.success(), "{}", stderr(&o));

    // A bad token later, from the environment.
    let err = home.fails_env(&["status"], &[("MOLT_TOKEN", "nope")]);
    assert!(
        err.contains("the controller refused the token: run molt login"),
        "{err}"
    );

    // The server's own messages come through.
    let err = home.fails(&["status", "99"]);
    assert!(err.contains("(HTTP 404)"), "{err}");
    let err = home.fails(&["groups", "create", "no spaces"]);
    assert!(err.contains("(HTTP 400)"), "{err}");
    let err = home.fails(&["deploy-to-others", "99", "--group", "x"]);
    assert!(err.contains("(HTTP 404)"), "{err}");

    // A bundle signed with a key the controller does not trust.
    let err = home.fails(&["update", "push", s(&rel.bundle("1.0.1"))]);
    assert!(err.contains("(HTTP 400)") && err.contains("key"), "{err}");

    // The controller goes away.
    let url = ctl.url.clone();
    drop(ctl);
    let err = home.fails(&["status"]);
    assert!(
        err.contains(&format!("cannot reach the controller at {url}: ")),
        "{err}"
    );
}

#[test]
fn real_controller_push_deploy_status_abort_logs() {
    let rel = Release::new();
    let (ctl, home) = real(&rel);

    // Groups.
    let out = home.ok(&["groups", "create", "test"]);
    let group_token = out.lines().nth(1).unwrap().to_owned();
    assert!(group_token.starts_with("grp_"), "{out}");
    home.ok(&["groups", "create", "empty"]);
    let err = home.fails(&["groups", "create", "test"]);
    assert!(err.contains("(HTTP 409)"), "{err}");
    let out = home.ok(&["groups"]);
    assert!(out.contains("test") && out.contains(&group_token), "{out}");

    // Bundles built and signed here.
    let out = home.ok(&[
        "update",
        "push",
        s(&rel.bundle("1.1.0")),
        "--comment",
        "local build",
    ]);
    assert!(
        out.starts_with("update ") && out.contains("version 1.1.0"),
        "{out}"
    );
    home.ok(&["update", "push", s(&rel.bundle("1.2.0"))]);
    let err = home.fails(&["update", "push", s(&rel.bundle("1.1.0"))]);
    assert!(err.contains("already has version 1.1.0"), "{err}");
    let v: Value = serde_json::from_str(&home.ok(&["updates", "--json"])).unwrap();
    let versions: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1.2.0", "1.1.0"], "newest first");
    assert_eq!(v[1]["comment"], "local build");
    let out = home.ok(&["updates"]);
    assert!(
        out.contains("1.2.0") && out.contains("local build"),
        "{out}"
    );

    // A group without devices cannot be deployed to.
    let err = home.fails(&["deploy", "1.1.0", "--group", "empty"]);
    assert!(err.contains("(HTTP 400)"), "{err}");

    // Two fake devices in `test`.
    let (dev_a, cred_a) = ctl.enroll(&group_token, "gw-1");
    let (dev_b, _cred_b) = ctl.enroll(&group_token, "gw-2");
    let out = home.ok(&["devices", "--group", "test"]);
    assert!(out.contains(&dev_a) && out.contains("gw-2"), "{out}");
    let out = home.ok(&["devices", "--group", "empty"]);
    assert!(out.starts_with("no devices"), "{out}");

    let out = home.ok(&["deploy", "1.2.0", "--group", "test", "--comment", "canary"]);
    let dep = number_after(&out, "deployment ");
    assert!(
        out.contains("(version 1.2.0) to group test, 2 device(s): 2 pending"),
        "{out}"
    );

    // gw-1 polls, gets the offer, reports progress with a log line, then success.
    let poll = ctl.device_post(
        &cred_a,
        "poll",
        json!({"active_version": "1.0.0", "agent_version": "0.1.0",
               "compatible": "acme-gw", "in_progress": null}),
    );
    assert_eq!(poll["action"], "install", "{poll}");
    let report = |seq: u64, state: &str, phase: &str, log: &str| {
        ctl.device_post(
            &cred_a,
            &format!("deployments/{dep}/report"),
            json!({"seq": seq, "state": state, "phase": phase,
                   "progress": {"done": 512, "total": 1024}, "message": null,
                   "log": log, "active_version": "1.0.0"}),
        )
    };
    report(1, "downloading", "fetching", "fetching bundle\n");
    let out = home.ok(&["status", &dep.to_string()]);
    let line = out
        .lines()
        .find(|l| l.contains("gw-1"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("downloading") && line.contains("fetching") && line.contains("50%"),
        "{out}"
    );
    assert!(out.contains("1 pending, 1 downloading"), "{out}");
    report(2, "success", "committed", "after: ok\n");

    let out = home.ok(&["status"]);
    let line = out
        .lines()
        .find(|l| l.contains("canary"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("in progress (1 pending, 1 success)"), "{out}");
    assert!(line.starts_with(&format!("{dep} ")), "{out}");

    let out = home.ok(&["logs", &dep.to_string(), "gw-1"]);
    assert!(
        out.contains("fetching bundle") && out.contains("after: ok"),
        "{out}"
    );
    assert_eq!(home.ok(&["logs", &dep.to_string(), &dev_a]), out);

    // Abort: gw-2 (pending) stops, gw-1 has committed already.
    let out = home.ok(&["abort", &dep.to_string()]);
    assert!(out.contains("1 device(s) aborted, 1 not"), "{out}");
    assert!(
        out.contains(&format!("aborted      gw-2 ({dev_b})")),
        "{out}"
    );
    assert!(
        out.contains(&format!("not aborted  gw-1 ({dev_a})")),
        "{out}"
    );
    let err = home.fails(&["abort", &dep.to_string()]);
    assert!(err.contains("(HTTP 409)"), "{err}");
    let out = home.ok(&["status"]);
    assert!(out.contains("1 success, 1 aborted"), "{out}");

    // Deploy to others: the empty group has no devices; the test group again works.
    let err = home.fails(&["deploy-to-others", &dep.to_string(), "--group", "empty"]);
    assert!(err.contains("(HTTP 400)"), "{err}");
    let out = home.ok(&["deploy-to-others", &dep.to_string(), "--group", "test"]);
    assert!(number_after(&out, "deployment ") > dep, "{out}");
    assert!(out.contains("version 1.2.0"), "{out}");

    // --json for scripts.
    let v: Value = serde_json::from_str(&home.ok(&["status", "--json"])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let v: Value = serde_json::from_str(&home.ok(&["devices", "--json"])).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
}

#[test]
fn real_controller_phased_deploy_halts_on_a_failing_canary_and_resumes() {
    let rel = Release::new();
    let (ctl, home) = real(&rel);
    let out = home.ok(&["groups", "create", "prod"]);
    let group_token = out.lines().nth(1).unwrap().to_owned();
    home.ok(&["update", "push", s(&rel.bundle("2.0.0"))]);
    let devices: Vec<(String, String)> = (0..4)
        .map(|i| ctl.enroll(&group_token, &format!("gw-{i}")))
        .collect();

    // The group's default plan, then a deploy that names none.
    let err = home.fails(&["groups", "set", "prod"]);
    assert!(err.contains("say what to set"), "{err}");
    let err = home.fails(&["groups", "set", "prod", "--waves", "10%,50%"]);
    assert!(
        err.contains("the last wave must be 100%") && err.contains("HTTP 400"),
        "{err}"
    );
    let out = home.ok(&[
        "groups",
        "set",
        "prod",
        "--canary",
        "gw-2",
        "--waves",
        "50%,100%",
        "--halt-at",
        "1",
        "--soak",
        "10m",
    ]);
    assert_eq!(
        out,
        "group prod: default plan 1 canary, 50%, 100%; soak 10m; halts at 1 failure in all; \
         devices that join it get its latest deployment\n"
    );
    let out = home.ok(&["deploy", "2.0.0", "--group", "prod"]);
    let dep = number_after(&out, "deployment ");
    assert!(
        out.contains("\n  the canaries (1 canary, 50%, 100%); soak 10m; halts at 1 failure in all"),
        "{out}"
    );

    // Only the canary is offered; it fails and the deployment halts.
    let poll = |cred: &str| {
        ctl.device_post(
            cred,
            "poll",
            json!({"active_version": "1.0.0", "agent_version": "0.1.0",
                   "compatible": "acme-gw", "in_progress": null}),
        )
    };
    let offered: Vec<usize> = (0..4)
        .filter(|&i| poll(&devices[i].1)["action"] == "install")
        .collect();
    assert_eq!(offered, [2]);
    ctl.device_post(
        &devices[2].1,
        &format!("deployments/{dep}/report"),
        json!({"seq": 1, "state": "failed", "phase": "after", "progress": null,
               "message": "after: exit status 1", "log": "", "active_version": "1.0.0"}),
    );
    let out = home.ok(&["status", &dep.to_string()]);
    assert!(
        out.contains("status   halted (3 pending, 1 failed)"),
        "{out}"
    );
    assert!(
        out.contains("halted   1 of 4 devices in all failed; the plan halts at 1"),
        "{out}"
    );
    assert!(out.contains(&format!("molt resume {dep}")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("WAVE ")), "{out}");
    let out = home.ok(&["status"]);
    assert!(out.contains("halted (3 pending, 1 failed)"), "{out}");

    // Resumed with a new plan: the others go at once.
    let out = home.ok(&["resume", &dep.to_string(), "--waves", "100%"]);
    assert!(!out.contains("halted:"), "{out}");
    let offered = (0..4)
        .filter(|&i| poll(&devices[i].1)["action"] == "install")
        .count();
    assert_eq!(offered, 3);
    let err = home.fails(&["resume", &dep.to_string()]);
    assert!(
        err.contains("is not halted") && err.contains("HTTP 409"),
        "{err}"
    );

    // A device's page: its versions and the deployments it took.
    let out = home.ok(&["devices", "show", "gw-2"]);
    assert!(
        out.starts_with(&format!("device   gw-2 ({})", devices[2].0)),
        "{out}"
    );
    assert!(
        out.contains("inactive none (no snapshot to roll back to)"),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with(&format!("{dep} ")))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("2.0.0") && line.contains("failed"), "{out}");

    // The stored updates say what used them; one nothing used can be deleted.
    home.ok(&["update", "push", s(&rel.bundle("2.0.1"))]);
    let out = home.ok(&["updates"]);
    assert!(out.contains("USED BY"), "{out}");
    let err = home.fails(&["update", "delete", "2.0.0"]);
    assert!(
        err.contains(&format!("is used by deployment(s) {dep}")),
        "{err}"
    );
    let out = home.ok(&["update", "delete", "2.0.1"]);
    assert!(out.starts_with("deleted update 2 (version 2.0.1)"), "{out}");
    assert!(!home.ok(&["updates"]).contains("2.0.1"));
}

/// `molt bundle inspect --json`'s entries: type, path, mode and content digest (or target).
fn entries(bundle: &Path) -> Vec<(String, String, String, String)> {
    let o = Command::new(env!("CARGO_BIN_EXE_molt"))
        .args(["bundle", "inspect", s(bundle), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_owned(),
                e["path"].as_str().unwrap_or("").to_owned(),
                e["mode"].as_str().unwrap_or("").to_owned(),
                format!("{}{}", e["digest"], e["target"]),
            )
        })
        .collect()
}

#[test]
fn real_controller_builds_a_pushed_recipe_like_a_local_build() {
    let rel = Release::new();
    let (ctl, home) = real(&rel);
    let out = home.ok(&["groups", "create", "test"]);
    let group_token = out.lines().nth(1).unwrap().to_owned();

    let out = home.ok(&[
        "update",
        "push",
        s(&rel.recipe("2.0.0")),
        "--comment",
        "server build",
    ]);
    assert!(out.contains("version 2.0.0"), "{out}");
    assert!(
        out.contains("--group test"),
        "the recipe's target group: {out}"
    );
    let err = home.fails(&["update", "push", s(&rel.recipe("2.0.0"))]);
    assert!(err.contains("already has version 2.0.0"), "{err}");

    // Fetch the built bundle as a device would, and compare it with a local build.
    let (_dev, cred) = ctl.enroll(&group_token, "gw-1");
    let out = home.ok(&["deploy", "2.0.0", "--group", "test"]);
    let dep = number_after(&out, "deployment ");
    let bytes = {
        let mut b = Vec::new();
        ureq::get(&format!(
            "{}/api/v1/device/deployments/{dep}/bundle",
            ctl.url
        ))
        .set("Authorization", &format!("Bearer {cred}"))
        .call()
        .expect("the bundle")
        .into_reader()
        .read_to_end(&mut b)
        .unwrap();
        b
    };
    let served = rel.path("served.molt");
    fs::write(&served, bytes).unwrap();
    let local = rel.bundle("2.0.0");
    let (a, b) = (entries(&served), entries(&local));
    assert_eq!(a, b, "server-built entries differ from a local build");
    let has = |ty: &str, path: &str, mode: &str| {
        a.iter()
            .any(|(t, p, m, _)| t == ty && p == path && m == mode)
    };
    assert!(has("symlink", "opt/app/current", "0777"), "{a:?}");
    assert!(has("dir", "opt/app/empty", "0755"), "{a:?}");
    assert!(has("file", "opt/app/run.sh", "0755"), "{a:?}");
}

// ---------------------------------------------------------------------------
// HTTPS: a controller with a self-signed certificate.

/// A self-signed certificate for 127.0.0.1, written as `NAME.pem` (and its key as
/// `NAME.key`) in `dir`.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let pem = molt_test_support::tls::self_signed_files(dir, name);
    (pem.cert, pem.key)
}

#[test]
fn https_controller_with_a_private_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path(), "controller");
    let ctl = Controller::start(&["--tls-cert", s(&cert), "--tls-key", s(&key)]);
    assert!(ctl.url.starts_with("https://127.0.0.1:"), "{}", ctl.url);
    let home = Home::new();
    // `molt --controller URL --token T EXTRA…`
    let remote = |extra: &[&str]| -> Command {
        let mut c = home.cmd(&["--controller", &ctl.url, "--token", &ctl.token]);
        c.args(extra);
        c
    };
    let run = |extra: &[&str]| remote(extra).output().unwrap();

    // Not trusted without --ca: the message names the controller, the certificate and the fix.
    let err = refusal("groups without --ca", &run(&["groups"]));
    assert!(
        err.contains(&format!("the certificate of the controller at {}", ctl.url)),
        "{err}"
    );
    assert!(
        err.contains("UnknownIssuer") && err.contains("--ca FILE"),
        "{err}"
    );

    // Trusted with --ca, or with MOLT_CA.
    let o = run(&["--ca", s(&cert), "groups"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("no groups yet"), "{}", stdout(&o));
    let o = remote(&["groups", "create", "tls-fleet"])
        .env("MOLT_CA", &cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    // Another certificate as the CA does not vouch for this one: the CA file is named.
    let (other, _) = self_signed(certs.path(), "other");
    let err = refusal(
        "groups with another CA",
        &run(&["--ca", s(&other), "groups"]),
    );
    assert!(
        err.contains("does not verify") && err.contains(s(&other)),
        "{err}"
    );

    // A CA file that is missing, empty or not a certificate is named.
    let missing = certs.path().join("missing.pem");
    let empty = certs.path().join("empty.pem");
    fs::write(&empty, "").unwrap();
    for (file, says) in [
        (
            &missing,
            format!("cannot read CA file {}", missing.display()),
        ),
        (
            &empty,
            format!(
                "CA file {} holds no `BEGIN CERTIFICATE` block",
                empty.display()
            ),
        ),
        (&key, s(&key).to_owned()),
    ] {
        let err = refusal(
            &format!("--ca {}", file.display()),
            &run(&["--ca", s(file), "groups"]),
        );
        assert!(err.contains(&says), "{err}");
    }

    // `molt login --ca` saves the CA beside the URL and token, as an absolute path (given
    // relative here), and the other commands use it from any directory.
    let o = home.login_in(
        &ctl.url,
        &ctl.token,
        &["--ca", "controller.pem"],
        Some(certs.path()),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let saved = fs::read_to_string(home.config()).unwrap();
    assert!(
        saved.contains(&format!("ca = \"{}\"", cert.display())),
        "{saved}"
    );
    let out = home.ok(&["groups"]);
    assert!(out.contains("tls-fleet"), "{out}");
    // Logging in again to the same controller keeps the saved CA.
    let o = home.login(&ctl.url, &ctl.token);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read_to_string(home.config()).unwrap(), saved);

    // Logging in to an https controller without its CA fails and saves nothing.
    let home2 = Home::new();
    let err = refusal("login without --ca", &home2.login(&ctl.url, &ctl.token));
    assert!(err.contains("--ca FILE"), "{err}");
    assert!(!home2.config().exists());
}

#[test]
fn https_controller_serving_a_ca_certificate_is_explained() {
    // What `openssl req -x509` makes by default: a self-signed certificate marked as a CA,
    // which TLS refuses as a server's own certificate whatever the client trusts.
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = molt_test_support::tls::self_signed_ca();
    let (cert_pem, key_pem) = (certs.path().join("ca.pem"), certs.path().join("ca.key"));
    fs::write(&cert_pem, cert.pem()).unwrap();
    fs::write(&key_pem, key.serialize_pem()).unwrap();
    let ctl = Controller::start(&["--tls-cert", s(&cert_pem), "--tls-key", s(&key_pem)]);
    let home = Home::new();
    let err = home.fails(&[
        "--controller",
        &ctl.url,
        "--token",
        &ctl.token,
        "--ca",
        s(&cert_pem),
        "groups",
    ]);
    assert!(
        err.contains(&format!(
            "the certificate of the controller at {} is a CA certificate",
            ctl.url
        )) && err.contains("basicConstraints=critical,CA:FALSE"),
        "{err}"
    );
}

/// Text meant to take over a terminal or forge a line: a newline, CSI and OSC
/// sequences, BEL, a C1 CSI and a bidi override.
const HOSTILE: &str = "gw\nFORGED ROW\u{1b}[2J\u{1b}]0;pwned\u{7}\u{9b}31m\u{202e}xe";

/// Asserts `out` carries no character a terminal acts on, beyond line breaks.
fn inert(out: &str) {
    molt_test_support::escape::assert_inert("output", out);
}

#[test]
fn hostile_strings_from_the_controller_are_escaped_everywhere() {
    let fake = Fake::start(|r| {
        let path = r.target.split('?').next().unwrap();
        let h = HOSTILE;
        match (r.method.as_str(), path) {
            ("GET", "/api/v1/devices") => (
                200,
                json!([{"id": h, "name": h, "group": h, "agent_version": h,
                        "compatible": h, "active_version": h,
                        "last_seen": null, "status": "idle"}]),
            ),
            ("GET", "/api/v1/groups") => (200, json!([group(h, 1)])),
            ("GET", "/api/v1/deployments") => {
                let mut d = deployment(7);
                d["version"] = json!(h);
                d["comment"] = json!(h);
                d["group"] = json!(h);
                (200, json!([d]))
            }
            ("GET", "/api/v1/deployments/7") => {
                let mut d = details(7);
                d["version"] = json!(h);
                d["created_by"] = json!(h);
                d["comment"] = json!(h);
                d["devices"][0]["name"] = json!(h);
                d["devices"][0]["message"] = json!(h);
                (200, d)
            }
            ("GET", "/api/v1/deployments/7/devices/dev_b/log") => {
                (200, Value::String(format!("line one\n{h}\nlast")))
            }
            _ => (404, json!({"error": h})),
        }
    });
    let home = logged_in(&fake);
    for args in [
        &["devices"][..],
        &["groups"],
        &["status"],
        &["status", "7"],
        &["logs", "7", "dev_b"],
    ] {
        let out = home.ok(args);
        inert(&out);
        // A log is lines of the device's own making; everywhere else a name or a
        // message is one line.
        if args[0] != "logs" {
            assert!(
                !out.contains("\nFORGED ROW"),
                "{args:?} forged a line:\n{out}"
            );
        }
    }
    // Tables stay one row per device.
    assert_eq!(home.ok(&["devices"]).lines().count(), 2);
    // The log keeps its own line breaks, and escapes the rest.
    let log = home.ok(&["logs", "7", "dev_b"]);
    assert!(log.starts_with("line one\ngw\nFORGED ROW\\e[2J"), "{log}");
    // JSON stays valid JSON, and as inert.
    let json = home.ok(&["devices", "--json"]);
    inert(&json);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["name"], HOSTILE);
    // An error message from the server.
    let o = home.molt(&["status", "99"]);
    assert!(!o.status.success());
    inert(&stderr(&o));
}

#[test]
fn devices_remove_finds_the_device_by_name_and_says_what_it_did() {
    let (fake, home) = scripted_and_logged_in();
    let out = home.ok(&["devices", "remove", "gw-1"]);
    assert_eq!(
        out,
        "removed device dev_a: its credential is refused from now on; 1 unfinished deployment \
         target(s) cancelled\n"
    );
    assert_eq!(
        fake.last("DELETE", "/api/v1/devices/dev_a").target,
        "/api/v1/devices/dev_a"
    );
    let err = home.fails(&["devices", "remove", "no-such"]);
    assert!(err.contains("no-such"), "{err}");
}
