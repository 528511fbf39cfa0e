//! The directory a server-side build reads: multipart parts laid out beneath it by name, with the modes, times and symlinks the `molt` CLI sends, and no way for a name or a recipe path to reach outside it.
//!
//! The CLI (`client::push::recipe_form`) names each part by the path the recipe writes
//! and may add three part headers: `X-Molt-Type` (`file`, the default, `dir` or
//! `symlink`, whose body is the link's target), `X-Molt-Mode` (octal) and
//! `X-Molt-Mtime` (Unix seconds). A bundle records modes and times, so they are
//! set here as the operator's machine had them.
//!
//! Symlinks are the one way out of a directory, so a part is never written
//! beneath a symlink part, and every path the recipe names must lead to its
//! target without passing through one (a symlink inside a walked directory is
//! shipped as a link, and the build checks that its target stays inside the
//! snapshot).

use std::collections::HashSet;
use std::fs::{self, File, FileTimes, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;

use super::error::AppError;

/// The recipe's file name inside the build directory (no part may use it).
pub const RECIPE_NAME: &str = ".recipe.toml";

/// Whether `p` is a relative path that stays beneath its base (no `..`, not absolute).
pub fn confined(p: &Path) -> bool {
    !p.as_os_str().is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// What a part holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file: the body.
    File,
    /// A directory (empty body).
    Dir,
    /// A symbolic link: the body is its target.
    Symlink,
}

/// A part's headers, read.
#[derive(Clone, Copy, Debug)]
pub struct PartMeta {
    /// What it holds.
    pub kind: Kind,
    /// Permission bits.
    pub mode: Option<u32>,
    /// Modification time, Unix seconds.
    pub mtime: Option<u64>,
}

impl PartMeta {
    /// Reads the `X-Molt-*` headers of the part `name`.
    pub fn read(name: &str, headers: &HeaderMap) -> Result<PartMeta, AppError> {
        let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).map(str::trim);
        let bad = |h: &str, v: &str| AppError::bad_request(format!("part `{name}`: bad {h} `{v}`"));
        let kind = match get("x-molt-type") {
            None | Some("file") => Kind::File,
            Some("dir") => Kind::Dir,
            Some("symlink") => Kind::Symlink,
            Some(v) => return Err(bad("X-Molt-Type (file, dir or symlink)", v)),
        };
        let mode = match get("x-molt-mode") {
            None => None,
            Some(v) => Some(
                u32::from_str_radix(v.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| bad("X-Molt-Mode (octal, at most 7777)", v))?,
            ),
        };
        let mtime = match get("x-molt-mtime") {
            None => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|_| bad("X-Molt-Mtime (Unix seconds)", v))?,
            ),
        };
        Ok(PartMeta { kind, mode, mtime })
    }
}

/// The build directory being filled.
pub struct BuildDir {
    src: PathBuf,
    names: HashSet<PathBuf>,
    /// Directories whose mode and time are set last (writing into a directory changes its time).
    dirs: Vec<(PathBuf, PartMeta)>,
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> AppError {
    AppError::internal(format!("cannot {what} {}: {e}", path.display()))
}

impl BuildDir {
    /// An empty build directory at `src` (which exists).
    pub fn new(src: PathBuf) -> BuildDir {
        BuildDir {
            src,
            names: HashSet::new(),
            dirs: Vec::new(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.src
    }

    /// Checks the part `name` and creates its parent directories; returns where it goes.
    pub fn place(&mut self, name: &str, kind: Kind) -> Result<PathBuf, AppError> {
        let rel = PathBuf::from(name);
        if !confined(&rel) || rel == Path::new(RECIPE_NAME) {
            return Err(AppError::bad_request(format!(
                "part `{name}`: a file part's name must be a relative path inside the recipe's \
                 directory (no `..`, not absolute, not `{RECIPE_NAME}`)"
            )));
        }
        let rel: PathBuf = rel.components().collect();
        if !self.names.insert(rel.clone()) {
            return Err(AppError::bad_request(format!(
                "part `{name}` is given twice"
            )));
        }
        let mut at = self.src.clone();
        let mut parts = rel.components().peekable();
        while let Some(c) = parts.next() {
            at.push(c);
            let last = parts.peek().is_none();
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(AppError::bad_request(format!(
                        "part `{name}` lies beneath the symlink part `{}`",
                        at.strip_prefix(&self.src).unwrap_or(&at).display()
                    )))
                }
                // A directory made for an earlier part's path may get its own part now.
                Ok(m) if m.is_dir() && (!last || kind == Kind::Dir) => {}
                Ok(_) => {
                    return Err(AppError::bad_request(format!(
                        "part `{name}` collides with the part `{}`",
                        at.strip_prefix(&self.src).unwrap_or(&at).display()
                    )))
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    if !last {
                        fs::create_dir(&at).map_err(|e| io_error("create", &at, e))?;
                    }
                }
                Err(e) => return Err(io_error("read", &at, e)),
            }
        }
        Ok(at)
    }

