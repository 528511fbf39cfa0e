//! The slot record's home on a Linux device: a 512-byte file driven through the engine's `SlotStore` trait.
//!
//! Writes are positioned (`pwrite`) and `flush` is `fdatasync`, which is what the
//! record's two-copy protocol needs: the copy being written may tear, the other
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

/// The slot record file.
pub struct FileStore {
    file: File,
    path: PathBuf,
}

impl FileStore {
    /// Opens the record file, creating it (zero-filled, which the engine reads as a fresh device) if missing.
    pub fn open(path: &Path) -> io::Result<Self> {
        let existed = path.exists();
        let file = crate::perms::state_file()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        crate::perms::tighten(&file, crate::perms::STATE_FILE)?;
        if !existed || file.metadata()?.len() < REGION_LEN as u64 {
            file.set_len(REGION_LEN as u64)?;
            crate::durability::sync_all(&file)?;
            if let Some(dir) = path.parent() {
                crate::durability::sync_all(&File::open(dir)?)?;
            }
        }
        Ok(FileStore {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Opens the record file for reading only, `None` when it does not exist:
    /// creates nothing (`molt-agent status`). Writes through it fail.
    pub fn open_read_only(path: &Path) -> io::Result<Option<Self>> {
        match File::open(path) {
            Ok(file) => Ok(Some(FileStore {
                file,
                path: path.to_path_buf(),
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
        crate::crashpoint::after("slot record write");
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        crate::durability::sync_data(&self.file).map_err(FileStoreError)?;
        crate::crashpoint::after("slot record fsync");
        Ok(())
    }
}
