//! The groups page (their enrollment tokens, default rollout plans and joiners, a form per group to set those, and one to create a group) and the devices page (status, active version, agent version, last seen).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::super::error::AppError;
use super::super::operator_api;
use super::super::AppState;
use super::layout::{self, badge, Nav, PlanFields};
use super::session::{self, Session};
use molt_api::encode_component;
use molt_api::{Group, GroupPatch};

/// A group's default-plan form as typed, with why it was refused.
struct Editing<'a> {
    group: &'a str,
    fields: &'a PlanFields,
    pick_up_joiners: bool,
    error: &'a str,
}

/// The groups page. `name` and `error` are the new-group form's; `editing` a
/// refused default-plan form; `saved` the group whose plan was just saved.
fn groups_page(
    session: &Session,
    groups: &[Group],
    name: &str,
    error: Option<&str>,
    editing: Option<&Editing<'_>>,
    saved: Option<&str>,
) -> Markup {
    let body = html! {
        h1 { "Groups" }
        p.lead {
            "Devices enroll into a group with its token ("
            code { "molt-agent enroll --token …" } "); updates are deployed to a group."
        }
        @if let Some(g) = saved.filter(|g| groups.iter().any(|x| x.name == *g)) {
            p.notice.ok role="status" { "Group " strong { (g) } ": default plan and joiners saved." }
        }
        // A refused plan for a group that is not listed (removed meanwhile, or a
        // crafted post) has no form to show its error in.
        @if let Some(e) = editing.filter(|e| !groups.iter().any(|g| g.name == e.group)) {
            (layout::notice("error", e.error))
        }
        @if groups.is_empty() {
            p.empty { "No groups yet: create one below." }
        } @else {
            div.scroll {
                table #groups {
                    thead { tr {
                        th scope="col" { "Group" } th scope="col" { "Devices" }
                        th scope="col" { "Default plan" } th scope="col" { "Joiners" }
                        th scope="col" { "Enrollment token" }
                    } }
                    tbody {
                        @for g in groups {
                            tr data-group=(g.name) {
                                th scope="row" { (g.name) }
                                td { a href={ "/devices?group=" (encode_component(&g.name)) } { (g.devices) } }
                                td.plan { (g.default_plan.describe()) }
                                td { @if g.pick_up_joiners { "picked up" } @else { "not picked up" } }
                                td { code { (g.enrollment_token) } }
                            }
                        }
                    }
                }
            }
            section.plans {
                h2 { "Default plans" }
                p.help {
                    "A deployment to a group that names no plan (the new-update form's rollout fields left empty, Deploy to others, "
                    code { "molt deploy" } " without plan flags) takes the group's. Every field empty: all at once. "
                    "A device that joins the group during its latest deployment gets it too, in the last wave, when joiners are picked up."
                }
                @for g in groups {
                    @let edit = editing.filter(|e| e.group == g.name);
                    @let shown = PlanFields::of(&g.default_plan);
                    details.group-plan open[edit.is_some()] {
                        summary { strong { (g.name) } ": " (g.default_plan.describe()) }
                        @if let Some(e) = edit { (layout::notice("error", e.error)) }
                        form.recipe method="post" action="/groups" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            input type="hidden" name="set" value="plan";
                            input type="hidden" name="name" value=(g.name);
                            (layout::plan_fieldset(edit.map_or(&shown, |e| e.fields), &format!("g-{}-", g.name),
                                &format!("Default plan of {}", g.name), "Empty fields take the defaults: one wave of 100%, no gate, no halt."))
                            @let joiners = edit.map_or(g.pick_up_joiners, |e| e.pick_up_joiners);
                            div.check {
                                input id={ "joiners-" (g.name) } type="checkbox" name="pick_up_joiners" value="on" checked[joiners];
                                label for={ "joiners-" (g.name) } { "Devices that join during the latest deployment get it" }
                            }
                            div.submit { button type="submit" { "Save " (g.name) } }
                        }
                    }
                }
            }
        }
        section {
            h2 { "New group" }
            @if let Some(e) = error { (layout::notice("error", e)) }
            form.inline method="post" action="/groups" {
                input type="hidden" name="csrf" value=(session.csrf);
                label for="group-name" { "Name" }
                input #group-name type="text" name="name" value=(name) required maxlength="64"
                    // Browsers compile `pattern` with the `v` flag, under which a
                    // bare `-` in a class is a syntax error (the check then does nothing).
                    pattern="[A-Za-z0-9._\\-]+" title="A-Z, a-z, 0-9, . _ and -";
                button type="submit" { "Create group" }
            }
        }
    };
    layout::page("Groups", Some(session), Nav::Groups, body)
}

