//! The operator API's deployments (docs/api.md): deploy to a group or a device list with a rollout plan, deploy to others, abort, resume after a halt, recent updates, details, per-device logs.
//!
//! A deployment's devices are chosen and written in the transaction that creates
//! it, so a crash can neither leave a deployment without its devices nor give a
//! device the same deployment twice.
//!
//! Each route is a thin handler over a function that takes a transaction
//! ([`create`], [`deploy_to_others_in`], [`abort_in`], [`recent`], [`details_in`],
//! [`log_in`]); the web UI (web/) calls the same functions, so both front ends
//! validate alike and answer with the same messages.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde::Deserialize;

use super::auth::Operator;
use super::db::{now, rfc3339, signed, unsigned};
use super::device_api::{parse_class, parse_state, MAX_LOG};
use super::error::{AppError, JsonBody, PathParams, QueryParams};
use super::gates;
use super::operator_api::{self, group_id};
use super::rollout::{self, AbortAction};
use super::waves::{self, CANARY_WAVE};
use super::AppState;
use molt_api::plan::RolloutPlan;
use molt_api::{
    AbortResult, Counts, DeployToOthers, Deployment, DeploymentDetails, DeploymentDevice,
    DeviceState, NewDeployment, NotAborted, Resume, Rollout,
};
use molt_engine::protocol::{Failure, Progress};

/// Who made a deployment (one operator token for now).
const OPERATOR: &str = "operator";

