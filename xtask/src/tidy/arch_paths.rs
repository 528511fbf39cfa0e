//! The tidy rule that every path ARCHITECTURE.md's code map names exists, so the map cannot quietly drift from the tree.
//!
//! What counts as a path, precisely (prose must not trip the rule):
//! - only the **Code map** section counts: from the `## Code map` heading to the next
//!   `## ` heading; fenced code blocks (```` ``` ````) in it are skipped, since they
//!   draw diagrams and the device's data directory, not the repository;
//! - only inline code (text between single backticks) counts, and only when it is one
//!   token of path characters (ASCII letters, digits, `_`, `-`, `.`, `/`) that
//!   contains a `/` and starts with neither `/` nor `.`: `src/bundle/chunk.rs`,
//!   `controller/api/`, `tests/`. Absolute paths (`/etc/molt/agent.toml`) are the
//!   device's; bare file names (`mod.rs`, `api.md`) name a file of a folder the
//!   sentence just named, and are not checked; commands, types and `//!` are not paths;
//! - a path exists when it names a file or folder, trailing `/` or not, beneath one
//!   of: the folder the nearest `###`/`####` heading names (its first inline code
//!   ending in `/`, e.g. `engine/` or `controller/cli/`), a folder named earlier in the
//!   same paragraph or table row (`src/web/` … `assets/`), or the repository root.

use std::path::{Path, PathBuf};

/// A path the code map names that does not exist: the line (1-based) and the path.
#[derive(Debug, PartialEq, Eq)]
pub struct Missing {
    pub line: usize,
    pub path: String,
}

/// The paths in `doc`'s code map that `exists` (given a path relative to the
/// repository root) says are absent, in order.
pub fn missing(doc: &str, exists: impl Fn(&Path) -> bool) -> Vec<Missing> {
    let mut found = Vec::new();
    let mut in_map = false;
    let mut fenced = false;
    // The folder the current heading names, and folders named earlier in this paragraph.
    let mut base = PathBuf::new();
    let mut near: Vec<PathBuf> = Vec::new();
    for (i, line) in doc.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if let Some(title) = trimmed.strip_prefix("## ") {
            in_map = title.trim() == "Code map";
            base = PathBuf::new();
            near.clear();
            continue;
        }
        if !in_map {
            continue;
        }
        if trimmed.starts_with("###") {
            base = code_spans(line)
                .into_iter()
                .find(|s| s.ends_with('/') && is_path(s))
                .map(PathBuf::from)
                .unwrap_or_default();
            near.clear();
            continue;
        }
        // A blank line ends a paragraph; each table row stands alone.
        if trimmed.is_empty() || trimmed.starts_with('|') {
            near.clear();
        }
        for span in code_spans(line) {
            if !is_path(span) {
                continue;
            }
            let rel = Path::new(span.trim_end_matches('/'));
            let hit = [base.as_path(), Path::new("")]
                .into_iter()
                .chain(near.iter().map(PathBuf::as_path))
                .map(|dir| dir.join(rel))
                .find(|p| exists(p));
            match hit {
                Some(p) => {
                    if span.ends_with('/') {
                        near.push(p);
                    }
                }
                None => found.push(Missing {
                    line: i + 1,
                    path: span.to_string(),
                }),
            }
        }
        if trimmed.starts_with('|') {
            near.clear();
        }
    }
    found
}

/// The inline code spans of one line (text between pairs of single backticks).
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// Whether an inline code span is a repository path by the rule in the module docs.
fn is_path(span: &str) -> bool {
    !span.is_empty()
        && span.contains('/')
        && !span.starts_with('/')
        && !span.starts_with('.')
        && span
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# Architecture

## Bird's-eye view

Prose before the map names `gone/elsewhere.rs`, which is not checked.

## Code map

### `engine/` (crate `molt-engine`)

| path | what |
|---|---|
| `src/lib.rs` | here |
| `src/gone.rs` | renamed away |
| `size-probe/` | a firmware; `src/bin/primitives.rs` is its baseline |
| `src/bin/primitives.rs` | not beneath engine/ on its own row |

```text
current -> slots/a     the device's data directory, not the repository
```

### `xtask/`

`src/bench/`: `mod.rs` runs them, `util.rs` the rounds; `cargo xtask tidy`,
`/etc/molt/agent.toml`, `.molt/`, `//!` and `step(&state) -> x` are no paths.
`engine/src/lib.rs` from the root; `src/web/` then `assets/` in its paragraph.

`assets/` in a new paragraph has lost its folder.

## Architecture invariants

`nowhere/at/all.rs` is outside the map.
";

    #[test]
    fn paths_are_looked_up_beneath_the_heading_the_row_and_the_root() {
        let tree = [
            "engine/src/lib.rs",
            "engine/size-probe",
            "engine/size-probe/src/bin/primitives.rs",
            "xtask/src/bench",
            "xtask/src/web",
            "xtask/src/web/assets",
        ];
        let exists = |p: &Path| tree.iter().any(|t| Path::new(t) == p);
        let found = missing(DOC, exists);
        assert_eq!(
            found,
            vec![
                Missing {
                    line: 14,
                    path: "src/gone.rs".into()
                },
                Missing {
                    line: 16,
                    path: "src/bin/primitives.rs".into()
                },
                Missing {
                    line: 28,
                    path: "assets/".into()
                },
            ]
        );
    }

    #[test]
    fn only_single_tokens_of_path_characters_with_a_slash_are_paths() {
        for p in ["src/lib.rs", "controller/api/", "tests/", "a-b/c_d.md"] {
            assert!(is_path(p), "{p}");
        }
        for p in [
            "mod.rs",
            "/etc/molt/agent.toml",
            ".molt/",
            "//!",
            "cargo xtask",
            "install <file|url>",
            "molt_engine::protocol",
            "",
        ] {
            assert!(!is_path(p), "{p}");
        }
    }
}
