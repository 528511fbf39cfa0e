//! What `molt update push` checks and sends: bundle or recipe, a bundle's identity, and a recipe with every file it names as a multipart form.
//!
//! The form's shape (part names as the recipe writes them, one part per entry of a
//! directory source, type, mode and time headers) is what the controller's
//! `server/build_dir.rs` reads back to rebuild the recipe's directory.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use molt_engine::bundle::chunk::{starts_with_magic, Head};
use molt_engine::bundle::BundleKind;

use super::multipart::{Multipart, Part, PartBody};
use molt_bundle::inspect;
use molt_bundle::recipe::{self, RecipeFile};

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
    let mut head = Vec::with_capacity(Head::LEN);
    File::open(path)
        .and_then(|f| f.take(Head::LEN as u64).read_to_end(&mut head))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(if starts_with_magic(&head) {
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

/// Reads a bundle's manifest through the engine's decoder ([`inspect::read_manifest`]),
/// without checking the signature (the controller does that with its trusted keys):
/// enough to refuse a file that is not a bundle, or a version the controller already
/// has, before uploading gigabytes.
pub fn bundle_info(path: &Path) -> Result<BundleInfo> {
    let head = inspect::read_manifest(path, &[])?;
    if let Some(r) = &head.refusal {
        bail!("{}: not a usable bundle: {r}", path.display());
    }
    let m = head.require_manifest(path, "not a usable bundle: no manifest")?;
    Ok(BundleInfo {
        version: m.version.to_owned(),
        compatible: m.compatible.to_owned(),
        full: matches!(m.kind, BundleKind::Full),
        size: head.file_len,
    })
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
    let plan = recipe::load(recipe_path, recipe::BuildTime::now())?;
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
    for (label, source) in parsed.named_paths() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

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
}
