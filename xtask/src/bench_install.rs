//! `cargo xtask bench install`: `molt-agent install` of a full bundle against `zstd -dc | tar -x && sync` of the same tree, on a fresh loop-mounted ext4, plus the agent's peak RSS.
//!
//! Workload: a deterministic ~200 MiB tree of ~5,000 files shaped like a root
//! file system (many small text files, a few hundred medium ones, a few dozen
//! 1–10 MiB binaries; text compresses, noise does not), generated from a seed
//! and cached under target/bench/install/. It is bundled with `molt bundle build`
//! (`kind = "full"`) and, for the baseline, with `tar -cf - . | zstd -3 -T1`.
//!
//! Target: a 1 GiB sparse image formatted ext4 and attached to a loop device,
//! created by the task (so every run starts from the same empty file system)
//! and always unmounted and detached, also on failure. The agent's `root` is the
//! mount point; the baseline extracts into a directory on the same file system.
//!
//! Each round runs both, in alternating order so neither always follows the
//! other's writeback: `molt-agent install` (full verification, durable slot,
//! atomic swap), and the baseline into a fresh empty directory. Before each timed
//! run the previous output is removed and `sync` flushes everything, untimed, so
//! each run does the same work from a clean page-cache writeback state. The first
//! round is a warm-up. The figure is the ratio of medians (molt / baseline).
//!
//! Peak RSS comes from `/usr/bin/time -f %M` around the agent, for a ~20 MiB and
//! the ~200 MiB bundle: bounded memory means the two are about equal.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::bench_util::{fill, median, min_max, require_tools, time, write_report, Rng};
use crate::{cargo, display, run_cmd};

/// Rounds per side, the first a warm-up; `--rounds N` overrides (for smoke tests).
const ROUNDS: usize = 11;
/// Agent runs per bundle for the peak-RSS figure (the largest is reported), and
/// extra runs for the per-phase breakdown (the median of each phase is reported).
const RSS_RUNS: usize = 3;
/// The workload's seed: change it (or the classes) and the cached trees are rebuilt.
const SEED: u64 = 0x6d6f_6c74_0001;
/// The loop image's size: room for one 200 MiB tree plus ext4's overhead, with slack
/// so the file system never runs near full (which would slow block allocation).
const IMAGE_BYTES: u64 = 1 << 30;
/// Where the bench's own files live, relative to the workspace root.
const WORK: &str = "target/bench/install";

/// A size class of the tree: `count` files between `lo` and `hi` bytes, drawn as
/// `lo * (hi/lo)^(u^skew)`: log-uniform for `skew = 1`, leaning to the small end
/// above it (real trees have many more 20 KiB files than 900 KiB ones).
struct Class {
    count: usize,
    lo: f64,
    hi: f64,
    skew: f64,
}

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// The full-size tree: 300 files under 1 KiB, 3,750 of 1–16 KiB, 900 of 16 KiB–1 MiB,
/// 40 of 1–10 MiB; about 200 MiB. The skews were picked to land near that total.
const CLASSES: [Class; 4] = [
    Class {
        count: 300,
        lo: 16.0,
        hi: KIB,
        skew: 1.0,
    },
    Class {
        count: 3750,
        lo: KIB,
        hi: 16.0 * KIB,
        skew: 1.0,
    },
    Class {
        count: 900,
        lo: 16.0 * KIB,
        hi: MIB,
        skew: 3.0,
    },
    Class {
        count: 40,
        lo: MIB,
        hi: 10.0 * MIB,
        skew: 3.0,
    },
];

/// What a file holds.
#[derive(Clone, Copy)]
enum Content {
    /// Words: compresses well (configuration, scripts, sources).
    Text,
    /// Noise: does not compress (images, already-compressed data).
    Noise,
    /// Alternating 64 KiB runs of both, like an executable with code and tables.
    Mixed,
}

/// One file of a tree.
struct Planned {
    path: String,
    size: usize,
    content: Content,
    seed: u64,
}

