//! `cargo xtask demo`: molt running on this machine, a controller with its embedded defaults and one demo device, ready for the README's walkthrough.
//!
//! Everything lives in target/demo/ (fresh at every start): the controller's data
//! directory, and the demo device's root with its agent.toml, data directory
//! and log. The device trusts the controller's own signing key, so recipes pushed
//! with `molt update push` are built, signed and installable without any key
//! handling. Ctrl-C stops both processes (by their pids) and exits.
//!
//! `--smoke` runs the walkthrough itself (push, deploy, wait for success; a
//! failing update rolled back) on debug binaries and a free port, then stops:
//! CI runs it so the README's first command keeps working.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::proc::Proc;
use crate::{build_bins, display, is_root, output, run_cmd};

/// The demo device's hardware name; the demo recipes name it as their `compatible`.
const BOARD: &str = "molt-demo-board";

/// How `cargo xtask demo` was asked to run: `[--listen ADDR] [--smoke]`.
#[derive(clap::Args)]
pub struct Options {
    /// Where the controller listens [default: 127.0.0.1:8080; with --smoke a free port].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Run the walkthrough unattended, then stop (CI).
    #[arg(long)]
    smoke: bool,
}

impl Options {
    /// Where the controller listens: as asked, else 127.0.0.1:8080, or for the smoke
    /// run any free port, so it cannot collide with a demo someone left running.
    fn listen(&self) -> &str {
        match (&self.listen, self.smoke) {
            (Some(addr), _) => addr,
            (None, true) => "127.0.0.1:0",
            (None, false) => "127.0.0.1:8080",
        }
    }
}

