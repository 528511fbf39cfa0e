//! The install journal on a Linux device: the engine's journal record (`molt_engine::update::journal`) in a 256-byte file, and the migration of the previous agent's layout.
//!
//! The layout, the two copies, the format byte and the power-cut argument are
//! the engine's (`update::journal`, on the slot record's two-copy frame); this
//! file puts them on a file (`slotfile::FileStore`: `pwrite`, `fdatasync`).
//!
//! A journal with no valid copy reads as idle, as before: a torn or zero-length
//! file is caught by the checksums (reliability item 5), and the slot record (a
//! separate file) still says which snapshot is active, so an unconfirmed
//! snapshot is never activated by a lost journal (`settle_orphaned_trial`).
//! A journal of a newer format is refused: reading it as idle would forget an
//! install in flight, and the agent that wrote it is the one to finish it.
//!
//! # The previous layout
//!
//! Agents before the format byte wrote the same two 128-byte copies as
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `MJRN` |
//! | 4 | 4 | sequence number, u32 LE (wrapping comparison) |
//! | 8 | 2 | length n of the encoded state, u16 LE |
//! | 10 | n | postcard encoding of `molt_engine::update::State` |
//! | 10 + n | 4 | CRC-32C of bytes 0 .. 10 + n |
//!
//! Such a journal is read and migrated, not refused. It is what every device
//! upgraded from such an agent has, often in `Done` with a final report the
//! controller has not acknowledged, or in the middle of an install the new agent
//! must settle; treating it as lost would drop that report and leave a staged
//! slot unexplained. The state's encoding is the same in both layouts (postcard,
//! enum variants appended only), and a copy of the old layout can never pass
//! for a new one (another magic), so reading it is safe. The migration itself
//! is power-safe: see `migrate` below.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use molt_engine::slot::{RecordError, SlotStore, StoreError, StoreErrorKind, StoreOp};
use molt_engine::update::journal::{self, COPY_LEN, REGION_LEN};
use molt_engine::update::State;

use crate::slotfile::FileStore;

/// The crash sweep's names of the journal file's write and flush.
const OPS: [&str; 2] = ["journal write", "journal fsync"];

/// The journal file.
pub struct Journal {
    store: FileStore,
    /// What opening found, when it is worth a line in the install log.
    notice: Option<String>,
}

/// What [`load`] found besides the state.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// A journal of the engine's format, or none ever written.
    Current,
    /// Neither copy holds a journal of either layout: read as idle.
    Lost,
    /// The previous layout, read (and migrated if the store is writable).
    Previous,
}

impl Journal {
    /// Opens (creating if needed) the journal and reads the newest valid state,
    /// migrating a journal of the previous layout.
    pub fn open(path: &Path) -> io::Result<(Self, State)> {
        let mut store = FileStore::open_region(path, REGION_LEN, OPS)?;
        let (state, found) = load(&mut store, true).map_err(invalid)?;
        let notice = match found {
            Found::Current => None,
            Found::Lost => {
                Some("the journal held no valid state (torn or overwritten): read as idle")
            }
            Found::Previous => {
                Some("the journal had the previous layout (no format byte): migrated")
            }
        };
        let journal = Journal {
            store,
            notice: notice.map(str::to_owned),
        };
        Ok((journal, state))
    }

    /// The newest valid state at `path`, read only: creates, repairs, migrates and
    /// locks nothing (`molt-agent status`). A missing journal reads as idle.
    pub fn peek(path: &Path) -> io::Result<State> {
        let mut bytes = Vec::with_capacity(REGION_LEN);
        match File::open(path) {
            Ok(f) => f.take(REGION_LEN as u64).read_to_end(&mut bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::IDLE),
            Err(e) => return Err(e),
        };
        // A short file reads as zeros past its end, as `open` would extend it.
        bytes.resize(REGION_LEN, 0);
        let mut snapshot = Snapshot(bytes);
        Ok(load(&mut snapshot, false).map_err(invalid)?.0)
    }

    /// What opening found, when it is worth a line in the install log (a lost or migrated journal).
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    /// Makes `state` durable (the engine writes the copy not holding the newest state,
    /// then `fdatasync`). An error means the state may or may not be durable: the
    /// caller must not carry out its actions.
    pub fn write(&mut self, state: &State) -> io::Result<()> {
        journal::save(&mut self.store, state).map_err(|e| match e {
            journal::Error::Record(RecordError::Store { op, kind }) => io::Error::other(format!(
                "journal {op} failed ({kind}) in {}",
                self.store.path().display()
            )),
            e => invalid(e),
        })
    }
}

