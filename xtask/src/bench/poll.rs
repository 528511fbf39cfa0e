//! `bench poll`: `wrk` against `POST /device/poll` with 10,000 enrolled devices vs nginx serving a static poll answer, each server pinned to core 0, plus the process guards, nginx set-up and tiny HTTP client `bench serve` shares.
//!
//! Both servers run on core 0 (`taskset -c 0`: molt-controller's tokio runtime
//! then has one worker; nginx has one worker process) and `wrk` runs on core 1,
//! so the figure is requests per second per server core. wrk's Lua script rotates
//! across every device's credential, so molt looks up a different device on
//! every request, as a fleet would make it do. nginx gets the cheapest request
//! that carries the same credential header (a `GET` without a body), which keeps
//! the baseline as strong as a static server can be.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::util::{interleave, quiet, Side, Stats};
use super::{Bins, Ctx, Outcome, Row, Verdict};
use crate::display;

/// Devices enrolled before the measurement.
const DEVICES: usize = 10_000;
/// Seconds of one wrk run.
const SECONDS: u32 = 4;
/// wrk's open connections: a fleet's polls arrive on many connections at once.
const CONNECTIONS: u32 = 32;
/// The baseline's answer: a realistic poll answer (an install offer), 300 bytes.
const ANSWER: &str = r#"{"action":"install","deployment":1842,"version":"2026.11.27-1","bundle_path":"/api/v1/device/deployments/1842/bundle","bundle_size":122683392,"bundle_blake3":"9a3f6c2e8b1d4f7a0c5e2b9d8f1a6c3e7b4d0f2a8c6e1b5d9f3a7c0e4b2d6f8a","poll_interval_secs":5,"_":"padding to 300 bytes........................."}"#;
/// The body molt's agent sends (agent-linux/src/client.rs: `PollRequest` as JSON).
const POLL_BODY: &str =
    r#"{"active_version":"1.0.0","agent_version":"0.1.0","compatible":"bench","in_progress":null}"#;

/// A child process stopped when dropped, by its pid: SIGTERM, then SIGKILL (and
/// SIGKILL to its children, e.g. nginx's worker) if it has not exited after 5 s.
pub(crate) struct Proc {
    child: Child,
    name: &'static str,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the end of its log if it has exited.
    pub fn check(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited ({status}):\n{}", self.name, self.tail());
        }
        Ok(())
    }

    fn tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops it: SIGTERM lets molt-controller flush and nginx take its worker down.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = self.child.id().to_string();
        let children =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        for c in children.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", c]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Fails with an installation hint unless every program is installed.
pub(crate) fn require(programs: &[(&str, &str)]) -> Result<()> {
    for (program, package) in programs {
        let found = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|d| d.join(program).is_file())
        });
        if !found {
            bail!("`{program}` is missing: `apt-get install -y {package}`");
        }
    }
    Ok(())
}

/// A free loopback port (bound, then released for the server to take).
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running molt-controller with its address and operator token.
pub(crate) struct Controller {
    pub proc: Proc,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The operator token.
    pub token: String,
}

impl Controller {
    /// Starts `taskset -c CORE molt-controller serve` on a fresh data directory `data`.
    pub fn start(bins: &Bins, data: &Path, core: &str, extra: &[&str]) -> Result<Controller> {
        if data.exists() {
            fs::remove_dir_all(data)
                .with_context(|| format!("cannot remove {}", data.display()))?;
        }
        fs::create_dir_all(data)?;
        let log = data.with_extension("log");
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", core])
            .arg(&bins.controller)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("MOLT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log)?);
        println!("$ {}", display(&cmd));
        // taskset execs the server, so the child's pid is the server's.
        let mut child = cmd.spawn().context("cannot start molt-controller")?;
        let stdout = child.stdout.take().context("controller stdout")?;
        let mut proc = Proc {
            child,
            name: "molt-controller",
            log,
        };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(30)) else {
            proc.check()?;
            bail!("molt-controller did not start listening:\n{}", proc.tail());
        };
        let token = fs::read_to_string(data.join("operator-token"))
            .context("cannot read the controller's operator token")?
            .trim()
            .to_string();
        Ok(Controller { proc, addr, token })
    }

    /// `molt ARGS` against this controller; returns its stdout.
    pub fn molt(&self, bins: &Bins, args: &[&str]) -> Result<String> {
        quiet(
            Command::new(&bins.molt)
                .args(args)
                .env("MOLT_CONTROLLER", format!("http://{}", self.addr))
                .env("MOLT_TOKEN", &self.token),
        )
    }

