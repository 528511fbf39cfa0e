//! `cargo xtask qemu-test`: the emulated device against a real controller: enrollment, a deployment and a reboot, a failing health check rolled back with a reboot, and power cuts (`kill -9` of QEMU) at several points of an install.
//!
//! Each test device is provisioned once (its first boot enrolls it) into a golden raw
//! disk; every later scenario and power-cut round boots a fresh qcow2 overlay of it,
//! so each starts from the same enrolled device on its factory snapshot and the
//! controller sees one device going through many deployments. There are `--jobs`
//! devices (default 2, one per core of the machines this runs on), each booted by
//! its own thread: one device's deployments must run one after the other, but two
//! devices' need not.
//!
//! What the guest reports comes from /init's `MOLT-...` console lines (qemu/init);
//! after the success and rollback scenarios the disk is also read on the host
//! (e2fsck, debugfs). Every boot's console is kept in target/qemu/work/; a failing
//! scenario or round prints the consoles of its boots.
//!
//! `console` reads the markers; `cuts` holds the power-cut rounds.

mod console;
mod cuts;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use self::console::Console;
use self::cuts::{check_coverage, round, RoundResult, CUTS};
use super::disk::{self, Tree};
use super::host::{Bins, Controller};
use super::image::{self, Image};
use super::require_tools;
use super::spec::Device;
use super::vm::{Boot, End, Vm};

/// The devices' names on the controller: this, a dash and a number.
const DEVICE: &str = "qemu-device";

/// Devices (and QEMU processes) at work at the same time, unless `--jobs` says otherwise.
const DEFAULT_JOBS: usize = 2;

/// Size of the incompressible file the good update ships: big enough that streaming
/// and syncing it take long enough (under TCG) to cut power in the middle of them.
const PAYLOAD_MIB: u64 = 16;

/// Download checkpoints during the cut rounds' installs (`MOLT_TEST_CHECKPOINT_BYTES`),
/// so a cut while streaming finds checkpoints to resume from.
const CHECKPOINT_BYTES: u64 = 1 << 20;

/// Every boot must show /init's first marker within this.
const BOOT_LIMIT: Duration = Duration::from_secs(90);
/// A boot that installs an update must stop by itself within this.
const INSTALL_LIMIT: Duration = Duration::from_secs(300);

