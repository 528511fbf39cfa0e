//! Settling an orphaned trial: a slot on trial with no install in flight falls back to the Good slot; an install in flight, a Good slot or a trial without fallback is left alone.

use crc::{Crc, CRC_32_ISCSI};
use molt_engine::slot::{Slot, SlotRecord, Status, RECORD_LEN};
use molt_engine::testing::RecordStore;
use molt_engine::update::{
    settle_orphaned_trial, step, Budget, DeploymentId, Event, OrphanedTrial, Phase, Plan, State,
};

/// A device whose update 2.0.0 in slot B is on trial, with the factory image Good in A.
fn on_trial() -> SlotRecord {
    let mut r = SlotRecord::new(Slot::A, "1.0.0", 1, [1; 32]).unwrap();
    r.begin_staging("2.0.0", 2, [2; 32], false).unwrap();
    r.mark_trial(3).unwrap();
    r
}

/// The journal of an install of B that has reached `phase`.
fn install_in(phase: Phase) -> State {
    let start = Event::Start {
        deployment: DeploymentId([9; 16]),
        target: Slot::B,
        budget: Budget::default(),
    };
    let plan = Plan {
        health_check: true,
        ..Plan::default()
    };
    let mut s = step(&State::IDLE, start).unwrap().next;
    s = step(&s, Event::Fetched(plan)).unwrap().next;
    while s.phase() != phase {
        s = step(&s, Event::Completed(s.phase())).unwrap().next;
    }
    s
}

#[test]
fn a_trial_with_no_install_in_flight_falls_back_to_the_good_slot() {
    let mut r = on_trial();
    assert_eq!(
        settle_orphaned_trial(&State::IDLE, &mut r),
        OrphanedTrial::FellBack {
            from: Slot::B,
            to: Slot::A
        }
    );
    assert_eq!(r.active(), Slot::A);
    assert_eq!(r.slot(Slot::B).status, Status::Bad);
    assert_eq!(r.slot(Slot::A).status, Status::Good);
    assert_eq!(
        r.floor(),
        1,
        "the unconfirmed release does not raise the floor"
    );
    // Settled once, there is nothing left to settle.
    assert_eq!(
        settle_orphaned_trial(&State::IDLE, &mut r),
        OrphanedTrial::None
    );
}

#[test]
fn an_install_in_flight_owns_its_trial() {
    for phase in [Phase::HealthCheck, Phase::Committing, Phase::Done] {
        let mut r = on_trial();
        let before = r.clone();
        let state = install_in(phase);
        assert_eq!(
            settle_orphaned_trial(&state, &mut r),
            OrphanedTrial::None,
            "{phase}"
        );
        assert_eq!(r, before, "{phase}: the record is unchanged");
    }
}

#[test]
fn a_good_active_slot_has_no_trial_to_settle() {
    let mut r = SlotRecord::new(Slot::A, "1.0.0", 1, [1; 32]).unwrap();
    let before = r.clone();
    assert_eq!(
        settle_orphaned_trial(&State::IDLE, &mut r),
        OrphanedTrial::None
    );
    assert_eq!(r, before);
    // A slot being staged is not on trial either: the next install restarts it.
    r.begin_staging("2.0.0", 2, [2; 32], false).unwrap();
    let before = r.clone();
    assert_eq!(
        settle_orphaned_trial(&State::IDLE, &mut r),
        OrphanedTrial::None
    );
    assert_eq!(r, before);
}

#[test]
fn a_trial_without_a_good_fallback_is_left_as_it_is() {
    // The record API never leaves a trial without its Good fallback, so the case is
    // crafted on the stored bytes: B on trial, active, and A Bad.
    let mut store = RecordStore::default();
    on_trial().save(&mut store).unwrap();
    let copy = &mut store.bytes_mut()[..RECORD_LEN];
    assert_eq!(copy[5], 1, "B is active");
    copy[24] = 4; // slot A's status: Bad
    let crc = Crc::<u32>::new(&CRC_32_ISCSI).checksum(&copy[..RECORD_LEN - 4]);
    copy[RECORD_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    let mut r = SlotRecord::load(&mut store).unwrap().into_record().unwrap();
    assert_eq!(r.slot(Slot::B).status, Status::Trial);
    let before = r.clone();
    assert_eq!(
        settle_orphaned_trial(&State::IDLE, &mut r),
        OrphanedTrial::NoFallback { slot: Slot::B }
    );
    assert_eq!(
        r, before,
        "running the unconfirmed snapshot beats running none"
    );
}