/// The files of a tree with `1/divisor` of the full counts, in a deterministic
/// order and layout: 8 × 16 directories, files spread across them at random.
fn plan(divisor: usize) -> Vec<Planned> {
    let mut rng = Rng::new(SEED ^ divisor as u64);
    let mut files: Vec<(usize, Content)> = Vec::new();
    for (ci, c) in CLASSES.iter().enumerate() {
        let n = (c.count / divisor).max(1);
        for j in 0..n {
            // Stratified draws: one per 1/n slice of the distribution, so a small
            // class (40 binaries) still spans its range instead of clumping.
            let u = (j as f64 + rng.unit()) / n as f64;
            let size = (c.lo * (c.hi / c.lo).powf(u.powf(c.skew))) as usize;
            let content = match ci {
                0 | 1 if rng.below(10) < 7 => Content::Text,
                2 if rng.below(2) == 0 => Content::Text,
                3 => Content::Mixed,
                _ => Content::Noise,
            };
            files.push((size, content));
        }
    }
    // Shuffle so each directory holds a mix of sizes, as real ones do.
    for i in (1..files.len()).rev() {
        files.swap(i, rng.below(i as u64 + 1) as usize);
    }
    files
        .into_iter()
        .enumerate()
        .map(|(i, (size, content))| {
            let ext = match content {
                Content::Text => "txt",
                Content::Noise => "dat",
                Content::Mixed => "bin",
            };
            Planned {
                path: format!("d{}/s{:02}/f{i:05}.{ext}", rng.below(8), rng.below(16)),
                size,
                content,
                seed: SEED
                    .wrapping_add((divisor as u64) << 32)
                    .wrapping_add(i as u64),
            }
        })
        .collect()
}

/// A generated tree: where it is, its file count and bytes.
struct Tree {
    dir: PathBuf,
    files: usize,
    bytes: u64,
}

/// Writes the tree `name` (`1/divisor` of the full size) under `work`, unless the
/// marker beside it shows the same plan was already written completely.
fn make_tree(work: &Path, name: &str, divisor: usize) -> Result<Tree> {
    let files = plan(divisor);
    let bytes: u64 = files.iter().map(|f| f.size as u64).sum();
    let dir = work.join(name);
    // The marker lives beside the tree, not in it, so neither the bundle nor the
    // tarball carries it; its text identifies the plan, so a changed generator
    // never reuses a stale tree.
    let marker = work.join(format!("{name}.complete"));
    let want = format!(
        "seed {SEED:#x} divisor {divisor} files {} bytes {bytes}\n",
        files.len()
    );
    if fs::read_to_string(&marker).ok().as_deref() != Some(want.as_str()) {
        println!(
            "generating {} ({} files, {:.0} MiB)",
            dir.display(),
            files.len(),
            bytes as f64 / MIB
        );
        let _ = fs::remove_file(&marker);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        for f in &files {
            let path = dir.join(&f.path);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let data = match f.content {
                Content::Text => fill(f.seed, f.size, true),
                Content::Noise => fill(f.seed, f.size, false),
                Content::Mixed => {
                    let mut v = Vec::with_capacity(f.size);
                    let mut k = 0u64;
                    while v.len() < f.size {
                        let run = (64 * 1024).min(f.size - v.len());
                        v.extend(fill(f.seed ^ (k << 40), run, k % 2 == 0));
                        k += 1;
                    }
                    v
                }
            };
            fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))?;
        }
        fs::write(&marker, &want)?;
    }
    Ok(Tree {
        dir,
        files: files.len(),
        bytes,
    })
}

/// Whether this process runs as root (effective uid 0), from /proc: xtask has no libc.
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                .map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Runs `cmd` quietly; fails with its output unless it succeeds. Returns stdout.
fn quiet(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `dir` is a mount point now, from /proc/self/mounts.
fn is_mounted(dir: &Path) -> bool {
    let Ok(canon) = dir.canonicalize() else {
        return false;
    };
    let canon = canon.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(1) == Some(canon.as_str()))
        })
        .unwrap_or(false)
}

/// A loop-mounted ext4 created for this run. Dropping it unmounts the file system,
/// detaches the loop device and deletes the image, whatever happened meanwhile:
/// a failed round must not leave a mount or a loop device behind.
struct LoopMount {
    img: PathBuf,
    mnt: PathBuf,
    dev: String,
    mounted: bool,
}

