//! The slot record itself: its types, its fixed byte layout, the two-copy load and save, and the update and boot decisions.

use core::fmt;

use super::copies::{self, get, put, Payload};
use super::store::SlotStore;
use super::Error;

/// Bytes in one copy of the record. Fixed for every format, so that the
/// sequence number and the CRC of a copy can be found without knowing its format.
pub const RECORD_LEN: usize = 256;

/// Bytes of the record's region in a [`SlotStore`]: copy A at offset 0, copy B at [`RECORD_LEN`].
pub const REGION_LEN: usize = 2 * RECORD_LEN;

/// The record format this engine reads and writes (byte 4 of a copy).
pub const FORMAT: u8 = 1;

/// Longest version string a slot can hold, in bytes.
///
/// It is the slot layout's own constant, so that the layout does not move if the
/// bundle format changes; the assertion below keeps it large enough for any
/// version a bundle may carry.
pub const VERSION_CAPACITY: usize = 64;

/// The version string of an update, as stored in a slot.
pub type Version = heapless::String<VERSION_CAPACITY>;

const _: () = assert!(VERSION_CAPACITY >= crate::bundle::format::MAX_VERSION_LEN);
// The version length is stored in one byte.
const _: () = assert!(VERSION_CAPACITY <= u8::MAX as usize);

/// Marks the start of every copy, so a hex dump is recognisable and a region that
/// points at the wrong bytes is not mistaken for a record whose CRC happens to match.
const MAGIC: [u8; 4] = *b"MSLT";

// Offsets inside one copy. The table in `SlotRecord`'s documentation is the
// normative form of these constants; the golden test in
// `engine/tests/slot_record.rs` pins them byte by byte. The magic (0), the
// format byte (4), the sequence number (8) and the CRC (the last four bytes)
// are the two-copy frame's (`copies.rs`), shared with the update journal.
const ACTIVE_AT: usize = 5;
const TRIALS_AT: usize = 6;
const FLOOR_AT: usize = 16;
const SLOT_A_AT: usize = 24;
const SLOT_B_AT: usize = SLOT_A_AT + SLOT_LEN;
const CRC_AT: usize = RECORD_LEN - 4;

// Offsets inside one slot entry, relative to its start.
const SLOT_LEN: usize = 112;
const STATUS_OFF: usize = 0;
const VERSION_LEN_OFF: usize = 1;
const RELEASE_OFF: usize = 8;
const DIGEST_OFF: usize = 16;
const VERSION_OFF: usize = 48;

// The fields follow each other without overlap and stay inside the copy, so
// `put` and `get` below never see an offset outside it.
const _: () = assert!(FLOOR_AT + 8 <= SLOT_A_AT);
const _: () = assert!(SLOT_B_AT + SLOT_LEN <= CRC_AT);
const _: () = assert!(DIGEST_OFF + 32 <= VERSION_OFF);
const _: () = assert!(VERSION_OFF + VERSION_CAPACITY == SLOT_LEN);

/// One of the two slots of an A/B device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// Slot A (byte value 0).
    A,
    /// Slot B (byte value 1).
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn code(self) -> u8 {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    fn from_code(code: u8) -> Option<Slot> {
        match code {
            0 => Some(Slot::A),
            1 => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// What a slot holds, as far as booting it is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Nothing usable (byte value 0, so a zeroed entry reads as empty).
    Empty,
    /// An update is being written into it; its content is incomplete until [`SlotRecord::mark_trial`].
    Staging,
    /// A complete update that has not yet proven itself: it boots a bounded number of times until confirmed.
    Trial,
    /// Known to boot and pass its health check: the only status the boot decision falls back to.
    Good,
    /// A trial that failed: never booted again unless nothing else is left.
    Bad,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::Empty => 0,
            Status::Staging => 1,
            Status::Trial => 2,
            Status::Good => 3,
            Status::Bad => 4,
        }
    }

    fn from_code(code: u8) -> Option<Status> {
        match code {
            0 => Some(Status::Empty),
            1 => Some(Status::Staging),
            2 => Some(Status::Trial),
            3 => Some(Status::Good),
            4 => Some(Status::Bad),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Empty => "empty",
            Status::Staging => "staging",
            Status::Trial => "trial",
            Status::Good => "good",
            Status::Bad => "bad",
        })
    }
}