    /// Creates group `name` with the CLI and enrolls `n` devices in it through the
    /// device API, as agents do; returns their credentials.
    pub fn enroll(&self, bins: &Bins, group: &str, n: usize) -> Result<Vec<String>> {
        let out = self.molt(bins, &["groups", "create", group, "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let token = v["enrollment_token"]
            .as_str()
            .with_context(|| format!("no enrollment token in {v}"))?
            .to_string();
        let t = Instant::now();
        let mut http = Http::connect(&self.addr)?;
        let mut creds = Vec::with_capacity(n);
        for i in 0..n {
            let body = serde_json::json!({
                "token": token, "name": format!("bench-{i:05}"), "compatible": "bench",
                "agent_version": "0.1.0", "active_version": "1.0.0",
            })
            .to_string();
            let (status, answer) = http.call("POST", "/api/v1/device/enroll", None, &body)?;
            if status != 201 {
                bail!(
                    "enroll answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                );
            }
            let v: serde_json::Value = serde_json::from_slice(&answer)?;
            creds.push(
                v["credential"]
                    .as_str()
                    .with_context(|| format!("no credential in {v}"))?
                    .to_string(),
            );
        }
        println!("enrolled {n} devices in {:.1} s", t.elapsed().as_secs_f64());
        Ok(creds)
    }
}

/// A keep-alive HTTP/1.1 connection: just enough client for set-up calls.
pub(crate) struct Http {
    stream: BufReader<TcpStream>,
    addr: String,
}

impl Http {
    /// Connects to `addr` (`host:port`).
    pub fn connect(addr: &str) -> Result<Http> {
        let s = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Http {
            stream: BufReader::with_capacity(256 * 1024, s),
            addr: addr.to_string(),
        })
    }

    /// Sends a request with an optional bearer credential and a JSON body (if not
    /// empty) and returns the status and the body.
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> Result<(u16, Vec<u8>)> {
        self.send(method, path, bearer, body)?;
        let (status, len) = self.head()?;
        let mut out = vec![0u8; usize::try_from(len)?];
        self.stream.read_exact(&mut out)?;
        Ok((status, out))
    }

    /// Sends a request (see [`Http::call`]) without reading the answer.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: &str,
    ) -> Result<()> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(b) = bearer {
            let _ = write!(req, "Authorization: Bearer {b}\r\n");
        }
        if !body.is_empty() {
            let _ = write!(
                req,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.get_mut().write_all(req.as_bytes())?;
        Ok(())
    }

    /// Reads an answer's head: its status and `Content-Length` (required).
    pub fn head(&mut self) -> Result<(u16, u64)> {
        let mut status = None;
        let mut len = None;
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line)? == 0 {
                bail!("{} closed the connection", self.addr);
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if status.is_none() {
                status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
            } else if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().ok();
                }
            }
        }
        let status = status.with_context(|| format!("no HTTP status from {}", self.addr))?;
        let len = len.with_context(|| format!("no Content-Length from {}", self.addr))?;
        Ok((status, len))
    }

    /// Reads `len` body bytes into `buf`-sized pieces and drops them.
    pub fn discard(&mut self, mut len: u64, buf: &mut [u8]) -> Result<()> {
        while len > 0 {
            let want = usize::try_from(len.min(buf.len() as u64))?;
            let n = self.stream.read(&mut buf[..want])?;
            if n == 0 {
                bail!("{} closed the connection with {len} bytes to go", self.addr);
            }
            len -= n as u64;
        }
        Ok(())
    }
}

/// nginx with one worker on `core`, on a free loopback port, serving `root`;
/// its configuration, pid file and logs live in `dir`.
pub(crate) struct Nginx {
    pub proc: Proc,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The configuration file it was started with.
    pub conf: PathBuf,
}

impl Nginx {
    pub fn start(dir: &Path, root: &Path, core: &str) -> Result<Nginx> {
        require(&[("nginx", "nginx-light")])?;
        fs::create_dir_all(dir.join("tmp"))?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        // A production-shaped static server: one worker, sendfile, no access log
        // (molt logs nothing per request either), and keep-alive connections that
        // are not closed after nginx's default 1,000 requests.
        let mut text = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n\
               keepalive_requests 1000000;\n  keepalive_timeout 65;\n\
               types {{ application/json json; application/octet-stream molt; }}\n\
               default_type application/octet-stream;\n\
               client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
               fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n\
               scgi_temp_path {d}/tmp/scgi;\n\
               server {{\n    listen {addr};\n    root {};\n    location / {{ }}\n  }}\n}}\n",
            root.display()
        );
        // As root, nginx's worker would switch to `nobody`, which may not read the files.
        if super::util::is_root() {
            text.insert_str(0, "user root root;\n");
        }
        fs::write(&conf, text)?;
        let log = dir.join("nginx.stderr.log");
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", core, "nginx", "-e"])
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?);
        println!("$ {}", display(&cmd));
        let child = cmd.spawn().context("cannot start nginx")?;
        let mut proc = Proc {
            child,
            name: "nginx",
            log,
        };
        let t = Instant::now();
        while TcpStream::connect(&addr).is_err() {
            proc.check()?;
            if t.elapsed() > Duration::from_secs(10) {
                bail!("nginx did not start listening on {addr}:\n{}", proc.tail());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx { proc, addr, conf })
    }
}

