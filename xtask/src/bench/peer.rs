//! `bench install-peer`: `molt-agent install` against a real peer, SWUpdate installing the same tree as a signed .swu through its streamed `archive` handler onto the same loop-mounted ext4, both durable.
//!
//! A ratio against `tar -x` says little about what a device gains from molt
//! over the updater it would otherwise run; SWUpdate is that updater on many
//! embedded Linux devices, and Debian ships it. The peer gets its best setup for
//! this job, never extra work: the workload's own `tar | zstd -3` (zstd, which
//! Debian's libarchive reads, like molt's bundle), `installed-directly` so the archive
//! streams into libarchive instead of being copied to TMPDIR first, a CMS
//! signature over sw-description (the signed-image mode Debian builds) with the
//! payload's sha256 inside it, no `-v`, the in-RAM `none` bootloader, and
//! `sync -f` of the slot's file system only (`syncfs(2)`, what molt itself does
//! to make a slot durable) rather than a global `sync` that would also flush
//! other writers' data. The .swu, keys and SWUpdate's TMPDIR live under
//! target/bench/install-peer/; a minimal `-f swupdate.cfg` keeps a machine's
//! /etc/swupdate.cfg out of the measurement.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::install::{
    device_or_skip, install_skipped, install_table, molt_against, open, DEVICE_TOOLS,
};
use super::slot::{empty_target, reset};
use super::util::{gnu_time, quiet, require, Stats};
use super::{Ctx, Outcome, Row};

const ID: &str = "install-peer";
const WHAT: &str = "`molt-agent install FILE`: full verification, durable, atomic swap";
const BASE: &str =
    "SWUpdate `swupdate -i tree-200.swu && sync -f slot` (CMS-signed, streamed `archive` handler, tar.zst)";
/// molt must take at most half SWUpdate's time for the same tree.
const AT_MOST: f64 = 0.5;
const TARGET: &str = "≤ 0.50×";
/// The board and revision SWUpdate is told it runs on (`-H`): Debian builds
/// SWUpdate with hardware compatibility checks, which refuse an image whose
/// sw-description names no compatible revision.
const HW_BOARD: &str = "bench";
const HW_REV: &str = "1.0";
/// Extra runs per side for the CPU-time table.
const CPU_RUNS: usize = 3;
/// The payload's name inside the .swu.
const PAYLOAD: &str = "tree-200.tar.zst";

