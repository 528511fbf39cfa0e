//! The operator API client behind the `molt` CLI's remote commands: the saved login, HTTP calls with clear errors, bundle and recipe uploads (a streaming multipart encoder), and the tables the commands print.
//!
//! Everything here speaks docs/api.md through the message types of
//! [`crate::api`]. The CLI (`src/bin/molt.rs`) only parses arguments, calls one
//! of these functions and prints what it returns, so the rendering and the
//! encoding are testable without a terminal or a server.
//!
//! Errors are worded for the operator at the keyboard: an unreachable controller,
//! a refused token and a server-side refusal each get one sentence that says what
//! to do next ([`RequestError`]).

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use molt_engine::bundle::format::MAGIC;
use molt_engine::bundle::zstd::LibZstd;
use molt_engine::bundle::{Buffers, BundleKind, Decoder, Event, Trust};
use molt_engine::protocol::DeviceState;
use molt_engine::Limits;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{
    AbortResult, Counts, DeployToOthers, Deployment, DeploymentDetails, Device, Group,
    NewDeployment, NewGroup, Update,
};
use crate::inspect::human;
use crate::recipe::{self, PackageItem, RecipeFile};

/// Every operator route's prefix.
pub const API: &str = "/api/v1";
/// Environment variable naming the controller's URL (overrides the saved login).
pub const ENV_CONTROLLER: &str = "MOLT_CONTROLLER";
/// Environment variable holding the operator token (overrides the saved login).
pub const ENV_TOKEN: &str = "MOLT_TOKEN";

// ---------------------------------------------------------------------------
// The saved login and where the controller and token come from.

/// What `molt login` saves in `cli.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLogin {
    /// The controller's base URL (`http://host:port`, no trailing `/`).
    pub controller: String,
    /// The operator token.
    pub token: String,
}

/// `$XDG_CONFIG_HOME/molt/cli.toml`, else `$HOME/.config/molt/cli.toml`; `None` without either.
///
/// A relative `XDG_CONFIG_HOME` is ignored, as the XDG base directory spec asks.
pub fn config_path(xdg_config_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let xdg = xdg_config_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = match xdg {
        Some(p) => p,
        None => PathBuf::from(home.filter(|h| !h.is_empty())?).join(".config"),
    };
    Some(base.join("molt").join("cli.toml"))
}

/// [`config_path`] from this process's environment.
pub fn default_config_path() -> Option<PathBuf> {
    config_path(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
}

/// Reads the saved login; `Ok(None)` when there is none.
///
/// Warns (on stderr) when the file is readable by others, as ssh does for keys: it
/// holds a secret that controls the whole fleet.
pub fn load_login(path: &Path) -> Result<Option<SavedLogin>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: {} holds the operator token and is readable by others (mode {mode:04o}); chmod 600 it",
                path.display()
            );
        }
    }
    let saved: SavedLogin =
        toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(Some(saved))
}

/// Writes the login to `path` with mode 0600 (its directory 0700 when created),
/// atomically: a temporary file beside it, renamed over it.
pub fn save_login(path: &Path, login: &SavedLogin) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no directory", path.display()))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let text = toml::to_string(login).context("cannot format the login")?;
    let text = format!(
        "# Written by `molt login`; holds the operator token: keep it private (mode 0600).\n{text}"
    );
    let tmp = dir.join(format!(".cli.toml.{}.tmp", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            // The mode given to open applies only to a new file; a stale temporary keeps its own.
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Checks and normalizes a controller URL: `http://` or `https://`, a host, no trailing `/`.
pub fn normalize_url(raw: &str) -> Result<String> {
    let url = raw.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        None if url.contains("://") => {
            bail!("controller URL `{raw}`: only http:// and https:// are supported")
        }
        None => bail!("controller URL `{raw}` needs a scheme, such as http://{url}"),
        Some("") => bail!("controller URL `{raw}` has no host"),
        Some(r) if r.contains(['?', '#']) => {
            bail!("controller URL `{raw}`: give the base URL only, without a query")
        }
        Some(_) => Ok(url.to_owned()),
    }
}

/// The controller and token a command talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The base URL, normalized.
    pub controller: String,
    /// The operator token.
    pub token: String,
}

/// Where the controller and token come from, strongest first: the `--controller` and
/// `--token` flags, the `MOLT_CONTROLLER` and `MOLT_TOKEN` variables, the saved login.
///
/// The saved token is used only with the saved controller: a token is never sent to a
/// controller it was not saved for.
pub fn resolve(
    flag_controller: Option<&str>,
    flag_token: Option<&str>,
    env_controller: Option<&str>,
    env_token: Option<&str>,
    saved: Option<&SavedLogin>,
) -> Result<Target> {
    fn nonempty(s: Option<&str>) -> Option<&str> {
        s.map(str::trim).filter(|s| !s.is_empty())
    }
    let controller = match nonempty(flag_controller).or(nonempty(env_controller)) {
        Some(c) => normalize_url(c)?,
        None => match saved {
            Some(s) => normalize_url(&s.controller)?,
            None => bail!("no controller configured: run molt login --controller URL"),
        },
    };
    let token = match nonempty(flag_token).or(nonempty(env_token)) {
        Some(t) => t.to_owned(),
        None => match saved {
            Some(s) if normalize_url(&s.controller).ok().as_deref() == Some(&controller) => {
                s.token.clone()
            }
            _ => bail!(
                "no operator token for {controller}: run molt login --controller {controller} \
                 (or set {ENV_TOKEN})"
            ),
        },
    };
    Ok(Target { controller, token })
}

// ---------------------------------------------------------------------------
// HTTP.

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
    agent: ureq::Agent,
    upload_agent: ureq::Agent,
}

impl Client {
    /// A client for `target`.
    pub fn new(target: &Target) -> Client {
        let agent = |read: Duration| {
            ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout_read(read)
                .user_agent(concat!("molt/", env!("CARGO_PKG_VERSION")))
                // A redirect would carry the token to wherever it points.
                .redirects(0)
                .build()
        };
        Client {
            base: target.controller.clone(),
            token: target.token.clone(),
            agent: agent(READ_TIMEOUT),
            upload_agent: agent(UPLOAD_READ_TIMEOUT),
        }
    }

