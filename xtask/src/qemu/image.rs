//! `cargo xtask qemu-image`: the aarch64 test device built from qemu/device.toml: Debian's arm64 kernel and busybox, an initramfs with the modules, qemu/init and a static molt-agent, and an ext4 data disk holding the factory snapshot.
//!
//! Downloads go through apt with a private state directory under target/qemu/apt
//! (the host's sources, the guest's architecture), so the host's dpkg is never told
//! about arm64 and nothing is installed. The .debs are unpacked once into
//! target/qemu/pkgs; a stamp holding device.toml's `[debian]` table decides when they
//! are fetched again. The initramfs and the data disk are rebuilt on every run: they
//! take about a second, and so can never be stale.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::spec::Device;
use super::{output, require_tools};
use crate::{cargo, run_cmd};

/// What the build produced, all under target/qemu/image/.
pub struct Image {
    /// The arm64 kernel (an uncompressed `Image`, booted with `-kernel`).
    pub kernel: PathBuf,
    /// The initramfs (newc cpio, uncompressed: it loads faster than it would unpack).
    pub initramfs: PathBuf,
    /// The factory data disk (raw ext4): never booted itself, only copied.
    pub disk: PathBuf,
    /// The kernel's release (`6.1.0-NN-arm64`).
    pub kernel_release: String,
    /// The stripped static agent's size in bytes.
    pub agent_bytes: u64,
}

/// Tools the build runs (`.ci/run` installs them; qemu/README.md lists them).
const TOOLS: &[(&str, &str)] = &[
    ("apt-get", "apt"),
    ("dpkg-deb", "dpkg"),
    ("depmod", "kmod"),
    ("modprobe", "kmod"),
    ("cpio", "cpio"),
    ("mkfs.ext4", "e2fsprogs"),
];

/// Where the cross toolchain for the agent's C code comes from (on an x86_64 host
/// the x86_64 one is the host's own gcc).
const CROSS_PACKAGES: &str = "gcc-aarch64-linux-gnu and libc6-dev-arm64-cross";

/// Builds (or refreshes) the image; `refetch` downloads the packages again.
pub fn build(root: &Path, dev: &Device, refetch: bool) -> Result<Image> {
    require_tools(TOOLS)?;
    let t = Instant::now();
    let base = root.join("target/qemu");
    let pkgs = fetch(&base, dev, refetch)?;
    let kernel_pkg = pkgs.join(&dev.debian.kernel);
    let release = kernel_release(&kernel_pkg)?;
    let out = base.join("image");
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;

    let kernel = out.join("Image");
    copy(&kernel_pkg.join(format!("boot/vmlinuz-{release}")), &kernel)?;
    let agent = build_agent(root, dev, &out)?;
    let agent_bytes = fs::metadata(&agent)?.len();
    let initramfs = out.join("initramfs.cpio");
    build_initramfs(dev, &pkgs, &kernel_pkg, &release, &agent, &out, &initramfs)?;
    let disk = out.join("data.img");
    build_disk(dev, &out, &disk)?;
    println!(
        "qemu-image: kernel {release}, initramfs {} KiB, agent {} KiB (static, stripped), data disk {} MiB, in {:.1}s",
        fs::metadata(&initramfs)?.len() / 1024,
        agent_bytes / 1024,
        dev.disk.size_mib,
        t.elapsed().as_secs_f64()
    );
    println!("qemu-image: {}", out.display());
    Ok(Image {
        kernel,
        initramfs,
        disk,
        kernel_release: release,
        agent_bytes,
    })
}

/// The file in target/qemu/pkgs saying what was fetched and unpacked there.
const STAMP: &str = "fetched";

