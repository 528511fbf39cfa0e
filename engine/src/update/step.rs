//! The transition function [`step`]: one event and the journaled state in, the next state and the agent's actions out.

use core::fmt;

use super::action::{AbortRefusal, Action, Report};
use super::event::Event;
use super::state::{Budget, Cause, CauseKind, DeploymentId, Phase, Plan, State};
use crate::slot::Slot;

/// Most actions one transition returns: a progress report and the next phase's action.
pub const MAX_ACTIONS: usize = 2;

/// The actions of one transition, in the order the agent carries them out.
pub type Actions = heapless::Vec<Action, MAX_ACTIONS>;

/// The result of [`step`]: journal `next` durably, then carry out `actions` in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The state to journal and to pass to the next call.
    pub next: State,
    /// What to do, in order.
    pub actions: Actions,
}

/// Why [`step`] did not accept an event. The state is unchanged: the agent
/// logs the rejection and carries on with the state it had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejected {
    /// A `Start` arrived while another install is in progress (in this phase).
    Busy {
        /// The current phase.
        phase: Phase,
    },
    /// The event answers nothing outstanding in this phase: a stale, duplicated or out-of-order result.
    Unexpected {
        /// The current phase.
        phase: Phase,
    },
    /// A `Reported` names a deployment other than the one that ended.
    OtherDeployment,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Busy { phase } => write!(f, "an install is already in progress ({phase})"),
            Rejected::Unexpected { phase } => {
                write!(
                    f,
                    "event does not answer anything outstanding in phase {phase}"
                )
            }
            Rejected::OtherDeployment => f.write_str("event names another deployment"),
        }
    }
}

/// Moves an install one event forward.
///
/// Pure: no I/O, no clock, no allocation, no panic. The agent's loop is
///
/// 1. `let t = step(&state, event)?` (on `Err`, log it and keep `state`);
/// 2. journal `t.next` durably;
/// 3. carry out `t.actions` in order, feeding each result back as an event.
///
/// Because the state is journaled before the actions run, a crash between
/// them loses the actions; the agent then sends [`Event::Restarted`] and the
/// phase alone decides what happens (see docs/state-machine.md, "Restart
/// recovery"):
///
/// * `Fetching`: resume the download while the budget's `fetch_resumes` lasts, else fail;
/// * `Before`, `Packages`, `Sealing`: fail with [`CauseKind::Interrupted`];
/// * `Swapping`: `Reconcile`, then continue if `current` names the new slot, else fail;
/// * `After`, `HealthCheck`: run the phase again while the budget's `trials` last, else roll back;
/// * `Committing`, `SwappingBack`, `Reverting`: carry out the same idempotent action again;
/// * `RollbackCommand`: not rerun (it may be what restarted the device): noted and skipped;
/// * `Rebooting`: done if the device rebooted, else reboot again;
/// * `Done`: emit the final report again, since it may not have gone out.
///
/// An event that answers nothing outstanding is rejected with the state
/// unchanged, never half-applied. [`Event::Abort`] is always accepted: when
/// it cannot be honoured the transition carries [`Action::AbortRefused`].
pub fn step(state: &State, event: Event) -> Result<Transition, Rejected> {
    let s = *state;
    match event {
        Event::Start {
            deployment,
            target,
            budget,
        } => start(s, deployment, target, budget),
        Event::Fetched(plan) => fetched(s, plan),
        Event::Completed(phase) => completed(s, phase),
        Event::Failed(cause) => failed(s, cause),
        Event::Current(slot) => current(s, slot),
        Event::Abort(deployment) => Ok(abort(s, deployment)),
        Event::Restarted { rebooted } => Ok(restarted(s, rebooted)),
        Event::Reported(deployment) => reported(s, deployment),
    }
}

fn start(
    s: State,
    deployment: DeploymentId,
    target: Slot,
    budget: Budget,
) -> Result<Transition, Rejected> {
    // A new install may follow one whose final report is not yet acknowledged:
    // that report was already emitted, and blocking here would leave a device
    // that cannot reach its controller unable to install from a file.
    if !matches!(s.phase, Phase::Idle | Phase::Done) {
        return Err(Rejected::Busy { phase: s.phase });
    }
    let fresh = State {
        deployment,
        target,
        current: target.other(),
        fetch_resumes_left: budget.fetch_resumes,
        trials_left: budget.trials,
        ..State::IDLE
    };
    Ok(enter(fresh, Phase::Fetching))
}

