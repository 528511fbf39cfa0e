//! Retry pacing for the daemon's controller calls: capped exponential backoff with jitter, a log that speaks once per change of state, and an interruptible wait.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The first retry's delay.
pub const MIN: Duration = Duration::from_secs(1);
/// The longest delay between two tries: a controller down for days costs a
/// device one request every few minutes, never a busy loop.
pub const MAX: Duration = Duration::from_secs(300);

/// A random number without an RNG crate: std seeds each `RandomState` randomly.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// Exponential backoff from [`MIN`] to [`MAX`] with "equal jitter": each delay is
/// uniformly random in its upper half, so a fleet that lost the same controller
/// does not come back in lockstep.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next try after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let exp = MIN.saturating_mul(1u32 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        let cap = exp.min(MAX);
        let half = cap / 2;
        let span = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis(random_u64() % span)
    }

    /// A success: the next failure starts from [`MIN`] again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Whether a conversation with the controller works, for logs that say so once
/// per change instead of once per retry.
#[derive(Debug)]
pub struct Health {
    what: &'static str,
    failing: Option<String>,
    failures: u64,
}

impl Health {
    /// A tracker for `what` (`poll`, `reports`).
    pub fn new(what: &'static str) -> Health {
        Health {
            what,
            failing: None,
            failures: 0,
        }
    }

    /// A failure of kind `kind` (see `ClientError::kind`): logged when the kind changes.
    pub fn failed(&mut self, kind: String, error: &dyn std::fmt::Display, retry_in: Duration) {
        self.failures += 1;
        if self.failing.as_deref() != Some(kind.as_str()) {
            tracing::warn!(
                "{}: {error}; retrying with backoff (next in {:.1} s, then up to {} s apart)",
                self.what,
                retry_in.as_secs_f64(),
                MAX.as_secs()
            );
            self.failing = Some(kind);
        }
    }

    /// A success: logged if it ends a run of failures.
    pub fn ok(&mut self) {
        if self.failing.take().is_some() {
            tracing::info!(
                "{}: the controller answers again (after {} failed attempts)",
                self.what,
                self.failures
            );
        }
        self.failures = 0;
    }
}

/// A flag one thread raises to end another's wait early (new work, stop).
#[derive(Debug, Default)]
pub struct Wake {
    raised: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    /// Wakes the waiter (now, or its next wait returns at once).
    pub fn raise(&self) {
        *self.raised.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits up to `d` or until raised; returns whether it was raised (and lowers it).
    pub fn wait(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        let mut raised = self.raised.lock().unwrap_or_else(|e| e.into_inner());
        while !*raised {
            let now = Instant::now();
            if now >= end {
                return false;
            }
            raised = match self.cv.wait_timeout(raised, end - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        *raised = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_capped_and_reset() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(first >= MIN / 2 && first <= MIN, "{first:?}");
        let mut last = first;
        for _ in 0..30 {
            last = b.next_delay();
            assert!(last <= MAX);
        }
        assert!(last >= MAX / 2, "{last:?}");
        b.reset();
        assert!(b.next_delay() <= MIN);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut b = Backoff::default();
            b.next_delay();
            b.next_delay();
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 1, "no jitter: {seen:?}");
    }

    #[test]
    fn wake_ends_a_wait_early() {
        let w = std::sync::Arc::new(Wake::default());
        let w2 = w.clone();
        let t = std::thread::spawn(move || w2.wait(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        w.raise();
        assert!(t.join().unwrap());
        assert!(!w.wait(Duration::from_millis(10)));
    }
}
