//! The update state machine: the happy path, a failure, an abort and a restart in every phase under every rollback policy, the trial and resume budgets, rejected events, and random event sequences checked against a model of the device.
//!
//! Every test drives the machine through [`Device`], a simulated agent that
//! journals each state through postcard, carries out actions on a model of the
//! `current` link, and checks the machine's invariants on every transition.

use std::collections::VecDeque;

use molt_engine::slot::Slot;
use molt_engine::update::{
    step, AbortRefusal, Action, Budget, Cause, CauseKind, DeploymentId, Event, Outcome, Phase,
    Plan, Rejected, Report, RollbackPolicy, State, Transition, MAX_ACTIONS,
};
use proptest::prelude::*;

const DEP: DeploymentId = DeploymentId([0xd0; 16]);
const OTHER: DeploymentId = DeploymentId([0x0d; 16]);

/// The install phases a full recipe goes through: `Fetching` to `Committing`, in
/// declaration order (as [`Phase`] documents).
fn install_phases() -> Vec<Phase> {
    let at = |phase| Phase::ALL.iter().position(|p| *p == phase).unwrap();
    Phase::ALL[at(Phase::Fetching)..=at(Phase::Committing)].to_vec()
}

/// A recipe with every stage.
fn full(rollback: RollbackPolicy) -> Plan {
    Plan {
        before: true,
        packages: true,
        after: true,
        health_check: true,
        rollback,
    }
}

/// All eight combinations of revert, command and reboot.
fn policies() -> impl Iterator<Item = RollbackPolicy> {
    (0u8..8).map(|b| RollbackPolicy {
        revert: b & 1 != 0,
        command: b & 2 != 0,
        reboot: b & 4 != 0,
    })
}

fn all_on() -> RollbackPolicy {
    RollbackPolicy {
        revert: true,
        command: true,
        reboot: true,
    }
}

/// Whether the agent answers this action with an event (it is the phase's outstanding action).
fn is_work(a: &Action) -> bool {
    !matches!(
        a,
        Action::Report(_) | Action::Cancel | Action::AbortRefused { .. }
    )
}

fn progress(phase: Phase) -> Action {
    Action::Report(Report::Progress {
        deployment: DEP,
        phase,
    })
}

/// What the checker remembers about one install.
#[derive(Clone, Debug)]
struct Install {
    id: DeploymentId,
    target: Slot,
    budget: Budget,
    /// Final reports emitted when the install ended (re-sends after a restart in Done are not counted).
    finals: Vec<Report>,
    /// `current` named the new slot at some point.
    saw_new: bool,
    /// A `SwapBack` was emitted after the new slot became current.
    swapped_back_after_new: bool,
    /// An abort was accepted (not refused).
    abort_accepted: bool,
    /// Restarts in After/HealthCheck that ran the phase again.
    trials_used: u8,
    /// `Fetch { resume: true }` actions.
    resumes_used: u8,
}

/// A simulated agent: the journaled state, what `current` names on disk, and
/// the machine's outstanding action. It checks every invariant on every
/// transition, so each test that drives it checks them too.
struct Device {
    state: State,
    /// What `current` names on disk.
    disk: Slot,
    /// What a successful `Fetch` answers with.
    plan: Plan,
    budget: Budget,
    outstanding: Option<Action>,
    install: Option<Install>,
    next_id: u8,
    /// Every action of the current install, in order.
    actions: Vec<Action>,
}

impl Device {
    fn new(plan: Plan) -> Device {
        Device {
            state: State::IDLE,
            disk: Slot::A,
            plan,
            budget: Budget::default(),
            outstanding: None,
            install: None,
            next_id: 0,
            actions: Vec::new(),
        }
    }

    /// A device that has started installing `DEP` into slot B.
    fn started(plan: Plan) -> Device {
        let mut d = Device::new(plan);
        d.start();
        d
    }

    /// A device installing `DEP` under `plan` whose action in `phase` just failed with `kind`.
    fn failed_in(plan: Plan, phase: Phase, kind: CauseKind) -> Device {
        let mut d = Device::started(plan);
        d.run_until(phase);
        d.fail(kind);
        d
    }

    /// An abort of `deployment` now is refused for `why`, and that refusal is all that happens.
    fn assert_abort_refused(&mut self, deployment: DeploymentId, why: AbortRefusal) {
        assert_eq!(
            self.send(Event::Abort(deployment)),
            vec![Action::AbortRefused { deployment, why }]
        );
    }

    fn start(&mut self) -> Vec<Action> {
        self.send(Event::Start {
            deployment: DEP,
            target: self.disk.other(),
            budget: self.budget,
        })
    }

    /// Feeds an event that must be accepted.
    fn send(&mut self, event: Event) -> Vec<Action> {
        match self.try_send(event) {
            Ok(actions) => actions,
            Err(e) => panic!("{event:?} rejected in {:?}: {e}", self.state.phase()),
        }
    }

    /// Feeds an event that must be rejected, and checks the state did not move.
    fn reject(&mut self, event: Event) -> Rejected {
        let before = self.state;
        match self.try_send(event) {
            Ok(actions) => panic!("{event:?} accepted in {:?}: {actions:?}", before.phase()),
            Err(e) => {
                assert_eq!(self.state, before);
                e
            }
        }
    }

    fn try_send(&mut self, event: Event) -> Result<Vec<Action>, Rejected> {
        let prev = self.state;
        let t = step(&prev, event)?;
        Ok(self.accept(prev, event, t))
    }

