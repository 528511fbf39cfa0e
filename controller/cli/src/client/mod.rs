//! The operator API client behind the `molt` CLI's remote commands: HTTP(S) calls to one controller with errors worded for the operator.
//!
//! Everything here speaks docs/api.md through the message types of
//! [`molt_api`]. The CLI (`src/main.rs`) only parses arguments, calls one
//! of these functions and prints what it returns, so the rendering and the
//! encoding are testable without a terminal or a server. The pieces:
//!
//! * this module: [`Client`] (one method per route, uploads with progress) and
//!   [`RequestError`];
//! * [`login`]: where the controller, token and CA come from (flags, environment,
//!   the login `molt login` saved);
//! * [`tls`]: the web PKI roots plus `--ca`, and spotting a refused certificate;
//! * [`push`]: what `molt update push` checks and sends: a bundle's identity, or a
//!   recipe and every file it names as a form;
//! * [`multipart`]: that form's streaming multipart/form-data body;
//! * [`render`]: the tables and lines the commands print;
//! * [`lookup`]: an update or device named by the operator, found in a list.
//!
//! Errors are worded for the operator at the keyboard: an unreachable controller,
//! a refused certificate, a refused token and a server-side refusal each get one
//! sentence that says what to do next ([`RequestError`]).

pub mod login;
pub mod lookup;
pub mod multipart;
pub mod push;
pub mod render;
pub mod tls;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use login::Target;
use molt_api::plan::RolloutPlan;
use molt_api::{encode_component, DeployToOthers, GroupPatch, NewDeployment, NewGroup, Resume};
use molt_bundle::inspect::human;
use multipart::Multipart;
use tls::CertRefusal;

/// Every operator route's prefix.
pub const API: &str = "/api/v1";

/// Why a request failed, in the words the operator sees.
#[derive(Debug)]
pub enum RequestError {
    /// No connection (refused, DNS, reset, timeout).
    Unreachable {
        /// The controller's base URL.
        controller: String,
        /// What the network said.
        detail: String,
    },
    /// The TLS handshake failed on the controller's certificate.
    Certificate {
        /// The controller's base URL.
        controller: String,
        /// Why it was refused.
        why: CertRefusal,
        /// The CA file that was trusted besides the public roots, if any.
        ca: Option<PathBuf>,
    },
    /// 401: the token is unknown (or missing).
    BadToken,
    /// Any other 4xx or 5xx.
    Status {
        /// The HTTP status.
        code: u16,
        /// The server's `{"error": …}` text, or the start of a body that is not one.
        message: String,
    },
    /// A 2xx whose body is not what docs/api.md says.
    BadAnswer {
        /// `GET /api/v1/groups` and the like.
        request: String,
        /// What did not parse.
        detail: String,
    },
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Unreachable { controller, detail } => {
                write!(f, "cannot reach the controller at {controller}: {detail}")
            }
            RequestError::Certificate {
                controller,
                why: CertRefusal::Untrusted(detail),
                ca: None,
            } => write!(
                f,
                "the certificate of the controller at {controller} does not verify ({detail}): \
                 if it uses a private CA or a self-signed certificate, pass that certificate \
                 with --ca FILE (or set MOLT_CA)"
            ),
            RequestError::Certificate {
                controller,
                why: CertRefusal::Untrusted(detail),
                ca: Some(ca),
            } => write!(
                f,
                "the certificate of the controller at {controller} does not verify against \
                 the public roots nor the CA file {} ({detail}): check that --ca names the \
                 certificate that signed it",
                ca.display()
            ),
            RequestError::Certificate {
                controller,
                why: CertRefusal::CaAsServer,
                ..
            } => write!(
                f,
                "the certificate of the controller at {controller} is a CA certificate \
                 (basicConstraints CA:TRUE), which TLS refuses as a server's own certificate: \
                 serve one signed by that CA (and pass the CA with --ca FILE), or a self-signed \
                 one made with `-addext basicConstraints=critical,CA:FALSE`"
            ),
            RequestError::Certificate {
                controller,
                why: CertRefusal::Other(detail),
                ..
            } => write!(
                f,
                "the certificate of the controller at {controller} does not verify: {detail}"
            ),
            RequestError::BadToken => write!(f, "the controller refused the token: run molt login"),
            RequestError::Status { code, message } => write!(f, "{message} (HTTP {code})"),
            RequestError::BadAnswer { request, detail } => {
                write!(
                    f,
                    "unexpected answer from the controller to {request}: {detail}"
                )
            }
        }
    }
}

impl std::error::Error for RequestError {}

