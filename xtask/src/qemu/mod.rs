//! `cargo xtask qemu-image` and `cargo xtask qemu-test`: molt on an emulated aarch64 device under QEMU, with real power cuts (qemu/README.md).
//!
//! * [`spec`]: qemu/device.toml, the device as data;
//! * [`image`]: kernel, initramfs and data disk from Debian's arm64 packages and a
//!   static molt-agent, cached under target/qemu/;
//! * [`vm`]: one boot under QEMU (TCG, `restrict=on` networking, a hard timeout),
//!   its console, and `kill -9` as the power cut;
//! * [`host`]: the real controller and `molt` CLI on the host's loopback;
//! * [`disk`]: what a disk image holds, read on the host (e2fsck, debugfs);
//! * [`scenario`]: the test itself: enrollment, a deployment, a reboot, the rollback
//!   with a reboot, and (`scenario/cuts.rs`) the power-cut rounds.

mod disk;
mod host;
pub mod image;
mod scenario;
mod spec;
mod vm;

use std::path::Path;

use anyhow::{bail, Result};

/// The one way xtask runs a command for its output, named here for the modules below.
use crate::output;

pub use scenario::Options as TestOptions;

/// `cargo xtask qemu-image [--refetch]`.
#[derive(clap::Args)]
pub struct ImageOptions {
    /// Download the Debian packages again instead of using the cached ones.
    #[arg(long)]
    refetch: bool,
}

/// `cargo xtask qemu-image [--refetch]`.
pub fn image_task(root: &Path, opts: &ImageOptions) -> Result<()> {
    let dev = spec::Device::load(&root.join("qemu"))?;
    image::build(root, &dev, opts.refetch)?;
    Ok(())
}

/// `cargo xtask qemu-test [--rounds N] [--jobs N] [--echo]`.
pub fn test_task(root: &Path, opts: &TestOptions) -> Result<()> {
    scenario::run(root, opts)
}

/// Whether QEMU for the test device is installed (`cargo xtask ci` skips the step
/// outside CI when it is not).
pub fn installed() -> bool {
    on_path("qemu-system-aarch64")
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(tool).is_file())
}

/// Fails naming the Debian package to install when one of `tools` is not on PATH.
fn require_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(tool, pkg)| format!("{tool} (Debian: {pkg})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing host tools: {}; .ci/run installs them (qemu/README.md)",
            missing.join(", ")
        );
    }
    Ok(())
}
