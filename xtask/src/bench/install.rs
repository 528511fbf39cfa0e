//! `bench install-local` and `bench memory`: `molt-agent install` of the workload's bundle from a file onto a fresh loop-mounted ext4, against `zstd -dc | tar -x && sync`, and the agent's peak RSS.
//!
//! The agent's `root` is the loop mount; the baseline extracts into a directory
//! on the same file system. Before each timed run the previous output is removed
//! and `sync` flushes everything, untimed, so every run does the same work from a
//! clean writeback state. Removing the agent's var/ makes the next install
//! provision a fresh device and write the whole tree into an empty slot.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::servers::{Controller, Nginx};
use super::slot::{empty_target, reset, same_tree, LoopMount};
use super::util::{
    gnu_time, interleave, is_root, median, quiet, require, throughput_table, time, Side, Stats,
};
use super::workload::{file_mib, mib, Built, Workload};
use super::{Bins, Ctx, Outcome, Row, Verdict};
use crate::display;

/// Agent runs per bundle for the peak-RSS figure (the largest is reported), and
/// extra runs for the per-phase breakdown (the median of each phase is reported).
const RSS_RUNS: usize = 3;

/// A device rooted on a fresh loop mount, trusting the workload's key.
pub(crate) struct Device {
    /// The file system; dropped last.
    pub target: LoopMount,
    /// agent.toml.
    pub cfg: PathBuf,
    /// The agent's var/ (removing it makes a fresh device).
    pub var: PathBuf,
    /// The active snapshot after an install.
    pub active: PathBuf,
}

impl Device {
    /// Creates the loop mount under `work` and an agent.toml with `extra` lines appended.
    pub(crate) fn create(work: &Path, wl: &Workload, extra: &str) -> Result<Device> {
        let target = LoopMount::create(work)?;
        let cfg = config(&work.join("agent.toml"), &target.mnt, &wl.public, extra)?;
        Ok(Device {
            var: target.mnt.join("var"),
            active: target.mnt.join("var/lib/molt/current"),
            target,
            cfg,
        })
    }

    /// A second configuration of the same device, `extra` appended (e.g. `durable = false`).
    pub(crate) fn variant(&self, name: &str, wl: &Workload, extra: &str) -> Result<PathBuf> {
        let path = self.cfg.with_file_name(format!("agent-{name}.toml"));
        config(&path, &self.target.mnt, &wl.public, extra)
    }

    /// Removes var/ and `others` (untimed, as before every run) and unmounts the
    /// file system; its description, for the report.
    pub(crate) fn close(self, others: &[&Path]) -> Result<String> {
        let mut clear = vec![self.var.as_path()];
        clear.extend_from_slice(others);
        reset(&clear)?;
        Ok(self.target.describe())
    }

    /// `molt-agent -c agent.toml install SOURCE`.
    pub(crate) fn install(&self, agent: &Path, source: &str) -> Command {
        install_with(agent, &self.cfg, source)
    }

    /// molt's side of a comparison against a baseline writing to `baseline`: each
    /// run starts from a fresh device (var/ and `baseline` removed, untimed), times
    /// `molt-agent install SOURCE`, and the first leaves `want` in the active slot.
    pub(crate) fn molt_side<'a>(
        &'a self,
        agent: &'a Path,
        source: &'a str,
        want: &'a Path,
        baseline: &'a Path,
    ) -> Side<'a> {
        checked_side(
            "molt",
            want,
            &self.active,
            || reset(&[&self.var, baseline]),
            || time(&mut self.install(agent, source)),
        )
    }
}

/// `molt-agent -c CFG install SOURCE`.
pub(crate) fn install_with(agent: &Path, cfg: &Path, source: &str) -> Command {
    let mut c = Command::new(agent);
    c.arg("-c").arg(cfg).arg("install").arg(source);
    c
}

/// Writes an agent.toml rooted at `mnt` that trusts `public`, with `extra` appended.
fn config(path: &Path, mnt: &Path, public: &str, extra: &str) -> Result<PathBuf> {
    fs::write(
        path,
        format!(
            "root = \"{}\"\ndata_dir = \"var/lib/molt\"\ncompatible = \"bench\"\ntrusted_keys = [\"{public}\"]\n{extra}",
            mnt.display(),
        ),
    )?;
    Ok(path.to_path_buf())
}

