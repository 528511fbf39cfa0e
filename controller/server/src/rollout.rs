//! Who gets what, as plain functions: the poll answer, whether a report counts, what an abort does to each device, a deployment's overall state, poll jitter.
//!
//! The handlers read rows, call these, and write what they decide, all in one
//! transaction; keeping the decisions here lets them be tested without HTTP or
//! a database.

use molt_api::{Counts, DeviceState};

/// Poll interval while a device has work (an offer, an install, an abort to hear).
pub const WORK_INTERVAL_SECS: u32 = 5;

/// One of a device's deployments that is still open for it: not final, or aborted
/// by an operator without the device having said it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Open {
    /// The deployment.
    pub deployment: u64,
    /// The device's state in it.
    pub state: DeviceState,
    /// An operator aborted it.
    pub abort_requested: bool,
    /// The device reported a final state.
    pub final_reported: bool,
    /// Pending, but its wave has not started or the deployment is halted: not
    /// offered yet, and nothing newer is offered before it.
    pub held: bool,
}

/// What a poll tells the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing; `busy` when the device is in the middle of a deployment.
    Nothing {
        /// The device has work in progress (poll again soon).
        busy: bool,
    },
    /// Offer this deployment.
    Install(u64),
    /// Abort this deployment.
    Abort(u64),
}

/// Decides a poll. `open` is the device's open deployments, oldest first;
/// `in_progress` is what the device says it is installing.
///
/// Deployments to one device run one at a time in the order they were made: the
/// oldest one not final is offered while it is pending (the device has not
/// reported on it yet), and nothing newer is offered until it is final.
pub fn decide(in_progress: Option<u64>, open: &[Open]) -> Decision {
    if let Some(current) = in_progress {
        if let Some(t) = open.iter().find(|t| t.deployment == current) {
            if t.abort_requested && !t.final_reported {
                return Decision::Abort(current);
            }
            if !t.state.is_final() {
                return Decision::Nothing { busy: true };
            }
        }
    }
    match open.iter().find(|t| !t.state.is_final()) {
        Some(t) if t.held => Decision::Nothing { busy: false },
        Some(t) if t.state == DeviceState::Pending => Decision::Install(t.deployment),
        Some(_) => Decision::Nothing { busy: true },
        None => Decision::Nothing { busy: false },
    }
}

/// How a report is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// The deployment is final for this device: nothing changes, stop sending.
    Closed,
    /// This `seq` was seen already: nothing changes.
    Duplicate,
    /// Record it; `closes` when its state is final.
    Accept {
        /// The report's state is final.
        closes: bool,
    },
}

/// Judges a report with `seq` and `state` against the recorded `current` state and `last_seq`.
pub fn judge(current: DeviceState, last_seq: u64, seq: u64, state: DeviceState) -> Judgement {
    if current.is_final() {
        Judgement::Closed
    } else if seq <= last_seq {
        Judgement::Duplicate
    } else {
        Judgement::Accept {
            closes: state.is_final(),
        }
    }
}

/// What an abort does to one device of the deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AbortAction {
    /// Not started: aborted at once.
    Now,
    /// In progress: told on its next poll.
    OnNextPoll,
    /// Final already; the reason says why it is not aborted.
    NotAborted(&'static str),
}

/// Decides what an abort does to a device in `state`.
pub fn abort_action(state: DeviceState) -> AbortAction {
    match state {
        DeviceState::Pending => AbortAction::Now,
        DeviceState::Downloading | DeviceState::Installing => AbortAction::OnNextPoll,
        DeviceState::Success => AbortAction::NotAborted("already committed"),
        DeviceState::Failed | DeviceState::RolledBack | DeviceState::Aborted => {
            AbortAction::NotAborted("already finished")
        }
    }
}

/// A deployment's state for "recent updates": `in_progress` while any device is not
/// final (`halted` when its plan halted it), then `success` (every device
/// succeeded), `aborted` (an operator aborted it) or `failed`.
pub fn deployment_state(counts: &Counts, aborted: bool, halted: bool) -> &'static str {
    let open = DeviceState::ALL
        .iter()
        .filter(|s| !s.is_final())
        .map(|s| counts.get(*s))
        .sum::<u64>();
    if open > 0 && halted && !aborted {
        "halted"
    } else if open > 0 {
        "in_progress"
    } else if counts.success == counts.total() {
        "success"
    } else if aborted {
        "aborted"
    } else {
        "failed"
    }
}

/// `base` seconds with ±20 % jitter from `random` (uniform over `u32`), at least 1,
/// so a fleet enrolled at once does not keep polling in lockstep.
pub fn jittered(base: u32, random: u32) -> u32 {
    let fraction = f64::from(random) / f64::from(u32::MAX); // 0..=1
    let factor = 0.8 + 0.4 * fraction;
    ((f64::from(base) * factor).round() as u32).max(1)
}

