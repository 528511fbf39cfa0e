//! The page shell every web UI page shares (head, navigation, logout), error pages, and small renderers used by several pages: state badges, counts, sizes, times.
//!
//! maud escapes every interpolated value, so names, comments and logs that
//! devices or operators chose are shown as text, never as markup.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::session::Session;
use molt_api::plan::{parse_waves, RolloutPlan};
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

/// The optional rollout-plan fields of a form (new update, deploy to others, a
/// group's default plan), as typed, so a refused form comes back unchanged. Read
/// with molt-api's own parsers and [`RolloutPlan::check`]: the web UI, the CLI and
/// the API accept the same plans.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct PlanFields {
    /// `1%,10%,100%`.
    pub plan_waves: String,
    /// Device names or ids, comma separated.
    pub plan_canaries: String,
    /// `95%` or `95`.
    pub plan_success: String,
    /// `10m`.
    pub plan_soak: String,
    /// `2` or `5%`.
    pub plan_halt_at: String,
    /// `overall` (also when empty) or `wave`.
    pub plan_halt_scope: String,
    /// `on` when ticked.
    pub plan_abort_in_flight: String,
}

impl PlanFields {
    /// Sets the field `name` (a multipart form's part); false for a name that is not one.
    pub fn set(&mut self, name: &str, value: String) -> bool {
        let slot = match name {
            "plan_waves" => &mut self.plan_waves,
            "plan_canaries" => &mut self.plan_canaries,
            "plan_success" => &mut self.plan_success,
            "plan_soak" => &mut self.plan_soak,
            "plan_halt_at" => &mut self.plan_halt_at,
            "plan_halt_scope" => &mut self.plan_halt_scope,
            "plan_abort_in_flight" => &mut self.plan_abort_in_flight,
            _ => return false,
        };
        *slot = value;
        true
    }

    /// The fields that show `plan` (a group's default plan, to edit).
    pub fn of(plan: &RolloutPlan) -> PlanFields {
        if plan.is_default() {
            return PlanFields::default();
        }
        let waves: Vec<String> = plan.waves.iter().map(ToString::to_string).collect();
        PlanFields {
            plan_waves: waves.join(","),
            plan_canaries: plan.canaries.join(", "),
            plan_success: match plan.success_percent {
                0 => String::new(),
                p => format!("{p}%"),
            },
            plan_soak: match plan.soak_secs {
                0 => String::new(),
                s => humantime::format_duration(std::time::Duration::from_secs(s)).to_string(),
            },
            plan_halt_at: plan.halt_at.map(|t| t.to_string()).unwrap_or_default(),
            plan_halt_scope: match plan.halt_scope {
                molt_api::plan::HaltScope::Wave => "wave".into(),
                molt_api::plan::HaltScope::Overall => String::new(),
            },
            plan_abort_in_flight: if plan.abort_in_flight {
                "on".into()
            } else {
                String::new()
            },
        }
    }

    /// The plan the fields give, `None` when every field is empty (the group's
    /// default plan then applies). The error names the field and quotes what was
    /// typed.
    pub fn plan(&self) -> Result<Option<RolloutPlan>, String> {
        let scope = self.plan_halt_scope.trim();
        let typed = [
            &self.plan_waves,
            &self.plan_canaries,
            &self.plan_success,
            &self.plan_soak,
            &self.plan_halt_at,
        ]
        .iter()
        .any(|v| !v.trim().is_empty());
        let ticked = !self.plan_abort_in_flight.is_empty();
        if !typed && !ticked && matches!(scope, "" | "overall") {
            return Ok(None);
        }
        let field = |name: &str, e: String| format!("rollout plan, {name}: {e}");
        let mut p = RolloutPlan::default();
        let waves = self.plan_waves.trim();
        if !waves.is_empty() {
            p.waves = parse_waves(waves).map_err(|e| field("waves", e))?;
        }
        p.canaries = self
            .plan_canaries
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        let success = self.plan_success.trim();
        if !success.is_empty() {
            let digits = success.strip_suffix('%').unwrap_or(success).trim_end();
            p.success_percent = match digits.parse::<u8>() {
                Ok(n) if digits.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(field(
                        "success",
                        format!("{success:?}: a share from 0% to 100%"),
                    ))
                }
            };
        }
        let soak = self.plan_soak.trim();
        if !soak.is_empty() {
            p.soak_secs = humantime::parse_duration(soak)
                .map(|d| d.as_secs())
                .map_err(|e| {
                    field(
                        "soak",
                        format!("{soak:?}: {e} (write it like 30s, 10m or 1h)"),
                    )
                })?;
        }
        let halt = self.plan_halt_at.trim();
        if !halt.is_empty() {
            p.halt_at = Some(halt.parse().map_err(|e| field("halt at", e))?);
        }
        if !scope.is_empty() {
            p.halt_scope = scope.parse().map_err(|e| field("halt scope", e))?;
        }
        p.abort_in_flight = ticked;
        p.check().map_err(|e| format!("rollout plan, {e}"))?;
        Ok(Some(p))
    }
}

