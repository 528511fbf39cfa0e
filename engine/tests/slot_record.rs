//! The A/B slot record: its byte layout, damage to either copy, power cuts at every byte, random operations against a reference model, and the trial and floor rules.

use crc::{Crc, CRC_32_ISCSI};
use molt_engine::slot::{
    Boot, Error, Loaded, RecordError, Slot, SlotRecord, SlotStore, Status, StoreErrorKind, StoreOp,
    FORMAT, RECORD_LEN, REGION_LEN, VERSION_CAPACITY,
};
use molt_engine::testing::{RecordStore, Tear, TearingStore};
use proptest::prelude::*;

fn digest(n: u8) -> [u8; 32] {
    [n; 32]
}

/// A new device: release 10 in slot A.
fn factory() -> SlotRecord {
    SlotRecord::new(Slot::A, "1.0.0", 10, digest(1)).unwrap()
}

fn load(store: &mut RecordStore) -> Loaded {
    SlotRecord::load(store).unwrap()
}

fn found(store: &mut RecordStore) -> SlotRecord {
    load(store).into_record().expect("a record")
}

/// A store holding `records` saved one after the other, on erased flash.
fn saved(records: &[SlotRecord]) -> RecordStore {
    let mut store = RecordStore::default();
    for r in records {
        r.save(&mut store).unwrap();
    }
    store
}

/// Every state a device passes through in two updates, one confirmed and one
/// rolled back by its trial counter, then an abandoned staging: each is what
/// the updater or the boot decision would save.
fn lifecycle() -> Vec<SlotRecord> {
    let mut r = factory();
    let mut states = vec![r.clone()];
    let mut push = |r: &SlotRecord| states.push(r.clone());
    r.begin_staging("1.1.0", 11, digest(2), false).unwrap();
    push(&r);
    r.mark_trial(3).unwrap();
    push(&r);
    assert!(r.on_boot().needs_save());
    push(&r);
    r.confirm().unwrap();
    push(&r);
    r.begin_staging("1.2.0", 12, digest(3), false).unwrap();
    push(&r);
    r.mark_trial(2).unwrap();
    push(&r);
    for _ in 0..3 {
        assert!(r.on_boot().needs_save());
        push(&r);
    }
    r.begin_staging(
        "1.2.1-with-a-much-longer-version+build.7",
        13,
        digest(4),
        false,
    )
    .unwrap();
    push(&r);
    r.cancel_staging().unwrap();
    push(&r);
    states
}

const CRC_AT: usize = RECORD_LEN - 4;

