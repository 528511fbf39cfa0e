//! The install journal: the update state machine's `State`, persisted before every action in a torn-write-safe file.
//!
//! The file holds two 128-byte copies. Each copy is
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 4 | magic `MJRN` |
//! | 4 | 4 | sequence number, u32 LE (wrapping comparison) |
//! | 8 | 2 | length n of the encoded state, u16 LE |
//! | 10 | n | postcard encoding of `molt_engine::update::State` |
//! | 10 + n | 4 | CRC-32C of bytes 0 .. 10 + n |
//!
//! A write goes to the copy that does not hold the newest valid state, then
//! `fdatasync`. A power cut can tear only the copy being written, so the other
//! still holds the previous state: the journal reads back as the old or the new
//! state, never a mix. A torn or zero-length file is detected by the checksums
//! (reliability item 5); with no valid copy the journal reads as idle, and the
//! slot record (a separate file) still says which snapshot is active, so an
//! unconfirmed snapshot is never activated by a lost journal.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use molt_engine::update::State;

const MAGIC: &[u8; 4] = b"MJRN";
const COPY_LEN: usize = 128;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// The journal file.
pub struct Journal {
    file: File,
    /// Sequence number of the newest valid copy, and which copy (0 or 1) it is in.
    newest: Option<(u32, usize)>,
}

impl Journal {
    /// Opens (creating if needed) the journal and reads the newest valid state.
    pub fn open(path: &Path) -> io::Result<(Self, State)> {
        let existed = path.exists();
        let file = crate::perms::state_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        crate::perms::tighten(&file, crate::perms::STATE_FILE)?;
        if !existed {
            file.set_len(2 * COPY_LEN as u64)?;
            crate::durability::sync_all(&file)?;
            if let Some(dir) = path.parent() {
                crate::durability::sync_all(&File::open(dir)?)?;
            }
        }
        let mut j = Journal { file, newest: None };
        let state = j.read_newest()?;
        Ok((j, state))
    }

    /// The newest valid state at `path`, read only: creates, repairs and locks
    /// nothing (`molt-agent status`). A missing journal reads as idle.
    pub fn peek(path: &Path) -> io::Result<State> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::IDLE),
            Err(e) => return Err(e),
        };
        Journal { file, newest: None }.read_newest()
    }

    fn read_newest(&mut self) -> io::Result<State> {
        let mut best: Option<(u32, usize, State)> = None;
        for copy in 0..2 {
            let mut buf = [0u8; COPY_LEN];
            // A short file (truncated, zero length) simply has no valid copy there.
            let n = read_up_to(&self.file, &mut buf, (copy * COPY_LEN) as u64)?;
            if let Some((seq, state)) = decode(&buf[..n]) {
                let newer = match best {
                    None => true,
                    Some((s, _, _)) => (seq.wrapping_sub(s) as i32) > 0,
                };
                if newer {
                    best = Some((seq, copy, state));
                }
            }
        }
        self.newest = best.map(|(s, c, _)| (s, c));
        Ok(best.map(|(_, _, st)| st).unwrap_or(State::IDLE))
    }

    /// Makes `state` durable (write the older copy, then `fdatasync`). An error means the
    /// state may or may not be durable: the caller must not carry out its actions.
    pub fn write(&mut self, state: &State) -> io::Result<()> {
        let (seq, copy) = match self.newest {
            Some((s, c)) => (s.wrapping_add(1), 1 - c),
            None => (1, 0),
        };
        let body = postcard::to_allocvec(state)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let mut buf = [0u8; COPY_LEN];
        let n = body.len();
        if 10 + n + 4 > COPY_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "update state does not fit the journal record",
            ));
        }
        buf[..4].copy_from_slice(MAGIC);
        buf[4..8].copy_from_slice(&seq.to_le_bytes());
        buf[8..10].copy_from_slice(&(n as u16).to_le_bytes());
        buf[10..10 + n].copy_from_slice(&body);
        let crc = CRC.checksum(&buf[..10 + n]);
        buf[10 + n..14 + n].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all_at(&buf, (copy * COPY_LEN) as u64)?;
        crate::crashpoint::after("journal write");
        crate::durability::sync_data(&self.file)?;
        crate::crashpoint::after("journal fsync");
        self.newest = Some((seq, copy));
        Ok(())
    }
}

fn read_up_to(f: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
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

#[cfg(test)]
mod tests {
    use super::*;
    use molt_engine::slot::Slot;
    use molt_engine::update::{step, Budget, DeploymentId, Event};

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

    #[test]
    fn round_trip_and_alternating_copies() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        let (mut j, s) = Journal::open(&p).unwrap();
        assert_eq!(s, State::IDLE);
        let s1 = started();
        j.write(&s1).unwrap();
        j.write(&State::IDLE).unwrap();
        j.write(&s1).unwrap();
        let (_, back) = Journal::open(&p).unwrap();
        assert_eq!(back, s1);
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
        assert_eq!(Journal::open(&p).unwrap().1, State::IDLE);
        std::fs::write(&p, vec![0xA5; 256]).unwrap();
        let (mut j, s) = Journal::open(&p).unwrap();
        assert_eq!(s, State::IDLE);
        // And it is writable again afterwards.
        j.write(&started()).unwrap();
        assert_eq!(Journal::open(&p).unwrap().1, started());
    }
}