/// The rollout-plan fields as a fieldset headed `legend`, `help` under it; element
/// ids start with `prefix` (a page with several of these forms keeps them unique).
pub fn plan_fieldset(p: &PlanFields, prefix: &str, legend: &str, help: &str) -> Markup {
    let text = |name: &str, label: &str, value: &str, hint: &str, example: &str| {
        let id = format!("{prefix}{name}");
        html! {
            div.field {
                label for=(id) { (label) }
                input id=(id) type="text" name=(name) value=(value) placeholder=(example)
                    aria-describedby={ (id) "-help" };
                p.help id={ (id) "-help" } { (hint) }
            }
        }
    };
    let scope = format!("{prefix}plan_halt_scope");
    let abort = format!("{prefix}plan_abort_in_flight");
    html! {
        fieldset.plan {
            legend { (legend) }
            p.help { (help) }
            div.row3 {
                (text("plan_waves", "Waves", &p.plan_waves, "Cumulative shares or counts, ending at 100%.", "1%,10%,100%"))
                (text("plan_canaries", "Canaries", &p.plan_canaries, "Device names or ids, comma separated: a first wave of their own.", "gw-lab-1, gw-lab-2"))
                (text("plan_success", "Success %", &p.plan_success, "A finished wave's share of successes before the next; below it, a halt.", "95%"))
                (text("plan_soak", "Soak", &p.plan_soak, "Wait after a wave's last success; a failure still counts.", "10m"))
                (text("plan_halt_at", "Halt at", &p.plan_halt_at, "Failures (2) or a share of them (5%).", "2"))
                div.field {
                    label for=(scope) { "Halt scope" }
                    select id=(scope) name="plan_halt_scope" {
                        option value="overall" selected[p.plan_halt_scope != "wave"] { "Overall: the whole deployment" }
                        option value="wave" selected[p.plan_halt_scope == "wave"] { "Wave: the wave in progress" }
                    }
                }
            }
            div.check {
                input id=(abort) type="checkbox" name="plan_abort_in_flight" value="on"
                    checked[!p.plan_abort_in_flight.is_empty()];
                label for=(abort) { "On a halt, abort the devices still installing" }
            }
        }
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
    fn plan_fields_read_as_the_cli_reads_its_flags() {
        assert_eq!(PlanFields::default().plan(), Ok(None));
        let typed = PlanFields {
            plan_waves: " 1%, 10%,100% ".into(),
            plan_canaries: "gw-1, ,gw-2".into(),
            plan_success: "95%".into(),
            plan_soak: "10m".into(),
            plan_halt_at: "2".into(),
            plan_halt_scope: "wave".into(),
            plan_abort_in_flight: "on".into(),
        };
        let p = typed.plan().unwrap().unwrap();
        assert_eq!(p.canaries, ["gw-1", "gw-2"]);
        assert_eq!((p.success_percent, p.soak_secs), (95, 600));
        // A stored plan shows as fields that read back the same.
        assert_eq!(PlanFields::of(&p).plan().unwrap().as_ref(), Some(&p));
        assert!(PlanFields::of(&RolloutPlan::default())
            .plan()
            .unwrap()
            .is_none());
        for (f, says) in [
            (
                PlanFields {
                    plan_waves: "10%,0%".into(),
                    ..Default::default()
                },
                "waves: \"0%\"",
            ),
            (
                PlanFields {
                    plan_waves: "50%".into(),
                    ..Default::default()
                },
                "waves: the last wave",
            ),
            (
                PlanFields {
                    plan_success: "101%".into(),
                    ..Default::default()
                },
                "success_percent: 101",
            ),
            (
                PlanFields {
                    plan_success: "-1".into(),
                    ..Default::default()
                },
                "success: \"-1\"",
            ),
            (
                PlanFields {
                    plan_soak: "soon".into(),
                    ..Default::default()
                },
                "soak: \"soon\"",
            ),
            (
                PlanFields {
                    plan_halt_at: "0".into(),
                    ..Default::default()
                },
                "halt at: \"0\"",
            ),
            (
                PlanFields {
                    plan_halt_scope: "group".into(),
                    ..Default::default()
                },
                "halt scope: \"group\"",
            ),
        ] {
            let e = f.plan().unwrap_err();
            assert!(e.starts_with("rollout plan, ") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn interpolated_text_is_escaped() {
        let html = notice("error", "<script>alert(1)</script>").into_string();
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
    }
}