    /// The controller's base URL.
    pub fn controller(&self) -> &str {
        &self.base
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
                let message = match serde_json::from_str::<crate::api::ApiError>(&body) {
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
            ureq::Error::Transport(t) => {
                let detail = match t.kind() {
                    ureq::ErrorKind::UnknownScheme => {
                        "this molt speaks plain http:// only (built without TLS)".to_owned()
                    }
                    _ => transport_detail(&t),
                };
                RequestError::Unreachable {
                    controller: self.base.clone(),
                    detail,
                }
            }
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
    ) -> Result<T, RequestError> {
        self.post(
            &format!("/deployments/{deployment}/deploy-to-others"),
            &DeployToOthers {
                group: group.to_owned(),
            },
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

/// Percent-encodes everything but RFC 3986's unreserved characters (for a path segment or a query value).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
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

// ---------------------------------------------------------------------------
// Bundles and recipes before upload.

/// What `molt update push` was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushKind {
    /// A bundle file (starts with the magic).
    Bundle,
    /// A recipe (anything else; checked when parsed).
    Recipe,
}

/// Tells a bundle from a recipe by the file's first bytes.
pub fn push_kind(path: &Path) -> Result<PushKind> {
    if path.is_dir() {
        bail!(
            "{} is a directory: give a bundle (molt bundle build) or a recipe file",
            path.display()
        );
    }
    let mut head = Vec::with_capacity(MAGIC.len());
    File::open(path)
        .and_then(|f| f.take(MAGIC.len() as u64).read_to_end(&mut head))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(if head == MAGIC {
        PushKind::Bundle
    } else {
        PushKind::Recipe
    })
}

/// A bundle's identity, read from its (not yet verified) manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleInfo {
    /// The update version.
    pub version: String,
    /// The hardware it is for.
    pub compatible: String,
    /// Full or patch.
    pub full: bool,
    /// File size.
    pub size: u64,
}

/// Reads a bundle's manifest through the engine's decoder, without checking the signature
/// (the controller does that with its trusted keys): enough to refuse a file that is not a
/// bundle, or a version the controller already has, before uploading gigabytes.
pub fn bundle_info(path: &Path) -> Result<BundleInfo> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    let limits = Limits::DEFAULT;
    let (m, w, r) = Buffers::required(&limits, limits.max_chunk_size);
    let (mut mb, mut wb, mut rb) = (vec![0u8; m], vec![0u8; w], vec![0u8; r]);
    let z = LibZstd::new().context("cannot create a zstd decoder")?;
    let bufs = Buffers {
        manifest: &mut mb,
        wire: &mut wb,
        raw: &mut rb,
    };
    let mut d = Decoder::new(Trust::InspectOnly, limits, z, bufs);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if n == 0 {
            let why = d
                .finish()
                .err()
                .map_or("no manifest".to_owned(), |e| e.to_string());
            bail!("{}: not a usable bundle: {why}", path.display());
        }
        let mut rest = buf.get(..n).unwrap_or(&[]);
        while !rest.is_empty() {
            let feed = d
                .feed(rest)
                .map_err(|e| anyhow!("{}: not a usable bundle: {e}", path.display()))?;
            rest = rest.get(feed.consumed..).unwrap_or(&[]);
            match feed.event {
                Some(Event::ManifestVerified { .. }) => {
                    let m = d
                        .manifest()
                        .map_err(|e| anyhow!("{}: not a usable bundle: {e}", path.display()))?;
                    return Ok(BundleInfo {
                        version: m.version.to_owned(),
                        compatible: m.compatible.to_owned(),
                        full: matches!(m.kind, BundleKind::Full),
                        size,
                    });
                }
                None => break,
                Some(_) => {}
            }
        }
    }
}

/// The `recipe` part's name in `POST /updates/build`.
pub const RECIPE_PART: &str = "recipe";

/// Part header: what a part holds, `file` (the default), `dir` or `symlink`.
pub const TYPE_HEADER: &str = "X-Molt-Type";
/// Part header: permission bits, octal (`0755`).
pub const MODE_HEADER: &str = "X-Molt-Mode";
/// Part header: modification time, Unix seconds.
pub const MTIME_HEADER: &str = "X-Molt-Mtime";

/// The form `POST /updates/build` takes for the recipe at `recipe_path`.
///
/// The recipe is checked first exactly as `molt bundle build` checks it, so a typo is
/// reported here, with the field's name, before anything is sent. Then:
///
/// * the part `recipe`: the recipe file's text;
/// * one part per path the recipe names (`[[files]] source`, the `script` of
///   `[before]`, `[after]`, `[health_check]` and `[rollback]`, and shipped package
///   `file`s), named by the string exactly as the recipe writes it, holding the file;
/// * a directory source is a part of type `dir` (empty body) named by the source, and
///   every entry below it a part named `source/relative/path`: files, directories
///   (so empty ones and their modes survive) and symlinks (the body is the link's target).
///
/// Each part carries [`TYPE_HEADER`], [`MODE_HEADER`] and [`MTIME_HEADER`], so the
/// controller can rebuild the recipe's directory as it is here: the bundle records
/// modes and times, and a walked directory keeps its symlinks.
pub fn recipe_form(recipe_path: &Path) -> Result<RecipeForm> {
    let plan = recipe::load(recipe_path)?;
    let text = fs::read(recipe_path)
        .with_context(|| format!("cannot read recipe {}", recipe_path.display()))?;
    let parsed: RecipeFile = toml::from_str(&String::from_utf8_lossy(&text))
        .map_err(|e| anyhow!("{}: {e}", recipe_path.display()))?;
    let dir = recipe_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let filename = recipe_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "recipe.toml".to_owned());

    let mut form = Multipart::new()?;
    form.push(Part {
        name: RECIPE_PART.to_owned(),
        filename: Some(filename),
        content_type: "application/toml",
        headers: Vec::new(),
        body: PartBody::Bytes(text),
    })?;
    let mut seen = BTreeSet::new();
    for (label, source) in recipe_sources(&parsed) {
        let name = source
            .to_str()
            .ok_or_else(|| anyhow!("{label}: `{}` is not UTF-8", source.display()))?
            .to_owned();
        if name == RECIPE_PART {
            bail!(
                "{label}: a source named `{RECIPE_PART}` clashes with the form's recipe part; \
                 rename it"
            );
        }
        if !seen.insert(name.clone()) {
            continue;
        }
        let local = dir.join(&source);
        // The named path is followed if it is a symlink, as the build does: the operator
        // named the thing to ship.
        let meta = fs::metadata(&local)
            .with_context(|| format!("{label}: cannot read {}", local.display()))?;
        if meta.is_dir() {
            form.push(entry_part(&name, &local, &meta, EntryType::Dir)?)
                .with_context(|| label.clone())?;
            add_tree(&mut form, &name, &local).with_context(|| label.clone())?;
        } else {
            form.push(entry_part(&name, &local, &meta, EntryType::File)?)
                .with_context(|| label.clone())?;
        }
    }
    Ok(RecipeForm {
        form,
        version: plan.version,
        target_group: plan.target_group,
    })
}

