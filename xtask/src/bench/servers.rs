//! The servers and processes the benchmarks run: a guarded child process, molt-controller with its CLI, nginx as the static baseline, and a tiny HTTP/1.1 client.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::util::{quiet, require};
use super::Bins;
use crate::display;
pub(crate) use crate::proc::Proc;

/// A free loopback port (bound, then released for the server to take).
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running molt-controller with its address and operator token.
pub(crate) struct Controller {
    pub proc: Proc,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `http://127.0.0.1:PORT` (or https:// when started with `--tls-cert`).
    pub url: String,
    /// The operator token.
    pub token: String,
    /// The CA file `molt` must trust (a self-signed controller), if any.
    pub ca: Option<PathBuf>,
}

impl Controller {
    /// Starts `taskset -c CORE molt-controller serve` on a fresh data directory `data`.
    pub fn start(bins: &Bins, data: &Path, core: &str, extra: &[&str]) -> Result<Controller> {
        if data.exists() {
            fs::remove_dir_all(data)
                .with_context(|| format!("cannot remove {}", data.display()))?;
        }
        fs::create_dir_all(data)?;
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", core])
            .arg(&bins.controller)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("MOLT_LOG", "warn");
        println!("$ {}", display(&cmd));
        // taskset execs the server, so the child's pid is the server's.
        let (proc, url) = Proc::spawn_listening(
            &mut cmd,
            "molt-controller",
            data.with_extension("log"),
            false,
        )?;
        let addr = url
            .split_once("://")
            .map_or(url.as_str(), |(_, a)| a)
            .to_string();
        let token = fs::read_to_string(data.join("operator-token"))
            .context("cannot read the controller's operator token")?
            .trim()
            .to_string();
        Ok(Controller {
            proc,
            addr,
            url,
            token,
            ca: None,
        })
    }

    /// Makes `molt` trust `cert` (for a controller started with `--tls-cert`).
    pub fn with_ca(mut self, cert: &Path) -> Controller {
        self.ca = Some(cert.to_path_buf());
        self
    }

    /// `molt ARGS` against this controller; returns its stdout.
    pub fn molt(&self, bins: &Bins, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&bins.molt);
        cmd.args(args)
            .env("MOLT_CONTROLLER", &self.url)
            .env("MOLT_TOKEN", &self.token);
        if let Some(ca) = &self.ca {
            cmd.env("MOLT_CA", ca);
        }
        quiet(&mut cmd)
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
        let mut proc = Proc::new(child, "nginx", log);
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
