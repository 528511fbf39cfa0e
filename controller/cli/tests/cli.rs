//! End-to-end tests of the `molt` binary: keygen, bundle build / verify / inspect, and the build's refusals.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use molt_test_support::{path_str as s, stderr_of as stderr, stdout_of as stdout};
use tempfile::TempDir;

/// Runs `molt` with `args`.
fn molt(args: &[&str]) -> Output {
    molt_env(args, &[])
}

/// Runs `molt` with `args` and the environment variables `env` added.
fn molt_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_molt"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("molt runs")
}

/// A `SOURCE_DATE_EPOCH` for tests: 2023-11-14, before any file a test writes.
const EPOCH: &str = "1700000000";

/// The recipe the round trip uses: every stage, a file, a directory with a symlink,
/// a deletion, packages in both forms with a shipped `.deb`.
const RECIPE: &str = r#"
version = "1.4.2"
compatible = "acme-gw"
release = 42
comment = "round trip"
target_group = "test"
base_version = "1.4.1"
delete = ["/opt/app/old.js"]

[before]
run = "systemctl stop app"
timeout = 60

[[files]]
source = "app"
destination = "/opt/app"

[[files]]
source = "app.env"
destination = "etc/app.env"
mode = "0640"
uid = 0
gid = 1000

[packages]
apt = ["curl", "jq=1.6-2", { name = "acme-tools", version = "2.0", file = "pkgs/acme-tools_2.0_all.deb" }]
pip3 = ["requests==2.31.0"]
npm = ["left-pad@1.3.0"]
npm_prefix = "/opt/app"

[after]
script = "after.sh"
chroot = false

[health_check]
run = "curl -fsS http://127.0.0.1:8080/health"
timeout = 10
attempts = 4
interval = 2

[rollback]
revert = true
run = "systemctl restart app"
reboot = true
"#;

/// A temporary workspace: the recipe's sources, a key pair and an empty output directory.
struct Fixture {
    dir: TempDir,
    key_id: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("app/lib")).unwrap();
        fs::write(root.join("app/main.js"), "console.log('main');\n").unwrap();
        fs::write(
            root.join("app/lib/util.js"),
            "module.exports = 42;\n".repeat(500),
        )
        .unwrap();
        fs::write(root.join("app/run.sh"), "#!/bin/sh\nexec node main.js\n").unwrap();
        fs::set_permissions(root.join("app/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("lib/util.js", root.join("app/current")).unwrap();
        fs::write(root.join("app.env"), "PORT=8080\n").unwrap();
        fs::create_dir_all(root.join("pkgs")).unwrap();
        fs::write(
            root.join("pkgs/acme-tools_2.0_all.deb"),
            b"!<arch>\nnot really a deb\n",
        )
        .unwrap();
        fs::write(root.join("after.sh"), "#!/bin/bash\nsystemctl start app\n").unwrap();
        fs::create_dir_all(root.join("out")).unwrap();
        let o = molt(&["keygen", "-o", s(&root.join("key"))]);
        assert!(o.status.success(), "{}", stderr(&o));
        let key_id = stdout(&o).trim().to_owned();
        Fixture { dir, key_id }
    }

    /// A new workspace with [`RECIPE`] built into out/app.bundle.
    fn built() -> Self {
        let f = Fixture::new();
        let o = f.build(RECIPE);
        assert!(o.status.success(), "build failed: {}", stderr(&o));
        f
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write_recipe(&self, text: &str) -> PathBuf {
        let p = self.path("recipe.toml");
        fs::write(&p, text).unwrap();
        p
    }

    fn bundle(&self) -> PathBuf {
        self.path("out/app.bundle")
    }

    /// Builds `recipe` into out/app.bundle, at [`EPOCH`].
    fn build(&self, recipe: &str) -> Output {
        self.build_with(recipe, &[], &[("SOURCE_DATE_EPOCH", EPOCH)])
    }

    /// Builds `recipe` into out/app.bundle with `extra` arguments and `env`.
    fn build_with(&self, recipe: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let r = self.write_recipe(recipe);
        self.build_file(&r, extra, env)
    }

    /// Builds the recipe file `recipe` into out/app.bundle with `extra` arguments and `env`.
    fn build_file(&self, recipe: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let (bundle, key) = (self.bundle(), self.path("key.secret"));
        let mut args = vec![
            "bundle",
            "build",
            s(recipe),
            "-o",
            s(&bundle),
            "--key",
            s(&key),
        ];
        args.extend_from_slice(extra);
        molt_env(&args, env)
    }

    /// Runs `molt bundle <command> <bundle>` with a `--key` for each of `keys`, the
    /// public key files named in the workspace.
    fn check(&self, command: &str, bundle: &Path, keys: &[&str]) -> Output {
        let keys: Vec<PathBuf> = keys.iter().map(|k| self.path(k)).collect();
        let mut args = vec!["bundle", command, s(bundle)];
        for k in &keys {
            args.extend(["--key", s(k)]);
        }
        molt(&args)
    }

    /// Verifies out/app.bundle with the workspace's own public key.
    fn verify(&self) -> Output {
        self.check("verify", &self.bundle(), &["key.pub"])
    }

    /// Asserts the build failed with a message containing every one of `needles`, and
    /// left nothing in the output directory (no bundle, no temporary file); `case` names
    /// the recipe in the failure messages.
    fn build_fails(&self, case: &str, recipe: &str, needles: &[&str]) {
        let o = self.build(recipe);
        let err = stderr(&o);
        assert!(
            !o.status.success(),
            "{case}: build should fail; stdout: {}",
            stdout(&o)
        );
        for n in needles {
            assert!(err.contains(n), "{case}: stderr lacks {n:?}: {err}");
        }
        let left: Vec<_> = fs::read_dir(self.path("out")).unwrap().collect();
        assert!(
            left.is_empty(),
            "{case}: output directory not empty: {left:?}"
        );
    }

    fn key_id(&self) -> String {
        self.key_id.clone()
    }
}

/// Asserts `o` exited with status 1 (refused, not crashed) and said `needle` on stderr;
/// `case` names what was run in the failure message.
fn assert_refused(case: &str, o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(1), "{case}: {}", stderr(o));
    assert!(stderr(o).contains(needle), "{case}: {}", stderr(o));
}

