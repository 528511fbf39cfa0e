//! The update journal: its byte layout, damage to either copy, other formats, the previous agent's layout, and a power cut at every byte of every save of an install.

use crc::{Crc, CRC_32_ISCSI};
use molt_engine::slot::{RecordError, Slot, StoreOp};
use molt_engine::testing::{Tear, TearingStore};
use molt_engine::update::journal::{self, Error, COPY_LEN, FORMAT, REGION_LEN, STATE_CAPACITY};
use molt_engine::update::{
    step, Budget, Cause, CauseKind, DeploymentId, Event, Phase, Plan, State,
};

type Store = TearingStore<REGION_LEN>;

const CRC_AT: usize = COPY_LEN - 4;

/// Every state the journal holds through one install that commits, then one that
/// fails its health check after a restart and rolls back, then the acknowledgement.
fn install_states() -> Vec<State> {
    let plan = Plan {
        before: true,
        after: true,
        health_check: true,
        ..Plan::default()
    };
    let mut states = vec![State::IDLE];
    let mut s = State::IDLE;
    let mut feed = |s: &mut State, event| {
        *s = step(s, event).unwrap().next;
        states.push(*s);
    };
    for (n, target) in [(1u8, Slot::B), (2, Slot::A)] {
        let deployment = DeploymentId([n; 16]);
        let start = Event::Start {
            deployment,
            target,
            budget: Budget::default(),
        };
        feed(&mut s, start);
        feed(&mut s, Event::Fetched(plan));
        while s.phase() != Phase::HealthCheck {
            let phase = s.phase();
            feed(&mut s, Event::Completed(phase));
        }
        if n == 2 {
            feed(&mut s, Event::Restarted { rebooted: true });
            let cause = Cause::new(Phase::HealthCheck, CauseKind::Unhealthy);
            feed(&mut s, Event::Failed(cause));
        }
        while s.phase() != Phase::Done {
            let phase = s.phase();
            feed(&mut s, Event::Completed(phase));
        }
        feed(&mut s, Event::Reported(deployment));
    }
    states
}

fn saved(states: &[State]) -> Store {
    let mut store = Store::default();
    for s in states {
        journal::save(&mut store, s).unwrap();
    }
    store
}

fn load(store: &mut Store) -> Option<State> {
    journal::load(store).unwrap()
}

fn copy_mut(store: &mut Store, copy: usize) -> &mut [u8] {
    &mut store.bytes_mut()[copy * COPY_LEN..(copy + 1) * COPY_LEN]
}