/// `?saved=` after a group's default plan was saved.
#[derive(Deserialize)]
pub struct Saved {
    saved: Option<String>,
}

/// `GET /groups`.
pub async fn groups(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<Saved>,
) -> Response {
    match state.db.read(operator_api::groups).await {
        Ok(list) => {
            groups_page(&session, &list, "", None, None, q.saved.as_deref()).into_response()
        }
        Err(e) => layout::error_page(Some(&session), e.status, &e.message),
    }
}

/// The groups page's forms: a new group (`name`), or with `set=plan` a group's
/// default plan and whether it picks up joiners.
#[derive(Deserialize)]
pub struct GroupForm {
    csrf: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    set: String,
    #[serde(default)]
    pick_up_joiners: String,
    #[serde(flatten)]
    plan: PlanFields,
}

async fn group_list(state: &AppState) -> Vec<Group> {
    state
        .db
        .read(operator_api::groups)
        .await
        .unwrap_or_default()
}

/// `POST /groups`: creates the group, or sets a group's default plan, through the
/// API's own functions (the plan checked as `PATCH /groups/{name}` checks it).
pub async fn create_group(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<GroupForm>,
) -> Response {
    if let Err(e) = session.check_token(form.csrf.as_deref()) {
        return session::refused(Some(&session), &e);
    }
    if form.set == "plan" {
        return set_plan(state, session, form).await;
    }
    let name = form.name.trim().to_owned();
    match operator_api::new_group(&state, name.clone()).await {
        Ok(_) => Redirect::to("/groups").into_response(),
        Err(e) => {
            let list = group_list(&state).await;
            (
                e.status,
                groups_page(&session, &list, &name, Some(&e.message), None, None),
            )
                .into_response()
        }
    }
}

/// A group's default plan and joiners; the page again with the form as typed on a refusal.
async fn set_plan(state: AppState, session: Session, form: GroupForm) -> Response {
    let joiners = form.pick_up_joiners == "on";
    let saved = match form.plan.plan() {
        Err(e) => Err(AppError::bad_request(e)),
        Ok(plan) => {
            let patch = GroupPatch {
                default_plan: Some(plan.unwrap_or_default()),
                pick_up_joiners: Some(joiners),
            };
            let name = form.name.clone();
            state
                .db
                .write(move |tx| operator_api::patch_group_in(tx, &name, &patch))
                .await
                .map(|_| ())
        }
    };
    match saved {
        Ok(()) => {
            Redirect::to(&format!("/groups?saved={}", encode_component(&form.name))).into_response()
        }
        Err(e) => {
            let list = group_list(&state).await;
            let message = format!("group `{}`: {}", form.name, e.message);
            let editing = Editing {
                group: &form.name,
                fields: &form.plan,
                pick_up_joiners: joiners,
                error: &message,
            };
            (
                e.status,
                groups_page(&session, &list, "", None, Some(&editing), None),
            )
                .into_response()
        }
    }
}

/// `?group=` of the devices page, and `?removed=` after a removal.
#[derive(Deserialize)]
pub struct DeviceFilter {
    group: Option<String>,
    removed: Option<String>,
}