/// Recomputes the CRC of a copy after a test edited it, so that only the edit is under test.
fn reseal(copy: &mut [u8]) {
    let crc = Crc::<u32>::new(&CRC_32_ISCSI).checksum(&copy[..CRC_AT]);
    copy[CRC_AT..RECORD_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Writes `bytes` at `at` in copy `copy` of `store` and reseals the copy.
fn set_resealed(store: &mut RecordStore, copy: usize, at: usize, bytes: &[u8]) {
    let c = copy_mut(store, copy);
    c[at..at + bytes.len()].copy_from_slice(bytes);
    reseal(c);
}

/// Gives copy `copy` of `store` the sequence number `seq` (bytes 8..12), resealed.
fn set_seq(store: &mut RecordStore, copy: usize, seq: u32) {
    set_resealed(store, copy, 8, &seq.to_le_bytes());
}

fn copy_mut(store: &mut RecordStore, copy: usize) -> &mut [u8] {
    &mut store.bytes_mut()[copy * RECORD_LEN..(copy + 1) * RECORD_LEN]
}

fn seq_of(store: &RecordStore, copy: usize) -> u32 {
    let at = copy * RECORD_LEN + 8;
    u32::from_le_bytes(store.bytes()[at..at + 4].try_into().unwrap())
}

mod layout {
    use super::*;

    #[test]
    fn golden_bytes_match_the_documented_table() {
        let mut store = RecordStore::default();
        let mut r = factory();
        r.begin_staging("1.1.0", 0x0102_0304_0506_0708, digest(0xAB), true)
            .unwrap();
        r.mark_trial(5).unwrap();
        r.save(&mut store).unwrap();
        let b = store.bytes();

        assert_eq!(&b[0..4], b"MSLT", "magic");
        assert_eq!(b[4], FORMAT, "format");
        assert_eq!(b[4], 1);
        assert_eq!(b[5], 1, "active slot B");
        assert_eq!(b[6], 5, "trial boots left");
        assert_eq!(b[7], 0, "reserved");
        assert_eq!(&b[8..12], &0u32.to_le_bytes(), "first sequence number");
        assert_eq!(&b[12..16], &[0; 4], "reserved");
        assert_eq!(&b[16..24], &10u64.to_le_bytes(), "floor");

        // Slot A: the factory image, Good.
        let a = &b[24..136];
        assert_eq!(a[0], 3, "Good");
        assert_eq!(a[1], 5, "version length");
        assert_eq!(&a[2..8], &[0; 6]);
        assert_eq!(&a[8..16], &10u64.to_le_bytes());
        assert_eq!(&a[16..48], &digest(1));
        assert_eq!(&a[48..53], b"1.0.0");
        assert!(a[53..112].iter().all(|&x| x == 0), "version padding");

        // Slot B: the update, on trial.
        let s = &b[136..248];
        assert_eq!(s[0], 2, "Trial");
        assert_eq!(s[1], 5);
        assert_eq!(
            &s[8..16],
            &[8, 7, 6, 5, 4, 3, 2, 1],
            "little-endian release"
        );
        assert_eq!(&s[16..48], &digest(0xAB));
        assert_eq!(&s[48..53], b"1.1.0");

        assert_eq!(&b[248..252], &[0; 4], "reserved");
        let crc = Crc::<u32>::new(&CRC_32_ISCSI).checksum(&b[..252]);
        assert_eq!(&b[252..256], &crc.to_le_bytes(), "CRC-32C of bytes 0..252");
        assert!(
            b[RECORD_LEN..REGION_LEN].iter().all(|&x| x == 0xFF),
            "copy B untouched"
        );
    }

    #[test]
    fn crc_is_crc32c() {
        // The catalogue's check value of CRC-32C, so the table's name is right.
        assert_eq!(
            Crc::<u32>::new(&CRC_32_ISCSI).checksum(b"123456789"),
            0xE306_9283
        );
    }

    #[test]
    fn saves_alternate_copies_with_rising_sequence_numbers() {
        let states = lifecycle();
        let mut store = RecordStore::default();
        for (i, r) in states.iter().take(5).enumerate() {
            let before = *store.bytes();
            r.save(&mut store).unwrap();
            let copy = i % 2;
            assert_eq!(seq_of(&store, copy), i as u32);
            let other = 1 - copy;
            assert_eq!(
                &store.bytes()[other * RECORD_LEN..(other + 1) * RECORD_LEN],
                &before[other * RECORD_LEN..(other + 1) * RECORD_LEN],
                "a save never touches the other copy"
            );
        }
    }

    #[test]
    fn a_save_writes_one_copy_and_flushes_once() {
        let mut store = saved(&[factory()]);
        let (written, flushes) = (store.written(), store.flushes());
        lifecycle()[1].save(&mut store).unwrap();
        assert_eq!(store.written() - written, RECORD_LEN);
        assert_eq!(store.flushes() - flushes, 1);
    }

    #[test]
    fn every_state_round_trips() {
        for fill in [0x00, 0xFF] {
            let mut store = RecordStore::new(fill);
            assert_eq!(load(&mut store), Loaded::Fresh);
            for r in lifecycle() {
                r.save(&mut store).unwrap();
                assert_eq!(found(&mut store), r);
            }
        }
    }

    #[test]
    fn a_version_of_full_capacity_round_trips_and_a_longer_one_is_refused() {
        let full = "v".repeat(VERSION_CAPACITY);
        let r = SlotRecord::new(Slot::B, &full, 1, digest(9)).unwrap();
        let mut store = saved(std::slice::from_ref(&r));
        assert_eq!(found(&mut store), r);
        assert_eq!(r.slot(Slot::B).version.as_str(), full);

        let long = "v".repeat(VERSION_CAPACITY + 1);
        assert_eq!(
            SlotRecord::new(Slot::A, &long, 1, digest(9)),
            Err(Error::VersionTooLong { len: 65 })
        );
        let mut r2 = r.clone();
        assert_eq!(
            r2.begin_staging(&long, 2, digest(2), false),
            Err(Error::VersionTooLong { len: 65 })
        );
        assert_eq!(r2, r, "unchanged on refusal");
    }

    #[test]
    fn only_the_canonical_encoding_is_valid_even_with_a_matching_crc() {
        // Each edit keeps a correct CRC; each makes the copy something the encoder never writes.
        let edits: &[(&str, usize, u8)] = &[
            ("reserved byte 7", 7, 1),
            ("reserved byte 12", 12, 1),
            ("reserved byte 250", 250, 1),
            ("slot reserved byte", 24 + 3, 1),
            ("version padding", 24 + 48 + 10, b'x'),
            ("active slot 2", 5, 2),
            ("status 5", 24, 5),
            ("version length 65", 24 + 1, 65),
            ("invalid UTF-8", 24 + 48, 0xC3),
        ];
        let old = factory();
        let new = lifecycle()[1].clone();
        for &(what, at, value) in edits {
            let mut store = saved(&[old.clone(), new.clone()]);
            set_resealed(&mut store, 1, at, &[value]);
            assert_eq!(
                found(&mut store),
                old,
                "{what}: the newer copy must be refused"
            );
        }
    }
}

mod copies {
    use super::*;

    fn two_saves() -> (SlotRecord, SlotRecord, RecordStore) {
        let old = factory();
        let new = lifecycle()[1].clone();
        // The first save lands in copy A, the second in copy B.
        let store = saved(&[old.clone(), new.clone()]);
        (old, new, store)
    }

    #[test]
    fn a_damaged_newer_copy_falls_back_to_the_older() {
        let (old, _, mut store) = two_saves();
        store.bytes_mut()[RECORD_LEN + 100] ^= 0x01;
        assert_eq!(found(&mut store), old);
    }

    #[test]
    fn a_damaged_older_copy_is_ignored() {
        let (_, new, mut store) = two_saves();
        store.bytes_mut()[100] ^= 0x01;
        assert_eq!(found(&mut store), new);
    }

    #[test]
    fn every_single_bit_flip_leaves_the_other_copy_in_charge() {
        let (old, new, store) = two_saves();
        for at in 0..REGION_LEN {
            for bit in 0..8 {
                let mut s = store.clone();
                s.bytes_mut()[at] ^= 1 << bit;
                let expect = if at < RECORD_LEN { &new } else { &old };
                assert_eq!(&found(&mut s), expect, "byte {at} bit {bit}");
            }
        }
    }

    #[test]
    fn both_copies_damaged_is_corrupt_not_fresh() {
        let (_, new, mut store) = two_saves();
        store.bytes_mut()[3] ^= 0x10;
        store.bytes_mut()[RECORD_LEN + 200] ^= 0x10;
        assert_eq!(
            SlotRecord::load(&mut store),
            Err(Error::Record(RecordError::Corrupt))
        );
        // Saving over a corrupt region is how a device is provisioned again.
        new.save(&mut store).unwrap();
        assert_eq!(found(&mut store), new);
    }

    #[test]
    fn random_bytes_are_corrupt() {
        let mut store = RecordStore::default();
        for (i, b) in store.bytes_mut().iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(7);
        }
        assert_eq!(
            SlotRecord::load(&mut store),
            Err(Error::Record(RecordError::Corrupt))
        );
    }

    #[test]
    fn blank_copies_are_a_fresh_device() {
        for (a, b) in [(0x00, 0x00), (0xFF, 0xFF), (0x00, 0xFF), (0xFF, 0x00)] {
            let mut store = RecordStore::default();
            store.bytes_mut()[..RECORD_LEN].fill(a);
            store.bytes_mut()[RECORD_LEN..].fill(b);
            assert_eq!(load(&mut store), Loaded::Fresh, "{a:#x}/{b:#x}");
        }
    }

    #[test]
    fn a_blank_copy_beside_a_damaged_one_is_fresh_and_stays_blank_on_save() {
        // This is what a torn first save leaves behind.
        let mut store = RecordStore::default();
        store.bytes_mut()[RECORD_LEN..RECORD_LEN + 40].fill(0x5A);
        assert_eq!(load(&mut store), Loaded::Fresh);
        let r = factory();
        r.save(&mut store).unwrap();
        assert!(
            store.bytes()[..RECORD_LEN].iter().all(|&b| b == 0xFF),
            "the save wrote the damaged copy and kept the blank one"
        );
        assert_eq!(found(&mut store), r);
    }

    #[test]
    fn sequence_numbers_compare_across_the_wrap() {
        let (old, new, mut store) = two_saves();
        // Copy A holds `old`, copy B holds `new`: make B's number wrap past A's.
        set_seq(&mut store, 0, u32::MAX);
        set_seq(&mut store, 1, 0);
        assert_eq!(found(&mut store), new, "0 comes after u32::MAX");

        // The next save overwrites copy A with number 1.
        old.save(&mut store).unwrap();
        assert_eq!(seq_of(&store, 0), 1);
        assert_eq!(found(&mut store), old);

        // The other way round: u32::MAX in copy B is older than 0 in copy A.
        let mut store = saved(&[old.clone(), new.clone()]);
        set_seq(&mut store, 0, 0);
        set_seq(&mut store, 1, u32::MAX);
        assert_eq!(found(&mut store), old, "u32::MAX comes before 0");
    }

    #[test]
    fn equal_sequence_numbers_pick_copy_a() {
        let (old, _, mut store) = two_saves();
        set_seq(&mut store, 1, 0);
        assert_eq!(found(&mut store), old);
    }

    #[test]
    fn a_newer_unknown_format_is_refused_not_skipped() {
        let (old, _, mut store) = two_saves();
        set_resealed(&mut store, 1, 4, &[2]); // format 2
        assert_eq!(
            SlotRecord::load(&mut store),
            Err(Error::Record(RecordError::UnsupportedFormat { format: 2 }))
        );
        let before = *store.bytes();
        assert_eq!(
            old.save(&mut store),
            Err(Error::Record(RecordError::UnsupportedFormat { format: 2 }))
        );
        assert_eq!(store.bytes(), &before, "nothing written");
    }

    #[test]
    fn an_older_unknown_format_is_superseded() {
        let (_, new, mut store) = two_saves();
        set_resealed(&mut store, 0, 4, &[0]); // format 0
        assert_eq!(found(&mut store), new);
        factory().save(&mut store).unwrap();
        assert_eq!(
            store.bytes()[4],
            FORMAT,
            "the unknown copy was the one overwritten"
        );
        assert_eq!(found(&mut store), factory());
    }
}

mod store_errors {
    use super::*;

    #[test]
    fn a_store_smaller_than_the_region_is_out_of_bounds() {
        let mut small = TearingStore::<{ RECORD_LEN + 10 }>::default();
        let err = Error::Record(RecordError::Store {
            op: StoreOp::Read,
            kind: StoreErrorKind::OutOfBounds,
        });
        assert_eq!(SlotRecord::load(&mut small), Err(err));
        assert_eq!(factory().save(&mut small), Err(err));
    }

    #[test]
    fn each_failing_operation_is_named() {
        let r = factory();
        let mut store = RecordStore::default();
        store.cut_after(0, Tear::Keep);
        assert_eq!(
            r.save(&mut store),
            Err(Error::Record(RecordError::Store {
                op: StoreOp::Write,
                kind: StoreErrorKind::Io
            }))
        );
        assert_eq!(
            SlotRecord::load(&mut store),
            Err(Error::Record(RecordError::Store {
                op: StoreOp::Read,
                kind: StoreErrorKind::Io
            })),
            "no power until reboot"
        );

        let mut store = RecordStore::default();
        store.cut_after(RECORD_LEN, Tear::Keep);
        assert_eq!(
            r.save(&mut store),
            Err(Error::Record(RecordError::Store {
                op: StoreOp::Flush,
                kind: StoreErrorKind::Io
            }))
        );
    }

    #[test]
    fn a_kind_is_its_own_store_error() {
        /// A store whose driver reports bare kinds, and whose flush always fails.
        struct Flaky([u8; REGION_LEN]);
        impl SlotStore for Flaky {
            type Error = StoreErrorKind;
            fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), StoreErrorKind> {
                let at = offset as usize;
                buf.copy_from_slice(&self.0[at..at + buf.len()]);
                Ok(())
            }
            fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), StoreErrorKind> {
                let at = offset as usize;
                self.0[at..at + data.len()].copy_from_slice(data);
                Ok(())
            }
            fn flush(&mut self) -> Result<(), StoreErrorKind> {
                Err(StoreErrorKind::Other)
            }
        }
        let mut flaky = Flaky([0; REGION_LEN]);
        assert_eq!(
            factory().save(&mut flaky),
            Err(Error::Record(RecordError::Store {
                op: StoreOp::Flush,
                kind: StoreErrorKind::Other
            }))
        );
        // Through a `&mut` borrow as well.
        let mut borrowed = &mut flaky;
        assert_eq!(
            SlotRecord::load(&mut borrowed),
            Ok(Loaded::Found(factory()))
        );
    }
}

