//! "New update": the six-stage recipe form (general details, before, files and directories, packages, after and health check, rollback), built and signed on the server and deployed to the chosen group in one step, with an optional rollout plan.
//!
//! The form is one `multipart/form-data` POST. Its uploads are written into a
//! build directory (build_dir.rs) as `u<row>/<name>`, the recipe TOML is made
//! from the fields with the `toml` crate (so nothing the operator types can
//! break out of a string), and the rest is the API's own path: the build of
//! `POST /updates/build` ([`build_received`]) and the deployment of
//! `POST /deployments` ([`deployments::create`]). A refusal shows the form again
//! with the message and every field kept except the files, which browsers never
//! refill.

use axum::extract::multipart::{Field, Multipart, MultipartError, MultipartRejection};
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use tokio::io::AsyncWriteExt;

use super::super::build_api::{build_received, new_build_dir};
use super::super::build_dir::{BuildDir, Kind, PartMeta};
use super::super::deployments;
use super::super::error::AppError;
use super::super::operator_api;
use super::super::{gates, AppState};
use super::layout::{self, Nav};
use super::session::{self, Session};
use molt_api::plan::RolloutPlan;
use molt_api::{Group, NewDeployment};

/// File rows on the form.
pub const ROWS: usize = 3;

/// Largest text field accepted (a script is at most 32 KiB in a bundle anyway).
const MAX_FIELD: usize = 64 * 1024;

/// The form's text fields, as typed (kept to show the form again).
#[derive(Clone, Debug, Default)]
pub struct Fields {
    version: String,
    group: String,
    compatible: String,
    kind: String,
    comment: String,
    before_run: String,
    dest: [String; ROWS],
    apt: String,
    pip: String,
    pip3: String,
    npm: String,
    after_run: String,
    health_run: String,
    health_attempts: String,
    health_interval: String,
    health_timeout: String,
    rollback_revert: bool,
    rollback_run: String,
    rollback_reboot: bool,
    /// The optional rollout plan (empty: the group's default plan).
    plan: layout::PlanFields,
}

impl Fields {
    /// A blank form: a patch, reverting files on failure.
    fn blank() -> Fields {
        Fields {
            kind: "patch".into(),
            rollback_revert: true,
            ..Fields::default()
        }
    }

    /// Sets the text field `name`; false for a name the form does not have.
    fn set(&mut self, name: &str, value: String) -> bool {
        let slot = match name {
            "version" => &mut self.version,
            "group" => &mut self.group,
            "compatible" => &mut self.compatible,
            "kind" => &mut self.kind,
            "comment" => &mut self.comment,
            "before_run" => &mut self.before_run,
            "apt" => &mut self.apt,
            "pip" => &mut self.pip,
            "pip3" => &mut self.pip3,
            "npm" => &mut self.npm,
            "after_run" => &mut self.after_run,
            "health_run" => &mut self.health_run,
            "health_attempts" => &mut self.health_attempts,
            "health_interval" => &mut self.health_interval,
            "health_timeout" => &mut self.health_timeout,
            "rollback_run" => &mut self.rollback_run,
            "rollback_revert" => {
                self.rollback_revert = true;
                return true;
            }
            "rollback_reboot" => {
                self.rollback_reboot = true;
                return true;
            }
            _ => match row_of(name, "dest") {
                Some(i) => &mut self.dest[i],
                None => return self.plan.set(name, value),
            },
        };
        *slot = value;
        true
    }
}

/// The row index of a field named `<prefix><1..=ROWS>`.
fn row_of(name: &str, prefix: &str) -> Option<usize> {
    let n: usize = name.strip_prefix(prefix)?.parse().ok()?;
    (1..=ROWS).contains(&n).then(|| n - 1)
}

/// What one file row uploaded.
#[derive(Clone, Debug, Default)]
struct Row {
    /// Paths below `u<row>/`.
    files: Vec<String>,
    /// Some of them came from the directory picker.
    from_dir: bool,
}