/// Why an install benchmark cannot run here, if it cannot: it needs root for the loop mount.
pub(crate) fn cannot_install() -> Option<String> {
    (!is_root()).then(|| "mounts a loop device, which needs root".to_string())
}

/// The skipped outcome of install benchmark `id` (its row's `what`, `base` and
/// `target`) where it [`cannot_install`], or `None` where it can run.
pub(crate) fn install_skipped(id: &str, what: &str, base: &str, target: &str) -> Option<Outcome> {
    cannot_install().map(|why| Outcome::skipped(id, what, base, target, &why))
}

/// One side of an install comparison: untimed `prepare`, the timed `run`, and after
/// the first run (untimed) a check that `got` holds the whole `want` tree, so a run
/// that wrote less than the tree cannot pass for a fast one.
pub(crate) fn checked_side<'a>(
    name: &'a str,
    want: &'a Path,
    got: &'a Path,
    mut prepare: impl FnMut() -> Result<()> + 'a,
    mut run: impl FnMut() -> Result<f64> + 'a,
) -> Side<'a> {
    let mut checked = false;
    Side {
        name,
        run: Box::new(move || {
            prepare()?;
            let t = run()?;
            if !checked {
                same_tree(want, got)?;
                checked = true;
            }
            Ok(t)
        }),
    }
}

/// The programs a device and the check of its tree need, after a benchmark's own.
pub(crate) const DEVICE_TOOLS: [(&str, &str); 3] = [
    ("mkfs.ext4", "e2fsprogs"),
    ("losetup", "mount"),
    ("diff", "diffutils"),
];

/// What an install benchmark starts from: the binaries, the workload, benchmark
/// `id`'s work directory, and a fresh device in it (or why none could be set up).
pub(crate) fn open(
    ctx: &mut Ctx,
    id: &str,
) -> Result<(Bins, Rc<Workload>, PathBuf, Result<Device>)> {
    let bins = ctx.bins()?;
    let wl = ctx.workload()?;
    let work = ctx.work(id)?;
    let dev = Device::create(&work, &wl, "");
    Ok((bins, wl, work, dev))
}

/// The device, or the outcome that skips install benchmark `id` (its row's `what`,
/// `base` and `target`) because no loop-mounted ext4 could be set up.
pub(crate) fn device_or_skip(
    dev: Result<Device>,
    (id, what, base, target): (&str, &str, &str, &str),
) -> Result<Device, Outcome> {
    dev.map_err(|e| {
        let why = format!("cannot set up a loop-mounted ext4: {e:#}");
        Outcome::skipped(id, what, base, target, &why)
    })
}

/// `ctx.rounds` interleaved rounds of benchmark `id`: molt installing the `big`
/// bundle on `dev` against the baseline `(name, dir, command)`, which runs
/// `command` into `dir` on the same file system; each side is checked once to
/// leave the whole `big` tree. Molt's and the baseline's times.
pub(crate) fn molt_against(
    ctx: &Ctx,
    id: &str,
    (dev, agent): (&Device, &Path),
    big: &Built,
    (name, dir, mut command): (&str, &Path, impl FnMut() -> Command),
) -> Result<(Stats, Stats)> {
    let bundle = big.bundle.to_string_lossy().into_owned();
    let stats = interleave(
        id,
        ctx.rounds,
        &mut [
            dev.molt_side(agent, &bundle, &big.tree.dir, dir),
            checked_side(
                name,
                &big.tree.dir,
                dir,
                || empty_target(&dev.var, dir),
                || time(&mut command()),
            ),
        ],
    )?;
    Ok((stats[0], stats[1]))
}

/// The throughput table of molt installing the `big` bundle (`m`) against a
/// baseline (`label`, reading `input` of `kind`, `b`), then the sentence on the
/// tree and the file system (`fs_desc`) that opens a comparison's details.
pub(crate) fn install_table(
    big: &Built,
    fs_desc: &str,
    m: Stats,
    (label, input, kind): (&str, &Path, &str),
    b: Stats,
) -> String {
    let tree_mib = mib(big.tree.bytes);
    let table = throughput_table(
        tree_mib,
        &[
            ("`molt-agent install`", &big.bundle, "bundle", m),
            (label, input, kind, b),
        ],
    );
    format!(
        "{table}\nTree {tree_mib:.0} MiB in {} files; {fs_desc}.",
        big.tree.files
    )
}

