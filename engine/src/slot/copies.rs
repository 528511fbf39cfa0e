//! The two-copy container that makes a small record power-safe: magic, format byte, sequence number and CRC around a payload, each save written over the copy that does not hold the newest valid one.
//!
//! The slot record and the update journal are both such records; this is their
//! one implementation of the mechanism, and each supplies only its payload
//! ([`Payload`]: its magic, format byte and fields). Every copy is `N` bytes
//! and shares this frame:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0     | 4 | magic, the payload's own |
//! | 4     | 1 | format byte, the payload's layout version |
//! | 5     | 3 | the payload's |
//! | 8     | 4 | sequence number, `u32` little-endian, compared wrapping |
//! | 12    | N − 16 | the payload's |
//! | N − 4 | 4 | CRC-32C (iSCSI) of bytes 0..N − 4, `u32` little-endian |
//!
//! Copy A sits at offset 0 of the [`SlotStore`], copy B at offset `N`. The
//! magic, format byte, sequence number and CRC keep their places in every
//! format, so a copy written by another version of molt is still recognised as
//! intact and its format refused rather than misread.
//! [`SlotRecord::load`](super::SlotRecord::load) and
//! [`SlotRecord::save`](super::SlotRecord::save) document the rules for both.

use core::fmt;

use crc::{Crc, NoTable, CRC_32_ISCSI};

use super::store::{SlotStore, StoreError, StoreErrorKind, StoreOp};

/// CRC-32C (Castagnoli, as used by iSCSI and ext4): it detects every burst error
/// of up to 32 bits, which covers a torn write's boundary. Computed without a
/// lookup table, which saves a kilobyte of flash on a microcontroller and costs
/// nothing noticeable for a few hundred bytes read once per boot.
const CRC: Crc<u32, NoTable> = Crc::<u32, NoTable>::new(&CRC_32_ISCSI);

const MAGIC_AT: usize = 0;
const FORMAT_AT: usize = 4;
const SEQ_AT: usize = 8;

/// Bytes of the frame: magic, format, the three bytes after it, sequence number, CRC.
/// A copy must be longer than this to hold a payload.
pub(crate) const FRAME_LEN: usize = 16;

/// What a record stores in the frame, and how.
///
/// `decode(encode(p))` must give `p` back, and `encode` must write a copy
/// completely (every byte it does not set stays zero), because only the exact
/// encoding of a payload counts as valid: this rejects stray bytes in reserved
/// places without listing them, and makes decoding and encoding inverses.
pub(crate) trait Payload<const N: usize>: Sized {
    /// Marks the start of every copy, so a region that points at the wrong bytes
    /// is not mistaken for a record whose CRC happens to match.
    const MAGIC: [u8; 4];
    /// The layout version this engine reads and writes.
    const FORMAT: u8;

    /// Writes the fields into `copy`, which is all zero, outside the frame's own
    /// bytes (0..5, 8..12 and the last four), which are written afterwards.
    fn encode(&self, copy: &mut [u8; N]);

    /// The payload of a copy of format [`Self::FORMAT`] whose magic and CRC matched; `None` when its fields are invalid.
    fn decode(copy: &[u8; N]) -> Option<Self>;
}

/// Why loading or saving a two-copy record failed: the slot record's and the
/// update journal's errors both carry it ([`RecordError::Record`](super::Error::Record),
/// [`journal::Error::Record`](crate::update::journal::Error::Record)), which name the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The [`SlotStore`] failed; after a failed write or flush the new copy may or may not be durable, so load again before acting on the record.
    Store {
        /// The operation that failed.
        op: StoreOp,
        /// What the driver reported, reduced to a kind.
        kind: StoreErrorKind,
    },
    /// Neither copy is valid and neither is blank: a record existed and was destroyed (or the store holds something else).
    Corrupt,
    /// The newest intact copy has a format this engine does not know (written by a newer molt); falling back to the older copy would roll the record back.
    UnsupportedFormat {
        /// The format byte found.
        format: u8,
    },
}

/// Which two-copy record a [`RecordError`] is about, for its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Slot,
    Journal,
}

