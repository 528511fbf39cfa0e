//! The recipe's packages stage as bash scripts: one per package manager (apt, pip, pip3, npm), run in a chroot of the new slot.
//!
//! [`plan`] is a pure function of the signed recipe: it decides nothing at run
//! time except what only the chroot can tell (whether `pip` exists, which options
//! this pip knows). Each [`Step`] is one transaction per manager, so the manager
//! resolves the whole group's dependencies together (a shipped `.deb` may depend
//! on a registry package named beside it), in the order apt, pip, pip3, npm
//! (system libraries first, language packages after).
//!
//! Offline by construction: package files shipped in the bundle (`.molt/packages/
//! <manager>/<file>`, bound read-only into the chroot at [`SHIPPED_DIR_IN_CHROOT`])
//! are installed by path, and a group with **only** shipped files never contacts a
//! registry (no `apt-get update`, `pip --no-index`, `npm --offline`), so devices
//! without network can install them as long as their dependencies are met. A group with registry packages needs the network anyway.
//!
//! Names and versions were validated by the engine (plain words), but every
//! argument is still quoted ([`sh_quote`]): the scripts never depend on that.
//! Each script starts with `set -euo pipefail` and prints every command, shell
//! quoted, as a `+ …` line before running it, so the log shows what ran.

use molt_engine::bundle::format::{Package, PackageManager, Recipe};

/// Where the bundle's `.molt/packages/` directory is bound inside the chroot.
pub const SHIPPED_DIR_IN_CHROOT: &str = "/run/molt/packages";

/// npm's prefix when the recipe sets none. The recipe format says "the app
/// directory" but defines none, so this is the conventional one.
pub const DEFAULT_NPM_PREFIX: &str = "/opt/app";

/// npm's cache inside the chroot (npm's default is ~/.npm): the agent removes it after
/// the stage, so no cache stays in the snapshot.
pub const NPM_CACHE_IN_CHROOT: &str = "/tmp/molt-npm-cache";

/// The managers in the order their steps run.
const ORDER: [PackageManager; 4] = [
    PackageManager::Apt,
    PackageManager::Pip,
    PackageManager::Pip3,
    PackageManager::Npm,
];

/// Every script's first lines: strict mode, and `run`, which prints the command
/// (`printf %q` quotes it as bash would read it) before running it.
const PROLOGUE: &str = "set -euo pipefail\n\
run() { printf '+'; printf ' %q' \"$@\"; printf '\\n'; \"$@\"; }\n";

/// One package manager's share of the packages stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The manager this step runs.
    pub manager: PackageManager,
    /// A short name for logs and the command's `$0` (`apt packages`).
    pub label: String,
    /// The bash script, to run inside the chroot of the new slot.
    pub script: String,
}

/// The packages stage of `recipe`: one [`Step`] per manager that has packages, in the
/// order apt, pip, pip3, npm. `shipped_dir_in_chroot` is where the bundle's
/// `.molt/packages/` directory appears inside the chroot (normally
/// [`SHIPPED_DIR_IN_CHROOT`]); a shipped file `.molt/packages/apt/x.deb` is then
/// `<shipped_dir_in_chroot>/apt/x.deb` (only its file name is used).
pub fn plan(recipe: &Recipe<'_>, shipped_dir_in_chroot: &str) -> Vec<Step> {
    let shipped_dir = shipped_dir_in_chroot.trim_end_matches('/');
    ORDER
        .iter()
        .filter_map(|&manager| {
            let group: Vec<&Package<'_>> = recipe
                .packages
                .iter()
                .filter(|p| p.manager == manager)
                .collect();
            if group.is_empty() {
                return None;
            }
            let dir = format!("{shipped_dir}/{}", manager.name());
            let script = match manager {
                PackageManager::Apt => apt_script(&group, &dir),
                PackageManager::Pip | PackageManager::Pip3 => pip_script(manager, &group, &dir),
                PackageManager::Npm => npm_script(&group, &dir, recipe.npm_prefix),
            };
            Some(Step {
                manager,
                label: format!("{} packages", manager.name()),
                script,
            })
        })
        .collect()
}

