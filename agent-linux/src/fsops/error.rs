//! The one error type of `fsops`: which operation failed, on which path, in which directory, and why.

use std::fmt;
use std::io;

use rustix::io::Errno;

/// What kind of failure an [`FsError`] is; the agent decides on this, the log shows the message.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The filesystem is full or a quota is exhausted (`ENOSPC`, `EDQUOT`): report "no space".
    NoSpace,
    /// The path would leave the directory handle, pass through a symlink or cross a mount
    /// point (`openat2`'s `EXDEV` / `ELOOP` under `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
    /// RESOLVE_NO_XDEV`). For a bundle entry this is an attack or a corrupt slot.
    Escape,
    /// The kernel has no `openat2` (Linux < 5.6) or a seccomp filter hides it. The agent
    /// refuses to extract rather than resolve paths without `RESOLVE_BENEATH`.
    Unsupported,
    /// A path argument is not a relative path ending in a normal component.
    BadPath,
    /// A hardlink's target is missing or not a regular file (a directory, symlink, device
    /// node, FIFO or socket): the bundle names something the slot does not have.
    LinkTarget,
    /// Calls arrived out of order (for example `Data` without a file entry): a caller bug.
    Sequence,
    /// A test double ([`CrashAfter`](super::CrashAfter), [`Extractor::stop_after`](super::Extractor::stop_after))
    /// stopped the sequence here, as a power cut would.
    Crashed,
    /// Any other I/O error; [`FsError::errno`] says which.
    Io,
}

/// A failed file-system operation, naming the operation, the path and the directory it was
/// relative to: `cannot create opt/app/x in slot b: No space left on device`.
#[derive(Debug)]
pub struct FsError {
    kind: ErrorKind,
    op: &'static str,
    path: String,
    place: String,
    source: Option<io::Error>,
    detail: Option<&'static str>,
}

impl FsError {
    /// An error of an ordinary syscall: `ENOSPC` / `EDQUOT` become [`ErrorKind::NoSpace`],
    /// everything else [`ErrorKind::Io`].
    pub(crate) fn io(op: &'static str, path: &str, place: &str, err: io::Error) -> Self {
        let kind = match err.raw_os_error().map(Errno::from_raw_os_error) {
            Some(Errno::NOSPC) | Some(Errno::DQUOT) => ErrorKind::NoSpace,
            _ => ErrorKind::Io,
        };
        FsError {
            kind,
            op,
            path: path.to_owned(),
            place: place.to_owned(),
            source: Some(err),
            detail: None,
        }
    }

    /// [`FsError::io`] from a rustix errno.
    pub(crate) fn from_errno(op: &'static str, path: &str, place: &str, errno: Errno) -> Self {
        Self::io(op, path, place, io::Error::from(errno))
    }

    /// An error of a path resolution (`openat2` with `RESOLVE_*`, or an `O_NOFOLLOW` open):
    /// `ELOOP` and `EXDEV` mean the path tried to leave the handle or follow a symlink.
    pub(crate) fn resolve(op: &'static str, path: &str, place: &str, errno: Errno) -> Self {
        let mut e = Self::from_errno(op, path, place, errno);
        match errno {
            Errno::LOOP | Errno::XDEV => {
                e.kind = ErrorKind::Escape;
                e.detail = Some(
                    "refused: the path passes through a symlink, leaves the directory or crosses a mount point",
                );
            }
            Errno::NOSYS => {
                e.kind = ErrorKind::Unsupported;
                e.detail = Some(
                    "openat2 is unavailable (Linux 5.6 or later is needed); refusing to resolve paths without RESOLVE_BENEATH",
                );
            }
            _ => {}
        }
        e
    }

    /// An error without an errno.
    pub(crate) fn other(
        kind: ErrorKind,
        op: &'static str,
        path: &str,
        place: &str,
        detail: &'static str,
    ) -> Self {
        FsError {
            kind,
            op,
            path: path.to_owned(),
            place: place.to_owned(),
            source: None,
            detail: Some(detail),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the filesystem ran out of space (`ENOSPC` or `EDQUOT`), so the agent can report
    /// "no space" rather than a generic I/O failure.
    pub fn is_no_space(&self) -> bool {
        self.kind == ErrorKind::NoSpace
    }

    /// The operation that failed ("create", "write", "rename", ...).
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The path the operation was on, relative to [`FsError::place`] (empty for the directory itself).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The directory the path is relative to (a slot label or a directory path).
    pub fn place(&self) -> &str {
        &self.place
    }

    /// The OS error number, if the failure came from a syscall.
    pub fn errno(&self) -> Option<i32> {
        self.source.as_ref().and_then(io::Error::raw_os_error)
    }

    /// The underlying I/O error, if any.
    pub fn io_error(&self) -> Option<&io::Error> {
        self.source.as_ref()
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "cannot {} {}: ", self.op, self.place)?;
        } else {
            write!(f, "cannot {} {} in {}: ", self.op, self.path, self.place)?;
        }
        if let Some(d) = self.detail {
            f.write_str(d)?;
            if self.source.is_some() {
                f.write_str(" (")?;
            }
        }
        if let Some(e) = &self.source {
            // std appends " (os error N)" to the strerror text; the operator needs the text.
            let text = e.to_string();
            let text = match text.rfind(" (os error ") {
                Some(i) => text.get(..i).unwrap_or(&text),
                None => &text,
            };
            f.write_str(text)?;
            if self.detail.is_some() {
                f.write_str(")")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for FsError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_operation_path_and_place() {
        let e = FsError::from_errno("create", "opt/app/x", "slot b", Errno::NOSPC);
        assert!(e.is_no_space());
        assert_eq!(
            e.to_string(),
            "cannot create opt/app/x in slot b: No space left on device"
        );
        assert_eq!(
            FsError::from_errno("write", "x", "slot b", Errno::DQUOT).kind(),
            ErrorKind::NoSpace
        );
        let e = FsError::resolve("create", "etc/passwd", "slot b", Errno::LOOP);
        assert_eq!(e.kind(), ErrorKind::Escape);
        assert!(e
            .to_string()
            .starts_with("cannot create etc/passwd in slot b: refused"));
        // A kernel without openat2: refused with a clear reason, never degraded.
        let e = FsError::resolve("resolve paths beneath", "", "/data/slots/b", Errno::NOSYS);
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(
            e.to_string(),
            "cannot resolve paths beneath /data/slots/b: openat2 is unavailable (Linux 5.6 or \
             later is needed); refusing to resolve paths without RESOLVE_BENEATH (Function not \
             implemented)"
        );
        // ELOOP outside a path resolution is an ordinary error.
        assert_eq!(
            FsError::from_errno("open", "x", "p", Errno::LOOP).kind(),
            ErrorKind::Io
        );
    }
}
