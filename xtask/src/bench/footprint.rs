//! `bench footprint`: the shipped molt-agent's size (static musl, aarch64 and x86_64, `device` profile) and its idle RSS as a daemon polling a real controller.
//!
//! The binaries are built exactly as `cargo xtask qemu-image` builds the device's
//! agent ([`build_static_agent`]: the `device` profile, rust-lld, the
//! cross gcc for the C in zstd and ring) and measured as files: the profile strips
//! them. The idle RSS is the x86_64 one of those binaries running `molt-agent run`
//! against a real `molt-controller` on loopback, enrolled through the real API,
//! once over https (a self-signed certificate, the agent's `controller_ca`: how a
//! device talks to its controller, and the figure held to the target) and once
//! over plain http. After a settling period the agent's VmRSS is sampled while it
//! polls every 2 seconds; the figure is the largest sample, and VmHWM (the peak
//! since it started) is shown beside it.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::servers::Controller;
use super::util::{is_root, quiet};
use super::{Bins, Ctx, Outcome, Row, Verdict};
use crate::proc::Proc;
use crate::qemu::image::{build_static_agent, AGENT_PROFILE as PROFILE};

/// Both targets' binaries must stay at or below this.
const MAX_BINARY: u64 = 4 * 1024 * 1024;
/// The idle daemon's resident set must stay at or below this.
const MAX_IDLE_RSS: u64 = 4 * 1024 * 1024;
/// The targets the agent ships for: the QEMU device's and the common x86_64 one.
const TARGETS: [&str; 2] = ["aarch64-unknown-linux-musl", "x86_64-unknown-linux-musl"];
/// Seconds the daemon runs before sampling (enrollment done, a few polls answered).
const SETTLE: Duration = Duration::from_secs(6);
/// How long, and how often, VmRSS is sampled after settling.
const SAMPLE_FOR: Duration = Duration::from_secs(10);
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// `bench footprint`.
pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    let mut rows = Vec::new();
    let mut details =
        String::from("| target | `molt-agent` bytes (static, stripped) | MiB |\n|---|---:|---:|\n");
    let mut x86 = None;
    for target in TARGETS {
        let id = format!("size-{}", target.split('-').next().unwrap_or(target));
        let what = format!("`molt-agent`, static {target}, profile `{PROFILE}`, stripped");
        let target_text = "≤ 4 MiB";
        if let Some(why) = missing(target) {
            rows.push(Row::skipped(&id, &what, "—", target_text, &why));
            let _ = writeln!(details, "| {target} | skipped: {why} | |");
            continue;
        }
        // The binary as shipped: no test hooks.
        let bin = build_static_agent(&ctx.root, target, PROFILE, &[])?;
        let bytes = fs::metadata(&bin)
            .with_context(|| format!("cannot stat {}", bin.display()))?
            .len();
        rows.push(Row {
            id,
            what,
            baseline: "—".into(),
            result: format!("**{:.2} MiB** ({bytes} B)", mib(bytes)),
            target: target_text.into(),
            verdict: Verdict::from(bytes <= MAX_BINARY),
        });
        let _ = writeln!(details, "| {target} | {bytes} | {:.2} |", mib(bytes));
        if target.starts_with("x86_64") {
            x86 = Some(bin);
        }
    }

    let what = |scheme: &str| {
        format!("idle RSS of `molt-agent run` (x86_64 musl) polling a controller every 2 s over {scheme}")
    };
    details.push('\n');
    let measured = match (&x86, is_root()) {
        (None, _) => Err("the x86_64 musl agent was not built".to_string()),
        (_, false) => Err("the agent's data directory needs root".to_string()),
        (Some(bin), true) => Ok(bin.clone()),
    };
    match measured {
        Err(why) => {
            for (scheme, target) in [("https", "≤ 4 MiB"), ("http", "—")] {
                let id = format!("idle-rss-{scheme}");
                rows.push(Row::skipped(&id, &what(scheme), "—", target, &why));
            }
            let _ = writeln!(details, "Idle RSS skipped: {why}.");
        }
        Ok(agent) => {
            let bins = ctx.bins()?;
            let work = ctx.work("footprint")?;
            details.push_str(
                "| controller | VmRSS (max of samples) | VmHWM (peak) | RssAnon | RssFile (the binary) | samples |\n\
                 |---|---:|---:|---:|---:|---:|\n",
            );
            for https in [true, false] {
                let scheme = if https { "https" } else { "http" };
                let m = idle_rss(&bins, &agent, &work.join(scheme), https)?;
                let _ = writeln!(
                    details,
                    "| {scheme} | {} KiB ({:.2} MiB) | {} KiB | {} KiB | {} KiB | {} |",
                    m.rss / 1024,
                    mib(m.rss),
                    m.last.hwm / 1024,
                    m.last.anon / 1024,
                    m.last.file / 1024,
                    m.samples
                );
                rows.push(Row {
                    id: format!("idle-rss-{scheme}"),
                    what: what(scheme),
                    baseline: "—".into(),
                    result: format!(
                        "**{:.2} MiB** (peak {:.2} MiB)",
                        mib(m.rss),
                        mib(m.last.hwm)
                    ),
                    target: if https {
                        "≤ 4 MiB".into()
                    } else {
                        "— (informational)".into()
                    },
                    verdict: if https {
                        Verdict::from(m.rss <= MAX_IDLE_RSS)
                    } else {
                        Verdict::Info
                    },
                });
            }
        }
    }
    let _ = write!(
        details,
        "\nMost of the idle resident set is the binary itself: the kernel maps file pages \
         in 64 KiB fault-around blocks from the page cache, so RssFile follows the binary's \
         size; RssAnon (heap, stacks, TLS state) is the agent's own memory.\n\
         \nThe `{PROFILE}` profile (workspace Cargo.toml): release with `lto = \"fat\"`, \
         `codegen-units = 1`, `panic = \"abort\"`, `strip = true`, opt-level 3. \
         VmRSS is sampled every {} ms for {} s after {} s of settling; the agent runs with \
         `poll_interval_secs = 2` and `MOLT_LOG=info`.\n\n\
         Commands (as root for the RSS; `rustup target add {t0} {t1}`, apt `gcc-aarch64-linux-gnu \
         libc6-dev-arm64-cross`):\n\n```sh\n\
         CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc \\\n  \
         AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar \\\n  \
         cargo build --profile {PROFILE} -p molt-agent --bin molt-agent --target {t0}\n\
         CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld CC_x86_64_unknown_linux_musl=x86_64-linux-gnu-gcc \\\n  \
         AR_x86_64_unknown_linux_musl=x86_64-linux-gnu-ar \\\n  \
         cargo build --profile {PROFILE} -p molt-agent --bin molt-agent --target {t1}\n\
         stat -c %s target/*-unknown-linux-musl/{PROFILE}/molt-agent\n\
         # idle RSS (what the benchmark does, in target/bench/footprint/https):\n\
         openssl req -x509 -config cert.cnf -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -keyout key.pem -out cert.pem\n\
         molt-controller serve --data controller --listen 127.0.0.1:0 --poll-interval 2 --tls-cert cert.pem --tls-key key.pem\n\
         MOLT_CONTROLLER=https://127.0.0.1:PORT MOLT_TOKEN=$(cat controller/operator-token) MOLT_CA=cert.pem molt groups create footprint --json\n\
         molt-agent --config agent.toml enroll --controller https://127.0.0.1:PORT --name footprint --token ENROLLMENT_TOKEN\n\
         molt-agent --config agent.toml run &\n\
         sleep {}; grep -E 'VmRSS|VmHWM' /proc/$!/status\n```\n",
        SAMPLE_EVERY.as_millis(),
        SAMPLE_FOR.as_secs(),
        SETTLE.as_secs(),
        SETTLE.as_secs(),
        t0 = TARGETS[0],
        t1 = TARGETS[1],
    );
    Ok(Outcome { rows, details })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Why `target` cannot be built here, if it cannot: its standard library or
