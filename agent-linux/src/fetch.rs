//! Where bundle bytes come from: a local file (USB, offline), or HTTP with `Range` resume after drops.
//!
//! The HTTP reader hides connection drops from the decoder: when a read fails
//! or the body ends early, it reconnects with `Range: bytes=<offset>-` (and
//! `If-Range` with the first response's validator), up to a retry limit with
//! exponential backoff and jitter. A server that ignores the range (answers 200),
//! answers a different range, or changed the file (a different validator or
//! length) is refused rather than spliced: the decoder would catch a splice by
//! its digests anyway, but the error says what really happened. A read that
//! stalls longer than the configured stall timeout counts as a drop.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::config::Config;

/// An open bundle source.
pub struct Source {
    /// The bundle's bytes from the requested offset on.
    pub reader: Box<dyn Read>,
    /// What identifies this version of the file on the server (`ETag` or
    /// `Last-Modified`), kept with a resume checkpoint so a resume after a restart
    /// refuses a file that changed; `None` for local files (the signed chunk chain
    /// catches a changed file anyway).
    pub validator: Option<String>,
}

/// Opens a bundle source: an `http://` URL or a file path.
pub fn open(source: &str, cfg: &Config) -> Result<Box<dyn Read>> {
    Ok(open_at(source, cfg, 0, None)?.reader)
}

/// Opens a bundle source at byte `offset`: a `Range` request for HTTP (with `If-Range:
/// validator`), a seek for a file.
pub fn open_at(
    source: &str,
    cfg: &Config,
    offset: u64,
    validator: Option<String>,
) -> Result<Source> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let r = HttpReader::new_at(source, cfg.timeouts.download_stall, 5, offset, validator)?;
        Ok(Source {
            validator: r.validator.clone(),
            reader: Box::new(r),
        })
    } else {
        let mut f =
            File::open(source).with_context(|| format!("cannot open bundle file {source}"))?;
        if offset > 0 {
            f.seek(SeekFrom::Start(offset))
                .with_context(|| format!("cannot seek {source} to byte {offset}"))?;
        }
        Ok(Source {
            reader: Box::new(f),
            validator: None,
        })
    }
}

/// A resuming HTTP body reader.
pub struct HttpReader {
    agent: ureq::Agent,
    url: String,
    offset: u64,
    total: Option<u64>,
    validator: Option<String>,
    body: Option<Box<dyn Read + Send + Sync>>,
    retries_left: u32,
    max_retries: u32,
    attempt: u32,
}

impl HttpReader {
    /// Connects to `url`. `stall` bounds every single read; `max_retries` bounds reconnections in a row.
    pub fn new(url: &str, stall: Duration, max_retries: u32) -> Result<Self> {
        Self::new_at(url, stall, max_retries, 0, None)
    }

    /// Connects to `url` and asks for the bytes from `offset` on; with a `validator` (from
    /// an earlier download of the same URL), a file that changed since is refused.
    pub fn new_at(
        url: &str,
        stall: Duration,
        max_retries: u32,
        offset: u64,
        validator: Option<String>,
    ) -> Result<Self> {
        if url.starts_with("https://") {
            bail!("https bundle URLs need TLS, which this build of molt-agent leaves out; use http on a trusted network or a file (bundles are signed either way)");
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(stall)
            .timeout_read(stall)
            .build();
        let mut r = HttpReader {
            agent,
            url: url.to_string(),
            offset,
            total: None,
            validator,
            body: None,
            retries_left: max_retries,
            max_retries,
            attempt: 0,
        };
        r.connect().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(r)
    }

    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn connect(&mut self) -> io::Result<()> {
        let mut req = self.agent.get(&self.url);
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

    fn backoff(&mut self) {
        self.attempt += 1;
        let base = 200u64.saturating_mul(1 << self.attempt.min(6));
        // Jitter from the clock's low bits spreads a fleet that lost the same server.
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()) % (base / 2 + 1))
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(base + jitter));
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
                    self.backoff();
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
                    self.attempt = 0;
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
            self.backoff();
        }
    }
}