/// A device's status for operators: `offline` when not seen for three (jittered,
/// so up to 20 % longer) poll intervals, else `updating` with open work, else `idle`.
pub fn device_status(last_seen: Option<i64>, now: i64, interval: u32, busy: bool) -> &'static str {
    let limit = i64::from(interval) * 3 * 6 / 5;
    match last_seen {
        Some(t) if now - t <= limit => {
            if busy {
                "updating"
            } else {
                "idle"
            }
        }
        _ => "offline",
    }
}

/// The last `max` bytes of `text`, starting at a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text.get(start..).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceState::*;

    fn open(deployment: u64, state: DeviceState) -> Open {
        Open {
            deployment,
            state,
            abort_requested: false,
            final_reported: state.is_final(),
            held: false,
        }
    }

    #[test]
    fn a_held_deployment_is_not_offered_and_holds_back_newer_ones() {
        let mut held = open(3, Pending);
        held.held = true;
        assert_eq!(
            decide(None, &[held, open(4, Pending)]),
            Decision::Nothing { busy: false }
        );
        // A device already installing it goes on (a halt stops only new starts).
        assert_eq!(
            decide(Some(3), &[open(3, Installing)]),
            Decision::Nothing { busy: true }
        );
    }

    #[test]
    fn the_oldest_pending_deployment_is_offered_and_newer_ones_wait() {
        assert_eq!(
            decide(None, &[open(3, Pending), open(4, Pending)]),
            Decision::Install(3)
        );
        assert_eq!(
            decide(Some(3), &[open(3, Downloading), open(4, Pending)]),
            Decision::Nothing { busy: true }
        );
        assert_eq!(decide(None, &[]), Decision::Nothing { busy: false });
    }

    #[test]
    fn an_abort_reaches_the_device_that_names_the_deployment() {
        let mut t = open(7, Installing);
        t.abort_requested = true;
        assert_eq!(decide(Some(7), &[t]), Decision::Abort(7));
        // A pending device aborted at once is final on the server, but a device that
        // had already started still hears the abort.
        let mut p = open(7, Aborted);
        p.abort_requested = true;
        p.final_reported = false;
        assert_eq!(decide(Some(7), &[p]), Decision::Abort(7));
        assert_eq!(decide(None, &[p]), Decision::Nothing { busy: false });
    }

    #[test]
    fn reports_are_idempotent_and_final_states_close() {
        assert_eq!(
            judge(Pending, 0, 1, Downloading),
            Judgement::Accept { closes: false }
        );
        assert_eq!(judge(Downloading, 3, 3, Downloading), Judgement::Duplicate);
        assert_eq!(
            judge(Installing, 3, 4, Success),
            Judgement::Accept { closes: true }
        );
        assert_eq!(judge(Success, 4, 5, Failed), Judgement::Closed);
        assert_eq!(judge(Success, 4, 4, Success), Judgement::Closed);
    }

    #[test]
    fn abort_spares_what_is_final() {
        assert_eq!(abort_action(Pending), AbortAction::Now);
        assert_eq!(abort_action(Installing), AbortAction::OnNextPoll);
        assert_eq!(
            abort_action(Success),
            AbortAction::NotAborted("already committed")
        );
        assert_eq!(
            abort_action(RolledBack),
            AbortAction::NotAborted("already finished")
        );
    }

    #[test]
    fn deployment_states() {
        let mut c = Counts::default();
        c.add(Success);
        c.add(Downloading);
        assert_eq!(deployment_state(&c, false, false), "in_progress");
        assert_eq!(deployment_state(&c, false, true), "halted");
        assert_eq!(deployment_state(&c, true, true), "in_progress");
        let mut c = Counts::default();
        c.add(Success);
        assert_eq!(deployment_state(&c, true, false), "success");
        c.add(Aborted);
        assert_eq!(deployment_state(&c, true, false), "aborted");
        assert_eq!(deployment_state(&c, false, false), "failed");
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        assert_eq!(jittered(60, 0), 48);
        assert_eq!(jittered(60, u32::MAX), 72);
        assert_eq!(jittered(60, u32::MAX / 2), 60);
        assert_eq!(jittered(1, 0), 1);
    }

    #[test]
    fn status_and_log_tail() {
        assert_eq!(device_status(Some(100), 100, 60, false), "idle");
        assert_eq!(device_status(Some(100), 100, 60, true), "updating");
        assert_eq!(device_status(Some(100), 100 + 217, 60, false), "offline");
        assert_eq!(device_status(None, 0, 60, false), "offline");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }
}