/// `bench install-peer`.
pub fn run(ctx: &mut Ctx) -> Result<Outcome> {
    if let Some(skipped) = install_skipped(ID, WHAT, BASE, TARGET) {
        return Ok(skipped);
    }
    if Command::new("swupdate").arg("--version").output().is_err() {
        bail!("`swupdate` is missing: `apt-get install swupdate` (Debian bookworm ships 2022.12)");
    }
    if Command::new("openssl").arg("version").output().is_err() {
        bail!("`openssl` is missing: `apt-get install openssl`");
    }
    require(&[("cpio", "cpio"), ("sync", "coreutils")])?;
    require(&DEVICE_TOOLS)?;
    let (bins, wl, work, dev) = open(ctx, ID)?;
    let dev = match device_or_skip(dev, (ID, WHAT, BASE, TARGET)) {
        Ok(d) => d,
        Err(skipped) => return Ok(skipped),
    };
    let big = &wl.big;
    // SWUpdate's slot: a directory on the same file system as molt's slots.
    let slot = dev.target.mnt.join("swupdate");
    let swu = Swu::build(&work.join("swu"), &big.tarzst, &slot)?;
    let bundle = big.bundle.to_string_lossy().into_owned();
    let baseline_sh = format!(
        "swupdate -f '{}' -H {HW_BOARD}:{HW_REV} -k '{}' -i '{}' && sync -f '{}'",
        swu.cfg.display(),
        swu.cert.display(),
        swu.image.display(),
        slot.display()
    );
    let baseline = || {
        let mut c = Command::new("sh");
        c.arg("-c").arg(&baseline_sh).env("TMPDIR", &swu.tmp);
        c
    };
    let load_before = loadavg();
    let (m, b) = molt_against(
        ctx,
        ID,
        (&dev, &bins.agent),
        big,
        ("swupdate", &slot, baseline),
    )?;
    let load_after = loadavg();

    // CPU seconds (user + system, children included) of a few extra runs: unlike
    // wall time, they hardly depend on what else the shared machine runs, and
    // they show how much of each side's wall time is waiting (for the disk, or
    // for a core).
    let time_bin = Path::new("/usr/bin/time");
    let mut cpu: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    if time_bin.exists() {
        let out = work.join("time.txt");
        for _ in 0..CPU_RUNS {
            reset(&[&dev.var, &slot])?;
            cpu[0].push(cpu_run(&dev.install(&bins.agent, &bundle), &out)?);
            empty_target(&dev.var, &slot)?;
            cpu[1].push(cpu_run(&baseline(), &out)?);
        }
    }
    let fs_desc = dev.close(&[&slot])?;

    // The report names paths relative to the workspace, not this machine's checkout.
    let shown = |p: &Path| {
        p.to_string_lossy()
            .replace(&*ctx.root.to_string_lossy(), "<workspace>")
    };
    let table = install_table(
        big,
        &fs_desc,
        m,
        ("`swupdate -i && sync -f`", &swu.image, ".swu"),
        b,
    );
    let mut details = format!(
        "{table} Both sides end durable: the agent `syncfs(2)`s the slot before it swaps \
         `current`; SWUpdate does not sync, so `sync -f` (`syncfs(2)` of the slot's file system, \
         not a global `sync`) follows it.\n\n"
    );
    let _ = write!(
        details,
        "Load average (1 min) {load_before} before the rounds, {load_after} after: on a shared \
         2-core machine both sides also wait for a core, so wall times move with the other \
         load; the CPU seconds below move much less.\n\n"
    );
    if !cpu[0].is_empty() {
        let _ = write!(
            details,
            "CPU time, median of {CPU_RUNS} extra runs each under `/usr/bin/time` (user + system, \
             children included; wall minus CPU is time spent waiting for the disk or for a core):\n\n\
             | what | wall s | CPU s (user + sys) |\n|---|---:|---:|\n"
        );
        for (name, runs) in ["`molt-agent install`", "`swupdate -i && sync -f`"]
            .iter()
            .zip(&cpu)
        {
            let wall: Vec<f64> = runs.iter().map(|r| r.0).collect();
            let cpu_s: Vec<f64> = runs.iter().map(|r| r.1).collect();
            let _ = writeln!(
                details,
                "| {name} | {:.2} | {:.2} |",
                Stats::of(&wall).median,
                Stats::of(&cpu_s).median
            );
        }
        details.push('\n');
    }
    let _ = write!(
        details,
        "SWUpdate: Debian package `swupdate` {} (libarchive {}); built with CMS signed images \
         (`-k` takes the signer's certificate), hardware compatibility checks (hence `-H \
         {HW_BOARD}:{HW_REV}` and `hardware-compatibility`), default bootloader `none` (its \
         environment lives in RAM, so no marker is written to disk). The payload is the \
         workload's `tar | zstd -3 -T1`: zstd, which this libarchive reads, at the level molt's \
         bundle uses, so both sides read about the same bytes; `installed-directly` so it streams through a FIFO into libarchive instead of \
         being copied to TMPDIR first; SWUpdate checks the payload's sha256 from the signed \
         sw-description while it streams. `swupdate.cfg` is empty (`globals : {{ }};`) so the \
         machine's /etc/swupdate.cfg cannot change what is measured; no `-v`.\n\n\
         sw-description (signed: `sw-description.sig` is a detached DER CMS signature by a \
         self-signed RSA-4096 certificate):\n\n```\n{}```\n\n",
        deb_version("swupdate"),
        deb_version("libarchive13"),
        sw_description(&shown(&slot), &swu.sha256),
    );
    let _ = write!(
        details,
        "Commands (workload in target/bench/workload/, .swu and keys in \
         target/bench/install-peer/swu/, mount in target/bench/install-peer/mnt/):\n\n\
         ```sh\n\
         openssl req -x509 -newkey rsa:4096 -nodes -sha256 -days 3650 -subj '/O=molt bench/CN=swupdate' -keyout key.pem -out cert.pem\n\
         cp ../../workload/tree-200.tar.zst .   # tar -cf - -C tree-200 . | zstd -3 -T1\n\
         openssl cms -sign -in sw-description -out sw-description.sig -signer cert.pem -inkey key.pem -outform DER -nosmimecap -binary\n\
         printf 'sw-description\\nsw-description.sig\\n{PAYLOAD}\\n' | cpio -o -H newc --quiet > tree-200.swu\n\
         truncate -s 2G slot.img && mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 slot.img\n\
         losetup --find --show --direct-io=on slot.img && mount /dev/loopN mnt\n\
         # each round, both sides, alternating which goes first; untimed before each:\n\
         rm -rf mnt/var mnt/swupdate && sync                # + mkdir mnt/swupdate && sync for SWUpdate\n\
         molt-agent -c agent.toml install tree-200.molt      # agent.toml: root = \"mnt\"\n\
         TMPDIR=swu/tmp sh -c 'swupdate -f swu/swupdate.cfg -H {HW_BOARD}:{HW_REV} -k swu/cert.pem -i swu/tree-200.swu && sync -f mnt/swupdate'\n\
         ```\n"
    );
    Ok(Outcome {
        rows: vec![Row::time_ratio(ID, WHAT, BASE, m, b, AT_MOST)],
        details,
    })
}