/// A checked recipe, ready to send.
#[derive(Debug)]
pub struct RecipeForm {
    /// The form: the recipe and its files.
    pub form: Multipart,
    /// The recipe's version.
    pub version: String,
    /// The recipe's `target_group` (not part of the bundle, so the stored update does not carry it).
    pub target_group: Option<String>,
}

/// Every path the recipe names, with a label for messages, in recipe order.
fn recipe_sources(r: &RecipeFile) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let scripts = [
        ("[before]", r.before.as_ref().and_then(|c| c.script.clone())),
        ("[after]", r.after.as_ref().and_then(|c| c.script.clone())),
        (
            "[health_check]",
            r.health_check.as_ref().and_then(|c| c.script.clone()),
        ),
        ("[rollback]", r.rollback.script.clone()),
    ];
    for (table, script) in scripts {
        if let Some(s) = script {
            out.push((format!("{table} script"), s));
        }
    }
    for (i, f) in r.files.iter().enumerate() {
        out.push((
            format!("[[files]] #{} (source `{}`)", i + 1, f.source.display()),
            f.source.clone(),
        ));
    }
    let p = &r.packages;
    for (mgr, items) in [
        ("apt", &p.apt),
        ("pip", &p.pip),
        ("pip3", &p.pip3),
        ("npm", &p.npm),
    ] {
        for (i, item) in items.iter().enumerate() {
            if let PackageItem::Long(t) = item {
                if let Some(file) = &t.file {
                    out.push((format!("packages.{mgr} #{}", i + 1), file.clone()));
                }
            }
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EntryType {
    File,
    Dir,
    Symlink,
}

/// A part for one file-system entry, with its type, mode and time.
fn entry_part(name: &str, local: &Path, meta: &fs::Metadata, kind: EntryType) -> Result<Part> {
    let (type_name, body) = match kind {
        EntryType::File => (
            "file",
            PartBody::File {
                path: local.to_owned(),
                len: meta.len(),
            },
        ),
        EntryType::Dir => ("dir", PartBody::Bytes(Vec::new())),
        EntryType::Symlink => {
            let target = fs::read_link(local)
                .with_context(|| format!("cannot read link {}", local.display()))?;
            let target = target
                .to_str()
                .ok_or_else(|| anyhow!("{}: link target is not UTF-8", local.display()))?;
            ("symlink", PartBody::Bytes(target.as_bytes().to_vec()))
        }
    };
    let mode = if kind == EntryType::Symlink {
        0o777
    } else {
        meta.mode() & 0o7777
    };
    let filename = name
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|f| !f.is_empty())
        .unwrap_or(name)
        .to_owned();
    Ok(Part {
        name: name.to_owned(),
        filename: Some(filename),
        content_type: "application/octet-stream",
        headers: vec![
            (TYPE_HEADER, type_name.to_owned()),
            (MODE_HEADER, format!("{mode:04o}")),
            (MTIME_HEADER, meta.mtime().to_string()),
        ],
        body,
    })
}

/// Adds every entry below the directory `local` as parts named `name/relative/path`,
/// in name order (so the same tree always gives the same form).
fn add_tree(form: &mut Multipart, name: &str, local: &Path) -> Result<()> {
    let mut items = fs::read_dir(local)
        .with_context(|| format!("cannot list {}", local.display()))?
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list {}", local.display()))?;
    items.sort_by_key(|e| e.file_name());
    for item in items {
        let path = item.path();
        let file_name = item.file_name();
        let file_name = file_name
            .to_str()
            .ok_or_else(|| anyhow!("{}: file name is not UTF-8", path.display()))?;
        let child = format!("{}/{file_name}", name.trim_end_matches('/'));
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            form.push(entry_part(&child, &path, &meta, EntryType::Symlink)?)?;
        } else if ft.is_dir() {
            form.push(entry_part(&child, &path, &meta, EntryType::Dir)?)?;
            add_tree(form, &child, &path)?;
        } else if ft.is_file() {
            form.push(entry_part(&child, &path, &meta, EntryType::File)?)?;
        } else {
            // The recipe check refuses these already; a file created since is refused here.
            bail!(
                "{} is not a file, directory or symlink; it cannot be shipped",
                path.display()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// multipart/form-data (RFC 7578), streamed.

/// One part of a form.
#[derive(Debug)]
pub struct Part {
    /// The form field's name.
    pub name: String,
    /// The `filename` parameter, if any.
    pub filename: Option<String>,
    /// The part's `Content-Type`.
    pub content_type: &'static str,
    /// Further headers.
    pub headers: Vec<(&'static str, String)>,
    /// What it holds.
    pub body: PartBody,
}

/// A part's content.
#[derive(Debug)]
pub enum PartBody {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A file, read only when the upload reaches it; it must still be `len` bytes long then.
    File {
        /// The file.
        path: PathBuf,
        /// Its size when the form was made (the body's length counts on it).
        len: u64,
    },
}

impl PartBody {
    fn len(&self) -> u64 {
        match self {
            PartBody::Bytes(b) => b.len() as u64,
            PartBody::File { len, .. } => *len,
        }
    }
}

/// A multipart/form-data body whose length is known before it is sent and whose file
/// parts are read only while it is sent, so a large tree never sits in memory.
#[derive(Debug)]
pub struct Multipart {
    boundary: String,
    parts: Vec<Part>,
}

impl Multipart {
    /// An empty form with a random boundary.
    pub fn new() -> Result<Multipart> {
        let mut r = [0u8; 16];
        getrandom::getrandom(&mut r)
            .map_err(|e| anyhow!("cannot get randomness from the operating system: {e}"))?;
        Ok(Multipart::with_boundary(format!(
            "molt-boundary-{}",
            hex::encode(r)
        )))
    }

    /// An empty form with a given boundary (tests).
    pub fn with_boundary(boundary: String) -> Multipart {
        Multipart {
            boundary,
            parts: Vec::new(),
        }
    }

    /// Adds a part. Refuses names a `Content-Disposition` cannot carry unambiguously
    /// (quotes, backslashes, line breaks): no server would read them back the same.
    pub fn push(&mut self, part: Part) -> Result<()> {
        for (what, value) in [
            ("name", Some(part.name.as_str())),
            ("file name", part.filename.as_deref()),
        ] {
            if let Some(v) = value {
                if v.contains(['"', '\\', '\r', '\n']) {
                    bail!("the {what} `{v}` contains a quote, backslash or line break; it cannot be uploaded");
                }
            }
        }
        self.parts.push(part);
        Ok(())
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The request's `Content-Type`.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// The encoded body's length in bytes.
    pub fn len(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| self.head(p).len() as u64 + p.body.len() + 2)
            .sum::<u64>()
            + self.tail().len() as u64
    }

    /// Whether the form has no parts.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The boundary line and headers before a part's body.
    fn head(&self, p: &Part) -> Vec<u8> {
        let mut h = format!(
            "--{}\r\nContent-Disposition: form-data; name=\"{}\"",
            self.boundary, p.name
        );
        if let Some(f) = &p.filename {
            let _ = write!(h, "; filename=\"{f}\"");
        }
        let _ = write!(h, "\r\nContent-Type: {}\r\n", p.content_type);
        for (k, v) in &p.headers {
            let _ = write!(h, "{k}: {v}\r\n");
        }
        h.push_str("\r\n");
        h.into_bytes()
    }

    fn tail(&self) -> Vec<u8> {
        format!("--{}--\r\n", self.boundary).into_bytes()
    }

    /// The body as a reader: exactly [`Multipart::len`] bytes, or an error if a file
    /// changed size since the form was made.
    pub fn into_reader(self) -> MultipartReader {
        let heads: Vec<Vec<u8>> = self.parts.iter().map(|p| self.head(p)).collect();
        let tail = self.tail();
        let mut segments = VecDeque::new();
        for (part, head) in self.parts.into_iter().zip(heads) {
            segments.push_back(Segment::Bytes(Cursor::new(head)));
            match part.body {
                PartBody::Bytes(b) => segments.push_back(Segment::Bytes(Cursor::new(b))),
                PartBody::File { path, len } => segments.push_back(Segment::File {
                    path,
                    len,
                    file: None,
                    done: 0,
                }),
            }
            segments.push_back(Segment::Bytes(Cursor::new(b"\r\n".to_vec())));
        }
        segments.push_back(Segment::Bytes(Cursor::new(tail)));
        MultipartReader { segments }
    }
}

/// Reads a [`Multipart`] body; files are opened one at a time, as the body reaches them.
pub struct MultipartReader {
    segments: VecDeque<Segment>,
}

enum Segment {
    Bytes(Cursor<Vec<u8>>),
    File {
        path: PathBuf,
        len: u64,
        file: Option<File>,
        done: u64,
    },
}

impl Read for MultipartReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while let Some(seg) = self.segments.front_mut() {
            let n = match seg {
                Segment::Bytes(c) => c.read(buf)?,
                Segment::File {
                    path,
                    len,
                    file,
                    done,
                } => {
                    let changed = |p: &Path| {
                        io::Error::other(format!(
                            "{} changed while it was being uploaded; push again",
                            p.display()
                        ))
                    };
                    let f = match file {
                        Some(f) => f,
                        None => file.insert(File::open(&*path).map_err(|e| {
                            io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
                        })?),
                    };
                    let left = *len - *done;
                    if left == 0 {
                        // The file must end where the form said it would.
                        let mut probe = [0u8; 1];
                        if f.read(&mut probe)? != 0 {
                            return Err(changed(path));
                        }
                        0
                    } else {
                        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        let n = f.read(&mut buf[..want]).map_err(|e| {
                            io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
                        })?;
                        if n == 0 {
                            return Err(changed(path));
                        }
                        *done += n as u64;
                        n
                    }
                }
            };
            if n > 0 {
                return Ok(n);
            }
            self.segments.pop_front();
        }
        Ok(0)
    }
}

// ---------------------------------------------------------------------------
// Output: tables and summaries.

/// Lays out rows under a header, columns padded to their widest cell (the last column
/// is not padded, so lines carry no trailing blanks).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(cols) {
            if i + 1 == cols {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Cuts `s` to `max` characters, marking the cut with `…`; one line only.
pub fn shorten(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    let cut = line.chars().count() > max || s.lines().nth(1).is_some();
    if !cut {
        return line.to_owned();
    }
    let mut out: String = line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Parses the API's RFC 3339 UTC times (`2026-11-26T10:00:00Z`, fractions and `+00:00`
/// allowed) into Unix seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = s.get(19..)?;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        rest = frac.get(digits..)?;
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

/// An API time as `2026-11-26 10:00:00` (UTC), or the text as it came if it does not parse.
pub fn show_time(s: &str) -> String {
    match parse_time(s) {
        Some(t) if t >= 0 => crate::inspect::utc(t as u64)
            .trim_end_matches(" UTC")
            .to_owned(),
        _ => s.to_owned(),
    }
}

/// How long ago `s` was, seen at `now` (Unix seconds): `12s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn ago(s: &str, now: i64) -> String {
    let Some(t) = parse_time(s) else {
        return s.to_owned();
    };
    let d = now - t;
    if d < 0 {
        return "just now".to_owned();
    }
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86_400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86_400),
    }
}

/// The non-zero counts in display order: `2 success, 1 installing`; `no devices` for none.
pub fn counts_text(c: &Counts) -> String {
    let parts: Vec<String> = DeviceState::ALL
        .iter()
        .filter(|s| c.get(**s) > 0)
        .map(|s| format!("{} {}", c.get(*s), s.name()))
        .collect();
    if parts.is_empty() {
        "no devices".to_owned()
    } else {
        parts.join(", ")
    }
}

/// A deployment's state for people: `in progress` rather than `in_progress`.
fn state_word(state: &str) -> String {
    state.replace('_', " ")
}

/// `molt groups`.
pub fn groups_table(groups: &[Group]) -> String {
    if groups.is_empty() {
        return "no groups yet: molt groups create NAME\n".to_owned();
    }
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                g.devices.to_string(),
                g.enrollment_token.clone(),
            ]
        })
        .collect();
    table(&["GROUP", "DEVICES", "ENROLLMENT TOKEN"], &rows)
}

