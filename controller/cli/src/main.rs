//! The operator CLI `molt`: arguments, terminal output and progress bars; bundles are built and read by the `molt_bundle` library, and the controller is reached through `client`.

mod client;
mod plan;

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use client::login::{self, Given, SavedLogin, Target};
use client::push::{self, PushKind};
use client::{lookup, render, Client, RequestError};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use molt_api::{
    AbortResult, Deployment, DeploymentDetails, Device, DeviceDetails, DeviceRemoved, Group,
    NewDeployment, Update,
};
use molt_bundle::inspect::{self, human};
use molt_bundle::{build, keys, recipe};
use molt_engine::bundle::TrustedKey;
use molt_engine::text::Escaped;
use molt_engine::Error;
use plan::PlanArgs;
use serde_json::Value;
use termion::input::TermRead;

// Everything `molt` prints goes through these: text from bundles, devices and
// scripts reaches the terminal with every control character but the line break
// escaped (molt_engine::text). Fields that must stay on one line (table cells,
// names, paths) are escaped on their own as well, so a `\n` cannot forge a row.
macro_rules! out {
    ($($t:tt)*) => { print!("{}", Escaped::lines(&format!($($t)*))) };
}
macro_rules! outln {
    () => { println!() };
    ($($t:tt)*) => { println!("{}", Escaped::lines(&format!($($t)*))) };
}
macro_rules! err {
    ($($t:tt)*) => { eprint!("{}", Escaped::lines(&format!($($t)*))) };
}
macro_rules! errln {
    () => { eprintln!() };
    ($($t:tt)*) => { eprintln!("{}", Escaped::lines(&format!($($t)*))) };
}

/// molt: over-the-air updates for Linux edge devices (operator CLI).
///
/// The commands that talk to a controller find it, strongest first, in the --controller,
/// --token and --ca flags, the MOLT_CONTROLLER, MOLT_TOKEN and MOLT_CA variables, or the
/// login `molt login` saved in $XDG_CONFIG_HOME/molt/cli.toml (~/.config/molt/cli.toml).
#[derive(Parser)]
#[command(name = "molt", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: Top,
}

