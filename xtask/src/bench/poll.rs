//! `bench poll`: `wrk` against `POST /device/poll` with 10,000 enrolled devices vs nginx serving a static poll answer, each server pinned to core 0.
//!
//! Both servers run on core 0 (`taskset -c 0`: molt-controller's tokio runtime
//! then has one worker; nginx has one worker process) and `wrk` runs on core 1,
//! so the figure is requests per second per server core. wrk's Lua script rotates
//! across every device's credential, so molt looks up a different device on
//! every request, as a fleet would make it do. nginx gets the cheapest request
//! that carries the same credential header (a `GET` without a body), which keeps
//! the baseline as strong as a static server can be.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::servers::{Controller, Http, Nginx};
use super::util::{interleave, quiet, require, Side, Stats};
use super::{Ctx, Outcome, Row, Verdict};

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
/// A side that runs wrk's `cmd` each round and reports its requests per second,
/// keeping each whole run (its p99 too) in `runs`.
fn wrk_side<'a>(name: &'a str, cmd: &'a mut Command, runs: &'a mut Vec<WrkRun>) -> Side<'a> {
    Side {
        name,
        run: Box::new(move || {
            let r = run_wrk(cmd)?;
            runs.push(r);
            Ok(r.rps)
        }),
    }
}

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
            wrk_side("molt", &mut molt_cmd, &mut molt_runs),
            wrk_side("nginx", &mut nginx_cmd, &mut nginx_runs),
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
