//! The driver's [`Reporter`] for controller deployments: turns phases, progress, log lines and the final result into protocol reports queued in the outbox, with the log cut into chunks of at most `MAX_REPORT_LOG` bytes.
//!
//! Log lines are held in memory until the next report carries them (a phase
//! change, progress, the final report) or until they fill a chunk, which then
//! goes out as a report of its own. Lines not yet queued when the agent crashes
//! stay in the install log on the device but do not reach the controller.

use std::sync::{Arc, Mutex};

use molt_engine::protocol::{
    deployment_number, DeviceState, Failure, Progress, Report, MAX_REPORT_LOG, MAX_REPORT_MESSAGE,
};
use molt_engine::update::{AbortRefusal, CauseKind, DeploymentId, Outcome, Phase};

use crate::backoff::Wake;
use crate::install::Reporter;
use crate::outbox::Outbox;

/// Where the reports of the deployment in progress stand.
struct Current {
    /// The controller deployment, when the install in progress is one.
    deployment: Option<u64>,
    /// The last state and phase reported (log-only chunks repeat them).
    state: DeviceState,
    phase: &'static str,
    active_version: String,
    /// Log text not yet in a report.
    log: String,
}

/// Queues a controller deployment's reports in the outbox and wakes the sender.
pub struct OutboxReporter {
    outbox: Arc<Outbox>,
    wake: Arc<Wake>,
    cur: Mutex<Current>,
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    // Prefer ending a chunk at a line's end.
    match s[..i].rfind('\n') {
        Some(nl) if nl > 0 => nl + 1,
        _ => i,
    }
}

/// `m` cut to at most `max` bytes at a character boundary, with `…` marking the cut.
fn shorten(mut m: String, max: usize) -> String {
    const MARK: &str = "…";
    if m.len() > max {
        let mut i = max.saturating_sub(MARK.len());
        while !m.is_char_boundary(i) {
            i -= 1;
        }
        m.truncate(i);
        m.push_str(MARK);
    }
    m
}

impl OutboxReporter {
    /// A reporter into `outbox`; `wake` is raised after each queued report.
    pub fn new(outbox: Arc<Outbox>, wake: Arc<Wake>) -> OutboxReporter {
        OutboxReporter {
            outbox,
            wake,
            cur: Mutex::new(Current {
                deployment: None,
                state: DeviceState::Pending,
                phase: Phase::Idle.name(),
                active_version: String::new(),
                log: String::new(),
            }),
        }
    }

    /// Continues `deployment`, interrupted in `phase` by a restart: the lines the
    /// settling logs belong to it, and log-only chunks repeat its state.
    pub fn resume(&self, deployment: u64, phase: Phase, active_version: &str) {
        let mut cur = self.lock();
        active_version.clone_into(&mut cur.active_version);
        cur.deployment = Some(deployment);
        cur.state = DeviceState::of_phase(phase);
        cur.phase = phase.name();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.cur.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one report of the current deployment; a failure to queue is logged
    /// (to tracing only: the install log would feed it back here).
    fn queue(&self, n: u64, report: Report) {
        match self.outbox.enqueue(n, report) {
            Ok(_) => self.wake.raise(),
            Err(e) => tracing::error!("deployment {n}: cannot queue a report: {e:#}"),
        }
    }

    /// Takes at most one chunk of the held log.
    fn take_chunk(cur: &mut Current) -> String {
        let n = cut(&cur.log, MAX_REPORT_LOG);
        let rest = cur.log.split_off(n);
        std::mem::replace(&mut cur.log, rest)
    }

    /// Queues log-only reports while the held log is over one chunk.
    fn flush_full_chunks(&self, cur: &mut Current, n: u64) {
        while cur.log.len() > MAX_REPORT_LOG {
            let log = Self::take_chunk(cur);
            self.queue(n, Self::report(cur, None, None, log));
        }
    }

    fn report(
        cur: &Current,
        progress: Option<Progress>,
        message: Option<String>,
        log: String,
    ) -> Report {
        Report {
            seq: 0,
            state: cur.state,
            phase: cur.phase.to_owned(),
            progress,
            // The controller refuses a longer one: the whole text is in the log already.
            message: message.map(|m| shorten(m, MAX_REPORT_MESSAGE)),
            log,
            active_version: cur.active_version.clone(),
            failure: None,
        }
    }

    /// Makes `deployment` the current one; `None` for a local install (not reported).
    fn switch(cur: &mut Current, deployment: DeploymentId) -> Option<u64> {
        let n = deployment_number(deployment);
        if n != cur.deployment && cur.deployment.is_some() {
            // Lines held for another deployment are not this one's.
            cur.log.clear();
        }
        cur.deployment = n;
        if n.is_none() {
            cur.log.clear();
        }
        n
    }
}

impl Reporter for OutboxReporter {
    fn phase(&self, deployment: DeploymentId, phase: Phase, active_version: &str) {
        let mut cur = self.lock();
        let Some(n) = Self::switch(&mut cur, deployment) else {
            return;
        };
        self.flush_full_chunks(&mut cur, n);
        cur.state = DeviceState::of_phase(phase);
        cur.phase = phase.name();
        active_version.clone_into(&mut cur.active_version);
        let log = Self::take_chunk(&mut cur);
        let r = Self::report(&cur, None, None, log);
        self.queue(n, r);
    }