    /// Journals the transition (through postcard, as the agent does), records
    /// its actions and checks the invariants.
    fn accept(&mut self, prev: State, event: Event, t: Transition) -> Vec<Action> {
        let bytes = postcard::to_allocvec(&t.next).unwrap();
        assert!(
            bytes.len() <= State::MAX_ENCODED_LEN,
            "{} bytes",
            bytes.len()
        );
        let next: State = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(next, t.next);
        assert!(t.actions.len() <= MAX_ACTIONS);

        if let Event::Start {
            deployment,
            target,
            budget,
        } = event
        {
            self.end_install();
            self.install = Some(Install {
                id: deployment,
                target,
                budget,
                finals: Vec::new(),
                saw_new: false,
                swapped_back_after_new: false,
                abort_accepted: false,
                trials_used: 0,
                resumes_used: 0,
            });
            self.actions.clear();
        }
        if let Event::Reported(_) = event {
            self.end_install();
        }

        let resend = prev.phase() == Phase::Done && matches!(event, Event::Restarted { .. });
        let disk = self.disk;
        for a in &t.actions {
            self.check_action(a, disk, resend, &next);
        }
        if let Some(i) = self.install.as_mut() {
            if let Event::Abort(_) = event {
                if !t
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::AbortRefused { .. }))
                {
                    i.abort_accepted = true;
                }
            }
            if let Event::Restarted { .. } = event {
                if matches!(prev.phase(), Phase::After | Phase::HealthCheck)
                    && next.phase() == prev.phase()
                {
                    i.trials_used += 1;
                    assert!(i.trials_used <= i.budget.trials, "trials exceeded");
                }
            }
        }

        for a in &t.actions {
            if is_work(a) {
                self.outstanding = Some(*a);
            }
        }
        self.actions.extend(t.actions.iter().copied());
        self.state = next;

        // Every phase but Idle and Done waits on exactly one action.
        let busy = !matches!(next.phase(), Phase::Idle | Phase::Done);
        assert_eq!(
            busy,
            self.outstanding.is_some(),
            "{:?} with outstanding {:?}",
            next.phase(),
            self.outstanding
        );
        if let Some(i) = &self.install {
            match next.phase() {
                Phase::Done => assert_eq!(i.finals.len(), 1, "one final report when done"),
                Phase::Idle => {}
                _ => assert!(i.finals.is_empty(), "no final report before done"),
            }
        }
        t.actions.to_vec()
    }

    fn check_action(&mut self, a: &Action, disk: Slot, resend: bool, next: &State) {
        let Some(i) = self.install.as_mut() else {
            // Only an abort refusal or nothing at all happens without an install.
            assert!(matches!(a, Action::AbortRefused { .. }), "{a:?} while idle");
            return;
        };
        // Nothing touches the active slot before the new one becomes current.
        if !i.saw_new {
            assert_ne!(a.slot(), Some(disk), "{a:?} touches the active slot");
        }
        // These only ever work on the inactive slot.
        if let Action::Fetch { slot, .. }
        | Action::RunBefore { slot }
        | Action::InstallPackages { slot }
        | Action::Seal { slot }
        | Action::Swap { slot }
        | Action::Revert { slot } = *a
        {
            assert_ne!(slot, disk, "{a:?} names the slot `current` names");
            assert_eq!(slot, i.target);
        }
        if let Action::Fetch { resume: true, .. } = a {
            i.resumes_used += 1;
            assert!(i.resumes_used <= i.budget.fetch_resumes, "resumes exceeded");
        }
        if let Action::SwapBack { slot } = *a {
            assert_eq!(slot, i.target.other());
            if i.saw_new {
                i.swapped_back_after_new = true;
            }
        }
        if let Some(report) = a.final_report() {
            if resend {
                assert_eq!(
                    i.finals.as_slice(),
                    &[report],
                    "a re-sent report is the same"
                );
                return;
            }
            i.finals.push(report);
            assert_eq!(i.finals.len(), 1, "exactly one final report per install");
            let Report::Final {
                deployment,
                outcome,
                cause,
                rollback_error,
            } = report
            else {
                unreachable!()
            };
            assert_eq!(deployment, i.id);
            assert_eq!(Some(outcome), next.outcome());
            assert_eq!(
                cause.map(|c| c.kind) == Some(CauseKind::Aborted),
                outcome == Outcome::Aborted
            );
            if outcome == Outcome::Aborted {
                assert!(i.abort_accepted, "aborted without an accepted abort");
            }
            if outcome == Outcome::Succeeded {
                assert_eq!(cause, None);
                assert_eq!(disk, i.target, "succeeded on the new slot");
            } else {
                assert!(cause.is_some(), "a failure names its cause");
                if i.saw_new {
                    assert!(i.swapped_back_after_new, "swapped, failed, no SwapBack");
                }
                if rollback_error.map(|c| c.phase) != Some(Phase::SwappingBack) {
                    assert_eq!(
                        disk,
                        i.target.other(),
                        "failed installs end on the old slot"
                    );
                }
            }
            if outcome == Outcome::RolledBack {
                assert!(i.saw_new);
            }
        }
    }

    fn end_install(&mut self) {
        if let Some(i) = self.install.take() {
            assert!(i.finals.len() <= 1);
        }
        self.outstanding = None;
    }

    /// Changes what `current` names on disk, as a swap does.
    fn set_disk(&mut self, slot: Slot) {
        self.disk = slot;
        if let Some(i) = self.install.as_mut() {
            if slot == i.target {
                i.saw_new = true;
            }
        }
    }

    /// The event a successful run of the outstanding action answers with, after carrying out its effect.
    fn carry_out(&mut self) -> Event {
        let a = self.outstanding.take().expect("an outstanding action");
        match a {
            Action::Fetch { .. } => Event::Fetched(self.plan),
            Action::RunBefore { .. } => Event::Completed(Phase::Before),
            Action::InstallPackages { .. } => Event::Completed(Phase::Packages),
            Action::Seal { .. } => Event::Completed(Phase::Sealing),
            Action::Swap { slot } => {
                self.set_disk(slot);
                Event::Completed(Phase::Swapping)
            }
            Action::Reconcile => Event::Current(self.disk),
            Action::RunAfter { .. } => Event::Completed(Phase::After),
            Action::CheckHealth { .. } => Event::Completed(Phase::HealthCheck),
            Action::Commit { .. } => Event::Completed(Phase::Committing),
            Action::SwapBack { slot } => {
                self.set_disk(slot);
                Event::Completed(Phase::SwappingBack)
            }
            Action::Revert { .. } => Event::Completed(Phase::Reverting),
            Action::RunRollbackCommand => Event::Completed(Phase::RollbackCommand),
            Action::Reboot => Event::Restarted { rebooted: true },
            other => panic!("{other:?} is not answered"),
        }
    }

    fn succeed(&mut self) -> Vec<Action> {
        let event = self.carry_out();
        self.send(event)
    }

    /// The outstanding action fails with `kind` (a swap fails before its rename).
    fn fail(&mut self, kind: CauseKind) -> Vec<Action> {
        self.outstanding = None;
        let phase = self.state.phase();
        self.send(Event::Failed(Cause::new(phase, kind)))
    }

    /// The agent dies before the outstanding action ran and starts again.
    fn crash(&mut self, rebooted: bool) -> Vec<Action> {
        self.outstanding = None;
        self.send(Event::Restarted { rebooted })
    }

    fn run_until(&mut self, phase: Phase) {
        for _ in 0..50 {
            if self.state.phase() == phase {
                return;
            }
            self.succeed();
        }
        panic!("never reached {phase:?}; at {:?}", self.state.phase());
    }

    /// Succeeds every outstanding action until the install is done; its final report.
    fn run_to_end(&mut self) -> Report {
        self.run_until(Phase::Done);
        self.final_report()
    }

    fn final_report(&self) -> Report {
        let finals: Vec<Report> = self
            .actions
            .iter()
            .filter_map(Action::final_report)
            .collect();
        assert_eq!(finals.len(), 1, "{:?}", self.actions);
        assert_eq!(
            self.actions.last().and_then(Action::final_report),
            finals.first().copied()
        );
        finals[0]
    }

    /// Does `what` (an event at the phase reached), then succeeds every outstanding
    /// action to the end; the work that followed, from `what` on.
    fn work_to_end<R>(&mut self, what: impl FnOnce(&mut Self) -> R) -> Vec<Action> {
        let mark = self.actions.len();
        what(self);
        self.run_to_end();
        self.work_since(mark)
    }

    /// `what`, done in `phase`, rolls the install back under `policy` with a cause
    /// of `kind` in that phase, and the old slot stays on disk.
    fn assert_rolls_back<R>(
        &mut self,
        what: impl FnOnce(&mut Self) -> R,
        phase: Phase,
        policy: RollbackPolicy,
        kind: CauseKind,
        context: &str,
    ) {
        assert_eq!(
            self.work_to_end(what),
            expected_rollback(phase, policy, Cause::new(phase, kind)),
            "{context}"
        );
        assert_eq!(self.disk, Slot::A, "{context}");
    }

    /// The actions of this install that are not progress reports, from index `from`.
    fn work_since(&self, from: usize) -> Vec<Action> {
        self.actions[from..]
            .iter()
            .copied()
            .filter(|a| !matches!(a, Action::Report(Report::Progress { .. })))
            .collect()
    }

    /// The phases this install reported entering, in order.
    fn progress(&self) -> Vec<Phase> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Report(Report::Progress { phase, .. }) => Some(*phase),
                _ => None,
            })
            .collect()
    }
}

