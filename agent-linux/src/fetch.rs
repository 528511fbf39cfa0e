//! Where bundle bytes come from: a local file (USB, offline), or HTTP with `Range` resume after drops.
//!
//! The HTTP reader hides connection drops from the decoder: when a read fails
//! or the body ends early, it reconnects with `Range: bytes=<offset>-` (and
//! `If-Range` with the first response's validator), up to a retry limit with
//! exponential backoff and jitter ([`Backoff::fetch`]); an operator abort or a
//! shutdown ([`HttpReader::abort_on`]) cuts a retry's wait short. A server that ignores the range (answers 200),
//! answers a different range, or changed the file (a different validator or
//! length) is refused rather than spliced: the decoder would catch a splice by
//! its digests anyway, but the error says what really happened. A read that
//! stalls longer than the configured stall timeout counts as a drop.
//!
//! https uses the TLS roots of [`crate::client::tls_config`] (the public web
//! PKI plus `controller_ca`). A bundle served by the enrolled controller is
//! fetched with the device's credential ([`Bearer`]); the credential goes only
//! to URLs below the controller's, never to another host a source names.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::backoff::{sleep_unless, Backoff};
use crate::config::Config;

/// `Authorization: Bearer <secret>` for every URL that starts with `prefix`.
#[derive(Clone)]
pub struct Bearer {
    /// The controller's base URL with a trailing `/`, so `https://c.example` does
    /// not also match `https://c.example.evil`.
    pub prefix: String,
    /// The device's credential.
    pub secret: String,
}

impl Bearer {
    /// A credential for the controller at `base`.
    pub fn new(base: &str, secret: &str) -> Bearer {
        Bearer {
            prefix: format!("{}/", base.trim_end_matches('/')),
            secret: secret.to_owned(),
        }
    }

    fn header_for(&self, url: &str) -> Option<String> {
        url.starts_with(&self.prefix)
            .then(|| format!("Bearer {}", self.secret))
    }
}

impl std::fmt::Debug for Bearer {
    // The secret stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bearer({}…)", self.prefix)
    }
}

/// An open bundle source.
pub struct Source {
    /// The bundle's bytes from the requested offset on.
    pub reader: Box<dyn Read>,
    /// What identifies this version of the file on the server (`ETag` or
    /// `Last-Modified`), kept with a resume checkpoint so a resume after a restart
    /// refuses a file that changed; `None` for local files (the signed chunk chain
    /// catches a changed file anyway).
    pub validator: Option<String>,
    /// The whole bundle's length, when the source says (for progress reports).
    pub total: Option<u64>,
}

/// Opens a bundle source: an `http://` URL or a file path.
pub fn open(source: &str, cfg: &Config) -> Result<Box<dyn Read>> {
    Ok(open_at(source, cfg, None, 0, None)?.reader)
}

/// Opens a bundle source at byte `offset`: a `Range` request for HTTP (with `If-Range:
/// validator`, and `bearer`'s credential if the URL is the controller's), a seek for a file.
pub fn open_at(
    source: &str,
    cfg: &Config,
    bearer: Option<&Bearer>,
    offset: u64,
    validator: Option<String>,
) -> Result<Source> {
    open_abortable(source, cfg, bearer, offset, validator, None)
}

/// [`open_at`], with an HTTP download's retry waits cut short when `abort` is set
/// (the install's abort flag: an operator abort or a shutdown).
pub fn open_abortable(
    source: &str,
    cfg: &Config,
    bearer: Option<&Bearer>,
    offset: u64,
    validator: Option<String>,
    abort: Option<Arc<AtomicBool>>,
) -> Result<Source> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let stall = cfg.timeouts.download_stall;
        let agent = crate::client::http_agent(cfg, stall, stall)?;
        let auth = bearer.and_then(|b| b.header_for(source));
        let mut r = HttpReader::with_agent(agent, source, auth, 5, offset, validator)?;
        if let Some(abort) = abort {
            r = r.abort_on(abort);
        }
        Ok(Source {
            validator: r.validator.clone(),
            total: r.total,
            reader: Box::new(r),
        })
    } else {
        let mut f =
            File::open(source).with_context(|| format!("cannot open bundle file {source}"))?;
        let total = f.metadata().ok().map(|m| m.len());
        if offset > 0 {
            f.seek(SeekFrom::Start(offset))
                .with_context(|| format!("cannot seek {source} to byte {offset}"))?;
        }
        Ok(Source {
            reader: Box::new(f),
            validator: None,
            total,
        })
    }
}

/// A resuming HTTP body reader.
pub struct HttpReader {
    agent: ureq::Agent,
    url: String,
    /// The `Authorization` header's value, if this URL gets one.
    auth: Option<String>,
    offset: u64,
    total: Option<u64>,
    validator: Option<String>,
    body: Option<Box<dyn Read + Send + Sync>>,
    retries_left: u32,
    max_retries: u32,
    backoff: Backoff,
    /// Set when the download is to stop: a retry's wait ends at once.
    abort: Arc<AtomicBool>,
}