/// Tools the test runs besides those of the image build.
const TOOLS: &[(&str, &str)] = &[
    (
        "qemu-system-aarch64",
        "qemu-system-arm (from bookworm-backports)",
    ),
    ("qemu-img", "qemu-utils"),
    ("socat", "socat"),
    ("timeout", "coreutils"),
    ("debugfs", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
];

/// `qemu-test`'s flags.
#[derive(clap::Args)]
pub struct Options {
    /// Power-cut rounds: at most one per cut point, and by default all of them.
    #[arg(long, value_name = "N", value_parser = parse_rounds, default_value_t = CUTS.len())]
    rounds: usize,
    /// Devices booted at once, from 1 to 8.
    #[arg(long, value_name = "N", value_parser = parse_jobs, default_value_t = DEFAULT_JOBS)]
    jobs: usize,
    /// Show the guests' consoles.
    #[arg(long)]
    echo: bool,
}

/// What `cargo xtask qemu-test` does without arguments (and `cargo xtask ci` runs).
impl Default for Options {
    fn default() -> Self {
        Options {
            rounds: CUTS.len(),
            jobs: DEFAULT_JOBS,
            echo: false,
        }
    }
}

/// `--rounds N`: at most one round per cut point.
fn parse_rounds(n: &str) -> Result<usize, String> {
    let rounds: usize = n.parse().map_err(|_| format!("{n}: not a number"))?;
    if rounds > CUTS.len() {
        return Err(format!("there are {} cut points", CUTS.len()));
    }
    Ok(rounds)
}

/// `--jobs N`: from 1 to 8 devices.
fn parse_jobs(n: &str) -> Result<usize, String> {
    n.parse()
        .ok()
        .filter(|j| (1..=8).contains(j))
        .ok_or_else(|| format!("{n}: not a number from 1 to 8"))
}

/// Everything the scenarios share (across the worker threads).
struct Cx {
    dev: Device,
    image: Image,
    ctl: Controller,
    key: String,
    work: PathBuf,
    echo: bool,
    factory: Tree,
    good: Tree,
    measures: Mutex<Measures>,
}

/// One test device: its name on the controller and its golden disk.
struct Unit {
    device: String,
    golden: PathBuf,
}

/// What the run measured, printed at the end (and wanted in the note).
#[derive(Default)]
struct Measures {
    /// Wall time from starting QEMU to /init's first marker, and the guest's uptime then.
    boots: Vec<(Duration, f64)>,
    /// The agent's VmHWM during installs, KiB.
    rss_kib: Vec<u64>,
    /// Per round: (name, intended kind, where it landed, in window, outcome, seconds).
    rounds: Vec<RoundResult>,
    /// Scenario name and seconds.
    scenarios: Vec<(String, f64)>,
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    let start = Instant::now();
    require_tools(TOOLS)?;
    let dev = Device::load(&root.join("qemu"))?;
    let image = image::build(root, &dev, false)?;
    let bins = Bins::build(root)?;
    let work = root.join("target/qemu/work");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    }
    fs::create_dir_all(&work)?;
    let ctl = Controller::start(
        &bins,
        &work.join("controller"),
        &work.join("controller.log"),
    )?;
    let key = ctl.signing_key()?;
    let token = ctl.create_group("qemu")?;

    let factory = disk::hash_tree(&dev.path(&dev.disk.factory))?;
    let good_dir = work.join("recipes/good");
    copy_dir(&dev.path("recipes/good"), &good_dir)?;
    write_payload(&good_dir.join("app/payload.bin"), PAYLOAD_MIB << 20)?;
    let good = patched(&factory, &good_dir.join("app"), "opt/app")?;
    let bad_dir = work.join("recipes/unhealthy");
    copy_dir(&dev.path("recipes/unhealthy"), &bad_dir)?;
    let good_update = ctl.push(&good_dir.join("recipe.toml"))?;
    let bad_update = ctl.push(&bad_dir.join("recipe.toml"))?;
    println!("qemu-test: controller on 127.0.0.1:{}, updates {good_update} (good) and {bad_update} (unhealthy) built and signed by it", ctl.port);

    let cx = Cx {
        dev,
        image,
        ctl,
        key,
        work,
        echo: opts.echo,
        factory,
        good,
        measures: Mutex::default(),
    };
    let units: Vec<Unit> = (1..=opts.jobs)
        .map(|n| Unit {
            device: format!("{DEVICE}-{n}"),
            golden: cx.work.join(format!("golden-{n}.img")),
        })
        .collect();
    let stop = AtomicBool::new(false);
    in_parallel(&units, &stop, |u| {
        scenario(&cx, &format!("provision {}", u.device), |logs| {
            provision(&cx, u, &token, logs)
        })
    })?;
    // The two scenarios run on different devices where there are two.
    let first = &units[0];
    let second = &units[1 % units.len()];
    let pairs = [(first, "success"), (second, "rollback")];
    let jobs: Vec<Vec<(&Unit, &str)>> = if units.len() > 1 {
        pairs.iter().map(|p| vec![*p]).collect()
    } else {
        vec![pairs.to_vec()]
    };
    in_parallel(&jobs, &stop, |job| {
        for &(u, what) in job {
            scenario(&cx, what, |logs| match what {
                "success" => success(&cx, u, good_update, logs),
                _ => rollback(&cx, u, bad_update, logs),
            })?;
        }
        Ok(())
    })?;
    let rounds: Vec<(usize, &cuts::Cut)> = CUTS.iter().take(opts.rounds).enumerate().collect();
    in_parallel(&units, &stop, |u| {
        let index = units.iter().position(|x| x.device == u.device).unwrap_or(0);
        for &(i, cut) in rounds.iter().skip(index).step_by(units.len()) {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let name = format!("cut-{:02}-{:?}", i + 1, cut.kind).to_lowercase();
            let t = Instant::now();
            let mut logs = Vec::new();
            match round(&cx, u, &name, cut, good_update, &mut logs) {
                Ok(r) => {
                    println!(
                        "qemu-test: {name} ({}): cut in {} ({}), after the cut {}; {} in {:.1}s",
                        u.device,
                        r.landed,
                        if r.in_window {
                            "as intended"
                        } else {
                            "OUTSIDE its window"
                        },
                        r.after_cut,
                        r.outcome,
                        r.secs
                    );
                    cx.measures().rounds.push(r);
                }
                Err(e) => {
                    print_consoles(&logs);
                    bail!(
                        "qemu-test: {name} FAILED after {:.1}s: {e:#}",
                        t.elapsed().as_secs_f64()
                    );
                }
            }
        }
        Ok(())
    })?;
    cx.measures().rounds.sort_by(|a, b| a.name.cmp(&b.name));
    check_coverage(&cx.measures().rounds, opts.rounds)?;
    print_measures(&cx, start.elapsed());
    Ok(())
}

