//! `cargo xtask tidy`: repository rules that no compiler checks, also run as a test so `cargo test --workspace` enforces them.
//!
//! The one rule so far: every Rust file starts with a `//!` line saying what it is for,
//! so a reader who opens any file learns its job from its first line.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The directories (relative to the workspace root) whose Rust files the rules cover.
const DIRS: &[&str] = &["engine", "agent-linux", "controller", "xtask", "tests"];

/// Fails, listing every offender, if any rule is broken.
pub fn check(root: &Path) -> Result<()> {
    let offenders = missing_doc_line(root)?;
    if !offenders.is_empty() {
        let list: Vec<String> = offenders
            .iter()
            .map(|p| format!("  {}", p.strip_prefix(root).unwrap_or(p).display()))
            .collect();
        bail!(
            "tidy: {} file(s) do not start with a `//!` line saying what they are for:\n{}",
            offenders.len(),
            list.join("\n")
        );
    }
    Ok(())
}

/// Rust files under [`DIRS`] whose first line is not a `//!` comment, sorted.
fn missing_doc_line(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in DIRS {
        let dir = root.join(dir);
        if dir.is_dir() {
            rust_files(&dir, &mut files)?;
        }
    }
    let mut offenders = Vec::new();
    for file in files {
        let text =
            fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let first = text
            .trim_start_matches('\u{feff}')
            .lines()
            .next()
            .unwrap_or("");
        if !first.starts_with("//!") {
            offenders.push(file);
        }
    }
    offenders.sort();
    Ok(offenders)
}

/// Collects `.rs` files below `dir`, skipping build output (`target`) and hidden directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if kind.is_file() && name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rust_file_starts_with_a_doc_line() {
        if let Err(e) = check(&crate::project_root()) {
            panic!("{e}\nRun `cargo xtask tidy` after fixing them.");
        }
    }

    #[test]
    fn offenders_are_found_and_target_dirs_skipped() {
        let tmp = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        let engine = tmp.join("engine");
        fs::create_dir_all(engine.join("src")).unwrap();
        fs::create_dir_all(engine.join("target/debug")).unwrap();
        fs::write(engine.join("src/good.rs"), "//! Good.\nfn f() {}\n").unwrap();
        fs::write(engine.join("src/bad.rs"), "// Not a doc line.\n").unwrap();
        fs::write(engine.join("src/empty.rs"), "").unwrap();
        fs::write(engine.join("target/debug/build.rs"), "fn main() {}\n").unwrap();

        let found = missing_doc_line(&tmp).unwrap();
        fs::remove_dir_all(&tmp).unwrap();
        assert_eq!(
            found,
            vec![engine.join("src/bad.rs"), engine.join("src/empty.rs")]
        );
    }
}
