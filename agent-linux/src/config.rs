//! Agent configuration: the TOML file (default `/etc/molt/agent.toml`), its defaults and its checks.
//!
//! The file is read once at start. Every field is checked before the agent acts on
//! any of it, and every error names the file, the field and, where the TOML parser
//! or a span knows it, the line and column: an operator fixing a device over a slow
//! serial console should not have to guess which of forty lines is wrong.
//!
//! [`EXAMPLE`] (the file `agent-linux/agent.example.toml`) documents every field
//! with its default; the tests parse it, so it cannot drift from the code.
//!
//! # Paths
//!
//! Every path the agent touches lives below [`Config::root`] (default `/`). A
//! configured path such as `data_dir = "/var/lib/molt"` is read relative to the
//! root whether or not it starts with `/`, so a test (or an image builder working
//! on a mounted root file system) points `root` at a directory and gets a complete
//! device tree there without editing any other field. Paths may not contain `..`:
//! nothing configured can name a place outside the root.

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use molt_engine::bundle::format::KeyId;
use molt_engine::bundle::TrustedKey;
use molt_engine::limits::PATH_CAPACITY;
use molt_engine::Limits;
use serde::Deserialize;
use toml::Spanned;

/// Where the agent looks for its configuration unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/molt/agent.toml";

/// The documented example configuration (`agent-linux/agent.example.toml`).
pub const EXAMPLE: &str = include_str!("../agent.example.toml");

/// Default of `root`.
pub const DEFAULT_ROOT: &str = "/";
/// Default of `data_dir`, relative to the root.
pub const DEFAULT_DATA_DIR: &str = "var/lib/molt";
/// Default of `reboot_command`.
pub const DEFAULT_REBOOT_COMMAND: &str = "systemctl reboot";
/// Default of `trial_boots`.
pub const DEFAULT_TRIAL_BOOTS: u8 = 3;
/// Default of `log_capture_bytes`: 64 KiB per command.
pub const DEFAULT_LOG_CAPTURE_BYTES: usize = 64 * 1024;
/// Smallest accepted `log_capture_bytes`: below this a failing command's message
/// would not fit.
pub const MIN_LOG_CAPTURE_BYTES: usize = 1024;
/// Largest accepted `log_capture_bytes`: each running command may hold this much
/// memory, and the device's RAM is the budget.
pub const MAX_LOG_CAPTURE_BYTES: usize = 64 * 1024 * 1024;
/// Default of `poll_interval_secs`.
pub const DEFAULT_POLL_INTERVAL_SECS: u64 = 60;
/// Default of `[timeouts] command_secs` (the recipe's default command timeout).
pub const DEFAULT_COMMAND_TIMEOUT_SECS: u64 = 300;
/// Default of `[timeouts] health_check_secs` (the recipe's default per attempt).
pub const DEFAULT_HEALTH_CHECK_TIMEOUT_SECS: u64 = 30;
/// Default of `[timeouts] download_stall_secs`.
pub const DEFAULT_DOWNLOAD_STALL_SECS: u64 = 60;
/// Default of `[timeouts] packages_secs`: one package manager's whole run (apt on a slow
/// link and a small CPU takes minutes).
pub const DEFAULT_PACKAGES_TIMEOUT_SECS: u64 = 1800;
/// Largest accepted timeout or interval: one day, as for recipe commands.
pub const MAX_SECS: u64 = 24 * 60 * 60;

