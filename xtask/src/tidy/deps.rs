//! The tidy rule that the project's own crates depend directly on one version of each crate, read from `cargo metadata`.
//!
//! Only direct dependencies of workspace members count (normal, dev and build, on
//! any target): two versions that meet only deeper in the graph (ureq's own
//! webpki-roots, proptest's getrandom) are their authors' choice, not ours.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cargo;

/// Crates allowed two direct versions for now, each with why. Temporary: every entry
/// names the change that removes it. Empty: no member asks for two versions today.
pub const DUPLICATES_ALLOWED: &[(&str, &str)] = &[];

/// A crate that the workspace's members ask for in more than one version.
#[derive(Debug, PartialEq, Eq)]
pub struct Duplicate {
    pub name: String,
    /// Each resolved version and the members that depend on it directly.
    pub versions: BTreeMap<String, BTreeSet<String>>,
}

impl std::fmt::Display for Duplicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let versions: Vec<String> = self
            .versions
            .iter()
            .map(|(v, members)| {
                let members: Vec<&str> = members.iter().map(String::as_str).collect();
                format!("{v} ({})", members.join(", "))
            })
            .collect();
        write!(f, "{}: {}", self.name, versions.join(", "))
    }
}

/// The workspace's resolved graph, as `cargo metadata --format-version 1` prints it.
pub fn metadata(root: &Path) -> Result<Value> {
    let mut cmd = cargo(root);
    cmd.args(["metadata", "--format-version", "1"]);
    let out = cmd.output().context("cannot run `cargo metadata`")?;
    if !out.status.success() {
        bail!(
            "`cargo metadata` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("`cargo metadata` printed no JSON")
}

/// The crates that members of the workspace in `meta` depend on directly in more than
/// one version, by name, leaving out those `allowed` names (tidy passes
/// [`DUPLICATES_ALLOWED`]).
pub fn duplicates(meta: &Value, allowed: &[(&str, &str)]) -> Result<Vec<Duplicate>> {
    let packages = meta["packages"]
        .as_array()
        .context("cargo metadata: no `packages`")?;
    // Package id → (name, version).
    let named: HashMap<&str, (&str, &str)> = packages
        .iter()
        .filter_map(|p| {
            Some((
                p["id"].as_str()?,
                (p["name"].as_str()?, p["version"].as_str()?),
            ))
        })
        .collect();
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .context("cargo metadata: no `workspace_members`")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let nodes = meta["resolve"]["nodes"]
        .as_array()
        .context("cargo metadata: no `resolve.nodes`")?;
    let mut by_name: BTreeMap<&str, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for node in nodes {
        let Some(id) = node["id"].as_str().filter(|id| members.contains(id)) else {
            continue;
        };
        let member = named.get(id).map_or(id, |(name, _)| name);
        for dep in node["deps"].as_array().into_iter().flatten() {
            let Some(&(name, version)) = dep["pkg"].as_str().and_then(|p| named.get(p)) else {
                continue;
            };
            by_name
                .entry(name)
                .or_default()
                .entry(version.to_string())
                .or_default()
                .insert(member.to_string());
        }
    }
    Ok(by_name
        .into_iter()
        .filter(|(name, versions)| versions.len() > 1 && !allowed.iter().any(|(n, _)| n == name))
        .map(|(name, versions)| Duplicate {
            name: name.to_string(),
            versions,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small `cargo metadata` answer: members `a` and `b`; `a` wants x 1.0 and y,
    /// `b` wants x 2.0 (as a dev-dependency) and y; y wants z 0.1 and 0.2 itself.
    const META: &str = r#"{
        "workspace_members": ["path+file:///w/a#a@0.1.0", "path+file:///w/b#b@0.1.0"],
        "packages": [
            {"id": "path+file:///w/a#a@0.1.0", "name": "a", "version": "0.1.0"},
            {"id": "path+file:///w/b#b@0.1.0", "name": "b", "version": "0.1.0"},
            {"id": "registry+r#x@1.0.0", "name": "x", "version": "1.0.0"},
            {"id": "registry+r#x@2.0.0", "name": "x", "version": "2.0.0"},
            {"id": "registry+r#y@1.0.0", "name": "y", "version": "1.0.0"},
            {"id": "registry+r#z@0.1.0", "name": "z", "version": "0.1.0"},
            {"id": "registry+r#z@0.2.0", "name": "z", "version": "0.2.0"}
        ],
        "resolve": {"nodes": [
            {"id": "path+file:///w/a#a@0.1.0", "deps": [
                {"name": "x", "pkg": "registry+r#x@1.0.0"},
                {"name": "y", "pkg": "registry+r#y@1.0.0"}]},
            {"id": "path+file:///w/b#b@0.1.0", "deps": [
                {"name": "x", "pkg": "registry+r#x@2.0.0", "dep_kinds": [{"kind": "dev"}]},
                {"name": "y", "pkg": "registry+r#y@1.0.0"},
                {"name": "a", "pkg": "path+file:///w/a#a@0.1.0"}]},
            {"id": "registry+r#y@1.0.0", "deps": [
                {"name": "z", "pkg": "registry+r#z@0.1.0"},
                {"name": "z_old", "pkg": "registry+r#z@0.2.0"}]}
        ]}
    }"#;

    #[test]
    fn two_direct_versions_are_found_and_named_with_who_asks() {
        let meta: Value = serde_json::from_str(META).unwrap();
        let found = duplicates(&meta, &[]).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].to_string(), "x: 1.0.0 (a), 2.0.0 (b)");
        let allowed = duplicates(&meta, &[("x", "b's move to x 1.0 is another change")]).unwrap();
        assert_eq!(allowed, vec![]);
    }

    #[test]
    fn one_direct_version_everywhere_passes() {
        let meta = META.replace(
            "registry+r#x@2.0.0\", \"dep_kinds",
            "registry+r#x@1.0.0\", \"dep_kinds",
        );
        let meta: Value = serde_json::from_str(&meta).unwrap();
        assert_eq!(duplicates(&meta, &[]).unwrap(), vec![]);
    }
}