const LOCAL_WHAT: &str = "`molt-agent install FILE`: full verification, durable, atomic swap";
const LOCAL_BASE: &str = "`zstd -dc tree.tar.zst \\| tar -x -C slot && sync`";

/// `bench install-local`.
pub fn local(ctx: &mut Ctx) -> Result<Outcome> {
    let row = ("install-local", LOCAL_WHAT, LOCAL_BASE, "≤ 0.90×");
    if let Some(skipped) = install_skipped(row.0, row.1, row.2, row.3) {
        return Ok(skipped);
    }
    require(&[("zstd", "zstd"), ("tar", "tar")])?;
    require(&DEVICE_TOOLS)?;
    let (bins, wl, _, dev) = open(ctx, row.0)?;
    let dev = match device_or_skip(dev, row) {
        Ok(d) => d,
        Err(skipped) => return Ok(skipped),
    };
    let big = &wl.big;
    let base_dir = dev.target.mnt.join("baseline");
    let bundle = big.bundle.to_string_lossy().into_owned();
    let baseline_sh = format!(
        "zstd -dc '{}' | tar -x -C '{}' && sync",
        big.tarzst.display(),
        base_dir.display()
    );
    let baseline = || {
        let mut c = Command::new("sh");
        c.arg("-c").arg(&baseline_sh);
        c
    };
    let (m, b) = molt_against(
        ctx,
        row.0,
        (&dev, &bins.agent),
        big,
        ("baseline", &base_dir, baseline),
    )?;

    // Where the agent's time goes: per-phase medians over a few extra runs.
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..RSS_RUNS {
        reset(&[&dev.var, &base_dir])?;
        for (i, (name, secs)) in phase_times(&mut dev.install(&bins.agent, &bundle))?
            .0
            .into_iter()
            .enumerate()
        {
            match phases.get_mut(i) {
                Some((n, v)) if *n == name => v.push(secs),
                Some(_) => bail!("the agent's phases differ between runs (at `{name}`)"),
                None => phases.push((name, vec![secs])),
            }
        }
    }
    let fs_desc = dev.close(&[&base_dir])?;

    let table = install_table(
        big,
        &fs_desc,
        m,
        ("`zstd -dc \\| tar -x && sync`", &big.tarzst, "tar.zst"),
        b,
    );
    let mut details = format!("{table}\n\n");
    let _ = write!(
        details,
        "Where the agent's time goes (median of {RSS_RUNS} extra runs, from when each \
         `deployment ID: PHASE` line reaches its stderr; `start` is process start to the first \
         phase, the last span ends at exit):\n\n| phase | s | share |\n|---|---:|---:|\n"
    );
    let medians: Vec<(String, f64)> = phases
        .into_iter()
        .map(|(name, mut v)| (name, median(&mut v)))
        .collect();
    let total: f64 = medians.iter().map(|m| m.1).sum();
    for (name, secs) in &medians {
        let _ = writeln!(
            details,
            "| {name} | {secs:.3} | {:.0} % |",
            100.0 * secs / total.max(f64::MIN_POSITIVE)
        );
    }
    let _ = write!(
        details,
        "\nCommands (workload in target/bench/workload/, mount in target/bench/install-local/):\n\n\
         ```sh\n\
         molt bundle build tree-200.toml -o tree-200.molt --key bench.secret   # kind = \"full\", destination = \"/\"\n\
         tar -cf - -C tree-200 . | zstd -3 -T1 -q -f -o tree-200.tar.zst\n\
         truncate -s 2G slot.img && mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 slot.img\n\
         losetup --find --show --direct-io=on slot.img && mount /dev/loopN mnt\n\
         # each round, both sides, alternating which goes first; untimed before each:\n\
         rm -rf mnt/var mnt/baseline && sync             # + mkdir mnt/baseline for the baseline\n\
         molt-agent -c agent.toml install tree-200.molt   # agent.toml: root = \"mnt\"\n\
         sh -c 'zstd -dc tree-200.tar.zst | tar -x -C mnt/baseline && sync'\n\
         ```\n"
    );
    Ok(Outcome {
        rows: vec![Row::time_ratio(
            "install-local",
            LOCAL_WHAT,
            LOCAL_BASE,
            m,
            b,
            0.9,
        )],
        details,
    })
}