fn final_of(outcome: Outcome, cause: Option<Cause>, rollback_error: Option<Cause>) -> Action {
    Action::Report(Report::Final {
        deployment: DEP,
        outcome,
        cause,
        rollback_error,
    })
}

// ---------------------------------------------------------------------------
// Happy paths
// ---------------------------------------------------------------------------

#[test]
fn happy_path_runs_every_phase_in_order_and_commits() {
    let mut d = Device::new(full(RollbackPolicy::default()));
    let actions = d.start();
    assert_eq!(
        actions,
        vec![
            progress(Phase::Fetching),
            Action::Fetch {
                deployment: DEP,
                slot: Slot::B,
                resume: false
            }
        ]
    );
    let report = d.run_to_end();
    assert_eq!(
        d.work_since(0),
        vec![
            Action::Fetch {
                deployment: DEP,
                slot: Slot::B,
                resume: false
            },
            Action::RunBefore { slot: Slot::B },
            Action::InstallPackages { slot: Slot::B },
            Action::Seal { slot: Slot::B },
            Action::Swap { slot: Slot::B },
            Action::RunAfter { slot: Slot::B },
            Action::CheckHealth { slot: Slot::B },
            Action::Commit { slot: Slot::B },
            final_of(Outcome::Succeeded, None, None),
        ]
    );
    assert_eq!(d.progress(), install_phases());
    assert_eq!(
        report,
        Report::Final {
            deployment: DEP,
            outcome: Outcome::Succeeded,
            cause: None,
            rollback_error: None
        }
    );
    assert_eq!(d.disk, Slot::B);
    assert_eq!(d.state.outcome(), Some(Outcome::Succeeded));

    // The controller acknowledges; the device is idle and takes the next update, into A.
    assert_eq!(d.send(Event::Reported(DEP)), vec![]);
    assert_eq!(d.state, State::IDLE);
    let actions = d.start();
    assert_eq!(actions.last().and_then(Action::slot), Some(Slot::A));
}

#[test]
fn stages_the_recipe_lacks_are_skipped() {
    let mut d = Device::started(Plan::default());
    d.run_to_end();
    assert_eq!(
        d.progress(),
        vec![
            Phase::Fetching,
            Phase::Sealing,
            Phase::Swapping,
            Phase::Committing
        ]
    );

    let mut d = Device::started(Plan {
        packages: true,
        health_check: true,
        ..Plan::default()
    });
    d.run_to_end();
    assert_eq!(
        d.progress(),
        vec![
            Phase::Fetching,
            Phase::Packages,
            Phase::Sealing,
            Phase::Swapping,
            Phase::HealthCheck,
            Phase::Committing
        ]
    );
}

#[test]
fn a_new_install_may_start_before_the_last_report_is_acknowledged() {
    let mut d = Device::started(Plan::default());
    d.run_to_end();
    let actions = d.start();
    assert_eq!(actions.first(), Some(&progress(Phase::Fetching)));
    assert_eq!(d.state.target(), Some(Slot::A));
}

// ---------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------

/// What a failure (or abort, or interrupting restart) in `phase` should lead to
/// under `policy`: the rollback actions and the final report.
fn expected_rollback(phase: Phase, policy: RollbackPolicy, cause: Cause) -> Vec<Action> {
    let swapped = matches!(phase, Phase::After | Phase::HealthCheck | Phase::Committing);
    // An install that ends in Fetching runs nothing of its recipe: the partial
    // slot is discarded (the default policy) and no command or reboot runs.
    let fetched = phase != Phase::Fetching;
    let policy = if fetched {
        policy
    } else {
        RollbackPolicy::default()
    };
    let mut v = Vec::new();
    if swapped {
        v.push(Action::SwapBack { slot: Slot::A });
    }
    if policy.revert {
        v.push(Action::Revert { slot: Slot::B });
    }
    if policy.command {
        v.push(Action::RunRollbackCommand);
    }
    if policy.reboot {
        v.push(Action::Reboot);
    }
    let outcome = if cause.kind == CauseKind::Aborted {
        Outcome::Aborted
    } else if swapped {
        Outcome::RolledBack
    } else {
        Outcome::Failed
    };
    v.push(final_of(outcome, Some(cause), None));
    v
}