/// Read timeout of ordinary requests.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Read timeout after an upload: the controller verifies, stores or builds before answering.
const UPLOAD_READ_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A client of one controller's operator API.
pub struct Client {
    base: String,
    token: String,
    ca: Option<PathBuf>,
    agent: ureq::Agent,
    upload_agent: ureq::Agent,
}

impl Client {
    /// A client for `target`; fails only on a CA file that cannot be used.
    pub fn new(target: &Target) -> Result<Client> {
        let tls = tls::tls_config(target.ca.as_deref())?;
        let agent = |read: Duration| {
            ureq::AgentBuilder::new()
                .tls_config(Arc::clone(&tls))
                .timeout_connect(Duration::from_secs(10))
                .timeout_read(read)
                .user_agent(concat!("molt/", env!("CARGO_PKG_VERSION")))
                // A redirect would carry the token to wherever it points.
                .redirects(0)
                .build()
        };
        Ok(Client {
            base: target.controller.clone(),
            token: target.token.clone(),
            ca: target.ca.clone(),
            agent: agent(READ_TIMEOUT),
            upload_agent: agent(UPLOAD_READ_TIMEOUT),
        })
    }

    fn request(&self, agent: &ureq::Agent, method: &str, path: &str) -> ureq::Request {
        agent
            .request(method, &format!("{}{API}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Accept", "application/json")
    }

    /// Turns a ureq failure into the operator's sentence.
    fn failure(&self, e: ureq::Error) -> RequestError {
        match e {
            ureq::Error::Status(401, _) => RequestError::BadToken,
            ureq::Error::Status(code, resp) => {
                let status_text = resp.status_text().to_owned();
                let body = resp.into_string().unwrap_or_default();
                let message = match serde_json::from_str::<molt_api::ApiError>(&body) {
                    Ok(e) => e.error,
                    Err(_) => {
                        let start: String = body.trim().chars().take(300).collect();
                        if start.is_empty() {
                            format!("the controller answered {code} {status_text}")
                        } else {
                            format!("the controller answered {code} {status_text}: {start}")
                        }
                    }
                };
                RequestError::Status { code, message }
            }
            ureq::Error::Transport(t) => match tls::certificate_refusal(&t) {
                Some(why) => RequestError::Certificate {
                    controller: self.base.clone(),
                    why,
                    ca: self.ca.clone(),
                },
                None => RequestError::Unreachable {
                    controller: self.base.clone(),
                    detail: transport_detail(&t),
                },
            },
        }
    }

    /// Sends a request (with `body`, JSON text, when given) and parses the JSON answer.
    fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<T, RequestError> {
        let req = self.request(&self.agent, method, path);
        let sent = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(&b),
            None => req.call(),
        };
        let resp = sent.map_err(|e| self.failure(e))?;
        parse_answer(resp, &format!("{method} {API}{path}"))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, RequestError> {
        self.json("GET", path, None)
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, RequestError> {
        // The API's message types always serialize.
        let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned());
        self.json("POST", path, Some(text))
    }

    /// `GET /groups`.
    pub fn groups<T: DeserializeOwned>(&self) -> Result<T, RequestError> {
        self.get("/groups")
    }

    /// `POST /groups`.
    pub fn create_group<T: DeserializeOwned>(&self, name: &str) -> Result<T, RequestError> {
        self.post(
            "/groups",
            &NewGroup {
                name: name.to_owned(),
            },
        )
    }

    /// `GET /devices`, optionally of one group.
    pub fn devices<T: DeserializeOwned>(&self, group: Option<&str>) -> Result<T, RequestError> {
        match group {
            Some(g) => self.get(&format!("/devices?group={}", encode_component(g))),
            None => self.get("/devices"),
        }
    }

    /// `GET /devices/{id}`.
    pub fn device<T: DeserializeOwned>(&self, id: &str) -> Result<T, RequestError> {
        self.get(&format!("/devices/{}", encode_component(id)))
    }

    /// `DELETE /devices/{id}`.
    pub fn remove_device<T: DeserializeOwned>(&self, id: &str) -> Result<T, RequestError> {
        self.json(
            "DELETE",
            &format!("/devices/{}", encode_component(id)),
            None,
        )
    }

    /// `PATCH /groups/{name}`.
    pub fn patch_group<T: DeserializeOwned>(
        &self,
        name: &str,
        patch: &GroupPatch,
    ) -> Result<T, RequestError> {
        // The API's message types always serialize.
        let body = serde_json::to_string(patch).unwrap_or_else(|_| "{}".to_owned());
        self.json(
            "PATCH",
            &format!("/groups/{}", encode_component(name)),
            Some(body),
        )
    }

    /// `DELETE /updates/{id}`.
    pub fn delete_update<T: DeserializeOwned>(&self, id: u64) -> Result<T, RequestError> {
        self.json("DELETE", &format!("/updates/{id}"), None)
    }

    /// `GET /updates`.
    pub fn updates<T: DeserializeOwned>(&self) -> Result<T, RequestError> {
        self.get("/updates")
    }

    /// `POST /deployments`.
    pub fn deploy<T: DeserializeOwned>(&self, d: &NewDeployment) -> Result<T, RequestError> {
        self.post("/deployments", d)
    }

    /// `POST /deployments/{id}/deploy-to-others`.
    pub fn deploy_to_others<T: DeserializeOwned>(
        &self,
        deployment: u64,
        group: &str,
        plan: Option<RolloutPlan>,
    ) -> Result<T, RequestError> {
        self.post(
            &format!("/deployments/{deployment}/deploy-to-others"),
            &DeployToOthers {
                group: group.to_owned(),
                plan,
            },
        )
    }

    /// `POST /deployments/{id}/resume`.
    pub fn resume<T: DeserializeOwned>(
        &self,
        deployment: u64,
        plan: Option<RolloutPlan>,
    ) -> Result<T, RequestError> {
        self.post(
            &format!("/deployments/{deployment}/resume"),
            &Resume { plan },
        )
    }

    /// `GET /deployments` (recent updates, newest first).
    pub fn deployments<T: DeserializeOwned>(&self, limit: u32) -> Result<T, RequestError> {
        self.get(&format!("/deployments?limit={limit}"))
    }

    /// `GET /deployments/{id}`.
    pub fn deployment<T: DeserializeOwned>(&self, id: u64) -> Result<T, RequestError> {
        self.get(&format!("/deployments/{id}"))
    }

    /// `POST /deployments/{id}/abort`.
    pub fn abort<T: DeserializeOwned>(&self, id: u64) -> Result<T, RequestError> {
        self.post(&format!("/deployments/{id}/abort"), &serde_json::Map::new())
    }

    /// `GET /deployments/{id}/devices/{device}/log`: the text.
    pub fn log(&self, deployment: u64, device: &str) -> Result<String, RequestError> {
        let path = format!(
            "/deployments/{deployment}/devices/{}/log",
            encode_component(device)
        );
        let resp = self
            .request(&self.agent, "GET", &path)
            .set("Accept", "text/plain")
            .call()
            .map_err(|e| self.failure(e))?;
        // Logs are kept to 1 MiB per device and deployment; read them whole, whatever ureq's default cap.
        let mut text = Vec::new();
        resp.into_reader()
            .take(64 << 20)
            .read_to_end(&mut text)
            .map_err(|e| RequestError::Unreachable {
                controller: self.base.clone(),
                detail: format!("the log broke off: {e}"),
            })?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// `POST /updates?comment=…`: streams the bundle at `path`, counting bytes on `progress`.
    pub fn push_bundle(
        &self,
        path: &Path,
        comment: Option<&str>,
        progress: &ProgressBar,
    ) -> Result<Value> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        self.upload(
            &with_comment("/updates", comment),
            "application/octet-stream",
            len,
            Box::new(file),
            progress,
        )
    }

    /// `POST /updates/build`: the recipe and every file it names, as multipart/form-data.
    pub fn build_recipe(
        &self,
        form: Multipart,
        comment: Option<&str>,
        progress: &ProgressBar,
    ) -> Result<Value> {
        let content_type = form.content_type();
        let len = form.len();
        self.upload(
            &with_comment("/updates/build", comment),
            &content_type,
            len,
            Box::new(form.into_reader()),
            progress,
        )
    }

    fn upload(
        &self,
        path: &str,
        content_type: &str,
        len: u64,
        body: Box<dyn Read + Send>,
        progress: &ProgressBar,
    ) -> Result<Value> {
        progress.set_length(len);
        progress.set_message("uploading");
        let sent = Arc::new(AtomicU64::new(0));
        let local_error = Arc::new(Mutex::new(None));
        let reader = Counting {
            inner: body,
            progress: progress.clone(),
            sent: Arc::clone(&sent),
            error: Arc::clone(&local_error),
        };
        let answer = self
            .request(&self.upload_agent, "POST", path)
            .set("Content-Type", content_type)
            .set("Content-Length", &len.to_string())
            .send(reader);
        progress.finish_and_clear();
        let resp = match answer {
            Ok(r) => r,
            Err(e) => {
                // Our own reader failing (a file changed or vanished) is reported as such,
                // not as a network problem.
                if let Some(own) = local_error.lock().ok().and_then(|mut g| g.take()) {
                    bail!("{own}");
                }
                let sent = sent.load(Ordering::Relaxed);
                let failure = self.failure(e);
                if matches!(failure, RequestError::Unreachable { .. }) && sent > 0 {
                    bail!(
                        "{failure} (the connection broke after {} of {}; the controller may \
                         have refused the upload: its log says why)",
                        human(sent),
                        human(len)
                    );
                }
                return Err(failure.into());
            }
        };
        Ok(parse_answer(resp, &format!("POST {API}{path}"))?)
    }
}

/// ureq's transport error, without the URL it repeats (the message names the controller already).
fn transport_detail(t: &ureq::Transport) -> String {
    use std::error::Error as _;
    let mut parts = Vec::new();
    if let Some(m) = t.message() {
        parts.push(m.to_owned());
    }
    let mut source = t.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        parts.push(t.kind().to_string());
    }
    parts.join(": ")
}