/// The agent's configuration, checked and with every default filled in.
#[derive(Clone, Debug)]
pub struct Config {
    /// The directory below which every other path lives (absolute; default `/`).
    pub root: PathBuf,
    /// The data directory (slots, `current` link, journal, staging) **relative to
    /// [`Config::root`]**, as configured (default `var/lib/molt`). Use
    /// [`Config::data_dir()`] for the path to open.
    pub data_dir: PathBuf,
    /// The device's compatibility string: a bundle is installed only if its
    /// manifest names exactly this string (required).
    pub compatible: String,
    /// The ed25519 public keys whose signatures the device accepts (at least one;
    /// several allow key rotation).
    pub trusted_keys: Vec<TrustedKey>,
    /// Key ids refused even if their key is still in `trusted_keys` (default none).
    pub revoked_keys: Vec<KeyId>,
    /// Timeouts of the agent's own waits.
    pub timeouts: Timeouts,
    /// Bounds on every bundle (default [`Limits::DEFAULT`], field by field).
    pub limits: Limits,
    /// The bash command that reboots the device (default `systemctl reboot`);
    /// tests set something observable such as `touch /tmp/rebooted`.
    pub reboot_command: String,
    /// How many boots an unconfirmed update gets before the device falls back
    /// (default 3, at least 1).
    pub trial_boots: u8,
    /// How many bytes of each command's output are kept for the install log
    /// (default 64 KiB): the first and last halves, see [`crate::exec`].
    pub log_capture_bytes: usize,
    /// The controller's base URL (`http://` or `https://`); none means the agent
    /// only installs bundles it is handed (default none).
    pub controller: Option<String>,
    /// Seconds between two polls of the controller (default 60) until the
    /// controller names its own interval.
    pub poll_interval_secs: u64,
    /// A PEM file of CA certificates trusted for https beside the public web PKI
    /// roots (a controller with a private CA or a self-signed certificate),
    /// resolved below [`Config::root`]; default none. Read when a connection is
    /// made, so a bad file is reported where it is used.
    pub controller_ca: Option<PathBuf>,
    /// Whether every write is made durable before it counts (default true). `false`
    /// skips every fsync and syncfs ([`crate::durability`]): for volatile roots and
    /// for measuring what durability costs; a power cut can then tear an update.
    pub durable: bool,
}

/// The `[timeouts]` table. All values are whole seconds in the file, from 1 s to one day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// `command_secs` (default 300): for commands that carry no timeout of their
    /// own, such as the reboot command.
    pub command: Duration,
    /// `health_check_secs` (default 30): for a health-check attempt that carries
    /// no timeout of its own.
    pub health_check: Duration,
    /// `download_stall_secs` (default 60): a download that receives no byte for
    /// this long is dropped and resumed.
    pub download_stall: Duration,
    /// `packages_secs` (default 1800): for each package manager's run in the packages stage.
    pub packages: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: Duration::from_secs(DEFAULT_COMMAND_TIMEOUT_SECS),
            health_check: Duration::from_secs(DEFAULT_HEALTH_CHECK_TIMEOUT_SECS),
            download_stall: Duration::from_secs(DEFAULT_DOWNLOAD_STALL_SECS),
            packages: Duration::from_secs(DEFAULT_PACKAGES_TIMEOUT_SECS),
        }
    }
}

impl Config {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and checks configuration text; `origin` is the file name errors show.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: origin.to_path_buf(),
            field: field_of_parse_error(&error, text),
            error: Box::new(error),
        })?;
        let cx = Checker { text, origin };
        raw.check(&cx)
    }

    /// The parsed [`EXAMPLE`].
    ///
    /// # Panics
    ///
    /// If the built-in example does not parse; the tests parse it, so this is a
    /// build defect, never a device condition.
    pub fn example() -> Config {
        Config::from_toml(EXAMPLE, Path::new("agent.example.toml"))
            .unwrap_or_else(|e| panic!("the built-in example configuration is invalid: {e}"))
    }

    /// `path` below the root. A leading `/` is ignored: `/var/x` and `var/x`
    /// both name `<root>/var/x`.
    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        let rel = path.as_ref();
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        self.root.join(rel)
    }

    /// The data directory to open: [`Config::data_dir`] below the root.
    pub fn data_dir(&self) -> PathBuf {
        self.resolve(&self.data_dir)
    }
}