/// The form page.
fn form_page(session: &Session, groups: &[Group], f: &Fields, error: Option<&str>) -> Markup {
    let text = |id: &str, label: &str, value: &str, help: &str| {
        html! {
            div.field {
                label for=(id) { (label) }
                input #(id) type="text" name=(id) value=(value) aria-describedby={ (id) "-help" };
                @if !help.is_empty() { p.help id={ (id) "-help" } { (help) } }
            }
        }
    };
    let area = |id: &str, label: &str, value: &str, help: &str, rows: u32| {
        html! {
            div.field {
                label for=(id) { (label) }
                textarea #(id) name=(id) rows=(rows) spellcheck="false" aria-describedby={ (id) "-help" } { (value) }
                @if !help.is_empty() { p.help id={ (id) "-help" } { (help) } }
            }
        }
    };
    let body = html! {
        h1 { "New update" }
        p.lead { "Fill in the recipe's six stages; Deploy builds the bundle, signs it with the controller's key and deploys it to the group." }
        @if let Some(e) = error { (layout::notice("error", e)) }
        form.recipe method="post" action="/updates/new" enctype="multipart/form-data" {
            input type="hidden" name="csrf" value=(session.csrf);
            fieldset {
                legend { "1. General details" }
                div.field {
                    label for="version" { "Version" }
                    input #version type="text" name="version" value=(f.version) required maxlength="64"
                        placeholder="1.4.2" aria-describedby="version-help";
                    p.help #version-help { "Unique; letters, digits and . _ + ~ -" }
                }
                div.field {
                    label for="group" { "Target group" }
                    select #group name="group" required {
                        option value="" { "Choose a group" }
                        @for g in groups {
                            option value=(g.name) selected[f.group == g.name] { (g.name) " (" (layout::devices_count(g.devices)) ")" }
                        }
                    }
                }
                (layout::plan_fieldset(&f.plan, "", "Rollout (optional)",
                    "Leave every field empty for the target group's default plan (shown on the Groups page). Otherwise: waves, then the gate before each next wave and when to halt."))
                (text("compatible", "Hardware (compatible)", &f.compatible, "Leave empty to use the target group's devices' own."))
                div.field {
                    label for="kind" { "Kind" }
                    select #kind name="kind" {
                        option value="patch" selected[f.kind != "full"] { "Patch: the active files plus these" }
                        option value="full" selected[f.kind == "full"] { "Full: exactly these files" }
                    }
                    p.help { "A patch writes only what it names: the destinations' parent directories must exist on the devices." }
                }
                (area("comment", "Comment", &f.comment, "For later reference; shown in recent updates.", 2))
            }
            fieldset {
                legend { "2. Before update" }
                (area("before_run", "Bash command or script to run before the update", &f.before_run, "Leave empty for none. Commands never get input: DEBIAN_FRONTEND=noninteractive is set.", 3))
            }
            fieldset {
                legend { "3. Files and directories" }
                p.help { "Each row's files go to its destination. One file with a destination not ending in / is that file; several files, or a directory, go into the destination directory." }
                @for i in 0..ROWS {
                    @let n = i + 1;
                    div.filerow {
                        div.field {
                            label for={ "dest" (n) } { "Destination " (n) }
                            input id={ "dest" (n) } type="text" name={ "dest" (n) } value=(f.dest[i]) placeholder="/opt/app/";
                        }
                        div.field {
                            label for={ "files" (n) } { "Files" }
                            input id={ "files" (n) } type="file" name={ "files" (n) } multiple;
                        }
                        div.field {
                            label for={ "dir" (n) } { "or a directory" }
                            input id={ "dir" (n) } type="file" name={ "dir" (n) } webkitdirectory multiple;
                        }
                    }
                }
            }
            fieldset {
                legend { "4. Install dependencies" }
                p.help { "One package per line, as the manager writes it (jq=1.6-2, requests==2.31.0, express@4.19.2). Installed inside the new snapshot." }
                div.packages {
                    (area("apt", "apt", &f.apt, "", 3))
                    (area("pip", "pip", &f.pip, "", 3))
                    (area("pip3", "pip3", &f.pip3, "", 3))
                    (area("npm", "npm", &f.npm, "", 3))
                }
            }
            fieldset {
                legend { "5. After update" }
                (area("after_run", "Bash command or script to run after the update", &f.after_run, "Runs once the new snapshot is active, e.g. to start the application.", 3))
                (area("health_run", "Health check", &f.health_run, "Must exit 0, or the update rolls back. Leave empty for none.", 2))
                div.row3 {
                    (text("health_attempts", "Attempts", &f.health_attempts, "default 3"))
                    (text("health_interval", "Seconds between", &f.health_interval, "default 5"))
                    (text("health_timeout", "Timeout (s)", &f.health_timeout, "default 30"))
                }
            }
            fieldset {
                legend { "6. Rollback" }
                p.help { "What a device does when the update fails." }
                div.check {
                    input #rollback_revert type="checkbox" name="rollback_revert" value="on" checked[f.rollback_revert];
                    label for="rollback_revert" { "Revert to the previous files and directories" }
                }
                (area("rollback_run", "Then run this Bash command", &f.rollback_run, "", 2))
                div.check {
                    input #rollback_reboot type="checkbox" name="rollback_reboot" value="on" checked[f.rollback_reboot];
                    label for="rollback_reboot" { "Reboot the device last" }
                }
            }
            div.submit { button type="submit" { "Deploy" } }
        }
    };
    layout::page("New update", Some(session), Nav::NewUpdate, body)
}

