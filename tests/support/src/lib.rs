//! What molt's test suites share, so that no suite keeps a copy: the bundle builder, the raw assembler and parser, keys, TLS certificates, loop-mounted scratch file systems, the root check, and the real controller, agents and CLI as processes on loopback, each device in its own temp root.
//!
//! The modules are light (the engine, ed25519, BLAKE3, rcgen, rustix, tempfile)
//! and never link the agent or the controller crates: the engine's own tests use
//! them. What a suite needs of one crate alone stays in that suite.
//!
//! Root-only tests start with `if !root_or_skip() { return; }`; without root the
//! test is logged to `$MOLT_TEST_SKIP_LOG`, and `cargo xtask ci` counts it as
//! skipped, not passed ([`root`]).
//!
//! Every process a test starts is owned by a guard that kills it (by its pid) when
//! dropped, so a failing test leaves nothing running. Binaries are built once per
//! test process with `cargo build` (a no-op when `cargo test --workspace` already
//! built them).

pub mod bundle;
pub mod escape;
pub mod http;
pub mod keys;
pub mod raw;
pub mod root;
pub mod scratch;
pub mod tls;
pub mod tree;

pub use molt_engine::testing::noise;
pub use root::root_or_skip;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    // This crate is tests/support/.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Paths of the three binaries, built on first use.
pub struct Bins {
    /// The operator CLI.
    pub molt: PathBuf,
    /// The server.
    pub controller: PathBuf,
    /// The device agent.
    pub agent: PathBuf,
}

/// Builds (if needed) and locates `molt`, `molt-controller` and `molt-agent`, with
/// the profile and target directory of the test executable asking, so `cargo test
/// --release` runs release binaries and never a stale build of another profile.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        // This test executable lives in <target>/<profile dir>/deps/.
        let exe = std::env::current_exe().expect("current_exe");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target profile dir")
            .to_path_buf();
        let target = dir.parent().expect("target dir");
        let profile = profile_of(&dir);
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(workspace())
            .args(["build", "--bins", "--profile", profile, "--target-dir"])
            .arg(target);
        for package in ["molt-cli", "molt-controller", "molt-agent"] {
            build.args(["-p", package]);
        }
        let st = build.status().expect("cargo build of the binaries");
        assert!(st.success(), "cargo build of the binaries failed");
        Bins {
            molt: dir.join("molt"),
            controller: dir.join("molt-controller"),
            agent: dir.join("molt-agent"),
        }
    })
}

/// The cargo profile whose output directory is `dir`: cargo names the `dev`
/// profile's directory `debug`, every other profile's after the profile.
fn profile_of(dir: &Path) -> &str {
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(name) => name,
    }
}

/// A child process killed (SIGKILL, by pid) when dropped.
pub struct Proc {
    child: Option<Child>,
    /// What it is, for messages.
    pub name: String,
}