#[test]
fn a_failure_in_every_phase_runs_every_rollback_policy_in_order() {
    for policy in policies() {
        for phase in install_phases()
            .into_iter()
            .filter(|p| *p != Phase::Swapping)
        {
            let mut d = Device::started(full(policy));
            d.run_until(phase);
            let kind = CauseKind::Exit(3);
            let context = format!("{phase:?} {policy:?}");
            d.assert_rolls_back(|d| d.fail(kind), phase, policy, kind, &context);
        }
    }
}

#[test]
fn a_command_timeout_is_a_failure_naming_the_phase() {
    let mut d = Device::failed_in(
        full(RollbackPolicy::default()),
        Phase::After,
        CauseKind::Timeout,
    );
    let report = d.run_to_end();
    assert_eq!(
        report,
        Report::Final {
            deployment: DEP,
            outcome: Outcome::RolledBack,
            cause: Some(Cause::new(Phase::After, CauseKind::Timeout)),
            rollback_error: None
        }
    );
}

#[test]
fn a_failed_swap_is_reconciled_before_deciding_whether_to_swap_back() {
    for policy in policies() {
        // The rename never happened: a failure before the swap.
        let mut d = Device::started(full(policy));
        d.run_until(Phase::Swapping);
        let work = d.work_to_end(|d| assert_eq!(d.fail(CauseKind::Io), vec![Action::Reconcile]));
        let cause = Cause::new(Phase::Swapping, CauseKind::Io);
        let mut want = vec![Action::Reconcile];
        want.extend(expected_rollback(Phase::Sealing, policy, cause));
        assert_eq!(work, want, "{policy:?}");

        // The rename happened and the fsync after it failed: swap back first.
        let mut d = Device::started(full(policy));
        d.run_until(Phase::Swapping);
        d.set_disk(Slot::B);
        let work = d.work_to_end(|d| assert_eq!(d.fail(CauseKind::Io), vec![Action::Reconcile]));
        let mut want = vec![Action::Reconcile];
        want.extend(expected_rollback(Phase::After, policy, cause));
        assert_eq!(work, want, "{policy:?}");
        assert_eq!(d.state.outcome(), Some(Outcome::RolledBack));
    }
}

#[test]
fn failing_rollback_steps_do_not_stop_the_rollback() {
    // The rollback command fails: the reboot still happens, the report names both.
    let mut d = Device::failed_in(full(all_on()), Phase::HealthCheck, CauseKind::Unhealthy);
    d.run_until(Phase::RollbackCommand);
    assert_eq!(
        d.work_to_end(|d| d.fail(CauseKind::Exit(1))),
        vec![
            Action::Reboot,
            final_of(
                Outcome::RolledBack,
                Some(Cause::new(Phase::HealthCheck, CauseKind::Unhealthy)),
                Some(Cause::new(Phase::RollbackCommand, CauseKind::Exit(1)))
            )
        ]
    );

    // The swap back fails: the new slot may still be current, so it is not
    // reverted; the command and reboot run; the outcome is Failed.
    let mut d = Device::failed_in(full(all_on()), Phase::After, CauseKind::Exit(2));
    assert_eq!(d.state.phase(), Phase::SwappingBack);
    assert_eq!(
        d.work_to_end(|d| d.fail(CauseKind::Io)),
        vec![
            Action::RunRollbackCommand,
            Action::Reboot,
            final_of(
                Outcome::Failed,
                Some(Cause::new(Phase::After, CauseKind::Exit(2))),
                Some(Cause::new(Phase::SwappingBack, CauseKind::Io))
            )
        ]
    );

    // Revert and reboot fail: the first rollback error is the one reported.
    let mut d = Device::failed_in(
        full(RollbackPolicy {
            revert: true,
            command: false,
            reboot: true,
        }),
        Phase::Packages,
        CauseKind::NoSpace,
    );
    d.fail(CauseKind::Io);
    assert_eq!(d.state.phase(), Phase::Rebooting);
    d.fail(CauseKind::Exit(1));
    assert_eq!(
        d.final_report(),
        Report::Final {
            deployment: DEP,
            outcome: Outcome::Failed,
            cause: Some(Cause::new(Phase::Packages, CauseKind::NoSpace)),
            rollback_error: Some(Cause::new(Phase::Reverting, CauseKind::Io))
        }
    );
}

#[test]
fn a_bad_bundle_is_refused_in_fetching_and_runs_no_script() {
    for policy in policies() {
        let mut d = Device::started(full(policy));
        d.fail(CauseKind::BadBundle);
        d.run_to_end();
        assert!(!d.actions.iter().any(|a| matches!(
            a,
            Action::RunBefore { .. }
                | Action::RunRollbackCommand
                | Action::Reboot
                | Action::Swap { .. }
        )));
        assert_eq!(d.state.outcome(), Some(Outcome::Failed));
    }
}

// ---------------------------------------------------------------------------
// Abort
// ---------------------------------------------------------------------------

#[test]
fn abort_before_commit_is_honoured_in_every_phase() {
    let cancellable = [
        Phase::Fetching,
        Phase::Before,
        Phase::Packages,
        Phase::After,
        Phase::HealthCheck,
    ];
    for policy in policies() {
        for phase in install_phases().into_iter().filter(|p| p.abortable()) {
            // The outstanding action reports back successfully, or as cancelled.
            for cancelled in [false, true] {
                let mut d = Device::started(full(policy));
                d.run_until(phase);
                let actions = d.send(Event::Abort(DEP));
                if cancellable.contains(&phase) {
                    assert_eq!(actions, vec![Action::Cancel], "{phase:?}");
                } else {
                    assert_eq!(actions, vec![], "{phase:?}");
                }
                assert!(d.state.abort_requested());
                // A repeated abort changes nothing.
                assert_eq!(d.send(Event::Abort(DEP)), vec![]);

                let work = d.work_to_end(|d| {
                    if cancelled {
                        d.fail(CauseKind::Cancelled)
                    } else {
                        d.succeed()
                    }
                });
                let mut want = expected_rollback(
                    // A swap that completed before the abort applied is swapped back.
                    if phase == Phase::Swapping && !cancelled {
                        Phase::After
                    } else {
                        phase
                    },
                    policy,
                    Cause::new(phase, CauseKind::Aborted),
                );
                if phase == Phase::Swapping && cancelled {
                    // A failed swap is reconciled first; the rename never happened.
                    want.insert(0, Action::Reconcile);
                }
                assert_eq!(work, want, "{phase:?} {policy:?} cancelled={cancelled}");
                assert_eq!(d.state.outcome(), Some(Outcome::Aborted));
                assert_eq!(d.disk, Slot::A);
            }
        }
    }
}

