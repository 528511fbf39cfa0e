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
/// Each chunk is allocated here, on the async thread that also frees it once
/// sent, and filled by `pread` on the blocking pool: no second copy (as
/// `tokio::fs::File`'s own buffer makes), and no allocation on the blocking
/// pool's many threads, whose malloc arenas kept freed chunks and made the
/// server's memory grow with bytes served. A file shorter than promised ends
/// the stream with an error, so the client sees a truncated body, never a
/// splice.
fn chunks(
    file: Arc<std::fs::File>,
    start: u64,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::try_unfold((start, len), move |(at, left)| {
        let file = file.clone();
        async move {
            if left == 0 {
                return Ok(None);
            }
            let n = usize::try_from(left.min(CHUNK)).unwrap_or(usize::MAX);
            let buf = vec![0u8; n];
            let buf = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                let mut buf = buf;
                file.read_exact_at(&mut buf, at)?;
                Ok(buf)
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Some((Bytes::from(buf), (at + n as u64, left - n as u64))))
        }
    })
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