fn fetched(mut s: State, plan: Plan) -> Result<Transition, Rejected> {
    if s.phase != Phase::Fetching {
        return Err(unexpected(&s));
    }
    if s.abort_requested {
        // The plan is deliberately not kept: an install that ends in Fetching
        // runs nothing of its recipe, not even the rollback command.
        let cause = aborted(&s);
        return Ok(begin_rollback(s, cause));
    }
    s.plan = plan;
    Ok(enter(s, next_install(&plan, Phase::Fetching)))
}

fn completed(mut s: State, phase: Phase) -> Result<Transition, Rejected> {
    if phase != s.phase || (s.phase == Phase::Swapping && s.reconciling) {
        return Err(unexpected(&s));
    }
    Ok(match s.phase {
        Phase::Before
        | Phase::Packages
        | Phase::Sealing
        | Phase::Swapping
        | Phase::After
        | Phase::HealthCheck => {
            if s.phase == Phase::Swapping {
                s.current = s.target;
                s.swapped = true;
            }
            if s.abort_requested {
                let cause = aborted(&s);
                begin_rollback(s, cause)
            } else {
                enter(s, next_install(&s.plan, s.phase))
            }
        }
        Phase::Committing | Phase::Rebooting => finish(s),
        Phase::SwappingBack => {
            s.current = s.target.other();
            advance_rollback(s)
        }
        Phase::Reverting | Phase::RollbackCommand => advance_rollback(s),
        // Fetching answers with `Fetched`; Idle and Done have nothing outstanding.
        Phase::Idle | Phase::Fetching | Phase::Done => return Err(unexpected(&s)),
    })
}

fn failed(mut s: State, cause: Cause) -> Result<Transition, Rejected> {
    if cause.phase != s.phase || (s.phase == Phase::Swapping && s.reconciling) {
        return Err(unexpected(&s));
    }
    Ok(match s.phase {
        Phase::Fetching
        | Phase::Before
        | Phase::Packages
        | Phase::Sealing
        | Phase::After
        | Phase::HealthCheck
        | Phase::Committing => {
            let cause = failure(&s, cause);
            begin_rollback(s, cause)
        }
        Phase::Swapping => {
            // A failed swap may or may not have renamed `current` (the rename
            // can succeed and the fsync after it fail): ask the disk before
            // deciding whether there is anything to swap back.
            s.cause = Some(failure(&s, cause));
            s.reconciling = true;
            one(s, Action::Reconcile)
        }
        Phase::SwappingBack | Phase::Reverting | Phase::RollbackCommand => {
            // A failing rollback step does not stop the rollback: the later
            // steps (command, reboot) are what an operator asked for when
            // things go wrong, and the final report must still go out.
            s.rollback_error = s.rollback_error.or(Some(cause));
            advance_rollback(s)
        }
        Phase::Rebooting => {
            s.rollback_error = s.rollback_error.or(Some(cause));
            finish(s)
        }
        Phase::Idle | Phase::Done => return Err(unexpected(&s)),
    })
}

fn current(mut s: State, slot: Slot) -> Result<Transition, Rejected> {
    if s.phase != Phase::Swapping || !s.reconciling {
        return Err(unexpected(&s));
    }
    s.reconciling = false;
    s.current = slot;
    if slot == s.target {
        s.swapped = true;
    }
    Ok(if let Some(cause) = s.cause {
        // The swap failed; if it happened anyway, `current == target` and the
        // rollback starts by swapping back.
        begin_rollback(s, cause)
    } else if s.abort_requested {
        let cause = aborted(&s);
        begin_rollback(s, cause)
    } else if slot == s.target {
        enter(s, next_install(&s.plan, Phase::Swapping))
    } else {
        // A restart interrupted the swap before the rename: nothing active
        // changed, so this is a failure before the swap.
        begin_rollback(s, Cause::new(Phase::Swapping, CauseKind::Interrupted))
    })
}

