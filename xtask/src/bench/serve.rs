//! `bench serve`: 8 and 64 concurrent downloads of the workload's bundle from molt-controller's device bundle endpoint vs nginx (`sendfile on`) serving the same bytes, and the controller's RSS while it serves.
//!
//! Both servers are pinned to core 0 and the downloads to core 1 (one thread
//! per download, each pinning itself with `taskset -p`), so the figure is
//! aggregate throughput per server core over loopback. The client is the same
//! for both sides: a plain HTTP/1.1 GET, the body read in 256 KiB pieces and
//! dropped. molt's downloads are real device downloads: every connection
//! authenticates as its own enrolled device of a deployment of the bundle.

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::servers::{Controller, Http, Nginx};
use super::util::{interleave, require, Side, Stats};
use super::workload::{file_mib, MIB};
use super::{Ctx, Outcome, Row, Verdict};

/// The concurrency levels measured.
const LEVELS: [usize; 2] = [8, 64];
/// How often the controller's RSS is sampled while it serves.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// One download: which path, with which credential.
#[derive(Clone)]
struct Get {
    path: String,
    bearer: Option<String>,
}

/// Pins the calling thread to core 1 (xtask has no libc: `taskset -p` on its tid).
fn pin_this_thread() -> Result<()> {
    let link = fs::read_link("/proc/thread-self").context("cannot read /proc/thread-self")?;
    let tid = link
        .file_name()
        .context("unexpected /proc/thread-self")?
        .to_string_lossy()
        .into_owned();
    super::util::quiet(Command::new("taskset").args(["-p", "-c", "1", &tid]))?;
    Ok(())
}

/// Runs `gets.len()` downloads at once from `addr`, each on its own pinned
/// thread and connection, started together; returns the seconds from the start
/// until the last byte of the last download. Every answer must be `200` with
/// `size` bytes.
fn download_all(addr: &str, gets: &[Get], size: u64) -> Result<f64> {
    let n = gets.len();
    let ready = Arc::new(Barrier::new(n + 1));
    let go = Arc::new(Barrier::new(n + 1));
    let mut handles = Vec::new();
    for g in gets {
        let (g, addr, ready, go) = (g.clone(), addr.to_string(), ready.clone(), go.clone());
        handles.push(thread::spawn(move || -> Result<()> {
            // Set-up failures still reach both barriers, so nobody waits forever.
            let setup = pin_this_thread().and_then(|()| Http::connect(&addr));
            ready.wait();
            go.wait();
            let mut http = setup?;
            let mut buf = vec![0u8; 256 * 1024];
            http.send("GET", &g.path, g.bearer.as_deref(), "")?;
            let (status, len) = http.head()?;
            if status != 200 || len != size {
                bail!(
                    "GET {} answered {status} with {len} bytes (want 200, {size})",
                    g.path
                );
            }
            http.discard(len, &mut buf)
        }));
    }
    ready.wait();
    let t = Instant::now();
    go.wait();
    let mut first_err = None;
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("a download thread panicked"))?;
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    match first_err {
        Some(e) => Err(e),
        None => Ok(secs),
    }
}

