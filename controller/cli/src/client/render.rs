//! What the remote commands print: aligned tables, times as people read them, and one-line summaries of what the controller did.

use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use molt_engine::protocol::DeviceState;
use molt_engine::text::Escaped;

use molt_api::{
    AbortResult, Counts, Deployment, DeploymentDetails, Device, DeviceDetails, Group, Rollout,
    Update,
};
use molt_bundle::inspect::human;

/// Lays out rows under a header, columns padded to their widest cell (the last column
/// is not padded, so lines carry no trailing blanks). Cells hold what devices and
/// operators named things: each is escaped to one line (molt_engine::text), so no
/// name can forge a row or reach the terminal as a control sequence.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| Escaped::new(c).to_string()).collect())
        .collect();
    let rows = &rows[..];
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(cols) {
            if i + 1 == cols {
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Cuts `s` to `max` characters, marking the cut with `…`; one line only.
pub fn shorten(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    let cut = line.chars().count() > max || s.lines().nth(1).is_some();
    if !cut {
        return line.to_owned();
    }
    let mut out: String = line.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Parses the API's RFC 3339 UTC times (`2026-11-26T10:00:00Z`, fractions and `+00:00`
/// allowed) into Unix seconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let (utc, offset) = split_offset(s)?;
    let t = humantime::parse_rfc3339_weak(utc).ok()?;
    let secs = i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()?;
    Some(secs - offset)
}

/// `s` without its zone, and the zone's offset from UTC in seconds: humantime reads
/// UTC times only, and the controller writes `Z`, but RFC 3339 allows `±hh:mm`.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    if let Some(utc) = s.strip_suffix(['Z', 'z']) {
        return Some((utc, 0));
    }
    let at = s.len().checked_sub(6)?;
    let (time, zone) = (s.get(..at)?, s.get(at..)?.as_bytes());
    let sign = match zone {
        [b'+', _, _, b':', _, _] => 1,
        [b'-', _, _, b':', _, _] => -1,
        _ => return None,
    };
    let num = |d: &[u8]| -> Option<i64> { std::str::from_utf8(d).ok()?.parse().ok() };
    let (h, m) = (num(zone.get(1..3)?)?, num(zone.get(4..6)?)?);
    Some((time, sign * (h * 3600 + m * 60)))
}

/// An API time as `2026-11-26 10:00:00` (UTC), or the text as it came if it does not parse.
pub fn show_time(s: &str) -> String {
    match parse_time(s) {
        Some(t) if t >= 0 => molt_bundle::inspect::utc(t as u64)
            .trim_end_matches(" UTC")
            .to_owned(),
        _ => s.to_owned(),
    }
}

/// How long ago `s` was, seen at `now` (Unix seconds): `12s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn ago(s: &str, now: i64) -> String {
    let Some(t) = parse_time(s) else {
        return s.to_owned();
    };
    let d = now - t;
    if d < 0 {
        return "just now".to_owned();
    }
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86_400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86_400),
    }
}

