//! hyper's own answers to a request head it cannot parse (400, 414, 431), given the `{"error": …}` body every other error answer has.
//!
//! hyper answers a request line or header it cannot parse by itself, before any
//! service sees a request (hyper 1.x, `proto/h1/conn.rs` `on_parse_error` and
//! `role.rs` `Server::on_error`): only when no answer is under way, with a bare
//! head, `HTTP/1.1 400 Bad Request` (a bad method, URI, version or header: a NUL
//! or control character, a bad `Content-Length`), `414 URI Too Long` (a URI over
//! 65534 bytes) or `431 Request Header Fields Too Large` (over 100 header fields,
//! or a head filling hyper's read buffer, about 400 KiB), `connection: close`,
//! `content-length: 0` and `date`; then it closes the connection. There is no
//! hook to change that answer, so [`JsonHeadErrors`] recognises it on the way out:
//!
//! * the connection's service ([`Counted`]) notes each HTTP/1 request hyper hands
//!   it (and whether it is a `HEAD`), so an answer head written when no request
//!   is waiting for one can only be hyper's own;
//! * the stream ([`Answers`]) follows the answers it carries: it holds each head
//!   until it is whole, and steps over each body by its framing (`Content-Length`,
//!   chunked, none for a `HEAD`, a 204 or 304) without copying it, so a head is
//!   never looked for inside a body and an answer of ours is never touched;
//! * a head of hyper's own with one of those statuses and `content-length: 0`
//!   goes out with `content-type: application/json` and the body instead.
//!
//! Anything else passes unchanged: HTTP/2 (whose first bytes are not
//! `HTTP/1.`), an upgrade, a body that runs to the close, a head longer than
//! 64 KiB. The unit tests below hold the head hyper writes today; the server
//! tests (tests/server/conn.rs, tls.rs) send the bad requests to hyper itself
//! and want the JSON body back, so a hyper release that changes its answer fails
//! them rather than going out bodyless.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use axum::http::{Method, Request, Version};
use axum_server::accept::Accept;
use molt_engine::protocol::ApiError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower_service::Service;

/// The longest answer head followed; past it the connection is passed through.
const MAX_HEAD: usize = 64 * 1024;

/// The body of hyper's own answer with `status`, or `None` when it is not one
/// hyper gives to a request it cannot parse.
fn message(status: u16) -> Option<&'static str> {
    Some(match status {
        400 => {
            "malformed request: the request line or a header is not valid HTTP/1.1 \
             (a NUL or other control character in a header, an invalid Content-Length \
             or Transfer-Encoding, a bad method, URI or HTTP version?)"
        }
        414 => "request line too long: the URI exceeds 65534 bytes",
        431 => {
            "request head too large: more than 100 header fields, or more than about \
             400 KiB of request line and headers"
        }
        _ => return None,
    })
}

/// An acceptor whose connections answer unparseable requests with a JSON body.
#[derive(Clone)]
pub struct JsonHeadErrors<A> {
    inner: A,
}

impl<A> JsonHeadErrors<A> {
    /// Around `inner`, whose streams must carry plain HTTP (TLS already undone).
    pub fn new(inner: A) -> Self {
        JsonHeadErrors { inner }
    }
}

impl<I, S, A> Accept<I, S> for JsonHeadErrors<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
{
    type Stream = Answers<A::Stream>;
    type Service = Counted<A::Service>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            let waiting = Arc::new(Waiting::default());
            Ok((
                Answers::new(stream, waiting.clone()),
                Counted {
                    inner: service,
                    waiting,
                },
            ))
        })
    }
}

/// The HTTP/1 requests of one connection handed to its service whose answer has
/// not started yet, oldest first: `true` for a `HEAD`.
#[derive(Default)]
struct Waiting(Mutex<VecDeque<bool>>);

impl Waiting {
    fn push(&self, head: bool) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(head);
    }

    fn pop(&self) -> Option<bool> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
    }
}

/// A connection's service, noting each HTTP/1 request it is handed.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    waiting: Arc<Waiting>,
}

impl<S, B> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        if matches!(
            req.version(),
            Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
        ) {
            self.waiting.push(req.method() == Method::HEAD);
        }
        self.inner.call(req)
    }
}