async fn groups(state: &AppState) -> Vec<Group> {
    state
        .db
        .read(operator_api::groups)
        .await
        .unwrap_or_default()
}

/// `GET /updates/new`.
pub async fn show(State(state): State<AppState>, session: Session) -> Response {
    let groups = groups(&state).await;
    // A controller without a signing key builds nothing: say so before the form is filled.
    let error = state
        .signing
        .is_none()
        .then_some(super::super::build_api::NO_SIGNING_KEY);
    form_page(&session, &groups, &Fields::blank(), error).into_response()
}

fn part_error(e: MultipartError) -> AppError {
    AppError::new(
        e.status(),
        format!("cannot read the form: {}", e.body_text()),
    )
}

/// Where an uploaded file goes below its row: its name, or for the directory picker
/// its path below the chosen directory.
fn relative_name(file_name: &str, from_dir: bool) -> String {
    let name = file_name.replace('\\', "/");
    if from_dir {
        match name.split_once('/') {
            Some((_, rest)) if !rest.is_empty() => rest.to_owned(),
            _ => name,
        }
    } else {
        name.rsplit('/').next().unwrap_or(&name).to_owned()
    }
}

/// Streams one uploaded file into the build directory; returns its size.
async fn store_file(
    field: &mut Field<'_>,
    dir: &mut BuildDir,
    part: &str,
    budget: u64,
) -> Result<u64, AppError> {
    let dest = dir.place(part, Kind::File)?;
    let io = |e: std::io::Error| AppError::internal(format!("cannot store `{part}`: {e}"));
    let mut out = tokio::fs::File::create(&dest).await.map_err(io)?;
    let mut size: u64 = 0;
    while let Some(chunk) = field.chunk().await.map_err(part_error)? {
        size += chunk.len() as u64;
        if size > budget {
            return Err(AppError::too_large(
                "the files are larger than the controller's limit (--max-bundle-bytes)",
            ));
        }
        out.write_all(&chunk).await.map_err(io)?;
    }
    out.flush().await.map_err(io)?;
    drop(out);
    dir.finish_file(
        &dest,
        PartMeta {
            kind: Kind::File,
            mode: None,
            mtime: None,
        },
    )?;
    Ok(size)
}

