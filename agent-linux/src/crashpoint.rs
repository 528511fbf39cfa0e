//! The agent's test hooks, compiled only with the `test-hooks` feature: death like a power cut after the N-th durable operation, and the `MOLT_TEST_*` variables that kill or pause the agent at chosen points.
//!
//! Without the feature every hook is an empty inline function and [`var`] is
//! always `None`, so the shipped binary reads no `MOLT_TEST_*` variable and the
//! code behind them is compiled out.
//!
//! With `MOLT_TEST_CRASH_AFTER_OPS=N` in the environment, every durable step the
//! agent takes outside the bulk extraction (each journal and slot-record write
//! and fsync, each step of a durable file replacement, each `FsOps` call of the
//! `current` swap, each `syncfs`) counts one, and the N-th is followed by
//! `SIGKILL`. A sweep runs N = 1, 2, … until an install survives, restarting the
//! agent after each death, and checks that every prefix recovers to a whole
//! snapshot. Without the variable this is one relaxed atomic load per step.

#[cfg(feature = "test-hooks")]
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "test-hooks")]
use std::sync::OnceLock;

#[cfg(feature = "test-hooks")]
static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
#[cfg(feature = "test-hooks")]
static COUNT: AtomicU64 = AtomicU64::new(0);

/// A test hook's environment variable (`MOLT_TEST_…`); always `None` in a build
/// without the `test-hooks` feature.
pub fn var(name: &str) -> Option<String> {
    if cfg!(feature = "test-hooks") {
        std::env::var(name).ok()
    } else {
        None
    }
}

/// Counts one durable operation `what` (nothing without the `test-hooks` feature).
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn after(_what: &str) {}

/// Counts one durable operation `what`; dies if the hook's limit is reached.
#[cfg(feature = "test-hooks")]
pub fn after(what: &str) {
    let limit =
        *LIMIT.get_or_init(|| var("MOLT_TEST_CRASH_AFTER_OPS").and_then(|v| v.parse().ok()));
    let Some(limit) = limit else { return };
    let n = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    if n >= limit {
        eprintln!("molt-agent: test crash after operation {n}: {what}");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