/// Where the next byte written falls in the answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    /// The start of an answer, or inside its head.
    Head,
    /// This many more body bytes.
    Body(u64),
    /// In a chunk-size line: the size so far, and whether an extension began.
    ChunkSize { size: u64, ext: bool },
    /// This many more bytes of chunk data.
    ChunkData(u64),
    /// This many bytes of the CRLF after chunk data.
    ChunkEnd(u8),
    /// In the trailer section after the last chunk: this many bytes on the line.
    Trailer(usize),
    /// Not followed: passed through to the end of the connection.
    Through,
}

impl Framing {
    /// Steps over the leading bytes of `b` that are not an answer head; returns
    /// how many, stopping where the next head starts.
    fn advance(&mut self, b: &[u8]) -> usize {
        let mut i = 0;
        while i < b.len() {
            match *self {
                Framing::Head => break,
                Framing::Through => return b.len(),
                Framing::Body(n) | Framing::ChunkData(n) => {
                    let take = n.min((b.len() - i) as u64);
                    i += take as usize;
                    *self = match (*self, n - take) {
                        (Framing::Body(_), 0) => Framing::Head,
                        (Framing::Body(_), left) => Framing::Body(left),
                        (_, 0) => Framing::ChunkEnd(2),
                        (_, left) => Framing::ChunkData(left),
                    };
                }
                Framing::ChunkEnd(n) => {
                    i += 1;
                    *self = if n > 1 {
                        Framing::ChunkEnd(n - 1)
                    } else {
                        Framing::ChunkSize {
                            size: 0,
                            ext: false,
                        }
                    };
                }
                Framing::ChunkSize { size, ext } => {
                    let c = b[i];
                    i += 1;
                    *self = match (c, ext) {
                        (b'\n', _) if size == 0 => Framing::Trailer(0),
                        (b'\n', _) => Framing::ChunkData(size),
                        (b'\r', _) | (_, true) => Framing::ChunkSize { size, ext },
                        (b';' | b' ' | b'\t', false) => Framing::ChunkSize { size, ext: true },
                        (c, false) => match (c as char).to_digit(16) {
                            Some(d) if size >> 60 == 0 => Framing::ChunkSize {
                                size: (size << 4) | u64::from(d),
                                ext,
                            },
                            _ => Framing::Through,
                        },
                    };
                }
                Framing::Trailer(len) => {
                    let c = b[i];
                    i += 1;
                    *self = match c {
                        b'\n' if len == 0 => Framing::Head,
                        b'\n' => Framing::Trailer(0),
                        b'\r' => Framing::Trailer(len),
                        _ => Framing::Trailer(len + 1),
                    };
                }
            }
        }
        i
    }
}

/// A connection's stream, giving hyper's own error answers a JSON body.
pub struct Answers<S> {
    inner: S,
    waiting: Arc<Waiting>,
    framing: Framing,
    /// The answer head being collected.
    head: Vec<u8>,
    /// Bytes taken from hyper and not yet written, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
}

impl<S> Answers<S> {
    fn new(inner: S, waiting: Arc<Waiting>) -> Self {
        Answers {
            inner,
            waiting,
            framing: Framing::Head,
            head: Vec::new(),
            out: Vec::new(),
            out_at: 0,
        }
    }

    /// Collects head bytes from `b`; returns how many it took. A whole head
    /// goes to `out`, rewritten if it is hyper's own error answer.
    fn collect(&mut self, b: &[u8]) -> usize {
        let mut took = 0;
        for &c in b {
            self.head.push(c);
            took += 1;
            let n = self.head.len();
            if (n <= 7 && !b"HTTP/1.".starts_with(&self.head)) || n > MAX_HEAD {
                // Not an HTTP/1 answer (HTTP/2 frames), or not one worth following.
                self.framing = Framing::Through;
                self.out = std::mem::take(&mut self.head);
                self.out_at = 0;
                return took;
            }
            if self.head.ends_with(b"\r\n\r\n") {
                let head = std::mem::take(&mut self.head);
                let (bytes, framing) = finish(head, || self.waiting.pop());
                self.out = bytes;
                self.out_at = 0;
                self.framing = framing;
                return took;
            }
        }
        took
    }
}

