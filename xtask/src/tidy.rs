//! `cargo xtask tidy`: repository rules that no compiler checks, also run as a test so `cargo test --workspace` enforces them.
//!
//! The rules:
//! - every Rust file starts with a `//!` line saying what it is for, so a reader who
//!   opens any file learns its job from its first line;
//! - the bundle format is implemented once: outside engine/, no code reads a bundle by
//!   byte offset, which shows as naming the format's layout constants or its magic.
//!   What other code needs of a bundle's bytes is `molt_engine::bundle::chunk`;
//! - the project's crates depend directly on one version of each crate
//!   ([`deps`]: two versions of one dependency are two of everything it brings);
//! - every path ARCHITECTURE.md's code map names exists ([`arch_paths`], which says
//!   precisely what counts as a path).

mod arch_paths;
mod deps;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The directories (relative to the workspace root) whose Rust files the rules cover.
const DIRS: &[&str] = &["engine", "agent-linux", "controller", "xtask", "tests"];

/// Fails, listing every offender, if any rule is broken.
pub fn check(root: &Path) -> Result<()> {
    let readers = format_readers(root)?;
    if !readers.is_empty() {
        let list: Vec<String> = readers
            .iter()
            .map(|(p, line, what)| {
                format!(
                    "  {}:{line}: {what}",
                    p.strip_prefix(root).unwrap_or(p).display()
                )
            })
            .collect();
        bail!(
            "tidy: the bundle format is read outside engine/ ({} place(s)); use \
             molt_engine::bundle::chunk (Head, ChunkHeader, Chain) instead:\n{}",
            readers.len(),
            list.join("\n")
        );
    }
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
    let duplicates = deps::duplicates(&deps::metadata(root)?, deps::DUPLICATES_ALLOWED)?;
    if !duplicates.is_empty() {
        let list: Vec<String> = duplicates.iter().map(|d| format!("  {d}")).collect();
        bail!(
            "tidy: the workspace's crates depend directly on two versions of {} crate(s) \
             (version, then the crates asking for it); agree on one:\n{}",
            duplicates.len(),
            list.join("\n")
        );
    }
    let map = root.join("ARCHITECTURE.md");
    let doc = fs::read_to_string(&map).with_context(|| format!("cannot read {}", map.display()))?;
    let missing = arch_paths::missing(&doc, |p| root.join(p).exists());
    if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|m| format!("  ARCHITECTURE.md:{}: `{}`", m.line, m.path))
            .collect();
        bail!(
            "tidy: ARCHITECTURE.md's code map names {} path(s) that do not exist:\n{}",
            missing.len(),
            list.join("\n")
        );
    }
    Ok(())
}

/// Names that only code reading a bundle by offset needs.
const LAYOUT_NAMES: &[&str] = &[
    "HEADER_LEN",
    "SIG_BLOCK_PREFIX",
    "SIG_RECORD_LEN",
    "CHUNK_HEADER_LEN",
    "max_wire_chunk",
    "MOLTBNDL",
];

/// Files outside engine/ allowed to read the format by offset, each with why.
const LAYOUT_ALLOWED: &[(&str, &str)] = &[
    (
        "tests/support/src/raw.rs",
        "the raw assembler and parser of the shared test-support crate: takes signed bundles \
         apart and reassembles them byte by byte to craft hostile ones the encoder never writes",
    ),
    (
        "controller/server/tests/server/api.rs",
        "an upload body that starts like a bundle, so the streaming size limit is what stops it",
    ),
];

/// Places outside engine/ that name a layout constant or the engine's `MAGIC`:
/// (file, line number, the line).
fn format_readers(root: &Path) -> Result<Vec<(PathBuf, usize, String)>> {
    let mut files = Vec::new();
    for dir in DIRS.iter().filter(|d| **d != "engine") {
        let dir = root.join(dir);
        if dir.is_dir() {
            rust_files(&dir, &mut files)?;
        }
    }
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let rel = file.strip_prefix(root).unwrap_or(&file);
        // This file names the constants to look for them.
        if rel == Path::new("xtask/src/tidy.rs")
            || LAYOUT_ALLOWED.iter().any(|(p, _)| rel == Path::new(p))
        {
            continue;
        }
        let text =
            fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        for (i, line) in text.lines().enumerate() {
            let words: Vec<&str> = line
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .collect();
            let layout = words.iter().any(|w| LAYOUT_NAMES.contains(w));
            // Other code may have a `MAGIC` of its own (the agent's journal does).
            let magic = words.contains(&"MAGIC") && line.contains("molt_engine");
            if layout || magic {
                found.push((file.clone(), i + 1, line.trim().to_string()));
            }
        }
    }
    Ok(found)
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
    fn the_repository_keeps_every_rule() {
        if let Err(e) = check(&crate::project_root()) {
            panic!("{e}\nRun `cargo xtask tidy` after fixing them.");
        }
    }

    #[test]
    fn reading_the_format_by_offset_outside_the_engine_is_found() {
        let tmp = std::env::temp_dir().join(format!("xtask-tidy-fmt-{}", std::process::id()));
        for d in ["engine/src", "controller/src", "agent-linux/src"] {
            fs::create_dir_all(tmp.join(d)).unwrap();
        }
        fs::write(
            tmp.join("engine/src/format.rs"),
            "//! F.\npub const CHUNK_HEADER_LEN: usize = 40;\n",
        )
        .unwrap();
        fs::write(
            tmp.join("controller/src/a.rs"),
            "//! A.\nuse molt_engine::bundle::format::{KeyId, MAGIC};\nlet n = HEADER_LEN_X + 1;\n",
        )
        .unwrap();
        fs::write(
            tmp.join("controller/src/b.rs"),
            "//! B.\nlet h = &b[..CHUNK_HEADER_LEN];\nlet ok = ChunkHeader::LEN;\n",
        )
        .unwrap();
        fs::write(
            tmp.join("agent-linux/src/journal.rs"),
            "//! J.\nconst MAGIC: &[u8; 4] = b\"MJRN\";\n",
        )
        .unwrap();
        let found = format_readers(&tmp).unwrap();
        fs::remove_dir_all(&tmp).unwrap();
        let at: Vec<(String, usize)> = found
            .iter()
            .map(|(p, l, _)| (p.strip_prefix(&tmp).unwrap().display().to_string(), *l))
            .collect();
        assert_eq!(
            at,
            vec![
                ("controller/src/a.rs".into(), 2),
                ("controller/src/b.rs".into(), 2)
            ]
        );
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