/// `molt devices`; `now` in Unix seconds for "last seen".
pub fn devices_table(devices: &[Device], now: i64) -> String {
    if devices.is_empty() {
        return "no devices (a device joins with its group's enrollment token: molt groups)\n"
            .to_owned();
    }
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.name.clone(),
                d.group.clone(),
                d.status.clone(),
                d.active_version.clone(),
                d.agent_version.clone(),
                d.last_seen
                    .as_deref()
                    .map_or("never".to_owned(), |t| ago(t, now)),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "GROUP",
            "STATUS",
            "ACTIVE",
            "AGENT",
            "LAST SEEN",
        ],
        &rows,
    )
}

/// `molt updates`.
pub fn updates_table(updates: &[Update]) -> String {
    if updates.is_empty() {
        return "no updates yet: molt update push BUNDLE|RECIPE\n".to_owned();
    }
    let rows: Vec<Vec<String>> = updates
        .iter()
        .map(|u| {
            vec![
                u.id.to_string(),
                u.version.clone(),
                u.kind.clone(),
                u.compatible.clone(),
                human(u.size),
                show_time(&u.created),
                shorten(&u.comment, 40),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "VERSION",
            "KIND",
            "COMPATIBLE",
            "SIZE",
            "CREATED",
            "COMMENT",
        ],
        &rows,
    )
}

/// The target column: the group, or `(devices)` for a device list.
fn target(d: &Deployment) -> String {
    if d.group.is_empty() {
        "(devices)".to_owned()
    } else {
        d.group.clone()
    }
}

/// `molt status`: recent updates, the web UI's table.
pub fn deployments_table(deployments: &[Deployment]) -> String {
    if deployments.is_empty() {
        return "no deployments yet: molt deploy UPDATE --group GROUP\n".to_owned();
    }
    let rows: Vec<Vec<String>> = deployments
        .iter()
        .map(|d| {
            vec![
                d.id.to_string(),
                d.version.clone(),
                target(d),
                format!("{} ({})", state_word(&d.state), counts_text(&d.counts)),
                show_time(&d.created),
                shorten(&d.comment, 40),
            ]
        })
        .collect();
    table(
        &[
            "DEPLOYMENT",
            "VERSION",
            "GROUP",
            "STATUS",
            "CREATED",
            "COMMENT",
        ],
        &rows,
    )
}

/// A device's progress: `45%` of the download, or `-`.
fn percent(p: Option<molt_engine::protocol::Progress>) -> String {
    match p {
        Some(p) if p.total > 0 => format!("{}%", p.done.saturating_mul(100) / p.total),
        _ => "-".to_owned(),
    }
}

/// `molt status DEPLOYMENT`: the deployment and one line per device.
pub fn deployment_details(d: &DeploymentDetails) -> String {
    let dep = &d.deployment;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "deployment {}: update {} (version {}) to {}",
        dep.id,
        dep.update,
        dep.version,
        if dep.group.is_empty() {
            "a list of devices".to_owned()
        } else {
            format!("group {}", dep.group)
        }
    );
    let _ = writeln!(
        out,
        "status   {} ({})",
        state_word(&dep.state),
        counts_text(&dep.counts)
    );
    let _ = writeln!(
        out,
        "created  {} by {}",
        show_time(&dep.created),
        dep.created_by
    );
    if !dep.comment.is_empty() {
        let _ = writeln!(out, "comment  {}", dep.comment);
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = d
        .devices
        .iter()
        .map(|v| {
            vec![
                v.id.clone(),
                v.name.clone(),
                v.state.name().to_owned(),
                if v.phase.is_empty() {
                    "-".to_owned()
                } else {
                    v.phase.clone()
                },
                percent(v.progress),
                v.message
                    .as_deref()
                    .map_or(String::new(), |m| shorten(m, 80)),
            ]
        })
        .collect();
    out.push_str(&table(
        &["DEVICE", "NAME", "STATE", "PHASE", "PROGRESS", "MESSAGE"],
        &rows,
    ));
    out
}

/// One line for a deployment just made: `deployment 7: version 1.5.0 to group test, 2 devices pending`.
pub fn deployment_made(d: &Deployment) -> String {
    let to = if d.group.is_empty() {
        "the listed devices".to_owned()
    } else {
        format!("group {}", d.group)
    };
    format!(
        "deployment {}: update {} (version {}) to {to}, {} device(s): {}",
        d.id,
        d.update,
        d.version,
        d.counts.total(),
        counts_text(&d.counts)
    )
}

/// `molt abort`'s report; `names` maps device ids to names where known.
pub fn abort_report(r: &AbortResult, names: &dyn Fn(&str) -> Option<String>) -> String {
    let who = |id: &str| match names(id) {
        Some(n) if n != id => format!("{n} ({id})"),
        _ => id.to_owned(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "deployment {}: {} device(s) aborted, {} not",
        r.deployment,
        r.aborted.len(),
        r.not_aborted.len()
    );
    for id in &r.aborted {
        let _ = writeln!(out, "  aborted      {}", who(id));
    }
    for n in &r.not_aborted {
        let _ = writeln!(
            out,
            "  not aborted  {}: {} ({})",
            who(&n.device),
            n.reason,
            n.state.name()
        );
    }
    if !r.aborted.is_empty() {
        out.push_str(
            "pending devices stop at once; devices already installing get the abort on their \
             next poll and report `aborted` (or `success` if they committed first)\n",
        );
    }
    out
}

/// `molt update push`'s line for the stored update.
pub fn update_made(u: &Update) -> String {
    format!(
        "update {}: version {} ({}, {}) for {}",
        u.id,
        u.version,
        u.kind,
        human(u.size),
        u.compatible
    )
}

/// Resolves `molt deploy`'s UPDATE argument against the list: a number is an id first, then
/// a version; anything else a version.
pub fn find_update<'u>(updates: &'u [Update], arg: &str) -> Result<&'u Update> {
    let by_id = arg
        .parse::<u64>()
        .ok()
        .and_then(|n| updates.iter().find(|u| u.id == n));
    if let Some(u) = by_id {
        return Ok(u);
    }
    updates
        .iter()
        .find(|u| u.version == arg)
        .ok_or_else(|| anyhow!("no update with id or version `{arg}` (molt updates lists them)"))
}

