//! The page shell every web UI page shares (head, navigation, logout), error pages, and small renderers used by several pages: state badges, counts, sizes, times.
//!
//! maud escapes every interpolated value, so names, comments and logs that
//! devices or operators chose are shown as text, never as markup.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::session::Session;
use molt_api::{Counts, DeviceState};

/// The navigation entries; `Nav::None` highlights nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// Recent updates (`/`).
    Updates,
    /// New update.
    NewUpdate,
    /// Groups.
    Groups,
    /// Devices.
    Devices,
    /// None of them.
    None,
}

/// What a confirmation page asks before a destructive form post.
pub struct Ask<'a> {
    /// The heading: the question.
    pub question: Markup,
    /// What happens once confirmed.
    pub effect: &'a str,
    /// Where the form posts again, confirmed.
    pub action: String,
    /// The button's label.
    pub yes: &'a str,
    /// Where "No, go back" leads.
    pub back: String,
}

/// The page that asks before a destructive form post sent without JavaScript (app.js
/// asks with `confirm()` and adds `confirmed=yes` itself): the question, what happens,
/// and a button that posts the form again with the session's token and `confirmed=yes`.
pub fn confirm_page(session: &Session, title: &str, nav: Nav, ask: Ask<'_>) -> Response {
    let body = html! {
        h1 { (ask.question) }
        p { (ask.effect) }
        form.inline method="post" action=(ask.action) {
            input type="hidden" name="csrf" value=(session.csrf);
            input type="hidden" name="confirmed" value="yes";
            button.danger type="submit" { (ask.yes) }
            a href=(ask.back) { "No, go back" }
        }
    };
    page(title, Some(session), nav, body).into_response()
}

/// A whole page: `title`, the navigation when logged in, and `body`.
pub fn page(title: &str, session: Option<&Session>, nav: Nav, body: Markup) -> Markup {
    let link = |href: &str, label: &str, me: Nav| {
        html! {
            a href=(href) aria-current=[(nav == me).then_some("page")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · molt" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "molt" }
                    @if let Some(s) = session {
                        nav aria-label="Main" {
                            (link("/", "Recent updates", Nav::Updates))
                            (link("/updates/new", "New update", Nav::NewUpdate))
                            (link("/groups", "Groups", Nav::Groups))
                            (link("/devices", "Devices", Nav::Devices))
                        }
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button.link type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// A message box: `kind` is `error` or `ok`.
pub fn notice(kind: &str, text: &str) -> Markup {
    let role = if kind == "error" { "alert" } else { "status" };
    html! { p class={ "notice " (kind) } role=(role) { (text) } }
}

/// An error page with `status`.
pub fn error_page(session: Option<&Session>, status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        h1 { (title) }
        (notice("error", message))
        p { a href="/" { "Back to recent updates" } }
    };
    (status, page(title, session, Nav::None, body)).into_response()
}

/// A device or deployment state as a coloured badge.
pub fn badge(state: &str) -> Markup {
    let label = state.replace('_', " ");
    html! { span class={ "badge s-" (state) } { (label) } }
}

/// The non-zero per-state counts of a deployment, as small badges.
pub fn counts(c: &Counts) -> Markup {
    html! {
        span.counts {
            @for s in DeviceState::ALL.iter() {
                @let n = c.get(*s);
                @if n > 0 {
                    @let name = s.name();
                    span class={ "count s-" (name) } title=(name.replace('_', " ")) {
                        (n) " " (name.replace('_', " "))
                    }
                }
            }
        }
    }
}

/// An RFC 3339 time, shown without the `T` and with its zone spelled out.
pub fn time(rfc3339: &str) -> Markup {
    let shown = rfc3339.replacen('T', " ", 1).replace('Z', " UTC");
    html! { time datetime=(rfc3339) { (shown) } }
}

/// A byte count for people (`4.0 MiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `text` cut to at most `chars` characters and `lines` lines, with `…` where it
/// was cut, and whether it was.
pub fn clip(text: &str, chars: usize, lines: usize) -> (String, bool) {
    let mut out = String::new();
    let mut cut = false;
    for (i, line) in text.lines().enumerate() {
        if i == lines {
            cut = true;
            break;
        }
        if i > 0 {
            out.push('\n');
        }
        out.push_str(line);
    }
    if out.chars().count() > chars {
        out = out.chars().take(chars).collect();
        cut = true;
    }
    if cut {
        out.push('…');
    }
    (out, cut)
}

/// `1 device`, `3 devices`.
pub fn devices_count(n: u64) -> String {
    if n == 1 {
        "1 device".to_owned()
    } else {
        format!("{n} devices")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clips_long_and_tall_text() {
        assert_eq!(super::clip("short", 10, 3), ("short".to_owned(), false));
        assert_eq!(super::clip("abcdef", 3, 3), ("abc…".to_owned(), true));
        assert_eq!(
            super::clip("1\n2\n3\n4", 99, 3),
            ("1\n2\n3…".to_owned(), true)
        );
    }

    use super::*;

    #[test]
    fn sizes_and_states_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(4 << 20), "4.0 MiB");
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn interpolated_text_is_escaped() {
        let html = notice("error", "<script>alert(1)</script>").into_string();
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
    }
}