/// A whole answer head: the bytes to send and the framing of what follows.
/// `waiting` pops the request it answers, if a service was handed one.
fn finish(head: Vec<u8>, waiting: impl FnOnce() -> Option<bool>) -> (Vec<u8>, Framing) {
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let status: u16 = match lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|s| s.parse().ok())
    {
        Some(s) => s,
        None => return (head, Framing::Through),
    };
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<u64>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    match status {
        101 => return (head, Framing::Through),
        // Interim answers (100 Continue): no body, and the final one follows.
        100..=199 => return (head, Framing::Head),
        _ => {}
    }
    let head_request = match waiting() {
        Some(h) => h,
        None => {
            if let (Some(msg), Some(0), false) = (message(status), length, chunked) {
                return (with_json_body(&text, msg), Framing::Head);
            }
            false
        }
    };
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Head
    } else if chunked {
        Framing::ChunkSize {
            size: 0,
            ext: false,
        }
    } else {
        match length {
            Some(0) => Framing::Head,
            Some(n) => Framing::Body(n),
            None => Framing::Through,
        }
    };
    (head, framing)
}

/// hyper's bodyless `head` with `{"error": message}` as its body.
fn with_json_body(head: &str, message: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&ApiError {
        error: message.to_owned(),
    })
    .unwrap_or_default();
    let mut out = String::new();
    let mut close = false;
    for l in head.trim_end_matches("\r\n").split("\r\n") {
        let name = l.split(':').next().unwrap_or("");
        if name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        close |= name.eq_ignore_ascii_case("connection");
        out.push_str(l);
        out.push_str("\r\n");
    }
    if !close {
        out.push_str("connection: close\r\n");
    }
    out.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    out
}

impl<S: AsyncWrite + Unpin> Answers<S> {
    /// Writes what `out` still holds.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.out.clear();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Before a flush or shutdown: a head hyper left unfinished (it never does)
    /// goes out as it is, and the connection is no longer followed.
    fn settle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.head.is_empty() {
            let head = std::mem::take(&mut self.head);
            self.out.extend_from_slice(&head);
            self.framing = Framing::Through;
        }
        self.drain(cx)
    }
}

// Requests are read as they come: only the answers' heads are rewritten.
read_through!(Answers);

