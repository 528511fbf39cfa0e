//! The groups page (with their enrollment tokens and a form to create one) and the devices page (status, active version, agent version, last seen).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::super::error::AppError;
use super::super::operator_api;
use super::super::AppState;
use super::layout::{self, badge, Nav};
use super::session::{self, Session};
use molt_api::encode_component;
use molt_api::Group;

fn groups_page(session: &Session, groups: &[Group], name: &str, error: Option<&str>) -> Markup {
    let body = html! {
        h1 { "Groups" }
        p.lead {
            "Devices enroll into a group with its token ("
            code { "molt-agent enroll --token …" } "); updates are deployed to a group."
        }
        @if groups.is_empty() {
            p.empty { "No groups yet: create one below." }
        } @else {
            table {
                thead { tr { th scope="col" { "Group" } th scope="col" { "Devices" } th scope="col" { "Enrollment token" } } }
                tbody {
                    @for g in groups {
                        tr {
                            th scope="row" { (g.name) }
                            td { a href={ "/devices?group=" (g.name) } { (g.devices) } }
                            td { code { (g.enrollment_token) } }
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

/// `GET /groups`.
pub async fn groups(State(state): State<AppState>, session: Session) -> Response {
    match state.db.read(operator_api::groups).await {
        Ok(list) => groups_page(&session, &list, "", None).into_response(),
        Err(e) => layout::error_page(Some(&session), e.status, &e.message),
    }
}

/// The new-group form.
#[derive(Deserialize)]
pub struct NewGroupForm {
    csrf: Option<String>,
    name: String,
}

/// `POST /groups`: creates the group through the API's own function.
pub async fn create_group(
    State(state): State<AppState>,
    session: Session,
    Form(form): Form<NewGroupForm>,
) -> Response {
    if let Err(e) = session.check_token(form.csrf.as_deref()) {
        return session::refused(Some(&session), &e);
    }
    let name = form.name.trim().to_owned();
    match operator_api::new_group(&state, name.clone()).await {
        Ok(_) => Redirect::to("/groups").into_response(),
        Err(e) => {
            let list = state
                .db
                .read(operator_api::groups)
                .await
                .unwrap_or_default();
            (
                e.status,
                groups_page(&session, &list, &name, Some(&e.message)),
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