/// Downloads and unpacks the `[debian]` packages unless the stamp says they are there;
/// returns the directory holding one unpacked tree per package, named as in device.toml
/// (the kernel under its metapackage's name).
fn fetch(base: &Path, dev: &Device, refetch: bool) -> Result<PathBuf> {
    let pkgs = base.join("pkgs");
    let key = dev.download_key();
    if !refetch
        && fs::read_to_string(pkgs.join(STAMP)).is_ok_and(|s| s.lines().next() == Some(&key))
    {
        return Ok(pkgs);
    }
    let t = Instant::now();
    let apt = base.join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt.join(d))?;
    }
    let status = apt.join("status");
    fs::write(&status, "")?;
    let apt_opts = |cmd: &mut Command| {
        // The host's sources and proxies, but our own state: indexes for the guest's
        // architecture only, and an empty dpkg status (nothing counts as installed).
        cmd.arg(format!(
            "-oDir::State::Lists={}",
            apt.join("lists").display()
        ))
        .arg(format!("-oDir::State::status={}", status.display()))
        .arg(format!("-oDir::Cache={}", apt.join("cache").display()))
        .arg(format!("-oAPT::Architecture={}", dev.debian.architecture))
        .arg(format!(
            "-oAPT::Architectures::={}",
            dev.debian.architecture
        ))
        .arg("-oDebug::NoLocking=1")
        // Files land in our own directory; apt's `_apt` sandbox user could not write there.
        .arg("-oAPT::Sandbox::User=root");
    };
    let mut update = Command::new("apt-get");
    apt_opts(&mut update);
    update.args(["-qq", "update"]);
    run_cmd(&mut update).context("apt-get update (for the guest's architecture) failed")?;

    let mut depends = Command::new("apt-cache");
    apt_opts(&mut depends);
    depends.args(["depends", &dev.debian.kernel]);
    let text = output(&mut depends)?;
    let kernel = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::trim)
        .map(str::to_string)
        .with_context(|| {
            format!(
                "`apt-cache depends {}` names no linux-image package:\n{text}",
                dev.debian.kernel
            )
        })?;

    let debs = base.join("debs");
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs)?;
    let mut download = Command::new("apt-get");
    apt_opts(&mut download);
    download
        .current_dir(&debs)
        .args(["-qq", "download", &kernel])
        .args(&dev.debian.packages);
    run_cmd(&mut download).context("apt-get download failed")?;

    let _ = fs::remove_dir_all(&pkgs);
    fs::create_dir_all(&pkgs)?;
    let mut names: Vec<(&str, &str)> = vec![(kernel.as_str(), dev.debian.kernel.as_str())];
    names.extend(dev.debian.packages.iter().map(|p| (p.as_str(), p.as_str())));
    for (package, dir) in names {
        let deb = find_deb(&debs, package)?;
        run_cmd(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(pkgs.join(dir)),
        )?;
    }
    // modprobe reads modules.dep; the package leaves it to the installing system.
    let release = kernel_release(&pkgs.join(&dev.debian.kernel))?;
    run_cmd(
        Command::new("depmod")
            .arg("-b")
            .arg(pkgs.join(&dev.debian.kernel))
            .arg(&release),
    )?;
    fs::write(pkgs.join(STAMP), format!("{key}\nkernel={kernel}\n"))?;
    println!(
        "qemu-image: fetched and unpacked {kernel} and {} in {:.1}s",
        dev.debian.packages.join(", "),
        t.elapsed().as_secs_f64()
    );
    Ok(pkgs)
}

fn find_deb(dir: &Path, package: &str) -> Result<PathBuf> {
    let prefix = format!("{package}_");
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(p);
        }
    }
    bail!(
        "apt-get download left no {package}_*.deb in {}",
        dir.display()
    )
}

/// The one directory under lib/modules of the unpacked kernel package.
fn kernel_release(kernel_pkg: &Path) -> Result<String> {
    let dir = kernel_pkg.join("lib/modules");
    let mut found = Vec::new();
    for e in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
        found.push(e?.file_name().to_string_lossy().into_owned());
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "{} should hold exactly one kernel release, holds {found:?}",
            dir.display()
        ),
    }
}

/// Cross-compiles molt-agent as a static binary and strips it into `out`.
fn build_agent(root: &Path, dev: &Device, out: &Path) -> Result<PathBuf> {
    let target = &dev.agent.target;
    // The test device's agent keeps its test hooks: the power-cut scenarios pause it
    // before a phase and shorten its download checkpoints (MOLT_TEST_*).
    let built = build_static_agent(root, target, AGENT_PROFILE, &["test-hooks"])?;
    let (_, _, strip) = cross_tools(target)?;
    let stripped = out.join("molt-agent");
    // The profile strips already; `strip` also drops what the linker keeps (.comment).
    run_cmd(Command::new(&strip).arg("-o").arg(&stripped).arg(&built))?;
    Ok(stripped)
}

/// The profile the device's agent is built with (workspace Cargo.toml): fat LTO,
/// one codegen unit, panic = abort, stripped; what `bench footprint` measures.
pub const AGENT_PROFILE: &str = "device";

