//! End-to-end tests of `molt-agent enroll` and `molt-agent run` against a fake controller: installs offered deployments, ordered and idempotent reports, lost answers, aborts in each kind of phase, a controller that is down at first, and `kill -9` mid-install.
//!
//! The fake controller lives in this file (std `TcpListener`, one thread per
//! connection, `Connection: close`): it implements the device routes of
//! docs/api.md with the `molt_engine::protocol` types, records every request,
//! and can be told to abort a deployment when a report of some phase arrives,
//! to throttle the bundle, or to drop a report's connection before answering.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use molt_engine::protocol::{
    DeviceState, EnrollResponse, Failure, Offer, PollAction, PollRequest, PollResponse, Report,
    ReportResponse,
};
use molt_engine::update::FailureClass;

const TOKEN: &str = "grp_good";
const CREDENTIAL: &str = "cred-secret-1";
const DEPLOYMENT: u64 = 7;

// ---------------------------------------------------------------------------------------
// The fake controller
// ---------------------------------------------------------------------------------------

/// One request as the fake saw it.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    auth: Option<String>,
    body: Vec<u8>,
}

#[derive(Default)]
struct FakeState {
    requests: Vec<Req>,
    /// Every poll received.
    polls: Vec<PollRequest>,
    /// Every report received (duplicates included), with its deployment.
    reports: Vec<(u64, Report)>,
    /// The deployment offered: id, version, bundle.
    offer: Option<(u64, String, Arc<Vec<u8>>)>,
    aborted: HashSet<u64>,
    /// Abort the deployment when a report of this phase arrives.
    abort_on_phase: Option<String>,
    /// Abort the deployment when a report with download progress arrives.
    abort_on_progress: bool,
    /// Drop the connection instead of answering the report with this seq, once.
    drop_report_seq: Option<u64>,
    /// Bundle pacing: bytes per write, pause after each.
    throttle: Option<(usize, Duration)>,
    seen: HashMap<u64, BTreeSet<u64>>,
    finals: HashSet<u64>,
}

