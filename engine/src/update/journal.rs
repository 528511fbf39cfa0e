//! The update journal: the state machine's [`State`], stored power-safely in two copies over a [`SlotStore`] with a format byte, by the slot record's own mechanism.
//!
//! The agent writes the journal after every transition and before carrying out
//! its actions ([`super::step`]), so it is written often and must read back as
//! either the old or the new state whatever byte a power cut strikes at. It
//! uses the two-copy frame of the slot record (magic, format byte, sequence
//! number, CRC; see [`SlotRecord::save`](crate::slot::SlotRecord::save) for the
//! rules), so there is one implementation of that mechanism and one power-cut
//! argument, and a layout change between versions is a new format byte that an
//! older engine refuses instead of misreading.
//!
//! # Byte layout of one copy (format 1)
//!
//! A region of [`REGION_LEN`] bytes holds copy A at offset 0 and copy B at
//! [`COPY_LEN`]. Integers are little-endian; reserved bytes and the tail after
//! the state are zero, and a copy is valid only if it is exactly the encoding of
//! the state it decodes to.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0   | 4 | magic `MJNL` (`4d 4a 4e 4c`) |
//! | 4   | 1 | format, `1` |
//! | 5   | 3 | reserved, `0` |
//! | 8   | 4 | sequence number, `u32`, compared wrapping |
//! | 12  | 1 | length n of the encoded state, at most [`STATE_CAPACITY`] |
//! | 13  | 3 | reserved, `0` |
//! | 16  | n | the [`State`], postcard-encoded (enum variants by index, appended only) |
//! | 124 | 4 | CRC-32C (iSCSI) of bytes 0..124 |
//!
//! The previous Linux agent wrote the same two 128-byte copies with magic `MJRN`
//! and no format byte. Such a copy is not a journal of this format (its magic
//! differs), so the engine reads it as damaged; the agent recognises and
//! migrates it (agent-linux/src/journal.rs).
//!
//! ```
//! use molt_engine::testing::TearingStore;
//! use molt_engine::update::{journal, State};
//!
//! let mut store = TearingStore::<{ journal::REGION_LEN }>::default(); // any `SlotStore`
//! assert_eq!(journal::load(&mut store)?, None); // nothing saved yet: idle
//! journal::save(&mut store, &State::IDLE)?;
//! assert_eq!(journal::load(&mut store)?, Some(State::IDLE));
//! # Ok::<(), journal::Error>(())
//! ```

use core::fmt;

use super::state::State;
use crate::slot::copies::{self, get, put, Payload, Record, FRAME_LEN};
use crate::slot::{RecordError, SlotStore};

/// Bytes in one copy of the journal.
pub const COPY_LEN: usize = 128;

/// Bytes of the journal's region in a [`SlotStore`]: copy A at offset 0, copy B at [`COPY_LEN`].
pub const REGION_LEN: usize = 2 * COPY_LEN;

/// The journal format this engine reads and writes (byte 4 of a copy).
pub const FORMAT: u8 = 1;

/// The most bytes the encoded state may take in a copy.
pub const STATE_CAPACITY: usize = CRC_AT - STATE_AT;

const MAGIC: [u8; 4] = *b"MJNL";
const LEN_AT: usize = 12;
const STATE_AT: usize = FRAME_LEN;
const CRC_AT: usize = COPY_LEN - 4;

// Every state fits, with room for variants a later version appends; the length fits its byte.
const _: () = assert!(State::MAX_ENCODED_LEN <= STATE_CAPACITY);
const _: () = assert!(STATE_CAPACITY <= u8::MAX as usize);

/// Why loading or saving the journal failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Loading or saving the journal failed: the store, or what it holds. After a
    /// failed write or flush ([`RecordError::Store`]) the new state may or may not
    /// be durable, so load again before acting on it; a newest copy of an unknown
    /// format is refused because reading the older copy instead would roll the
    /// install back.
    Record(RecordError),
    /// The state's encoding is longer than [`STATE_CAPACITY`] bytes (it never is: [`State::MAX_ENCODED_LEN`] bounds it).
    TooLarge,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Record(e) => e.describe(Record::Journal, f),
            Error::TooLarge => write!(
                f,
                "the update state does not fit the journal's {STATE_CAPACITY} bytes"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

impl From<RecordError> for Error {
    fn from(e: RecordError) -> Self {
        Error::Record(e)
    }
}

/// The newest valid state in `store`; `None` when no save ever completed (a
/// blank store, or a first save that was cut), which the caller treats as
/// [`State::IDLE`].
///
/// Both copies holding something that is not a journal is [`RecordError::Corrupt`]
/// rather than `None`, so that the caller decides what a destroyed journal
/// means (the agent reads it as idle and lets the slot record, a separate
/// store, say which snapshot runs; it first checks for the previous layout).
pub fn load<S: SlotStore + ?Sized>(store: &mut S) -> Result<Option<State>, Error> {
    Ok(copies::load::<State, S, COPY_LEN>(store)?)
}

/// Makes `state` durable: writes it over the copy that does not hold the newest
/// valid state, then flushes. A power cut at any byte leaves the old or the new
/// state readable. On [`RecordError::Store`] the new state may or may not be durable:
/// its actions must not be carried out.
pub fn save<S: SlotStore + ?Sized>(store: &mut S, state: &State) -> Result<(), Error> {
    // Encoded once up front so that a state that does not fit is refused before
    // anything is written; `Payload::encode` then cannot fail.
    let mut body = [0u8; STATE_CAPACITY];
    postcard::to_slice(state, &mut body).map_err(|_| Error::TooLarge)?;
    Ok(copies::save::<State, S, COPY_LEN>(state, store)?)
}

impl Payload<COPY_LEN> for State {
    const MAGIC: [u8; 4] = MAGIC;
    const FORMAT: u8 = FORMAT;

    fn encode(&self, out: &mut [u8; COPY_LEN]) {
        let mut body = [0u8; STATE_CAPACITY];
        // `save` checked that the state fits; were it not to, the copy would hold
        // no state and read back as damaged, never as another state.
        if let Ok(bytes) = postcard::to_slice(self, &mut body) {
            // At most STATE_CAPACITY, which fits a byte (asserted above).
            put(out, LEN_AT, &[bytes.len() as u8]);
            put(out, STATE_AT, bytes);
        }
    }

    fn decode(copy: &[u8; COPY_LEN]) -> Option<State> {
        let [len] = get(copy, LEN_AT)?;
        let end = STATE_AT.checked_add(usize::from(len))?;
        if end > CRC_AT {
            return None;
        }
        let (state, rest) = postcard::take_from_bytes::<State>(copy.get(STATE_AT..end)?).ok()?;
        rest.is_empty().then_some(state)
    }
}