/// Why a configuration could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },
    /// The text is not TOML, or does not fit the schema (unknown field, missing
    /// field, wrong type); the TOML error carries the line and column.
    Parse {
        /// The file.
        path: PathBuf,
        /// The field, when the error names one or points at its line.
        field: Option<String>,
        /// The parser's error, with its line, column and excerpt (boxed: it is
        /// large, and errors travel through every `?`).
        error: Box<toml::de::Error>,
    },
    /// A field parsed but has a value the agent cannot use.
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, such as `trusted_keys[1]` or `timeouts.command_secs`.
        field: String,
        /// Line and column (1-based) of the value, when known.
        at: Option<(usize, usize)>,
        /// What is wrong with it.
        why: String,
    },
}

impl ConfigError {
    /// The field at fault, when known.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { field, .. } => field.as_deref(),
            ConfigError::Invalid { field, .. } => Some(field),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => {
                write!(f, "cannot read configuration {}: {error}", path.display())
            }
            // toml's message already says "TOML parse error at line L, column C",
            // quotes the line and names the field; repeating the field would only
            // add noise.
            ConfigError::Parse { path, error, .. } => write!(f, "{}: {error}", path.display()),
            ConfigError::Invalid {
                path,
                field,
                at,
                why,
            } => match at {
                Some((line, col)) => {
                    write!(f, "{}:{line}:{col}: {field}: {why}", path.display())
                }
                None => write!(f, "{}: {field}: {why}", path.display()),
            },
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { error, .. } => Some(error),
            ConfigError::Parse { error, .. } => Some(error.as_ref()),
            ConfigError::Invalid { .. } => None,
        }
    }
}

/// The field a TOML error is about: the name toml quotes for unknown and missing
/// fields, otherwise the key on the line the error points at.
fn field_of_parse_error(error: &toml::de::Error, text: &str) -> Option<String> {
    let msg = error.message();
    if msg.starts_with("unknown field") || msg.starts_with("missing field") {
        let start = msg.find('`')? + 1;
        let len = msg.get(start..)?.find('`')?;
        return msg.get(start..start + len).map(str::to_owned);
    }
    let span = error.span()?;
    let line_start = text.get(..span.start)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next()?;
    let key = line.split_once('=')?.0.trim();
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    bare.then(|| key.to_owned())
}

/// The file as written: everything optional except what has no sensible default,
/// values kept with their spans so later checks can point at them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    root: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    compatible: Spanned<String>,
    trusted_keys: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    revoked_keys: Vec<Spanned<String>>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: RawLimits,
    reboot_command: Option<Spanned<String>>,
    trial_boots: Option<Spanned<u8>>,
    log_capture_bytes: Option<Spanned<usize>>,
    controller: Option<Spanned<String>>,
    poll_interval_secs: Option<Spanned<u64>>,
    controller_ca: Option<Spanned<String>>,
    durable: Option<bool>,
}

/// `[timeouts]` as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    command_secs: Option<Spanned<u64>>,
    health_check_secs: Option<Spanned<u64>>,
    download_stall_secs: Option<Spanned<u64>>,
    packages_secs: Option<Spanned<u64>>,
}

/// `[limits]` as written: the engine's [`Limits`] with every field optional.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_manifest_len: Option<Spanned<u32>>,
    max_entries: Option<Spanned<u32>>,
    max_path_len: Option<Spanned<u32>>,
    max_path_depth: Option<Spanned<u32>>,
    max_file_size: Option<Spanned<u64>>,
    max_total_size: Option<Spanned<u64>>,
    max_payload_len: Option<Spanned<u64>>,
    max_chunk_size: Option<Spanned<u32>>,
}

/// What the checks need to build errors: the text (for line and column) and the file name.
struct Checker<'a> {
    text: &'a str,
    origin: &'a Path,
}