mod tearing_store {
    //! The test double itself: the cut lands exactly where it was armed.

    use super::*;
    use molt_engine::testing::TearingError;

    #[test]
    fn a_torn_write_lands_its_prefix_and_the_power_stays_off_until_reboot() {
        let mut s = TearingStore::<16>::new(0xFF);
        s.cut_after(4, Tear::Keep);
        assert_eq!(s.write(2, &[1; 10]), Err(TearingError::PowerCut));
        assert_eq!(
            &s.bytes()[..],
            &[0xFF, 0xFF, 1, 1, 1, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        assert_eq!(s.written(), 4);
        let mut buf = [0; 2];
        assert_eq!(s.read(0, &mut buf), Err(TearingError::PowerCut));
        assert_eq!(s.write(0, &[2]), Err(TearingError::PowerCut));
        assert_eq!(s.flush(), Err(TearingError::PowerCut));
        s.reboot();
        assert_eq!(s.write(0, &[2; 16]), Ok(()), "no cut armed after a reboot");
        assert_eq!(s.flush(), Ok(()));
    }

    #[test]
    fn an_exact_budget_cuts_the_next_operation() {
        let mut s = TearingStore::<16>::new(0);
        s.cut_after(8, Tear::Keep);
        assert_eq!(s.write(0, &[1; 8]), Ok(()));
        assert_eq!(s.flush(), Err(TearingError::PowerCut));
        assert!(s.is_cut());
    }

    #[test]
    fn garbage_replaces_the_torn_bytes_only() {
        let mut s = TearingStore::<64>::new(0);
        s.cut_after(10, Tear::Garbage { seed: 1 });
        assert!(s.write(0, &[7; 40]).is_err());
        assert!(s.bytes()[..10].iter().all(|&b| b == 7));
        assert!(
            s.bytes()[10..40].iter().any(|&b| b != 0 && b != 7),
            "torn bytes are garbage"
        );
        assert!(
            s.bytes()[40..].iter().all(|&b| b == 0),
            "bytes beyond the write are untouched"
        );
    }

    #[test]
    fn accesses_past_the_end_fail_without_writing() {
        let mut s = TearingStore::<16>::new(0);
        assert_eq!(s.write(10, &[1; 7]), Err(TearingError::OutOfBounds));
        assert_eq!(
            s.read(u32::MAX, &mut [0; 1]),
            Err(TearingError::OutOfBounds)
        );
        assert!(s.bytes().iter().all(|&b| b == 0));
    }
}

mod power_cut {
    use super::*;

    fn tears(k: usize) -> [Tear; 2] {
        [Tear::Keep, Tear::Garbage { seed: k as u64 }]
    }

    /// Saves `new` over `base` with the power cut after every possible number of
    /// bytes, and checks that the record reads back as `old` or `new` and that
    /// the device carries on from there.
    fn sweep(base: &RecordStore, old: &Loaded, new: &SlotRecord) {
        // Measure the save instead of assuming its length.
        let mut probe = base.clone();
        new.save(&mut probe).unwrap();
        let bytes = probe.written() - base.written();
        assert_eq!(bytes, RECORD_LEN);

        let new_loaded = Loaded::Found(new.clone());
        for k in 0..=bytes {
            for tear in tears(k) {
                let mut store = base.clone();
                store.cut_after(k, tear);
                assert!(
                    new.save(&mut store).is_err(),
                    "k={k}: the cut must hit this save"
                );
                assert!(store.is_cut());
                store.reboot();
                let got = load(&mut store);
                assert!(
                    got == *old || got == new_loaded,
                    "k={k} {tear:?}: got {got:?}"
                );
                if k < bytes {
                    // A torn copy never validates, so the old record is still in charge.
                    assert_eq!(got, *old, "k={k} {tear:?}");
                }
                // The device retries and carries on.
                new.save(&mut store).unwrap();
                assert_eq!(found(&mut store), *new, "k={k} {tear:?}: retry");
            }
        }
    }

    #[test]
    fn every_cut_of_every_save_in_a_lifecycle_leaves_old_or_new() {
        let states = lifecycle();
        for fill in [0xFF, 0x00] {
            let mut base = RecordStore::new(fill);
            let mut old = Loaded::Fresh;
            for new in &states {
                sweep(&base, &old, new);
                new.save(&mut base).unwrap();
                old = Loaded::Found(new.clone());
            }
        }
    }

    #[test]
    fn a_cut_retry_that_is_cut_again_still_leaves_old_or_new() {
        // Every pair of cut points over one transition: the first save is cut at
        // `k1`, the retry after the reboot at `k2`.
        let states = lifecycle();
        let (old, new) = (&states[3], &states[4]);
        let base = saved(&states[..4]);
        for k1 in 0..=RECORD_LEN {
            for k2 in 0..=RECORD_LEN {
                let mut store = base.clone();
                store.cut_after(k1, Tear::Garbage { seed: k1 as u64 });
                assert!(new.save(&mut store).is_err());
                store.reboot();
                store.cut_after(k2, Tear::Garbage { seed: !(k2 as u64) });
                assert!(new.save(&mut store).is_err());
                store.reboot();
                let got = found(&mut store);
                assert!(got == *old || got == *new, "k1={k1} k2={k2}");
            }
        }
    }

    #[test]
    fn a_cut_first_save_reads_as_fresh() {
        for fill in [0xFF, 0x00] {
            for k in 0..RECORD_LEN {
                for tear in tears(k) {
                    let mut store = RecordStore::new(fill);
                    store.cut_after(k, tear);
                    assert!(factory().save(&mut store).is_err());
                    store.reboot();
                    assert_eq!(load(&mut store), Loaded::Fresh, "k={k} {tear:?}");
                }
            }
        }
    }
}

mod model {
    //! Random operations with random power cuts, checked against the simplest
    //! possible model: the last record known to be durable.

    use super::*;

    #[derive(Clone, Debug)]
    enum Op {
        Stage { release: u64, allow_downgrade: bool },
        Cancel,
        Trial(u8),
        Confirm,
        Reject,
        Boot,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (5u64..20, any::<bool>()).prop_map(|(release, allow_downgrade)| Op::Stage {
                release,
                allow_downgrade
            }),
            1 => Just(Op::Cancel),
            3 => (0u8..4).prop_map(Op::Trial),
            2 => Just(Op::Confirm),
            1 => Just(Op::Reject),
            4 => Just(Op::Boot),
        ]
    }

    fn cut() -> impl Strategy<Value = Option<(usize, Tear)>> {
        prop::option::weighted(
            0.4,
            (
                0..=RECORD_LEN,
                prop_oneof![
                    Just(Tear::Keep),
                    any::<u64>().prop_map(|seed| Tear::Garbage { seed })
                ],
            ),
        )
    }

    /// Applies `op`; `Ok(true)` when the record changed and should be saved.
    fn apply(r: &mut SlotRecord, op: &Op, step: usize) -> Result<bool, Error> {
        match *op {
            Op::Stage {
                release,
                allow_downgrade,
            } => {
                let version = format!("1.{release}.{step}");
                r.begin_staging(&version, release, digest(step as u8), allow_downgrade)
                    .map(|_| true)
            }
            Op::Cancel => r.cancel_staging().map(|_| true),
            Op::Trial(n) => r.mark_trial(n).map(|_| true),
            Op::Confirm => r.confirm().map(|_| true),
            Op::Reject => r.reject().map(|_| true),
            Op::Boot => Ok(r.on_boot().needs_save()),
        }
    }

    /// Properties that every durable record of a device provisioned with [`factory`] keeps.
    fn check_invariants(r: &SlotRecord, previous_floor: u64) {
        assert!(r.floor() >= previous_floor, "the floor never falls");
        let active = r.slot(r.active()).status;
        assert!(
            matches!(active, Status::Good | Status::Trial),
            "the active slot is bootable: {r:?}"
        );
        assert_ne!(
            r.slot(r.inactive()).status,
            Status::Trial,
            "one trial at a time"
        );
        if active == Status::Trial {
            assert_eq!(
                r.slot(r.inactive()).status,
                Status::Good,
                "a trial always has a Good fallback: {r:?}"
            );
        } else {
            assert_eq!(r.trials_left(), 0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_operations_and_cuts_agree_with_the_model(
            fill in prop_oneof![Just(0x00u8), Just(0xFFu8)],
            steps in prop::collection::vec((op(), cut()), 1..40),
        ) {
            let mut store = RecordStore::new(fill);
            // The model: the last record known to be durable (None: a fresh device).
            let mut durable: Option<SlotRecord> = None;
            let mut floor = 0;
            for (step, (op, cut)) in steps.iter().enumerate() {
                // Each step is one boot of the device: load, decide, save.
                let loaded = load(&mut store).into_record();
                prop_assert_eq!(&loaded, &durable);
                let next = match loaded {
                    None => factory(),
                    Some(mut r) => {
                        let before = r.clone();
                        match apply(&mut r, op, step) {
                            Ok(true) => {}
                            Ok(false) => continue,
                            Err(_) => {
                                prop_assert_eq!(&r, &before, "a refused operation changes nothing");
                                continue;
                            }
                        }
                        r
                    }
                };
                if let Some((k, tear)) = *cut {
                    store.cut_after(k, tear);
                }
                let result = next.save(&mut store);
                if store.is_cut() {
                    prop_assert!(result.is_err());
                    store.reboot();
                    let got = load(&mut store).into_record();
                    prop_assert!(
                        got == durable || got.as_ref() == Some(&next),
                        "step {}: {:?} is neither old nor new", step, got
                    );
                    durable = got;
                } else {
                    prop_assert!(result.is_ok());
                    // An armed cut that this save did not reach is disarmed.
                    store.reboot();
                    durable = Some(next.clone());
                }
                if let Some(r) = &durable {
                    check_invariants(r, floor);
                    floor = r.floor();
                }
            }
        }
    }
}

mod logic {
    use super::*;

    /// A device on trial of release 11 in slot B with `boots` boots, slot A Good at release 10.
    fn on_trial(boots: u8) -> SlotRecord {
        let mut r = factory();
        assert_eq!(r.begin_staging("1.1.0", 11, digest(2), false), Ok(Slot::B));
        assert_eq!(r.slot(Slot::B).status, Status::Staging);
        assert_eq!(r.active(), Slot::A, "staging does not switch");
        assert_eq!(r.mark_trial(boots), Ok(Slot::B));
        r
    }

    #[test]
    fn a_new_device_runs_its_factory_image() {
        let mut r = factory();
        assert_eq!(r.active(), Slot::A);
        assert_eq!(r.inactive(), Slot::B);
        assert_eq!(r.slot(Slot::A).status, Status::Good);
        assert_eq!(r.slot(Slot::B).status, Status::Empty);
        assert_eq!(r.floor(), 10);
        assert_eq!(r.on_boot(), Boot::Good(Slot::A));
        assert!(!Boot::Good(Slot::A).needs_save());
    }

    #[test]
    fn a_trial_counts_its_boots_then_falls_back_and_is_marked_bad() {
        let mut r = on_trial(2);
        assert_eq!(r.active(), Slot::B);
        assert_eq!(r.trials_left(), 2);
        assert_eq!(
            r.on_boot(),
            Boot::Trial {
                slot: Slot::B,
                left: 1
            }
        );
        assert_eq!(
            r.on_boot(),
            Boot::Trial {
                slot: Slot::B,
                left: 0
            }
        );
        let boot = r.on_boot();
        assert_eq!(
            boot,
            Boot::Fallback {
                from: Slot::B,
                to: Slot::A
            }
        );
        assert_eq!(boot.slot(), Slot::A);
        assert!(boot.needs_save());
        assert_eq!(r.active(), Slot::A);
        assert_eq!(r.slot(Slot::B).status, Status::Bad);
        assert_eq!(r.slot(Slot::B).release, 11, "kept for the report");
        assert_eq!(r.trials_left(), 0);
        assert_eq!(r.floor(), 10, "a failed release never raises the floor");
        assert_eq!(r.on_boot(), Boot::Good(Slot::A));
        assert_eq!(r.confirm(), Ok(()), "A is already Good");
    }

    #[test]
    fn confirm_makes_the_trial_good_and_raises_the_floor() {
        let mut r = on_trial(3);
        r.on_boot();
        assert_eq!(r.confirm(), Ok(()));
        assert_eq!(r.slot(Slot::B).status, Status::Good);
        assert_eq!(
            r.slot(Slot::A).status,
            Status::Good,
            "the old slot stays usable"
        );
        assert_eq!(r.floor(), 11);
        assert_eq!(r.trials_left(), 0);
        assert_eq!(r.on_boot(), Boot::Good(Slot::B));
        let before = r.clone();
        assert_eq!(r.confirm(), Ok(()), "confirming twice is harmless");
        assert_eq!(r, before);
    }

    #[test]
    fn a_downgrade_is_refused_unless_allowed() {
        let mut r = on_trial(1);
        r.confirm().unwrap();
        assert_eq!(r.floor(), 11);
        assert!(!r.accepts(10, false));
        assert!(r.accepts(11, false), "the same release may be reinstalled");
        assert!(r.accepts(12, false));
        assert!(r.accepts(3, true));

        let before = r.clone();
        assert_eq!(
            r.begin_staging("1.0.1", 10, digest(5), false),
            Err(Error::Downgrade {
                release: 10,
                floor: 11
            })
        );
        assert_eq!(r, before, "unchanged on refusal");

        assert_eq!(r.begin_staging("1.0.1", 10, digest(5), true), Ok(Slot::A));
        r.mark_trial(1).unwrap();
        r.confirm().unwrap();
        assert_eq!(
            r.floor(),
            11,
            "an allowed downgrade does not lower the floor"
        );
        assert!(!r.accepts(10, false));
    }

    #[test]
    fn staging_may_not_overwrite_the_fallback_of_a_running_trial() {
        let mut r = on_trial(3);
        let before = r.clone();
        assert_eq!(
            r.begin_staging("1.2.0", 12, digest(3), false),
            Err(Error::TrialInProgress)
        );
        assert_eq!(r, before);
        r.confirm().unwrap();
        assert_eq!(r.begin_staging("1.2.0", 12, digest(3), false), Ok(Slot::A));
    }

    #[test]
    fn an_interrupted_staging_may_restart_or_be_cancelled() {
        let mut r = factory();
        r.begin_staging("1.1.0", 11, digest(2), false).unwrap();
        assert_eq!(r.begin_staging("1.1.1", 12, digest(3), false), Ok(Slot::B));
        assert_eq!(r.slot(Slot::B).version.as_str(), "1.1.1");
        assert_eq!(r.cancel_staging(), Ok(Slot::B));
        assert_eq!(r.slot(Slot::B), &molt_engine::slot::SlotInfo::EMPTY);
        assert_eq!(r.cancel_staging(), Err(Error::NotStaged));
        assert_eq!(r, factory());
    }

    #[test]
    fn a_trial_needs_a_staged_slot_and_at_least_one_boot() {
        let mut r = factory();
        assert_eq!(r.mark_trial(3), Err(Error::NotStaged));
        r.begin_staging("1.1.0", 11, digest(2), false).unwrap();
        let before = r.clone();
        assert_eq!(r.mark_trial(0), Err(Error::ZeroTrials));
        assert_eq!(r, before);
    }

    #[test]
    fn reject_rolls_back_at_once() {
        let mut r = on_trial(3);
        assert_eq!(r.reject(), Ok(Slot::A));
        assert_eq!(r.active(), Slot::A);
        assert_eq!(r.slot(Slot::B).status, Status::Bad);
        assert_eq!(r.floor(), 10);
        assert_eq!(r.reject(), Err(Error::NotOnTrial));
        assert_eq!(r.confirm(), Ok(()), "A is Good");
        // A Bad slot can be staged again.
        assert_eq!(r.begin_staging("1.1.1", 12, digest(3), false), Ok(Slot::B));
    }

    #[test]
    fn confirm_refuses_a_slot_that_is_neither_trial_nor_good() {
        let mut r = crafted(&[(A_STATUS, 4)]); // Slot A (active) Bad, B Empty.
        assert_eq!(r.confirm(), Err(Error::NotOnTrial));
        assert_eq!(r.reject(), Err(Error::NotOnTrial));
    }

    // Bytes of a copy that `crafted` sets (see the layout test); statuses are
    // 0 Empty, 2 Trial, 3 Good, 4 Bad.
    const ACTIVE: usize = 5;
    const TRIALS_LEFT: usize = 6;
    const A_STATUS: usize = 24;
    const B_STATUS: usize = 136;

    /// A record that the API never produces, written by setting bytes `(at, value)`
    /// of the factory record's saved copy; the boot decision must still do
    /// something sensible with it.
    fn crafted(edits: &[(usize, u8)]) -> SlotRecord {
        let mut store = saved(&[factory()]);
        let copy = copy_mut(&mut store, 0);
        for &(at, value) in edits {
            copy[at] = value;
        }
        reseal(copy);
        found(&mut store)
    }

    #[test]
    fn with_no_good_slot_left_the_active_one_boots_as_a_last_resort() {
        // B on trial with no boots left, and A (its fallback) Bad.
        let mut r = crafted(&[(ACTIVE, 1), (TRIALS_LEFT, 0), (A_STATUS, 4), (B_STATUS, 2)]);
        let before = r.clone();
        let boot = r.on_boot();
        assert_eq!(boot, Boot::LastResort(Slot::B));
        assert!(!boot.needs_save());
        assert_eq!(r, before, "nothing to save");
        assert_eq!(r.reject(), Err(Error::NoFallback));
        // If the update does come up healthy, it can still be confirmed.
        assert_eq!(r.confirm(), Ok(()));
        assert_eq!(r.on_boot(), Boot::Good(Slot::B));
    }

    #[test]
    fn an_unbootable_active_slot_falls_back_to_a_good_one() {
        // Active A is Bad, B Good.
        let mut r = crafted(&[(A_STATUS, 4), (B_STATUS, 3)]);
        assert_eq!(
            r.on_boot(),
            Boot::Fallback {
                from: Slot::A,
                to: Slot::B
            }
        );
        assert_eq!(r.slot(Slot::A).status, Status::Bad);
        assert_eq!(r.on_boot(), Boot::Good(Slot::B));
    }

    #[test]
    fn a_trial_after_an_unconfirmed_trial_leaves_it_bad() {
        // B on trial with no Good fallback (A Empty): staging into A is allowed
        // since nothing Good is overwritten, and B becomes Bad when A takes over.
        let mut r = crafted(&[(ACTIVE, 1), (TRIALS_LEFT, 2), (A_STATUS, 0), (B_STATUS, 2)]);
        assert_eq!(r.begin_staging("1.3.0", 13, digest(7), false), Ok(Slot::A));
        assert_eq!(r.mark_trial(1), Ok(Slot::A));
        assert_eq!(r.slot(Slot::B).status, Status::Bad);
        assert_eq!(r.slot(Slot::A).status, Status::Trial);
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            Error::Downgrade {
                release: 3,
                floor: 7,
            }
            .to_string(),
            "release 3 is below the device's version floor 7 and no downgrade was allowed"
        );
        for e in [
            Error::Record(RecordError::Corrupt),
            Error::VersionTooLong { len: 70 },
            Error::TrialInProgress,
            Error::NotStaged,
            Error::NotOnTrial,
            Error::NoFallback,
            Error::ZeroTrials,
        ] {
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(Slot::B.to_string(), "B");
        assert_eq!(Status::Trial.to_string(), "trial");
    }

    /// The slot record and the update journal word the same [`RecordError`] each about itself.
    #[test]
    fn record_errors_name_their_record() {
        let cases = [
            (
                RecordError::Store {
                    op: StoreOp::Flush,
                    kind: StoreErrorKind::Io,
                },
                "slot store flush failed: I/O error",
                "journal store flush failed: I/O error",
            ),
            (
                RecordError::Corrupt,
                "both copies of the slot record are corrupt (not blank): refusing to treat the device as new",
                "both copies of the update journal are corrupt (not blank)",
            ),
            (
                RecordError::UnsupportedFormat { format: 9 },
                "the slot record has format 9, which this version of molt cannot read (expected 1)",
                "the update journal has format 9, which this version of molt cannot read (expected 1)",
            ),
        ];
        for (e, slot, journal) in cases {
            assert_eq!(Error::Record(e).to_string(), slot);
            assert_eq!(
                molt_engine::update::journal::Error::Record(e).to_string(),
                journal
            );
        }
    }
}

#[test]
fn switch_back_needs_two_good_slots_and_keeps_the_floor() {
    use molt_engine::slot::{Error, Slot, SlotRecord, Status};
    let mut r = SlotRecord::new(Slot::A, "1.0.0", 10, [0; 32]).unwrap();
    assert_eq!(r.switch_back(), Err(Error::NoFallback));
    r.begin_staging("1.1.0", 11, [1; 32], false).unwrap();
    r.mark_trial(2).unwrap();
    assert_eq!(r.switch_back(), Err(Error::TrialInProgress));
    r.confirm().unwrap();
    assert_eq!(r.switch_back(), Ok(Slot::A));
    assert_eq!(r.active(), Slot::A);
    assert_eq!(r.slot(Slot::B).status, Status::Good);
    assert_eq!(r.floor(), 11);
    assert_eq!(r.switch_back(), Ok(Slot::B));
}