/// The remove form: the token, and `confirmed=yes` once the operator confirmed
/// (app.js adds it after `confirm()`; without JavaScript a confirmation page asks).
#[derive(Deserialize)]
pub struct RemoveForm {
    csrf: Option<String>,
    confirmed: Option<String>,
}

/// `POST /devices/{id}/remove`: post/redirect/get back to the device list.
pub async fn remove_device(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<RemoveForm>,
) -> Response {
    if let Err(e) = session.check_token(form.csrf.as_deref()) {
        return session::refused(Some(&session), &e);
    }
    if form.confirmed.as_deref() != Some("yes") {
        let ask = layout::Ask {
            question: html! { "Remove device " code { (id) } "?" },
            effect: "Its credential is refused from then on, its unfinished deployments are cancelled, and it leaves every list. Past deployments keep its rows.",
            action: format!("/devices/{id}/remove"),
            yes: "Yes, remove",
            back: "/devices".to_owned(),
        };
        return layout::confirm_page(&session, "Remove?", Nav::Devices, ask);
    }
    match operator_api::remove(&state, id).await {
        Ok(r) => Redirect::to(&format!("/devices?removed={}", encode_component(&r.device)))
            .into_response(),
        Err(e) => layout::error_page(Some(&session), e.status, &e.message),
    }
}

/// `GET /devices`.
pub async fn devices(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<DeviceFilter>,
) -> Response {
    let interval = state.poll_interval;
    let group = q.group.filter(|g| !g.is_empty());
    let g = group.clone();
    if let Err(e) = state.flush_seen().await {
        return layout::error_page(Some(&session), e.status, &e.message);
    }
    let listed = state
        .db
        .read(move |tx| {
            let groups = operator_api::groups(tx)?;
            let devices = operator_api::devices(tx, g.as_deref(), interval)?;
            Ok::<_, AppError>((groups, devices))
        })
        .await;
    let (groups, devices) = match listed {
        Ok(v) => v,
        Err(e) => return layout::error_page(Some(&session), e.status, &e.message),
    };
    let body = html! {
        h1 { "Devices" }
        @if let Some(r) = &q.removed {
            p.notice.ok role="status" { "Device " code { (r) } " removed: its credential is refused from now on." }
        }
        form.inline method="get" action="/devices" {
            label for="filter" { "Group" }
            select #filter name="group" {
                option value="" { "All groups" }
                @for g in &groups {
                    option value=(g.name) selected[group.as_deref() == Some(g.name.as_str())] { (g.name) }
                }
            }
            button type="submit" { "Show" }
        }
        @if devices.is_empty() {
            p.empty { "No devices enrolled" @if let Some(g) = &group { " in " (g) } "." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Device" } th scope="col" { "Group" } th scope="col" { "Status" }
                    th scope="col" { "Active version" } th scope="col" { "Agent version" }
                    th scope="col" { "Hardware" } th scope="col" { "Last seen" }
                    th scope="col" { span.visually-hidden { "Remove" } }
                } }
                tbody {
                    @for d in &devices {
                        tr {
                            th scope="row" { (d.name) br; small.muted { code { (d.id) } } }
                            td { (d.group) }
                            td { (badge(&d.status)) }
                            td { (d.active_version) }
                            td { (d.agent_version) }
                            td { code { (d.compatible) } }
                            td { @match &d.last_seen { Some(t) => (layout::time(t)), None => span.muted { "never" } } }
                            td {
                                form.inline method="post" action={ "/devices/" (d.id) "/remove" }
                                    data-confirm={ "Remove device " (d.name) " (" (d.id) ")? Its credential is refused from then on and what it has not started is cancelled." } {
                                    input type="hidden" name="csrf" value=(session.csrf);
                                    button.danger.small type="submit" { "Remove" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    (
        StatusCode::OK,
        layout::page("Devices", Some(&session), Nav::Devices, body),
    )
        .into_response()
}