impl LoopMount {
    /// Creates the image, formats, attaches and mounts it; on failure everything
    /// done so far is undone and the error says which step failed.
    fn create(work: &Path) -> Result<LoopMount> {
        let img = work.join("slot.img");
        let mnt = work.join("mnt");
        // A run killed by Ctrl-C never reaches Drop: clean up what it left first.
        if is_mounted(&mnt) {
            println!("unmounting {} left by an earlier run", mnt.display());
            quiet(Command::new("umount").arg(&mnt))?;
        }
        if img.exists() {
            let attached = quiet(Command::new("losetup").arg("-j").arg(&img))?;
            for dev in attached.lines().filter_map(|l| l.split(':').next()) {
                println!("detaching {dev} left by an earlier run");
                quiet(Command::new("losetup").arg("-d").arg(dev))?;
            }
            fs::remove_file(&img)?;
        }
        fs::create_dir_all(&mnt)?;
        // set_len on a new file makes it sparse: no 1 GiB of zeros written.
        fs::File::create(&img)?.set_len(IMAGE_BYTES)?;
        // Inode tables and the journal are initialised now rather than lazily by
        // the kernel's ext4lazyinit thread after mounting, which would write in the
        // background during the first rounds.
        quiet(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
                .arg(&img),
        )?;
        let dev = quiet(Command::new("losetup").args(["--find", "--show"]).arg(&img))
            .context("no loop device")?
            .trim()
            .to_string();
        let mut guard = LoopMount {
            img,
            mnt,
            dev,
            mounted: false,
        };
        quiet(Command::new("mount").arg(&guard.dev).arg(&guard.mnt))?;
        guard.mounted = true;
        Ok(guard)
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = quiet(Command::new("umount").arg(&self.mnt)) {
                eprintln!("bench install: {e:#}; unmounting lazily");
                let _ = quiet(Command::new("umount").arg("-l").arg(&self.mnt));
            }
        }
        if let Err(e) = quiet(Command::new("losetup").arg("-d").arg(&self.dev)) {
            eprintln!("bench install: cannot detach {}: {e:#}", self.dev);
        }
        let _ = fs::remove_file(&self.img);
    }
}

