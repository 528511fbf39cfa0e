//! The A/B slot record: which snapshot is active, what each slot holds, the trial counter and the version floor, stored power-safely in two copies.
//!
//! A device has two slots, A and B. One is *active* (it runs); the other is
//! where an update is written. The [`SlotRecord`] says which is which, what
//! each slot holds ([`SlotInfo`]), how many trial boots an unconfirmed update
//! has left, and the *version floor* below which nothing is installed.
//!
//! # Life of an update
//!
//! ```text
//!             begin_staging              mark_trial(n)                 confirm
//!  A Good   ───────────────▶ B Staging ───────────────▶ B Trial ─────────────────▶ B Good,
//!  (active)                      │                      (active)                   floor raised to B's release
//!                                │ cancel_staging          │
//!                                ▼                         │ on_boot with no trial boots left, or reject
//!                            B Empty                       ▼
//!                                                   B Bad, A active again
//! ```
//!
//! The updater (the agent, or an application on a microcontroller) calls
//! [`SlotRecord::begin_staging`], writes and verifies the inactive slot, then
//! [`SlotRecord::mark_trial`]; after the new snapshot proves healthy it calls
//! [`SlotRecord::confirm`]. The boot side calls [`SlotRecord::on_boot`] once
//! per boot, which is what turns a crashing update into an automatic
//! rollback. Each of these only changes the record in memory; the caller
//! persists it with [`SlotRecord::save`] before acting on it.
//!
//! ```
//! use molt_engine::slot::{Boot, Loaded, Slot, SlotRecord};
//! # use molt_engine::testing::RecordStore as Flash;
//! # fn main() -> Result<(), molt_engine::slot::Error> {
//! let mut flash = Flash::default(); // any `SlotStore`
//!
//! // First start: provision the factory image in slot A.
//! let mut record = match SlotRecord::load(&mut flash)? {
//!     Loaded::Fresh => SlotRecord::new(Slot::A, "1.0.0", 10, [0; 32])?,
//!     Loaded::Found(record) => record,
//! };
//! record.save(&mut flash)?;
//!
//! // The updater: stage release 11 into the inactive slot, then try it for 3 boots.
//! let target = record.begin_staging("1.1.0", 11, [1; 32], false)?;
//! record.save(&mut flash)?;
//! // ... write and verify `target` ...
//! record.mark_trial(3)?;
//! record.save(&mut flash)?;
//!
//! // The next boot counts one trial boot and saves before running the slot.
//! let boot = record.on_boot();
//! if boot.needs_save() {
//!     record.save(&mut flash)?;
//! }
//! assert_eq!(boot, Boot::Trial { slot: target, left: 2 });
//!
//! // The health check passed: B is Good and the floor rises to 11.
//! record.confirm()?;
//! record.save(&mut flash)?;
//! assert_eq!(SlotRecord::load(&mut flash)?, Loaded::Found(record));
//! # Ok(())
//! # }
//! ```
//!
//! # Power safety
//!
//! The record is stored twice, each copy with a sequence number and a CRC.
//! [`SlotRecord::load`] takes the valid copy with the newer sequence number;
//! [`SlotRecord::save`] overwrites the *other* copy and then flushes. A power
//! cut at any byte therefore leaves the copy that was not being written
//! untouched, and the record reads back as either the old or the new one.
//! [`SlotRecord::save`] walks through the steps.
//!
//! The two-copy mechanism is not the slot record's alone: the update journal
//! (`update::journal`) keeps the state machine's state in the same frame (magic,
//! format byte, sequence number, CRC), implemented once in `copies.rs`.
//!
//! Nothing here does I/O itself: storage comes in through the [`SlotStore`]
//! trait, and every decision is a plain function of the record.

pub(crate) mod copies;
mod record;
mod store;

pub use copies::RecordError;
pub use record::{
    Boot, Loaded, Slot, SlotInfo, SlotRecord, Status, Version, FORMAT, RECORD_LEN, REGION_LEN,
    VERSION_CAPACITY,
};
pub use store::{SlotStore, StoreError, StoreErrorKind, StoreOp};

use copies::Record;

use core::fmt;

/// Why loading, saving or changing the slot record failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Loading or saving the record failed: the store, or what it holds.
    Record(RecordError),
    /// The release is below the version floor and the downgrade was not allowed.
    Downgrade {
        /// The release offered.
        release: u64,
        /// The device's version floor.
        floor: u64,
    },
    /// A version string longer than [`VERSION_CAPACITY`] bytes.
    VersionTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The running update is on trial and the inactive slot is its Good fallback, which staging would overwrite; confirm or reject the trial first.
    TrialInProgress,
    /// The inactive slot is not being staged (call [`SlotRecord::begin_staging`] first).
    NotStaged,
    /// The active slot is not on trial, so there is nothing to confirm or reject.
    NotOnTrial,
    /// The inactive slot is not Good, so there is nothing to roll back to.
    NoFallback,
    /// A trial needs at least one boot.
    ZeroTrials,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Record(e) => e.describe(Record::Slot, f),
            Error::Downgrade { release, floor } => write!(
                f,
                "release {release} is below the device's version floor {floor} and no downgrade was allowed"
            ),
            Error::VersionTooLong { len } => write!(
                f,
                "version is {len} bytes long; the slot record holds at most {VERSION_CAPACITY}"
            ),
            Error::TrialInProgress => f.write_str(
                "an update is on trial: staging now would overwrite its fallback; confirm or reject it first",
            ),
            Error::NotStaged => f.write_str("the inactive slot is not being staged"),
            Error::NotOnTrial => f.write_str("the active slot is not on trial"),
            Error::NoFallback => f.write_str("the inactive slot is not Good: there is nothing to roll back to"),
            Error::ZeroTrials => f.write_str("a trial needs at least one boot"),
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