/// What the record knows about one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Whether the slot may be booted.
    pub status: Status,
    /// The update version in the slot (the bundle's `version`), empty when the slot is empty.
    pub version: Version,
    /// The bundle's release counter, compared against the version floor.
    pub release: u64,
    /// The content digest of the snapshot in the slot, chosen by the agent, so
    /// that the snapshot can be verified before it is trusted (storage lies under power loss).
    pub digest: [u8; 32],
}

impl SlotInfo {
    /// An empty slot: no version, release 0, a zero digest.
    pub const EMPTY: SlotInfo = SlotInfo {
        status: Status::Empty,
        version: Version::new(),
        release: 0,
        digest: [0; 32],
    };

    fn holding(
        status: Status,
        version: &str,
        release: u64,
        digest: [u8; 32],
    ) -> Result<Self, Error> {
        Ok(SlotInfo {
            status,
            version: Version::try_from(version)
                .map_err(|_| Error::VersionTooLong { len: version.len() })?,
            release,
            digest,
        })
    }
}

/// The outcome of [`SlotRecord::load`].
// Boxing the record would need an allocator, which the engine does without;
// a `Loaded` lives briefly on the stack, so its size costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loaded {
    /// No record was ever completely saved: at least one copy is blank (all `0x00` or all `0xFF`) and neither is valid.
    ///
    /// This is a new device, or one whose very first save was cut. The caller
    /// provisions a record with [`SlotRecord::new`] and saves it. A caller that
    /// knows the device was provisioned before (for example from its own
    /// configuration) should treat this as an error instead, because starting
    /// over resets the version floor.
    Fresh,
    /// The newest valid copy.
    Found(SlotRecord),
}

impl Loaded {
    /// The record, if one was found.
    pub fn into_record(self) -> Option<SlotRecord> {
        match self {
            Loaded::Fresh => None,
            Loaded::Found(record) => Some(record),
        }
    }
}

/// What [`SlotRecord::on_boot`] decided to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// The active slot is Good: boot it. The record did not change.
    Good(Slot),
    /// The active slot is on trial: boot it, with `left` more trial boots after this one. Save the record first.
    Trial {
        /// The slot to boot.
        slot: Slot,
        /// Trial boots left after this one.
        left: u8,
    },
    /// The active slot failed (its trial ran out, or it is not bootable) and the other slot, which is Good, is now active: boot `to`. Save the record first.
    Fallback {
        /// The slot that failed; a failed trial is now marked Bad.
        from: Slot,
        /// The Good slot now active.
        to: Slot,
    },
    /// The active slot is not known to work and there is no Good slot to fall back to: boot it anyway, as the last resort. The record did not change.
    LastResort(Slot),
}

impl Boot {
    /// The slot to boot.
    pub fn slot(self) -> Slot {
        match self {
            Boot::Good(slot) | Boot::LastResort(slot) => slot,
            Boot::Trial { slot, .. } => slot,
            Boot::Fallback { to, .. } => to,
        }
    }

    /// Whether the decision changed the record, which must then be saved before the slot boots.
    pub fn needs_save(self) -> bool {
        matches!(self, Boot::Trial { .. } | Boot::Fallback { .. })
    }
}

