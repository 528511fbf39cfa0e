//! Serving a stored bundle over HTTP: the `ETag` (its BLAKE3), `Range: bytes=…` answered with `206`, and `If-Range`, which falls back to the whole file when the validator differs.
//!
//! Written out rather than taken from a static-file service because the rules
//! the agent's resume relies on are few and must be exact: a strong `ETag` that
//! is the hash devices were offered, and never a splice of two different files.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE, RANGE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::AppError;

/// What a `Range` header asks of a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Want {
    /// The whole file (no range, one we do not serve piecewise, or a stale `If-Range`).
    Whole,
    /// Bytes `start..=end`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// A range that starts past the end.
    Unsatisfiable,
}

/// Parses `range` (a `Range` header value) for a file of `size` bytes.
///
/// Only single ranges are served piecewise; a multi-range request gets the whole
/// file, which RFC 9110 allows and no bundle client asks for anyway.
pub fn parse(range: &str, size: u64) -> Want {
    let Some(spec) = range.trim().strip_prefix("bytes=") else {
        return Want::Whole;
    };
    if spec.contains(',') {
        return Want::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Want::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // `bytes=-N`: the last N bytes.
        return match b.parse::<u64>() {
            Ok(0) => Want::Unsatisfiable,
            Ok(n) if size > 0 => Want::Part {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            Ok(_) => Want::Unsatisfiable,
            Err(_) => Want::Whole,
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return Want::Whole;
    };
    let end = if b.is_empty() {
        size.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(size.saturating_sub(1)),
            _ => return Want::Whole,
        }
    };
    if start >= size {
        return Want::Unsatisfiable;
    }
    Want::Part { start, end }
}

/// Whether an `If-Range` value names this `etag` (a strong comparison; dates never
/// match, since no `Last-Modified` is sent).
fn if_range_matches(value: &str, etag: &str) -> bool {
    let v = value.trim();
    !v.starts_with("W/") && v.trim_matches('"') == etag.trim_matches('"')
}

/// Answers a download of the file at `path` (`size` bytes, content hash `blake3`).
pub async fn serve(
    path: &Path,
    size: u64,
    blake3: &str,
    headers: &HeaderMap,
) -> Result<Response, AppError> {
    let etag = format!("\"{blake3}\"");
    let mut want = match headers.get(RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) => parse(r, size),
        None => Want::Whole,
    };
    if let Some(v) = headers.get(IF_RANGE) {
        let fresh = v.to_str().is_ok_and(|v| if_range_matches(v, &etag));
        if !fresh {
            want = Want::Whole;
        }
    }
    let (status, start, len) = match want {
        Want::Whole => (StatusCode::OK, 0, size),
        Want::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Want::Unsatisfiable => {
            let mut res = AppError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range starts past the end of the {size}-byte bundle"),
            )
            .into_response();
            res.headers_mut()
                .insert(CONTENT_RANGE, header(&format!("bytes */{size}"))?);
            return Ok(res);
        }
    };
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| AppError::internal(format!("cannot open {}: {e}", path.display())))?
        .into_std()
        .await;
    // A file that is not the length the store recorded (changed behind the
    // controller's back) is refused up front rather than sent short.
    let on_disk = file
        .metadata()
        .map_err(|e| AppError::internal(format!("cannot stat {}: {e}", path.display())))?
        .len();
    if on_disk != size {
        return Err(AppError::internal(format!(
            "{} holds {on_disk} bytes, but the store recorded {size}",
            path.display()
        )));
    }
    let body = Body::from_stream(chunks(Arc::new(file), start, len));
    let mut res = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, len)
        .header(ACCEPT_RANGES, "bytes")
        .header(ETAG, header(&etag)?);
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {start}-{}/{size}", start + len - 1);
        res = res.header(CONTENT_RANGE, header(&range)?);
    }
    res.body(body)
        .map_err(|e| AppError::internal(format!("cannot build the response: {e}")))
}

/// Bytes per read of a download, and so its memory: one chunk being read and
/// one being sent.
const CHUNK: u64 = 256 * 1024;

/// `len` bytes of `file` from `start`, as a stream of chunks.
///
/// A chunk already in the page cache (the usual case: a bundle being rolled out
/// is read by every device) is copied inline with `preadv2(RWF_NOWAIT)`, which
/// never waits for the disk; only a miss goes to the blocking pool. Sending every
/// chunk through the pool cost two context switches per 256 KiB, a quarter of
/// the server's time at full speed. Each download reuses its own two buffers
/// ([`Recycled`]): no zeroing or allocation per chunk, and no buffer allocated
/// on the pool's many threads, whose malloc arenas kept freed chunks and made
/// the server's memory grow with bytes served. A file shorter than promised
/// ends the stream with an error, so the client sees a truncated body, never a
/// splice.
fn chunks(
    file: Arc<std::fs::File>,
    start: u64,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    let bin = Bin::default();
    futures_util::stream::try_unfold((start, len), move |(at, left)| {
        let (file, bin) = (file.clone(), bin.clone());
        async move {
            if left == 0 {
                return Ok(None);
            }
            let n = usize::try_from(left.min(CHUNK)).unwrap_or(usize::MAX);
            let mut buf = bin.take(n);
            let got = match read_cached(&file, &mut buf, at)? {
                Some(k) => k,
                None => {
                    let (b, k) = tokio::task::spawn_blocking(move || {
                        let k = read_some_at(&file, &mut buf, at)?;
                        Ok::<_, std::io::Error>((buf, k))
                    })
                    .await
                    .map_err(std::io::Error::other)??;
                    buf = b;
                    k
                }
            };
            let chunk = Bytes::from_owner(Recycled { buf, len: got, bin });
            Ok(Some((chunk, (at + got as u64, left - got as u64))))
        }
    })
}