impl RecordError {
    /// Writes the error as a sentence about `record`.
    pub(crate) fn describe(self, record: Record, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A blank slot record means a new device, so a destroyed one must not read as one.
        let (store, name, expected, if_corrupt) = match record {
            Record::Slot => (
                "slot",
                "slot record",
                super::FORMAT,
                ": refusing to treat the device as new",
            ),
            Record::Journal => (
                "journal",
                "update journal",
                crate::update::journal::FORMAT,
                "",
            ),
        };
        match self {
            RecordError::Store { op, kind } => write!(f, "{store} store {op} failed: {kind}"),
            RecordError::Corrupt => {
                write!(f, "both copies of the {name} are corrupt (not blank){if_corrupt}")
            }
            RecordError::UnsupportedFormat { format } => write!(
                f,
                "the {name} has format {format}, which this version of molt cannot read (expected {expected})"
            ),
        }
    }
}

/// Reads both copies and returns the newest valid payload, `None` when no save ever completed.
///
/// A copy is valid when its magic, CRC and format match and it is the exact
/// encoding of a payload; of two valid copies the one with the newer sequence
/// number wins (equal numbers pick copy A). With no valid copy, a blank copy
/// (all `0x00` or all `0xFF`) means no save ever completed, while two copies
/// that are neither valid nor blank are [`RecordError::Corrupt`]. A newest intact
/// copy of an unknown format is [`RecordError::UnsupportedFormat`], never skipped for
/// the older copy. Loading never writes.
pub(crate) fn load<P, S, const N: usize>(store: &mut S) -> Result<Option<P>, RecordError>
where
    P: Payload<N>,
    S: SlotStore + ?Sized,
{
    let a = read_copy::<P, S, N>(store, CopyId::A)?;
    let b = read_copy::<P, S, N>(store, CopyId::B)?;
    let any_blank = a.is_blank() || b.is_blank();
    match newest(a, b) {
        Some((_, intact)) => match intact.body {
            Body::Payload(p) => Ok(Some(p)),
            Body::Unknown(format) => Err(RecordError::UnsupportedFormat { format }),
        },
        None if any_blank => Ok(None),
        None => Err(RecordError::Corrupt),
    }
}

/// Writes `payload` over the copy that does not hold the newest valid one, then flushes.
///
/// With no valid copy it writes a copy that is not blank (copy A if both or
/// neither are), so that a blank copy keeps marking the store as never saved
/// should this write be torn. Refused with [`RecordError::UnsupportedFormat`] when the
/// newest copy has a format this save would supersede.
pub(crate) fn save<P, S, const N: usize>(payload: &P, store: &mut S) -> Result<(), RecordError>
where
    P: Payload<N>,
    S: SlotStore + ?Sized,
{
    // Read, not remembered: what happened on the medium since the last load
    // (another save, a torn write) decides which copy is safe to overwrite.
    let a = read_copy::<P, S, N>(store, CopyId::A)?;
    let b = read_copy::<P, S, N>(store, CopyId::B)?;
    let keep_blank_a = a.is_blank() && !b.is_blank();
    let (target, seq) = match newest(a, b) {
        Some((newest, intact)) => match intact.body {
            Body::Payload(_) => (newest.other(), intact.seq.wrapping_add(1)),
            Body::Unknown(format) => return Err(RecordError::UnsupportedFormat { format }),
        },
        None if keep_blank_a => (CopyId::B, 0),
        None => (CopyId::A, 0),
    };
    let bytes = encode(payload, seq);
    store
        .write(target.offset(N), &bytes)
        .map_err(|e| store_error(StoreOp::Write, &e))?;
    store.flush().map_err(|e| store_error(StoreOp::Flush, &e))
}

/// The canonical encoding of `payload` as one copy with sequence number `seq`.
pub(crate) fn encode<P: Payload<N>, const N: usize>(payload: &P, seq: u32) -> [u8; N] {
    let mut out = [0u8; N];
    payload.encode(&mut out);
    put(&mut out, MAGIC_AT, &P::MAGIC);
    put(&mut out, FORMAT_AT, &[P::FORMAT]);
    put(&mut out, SEQ_AT, &seq.to_le_bytes());
    let crc_at = N.saturating_sub(4);
    let crc = CRC.checksum(out.get(..crc_at).unwrap_or(&[]));
    put(&mut out, crc_at, &crc.to_le_bytes());
    out
}

/// One of the two copies in the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CopyId {
    A,
    B,
}

impl CopyId {
    /// Where the copy starts when each is `len` bytes long.
    fn offset(self, len: usize) -> u32 {
        match self {
            CopyId::A => 0,
            // Copies are a few hundred bytes; a length past u32 would be a store
            // no SlotStore can address, and saturating keeps the access out of bounds.
            CopyId::B => u32::try_from(len).unwrap_or(u32::MAX),
        }
    }