/// The persisted A/B state of a device: the active slot, what each slot holds,
/// the trial counter and the version floor.
///
/// Its fields are private: the record changes only through the methods below,
/// each of which keeps the device bootable (for example, nothing can overwrite
/// the Good fallback of a running trial). Every method that can refuse leaves
/// the record unchanged when it does.
///
/// # Storage
///
/// The record is stored twice in a region of [`REGION_LEN`] bytes: copy A at
/// offset 0 and copy B at offset [`RECORD_LEN`]. Each copy is self-contained
/// and protected by its own CRC; [`load`](Self::load) and
/// [`save`](Self::save) explain how the two are used.
///
/// # Byte layout of one copy (format 1)
///
/// All integers are little-endian. Reserved bytes and the unused tail of a
/// version are written as zero, and a copy is valid only if it is exactly the
/// encoding of the record it decodes to, so they must be zero on reading too.
/// The length (256), the magic, the format byte, the sequence number and the
/// CRC keep their places in every future format.
///
/// | offset | size | field |
/// |-------:|-----:|-------|
/// | 0   | 4   | magic `MSLT` (`4d 53 4c 54`) |
/// | 4   | 1   | format, `1` |
/// | 5   | 1   | active slot: `0` = A, `1` = B |
/// | 6   | 1   | trial boots left |
/// | 7   | 1   | reserved, `0` |
/// | 8   | 4   | sequence number, `u32`, compared wrapping |
/// | 12  | 4   | reserved, `0` |
/// | 16  | 8   | version floor, `u64` release counter |
/// | 24  | 112 | slot A entry (below) |
/// | 136 | 112 | slot B entry (below) |
/// | 248 | 4   | reserved, `0` |
/// | 252 | 4   | CRC-32C (iSCSI) of bytes 0..252, `u32` |
///
/// # Byte layout of a slot entry
///
/// | offset | size | field |
/// |-------:|-----:|-------|
/// | 0  | 1  | status: `0` Empty, `1` Staging, `2` Trial, `3` Good, `4` Bad |
/// | 1  | 1  | version length in bytes, `0..=64` |
/// | 2  | 6  | reserved, `0` |
/// | 8  | 8  | release counter, `u64` |
/// | 16 | 32 | snapshot content digest |
/// | 48 | 64 | version, UTF-8, zero-padded |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRecord {
    active: Slot,
    a: SlotInfo,
    b: SlotInfo,
    trials_left: u8,
    floor: u64,
}

/// Making and reading the record.
impl SlotRecord {
    /// A record for a device whose first image sits in `active`: that slot is
    /// Good, the other Empty, and the floor is the image's release.
    ///
    /// The factory image counts as confirmed, and confirming raises the floor to
    /// the confirmed release, so a new device starts where a confirmed update would leave it.
    pub fn new(active: Slot, version: &str, release: u64, digest: [u8; 32]) -> Result<Self, Error> {
        let image = SlotInfo::holding(Status::Good, version, release, digest)?;
        let (a, b) = match active {
            Slot::A => (image, SlotInfo::EMPTY),
            Slot::B => (SlotInfo::EMPTY, image),
        };
        Ok(SlotRecord {
            active,
            a,
            b,
            trials_left: 0,
            floor: release,
        })
    }

    /// The slot that runs.
    pub fn active(&self) -> Slot {
        self.active
    }

    /// The slot an update is written into: always the one that does not run.
    pub fn inactive(&self) -> Slot {
        self.active.other()
    }