/// Reads the form: text fields into `fields`, files into `dir`. The form token must
/// come before any file (it is the form's first field), so nothing is stored for a
/// post that is not this session's.
async fn receive(
    multipart: &mut Multipart,
    session: &Session,
    dir: &mut BuildDir,
    fields: &mut Fields,
    rows: &mut [Row; ROWS],
    max: u64,
) -> Result<(), AppError> {
    let mut token_ok = false;
    let mut total: u64 = 0;
    // A refused field does not end the reading: every field after it still comes
    // back into the form as typed (once, a long comment came back with every later
    // field empty and Revert unticked, and the fixed form deployed without revert).
    let mut refused: Option<AppError> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(part_error)? {
        let name = field.name().unwrap_or("").to_owned();
        let upload = row_of(&name, "files")
            .map(|i| (i, false))
            .or_else(|| row_of(&name, "dir").map(|i| (i, true)));
        if let Some((i, from_dir)) = upload {
            if !token_ok {
                return Err(AppError::forbidden(
                    "the form carries no token before its files; reload the page and try again",
                ));
            }
            // An empty file input still sends a part, with no file name. After a
            // refusal, files are read past (a browser cannot refill file inputs).
            let Some(file_name) = field.file_name().filter(|n| !n.is_empty()) else {
                continue;
            };
            if refused.is_some() {
                while field.chunk().await.map_err(part_error)?.is_some() {}
                continue;
            }
            let rel = relative_name(file_name, from_dir);
            let part = format!("u{}/{rel}", i + 1);
            total += store_file(&mut field, dir, &part, max.saturating_sub(total)).await?;
            let row = &mut rows[i];
            row.files.push(rel);
            row.from_dir |= from_dir;
            continue;
        }
        let (bytes, len) = read_text(&mut field).await?;
        if len > MAX_FIELD && refused.is_none() {
            refused = Some(AppError::too_large(format!(
                "field `{name}` is {len} bytes, longer than {} KiB",
                MAX_FIELD / 1024
            )));
        }
        let value = match String::from_utf8(bytes) {
            Ok(v) => v,
            // Cut inside a character past the kept length, or not text at all.
            Err(e) => {
                if len <= MAX_FIELD && refused.is_none() {
                    refused = Some(AppError::bad_request(format!(
                        "field `{name}` is not UTF-8 text"
                    )));
                }
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
        };
        if name == "csrf" {
            session.check_token(Some(&value))?;
            token_ok = true;
        } else if !fields.set(&name, value) && refused.is_none() {
            refused = Some(AppError::bad_request(format!(
                "the form has no field `{name}`"
            )));
        }
    }
    if !token_ok {
        session.check_token(None)?;
    }
    refused.map_or(Ok(()), Err)
}

/// The most of one text field kept to show back in the form (the limit is
/// [`MAX_FIELD`]; an over-long field comes back whole up to this, so the operator
/// sees what to shorten, and the server's memory stays bounded).
const ECHO_MAX: usize = 4 * MAX_FIELD;

/// Reads a text field: its first [`ECHO_MAX`] bytes, and its whole length.
async fn read_text(field: &mut Field<'_>) -> Result<(Vec<u8>, usize), AppError> {
    let mut kept = Vec::new();
    let mut len = 0usize;
    while let Some(chunk) = field.chunk().await.map_err(part_error)? {
        len = len.saturating_add(chunk.len());
        let room = ECHO_MAX.saturating_sub(kept.len()).min(chunk.len());
        kept.extend_from_slice(&chunk[..room]);
    }
    Ok((kept, len))
}

/// One package per non-empty line.
fn lines(text: &str) -> toml::Value {
    toml::Value::Array(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| toml::Value::String(l.to_owned()))
            .collect(),
    )
}

/// An optional whole number field of the health check.
fn number(value: &str, what: &str) -> Result<Option<toml::Value>, AppError> {
    let v = value.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<u32>()
        .map(|n| Some(toml::Value::Integer(i64::from(n))))
        .map_err(|_| {
            AppError::bad_request(format!("health check {what}: `{v}` is not a whole number"))
        })
}

/// `{ run = text }` for a command field, or nothing when it is blank.
fn command(text: &str) -> Option<toml::Table> {
    let t = text.trim();
    (!t.is_empty()).then(|| {
        let mut c = toml::Table::new();
        c.insert("run".into(), t.to_owned().into());
        c
    })
}

