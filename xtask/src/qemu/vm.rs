//! One boot of the emulated device: the QEMU command line (TCG, mmio virtio, `restrict=on` networking with one forwarded port), the serial console read line by line, markers waited for, `kill -9` as a power cut, and a hard timeout on every run.
//!
//! QEMU runs under `timeout -s KILL`, so even if xtask itself dies the emulator
//! cannot outlive its budget. A power cut kills the QEMU process itself (its pid
//! comes from `-pidfile`), never the wrapper: the guest loses everything it had not
//! written to the disk image, exactly as when the power goes.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::image::Image;
use super::spec::Device;

/// What one boot is given.
pub struct Boot<'a> {
    /// For messages and file names (`success-1`, `cut-03-after`).
    pub name: String,
    /// The disk image the guest sees as /dev/vda.
    pub disk: &'a Path,
    /// The controller's port on the host's loopback.
    pub controller_port: u16,
    /// `molt_*` words for /init (qemu/init says which it reads).
    pub args: Vec<(String, String)>,
    /// The wrapper kills QEMU after this long, whatever happens.
    pub timeout: Duration,
    /// Where the console is saved.
    pub log: PathBuf,
    /// Echo the console to our stdout as it arrives.
    pub echo: bool,
}

/// How a boot ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The guest powered off (`reboot: Power down`).
    PowerOff,
    /// The guest asked for a restart; with `-no-reboot` QEMU exits instead.
    Reboot,
    /// We killed QEMU (a power cut).
    Killed,
}

/// A running guest.
pub struct Vm {
    name: String,
    wrapper: Child,
    pidfile: PathBuf,
    lines: Receiver<String>,
    console: Arc<Mutex<Vec<(Duration, String)>>>,
    log: PathBuf,
    started: Instant,
    killed: bool,
}

/// The kernel prints these when the guest stops (pr_emerg: shown even with `quiet`).
const POWER_DOWN: &str = "reboot: Power down";
const RESTARTING: &str = "reboot: Restarting system";