const MEMORY_WHAT: &str = "agent peak RSS installing the 20 MiB and the 200 MiB bundle";

/// `bench memory`: peak RSS of `molt-agent install` for the small and the big bundle.
pub fn memory(ctx: &mut Ctx) -> Result<Outcome> {
    if let Some(skipped) = install_skipped("memory", MEMORY_WHAT, "—", "flat, ≤ 16 MiB") {
        return Ok(skipped);
    }
    require(&[("/usr/bin/time", "time")])?;
    let (bins, wl, work, dev) = open(ctx, "memory")?;
    let dev = dev?;
    let out = work.join("rss.txt");
    let mut peaks = Vec::new();
    for built in [&wl.small, &wl.big] {
        let mut peak = 0u64;
        for _ in 0..RSS_RUNS {
            reset(&[&dev.var])?;
            let install = dev.install(&bins.agent, &built.bundle.to_string_lossy());
            peak = peak.max(gnu_time("%M", &out, &install)?[0] as u64);
        }
        peaks.push(peak);
    }
    reset(&[&dev.var])?;
    drop(dev);
    let mut details =
        String::from("| bundle | tree | files | agent peak RSS |\n|---|---:|---:|---:|\n");
    for (built, kib) in [&wl.small, &wl.big].into_iter().zip(&peaks) {
        let _ = writeln!(
            details,
            "| {:.1} MiB | {:.1} MiB | {} | {:.1} MiB |",
            file_mib(&built.bundle),
            mib(built.tree.bytes),
            built.tree.files,
            *kib as f64 / 1024.0
        );
    }
    let _ = write!(
        details,
        "\nPeak RSS: the largest of {RSS_RUNS} runs of \
         `/usr/bin/time -f %M molt-agent -c agent.toml install tree.molt` each (a fresh device \
         every run). Flat means the 200 MiB install peaks within 1 MiB of the 20 MiB one.\n"
    );
    let (small, big) = (peaks[0] as f64 / 1024.0, peaks[1] as f64 / 1024.0);
    let flat = big - small <= 1.0;
    Ok(Outcome {
        rows: vec![Row {
            id: "memory".into(),
            what: MEMORY_WHAT.into(),
            baseline: "—".into(),
            result: format!("**{big:.1} MiB** at 200 MiB, {small:.1} MiB at 20 MiB"),
            target: "flat, ≤ 16 MiB".into(),
            verdict: Verdict::from(flat && big <= 16.0),
        }],
        details,
    })
}

/// Seconds the agent spends in each phase of one install (and its log), from the moment each
/// `deployment ID: PHASE` line reaches its stderr (the agent logs a phase right
/// after journaling it). `start` is process start to the first phase line; the
/// last line's span ends when the process exits. Untimed in the figures above:
/// reading the pipe line by line is a little more work than collecting it.
pub(crate) fn phase_times(cmd: &mut Command) -> Result<(Vec<(String, f64)>, String)> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    let mut marks = vec![("start".to_string(), 0.0)];
    let mut log = String::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let line = line?;
            let at = t0.elapsed().as_secs_f64();
            if let Some(phase) = phase_of(&line) {
                marks.push((phase.to_string(), at));
            }
            log.push_str(&line);
            log.push('\n');
        }
    }
    let status = child.wait()?;
    let end = t0.elapsed().as_secs_f64();
    if !status.success() {
        bail!("`{}` failed ({status}): {log}", display(cmd));
    }
    let spans = marks
        .iter()
        .enumerate()
        .map(|(i, (name, at))| {
            let next = marks.get(i + 1).map_or(end, |m| m.1);
            (name.clone(), next - at)
        })
        .collect();
    Ok((spans, log))
}