/// Makes the deployment `req` asks for, each device `pending` in the wave its plan
/// gives it. Without a comment of its own it takes the update's (the recipe's),
/// which is what recent updates should show for it. Unless `again`, a device that
/// an unfinished deployment of the same update already targets makes it a 409: two
/// deploys of one update made every device install it twice.
pub fn create(tx: &Transaction<'_>, req: &NewDeployment) -> Result<Deployment, AppError> {
    let (update, comment) = (req.update, req.comment.as_str());
    let (group, devices) = (req.group.as_deref(), req.devices.as_deref());
    let plan = match (&req.plan, group) {
        (Some(p), _) => p.clone(),
        (None, Some(g)) => operator_api::group(tx, g)?.default_plan,
        (None, None) => RolloutPlan::default(),
    };
    plan.check().map_err(AppError::bad_request)?;
    let uid = signed(update, "update")?;
    let (compatible, update_comment): (String, String) = tx
        .query_row(
            "SELECT compatible, comment FROM updates WHERE id = ?1",
            [uid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .ok_or_else(|| AppError::not_found(format!("update {update} does not exist")))?;
    let comment = if comment.trim().is_empty() {
        update_comment.as_str()
    } else {
        comment
    };
    // (id, name, compatible) of every target device.
    let mut members: Vec<(String, String, String)> = Vec::new();
    let group_name = match (group, devices) {
        (Some(g), None) => {
            let gid = group_id(tx, g)?;
            let mut st = tx.prepare(
                "SELECT id, name, compatible FROM devices WHERE group_id = ?1 AND removed = 0
                 ORDER BY id",
            )?;
            for m in st.query_map([gid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))? {
                members.push(m?);
            }
            if members.is_empty() {
                return Err(AppError::bad_request(format!("group `{g}` has no devices")));
            }
            g.to_owned()
        }
        (None, Some(list)) => {
            if list.is_empty() {
                return Err(AppError::bad_request("`devices` is empty"));
            }
            let mut unknown = Vec::new();
            for id in list {
                if members.iter().any(|m| &m.0 == id) {
                    continue;
                }
                let row = tx
                    .query_row(
                        "SELECT id, name, compatible FROM devices WHERE id = ?1 AND removed = 0",
                        [id],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                match row {
                    Some(m) => members.push(m),
                    None => unknown.push(id.as_str()),
                }
            }
            if !unknown.is_empty() {
                return Err(AppError::bad_request(format!(
                    "unknown devices: {}",
                    unknown.join(", ")
                )));
            }
            String::new()
        }
        _ => {
            return Err(AppError::bad_request(
                "give either `group` or `devices`, not both and not neither",
            ))
        }
    };
    let wrong: Vec<String> = members
        .iter()
        .filter(|m| m.2 != compatible)
        .map(|m| format!("{} ({}: {})", m.0, m.1, m.2))
        .collect();
    if !wrong.is_empty() {
        return Err(AppError::bad_request(format!(
            "update {update} is for `{compatible}`; these devices are not: {}",
            wrong.join(", ")
        )));
    }
    if !req.again {
        let mut busy = tx.prepare(
            "SELECT t.deployment_id FROM targets t JOIN deployments d ON d.id = t.deployment_id
             WHERE d.update_id = ?1 AND t.device_id = ?2
               AND t.state IN ('pending', 'downloading', 'installing')
             LIMIT 1",
        )?;
        let mut overlap: Vec<(String, i64)> = Vec::new();
        for m in &members {
            if let Some(dep) = busy
                .query_row(params![uid, m.0], |r| r.get::<_, i64>(0))
                .optional()?
            {
                overlap.push((m.0.clone(), dep));
            }
        }
        if let Some((_, first)) = overlap.first() {
            let names: Vec<&str> = overlap.iter().map(|o| o.0.as_str()).collect();
            return Err(AppError::conflict(format!(
                "update {update} is already being deployed to {} of these devices \
                 (deployment {first}: {}); wait for it, abort it, or deploy again explicitly \
                 (`\"again\": true`, `molt deploy --again`)",
                overlap.len(),
                names.join(", ")
            )));
        }
    }
    let named: Vec<(String, String)> = members.iter().map(|m| (m.0.clone(), m.1.clone())).collect();
    let canaries = gates::canary_ids(&plan, &named)?;
    let t = now();
    tx.execute(
        "INSERT INTO deployments (update_id, group_name, comment, created, created_by, plan, wave)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            uid,
            group_name,
            comment,
            t,
            OPERATOR,
            gates::stored(&plan)?,
            CANARY_WAVE
        ],
    )?;
    let id = tx.last_insert_rowid();
    let ids: Vec<String> = named.into_iter().map(|m| m.0).collect();
    let assigned = waves::assign(&plan, &ids, &canaries, unsigned(id));
    let mut ins = tx.prepare(
        "INSERT INTO targets (deployment_id, device_id, state, updated, wave)
         VALUES (?1, ?2, 'pending', ?3, ?4)",
    )?;
    for (device, wave) in ids.iter().zip(assigned) {
        ins.execute(params![id, device, t, wave])?;
    }
    tracing::info!(
        "deployment {id}: update {update} to {} device(s)",
        members.len()
    );
    gates::advance(tx, id, t)?;
    row(tx, id)
}

/// `POST /deployments`.
pub async fn deploy(
    _: Operator,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<NewDeployment>,
) -> Result<(StatusCode, Json<Deployment>), AppError> {
    let d = state.db.write(move |tx| create(tx, &req)).await?;
    Ok((StatusCode::CREATED, Json(d)))
}

/// `POST /deployments/{id}/deploy-to-others`.
pub async fn deploy_to_others(
    _: Operator,
    State(state): State<AppState>,
    PathParams(id): PathParams<u64>,
    JsonBody(req): JsonBody<DeployToOthers>,
) -> Result<(StatusCode, Json<Deployment>), AppError> {
    let d = state
        .db
        .write(move |tx| deploy_to_others_in(tx, id, &req.group, req.plan.as_ref()))
        .await?;
    Ok((StatusCode::CREATED, Json(d)))
}

/// Deploys deployment `id`'s update, with its comment, to `group` with `plan`.
pub fn deploy_to_others_in(
    tx: &Transaction<'_>,
    id: u64,
    group: &str,
    plan: Option<&RolloutPlan>,
) -> Result<Deployment, AppError> {
    let dep = signed(id, "deployment")?;
    let (update, comment): (i64, String) = tx
        .query_row(
            "SELECT update_id, comment FROM deployments WHERE id = ?1",
            [dep],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .ok_or_else(|| AppError::not_found(format!("deployment {id} does not exist")))?;
    create(
        tx,
        &NewDeployment {
            update: unsigned(update),
            group: Some(group.to_owned()),
            devices: None,
            comment,
            again: false,
            plan: plan.cloned(),
        },
    )
}

/// Gives `device`, which just joined `group`, the group's latest deployment: unless
/// the group does not pick up joiners, the deployment was aborted, the device
/// already runs its version or is of other hardware, or already has it. The
/// device comes last, in the plan's last wave, so it waits behind every gate.
pub fn pick_up(tx: &Transaction<'_>, device: &str, group: &str, now: i64) -> Result<(), AppError> {
    type Latest = (i64, bool, String, String, String, String, String, bool);
    let latest: Option<Latest> = tx
        .query_row(
            "SELECT d.id, d.aborted IS NOT NULL, d.plan, u.version, u.compatible,
                    v.compatible, v.active_version, g.pick_up_joiners
             FROM deployments d JOIN updates u ON u.id = d.update_id
                  JOIN groups g ON g.name = d.group_name
                  JOIN devices v ON v.id = ?2
             WHERE d.group_name = ?1 ORDER BY d.id DESC LIMIT 1",
            params![group, device],
            |r| Latest::try_from(r),
        )
        .optional()?;
    let Some((dep, aborted, plan, version, compatible, hardware, active, pick_up)) = latest else {
        return Ok(());
    };
    let why_not = if !pick_up {
        Some("the group does not pick up joiners")
    } else if aborted {
        Some("it was aborted")
    } else if hardware != compatible {
        Some("the device is of other hardware")
    } else if active == version {
        Some("the device runs that version already")
    } else {
        None
    };
    if let Some(why) = why_not {
        tracing::info!("device {device} joined group {group}: not given deployment {dep}: {why}");
        return Ok(());
    }
    let last = gates::parse(&plan)?.waves.len();
    let added = tx.execute(
        "INSERT OR IGNORE INTO targets (deployment_id, device_id, state, updated, wave)
         VALUES (?1, ?2, 'pending', ?3, ?4)",
        params![dep, device, now, i64::try_from(last).unwrap_or(i64::MAX)],
    )?;
    if added > 0 {
        tracing::info!("device {device} joined group {group}: given deployment {dep}");
        gates::advance(tx, dep, now)?;
    }
    Ok(())
}

/// `POST /deployments/{id}/resume`.
pub async fn resume(
    _: Operator,
    State(state): State<AppState>,
    PathParams(id): PathParams<u64>,
    JsonBody(req): JsonBody<Resume>,
) -> Result<Json<Deployment>, AppError> {
    let d = state
        .db
        .write(move |tx| {
            gates::resume_in(tx, id, req.plan, now())?;
            row(tx, signed(id, "deployment")?)
        })
        .await?;
    Ok(Json(d))
}

/// `POST /deployments/{id}/abort`.
pub async fn abort(
    _: Operator,
    State(state): State<AppState>,
    PathParams(id): PathParams<u64>,
) -> Result<Json<AbortResult>, AppError> {
    let result = state.db.write(move |tx| abort_in(tx, id)).await?;
    Ok(Json(result))
}

/// Aborts deployment `id` on every device where it is not final yet: pending ones at
/// once, the others on their next poll. A conflict when nothing was left to abort.
pub fn abort_in(tx: &Transaction<'_>, id: u64) -> Result<AbortResult, AppError> {
    let dep = signed(id, "deployment")?;
    row(tx, dep)?;
    let mut result = AbortResult {
        deployment: id,
        aborted: Vec::new(),
        not_aborted: Vec::new(),
    };
    let t = now();
    for (device, s) in states(tx, dep)? {
        match rollout::abort_action(s) {
            AbortAction::Now => {
                tx.execute(
                    "UPDATE targets SET state = 'aborted', abort_requested = 1,
                         message = 'aborted by an operator before it started', updated = ?3
                     WHERE deployment_id = ?1 AND device_id = ?2",
                    params![dep, device, t],
                )?;
                result.aborted.push(device);
            }
            AbortAction::OnNextPoll => {
                tx.execute(
                    "UPDATE targets SET abort_requested = 1
                     WHERE deployment_id = ?1 AND device_id = ?2",
                    params![dep, device],
                )?;
                result.aborted.push(device);
            }
            AbortAction::NotAborted(reason) => result.not_aborted.push(NotAborted {
                device,
                state: s,
                reason: reason.to_owned(),
            }),
        }
    }
    if result.aborted.is_empty() {
        return Err(AppError::conflict(format!(
            "deployment {id} is finished on every device; nothing to abort"
        )));
    }
    tx.execute(
        "UPDATE deployments SET aborted = ?2 WHERE id = ?1 AND aborted IS NULL",
        params![dep, t],
    )?;
    tracing::info!(
        "deployment {id} aborted for {} device(s)",
        result.aborted.len()
    );
    Ok(result)
}

/// Every device of a deployment with its state, in id order.
fn states(tx: &Transaction<'_>, dep: i64) -> Result<Vec<(String, DeviceState)>, AppError> {
    let mut st = tx.prepare(
        "SELECT device_id, state FROM targets WHERE deployment_id = ?1 ORDER BY device_id",
    )?;
    let rows = st.query_map([dep], |r| <(String, String)>::try_from(r))?;
    let mut out = Vec::new();
    for r in rows {
        let (d, s) = r?;
        out.push((d, parse_state(&s)?));
    }
    Ok(out)
}

/// The columns [`from_row`] reads, over `deployments d JOIN updates u`.
const COLUMNS: &str = "d.id, d.update_id, u.version, d.group_name, d.created, d.created_by,
     d.comment, d.aborted IS NOT NULL, d.halted IS NOT NULL";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(Deployment, bool, bool)> {
    Ok((
        Deployment {
            id: unsigned(r.get(0)?),
            update: unsigned(r.get(1)?),
            version: r.get(2)?,
            group: r.get(3)?,
            state: String::new(),
            counts: Counts::default(),
            created: rfc3339(r.get(4)?),
            created_by: r.get(5)?,
            comment: r.get(6)?,
            rollout: Rollout::default(),
        },
        r.get(7)?,
        r.get(8)?,
    ))
}

/// Fills in a deployment's counts and state.
fn complete(
    tx: &Transaction<'_>,
    (mut d, aborted, halted): (Deployment, bool, bool),
) -> Result<Deployment, AppError> {
    let dep = signed(d.id, "deployment")?;
    for (_, s) in states(tx, dep)? {
        d.counts.add(s);
    }
    d.state = rollout::deployment_state(&d.counts, aborted, halted).to_owned();
    d.rollout = gates::rollout(tx, dep)?;
    Ok(d)
}

/// One deployment's row, or 404.
fn row(tx: &Transaction<'_>, dep: i64) -> Result<Deployment, AppError> {
    let r = tx
        .query_row(
            &format!("SELECT {COLUMNS} FROM deployments d JOIN updates u ON u.id = d.update_id WHERE d.id = ?1"),
            [dep],
            from_row,
        )
        .optional()?
        .ok_or_else(|| AppError::not_found(format!("deployment {dep} does not exist")))?;
    complete(tx, r)
}

/// `?limit=` of `GET /deployments`.
#[derive(Deserialize)]
pub struct Recent {
    limit: Option<u32>,
}

/// `GET /deployments` (recent updates).
pub async fn list(
    _: Operator,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<Recent>,
) -> Result<Json<Vec<Deployment>>, AppError> {
    let limit = q.limit.unwrap_or(50);
    let rows = state.db.read(move |tx| recent(tx, limit)).await?;
    Ok(Json(rows))
}

/// The newest `limit` deployments (clamped to 1..=1000), newest first, with their counts.
pub fn recent(tx: &Transaction<'_>, limit: u32) -> Result<Vec<Deployment>, AppError> {
    let limit = limit.clamp(1, 1000);
    let mut st = tx.prepare(&format!(
        "SELECT {COLUMNS} FROM deployments d JOIN updates u ON u.id = d.update_id
         ORDER BY d.id DESC LIMIT ?1"
    ))?;
    let rows = st
        .query_map([limit], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(|r| complete(tx, r)).collect()
}

/// `GET /deployments/{id}`.
pub async fn details(
    _: Operator,
    State(state): State<AppState>,
    PathParams(id): PathParams<u64>,
) -> Result<Json<DeploymentDetails>, AppError> {
    let details = state.db.read(move |tx| details_in(tx, id)).await?;
    Ok(Json(details))
}

/// Deployment `id` and every one of its devices, or 404.
pub fn details_in(tx: &Transaction<'_>, id: u64) -> Result<DeploymentDetails, AppError> {
    let dep = signed(id, "deployment")?;
    let deployment = row(tx, dep)?;
    let mut st = tx.prepare(
        "SELECT t.device_id, d.name, t.state, t.phase, t.progress_done, t.progress_total,
                t.message, t.updated, t.wave, t.failure_cause, t.failure_class
         FROM targets t JOIN devices d ON d.id = t.device_id
         WHERE t.deployment_id = ?1 ORDER BY d.name, d.id",
    )?;
    type DeviceRow = (
        String,
        String,
        String,
        String,
        Option<i64>,
        Option<i64>,
        Option<String>,
        i64,
        i64,
        Option<String>,
        Option<String>,
    );
    let rows = st.query_map([dep], |r| DeviceRow::try_from(r))?;
    let mut devices = Vec::new();
    for r in rows {
        let (id, name, s, phase, done, total, message, updated, wave, cause, class) = r?;
        let failure = match (cause, class) {
            (Some(cause), Some(class)) => Some(Failure {
                cause,
                class: parse_class(&class)?,
            }),
            _ => None,
        };
        devices.push(DeploymentDevice {
            id,
            name,
            state: parse_state(&s)?,
            phase,
            progress: done.zip(total).map(|(d, t)| Progress {
                done: unsigned(d),
                total: unsigned(t),
            }),
            message,
            updated: rfc3339(updated),
            wave: u32::try_from(wave).unwrap_or(u32::MAX),
            failure,
        });
    }
    Ok(DeploymentDetails {
        deployment,
        devices,
    })
}

/// `GET /deployments/{id}/devices/{device}/log`: the last 1 MiB of the device's log.
pub async fn log(
    _: Operator,
    State(state): State<AppState>,
    PathParams((id, device)): PathParams<(u64, String)>,
) -> Result<impl IntoResponse, AppError> {
    let text = state.db.read(move |tx| log_in(tx, id, &device)).await?;
    Ok(([(CONTENT_TYPE, "text/plain; charset=utf-8")], text))
}

/// When an operator aborted deployment `id` (RFC 3339), if one did.
pub fn aborted_at(tx: &Transaction<'_>, id: u64) -> Result<Option<String>, AppError> {
    let dep = signed(id, "deployment")?;
    let t: Option<Option<i64>> = tx
        .query_row(
            "SELECT aborted FROM deployments WHERE id = ?1",
            [dep],
            |r| r.get(0),
        )
        .optional()?;
    Ok(t.flatten().map(rfc3339))
}

/// The last 1 MiB of what `device` reported for deployment `id`, or 404.
pub fn log_in(tx: &Transaction<'_>, id: u64, device: &str) -> Result<String, AppError> {
    let dep = signed(id, "deployment")?;
    row(tx, dep)?;
    let included: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM targets WHERE deployment_id = ?1 AND device_id = ?2)",
        params![dep, device],
        |r| r.get(0),
    )?;
    if !included {
        return Err(AppError::not_found(format!(
            "deployment {id} does not include device {device}"
        )));
    }
    let mut st = tx.prepare(
        "SELECT text FROM logs WHERE deployment_id = ?1 AND device_id = ?2 ORDER BY seq",
    )?;
    let mut text = String::new();
    for t in st.query_map(params![dep, device], |r| r.get::<_, String>(0))? {
        text.push_str(&t?);
    }
    let max = usize::try_from(MAX_LOG).unwrap_or(usize::MAX);
    Ok(rollout::tail(&text, max).to_owned())
}