/// Samples a process's VmRSS (KiB) until dropped; `peak` holds the largest seen
/// since the last [`RssSampler::reset`].
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                thread::sleep(SAMPLE_EVERY);
            }
        });
        RssSampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// The peak since the last reset, in MiB; starts a new period.
    fn reset(&self) -> f64 {
        self.peak.swap(0, Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const WHAT: &str = "bundle downloads from `GET /device/deployments/{id}/bundle`";
const BASE: &str = "nginx `sendfile on` (1 worker, same core), the same file";
const RSS_WHAT: &str = "controller RSS while serving 8 and 64 downloads";

/// `bench serve`.
pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        let why = "needs 2 cores (servers on one, downloads on the other)";
        return Ok(Outcome::skipped(
            "serve",
            WHAT,
            BASE,
            "≥ 0.80× throughput",
            why,
        ));
    }
    require(&[("nginx", "nginx-light"), ("taskset", "util-linux")])?;
    let bins = ctx.bins()?;
    let wl = ctx.workload()?;
    let work = ctx.work("serve")?;
    let bundle = &wl.big.bundle;
    let size = fs::metadata(bundle)?.len();
    let max = LEVELS[LEVELS.len() - 1];

    let mut ctl = Controller::start(
        &bins,
        &work.join("controller"),
        "0",
        &["--trusted-key", &wl.public],
    )?;
    let creds = ctl.enroll(&bins, "bench", max)?;
    let pushed = ctl.molt(
        &bins,
        &["update", "push", &bundle.to_string_lossy(), "--json"],
    )?;
    let update: serde_json::Value = serde_json::from_str(&pushed)?;
    let version = update["version"]
        .as_str()
        .context("no version in the pushed update")?;
    let deployed = ctl.molt(&bins, &["deploy", version, "--group", "bench", "--json"])?;
    let deployment: serde_json::Value = serde_json::from_str(&deployed)?;
    let id = deployment["id"].as_u64().context("no deployment id")?;
    let molt_gets: Vec<Get> = creds
        .iter()
        .map(|c| Get {
            path: format!("/api/v1/device/deployments/{id}/bundle"),
            bearer: Some(c.clone()),
        })
        .collect();
    let www: PathBuf = bundle.parent().context("bundle path")?.to_path_buf();
    let name = bundle.file_name().context("bundle name")?.to_string_lossy();
    let nginx_get = Get {
        path: format!("/{name}"),
        bearer: None,
    };
    let mut nginx = Nginx::start(&work.join("nginx"), &www, "0")?;

    let rss_idle = rss_kib(ctl.proc.pid()).unwrap_or(0) as f64 / 1024.0;
    let sampler = RssSampler::start(ctl.proc.pid());
    let mut results = Vec::new();
    for n in LEVELS {
        let mut molt_rss: Vec<f64> = Vec::new();
        let gets = &molt_gets[..n];
        let nginx_gets = vec![nginx_get.clone(); n];
        let stats = interleave(
            &format!("serve ×{n}"),
            ctx.rounds,
            &mut [
                Side {
                    name: "molt",
                    run: Box::new(|| {
                        sampler.reset();
                        let secs = download_all(&ctl.addr, gets, size)?;
                        molt_rss.push(sampler.reset());
                        Ok(secs)
                    }),
                },
                Side {
                    name: "nginx",
                    run: Box::new(|| download_all(&nginx.addr, &nginx_gets, size)),
                },
            ],
        )?;
        ctl.proc.check()?;
        nginx.proc.check()?;
        results.push((n, stats[0], stats[1], molt_rss));
    }
    drop(sampler);
    let rss_after = rss_kib(ctl.proc.pid()).unwrap_or(0) as f64 / 1024.0;
    drop(nginx);
    drop(ctl);

    let mib_per_s = |n: usize, secs: f64| n as f64 * size as f64 / MIB / secs;
    let mut rows = Vec::new();
    let mut details = String::from(
        "| downloads at once | molt MiB/s median (min–max) | nginx MiB/s median (min–max) | ratio | controller peak RSS (MiB), first round → last |\n|---:|---:|---:|---:|---:|\n",
    );
    for (n, m, b, rss) in &results {
        let tput = |s: Stats| Stats {
            median: mib_per_s(*n, s.median),
            min: mib_per_s(*n, s.max),
            max: mib_per_s(*n, s.min),
        };
        let _ = writeln!(
            details,
            "| {n} | {} | {} | {:.2}× | {:.1} → {:.1} |",
            tput(*m).show(0),
            tput(*b).show(0),
            b.median / m.median,
            rss.get(1).copied().unwrap_or(0.0),
            rss.last().copied().unwrap_or(0.0),
        );
        let mut row = Row::speed_ratio(
            &format!("serve-{n}"),
            &format!("{n} concurrent {WHAT}"),
            BASE,
            *m,
            *b,
            0.8,
        );
        row.result = format!(
            "**{:.2}×** throughput ({:.0} vs {:.0} MiB/s)",
            b.median / m.median,
            mib_per_s(*n, m.median),
            mib_per_s(*n, b.median)
        );
        row.target = "≥ 0.80× throughput".into();
        rows.push(row);
    }
    // Flat: serving more bytes (later rounds) or more downloads at once does not
    // grow the controller beyond fixed per-connection buffers.
    let peak = |i: usize| -> f64 { results[i].3[1..].iter().copied().fold(0.0, f64::max) };
    let (peak_lo, peak_hi) = (peak(0), peak(1));
    let grew_with_bytes = results.iter().any(|(_, _, _, rss)| {
        let first = rss.get(1).copied().unwrap_or(0.0);
        rss.last().copied().unwrap_or(0.0) > first + 2.0
    });
    let per_conn = (peak_hi - peak_lo) / (max - LEVELS[0]) as f64;
    let flat = !grew_with_bytes && per_conn <= 1.0;
    rows.push(Row {
        id: "serve-rss".into(),
        what: RSS_WHAT.into(),
        baseline: "—".into(),
        result: format!(
            "**{peak_hi:.1} MiB** at 64, {peak_lo:.1} MiB at 8 (idle {rss_idle:.1}); \
             {:.2} MiB per extra download",
            per_conn.max(0.0)
        ),
        target: "flat (≤ 1 MiB per download, no growth with bytes served)".into(),
        verdict: Verdict::from(flat),
    });
    let _ = write!(
        details,
        "\nThe bundle is the workload's ({:.1} MiB, {size} bytes): molt serves its stored copy \
         to {max} enrolled devices of one deployment (each download with its own device \
         credential), nginx the workload's file (the same bytes). Throughput is downloads × \
         size / the seconds from the start of all downloads to the end of the last. The \
         controller's RSS is sampled from /proc/PID/status every {} ms: {rss_idle:.1} MiB idle \
         after set-up, {rss_after:.1} MiB after every round. Flat means the peak did not grow \
         from the first round to the last (more bytes served) and grew by at most 1 MiB per \
         extra concurrent download.\n\n\
         Commands (in target/bench/serve/; the client is xtask's: one thread per download, \
         pinned with `taskset -p -c 1`, `GET` over HTTP/1.1, body read in 256 KiB pieces):\n\n```sh\n\
         taskset -c 0 molt-controller serve --data controller --listen 127.0.0.1:0 \
         --trusted-key $(cat target/bench/workload/bench.pub)\n\
         molt groups create bench   # then {max} × POST /api/v1/device/enroll\n\
         molt update push target/bench/workload/tree-200.molt && molt deploy 1.0.0 --group bench\n\
         taskset -c 0 nginx -e nginx/error.log -c nginx/nginx.conf   # root target/bench/workload, sendfile on\n\
         # each round, both sides, alternating which goes first, N = 8 then 64:\n\
         N × GET /api/v1/device/deployments/1/bundle (Authorization: Bearer <device N>)\n\
         N × GET /tree-200.molt\n```\n",
        file_mib(bundle),
        SAMPLE_EVERY.as_millis(),
    );
    Ok(Outcome { rows, details })
}