/// Resolves a device given by id or name among `devices` (`(id, name)` pairs).
pub fn find_device(devices: &[(String, String)], arg: &str) -> Result<String> {
    if let Some((id, _)) = devices.iter().find(|(id, _)| id == arg) {
        return Ok(id.clone());
    }
    let named: Vec<&String> = devices
        .iter()
        .filter(|(_, name)| name == arg)
        .map(|(id, _)| id)
        .collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no device `{arg}` here (give its id or name)"),
        many => bail!(
            "{} devices are named `{arg}`: {}; give the id",
            many.len(),
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NotAborted;
    use std::net::TcpListener;
    use std::os::unix::fs::symlink;
    use std::thread;

    #[test]
    fn config_path_prefers_an_absolute_xdg_home() {
        let p = config_path(Some("/x/cfg".into()), Some("/home/u".into()));
        assert_eq!(p.unwrap(), Path::new("/x/cfg/molt/cli.toml"));
        let p = config_path(Some("relative".into()), Some("/home/u".into()));
        assert_eq!(p.unwrap(), Path::new("/home/u/.config/molt/cli.toml"));
        assert_eq!(config_path(None, None), None);
    }

    #[test]
    fn the_login_is_saved_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/molt/cli.toml");
        let login = SavedLogin {
            controller: "http://127.0.0.1:8080".into(),
            token: "op_secret".into(),
        };
        save_login(&path, &login).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(load_login(&path).unwrap(), Some(login));
        assert_eq!(load_login(&dir.path().join("none.toml")).unwrap(), None);
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_saved_login() {
        let saved = SavedLogin {
            controller: "http://saved:1".into(),
            token: "saved-token".into(),
        };
        let t = resolve(None, None, None, None, Some(&saved)).unwrap();
        assert_eq!(t.controller, "http://saved:1");
        assert_eq!(t.token, "saved-token");
        let t = resolve(
            Some("http://flag:2/"),
            Some("flag-token"),
            Some("http://env:3"),
            Some("env-token"),
            Some(&saved),
        )
        .unwrap();
        assert_eq!(t.controller, "http://flag:2");
        assert_eq!(t.token, "flag-token");
        let t = resolve(
            None,
            None,
            Some("http://env:3"),
            Some("env-token"),
            Some(&saved),
        )
        .unwrap();
        assert_eq!(
            (t.controller.as_str(), t.token.as_str()),
            ("http://env:3", "env-token")
        );
        // The same controller written differently still gets its saved token.
        let t = resolve(Some("http://saved:1/"), None, None, None, Some(&saved)).unwrap();
        assert_eq!(t.token, "saved-token");
    }

    #[test]
    fn a_saved_token_never_goes_to_another_controller() {
        let saved = SavedLogin {
            controller: "http://saved:1".into(),
            token: "saved-token".into(),
        };
        let e = resolve(Some("http://other:9"), None, None, None, Some(&saved))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no operator token for http://other:9"), "{e}");
        let e = resolve(None, None, None, None, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "no controller configured: run molt login --controller URL"
        );
    }

    #[test]
    fn urls_need_a_scheme_and_lose_the_trailing_slash() {
        assert_eq!(normalize_url(" http://h:1/ ").unwrap(), "http://h:1");
        assert_eq!(normalize_url("https://h/base").unwrap(), "https://h/base");
        let e = normalize_url("h:8080").unwrap_err().to_string();
        assert!(e.contains("http://h:8080"), "{e}");
        assert!(normalize_url("ftp://h").is_err());
        assert!(normalize_url("http://").is_err());
    }

    #[test]
    fn multipart_encodes_exactly_and_knows_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.bin");
        fs::write(&file, b"0123456789").unwrap();
        let mut form = Multipart::with_boundary("B".into());
        form.push(Part {
            name: "recipe".into(),
            filename: Some("r.toml".into()),
            content_type: "application/toml",
            headers: vec![],
            body: PartBody::Bytes(b"version = \"1\"".to_vec()),
        })
        .unwrap();
        form.push(Part {
            name: "app/a.bin".into(),
            filename: Some("a.bin".into()),
            content_type: "application/octet-stream",
            headers: vec![(MODE_HEADER, "0644".into())],
            body: PartBody::File {
                path: file,
                len: 10,
            },
        })
        .unwrap();
        let len = form.len();
        assert_eq!(form.content_type(), "multipart/form-data; boundary=B");
        let mut body = Vec::new();
        // Tiny reads cross every segment boundary.
        let mut r = form.into_reader();
        let mut buf = [0u8; 3];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
        let expected = "--B\r\n\
            Content-Disposition: form-data; name=\"recipe\"; filename=\"r.toml\"\r\n\
            Content-Type: application/toml\r\n\r\n\
            version = \"1\"\r\n\
            --B\r\n\
            Content-Disposition: form-data; name=\"app/a.bin\"; filename=\"a.bin\"\r\n\
            Content-Type: application/octet-stream\r\n\
            X-Molt-Mode: 0644\r\n\r\n\
            0123456789\r\n\
            --B--\r\n";
        assert_eq!(String::from_utf8(body.clone()).unwrap(), expected);
        assert_eq!(len, body.len() as u64);
    }

    #[test]
    fn multipart_refuses_a_file_that_changed_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a");
        fs::write(&file, b"12345").unwrap();
        for now in [&b"123"[..], &b"1234567"[..]] {
            let mut form = Multipart::with_boundary("B".into());
            form.push(Part {
                name: "a".into(),
                filename: None,
                content_type: "application/octet-stream",
                headers: vec![],
                body: PartBody::File {
                    path: file.clone(),
                    len: 5,
                },
            })
            .unwrap();
            fs::write(&file, now).unwrap();
            let mut out = Vec::new();
            let e = form.into_reader().read_to_end(&mut out).unwrap_err();
            assert!(
                e.to_string()
                    .contains("changed while it was being uploaded"),
                "{e}"
            );
        }
    }

    #[test]
    fn multipart_refuses_names_it_cannot_quote() {
        let mut form = Multipart::with_boundary("B".into());
        for bad in ["a\"b", "a\\b", "a\nb"] {
            let e = form
                .push(Part {
                    name: bad.into(),
                    filename: None,
                    content_type: "text/plain",
                    headers: vec![],
                    body: PartBody::Bytes(vec![]),
                })
                .unwrap_err();
            assert!(e.to_string().contains("cannot be uploaded"), "{e}");
        }
    }

    #[test]
    fn the_boundary_is_random() {
        let a = Multipart::new().unwrap().content_type();
        let b = Multipart::new().unwrap().content_type();
        assert_ne!(a, b);
    }

    /// A recipe naming a directory (with a subdirectory, an empty one and a symlink), a
    /// file twice, a script and a shipped package file.
    fn recipe_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("app/lib")).unwrap();
        fs::create_dir_all(r.join("app/empty")).unwrap();
        fs::write(r.join("app/main.js"), "main").unwrap();
        fs::write(r.join("app/lib/util.js"), "util").unwrap();
        fs::set_permissions(r.join("app/main.js"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("lib/util.js", r.join("app/current")).unwrap();
        fs::write(r.join("app.env"), "PORT=1\n").unwrap();
        fs::create_dir_all(r.join("scripts")).unwrap();
        fs::write(r.join("scripts/after.sh"), "true\n").unwrap();
        fs::create_dir_all(r.join("pkgs")).unwrap();
        fs::write(r.join("pkgs/t_1_all.deb"), "deb").unwrap();
        fs::write(
            r.join("recipe.toml"),
            r#"
version = "1.0.0"
compatible = "acme"

[[files]]
source = "app/"
destination = "/opt/app"

[[files]]
source = "app.env"
destination = "/etc/app.env"

[[files]]
source = "app.env"
destination = "/etc/app2.env"

[packages]
apt = [{ name = "t", version = "1", file = "pkgs/t_1_all.deb" }]

[after]
script = "scripts/after.sh"
"#,
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_recipe_form_names_every_source_as_the_recipe_writes_it() {
        let dir = recipe_tree();
        let form = recipe_form(&dir.path().join("recipe.toml")).unwrap().form;
        let names: Vec<(&str, String)> = form
            .parts()
            .iter()
            .map(|p| {
                let ty = p
                    .headers
                    .iter()
                    .find(|(k, _)| *k == TYPE_HEADER)
                    .map_or(String::new(), |(_, v)| v.clone());
                (p.name.as_str(), ty)
            })
            .collect();
        let expected = [
            ("recipe", ""),
            ("scripts/after.sh", "file"),
            ("app/", "dir"),
            ("app/current", "symlink"),
            ("app/empty", "dir"),
            ("app/lib", "dir"),
            ("app/lib/util.js", "file"),
            ("app/main.js", "file"),
            ("app.env", "file"),
            ("pkgs/t_1_all.deb", "file"),
        ];
        let got: Vec<(&str, &str)> = names.iter().map(|(n, t)| (*n, t.as_str())).collect();
        assert_eq!(got, expected);
        let part = |n: &str| form.parts().iter().find(|p| p.name == n).unwrap();
        let header = |p: &Part, h: &str| {
            p.headers
                .iter()
                .find(|(k, _)| *k == h)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(header(part("app/main.js"), MODE_HEADER), "0755");
        match &part("app/current").body {
            PartBody::Bytes(b) => assert_eq!(b, b"lib/util.js"),
            other => panic!("{other:?}"),
        }
        assert_eq!(part("app/lib/util.js").filename.as_deref(), Some("util.js"));
        assert_eq!(part("app/").filename.as_deref(), Some("app"));
    }

    #[test]
    fn a_recipe_form_checks_the_recipe_first() {
        let dir = recipe_tree();
        let r = dir.path().join("recipe.toml");
        let text = fs::read_to_string(&r).unwrap();
        fs::write(
            &r,
            text.replace(
                "app.env\"\ndestination = \"/etc/app.env",
                "gone.env\"\ndestination = \"/etc/app.env",
            ),
        )
        .unwrap();
        let e = format!("{:#}", recipe_form(&r).unwrap_err());
        assert!(e.contains("[[files]] #2") && e.contains("gone.env"), "{e}");
        fs::write(&r, format!("colour = 1\n{text}")).unwrap();
        let e = format!("{:#}", recipe_form(&r).unwrap_err());
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn times_parse_and_show() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2026-11-26T10:00:00Z"), Some(1_795_687_200));
        assert_eq!(
            parse_time("2026-11-26T10:00:00.123456Z"),
            Some(1_795_687_200)
        );
        assert_eq!(parse_time("2026-11-26T11:00:00+01:00"), Some(1_795_687_200));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(show_time("2026-11-26T10:00:00Z"), "2026-11-26 10:00:00");
        assert_eq!(show_time("soon"), "soon");
        let t = 1_795_687_200;
        assert_eq!(ago("2026-11-26T10:00:00Z", t + 5), "5s ago");
        assert_eq!(ago("2026-11-26T10:00:00Z", t + 300), "5m ago");
        assert_eq!(ago("2026-11-26T10:00:00Z", t + 7300), "2h ago");
        assert_eq!(ago("2026-11-26T10:00:00Z", t + 86_400 * 3), "3d ago");
    }

    fn deployment(counts: Counts) -> Deployment {
        Deployment {
            id: 7,
            update: 3,
            version: "1.5.0".into(),
            group: "test".into(),
            state: "in_progress".into(),
            counts,
            created: "2026-11-26T10:00:00Z".into(),
            created_by: "operator".into(),
            comment: "first try".into(),
        }
    }

    #[test]
    fn recent_updates_show_per_state_counts() {
        let c = Counts {
            success: 2,
            installing: 1,
            ..Counts::default()
        };
        assert_eq!(counts_text(&c), "1 installing, 2 success");
        assert_eq!(counts_text(&Counts::default()), "no devices");
        let t = deployments_table(&[deployment(c)]);
        let lines: Vec<&str> = t.lines().collect();
        let words: Vec<&str> = lines[0].split("  ").filter(|w| !w.is_empty()).collect();
        assert_eq!(
            words.iter().map(|w| w.trim()).collect::<Vec<_>>(),
            [
                "DEPLOYMENT",
                "VERSION",
                "GROUP",
                "STATUS",
                "CREATED",
                "COMMENT"
            ]
        );
        // Columns line up: each value starts under its heading.
        for (head, value) in [
            ("VERSION", "1.5.0"),
            ("STATUS", "in progress (1 installing, 2 success)"),
            ("CREATED", "2026-11-26 10:00:00"),
            ("COMMENT", "first try"),
        ] {
            assert_eq!(lines[0].find(head), lines[1].find(value), "{t}");
        }
    }

    #[test]
    fn deployment_details_list_every_device() {
        use crate::api::DeploymentDevice;
        let d = DeploymentDetails {
            deployment: deployment(Counts {
                downloading: 1,
                failed: 1,
                ..Counts::default()
            }),
            devices: vec![
                DeploymentDevice {
                    id: "dev_a".into(),
                    name: "gw-1".into(),
                    state: DeviceState::Downloading,
                    phase: "fetching".into(),
                    progress: Some(molt_engine::protocol::Progress {
                        done: 45,
                        total: 100,
                    }),
                    message: None,
                    updated: "2026-11-26T10:00:00Z".into(),
                },
                DeploymentDevice {
                    id: "dev_b".into(),
                    name: "gw-2".into(),
                    state: DeviceState::Failed,
                    phase: "after".into(),
                    progress: None,
                    message: Some("after: exit status 3".into()),
                    updated: "2026-11-26T10:00:00Z".into(),
                },
            ],
        };
        let text = deployment_details(&d);
        assert!(
            text.starts_with("deployment 7: update 3 (version 1.5.0) to group test\n"),
            "{text}"
        );
        assert!(
            text.contains("status   in progress (1 downloading, 1 failed)"),
            "{text}"
        );
        assert!(text.contains("comment  first try"), "{text}");
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("DEVICE"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[1], ["dev_a", "gw-1", "downloading", "fetching", "45%"]);
        assert_eq!(
            rows[2],
            ["dev_b", "gw-2", "failed", "after", "-", "after:", "exit", "status", "3"]
        );
    }

    #[test]
    fn abort_names_devices_and_why_not() {
        let r = AbortResult {
            deployment: 7,
            aborted: vec!["dev_a".into()],
            not_aborted: vec![NotAborted {
                device: "dev_b".into(),
                state: DeviceState::Success,
                reason: "already committed".into(),
            }],
        };
        let names = |id: &str| (id == "dev_a").then(|| "gw-1".to_owned());
        let text = abort_report(&r, &names);
        assert!(
            text.starts_with("deployment 7: 1 device(s) aborted, 1 not\n"),
            "{text}"
        );
        assert!(text.contains("  aborted      gw-1 (dev_a)\n"), "{text}");
        assert!(
            text.contains("  not aborted  dev_b: already committed (success)\n"),
            "{text}"
        );
    }

    #[test]
    fn tables_align_and_carry_no_trailing_blanks() {
        let t = table(
            &["A", "BB", "C"],
            &[
                vec!["xxx".into(), "y".into(), "".into()],
                vec!["1".into(), "22".into(), "3".into()],
            ],
        );
        assert_eq!(t, "A    BB  C\nxxx  y\n1    22  3\n");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("ab\ncd", 10), "ab…");
        assert_eq!(shorten("ab", 10), "ab");
    }

    #[test]
    fn updates_and_devices_resolve_by_id_or_name() {
        let u = |id, v: &str| Update {
            id,
            version: v.into(),
            compatible: "c".into(),
            kind: "patch".into(),
            size: 1,
            blake3: String::new(),
            comment: String::new(),
            created: String::new(),
            recipe: Value::Null,
        };
        let list = [u(1, "2"), u(2, "1.0.0")];
        assert_eq!(
            find_update(&list, "2").unwrap().id,
            2,
            "a number is an id first"
        );
        assert_eq!(find_update(&list, "1.0.0").unwrap().id, 2);
        assert!(find_update(&list, "9.9").is_err());
        let devs = [
            ("dev_a".to_owned(), "gw".to_owned()),
            ("dev_b".to_owned(), "gw".to_owned()),
            ("dev_c".to_owned(), "solo".to_owned()),
        ];
        assert_eq!(find_device(&devs, "solo").unwrap(), "dev_c");
        assert_eq!(find_device(&devs, "dev_b").unwrap(), "dev_b");
        let e = find_device(&devs, "gw").unwrap_err().to_string();
        assert!(e.contains("2 devices are named `gw`: dev_a, dev_b"), "{e}");
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
        let c = Client::new(&Target {
            controller: url.clone(),
            token: "tok en".into(),
        });
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
        let c = Client::new(&Target {
            controller: url.clone(),
            token: "t".into(),
        });
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
