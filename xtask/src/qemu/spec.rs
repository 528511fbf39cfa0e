//! qemu/device.toml: the emulated device's definition as data (packages, modules, disk, QEMU machine), parsed and checked.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The whole file. Unknown fields are errors, so a typo cannot silently change the device.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// The agent's `compatible` string.
    pub compatible: String,
    /// Where the guest's pieces come from.
    pub debian: Debian,
    /// What goes into the initramfs.
    pub initramfs: Initramfs,
    /// How the agent is built.
    pub agent: Agent,
    /// The data disk.
    pub disk: Disk,
    /// The emulated machine.
    pub qemu: Qemu,
    /// The directory the file was read from: relative paths in it resolve here.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// `[debian]`: packages downloaded and unpacked, never installed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debian {
    /// Debian architecture name (`arm64`).
    pub architecture: String,
    /// The kernel metapackage; its one dependency names the kernel package.
    pub kernel: String,
    /// Further packages whose files the initramfs takes.
    pub packages: Vec<String>,
}

/// `[initramfs]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    /// Module names; their dependencies are added in load order.
    pub modules: Vec<String>,
    /// The /init script, relative to qemu/.
    pub init: String,
    /// The agent configuration template, relative to qemu/.
    pub agent_config: String,
    /// Files copied out of the unpacked packages.
    pub files: Vec<PackageFile>,
}

/// One `[[initramfs.files]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageFile {
    /// One of `[debian] packages`.
    pub package: String,
    /// Its path inside the package.
    pub from: String,
    /// Its path in the initramfs.
    pub to: String,
}

/// `[agent]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// The Rust target triple the agent is built for.
    pub target: String,
}

/// `[disk]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Size of the sparse raw image.
    pub size_mib: u64,
    /// The ext4 label.
    pub label: String,
    /// The agent's data directory, relative to the disk's root.
    pub data_dir: String,
    /// The factory snapshot's tree (slot A), relative to qemu/.
    pub factory: String,
}

/// `[qemu]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Qemu {
    /// The emulator.
    pub binary: String,
    /// `-M`.
    pub machine: String,
    /// `-accel`.
    pub accel: String,
    /// `-cpu`.
    pub cpu: String,
    /// `-smp`.
    pub smp: u32,
    /// `-m`, MiB.
    pub memory_mib: u32,
    /// The kernel command line before molt's own `molt_*` words.
    pub append: String,
    /// The guest-side address `guestfwd` forwards to the controller.
    pub controller_ip: String,
    /// The guest-side port of that address.
    pub controller_port: u16,
}

impl Device {
    /// Reads and checks `<qemu_dir>/device.toml`.
    pub fn load(qemu_dir: &Path) -> Result<Device> {
        let path = qemu_dir.join("device.toml");
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut dev: Device =
            toml::from_str(&text).with_context(|| format!("{} is invalid", path.display()))?;
        dev.dir = qemu_dir.to_path_buf();
        dev.check().with_context(|| format!("{}", path.display()))?;
        Ok(dev)
    }

    fn check(&self) -> Result<()> {
        for f in &self.initramfs.files {
            if !self.debian.packages.contains(&f.package) {
                bail!(
                    "[[initramfs.files]] takes {} from package `{}`, which [debian] packages does not list",
                    f.from,
                    f.package
                );
            }
            for p in [&f.from, &f.to] {
                if p.starts_with('/') || p.split('/').any(|c| c == ".." || c.is_empty()) {
                    bail!("[[initramfs.files]] path `{p}` must be relative, without `..` or empty components");
                }
            }
        }
        if self.initramfs.modules.is_empty() {
            bail!("[initramfs] modules is empty: the guest could not reach its disk");
        }
        if self.disk.size_mib < 16 {
            bail!(
                "[disk] size_mib = {} is too small for ext4 with a journal (at least 16)",
                self.disk.size_mib
            );
        }
        if self.qemu.accel != "tcg" {
            bail!(
                "[qemu] accel = `{}`: only `tcg` works on the machines this runs on (KVM hangs)",
                self.qemu.accel
            );
        }
        for (what, p) in [
            ("[initramfs] init", &self.initramfs.init),
            ("[initramfs] agent_config", &self.initramfs.agent_config),
            ("[disk] factory", &self.disk.factory),
        ] {
            if !self.dir.join(p).exists() {
                bail!(
                    "{what} names {p}, which does not exist in {}",
                    self.dir.display()
                );
            }
        }
        Ok(())
    }

    /// A path named in the file, resolved against qemu/.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The `[debian]` table as the cache key of the downloads: when it changes, they are fetched again.
    pub fn download_key(&self) -> String {
        format!(
            "arch={} kernel={} packages={}",
            self.debian.architecture,
            self.debian.kernel,
            self.debian.packages.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_definition_parses_and_checks() {
        let qemu = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu");
        let dev = Device::load(&qemu).expect("qemu/device.toml");
        assert_eq!(dev.qemu.accel, "tcg");
        assert!(dev.initramfs.modules.iter().any(|m| m == "ext4"));
    }
}