/// The signed SWUpdate image of the workload and what `swupdate` needs to install it.
struct Swu {
    /// The .swu: a newc cpio of sw-description, its signature, then the payload.
    image: PathBuf,
    /// The signer's certificate, for `-k`.
    cert: PathBuf,
    /// The minimal configuration file, for `-f`.
    cfg: PathBuf,
    /// SWUpdate's TMPDIR (sw-description, its sockets and the archive FIFO go there).
    tmp: PathBuf,
    /// The payload's sha256, as sw-description carries it.
    sha256: String,
}

impl Swu {
    /// Builds the image in `dir` for installing `tarzst` into `slot`: a key pair
    /// (kept between runs), the signed sw-description, the cpio. Untimed.
    fn build(dir: &Path, tarzst: &Path, slot: &Path) -> Result<Swu> {
        fs::create_dir_all(dir)?;
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp)?;
        let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
        if !key.exists() || !cert.exists() {
            println!(
                "generating SWUpdate's signing key and certificate in {}",
                dir.display()
            );
            quiet(
                Command::new("openssl")
                    .args(["req", "-x509", "-newkey", "rsa:4096", "-nodes", "-sha256"])
                    .args(["-days", "3650", "-subj", "/O=molt bench/CN=swupdate"])
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert),
            )?;
        }
        // A private copy: the shared workload is rewritten by every bench run,
        // and the hash signed below must be of the bytes packed into the image.
        let payload = dir.join(PAYLOAD);
        fs::copy(tarzst, &payload).with_context(|| {
            format!("cannot copy {} to {}", tarzst.display(), payload.display())
        })?;
        let sha256 = sha256_file(&payload)?;
        let desc = dir.join("sw-description");
        fs::write(&desc, sw_description(&slot.to_string_lossy(), &sha256))?;
        let sig = dir.join("sw-description.sig");
        quiet(
            Command::new("openssl")
                .args(["cms", "-sign", "-in"])
                .arg(&desc)
                .arg("-out")
                .arg(&sig)
                .arg("-signer")
                .arg(&cert)
                .arg("-inkey")
                .arg(&key)
                .args(["-outform", "DER", "-nosmimecap", "-binary"]),
        )?;
        // sw-description must come first: SWUpdate reads and verifies it before
        // it looks at anything else in the stream.
        let image = dir.join("tree-200.swu");
        let mut cpio = Command::new("cpio")
            .args(["-o", "-H", "newc", "--quiet"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(fs::File::create(&image)?)
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start cpio")?;
        cpio.stdin
            .take()
            .context("cpio's stdin")?
            .write_all(format!("sw-description\nsw-description.sig\n{PAYLOAD}\n").as_bytes())?;
        let out = cpio.wait_with_output()?;
        if !out.status.success() {
            bail!("cpio failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The image holds it now; no need to keep a second 117 MiB copy around.
        fs::remove_file(&payload)?;
        // Empty on purpose: with `-f`, SWUpdate reads this instead of /etc/swupdate.cfg.
        let cfg = dir.join("swupdate.cfg");
        fs::write(&cfg, "globals :\n{\n};\n")?;
        Ok(Swu {
            image,
            cert,
            cfg,
            tmp,
            sha256,
        })
    }
}

/// The sw-description installing the payload into `path` (libconfig syntax).
fn sw_description(path: &str, sha256: &str) -> String {
    format!(
        "software =\n{{\n\
         \tversion = \"1.0.0\";\n\
         \tdescription = \"molt bench tree\";\n\
         \thardware-compatibility = [ \"{HW_REV}\" ];\n\
         \tfiles: (\n\
         \t\t{{\n\
         \t\t\tfilename = \"{PAYLOAD}\";\n\
         \t\t\ttype = \"archive\";\n\
         \t\t\tpath = \"{path}\";\n\
         \t\t\tsha256 = \"{sha256}\";\n\
         \t\t\tinstalled-directly = true;\n\
         \t\t}}\n\
         \t);\n\
         }}\n"
    )
}

/// The hex sha256 of the file at `path`.
fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The installed version of Debian package `pkg`, for the report.
fn deb_version(pkg: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", pkg])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "(version unknown)".into())
}

/// Runs `cmd` under GNU time and returns its wall seconds and CPU seconds (user + system).
fn cpu_run(cmd: &Command, out: &Path) -> Result<(f64, f64)> {
    let n = gnu_time("%e %U %S", out, cmd)?;
    Ok((n[0], n[1] + n[2]))
}

/// The 1-minute load average, from /proc/loadavg (`?` if unreadable).
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