/// Builds molt-agent for `target` (`<arch>-unknown-linux-musl`) as a static binary
/// with cargo profile `profile` and the agent's `features` (none for the binary as
/// shipped), and returns its path under target/.
pub fn build_static_agent(
    root: &Path,
    target: &str,
    profile: &str,
    features: &[&str],
) -> Result<PathBuf> {
    let (cc, ar, strip) = cross_tools(target)?;
    require_tools(&[
        (cc.as_str(), CROSS_PACKAGES),
        (strip.as_str(), CROSS_PACKAGES),
    ])?;
    if !Path::new("/usr/aarch64-linux-gnu/include/stdio.h").exists()
        && target.starts_with("aarch64")
    {
        bail!("the arm64 C headers are missing: install {CROSS_PACKAGES} (see .ci/run)");
    }
    let env_target = target.replace('-', "_");
    let mut cmd = cargo(root);
    cmd.args([
        "build",
        "--profile",
        profile,
        "-p",
        "molt-agent",
        "--bin",
        "molt-agent",
        "--target",
        target,
    ]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    cmd
        // rust-lld links the static musl binary (the host `cc` cannot); the C code of
        // zstd and ring is compiled by the cross gcc.
        .env(
            format!("CARGO_TARGET_{}_LINKER", env_target.to_uppercase()),
            "rust-lld",
        )
        .env(format!("CC_{env_target}"), &cc)
        .env(format!("AR_{env_target}"), &ar);
    run_cmd(&mut cmd).with_context(|| {
        format!("building molt-agent for {target} failed (is the target installed? `rustup target add {target}`)")
    })?;
    // Cargo's directory for the built-in `dev` profile is `debug`; every other is its name.
    let dir = if profile == "dev" { "debug" } else { profile };
    Ok(root
        .join("target")
        .join(target)
        .join(dir)
        .join("molt-agent"))
}

/// The GNU cross tools for a Rust target triple (`aarch64-unknown-linux-musl` →
/// `aarch64-linux-gnu-gcc`, `-ar`, `-strip`).
fn cross_tools(target: &str) -> Result<(String, String, String)> {
    let arch = target
        .split('-')
        .next()
        .filter(|a| !a.is_empty())
        .with_context(|| format!("`{target}` is not a target triple"))?;
    let p = format!("{arch}-linux-gnu-");
    Ok((format!("{p}gcc"), format!("{p}ar"), format!("{p}strip")))
}

/// The initramfs: busybox, bash and e2fsck from the packages, the modules in load
/// order, /init, the agent and its configuration template.
fn build_initramfs(
    dev: &Device,
    pkgs: &Path,
    kernel_pkg: &Path,
    release: &str,
    agent: &Path,
    out: &Path,
    cpio: &Path,
) -> Result<()> {
    let tree = out.join("initramfs.d");
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("cannot remove {}", tree.display()))?;
    }
    for d in [
        "bin",
        "sbin",
        "etc/molt",
        "lib/modules",
        "proc",
        "sys",
        "dev",
        "data",
        "tmp",
        "run",
    ] {
        fs::create_dir_all(tree.join(d))?;
    }
    for f in &dev.initramfs.files {
        copy(&pkgs.join(&f.package).join(&f.from), &tree.join(&f.to))?;
    }
    copy(agent, &tree.join("bin/molt-agent"))?;
    copy(&dev.path(&dev.initramfs.init), &tree.join("init"))?;
    fs::set_permissions(tree.join("init"), fs::Permissions::from_mode(0o755))?;
    let template = fs::read_to_string(dev.path(&dev.initramfs.agent_config))?;
    fs::write(
        tree.join("etc/molt/agent.toml.in"),
        template.replace("@COMPATIBLE@", &dev.compatible),
    )?;

    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for m in &dev.initramfs.modules {
        let mut cmd = Command::new("modprobe");
        cmd.arg("-d")
            .arg(kernel_pkg)
            .args(["-S", release, "--show-depends", m]);
        let text = output(&mut cmd)
            .with_context(|| format!("kernel module `{m}` ([initramfs] modules)"))?;
        for line in text.lines() {
            // `insmod /path/x.ko [options]`; `builtin x` needs nothing.
            let Some(path) = line
                .strip_prefix("insmod ")
                .and_then(|r| r.split_whitespace().next())
            else {
                continue;
            };
            let path = Path::new(path);
            let name = path
                .file_name()
                .context("module path")?
                .to_string_lossy()
                .into_owned();
            if seen.insert(name.clone()) {
                copy(path, &tree.join("lib/modules").join(&name))?;
                order.push(name);
            }
        }
    }
    fs::write(tree.join("lib/modules/order"), order.join("\n") + "\n")?;

    // newc, owned by root whoever builds it; `find` from inside the tree gives the
    // relative names cpio wants, sorted so the archive does not depend on readdir order.
    let file =
        fs::File::create(cpio).with_context(|| format!("cannot create {}", cpio.display()))?;
    run_cmd(
        Command::new("sh")
            .args([
                "-c",
                "find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet",
            ])
            .current_dir(&tree)
            .stdout(file),
    )
}

/// The data disk: `<data_dir>/slots/a` holds the factory tree; the agent makes the rest
/// (record, `current`, slot B) on its first start.
fn build_disk(dev: &Device, out: &Path, disk: &Path) -> Result<()> {
    let tree = out.join("disk.d");
    if tree.exists() {
        fs::remove_dir_all(&tree)?;
    }
    let slot_a = tree.join(&dev.disk.data_dir).join("slots/a");
    copy_tree(&dev.path(&dev.disk.factory), &slot_a)?;
    let _ = fs::remove_file(disk);
    let size = format!("{}M", dev.disk.size_mib);
    run_cmd(
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-L",
                &dev.disk.label,
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(&tree)
            .arg(disk)
            .arg(&size),
    )
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Copies a tree of directories and regular files, keeping permission bits.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ty = e.file_type()?;
        if ty.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ty.is_file() {
            copy(&src, &dst)?;
        } else {
            bail!(
                "{}: only directories and regular files belong in the factory tree",
                src.display()
            );
        }
    }
    Ok(())
}
