//! The operator API's groups and devices (docs/api.md): list and create groups, a group's default plan, list devices, move a device to another group.
//!
//! The queries are plain functions over a transaction ([`groups`], [`devices`],
//! [`group_compatibles`]) and group creation is [`new_group`], so the web UI shows
//! and changes exactly what the API does.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use rusqlite::{params, OptionalExtension, Row, Transaction};
use serde::Deserialize;

use super::auth::{random_hex, Operator};
use super::db::{now, rfc3339, unsigned};
use super::error::{AppError, JsonBody, PathParams, QueryParams};
use super::rollout;
use super::{deployments, gates, AppState};
use molt_api::plan::RolloutPlan;
use molt_api::{
    Device, DeviceDeployment, DeviceDetails, DevicePatch, DeviceRemoved, Group, GroupPatch,
    NewGroup,
};

/// Checks a group name: 1–64 characters of `[A-Za-z0-9._-]`.
pub fn check_group_name(name: &str) -> Result<(), AppError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AppError::bad_request(format!(
            "group name `{name}` must be 1 to 64 characters of A-Z, a-z, 0-9, `.`, `_` and `-`"
        )))
    }
}

/// The group's id, or 404 naming it.
pub fn group_id(tx: &Transaction<'_>, name: &str) -> Result<i64, AppError> {
    tx.query_row("SELECT id FROM groups WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .optional()?
    .ok_or_else(|| AppError::not_found(format!("group `{name}` does not exist")))
}

/// `GET /groups`.
pub async fn list_groups(
    _: Operator,
    State(state): State<AppState>,
) -> Result<Json<Vec<Group>>, AppError> {
    Ok(Json(state.db.read(groups).await?))
}

/// Every group with its device count, by name.
pub fn groups(tx: &Transaction<'_>) -> Result<Vec<Group>, AppError> {
    let mut st = tx.prepare(&format!(
        "SELECT {GROUP_COLUMNS} FROM groups g ORDER BY g.name"
    ))?;
    let rows = st.query_map([], |r| <(String, String, i64, String, bool)>::try_from(r))?;
    rows.map(|r| group_from(r?)).collect()
}

/// The columns [`group_from`] reads, over `groups g`.
const GROUP_COLUMNS: &str = "g.name, g.enrollment_token,
     (SELECT count(*) FROM devices d WHERE d.group_id = g.id AND d.removed = 0),
     g.default_plan, g.pick_up_joiners";

fn group_from(
    (name, enrollment_token, devices, plan, pick_up_joiners): (String, String, i64, String, bool),
) -> Result<Group, AppError> {
    Ok(Group {
        name,
        enrollment_token,
        devices: unsigned(devices),
        default_plan: gates::parse(&plan)?,
        pick_up_joiners,
    })
}

/// One group, or 404 naming it.
pub fn group(tx: &Transaction<'_>, name: &str) -> Result<Group, AppError> {
    let row = tx
        .query_row(
            &format!("SELECT {GROUP_COLUMNS} FROM groups g WHERE g.name = ?1"),
            [name],
            |r| <(String, String, i64, String, bool)>::try_from(r),
        )
        .optional()?
        .ok_or_else(|| AppError::not_found(format!("group `{name}` does not exist")))?;
    group_from(row)
}

/// `PATCH /groups/{name}`: its default plan, and whether joiners get its latest deployment.
pub async fn patch_group(
    _: Operator,
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    JsonBody(patch): JsonBody<GroupPatch>,
) -> Result<Json<Group>, AppError> {
    let g = state
        .db
        .write(move |tx| patch_group_in(tx, &name, &patch))
        .await?;
    Ok(Json(g))
}

/// Changes group `name` as `patch` says (the plan checked first); the group after.
pub fn patch_group_in(
    tx: &Transaction<'_>,
    name: &str,
    patch: &GroupPatch,
) -> Result<Group, AppError> {
    if let Some(p) = &patch.default_plan {
        p.check()
            .map_err(|e| AppError::bad_request(format!("default_plan: {e}")))?;
    }
    let gid = group_id(tx, name)?;
    if let Some(p) = &patch.default_plan {
        tx.execute(
            "UPDATE groups SET default_plan = ?2 WHERE id = ?1",
            params![gid, gates::stored(p)?],
        )?;
    }
    if let Some(on) = patch.pick_up_joiners {
        tx.execute(
            "UPDATE groups SET pick_up_joiners = ?2 WHERE id = ?1",
            params![gid, on],
        )?;
    }
    group(tx, name)
}

/// The distinct `compatible` strings of a group's devices, sorted (404 for no such group).
pub fn group_compatibles(tx: &Transaction<'_>, name: &str) -> Result<Vec<String>, AppError> {
    let gid = group_id(tx, name)?;
    let mut st = tx.prepare(
        "SELECT DISTINCT compatible FROM devices WHERE group_id = ?1 AND removed = 0
         ORDER BY compatible",
    )?;
    let rows = st.query_map([gid], |r| r.get(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// `POST /groups`.
pub async fn create_group(
    _: Operator,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<NewGroup>,
) -> Result<(StatusCode, Json<Group>), AppError> {
    let g = new_group(&state, req.name).await?;
    Ok((StatusCode::CREATED, Json(g)))
}

/// Creates the group `name` with a new enrollment token; a conflict if it exists.
pub async fn new_group(state: &AppState, name: String) -> Result<Group, AppError> {
    check_group_name(&name)?;
    let token = format!(
        "grp_{}",
        random_hex(24).map_err(|e| AppError::internal(e.to_string()))?
    );
    let (n, enrollment_token) = (name.clone(), token.clone());
    state
        .db
        .write(move |tx| {
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM groups WHERE name = ?1)",
                [&n],
                |r| r.get(0),
            )?;
            if exists {
                return Err(AppError::conflict(format!("group `{n}` exists already")));
            }
            tx.execute(
                "INSERT INTO groups (name, enrollment_token, created) VALUES (?1, ?2, ?3)",
                params![n, enrollment_token, now()],
            )?;
            Ok(())
        })
        .await?;
    tracing::info!("group {name} created");
    Ok(Group {
        name,
        devices: 0,
        enrollment_token: token,
        default_plan: RolloutPlan::default(),
        pick_up_joiners: true,
    })
}

/// The columns [`device_row`] reads, over `devices d JOIN groups g`.
const DEVICE_COLUMNS: &str = "d.id, d.name, g.name, d.agent_version, d.compatible,
     d.active_version, d.last_seen,
     EXISTS (SELECT 1 FROM targets t WHERE t.device_id = d.id
             AND t.state IN ('pending', 'downloading', 'installing')),
     d.inactive_version";

fn device_row(r: &Row<'_>, now: i64, interval: u32) -> rusqlite::Result<Device> {
    let last_seen: Option<i64> = r.get(6)?;
    Ok(Device {
        id: r.get(0)?,
        name: r.get(1)?,
        group: r.get(2)?,
        agent_version: r.get(3)?,
        compatible: r.get(4)?,
        active_version: r.get(5)?,
        inactive_version: r.get(8)?,
        last_seen: last_seen.map(rfc3339),
        status: rollout::device_status(last_seen, now, interval, r.get(7)?).to_owned(),
    })
}

/// `?group=` of `GET /devices`.
#[derive(Deserialize)]
pub struct DeviceFilter {
    group: Option<String>,
}

/// `GET /devices`.
pub async fn list_devices(
    _: Operator,
    State(state): State<AppState>,
    QueryParams(filter): QueryParams<DeviceFilter>,
) -> Result<Json<Vec<Device>>, AppError> {
    let interval = state.poll_interval;
    state.flush_seen().await?;
    let list = state
        .db
        .read(move |tx| devices(tx, filter.group.as_deref(), interval))
        .await?;
    Ok(Json(list))
}

/// Every device (of `group`, when given: 404 if it does not exist), by group and
/// name; `interval` is the poll interval their status is judged by.
pub fn devices(
    tx: &Transaction<'_>,
    group: Option<&str>,
    interval: u32,
) -> Result<Vec<Device>, AppError> {
    let t = now();
    let mut out = Vec::new();
    if let Some(g) = group {
        let gid = group_id(tx, g)?;
        let mut st = tx.prepare(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d JOIN groups g ON g.id = d.group_id
             WHERE d.group_id = ?1 AND d.removed = 0 ORDER BY d.name, d.id"
        ))?;
        for d in st.query_map([gid], |r| device_row(r, t, interval))? {
            out.push(d?);
        }
    } else {
        let mut st = tx.prepare(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d JOIN groups g ON g.id = d.group_id
             WHERE d.removed = 0 ORDER BY g.name, d.name, d.id"
        ))?;
        for d in st.query_map([], |r| device_row(r, t, interval))? {
            out.push(d?);
        }
    }
    Ok(out)
}