/// Removes `paths` (if present) and flushes every file system: untimed, so the
/// next timed run starts with the same free space and no writeback pending.
fn reset(paths: &[&Path]) -> Result<()> {
    for p in paths {
        if p.exists() {
            fs::remove_dir_all(p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    quiet(&mut Command::new("sync"))?;
    Ok(())
}

/// Fails unless the two trees hold the same names and bytes (`diff -r`), so a
/// round that wrote less than the whole tree cannot pass for a fast one.
fn same_tree(want: &Path, got: &Path) -> Result<()> {
    quiet(Command::new("diff").arg("-rq").arg(want).arg(got))
        .with_context(|| format!("{} differs from {}", got.display(), want.display()))?;
    Ok(())
}

/// The agent's peak RSS in KiB for one install, from `/usr/bin/time -f %M`.
fn peak_rss_kib(
    time_bin: &Path,
    agent: &Path,
    cfg: &Path,
    bundle: &Path,
    out: &Path,
) -> Result<u64> {
    quiet(
        Command::new(time_bin)
            .args(["-f", "%M", "-o"])
            .arg(out)
            .arg(agent)
            .arg("-c")
            .arg(cfg)
            .arg("install")
            .arg(bundle),
    )?;
    let text = fs::read_to_string(out)?;
    text.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("unexpected /usr/bin/time output: {text:?}"))
}

/// Seconds the agent spends in each phase of one install, from the moment each
/// `deployment ID: PHASE` line reaches its stderr (the agent logs a phase right
/// after journaling it). `start` is process start to the first phase line; the
/// last line's span ends when the process exits. Untimed in the figures above:
/// reading the pipe line by line is a little more work than collecting it.
fn phase_times(cmd: &mut Command) -> Result<Vec<(String, f64)>> {
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
    Ok(marks
        .iter()
        .enumerate()
        .map(|(i, (name, at))| {
            let next = marks.get(i + 1).map_or(end, |m| m.1);
            (name.clone(), next - at)
        })
        .collect())
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

fn parse_rounds(args: &[String]) -> Result<usize> {
    match args {
        [] => Ok(ROUNDS),
        [flag, n] if flag == "--rounds" => {
            let n: usize = n.parse().context("--rounds takes a number")?;
            if n < 2 {
                bail!("--rounds needs at least 2 (a warm-up and one measured round)");
            }
            Ok(n)
        }
        _ => bail!("usage: cargo xtask bench install [--rounds N]"),
    }
}

/// The recipe of a full bundle of `tree`, at the snapshot root.
fn write_recipe(path: &Path, tree: &Path) -> Result<()> {
    // A fixed release keeps builds reproducible; the data dir is recreated before
    // every install, so the device's version floor never refuses it.
    let recipe = format!(
        "version = \"1.0.0\"\ncompatible = \"bench\"\nrelease = 1\nkind = \"full\"\n\n\
         [[files]]\nsource = \"{}\"\ndestination = \"/\"\n",
        tree.file_name().unwrap_or_default().to_string_lossy()
    );
    fs::write(path, recipe)?;
    Ok(())
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let rounds = parse_rounds(args)?;
    if !is_root() {
        println!("bench install: skipped: it mounts a loop device, which needs root");
        return Ok(());
    }
    require_tools(&["zstd", "tar", "mkfs.ext4", "losetup", "diff"])?;
    let work = root.join(WORK);
    fs::create_dir_all(&work)?;
    // The target first: a machine without loop devices is told so before minutes
    // of building and generating.
    let target = match LoopMount::create(&work) {
        Ok(t) => t,
        Err(e) => {
            println!("bench install: skipped: cannot set up a loop-mounted ext4: {e:#}");
            return Ok(());
        }
    };
    println!(
        "target: {} (ext4, {} MiB sparse image) on {}",
        target.dev,
        IMAGE_BYTES >> 20,
        target.mnt.display()
    );
    run_cmd(cargo(root).args([
        "build",
        "--release",
        "-p",
        "molt-controller",
        "--bin",
        "molt",
        "-p",
        "molt-agent",
        "--bin",
        "molt-agent",
    ]))?;
    let molt = root.join("target/release/molt");
    let agent = root.join("target/release/molt-agent");

    let big = make_tree(&work, "tree-200", 1)?;
    let small = make_tree(&work, "tree-20", 10)?;
    let key = work.join("bench");
    if !work.join("bench.secret").exists() {
        run_cmd(Command::new(&molt).arg("keygen").arg("-o").arg(&key))?;
    }
    let pubkey = fs::read_to_string(work.join("bench.pub"))?;
    let mut bundles = Vec::new();
    for tree in [&small, &big] {
        let name = tree.dir.file_name().unwrap_or_default().to_string_lossy();
        let recipe = work.join(format!("{name}.toml"));
        write_recipe(&recipe, &tree.dir)?;
        let bundle = work.join(format!("{name}.molt"));
        run_cmd(
            Command::new(&molt)
                .args(["bundle", "build"])
                .arg(&recipe)
                .arg("-o")
                .arg(&bundle)
                .arg("--key")
                .arg(work.join("bench.secret")),
        )?;
        bundles.push(bundle);
    }
    let (small_bundle, big_bundle) = (&bundles[0], &bundles[1]);
    let tarzst = work.join("tree-200.tar.zst");
    run_cmd(Command::new("sh").arg("-c").arg(format!(
        "tar -cf - -C '{}' . | zstd -3 -T1 -q -f -o '{}'",
        big.dir.display(),
        tarzst.display()
    )))?;

    let cfg = work.join("agent.toml");
    fs::write(
        &cfg,
        format!(
            "root = \"{}\"\ndata_dir = \"var/lib/molt\"\ncompatible = \"bench\"\ntrusted_keys = [\"{}\"]\n",
            target.mnt.display(),
            pubkey.trim()
        ),
    )?;
    // The agent's whole state lives in var/; removing it makes the next install
    // provision a fresh device and write the full tree into an empty slot.
    let agent_var = target.mnt.join("var");
    let base_dir = target.mnt.join("baseline");
    let active = target.mnt.join("var/lib/molt/current");

    let install = |bundle: &Path| {
        let mut c = Command::new(&agent);
        c.arg("-c").arg(&cfg).arg("install").arg(bundle);
        c
    };
    let baseline_sh = format!(
        "zstd -dc '{}' | tar -x -C '{}' && sync",
        tarzst.display(),
        base_dir.display()
    );
    let mut molt_t = Vec::new();
    let mut base_t = Vec::new();
    for round in 0..rounds {
        let started = Instant::now();
        let mut m = 0.0;
        let mut b = 0.0;
        // Alternate which side goes first, so neither always inherits the other's
        // freed blocks or journal state.
        for side in [round % 2, 1 - round % 2] {
            reset(&[&agent_var, &base_dir])?;
            if side == 0 {
                m = time(&mut install(big_bundle))?;
            } else {
                fs::create_dir(&base_dir)?;
                quiet(&mut Command::new("sync"))?;
                b = time(Command::new("sh").arg("-c").arg(&baseline_sh))?;
            }
            if round == 0 {
                // Once, untimed: both sides really produced the whole tree.
                same_tree(&big.dir, if side == 0 { &active } else { &base_dir })?;
            }
        }
        println!(
            "round {round:2}{}: molt {m:.3} s, baseline {b:.3} s ({:.0} s with resets)",
            if round == 0 { " (warm-up)" } else { "" },
            started.elapsed().as_secs_f64()
        );
        if round > 0 {
            molt_t.push(m);
            base_t.push(b);
        }
    }

    // Where the agent's time goes: per-phase medians over a few extra runs.
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..RSS_RUNS {
        reset(&[&agent_var, &base_dir])?;
        for (i, (name, secs)) in phase_times(&mut install(big_bundle))?
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

    let time_bin = Path::new("/usr/bin/time");
    let mut rss = Vec::new();
    if time_bin.exists() {
        let out = work.join("rss.txt");
        for bundle in [small_bundle, big_bundle] {
            let mut peak = 0u64;
            for _ in 0..RSS_RUNS {
                reset(&[&agent_var, &base_dir])?;
                peak = peak.max(peak_rss_kib(time_bin, &agent, &cfg, bundle, &out)?);
            }
            rss.push(Some(peak));
        }
    } else {
        println!(
            "bench install: /usr/bin/time is missing, so peak RSS is not measured: `apt-get install time`"
        );
        rss = vec![None, None];
    }
    reset(&[&agent_var, &base_dir])?;
    drop(target);

    let (mmin, mmax) = min_max(&molt_t);
    let (bmin, bmax) = min_max(&base_t);
    let (mm, bm) = (median(&mut molt_t), median(&mut base_t));
    let mib = |b: u64| b as f64 / MIB;
    let tree_mib = mib(big.bytes);
    let len = |p: &Path| fs::metadata(p).map(|m| mib(m.len())).unwrap_or(0.0);
    let mut table = format!(
        "| what | median s | min s | max s | MiB/s (tree) |\n|---|---:|---:|---:|---:|\n\
         | `molt-agent install` ({:.1} MiB bundle) | {mm:.3} | {mmin:.3} | {mmax:.3} | {:.0} |\n\
         | `zstd -dc \\| tar -x && sync` ({:.1} MiB tar.zst) | {bm:.3} | {bmin:.3} | {bmax:.3} | {:.0} |\n\n\
         **ratio molt / baseline: {:.2}×** (target ≤ 1.0; median of {} interleaved rounds after a warm-up; \
         tree {tree_mib:.0} MiB in {} files; ext4 on a loop device backed by a sparse file)\n\n",
        len(big_bundle),
        tree_mib / mm,
        len(&tarzst),
        tree_mib / bm,
        mm / bm,
        rounds - 1,
        big.files,
    );
    let _ = write!(
        table,
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
            table,
            "| {name} | {secs:.3} | {:.0} % |",
            100.0 * secs / total.max(f64::MIN_POSITIVE)
        );
    }
    table.push_str("\n| bundle | tree | files | agent peak RSS |\n|---|---:|---:|---:|\n");
    for ((tree, bundle), peak) in [(&small, small_bundle), (&big, big_bundle)]
        .into_iter()
        .zip(&rss)
    {
        let peak = match peak {
            Some(kib) => format!("{:.1} MiB", *kib as f64 / 1024.0),
            None => "not measured (`apt-get install time`)".into(),
        };
        let _ = writeln!(
            table,
            "| {:.1} MiB | {:.1} MiB | {} | {peak} |",
            len(bundle),
            mib(tree.bytes),
            tree.files
        );
    }
    let _ = write!(
        table,
        "\nPeak RSS: the largest of {RSS_RUNS} runs of `/usr/bin/time -f %M molt-agent -c agent.toml install tree.molt` \
         (target: flat, ≤ 16 MiB).\n\n\
         Commands (in target/bench/install/):\n\n\
         ```sh\n\
         molt bundle build tree-200.toml -o tree-200.molt --key bench.secret   # kind = \"full\", destination = \"/\"\n\
         tar -cf - -C tree-200 . | zstd -3 -T1 -q -f -o tree-200.tar.zst\n\
         truncate -s 1G slot.img && mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 slot.img\n\
         losetup --find --show slot.img && mount /dev/loopN mnt\n\
         # each round, both sides, alternating which goes first; untimed before each:\n\
         rm -rf mnt/var mnt/baseline && sync             # + mkdir mnt/baseline for the baseline\n\
         molt-agent -c agent.toml install tree-200.molt   # agent.toml: root = \"mnt\"\n\
         sh -c 'zstd -dc tree-200.tar.zst | tar -x -C mnt/baseline && sync'\n\
         ```\n"
    );
    println!("\n{table}");
    write_report(root, "install", &table)?;
    for (tree, peak) in [&small, &big].into_iter().zip(&rss) {
        if let Some(kib) = peak {
            if *kib > 16 * 1024 {
                println!(
                    "note: peak RSS {:.1} MiB for the {:.0} MiB tree is above the 16 MiB target",
                    *kib as f64 / 1024.0,
                    mib(tree.bytes)
                );
            }
        }
    }
    Ok(())
}