/// Runs `f` on every item, each in its own thread; the first error, once all ended.
/// After an error the others finish what they run but start nothing new (`stop`).
fn in_parallel<T: Sync>(
    items: &[T],
    stop: &AtomicBool,
    f: impl Fn(&T) -> Result<()> + Sync,
) -> Result<()> {
    let results: Vec<Result<()>> = thread::scope(|s| {
        let handles: Vec<_> = items
            .iter()
            .map(|item| {
                let f = &f;
                s.spawn(move || {
                    if stop.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    let r = f(item);
                    if r.is_err() {
                        stop.store(true, Ordering::SeqCst);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a test thread panicked")))
            })
            .collect()
    });
    results.into_iter().collect()
}

/// Runs one scenario, printing its boots' consoles if it fails.
fn scenario(cx: &Cx, name: &str, f: impl FnOnce(&mut Vec<PathBuf>) -> Result<()>) -> Result<()> {
    let t = Instant::now();
    let mut logs = Vec::new();
    match f(&mut logs) {
        Ok(()) => {
            let secs = t.elapsed().as_secs_f64();
            println!("qemu-test: {name}: ok in {secs:.1}s");
            cx.measures().scenarios.push((name.to_string(), secs));
            Ok(())
        }
        Err(e) => {
            print_consoles(&logs);
            bail!(
                "qemu-test: {name} FAILED after {:.1}s: {e:#}",
                t.elapsed().as_secs_f64()
            )
        }
    }
}

/// Prints the consoles in one write, so another thread's lines do not land inside them.
fn print_consoles(logs: &[PathBuf]) {
    let mut text = String::new();
    for log in logs {
        text.push_str(&format!("\n----- guest console: {} -----\n", log.display()));
        text.push_str(&fs::read_to_string(log).unwrap_or_else(|e| format!("(unreadable: {e})\n")));
        text.push_str(&format!("----- end of {} -----\n", log.display()));
    }
    print!("{text}");
}

impl Cx {
    fn measures(&self) -> MutexGuard<'_, Measures> {
        self.measures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a boot of `disk` with /init's `args` (the trusted key is always added).
    fn boot(
        &self,
        name: &str,
        disk: &Path,
        args: &[(&str, String)],
        limit: Duration,
        logs: &mut Vec<PathBuf>,
    ) -> Result<Vm> {
        let log = self.work.join(format!("{name}.console"));
        logs.push(log.clone());
        let mut all = vec![("molt_key".to_string(), self.key.clone())];
        all.extend(args.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let boot = Boot {
            name: name.to_string(),
            disk,
            controller_port: self.ctl.port,
            args: all,
            timeout: limit + Duration::from_secs(30),
            log,
            echo: self.echo,
        };
        let mut vm = Vm::start(&self.dev, &self.image, &boot)?;
        let (line, wall) = vm.wait_for("MOLT-BOOTED", BOOT_LIMIT)?;
        let uptime = line
            .split("uptime=")
            .nth(1)
            .and_then(|u| u.trim().parse().ok())
            .unwrap_or(0.0);
        self.measures().boots.push((wall, uptime));
        Ok(vm)
    }

    /// A fresh copy of unit `u`'s golden disk, `NAME.qcow2` in the work directory,
    /// and the id of a deployment of `update` to its device.
    fn deployed_disk(&self, u: &Unit, name: &str, update: u64) -> Result<(PathBuf, u64)> {
        let disk = self.work.join(format!("{name}.qcow2"));
        disk::overlay(&u.golden, &disk)?;
        let id = self.ctl.deploy(update, &u.device)?;
        Ok((disk, id))
    }

    /// Deployment `id` ends in `state` on the controller, which then shows unit
    /// `u`'s device running `active`.
    fn expect_deployment(&self, id: u64, u: &Unit, state: &str, active: &str) -> Result<()> {
        let got = self
            .ctl
            .wait_final(id, &u.device, Duration::from_secs(30))?;
        ensure!(
            got == state,
            "the controller shows deployment {id} as `{got}`"
        );
        let d = self.ctl.device(&u.device)?.context("device gone")?;
        ensure!(d["active_version"] == active, "the controller shows {d}");
        Ok(())
    }

    /// Boots `disk` and waits until the guest stops by itself; how, and its console.
    fn boot_to_end(
        &self,
        name: &str,
        disk: &Path,
        args: &[(&str, String)],
        logs: &mut Vec<PathBuf>,
    ) -> Result<(End, Console)> {
        let mut vm = self.boot(name, disk, args, INSTALL_LIMIT, logs)?;
        let end = vm.wait_end(INSTALL_LIMIT)?;
        let console = Console(vm.console());
        if let Some(kib) = console.rss_kib() {
            self.measures().rss_kib.push(kib);
        }
        Ok((end, console))
    }
}

/// First boot: the device enrolls and finds nothing to do. Its disk becomes the golden image.
fn provision(cx: &Cx, u: &Unit, token: &str, logs: &mut Vec<PathBuf>) -> Result<()> {
    disk::copy_raw(&cx.image.disk, &u.golden)?;
    // Places the guest must not reach: the controller itself through the user
    // network's gateway (what plain `-netdev user` would allow), another port of the
    // forwarded address, and an outside address. Enrolling through the forwarded port
    // right after is the control that the network works at all.
    let q = &cx.dev.qemu;
    let probes = [
        format!("10.0.2.2:{}", cx.ctl.port),
        format!("{}:{}", q.controller_ip, q.controller_port + 1),
        "1.1.1.1:80".to_string(),
    ];
    let args = [
        ("molt_token", token.to_string()),
        ("molt_name", u.device.clone()),
        ("molt_probe", probes.join(",")),
    ];
    let (end, c) = cx.boot_to_end(&format!("provision-{}", u.device), &u.golden, &args, logs)?;
    ensure!(
        end == End::PowerOff,
        "the guest ended with {end:?}, not a power-off"
    );
    for p in &probes {
        ensure!(
            c.has(&format!("MOLT-PROBE {p} unreachable")),
            "the guest could reach {p} (or did not try): networking is not restricted to the controller"
        );
    }
    c.expect_ok("MOLT-ENROLL rc=", "molt-agent enroll failed")?;
    c.expect_clean("boot")?;
    c.expect_clean("final")?;
    c.expect_ok("MOLT-AGENT-EXIT rc=", "molt-agent run --once failed")?;
    expect_snapshot(
        &c,
        "final",
        "slots/a",
        |at| format!("a new device is on {at}, not slots/a"),
        ("the factory snapshot", &cx.factory),
    )?;
    let d = cx
        .ctl
        .device(&u.device)?
        .with_context(|| format!("the controller does not list {} after enrollment", u.device))?;
    ensure!(d["active_version"] == "factory", "the controller shows {d}");
    Ok(())
}

/// A deployment installs and reports success; after a reboot the disk holds it.
fn success(cx: &Cx, u: &Unit, update: u64, logs: &mut Vec<PathBuf>) -> Result<()> {
    let (disk, id) = cx.deployed_disk(u, "success", update)?;
    let (end, c) = cx.boot_to_end("success-install", &disk, &[], logs)?;
    ensure!(
        end == End::PowerOff,
        "the guest ended with {end:?}, not a power-off"
    );
    c.expect_ok("MOLT-AGENT-EXIT rc=", "molt-agent run --once failed")?;
    c.expect_clean("final")?;
    cx.expect_deployment(id, u, "success", "1.0.0")?;
    expect_snapshot(
        &c,
        "final",
        "slots/b",
        |at| format!("the update is not active: current -> {at}"),
        ("the installed update", &cx.good),
    )?;
    ensure!(c.rss_kib().is_some(), "/init printed no MOLT-RSS line");

    let (end, c) = cx.boot_to_end("success-reboot", &disk, &[], logs)?;
    ensure!(end == End::PowerOff, "the reboot ended with {end:?}");
    c.expect_clean("boot")?;
    expect_snapshot(
        &c,
        "raw",
        "slots/b",
        |at| format!("after a reboot current -> {at}"),
        ("the update after a reboot", &cx.good),
    )?;
    host_check(cx, &disk, "slots/b", &cx.good.clone(), "success")
}

/// A failing health check with `reboot = true`: the guest reboots and comes back on the factory snapshot.
fn rollback(cx: &Cx, u: &Unit, update: u64, logs: &mut Vec<PathBuf>) -> Result<()> {
    let (disk, id) = cx.deployed_disk(u, "rollback", update)?;
    let (end, c) = cx.boot_to_end("rollback-install", &disk, &[], logs)?;
    ensure!(
        end == End::Reboot,
        "the guest ended with {end:?}: the rollback's reboot did not happen"
    );
    ensure!(
        c.has("MOLT-REBOOT requested"),
        "the reboot did not come from the agent's reboot command"
    );
    ensure!(
        c.has("health check: the app does not answer"),
        "the health check did not run"
    );
    c.expect_clean("final")?;
    let (end, c) = cx.boot_to_end("rollback-after-reboot", &disk, &[], logs)?;
    ensure!(
        end == End::PowerOff,
        "the boot after the rollback ended with {end:?}"
    );
    c.expect_clean("boot")?;
    for tag in ["raw", "final"] {
        expect_snapshot(
            &c,
            tag,
            "slots/a",
            |at| format!("after the rollback ({tag}) current -> {at}"),
            ("the factory snapshot after the rollback", &cx.factory),
        )?;
    }
    cx.expect_deployment(id, u, "rolled_back", "factory")?;
    host_check(cx, &disk, "slots/a", &cx.factory.clone(), "rollback")
}

/// The disk read on the host: the file system checks clean and `current` holds `want`.
fn host_check(cx: &Cx, disk: &Path, current: &str, want: &Tree, name: &str) -> Result<()> {
    let on = disk::inspect(
        disk,
        &cx.dev.disk.data_dir,
        &cx.work.join(format!("{name}-inspect")),
    )?;
    ensure!(
        on.fsck.0 == 0,
        "e2fsck -fn on the host: exit {}\n{}",
        on.fsck.0,
        on.fsck.1
    );
    ensure!(
        on.current == current,
        "on the disk current -> {}, not {current}",
        on.current
    );
    expect_tree("the active snapshot read on the host", want, &on.tree)
}

fn print_measures(cx: &Cx, total: Duration) {
    let m = cx.measures();
    println!("\nqemu-test: measurements (TCG; timings vary with the machine's load)");
    println!(
        "  agent: static aarch64-musl, stripped: {} bytes ({:.1} MiB)",
        cx.image.agent_bytes,
        cx.image.agent_bytes as f64 / (1 << 20) as f64
    );
    if !m.boots.is_empty() {
        let mut wall: Vec<f64> = m.boots.iter().map(|b| b.0.as_secs_f64()).collect();
        wall.sort_by(f64::total_cmp);
        let mut up: Vec<f64> = m.boots.iter().map(|b| b.1).collect();
        up.sort_by(f64::total_cmp);
        println!(
            "  boot to /init's first marker ({} boots, kernel {}): median {:.2}s wall (min {:.2}, max {:.2}), guest uptime median {:.2}s",
            wall.len(),
            cx.image.kernel_release,
            wall[wall.len() / 2],
            wall[0],
            wall[wall.len() - 1],
            up[up.len() / 2]
        );
    }
    if let Some(max) = m.rss_kib.iter().max() {
        println!(
            "  agent peak RSS (VmHWM) in the guest during an install: {max} KiB (over {} boots)",
            m.rss_kib.len()
        );
    }
    for (name, secs) in &m.scenarios {
        println!("  scenario {name}: {secs:.1}s");
    }
    if !m.rounds.is_empty() {
        println!("  power-cut rounds:");
        for r in &m.rounds {
            println!(
                "    {:<22} {:<10} cut in {:<28} came up on the {:<13} then {:<12} {:5.1}s",
                r.name,
                format!("{:?}", r.kind),
                format!("{}{}", r.landed, if r.in_window { "" } else { " (!)" }),
                r.after_cut,
                r.outcome,
                r.secs
            );
        }
        let secs: Vec<f64> = m.rounds.iter().map(|r| r.secs).collect();
        println!(
            "  per round: mean {:.1}s, max {:.1}s",
            secs.iter().sum::<f64>() / secs.len() as f64,
            secs.iter().copied().fold(0.0, f64::max)
        );
    }
    println!("  qemu-test total: {:.1}s", total.as_secs_f64());
}

/// Snapshot `tag` on console `c` has `current` on `slot` (else fails with what
/// `misplaced` says of where it points) and holds the tree `want`, named `what`.
fn expect_snapshot(
    c: &Console,
    tag: &str,
    slot: &str,
    misplaced: impl FnOnce(&str) -> String,
    (what, want): (&str, &Tree),
) -> Result<()> {
    let snap = c.snapshot(tag)?;
    ensure!(snap.current == slot, "{}", misplaced(&snap.current));
    expect_tree(what, want, &snap.tree)
}

fn expect_tree(what: &str, want: &Tree, got: &Tree) -> Result<()> {
    ensure!(
        want == got,
        "{what} does not match: {}",
        disk::diff(want, got)
    );
    Ok(())
}

/// The tree a patch produces: `base` with every file below `dir` placed at `dest`.
fn patched(base: &Tree, dir: &Path, dest: &str) -> Result<Tree> {
    let mut tree = base.clone();
    for (p, d) in disk::hash_tree(dir)? {
        tree.insert(format!("{dest}/{p}"), d);
    }
    Ok(tree)
}

/// `len` bytes that zstd cannot shrink (xorshift64*), the same on every run.
fn write_payload(path: &Path, len: u64) -> Result<()> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len as usize);
    fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let e = e?;
        let dst = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dst)?;
        } else {
            fs::copy(e.path(), &dst)
                .with_context(|| format!("cannot copy {}", e.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cuts::MIN_ROUNDS;
    use super::*;

    /// `qemu-test`'s arguments as clap parses them.
    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        let args = std::iter::once("qemu-test").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(args).map(|c| c.options)
    }

    #[test]
    fn options_are_parsed_and_checked() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.rounds, o.jobs, o.echo),
            (CUTS.len(), DEFAULT_JOBS, false)
        );
        let d = Options::default();
        assert_eq!((d.rounds, d.jobs, d.echo), (o.rounds, o.jobs, o.echo));
        assert!(CUTS.len() >= MIN_ROUNDS);
        let o = parse(&["--rounds", "3", "--echo"]).unwrap();
        assert_eq!((o.rounds, o.echo), (3, true));
        assert!(parse(&["--rounds", "99"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert_eq!(parse(&["--jobs", "1"]).unwrap().jobs, 1);
        assert!(parse(&["--jobs", "0"]).is_err());
    }

    #[test]
    fn a_patch_places_the_recipe_files_over_the_base() {
        let dir = std::env::temp_dir().join(format!("molt-xtask-patched-{}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("version.txt"), "2\n").unwrap();
        fs::write(dir.join("sub/new"), "n").unwrap();
        let mut base = Tree::new();
        base.insert("opt/app/version.txt".into(), "old".into());
        base.insert("opt/app/hello".into(), "h".into());
        let t = patched(&base, &dir, "opt/app").unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t["opt/app/hello"], "h");
        assert_ne!(t["opt/app/version.txt"], "old");
        assert!(t.contains_key("opt/app/sub/new"));
    }
}
