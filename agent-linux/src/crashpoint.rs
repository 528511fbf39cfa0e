//! A test hook that makes the agent die like a power cut right after its N-th durable operation, for crash sweeps over the whole install sequence.
//!
//! With `MOLT_TEST_CRASH_AFTER_OPS=N` in the environment, every durable step the
//! agent takes outside the bulk extraction (each journal and slot-record write
//! and fsync, each step of a durable file replacement, each `FsOps` call of the
//! `current` swap, each `syncfs`) counts one, and the N-th is followed by
//! `SIGKILL`. A sweep runs N = 1, 2, … until an install survives, restarting the
//! agent after each death, and checks that every prefix recovers to a whole
//! snapshot. Without the variable this is one relaxed atomic load per step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
static COUNT: AtomicU64 = AtomicU64::new(0);

/// Counts one durable operation `what`; dies if the hook's limit is reached.
pub fn after(what: &str) {
    let limit = *LIMIT.get_or_init(|| {
        std::env::var("MOLT_TEST_CRASH_AFTER_OPS")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    let Some(limit) = limit else { return };
    let n = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
    if n >= limit {
        eprintln!("molt-agent: test crash after operation {n}: {what}");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
