//! The server tests' harness: the real `molt-controller` on a free loopback port, HTTP helpers, devices, and bundles built with the molt_bundle library.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use molt_engine::testing::noise;
use serde_json::{json, Value};
use tempfile::TempDir;

/// A running `molt-controller serve`, killed (SIGKILL) when dropped.
pub struct Controller {
    child: Child,
    /// `http://127.0.0.1:PORT` (or https).
    pub url: String,
    /// The token it printed, if this start printed one.
    pub printed_token: Option<String>,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Controller {
    /// Starts the server on `data` with `extra` arguments and waits for its address.
    pub fn start(data: &Path, extra: &[&str]) -> Controller {
        Controller::start_in(
            Command::new(env!("CARGO_BIN_EXE_molt-controller")),
            data,
            extra,
        )
    }

    /// [`Controller::start`] under a soft open-file limit of `nofile` (`ulimit -Sn`,
    /// as systemd's default 1024), the hard limit left as it is.
    pub fn start_with_nofile(data: &Path, extra: &[&str], nofile: u64) -> Controller {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(format!("ulimit -Sn {nofile} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_molt-controller"));
        Controller::start_in(sh, data, extra)
    }

    fn start_in(mut cmd: Command, data: &Path, extra: &[&str]) -> Controller {
        let log = data.with_extension("stderr.log");
        let stderr = fs::File::create(&log).unwrap();
        let mut child = cmd
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0", "--poll-interval", "60"])
            .args(extra)
            .env("MOLT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("molt-controller starts");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut printed_token = None;
        let url = loop {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!(
                    "molt-controller exited before listening:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Some(t) = line.trim().strip_prefix("operator token: ") {
                printed_token = Some(t.to_owned());
            }
            if let Some(u) = line.trim().strip_prefix("listening on ") {
                break u.to_owned();
            }
        };
        // Nothing more is printed on stdout; let the pipe drain in the background so
        // a stray line could never block the server.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        Controller {
            child,
            url,
            printed_token,
            log,
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (by pid), as systemd stops it, and waits for it to exit.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "molt-controller stopped with {status}");
    }

    /// The full URL of an API path.
    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
        // A failing test shows what the server logged (the harness captures this).
        if std::thread::panicking() {
            eprintln!(
                "--- molt-controller log ({}):\n{}",
                self.log.display(),
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A temporary data directory (and room beside it for logs and sources).
pub struct Fixture {
    pub dir: TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts a controller on this fixture's data directory; returns it and the operator token.
    pub fn start(&self, extra: &[&str]) -> (Controller, String) {
        self.started(Controller::start(&self.data(), extra))
    }

    /// Starts a controller serving HTTPS with a self-signed certificate for loopback;
    /// returns it, the operator token and a client configuration that trusts exactly
    /// that certificate.
    pub fn start_https(&self) -> (Controller, String, Arc<rustls::ClientConfig>) {
        let pem = molt_test_support::tls::self_signed_files(self.dir.path(), "cert");
        let (c, token) = self.start(&[
            "--tls-cert",
            pem.cert.to_str().unwrap(),
            "--tls-key",
            pem.key.to_str().unwrap(),
        ]);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pem.certified.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (c, token, Arc::new(config))
    }

    /// The operator token of `c`, started on this fixture's data directory.
    pub fn started(&self, c: Controller) -> (Controller, String) {
        let token = fs::read_to_string(self.data().join("operator-token"))
            .unwrap()
            .trim()
            .to_owned();
        (c, token)
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

/// An answer: status, headers we look at, body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub content_type: String,
    pub etag: Option<String>,
    pub content_range: Option<String>,
}

impl Answer {
    /// Asserts this is an error answer with `status` whose message contains `says`.
    pub fn refused(&self, status: u16, says: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert!(self.error().contains(says), "{}", self.error());
    }

    /// Asserts this is an error answer with `status` whose message is exactly `error`.
    pub fn refused_exactly(&self, status: u16, error: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.error(), error);
    }

    /// The body as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` of an error answer, checking it is the JSON `ApiError`.
    pub fn error(&self) -> String {
        assert!(
            self.content_type.starts_with("application/json"),
            "error answer {} is {}",
            self.status,
            self.content_type
        );
        self.json()["error"].as_str().unwrap().to_owned()
    }
}

fn answer(res: Result<ureq::Response, ureq::Error>) -> Answer {
    let res = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("request failed: {e}"),
    };
    let status = res.status();
    let content_type = res.header("content-type").unwrap_or("").to_owned();
    let etag = res.header("etag").map(str::to_owned);
    let content_range = res.header("content-range").map(str::to_owned);
    let mut body = Vec::new();
    res.into_reader().read_to_end(&mut body).unwrap();
    Answer {
        status,
        body,
        content_type,
        etag,
        content_range,
    }
}

/// One request with an optional bearer, extra headers and a body.
pub fn request(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    let mut req = agent().request(method, url);
    if let Some(b) = bearer {
        req = req.set("Authorization", &format!("Bearer {b}"));
    }
    for (k, v) in headers {
        req = req.set(k, v);
    }
    answer(match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    })
}

/// A request whose body is over a limit. The server answers 413 as soon as the
/// limit is passed and closes the connection; a client still sending the rest
/// may then see the reset instead of the answer. That race is the client's, so
/// the request is repeated (up to 5 times) until the answer is read.
pub fn over_limit(url: &str, bearer: &str, content_type: &str, body: &[u8]) -> Answer {
    let mut last = String::new();
    for _ in 0..5 {
        let res = agent()
            .post(url)
            .set("Authorization", &format!("Bearer {bearer}"))
            .set("Content-Type", content_type)
            .send_bytes(body);
        match res {
            Err(ureq::Error::Transport(t)) => last = t.to_string(),
            res => return answer(res),
        }
    }
    panic!("5 requests over the limit to {url} all ended without an answer; last: {last}")
}

pub fn get(url: &str, bearer: &str) -> Answer {
    get_with(url, bearer, &[])
}

/// `GET url` with the request headers `headers` (a range, a validator).
pub fn get_with(url: &str, bearer: &str, headers: &[(&str, &str)]) -> Answer {
    request("GET", url, Some(bearer), headers, None)
}

pub fn post(url: &str, bearer: &str, body: Value) -> Answer {
    let b = body.to_string();
    request(
        "POST",
        url,
        Some(bearer),
        &[("Content-Type", "application/json")],
        Some(b.as_bytes()),
    )
}

/// A POST that must answer `status`; returns its JSON.
pub fn post_ok(url: &str, bearer: &str, body: Value, status: u16) -> Value {
    let a = post(url, bearer, body);
    assert_eq!(
        a.status,
        status,
        "POST {url}: {}",
        String::from_utf8_lossy(&a.body)
    );
    a.json()
}

pub fn get_ok(url: &str, bearer: &str) -> Value {
    let a = get(url, bearer);
    assert_eq!(
        a.status,
        200,
        "GET {url}: {}",
        String::from_utf8_lossy(&a.body)
    );
    a.json()
}

/// Uploads a bundle file.
pub fn upload(c: &Controller, token: &str, bundle: &[u8]) -> Answer {
    request(
        "POST",
        &c.api("/updates?comment=from%20the%20test"),
        Some(token),
        &[("Content-Type", "application/octet-stream")],
        Some(bundle),
    )
}

/// A controller that trusts a fresh key and holds one update signed with it:
/// where the deployment tests start.
pub struct Stored {
    pub f: Fixture,
    pub c: Controller,
    pub token: String,
    /// The bundle as uploaded.
    pub bundle: Vec<u8>,
    /// The update's id.
    pub update: u64,
    /// The key the controller trusts, to sign more bundles with.
    pub key: ed25519_dalek::SigningKey,
}

/// Starts a controller and uploads version `version` of the test bundle to it.
pub fn stored(version: &str) -> Stored {
    let f = Fixture::new();
    let (k, public) = key(f.dir.path(), "k");
    let (c, token) = f.start(&["--trusted-key", &public]);
    let bundle = bundle(f.dir.path(), version, &k);
    let u = upload(&c, &token, &bundle).json();
    let update = u["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no update id in {u}"));
    Stored {
        f,
        c,
        token,
        bundle,
        update,
        key: k,
    }
}

/// Creates group `name` and enrolls `n` `acme-gw` devices in it, named `{prefix}-0`…
pub fn enrolled(c: &Controller, token: &str, name: &str, n: usize, prefix: &str) -> Vec<Dev> {
    let t = group(c, token, name);
    (0..n)
        .map(|i| enroll(c, &t, &format!("{prefix}-{i}"), "acme-gw"))
        .collect()
}

/// An enrolled device.
pub struct Dev {
    pub id: String,
    pub cred: String,
}

/// Creates a group and returns its enrollment token.
pub fn group(c: &Controller, token: &str, name: &str) -> String {
    let g = post_ok(&c.api("/groups"), token, json!({ "name": name }), 201);
    g["enrollment_token"].as_str().unwrap().to_owned()
}

/// Makes group `test` and enrolls in it one `acme-gw` device named `name`: where most
/// tests start.
pub fn one_test_device(c: &Controller, token: &str, name: &str) -> Dev {
    let t = group(c, token, "test");
    enroll(c, &t, name, "acme-gw")
}

pub fn enroll(c: &Controller, enroll_token: &str, name: &str, compatible: &str) -> Dev {
    let body = json!({"token": enroll_token, "name": name, "compatible": compatible,
                      "agent_version": "0.1.0", "active_version": "factory"});
    let a = request(
        "POST",
        &c.api("/device/enroll"),
        None,
        &[],
        Some(body.to_string().as_bytes()),
    );
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    let v = a.json();
    Dev {
        id: v["device_id"].as_str().unwrap().to_owned(),
        cred: v["credential"].as_str().unwrap().to_owned(),
    }
}

pub fn poll(c: &Controller, d: &Dev, in_progress: Option<u64>) -> Value {
    post_ok(
        &c.api("/device/poll"),
        &d.cred,
        json!({"active_version": "factory", "agent_version": "0.1.0",
               "compatible": "acme-gw", "in_progress": in_progress}),
        200,
    )
}

pub fn report(c: &Controller, d: &Dev, dep: u64, seq: u64, state: &str, log: &str) -> Answer {
    post(
        &c.api(&format!("/device/deployments/{dep}/report")),
        &d.cred,
        json!({"seq": seq, "state": state, "phase": "fetching",
               "progress": {"done": 10, "total": 100}, "message": null,
               "log": log, "active_version": "factory"}),
    )
}

/// The state of `device` in a deployment's details.
pub fn state_of(details: &Value, device: &str) -> String {
    details["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == device)
        .map(|d| d["state"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("{device} not in {details}"))
}

/// A signing key pair: the secret and the public key in hex.
pub fn key(dir: &Path, name: &str) -> (ed25519_dalek::SigningKey, String) {
    let g = molt_bundle::keys::generate(&dir.join(name)).unwrap();
    let secret = molt_bundle::keys::read_secret(&g.secret).unwrap();
    let public = fs::read_to_string(&g.public).unwrap().trim().to_owned();
    (secret, public)
}

/// Builds a bundle of `version` for `acme-gw` holding a 200 KiB file; returns its bytes.
pub fn bundle(dir: &Path, version: &str, key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    let src = dir.join(format!("src-{version}"));
    fs::create_dir_all(&src).unwrap();
    // Not compressible, so the bundle is big enough for ranges to mean something.
    fs::write(src.join("app.bin"), noise(1, 200 * 1024)).unwrap();
    fs::write(
        src.join("recipe.toml"),
        format!(
            "version = \"{version}\"\ncompatible = \"acme-gw\"\ncomment = \"built in the test\"\n\
             [[files]]\nsource = \"app.bin\"\ndestination = \"/opt/app/app.bin\"\n\
             [after]\nrun = \"systemctl start app\"\n"
        ),
    )
    .unwrap();
    let out = dir.join(format!("{version}.bundle"));
    molt_bundle::build::build(
        &src.join("recipe.toml"),
        &out,
        std::slice::from_ref(key),
        molt_bundle::build::Options::new(
            molt_bundle::build::Check::Chain,
            molt_bundle::recipe::BuildTime::now(),
        ),
        &molt_bundle::progress::Silent,
    )
    .unwrap();
    fs::read(out).unwrap()
}

/// Names of the files in a directory.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
