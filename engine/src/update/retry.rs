//! The timing policy of a command tried more than once (the health check): how many attempts, and how long between them, without reading a clock.
//!
//! As in quinn-proto, the policy lives in the core and the time comes in as an
//! argument: [`Retry::handle_timeout`] takes the time now and says what to do
//! (run an attempt, wait until a deadline, or stop), [`Retry::record`] takes
//! how an attempt ended, and [`Retry::poll_timeout`] says when the next attempt
//! is due. The caller owns the clock, the sleeping and any way to cut a wait
//! short (the agent's abort flag); a test drives it with a fake clock.
//!
//! ```
//! use molt_engine::update::{Attempt, Retry, RetryAction};
//!
//! // Three attempts, two seconds apart (the recipe's `attempts`, `interval_secs`).
//! let mut retry = Retry::new(3, 2_000);
//! let mut now = 0; // milliseconds on the caller's monotonic clock
//! assert_eq!(retry.handle_timeout(now), RetryAction::Run { attempt: 1 });
//! now += 300; // the first attempt fails after 300 ms: the next is due 2 s later
//! assert_eq!(retry.record(Attempt::Failed, now), RetryAction::Wait { until: 2_300 });
//! assert_eq!(retry.handle_timeout(1_000), RetryAction::Wait { until: 2_300 });
//! assert_eq!(retry.handle_timeout(2_300), RetryAction::Run { attempt: 2 });
//! assert_eq!(retry.record(Attempt::Passed, 2_400), RetryAction::Passed);
//! ```

use crate::bundle::HealthCheck;

/// A time in milliseconds on the caller's clock. Any origin will do, as long as
/// the clock never goes backwards (a monotonic clock, not the wall clock).
pub type Millis = u64;

/// How one attempt ended, as [`Retry::record`] takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// It succeeded (exit status 0): no more attempts.
    Passed,
    /// It failed (a non-zero exit, a timeout): another attempt follows if any are left.
    Failed,
    /// It was stopped from outside (an operator's abort): no more attempts, whatever is left.
    Stopped,
}

/// What the caller does next, from [`Retry::handle_timeout`] or [`Retry::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAction {
    /// Start attempt number `attempt` (from 1) now, then [`Retry::record`] how it ended.
    Run {
        /// Which attempt this is, counting from 1.
        attempt: u32,
    },
    /// Nothing is due before `until`: wait, then call [`Retry::handle_timeout`] again.
    /// `until` may already have passed (no interval): then there is nothing to wait for.
    Wait {
        /// When the next attempt is due.
        until: Millis,
    },
    /// An attempt is running: [`Retry::record`] its end first.
    Running,
    /// An attempt passed: the command succeeded.
    Passed,
    /// No attempt passed and none is left (or one was stopped): the command failed.
    GaveUp,
}

/// Where a [`Retry`] stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The next attempt may start at this time.
    Due(Millis),
    /// An attempt was started and has not been recorded.
    Running,
    /// Finished: passed or gave up.
    Over(RetryAction),
}

/// The attempts of one command and the interval between them.
///
/// The interval runs from the end of a failed attempt to the start of the
/// next one, so a slow check does not eat into the pause a service is given to
/// come up. The first attempt is due at once. Pure: no clock, no sleeping, no
/// panics, whatever order the calls come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    attempts: u32,
    interval: Millis,
    made: u32,
    stage: Stage,
}

impl Retry {
    /// `attempts` tries, `interval` milliseconds apart. There is always at least
    /// one attempt: a command that is never run cannot pass.
    pub fn new(attempts: u32, interval: Millis) -> Retry {
        Retry {
            attempts: attempts.max(1),
            interval,
            made: 0,
            stage: Stage::Due(0),
        }
    }

    /// A command run exactly once (the before, after and rollback commands).
    pub fn once() -> Retry {
        Retry::new(1, 0)
    }

    /// The recipe's health check: its `attempts`, `interval_secs` apart.
    pub fn health_check(check: &HealthCheck<'_>) -> Retry {
        Retry::new(
            u32::from(check.attempts),
            u64::from(check.interval_secs).saturating_mul(1000),
        )
    }