/// The recipe TOML for the form (everything but the build's own checks).
fn recipe(f: &Fields, rows: &[Row; ROWS], compatible: &str) -> Result<String, AppError> {
    let mut r = toml::Table::new();
    r.insert("version".into(), f.version.trim().into());
    r.insert("compatible".into(), compatible.into());
    r.insert("comment".into(), f.comment.trim().into());
    let kind = if f.kind == "full" { "full" } else { "patch" };
    r.insert("kind".into(), kind.into());
    if let Some(c) = command(&f.before_run) {
        r.insert("before".into(), c.into());
    }
    let mut files = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let dest = f.dest[i].trim();
        match (row.files.is_empty(), dest.is_empty()) {
            (true, true) => continue,
            (true, false) => {
                return Err(AppError::bad_request(format!(
                    "files row {}: destination `{dest}` but no file or directory chosen",
                    i + 1
                )))
            }
            (false, true) => {
                return Err(AppError::bad_request(format!(
                    "files row {}: where should the files go? Give a destination",
                    i + 1
                )))
            }
            (false, false) => {}
        }
        let mut entry = toml::Table::new();
        let single = row.files.len() == 1 && !row.from_dir && !dest.ends_with('/');
        let source = match (single, row.files.first()) {
            (true, Some(name)) => format!("u{}/{name}", i + 1),
            _ => format!("u{}", i + 1),
        };
        entry.insert("source".into(), source.into());
        entry.insert(
            "destination".into(),
            dest.trim_end_matches('/').to_owned().into(),
        );
        files.push(toml::Value::Table(entry));
    }
    if !files.is_empty() {
        r.insert("files".into(), toml::Value::Array(files));
    }
    let mut packages = toml::Table::new();
    for (mgr, text) in [
        ("apt", &f.apt),
        ("pip", &f.pip),
        ("pip3", &f.pip3),
        ("npm", &f.npm),
    ] {
        if let toml::Value::Array(a) = lines(text) {
            if !a.is_empty() {
                packages.insert(mgr.into(), toml::Value::Array(a));
            }
        }
    }
    if !packages.is_empty() {
        r.insert("packages".into(), packages.into());
    }
    if let Some(c) = command(&f.after_run) {
        r.insert("after".into(), c.into());
    }
    match command(&f.health_run) {
        Some(mut h) => {
            for (key, value, what) in [
                ("attempts", &f.health_attempts, "attempts"),
                ("interval", &f.health_interval, "seconds between attempts"),
                ("timeout", &f.health_timeout, "timeout"),
            ] {
                if let Some(v) = number(value, what)? {
                    h.insert(key.into(), v);
                }
            }
            r.insert("health_check".into(), h.into());
        }
        None => {
            let set = [&f.health_attempts, &f.health_interval, &f.health_timeout]
                .iter()
                .any(|v| !v.trim().is_empty());
            if set {
                return Err(AppError::bad_request(
                    "health check: attempts, interval or timeout given without a command",
                ));
            }
        }
    }
    let mut rollback = command(&f.rollback_run).unwrap_or_default();
    rollback.insert("revert".into(), f.rollback_revert.into());
    rollback.insert("reboot".into(), f.rollback_reboot.into());
    r.insert("rollback".into(), rollback.into());
    toml::to_string(&r).map_err(|e| AppError::internal(format!("cannot write the recipe: {e}")))
}

