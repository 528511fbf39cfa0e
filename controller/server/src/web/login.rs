//! The login page (the operator token in, a session cookie out) and logout.

use axum::extract::{Query, State};
use axum::http::header::SET_COOKIE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::html;
use serde::Deserialize;

use super::super::auth::hash;
use super::super::AppState;
use super::layout::{self, Nav};
use super::session::{self, safe_next, Session, Transport};

/// `?next=` of the login page.
#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// The login form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

fn login_page(next: &str, error: Option<&str>) -> maud::Markup {
    let body = html! {
        section.login {
            h1 { "Log in" }
            @if let Some(e) = error { (layout::notice("error", e)) }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(next);
                label for="token" { "Operator token" }
                input #token type="password" name="token" required autocomplete="current-password"
                    autofocus aria-describedby="token-help";
                p.help #token-help {
                    "The token in the controller's data directory ("
                    code { "operator-token" } "), also used by the "
                    code { "molt" } " command line."
                }
                button type="submit" { "Log in" }
            }
        }
    };
    layout::page("Log in", None, Nav::None, body)
}

/// `GET /login`: the form, or straight on when already logged in.
pub async fn show(session: Option<Session>, Query(q): Query<Next>) -> Response {
    let next = safe_next(q.next.as_deref());
    if session.is_some() {
        return Redirect::to(next).into_response();
    }
    login_page(next, None).into_response()
}

/// `POST /login`: a right token starts a session; a wrong one is a 401 with the form again.
pub async fn submit(
    State(state): State<AppState>,
    transport: Option<Extension<Transport>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref()).to_owned();
    // The same comparison as the API's bearer check (constant-time hash equality).
    if hash(form.token.trim()) != state.operator_hash {
        tracing::warn!("web UI: login with a wrong operator token refused");
        return (
            StatusCode::UNAUTHORIZED,
            login_page(&next, Some("That is not the operator token.")),
        )
            .into_response();
    }
    let transport = transport.map(|Extension(t)| t).unwrap_or_default();
    match session::create(&state, transport).await {
        Ok(cookie) => ([(SET_COOKIE, cookie)], Redirect::to(&next)).into_response(),
        Err(e) => layout::error_page(None, e.status, &e.message),
    }
}

/// The logout form's field.
#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: Option<String>,
}

/// `POST /logout`: ends the session and clears the cookie.
pub async fn logout(
    State(state): State<AppState>,
    session: Session,
    transport: Option<Extension<Transport>>,
    Form(form): Form<LogoutForm>,
) -> Response {
    if let Err(e) = session.check_token(form.csrf.as_deref()) {
        return session::refused(Some(&session), &e);
    }
    let transport = transport.map(|Extension(t)| t).unwrap_or_default();
    match session::end(&state, &session, transport).await {
        Ok(cookie) => ([(SET_COOKIE, cookie)], Redirect::to("/login")).into_response(),
        Err(e) => layout::error_page(Some(&session), e.status, &e.message),
    }
}