/// The non-zero counts in display order: `2 success, 1 installing`; `no devices` for none.
pub fn counts_text(c: &Counts) -> String {
    let parts: Vec<String> = DeviceState::ALL
        .iter()
        .filter(|s| c.get(**s) > 0)
        .map(|s| format!("{} {}", c.get(*s), s.name()))
        .collect();
    if parts.is_empty() {
        "no devices".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The table of `items`, a row each by `row`, under `header`; `none` instead when there
/// are no items (a line that says how to make the first one).
fn table_or<T>(
    items: &[T],
    none: &str,
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> String {
    if items.is_empty() {
        return none.to_owned();
    }
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    table(header, &rows)
}

/// A deployment's state for people: `in progress` rather than `in_progress`.
fn state_word(state: &str) -> String {
    state.replace('_', " ")
}

/// `molt groups`.
pub fn groups_table(groups: &[Group]) -> String {
    table_or(
        groups,
        "no groups yet: molt groups create NAME\n",
        &["GROUP", "DEVICES", "ENROLLMENT TOKEN", "DEFAULT PLAN"],
        |g| {
            vec![
                g.name.clone(),
                g.devices.to_string(),
                g.enrollment_token.clone(),
                g.default_plan.describe(),
            ]
        },
    )
}

/// What `molt groups set` leaves a group with.
pub fn group_settings(g: &Group) -> String {
    format!(
        "group {}: default plan {}; devices that join it {}\n",
        Escaped::new(&g.name),
        g.default_plan.describe(),
        if g.pick_up_joiners {
            "get its latest deployment"
        } else {
            "wait for the next deployment"
        }
    )
}

/// `molt devices`; `now` in Unix seconds for "last seen".
pub fn devices_table(devices: &[Device], now: i64) -> String {
    table_or(
        devices,
        "no devices (a device joins with its group's enrollment token: molt groups)\n",
        &[
            "ID",
            "NAME",
            "GROUP",
            "STATUS",
            "ACTIVE",
            "AGENT",
            "LAST SEEN",
        ],
        |d| {
            vec![
                d.id.clone(),
                d.name.clone(),
                d.group.clone(),
                d.status.clone(),
                d.active_version.clone(),
                d.agent_version.clone(),
                d.last_seen
                    .as_deref()
                    .map_or("never".to_owned(), |t| ago(t, now)),
            ]
        },
    )
}

/// `molt devices show DEVICE`: the device, then one line per deployment it took.
pub fn device_details(d: &DeviceDetails, now: i64) -> String {
    let v = &d.device;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "device   {} ({})",
        Escaped::new(&v.name),
        Escaped::new(&v.id)
    );
    let _ = writeln!(out, "group    {}", Escaped::new(&v.group));
    let _ = writeln!(out, "status   {}", Escaped::new(&v.status));
    let _ = writeln!(out, "hardware {}", Escaped::new(&v.compatible));
    let _ = writeln!(out, "agent    {}", Escaped::new(&v.agent_version));
    let _ = writeln!(out, "active   {}", Escaped::new(&v.active_version));
    let _ = writeln!(
        out,
        "inactive {}",
        v.inactive_version
            .as_deref()
            .map_or("none (no snapshot to roll back to)".to_owned(), |i| {
                Escaped::new(i).to_string()
            })
    );
    let _ = writeln!(
        out,
        "seen     {}",
        v.last_seen
            .as_deref()
            .map_or("never".to_owned(), |t| ago(t, now))
    );
    out.push('\n');
    if d.deployments.is_empty() {
        out.push_str("no deployments yet\n");
        return out;
    }
    let rows: Vec<Vec<String>> = d
        .deployments
        .iter()
        .map(|t| {
            vec![
                t.deployment.to_string(),
                t.version.clone(),
                t.state.name().to_owned(),
                if t.phase.is_empty() {
                    "-".to_owned()
                } else {
                    t.phase.clone()
                },
                show_time(&t.updated),
                t.message
                    .as_deref()
                    .map_or(String::new(), |m| shorten(m, 60)),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "DEPLOYMENT",
            "VERSION",
            "STATE",
            "PHASE",
            "UPDATED",
            "MESSAGE",
        ],
        &rows,
    ));
    out.push_str(&format!(
        "its log of a deployment: molt logs DEPLOYMENT {}\n",
        Escaped::new(&v.id)
    ));
    out
}

/// `molt updates`.
pub fn updates_table(updates: &[Update]) -> String {
    table_or(
        updates,
        "no updates yet: molt update push BUNDLE|RECIPE\n",
        &[
            "ID",
            "VERSION",
            "KIND",
            "COMPATIBLE",
            "SIZE",
            "CREATED",
            "USED BY",
            "COMMENT",
        ],
        |u| {
            let used: Vec<String> = u.deployments.iter().map(u64::to_string).collect();
            vec![
                u.id.to_string(),
                u.version.clone(),
                u.kind.clone(),
                u.compatible.clone(),
                human(u.size),
                show_time(&u.created),
                if used.is_empty() {
                    "-".to_owned()
                } else {
                    used.join(",")
                },
                shorten(&u.comment, 40),
            ]
        },
    )
}

/// The target column: the group, or `(devices)` for a device list.
fn target(d: &Deployment) -> String {
    if d.group.is_empty() {
        "(devices)".to_owned()
    } else {
        d.group.clone()
    }
}

/// `molt status`: recent updates, the web UI's table.
pub fn deployments_table(deployments: &[Deployment]) -> String {
    table_or(
        deployments,
        "no deployments yet: molt deploy UPDATE --group GROUP\n",
        &[
            "DEPLOYMENT",
            "VERSION",
            "GROUP",
            "STATUS",
            "CREATED",
            "COMMENT",
        ],
        |d| {
            vec![
                d.id.to_string(),
                d.version.clone(),
                target(d),
                format!("{} ({})", state_word(&d.state), counts_text(&d.counts)),
                show_time(&d.created),
                shorten(&d.comment, 40),
            ]
        },
    )
}

/// A device's progress: `45%` of the download, or `-`.
fn percent(p: Option<molt_engine::protocol::Progress>) -> String {
    match p {
        Some(p) if p.total > 0 => format!("{}%", p.done.saturating_mul(100) / p.total),
        _ => "-".to_owned(),
    }
}

/// `molt status DEPLOYMENT`: the deployment and one line per device.
pub fn deployment_details(d: &DeploymentDetails) -> String {
    let dep = &d.deployment;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "deployment {}: update {} (version {}) to {}",
        dep.id,
        dep.update,
        Escaped::new(&dep.version),
        if dep.group.is_empty() {
            "a list of devices".to_owned()
        } else {
            format!("group {}", Escaped::new(&dep.group))
        }
    );
    let _ = writeln!(
        out,
        "status   {} ({})",
        state_word(&dep.state),
        counts_text(&dep.counts)
    );
    let _ = writeln!(
        out,
        "created  {} by {}",
        show_time(&dep.created),
        Escaped::new(&dep.created_by)
    );
    if !dep.comment.is_empty() {
        let _ = writeln!(out, "comment  {}", Escaped::new(&dep.comment));
    }
    let phased = !dep.rollout.plan.is_default();
    if let Some(r) = rollout_text(&dep.rollout) {
        let _ = writeln!(out, "rollout  {r}");
    }
    if let Some(why) = &dep.rollout.halted {
        let _ = writeln!(
            out,
            "halted   {}\n         molt resume {} (or molt abort {})",
            Escaped::new(why),
            dep.id,
            dep.id
        );
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = d
        .devices
        .iter()
        .map(|v| {
            let wave = phased.then(|| v.wave.to_string());
            wave.into_iter()
                .chain([
                    v.id.clone(),
                    v.name.clone(),
                    v.state.name().to_owned(),
                    if v.phase.is_empty() {
                        "-".to_owned()
                    } else {
                        v.phase.clone()
                    },
                    percent(v.progress),
                    v.message
                        .as_deref()
                        .map_or(String::new(), |m| shorten(m, 80)),
                ])
                .collect()
        })
        .collect();
    let headers = [
        "WAVE", "DEVICE", "NAME", "STATE", "PHASE", "PROGRESS", "MESSAGE",
    ];
    out.push_str(&table(&headers[usize::from(!phased)..], &rows));
    out
}

/// Where a phased deployment stands ([`Rollout::summary`]), with the soak's end in
/// this machine's time; `None` for a deployment to every device at once.
pub fn rollout_text(r: &Rollout) -> Option<String> {
    let mut text = r.summary()?;
    if let Some(until) = &r.soak_until {
        let _ = write!(text, ", ends {}", show_time(until));
    }
    Some(text)
}

/// One line for a deployment just made: `deployment 7: version 1.5.0 to group test, 2 devices pending`.
pub fn deployment_made(d: &Deployment) -> String {
    let to = if d.group.is_empty() {
        "the listed devices".to_owned()
    } else {
        format!("group {}", Escaped::new(&d.group))
    };
    let mut line = format!(
        "deployment {}: update {} (version {}) to {to}, {} device(s): {}",
        d.id,
        d.update,
        Escaped::new(&d.version),
        d.counts.total(),
        counts_text(&d.counts)
    );
    if let Some(r) = rollout_text(&d.rollout) {
        let _ = write!(line, "\n  {r}");
    }
    if let Some(why) = &d.rollout.halted {
        let _ = write!(line, "\n  halted: {}", Escaped::new(why));
    }
    line
}

/// `molt abort`'s report; `names` maps device ids to names where known.
pub fn abort_report(r: &AbortResult, names: &dyn Fn(&str) -> Option<String>) -> String {
    let who = |id: &str| match names(id) {
        Some(n) if n != id => format!("{} ({})", Escaped::new(&n), Escaped::new(id)),
        _ => Escaped::new(id).to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "deployment {}: {} device(s) aborted, {} not",
        r.deployment,
        r.aborted.len(),
        r.not_aborted.len()
    );
    for id in &r.aborted {
        let _ = writeln!(out, "  aborted      {}", who(id));
    }
    for n in &r.not_aborted {
        let _ = writeln!(
            out,
            "  not aborted  {}: {} ({})",
            who(&n.device),
            Escaped::new(&n.reason),
            n.state.name()
        );
    }
    if !r.aborted.is_empty() {
        out.push_str(
            "pending devices stop at once; devices already installing get the abort on their \
             next poll and report `aborted` (or `success` if they committed first)\n",
        );
    }
    out
}

/// `molt update push`'s line for the stored update.
pub fn update_made(u: &Update) -> String {
    format!(
        "update {}: version {} ({}, {}) for {}",
        u.id,
        Escaped::new(&u.version),
        Escaped::new(&u.kind),
        human(u.size),
        Escaped::new(&u.compatible)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_api::NotAborted;

    #[test]
    fn times_parse_and_show() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2026-11-26T10:00:00Z"), Some(1_795_687_200));
        assert_eq!(
            parse_time("2026-11-26T10:00:00.123456Z"),
            Some(1_795_687_200)
        );
        assert_eq!(parse_time("2026-11-26T11:00:00+01:00"), Some(1_795_687_200));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(
            parse_time("2026-11-26T10:00:00"),
            None,
            "a zone is required"
        );
        assert_eq!(parse_time("2026-11-26T10:00:00é:00"), None);
        assert_eq!(parse_time("ééé"), None);
        assert_eq!(show_time("2026-11-26T10:00:00Z"), "2026-11-26 10:00:00");
        assert_eq!(show_time("soon"), "soon");
        let t = 1_795_687_200;
        assert_eq!(ago("2026-11-26T10:00:00Z", t + 5), "5s ago");
        assert_eq!(ago("2026-11-26T10:00:00Z", t + 300), "5m ago");
        assert_eq!(ago("2026-11-26T10:00:00Z", t + 7300), "2h ago");
        assert_eq!(ago("2026-11-26T10:00:00Z", t + 86_400 * 3), "3d ago");
    }

    fn deployment(counts: Counts) -> Deployment {
        Deployment {
            id: 7,
            update: 3,
            version: "1.5.0".into(),
            group: "test".into(),
            state: "in_progress".into(),
            counts,
            created: "2026-11-26T10:00:00Z".into(),
            created_by: "operator".into(),
            comment: "first try".into(),
            rollout: Rollout::default(),
        }
    }

    #[test]
    fn recent_updates_show_per_state_counts() {
        let c = Counts {
            success: 2,
            installing: 1,
            ..Counts::default()
        };
        assert_eq!(counts_text(&c), "1 installing, 2 success");
        assert_eq!(counts_text(&Counts::default()), "no devices");
        let t = deployments_table(&[deployment(c)]);
        let lines: Vec<&str> = t.lines().collect();
        let words: Vec<&str> = lines[0].split("  ").filter(|w| !w.is_empty()).collect();
        assert_eq!(
            words.iter().map(|w| w.trim()).collect::<Vec<_>>(),
            [
                "DEPLOYMENT",
                "VERSION",
                "GROUP",
                "STATUS",
                "CREATED",
                "COMMENT"
            ]
        );
        // Columns line up: each value starts under its heading.
        for (head, value) in [
            ("VERSION", "1.5.0"),
            ("STATUS", "in progress (1 installing, 2 success)"),
            ("CREATED", "2026-11-26 10:00:00"),
            ("COMMENT", "first try"),
        ] {
            assert_eq!(lines[0].find(head), lines[1].find(value), "{t}");
        }
    }

    #[test]
    fn deployment_details_list_every_device() {
        use molt_api::DeploymentDevice;
        let d = DeploymentDetails {
            deployment: deployment(Counts {
                downloading: 1,
                failed: 1,
                ..Counts::default()
            }),
            devices: vec![
                DeploymentDevice {
                    id: "dev_a".into(),
                    name: "gw-1".into(),
                    state: DeviceState::Downloading,
                    phase: "fetching".into(),
                    progress: Some(molt_engine::protocol::Progress {
                        done: 45,
                        total: 100,
                    }),
                    message: None,
                    updated: "2026-11-26T10:00:00Z".into(),
                    wave: 1,
                    failure: None,
                },
                DeploymentDevice {
                    id: "dev_b".into(),
                    name: "gw-2".into(),
                    state: DeviceState::Failed,
                    phase: "after".into(),
                    progress: None,
                    message: Some("after: exit status 3".into()),
                    updated: "2026-11-26T10:00:00Z".into(),
                    wave: 1,
                    failure: None,
                },
            ],
        };
        let text = deployment_details(&d);
        assert!(
            text.starts_with("deployment 7: update 3 (version 1.5.0) to group test\n"),
            "{text}"
        );
        assert!(
            text.contains("status   in progress (1 downloading, 1 failed)"),
            "{text}"
        );
        assert!(text.contains("comment  first try"), "{text}");
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("DEVICE"))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows[1], ["dev_a", "gw-1", "downloading", "fetching", "45%"]);
        assert_eq!(
            rows[2],
            ["dev_b", "gw-2", "failed", "after", "-", "after:", "exit", "status", "3"]
        );
    }

    #[test]
    fn abort_names_devices_and_why_not() {
        let r = AbortResult {
            deployment: 7,
            aborted: vec!["dev_a".into()],
            not_aborted: vec![NotAborted {
                device: "dev_b".into(),
                state: DeviceState::Success,
                reason: "already committed".into(),
            }],
        };
        let names = |id: &str| (id == "dev_a").then(|| "gw-1".to_owned());
        let text = abort_report(&r, &names);
        assert!(
            text.starts_with("deployment 7: 1 device(s) aborted, 1 not\n"),
            "{text}"
        );
        assert!(text.contains("  aborted      gw-1 (dev_a)\n"), "{text}");
        assert!(
            text.contains("  not aborted  dev_b: already committed (success)\n"),
            "{text}"
        );
    }

    #[test]
    fn tables_align_and_carry_no_trailing_blanks() {
        let t = table(
            &["A", "BB", "C"],
            &[
                vec!["xxx".into(), "y".into(), "".into()],
                vec!["1".into(), "22".into(), "3".into()],
            ],
        );
        assert_eq!(t, "A    BB  C\nxxx  y\n1    22  3\n");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("ab\ncd", 10), "ab…");
        assert_eq!(shorten("ab", 10), "ab");
    }
}