#[test]
fn abort_after_commit_is_refused_and_says_why() {
    let mut d = Device::started(full(all_on()));
    d.run_until(Phase::Committing);
    let before = d.state;
    d.assert_abort_refused(DEP, AbortRefusal::Committed);
    assert_eq!(d.state, before);
    d.run_to_end();
    assert_eq!(d.state.outcome(), Some(Outcome::Succeeded));
    d.assert_abort_refused(DEP, AbortRefusal::Committed);
}

#[test]
fn abort_is_refused_when_there_is_nothing_to_abort() {
    let mut d = Device::new(full(all_on()));
    d.assert_abort_refused(DEP, AbortRefusal::NotRunning);

    d.start();
    d.assert_abort_refused(OTHER, AbortRefusal::NotRunning);
    assert!(!d.state.abort_requested());

    // Already failing: rolling back, and done.
    d.run_until(Phase::Packages);
    d.fail(CauseKind::Exit(1));
    assert!(d.state.phase().is_rolling_back());
    d.assert_abort_refused(DEP, AbortRefusal::AlreadyEnding);
    d.run_to_end();
    d.assert_abort_refused(DEP, AbortRefusal::AlreadyEnding);
    assert_eq!(d.state.outcome(), Some(Outcome::Failed));

    // A swap that failed and is being reconciled is already ending.
    let mut d = Device::failed_in(full(all_on()), Phase::Swapping, CauseKind::Io);
    d.assert_abort_refused(DEP, AbortRefusal::AlreadyEnding);
}

#[test]
fn an_abort_pending_across_a_restart_is_still_honoured() {
    for phase in install_phases().into_iter().filter(|p| p.abortable()) {
        let mut d = Device::started(full(RollbackPolicy::default()));
        d.run_until(phase);
        d.send(Event::Abort(DEP));
        d.crash(false);
        d.run_to_end();
        assert_eq!(d.state.outcome(), Some(Outcome::Aborted), "{phase:?}");
        assert_eq!(
            d.state.cause(),
            Some(Cause::new(phase, CauseKind::Aborted)),
            "{phase:?}"
        );
        assert_eq!(d.disk, Slot::A);
    }
}

// ---------------------------------------------------------------------------
// Restart recovery
// ---------------------------------------------------------------------------

#[test]
fn restart_while_idle_does_nothing() {
    let mut d = Device::new(Plan::default());
    assert_eq!(d.crash(true), vec![]);
    assert_eq!(d.state, State::IDLE);
}

#[test]
fn restart_while_fetching_resumes_the_download() {
    let mut d = Device::started(full(all_on()));
    let left = d.state.fetch_resumes_left();
    assert_eq!(
        d.crash(true),
        vec![Action::Fetch {
            deployment: DEP,
            slot: Slot::B,
            resume: true
        }]
    );
    assert_eq!(d.state.fetch_resumes_left(), left - 1);
    assert_eq!(d.run_to_end().clone(), d.final_report());
    assert_eq!(d.state.outcome(), Some(Outcome::Succeeded));
}

#[test]
fn a_download_interrupted_too_often_fails() {
    let mut d = Device::new(full(all_on()));
    d.budget = Budget {
        fetch_resumes: 2,
        trials: 0,
    };
    d.start();
    for _ in 0..2 {
        assert!(matches!(
            d.crash(false).as_slice(),
            [Action::Fetch { resume: true, .. }]
        ));
    }
    assert_eq!(
        d.work_to_end(|d| d.crash(false)),
        expected_rollback(
            Phase::Fetching,
            all_on(),
            Cause::new(Phase::Fetching, CauseKind::ResumesExhausted)
        )
    );
}

#[test]
fn restart_before_the_swap_fails_the_install_cleanly() {
    for policy in policies() {
        for phase in [Phase::Before, Phase::Packages, Phase::Sealing] {
            let mut d = Device::started(full(policy));
            d.run_until(phase);
            let context = format!("{phase:?} {policy:?}");
            d.assert_rolls_back(
                |d| d.crash(true),
                phase,
                policy,
                CauseKind::Interrupted,
                &context,
            );
        }
    }
}

#[test]
fn restart_while_swapping_reconciles_with_the_disk() {
    // The swap had happened: continue with the after command.
    let mut d = Device::started(full(all_on()));
    d.run_until(Phase::Swapping);
    d.set_disk(Slot::B);
    assert_eq!(d.crash(true), vec![Action::Reconcile]);
    assert_eq!(
        d.succeed(),
        vec![progress(Phase::After), Action::RunAfter { slot: Slot::B }]
    );
    d.run_to_end();
    assert_eq!(d.state.outcome(), Some(Outcome::Succeeded));

    // The swap had not happened: the install fails before the swap.
    for policy in policies() {
        let mut d = Device::started(full(policy));
        d.run_until(Phase::Swapping);
        let work = d.work_to_end(|d| {
            assert_eq!(d.crash(false), vec![Action::Reconcile]);
            // A second crash before the answer asks again.
            assert_eq!(d.crash(false), vec![Action::Reconcile]);
        });
        let cause = Cause::new(Phase::Swapping, CauseKind::Interrupted);
        let mut want = vec![Action::Reconcile, Action::Reconcile];
        want.extend(expected_rollback(Phase::Sealing, policy, cause));
        assert_eq!(work, want, "{policy:?}");
    }
}

#[test]
fn restart_after_the_swap_puts_the_new_snapshot_on_trial() {
    for phase in [Phase::After, Phase::HealthCheck] {
        let mut d = Device::started(full(all_on()));
        d.run_until(phase);
        let outstanding = d.outstanding;
        let left = d.state.trials_left();
        assert_eq!(d.crash(true), outstanding.into_iter().collect::<Vec<_>>());
        assert_eq!(d.state.trials_left(), left - 1);
        assert_eq!(d.state.phase(), phase);
        d.run_to_end();
        assert_eq!(d.state.outcome(), Some(Outcome::Succeeded));
    }
}