impl Checker<'_> {
    /// An [`ConfigError::Invalid`] pointing at `value`.
    fn invalid<T>(&self, value: &Spanned<T>, field: &str, why: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.origin.to_path_buf(),
            field: field.to_owned(),
            at: Some(self.line_col(value.span().start)),
            why: why.into(),
        }
    }

    /// 1-based line and column (in characters) of byte `offset`.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, col)
    }

    /// A path below the root: relative once a leading `/` is dropped, no `..`.
    fn relative_path(&self, value: &Spanned<String>, field: &str) -> Result<PathBuf, ConfigError> {
        let p = Path::new(value.get_ref().as_str());
        let p = p.strip_prefix("/").unwrap_or(p);
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(self.invalid(value, field, "`..` would leave the root"))
                }
                Component::RootDir | Component::Prefix(_) => {}
            }
        }
        if out.as_os_str().is_empty() {
            return Err(self.invalid(value, field, "must name a path below the root"));
        }
        Ok(out)
    }

    /// Whole seconds from 1 to [`MAX_SECS`].
    fn seconds(
        &self,
        value: Option<&Spanned<u64>>,
        field: &str,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) if (1..=MAX_SECS).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(self.invalid(v, field, format!("must be 1 to {MAX_SECS} seconds"))),
        }
    }

    /// A limit: if given, at least 1.
    fn limit<T: Copy + PartialOrd + From<u8>>(
        &self,
        value: Option<&Spanned<T>>,
        field: &str,
        default: T,
    ) -> Result<T, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) if *v.get_ref() >= T::from(1) => Ok(*v.get_ref()),
            Some(v) => Err(self.invalid(v, field, "must be at least 1")),
        }
    }
}

/// Parses one `trusted_keys` entry: 64 hex digits, a valid ed25519 point.
fn parse_key(
    cx: &Checker<'_>,
    entry: &Spanned<String>,
    i: usize,
) -> Result<TrustedKey, ConfigError> {
    let field = format!("trusted_keys[{i}]");
    let text = entry.get_ref().trim();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| {
        cx.invalid(
            entry,
            &field,
            format!(
                "not an ed25519 public key: expected 64 hex digits (a `molt keygen` .pub file), got {:?}",
                text
            ),
        )
    })?;
    TrustedKey::from_bytes(&bytes).map_err(|_| {
        cx.invalid(
            entry,
            &field,
            "64 hex digits but not a valid ed25519 public key (not a point on the curve)",
        )
    })
}

/// Parses one `revoked_keys` entry: a key id, 16 hex digits.
fn parse_key_id(cx: &Checker<'_>, entry: &Spanned<String>, i: usize) -> Result<KeyId, ConfigError> {
    let mut id = KeyId::default();
    let text = entry.get_ref().trim();
    hex::decode_to_slice(text, &mut id).map_err(|_| {
        cx.invalid(
            entry,
            &format!("revoked_keys[{i}]"),
            format!("not a key id: expected 16 hex digits (as `molt bundle inspect` prints), got {text:?}"),
        )
    })?;
    Ok(id)
}

impl RawConfig {
    /// Applies defaults and checks every field, section by section.
    fn check(self, cx: &Checker<'_>) -> Result<Config, ConfigError> {
        let root = check_root(cx, self.root.as_ref())?;
        let data_dir = match &self.data_dir {
            None => PathBuf::from(DEFAULT_DATA_DIR),
            Some(d) => cx.relative_path(d, "data_dir")?,
        };

        if self.compatible.get_ref().trim().is_empty() {
            return Err(cx.invalid(&self.compatible, "compatible", "must not be empty"));
        }

        let (trusted_keys, revoked_keys) = check_keys(cx, &self.trusted_keys, &self.revoked_keys)?;
        let timeouts = check_timeouts(cx, &self.timeouts)?;
        let limits = check_limits(cx, &self.limits)?;
        let reboot_command = check_reboot_command(cx, self.reboot_command.as_ref())?;
        let trial_boots = check_trial_boots(cx, self.trial_boots.as_ref())?;
        let log_capture_bytes = check_log_capture_bytes(cx, self.log_capture_bytes.as_ref())?;
        let controller = check_controller(cx, self.controller.as_ref())?;

        let poll_interval_secs = cx.seconds(
            self.poll_interval_secs.as_ref(),
            "poll_interval_secs",
            DEFAULT_POLL_INTERVAL_SECS,
        )?;

        let controller_ca = match &self.controller_ca {
            None => None,
            Some(p) => Some(root.join(cx.relative_path(p, "controller_ca")?)),
        };

        Ok(Config {
            root,
            data_dir,
            compatible: self.compatible.into_inner(),
            trusted_keys,
            revoked_keys,
            timeouts,
            limits,
            reboot_command,
            trial_boots,
            log_capture_bytes,
            controller,
            poll_interval_secs,
            controller_ca,
            durable: self.durable.unwrap_or(true),
        })
    }
}