    /// Gives a written file its mode and time.
    pub fn finish_file(&self, path: &Path, meta: PartMeta) -> Result<(), AppError> {
        apply(path, meta)
    }

    /// Creates a directory part (its mode and time are set by [`BuildDir::finish`]).
    pub fn add_dir(&mut self, path: &Path, meta: PartMeta) -> Result<(), AppError> {
        if !path.is_dir() {
            fs::create_dir(path).map_err(|e| io_error("create", path, e))?;
        }
        self.dirs.push((path.to_path_buf(), meta));
        Ok(())
    }

    /// Creates a symlink part.
    pub fn add_symlink(&self, path: &Path, target: &str) -> Result<(), AppError> {
        if target.is_empty() || target.contains('\0') {
            return Err(AppError::bad_request(format!(
                "part `{}`: a symlink needs a target",
                path.strip_prefix(&self.src).unwrap_or(path).display()
            )));
        }
        std::os::unix::fs::symlink(target, path).map_err(|e| io_error("create", path, e))
    }

    /// Sets the directories' modes and times, deepest first.
    pub fn finish(&mut self) -> Result<(), AppError> {
        self.dirs
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (p, meta) in &self.dirs {
            apply(p, *meta)?;
        }
        Ok(())
    }

    /// Gives every directory part its owner's permissions back (after the build), so
    /// removing the directory cannot fail on one that arrived read-only.
    pub fn release(&self) {
        for (p, _) in &self.dirs {
            let _ = fs::set_permissions(p, Permissions::from_mode(0o700));
        }
    }

    /// Checks a path the recipe names (`field` says which): relative, inside, present,
    /// and reached without passing through a symlink.
    pub fn check_named(&self, field: &str, path: &Path) -> Result<(), AppError> {
        if !confined(path) {
            return Err(AppError::bad_request(format!(
                "recipe: {field} `{}` must be a relative path without `..` (it names an uploaded part)",
                path.display()
            )));
        }
        let mut at = self.src.clone();
        for c in path.components() {
            at.push(c);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(AppError::bad_request(format!(
                        "recipe: {field} `{}` leads through the symlink part `{}`; send the file \
                         or directory itself",
                        path.display(),
                        at.strip_prefix(&self.src).unwrap_or(&at).display()
                    )))
                }
                Ok(_) => {}
                Err(_) => {
                    return Err(AppError::bad_request(format!(
                        "recipe: {field} `{}` names no uploaded part (send a part with that name)",
                        path.display()
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Sets the mode and modification time a part asked for.
fn apply(path: &Path, meta: PartMeta) -> Result<(), AppError> {
    if let Some(mode) = meta.mode {
        fs::set_permissions(path, Permissions::from_mode(mode))
            .map_err(|e| io_error("set the mode of", path, e))?;
    }
    if let Some(secs) = meta.mtime {
        let t: SystemTime = UNIX_EPOCH + Duration::from_secs(secs);
        File::open(path)
            .and_then(|f| f.set_times(FileTimes::new().set_modified(t)))
            .map_err(|e| io_error("set the time of", path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_inside_and_never_pass_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = BuildDir::new(tmp.path().to_path_buf());
        for bad in ["/etc/passwd", "../x", "a/../../x", "", RECIPE_NAME] {
            assert!(d.place(bad, Kind::File).is_err(), "{bad}");
        }
        let link = d.place("link", Kind::Symlink).unwrap();
        d.add_symlink(&link, "/").unwrap();
        let err = d.place("link/etc/x", Kind::File).unwrap_err().message;
        assert!(err.contains("beneath the symlink part `link`"), "{err}");
        assert!(d
            .check_named("[[files]] #1 source", Path::new("link"))
            .is_err());
        assert!(d.check_named("x", Path::new("missing")).is_err());

        let f = d.place("app/main.js", Kind::File).unwrap();
        fs::write(&f, "x").unwrap();
        assert!(d.place("app/main.js", Kind::File).is_err(), "twice");
        // The directory made for `app/main.js` may still get its own part.
        let dir = d.place("app", Kind::Dir).unwrap();
        d.add_dir(
            &dir,
            PartMeta {
                kind: Kind::Dir,
                mode: Some(0o750),
                mtime: Some(1000),
            },
        )
        .unwrap();
        d.finish().unwrap();
        let m = fs::metadata(&dir).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o750);
        assert_eq!(
            m.modified().unwrap(),
            UNIX_EPOCH + Duration::from_secs(1000)
        );
        d.check_named("[[files]] #1 source", Path::new("app"))
            .unwrap();
    }
}
