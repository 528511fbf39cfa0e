//! File modes of the agent's own state, set explicitly and never left to the umask.
//!
//! An agent started under `umask 000` once created its journal, slot record and
//! lock 0666 and its directories 0777, so a local user could rewrite the journal
//! or swap files in a staged slot. Two rules close that class:
//!
//! * [`set_umask`] runs first in `main`: whatever umask the agent inherits,
//!   nothing it or its children (scripts, dpkg, pip, npm) create is writable by
//!   group or others unless a mode says so explicitly. 022 is what systemd
//!   gives services by default, so scripts see the usual one.
//! * State files are created [`STATE_FILE`] (0600) and private directories
//!   [`PRIVATE_DIR`] (0700); [`tighten`] fixes those an older agent left wider.
//!   Snapshot contents are not touched here: they keep the modes the bundle
//!   (or the active snapshot they were cloned from) gives them.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Journal, slot record, lock, enrollment, outbox, status, install log, staging files.
pub const STATE_FILE: u32 = 0o600;
/// Directories only the agent reads: staging, outbox.
pub const PRIVATE_DIR: u32 = 0o700;
/// Directories services read through: the data directory and `slots/`.
pub const SHARED_DIR: u32 = 0o755;
/// The umask the agent and its children run with.
pub const UMASK: u32 = 0o022;

/// Sets the process umask to [`UMASK`]; call before anything is created.
pub fn set_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(UMASK));
}

/// Options that create a state file with mode [`STATE_FILE`].
pub fn state_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(STATE_FILE);
    o
}

/// Takes away from `f` every permission bit outside `max` (an older agent, or
/// one started under another umask, may have created it wider).
pub fn tighten(f: &File, max: u32) -> io::Result<()> {
    let mode = f.metadata()?.mode() & 0o7777;
    if mode & !max != 0 {
        f.set_permissions(fs::Permissions::from_mode(mode & max))?;
    }
    Ok(())
}

/// Creates `path` and its missing parents with `mode`, and tightens it to `mode`
/// if it exists wider. Parents that exist are left alone (they are not ours).
pub fn dir(path: &Path, mode: u32) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(mode).create(path)?;
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            path.display()
        )));
    }
    let cur = meta.mode() & 0o7777;
    if cur & !mode != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(cur & mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_and_files_are_tightened_not_widened() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        dir(&d, PRIVATE_DIR).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        dir(&d, PRIVATE_DIR).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o500)).unwrap();
        dir(&d, PRIVATE_DIR).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o500);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();

        let p = d.join("f");
        let f = state_file().write(true).create(true).open(&p).unwrap();
        f.set_permissions(fs::Permissions::from_mode(0o666))
            .unwrap();
        tighten(&f, STATE_FILE).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);
        fs::write(t.path().join("x"), "").unwrap();
        assert!(dir(&t.path().join("x"), PRIVATE_DIR).is_err());
    }
}