    fn other(self) -> CopyId {
        match self {
            CopyId::A => CopyId::B,
            CopyId::B => CopyId::A,
        }
    }
}

/// What one copy holds.
enum CopyState<P> {
    /// Every byte is `0x00`, or every byte is `0xFF`: never written.
    Blank,
    /// Written, but not a valid copy (torn, corrupted, or not ours).
    Damaged,
    /// Magic and CRC match.
    Intact(Intact<P>),
}

impl<P> CopyState<P> {
    fn is_blank(&self) -> bool {
        matches!(self, CopyState::Blank)
    }
}

/// A copy whose magic and CRC match.
struct Intact<P> {
    seq: u32,
    body: Body<P>,
}

enum Body<P> {
    /// A valid payload of this engine's format.
    Payload(P),
    /// An unknown format byte: written by another version of molt.
    Unknown(u8),
}

fn read_copy<P, S, const N: usize>(store: &mut S, id: CopyId) -> Result<CopyState<P>, RecordError>
where
    P: Payload<N>,
    S: SlotStore + ?Sized,
{
    let mut bytes = [0u8; N];
    store
        .read(id.offset(N), &mut bytes)
        .map_err(|e| store_error(StoreOp::Read, &e))?;
    Ok(classify(&bytes))
}

fn classify<P: Payload<N>, const N: usize>(bytes: &[u8; N]) -> CopyState<P> {
    if bytes.iter().all(|&b| b == 0x00) || bytes.iter().all(|&b| b == 0xFF) {
        return CopyState::Blank;
    }
    match intact(bytes) {
        Some(intact) => CopyState::Intact(intact),
        None => CopyState::Damaged,
    }
}

fn intact<P: Payload<N>, const N: usize>(bytes: &[u8; N]) -> Option<Intact<P>> {
    if N <= FRAME_LEN || get::<4>(bytes, MAGIC_AT)? != P::MAGIC {
        return None;
    }
    let crc_at = N - 4;
    if u32::from_le_bytes(get(bytes, crc_at)?) != CRC.checksum(bytes.get(..crc_at)?) {
        return None;
    }
    let seq = u32::from_le_bytes(get(bytes, SEQ_AT)?);
    let [format] = get(bytes, FORMAT_AT)?;
    if format != P::FORMAT {
        return Some(Intact {
            seq,
            body: Body::Unknown(format),
        });
    }
    let payload = P::decode(bytes)?;
    // Only the canonical encoding counts: this rejects nonzero reserved bytes
    // and padding without listing them.
    if encode(&payload, seq) != *bytes {
        return None;
    }
    Some(Intact {
        seq,
        body: Body::Payload(payload),
    })
}

/// The intact copy with the newer sequence number, if any.
fn newest<P>(a: CopyState<P>, b: CopyState<P>) -> Option<(CopyId, Intact<P>)> {
    match (a, b) {
        (CopyState::Intact(x), CopyState::Intact(y)) if newer(y.seq, x.seq) => Some((CopyId::B, y)),
        (CopyState::Intact(x), _) => Some((CopyId::A, x)),
        (_, CopyState::Intact(y)) => Some((CopyId::B, y)),
        _ => None,
    }
}

/// Whether sequence number `x` comes after `y`, counting across the wrap from
/// `u32::MAX` to 0 (serial number arithmetic, as in RFC 1982). The two copies
/// are always one apart, far from the ambiguous distance of 2³¹.
fn newer(x: u32, y: u32) -> bool {
    matches!(x.wrapping_sub(y), 1..=0x7FFF_FFFF)
}

fn store_error<E: StoreError>(op: StoreOp, error: &E) -> RecordError {
    RecordError::Store {
        op,
        kind: error.kind(),
    }
}

/// `N` bytes at `at`, or `None` past the end.
pub(crate) fn get<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..)?.first_chunk::<N>().copied()
}

/// Copies `value` to `at`. Every offset is a layout constant kept inside the
/// copy by its record's assertions, so nothing is ever dropped; there is no
/// error to return because no caller could do anything about one.
pub(crate) fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    if let Some(dst) = bytes
        .get_mut(at..)
        .and_then(|rest| rest.get_mut(..value.len()))
    {
        dst.copy_from_slice(value);
    }
}