#[test]
fn an_exhausted_trial_counter_rolls_back_automatically() {
    for trials in [0u8, 1, 3] {
        for phase in [Phase::After, Phase::HealthCheck] {
            for policy in policies() {
                let mut d = Device::new(full(policy));
                d.budget = Budget {
                    fetch_resumes: 0,
                    trials,
                };
                d.start();
                d.run_until(phase);
                for _ in 0..trials {
                    let actions = d.crash(true);
                    assert_eq!(actions.len(), 1);
                    assert_eq!(d.state.phase(), phase);
                }
                assert_eq!(d.state.trials_left(), 0);
                let context = format!("{trials} {phase:?} {policy:?}");
                d.assert_rolls_back(
                    |d| d.crash(true),
                    phase,
                    policy,
                    CauseKind::TrialsExhausted,
                    &context,
                );
            }
        }
    }
}

#[test]
fn the_trial_counter_is_shared_by_after_and_health_check() {
    let mut d = Device::new(full(RollbackPolicy::default()));
    d.budget = Budget {
        fetch_resumes: 0,
        trials: 1,
    };
    d.start();
    d.run_until(Phase::After);
    d.crash(true);
    d.run_until(Phase::HealthCheck);
    d.crash(true);
    assert_eq!(d.state.phase(), Phase::SwappingBack);
    d.run_to_end();
    assert_eq!(
        d.state.cause(),
        Some(Cause::new(Phase::HealthCheck, CauseKind::TrialsExhausted))
    );
}

#[test]
fn restart_while_committing_commits_again() {
    let mut d = Device::started(full(all_on()));
    d.run_until(Phase::Committing);
    assert_eq!(d.crash(true), vec![Action::Commit { slot: Slot::B }]);
    d.run_to_end();
    assert_eq!(d.state.outcome(), Some(Outcome::Succeeded));
}

#[test]
fn restart_while_rolling_back_continues_rolling_back() {
    // Swapping back and reverting are idempotent: they run again.
    let mut d = Device::failed_in(full(all_on()), Phase::After, CauseKind::Exit(1));
    assert_eq!(d.crash(true), vec![Action::SwapBack { slot: Slot::A }]);
    d.run_until(Phase::Reverting);
    assert_eq!(d.crash(false), vec![Action::Revert { slot: Slot::B }]);

    // The rollback command is not rerun: it may be what restarted the device.
    d.run_until(Phase::RollbackCommand);
    assert_eq!(
        d.crash(true),
        vec![progress(Phase::Rebooting), Action::Reboot]
    );
    // The agent restarted without a reboot: reboot again; after it, report.
    assert_eq!(d.crash(false), vec![Action::Reboot]);
    d.run_to_end();
    assert_eq!(
        d.final_report(),
        Report::Final {
            deployment: DEP,
            outcome: Outcome::RolledBack,
            cause: Some(Cause::new(Phase::After, CauseKind::Exit(1))),
            rollback_error: Some(Cause::new(Phase::RollbackCommand, CauseKind::Interrupted))
        }
    );
    assert_eq!(d.disk, Slot::A);
}

#[test]
fn a_reboot_that_returns_finishes_the_rollback() {
    let mut d = Device::failed_in(full(all_on()), Phase::Before, CauseKind::Exit(1));
    d.run_until(Phase::Rebooting);
    d.outstanding = None;
    d.send(Event::Completed(Phase::Rebooting));
    assert_eq!(d.state.outcome(), Some(Outcome::Failed));
}

#[test]
fn restart_when_done_sends_the_same_final_report_again() {
    let mut d = Device::failed_in(full(all_on()), Phase::HealthCheck, CauseKind::Unhealthy);
    let report = d.run_to_end();
    assert_eq!(d.crash(true), vec![Action::Report(report)]);
    assert_eq!(d.crash(false), vec![Action::Report(report)]);
    assert_eq!(d.state.phase(), Phase::Done);
    d.send(Event::Reported(DEP));
    assert_eq!(d.state, State::IDLE);
}

#[test]
fn restart_is_accepted_in_every_phase() {
    // Reach every phase and restart there: the machine always has an answer.
    for target in Phase::ALL {
        let mut d = Device::started(full(all_on()));
        if target == Phase::Idle {
            d = Device::new(full(all_on()));
        } else if target.is_rolling_back() {
            d.run_until(Phase::After);
            d.fail(CauseKind::Exit(1));
        }
        d.run_until(target);
        d.crash(false);
        d.run_until(if target == Phase::Idle {
            Phase::Idle
        } else {
            Phase::Done
        });
    }
}

// ---------------------------------------------------------------------------
// Rejected events
// ---------------------------------------------------------------------------

#[test]
fn events_that_answer_nothing_outstanding_are_rejected_and_change_nothing() {
    let mut d = Device::new(full(all_on()));
    assert_eq!(
        d.reject(Event::Completed(Phase::Before)),
        Rejected::Unexpected { phase: Phase::Idle }
    );
    assert_eq!(
        d.reject(Event::Reported(DEP)),
        Rejected::Unexpected { phase: Phase::Idle }
    );
    d.start();
    // Fetching answers with `Fetched`, not `Completed`.
    assert_eq!(
        d.reject(Event::Completed(Phase::Fetching)),
        Rejected::Unexpected {
            phase: Phase::Fetching
        }
    );
    assert_eq!(
        d.reject(Event::Start {
            deployment: OTHER,
            target: Slot::B,
            budget: Budget::default()
        }),
        Rejected::Busy {
            phase: Phase::Fetching
        }
    );
    d.run_until(Phase::Packages);
    // A duplicated result of the previous phase.
    d.reject(Event::Completed(Phase::Before));
    d.reject(Event::Failed(Cause::new(Phase::Before, CauseKind::Io)));
    d.reject(Event::Fetched(Plan::default()));
    d.reject(Event::Current(Slot::A));
    d.run_until(Phase::Swapping);
    // Waiting for a swap, not a reconcile; and the other way round.
    d.reject(Event::Current(Slot::B));
    d.crash(false);
    d.reject(Event::Completed(Phase::Swapping));
    d.reject(Event::Failed(Cause::new(Phase::Swapping, CauseKind::Io)));
    d.succeed();
    d.run_to_end();
    assert_eq!(d.reject(Event::Reported(OTHER)), Rejected::OtherDeployment);
    d.reject(Event::Completed(Phase::Committing));
}

// ---------------------------------------------------------------------------
// The journaled state
// ---------------------------------------------------------------------------