    /// What the record knows about `slot`.
    pub fn slot(&self, slot: Slot) -> &SlotInfo {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// Trial boots the active slot has left (0 unless it is on trial).
    pub fn trials_left(&self) -> u8 {
        self.trials_left
    }

    /// The version floor: the highest release ever confirmed on this device.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Whether an update with `release` may be installed: at or above the floor,
    /// or below it only when the deployment explicitly allows a downgrade.
    ///
    /// Equal releases pass, so a damaged snapshot can be reinstalled. Call this
    /// before downloading a payload; [`begin_staging`](Self::begin_staging)
    /// checks it again so that it cannot be forgotten.
    pub fn accepts(&self, release: u64, allow_downgrade: bool) -> bool {
        allow_downgrade || release >= self.floor
    }

    fn info_mut(&mut self, slot: Slot) -> &mut SlotInfo {
        match slot {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }
}

/// What an updater may do. Each call changes only the record in memory; save
/// it before acting on the change (before writing the slot, before rebooting).
impl SlotRecord {
    /// Marks the inactive slot as being staged with the given update, and returns it.
    ///
    /// Save the record before writing the first byte into the slot: a power cut
    /// during the copy must leave a record that says the slot is incomplete, so
    /// the next start cleans it up instead of booting it.
    ///
    /// Refused when `release` is below the floor without `allow_downgrade`
    /// ([`Error::Downgrade`]), when `version` does not fit
    /// ([`Error::VersionTooLong`]), and while the active slot is on trial with
    /// the inactive slot as its Good fallback ([`Error::TrialInProgress`]):
    /// overwriting that fallback would leave an unconfirmed update with nothing
    /// to roll back to. Restarting an interrupted staging is allowed.
    pub fn begin_staging(
        &mut self,
        version: &str,
        release: u64,
        digest: [u8; 32],
        allow_downgrade: bool,
    ) -> Result<Slot, Error> {
        let info = SlotInfo::holding(Status::Staging, version, release, digest)?;
        if !self.accepts(release, allow_downgrade) {
            return Err(Error::Downgrade {
                release,
                floor: self.floor,
            });
        }
        let target = self.inactive();
        if self.slot(self.active).status == Status::Trial
            && self.slot(target).status == Status::Good
        {
            return Err(Error::TrialInProgress);
        }
        *self.info_mut(target) = info;
        Ok(target)
    }

    /// Gives up the update being staged: the inactive slot becomes Empty, and is returned.
    ///
    /// For a download or verification that failed, or staging debris found at
    /// start. The slot's version and digest are cleared because they describe
    /// content that was never completed.
    pub fn cancel_staging(&mut self) -> Result<Slot, Error> {
        let target = self.inactive();
        if self.slot(target).status != Status::Staging {
            return Err(Error::NotStaged);
        }
        *self.info_mut(target) = SlotInfo::EMPTY;
        Ok(target)
    }

    /// Switches to the staged slot on trial for `boots` boots, and returns it.
    ///
    /// Call it only after the staged snapshot is complete, durable and verified
    /// against its digest. The slot that was active stays as it is, so a Good
    /// one remains the fallback; if it was itself an unconfirmed trial it
    /// becomes Bad, because a slot that never proved itself must not be
    /// mistaken for a fallback. Refused unless the inactive slot is being
    /// staged ([`Error::NotStaged`]) and `boots` is at least one
    /// ([`Error::ZeroTrials`]): a trial of zero boots would roll back before the
    /// update ever ran.
    pub fn mark_trial(&mut self, boots: u8) -> Result<Slot, Error> {
        let target = self.inactive();
        if self.slot(target).status != Status::Staging {
            return Err(Error::NotStaged);
        }
        if boots == 0 {
            return Err(Error::ZeroTrials);
        }
        let previous = self.active;
        if self.slot(previous).status == Status::Trial {
            self.info_mut(previous).status = Status::Bad;
        }
        self.info_mut(target).status = Status::Trial;
        self.active = target;
        self.trials_left = boots;
        Ok(target)
    }

    /// Confirms the active trial after it proved healthy: it becomes Good and
    /// the floor rises to its release.
    ///
    /// The floor only ever rises. After an allowed downgrade it stays at the
    /// higher release, so going below it again needs another explicit
    /// permission. Confirming a slot that is already Good changes nothing, so an
    /// agent that restarts after saving a confirmation may call it again.
    /// Refused for any other status ([`Error::NotOnTrial`]).
    pub fn confirm(&mut self) -> Result<(), Error> {
        let active = self.active;
        match self.slot(active).status {
            Status::Good => Ok(()),
            Status::Trial => {
                let release = self.slot(active).release;
                self.info_mut(active).status = Status::Good;
                self.trials_left = 0;
                self.floor = self.floor.max(release);
                Ok(())
            }
            _ => Err(Error::NotOnTrial),
        }
    }

    /// Rejects the active trial now (its health check failed): it becomes Bad
    /// and the other slot, which must be Good, becomes active again; returns it.
    ///
    /// This is the fast path of what [`on_boot`](Self::on_boot) does when the
    /// trial boots run out. The floor does not change, since the rejected
    /// release was never confirmed. Refused unless the active slot is on trial
    /// ([`Error::NotOnTrial`]) and the other slot is Good ([`Error::NoFallback`]).
    pub fn reject(&mut self) -> Result<Slot, Error> {
        if self.slot(self.active).status != Status::Trial {
            return Err(Error::NotOnTrial);
        }
        if self.slot(self.inactive()).status != Status::Good {
            return Err(Error::NoFallback);
        }
        Ok(self.fall_back())
    }

    /// Switches back to the other slot by an operator's decision (`molt-agent rollback`):
    /// both slots must be Good and no trial may be running; returns the slot now active.
    ///
    /// The floor does not change: it guards what may be *installed*, and the other
    /// slot already ran on this device. The slot left behind stays Good, so the
    /// operator can switch forward again.
    pub fn switch_back(&mut self) -> Result<Slot, Error> {
        match (
            self.slot(self.active).status,
            self.slot(self.inactive()).status,
        ) {
            (Status::Good, Status::Good) => {
                self.active = self.inactive();
                self.trials_left = 0;
                Ok(self.active)
            }
            (Status::Trial, _) => Err(Error::TrialInProgress),
            _ => Err(Error::NoFallback),
        }
    }

    /// Marks a failed trial Bad and makes the other slot active.
    fn fall_back(&mut self) -> Slot {
        let failed = self.active;
        if self.slot(failed).status == Status::Trial {
            self.info_mut(failed).status = Status::Bad;
        }
        self.active = failed.other();
        self.trials_left = 0;
        self.active
    }
}

/// The boot decision.
impl SlotRecord {
    /// Decides which slot to boot, counting one trial boot; call it exactly once
    /// per boot, before the chosen slot runs.
    ///
    /// 1. The active slot is Good: boot it; nothing changes.
    /// 2. It is on trial with boots left: use one up and boot it. The record must
    ///    be saved *before* the slot runs, or a trial that crashes the device
    ///    would never use up its boots.
    /// 3. Otherwise (the trial ran out, or the active slot is Staging, Empty or
    ///    Bad) and the other slot is Good: make the other slot active, marking a
    ///    failed trial Bad, and boot it. The floor is not consulted: a Good slot
    ///    once ran on this device, and booting it beats booting nothing.
    /// 4. Otherwise there is no Good slot: boot the active one anyway, since
    ///    refusing to boot would brick the device, and leave the record as it
    ///    is, so an update that does come up can still be confirmed.
    ///
    /// [`Boot::needs_save`] says whether to save the record before booting.
    pub fn on_boot(&mut self) -> Boot {
        let active = self.active;
        match self.slot(active).status {
            Status::Good => Boot::Good(active),
            Status::Trial if self.trials_left > 0 => {
                self.trials_left -= 1;
                Boot::Trial {
                    slot: active,
                    left: self.trials_left,
                }
            }
            _ if self.slot(active.other()).status == Status::Good => {
                let to = self.fall_back();
                Boot::Fallback { from: active, to }
            }
            _ => Boot::LastResort(active),
        }
    }
}

/// Persisting the record.
impl SlotRecord {
    /// Reads both copies and returns the newest valid one.
    ///
    /// A copy is valid when its magic, CRC and format match and it is the exact
    /// encoding of a record. Of two valid copies the one with the newer sequence
    /// number wins; sequence numbers compare with wrapping, so the counter may
    /// run past `u32::MAX` (equal numbers, which [`save`](Self::save) never
    /// writes, pick copy A).
    ///
    /// When neither copy is valid, the result tells a new device from a damaged one:
    ///
    /// * at least one copy is blank (every byte `0x00`, or every byte `0xFF` as
    ///   erased flash reads): [`Loaded::Fresh`]. No save ever completed, because
    ///   a completed save leaves a valid copy and the first save writes a
    ///   non-blank copy, so this is also what a cut first save reads as;
    /// * both copies hold bytes that are not a record: [`RecordError::Corrupt`](super::RecordError::Corrupt). A
    ///   record existed and was destroyed; starting over would forget the
    ///   version floor and which slot is Good, so the decision is left to the caller.
    ///
    /// If the newest intact copy has an unknown format, the result is
    /// [`RecordError::UnsupportedFormat`](super::RecordError::UnsupportedFormat) rather than the older copy, which would roll
    /// the device's state back. Loading never writes: a damaged copy is simply
    /// the one the next save overwrites.
    pub fn load<S: SlotStore + ?Sized>(store: &mut S) -> Result<Loaded, Error> {
        match copies::load::<SlotRecord, S, RECORD_LEN>(store)? {
            Some(record) => Ok(Loaded::Found(record)),
            None => Ok(Loaded::Fresh),
        }
    }

    /// Writes the record so that a power cut at any byte leaves either the old
    /// or the new record readable.
    ///
    /// 1. Read both copies, as [`load`](Self::load) does. The record in memory
    ///    does not know what happened on the medium since it was loaded (another
    ///    save, a torn write); reading makes sure the newest valid copy is never
    ///    the one overwritten.
    /// 2. Pick the copy that does *not* hold the newest valid record, and the
    ///    next sequence number. When no copy is valid, pick a copy that is not
    ///    blank (copy A if both or neither are), so that a blank copy keeps
    ///    marking the device as fresh should this write be torn; the sequence
    ///    number then starts at 0.
    /// 3. Write the whole copy in one [`SlotStore::write`], then
    ///    [`SlotStore::flush`]. Until the flush returns, the other copy still
    ///    holds the old record, and any mix of old and new bytes in the copy
    ///    being written fails its CRC.
    ///
    /// Refused with [`RecordError::UnsupportedFormat`](super::RecordError::UnsupportedFormat) when the newest copy was
    /// written by a newer format, which this save would otherwise supersede. On
    /// [`RecordError::Store`](super::RecordError::Store) from the write or the flush the new record may or may
    /// not be durable: load again before deciding anything.
    pub fn save<S: SlotStore + ?Sized>(&self, store: &mut S) -> Result<(), Error> {
        Ok(copies::save::<SlotRecord, S, RECORD_LEN>(self, store)?)
    }
}

/// The record's fields in the two-copy frame (format 1).
impl Payload<RECORD_LEN> for SlotRecord {
    const MAGIC: [u8; 4] = MAGIC;
    const FORMAT: u8 = FORMAT;

    fn encode(&self, out: &mut [u8; RECORD_LEN]) {
        put(out, ACTIVE_AT, &[self.active.code()]);
        put(out, TRIALS_AT, &[self.trials_left]);
        put(out, FLOOR_AT, &self.floor.to_le_bytes());
        for (at, info) in [(SLOT_A_AT, &self.a), (SLOT_B_AT, &self.b)] {
            // A `Version` never exceeds VERSION_CAPACITY, which fits a byte (asserted above).
            let len = info.version.len() as u8;
            put(out, at + STATUS_OFF, &[info.status.code()]);
            put(out, at + VERSION_LEN_OFF, &[len]);
            put(out, at + RELEASE_OFF, &info.release.to_le_bytes());
            put(out, at + DIGEST_OFF, &info.digest);
            put(out, at + VERSION_OFF, info.version.as_bytes());
        }
    }

    fn decode(bytes: &[u8; RECORD_LEN]) -> Option<SlotRecord> {
        let [active] = get(bytes, ACTIVE_AT)?;
        let [trials_left] = get(bytes, TRIALS_AT)?;
        Some(SlotRecord {
            active: Slot::from_code(active)?,
            a: parse_slot(bytes, SLOT_A_AT)?,
            b: parse_slot(bytes, SLOT_B_AT)?,
            trials_left,
            floor: u64::from_le_bytes(get(bytes, FLOOR_AT)?),
        })
    }
}

fn parse_slot(bytes: &[u8], at: usize) -> Option<SlotInfo> {
    let [status] = get(bytes, at + STATUS_OFF)?;
    let [len] = get(bytes, at + VERSION_LEN_OFF)?;
    let text: [u8; VERSION_CAPACITY] = get(bytes, at + VERSION_OFF)?;
    let version = core::str::from_utf8(text.get(..usize::from(len))?).ok()?;
    Some(SlotInfo {
        status: Status::from_code(status)?,
        version: Version::try_from(version).ok()?,
        release: u64::from_le_bytes(get(bytes, at + RELEASE_OFF)?),
        digest: get(bytes, at + DIGEST_OFF)?,
    })
}