/// `s` as one bash word: in single quotes, each `'` written as `'\''`. Always quoted,
/// even when it would not need to be.
pub fn sh_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The arguments naming the group's packages (each quoted): a shipped file by its
/// path in the chroot, a registry package as `name`, or `name<sep>version`.
fn specs(group: &[&Package<'_>], dir: &str, sep: &str) -> Vec<String> {
    group
        .iter()
        .map(|p| match (p.file, p.version) {
            (Some(file), _) => sh_quote(&format!("{dir}/{}", file_name(file))),
            (None, Some(v)) => sh_quote(&format!("{}{sep}{v}", p.name)),
            (None, None) => sh_quote(p.name),
        })
        .collect()
}

/// The last component of a shipped file's bundle path (`.molt/packages/apt/x.deb` →
/// `x.deb`): the file's place in the bundle is the builder's business, its name is
/// what lands in the bound directory.
fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether every package of the group is a shipped file (then no registry is used).
fn all_shipped(group: &[&Package<'_>]) -> bool {
    group.iter().all(|p| p.file.is_some())
}

/// apt: one `apt-get install` of names and shipped `.deb` paths together; `apt-get
/// update` first only when a package comes from the registry.
fn apt_script(group: &[&Package<'_>], dir: &str) -> String {
    let mut s = String::from(PROLOGUE);
    let offline = all_shipped(group);
    if !offline {
        s.push_str("run apt-get update\n");
    }
    // confdef/confold: a changed conffile keeps the device's version without asking
    // (there is nobody to ask). --allow-downgrades: a pinned version is what the
    // recipe wants even if the slot has a newer one; apt refuses that under -y
    // otherwise. (Not --no-download: apt 2.6 then refuses local .debs, "Internal
    // Error, Pathname to install is not absolute".)
    s.push_str(
        "run apt-get install -y --no-install-recommends --allow-downgrades \
         -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold",
    );
    for a in specs(group, dir, "=") {
        s.push(' ');
        s.push_str(&a);
    }
    s.push('\n');
    // The downloaded .debs would otherwise stay in the snapshot for nothing.
    s.push_str("run apt-get clean\n");
    s
}

/// pip / pip3: one `pip install` of specifiers and shipped wheel paths, with the
/// options this pip supports.
fn pip_script(manager: PackageManager, group: &[&Package<'_>], dir: &str) -> String {
    let mut s = String::from(PROLOGUE);
    if manager == PackageManager::Pip {
        // A slot may have `pip3` and the module but no `pip` command.
        s.push_str(
            "if command -v pip >/dev/null 2>&1; then pip=(pip); else pip=(python3 -m pip); fi\n",
        );
    } else {
        s.push_str("pip=(python3 -m pip)\n");
    }
    // The help text is read into a variable first: `pip help | grep -q` would fail
    // under pipefail whenever grep stops reading early and pip gets SIGPIPE.
    // --break-system-packages: PEP 668 (bookworm) refuses system installs without
    // it, and older pips do not know it. --root-user-action: pip 22.1 and later.
    s.push_str(
        "pip_help=$(\"${pip[@]}\" help install 2>/dev/null || true)\n\
         pip_opts=(--disable-pip-version-check --no-input)\n\
         case $pip_help in *--break-system-packages*) pip_opts+=(--break-system-packages) ;; esac\n\
         case $pip_help in *--root-user-action*) pip_opts+=(--root-user-action=ignore) ;; esac\n",
    );
    // No cache: it would stay in the snapshot (under /root) for nothing.
    s.push_str("export PIP_NO_CACHE_DIR=1\n");
    s.push_str("run \"${pip[@]}\" install \"${pip_opts[@]}\"");
    if all_shipped(group) {
        s.push_str(" --no-index");
    }
    if group.iter().any(|p| p.file.is_some()) {
        // A shipped wheel's dependencies may be shipped beside it.
        s.push_str(" --find-links ");
        s.push_str(&sh_quote(dir));
    }
    for a in specs(group, dir, "==") {
        s.push(' ');
        s.push_str(&a);
    }
    s.push('\n');
    s
}

/// npm: one `npm install` into the prefix (the recipe's, inside the slot, or
/// [`DEFAULT_NPM_PREFIX`]), production dependencies only.
fn npm_script(group: &[&Package<'_>], dir: &str, prefix: Option<&str>) -> String {
    // The manifest keeps the prefix relative to the snapshot (leading `/` stripped).
    let prefix = prefix.map_or_else(
        || DEFAULT_NPM_PREFIX.to_owned(),
        |p| format!("/{}", p.trim_start_matches('/')),
    );
    let prefix = sh_quote(&prefix);
    let mut s = String::from(PROLOGUE);
    s.push_str(&format!("run mkdir -p {prefix}\n"));
    s.push_str(&format!(
        "run npm install --prefix {prefix} --no-audit --no-fund --no-update-notifier --omit=dev"
    ));
    if all_shipped(group) {
        s.push_str(" --offline");
    }
    for a in specs(group, dir, "@") {
        s.push(' ');
        s.push_str(&a);
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_engine::bundle::format::Rollback;
    use std::path::Path;
    use std::process::Command;

    fn pkg<'a>(
        manager: PackageManager,
        name: &'a str,
        version: Option<&'a str>,
        file: Option<&'a str>,
    ) -> Package<'a> {
        Package {
            manager,
            name,
            version,
            file,
        }
    }

    fn recipe<'a>(packages: &[Package<'a>], npm_prefix: Option<&'a str>) -> Recipe<'a> {
        Recipe {
            before: None,
            packages: packages.iter().copied().collect(),
            npm_prefix,
            after: None,
            health_check: None,
            rollback: Rollback {
                revert: true,
                command: None,
                reboot: false,
            },
        }
    }

    /// The line of `script` that runs the manager's install command (not pip's
    /// `help install` probe).
    fn install_line(script: &str) -> &str {
        script
            .lines()
            .find(|l| l.starts_with("run ") && l.contains(" install "))
            .unwrap_or_else(|| panic!("no install line in:\n{script}"))
    }

    use PackageManager::{Apt, Npm, Pip, Pip3};

    #[test]
    fn quoting() {
        for (word, quoted) in [
            ("jq", "'jq'"),
            ("", "''"),
            ("a'b", "'a'\\''b'"),
            ("$(x) `y` \"z\"", "'$(x) `y` \"z\"'"),
        ] {
            assert_eq!(sh_quote(word), quoted, "{word:?}");
        }
    }

    #[test]
    fn no_packages_no_steps() {
        assert!(plan(&recipe(&[], None), SHIPPED_DIR_IN_CHROOT).is_empty());
    }

    #[test]
    fn steps_run_in_manager_order_whatever_the_recipe_order() {
        let r = recipe(
            &[
                pkg(Npm, "express", Some("4.19.2"), None),
                pkg(Pip3, "requests", None, None),
                pkg(Apt, "curl", None, None),
                pkg(Pip, "six", None, None),
            ],
            None,
        );
        let steps = plan(&r, SHIPPED_DIR_IN_CHROOT);
        let managers: Vec<_> = steps.iter().map(|s| s.manager).collect();
        assert_eq!(managers, vec![Apt, Pip, Pip3, Npm]);
        assert_eq!(steps[0].label, "apt packages");
        for s in &steps {
            assert!(s.script.starts_with("set -euo pipefail\n"), "{}", s.script);
        }
    }

    #[test]
    fn apt_registry_packages_update_first() {
        let r = recipe(
            &[
                pkg(Apt, "curl", None, None),
                pkg(Apt, "jq", Some("1.6-2"), None),
                pkg(
                    Apt,
                    "acme-tools",
                    Some("2.0"),
                    Some(".molt/packages/apt/acme-tools_2.0_all.deb"),
                ),
            ],
            None,
        );
        let steps = plan(&r, SHIPPED_DIR_IN_CHROOT);
        assert_eq!(steps.len(), 1);
        let s = &steps[0].script;
        let update = s.find("run apt-get update\n").expect(s);
        assert!(update < s.find(" install ").unwrap());
        assert_eq!(
            install_line(s),
            "run apt-get install -y --no-install-recommends --allow-downgrades \
             -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
             'curl' 'jq=1.6-2' '/run/molt/packages/apt/acme-tools_2.0_all.deb'"
        );
    }

    #[test]
    fn apt_shipped_only_is_offline() {
        let r = recipe(
            &[pkg(Apt, "x", None, Some(".molt/packages/apt/x.deb"))],
            None,
        );
        let s = &plan(&r, "/mnt/pk/")[0].script;
        assert!(!s.contains("apt-get update"), "{s}");
        assert!(
            install_line(s).ends_with("=--force-confold '/mnt/pk/apt/x.deb'"),
            "{s}"
        );
    }

    #[test]
    fn pip_and_pip3() {
        let r = recipe(
            &[
                pkg(Pip, "requests", Some("2.31.0"), None),
                pkg(
                    Pip,
                    "acme",
                    None,
                    Some(".molt/packages/pip/acme-1.0-py3-none-any.whl"),
                ),
                pkg(Pip3, "flask", None, None),
            ],
            None,
        );
        let steps = plan(&r, SHIPPED_DIR_IN_CHROOT);
        let pip = &steps[0].script;
        assert!(pip.contains("command -v pip"), "{pip}");
        assert_eq!(
            install_line(pip),
            "run \"${pip[@]}\" install \"${pip_opts[@]}\" --find-links '/run/molt/packages/pip' \
             'requests==2.31.0' '/run/molt/packages/pip/acme-1.0-py3-none-any.whl'"
        );
        let pip3 = &steps[1].script;
        assert!(pip3.contains("pip=(python3 -m pip)\n"), "{pip3}");
        assert!(!pip3.contains("command -v pip"), "{pip3}");
        assert!(!pip3.contains("--find-links"), "{pip3}");
        assert!(install_line(pip3).ends_with(" 'flask'"), "{pip3}");

        let offline = recipe(
            &[pkg(
                Pip3,
                "w",
                None,
                Some(".molt/packages/pip3/w-1-py3-none-any.whl"),
            )],
            None,
        );
        let s = &plan(&offline, SHIPPED_DIR_IN_CHROOT)[0].script;
        assert!(
            install_line(s).ends_with(
                " --no-index --find-links '/run/molt/packages/pip3' \
                 '/run/molt/packages/pip3/w-1-py3-none-any.whl'"
            ),
            "{s}"
        );
    }

    #[test]
    fn npm_prefix_default_and_recipe() {
        let r = recipe(&[pkg(Npm, "express", Some("4.19.2"), None)], None);
        let s = &plan(&r, SHIPPED_DIR_IN_CHROOT)[0].script;
        assert!(s.contains("run mkdir -p '/opt/app'\n"), "{s}");
        assert_eq!(
            install_line(s),
            "run npm install --prefix '/opt/app' --no-audit --no-fund --no-update-notifier \
             --omit=dev 'express@4.19.2'"
        );

        let r = recipe(
            &[pkg(Npm, "t", None, Some(".molt/packages/npm/t-1.0.0.tgz"))],
            Some("srv/my app"),
        );
        let s = &plan(&r, SHIPPED_DIR_IN_CHROOT)[0].script;
        assert_eq!(
            install_line(s),
            "run npm install --prefix '/srv/my app' --no-audit --no-fund --no-update-notifier \
             --omit=dev --offline '/run/molt/packages/npm/t-1.0.0.tgz'"
        );
    }

    /// Runs `script` with only fake tools on PATH; each logs its arguments (one line per
    /// call, `|`-separated) to `$LOG`. Returns the log and the script's output.
    fn run_with_fakes(script: &str, tools: &[(&str, &str)]) -> (String, String, bool) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        for (name, extra) in tools {
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!(
                    "#!/bin/bash\n{extra}\n(IFS='|'; printf '%s\\n' \"{name}|$*\") >> \"$LOG\"\n"
                ),
            )
            .unwrap();
            let mut perm = std::fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
            std::fs::set_permissions(&path, perm).unwrap();
        }
        let out = Command::new("/bin/bash")
            .args(["--noprofile", "--norc", "-c", script, "test"])
            .env_clear()
            .env("PATH", dir.path())
            .env("LOG", &log)
            .output()
            .unwrap();
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        let printed = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (logged, printed, out.status.success())
    }

    /// A fake pip's `help install` output, listing the options a bookworm pip 23 has.
    const PIP23_HELP: &str = r#"if [ "$1 $2" = "help install" ] || [ "$3 $4" = "help install" ]; then
  echo '  --break-system-packages  Allow pip to modify an EXTERNALLY-MANAGED environment.'
  echo '  --root-user-action <root_user_action>'
  exit 0
fi"#;

    #[test]
    fn scripts_run_what_they_print() {
        if !Path::new("/bin/bash").exists() {
            eprintln!("skipped: needs /bin/bash");
            return;
        }
        let r = recipe(
            &[
                pkg(Apt, "jq", Some("1.6-2"), None),
                pkg(Apt, "x", None, Some(".molt/packages/apt/x.deb")),
                pkg(Pip, "requests", Some("2.31.0"), None),
                pkg(Npm, "express", Some("4.19.2"), None),
            ],
            Some("opt/web"),
        );
        let steps = plan(&r, SHIPPED_DIR_IN_CHROOT);

        let (log, printed, ok) = run_with_fakes(&steps[0].script, &[("apt-get", "")]);
        assert!(ok, "{printed}");
        assert_eq!(
            log,
            "apt-get|update\n\
             apt-get|install|-y|--no-install-recommends|--allow-downgrades|-o|Dpkg::Options::=--force-confdef|\
             -o|Dpkg::Options::=--force-confold|jq=1.6-2|/run/molt/packages/apt/x.deb\n\
             apt-get|clean\n"
        );
        assert!(
            printed.starts_with("+ apt-get update\n+ apt-get install -y"),
            "{printed}"
        );

        // `pip` present and a pip 23: both version-dependent options are used.
        let (log, printed, ok) = run_with_fakes(&steps[1].script, &[("pip", PIP23_HELP)]);
        assert!(ok, "{printed}");
        assert_eq!(
            log,
            "pip|install|--disable-pip-version-check|--no-input|--break-system-packages|\
             --root-user-action=ignore|requests==2.31.0\n"
        );
        assert!(printed.starts_with("+ pip install "), "{printed}");

        // No `pip` command and an old pip: `python3 -m pip`, without the new options.
        let (log, printed, ok) = run_with_fakes(&steps[1].script, &[("python3", "")]);
        assert!(ok, "{printed}");
        assert_eq!(
            log.lines().last().unwrap(),
            "python3|-m|pip|install|--disable-pip-version-check|--no-input|requests==2.31.0"
        );

        let (log, printed, ok) = run_with_fakes(&steps[2].script, &[("mkdir", ""), ("npm", "")]);
        assert!(ok, "{printed}");
        assert_eq!(
            log,
            "mkdir|-p|/opt/web\n\
             npm|install|--prefix|/opt/web|--no-audit|--no-fund|--no-update-notifier|--omit=dev|express@4.19.2\n"
        );

        // A failing manager fails the step (set -e), and nothing runs after it.
        let fail = "printf '%s\\n' \"apt-get|$*\" >> \"$LOG\"; exit 100";
        let (log, _, ok) = run_with_fakes(&steps[0].script, &[("apt-get", fail)]);
        assert!(!ok);
        assert_eq!(log, "apt-get|update\n", "nothing after the failing update");
    }
}
