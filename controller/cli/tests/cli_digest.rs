//! End-to-end tests of `molt digest`: b3sum's line format, the bundle's own file digests, the walk's order and what it skips.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output};

use tempfile::TempDir;

fn molt(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_molt"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("molt runs")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).expect("UTF-8 output")
}

/// A tree with nested directories, an empty file, a file spanning several 256 KiB
/// reads, names that sort differently bytewise and component-wise, and a symlink.
fn tree(root: &Path) {
    let t = root.join("tree");
    let big: Vec<u8> = (0..700_000u32).map(|i| (i * 7 + i / 1000) as u8).collect();
    for (path, content) in [
        ("a/b/deep.txt", &b"deep\n"[..]),
        ("a/z.txt", b""),
        ("a-b/x", b"dash\n"),
        ("big.bin", &big),
    ] {
        let path = t.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }
    symlink("big.bin", t.join("link")).unwrap();
}

#[test]
fn digest_prints_b3sum_lines_in_bundle_order_and_skips_symlinks() {
    let dir = TempDir::new().unwrap();
    tree(dir.path());
    let out = ok(&molt(dir.path(), &["digest", "tree"]));
    let paths: Vec<&str> = out.lines().map(|l| &l[66..]).collect();
    // `a` < `a/b` < `a-b`: a directory's contents follow it, as in a bundle.
    assert_eq!(
        paths,
        [
            "tree/a/b/deep.txt",
            "tree/a/z.txt",
            "tree/a-b/x",
            "tree/big.bin"
        ]
    );
    for line in out.lines() {
        let (hex, path) = line.split_once("  ").unwrap();
        let want = blake3::hash(&fs::read(dir.path().join(path)).unwrap());
        assert_eq!(hex, want.to_hex().as_str(), "{path}");
    }
    // A file given directly is hashed, even through a symlink.
    let one = ok(&molt(dir.path(), &["digest", "tree/link"]));
    assert_eq!(
        one,
        out.lines()
            .last()
            .unwrap()
            .replace("tree/big.bin", "tree/link")
            + "\n"
    );
}

#[test]
fn digest_escapes_like_b3sum() {
    let dir = TempDir::new().unwrap();
    fs::create_dir(dir.path().join("t")).unwrap();
    fs::write(dir.path().join("t/new\nline"), "x").unwrap();
    fs::write(dir.path().join("t/back\\slash"), "y").unwrap();
    let out = ok(&molt(dir.path(), &["digest", "t"]));
    let x = blake3::hash(b"x").to_hex();
    let y = blake3::hash(b"y").to_hex();
    assert_eq!(
        out,
        format!("\\{y}  t/back\\\\slash\n\\{x}  t/new\\nline\n")
    );
    if let Ok(b3) = Command::new("b3sum")
        .current_dir(dir.path())
        .args(["--num-threads", "1", "t/back\\slash", "t/new\nline"])
        .output()
    {
        assert_eq!(
            String::from_utf8_lossy(&b3.stdout),
            out,
            "b3sum prints otherwise"
        );
    }
}

#[test]
fn digest_matches_the_bundles_file_digests_and_b3sum() {
    let dir = TempDir::new().unwrap();
    let root = dir.path();
    tree(root);
    fs::write(
        root.join("recipe.toml"),
        "version = \"1.0.0\"\ncompatible = \"test\"\nkind = \"full\"\n\n\
         [[files]]\nsource = \"tree\"\ndestination = \"/\"\n",
    )
    .unwrap();
    ok(&molt(root, &["keygen", "-o", "key"]));
    ok(&molt(
        root,
        &[
            "bundle",
            "build",
            "recipe.toml",
            "-o",
            "b.molt",
            "--key",
            "key.secret",
        ],
    ));
    let json = ok(&molt(root, &["bundle", "inspect", "b.molt", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let in_bundle: BTreeMap<String, String> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "file")
        .map(|e| {
            (
                format!("tree/{}", e["path"].as_str().unwrap()),
                e["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let out = ok(&molt(root, &["digest", "tree"]));
    let printed: BTreeMap<String, String> = out
        .lines()
        .map(|l| {
            let (hex, path) = l.split_once("  ").unwrap();
            (path.to_owned(), hex.to_owned())
        })
        .collect();
    assert_eq!(printed, in_bundle);
    // b3sum (when installed) prints the same lines for the same files.
    let files: Vec<&str> = printed.keys().map(String::as_str).collect();
    if let Ok(b3) = Command::new("b3sum")
        .current_dir(root)
        .arg("--num-threads")
        .arg("1")
        .args(&files)
        .output()
    {
        let mut theirs: Vec<&str> = std::str::from_utf8(&b3.stdout).unwrap().lines().collect();
        let mut ours: Vec<&str> = out.lines().collect();
        theirs.sort_unstable();
        ours.sort_unstable();
        assert_eq!(ours, theirs);
    }
}

#[test]
fn digest_fails_on_a_missing_path() {
    let dir = TempDir::new().unwrap();
    let o = molt(dir.path(), &["digest", "nope"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope"));
}