#[test]
fn keygen_build_verify_inspect_round_trip() {
    let f = Fixture::new();
    let o = f.build(RECIPE);
    assert!(o.status.success(), "build failed: {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("version 1.4.2 (patch)"), "{out}");
    assert!(out.contains("target group: test"), "{out}");
    assert!(out.contains(&f.key_id()), "{out}");

    let o = f.verify();
    assert!(o.status.success(), "verify failed: {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("OK "), "{out}");
    assert!(
        out.contains("version 1.4.2") && out.contains("acme-gw") && out.contains("release 42"),
        "{out}"
    );

    // `--verify` decodes in full before the rename; with the build's time given, the
    // bytes are the first build's. (Without it they differed whenever the two builds
    // fell in two seconds: a slow run under load.)
    let first = fs::read(f.bundle()).unwrap();
    let o = f.build_file(
        &f.path("recipe.toml"),
        &["--verify"],
        &[("SOURCE_DATE_EPOCH", EPOCH)],
    );
    assert!(o.status.success(), "build --verify failed: {}", stderr(&o));
    assert!(
        fs::read(f.bundle()).unwrap() == first,
        "--verify built other bytes"
    );
    let again = stdout(&o);
    assert!(again.contains("version 1.4.2 (patch)"), "{again}");

    let o = molt(&["bundle", "inspect", s(&f.bundle())]);
    assert!(o.status.success(), "inspect failed: {}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "signature      NOT checked",
        "version        1.4.2",
        "compatible     acme-gw",
        "release        42",
        "patch (on version 1.4.1 only)",
        "round trip",
        // Recipe stages.
        "before         on the host, timeout 60s",
        "| systemctl stop app",
        "apt  curl",
        "apt  jq=1.6-2",
        "apt  acme-tools=2.0  (shipped: .molt/packages/apt/acme-tools_2.0_all.deb)",
        "pip3 requests==2.31.0",
        "npm  left-pad@1.3.0",
        "npm prefix     opt/app",
        "| systemctl start app",
        "health check   on the host, timeout 10s; 4 attempt(s), 2s apart",
        "revert to the previous snapshot",
        "| systemctl restart app",
        "then reboot the device",
        // Entries, with types, modes, owners, sizes and link targets.
        "opt/app/current -> lib/util.js",
        "opt/app/lib/util.js",
        "opt/app/old.js",
        ".molt/packages/apt/acme-tools_2.0_all.deb",
        &f.key_id(),
    ] {
        assert!(text.contains(needle), "inspect lacks {needle:?}:\n{text}");
    }
    let line = |path: &str| {
        text.lines()
            .find(|l| l.ends_with(path) || l.contains(&format!("{path} ->")))
            .unwrap_or_else(|| panic!("no entry {path}:\n{text}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(line("etc/app.env")[..4], ["file", "0640", "0:1000", "10"]);
    assert_eq!(line("opt/app/run.sh")[..2], ["file", "0755"]);
    assert_eq!(line("opt/app/lib")[0], "dir");
    assert_eq!(line("opt/app/current")[0], "symlink");
    assert_eq!(line("opt/app/old.js")[0], "delete");
    // Entries are listed in the engine's order: a directory's children right after it.
    let paths: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("entries"))
        .skip(2)
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    assert_eq!(
        paths,
        [
            ".molt",
            ".molt/packages",
            ".molt/packages/apt",
            ".molt/packages/apt/acme-tools_2.0_all.deb",
            "etc/app.env",
            "opt/app",
            "opt/app/current",
            "opt/app/lib",
            "opt/app/lib/util.js",
            "opt/app/main.js",
            "opt/app/old.js",
            "opt/app/run.sh",
        ]
    );

    // With the key, inspect says which key verified.
    let o = f.check("inspect", &f.bundle(), &["key.pub"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("verified with key {}", f.key_id())),
        "{}",
        stdout(&o)
    );

    // JSON carries the same facts.
    let o = molt(&["bundle", "inspect", s(&f.bundle()), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["signature_checked"], false);
    assert_eq!(v["manifest"]["version"], "1.4.2");
    assert_eq!(v["manifest"]["kind"], "patch");
    assert_eq!(v["manifest"]["recipe"]["health_check"]["attempts"], 4);
    assert_eq!(
        v["manifest"]["recipe"]["packages"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(v["entries"].as_array().unwrap().len(), 12);
    assert_eq!(v["signatures"][0]["key_id"], f.key_id());
    assert!(v["error"].is_null());
}

/// Sets the mtime of every file, directory and symlink's target under `dir` to `t`.
fn touch_tree(dir: &Path, t: std::time::SystemTime) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            touch_tree(&p, t);
        }
        if !meta.file_type().is_symlink() {
            let f = fs::File::open(&p).unwrap();
            f.set_modified(t).unwrap();
        }
    }
}

/// Spins `n` threads until the returned flag is set: the CPU load under which builds
/// once came out 7 bytes longer.
fn busy(
    n: usize,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Vec<std::thread::JoinHandle<()>>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let threads = (0..n)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    (stop, threads)
}

#[test]
fn one_recipe_builds_one_bundle_whatever_the_threads_the_load_and_the_checkout_time() {
    let f = Fixture::new();
    // Larger than one chunk, and not all alike, so several frames compress on
    // several threads and finish out of order.
    let mut big = Vec::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..(3u64 << 20) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.push(if i % 3 == 0 {
            (x >> 56) as u8
        } else {
            b'a' + (i % 23) as u8
        });
    }
    fs::write(f.path("app/big.bin"), &big).unwrap();
    let env = [("SOURCE_DATE_EPOCH", EPOCH)];

    let mut builds = Vec::new();
    for threads in ["1", "2", "8", "0"] {
        let o = f.build_with(RECIPE, &["--threads", threads], &env);
        assert!(
            o.status.success(),
            "build --threads {threads}: {}",
            stderr(&o)
        );
        builds.push((
            format!("--threads {threads}"),
            fs::read(f.bundle()).unwrap(),
        ));
    }
    // Under load, with the sources stamped later (a fresh checkout): their mtimes are
    // clamped to SOURCE_DATE_EPOCH, so they do not show.
    touch_tree(
        f.dir.path(),
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    );
    let (stop, spinners) = busy(2);
    for threads in ["8", "2"] {
        let o = f.build_with(RECIPE, &["--threads", threads], &env);
        assert!(o.status.success(), "loaded build: {}", stderr(&o));
        builds.push((
            format!("--threads {threads} under load, sources touched"),
            fs::read(f.bundle()).unwrap(),
        ));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in spinners {
        t.join().unwrap();
    }
    let (_, first) = &builds[0];
    assert!(first.len() > 1 << 20, "the bundle holds the big file");
    for (how, bytes) in &builds[1..] {
        assert!(bytes == first, "{how}: not the bytes of --threads 1");
    }

    // The manifest says the given time.
    let o = molt(&["bundle", "inspect", s(&f.bundle())]);
    assert!(
        stdout(&o).contains("created        2023-11-14"),
        "{}",
        stdout(&o)
    );

    // Another time is another bundle: the time is an input, not ignored.
    let o = f.build_with(RECIPE, &[], &[("SOURCE_DATE_EPOCH", "1700000001")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(fs::read(f.bundle()).unwrap() != *first);
}

#[test]
fn a_malformed_source_date_epoch_is_refused() {
    let f = Fixture::new();
    for bad in ["", "yesterday", "-1", "+5", "1.5", "99999999999999999999"] {
        let o = f.build_with(RECIPE, &[], &[("SOURCE_DATE_EPOCH", bad)]);
        assert!(!o.status.success(), "{bad:?} accepted");
        let err = stderr(&o);
        assert!(
            err.contains("SOURCE_DATE_EPOCH") && err.contains("Unix seconds"),
            "{bad:?}: {err}"
        );
    }
    assert!(!f.bundle().exists());
}

#[test]
fn keygen_prints_the_key_id_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("release");
    let o = molt(&["keygen", "-o", s(&prefix)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_owned();
    assert_eq!(id.len(), 16, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    let secret = dir.path().join("release.secret");
    let mode = fs::metadata(&secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = fs::read(&secret).unwrap();
    assert_eq!(before.len(), 65, "64 hex digits and a newline");

    let o = molt(&["keygen", "-o", s(&prefix)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(
        fs::read(&secret).unwrap(),
        before,
        "the secret key was changed"
    );
}

#[test]
fn verify_with_the_wrong_key_fails_with_unknown_key() {
    let f = Fixture::built();
    let other = f.path("other");
    assert!(molt(&["keygen", "-o", s(&other)]).status.success());
    let o = f.check("verify", &f.bundle(), &["other.pub"]);
    assert_refused("verify with the other key", &o, "unknown key");
    assert!(
        stderr(&o).contains(&f.key_id()),
        "names the key that signed: {}",
        stderr(&o)
    );

    // Trusting both keys (rotation) is fine.
    let o = f.check("verify", &f.bundle(), &["other.pub", "key.pub"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_corrupted_byte_fails_verification() {
    let f = Fixture::built();
    let good = fs::read(f.bundle()).unwrap();

    // In the payload: the chunk chain catches it.
    let mut payload = good.clone();
    let at = payload.len() - 10;
    payload[at] ^= 0x01;
    // In the manifest (just after the header and one signature): the signature catches it.
    let mut manifest = good.clone();
    manifest[16 + 4 + 72 + 3] ^= 0x01;
    for (name, bytes, needle) in [
        (
            "payload.bundle",
            &payload[..],
            "does not match its signed digest",
        ),
        ("manifest.bundle", &manifest[..], "does not verify"),
        ("short.bundle", &good[..good.len() - 1], "truncated"),
    ] {
        let p = f.path(name);
        fs::write(&p, bytes).unwrap();
        let o = f.check("verify", &p, &["key.pub"]);
        assert_refused(name, &o, needle);
    }
    // Inspect without a key still checks the chain.
    let o = f.check("inspect", &f.path("payload.bundle"), &[]);
    assert_refused(
        "inspect payload.bundle",
        &o,
        "does not match its signed digest",
    );

    // Not a bundle at all, long or short.
    for other in ["recipe.toml", "app.env"] {
        let o = f.check("verify", &f.path(other), &["key.pub"]);
        assert_refused(other, &o, "not a molt bundle");
    }
}

#[test]
fn a_full_bundle_lists_every_parent_directory() {
    let f = Fixture::new();
    let recipe = r#"
version = "2.0.0"
compatible = "acme-gw"
kind = "full"

[[files]]
source = "app.env"
destination = "/etc/app/conf.d/app.env"

[[files]]
source = "app"
destination = "/opt/app"
"#;
    let o = f.build(recipe);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = molt(&["bundle", "inspect", s(&f.bundle()), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let entries: Vec<(String, String)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().into(),
                e["path"].as_str().unwrap().into(),
            )
        })
        .collect();
    for dir in [
        "etc",
        "etc/app",
        "etc/app/conf.d",
        "opt",
        "opt/app",
        "opt/app/lib",
    ] {
        assert!(
            entries.contains(&("dir".into(), dir.into())),
            "{dir} missing: {entries:?}"
        );
    }
    assert_eq!(v["manifest"]["kind"], "full");
    let o = f.verify();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_failed_rebuild_keeps_the_previous_bundle() {
    let f = Fixture::built();
    let before = fs::read(f.bundle()).unwrap();
    let o = f.build(&RECIPE.replace(r#"version = "1.4.2""#, r#"version = "1.4 .2""#));
    assert!(!o.status.success());
    assert_eq!(fs::read(f.bundle()).unwrap(), before);
    let names: Vec<_> = fs::read_dir(f.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["app.bundle"], "temporary files left behind");
}

/// Recipes the build refuses, each for one reason, and what the message must say.
#[test]
fn build_refuses_a_bad_recipe() {
    let f = Fixture::new();
    let swap = |from: &str, to: &str| RECIPE.replace(from, to);
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "missing source",
            swap(r#"source = "app.env""#, r#"source = "nope.env""#),
            &["[[files]] #2", "nope.env"],
        ),
        (
            "missing script",
            swap(r#"script = "after.sh""#, r#"script = "gone.sh""#),
            &["[after]", "gone.sh"],
        ),
        (
            "missing package file",
            swap("acme-tools_2.0_all.deb", "missing_1.0_all.deb"),
            &["packages.apt #3", "missing_1.0_all.deb"],
        ),
        (
            "unknown top-level field",
            format!("colour = \"blue\"\n{RECIPE}"),
            &["unknown field `colour`"],
        ),
        (
            "unknown health_check field",
            swap("attempts = 4", "atempts = 4"),
            &["unknown field `atempts`"],
        ),
        (
            "unknown package field",
            swap(
                r#"version = "2.0", file"#,
                r#"version = "2.0", sha = "x", file"#,
            ),
            &["unknown field `sha`"],
        ),
        (
            "bad version",
            swap(r#"version = "1.4.2""#, r#"version = "1.4 beta""#),
            &["version", "must be"],
        ),
        (
            "bad base_version",
            swap(r#"base_version = "1.4.1""#, r#"base_version = "../x""#),
            &["base_version"],
        ),
        (
            "no version",
            swap(r#"version = "1.4.2""#, ""),
            &["missing field `version`"],
        ),
        (
            "duplicate destination",
            format!(
                "{RECIPE}\n[[files]]\nsource = \"app.env\"\ndestination = \"/opt/app/main.js\"\n"
            ),
            &[
                "same destination `opt/app/main.js`",
                "[[files]] #1 (source `app`)",
                "[[files]] #3 (source `app.env`)",
            ],
        ),
        (
            "deletes what it writes",
            swap(
                r#"delete = ["/opt/app/old.js"]"#,
                r#"delete = ["/opt/app/main.js"]"#,
            ),
            &["same destination `opt/app/main.js`", "delete #1"],
        ),
        (
            "deletes a parent of what it writes",
            swap(r#"delete = ["/opt/app/old.js"]"#, r#"delete = ["/opt"]"#),
            &["lies beneath `opt`", "delete #1"],
        ),
        (
            "deletion in a full bundle",
            swap(r#"base_version = "1.4.1""#, r#"kind = "full""#),
            &["`delete`", "patch"],
        ),
        (
            "apt package name the engine refuses",
            swap(r#""curl""#, r#""../curl""#),
            &["packages.apt #1", "name `../curl`", "plain word"],
        ),
        (
            "pip3 package without an exact version",
            swap(r#""requests==2.31.0""#, r#""requests>=2""#),
            &["packages.pip3 #1", "exact version"],
        ),
        (
            "zero timeout",
            swap("timeout = 60", "timeout = 0"),
            &["[before]", "timeout"],
        ),
        (
            "empty command",
            swap(r#"run = "systemctl stop app""#, r#"run = "  ""#),
            &["[before]", "empty script"],
        ),
        (
            "zero health check attempts",
            swap("attempts = 4", "attempts = 0"),
            &["health_check.attempts"],
        ),
        (
            "mode not octal",
            swap(r#"mode = "0640""#, r#"mode = "0987""#),
            &["[[files]] #2", "mode `0987`"],
        ),
        (
            "mode as a TOML number",
            swap(r#"mode = "0640""#, "mode = 0o640"),
            &["mode"],
        ),
        (
            "destination climbing out",
            swap(
                r#"destination = "etc/app.env""#,
                r#"destination = "etc/../../app.env""#,
            ),
            &["[[files]] #2", "destination", "`..`"],
        ),
    ];
    for (case, recipe, needles) in &cases {
        f.build_fails(case, recipe, needles);
    }
}

#[test]
fn build_refuses_an_escaping_symlink_and_special_files() {
    let f = Fixture::new();
    // opt/app/lib/evil: three levels up is the snapshot root, four leave it.
    symlink("../../../../etc/shadow", f.path("app/lib/evil")).unwrap();
    f.build_fails(
        "escaping symlink",
        RECIPE,
        &[
            "app/lib/evil",
            "`../../../../etc/shadow` climbs above the snapshot root",
            "(as `opt/app/lib/evil`)",
            "it would point at `/etc/shadow`",
        ],
    );
    fs::remove_file(f.path("app/lib/evil")).unwrap();

    let sock = std::os::unix::net::UnixListener::bind(f.path("app/sock")).unwrap();
    f.build_fails(
        "socket",
        RECIPE,
        &[
            "app/sock",
            "a socket",
            "only files, directories and symlinks",
        ],
    );
    drop(sock);
}

#[test]
fn inspect_with_the_wrong_key_explains_and_fails() {
    let f = Fixture::built();
    assert!(molt(&["keygen", "-o", s(&f.path("other"))])
        .status
        .success());
    let o = f.check("inspect", &f.bundle(), &["other.pub"]);
    assert_refused("inspect with the other key", &o, "unknown key");
    assert!(stderr(&o).contains("without --key"), "{}", stderr(&o));
}

#[test]
fn the_documented_example_recipe_builds() {
    let f = Fixture::new();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/recipe.toml");
    let o = f.build_file(&example, &[], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = f.verify();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_closed_pipe_ends_molt_quietly() {
    // `molt bundle inspect … | head`: the reader goes away after one line.
    let f = Fixture::built();
    let mut child = Command::new(env!("CARGO_BIN_EXE_molt"))
        .args(["bundle", "inspect", s(&f.bundle())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end at once: every write then meets a closed pipe.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        o.status.success() || o.status.signal() == Some(SIGPIPE),
        "{:?}: {err}",
        o.status
    );
}

/// SIGPIPE's number on Linux.
const SIGPIPE: i32 = 13;

#[test]
fn hostile_paths_cannot_forge_verify_or_inspect_output() {
    // A file whose name ends one line and forges the next, in colour.
    let f = Fixture::new();
    let evil = "x\nOK forged.bundle: version 9.9.9\u{1b}[32m\u{9b}1m\u{202e}";
    fs::write(f.path("app").join(evil), "boo").unwrap();
    let o = f.build(RECIPE);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = f.verify();
    let inspect = molt(&["bundle", "inspect", s(&f.bundle())]);
    for (what, out) in [
        ("verify", stdout(&o) + &stderr(&o)),
        ("inspect", stdout(&inspect) + &stderr(&inspect)),
    ] {
        molt_test_support::escape::assert_inert(what, &out);
        assert!(!out.contains("\nOK forged"), "{what} forged a line:\n{out}");
    }
    assert!(
        stdout(&inspect)
            .contains("opt/app/x\\nOK forged.bundle: version 9.9.9\\e[32m\\u{9b}1m\\u{202e}"),
        "{}",
        stdout(&inspect)
    );
}