impl HttpReader {
    /// Connects to `url` (http only: no TLS roots). `stall` bounds every single read;
    /// `max_retries` bounds reconnections in a row.
    pub fn new(url: &str, stall: Duration, max_retries: u32) -> Result<Self> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(stall)
            .timeout_read(stall)
            .build();
        Self::with_agent(agent, url, None, max_retries, 0, None)
    }

    /// Connects to `url` through `agent` (its timeouts bound each read) with an
    /// optional `Authorization` value, and asks for the bytes from `offset` on; with a
    /// `validator` (from an earlier download of the same URL), a file that changed
    /// since is refused.
    pub fn with_agent(
        agent: ureq::Agent,
        url: &str,
        auth: Option<String>,
        max_retries: u32,
        offset: u64,
        validator: Option<String>,
    ) -> Result<Self> {
        let mut r = HttpReader {
            agent,
            url: url.to_string(),
            auth,
            offset,
            total: None,
            validator,
            body: None,
            retries_left: max_retries,
            max_retries,
            backoff: Backoff::fetch(),
            abort: Arc::new(AtomicBool::new(false)),
        };
        r.connect().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(r)
    }

    /// Ends a retry's wait, and the download with an error, as soon as `abort` is set.
    pub fn abort_on(self, abort: Arc<AtomicBool>) -> Self {
        HttpReader { abort, ..self }
    }

    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The whole file's length, when the server said.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    fn connect(&mut self) -> io::Result<()> {
        let mut req = self.agent.get(&self.url);
        if let Some(a) = &self.auth {
            req = req.set("Authorization", a);
        }
        if self.offset > 0 {
            req = req.set("Range", &format!("bytes={}-", self.offset));
            if let Some(v) = &self.validator {
                req = req.set("If-Range", v);
            }
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                return Err(io::Error::other(format!(
                    "{}: HTTP {code} {}",
                    self.url,
                    r.status_text()
                )))
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    e.to_string(),
                ))
            }
        };
        let validator = resp
            .header("ETag")
            .or_else(|| resp.header("Last-Modified"))
            .map(str::to_string);
        if self.offset == 0 {
            if resp.status() != 200 {
                return Err(io::Error::other(format!(
                    "{}: unexpected HTTP {}",
                    self.url,
                    resp.status()
                )));
            }
            self.total = resp.header("Content-Length").and_then(|v| v.parse().ok());
            self.validator = validator;
        } else {
            if resp.status() == 200 {
                return Err(fatal(format!(
                    "{}: the server ignored the Range request (or the file changed) at byte {}; not splicing a fresh copy",
                    self.url, self.offset
                )));
            }
            if resp.status() != 206 {
                return Err(io::Error::other(format!(
                    "{}: unexpected HTTP {} to a Range request",
                    self.url,
                    resp.status()
                )));
            }
            let want = format!("bytes {}-", self.offset);
            let range = resp.header("Content-Range").unwrap_or("");
            let total = range.rsplit('/').next().and_then(|t| t.parse::<u64>().ok());
            if self.total.is_none() {
                // The first request of a resume after a restart: learn the length here.
                self.total = total;
                if self.validator.is_none() {
                    self.validator = validator.clone();
                }
            }
            if !range.starts_with(&want) || (self.total.is_some() && total != self.total) {
                return Err(fatal(format!(
                    "{}: asked for {want}…, the server answered `{range}`",
                    self.url
                )));
            }
            if validator.is_some() && self.validator.is_some() && validator != self.validator {
                return Err(fatal(format!(
                    "{}: the file changed between requests",
                    self.url
                )));
            }
        }
        self.body = Some(Box::new(resp.into_reader()));
        Ok(())
    }

    /// Waits before the next reconnection; an error if an abort cut the wait short.
    fn backoff(&mut self) -> io::Result<()> {
        if sleep_unless(&self.abort, self.backoff.next_delay()) {
            return Err(io::Error::other(format!(
                "{}: download aborted at byte {}",
                self.url, self.offset
            )));
        }
        Ok(())
    }
}

/// An error that retrying cannot fix.
fn fatal(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Read for HttpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.body.is_none() {
                if let Err(e) = self.connect() {
                    if e.kind() == io::ErrorKind::InvalidData || self.retries_left == 0 {
                        return Err(e);
                    }
                    tracing::warn!("download: {e}; retrying ({} left)", self.retries_left);
                    self.retries_left -= 1;
                    self.backoff()?;
                    continue;
                }
            }
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            match body.read(buf) {
                Ok(0) if self.total.is_some_and(|t| self.offset < t) => {
                    // The body ended early: a dropped connection, not the end of the bundle.
                }
                Ok(0) => return Ok(0),
                Ok(n) => {
                    self.offset += n as u64;
                    // Progress resets the budget: only drops in a row count.
                    self.retries_left = self.max_retries;
                    self.backoff.reset();
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if self.retries_left == 0 {
                        return Err(io::Error::new(
                            e.kind(),
                            format!(
                                "{}: {e} (retries exhausted at byte {})",
                                self.url, self.offset
                            ),
                        ));
                    }
                    tracing::warn!("download dropped at byte {}: {e}", self.offset);
                }
            }
            self.body = None;
            if self.retries_left == 0 {
                return Err(io::Error::other(format!(
                    "{}: connection dropped at byte {} (retries exhausted)",
                    self.url, self.offset
                )));
            }
            self.retries_left -= 1;
            self.backoff()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    /// A server that promises 1000 bytes, sends 10 and hangs up, then refuses
    /// every reconnection: the reader can only retry and wait.
    fn dropping_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/bundle", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = conn.read(&mut req);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789");
            // Dropping the listener with the connection makes reconnections fail.
        });
        url
    }

    #[test]
    fn an_abort_cuts_a_retry_wait_short() {
        let url = dropping_server();
        let abort = Arc::new(AtomicBool::new(false));
        let mut r = HttpReader::new(&url, Duration::from_secs(5), 5)
            .unwrap()
            .abort_on(abort.clone());
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            abort.store(true, Ordering::SeqCst);
        });
        let start = Instant::now();
        let mut buf = Vec::new();
        let err = r.read_to_end(&mut buf).unwrap_err();
        setter.join().unwrap();
        assert!(err.to_string().contains("download aborted"), "{err}");
        assert_eq!(buf, b"0123456789");
        // Five retries would wait several seconds; the abort ends the first waits.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
}