/// What one wrk run measured.
#[derive(Clone, Copy)]
struct WrkRun {
    rps: f64,
    p99_ms: f64,
}

/// The wrk script: every request is prepared once in `init` (one per credential),
/// `request` only picks the next, so wrk spends the same little on both servers;
/// `done` prints one line for the bench to parse.
const LUA: &str = r#"-- Written by `cargo xtask bench poll`: rotate across device credentials.
-- args: METHOD CREDENTIALS_FILE [JSON_BODY]
local reqs, n, i = {}, 0, 0
function init(args)
  local method, body = args[1], args[3]
  for line in io.lines(args[2]) do
    local h = { ["Authorization"] = "Bearer " .. line }
    if body then h["Content-Type"] = "application/json" end
    n = n + 1
    reqs[n] = wrk.format(method, nil, h, body)
  end
end
function request()
  i = i % n + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d p99_us=%d errors=%d\n",
    summary.requests, summary.duration, latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
"#;

/// `taskset -c 1 wrk … -s poll.lua URL -- ARGS`.
fn wrk(script: &Path, url: &str, args: &[&str]) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "1", "wrk", "-t1"])
        .arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-d{SECONDS}s"))
        .args(["--timeout", "5s", "-s"])
        .arg(script)
        .arg(url)
        .arg("--")
        .args(args);
    c
}

/// Runs wrk and parses the script's `BENCH` line; fails on any error or non-2xx answer.
fn run_wrk(cmd: &mut Command) -> Result<WrkRun> {
    let out = quiet(cmd)?;
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .with_context(|| format!("no BENCH line in wrk's output:\n{out}"))?;
    let field = |k: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {k} in `{line}`"))
    };
    if field("errors")? > 0.0 {
        bail!("wrk saw errors or non-2xx answers:\n{out}");
    }
    Ok(WrkRun {
        rps: field("requests")? / (field("duration_us")? / 1e6),
        p99_ms: field("p99_us")? / 1e3,
    })
}

const WHAT: &str = "`POST /device/poll` req/s, 10,000 devices, server on 1 core";
const BASE: &str = "nginx (1 worker, same core): a static 300-byte JSON answer";
const P99_WHAT: &str = "`POST /device/poll` p99 latency under that load";

