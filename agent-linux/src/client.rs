//! The controller's device API over HTTP(S) (docs/api.md): enroll, poll and report, and the TLS setup every https connection of the agent shares.
//!
//! Blocking calls on ureq: the daemon runs each caller (poller, report sender,
//! install) on its own thread, so there is nothing to multiplex. Errors are
//! sorted by what the caller should do about them: [`ClientError::Unreachable`]
//! and 5xx/429 answers are worth retrying later, other refusals are not (see
//! [`ClientError::retryable`]).

use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use molt_engine::protocol::{
    ApiError, EnrollRequest, EnrollResponse, PollRequest, PollResponse, Report, ReportResponse,
    API_PREFIX,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Config;

/// Connecting to the controller gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// One API call (not a bundle download) gives up after this long.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The TLS client configuration for every https connection: the public web PKI
/// roots, plus the certificates of `controller_ca` when the configuration names one.
pub fn tls_config(cfg: &Config) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &cfg.controller_ca {
        let file = File::open(path)
            .with_context(|| format!("controller_ca: cannot open {}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_reader_iter(BufReader::new(file)) {
            let cert = cert
                .map_err(|e| anyhow!("controller_ca: {} is not a PEM file: {e}", path.display()))?;
            roots.add(cert).map_err(|e| {
                anyhow!(
                    "controller_ca: a certificate in {} is unusable: {e}",
                    path.display()
                )
            })?;
            added += 1;
        }
        if added == 0 {
            anyhow::bail!(
                "controller_ca: {} holds no `BEGIN CERTIFICATE` block",
                path.display()
            );
        }
    }
    // The provider is named, not taken from the process default: the workspace may
    // enable several, and rustls refuses to guess between them.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(tls))
}

/// An HTTP agent with the configured TLS roots and these timeouts.
pub fn http_agent(cfg: &Config, connect: Duration, read: Duration) -> Result<ureq::Agent> {
    Ok(ureq::AgentBuilder::new()
        .tls_config(tls_config(cfg)?)
        .timeout_connect(connect)
        .timeout_read(read)
        .timeout_write(read)
        .build())
}

/// Why a call to the controller did not succeed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// No answer: the controller is down, unreachable, too slow, or TLS failed.
    Unreachable {
        /// The URL called.
        url: String,
        /// What the transport said.
        why: String,
    },
    /// The controller answered with an error status.
    Refused {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The answer's `error` field (or its text).
        error: String,
        /// `Retry-After`, when the answer had one (429, 503).
        retry_after: Option<Duration>,
    },
    /// A 2xx answer whose body is not what the API promises.
    BadAnswer {
        /// The URL called.
        url: String,
        /// What was wrong with it.
        why: String,
    },
}

impl ClientError {
    /// Whether trying again later can help: no answer, a server error, or `429`.
    /// Any other refusal (`400`, `403`, `404`, `413`) will be the same next time.
    /// `401` counts as retryable: a credential can be restored on the controller,
    /// and giving up would lose reports for good.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Refused { status, .. } => {
                *status >= 500 || *status == 429 || *status == 401 || *status == 408
            }
            ClientError::BadAnswer { .. } => true,
        }
    }

    /// The delay the controller asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short kind, for "is this the same trouble as last time" in logs.
    pub fn kind(&self) -> String {
        match self {
            ClientError::Unreachable { .. } => "unreachable".into(),
            ClientError::Refused { status, .. } => format!("HTTP {status}"),
            ClientError::BadAnswer { .. } => "bad answer".into(),
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable { url, why } => {
                write!(f, "cannot reach the controller at {url}: {why}")
            }
            ClientError::Refused {
                url, status, error, ..
            } => write!(f, "{url}: the controller answered {status}: {error}"),
            ClientError::BadAnswer { url, why } => {
                write!(f, "{url}: unexpected answer from the controller: {why}")
            }
        }
    }
}

impl std::error::Error for ClientError {}

/// A transport error without the URL ureq repeats in its `Display` (ours names it once).
fn transport_error(t: &ureq::Transport) -> String {
    let mut s = t.kind().to_string();
    if let Some(m) = t.message() {
        s.push_str(": ");
        s.push_str(m);
    }
    if let Some(src) = std::error::Error::source(t) {
        s.push_str(": ");
        s.push_str(&src.to_string());
    }
    s
}

/// A client of one controller, with or without the device's credential.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    credential: Option<String>,
}

impl Client {
    /// A client of the controller at `base` (`http(s)://host[:port]`, no trailing `/`).
    pub fn new(cfg: &Config, base: &str, credential: Option<String>) -> Result<Client> {
        Ok(Client {
            agent: http_agent(cfg, CONNECT_TIMEOUT, CALL_TIMEOUT)?,
            base: base.trim_end_matches('/').to_owned(),
            credential,
        })
    }

    /// The controller's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// An absolute URL for a path the controller handed out (`bundle_path`).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// `POST /api/v1/device/enroll`.
    pub fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.post("/device/enroll", req)
    }

    /// `POST /api/v1/device/poll`.
    pub fn poll(&self, req: &PollRequest) -> Result<PollResponse, ClientError> {
        self.post("/device/poll", req)
    }

    /// `POST /api/v1/device/deployments/{id}/report`.
    pub fn report(&self, deployment: u64, r: &Report) -> Result<ReportResponse, ClientError> {
        self.post(&format!("/device/deployments/{deployment}/report"), r)
    }

    fn post<Q: Serialize, A: DeserializeOwned>(
        &self,
        route: &str,
        body: &Q,
    ) -> Result<A, ClientError> {
        let url = format!("{}{API_PREFIX}{route}", self.base);
        let body = serde_json::to_string(body).map_err(|e| ClientError::BadAnswer {
            url: url.clone(),
            why: format!("cannot encode the request: {e}"),
        })?;
        let mut req = self
            .agent
            .post(&url)
            .set("Content-Type", "application/json");
        if let Some(c) = &self.credential {
            req = req.set("Authorization", &format!("Bearer {c}"));
        }
        let resp = match req.send_string(&body) {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) => {
                let retry_after = r
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let text = r.into_string().unwrap_or_default();
                let error = serde_json::from_str::<ApiError>(&text)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| text.trim().chars().take(200).collect());
                return Err(ClientError::Refused {
                    url,
                    status,
                    error,
                    retry_after,
                });
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(ClientError::Unreachable {
                    url,
                    why: transport_error(&t),
                })
            }
        };
        let text = resp.into_string().map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            why: format!("reading the answer: {e}"),
        })?;
        serde_json::from_str(&text).map_err(|e| ClientError::BadAnswer {
            url,
            why: format!("{e} in {:?}", text.chars().take(200).collect::<String>()),
        })
    }
}