fn parse_answer<T: DeserializeOwned>(
    resp: ureq::Response,
    request: &str,
) -> Result<T, RequestError> {
    let mut body = Vec::new();
    resp.into_reader()
        .take(256 << 20)
        .read_to_end(&mut body)
        .map_err(|e| RequestError::BadAnswer {
            request: request.to_owned(),
            detail: format!("the answer broke off: {e}"),
        })?;
    serde_json::from_slice(&body).map_err(|e| RequestError::BadAnswer {
        request: request.to_owned(),
        detail: e.to_string(),
    })
}

fn with_comment(path: &str, comment: Option<&str>) -> String {
    match comment {
        Some(c) => format!("{path}?comment={}", encode_component(c)),
        None => path.to_owned(),
    }
}

/// A reader that counts what the upload took, for the progress bar and for the message
/// when the connection breaks, and keeps its own I/O errors apart from the network's.
struct Counting {
    inner: Box<dyn Read + Send>,
    progress: ProgressBar,
    sent: Arc<AtomicU64>,
    error: Arc<Mutex<Option<String>>>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.sent.fetch_add(n as u64, Ordering::Relaxed);
                self.progress.inc(n as u64);
                Ok(n)
            }
            Err(e) => {
                if let Ok(mut slot) = self.error.lock() {
                    *slot = Some(e.to_string());
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_api::Group;
    use std::io::Write;
    use std::net::TcpListener;
    use std::thread;

    /// A client for `url` with the operator token `token` and the system's CAs.
    fn client(url: &str, token: &str) -> Client {
        Client::new(&Target {
            controller: url.to_owned(),
            token: token.into(),
            ca: None,
        })
        .unwrap()
    }

    /// Serves one canned answer per connection.
    fn fake_server(answers: Vec<String>) -> (String, thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let h = thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in answers {
                let (mut s, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                requests.push(String::from_utf8_lossy(&req).into_owned());
                s.write_all(answer.as_bytes()).unwrap();
            }
            requests
        });
        (url, h)
    }

    #[test]
    fn errors_say_what_the_server_said() {
        let answer = |status: &str, body: &str| {
            format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let (url, h) = fake_server(vec![
            answer("401 Unauthorized", r#"{"error": "unknown token"}"#),
            answer("404 Not Found", r#"{"error": "no deployment 99"}"#),
            answer("502 Bad Gateway", "upstrm!"),
            answer("200 OK", "{}"),
        ]);
        let c = client(&url, "tok en");
        let e = c.groups::<Value>().unwrap_err().to_string();
        assert_eq!(e, "the controller refused the token: run molt login");
        let e = c.deployment::<Value>(99).unwrap_err().to_string();
        assert_eq!(e, "no deployment 99 (HTTP 404)");
        let e = c.updates::<Value>().unwrap_err().to_string();
        assert_eq!(
            e,
            "the controller answered 502 Bad Gateway: upstrm! (HTTP 502)"
        );
        let e = c.groups::<Vec<Group>>().unwrap_err().to_string();
        assert!(
            e.starts_with("unexpected answer from the controller to GET /api/v1/groups"),
            "{e}"
        );
        let requests = h.join().unwrap();
        assert!(
            requests[0].starts_with("GET /api/v1/groups HTTP/1.1\r\n"),
            "{}",
            requests[0]
        );
        assert!(
            requests[0].contains("Authorization: Bearer tok en\r\n"),
            "{}",
            requests[0]
        );
        assert!(
            requests[1].starts_with("GET /api/v1/deployments/99 "),
            "{}",
            requests[1]
        );
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let c = client(&url, "t");
        let e = c.groups::<Value>().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot reach the controller at {url}: ")),
            "{e}"
        );
        assert!(e.to_lowercase().contains("refused"), "{e}");
    }

    #[test]
    fn query_values_and_path_segments_are_encoded() {
        assert_eq!(encode_component("a b&c/é"), "a%20b%26c%2F%C3%A9");
        assert_eq!(
            with_comment("/updates", Some("fix #2")),
            "/updates?comment=fix%20%232"
        );
    }
}