#[test]
fn the_largest_state_fits_its_encoding_bound() {
    // Drive a state that carries every optional field at its widest.
    let mut d = Device::new(full(all_on()));
    d.budget = Budget {
        fetch_resumes: u8::MAX,
        trials: u8::MAX,
    };
    d.start();
    d.run_until(Phase::After);
    d.fail(CauseKind::Exit(i32::MIN));
    d.fail(CauseKind::Exit(i32::MIN));
    let bytes = postcard::to_allocvec(&d.state).unwrap();
    assert!(bytes.len() <= State::MAX_ENCODED_LEN, "{}", bytes.len());
    assert_eq!(postcard::from_bytes::<State>(&bytes).unwrap(), d.state);
    assert!(core::mem::size_of::<State>() <= 64);
}

#[test]
fn a_corrupt_journal_is_refused_by_postcard_not_by_a_panic() {
    let d = {
        let mut d = Device::started(full(all_on()));
        d.run_until(Phase::HealthCheck);
        d
    };
    let bytes = postcard::to_allocvec(&d.state).unwrap();
    for cut in 0..bytes.len() {
        assert!(postcard::from_bytes::<State>(&bytes[..cut]).is_err());
    }
    // Every single-byte change either fails to decode or decodes to a state
    // that `step` handles without panicking.
    for i in 0..bytes.len() {
        for v in [0u8, 1, 0x7f, 0xff] {
            let mut b = bytes.clone();
            b[i] = v;
            if let Ok(s) = postcard::from_bytes::<State>(&b) {
                for e in sample_events() {
                    let _ = step(&s, e);
                }
            }
        }
    }
}

fn sample_events() -> Vec<Event> {
    let mut v = vec![
        Event::Start {
            deployment: DEP,
            target: Slot::A,
            budget: Budget::default(),
        },
        Event::Fetched(full(all_on())),
        Event::Current(Slot::A),
        Event::Current(Slot::B),
        Event::Abort(DEP),
        Event::Restarted { rebooted: true },
        Event::Restarted { rebooted: false },
        Event::Reported(DEP),
    ];
    for p in Phase::ALL {
        v.push(Event::Completed(p));
        v.push(Event::Failed(Cause::new(p, CauseKind::Io)));
    }
    v
}

#[test]
fn display_names_phases_and_causes() {
    assert_eq!(Phase::HealthCheck.to_string(), "health-check");
    assert_eq!(
        Cause::new(Phase::Packages, CauseKind::Exit(100)).to_string(),
        "packages: exited with status 100"
    );
    assert_eq!(DEP.to_string(), "d0".repeat(16));
    assert_eq!(Outcome::RolledBack.to_string(), "rolled back");
}

// ---------------------------------------------------------------------------
// Random event sequences
// ---------------------------------------------------------------------------

/// One thing that happens to the device, interpreted against its current state.
#[derive(Clone, Debug)]
enum Op {
    /// The outstanding action succeeds (a fetch answers with this plan).
    Succeed(u8),
    /// The outstanding action fails; a swap or swap back renamed `current` before failing if `renamed`.
    Fail { kind: CauseKind, renamed: bool },
    /// The agent dies, after carrying out the outstanding action if `done`, and restarts.
    Crash { done: bool, rebooted: bool },
    /// An operator abort for this deployment, or another.
    Abort { ours: bool },
    /// A new deployment is offered.
    Start { fetch_resumes: u8, trials: u8 },
    /// The controller acknowledges the final report (of this deployment, or another).
    Reported { ours: bool },
    /// A stale or duplicated result.
    Stale { kind: u8, phase: usize, slot: bool },
}

fn cause_kind() -> impl Strategy<Value = CauseKind> {
    prop_oneof![
        Just(CauseKind::BadBundle),
        Just(CauseKind::Incompatible),
        Just(CauseKind::Downgrade),
        Just(CauseKind::Network),
        Just(CauseKind::NoSpace),
        Just(CauseKind::Io),
        any::<i32>().prop_map(CauseKind::Exit),
        Just(CauseKind::Timeout),
        Just(CauseKind::Unhealthy),
        Just(CauseKind::Cancelled),
        Just(CauseKind::Interrupted),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => any::<u8>().prop_map(Op::Succeed),
        3 => (cause_kind(), any::<bool>()).prop_map(|(kind, renamed)| Op::Fail { kind, renamed }),
        3 => (any::<bool>(), any::<bool>()).prop_map(|(done, rebooted)| Op::Crash { done, rebooted }),
        2 => any::<bool>().prop_map(|ours| Op::Abort { ours }),
        2 => (0u8..3, 0u8..3).prop_map(|(fetch_resumes, trials)| Op::Start { fetch_resumes, trials }),
        1 => any::<bool>().prop_map(|ours| Op::Reported { ours }),
        2 => (0u8..4, 0usize..Phase::ALL.len(), any::<bool>())
            .prop_map(|(kind, phase, slot)| Op::Stale { kind, phase, slot }),
    ]
}

fn plan_from_bits(b: u8) -> Plan {
    Plan {
        before: b & 1 != 0,
        packages: b & 2 != 0,
        after: b & 4 != 0,
        health_check: b & 8 != 0,
        rollback: RollbackPolicy {
            revert: b & 16 != 0,
            command: b & 32 != 0,
            reboot: b & 64 != 0,
        },
    }
}