/// `bench poll`.
pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        return Ok(Outcome::skipped(
            "poll",
            WHAT,
            BASE,
            "≥ 0.50×, p99 ≤ 10 ms",
            "needs 2 cores (server on one, wrk on the other)",
        ));
    }
    require(&[
        ("wrk", "wrk"),
        ("nginx", "nginx-light"),
        ("taskset", "util-linux"),
    ])?;
    let bins = ctx.bins()?;
    let work = ctx.work("poll")?;

    let ctl = Controller::start(
        &bins,
        &work.join("controller"),
        "0",
        &["--poll-interval", "60"],
    )?;
    let creds = ctl.enroll(&bins, "bench", DEVICES)?;
    let cred_file = work.join("credentials.txt");
    fs::write(&cred_file, creds.join("\n") + "\n")?;
    // Once, untimed: molt answers the poll the agent sends, and nginx the file.
    let (status, answer) = Http::connect(&ctl.addr)?.call(
        "POST",
        "/api/v1/device/poll",
        Some(&creds[0]),
        POLL_BODY,
    )?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if status != 200 || !answer.contains("\"action\":\"none\"") {
        bail!("molt's poll answered {status}: {answer}");
    }
    let www = work.join("www");
    fs::create_dir_all(&www)?;
    fs::write(www.join("poll.json"), ANSWER)?;
    let nginx = Nginx::start(&work.join("nginx"), &www, "0")?;
    let (status, body) =
        Http::connect(&nginx.addr)?.call("GET", "/poll.json", Some(&creds[0]), "")?;
    if status != 200 || body != ANSWER.as_bytes() {
        bail!(
            "nginx answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    let script = work.join("poll.lua");
    fs::write(&script, LUA)?;
    let cred_arg = cred_file.to_string_lossy().into_owned();
    let molt_url = format!("http://{}/api/v1/device/poll", ctl.addr);
    let nginx_url = format!("http://{}/poll.json", nginx.addr);
    let mut molt_cmd = wrk(&script, &molt_url, &["POST", &cred_arg, POLL_BODY]);
    let mut nginx_cmd = wrk(&script, &nginx_url, &["GET", &cred_arg]);
    let (mut molt_runs, mut nginx_runs) = (Vec::new(), Vec::new());
    // interleave() times seconds; here each side reports its requests per second
    // (and keeps its p99 aside), which the round lines print as `s`.
    interleave(
        "poll (req/s)",
        ctx.rounds,
        &mut [
            Side {
                name: "molt",
                run: Box::new(|| {
                    let r = run_wrk(&mut molt_cmd)?;
                    molt_runs.push(r);
                    Ok(r.rps)
                }),
            },
            Side {
                name: "nginx",
                run: Box::new(|| {
                    let r = run_wrk(&mut nginx_cmd)?;
                    nginx_runs.push(r);
                    Ok(r.rps)
                }),
            },
        ],
    )?;
    let mut ctl = ctl;
    ctl.proc.check()?;
    let mut nginx = nginx;
    nginx.proc.check()?;
    let nginx_conf = fs::read_to_string(&nginx.conf).unwrap_or_default();
    drop(nginx);
    drop(ctl);

    // The first run of each side was the warm-up.
    let stats = |runs: &[WrkRun], f: fn(&WrkRun) -> f64| {
        Stats::of(&runs[1..].iter().map(f).collect::<Vec<_>>())
    };
    let (m_rps, n_rps) = (stats(&molt_runs, |r| r.rps), stats(&nginx_runs, |r| r.rps));
    let (m_p99, n_p99) = (
        stats(&molt_runs, |r| r.p99_ms),
        stats(&nginx_runs, |r| r.p99_ms),
    );
    let ratio = m_rps.median / n_rps.median;
    let mut details = format!(
        "| server | req/s median (min–max) | p99 ms median (min–max) |\n|---|---:|---:|\n\
         | molt-controller `POST /api/v1/device/poll` | {} | {} |\n\
         | nginx `GET /poll.json` ({} bytes) | {} | {} |\n\n",
        m_rps.show(0),
        m_p99.show(2),
        ANSWER.len(),
        n_rps.show(0),
        n_p99.show(2),
    );
    let _ = write!(
        details,
        "{DEVICES} devices enrolled through `POST /api/v1/device/enroll` before the runs; \
         wrk rotates across all their credentials (each request authenticates a different \
         device; molt answers `{{\"action\":\"none\",…}}` and records the device as seen). \
         Each run is {SECONDS} s on {CONNECTIONS} keep-alive connections; the servers are pinned \
         to core 0 and wrk to core 1. nginx gets a `GET` with the same `Authorization` header \
         and no body.\n\n\
         Commands (in target/bench/poll/; `poll.lua` prepares one request per credential and \
         prints requests, duration and p99):\n\n```sh\n\
         taskset -c 0 molt-controller serve --data controller --listen 127.0.0.1:0 --poll-interval 60\n\
         molt groups create bench   # then {DEVICES} × POST /api/v1/device/enroll\n\
         taskset -c 0 nginx -e nginx/error.log -c nginx/nginx.conf\n\
         # each round, both sides, alternating which goes first:\n\
         taskset -c 1 wrk -t1 -c{CONNECTIONS} -d{SECONDS}s --timeout 5s -s poll.lua \
         http://127.0.0.1:PORT/api/v1/device/poll -- POST credentials.txt '{POLL_BODY}'\n\
         taskset -c 1 wrk -t1 -c{CONNECTIONS} -d{SECONDS}s --timeout 5s -s poll.lua \
         http://127.0.0.1:PORT/poll.json -- GET credentials.txt\n```\n\n\
         nginx.conf:\n\n```nginx\n{}```\n",
        nginx_conf.replace(&work.display().to_string(), "target/bench/poll")
    );
    Ok(Outcome {
        rows: vec![
            Row {
                id: "poll".into(),
                what: WHAT.into(),
                baseline: BASE.into(),
                result: format!(
                    "**{ratio:.2}×** req/s ({:.0} vs {:.0})",
                    m_rps.median, n_rps.median
                ),
                target: "≥ 0.50×".into(),
                verdict: Verdict::from(ratio >= 0.5),
            },
            Row {
                id: "poll-p99".into(),
                what: P99_WHAT.into(),
                baseline: "nginx's p99 in the same runs".into(),
                result: format!("**{:.2} ms** (nginx {:.2} ms)", m_p99.median, n_p99.median),
                target: "≤ 10 ms".into(),
                verdict: Verdict::from(m_p99.median <= 10.0),
            },
        ],
        details,
    })
}