/// The hardware the update is for: the form's, or the one all of the group's devices share.
async fn compatible_for(state: &AppState, f: &Fields) -> Result<String, AppError> {
    let group = f.group.clone();
    if group.is_empty() {
        return Err(AppError::bad_request("choose a target group"));
    }
    let found = state
        .db
        .read(move |tx| operator_api::group_compatibles(tx, &group))
        .await?;
    let typed = f.compatible.trim();
    let want = match (typed, found.as_slice()) {
        (_, []) => {
            return Err(AppError::bad_request(format!(
                "group `{}` has no devices",
                f.group
            )))
        }
        ("", [one]) => one.clone(),
        ("", many) => {
            return Err(AppError::bad_request(format!(
                "group `{}` holds devices of several kinds of hardware ({}); a deployment \
                 goes to one kind: use a group of one kind",
                f.group,
                many.join(", ")
            )))
        }
        (typed, _) => typed.to_owned(),
    };
    // The deployment refuses a group with any other hardware; found out after the
    // build, that would use up the version number for an update nobody sees.
    let other: Vec<&str> = found
        .iter()
        .map(String::as_str)
        .filter(|c| *c != want)
        .collect();
    if !other.is_empty() {
        return Err(AppError::bad_request(format!(
            "group `{}` holds devices of hardware {} and this update is for `{want}`: \
             nothing was built",
            f.group,
            other
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(want)
}

/// The plan the deployment gets (`None`: the group's default), checked before the
/// build like the hardware: its fields, and its canaries against the group's devices.
async fn plan_for(state: &AppState, f: &Fields) -> Result<Option<RolloutPlan>, AppError> {
    let typed = f.plan.plan().map_err(AppError::bad_request)?;
    let group = f.group.clone();
    let plan = typed.clone();
    let interval = state.poll_interval;
    state
        .db
        .read(move |tx| {
            let plan = match plan {
                Some(p) => p,
                None => operator_api::group(tx, &group)?.default_plan,
            };
            if !plan.canaries.is_empty() {
                let members: Vec<(String, String)> =
                    operator_api::devices(tx, Some(&group), interval)?
                        .into_iter()
                        .map(|d| (d.id, d.name))
                        .collect();
                gates::canary_ids(&plan, &members).map_err(|e| {
                    AppError::bad_request(format!("rollout plan, {}: nothing was built", e.message))
                })?;
            }
            Ok(())
        })
        .await?;
    Ok(typed)
}

/// Receives, builds, stores and deploys; the new deployment's id.
async fn build_and_deploy(
    state: &AppState,
    session: &Session,
    multipart: Result<Multipart, MultipartRejection>,
    fields: &mut Fields,
) -> Result<u64, AppError> {
    let mut multipart = multipart.map_err(|e| {
        AppError::new(
            e.status(),
            format!(
                "expected the form as multipart/form-data: {}",
                e.body_text()
            ),
        )
    })?;
    let (tmp, mut dir) = new_build_dir(state)?;
    let mut rows: [Row; ROWS] = Default::default();
    let received = receive(
        &mut multipart,
        session,
        &mut dir,
        fields,
        &mut rows,
        state.max_bundle_bytes,
    )
    .await;
    // Checked before building: a group the update cannot go to is refused before
    // a version number is used up.
    let mut plan = None;
    let recipe = match received {
        Ok(()) => match compatible_for(state, fields).await {
            Ok(c) => match plan_for(state, fields).await {
                Ok(p) => {
                    plan = p;
                    recipe(fields, &rows, &c)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let update = build_received(state.clone(), tmp, dir, recipe, None).await?;
    let group = fields.group.clone();
    let comment = update.comment.clone();
    let made = state
        .db
        .write(move |tx| {
            let req = NewDeployment {
                update: update.id,
                group: Some(group),
                devices: None,
                comment,
                again: false,
                plan,
            };
            deployments::create(tx, &req)
        })
        .await;
    match made {
        Ok(d) => Ok(d.id),
        Err(e) => Err(AppError::new(
            e.status,
            format!(
                "update {} ({}) was built and stored, but not deployed: {}",
                update.id, update.version, e.message
            ),
        )),
    }
}

/// `POST /updates/new`: build, sign, store and deploy, or the form again with the reason.
pub async fn submit(
    State(state): State<AppState>,
    session: Session,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let mut fields = Fields {
        kind: "patch".into(),
        ..Fields::default()
    };
    match build_and_deploy(&state, &session, multipart, &mut fields).await {
        Ok(id) => Redirect::to(&format!("/?created={id}")).into_response(),
        Err(e) if e.status == axum::http::StatusCode::FORBIDDEN => {
            session::refused(Some(&session), &e)
        }
        Err(e) => {
            let groups = groups(&state).await;
            (
                e.status,
                form_page(&session, &groups, &fields, Some(&e.message)),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_names_keep_the_directory_below_the_chosen_one() {
        assert_eq!(relative_name("app.js", false), "app.js");
        assert_eq!(relative_name("C:\\Users\\me\\app.js", false), "app.js");
        assert_eq!(relative_name("site/css/a.css", true), "css/a.css");
        assert_eq!(relative_name("lonely.txt", true), "lonely.txt");
    }

    #[test]
    fn the_form_becomes_a_recipe_with_every_stage() {
        let mut f = Fields::blank();
        f.version = "1.0.0".into();
        f.comment = "quote \" and\nnewline".into();
        f.before_run = "systemctl stop app".into();
        f.dest[0] = "/opt/app/hello.txt".into();
        f.dest[1] = "/srv/site/".into();
        f.apt = "jq\n\n curl \n".into();
        f.after_run = "systemctl start app".into();
        f.health_run = "true".into();
        f.health_attempts = "5".into();
        f.rollback_run = "echo back".into();
        f.rollback_reboot = true;
        let mut rows: [Row; ROWS] = Default::default();
        rows[0].files.push("hello.txt".into());
        rows[1].files.push("index.html".into());
        let text = recipe(&f, &rows, "acme").unwrap();
        let parsed: molt_bundle::recipe::RecipeFile = toml::from_str(&text).unwrap();
        assert_eq!(parsed.comment, "quote \" and\nnewline");
        assert_eq!(parsed.files.len(), 2);
        assert_eq!(parsed.files[0].source, std::path::Path::new("u1/hello.txt"));
        assert_eq!(parsed.files[1].source, std::path::Path::new("u2"));
        assert_eq!(parsed.files[1].destination, "/srv/site");
        assert_eq!(parsed.packages.apt.len(), 2);
        assert_eq!(parsed.health_check.as_ref().map(|h| h.attempts), Some(5));
        assert!(parsed.rollback.reboot && parsed.rollback.revert);

        f.health_attempts = "many".into();
        let e = recipe(&f, &rows, "acme").unwrap_err().message;
        assert!(e.contains("`many` is not a whole number"), "{e}");
        f.health_attempts.clear();
        f.dest[2] = "/nowhere".into();
        let e = recipe(&f, &rows, "acme").unwrap_err().message;
        assert!(e.contains("files row 3"), "{e}");
    }
}