fn abort(mut s: State, deployment: DeploymentId) -> Transition {
    let refuse = |s: State, why| one(s, Action::AbortRefused { deployment, why });
    if s.phase == Phase::Idle || deployment != s.deployment {
        return refuse(s, AbortRefusal::NotRunning);
    }
    match s.phase {
        // The swap failed and the rollback is already decided.
        p if p.abortable() && s.cause.is_some() => refuse(s, AbortRefusal::AlreadyEnding),
        // A repeated abort changes nothing.
        p if p.abortable() && s.abort_requested => none(s),
        p if p.abortable() => {
            // The abort is applied when the outstanding action reports back,
            // so its result is never mistaken for a later phase's; `Cancel`
            // makes that happen soon where stopping early is safe. Sealing and
            // swapping are short and must not be cut half-way.
            s.abort_requested = true;
            match p {
                Phase::Fetching
                | Phase::Before
                | Phase::Packages
                | Phase::After
                | Phase::HealthCheck => one(s, Action::Cancel),
                _ => none(s),
            }
        }
        Phase::Committing => refuse(s, AbortRefusal::Committed),
        Phase::Done if s.cause.is_none() => refuse(s, AbortRefusal::Committed),
        _ => refuse(s, AbortRefusal::AlreadyEnding),
    }
}

fn restarted(mut s: State, rebooted: bool) -> Transition {
    match s.phase {
        Phase::Idle => none(s),
        Phase::Fetching if s.abort_requested => {
            let cause = aborted(&s);
            begin_rollback(s, cause)
        }
        Phase::Fetching => match s.fetch_resumes_left.checked_sub(1) {
            Some(left) => {
                s.fetch_resumes_left = left;
                let fetch = Action::Fetch {
                    deployment: s.deployment,
                    slot: s.target,
                    resume: true,
                };
                one(s, fetch)
            }
            None => begin_rollback(s, Cause::new(Phase::Fetching, CauseKind::ResumesExhausted)),
        },
        Phase::Before | Phase::Packages | Phase::Sealing => {
            // Half-run commands and half-synced trees are not resumed: the
            // install fails cleanly and the rollback policy runs.
            let cause = failure(&s, Cause::new(s.phase, CauseKind::Interrupted));
            begin_rollback(s, cause)
        }
        Phase::Swapping => {
            // Which slot `current` names is the disk's to say, not the journal's.
            s.reconciling = true;
            one(s, Action::Reconcile)
        }
        Phase::After | Phase::HealthCheck if s.abort_requested => {
            let cause = aborted(&s);
            begin_rollback(s, cause)
        }
        Phase::After | Phase::HealthCheck => match s.trials_left.checked_sub(1) {
            // The new snapshot is on trial: each restart it causes (or does
            // not prevent) uses one trial, and the phase runs again.
            Some(left) => {
                s.trials_left = left;
                again(s)
            }
            None => begin_rollback(s, Cause::new(s.phase, CauseKind::TrialsExhausted)),
        },
        Phase::Committing | Phase::SwappingBack | Phase::Reverting => again(s),
        Phase::RollbackCommand => {
            // Not rerun: a rollback command that reboots the device would
            // otherwise run forever.
            s.rollback_error = s.rollback_error.or(Some(Cause::new(
                Phase::RollbackCommand,
                CauseKind::Interrupted,
            )));
            advance_rollback(s)
        }
        Phase::Rebooting if rebooted => finish(s),
        Phase::Rebooting => again(s),
        // Whether the final report went out before the restart is unknown:
        // send it again (the controller treats reports idempotently).
        Phase::Done => match s.final_report() {
            Some(report) => one(s, Action::Report(report)),
            None => none(s),
        },
    }
}

fn reported(s: State, deployment: DeploymentId) -> Result<Transition, Rejected> {
    if s.phase != Phase::Done {
        return Err(unexpected(&s));
    }
    if deployment != s.deployment {
        return Err(Rejected::OtherDeployment);
    }
    Ok(none(State::IDLE))
}