/// Recomputes the CRC of a copy after a test edited it, so that only the edit is under test.
fn reseal(copy: &mut [u8]) {
    let crc = Crc::<u32>::new(&CRC_32_ISCSI).checksum(&copy[..CRC_AT]);
    copy[CRC_AT..COPY_LEN].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn golden_bytes_match_the_documented_table() {
    let state = install_states()[2];
    let mut store = Store::new(0x00);
    journal::save(&mut store, &state).unwrap();
    let copy = &store.bytes()[..COPY_LEN];
    let body = postcard::to_allocvec(&state).unwrap();
    assert_eq!(&copy[0..4], b"MJNL");
    assert_eq!(copy[4], FORMAT);
    assert_eq!(FORMAT, 1);
    assert_eq!(&copy[5..8], [0; 3], "reserved");
    assert_eq!(
        &copy[8..12],
        0u32.to_le_bytes(),
        "the first save's sequence number"
    );
    assert_eq!(usize::from(copy[12]), body.len());
    assert_eq!(&copy[13..16], [0; 3], "reserved");
    assert_eq!(&copy[16..16 + body.len()], &body[..]);
    assert!(
        copy[16 + body.len()..CRC_AT].iter().all(|&b| b == 0),
        "zero tail"
    );
    let crc = Crc::<u32>::new(&CRC_32_ISCSI).checksum(&copy[..CRC_AT]);
    assert_eq!(&copy[CRC_AT..], crc.to_le_bytes());
    assert!(
        store.bytes()[COPY_LEN..].iter().all(|&b| b == 0),
        "copy B untouched"
    );
    assert_eq!((COPY_LEN, REGION_LEN, STATE_CAPACITY), (128, 256, 108));
}

#[test]
fn every_state_of_an_install_round_trips_and_saves_alternate_copies() {
    let states = install_states();
    let mut store = Store::default();
    for (i, s) in states.iter().enumerate() {
        let before = store.bytes().to_owned();
        journal::save(&mut store, s).unwrap();
        assert_eq!(load(&mut store), Some(*s), "state {i}");
        // Exactly one copy changed, the other one each time.
        let changed = |c: usize| {
            before[c * COPY_LEN..(c + 1) * COPY_LEN]
                != store.bytes()[c * COPY_LEN..(c + 1) * COPY_LEN]
        };
        assert_eq!(
            (changed(0), changed(1)),
            (i % 2 == 0, i % 2 == 1),
            "state {i}"
        );
    }
    assert_eq!(store.flushes(), states.len(), "one flush per save");
}

#[test]
fn a_blank_store_is_no_journal_yet() {
    for fill in [0x00, 0xFF] {
        assert_eq!(load(&mut Store::new(fill)), None);
    }
}

#[test]
fn a_damaged_newer_copy_falls_back_to_the_older() {
    let states = install_states();
    let mut store = saved(&states[..3]);
    // The third save went to copy A (saves alternate from A).
    copy_mut(&mut store, 0)[20] ^= 1;
    assert_eq!(load(&mut store), Some(states[1]));
    // The next save overwrites the damaged copy, not the valid one.
    journal::save(&mut store, &states[3]).unwrap();
    assert_eq!(load(&mut store), Some(states[3]));
}

#[test]
fn both_copies_damaged_is_corrupt_not_idle() {
    let mut store = saved(&install_states()[..2]);
    copy_mut(&mut store, 0)[30] ^= 0x80;
    copy_mut(&mut store, 1)[30] ^= 0x80;
    assert_eq!(
        journal::load(&mut store),
        Err(Error::Record(RecordError::Corrupt))
    );
    let mut garbage = Store::new(0xA5);
    assert_eq!(
        journal::load(&mut garbage),
        Err(Error::Record(RecordError::Corrupt))
    );
    // A damaged journal may be written again: the caller decides to start over.
    journal::save(&mut garbage, &State::IDLE).unwrap();
    assert_eq!(load(&mut garbage), Some(State::IDLE));
}

#[test]
fn a_newer_format_is_refused_on_load_and_save_not_skipped() {
    let states = install_states();
    let mut store = saved(&states[..2]);
    // Copy B holds the newest state; a newer molt rewrote it with format 2.
    let copy = copy_mut(&mut store, 1);
    copy[4] = 2;
    reseal(copy);
    assert_eq!(
        journal::load(&mut store),
        Err(Error::Record(RecordError::UnsupportedFormat { format: 2 }))
    );
    assert_eq!(
        journal::save(&mut store, &states[2]),
        Err(Error::Record(RecordError::UnsupportedFormat { format: 2 }))
    );
    assert_eq!(
        journal::load(&mut store),
        Err(Error::Record(RecordError::UnsupportedFormat { format: 2 })),
        "the refused save wrote nothing"
    );
}

#[test]
fn only_the_canonical_encoding_is_valid_even_with_a_matching_crc() {
    let state = install_states()[4];
    for at in [5, 13, 15, 110] {
        let mut store = saved(&[state]);
        let copy = copy_mut(&mut store, 0);
        copy[at] = 1;
        reseal(copy);
        assert_eq!(
            journal::load(&mut store),
            Ok(None),
            "byte {at}: copy B is blank"
        );
    }
    // A length that runs into the CRC is refused, not read past.
    let mut store = saved(&[state]);
    let copy = copy_mut(&mut store, 0);
    copy[12] = 200;
    reseal(copy);
    assert_eq!(journal::load(&mut store), Ok(None));
}

/// The previous agent's layout: magic `MJRN`, sequence number at 4, length at 8,
/// the state at 10, its CRC right after; no format byte.
fn previous_layout(state: &State, seq: u32) -> [u8; COPY_LEN] {
    let body = postcard::to_allocvec(state).unwrap();
    let mut copy = [0u8; COPY_LEN];
    copy[..4].copy_from_slice(b"MJRN");
    copy[4..8].copy_from_slice(&seq.to_le_bytes());
    copy[8..10].copy_from_slice(&(body.len() as u16).to_le_bytes());
    copy[10..10 + body.len()].copy_from_slice(&body);
    let crc = Crc::<u32>::new(&CRC_32_ISCSI).checksum(&copy[..10 + body.len()]);
    copy[10 + body.len()..14 + body.len()].copy_from_slice(&crc.to_le_bytes());
    copy
}

#[test]
fn the_previous_layout_is_never_read_as_a_state() {
    // The engine does not misread it; the agent recognises and migrates it.
    let state = install_states()[3];
    let mut one = Store::new(0x00);
    one.bytes_mut()[..COPY_LEN].copy_from_slice(&previous_layout(&state, 1));
    assert_eq!(
        journal::load(&mut one),
        Ok(None),
        "beside a blank copy: no journal yet"
    );
    let mut two = one.clone();
    two.bytes_mut()[COPY_LEN..].copy_from_slice(&previous_layout(&State::IDLE, 2));
    assert_eq!(
        journal::load(&mut two),
        Err(Error::Record(RecordError::Corrupt))
    );
}

#[test]
fn each_failing_operation_is_named() {
    let mut store = saved(&[State::IDLE]);
    store.cut_after(0, Tear::Keep);
    assert!(matches!(
        journal::save(&mut store, &State::IDLE),
        Err(Error::Record(RecordError::Store {
            op: StoreOp::Write,
            ..
        }))
    ));
    assert!(matches!(
        journal::load(&mut store),
        Err(Error::Record(RecordError::Store {
            op: StoreOp::Read,
            ..
        }))
    ));
    let mut small = TearingStore::<COPY_LEN>::default();
    assert!(matches!(
        journal::load(&mut small),
        Err(Error::Record(RecordError::Store {
            op: StoreOp::Read,
            ..
        }))
    ));
}

mod power_cut {
    use super::*;

    /// Saves `new` over `base` with the power cut after every possible number of
    /// bytes, in both tear modes, and checks that the journal reads back as `old`
    /// or `new` and that a retried save goes through.
    fn sweep(base: &Store, old: Option<State>, new: &State) {
        let mut probe = base.clone();
        journal::save(&mut probe, new).unwrap();
        let bytes = probe.written() - base.written();
        assert_eq!(bytes, COPY_LEN);
        for k in 0..=bytes {
            for tear in [Tear::Keep, Tear::Garbage { seed: k as u64 }] {
                let mut store = base.clone();
                store.cut_after(k, tear);
                assert!(
                    journal::save(&mut store, new).is_err(),
                    "k={k}: the cut hits this save"
                );
                store.reboot();
                let got = load(&mut store);
                assert!(
                    got == old || got == Some(*new),
                    "k={k} {tear:?}: got {got:?}"
                );
                if k < bytes {
                    assert_eq!(got, old, "k={k} {tear:?}: a torn copy never validates");
                }
                journal::save(&mut store, new).unwrap();
                assert_eq!(load(&mut store), Some(*new), "k={k} {tear:?}: retry");
            }
        }
    }

    #[test]
    fn every_cut_of_every_save_of_an_install_leaves_old_or_new() {
        let states = install_states();
        for fill in [0xFF, 0x00] {
            let mut base = Store::new(fill);
            let mut old = None;
            for new in &states {
                sweep(&base, old, new);
                journal::save(&mut base, new).unwrap();
                old = Some(*new);
            }
        }
    }

    #[test]
    fn a_cut_retry_that_is_cut_again_still_leaves_old_or_new() {
        let states = install_states();
        let (old, new) = (states[3], states[4]);
        let base = saved(&states[..4]);
        for k1 in 0..=COPY_LEN {
            for k2 in 0..=COPY_LEN {
                let mut store = base.clone();
                store.cut_after(k1, Tear::Garbage { seed: k1 as u64 });
                assert!(journal::save(&mut store, &new).is_err());
                store.reboot();
                store.cut_after(k2, Tear::Garbage { seed: !(k2 as u64) });
                assert!(journal::save(&mut store, &new).is_err());
                store.reboot();
                let got = load(&mut store);
                assert!(got == Some(old) || got == Some(new), "k1={k1} k2={k2}");
            }
        }
    }
}
