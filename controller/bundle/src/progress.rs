//! How the toolkit reports progress while it builds or verifies: a callback the caller implements, so the library draws nothing and links no terminal crate.

use std::io::{self, Read};

/// Receives progress from [`crate::build::build`] and the verifiers in
/// [`crate::inspect`]. Packing reads files on more than one thread, hence `Sync`.
pub trait Progress: Sync {
    /// A stage starts (`"packing"`, `"signing"`, `"verifying"`). With `total`, the
    /// stage counts bytes from 0 towards it; without, it continues the count it has.
    fn stage(&self, name: &'static str, total: Option<u64>);

    /// `n` more bytes of the current stage are done.
    fn advance(&self, n: u64);
}

/// Reports nothing: for servers, tests and callers without a display.
pub struct Silent;

impl Progress for Silent {
    fn stage(&self, _: &'static str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
}

/// A reader that reports every byte read through it.
pub(crate) struct Counted<'a, R> {
    pub(crate) inner: R,
    pub(crate) progress: &'a dyn Progress,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Count(AtomicU64);

    impl Progress for Count {
        fn stage(&self, _: &'static str, _: Option<u64>) {}
        fn advance(&self, n: u64) {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_counted_reader_reports_what_it_read() {
        let count = Count(AtomicU64::new(0));
        let mut r = Counted {
            inner: &[7u8; 100_000][..],
            progress: &count,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 100_000);
        assert_eq!(count.0.load(Ordering::Relaxed), 100_000);
    }
}