impl Proc {
    /// Wraps a started child.
    pub fn new(name: impl Into<String>, child: Child) -> Proc {
        Proc {
            child: Some(child),
            name: name.into(),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for it to exit (at most `limit`); its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.child = None;
                    return st.code();
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` every 100 ms until it returns `Some`, or panics with `what` after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A running controller on a temp data dir.
pub struct Controller {
    /// Its data directory (kept across restarts).
    pub data: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The operator token.
    pub token: String,
    /// The process.
    pub proc: Proc,
    args: Vec<String>,
    listen: String,
}

impl Controller {
    /// Starts `molt-controller serve` on a free port with `extra` arguments.
    pub fn start(data: &Path, extra: &[&str]) -> Controller {
        Controller::spawn(
            data,
            "127.0.0.1:0",
            extra.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn spawn(data: &Path, listen: &str, args: Vec<String>) -> Controller {
        let mut child = Command::new(&bins().controller)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(listen)
            .args(&args)
            .env("MOLT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start molt-controller");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the controller printed no `listening on` line");
        let token = fs::read_to_string(data.join("operator-token"))
            .expect("operator-token")
            .trim()
            .to_string();
        let port = url.rsplit(':').next().unwrap_or("0").to_string();
        Controller {
            data: data.to_path_buf(),
            url,
            token,
            proc: Proc::new("molt-controller", child),
            args,
            listen: format!("127.0.0.1:{port}"),
        }
    }

    /// `kill -9`, then start again on the same data dir and port.
    pub fn crash_and_restart(&mut self) {
        self.proc.kill9();
        let next = Controller::spawn(&self.data, &self.listen, self.args.clone());
        *self = next;
    }

    /// GET an operator route; the JSON answer.
    pub fn get(&self, path: &str) -> serde_json::Value {
        ureq::get(&format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .into_json()
            .expect("json")
    }

    /// The `molt` CLI against this controller (env carries URL and token; HOME is temp).
    pub fn molt(&self, args: &[&str]) -> Out {
        molt_with(
            args,
            &[("MOLT_CONTROLLER", &self.url), ("MOLT_TOKEN", &self.token)],
        )
    }
}

/// A command's exit code and output.
#[derive(Debug)]
pub struct Out {
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code(),
            stdout: stdout_of(&o),
            stderr: stderr_of(&o),
        }
    }

    /// Panics with the output unless the exit code was 0; returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(
            self.code,
            Some(0),
            "failed:\n{}\n{}",
            self.stdout,
            self.stderr
        );
        self.stdout
    }
}

/// What a finished process wrote to standard output, as text.
pub fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What a finished process wrote to standard error, as text.
pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `p` as an argument string (test paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Runs `molt` with `env` and a temp HOME (no saved login leaks between tests).
pub fn molt_with(args: &[&str], env: &[(&str, &str)]) -> Out {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    let home = HOME.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let o = Command::new(&bins().molt)
        .args(args)
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run molt");
    Out::from(o)
}

/// A signing key made with `molt keygen`: (secret file, public hex).
pub fn keygen(dir: &Path) -> (PathBuf, String) {
    let prefix = dir.join("release");
    molt_with(&["keygen", "-o", prefix.to_str().unwrap_or_default()], &[]).ok();
    let public = fs::read_to_string(dir.join("release.pub"))
        .expect("release.pub")
        .trim()
        .to_string();
    (dir.join("release.secret"), public)
}

/// `molt bundle build RECIPE -o OUT --key SECRET`; panics unless it succeeds.
pub fn molt_build(recipe: &Path, out: &Path, secret: &Path) {
    let path = |p: &Path| p.to_str().expect("UTF-8 path").to_string();
    let (recipe, out, secret) = (path(recipe), path(out), path(secret));
    molt_with(
        &["bundle", "build", &recipe, "-o", &out, "--key", &secret],
        &[],
    )
    .ok();
}

/// The board name every test device and recipe uses.
pub const BOARD: &str = "molt-e2e-board";

/// A device: a temp root with an agent config, enrolled and run as `molt-agent run`.
pub struct Device {
    /// The device's root (config, data dir and markers below it).
    pub root: tempfile::TempDir,
    /// The daemon, while running.
    pub daemon: Option<Proc>,
    /// The name it enrolls with.
    pub name: String,
}

impl Device {
    /// A device trusting `public` (hex), with a reboot command that only leaves a marker.
    pub fn new(name: &str, public: &str) -> Device {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path().display().to_string();
        fs::create_dir_all(root.path().join("markers")).expect("markers");
        fs::write(
            root.path().join("agent.toml"),
            format!(
                "root = \"{r}\"\ncompatible = \"{BOARD}\"\ntrusted_keys = [\"{public}\"]\n\
                 reboot_command = \"touch {r}/markers/rebooted\"\npoll_interval_secs = 1\n\
                 \n[timeouts]\ncommand_secs = 30\ndownload_stall_secs = 10\n"
            ),
        )
        .expect("agent.toml");
        Device {
            root,
            daemon: None,
            name: name.to_string(),
        }
    }

    fn agent(&self) -> Command {
        let mut c = Command::new(&bins().agent);
        c.arg("--config")
            .arg(self.root.path().join("agent.toml"))
            .env("MOLT_LOG", "info");
        c
    }

    /// `molt-agent enroll`.
    pub fn enroll(&self, url: &str, token: &str) {
        let o = self
            .agent()
            .args([
                "enroll",
                "--controller",
                url,
                "--token",
                token,
                "--name",
                &self.name,
            ])
            .output()
            .expect("enroll");
        let out = Out::from(o);
        assert_eq!(
            out.code,
            Some(0),
            "enroll {}: {}{}",
            self.name,
            out.stdout,
            out.stderr
        );
    }

    /// Starts `molt-agent run` in the background, its output in `<root>/agent.out`.
    pub fn run(&mut self) {
        let log = fs::File::create(self.root.path().join("agent.out")).expect("agent.out");
        let err = log.try_clone().expect("clone");
        let child = self
            .agent()
            .arg("run")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("molt-agent run");
        self.daemon = Some(Proc::new(format!("agent {}", self.name), child));
    }

    /// `molt-agent install FILE`, as an operator at the device would type it.
    pub fn install(&self, bundle: &Path) -> Out {
        let o = self
            .agent()
            .arg("install")
            .arg(bundle)
            .stdin(Stdio::null())
            .output()
            .expect("molt-agent install");
        Out::from(o)
    }

    /// `kill -9` of the daemon.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.daemon.take() {
            p.kill9();
        }
    }

    /// The daemon's output so far.
    pub fn output(&self) -> String {
        fs::read_to_string(self.root.path().join("agent.out")).unwrap_or_default()
    }

    /// The agent's data directory.
    pub fn data(&self) -> PathBuf {
        self.root.path().join("var/lib/molt")
    }

    /// Where `current` points (`slots/a` or `slots/b`), if it exists.
    pub fn current(&self) -> Option<PathBuf> {
        fs::read_link(self.data().join("current")).ok()
    }

    /// A file of the active snapshot.
    pub fn read(&self, rel: &str) -> Option<String> {
        let cur = self.current()?;
        fs::read_to_string(self.data().join(cur).join(rel)).ok()
    }

    /// A marker file scripts may touch.
    pub fn marker(&self, name: &str) -> PathBuf {
        self.root.path().join("markers").join(name)
    }

    /// The install log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.data().join("install.log")).unwrap_or_default()
    }
}

/// A TCP forwarder on 127.0.0.1 that passes everything through, slowing what the
/// server sends to `bytes_per_sec` while `throttle` is set: a slow network between
/// devices and the controller.
pub struct SlowLink {
    /// `http://127.0.0.1:PORT`, to give devices instead of the controller's URL.
    pub url: String,
    /// While true, server-to-client bytes are throttled.
    pub throttle: Arc<AtomicBool>,
}

impl SlowLink {
    /// Forwards to `upstream` (`http://host:port`).
    pub fn new(upstream: &str, bytes_per_sec: usize) -> SlowLink {
        let target = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let throttle = Arc::new(AtomicBool::new(true));
        let t = throttle.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                thread::spawn(move || pipe(client, server, None));
                let t = t.clone();
                thread::spawn(move || pipe(s2, c2, Some((t, bytes_per_sec))));
            }
        });
        SlowLink { url, throttle }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, slow: Option<(Arc<AtomicBool>, usize)>) {
    let mut buf = [0u8; 4096];
    loop {
        let cap = match &slow {
            Some((on, rate)) if on.load(Ordering::Relaxed) => (*rate / 10).clamp(1, buf.len()),
            _ => buf.len(),
        };
        let n = match from.read(&mut buf[..cap]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some((on, _)) = &slow {
            if on.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