/// the cross gcc for its C code is missing.
fn missing(target: &str) -> Option<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if !Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir()
    {
        return Some(format!(
            "no {target} standard library (`rustup target add {target}`)"
        ));
    }
    let arch = target.split('-').next().unwrap_or(target);
    let gcc = format!("{arch}-linux-gnu-gcc");
    if Command::new(&gcc).arg("--version").output().is_err() {
        return Some(format!(
            "no `{gcc}` for the C in zstd and ring (apt: gcc-{arch}-linux-gnu)"
        ));
    }
    None
}

/// One idle measurement.
struct Idle {
    /// The largest VmRSS sample, bytes.
    rss: u64,
    /// The last sample (VmHWM: the peak since the daemon started).
    last: Memory,
    samples: usize,
}

/// A child killed (by its pid, through `Child`) and reaped when dropped.
/// Runs a controller (https or http) and an enrolled `molt-agent run` in `dir`,
/// lets the agent settle, and samples its memory.
fn idle_rss(bins: &Bins, agent: &Path, dir: &Path, https: bool) -> Result<Idle> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let data = dir.join("controller");
    let cert = dir.join("cert.pem");
    let key_pem = dir.join("key.pem");
    let mut extra = vec!["--poll-interval".to_string(), "2".to_string()];
    if https {
        self_signed(dir)?;
        extra.extend([
            "--tls-cert".to_string(),
            cert.display().to_string(),
            "--tls-key".to_string(),
            key_pem.display().to_string(),
        ]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut ctl = Controller::start(bins, &data, "0-1", &extra)?;
    if https {
        ctl = ctl.with_ca(&cert);
    }
    let url = ctl.url.clone();
    let group: serde_json::Value =
        serde_json::from_str(&ctl.molt(bins, &["groups", "create", "footprint", "--json"])?)?;
    let enroll = group["enrollment_token"]
        .as_str()
        .with_context(|| format!("no enrollment token in {group}"))?;

    let root = dir.join("device");
    fs::create_dir_all(&root)?;
    let key = fs::read_to_string(data.join("signing.pub")).context("cannot read signing.pub")?;
    let mut config = format!(
        "root = \"{}\"\ncompatible = \"footprint\"\ntrusted_keys = [\"{}\"]\npoll_interval_secs = 2\n",
        root.display(),
        key.trim()
    );
    if https {
        fs::copy(&cert, root.join("controller-ca.pem"))?;
        config.push_str("controller_ca = \"controller-ca.pem\"\n");
    }
    let config_path = dir.join("agent.toml");
    fs::write(&config_path, config)?;
    quiet(Command::new(agent).arg("--config").arg(&config_path).args([
        "enroll",
        "--controller",
        &url,
        "--name",
        "footprint",
        "--token",
        enroll,
    ]))?;
    let log_path = dir.join("agent.log");
    let log = File::create(&log_path)?;
    let mut daemon = Proc::new(
        Command::new(agent)
            .arg("--config")
            .arg(&config_path)
            .arg("run")
            .env("MOLT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start molt-agent run")?,
        "molt-agent run",
        log_path,
    );
    let pid = daemon.pid();
    let alive = |d: &mut Proc| d.check();
    thread::sleep(SETTLE);
    alive(&mut daemon)?;
    let (mut rss, mut samples) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < SAMPLE_FOR {
        rss = rss.max(memory(pid)?.rss);
        samples += 1;
        thread::sleep(SAMPLE_EVERY);
    }
    alive(&mut daemon)?;
    let idle = Idle {
        rss,
        last: memory(pid)?,
        samples,
    };
    // The agent must really have been polling: the controller saw it.
    let listed = ctl.molt(bins, &["devices", "--json"])?;
    if !listed.contains("footprint") {
        bail!("the controller does not list the device: {listed}");
    }
    drop(daemon);
    drop(ctl);
    println!(
        "footprint: idle RSS over {}: {} KiB (peak {} KiB, anonymous {} KiB, file {} KiB, {} samples)",
        if https { "https" } else { "http" },
        idle.rss / 1024,
        idle.last.hwm / 1024,
        idle.last.anon / 1024,
        idle.last.file / 1024,
        idle.samples
    );
    Ok(idle)
}

/// Memory of a process from /proc/PID/status, in bytes.
struct Memory {
    /// VmRSS: resident now.
    rss: u64,
    /// VmHWM: the peak resident set since it started.
    hwm: u64,
    /// RssAnon: heap, stacks and other private memory.
    anon: u64,
    /// RssFile: the binary's pages mapped in (fault-around maps whole 64 KiB blocks).
    file: u64,
}

/// VmRSS, VmHWM, RssAnon and RssFile of `pid`.
fn memory(pid: u32) -> Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
    })
}

/// A self-signed P-256 certificate for 127.0.0.1 that is not a CA (so the agent's
/// `controller_ca` can trust it directly): cert.pem and key.pem in `dir`.
fn self_signed(dir: &Path) -> Result<()> {
    let cnf = dir.join("cert.cnf");
    fs::write(
        &cnf,
        "[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n\
         [dn]\nCN = 127.0.0.1\n\
         [ext]\nbasicConstraints = critical,CA:FALSE\nsubjectAltName = IP:127.0.0.1\n\
         keyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth\n",
    )?;
    quiet(
        Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-x509", "-config", "cert.cnf", "-newkey", "ec"])
            .args([
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
            ])
            .args(["-keyout", "key.pem", "-out", "cert.pem"]),
    )
    .context("cannot make a certificate (is `openssl` installed?)")?;
    Ok(())
}