/// The phase a `deployment ID: PHASE` log line announces, if it is one.
fn phase_of(line: &str) -> Option<&str> {
    let rest = &line[line.find("deployment ")?..];
    let word = rest.rsplit(": ").next()?.trim();
    let is_word = !word.is_empty()
        && rest.len() > word.len()
        && word.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
    is_word.then_some(word)
}

const DURABLE_WHAT: &str =
    "durable install vs the same install with `durable = false` (no fsync, no syncfs)";
const DURABLE_BASE: &str = "molt's own non-durable mode";

/// `bench durability`: what making the install durable costs.
pub fn durability(ctx: &mut Ctx) -> Result<Outcome> {
    if let Some(skipped) = install_skipped("durability", DURABLE_WHAT, DURABLE_BASE, "≤ 1.25×") {
        return Ok(skipped);
    }
    let (bins, wl, _, dev) = open(ctx, "durability")?;
    let dev = dev?;
    let volatile = dev.variant("volatile", &wl, "durable = false\n")?;
    let bundle = wl.big.bundle.to_string_lossy().into_owned();
    // The floor: what flushing the same tree costs a plain `tar -x` on the same file
    // system (one `sync -f` at the end, the least any durable install can do). On a
    // CPU-bound 2-core machine the kernel's writeback work lands in the timed window
    // whatever the installer does, so this shows how much of molt's cost is the kernel's.
    let tar_dir = dev.target.mnt.join("tar");
    let tar_sh = format!(
        "zstd -dc '{}' | tar -x -C '{}'",
        wl.big.tarzst.display(),
        tar_dir.display()
    );
    let tar_sync_sh = format!("{tar_sh} && sync -f '{}'", tar_dir.display());
    let fresh_tar_dir = || empty_target(&dev.var, &tar_dir);
    let stats = interleave(
        "durability",
        ctx.rounds,
        &mut [
            Side {
                name: "durable",
                run: Box::new(|| {
                    reset(&[&dev.var])?;
                    time(&mut dev.install(&bins.agent, &bundle))
                }),
            },
            Side {
                name: "durable = false",
                run: Box::new(|| {
                    reset(&[&dev.var])?;
                    time(&mut install_with(&bins.agent, &volatile, &bundle))
                }),
            },
            Side {
                name: "tar -x && sync",
                run: Box::new(|| {
                    fresh_tar_dir()?;
                    time(Command::new("sh").arg("-c").arg(&tar_sync_sh))
                }),
            },
            Side {
                name: "tar -x",
                run: Box::new(|| {
                    fresh_tar_dir()?;
                    time(Command::new("sh").arg("-c").arg(&tar_sh))
                }),
            },
        ],
    )?;
    let fs_desc = dev.close(&[&tar_dir])?;
    let (d, v, ts, t) = (stats[0], stats[1], stats[2], stats[3]);
    let details = format!(
        "| what | median s (min–max) |\n|---|---:|\n\
         | `molt-agent install tree-200.molt` (durable, the default) | {} |\n\
         | the same with `durable = false` in agent.toml | {} |\n\
         | `zstd -dc tree-200.tar.zst \\| tar -x && sync -f` (the floor: one flush at the end) | {} |\n\
         | `zstd -dc tree-200.tar.zst \\| tar -x` | {} |\n\n\
         Durability costs molt **{:+.3} s** ({:.2}×); in the same rounds, one `sync -f` at the \
         end costs tar **{:+.3} s** ({:.2}×). Where the durable install's extra time goes, by \
         perf: the kernel's writeback of the slot (ext4 block allocation, unwritten-extent \
         conversion, the loop device's I/O) on a machine whose two cores the install already \
         keeps busy, so it adds to the wall clock rather than overlapping it.\n\n\
         Durable: the slot is flushed with `syncfs` at every download checkpoint and before the \
         seal, the journal and slot record with `fdatasync`, the `current` swap with file and \
         directory fsyncs. `durable = false` skips all of them and leaves writeback to the kernel \
         (the untimed `sync` before the next round flushes it). Tree {:.0} MiB in {} files; {fs_desc}.\n\n\
         ```sh\n\
         rm -rf mnt/var && sync   # untimed, before each run\n\
         molt-agent -c agent.toml install tree-200.molt\n\
         molt-agent -c agent-volatile.toml install tree-200.molt   # + durable = false\n\
         rm -rf mnt/tar && mkdir mnt/tar && sync   # untimed, before each tar run\n\
         sh -c 'zstd -dc tree-200.tar.zst | tar -x -C mnt/tar && sync -f mnt/tar'\n\
         sh -c 'zstd -dc tree-200.tar.zst | tar -x -C mnt/tar'\n\
         ```\n",
        d.show(3),
        v.show(3),
        ts.show(3),
        t.show(3),
        d.median - v.median,
        d.median / v.median,
        ts.median - t.median,
        ts.median / t.median,
        mib(wl.big.tree.bytes),
        wl.big.tree.files,
    );
    Ok(Outcome {
        rows: vec![
            Row::time_ratio("durability", DURABLE_WHAT, DURABLE_BASE, d, v, 1.25),
            Row {
                id: "durability-floor".into(),
                what: "what the same flush costs `tar -x` on the same slot (informational)".into(),
                baseline: "`zstd -dc \\| tar -x` without the final `sync -f`".into(),
                result: format!(
                    "{:.2}× time ({:+.3} s; molt pays {:+.3} s)",
                    ts.median / t.median,
                    ts.median - t.median,
                    d.median - v.median
                ),
                target: "— (informational)".into(),
                verdict: Verdict::Info,
            },
        ],
        details,
    })
}

