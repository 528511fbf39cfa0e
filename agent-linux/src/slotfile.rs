//! The engine's two-copy records on a Linux device: a file driven through the `SlotStore` trait, 512 bytes for the slot record, 256 for the update journal.
//!
//! Writes are positioned (`pwrite`) and `flush` is `fdatasync`, which is what the
//! records' two-copy protocol needs: the copy being written may tear, the other
//! is never touched. The file is created at full size once (and its directory
//! fsynced) so later saves never change its length or metadata.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use molt_engine::slot::{SlotStore, StoreError, StoreErrorKind, REGION_LEN};

/// An I/O error from the record file, reduced to a kind for the engine and kept whole for logs.
#[derive(Debug)]
pub struct FileStoreError(pub io::Error);

impl StoreError for FileStoreError {
    fn kind(&self) -> StoreErrorKind {
        match self.0.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput => {
                StoreErrorKind::OutOfBounds
            }
            _ => StoreErrorKind::Io,
        }
    }
}

/// A record file: the slot record's, or the journal's.
pub struct FileStore {
    file: File,
    path: PathBuf,
    /// The crash sweep's names of a write and a flush (crashpoint.rs).
    ops: [&'static str; 2],
}

/// The crash sweep's names of the slot record file's write and flush.
const RECORD_OPS: [&str; 2] = ["slot record write", "slot record fsync"];

impl FileStore {
    /// Opens the slot record file, creating it (zero-filled, which the engine reads as a fresh device) if missing.
    pub fn open(path: &Path) -> io::Result<Self> {
        FileStore::open_region(path, REGION_LEN, RECORD_OPS)
    }

    /// Opens a record file of `len` bytes, creating it zero-filled (blank copies:
    /// nothing saved yet) if it is missing, and extending it with zeros if it is
    /// shorter. `ops` names its write and its flush for the crash sweep.
    pub fn open_region(path: &Path, len: usize, ops: [&'static str; 2]) -> io::Result<Self> {
        let existed = path.exists();
        let file = crate::perms::state_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        crate::perms::tighten(&file, crate::perms::STATE_FILE)?;
        if !existed || file.metadata()?.len() < len as u64 {
            file.set_len(len as u64)?;
            crate::durability::sync_all(&file)?;
            if let Some(dir) = path.parent() {
                crate::durability::sync_all(&File::open(dir)?)?;
            }
        }
        Ok(FileStore {
            file,
            path: path.to_path_buf(),
            ops,
        })
    }

    /// Opens the slot record file for reading only, `None` when it does not exist:
    /// creates nothing (`molt-agent status`). Writes through it fail.
    pub fn open_read_only(path: &Path) -> io::Result<Option<Self>> {
        match File::open(path) {
            Ok(file) => Ok(Some(FileStore {
                file,
                path: path.to_path_buf(),
                ops: RECORD_OPS,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where the record lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SlotStore for FileStore {
    type Error = FileStoreError;

    fn read(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.file
            .read_exact_at(buf, u64::from(offset))
            .map_err(FileStoreError)
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> Result<(), Self::Error> {
        self.file
            .write_all_at(data, u64::from(offset))
            .map_err(FileStoreError)?;
        crate::crashpoint::after(self.ops[0]);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        crate::durability::sync_data(&self.file).map_err(FileStoreError)?;
        crate::crashpoint::after(self.ops[1]);
        Ok(())
    }
}