impl Device {
    fn apply(&mut self, op: &Op) {
        let id = self.install.as_ref().map_or(DEP, |i| i.id);
        match *op {
            Op::Succeed(bits) => {
                if self.outstanding.is_some() {
                    self.plan = plan_from_bits(bits);
                    self.succeed();
                }
            }
            Op::Fail { kind, renamed } => match self.outstanding {
                None => {}
                // `Reconcile` has no failure answer: the agent retries until it can read the link.
                Some(Action::Reconcile) => {
                    let phase = self.state.phase();
                    self.reject(Event::Failed(Cause::new(phase, kind)));
                }
                Some(a) => {
                    if let (true, Action::Swap { slot } | Action::SwapBack { slot }) = (renamed, a)
                    {
                        self.set_disk(slot);
                    }
                    self.fail(kind);
                }
            },
            Op::Crash { done, rebooted } => {
                let mut rebooted = rebooted;
                if done {
                    match self.outstanding {
                        Some(Action::Swap { slot } | Action::SwapBack { slot }) => {
                            self.set_disk(slot)
                        }
                        Some(Action::Reboot) => rebooted = true,
                        _ => {}
                    }
                }
                self.crash(rebooted);
            }
            Op::Abort { ours } => {
                let target = if ours { id } else { OTHER };
                let phase = self.state.phase();
                let actions = self.send(Event::Abort(target));
                let refused = actions
                    .iter()
                    .any(|a| matches!(a, Action::AbortRefused { .. }));
                if !ours || phase == Phase::Idle {
                    assert!(refused);
                }
                if ours && phase == Phase::Committing {
                    assert_eq!(
                        actions,
                        vec![Action::AbortRefused {
                            deployment: id,
                            why: AbortRefusal::Committed
                        }]
                    );
                }
                if phase.is_rolling_back() {
                    assert!(refused);
                }
            }
            Op::Start {
                fetch_resumes,
                trials,
            } => {
                self.next_id = self.next_id.wrapping_add(1);
                // Never equal to `OTHER`, whatever the counter says.
                let mut id = [0x1d; 16];
                id[15] = self.next_id;
                let event = Event::Start {
                    deployment: DeploymentId(id),
                    target: self.disk.other(),
                    budget: Budget {
                        fetch_resumes,
                        trials,
                    },
                };
                if matches!(self.state.phase(), Phase::Idle | Phase::Done) {
                    self.send(event);
                } else {
                    assert!(matches!(self.reject(event), Rejected::Busy { .. }));
                }
            }
            Op::Reported { ours } => {
                let target = if ours { id } else { OTHER };
                if self.state.phase() == Phase::Done && target == id {
                    self.send(Event::Reported(target));
                } else {
                    self.reject(Event::Reported(target));
                }
            }
            Op::Stale { kind, phase, slot } => {
                let current = self.state.phase();
                let p = Phase::ALL[phase];
                let event = match kind {
                    0 if p != current => Event::Completed(p),
                    1 if p != current => Event::Failed(Cause::new(p, CauseKind::Io)),
                    2 if current != Phase::Fetching => Event::Fetched(Plan::default()),
                    3 if self.outstanding != Some(Action::Reconcile) => {
                        Event::Current(if slot { Slot::A } else { Slot::B })
                    }
                    _ => return,
                };
                self.reject(event);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random sequences of results, failures, crashes, aborts, offers and stale
    /// events never panic the machine and never break an invariant (checked in
    /// `Device::accept` on every transition); and from wherever they leave it,
    /// succeeding every outstanding action ends the install.
    #[test]
    fn random_event_sequences_keep_every_invariant(ops in proptest::collection::vec(op(), 0..80)) {
        let mut d = Device::new(Plan::default());
        for op in &ops {
            d.apply(op);
        }
        let mut steps = 0;
        while d.outstanding.is_some() {
            d.succeed();
            steps += 1;
            prop_assert!(steps < 30, "no progress from {:?}", d.state);
        }
        prop_assert!(matches!(d.state.phase(), Phase::Idle | Phase::Done));
        if d.state.phase() == Phase::Done {
            let finals: VecDeque<_> = d.actions.iter().filter_map(Action::final_report).collect();
            prop_assert!(!finals.is_empty());
            prop_assert!(finals.iter().all(|r| Some(r) == finals.front()));
        }
    }

    /// `step` never panics on any state a journal could decode to, for any
    /// event, including field combinations that no event sequence reaches.
    /// The bytes are built field by field in the journal's layout, which this
    /// also pins: each must decode and re-encode to the same bytes.
    #[test]
    fn step_is_total_on_every_decodable_state(
        fields in (
            (0u8..14, any::<[u8; 16]>(), 0u8..2, 0u8..2, any::<[bool; 7]>()),
            (any::<u8>(), any::<u8>(), any::<[bool; 3]>()),
            proptest::option::of((0u8..14, 0u8..14, any::<i32>())),
            proptest::option::of((0u8..14, 0u8..14, any::<i32>())),
        ),
    ) {
        let ((phase, deployment, target, current, plan), (resumes, trials, flags), cause, rollback_error) = fields;
        let mut bytes = vec![phase];
        bytes.extend(deployment);
        bytes.extend([target, current]);
        bytes.extend(plan.map(u8::from));
        bytes.extend([resumes, trials]);
        bytes.extend(flags.map(u8::from));
        for c in [cause, rollback_error] {
            match c {
                None => bytes.push(0),
                Some((phase, kind, code)) => {
                    bytes.extend([1, phase, kind]);
                    // CauseKind::Exit(i32), the one variant with a payload (zigzag varint).
                    if kind == 6 {
                        bytes.extend(postcard::to_allocvec(&code).unwrap());
                    }
                }
            }
        }
        let s: State = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(postcard::to_allocvec(&s).unwrap(), bytes.clone());
        prop_assert!(bytes.len() <= State::MAX_ENCODED_LEN);
        for event in sample_events() {
            if let Ok(t) = step(&s, event) {
                prop_assert!(t.actions.len() <= MAX_ACTIONS);
                let next = postcard::to_allocvec(&t.next).unwrap();
                prop_assert!(next.len() <= State::MAX_ENCODED_LEN);
            }
        }
    }
}

#[test]
fn failures_are_classed_for_the_controllers_retries() {
    use molt_engine::protocol::Failure;
    use molt_engine::update::FailureClass::{Deterministic, Transient};
    use CauseKind::*;
    let all = [
        (Network, Some(Transient)),
        (NoSpace, Some(Transient)),
        (Io, Some(Transient)),
        (Timeout, Some(Transient)),
        (Cancelled, Some(Transient)),
        (Interrupted, Some(Transient)),
        (ResumesExhausted, Some(Transient)),
        (TrialsExhausted, Some(Transient)),
        (BadBundle, Some(Deterministic)),
        (Incompatible, Some(Deterministic)),
        (Downgrade, Some(Deterministic)),
        (Exit(3), Some(Deterministic)),
        (Unhealthy, Some(Deterministic)),
        (WrongBase, Some(Deterministic)),
        (Aborted, None),
    ];
    let mut names = std::collections::BTreeSet::new();
    for (kind, class) in all {
        assert_eq!(kind.class(), class, "{kind:?}");
        assert!(names.insert(kind.name()), "{kind:?}: a name used twice");
        assert_eq!(Failure::of(kind).map(|f| f.class), class, "{kind:?}");
    }
    assert_eq!(Failure::of(Exit(1)).unwrap().cause, "exit");
}