impl<S: AsyncWrite + Unpin> AsyncWrite for Answers<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.framing == Framing::Head {
            return Poll::Ready(Ok(this.collect(buf)));
        }
        // Body bytes go straight through, up to where the next head starts.
        let mut upto = this.framing;
        let len = upto.advance(buf);
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..len]))?;
        this.framing.advance(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.drain(cx))?;
        let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        if this.framing == Framing::Head {
            return Poll::Ready(Ok(this.collect(first)));
        }
        // As many slices as hold body bytes, the last cut where a head starts.
        const MAX: usize = 64;
        let mut slices = [IoSlice::new(&[]); MAX];
        let mut count = 0;
        let mut upto = this.framing;
        for b in bufs.iter().filter(|b| !b.is_empty()).take(MAX) {
            let len = upto.advance(b);
            slices[count] = IoSlice::new(&b[..len]);
            count += 1;
            if len < b.len() || upto == Framing::Head {
                break;
            }
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices[..count]))?;
        let mut left = n;
        for s in &slices[..count] {
            let take = left.min(s.len());
            this.framing.advance(&s[..take]);
            left -= take;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.settle(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.settle(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    /// hyper 1.x's answer to a request head with a NUL in a header, byte for byte
    /// but the date (hyper's `role.rs`: the status line, the `connection: close` of
    /// a connection whose reading has closed, `content-length: 0` for no body, `date`).
    const HYPER_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\
content-length: 0\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n";

    /// What goes out when hyper writes `pieces` (vectored in slices of `pieces`
    /// when `vectored`) for requests `waiting` (true: HEAD).
    fn run(pieces: &[&[u8]], waiting: &[bool], vectored: bool) -> Vec<u8> {
        let w = Arc::new(Waiting::default());
        for &h in waiting {
            w.push(h);
        }
        let mut a = Answers::new(Vec::new(), w);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                if vectored {
                    let mut slices: Vec<IoSlice> = pieces.iter().map(|p| IoSlice::new(p)).collect();
                    let mut s = &mut slices[..];
                    while !s.is_empty() {
                        let n = a.write_vectored(s).await.unwrap();
                        assert!(n > 0);
                        IoSlice::advance_slices(&mut s, n);
                    }
                } else {
                    for p in pieces {
                        a.write_all(p).await.unwrap();
                    }
                }
                a.flush().await.unwrap();
            });
        a.inner
    }

    /// Splits `b` into single bytes, the hardest way to be written.
    fn bytes(b: &[u8]) -> Vec<&[u8]> {
        b.chunks(1).collect()
    }

    fn json_answer(out: &[u8], status: &str) -> String {
        let text = String::from_utf8_lossy(out);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let head = format!("{head}\r\n");
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
        assert!(
            head.contains("\r\ncontent-type: application/json\r\n"),
            "{text}"
        );
        assert!(head.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{text}"
        );
        assert!(!head.contains("content-length: 0"), "{text}");
        let v: ApiError = serde_json::from_str(body).unwrap();
        v.error
    }

    #[test]
    fn hypers_own_error_heads_get_a_json_body() {
        for (status, line, says) in [
            ("400", "400 Bad Request", "malformed request"),
            ("414", "414 URI Too Long", "65534 bytes"),
            (
                "431",
                "431 Request Header Fields Too Large",
                "100 header fields",
            ),
        ] {
            let head = String::from_utf8_lossy(HYPER_400).replace("400 Bad Request", line);
            for vectored in [false, true] {
                let out = run(&[head.as_bytes()], &[], vectored);
                assert!(json_answer(&out, status).contains(says));
                let out = run(&bytes(head.as_bytes()), &[], vectored);
                assert!(json_answer(&out, status).contains(says));
            }
        }
        // HTTP/1.0 (after an HTTP/1.0 request on the connection): no `connection` header of hyper's.
        let out = run(
            &[b"HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n"],
            &[],
            false,
        );
        assert!(out.starts_with(b"HTTP/1.0 400 Bad Request\r\n"));
        assert!(String::from_utf8_lossy(&out).contains("connection: close\r\n"));
    }

    #[test]
    fn answers_to_requests_the_service_saw_pass_untouched() {
        // The same head answering a request of ours, and other statuses with no body.
        assert_eq!(run(&[HYPER_400], &[false], false), HYPER_400);
        let other = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(run(&[other], &[], false), other);
        // HTTP/2's frames are not followed at all.
        let h2 = b"\0\0\x12\x04\0\0\0\0\0HTTP/1.1 400 Bad Request\r\n\r\n";
        assert_eq!(run(&[h2], &[], false), h2);
    }

    #[test]
    fn a_body_is_never_taken_for_a_head() {
        // Bodies that end with hyper's exact head (a log, a download), then hyper's
        // own answer on the same connection: only the last is rewritten.
        let mut length = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            HYPER_400.len()
        )
        .into_bytes();
        length.extend_from_slice(HYPER_400);
        let mut chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n".to_vec();
        chunked.extend_from_slice(format!("{:X}\r\n", HYPER_400.len()).as_bytes());
        chunked.extend_from_slice(HYPER_400);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let mut trailers = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        trailers.extend_from_slice(b"1;x=y\r\nz\r\n0\r\nx-sum: 1\r\n\r\n");
        // A HEAD's answer announces a body it does not carry; so do 204 and 304,
        // and an interim 100 Continue is followed by the final answer.
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n".to_vec();
        let not_modified = b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n".to_vec();
        let mut continued = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        continued.extend_from_slice(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}");
        for (what, ours, waiting) in [
            ("content-length", &length, &[false][..]),
            ("chunked", &chunked, &[false]),
            ("trailers", &trailers, &[false]),
            ("HEAD", &head, &[true]),
            ("304", &not_modified, &[false]),
            ("100 Continue", &continued, &[false]),
            (
                "two in a row",
                &[length.clone(), chunked.clone()].concat(),
                &[false, false],
            ),
        ] {
            let mut all = ours.clone();
            all.extend_from_slice(HYPER_400);
            for vectored in [false, true] {
                for pieces in [vec![&all[..]], vec![&ours[..], HYPER_400], bytes(&all)] {
                    let out = run(&pieces, waiting, vectored);
                    assert_eq!(&out[..ours.len()], &ours[..], "{what}");
                    let e = json_answer(&out[ours.len()..], "400");
                    assert!(e.starts_with("malformed request"), "{what}: {e}");
                }
            }
        }
    }
}