/// One device, or 404 naming it.
fn device(tx: &Transaction<'_>, id: &str, interval: u32) -> Result<Device, AppError> {
    let t = now();
    tx.query_row(
        &format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d JOIN groups g ON g.id = d.group_id
             WHERE d.id = ?1 AND d.removed = 0"
        ),
        [id],
        |r| device_row(r, t, interval),
    )
    .optional()?
    .ok_or_else(|| AppError::not_found(format!("device {id} does not exist")))
}

/// `GET /devices/{id}`: the device and every deployment it took, newest first.
pub async fn device_details(
    _: Operator,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<DeviceDetails>, AppError> {
    let interval = state.poll_interval;
    state.flush_seen().await?;
    let d = state
        .db
        .read(move |tx| device_details_in(tx, &id, interval))
        .await?;
    Ok(Json(d))
}

/// Device `id` and every deployment it took, newest first, or 404.
pub fn device_details_in(
    tx: &Transaction<'_>,
    id: &str,
    interval: u32,
) -> Result<DeviceDetails, AppError> {
    let device = device(tx, id, interval)?;
    let mut st = tx.prepare(
        "SELECT t.deployment_id, u.version, t.state, t.phase, t.message, t.updated
         FROM targets t JOIN deployments d ON d.id = t.deployment_id
              JOIN updates u ON u.id = d.update_id
         WHERE t.device_id = ?1 ORDER BY t.deployment_id DESC",
    )?;
    type Took = (i64, String, String, String, Option<String>, i64);
    let rows = st.query_map([id], |r| Took::try_from(r))?;
    let mut deployments = Vec::new();
    for r in rows {
        let (dep, version, state, phase, message, updated) = r?;
        deployments.push(DeviceDeployment {
            deployment: unsigned(dep),
            version,
            state: super::device_api::parse_state(&state)?,
            phase,
            message,
            updated: rfc3339(updated),
        });
    }
    Ok(DeviceDetails {
        device,
        deployments,
    })
}

/// `DELETE /devices/{id}`: revokes the device at once (its credential gets 401 from
/// the next request on, the in-memory cache included), cancels what it has not
/// started, and drops it from every listing; past deployments keep its rows.
pub async fn remove_device(
    _: Operator,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
) -> Result<Json<DeviceRemoved>, AppError> {
    Ok(Json(remove(&state, id).await?))
}

/// Removes device `id` (404 when it does not exist or is removed already); the
/// API and the web UI both come here.
pub async fn remove(state: &AppState, id: String) -> Result<DeviceRemoved, AppError> {
    let interval = state.poll_interval;
    let st = state.clone();
    state
        .db
        .write(move |tx| {
            device(tx, &id, interval)?;
            let mut random = [0u8; 32];
            getrandom::getrandom(&mut random)
                .map_err(|e| AppError::internal(format!("no random bytes: {e}")))?;
            tx.execute(
                "UPDATE devices SET removed = 1, credential_hash = ?2 WHERE id = ?1",
                params![id, random.as_slice()],
            )?;
            // Pending targets are cancelled; one in flight is aborted as an
            // operator's abort would be, and is final at once: the device can no
            // longer report.
            let cancelled = tx.execute(
                "UPDATE targets SET state = 'aborted', message = 'device removed',
                     final_reported = 1, updated = ?2
                 WHERE device_id = ?1 AND state IN ('pending', 'downloading', 'installing')",
                params![id, now()],
            )?;
            // Still under the writer's lock: no request can find the credential
            // in the database and put it back in the cache after this.
            st.seen.revoke(&id);
            tracing::info!("device {id} removed; {cancelled} unfinished target(s) cancelled");
            Ok(DeviceRemoved {
                device: id,
                cancelled: cancelled as u64,
            })
        })
        .await
}

/// `PATCH /devices/{id}`.
pub async fn patch_device(
    _: Operator,
    State(state): State<AppState>,
    PathParams(id): PathParams<String>,
    JsonBody(patch): JsonBody<DevicePatch>,
) -> Result<Json<Device>, AppError> {
    let interval = state.poll_interval;
    state.flush_seen().await?;
    let d = state
        .db
        .write(move |tx| {
            device(tx, &id, interval)?;
            if let Some(g) = &patch.group {
                let gid = group_id(tx, g)?;
                let moved = tx.execute(
                    "UPDATE devices SET group_id = ?2 WHERE id = ?1 AND group_id != ?2",
                    params![id, gid],
                )?;
                if moved > 0 {
                    tracing::info!("device {id} moved to group {g}");
                    deployments::pick_up(tx, &id, g, now())?;
                }
            }
            device(tx, &id, interval)
        })
        .await?;
    Ok(Json(d))
}