impl Vm {
    /// Starts QEMU for `boot` on `image`.
    pub fn start(dev: &Device, image: &Image, boot: &Boot<'_>) -> Result<Vm> {
        let q = &dev.qemu;
        let mut append = format!(
            "{} molt_controller=http://{}:{}",
            q.append, q.controller_ip, q.controller_port
        );
        for (k, v) in &boot.args {
            if v.is_empty() || v.chars().any(char::is_whitespace) {
                bail!("kernel argument {k}=`{v}` is empty or has white space");
            }
            append.push_str(&format!(" {k}={v}"));
        }
        let pidfile = boot.log.with_extension("pid");
        let _ = fs::remove_file(&pidfile);
        let format = if boot.disk.extension().is_some_and(|e| e == "qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        // restrict=on: the guest reaches nothing but the guestfwd address, which socat
        // connects to the controller on our loopback (`-t 0.05` avoids a 0.5 s stall
        // per request). Plain user networking would turn any guest connection into a
        // real one from this machine.
        let netdev = format!(
            "user,id=n0,restrict=on,guestfwd=tcp:{}:{}-cmd:socat -t 0.05 STDIO TCP4:127.0.0.1:{}",
            q.controller_ip, q.controller_port, boot.controller_port
        );
        let mut cmd = Command::new("timeout");
        cmd.arg("-s")
            .arg("KILL")
            .arg(boot.timeout.as_secs().max(1).to_string())
            .arg(&q.binary)
            .args(["-M", &q.machine, "-accel", &q.accel, "-cpu", &q.cpu])
            .args(["-smp", &q.smp.to_string(), "-m", &q.memory_mib.to_string()])
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
            ])
            .arg("-pidfile")
            .arg(&pidfile)
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initramfs)
            .args(["-append", &append])
            .args(["-netdev", &netdev, "-device", "virtio-net-device,netdev=n0"])
            .arg("-drive")
            .arg(format!(
                "if=none,id=d0,format={format},file={}",
                boot.disk.display()
            ))
            .args(["-device", "virtio-blk-device,drive=d0"])
            .args(["-device", "virtio-rng-device"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut wrapper = cmd
            .spawn()
            .with_context(|| format!("cannot start {} (under `timeout`)", q.binary))?;
        let started = Instant::now();
        let console = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = wrapper.stdout.take().context("QEMU's stdout")?;
        let stderr = wrapper.stderr.take().context("QEMU's stderr")?;
        for (stream, prefix) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, ""),
            (Box::new(stderr), "qemu stderr: "),
        ] {
            let (console, tx, echo) = (console.clone(), tx.clone(), boot.echo);
            thread::spawn(move || read_lines(stream, prefix, started, &console, &tx, echo));
        }
        Ok(Vm {
            name: boot.name.clone(),
            wrapper,
            pidfile,
            lines,
            console,
            log: boot.log.clone(),
            started,
            killed: false,
        })
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for a console line containing `needle`; returns it with the time since start.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> Result<(String, Duration)> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok((line, self.elapsed())),
                Ok(line) if line.contains("MOLT-FAIL") => {
                    bail!(
                        "{}: the guest failed while waiting for `{needle}`: {line}",
                        self.name
                    )
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{}: no console line with `{needle}` within {limit:?}",
                    self.name
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "{}: QEMU exited before the console showed `{needle}`",
                        self.name
                    )
                }
            }
        }
    }

    /// The power cut: `kill -9` of the QEMU process, then reaping the wrapper.
    pub fn kill9(&mut self) -> Result<()> {
        let pid = fs::read_to_string(&self.pidfile)
            .with_context(|| format!("{}: no QEMU pid in {}", self.name, self.pidfile.display()))?;
        let pid = pid.trim();
        if pid.parse::<u32>().is_err() {
            bail!(
                "{}: {} holds `{pid}`, not a pid",
                self.name,
                self.pidfile.display()
            );
        }
        let status = Command::new("kill")
            .args(["-9", pid])
            .status()
            .context("cannot run kill")?;
        if !status.success() {
            bail!("{}: `kill -9 {pid}` failed ({status})", self.name);
        }
        self.killed = true;
        self.wait_wrapper(Duration::from_secs(30))?;
        Ok(())
    }

    /// Waits until QEMU exits by itself (at most `limit`), and says how the guest ended.
    pub fn wait_end(&mut self, limit: Duration) -> Result<End> {
        let code = self.wait_wrapper(limit)?;
        if self.killed {
            return Ok(End::Killed);
        }
        let console = self.console();
        let stopped = |what: &str| console.iter().any(|l| l.contains(what));
        match code {
            Some(0) if stopped(RESTARTING) => Ok(End::Reboot),
            Some(0) if stopped(POWER_DOWN) => Ok(End::PowerOff),
            Some(137) => bail!("{}: QEMU ran into its timeout and was killed", self.name),
            other => bail!(
                "{}: QEMU exited with {other:?} without the guest stopping",
                self.name
            ),
        }
    }

    fn wait_wrapper(&mut self, limit: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.wrapper.try_wait()? {
                // Let the reader threads drain what QEMU wrote last.
                let drain = Instant::now();
                while drain.elapsed() < Duration::from_secs(2) {
                    match self.lines.recv_timeout(Duration::from_millis(100)) {
                        Err(RecvTimeoutError::Disconnected) => break,
                        _ => continue,
                    }
                }
                self.save_log();
                return Ok(st.code());
            }
            if Instant::now() >= deadline {
                let _ = self.kill9_quiet();
                self.save_log();
                bail!("{}: the guest did not stop within {limit:?}", self.name);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9_quiet(&mut self) -> Result<()> {
        if let Ok(pid) = fs::read_to_string(&self.pidfile) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = self.wrapper.kill();
        let _ = self.wrapper.wait();
        Ok(())
    }

    /// Every console line so far (`\r` stripped).
    pub fn console(&self) -> Vec<String> {
        self.timed_console().into_iter().map(|(_, l)| l).collect()
    }

    /// Every console line so far with the time since QEMU started when it arrived.
    pub fn timed_console(&self) -> Vec<(Duration, String)> {
        self.console.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Writes the console, each line with its arrival time, to the boot's log file.
    pub fn save_log(&self) {
        let mut text = String::new();
        for (t, line) in self.timed_console() {
            text.push_str(&format!("[{:8.3}] {line}\n", t.as_secs_f64()));
        }
        let _ = fs::write(&self.log, text);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.wrapper.try_wait(), Ok(None)) {
            let _ = self.kill9_quiet();
        }
        self.save_log();
    }
}

fn read_lines(
    stream: Box<dyn std::io::Read + Send>,
    prefix: &str,
    started: Instant,
    console: &Mutex<Vec<(Duration, String)>>,
    tx: &mpsc::Sender<String>,
    echo: bool,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // The serial console writes \r\n.
        let text = String::from_utf8_lossy(&buf);
        let line = format!("{prefix}{}", printable(text.trim_end_matches(['\n', '\r'])));
        if echo {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "  | {line}");
        }
        if let Ok(mut c) = console.lock() {
            c.push((started.elapsed(), line.clone()));
        }
        let _ = tx.send(line);
    }
}

/// A console line as text: `\r` dropped, and runs of NUL bytes (a log file whose last
/// append a power cut lost, printed by the agent's status) shown as a count instead of
/// raw bytes that would make the saved console a binary file.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut nuls = 0;
    for c in line.chars().chain(std::iter::once('\n')) {
        if c == '\0' {
            nuls += 1;
            continue;
        }
        if nuls > 0 {
            out.push_str(&format!("<{nuls} NUL bytes>"));
            nuls = 0;
        }
        match c {
            '\n' | '\r' => {}
            c if c.is_control() && c != '\t' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn console_lines_are_made_printable() {
        assert_eq!(printable("a\rb"), "ab");
        assert_eq!(printable("x\0\0\0y"), "x<3 NUL bytes>y");
        assert_eq!(printable("end\0"), "end<1 NUL bytes>");
        assert_eq!(printable("\u{1b}[0m ok\t1"), "?[0m ok\t1");
    }
}