    fn progress(&self, deployment: DeploymentId, done: u64, total: Option<u64>) {
        let mut cur = self.lock();
        let Some(n) = Self::switch(&mut cur, deployment) else {
            return;
        };
        self.flush_full_chunks(&mut cur, n);
        let log = Self::take_chunk(&mut cur);
        let progress = Progress {
            done,
            total: total.unwrap_or(done).max(done),
        };
        let r = Self::report(&cur, Some(progress), None, log);
        self.queue(n, r);
    }

    fn finished(
        &self,
        deployment: DeploymentId,
        outcome: Outcome,
        cause: Option<CauseKind>,
        message: &str,
        active_version: &str,
    ) {
        let mut cur = self.lock();
        let Some(n) = Self::switch(&mut cur, deployment) else {
            return;
        };
        active_version.clone_into(&mut cur.active_version);
        self.flush_full_chunks(&mut cur, n);
        cur.state = DeviceState::of_outcome(outcome);
        cur.phase = Phase::Done.name();
        let log = Self::take_chunk(&mut cur);
        let mut r = Self::report(&cur, None, Some(message.to_owned()), log);
        r.failure = cause.and_then(Failure::of);
        self.queue(n, r);
        cur.deployment = None;
    }

    fn abort_refused(&self, deployment: DeploymentId, why: AbortRefusal, active_version: &str) {
        let mut cur = self.lock();
        let Some(n) = Self::switch(&mut cur, deployment) else {
            return;
        };
        if cur.state.is_final() {
            // The final report went out already: it says how the install ended.
            return;
        }
        active_version.clone_into(&mut cur.active_version);
        self.flush_full_chunks(&mut cur, n);
        let log = Self::take_chunk(&mut cur);
        let r = Self::report(&cur, None, Some(format!("abort refused: {why}")), log);
        self.queue(n, r);
    }

    fn log(&self, line: &str) {
        let mut cur = self.lock();
        cur.log.push_str(line);
        cur.log.push('\n');
        match cur.deployment {
            Some(n) => self.flush_full_chunks(&mut cur, n),
            None => {
                // Lines before an install's first report (the settling after a
                // restart, the "install … as deployment" line) go with it; a
                // device that only installs locally must not grow this forever.
                if cur.log.len() > MAX_REPORT_LOG {
                    let excess = cur.log.len() - MAX_REPORT_LOG;
                    let mut i = excess;
                    while !cur.log.is_char_boundary(i) {
                        i += 1;
                    }
                    cur.log.drain(..i);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{cut, shorten, MAX_REPORT_MESSAGE};

    #[test]
    fn long_messages_are_shortened_at_a_char_boundary() {
        assert_eq!(shorten("short".into(), 10), "short");
        let m = shorten("é".repeat(5000), MAX_REPORT_MESSAGE);
        assert!(
            m.len() <= MAX_REPORT_MESSAGE && m.ends_with('…'),
            "{}",
            m.len()
        );
        assert_eq!(shorten("abcdefgh".into(), 6), "abc…");
    }

    #[test]
    fn cuts_at_line_ends_and_char_boundaries() {
        assert_eq!(cut("abc", 10), 3);
        assert_eq!(cut("ab\ncd\nef", 7), 6);
        let s = "ééé"; // two bytes each
        assert_eq!(cut(s, 3), 2);
        assert_eq!(cut("abcdef", 4), 4);
    }
}