fn invalid(e: journal::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The newest state in `store`: the engine's format first; when it finds no valid
/// copy, the previous layout (migrated when `writable`); else idle.
fn load<S: SlotStore + ?Sized>(
    store: &mut S,
    writable: bool,
) -> Result<(State, Found), journal::Error> {
    let lost = match journal::load(store) {
        Ok(Some(state)) => return Ok((state, Found::Current)),
        // No save ever completed in this format: a new journal, or one whose
        // first copy only the previous agent wrote.
        Ok(None) => false,
        Err(journal::Error::Record(RecordError::Corrupt)) => true,
        Err(e) => return Err(e),
    };
    let mut region = [0u8; REGION_LEN];
    store
        .read(0, &mut region)
        .map_err(|e| store_error(StoreOp::Read, &e))?;
    match previous::newest(&region) {
        Some((copy, state)) if writable => {
            migrate(store, &region, copy, &state)?;
            Ok((state, Found::Previous))
        }
        Some((_, state)) => Ok((state, Found::Previous)),
        None if lost => Ok((State::IDLE, Found::Lost)),
        None => Ok((State::IDLE, Found::Current)),
    }
}

/// Rewrites a journal of the previous layout, whose newest state `state` is in copy
/// `copy` of `region`, in the engine's format.
///
/// 1. Copy the newest old copy over the other one and flush: both copies now hold
///    the newest state, in the old layout.
/// 2. Save the state in the engine's format, twice. With no valid copy the engine
///    writes copy A, then copy B.
///
/// A power cut during 1 tears only the copy being written, and the newest old copy
/// survives. A cut during the first save tears copy A, and copy B still holds the
/// newest state in the old layout, so the next start migrates again. After the
/// first save the engine's format is found and the old layout no longer matters;
/// the second save only overwrites its leftover. At every cut the journal reads
/// back as `state`: never an older state of the previous layout, which would
/// break "journal before effect".
fn migrate<S: SlotStore + ?Sized>(
    store: &mut S,
    region: &[u8; REGION_LEN],
    copy: usize,
    state: &State,
) -> Result<(), journal::Error> {
    let newest = &region[copy * COPY_LEN..(copy + 1) * COPY_LEN];
    let other = (1 - copy) * COPY_LEN;
    store
        .write(other as u32, newest)
        .map_err(|e| store_error(StoreOp::Write, &e))?;
    store.flush().map_err(|e| store_error(StoreOp::Flush, &e))?;
    journal::save(store, state)?;
    journal::save(store, state)
}

fn store_error<E: StoreError>(op: StoreOp, e: &E) -> journal::Error {
    journal::Error::Record(RecordError::Store { op, kind: e.kind() })
}

/// The previous agent's layout, read only (see the module documentation).
mod previous {
    use super::*;

    const MAGIC: &[u8; 4] = b"MJRN";
    pub(super) const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

    /// The copy (0 or 1) holding the newest valid state of the previous layout, and that state.
    pub(super) fn newest(region: &[u8; REGION_LEN]) -> Option<(usize, State)> {
        let mut best: Option<(u32, usize, State)> = None;
        for (copy, bytes) in region.chunks_exact(COPY_LEN).enumerate() {
            if let Some((seq, state)) = decode(bytes) {
                let newer = match best {
                    None => true,
                    Some((s, _, _)) => (seq.wrapping_sub(s) as i32) > 0,
                };
                if newer {
                    best = Some((seq, copy, state));
                }
            }
        }
        best.map(|(_, copy, state)| (copy, state))
    }

    fn decode(buf: &[u8]) -> Option<(u32, State)> {
        if buf.len() < 14 || &buf[..4] != MAGIC {
            return None;
        }
        let seq = u32::from_le_bytes(buf[4..8].try_into().ok()?);
        let n = usize::from(u16::from_le_bytes(buf[8..10].try_into().ok()?));
        let end = 10usize.checked_add(n)?;
        let crc_bytes = buf.get(end..end + 4)?;
        if CRC.checksum(buf.get(..end)?) != u32::from_le_bytes(crc_bytes.try_into().ok()?) {
            return None;
        }
        let (state, rest) = postcard::take_from_bytes::<State>(buf.get(10..end)?).ok()?;
        rest.is_empty().then_some((seq, state))
    }
}

/// A journal's bytes in memory, read only: what `peek` hands the engine.
struct Snapshot(Vec<u8>);

impl SlotStore for Snapshot {
    type Error = StoreErrorKind;

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), StoreErrorKind> {
        let at = offset as usize;
        let src = self
            .0
            .get(at..at + buf.len())
            .ok_or(StoreErrorKind::OutOfBounds)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, _: u32, _: &[u8]) -> Result<(), StoreErrorKind> {
        Err(StoreErrorKind::Other)
    }

    fn flush(&mut self) -> Result<(), StoreErrorKind> {
        Err(StoreErrorKind::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_engine::slot::Slot;
    use molt_engine::testing::{Tear, TearingStore};
    use molt_engine::update::{step, Budget, DeploymentId, Event, Plan};

    fn started() -> State {
        step(
            &State::IDLE,
            Event::Start {
                deployment: DeploymentId([3; 16]),
                target: Slot::B,
                budget: Budget::default(),
            },
        )
        .unwrap()
        .next
    }

    fn fetched() -> State {
        step(&started(), Event::Fetched(Plan::default()))
            .unwrap()
            .next
    }

    /// One copy of the previous layout, as the previous agent's `write` made it.
    fn previous_copy(state: &State, seq: u32) -> [u8; COPY_LEN] {
        let body = postcard::to_allocvec(state).unwrap();
        let n = body.len();
        let mut buf = [0u8; COPY_LEN];
        buf[..4].copy_from_slice(b"MJRN");
        buf[4..8].copy_from_slice(&seq.to_le_bytes());
        buf[8..10].copy_from_slice(&(n as u16).to_le_bytes());
        buf[10..10 + n].copy_from_slice(&body);
        let crc = previous::CRC.checksum(&buf[..10 + n]);
        buf[10 + n..14 + n].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// A journal file of the previous layout: `older` in one copy, `newest` in the other.
    fn previous_file(older: Option<&State>, newest: &State, newest_in: usize) -> Vec<u8> {
        let mut file = vec![0u8; REGION_LEN];
        let at = newest_in * COPY_LEN;
        file[at..at + COPY_LEN].copy_from_slice(&previous_copy(newest, 8));
        if let Some(older) = older {
            let at = (1 - newest_in) * COPY_LEN;
            file[at..at + COPY_LEN].copy_from_slice(&previous_copy(older, 7));
        }
        file
    }

    #[test]
    fn round_trip_and_alternating_copies() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        let (mut j, s) = Journal::open(&p).unwrap();
        assert_eq!(s, State::IDLE);
        assert_eq!(j.notice(), None, "a new journal is nothing to report");
        let s1 = started();
        j.write(&s1).unwrap();
        j.write(&State::IDLE).unwrap();
        j.write(&s1).unwrap();
        let (_, back) = Journal::open(&p).unwrap();
        assert_eq!(back, s1);
        assert_eq!(Journal::peek(&p).unwrap(), s1);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), REGION_LEN as u64);
    }

    #[test]
    fn every_torn_write_reads_as_old_or_new() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        let (mut j, _) = Journal::open(&p).unwrap();
        let old = started();
        j.write(&old).unwrap();
        let good = std::fs::read(&p).unwrap();
        // Write the new state, then simulate a cut after k bytes of that write.
        j.write(&State::IDLE).unwrap();
        let new_bytes = std::fs::read(&p).unwrap();
        let copy = if good[..COPY_LEN] != new_bytes[..COPY_LEN] {
            0
        } else {
            1
        };
        for k in 0..=COPY_LEN {
            let mut torn = good.clone();
            let base = copy * COPY_LEN;
            torn[base..base + k].copy_from_slice(&new_bytes[base..base + k]);
            std::fs::write(&p, &torn).unwrap();
            let (_, s) = Journal::open(&p).unwrap();
            assert!(s == old || s == State::IDLE, "cut at {k}: {s:?}");
            if k == 0 {
                assert_eq!(s, old);
            }
            if k == COPY_LEN {
                assert_eq!(s, State::IDLE);
            }
        }
    }

    #[test]
    fn zero_length_and_garbage_read_as_idle() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        std::fs::write(&p, b"").unwrap();
        assert_eq!(Journal::peek(&p).unwrap(), State::IDLE);
        assert_eq!(Journal::open(&p).unwrap().1, State::IDLE);
        std::fs::write(&p, vec![0xA5; 256]).unwrap();
        assert_eq!(Journal::peek(&p).unwrap(), State::IDLE);
        let (mut j, s) = Journal::open(&p).unwrap();
        assert_eq!(s, State::IDLE);
        assert!(
            j.notice().unwrap().contains("read as idle"),
            "a lost journal is logged"
        );
        // And it is writable again afterwards.
        j.write(&started()).unwrap();
        assert_eq!(Journal::open(&p).unwrap().1, started());
    }

    #[test]
    fn a_journal_of_the_previous_layout_is_read_and_migrated() {
        for (older, newest_in) in [(Some(started()), 0), (Some(started()), 1), (None, 0)] {
            let what = format!(
                "older {:?}, newest in copy {newest_in}",
                older.map(|s| s.phase())
            );
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("journal");
            let file = previous_file(older.as_ref(), &fetched(), newest_in);
            std::fs::write(&p, &file).unwrap();
            // `status` reads it and writes nothing.
            assert_eq!(Journal::peek(&p).unwrap(), fetched(), "{what}");
            assert_eq!(
                std::fs::read(&p).unwrap(),
                file,
                "{what}: peek wrote nothing"
            );
            let (mut j, s) = Journal::open(&p).unwrap();
            assert_eq!(s, fetched(), "{what}");
            assert!(j.notice().unwrap().contains("migrated"), "{what}");
            // Both copies are now in the engine's format: the old layout is gone.
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(&bytes[..4], b"MJNL", "{what}");
            assert_eq!(&bytes[COPY_LEN..COPY_LEN + 4], b"MJNL", "{what}");
            let (j2, s) = Journal::open(&p).unwrap();
            assert_eq!((s, j2.notice()), (fetched(), None), "{what}: migrated once");
            drop(j2);
            j.write(&State::IDLE).unwrap();
            assert_eq!(Journal::open(&p).unwrap().1, State::IDLE, "{what}");
        }
    }

    /// The migration under a power cut after every byte it writes, in both tear
    /// modes: every cut reads back as the newest state, never the older one the
    /// previous layout also held, and the next start finds the engine's format
    /// (migrating again if the first save of the migration did not complete).
    #[test]
    fn every_cut_of_a_migration_reads_as_the_newest_state() {
        for newest_in in [0, 1] {
            let mut base = TearingStore::<REGION_LEN>::new(0);
            base.bytes_mut().copy_from_slice(&previous_file(
                Some(&started()),
                &fetched(),
                newest_in,
            ));
            let mut probe = base.clone();
            assert_eq!(
                load(&mut probe, true).unwrap(),
                (fetched(), Found::Previous)
            );
            let total = probe.written();
            assert_eq!(total, 3 * COPY_LEN, "one raw copy and two saves");
            for k in 0..=total {
                for tear in [Tear::Keep, Tear::Garbage { seed: k as u64 }] {
                    let what = format!("newest in {newest_in}, cut at {k}, {tear:?}");
                    let mut store = base.clone();
                    store.cut_after(k, tear);
                    assert!(load(&mut store, true).is_err(), "{what}: the cut hits");
                    store.reboot();
                    let (state, _) = load(&mut store, true).unwrap();
                    assert_eq!(state, fetched(), "{what}");
                    assert_eq!(
                        journal::load(&mut store).unwrap(),
                        Some(fetched()),
                        "{what}: migrated after the restart"
                    );
                    assert_eq!(load(&mut store, true).unwrap(), (fetched(), Found::Current));
                }
            }
        }
    }

    #[test]
    fn a_journal_of_a_newer_format_is_refused_not_read_as_idle() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        let (mut j, _) = Journal::open(&p).unwrap();
        j.write(&started()).unwrap();
        drop(j);
        // A newer agent's copy: format 2, still intact.
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[4] = 2;
        let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(&bytes[..COPY_LEN - 4]);
        bytes[COPY_LEN - 4..COPY_LEN].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        for e in [
            Journal::open(&p).err().unwrap(),
            Journal::peek(&p).unwrap_err(),
        ] {
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("format 2"), "{e}");
        }
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "nothing was overwritten");
    }
}
