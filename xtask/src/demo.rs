//! `cargo xtask demo`: runs what molt can do today, end to end, on the example recipe.
//!
//! It builds `molt`, makes a fresh release key, builds a signed bundle from
//! docs/examples/recipe.toml, verifies it with the public key, shows it with
//! `molt bundle inspect`, and shows a tampered copy being refused. Everything
//! lands in target/demo/ so it can be looked at afterwards. When the controller
//! and agent land (issues 3 and 5) this grows into a controller with a demo device.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, run_cmd};

pub fn run(root: &Path) -> Result<()> {
    run_cmd(cargo(root).args([
        "build",
        "--release",
        "-p",
        "molt-controller",
        "--bin",
        "molt",
    ]))?;
    let molt = root.join("target/release/molt");
    let dir = root.join("target/demo");
    // A fresh directory each time: keygen refuses to overwrite a key, on purpose.
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = dir.join("release");
    let bundle = dir.join("example-app-1.4.2.molt");

    println!("\n== 1. a release key (the device pins the .pub half)");
    run_cmd(Command::new(&molt).arg("keygen").arg("-o").arg(&key))?;

    println!("\n== 2. a signed bundle from the six-stage recipe");
    run_cmd(
        Command::new(&molt)
            .args(["bundle", "build"])
            .arg(root.join("docs/examples/recipe.toml"))
            .arg("-o")
            .arg(&bundle)
            .arg("--key")
            .arg(dir.join("release.secret")),
    )?;

    println!("\n== 3. verified the way a device verifies it");
    run_cmd(
        Command::new(&molt)
            .args(["bundle", "verify"])
            .arg(&bundle)
            .arg("--key")
            .arg(dir.join("release.pub")),
    )?;

    println!("\n== 4. what is inside");
    run_cmd(
        Command::new(&molt)
            .args(["bundle", "inspect"])
            .arg(&bundle)
            .arg("--key")
            .arg(dir.join("release.pub")),
    )?;

    println!("\n== 5. one flipped byte near the end: refused at the chunk where it changed");
    let mut bytes = fs::read(&bundle)?;
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    let tampered = dir.join("tampered.molt");
    fs::write(&tampered, &bytes)?;
    let status = Command::new(&molt)
        .args(["bundle", "verify"])
        .arg(&tampered)
        .arg("--key")
        .arg(dir.join("release.pub"))
        .status()?;
    if status.success() {
        bail!("a tampered bundle verified: this is a bug");
    }
    println!("\ndemo: done; files are in {}", dir.display());
    println!("next: the agent (issue 3) installs such bundles into an A/B snapshot; the controller (issue 5) deploys them to groups.");
    Ok(())
}
