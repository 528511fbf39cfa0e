//! `TearingStore`: an in-memory `SlotStore` that loses power after a chosen number of written bytes and tears the write in progress.
//!
//! Modelled on the mock flash of tweedegolf/sequential-storage: a countdown of
//! "bytes until power cut" makes every cut point reachable, so tests can sweep
//! all of them instead of sampling a few.

use crate::slot::{SlotStore, StoreError, StoreErrorKind, REGION_LEN};

/// A [`TearingStore`] exactly the size of the slot record's region.
pub type RecordStore = TearingStore<REGION_LEN>;

/// What happens to the bytes of a torn write that did not land.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// They keep their old values, as on a disk that writes sector by sector in order.
    Keep,
    /// They become garbage derived from `seed`, as on flash cut mid-program or a
    /// drive that reorders its writes: a torn copy may then hold anything.
    Garbage {
        /// Seeds the garbage, so that a failing case can be replayed.
        seed: u64,
    },
}

/// Why a [`TearingStore`] operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TearingError {
    /// The power is cut: every operation fails until [`TearingStore::reboot`].
    PowerCut,
    /// The access reaches past the end of the store.
    OutOfBounds,
}

impl StoreError for TearingError {
    fn kind(&self) -> StoreErrorKind {
        match self {
            TearingError::PowerCut => StoreErrorKind::Io,
            TearingError::OutOfBounds => StoreErrorKind::OutOfBounds,
        }
    }
}

/// An in-memory store of `N` bytes whose power can be cut after any number of
/// written bytes.
///
/// Once armed with [`cut_after`](Self::cut_after)`(k)`, the store lets `k`
/// more bytes land. The write that would exceed them is torn: its first bytes
/// up to the budget land, the rest are kept or turned into garbage (see
/// [`Tear`]), and the call fails. With the budget exactly used up, the next
/// write or flush fails instead, so `k` equal to a save's length cuts the power
/// at its flush. After a cut every operation fails with
/// [`TearingError::PowerCut`] until [`reboot`](Self::reboot), as if the device
/// were off. Reads never use up the budget.
///
/// Writes land at once and a flush only marks a point where the power may fail:
/// tearing the write in progress already covers whatever a write cache could
/// have lost, because the slot record writes one copy per call and flushes
/// before it touches the other.
#[derive(Clone, Debug)]
pub struct TearingStore<const N: usize> {
    bytes: [u8; N],
    /// Bytes that may still land before the power is cut; `None` when not armed.
    budget: Option<usize>,
    tear: Tear,
    cut: bool,
    /// State of the garbage generator.
    rng: u64,
    written: usize,
    flushes: usize,
}

impl<const N: usize> TearingStore<N> {
    /// A store whose every byte is `fill`: `0xFF` reads like erased NOR flash, `0x00` like a new file.
    pub const fn new(fill: u8) -> Self {
        TearingStore {
            bytes: [fill; N],
            budget: None,
            tear: Tear::Keep,
            cut: false,
            rng: 0,
            written: 0,
            flushes: 0,
        }
    }

    /// Arms a power cut after `bytes` more written bytes; the torn write's remaining bytes are treated as `tear` says.
    pub fn cut_after(&mut self, bytes: usize, tear: Tear) {
        self.budget = Some(bytes);
        self.tear = tear;
        if let Tear::Garbage { seed } = tear {
            // A zero state would make xorshift produce only zeros.
            self.rng = seed ^ 0x9E37_79B9_7F4A_7C15;
            if self.rng == 0 {
                self.rng = 1;
            }
        }
    }

    /// Whether the power is cut.
    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// Restores power: operations work again and no cut is armed. The bytes stay as the cut left them.
    pub fn reboot(&mut self) {
        self.cut = false;
        self.budget = None;
    }

    /// The stored bytes.
    pub fn bytes(&self) -> &[u8; N] {
        &self.bytes
    }

    /// The stored bytes, for tests that corrupt them directly.
    pub fn bytes_mut(&mut self) -> &mut [u8; N] {
        &mut self.bytes
    }

    /// Bytes that landed through [`SlotStore::write`] since the store was made, torn writes included.
    pub fn written(&self) -> usize {
        self.written
    }

    /// Flushes that succeeded since the store was made.
    pub fn flushes(&self) -> usize {
        self.flushes
    }

    fn range(&self, offset: u32, len: usize) -> Result<core::ops::Range<usize>, TearingError> {
        let start = usize::try_from(offset).map_err(|_| TearingError::OutOfBounds)?;
        let end = start.checked_add(len).ok_or(TearingError::OutOfBounds)?;
        if end > N {
            return Err(TearingError::OutOfBounds);
        }
        Ok(start..end)
    }

    /// The next garbage byte (xorshift64*).
    fn garbage(&mut self) -> u8 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
    }
}

impl<const N: usize> Default for TearingStore<N> {
    /// Erased flash: every byte `0xFF`.
    fn default() -> Self {
        Self::new(0xFF)
    }
}

impl<const N: usize> SlotStore for TearingStore<N> {
    type Error = TearingError;

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), TearingError> {
        if self.cut {
            return Err(TearingError::PowerCut);
        }
        let range = self.range(offset, buf.len())?;
        let src = self.bytes.get(range).ok_or(TearingError::OutOfBounds)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), TearingError> {
        if self.cut {
            return Err(TearingError::PowerCut);
        }
        let range = self.range(offset, data.len())?;
        // With the budget used up, or too small for this write, the power fails during it.
        let (landing, torn) = match self.budget {
            Some(left) if left == 0 || left < data.len() => (left, true),
            _ => (data.len(), false),
        };
        let start = range.start;
        for (i, &byte) in data.iter().enumerate() {
            let new = if i < landing {
                byte
            } else {
                match self.tear {
                    Tear::Keep => continue,
                    Tear::Garbage { .. } => self.garbage(),
                }
            };
            if let Some(slot) = self.bytes.get_mut(start + i) {
                *slot = new;
            }
        }
        self.written += landing;
        if torn {
            self.budget = Some(0);
            self.cut = true;
            return Err(TearingError::PowerCut);
        }
        if let Some(left) = self.budget {
            self.budget = Some(left - landing);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TearingError> {
        if self.cut || self.budget == Some(0) {
            self.cut = true;
            return Err(TearingError::PowerCut);
        }
        self.flushes += 1;
        Ok(())
    }
}
