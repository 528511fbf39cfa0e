//! `molt-agent run`: the daemon that polls the controller, installs the deployments it offers through the install pipeline, and reports every phase, progress, log and result back.
//!
//! Three threads share the work:
//!
//! * **main** owns the [`Device`]: it settles an interrupted install first (with
//!   the poller already watching for an abort), installs offered deployments one
//!   at a time, and feeds `Event::Reported` once the outbox says the controller
//!   has a deployment's final report;
//! * the **poller** posts `/device/poll` once per cycle (the interval the
//!   controller names, or the configured one), with `in_progress` naming the
//!   deployment being installed or awaiting its final report's acknowledgement;
//!   an `abort` for that deployment sets the driver's abort flag, which stops
//!   the running action and rolls the install back (see `install.rs`);
//! * the **sender** (`daemon/sender.rs`) sends the report outbox in order.
//!
//! When the controller is unreachable, polls and reports back off exponentially
//! with jitter ([`crate::backoff::DAEMON_MIN`] to [`crate::backoff::DAEMON_MAX`]) and each logs once per change of
//! state. Nothing here is needed for safety: the journal and the outbox are
//! durable, so the daemon may be killed at any instant and picks up where it was
//! on the next start.

pub mod reporter;
mod sender;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Result;
use molt_engine::protocol::{PollAction, PollRequest};
use molt_engine::update::Phase;

use self::reporter::OutboxReporter;
use crate::backoff::{Backoff, Health, Wake};
use crate::client::Client;
use crate::config::Config;
use crate::enrollment::Enrollment;
use crate::fetch::Bearer;
use crate::install::{Device, Hooks};
use crate::outbox::Outbox;

/// How `run` behaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Return once there is nothing left to do: every offered deployment installed,
    /// every report delivered, and the controller answering `none` (cron-style
    /// devices, and tests). Without it the daemon runs until it is killed.
    pub once: bool,
}

/// A poll's answer, as the main loop takes it.
struct Answer {
    /// The main loop's epoch when the poll started (older answers are stale).
    epoch: u64,
    /// The `in_progress` the poll sent.
    in_progress: Option<u64>,
    action: PollAction,
}

/// What the main loop and the poller share.
struct Shared {
    /// The deployment in progress; the abort flag is set and cleared under this lock.
    in_progress: Mutex<Option<u64>>,
    active_version: Mutex<String>,
    inactive_version: Mutex<Option<String>>,
    abort: Arc<AtomicBool>,
    answer: Mutex<Option<Answer>>,
    /// Raised after an install so answers from polls that started before are ignored.
    epoch: AtomicU64,
    /// Wakes the main loop (a poll answer, an acknowledged report).
    main: Arc<Wake>,
    /// Wakes the poller for an immediate poll (or to stop).
    poll_now: Wake,
    stop: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Publishes what the device is doing, for the next poll.
    fn publish(&self, dev: &Device) {
        let now = dev.in_progress();
        let mut cur = lock(&self.in_progress);
        if *cur != now {
            // A new deployment starts with no abort; an old one's abort is spent.
            self.abort.store(false, Ordering::SeqCst);
            *cur = now;
        }
        *lock(&self.active_version) = dev.active_version();
        *lock(&self.inactive_version) = dev.inactive_version();
    }

    /// Starts `deployment`: later aborts name it.
    fn begin(&self, deployment: u64) {
        let mut cur = lock(&self.in_progress);
        self.abort.store(false, Ordering::SeqCst);
        *cur = Some(deployment);
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.poll_now.raise();
    }
}

/// Hooks for a device enrolled with a controller: reports are queued in the
/// outbox (sent by `run`), bundle downloads from the controller carry the credential.
pub fn hooks(cfg: &Config, enrollment: &Enrollment) -> Result<(Hooks, Arc<OutboxReporter>)> {
    let outbox = Arc::new(Outbox::open(&cfg.data_dir())?);
    let reporter = Arc::new(OutboxReporter::new(outbox, Arc::new(Wake::default())));
    let hooks = Hooks {
        reporter: Some(reporter.clone()),
        bearer: Some(Bearer::new(&enrollment.controller, &enrollment.credential)),
        abort: Arc::default(),
    };
    Ok((hooks, reporter))
}

