//! Recent updates (one row per deployment, refreshed live), a deployment's details (per-device status, wave, progress, logs; its plan and a halt with Resume), Abort with a confirmation, and Deploy to others (with an optional plan, confirmed first from a failed or halted deployment).
//!
//! The live parts are fragments (`/deployments/table`, `/deployments/{id}/live`)
//! that app.js fetches every two seconds and swaps in; without JavaScript the
//! pages are complete as they are and a reload refreshes them.

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::super::deployments as api;
use super::super::error::AppError;
use super::super::operator_api;
use super::super::AppState;
use super::super::{db, gates};
use super::layout::{self, badge, counts, Nav};
use super::session::{self, Session};
use molt_api::{AbortResult, Deployment, DeploymentDetails, DeviceState, NotAborted};

/// How many deployments the recent-updates table shows.
const RECENT: u32 = 50;

/// Whether an abort would still change anything: some device is not final.
fn abortable(d: &Deployment) -> bool {
    DeviceState::ALL
        .iter()
        .any(|s| !s.is_final() && d.counts.get(*s) > 0)
}

/// The recent-updates table (the live fragment).
fn table(rows: &[Deployment]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.empty { "No updates deployed yet. " a href="/updates/new" { "Create one." } }
        } @else {
            table #recent {
                thead { tr {
                    th scope="col" { "#" } th scope="col" { "Version" } th scope="col" { "Group" }
                    th scope="col" { "Status" } th scope="col" { "Time" } th scope="col" { "Comment" }
                    th scope="col" { span.visually-hidden { "Actions" } }
                } }
                tbody {
                    @for d in rows {
                        tr data-deployment=(d.id) data-state=(d.state) {
                            td { (d.id) }
                            th scope="row" { (d.version) }
                            td { @if d.group.is_empty() { span.muted { "device list" } } @else { (d.group) } }
                            td.status { (badge(&d.state)) " " (counts(&d.counts)) }
                            td { (layout::time(&d.created)) }
                            td.comment {
                                // A 3,000-character comment made a row 100 lines tall:
                                // the row shows its start, the details page all of it.
                                @let (short, cut) = layout::clip(&d.comment, COMMENT_CLIP_CHARS, COMMENT_CLIP_LINES);
                                (short)
                                @if cut { " " a.more href={ "/deployments/" (d.id) } title="the whole comment" { "more" } }
                            }
                            td.actions {
                                a href={ "/deployments/" (d.id) } { "Details" }
                                a href={ "/deployments/" (d.id) "/deploy-to-others" } { "Deploy to others" }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `?created=` after a deployment was made.
#[derive(Deserialize)]
pub struct Created {
    created: Option<u64>,
}

fn recent_page(session: &Session, rows: &[Deployment], note: Option<Markup>) -> Markup {
    let body = html! {
        div.heading {
            h1 { "Recent updates" }
            a.button href="/updates/new" { "New update" }
        }
        @if let Some(n) = note { (n) }
        div data-live="/deployments/table" aria-live="polite" { (table(rows)) }
    };
    layout::page("Recent updates", Some(session), Nav::Updates, body)
}

/// `GET /`: recent updates.
pub async fn recent(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<Created>,
) -> Response {
    match state.db.read(|tx| api::recent(tx, RECENT)).await {
        Ok(rows) => {
            let note = q.created.map(|id| {
                layout::notice(
                    "ok",
                    &format!("Deployment {id} created: its devices get it on their next poll."),
                )
            });
            recent_page(&session, &rows, note).into_response()
        }
        Err(e) => layout::error_page(Some(&session), e.status, &e.message),
    }
}

/// `GET /deployments/table`: the recent-updates table alone, for the live refresh.
pub async fn recent_table(State(state): State<AppState>, _: Session) -> Response {
    match state.db.read(|tx| api::recent(tx, RECENT)).await {
        Ok(rows) => table(&rows).into_response(),
        Err(e) => (e.status, e.message).into_response(),
    }
}

/// A deployment's summary, device table and Abort button (the live fragment);
/// `aborted` is when an operator aborted it.
fn live(session: &Session, d: &DeploymentDetails, aborted: Option<&str>) -> Markup {
    let dep = &d.deployment;
    let phased = !dep.rollout.plan.is_default();
    html! {
        dl.summary {
            dt { "Status" } dd.status { (badge(&dep.state)) " " (counts(&dep.counts)) }
            dt { "Version" } dd { (dep.version) }
            dt { "Group" } dd { @if dep.group.is_empty() { "device list" } @else { (dep.group) } }
            dt { "Created" } dd { (layout::time(&dep.created)) " by " (dep.created_by) }
            dt { "Comment" } dd.comment { (dep.comment) }
            @if let Some(r) = dep.rollout.summary() {
                dt { "Rollout" } dd.rollout {
                    (r)
                    @if let Some(t) = &dep.rollout.soak_until { "; soak ends " (layout::time(t)) }
                }
            }
        }
        @if let Some(why) = &dep.rollout.halted {
            div.notice.error role="alert" {
                p { strong { "Halted by its plan: " } (why) }
                p { "No device starts any more. Resume to go on (the failures so far no longer count toward the halt), or abort." }
                form.resume method="post" action={ "/deployments/" (dep.id) "/resume" } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    button type="submit" { "Resume" }
                }
            }
        }
        @if let (Some(t), true) = (aborted, abortable(dep)) {
            p.notice.ok role="status" {
                "Aborted at " (layout::time(t)) "; waiting for the devices still at work to hear it on their next poll."
            }
        } @else if abortable(dep) {
            form.abort method="post" action={ "/deployments/" (dep.id) "/abort" }
                data-confirm={ "Abort deployment " (dep.id) " (" (dep.version) ")? Devices that already committed keep the update." } {
                input type="hidden" name="csrf" value=(session.csrf);
                button.danger type="submit" { "Abort" }
            }
        }
        table #devices {
            thead { tr {
                @if phased { th scope="col" { "Wave" } }
                th scope="col" { "Device" } th scope="col" { "Status" } th scope="col" { "Phase" }
                th scope="col" { "Progress" } th scope="col" { "Message" } th scope="col" { "Updated" }
            } }
            tbody {
                @for t in &d.devices {
                    tr data-device=(t.id) data-state=(t.state.name()) {
                        @if phased { td.wave { @if t.wave == 0 { "canary" } @else { (t.wave) } } }
                        th scope="row" { (t.name) br; small.muted { code { (t.id) } } }
                        td { (badge(t.state.name())) }
                        td { (t.phase) }
                        td {
                            @if let Some(p) = &t.progress {
                                @if p.total > 0 {
                                    progress value=(p.done) max=(p.total) { (p.done * 100 / p.total) "%" }
                                    " " small { (layout::bytes(p.done)) " / " (layout::bytes(p.total)) }
                                } @else { (layout::bytes(p.done)) }
                            }
                        }
                        td.message { @if let Some(m) = &t.message { (m) } }
                        td { (layout::time(&t.updated)) }
                    }
                }
            }
        }
    }
}

/// How much of a comment a row of recent updates shows.
const COMMENT_CLIP_CHARS: usize = 160;
/// … and at most this many of its lines.
const COMMENT_CLIP_LINES: usize = 3;

/// Every device's log, each in a collapsible section.
fn logs(d: &DeploymentDetails, texts: &[String]) -> Markup {
    html! {
        section.logs {
            h2 { "Logs" }
            p.help { "What each device reported: the output of every script (before, after, health check, rollback) and of each install phase. Reload the page for the newest lines." }
            @for (t, text) in d.devices.iter().zip(texts) {
                details {
                    summary { (t.name) " " small.muted { "(" (layout::bytes(text.len() as u64)) ")" } }
                    @if text.is_empty() { p.empty { "Nothing reported yet." } }
                    @else { pre { (text) } }
                }
            }
        }
    }
}

/// A deployment as its page shows it, read in one snapshot.
struct View {
    details: DeploymentDetails,
    /// When it was aborted.
    aborted: Option<String>,
    /// Every device's log, in the order of `details.devices`.
    logs: Vec<String>,
}

/// Reads a deployment's details, abort time and (with `logs`) every device's log.
async fn load(state: &AppState, id: u64, logs: bool) -> Result<View, AppError> {
    state
        .db
        .read(move |tx| {
            let details = api::details_in(tx, id)?;
            let aborted = api::aborted_at(tx, id)?;
            let logs = if logs {
                details
                    .devices
                    .iter()
                    .map(|t| api::log_in(tx, id, &t.id))
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                Vec::new()
            };
            Ok(View {
                details,
                aborted,
                logs,
            })
        })
        .await
}

fn details_page(session: &Session, v: &View, note: Option<Markup>) -> Markup {
    let d = &v.details;
    let id = d.deployment.id;
    let body = html! {
        p.crumbs { a href="/" { "Recent updates" } " › deployment " (id) }
        div.heading {
            h1 { "Deployment " (id) ": " (d.deployment.version) }
            a.button href={ "/deployments/" (id) "/deploy-to-others" } { "Deploy to others" }
        }
        @if let Some(n) = note { (n) }
        div data-live={ "/deployments/" (id) "/live" } aria-live="polite" { (live(session, d, v.aborted.as_deref())) }
        (logs(d, &v.logs))
    };
    layout::page(&format!("Deployment {id}"), Some(session), Nav::None, body)
}

/// `GET /deployments/{id}`.
pub async fn details(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<u64>,
    Query(q): Query<DetailsQuery>,
) -> Response {
    match load(&state, id, true).await {
        Ok(v) => {
            // After the abort's redirect: what it did, from the stored states (so a
            // crafted link cannot show it for a deployment nobody aborted).
            let note = (q.abort.as_deref() == Some("sent") && v.aborted.is_some())
                .then(|| abort_note(&abort_outcome(&v.details)));
            details_page(&session, &v, note).into_response()
        }
        Err(e) => layout::error_page(Some(&session), e.status, &e.message),
    }
}

/// `?abort=sent`: the details page right after an abort.
#[derive(Deserialize)]
pub struct DetailsQuery {
    abort: Option<String>,
}

/// Which devices an abort of `d` applies to, as its devices' states now tell.
fn abort_outcome(d: &DeploymentDetails) -> AbortResult {
    let mut r = AbortResult {
        deployment: d.deployment.id,
        aborted: Vec::new(),
        not_aborted: Vec::new(),
    };
    for t in &d.devices {
        let reason = match t.state {
            DeviceState::Success => "already committed",
            DeviceState::Failed | DeviceState::RolledBack => "already finished",
            _ => {
                r.aborted.push(t.id.clone());
                continue;
            }
        };
        r.not_aborted.push(NotAborted {
            device: t.id.clone(),
            state: t.state,
            reason: reason.to_owned(),
        });
    }
    r
}

/// The resume form: the token.
#[derive(Deserialize)]
pub struct ResumeForm {
    csrf: Option<String>,
}

/// `POST /deployments/{id}/resume`: the API's own function, with the same plan; back
/// to the details page.
pub async fn resume(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<u64>,
    Form(form): Form<ResumeForm>,
) -> Response {
    if let Err(e) = session.check_token(form.csrf.as_deref()) {
        return session::refused(Some(&session), &e);
    }
    let resumed = state
        .db
        .write(move |tx| gates::resume_in(tx, id, None, db::now()))
        .await;
    match resumed {
        Ok(()) => Redirect::to(&format!("/deployments/{id}")).into_response(),
        Err(e) => layout::error_page(Some(&session), e.status, &e.message),
    }
}

/// `GET /deployments/{id}/abort` (a reload, a typed address): the details page.
pub async fn abort_get(Path(id): Path<u64>) -> Response {
    Redirect::to(&format!("/deployments/{id}")).into_response()
}

/// `GET /deployments/{id}/live`: the summary and device table alone.
pub async fn details_live(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<u64>,
) -> Response {
    match load(&state, id, false).await {
        Ok(v) => live(&session, &v.details, v.aborted.as_deref()).into_response(),
        Err(e) => (e.status, e.message).into_response(),
    }
}

/// The abort form: the token, and `confirmed=yes` once the operator confirmed
/// (app.js adds it after `confirm()`; without JavaScript a confirmation page asks).
#[derive(Deserialize)]
pub struct AbortForm {
    csrf: Option<String>,
    confirmed: Option<String>,
}

/// What an abort did, for the details page.
fn abort_note(r: &AbortResult) -> Markup {
    html! {
        div.notice.ok role="status" {
            p { "Abort sent. Devices that had not started stop now; the others hear it on their next poll." }
            @if !r.aborted.is_empty() {
                p { "Aborted: " @for (i, d) in r.aborted.iter().enumerate() { @if i > 0 { ", " } code { (d) } } }
            }
            @if !r.not_aborted.is_empty() {
                p { "Not aborted:" }
                ul { @for n in &r.not_aborted { li { code { (n.device) } " — " (n.reason) " (" (n.state.name().replace('_', " ")) ")" } } }
            }
        }
    }
}

/// `POST /deployments/{id}/abort`.
pub async fn abort(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<u64>,
    Form(form): Form<AbortForm>,
) -> Response {
    if let Err(e) = session.check_token(form.csrf.as_deref()) {
        return session::refused(Some(&session), &e);
    }
    if form.confirmed.as_deref() != Some("yes") {
        let ask = layout::Ask {
            question: html! { "Abort deployment " (id) "?" },
            effect: "Devices that have not started stop at once; devices downloading or installing stop on their next poll and stay on their old snapshot. Devices that already committed keep the update.",
            action: format!("/deployments/{id}/abort"),
            yes: "Yes, abort",
            back: format!("/deployments/{id}"),
        };
        return layout::confirm_page(&session, "Abort?", Nav::None, ask);
    }
    match state.db.write(move |tx| api::abort_in(tx, id)).await {
        // Post/redirect/get: a reload shows the page again instead of re-sending.
        Ok(_) => Redirect::to(&format!("/deployments/{id}?abort=sent")).into_response(),
        Err(e) => match load(&state, id, true).await {
            Ok(v) => {
                let note = layout::notice("error", &e.message);
                (e.status, details_page(&session, &v, Some(note))).into_response()
            }
            Err(e) => layout::error_page(Some(&session), e.status, &e.message),
        },
    }
}

/// Why deploying `d`'s update further deserves a second thought: it failed or its
/// plan halted it. `None` for any other state.
fn warning(d: &Deployment) -> Option<String> {
    let c = &d.counts;
    match d.state.as_str() {
        "halted" => Some(format!(
            "Deployment {} halted: {}.",
            d.id,
            d.rollout
                .halted
                .as_deref()
                .unwrap_or("its plan stopped it")
                .trim_end_matches('.')
        )),
        "failed" => Some(format!(
            "Deployment {} failed: {} of its {} devices did not install the update.",
            d.id,
            c.failed + c.rolled_back,
            c.total()
        )),
        _ => None,
    }
}

/// The deploy-to-others form as typed (the group chosen and the plan fields).
#[derive(Default)]
struct OthersTyped<'a> {
    group: &'a str,
    plan: Option<&'a layout::PlanFields>,
}

fn others_page(
    session: &Session,
    d: &Deployment,
    groups: &[molt_api::Group],
    typed: OthersTyped<'_>,
    error: Option<&str>,
) -> Markup {
    let blank = layout::PlanFields::default();
    let plan = typed.plan.unwrap_or(&blank);
    let body = html! {
        p.crumbs { a href="/" { "Recent updates" } " › " a href={ "/deployments/" (d.id) } { "deployment " (d.id) } " › deploy to others" }
        h1 { "Deploy " (d.version) " to another group" }
        p.lead {
            "Deployment " (d.id) " sent it to " @if d.group.is_empty() { "a device list" } @else { strong { (d.group) } }
            " (" (badge(&d.state)) "). The new deployment keeps its comment."
        }
        @if let Some(e) = error { (layout::notice("error", e)) }
        @if let Some(w) = warning(d) {
            div.notice.error.warn role="alert" {
                p { strong { (w) } }
                p { "Deploy its update to another group anyway?" }
            }
        }
        form.others method="post" action={ "/deployments/" (d.id) "/deploy-to-others" } {
            input type="hidden" name="csrf" value=(session.csrf);
            div.field {
                label for="other-group" { "Group" }
                select #other-group name="group" required {
                    @for g in groups.iter().filter(|g| g.name != d.group) {
                        option value=(g.name) selected[typed.group == g.name] {
                            (g.name) " (" (layout::devices_count(g.devices)) "; default plan: " (g.default_plan.describe()) ")"
                        }
                    }
                }
            }
            (layout::plan_fieldset(plan, "", "Rollout (optional)",
                "Leave every field empty for the chosen group's default plan."))
            @if warning(d).is_some() {
                div.check.confirm {
                    input #confirmed type="checkbox" name="confirmed" value="yes" required;
                    label for="confirmed" { "Yes, deploy it anyway: I have read why deployment " (d.id) " stopped" }
                }
            }
            div.submit { button type="submit" { "Deploy" } }
        }
    };
    layout::page("Deploy to others", Some(session), Nav::None, body)
}

async fn others_data(
    state: &AppState,
    id: u64,
) -> Result<(Deployment, Vec<molt_api::Group>), AppError> {
    state
        .db
        .read(move |tx| {
            let d = api::details_in(tx, id)?.deployment;
            Ok((d, operator_api::groups(tx)?))
        })
        .await
}

/// `GET /deployments/{id}/deploy-to-others`: choose the group (and, optionally, a plan).
pub async fn others_form(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<u64>,
) -> Response {
    match others_data(&state, id).await {
        Ok((d, groups)) => {
            others_page(&session, &d, &groups, OthersTyped::default(), None).into_response()
        }
        Err(e) => layout::error_page(Some(&session), e.status, &e.message),
    }
}

/// The deploy-to-others form: the token, the group, the optional plan, and
/// `confirmed=yes` when the deployment it starts from failed or halted.
#[derive(Deserialize)]
pub struct OthersForm {
    csrf: Option<String>,
    #[serde(default)]
    group: String,
    #[serde(default)]
    confirmed: String,
    #[serde(flatten)]
    plan: layout::PlanFields,
}

/// `POST /deployments/{id}/deploy-to-others`: the API's own function; back to recent
/// updates. From a failed or halted deployment only once confirmed; a refusal shows
/// the form again as typed, nothing deployed.
pub async fn deploy_to_others(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<u64>,
    Form(form): Form<OthersForm>,
) -> Response {
    if let Err(e) = session.check_token(form.csrf.as_deref()) {
        return session::refused(Some(&session), &e);
    }
    let (d, groups) = match others_data(&state, id).await {
        Ok(v) => v,
        Err(e) => return layout::error_page(Some(&session), e.status, &e.message),
    };
    let refuse = |e: AppError| {
        let typed = OthersTyped {
            group: &form.group,
            plan: Some(&form.plan),
        };
        (
            e.status,
            others_page(&session, &d, &groups, typed, Some(&e.message)),
        )
            .into_response()
    };
    if let (Some(w), false) = (warning(&d), form.confirmed == "yes") {
        return refuse(AppError::conflict(format!(
            "{w} Tick \u{201c}Yes, deploy it anyway\u{201d} to deploy its update to another group: nothing was deployed."
        )));
    }
    let plan = match form.plan.plan() {
        Ok(p) => p,
        Err(e) => return refuse(AppError::bad_request(e)),
    };
    let group = form.group.clone();
    let made = state
        .db
        .write(move |tx| api::deploy_to_others_in(tx, id, &group, plan.as_ref()))
        .await;
    match made {
        Ok(made) => Redirect::to(&format!("/?created={}", made.id)).into_response(),
        Err(e) => refuse(e),
    }
}