    /// When the next attempt is due; `None` while one is running or once the command passed or gave up.
    pub fn poll_timeout(&self) -> Option<Millis> {
        match self.stage {
            Stage::Due(at) => Some(at),
            Stage::Running | Stage::Over(_) => None,
        }
    }

    /// The time is `now`: starts the next attempt if it is due.
    pub fn handle_timeout(&mut self, now: Millis) -> RetryAction {
        match self.stage {
            Stage::Due(at) if now >= at => {
                self.made = self.made.saturating_add(1);
                self.stage = Stage::Running;
                RetryAction::Run { attempt: self.made }
            }
            Stage::Due(at) => RetryAction::Wait { until: at },
            Stage::Running => RetryAction::Running,
            Stage::Over(end) => end,
        }
    }

    /// The running attempt ended at `now` with `outcome`: decides whether another
    /// one follows, and when. Without a running attempt nothing changes and the
    /// answer is where the retry stands.
    pub fn record(&mut self, outcome: Attempt, now: Millis) -> RetryAction {
        if self.stage != Stage::Running {
            return match self.stage {
                Stage::Due(until) => RetryAction::Wait { until },
                Stage::Over(end) => end,
                Stage::Running => RetryAction::Running,
            };
        }
        let next = match outcome {
            Attempt::Passed => Stage::Over(RetryAction::Passed),
            Attempt::Failed if self.made < self.attempts => {
                Stage::Due(now.saturating_add(self.interval))
            }
            Attempt::Failed | Attempt::Stopped => Stage::Over(RetryAction::GaveUp),
        };
        self.stage = next;
        match next {
            Stage::Due(until) => RetryAction::Wait { until },
            Stage::Over(end) => end,
            Stage::Running => RetryAction::Running,
        }
    }

