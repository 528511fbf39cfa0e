//! The report sender: a thread that sends the outbox to the controller in order, one report at a time, retrying with backoff until each is acknowledged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::{sleep_unless, Backoff, Health, Wake};
use crate::client::{Client, ClientError};
use crate::outbox::Outbox;

/// How long the sender sleeps when the outbox is empty and nobody wakes it.
const IDLE_WAIT: Duration = Duration::from_secs(5);

/// Sends the outbox until `stop` is set; `wake` is raised when a report is queued
/// (and to stop), `done` after each acknowledgement (the main loop feeds
/// `Event::Reported` once a final report is delivered).
pub fn run(
    client: Client,
    outbox: Arc<Outbox>,
    wake: Arc<Wake>,
    done: Arc<Wake>,
    stop: Arc<AtomicBool>,
) {
    let mut backoff = Backoff::daemon();
    let mut health = Health::new("reports");
    while !stop.load(Ordering::SeqCst) {
        let p = match outbox.next() {
            Ok(Some(p)) => p,
            Ok(None) => {
                wake.wait(IDLE_WAIT);
                continue;
            }
            Err(e) => {
                // The data directory is failing; nothing to send until it recovers.
                let d = backoff.next_delay();
                tracing::error!("outbox: {e:#}");
                sleep_unless(&stop, d);
                continue;
            }
        };
        let (n, seq) = (p.deployment, p.report.seq);
        match client.report(n, &p.report) {
            Ok(answer) => {
                health.ok();
                backoff.reset();
                tracing::debug!(
                    deployment = n,
                    seq,
                    accepted = answer.accepted,
                    closed = answer.closed,
                    "report sent"
                );
                let result = if answer.closed {
                    outbox.close(n)
                } else {
                    outbox.sent(&p)
                };
                if let Err(e) = result {
                    tracing::error!("outbox: {e:#}");
                }
                done.raise();
            }
            Err(e) if !e.retryable() => {
                // The controller will give the same answer every time: keeping the
                // report would block every later one behind it.
                health.ok();
                backoff.reset();
                let result = match &e {
                    ClientError::Refused {
                        status: 403 | 404, ..
                    } => {
                        tracing::warn!(
                            "deployment {n}: the controller refuses its reports ({e}); dropping them"
                        );
                        outbox.close(n)
                    }
                    _ => {
                        tracing::warn!("deployment {n}: dropping report {seq}: {e}");
                        outbox.sent(&p)
                    }
                };
                if let Err(e) = result {
                    tracing::error!("outbox: {e:#}");
                }
                done.raise();
            }
            Err(e) => {
                let d = e.retry_after().unwrap_or_else(|| backoff.next_delay());
                health.failed(e.kind(), &e, d);
                // New reports do not cut a backoff short (during a download they
                // arrive every second); only a stop does.
                sleep_unless(&stop, d);
            }
        }
    }
}