/// The install phase after `from` that the plan has work for.
fn next_install(plan: &Plan, from: Phase) -> Phase {
    // Install phases run in declaration order (see `Phase`).
    Phase::ALL
        .into_iter()
        .skip_while(|p| *p != from)
        .skip(1)
        .take_while(|p| p.is_install())
        .find(|p| match p {
            Phase::Before => plan.before,
            Phase::Packages => plan.packages,
            Phase::After => plan.after,
            Phase::HealthCheck => plan.health_check,
            _ => true,
        })
        .unwrap_or(Phase::Done)
}

/// The rollback phase after the current one that applies (from an install phase: the first).
fn next_rollback(s: &State) -> Phase {
    // Rollback phases run in declaration order too.
    let rollback = Phase::ALL.into_iter().filter(|p| p.is_rolling_back());
    let skip = rollback
        .clone()
        .position(|p| p == s.phase)
        .map_or(0, |i| i.saturating_add(1));
    let on_new = s.current == s.target;
    rollback
        .skip(skip)
        .find(|p| match p {
            // Swap back only if `current` (as far as we know) names the new slot.
            Phase::SwappingBack => on_new,
            // Never discard the slot `current` may name: after a failed swap
            // back, the new slot is left alone.
            Phase::Reverting => s.plan.rollback.revert && !on_new,
            Phase::RollbackCommand => s.plan.rollback.command,
            Phase::Rebooting => s.plan.rollback.reboot,
            _ => true,
        })
        .unwrap_or(Phase::Done)
}

/// Records why the install is ending and enters the first rollback phase that applies.
fn begin_rollback(mut s: State, cause: Cause) -> Transition {
    s.cause = Some(cause);
    s.reconciling = false;
    advance_rollback(s)
}

fn advance_rollback(s: State) -> Transition {
    let next = next_rollback(&s);
    enter(s, next)
}

/// Enters `phase`: a progress report, then the phase's outstanding action.
fn enter(mut s: State, phase: Phase) -> Transition {
    if phase == Phase::Done {
        return finish(s);
    }
    s.phase = phase;
    let progress = Action::Report(Report::Progress {
        deployment: s.deployment,
        phase,
    });
    match outstanding(&s) {
        Some(action) => Transition {
            next: s,
            actions: Actions::from_array([progress, action]),
        },
        None => one(s, progress),
    }
}

/// Ends the install: the one final report.
fn finish(mut s: State) -> Transition {
    s.phase = Phase::Done;
    s.reconciling = false;
    match s.final_report() {
        Some(report) => one(s, Action::Report(report)),
        None => none(s),
    }
}

/// The action a phase waits on.
fn outstanding(s: &State) -> Option<Action> {
    let slot = s.target;
    Some(match s.phase {
        Phase::Fetching => Action::Fetch {
            deployment: s.deployment,
            slot,
            resume: false,
        },
        Phase::Before => Action::RunBefore { slot },
        Phase::Packages => Action::InstallPackages { slot },
        Phase::Sealing => Action::Seal { slot },
        Phase::Swapping if s.reconciling => Action::Reconcile,
        Phase::Swapping => Action::Swap { slot },
        Phase::After => Action::RunAfter { slot },
        Phase::HealthCheck => Action::CheckHealth { slot },
        Phase::Committing => Action::Commit { slot },
        Phase::SwappingBack => Action::SwapBack { slot: slot.other() },
        Phase::Reverting => Action::Revert { slot },
        Phase::RollbackCommand => Action::RunRollbackCommand,
        Phase::Rebooting => Action::Reboot,
        Phase::Idle | Phase::Done => return None,
    })
}

/// Issues the phase's outstanding action again, after a restart.
fn again(s: State) -> Transition {
    match outstanding(&s) {
        Some(action) => one(s, action),
        None => none(s),
    }
}

/// The cause to record for a failure: an abort that arrived first wins, since it is the operator's intent.
fn failure(s: &State, cause: Cause) -> Cause {
    if s.abort_requested {
        aborted(s)
    } else {
        cause
    }
}

fn aborted(s: &State) -> Cause {
    Cause::new(s.phase, CauseKind::Aborted)
}

fn unexpected(s: &State) -> Rejected {
    Rejected::Unexpected { phase: s.phase }
}

fn none(next: State) -> Transition {
    Transition {
        next,
        actions: Actions::new(),
    }
}

fn one(next: State, action: Action) -> Transition {
    Transition {
        next,
        actions: Actions::from_array([action]),
    }
}