/// Where the controller is; global, so it can follow any command.
#[derive(Args)]
struct Remote {
    /// The controller's URL, such as http://controller:8080 (else MOLT_CONTROLLER, else the saved login).
    #[arg(long, global = true, value_name = "URL")]
    controller: Option<String>,
    /// The operator token (else MOLT_TOKEN, else the saved login). Other users can see
    /// command lines: prefer the variable, or `molt login`'s prompt.
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    /// A PEM file of CA certificates to trust for an https:// controller, besides the
    /// public roots: its private CA, or its self-signed certificate (else MOLT_CA, else
    /// the saved login).
    #[arg(long, global = true, value_name = "PEM")]
    ca: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Top {
    /// Generate an ed25519 signing key pair: PREFIX.secret and PREFIX.pub.
    Keygen {
        /// Path prefix of the key files (`keys/release` writes keys/release.secret and keys/release.pub).
        #[arg(short, long, value_name = "PREFIX")]
        output: PathBuf,
    },
    /// Build, inspect and verify update bundles.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Print the BLAKE3 digest of every regular file in PATHs, as bundles record them.
    ///
    /// Lines read `HEX  PATH`, exactly as `b3sum` prints them (so `b3sum --check`
    /// accepts them); directories are walked in bundle order without following
    /// symlinks. Single-threaded.
    Digest {
        /// Files and directories to hash.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Check a controller's URL and operator token, then save both (and --ca) for the other commands.
    ///
    /// The token comes from --token, MOLT_TOKEN, or standard input (a prompt on a terminal;
    /// `molt login --controller URL < operator-token` otherwise). Saved with mode 0600.
    Login,
    /// List groups with their device counts and enrollment tokens; `groups create NAME` makes one.
    Groups {
        #[command(subcommand)]
        action: Option<GroupsCmd>,
        /// Print the controller's JSON.
        #[arg(long)]
        json: bool,
    },
    /// List devices: id, name, group, status, active version, agent version, last seen.
    Devices {
        #[command(subcommand)]
        action: Option<DevicesCmd>,
        /// Only this group's devices.
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// Print the controller's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Upload updates to the controller.
    #[command(subcommand)]
    Update(UpdateCmd),
    /// List the controller's updates, newest first.
    Updates {
        /// Print the controller's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deploy an update to a group (or to devices); prints the deployment.
    Deploy {
        /// The update: its id or its version (a number is taken as an id first).
        update: String,
        /// The group to deploy to: every device in it now.
        #[arg(
            long,
            value_name = "GROUP",
            required_unless_present = "devices",
            conflicts_with = "devices"
        )]
        group: Option<String>,
        /// A device (id or name) instead of a group; repeat for several.
        #[arg(long = "device", value_name = "DEVICE")]
        devices: Vec<String>,
        /// A comment for later reference.
        #[arg(long)]
        comment: Option<String>,
        /// Deploy even to devices an unfinished deployment of this update already
        /// targets (refused otherwise: they would install it twice).
        #[arg(long)]
        again: bool,
        #[command(flatten)]
        plan: PlanArgs,
        /// Print the controller's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deploy a deployment's update to another group ("deploy to others").
    DeployToOthers {
        /// The deployment whose update to deploy.
        deployment: u64,
        /// The other group.
        #[arg(long, value_name = "GROUP")]
        group: String,
        #[command(flatten)]
        plan: PlanArgs,
        /// Print the controller's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Go on with a deployment its plan halted; plan flags replace the plan for the
    /// devices not started yet (those started become its first wave).
    Resume {
        /// The deployment.
        deployment: u64,
        #[command(flatten)]
        plan: PlanArgs,
        /// Print the controller's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recent updates with per-state device counts; with a deployment, its devices.
    Status {
        /// A deployment to show in detail: one line per device.
        deployment: Option<u64>,
        /// How many recent deployments to list.
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: u32,
        /// Print the controller's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Abort a deployment: pending devices at once, installing ones at their next poll.
    Abort {
        /// The deployment.
        deployment: u64,
        /// Print the controller's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a device's log for a deployment.
    Logs {
        /// The deployment.
        deployment: u64,
        /// The device: its id or its name.
        device: String,
    },
}

#[derive(Subcommand)]
enum GroupsCmd {
    /// Create a group and print its enrollment token.
    Create {
        /// 1 to 64 characters of A-Z a-z 0-9 . _ -
        name: String,
        /// Print the controller's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set what a deployment to the group does when it names no plan, and whether
    /// devices joining the group get its latest deployment.
    Set {
        /// The group.
        name: String,
        #[command(flatten)]
        plan: PlanArgs,
        /// Its deployments go to every device at once (the default plan).
        #[arg(long, conflicts_with_all = ["waves", "canaries", "success", "soak", "halt_at", "halt_scope", "abort_in_flight"])]
        all_at_once: bool,
        /// Whether a device that joins the group gets its latest deployment.
        #[arg(long, value_name = "yes|no", value_parser = yes_no)]
        pick_up_joiners: Option<bool>,
        /// Print the controller's JSON.
        #[arg(long)]
        json: bool,
    },
}

fn yes_no(s: &str) -> Result<bool, String> {
    match s {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("{s:?}: `yes` or `no`")),
    }
}

#[derive(Subcommand)]
enum DevicesCmd {
    /// Remove a device: its credential is refused from now on (a stolen or retired
    /// device), what it has not started is cancelled, and it leaves every list.
    Remove {
        /// The device's id, or its name when that is unique.
        device: String,
    },
    /// One device: hardware, agent, active and inactive versions, last seen, and
    /// every deployment it took.
    Show {
        /// The device's id, or its name when that is unique.
        device: String,
        /// Print the controller's JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum UpdateCmd {
    /// Upload a bundle (verified by the controller), or a recipe the controller builds and signs.
    ///
    /// A recipe is checked here first, then sent with every file it names.
    Push {
        /// A bundle from `molt bundle build`, or a recipe (.toml).
        file: PathBuf,
        /// A comment for later reference.
        #[arg(long)]
        comment: Option<String>,
        /// Print the controller's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete an update no deployment used: its row and its bundle file.
    Delete {
        /// The update: its id or its version.
        update: String,
    },
}

#[derive(Subcommand)]
enum BundleCmd {
    /// Build a signed bundle from a recipe (see docs/recipe.md).
    Build {
        /// The recipe file (TOML).
        recipe: PathBuf,
        /// The bundle file to write (replaced atomically if it exists).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// A secret key from `molt keygen`; repeat to sign with up to 4 keys (key rotation).
        #[arg(long = "key", value_name = "SECRET", required = true)]
        keys: Vec<PathBuf>,
        /// Before the bundle gets its name, decode it in full as a device would (every
        /// entry and file digest), not only its signature and chunk chain. The controller
        /// does this to every upload and a device to every install.
        #[arg(long)]
        verify: bool,
        /// Compression threads (default: one per core, at most 8; 0 compresses in the
        /// reading thread). The bundle's bytes are the same whatever the number; with
        /// `SOURCE_DATE_EPOCH` set, two builds of one recipe, sources and key are
        /// byte-identical (docs/recipe.md).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=64))]
        threads: Option<u16>,
    },
    /// Show a bundle's manifest, recipe and entries.
    Inspect {
        /// The bundle file.
        file: PathBuf,
        /// A public key to check the signature with; without one the signature is NOT checked.
        #[arg(long = "key", value_name = "PUB")]
        keys: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Verify a bundle completely, as a device would: signature, chunks, entries, digests.
    Verify {
        /// The bundle file.
        file: PathBuf,
        /// A trusted public key; repeat to trust several.
        #[arg(long = "key", value_name = "PUB", required = true)]
        keys: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    // As every Unix filter: when the reader goes away (`molt bundle inspect … | head`),
    // end quietly. Rust ignores SIGPIPE, so a print to the closed pipe would panic.
    // SAFETY: called first, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            errln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let remote = cli.remote;
    match cli.command {
        Top::Keygen { output } => {
            let g = keys::generate(&output)?;
            errln!(
                "wrote {} (secret: keep it off devices and out of version control) and {}",
                g.secret.display(),
                g.public.display()
            );
            outln!("{}", hex::encode(g.id));
            Ok(ExitCode::SUCCESS)
        }
        Top::Bundle(BundleCmd::Build {
            recipe,
            output,
            keys: key_files,
            verify,
            threads,
        }) => {
            let secrets = key_files
                .iter()
                .map(|p| keys::read_secret(p))
                .collect::<Result<Vec<_>>>()?;
            let check = if verify {
                build::Check::Full
            } else {
                build::Check::Chain
            };
            let mut opts = build::Options::new(check, recipe::BuildTime::from_env()?);
            opts.threads = threads.map(usize::from);
            let progress = Bar(progress_bar());
            let built = build::build(&recipe, &output, &secrets, opts, &progress);
            progress.0.finish_and_clear();
            let b = built?;
            let ids: Vec<String> = b.key_ids.iter().map(hex::encode).collect();
            outln!(
                "built {}: version {} ({}), {} entries, {} of files, {} in {} chunk(s), signed by {}",
                b.path.display(),
                b.version,
                if b.full { "full" } else { "patch" },
                b.entries,
                human(b.file_bytes),
                human(b.bundle_len),
                b.chunks,
                ids.join(", ")
            );
            if let Some(g) = b.target_group {
                outln!(
                    "target group: {g} (for the controller's deployment; not part of the bundle)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Top::Bundle(BundleCmd::Inspect {
            file,
            keys: key_files,
            json,
        }) => {
            let trusted = public_keys(&key_files)?;
            let d = inspect::decode(&file, &trusted, true, None)?;
            if json {
                print_json(&inspect::render_json(&file, &d))?;
            } else {
                out!("{}", inspect::render_text(&file, &d));
            }
            match &d.refusal {
                None => Ok(ExitCode::SUCCESS),
                Some(r) => {
                    errln!("error: {}: {r}", Escaped::new(&file.to_string_lossy()));
                    if matches!(
                        r.error,
                        Error::UnknownKey { .. }
                            | Error::BadSignature { .. }
                            | Error::RevokedKey { .. }
                    ) {
                        errln!("(inspect without --key shows the contents without checking the signature)");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Top::Bundle(BundleCmd::Verify {
            file,
            keys: key_files,
        }) => {
            let trusted = public_keys(&key_files)?;
            let progress = Bar(progress_bar());
            let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            molt_bundle::Progress::stage(&progress, "verifying", Some(len));
            let verified = inspect::verify(&file, &trusted, Some(&progress));
            progress.0.finish_and_clear();
            match verified {
                Ok(v) => {
                    outln!(
                        "OK {}: version {} for {} (release {}), {} entries, {} of files, {} bundle, signed by {}",
                        Escaped::new(&file.to_string_lossy()),
                        Escaped::new(&v.version),
                        Escaped::new(&v.compatible),
                        v.release,
                        v.entries,
                        human(v.file_bytes),
                        human(v.file_len),
                        hex::encode(v.key_id)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    errln!(
                        "FAILED {}: {}",
                        Escaped::new(&file.to_string_lossy()),
                        Escaped::new(&format!("{e:#}"))
                    );
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Top::Digest { paths } => {
            // One buffered writer: a line per file must not cost a write each.
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
            build::digest_paths(&paths, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Top::Login => login(&remote),
        remote_command => {
            let client = Client::new(&remote.target()?)?;
            remote_run(&client, remote_command)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl Remote {
    /// The controller, token and CA: flags, then the environment, then the saved login.
    fn target(&self) -> Result<Target> {
        let saved = match login::default_config_path() {
            Some(p) => login::load_login(&p)?,
            None => None,
        };
        let env = Env::read();
        login::resolve(self.given(), env.given(), saved.as_ref())
    }

    fn given(&self) -> Given<'_> {
        Given {
            controller: self.controller.as_deref(),
            token: self.token.as_deref(),
            ca: self.ca.as_deref(),
        }
    }
}

/// The `MOLT_*` variables, read once.
struct Env {
    controller: Option<String>,
    token: Option<String>,
    ca: Option<PathBuf>,
}

impl Env {
    fn read() -> Env {
        Env {
            controller: std::env::var(login::ENV_CONTROLLER).ok(),
            token: std::env::var(login::ENV_TOKEN).ok(),
            ca: std::env::var_os(login::ENV_CA).map(PathBuf::from),
        }
    }

    fn given(&self) -> Given<'_> {
        Given {
            controller: self.controller.as_deref(),
            token: self.token.as_deref(),
            ca: self.ca.as_deref(),
        }
    }
}

/// `molt login`: checks the token with `GET /groups`, then saves it (with the CA file, if one was given).
fn login(remote: &Remote) -> Result<ExitCode> {
    let env = Env::read();
    let raw = remote
        .controller
        .clone()
        .or(env.controller)
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| anyhow!("give the controller's URL: molt login --controller URL"))?;
    let controller = login::normalize_url(&raw)?;
    let token = match remote.token.clone().or(env.token) {
        Some(t) => t.trim().to_owned(),
        None => read_token(&controller)?,
    };
    if token.is_empty() {
        bail!("no token given: molt login --controller {controller} --token TOKEN (or on standard input)");
    }
    let path = login::default_config_path().ok_or_else(|| {
        anyhow!("neither XDG_CONFIG_HOME nor HOME is set: nowhere to save the login")
    })?;
    // A CA given now is saved absolute, so the other commands find it from any directory;
    // logging in again to the same controller keeps the CA saved before.
    let ca = match remote.ca.clone().or(env.ca) {
        Some(p) if !p.as_os_str().is_empty() => {
            Some(std::path::absolute(&p).with_context(|| {
                format!("CA file {}: cannot make its path absolute", p.display())
            })?)
        }
        // A file that does not read is replaced, as before.
        _ => login::load_login(&path)
            .ok()
            .flatten()
            .filter(|s| login::normalize_url(&s.controller).ok().as_deref() == Some(&controller))
            .and_then(|s| s.ca),
    };
    let target = Target {
        controller,
        token,
        ca,
    };
    let c = Client::new(&target)?;
    let groups: Vec<Group> = match c.groups() {
        Ok(g) => g,
        Err(RequestError::BadToken) => bail!(
            "the controller at {} refused the token (it is in <data>/operator-token on the controller)",
            target.controller
        ),
        Err(e) => return Err(e.into()),
    };
    login::save_login(
        &path,
        &SavedLogin {
            controller: target.controller.clone(),
            token: target.token,
            ca: target.ca,
        },
    )?;
    outln!(
        "logged in to {} ({} group(s)); saved to {}",
        target.controller,
        groups.len(),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The token from standard input: a prompt without echo on a terminal, else everything piped in.
fn read_token(controller: &str) -> Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut text = String::new();
        stdin
            .lock()
            .read_to_string(&mut text)
            .context("cannot read the token from standard input")?;
        return Ok(text.trim().to_owned());
    }
    err!("operator token for {controller}: ");
    let _ = std::io::stderr().flush();
    // termion reads it in raw mode on the terminal and restores the mode when done:
    // nothing is echoed, and Ctrl-C or Ctrl-D arrive as bytes that end the prompt
    // (no signal kills us with echo still off, as `stty -echo` left it).
    let mut tty = termion::get_tty().context("cannot open the terminal")?;
    let read = stdin.lock().read_passwd(&mut tty);
    errln!();
    match read.context("cannot read the token")? {
        Some(line) => Ok(line.trim().to_owned()),
        None => bail!("no token given (the prompt was interrupted)"),
    }
}

/// Prints a JSON value for scripts.
fn print_json(v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).context("cannot format JSON")?;
    std::io::stdout().write_all(json_safe(&text).as_bytes())?;
    std::io::stdout().write_all(b"\n")?;
    Ok(())
}

/// `json` with the characters serde_json leaves raw in strings but a terminal acts
/// on (DEL, C1 controls, bidi overrides) written as `\uXXXX` escapes: still the
/// same JSON value, and safe to show.
fn json_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if molt_engine::text::needs_escape(c) && c != '\n' {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Converts an answer already fetched as JSON into its message type.
fn typed<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v)
        .map_err(|e| anyhow!("unexpected answer from the controller for {what}: {e}"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The commands that talk to the controller.
fn remote_run(c: &Client, command: Top) -> Result<()> {
    match command {
        Top::Groups { action: None, json } => show(c.groups()?, json, "groups", |g: Vec<Group>| {
            render::groups_table(&g)
        }),
        Top::Groups {
            action: Some(GroupsCmd::Create { name, json }),
            ..
        } => show(c.create_group(&name)?, json, "the new group", |g: Group| {
            format!(
                "created group {}; devices enroll with its token:\n{}\n",
                g.name, g.enrollment_token
            )
        }),
        Top::Groups {
            action:
                Some(GroupsCmd::Set {
                    name,
                    plan,
                    all_at_once,
                    pick_up_joiners,
                    json,
                }),
            ..
        } => {
            let default_plan = if all_at_once {
                Some(molt_api::plan::RolloutPlan::default())
            } else {
                plan.plan()
            };
            if default_plan.is_none() && pick_up_joiners.is_none() {
                bail!("say what to set: plan flags (--waves, --canary, …), --all-at-once or --pick-up-joiners");
            }
            let patch = molt_api::GroupPatch {
                default_plan,
                pick_up_joiners,
            };
            show(
                c.patch_group(&name, &patch)?,
                json,
                "the group",
                |g: Group| render::group_settings(&g),
            )
        }
        Top::Devices {
            action: Some(DevicesCmd::Remove { device }),
            ..
        } => remove_device(c, &device),
        Top::Devices {
            action: Some(DevicesCmd::Show { device, json }),
            ..
        } => {
            let id = device_ids(c, &[device])?.remove(0);
            show(c.device(&id)?, json, "the device", |d: DeviceDetails| {
                render::device_details(&d, now())
            })
        }
        Top::Devices {
            action: None,
            group,
            json,
        } => show(
            c.devices(group.as_deref())?,
            json,
            "devices",
            |d: Vec<Device>| render::devices_table(&d, now()),
        ),
        Top::Updates { json } => show(c.updates()?, json, "updates", |u: Vec<Update>| {
            render::updates_table(&u)
        }),
        Top::Update(UpdateCmd::Delete { update }) => {
            let updates: Vec<Update> = c.updates()?;
            let u = lookup::find_update(&updates, &update)?;
            let gone: molt_api::UpdateDeleted = c.delete_update(u.id)?;
            outln!(
                "deleted update {} (version {}); the version can be uploaded again",
                gone.id,
                Escaped::new(&gone.version)
            );
            Ok(())
        }
        Top::Update(UpdateCmd::Push {
            file,
            comment,
            json,
        }) => push(c, &file, comment.as_deref(), json),
        Top::Deploy {
            update,
            group,
            devices,
            comment,
            again,
            plan,
            json,
        } => {
            let updates: Vec<Update> = c.updates()?;
            let u = lookup::find_update(&updates, &update)?;
            let devices = if devices.is_empty() {
                None
            } else {
                Some(device_ids(c, &devices)?)
            };
            let made = c.deploy(&NewDeployment {
                update: u.id,
                group,
                devices,
                comment: comment.unwrap_or_default(),
                again,
                plan: plan.plan(),
            })?;
            show(made, json, "the new deployment", deployment_made)
        }
        Top::DeployToOthers {
            deployment,
            group,
            plan,
            json,
        } => show(
            c.deploy_to_others(deployment, &group, plan.plan())?,
            json,
            "the new deployment",
            deployment_made,
        ),
        Top::Resume {
            deployment,
            plan,
            json,
        } => show(
            c.resume(deployment, plan.plan())?,
            json,
            "the deployment",
            |d: Deployment| render::deployment_made(&d),
        ),
        Top::Status {
            deployment: None,
            limit,
            json,
        } => show(
            c.deployments(limit)?,
            json,
            "deployments",
            |d: Vec<Deployment>| render::deployments_table(&d),
        ),
        Top::Status {
            deployment: Some(id),
            json,
            ..
        } => show(
            c.deployment(id)?,
            json,
            "the deployment",
            |d: DeploymentDetails| render::deployment_details(&d),
        ),
        Top::Abort { deployment, json } => abort(c, deployment, json),
        Top::Logs { deployment, device } => logs(c, deployment, device),
        Top::Keygen { .. } | Top::Bundle(_) | Top::Digest { .. } | Top::Login => {
            unreachable!("local commands are handled by run")
        }
    }
}

/// Prints an answer: as it came (JSON) for scripts, else typed and rendered for people.
fn show<T: serde::de::DeserializeOwned>(
    answer: Value,
    json: bool,
    what: &str,
    render: impl FnOnce(T) -> String,
) -> Result<()> {
    if json {
        return print_json(&answer);
    }
    out!("{}", render(typed(answer, what)?));
    Ok(())
}

/// What `deploy` and `deploy-to-others` say about the deployment they made.
fn deployment_made(d: Deployment) -> String {
    format!(
        "{}\nwatch it: molt status {}\n",
        render::deployment_made(&d),
        d.id
    )
}

/// The ids of `devices`, each given by id or name.
fn device_ids(c: &Client, devices: &[String]) -> Result<Vec<String>> {
    let all: Vec<Device> = c.devices(None)?;
    let pairs: Vec<(String, String)> = all.into_iter().map(|d| (d.id, d.name)).collect();
    devices
        .iter()
        .map(|d| lookup::find_device(&pairs, d))
        .collect()
}

/// `molt devices remove`: by id or name.
fn remove_device(c: &Client, device: &str) -> Result<()> {
    let id = device_ids(c, &[device.to_owned()])?.remove(0);
    let r: DeviceRemoved = c.remove_device(&id)?;
    outln!(
        "removed device {}: its credential is refused from now on; {} unfinished \
         deployment target(s) cancelled",
        Escaped::new(&r.device),
        r.cancelled
    );
    Ok(())
}

/// `molt abort`: the report names devices when the deployment can still be read.
fn abort(c: &Client, deployment: u64, json: bool) -> Result<()> {
    let v: Value = c.abort(deployment)?;
    if json {
        return print_json(&v);
    }
    let r: AbortResult = typed(v, "the abort")?;
    // Names make the report readable; without them it still says everything.
    let details: Option<DeploymentDetails> = c.deployment(deployment).ok();
    let names = |id: &str| {
        details
            .as_ref()?
            .devices
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.name.clone())
    };
    out!("{}", render::abort_report(&r, &names));
    Ok(())
}

/// `molt logs`: one device's log in a deployment, the device by id or by name.
fn logs(c: &Client, deployment: u64, device: String) -> Result<()> {
    let id = if device.starts_with("dev_") {
        device
    } else {
        let d: DeploymentDetails = c.deployment(deployment)?;
        let pairs: Vec<(String, String)> = d.devices.into_iter().map(|d| (d.id, d.name)).collect();
        lookup::find_device(&pairs, &device).with_context(|| format!("deployment {deployment}"))?
    };
    let text = c.log(deployment, &id)?;
    // Scripts' output: line breaks kept, every other control escaped.
    out!("{}", Escaped::lines(&text));
    if !text.is_empty() && !text.ends_with('\n') {
        outln!();
    }
    Ok(())
}

/// `molt update push`: a bundle streamed as it is, or a recipe with its files.
fn push(c: &Client, file: &Path, comment: Option<&str>, json: bool) -> Result<()> {
    // Everything that can be checked here is, before the controller is asked anything.
    enum Upload {
        Bundle(push::BundleInfo),
        Recipe(push::RecipeForm),
    }
    let upload = match push::push_kind(file)? {
        PushKind::Bundle => Upload::Bundle(push::bundle_info(file)?),
        PushKind::Recipe => Upload::Recipe(push::recipe_form(file).map_err(|e| {
            if file.extension().is_some_and(|x| x == "toml") {
                e
            } else {
                e.context(format!(
                    "{} is not a molt bundle (no bundle header), nor a usable recipe",
                    file.display()
                ))
            }
        })?),
    };
    let version = match &upload {
        Upload::Bundle(b) => &b.version,
        Upload::Recipe(r) => &r.version,
    };
    // Versions are unique: refused here rather than by a 409 after the whole upload. This
    // also checks the token before a large body is sent (an early 401 would show as a
    // broken connection).
    let existing: Vec<Update> = c.updates()?;
    if let Some(u) = existing.iter().find(|u| &u.version == version) {
        bail!(
            "the controller already has version {version} (update {}); versions are unique",
            u.id
        );
    }
    let (v, target_group) = match upload {
        Upload::Bundle(info) => {
            errln!(
                "uploading {}: version {} ({}) for {}, {}",
                file.display(),
                info.version,
                if info.full { "full" } else { "patch" },
                info.compatible,
                human(info.size)
            );
            let progress = progress_bar();
            (c.push_bundle(file, comment, &progress)?, None)
        }
        Upload::Recipe(r) => {
            errln!(
                "uploading recipe {} (version {}) with {} part(s), {}; the controller builds and signs it",
                file.display(),
                r.version,
                r.form.parts().len(),
                human(r.form.len())
            );
            let progress = progress_bar();
            (c.build_recipe(r.form, comment, &progress)?, r.target_group)
        }
    };
    if json {
        return print_json(&v);
    }
    let u: Update = typed(v, "the new update")?;
    outln!("{}", render::update_made(&u));
    outln!(
        "deploy it: molt deploy {} --group {}",
        u.id,
        target_group.as_deref().unwrap_or("GROUP")
    );
    Ok(())
}

fn public_keys(files: &[PathBuf]) -> Result<Vec<TrustedKey>> {
    files
        .iter()
        .map(|p: &PathBuf| keys::read_public(Path::new(p)))
        .collect()
}

/// A byte progress bar on stderr, or a hidden one when stderr is not a terminal
/// (CI logs and pipes get the one-line summary only).
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>9} [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The terminal's view of the toolkit's progress reports.
struct Bar(ProgressBar);

impl molt_bundle::Progress for Bar {
    fn stage(&self, name: &'static str, total: Option<u64>) {
        self.0.set_message(name);
        if let Some(total) = total {
            self.0.set_position(0);
            self.0.set_length(total);
        }
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}