/// A download's spare buffers: a chunk's buffer comes back here once hyper has
/// sent and dropped it. Two are in use at a time (one read, one sent), so the
/// bin keeps at most two, and frees them with the download.
#[derive(Clone, Default)]
struct Bin(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Bin {
    /// A buffer of exactly `n` initialised bytes: a returned one if there is one.
    fn take(&self, n: usize) -> Vec<u8> {
        let spare = self.0.lock().ok().and_then(|mut v| v.pop());
        match spare {
            Some(mut b) => {
                b.resize(n, 0);
                b
            }
            None => vec![0u8; n],
        }
    }
}

/// A chunk's bytes (`buf[..len]`), whose buffer goes back to its download's bin when dropped.
struct Recycled {
    buf: Vec<u8>,
    len: usize,
    bin: Bin,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        if let Ok(mut spare) = self.bin.0.lock() {
            if spare.len() < 2 {
                spare.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

/// Reads what of `buf.len()` bytes at `at` the page cache holds, without waiting
/// for the disk: `Some(n)` with `n > 0`, or `None` if nothing is cached (or the
/// kernel cannot say), when the caller reads on the blocking pool instead.
fn read_cached(file: &std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<Option<usize>> {
    use rustix::io::{preadv2, Errno, ReadWriteFlags};
    let mut slices = [std::io::IoSliceMut::new(buf)];
    match preadv2(file, &mut slices, at, ReadWriteFlags::NOWAIT) {
        Ok(0) => Ok(None),
        Ok(n) => Ok(Some(n)),
        // EAGAIN: not cached; EOPNOTSUPP/ENOSYS: a file system or kernel without it.
        Err(Errno::AGAIN | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INTR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// One blocking `pread` of up to `buf.len()` bytes at `at`; end of file before
/// any byte is an error (the file is shorter than its size said).
fn read_some_at(file: &std::fs::File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    loop {
        match file.read_at(buf, at) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the bundle file is shorter than its size",
                ))
            }
            Ok(k) => return Ok(k),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn header(v: &str) -> Result<HeaderValue, AppError> {
    HeaderValue::from_str(v).map_err(|e| AppError::internal(format!("bad header `{v}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse("bytes=10-", 100), Want::Part { start: 10, end: 99 });
        assert_eq!(parse("bytes=10-19", 100), Want::Part { start: 10, end: 19 });
        assert_eq!(
            parse("bytes=10-1000", 100),
            Want::Part { start: 10, end: 99 }
        );
        assert_eq!(parse("bytes=-5", 100), Want::Part { start: 95, end: 99 });
        assert_eq!(parse("bytes=100-", 100), Want::Unsatisfiable);
        assert_eq!(parse("bytes=0-1,5-6", 100), Want::Whole);
        assert_eq!(parse("items=0-1", 100), Want::Whole);
        assert_eq!(parse("bytes=9-3", 100), Want::Whole);
    }

    /// Every byte of `len` from `start`, read through `chunks` as a download reads it.
    async fn collect(file: std::fs::File, start: u64, len: u64) -> std::io::Result<Vec<u8>> {
        use futures_util::TryStreamExt;
        let parts: Vec<Bytes> = chunks(Arc::new(file), start, len).try_collect().await?;
        Ok(parts.concat())
    }

    #[tokio::test]
    async fn chunks_send_every_byte_cached_or_not() {
        use std::io::Write;
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        for (start, len) in [(0, 700_000), (1, 262_144), (262_143, 300_000), (699_999, 1)] {
            let got = collect(f.try_clone().unwrap(), start, len).await.unwrap();
            let (a, b) = (start as usize, (start + len) as usize);
            assert!(got == data[a..b], "cached, {start}+{len}");
        }
        // Flushed and dropped from the page cache: the pieces the kernel no longer
        // holds are read on the blocking pool, and the bytes are the same.
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let got = collect(f.try_clone().unwrap(), 5, 699_995).await.unwrap();
        assert!(got == data[5..], "uncached");
        // A file shorter than promised ends the stream with an error.
        let err = collect(f, 600_000, 200_000).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn if_range_is_a_strong_comparison() {
        assert!(if_range_matches("\"abc\"", "\"abc\""));
        assert!(if_range_matches("abc", "\"abc\""));
        assert!(!if_range_matches("W/\"abc\"", "\"abc\""));
        assert!(!if_range_matches("\"abd\"", "\"abc\""));
        assert!(!if_range_matches(
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "\"abc\""
        ));
    }
}