/// `root`: absolute, without `..`.
fn check_root(cx: &Checker<'_>, root: Option<&Spanned<String>>) -> Result<PathBuf, ConfigError> {
    let Some(r) = root else {
        return Ok(PathBuf::from(DEFAULT_ROOT));
    };
    let p = PathBuf::from(r.get_ref());
    if !p.is_absolute() {
        return Err(cx.invalid(r, "root", "must be an absolute path"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(cx.invalid(r, "root", "must not contain `..`"));
    }
    Ok(p)
}

/// `trusted_keys` (at least one) and `revoked_keys` (not all the trusted ones).
fn check_keys(
    cx: &Checker<'_>,
    trusted: &Spanned<Vec<Spanned<String>>>,
    revoked: &[Spanned<String>],
) -> Result<(Vec<TrustedKey>, Vec<KeyId>), ConfigError> {
    if trusted.get_ref().is_empty() {
        return Err(cx.invalid(
            trusted,
            "trusted_keys",
            "at least one key is needed: a device that trusts no key can install nothing",
        ));
    }
    let trusted_keys = trusted
        .get_ref()
        .iter()
        .enumerate()
        .map(|(i, k)| parse_key(cx, k, i))
        .collect::<Result<Vec<_>, _>>()?;
    let revoked_keys = revoked
        .iter()
        .enumerate()
        .map(|(i, k)| parse_key_id(cx, k, i))
        .collect::<Result<Vec<_>, _>>()?;
    // Revoking every trusted key is almost certainly a mistake made while
    // rotating keys; it would leave a device that refuses every update, which
    // only a person with a cable can fix.
    if let (true, Some(first)) = (
        trusted_keys.iter().all(|k| revoked_keys.contains(&k.id)),
        revoked.first(),
    ) {
        return Err(cx.invalid(
            first,
            "revoked_keys",
            "every trusted key is revoked: the device could never install an update",
        ));
    }
    Ok((trusted_keys, revoked_keys))
}

/// `[timeouts]`, each in whole seconds.
fn check_timeouts(cx: &Checker<'_>, t: &RawTimeouts) -> Result<Timeouts, ConfigError> {
    let secs = |v: Option<&Spanned<u64>>, field, default| {
        cx.seconds(v, field, default).map(Duration::from_secs)
    };
    Ok(Timeouts {
        command: secs(
            t.command_secs.as_ref(),
            "timeouts.command_secs",
            DEFAULT_COMMAND_TIMEOUT_SECS,
        )?,
        health_check: secs(
            t.health_check_secs.as_ref(),
            "timeouts.health_check_secs",
            DEFAULT_HEALTH_CHECK_TIMEOUT_SECS,
        )?,
        download_stall: secs(
            t.download_stall_secs.as_ref(),
            "timeouts.download_stall_secs",
            DEFAULT_DOWNLOAD_STALL_SECS,
        )?,
        packages: secs(
            t.packages_secs.as_ref(),
            "timeouts.packages_secs",
            DEFAULT_PACKAGES_TIMEOUT_SECS,
        )?,
    })
}

/// `[limits]`: the engine's defaults for what is left out; `max_path_len` within
/// the engine's path buffer.
fn check_limits(cx: &Checker<'_>, l: &RawLimits) -> Result<Limits, ConfigError> {
    let d = Limits::DEFAULT;
    // Each field's key is `limits.<field>`, its default the engine's.
    macro_rules! limit {
        ($field:ident) => {
            cx.limit(
                l.$field.as_ref(),
                concat!("limits.", stringify!($field)),
                d.$field,
            )?
        };
    }
    let limits = Limits {
        max_manifest_len: limit!(max_manifest_len),
        max_entries: limit!(max_entries),
        max_path_len: limit!(max_path_len),
        max_path_depth: limit!(max_path_depth),
        max_file_size: limit!(max_file_size),
        max_total_size: limit!(max_total_size),
        max_payload_len: limit!(max_payload_len),
        max_chunk_size: limit!(max_chunk_size),
    };
    if let Some(v) = &l.max_path_len {
        // The engine's path buffers are fixed arrays; a larger limit would
        // promise what the decoder cannot hold.
        if *v.get_ref() as usize > PATH_CAPACITY {
            return Err(cx.invalid(
                v,
                "limits.max_path_len",
                format!("must be at most {PATH_CAPACITY} (the engine's path buffer)"),
            ));
        }
    }
    Ok(limits)
}

/// `reboot_command`: not empty.
fn check_reboot_command(
    cx: &Checker<'_>,
    c: Option<&Spanned<String>>,
) -> Result<String, ConfigError> {
    match c {
        None => Ok(DEFAULT_REBOOT_COMMAND.to_owned()),
        Some(c) if c.get_ref().trim().is_empty() => Err(cx.invalid(
            c,
            "reboot_command",
            "must not be empty (a rollback policy may need to reboot)",
        )),
        Some(c) => Ok(c.get_ref().clone()),
    }
}

/// `trial_boots`: at least one.
fn check_trial_boots(cx: &Checker<'_>, n: Option<&Spanned<u8>>) -> Result<u8, ConfigError> {
    match n {
        None => Ok(DEFAULT_TRIAL_BOOTS),
        Some(n) if *n.get_ref() == 0 => Err(cx.invalid(
            n,
            "trial_boots",
            "must be at least 1: a trial of zero boots would roll back before the update ran",
        )),
        Some(n) => Ok(*n.get_ref()),
    }
}

/// `log_capture_bytes`: within [`MIN_LOG_CAPTURE_BYTES`] and [`MAX_LOG_CAPTURE_BYTES`].
fn check_log_capture_bytes(
    cx: &Checker<'_>,
    n: Option<&Spanned<usize>>,
) -> Result<usize, ConfigError> {
    match n {
        None => Ok(DEFAULT_LOG_CAPTURE_BYTES),
        Some(n) if (MIN_LOG_CAPTURE_BYTES..=MAX_LOG_CAPTURE_BYTES).contains(n.get_ref()) => {
            Ok(*n.get_ref())
        }
        Some(n) => Err(cx.invalid(
            n,
            "log_capture_bytes",
            format!("must be {MIN_LOG_CAPTURE_BYTES} to {MAX_LOG_CAPTURE_BYTES} bytes"),
        )),
    }
}

/// `controller`: an http(s) URL with a host, kept without its trailing `/`.
fn check_controller(
    cx: &Checker<'_>,
    u: Option<&Spanned<String>>,
) -> Result<Option<String>, ConfigError> {
    let Some(u) = u else {
        return Ok(None);
    };
    let url = u.get_ref().trim();
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() => Ok(Some(url.trim_end_matches('/').to_owned())),
        _ => Err(cx.invalid(
            u,
            "controller",
            "must be an http:// or https:// URL with a host",
        )),
    }
}
