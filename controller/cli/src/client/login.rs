//! Where a remote command's controller, token and CA come from: flags, the environment, or the login `molt login` saved in `cli.toml`.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Environment variable naming the controller's URL (overrides the saved login).
pub const ENV_CONTROLLER: &str = "MOLT_CONTROLLER";
/// Environment variable holding the operator token (overrides the saved login).
pub const ENV_TOKEN: &str = "MOLT_TOKEN";
/// Environment variable naming a PEM file of CA certificates to trust for the controller.
pub const ENV_CA: &str = "MOLT_CA";

/// What `molt login` saves in `cli.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLogin {
    /// The controller's base URL (`http://host:port`, no trailing `/`).
    pub controller: String,
    /// The operator token.
    pub token: String,
    /// A PEM file of CA certificates the controller's certificate chains to (an absolute
    /// path), for a controller with a private CA or a self-signed certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
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

/// The controller, token and CA a command talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The base URL, normalized.
    pub controller: String,
    /// The operator token.
    pub token: String,
    /// A PEM file of CA certificates to trust besides the public web PKI roots.
    pub ca: Option<PathBuf>,
}

/// The controller, token and CA file given one way: by flags, or by the environment.
/// Blank values count as not given.
#[derive(Clone, Copy, Debug, Default)]
pub struct Given<'a> {
    /// `--controller` or `MOLT_CONTROLLER`.
    pub controller: Option<&'a str>,
    /// `--token` or `MOLT_TOKEN`.
    pub token: Option<&'a str>,
    /// `--ca` or `MOLT_CA`.
    pub ca: Option<&'a Path>,
}

/// Where the controller, token and CA come from, strongest first: the `--controller`,
/// `--token` and `--ca` flags, the `MOLT_CONTROLLER`, `MOLT_TOKEN` and `MOLT_CA`
/// variables, the saved login.
///
/// The saved token and CA are used only with the saved controller: a token is never
/// sent to a controller it was not saved for, and a CA trusted for one controller does
/// not vouch for another.
pub fn resolve(flags: Given<'_>, env: Given<'_>, saved: Option<&SavedLogin>) -> Result<Target> {
    fn nonempty(s: Option<&str>) -> Option<&str> {
        s.map(str::trim).filter(|s| !s.is_empty())
    }
    fn nonempty_path(p: Option<&Path>) -> Option<&Path> {
        p.filter(|p| !p.as_os_str().is_empty())
    }
    let controller = match nonempty(flags.controller).or(nonempty(env.controller)) {
        Some(c) => normalize_url(c)?,
        None => match saved {
            Some(s) => normalize_url(&s.controller)?,
            None => bail!("no controller configured: run molt login --controller URL"),
        },
    };
    let saved_here =
        saved.filter(|s| normalize_url(&s.controller).ok().as_deref() == Some(&controller));
    let token = match nonempty(flags.token).or(nonempty(env.token)) {
        Some(t) => t.to_owned(),
        None => match saved_here {
            Some(s) => s.token.clone(),
            None => bail!(
                "no operator token for {controller}: run molt login --controller {controller} \
                 (or set {ENV_TOKEN})"
            ),
        },
    };
    let ca = match nonempty_path(flags.ca).or(nonempty_path(env.ca)) {
        Some(p) => Some(p.to_owned()),
        None => saved_here.and_then(|s| s.ca.clone()),
    };
    Ok(Target {
        controller,
        token,
        ca,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ca: None,
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
        assert!(!fs::read_to_string(&path).unwrap().contains("ca ="));
        assert_eq!(load_login(&dir.path().join("none.toml")).unwrap(), None);

        // The CA file is saved beside the URL and token.
        let login = SavedLogin {
            controller: "https://ctl:8443".into(),
            token: "op_secret".into(),
            ca: Some("/etc/molt/ca.pem".into()),
        };
        save_login(&path, &login).unwrap();
        assert_eq!(load_login(&path).unwrap(), Some(login));
    }

    fn saved() -> SavedLogin {
        SavedLogin {
            controller: "http://saved:1".into(),
            token: "saved-token".into(),
            ca: Some("/saved/ca.pem".into()),
        }
    }

    /// Every setting given, as flags or as the environment give them.
    fn given<'a>(controller: &'a str, token: &'a str, ca: &'a str) -> Given<'a> {
        Given {
            controller: Some(controller),
            token: Some(token),
            ca: Some(Path::new(ca)),
        }
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_saved_login() {
        let saved = saved();
        let none = Given::default();
        let t = resolve(none, none, Some(&saved)).unwrap();
        assert_eq!(t.controller, "http://saved:1");
        assert_eq!(t.token, "saved-token");
        assert_eq!(t.ca.as_deref(), Some(Path::new("/saved/ca.pem")));
        let flags = given("http://flag:2/", "flag-token", "/flag/ca.pem");
        let env = given("http://env:3", "env-token", "/env/ca.pem");
        let t = resolve(flags, env, Some(&saved)).unwrap();
        assert_eq!(t.controller, "http://flag:2");
        assert_eq!(t.token, "flag-token");
        assert_eq!(t.ca.as_deref(), Some(Path::new("/flag/ca.pem")));
        let t = resolve(none, env, Some(&saved)).unwrap();
        assert_eq!(
            (t.controller.as_str(), t.token.as_str()),
            ("http://env:3", "env-token")
        );
        assert_eq!(t.ca.as_deref(), Some(Path::new("/env/ca.pem")));
        // The same controller written differently still gets its saved token and CA.
        let flags = Given {
            controller: Some("http://saved:1/"),
            ..Given::default()
        };
        let t = resolve(flags, none, Some(&saved)).unwrap();
        assert_eq!(t.token, "saved-token");
        assert_eq!(t.ca.as_deref(), Some(Path::new("/saved/ca.pem")));
        // Blank values count as not given.
        let blank = given(" ", "", "");
        assert_eq!(
            resolve(blank, blank, Some(&saved)).unwrap(),
            resolve(none, none, Some(&saved)).unwrap()
        );
    }

    #[test]
    fn a_saved_token_or_ca_never_goes_to_another_controller() {
        let saved = saved();
        let other = Given {
            controller: Some("http://other:9"),
            ..Given::default()
        };
        let e = resolve(other, Given::default(), Some(&saved))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no operator token for http://other:9"), "{e}");
        let with_token = Given {
            token: Some("t"),
            ..other
        };
        let t = resolve(with_token, Given::default(), Some(&saved)).unwrap();
        assert_eq!(t.ca, None, "the saved CA is for the saved controller only");
        let e = resolve(Given::default(), Given::default(), None)
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
}