pub fn run(root: &Path, o: &Options) -> Result<()> {
    // Release binaries for a person; the smoke run reuses the debug build the tests made.
    let bin = build_bins(root, !o.smoke)?;
    let molt = bin.join("molt");

    let dir = root.join("target/demo");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let data = dir.join("controller");

    // Ctrl-C (or SIGTERM) only raises the flag; the loop below stops the children.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;

    println!("\n== the controller (data in {})", data.display());
    let (mut controller, url) = start_controller(&bin, &data, o.listen())?;
    let token_file = data.join("operator-token");
    let token = fs::read_to_string(&token_file)
        .with_context(|| format!("cannot read {}", token_file.display()))?
        .trim()
        .to_string();
    let env = [
        ("MOLT_CONTROLLER", url.as_str()),
        ("MOLT_TOKEN", token.as_str()),
    ];

    println!("\n== a group for the demo device");
    let group: serde_json::Value = serde_json::from_str(&output(
        Command::new(&molt)
            .args(["groups", "create", "demo", "--json"])
            .envs(env),
    )?)?;
    let enroll_token = group["enrollment_token"]
        .as_str()
        .with_context(|| format!("no enrollment token in {group}"))?
        .to_string();

    let device_root = dir.join("device-1");
    let mut agent = None;
    if is_root() {
        println!("\n== the demo device (root {})", device_root.display());
        agent = Some(start_device(
            &bin,
            &device_root,
            &data,
            &url,
            &enroll_token,
        )?);
    } else {
        println!(
            "\n== no demo device: molt-agent writes snapshots with their owners and modes, \
             which needs root. Run `sudo -E cargo xtask demo` to get one."
        );
    }

    let rel = |p: &Path| {
        p.strip_prefix(root)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let molt_rel = format!("./{}", rel(&molt));
    println!(
        "\n== molt is running\n\
         controller     {url}   (operator token in {token})\n\
         web UI         {url}/   (log in with that token)\n\
         controller log {clog}\n\
         demo device    {device}   (log {alog}, snapshots in {slots})\n\
         \n\
         In another terminal, from {root}:\n\
         \n  export MOLT_CONTROLLER={url} MOLT_TOKEN=$(cat {token})\
         \n  {molt_rel} devices                                     # device-1 in group demo\
         \n  {molt_rel} update push docs/examples/demo/recipe.toml  # built and signed by the controller\
         \n  {molt_rel} deploy 1.0.0 --group demo\
         \n  {molt_rel} status                                      # watch it reach success\
         \n  cat {slots}/current/opt/demo-app/index.html\
         \n  {molt_rel} update push docs/examples/demo/broken.toml  # its after command fails\
         \n  {molt_rel} deploy 1.1.0 --group demo; sleep 10; {molt_rel} status\
         \n  {molt_rel} logs 2 device-1                             # why it rolled back\
         \n\nCtrl-C stops the controller and the device.",
        token = rel(&token_file),
        clog = rel(&controller.log),
        device = if agent.is_some() { "device-1" } else { "(none)" },
        alog = rel(&device_root.join("agent.log")),
        slots = rel(&device_root.join("var/lib/molt")),
        root = root.display(),
    );

    if o.smoke && agent.is_none() {
        println!("demo smoke: skipped, the demo device needs root");
        return Ok(());
    }
    if o.smoke {
        let result = walkthrough(root, &molt, &env, &device_root);
        if result.is_err() {
            println!("--- controller log\n{}", controller.tail());
            if let Some(a) = &agent {
                println!("--- agent log\n{}", a.tail());
            }
        }
        return result;
    }

    // Wait for Ctrl-C, or for one of the two to die (then say why and stop the other).
    loop {
        if stop.load(Ordering::SeqCst) {
            println!("\nstopping the controller and the demo device");
            return Ok(());
        }
        for p in std::iter::once(&mut controller).chain(agent.as_mut()) {
            if let Some(why) = p.exited() {
                bail!("{why}; the end of {}:\n{}", p.log.display(), p.tail());
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Starts `molt-controller serve` and returns it with its URL, echoing what it
/// prints on stdout (the `listening on` line, and the operator token on a first start).
fn start_controller(bin: &Path, data: &Path, listen: &str) -> Result<(Proc, String)> {
    fs::create_dir_all(data)?;
    let mut cmd = Command::new(bin.join("molt-controller"));
    cmd.arg("serve")
        .arg("--data")
        .arg(data)
        .args(["--listen", listen, "--poll-interval", "2"]);
    println!("$ {}", display(&cmd));
    Proc::spawn_listening(
        &mut cmd,
        "molt-controller",
        data.with_file_name("controller.log"),
        true,
    )
    .with_context(|| format!("molt-controller --listen {listen}"))
}

/// Writes the demo device's agent.toml, enrolls it in `demo` and starts `molt-agent run`.
fn start_device(
    bin: &Path,
    root: &Path,
    controller_data: &Path,
    url: &str,
    enroll_token: &str,
) -> Result<Proc> {
    fs::create_dir_all(root)?;
    let key_file = controller_data.join("signing.pub");
    let key = fs::read_to_string(&key_file)
        .with_context(|| format!("cannot read {}", key_file.display()))?;
    let config = root.join("agent.toml");
    fs::write(
        &config,
        format!(
            "# The demo device: every path below lives under `root`.\n\
             root = \"{root}\"\n\
             compatible = \"{BOARD}\"\n\
             # The controller's own signing key: updates it builds are trusted.\n\
             trusted_keys = [\"{key}\"]\n\
             reboot_command = \"echo the demo device would reboot now\"\n\
             poll_interval_secs = 2\n",
            root = root.display(),
            key = key.trim(),
        ),
    )?;
    let agent = bin.join("molt-agent");
    run_cmd(
        Command::new(&agent)
            .arg("--config")
            .arg(&config)
            .args(["enroll", "--controller", url, "--name", "device-1"])
            .args(["--token", enroll_token]),
    )?;
    let log = root.join("agent.log");
    // Both streams into one file, in the order they were written.
    let out = File::create(&log)?;
    let mut cmd = Command::new(&agent);
    cmd.arg("--config")
        .arg(&config)
        .arg("run")
        .env("MOLT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    println!("$ {}", display(&cmd));
    let child = cmd.spawn().context("cannot start molt-agent")?;
    Ok(Proc::new(child, "molt-agent", log))
}

/// The README's walkthrough, checked: 1.0.0 succeeds and is on the device,
/// 1.1.0 rolls back with its after command's output in the log.
fn walkthrough(root: &Path, molt: &Path, env: &[(&str, &str)], device: &Path) -> Result<()> {
    let m = |args: &[&str]| {
        output(
            Command::new(molt)
                .current_dir(root)
                .args(args)
                .envs(env.iter().copied()),
        )
    };
    println!("\n== walkthrough (smoke)");
    m(&["update", "push", "docs/examples/demo/recipe.toml"])?;
    m(&["deploy", "1.0.0", "--group", "demo"])?;
    wait_state(&m, "1", "success")?;
    print!("{}", m(&["status"])?);
    let page = device.join("var/lib/molt/current/opt/demo-app/index.html");
    let text =
        fs::read_to_string(&page).with_context(|| format!("cannot read {}", page.display()))?;
    if !text.contains("demo-app 1.0.0") {
        bail!("{} does not hold demo-app 1.0.0:\n{text}", page.display());
    }
    m(&["update", "push", "docs/examples/demo/broken.toml"])?;
    m(&["deploy", "1.1.0", "--group", "demo"])?;
    wait_state(&m, "2", "rolled_back")?;
    print!("{}", m(&["status"])?);
    let log = m(&["logs", "2", "device-1"])?;
    if !log.contains("port 8080 did not answer") {
        bail!("the rolled-back device's log lacks the after command's output:\n{log}");
    }
    if !fs::read_to_string(&page)?.contains("demo-app 1.0.0") {
        bail!("after the rollback the device is not on 1.0.0 any more");
    }
    println!("demo smoke: ok");
    Ok(())
}

/// Waits until every device of `deployment` is in `state`.
fn wait_state(m: &dyn Fn(&[&str]) -> Result<String>, deployment: &str, state: &str) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(120) {
        last = m(&["status", deployment, "--json"])?;
        let details: serde_json::Value = serde_json::from_str(&last)?;
        let states: Vec<&str> = details["devices"]
            .as_array()
            .map(|d| d.iter().filter_map(|d| d["state"].as_str()).collect())
            .unwrap_or_default();
        if !states.is_empty() && states.iter().all(|s| *s == state) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(500));
    }
    bail!("deployment {deployment} did not reach `{state}` in 120 s; last status:\n{last}")
}
