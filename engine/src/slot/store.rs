//! The storage seam of the slot record: the `SlotStore` trait and the small error kinds its drivers reduce to.

use core::fmt;

/// Where the slot record lives: a small byte region that can be read, written and flushed.
///
/// Offsets count bytes from the start of the record's region, which is
/// [`REGION_LEN`](super::REGION_LEN) bytes long: copy A at offset 0, copy B at
/// [`RECORD_LEN`](super::RECORD_LEN). The record only ever reads or writes one
/// whole copy per call, and never touches the other copy while writing one, so a
/// store on flash that must erase before it programs can map each copy onto its
/// own erase block. A store must not let a write to one copy disturb the bytes of
/// the other: the whole power-cut argument rests on that.
///
/// The trait is deliberately tiny so that a file, a raw partition, an eMMC boot
/// area or a NOR flash driver can implement it in a few lines.
pub trait SlotStore {
    /// The driver's own error; [`StoreError::kind`] reduces it to what the record needs to know.
    type Error: StoreError;

    /// Fills `buf` with the bytes at `offset`.
    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Writes `data` at `offset`. The bytes need to be durable only once [`flush`](Self::flush) has returned.
    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error>;

    /// Makes every earlier write durable (`fsync`, a flash controller's cache flush), or fails.
    fn flush(&mut self) -> Result<(), Self::Error>;
}

/// Forwarding through `&mut` lets a caller lend its store without giving it up.
impl<S: SlotStore + ?Sized> SlotStore for &mut S {
    type Error = S::Error;

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error> {
        (**self).read(offset, buf)
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error> {
        (**self).write(offset, data)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        (**self).flush()
    }
}

/// A driver error that can say which [`StoreErrorKind`] it is.
///
/// The record's [`Error`](super::Error) carries only the kind, so that it has no
/// type parameter and every driver's errors read the same way in logs and reports.
pub trait StoreError: fmt::Debug {
    /// The kind of failure.
    fn kind(&self) -> StoreErrorKind;
}

/// A store whose error is just the kind needs no error type of its own.
impl StoreError for StoreErrorKind {
    fn kind(&self) -> StoreErrorKind {
        *self
    }
}

/// What went wrong in a [`SlotStore`], as far as the slot record cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The offset or length lies outside the store: it is smaller than [`REGION_LEN`](super::REGION_LEN), a configuration error.
    OutOfBounds,
    /// The medium failed the operation (an I/O error, a failed program or erase, a lost device).
    Io,
    /// Any other driver failure.
    Other,
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreErrorKind::OutOfBounds => "out of bounds",
            StoreErrorKind::Io => "I/O error",
            StoreErrorKind::Other => "driver error",
        })
    }
}

/// Which [`SlotStore`] operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// [`SlotStore::read`].
    Read,
    /// [`SlotStore::write`].
    Write,
    /// [`SlotStore::flush`].
    Flush,
}

impl fmt::Display for StoreOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreOp::Read => "read",
            StoreOp::Write => "write",
            StoreOp::Flush => "flush",
        })
    }
}
