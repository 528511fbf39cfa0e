//! Retry pacing for the agent: capped exponential backoff with jitter, one type for the daemon's controller calls and for download reconnections, a log that speaks once per change of state, and waits that a stop or an abort cuts short.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The daemon's first retry delay (poll, reports).
pub const DAEMON_MIN: Duration = Duration::from_secs(1);
/// The daemon's longest delay between two tries: a controller down for days
/// costs a device one request every few minutes, never a busy loop.
pub const DAEMON_MAX: Duration = Duration::from_secs(300);
/// A download's first reconnection delay: a dropped connection is usually back at once.
pub const FETCH_MIN: Duration = Duration::from_millis(600);
/// A download's longest reconnection delay: its retries are few (see `fetch`), so
/// they must span a short outage without stalling the install for minutes.
pub const FETCH_MAX: Duration = Duration::from_millis(19_200);

/// A random number without an RNG crate: std seeds each `RandomState` randomly.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// Exponential backoff from `min` to `max` with "equal jitter": each delay is
/// uniformly random in the upper half of its cap, so a fleet that lost the same
/// server does not come back in lockstep.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    /// The jitter's source; tests pass a fixed one.
    random: fn() -> u64,
}

impl Backoff {
    /// Delays from `min` doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            failures: 0,
            random: random_u64,
        }
    }

    /// The daemon's pacing of controller calls: [`DAEMON_MIN`] to [`DAEMON_MAX`].
    pub fn daemon() -> Backoff {
        Backoff::new(DAEMON_MIN, DAEMON_MAX)
    }

    /// A download's pacing of reconnections: [`FETCH_MIN`] to [`FETCH_MAX`].
    pub fn fetch() -> Backoff {
        Backoff::new(FETCH_MIN, FETCH_MAX)
    }

    /// The same pacing with `random` as the jitter's source (for tests).
    pub fn with_random(self, random: fn() -> u64) -> Backoff {
        Backoff { random, ..self }
    }

    /// The delay before the next try after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.min.saturating_mul(1u32 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        let cap = exp.min(self.max);
        let half = cap / 2;
        let span = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis((self.random)() % span)
    }

    /// A success: the next failure starts from the minimum again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Sleeps `d`, or until `stop` is set (a shutdown, an operator abort); returns
/// whether it was cut short. The flag is only read, never lowered: whoever set
/// it still acts on it.
pub fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        // The flag has no condition variable (its setters are the install's
        // hooks), so it is polled; a tenth of a second is quick enough for a stop.
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    true
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
                DAEMON_MAX.as_secs()
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

    /// A jitter source that always picks the bottom of the range.
    fn low() -> u64 {
        0
    }

    /// A jitter source that picks near the top of most ranges.
    fn high() -> u64 {
        u64::MAX
    }

    #[test]
    fn delays_double_from_half_the_minimum_and_reset() {
        let mut b = Backoff::daemon().with_random(low);
        let delays: Vec<_> = (0..4).map(|_| b.next_delay()).collect();
        let ms = |m| Duration::from_millis(m);
        assert_eq!(delays, [ms(500), ms(1000), ms(2000), ms(4000)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(500));
    }

    #[test]
    fn delays_stay_below_the_cap() {
        for (mut b, max) in [
            (Backoff::daemon().with_random(high), DAEMON_MAX),
            (Backoff::fetch().with_random(high), FETCH_MAX),
        ] {
            for _ in 0..40 {
                let d = b.next_delay();
                assert!(d < max, "{d:?}");
            }
            assert!(b.next_delay() >= max / 2);
        }
        let mut b = Backoff::daemon().with_random(low);
        let last = (0..40).map(|_| b.next_delay()).last();
        assert_eq!(last, Some(DAEMON_MAX / 2));
    }

    #[test]
    fn fetch_delays_keep_their_own_range() {
        let mut b = Backoff::fetch().with_random(low);
        assert_eq!(b.next_delay(), FETCH_MIN / 2);
        let mut b = Backoff::fetch().with_random(high);
        assert!(b.next_delay() < FETCH_MIN);
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut b = Backoff::daemon();
            b.next_delay();
            b.next_delay();
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 1, "no jitter: {seen:?}");
    }

    #[test]
    fn a_stop_cuts_a_sleep_short() {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let start = Instant::now();
        let t = std::thread::spawn(move || sleep_unless(&s2, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::SeqCst);
        assert!(t.join().unwrap());
        assert!(start.elapsed() < Duration::from_secs(5));
        // Raised, it stays raised: the next sleep returns at once.
        assert!(sleep_unless(&stop, Duration::from_secs(10)));
        assert!(!sleep_unless(
            &AtomicBool::new(false),
            Duration::from_millis(10)
        ));
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
