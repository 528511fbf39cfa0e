//! Connection limits: how long a client may stay idle or slow, how many connections are open at once, and the file-descriptor limit that must hold them.
//!
//! Without them, 1,100 idle unauthenticated sockets under systemd's default
//! soft limit (1,024 descriptors) made every device poll time out for two
//! minutes, with nothing logged. Each rule closes one way to hold a socket:
//!
//! * a connection that sends no complete first request within
//!   [`FIRST_REQUEST`] is closed (axum-server's first-request timeout: hyper's
//!   own header timeout starts only once the HTTP version is known);
//! * request headers, and a keep-alive connection's next request, within
//!   [`HEADER_READ`] (hyper's `header_read_timeout`);
//! * a request body that sends nothing for [`BODY_IDLE`] fails ([`body_timeout`]);
//!   a slow but moving upload is fine, however long it takes;
//! * at most [`Capped`]'s number of connections are open; one more is closed
//!   at once and logged (once a minute), so the descriptors left serve the
//!   database, the bundle store and the connections already accepted;
//! * [`raise_fd_limit`] lifts the soft descriptor limit to the hard one at start.
//!
//! And one rule for what hyper answers by itself: a request head it cannot parse
//! (400, 414, 431) is answered with the JSON `{"error": …}` body like every other
//! error ([`JsonHeadErrors`], in conn/head_errors.rs).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum_server::accept::Accept;
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Implements `AsyncRead` for the connection wrapper `$wrapper<S>` by reading its
/// `inner` stream: the wrappers here change what is written, or how long a
/// connection is held, never what is read. (Defined before `mod head_errors` so
/// that module's wrapper can use it too.)
macro_rules! read_through {
    ($wrapper:ident) => {
        impl<S: AsyncRead + Unpin> AsyncRead for $wrapper<S> {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.inner).poll_read(cx, buf)
            }
        }
    };
}

mod head_errors;
pub use head_errors::JsonHeadErrors;

/// A new connection's first complete request, TLS handshake excluded.
pub const FIRST_REQUEST: Duration = Duration::from_secs(10);
/// Request headers, and the gap before a keep-alive connection's next request.
pub const HEADER_READ: Duration = Duration::from_secs(10);
/// The longest a request body may send nothing.
pub const BODY_IDLE: Duration = Duration::from_secs(30);
/// The default cap on open connections, when the descriptor limit allows it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Descriptors kept out of the cap: the database, bundle files, builds, logs.
const RESERVED_FDS: u64 = 256;

/// Raises the soft limit on open files to the hard one and returns the soft limit
/// now in force (`None` when unknown).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if let (Some(cur), max) = (l.current, l.maximum) {
        let want = max.unwrap_or(u64::MAX).min(1 << 20);
        if want > cur {
            l.current = Some(want);
            if setrlimit(Resource::Nofile, l).is_err() {
                tracing::warn!("cannot raise the open-file limit above {cur}");
            }
        }
    }
    getrlimit(Resource::Nofile).current
}

/// The connection cap for `requested` (or the default) under a soft descriptor
/// limit of `fds`: never so many that accepting them leaves no descriptor for
/// the rest of the server.
pub fn max_connections(requested: Option<usize>, fds: Option<u64>) -> usize {
    let want = requested.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    match fds {
        Some(fds) => want.min(fds.saturating_sub(RESERVED_FDS).max(16) as usize),
        None => want,
    }
}

/// An acceptor that holds a permit for each open connection and closes new
/// ones at once when none is left.
#[derive(Clone)]
pub struct Capped<A> {
    inner: A,
    permits: Arc<Semaphore>,
    max: usize,
    /// The Unix minute of the last "cap reached" warning.
    warned: Arc<AtomicU64>,
}

impl<A> Capped<A> {
    /// At most `max` connections through `inner`.
    pub fn new(inner: A, max: usize) -> Self {
        Capped {
            inner,
            permits: Arc::new(Semaphore::new(max)),
            max,
            warned: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<I, S, A> Accept<I, S> for Capped<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Held<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let minute = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() / 60);
                if self.warned.swap(minute, Ordering::Relaxed) != minute {
                    tracing::warn!(
                        "{} connections open, the most allowed (--max-connections): \
                         closing new ones until some end",
                        self.max
                    );
                }
                drop(stream);
                return Box::pin(std::future::ready(Err(io::Error::other(
                    "connection cap reached",
                ))));
            }
        };
        let accepted = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            Ok((
                Held {
                    inner: stream,
                    _permit: permit,
                },
                service,
            ))
        })
    }
}

/// A connection holding its permit until it is closed.
pub struct Held<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
}

read_through!(Held);

// Writes, too, go to the stream as they are: the permit is all `Held` adds.
impl<S: AsyncWrite + Unpin> AsyncWrite for Held<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Fails a request body that sends nothing for [`BODY_IDLE`]; requests without
/// a body pass untouched.
pub async fn body_timeout(req: Request, next: Next) -> Response {
    let has_body = req
        .headers()
        .contains_key(axum::http::header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if !has_body {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let frames = futures_util::stream::unfold(Some(body.into_data_stream()), |s| async move {
        let mut s = s?;
        match tokio::time::timeout(BODY_IDLE, s.next()).await {
            Ok(Some(item)) => Some((item, Some(s))),
            Ok(None) => None,
            Err(_) => Some((
                Err(axum::Error::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the request body sent nothing for {} s",
                        BODY_IDLE.as_secs()
                    ),
                ))),
                None,
            )),
        }
    });
    next.run(Request::from_parts(parts, Body::from_stream(frames)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_the_server() {
        assert_eq!(max_connections(None, None), DEFAULT_MAX_CONNECTIONS);
        assert_eq!(max_connections(None, Some(1024)), 768);
        assert_eq!(max_connections(Some(100), Some(1024)), 100);
        assert_eq!(
            max_connections(None, Some(1 << 20)),
            DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(max_connections(None, Some(10)), 16);
    }
}