    /// Attempts started so far.
    pub fn attempts_made(&self) -> u32 {
        self.made
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Command;

    /// Drives `retry` as the agent does, with a fake clock: each attempt takes
    /// `took` ms and ends as `outcomes` say; waits jump the clock to their deadline.
    /// Returns the start time of every attempt and how it ended.
    fn drive(retry: &mut Retry, took: Millis, outcomes: &[Attempt]) -> (Vec<Millis>, RetryAction) {
        let mut now = 1_000;
        let mut starts = Vec::new();
        let mut outcomes = outcomes.iter();
        let mut next = retry.handle_timeout(now);
        loop {
            match next {
                RetryAction::Run { attempt } => {
                    assert_eq!(attempt as usize, starts.len() + 1);
                    starts.push(now);
                    now += took;
                    let outcome = *outcomes.next().expect("an outcome per attempt");
                    next = retry.record(outcome, now);
                }
                RetryAction::Wait { until } => {
                    assert_eq!(retry.poll_timeout(), Some(until));
                    now = now.max(until);
                    next = retry.handle_timeout(now);
                }
                end @ (RetryAction::Passed | RetryAction::GaveUp) => return (starts, end),
                RetryAction::Running => panic!("the driver records every attempt"),
            }
        }
    }

    /// A call on a [`Retry`], made at the time it carries.
    #[derive(Clone, Copy, Debug)]
    enum Call {
        Timeout(Millis),
        Record(Attempt, Millis),
    }

    /// Makes each call on `retry` in turn and checks what it answers.
    fn expect_answers(retry: &mut Retry, calls: &[(Call, RetryAction)]) {
        for (i, &(call, want)) in calls.iter().enumerate() {
            let got = match call {
                Call::Timeout(now) => retry.handle_timeout(now),
                Call::Record(attempt, now) => retry.record(attempt, now),
            };
            assert_eq!(got, want, "call {i}: {call:?}");
        }
    }

    #[test]
    fn once_runs_one_attempt_and_reports_its_end() {
        let (starts, end) = drive(&mut Retry::once(), 50, &[Attempt::Failed]);
        assert_eq!((starts, end), (vec![1_000], RetryAction::GaveUp));
        let (starts, end) = drive(&mut Retry::once(), 50, &[Attempt::Passed]);
        assert_eq!((starts, end), (vec![1_000], RetryAction::Passed));
    }

    #[test]
    fn failed_attempts_are_spaced_by_the_interval_from_their_end() {
        let mut retry = Retry::new(3, 2_000);
        let (starts, end) = drive(&mut retry, 500, &[Attempt::Failed; 3]);
        assert_eq!(starts, vec![1_000, 3_500, 6_000]);
        assert_eq!(end, RetryAction::GaveUp);
        assert_eq!(retry.attempts_made(), 3);
        assert_eq!(retry.poll_timeout(), None);
    }

    #[test]
    fn a_pass_ends_the_attempts_early() {
        let mut retry = Retry::new(5, 1_000);
        let outcomes = [Attempt::Failed, Attempt::Failed, Attempt::Passed];
        let (starts, end) = drive(&mut retry, 0, &outcomes);
        assert_eq!(starts, vec![1_000, 2_000, 3_000]);
        assert_eq!(end, RetryAction::Passed);
        // Finished is final: later calls keep saying so.
        assert_eq!(retry.handle_timeout(u64::MAX), RetryAction::Passed);
        assert_eq!(retry.record(Attempt::Failed, 0), RetryAction::Passed);
    }

    #[test]
    fn a_stopped_attempt_gives_up_whatever_is_left() {
        let mut retry = Retry::new(5, 1_000);
        let (starts, end) = drive(&mut retry, 10, &[Attempt::Failed, Attempt::Stopped]);
        assert_eq!(starts.len(), 2);
        assert_eq!(end, RetryAction::GaveUp);
    }

    #[test]
    fn nothing_starts_before_its_deadline() {
        let mut retry = Retry::new(2, 5_000);
        assert_eq!(
            retry.poll_timeout(),
            Some(0),
            "the first attempt is due at once"
        );
        assert_eq!(retry.handle_timeout(10), RetryAction::Run { attempt: 1 });
        assert_eq!(retry.poll_timeout(), None, "an attempt is running");
        assert_eq!(retry.handle_timeout(20), RetryAction::Running);
        assert_eq!(
            retry.record(Attempt::Failed, 100),
            RetryAction::Wait { until: 5_100 }
        );
        for early in [100, 4_000, 5_099] {
            assert_eq!(
                retry.handle_timeout(early),
                RetryAction::Wait { until: 5_100 }
            );
        }
        assert_eq!(retry.handle_timeout(9_999), RetryAction::Run { attempt: 2 });
    }

    #[test]
    fn without_an_interval_the_next_attempt_is_due_at_once() {
        expect_answers(
            &mut Retry::new(2, 0),
            &[
                (Call::Timeout(7), RetryAction::Run { attempt: 1 }),
                (
                    Call::Record(Attempt::Failed, 9),
                    RetryAction::Wait { until: 9 },
                ),
                (Call::Timeout(9), RetryAction::Run { attempt: 2 }),
            ],
        );
    }

    #[test]
    fn zero_attempts_still_run_one() {
        let (starts, _) = drive(&mut Retry::new(0, 1_000), 0, &[Attempt::Failed]);
        assert_eq!(starts.len(), 1);
    }

    #[test]
    fn a_record_without_a_running_attempt_changes_nothing() {
        expect_answers(
            &mut Retry::new(2, 1_000),
            &[
                (
                    Call::Record(Attempt::Passed, 0),
                    RetryAction::Wait { until: 0 },
                ),
                (Call::Timeout(0), RetryAction::Run { attempt: 1 }),
            ],
        );
    }

    #[test]
    fn times_near_the_end_of_the_clock_saturate() {
        expect_answers(
            &mut Retry::new(2, 10_000),
            &[
                (Call::Timeout(u64::MAX - 5), RetryAction::Run { attempt: 1 }),
                (
                    Call::Record(Attempt::Failed, u64::MAX - 5),
                    RetryAction::Wait { until: u64::MAX },
                ),
            ],
        );
    }

    #[test]
    fn the_health_check_takes_the_recipe_attempts_and_interval_in_seconds() {
        let check = HealthCheck {
            command: Command {
                script: "true",
                chroot: false,
                timeout_secs: 10,
            },
            attempts: 4,
            interval_secs: 3,
        };
        assert_eq!(Retry::health_check(&check), Retry::new(4, 3_000));
    }
}