/// Runs the daemon: see the module documentation.
pub fn run(cfg: Config, opts: Options) -> Result<()> {
    let data = cfg.data_dir();
    let Some(enrollment) = Enrollment::load(&data)? else {
        // Still worth starting at boot: an interrupted install is settled.
        Device::open(cfg)?;
        tracing::warn!(
            "not enrolled with a controller ({} is missing): settled the install journal, nothing to poll; run `molt-agent enroll --controller URL --token T`",
            data.join(crate::enrollment::FILE).display()
        );
        return Ok(());
    };
    if let Some(c) = cfg
        .controller
        .as_deref()
        .filter(|c| *c != enrollment.controller)
    {
        tracing::warn!(
            "the configuration names controller {c}, but the device is enrolled with {}: using the enrollment",
            enrollment.controller
        );
    }
    let client = enrollment.client(&cfg)?;
    let outbox = Arc::new(Outbox::open(&data)?);
    let send_wake = Arc::new(Wake::default());
    let main_wake = Arc::new(Wake::default());
    let stop = Arc::new(AtomicBool::new(false));
    let reporter = Arc::new(OutboxReporter::new(outbox.clone(), send_wake.clone()));
    let abort = Arc::new(AtomicBool::new(false));
    let hooks = Hooks {
        reporter: Some(reporter.clone()),
        bearer: Some(Bearer::new(&enrollment.controller, &enrollment.credential)),
        abort: abort.clone(),
    };
    let mut dev = Device::open_unsettled(cfg.clone(), hooks)?;
    tracing::info!(
        "molt-agent {} polling {} as {}",
        env!("CARGO_PKG_VERSION"),
        enrollment.controller,
        enrollment.device_id
    );
    let shared = Arc::new(Shared {
        in_progress: Mutex::new(None),
        active_version: Mutex::new(String::new()),
        inactive_version: Mutex::new(None),
        abort,
        answer: Mutex::new(None),
        epoch: AtomicU64::new(0),
        main: main_wake.clone(),
        poll_now: Wake::default(),
        stop: stop.clone(),
    });
    shared.publish(&dev);
    if let Some(n) = dev.in_progress() {
        reporter.resume(n, dev.state().phase(), &dev.active_version());
    }

    let sender = {
        let (client, outbox, wake, done, stop) = (
            client.clone(),
            outbox.clone(),
            send_wake.clone(),
            main_wake.clone(),
            stop.clone(),
        );
        std::thread::Builder::new()
            .name("molt-reports".into())
            .spawn(move || sender::run(client, outbox, wake, done, stop))?
    };
    let poller = {
        let (client, shared, cfg) = (client.clone(), shared.clone(), cfg.clone());
        std::thread::Builder::new()
            .name("molt-poll".into())
            .spawn(move || poll_loop(&client, &shared, &cfg))?
    };

    let result = main_loop(&mut dev, &client, &outbox, &shared, opts);
    shared.stop();
    send_wake.raise();
    // Both threads end within one request's timeout; the process ends anyway
    // when `run` returns, so only a clean `--once` waits for them.
    if result.is_ok() {
        let _ = sender.join();
        let _ = poller.join();
    }
    result
}

fn main_loop(
    dev: &mut Device,
    client: &Client,
    outbox: &Outbox,
    shared: &Shared,
    opts: Options,
) -> Result<()> {
    // Settled with the poller running, so an abort reaches a resumed download or
    // a health check rerun after a restart.
    dev.settle()?;
    shared.publish(dev);
    let mut epoch = shared.epoch.load(Ordering::SeqCst);
    loop {
        if let Some(n) = dev.in_progress() {
            // Only what the outbox says: a final report that could not be queued is
            // emitted again on the next start (the journal stays in `Done`).
            if dev.state().phase() == Phase::Done && outbox.delivered(n)? {
                dev.acknowledge(n)?;
                tracing::info!("deployment {n}: the controller has the final report");
                shared.publish(dev);
                shared.poll_now.raise();
            }
        }
        shared.main.wait(Duration::from_secs(1));
        let answer = lock(&shared.answer).take().filter(|a| a.epoch >= epoch);
        let Some(answer) = answer else { continue };
        match answer.action {
            PollAction::Install(offer) => {
                let n = offer.deployment;
                if dev.in_progress() == Some(n) || outbox.knows(n) {
                    // The controller repeats an offer until it sees the first report.
                    tracing::debug!("deployment {n}: offered again; already started");
                    continue;
                }
                if !matches!(dev.state().phase(), Phase::Idle | Phase::Done) {
                    continue;
                }
                tracing::info!("deployment {n}: installing version {}", offer.version);
                shared.begin(n);
                let url = client.url(&offer.bundle_path);
                let outcome = dev.install_deployment(n, &url)?;
                tracing::info!("deployment {n}: {outcome}");
                shared.publish(dev);
                epoch = shared.epoch.fetch_add(1, Ordering::SeqCst) + 1;
                shared.poll_now.raise();
            }
            PollAction::None => {
                if opts.once
                    && answer.in_progress.is_none()
                    && dev.in_progress().is_none()
                    && outbox.pending()? == 0
                {
                    tracing::info!("nothing left to do (--once)");
                    return Ok(());
                }
            }
            PollAction::Abort { .. } => {}
        }
    }
}

fn poll_loop(client: &Client, shared: &Shared, cfg: &Config) {
    let mut backoff = Backoff::daemon();
    let mut health = Health::new("poll");
    while !shared.stop.load(Ordering::SeqCst) {
        let epoch = shared.epoch.load(Ordering::SeqCst);
        let in_progress = *lock(&shared.in_progress);
        let req = PollRequest {
            active_version: lock(&shared.active_version).clone(),
            inactive_version: lock(&shared.inactive_version).clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            compatible: cfg.compatible.clone(),
            in_progress,
        };
        let wait = match client.poll(&req) {
            Ok(resp) => {
                health.ok();
                backoff.reset();
                if let PollAction::Abort { deployment } = resp.action {
                    let cur = lock(&shared.in_progress);
                    if *cur == Some(deployment) && !shared.abort.swap(true, Ordering::SeqCst) {
                        tracing::info!("deployment {deployment}: aborted by an operator");
                    }
                }
                *lock(&shared.answer) = Some(Answer {
                    epoch,
                    in_progress,
                    action: resp.action,
                });
                shared.main.raise();
                Duration::from_secs(u64::from(resp.poll_interval_secs.max(1)))
            }
            Err(e) => {
                let d = e.retry_after().unwrap_or_else(|| backoff.next_delay());
                health.failed(e.kind(), &e, d);
                d
            }
        };
        shared.poll_now.wait(wait);
    }
}