struct Fake {
    addr: SocketAddr,
    st: Arc<Mutex<FakeState>>,
    stop: Arc<AtomicBool>,
    https: bool,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Fake {
    fn start() -> Fake {
        Fake::on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn on(listener: TcpListener) -> Fake {
        Fake::serving(listener, None)
    }

    /// A fake that speaks https with `tls`'s certificate.
    fn tls(tls: Arc<rustls::ServerConfig>) -> Fake {
        Fake::serving(TcpListener::bind("127.0.0.1:0").unwrap(), Some(tls))
    }

    fn serving(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> Fake {
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let st = Arc::new(Mutex::new(FakeState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st2, stop2) = (st.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let st = st2.clone();
                        let tls = tls.clone();
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                        std::thread::spawn(move || {
                            let _ = match tls {
                                None => serve(s, &st),
                                Some(cfg) => match rustls::ServerConnection::new(cfg) {
                                    Ok(c) => serve(rustls::StreamOwned::new(c, s), &st),
                                    Err(_) => Ok(()),
                                },
                            };
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Fake {
            addr,
            st,
            stop,
            https: false,
        }
    }

    fn url(&self) -> String {
        if self.https {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.st.lock().unwrap())
    }

    fn offer(&self, deployment: u64, version: &str, bundle: Vec<u8>) {
        self.with(|s| s.offer = Some((deployment, version.into(), Arc::new(bundle))));
    }

    fn reports(&self, deployment: u64) -> Vec<Report> {
        self.with(|s| {
            s.reports
                .iter()
                .filter(|(d, _)| *d == deployment)
                .map(|(_, r)| r.clone())
                .collect()
        })
    }

    fn requests(&self) -> Vec<Req> {
        self.with(|s| s.requests.clone())
    }
}

fn respond(s: &mut impl Write, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Other",
    };
    write!(
        s,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

/// Serves one request on `s` (then closes it).
fn serve(mut s: impl Read + Write, st: &Mutex<FakeState>) -> std::io::Result<()> {
    // One request per connection (`Connection: close`), so the reader cannot
    // buffer bytes of a next one.
    let mut r = BufReader::new(&mut s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    drop(r);
    let auth = headers.get("authorization").cloned();
    st.lock().unwrap().requests.push(Req {
        method: method.clone(),
        path: path.clone(),
        auth: auth.clone(),
        body: body.clone(),
    });

    if path == "/api/v1/device/enroll" {
        let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if req["token"] != TOKEN {
            return respond(&mut s, 401, r#"{"error": "unknown enrollment token"}"#);
        }
        let resp = EnrollResponse {
            device_id: "dev_fake1".into(),
            credential: CREDENTIAL.into(),
            group: "test".into(),
            poll_interval_secs: 1,
        };
        return respond(&mut s, 201, &json(&resp));
    }
    if auth.as_deref() != Some(&format!("Bearer {CREDENTIAL}")) {
        return respond(&mut s, 401, r#"{"error": "missing or unknown credential"}"#);
    }
    if path == "/api/v1/device/poll" {
        let req: PollRequest = serde_json::from_slice(&body).unwrap();
        let mut g = st.lock().unwrap();
        g.polls.push(req.clone());
        let action = match (req.in_progress, &g.offer) {
            (Some(d), _) if g.aborted.contains(&d) && !g.finals.contains(&d) => {
                PollAction::Abort { deployment: d }
            }
            (_, Some((d, version, bundle))) if !g.seen.contains_key(d) => {
                PollAction::Install(Offer {
                    deployment: *d,
                    version: version.clone(),
                    bundle_path: format!("/api/v1/device/deployments/{d}/bundle"),
                    bundle_size: bundle.len() as u64,
                    bundle_blake3: blake3::hash(bundle).to_hex().to_string(),
                })
            }
            _ => PollAction::None,
        };
        drop(g);
        let resp = PollResponse {
            action,
            poll_interval_secs: 1,
        };
        return respond(&mut s, 200, &json(&resp));
    }
    let rest = path.strip_prefix("/api/v1/device/deployments/");
    let (id, what) = rest
        .and_then(|r| r.split_once('/'))
        .map(|(id, w)| (id.parse::<u64>().unwrap_or(0), w))
        .unwrap_or((0, ""));
    match what {
        "report" => {
            let report: Report = serde_json::from_slice(&body).unwrap();
            let mut g = st.lock().unwrap();
            g.reports.push((id, report.clone()));
            if g.drop_report_seq == Some(report.seq) {
                // The report arrived, the answer is lost: the agent must resend it.
                g.drop_report_seq = None;
                drop(g);
                // Returning drops (closes) the connection without a word.
                return Ok(());
            }
            let answer = if g.finals.contains(&id) {
                ReportResponse {
                    accepted: false,
                    closed: true,
                }
            } else {
                let new = g.seen.entry(id).or_default().insert(report.seq);
                if new && report.state.is_final() {
                    g.finals.insert(id);
                }
                if g.abort_on_phase.as_deref() == Some(report.phase.as_str())
                    || (g.abort_on_progress && report.progress.is_some())
                {
                    g.aborted.insert(id);
                }
                ReportResponse {
                    accepted: new,
                    closed: g.finals.contains(&id),
                }
            };
            drop(g);
            respond(&mut s, 200, &json(&answer))
        }
        "bundle" => {
            let (bundle, throttle) = {
                let g = st.lock().unwrap();
                match &g.offer {
                    Some((d, _, b)) if *d == id => (b.clone(), g.throttle),
                    _ => return respond(&mut s, 404, r#"{"error": "no such deployment"}"#),
                }
            };
            let start: usize = headers
                .get("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let etag = format!("\"{}\"", blake3::hash(&bundle).to_hex());
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\n",
                    bundle.len() - 1,
                    bundle.len()
                )
            } else {
                "HTTP/1.1 200 OK\r\n".to_string()
            };
            write!(
                s,
                "{head}ETag: {etag}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bundle.len() - start
            )?;
            match throttle {
                None => s.write_all(&bundle[start..])?,
                Some((n, pause)) => {
                    for piece in bundle[start..].chunks(n) {
                        s.write_all(piece)?;
                        s.flush()?;
                        std::thread::sleep(pause);
                    }
                }
            }
            s.flush()
        }
        _ => respond(&mut s, 404, r#"{"error": "no such route"}"#),
    }
}

// ---------------------------------------------------------------------------------------
// Running the agent
// ---------------------------------------------------------------------------------------

/// Runs the agent with a deadline (a hung daemon fails the test instead of hanging it).
fn agent(d: &Device, args: &[&str], env: &[(&str, &str)], deadline: Duration) -> Run {
    let mut c = d.command("info");
    c.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let st = child.wait().unwrap();
            let out = format!("{}{}", t_out.join().unwrap(), t_err.join().unwrap());
            panic!("molt-agent {args:?} still running after {deadline:?} ({st:?}):\n{out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        code: status.code(),
        signal: status.signal(),
        out: format!("{}{}", t_out.join().unwrap(), t_err.join().unwrap()),
    }
}

/// `molt-agent enroll` with the fake's URL and the good token; the caller judges the outcome.
fn try_enroll(d: &Device, fake: &Fake) -> Run {
    agent(
        d,
        &["enroll", "--controller", &fake.url(), "--token", TOKEN],
        &[],
        Duration::from_secs(30),
    )
}

fn enroll(d: &Device, fake: &Fake) {
    let r = try_enroll(d, fake);
    assert_eq!(r.code, Some(0), "enroll: {}", r.out);
}

/// The opening of most tests: a controller and a device (root only, else `None`), the
/// device on each of `installed` in turn, then enrolled.
fn enrolled_on(installed: &[Spec]) -> Option<(Fake, Device)> {
    let fake = root_or_skip().then(Fake::start)?;
    let d = Device::new();
    for spec in installed {
        d.install_ok(spec);
    }
    enroll(&d, &fake);
    Some((fake, d))
}

/// A new enrolled device (see [`enrolled_on`]) whose controller offers [`v2`] with
/// `after` as its after command.
fn offering_v2(after: &str) -> Option<(Fake, Device, Spec)> {
    let (fake, d) = enrolled_on(&[])?;
    let spec = v2(after);
    offer_v2(&fake, &spec);
    Some((fake, d, spec))
}

/// Offers `spec` to the device as deployment [`DEPLOYMENT`], version 2.0.0.
fn offer_v2(fake: &Fake, spec: &Spec) {
    fake.offer(DEPLOYMENT, "2.0.0", build(spec));
}

/// The deployment's deduplicated reports, asserting the final one says `want`.
fn reports_ending(fake: &Fake, want: DeviceState) -> Vec<Report> {
    let reports = distinct(&fake.reports(DEPLOYMENT));
    assert_eq!(final_state(&reports), want, "{reports:#?}");
    reports
}

/// `run --once` that must end before `limit`: an abort is acted on promptly.
fn run_once_within(d: &Device, limit: Duration) {
    let t = Instant::now();
    run_once(d, &[]);
    assert!(t.elapsed() < limit, "took {:?}", t.elapsed());
}

fn run_once(d: &Device, env: &[(&str, &str)]) -> Run {
    let r = agent(d, &["run", "--once"], env, Duration::from_secs(120));
    assert_eq!(r.code, Some(0), "run --once: {}\n{}", r.out, d.log());
    if std::env::var_os("MOLT_TEST_SHOW").is_some() {
        println!("{}", r.out);
    }
    r
}

/// Seqs are unique, from 1, without gaps, and were first sent in rising order.
fn assert_seqs(reports: &[Report]) {
    let mut first_seen = Vec::new();
    let mut seen = HashSet::new();
    for r in reports {
        if seen.insert(r.seq) {
            first_seen.push(r.seq);
        }
    }
    let want: Vec<u64> = (1..=first_seen.len() as u64).collect();
    assert_eq!(first_seen, want, "seqs out of order or with gaps");
}

/// The deduplicated reports, in seq order.
fn distinct(reports: &[Report]) -> Vec<Report> {
    let mut by_seq: std::collections::BTreeMap<u64, Report> = Default::default();
    for r in reports {
        if let Some(old) = by_seq.get(&r.seq) {
            assert_eq!(old, r, "seq {} sent twice with different content", r.seq);
        }
        by_seq.insert(r.seq, r.clone());
    }
    by_seq.into_values().collect()
}

fn final_state(reports: &[Report]) -> DeviceState {
    let finals: Vec<&Report> = reports.iter().filter(|r| r.state.is_final()).collect();
    assert_eq!(finals.len(), 1, "exactly one final report: {reports:#?}");
    assert!(
        reports.last().unwrap().state.is_final(),
        "the final report is the last"
    );
    // A failure says its cause and class for the controller's retries; a success or
    // an abort carries none.
    let failed = matches!(
        finals[0].state,
        DeviceState::Failed | DeviceState::RolledBack
    );
    assert_eq!(finals[0].failure.is_some(), failed, "{:#?}", finals[0]);
    finals[0].state
}

fn all_logs(reports: &[Report]) -> String {
    reports.iter().map(|r| r.log.as_str()).collect()
}

fn v2(after: &str) -> Spec {
    let mut s = Spec::full(
        "2.0.0",
        2,
        &[
            ("app/a", b"A2\n"),
            ("app/big.bin", &noise(2, 30_000)),
            ("etc/app.conf", b"port=8080\n"),
        ],
    );
    s.after = Some(sh(after));
    s
}

fn v1() -> Spec {
    Spec::full(
        "1.0.0",
        1,
        &[("app/a", b"A1\n"), ("etc/app.conf", b"port=80\n")],
    )
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn enroll_stores_the_credential_and_a_bad_token_is_refused() {
    if !root_or_skip() {
        return;
    }
    let fake = Fake::start();
    let d = Device::new();
    let file = d.data().join("controller.json");

    let bad = agent(
        &d,
        &[
            "enroll",
            "--controller",
            &fake.url(),
            "--token",
            "grp_wrong",
        ],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(bad.code, Some(1), "{}", bad.out);
    assert!(
        bad.out.contains("refused the enrollment token (401)")
            && bad.out.contains("unknown enrollment token"),
        "{}",
        bad.out
    );
    assert!(!file.exists());

    // Nothing listens on a fresh port.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = agent(
        &d,
        &[
            "enroll",
            "--controller",
            &format!("http://{dead}"),
            "--token",
            TOKEN,
        ],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(down.code, Some(1), "{}", down.out);
    assert!(
        down.out.contains("cannot reach the controller"),
        "{}",
        down.out
    );

    enroll(&d, &fake);
    let stored: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert_eq!(stored["credential"], CREDENTIAL);
    assert_eq!(stored["device_id"], "dev_fake1");
    assert_eq!(stored["controller"], fake.url());
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let req = fake
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/api/v1/device/enroll")
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["compatible"], BOARD);
    assert_eq!(body["active_version"], "factory");
    assert!(!body["name"].as_str().unwrap().is_empty());
    assert_eq!(body["agent_version"], env!("CARGO_PKG_VERSION"));

    let st = d.recover();
    assert!(st.contains(&fake.url()) && st.contains("dev_fake1"), "{st}");

    let again = try_enroll(&d, &fake);
    assert_eq!(again.code, Some(1), "{}", again.out);
    assert!(again.out.contains("--force"), "{}", again.out);
}

#[test]
fn run_installs_an_offer_and_reports_every_phase() {
    let Some((fake, d)) = enrolled_on(&[]) else {
        return;
    };
    // 2000 lines of output: more log than one report may carry.
    let spec = v2(
        "echo after-says-hello; echo to-stderr >&2; seq 1 2000 | sed 's/$/ some-padding-to-make-the-log-long/'",
    );
    fake.offer(DEPLOYMENT, "2.0.0", build(&spec));

    run_once(&d, &[]);
    assert_eq!(d.tree(), spec.tree());
    // Polls say what a rollback would return to: the snapshot the install replaced.
    let polls = fake.with(|s| s.polls.clone());
    let (first, last) = (&polls[0], polls.last().unwrap());
    assert_eq!(last.active_version, "2.0.0");
    assert_eq!(
        last.inactive_version.as_deref(),
        Some(first.active_version.as_str()),
        "{polls:#?}"
    );

    let got = fake.reports(DEPLOYMENT);
    assert_seqs(&got);
    let reports = distinct(&got);
    assert_eq!(final_state(&reports), DeviceState::Success);
    assert_eq!(reports[0].state, DeviceState::Downloading, "{reports:#?}");
    assert_eq!(reports[0].phase, "fetching");
    let phases: Vec<&str> = reports.iter().map(|r| r.phase.as_str()).collect();
    for p in [
        "fetching",
        "sealing",
        "swapping",
        "after",
        "committing",
        "done",
    ] {
        assert!(phases.contains(&p), "no {p} report: {phases:?}");
    }
    // States never go back from installing to downloading.
    let first_installing = reports
        .iter()
        .position(|r| r.state == DeviceState::Installing)
        .unwrap();
    assert!(reports[first_installing..]
        .iter()
        .all(|r| r.state != DeviceState::Downloading));
    let progress = reports
        .iter()
        .find_map(|r| r.progress)
        .expect("a progress report");
    assert!(
        progress.done <= progress.total && progress.total > 0,
        "{progress:?}"
    );
    let logs = all_logs(&reports);
    assert!(logs.contains("after-says-hello"), "{logs}");
    assert!(logs.contains("to-stderr"), "{logs}");
    assert!(
        logs.len() > molt_engine::protocol::MAX_REPORT_LOG,
        "the log should need several reports ({} bytes)",
        logs.len()
    );
    assert_eq!(reports.last().unwrap().active_version, "2.0.0");
    assert!(reports
        .iter()
        .all(|r| r.log.len() <= molt_engine::protocol::MAX_REPORT_LOG));

    let requests = fake.requests();
    assert!(requests
        .iter()
        .any(|r| r.method == "GET" && r.path.ends_with("/bundle")));
    for r in requests
        .iter()
        .filter(|r| r.path != "/api/v1/device/enroll")
    {
        assert_eq!(
            r.auth.as_deref(),
            Some(format!("Bearer {CREDENTIAL}").as_str()),
            "{} {} without the credential",
            r.method,
            r.path
        );
    }
    // The journal was released only once the controller had the final report.
    assert_eq!(install_phase(&d.recover()), "idle");
    assert!(d.recover().contains("reports queued 0"), "{}", d.recover());
}

#[test]
fn a_lost_answer_makes_the_agent_resend_the_same_seq() {
    let Some((fake, d, _)) = offering_v2("echo fine") else {
        return;
    };
    fake.with(|s| s.drop_report_seq = Some(2));

    run_once(&d, &[]);
    let got = fake.reports(DEPLOYMENT);
    assert_seqs(&got);
    let twos: Vec<&Report> = got.iter().filter(|r| r.seq == 2).collect();
    assert_eq!(twos.len(), 2, "seq 2 resent once: {got:#?}");
    assert_eq!(twos[0], twos[1]);
    assert_eq!(final_state(&distinct(&got)), DeviceState::Success);
}

#[test]
fn abort_during_a_slow_download_keeps_the_active_snapshot() {
    let Some((fake, d)) = enrolled_on(&[v1()]) else {
        return;
    };
    let before = d.fingerprint();
    let spec = Spec::full("2.0.0", 2, &[("app/big.bin", &noise(5, 3 << 20))]);
    fake.offer(DEPLOYMENT, "2.0.0", build(&spec));
    // About 160 KiB/s: the 3 MiB bundle would take some 20 s.
    fake.with(|s| {
        s.throttle = Some((16 * 1024, Duration::from_millis(100)));
        s.abort_on_progress = true;
    });

    run_once_within(&d, Duration::from_secs(15));
    let reports = reports_ending(&fake, DeviceState::Aborted);
    assert_eq!(d.fingerprint(), before);
    assert!(all_logs(&reports).contains("aborted"), "{reports:#?}");
    assert_eq!(install_phase(&d.recover()), "idle");
}

#[test]
fn abort_during_a_long_after_script_kills_it_and_rolls_back() {
    let Some((fake, d)) = enrolled_on(&[v1()]) else {
        return;
    };
    let before = d.fingerprint();
    let pidfile = d.marker("after.pid");
    let mut spec = v2(&format!("echo $$ > {}; sleep 30", pidfile.display()));
    spec.after.as_mut().unwrap().timeout_secs = 120;
    offer_v2(&fake, &spec);
    fake.with(|s| s.abort_on_phase = Some("after".into()));

    run_once_within(&d, Duration::from_secs(20));
    let reports = reports_ending(&fake, DeviceState::Aborted);
    let phases: Vec<&str> = reports.iter().map(|r| r.phase.as_str()).collect();
    assert!(phases.contains(&"swapping-back"), "{phases:?}");
    assert_eq!(d.fingerprint(), before);
    assert_eq!(reports.last().unwrap().active_version, "1.0.0");
    assert!(all_logs(&reports).contains("cancelled"), "{reports:#?}");
    let pid = read_pid(&pidfile);
    assert!(!alive(pid), "the after script still runs");
}

#[test]
fn abort_after_the_commit_is_refused_and_the_install_succeeds() {
    let Some((fake, d, spec)) = offering_v2("echo fine") else {
        return;
    };
    fake.with(|s| s.abort_on_phase = Some("committing".into()));

    // Committing is short: the hook holds it long enough for a poll to see the abort.
    run_once(&d, &[("MOLT_TEST_PAUSE_AT", "committing:3000")]);
    let reports = reports_ending(&fake, DeviceState::Success);
    assert!(
        reports.iter().any(|r| r
            .message
            .as_deref()
            .is_some_and(|m| m.contains("abort refused") && m.contains("committed"))),
        "{reports:#?}"
    );
    assert_eq!(d.tree(), spec.tree());
}

/// Hardening item 10: a bundle refused near its end has already overwritten the
/// inactive slot; the final report the controller gets says the previous snapshot is
/// gone, which version it was, and why.
#[test]
fn a_bundle_refused_part_way_reports_that_the_rollback_target_was_overwritten() {
    let Some((fake, d)) = enrolled_on(&[v1(), v2("true")]) else {
        return;
    };
    let before = d.fingerprint();
    let mut bad = build(&Spec::full("3.0.0", 3, &[("app/a", b"A3\n")]));
    bad.push(0);
    fake.offer(DEPLOYMENT, "3.0.0", bad);

    run_once(&d, &[]);
    let reports = reports_ending(&fake, DeviceState::Failed);
    let message = reports.last().unwrap().message.clone().unwrap_or_default();
    for want in [
        "bundle refused",
        "the previous snapshot (version 1.0.0)",
        "already overwritten",
        "nothing to switch to",
    ] {
        assert!(
            message.contains(want),
            "the final report does not say `{want}`: {message}"
        );
    }
    assert_eq!(reports.last().unwrap().active_version, "2.0.0");
    assert_eq!(
        reports.last().unwrap().failure,
        Some(Failure {
            cause: "bad-bundle".into(),
            class: FailureClass::Deterministic
        }),
        "a refused bundle ends the same however often it is tried"
    );
    assert_eq!(d.fingerprint(), before);
}

#[test]
fn a_controller_that_is_down_at_first_is_retried_with_backoff() {
    let Some((fake, d)) = enrolled_on(&[]) else {
        return;
    };
    let addr = fake.addr;
    drop(fake);
    // The old listener is gone once its thread sees the stop flag.
    std::thread::sleep(Duration::from_millis(100));
    let spec = v2("echo fine");
    let bundle = build(&spec);

    let started = Instant::now();
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(4));
        let fake = Fake::on(TcpListener::bind(addr).unwrap());
        fake.offer(DEPLOYMENT, "2.0.0", bundle);
        fake
    });
    let status = std::thread::spawn({
        let root = d.root().to_path_buf();
        move || {
            // While the daemon holds the lock, `status` still answers (read-only).
            std::thread::sleep(Duration::from_secs(2));
            Command::new(AGENT)
                .arg("--config")
                .arg(root.join("agent.toml"))
                .arg("status")
                .output()
                .unwrap()
        }
    });
    let r = run_once(&d, &[]);
    let fake = later.join().unwrap();
    let st = status.join().unwrap();
    let st_out = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success(), "{st:?}");
    assert!(
        st_out.contains("another molt-agent holds the lock") && st_out.contains("dev_fake1"),
        "{st_out}"
    );
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert_eq!(d.tree(), spec.tree());
    assert_eq!(
        final_state(&distinct(&fake.reports(DEPLOYMENT))),
        DeviceState::Success
    );
    // One warning for the outage, not one per retry.
    assert_eq!(
        r.out.matches("poll: cannot reach the controller").count(),
        1,
        "{}",
        r.out
    );
    assert!(r.out.contains("the controller answers again"), "{}", r.out);
}

#[test]
fn kill_9_mid_install_then_run_again_settles_and_reports() {
    let Some((fake, d, spec)) = offering_v2("echo after-ran >> /dev/null") else {
        return;
    };

    let r = agent(
        &d,
        &["run", "--once"],
        &[("MOLT_TEST_CRASH_AT", "after")],
        Duration::from_secs(60),
    );
    assert!(r.killed(), "the crash hook should kill the agent: {r:?}");
    // No `status` here: opening the device would settle the install without the daemon.

    run_once(&d, &[]);
    let got = fake.reports(DEPLOYMENT);
    assert_seqs(&got);
    let reports = distinct(&got);
    assert_eq!(final_state(&reports), DeviceState::Success, "{reports:#?}");
    assert!(
        all_logs(&reports).contains("restart: settling deployment"),
        "{reports:#?}"
    );
    assert_eq!(d.tree(), spec.tree());
    assert_eq!(install_phase(&d.recover()), "idle");
}

/// A private CA and a server certificate for `localhost` signed by it: the CA's
/// PEM, and the server's TLS configuration.
fn private_ca() -> (String, Arc<rustls::ServerConfig>) {
    let ca = molt_test_support::tls::private_ca();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![ca.leaf_der.into()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(ca.leaf_key_der.into()),
        )
        .unwrap();
    (ca.ca_pem, Arc::new(cfg))
}

#[test]
fn an_https_controller_with_a_private_ca_works_once_the_ca_is_configured() {
    if !root_or_skip() {
        return;
    }
    let (ca_pem, tls) = private_ca();
    let mut fake = Fake::tls(tls);
    fake.https = true;
    let d = Device::new();

    // Without the CA the certificate is refused, and enroll says so.
    let r = try_enroll(&d, &fake);
    assert_eq!(r.code, Some(1), "{}", r.out);
    assert!(r.out.contains("certificate"), "{}", r.out);

    fs::write(d.root().join("controller-ca.pem"), ca_pem).unwrap();
    let cfg_path = d.root().join("agent.toml");
    let cfg = fs::read_to_string(&cfg_path).unwrap();
    fs::write(
        &cfg_path,
        format!("controller_ca = \"/controller-ca.pem\"\n{cfg}"),
    )
    .unwrap();

    enroll(&d, &fake);
    let spec = v2("echo over-tls");
    offer_v2(&fake, &spec);
    run_once(&d, &[]);
    assert_eq!(d.tree(), spec.tree());
    let reports = distinct(&fake.reports(DEPLOYMENT));
    assert_eq!(final_state(&reports), DeviceState::Success);
    assert!(all_logs(&reports).contains("over-tls"));
}