const HTTP_WHAT: &str =
    "`molt-agent install URL` from molt-controller on 127.0.0.1, streamed (no temporary file)";
const HTTP_BASE: &str = "`curl -s URL \\| zstd -dc \\| tar -x && sync` (nginx serving the tar.zst)";

/// `bench install-http`: the install-local comparison, both sides fetched over loopback HTTP.
pub fn http(ctx: &mut Ctx) -> Result<Outcome> {
    if let Some(skipped) = install_skipped("install-http", HTTP_WHAT, HTTP_BASE, "≤ 1.00×") {
        return Ok(skipped);
    }
    require(&[
        ("zstd", "zstd"),
        ("tar", "tar"),
        ("curl", "curl"),
        ("diff", "diffutils"),
    ])?;
    let (bins, wl, work, dev) = open(ctx, "install-http")?;
    let dev = dev?;
    // Neither server is pinned: each side gets the machine as it would in the field.
    let ctl = Controller::start(
        &bins,
        &work.join("controller"),
        "0-1",
        &["--trusted-key", &wl.public],
    )?;
    let group = ctl.molt(&bins, &["groups", "create", "bench", "--json"])?;
    let group: serde_json::Value = serde_json::from_str(&group)?;
    let token = group["enrollment_token"]
        .as_str()
        .with_context(|| format!("no enrollment token in {group}"))?;
    let base_url = ctl.url.clone();
    quiet(Command::new(&bins.agent).arg("-c").arg(&dev.cfg).args([
        "enroll",
        "--controller",
        &base_url,
        "--name",
        "bench-http",
        "--token",
        token,
    ]))?;
    // The enrollment lives in the data directory every round removes: kept aside and
    // put back (untimed), so each install starts from a fresh slot as the same device.
    let enrollment = dev.var.join("lib/molt/controller.json");
    let kept = fs::read(&enrollment).context("the agent kept no enrollment")?;
    ctl.molt(&bins, &["update", "push", &wl.big.bundle.to_string_lossy()])?;
    let dep = ctl.molt(&bins, &["deploy", "1.0.0", "--group", "bench", "--json"])?;
    let dep: serde_json::Value = serde_json::from_str(&dep)?;
    let id = dep["id"]
        .as_u64()
        .with_context(|| format!("no deployment id in {dep}"))?;
    let url = format!("{base_url}/api/v1/device/deployments/{id}/bundle");
    let nginx = Nginx::start(&work.join("nginx"), &wl.dir, "0-1")?;
    let tar_url = format!(
        "http://{}/{}",
        nginx.addr,
        wl.big
            .tarzst
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    );
    let base_dir = dev.target.mnt.join("baseline");
    let baseline_sh = format!(
        "curl -sf '{tar_url}' | zstd -dc | tar -x -C '{}' && sync",
        base_dir.display()
    );
    let fresh_device = || -> Result<()> {
        reset(&[&dev.var, &base_dir])?;
        fs::create_dir_all(enrollment.parent().context("enrollment path")?)?;
        fs::write(&enrollment, &kept)?;
        quiet(&mut Command::new("sync"))?;
        Ok(())
    };
    let big = &wl.big;
    let stats = interleave(
        "install-http",
        ctx.rounds,
        &mut [
            checked_side("molt", &big.tree.dir, &dev.active, fresh_device, || {
                time(&mut dev.install(&bins.agent, &url))
            }),
            checked_side(
                "baseline",
                &big.tree.dir,
                &base_dir,
                || {
                    fresh_device()?;
                    fs::create_dir(&base_dir)?;
                    quiet(&mut Command::new("sync"))?;
                    Ok(())
                },
                || time(Command::new("bash").args(["-o", "pipefail", "-c", &baseline_sh])),
            ),
        ],
    )?;
    // No temporary file: what the agent itself wrote (GNU time's %O, file-system
    // output blocks of 512 bytes) must be about the tree, not the tree plus the bundle.
    fresh_device()?;
    let out = work.join("io.txt");
    let blocks = gnu_time("%O", &out, &dev.install(&bins.agent, &url))?[0] as u64;
    let written = mib(blocks * 512);
    let (tree_mib, bundle_mib) = (mib(big.tree.bytes), file_mib(&big.bundle));
    let no_temp = written < tree_mib + bundle_mib / 2.0;
    fresh_device()?;
    drop(nginx);
    drop(ctl);
    let fs_desc = dev.target.describe();
    drop(dev);
    let (m, b) = (stats[0], stats[1]);
    let details = format!(
        "| what | median s (min–max) | MiB/s (tree) |\n|---|---:|---:|\n\
         | `molt-agent install http://127.0.0.1:P/api/v1/device/deployments/ID/bundle` ({bundle_mib:.1} MiB) | {} | {:.0} |\n\
         | `curl -s http://127.0.0.1:Q/tree-200.tar.zst \\| zstd -dc \\| tar -x && sync` ({:.1} MiB) | {} | {:.0} |\n\n\
         molt-controller serves the bundle (pushed with `molt update push`, deployed to the \
         device's group; the agent is enrolled and sends its credential); nginx (sendfile, one \
         worker) serves the tar.zst. Tree {tree_mib:.0} MiB in {} files; {fs_desc}.\n\n\
         No temporary file: in one extra run the agent wrote {written:.1} MiB (GNU time's file-system \
         outputs) for a {tree_mib:.1} MiB tree; a copy of the {bundle_mib:.1} MiB bundle would show \
         as {:.0} MiB or more.\n\n\
         ```sh\n\
         molt-controller serve --data controller --listen 127.0.0.1:0 --trusted-key $(cat bench.pub)\n\
         molt groups create bench && molt-agent -c agent.toml enroll --controller URL --name bench-http --token T\n\
         molt update push tree-200.molt && molt deploy 1.0.0 --group bench\n\
         nginx -c nginx.conf   # root = the workload directory\n\
         # each round, untimed: rm -rf mnt/var mnt/baseline, put the enrollment back, sync\n\
         molt-agent -c agent.toml install URL/api/v1/device/deployments/ID/bundle\n\
         bash -o pipefail -c 'curl -sf NGINX/tree-200.tar.zst | zstd -dc | tar -x -C mnt/baseline && sync'\n\
         ```\n",
        m.show(3),
        tree_mib / m.median,
        file_mib(&big.tarzst),
        b.show(3),
        tree_mib / b.median,
        big.tree.files,
        tree_mib + bundle_mib,
    );
    let mut row = Row::time_ratio("install-http", HTTP_WHAT, HTTP_BASE, m, b, 1.0);
    row.result.push_str(&format!(
        "; agent wrote {written:.0} MiB for a {tree_mib:.0} MiB tree"
    ));
    if !no_temp {
        row.verdict = Verdict::Missed;
    }
    Ok(Outcome {
        rows: vec![row],
        details,
    })
}
