//! The device API (docs/api.md): enroll, poll, report, and the bundle download.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use molt_engine::protocol::{
    EnrollRequest, EnrollResponse, Offer, PollAction, PollRequest, PollResponse, Report,
    ReportResponse, API_PREFIX, MAX_DEVICE_FIELD, MAX_REPORT_LOG, MAX_REPORT_MESSAGE,
};
use rusqlite::{params, OptionalExtension, Transaction, TransactionBehavior};

use super::auth::{hash, new_secret, random_hex, Device};
use super::db::{now, signed, unsigned};
use super::error::{AppError, JsonBody, PathParams};
use super::rollout::{self, Decision, Judgement, Open, WORK_INTERVAL_SECS};
use super::seen::Versions;
use super::{deployments, gates};
use super::{range, AppState};
use molt_api::DeviceState;
use molt_engine::update::FailureClass;

/// Most bytes of log kept per device and deployment; older text is dropped first.
pub const MAX_LOG: u64 = 1024 * 1024;

/// Longest name, version or compatible string a device may send.
const MAX_FIELD: usize = MAX_DEVICE_FIELD;

fn check_field(what: &str, v: &str, required: bool) -> Result<(), AppError> {
    if required && v.trim().is_empty() {
        return Err(AppError::bad_request(format!("`{what}` is empty")));
    }
    if v.len() > MAX_FIELD {
        return Err(AppError::bad_request(format!(
            "`{what}` is {} bytes long, at most {MAX_FIELD} allowed",
            v.len()
        )));
    }
    Ok(())
}

/// A random `u32` for jitter (a failed read only costs the jitter).
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::getrandom(&mut b);
    u32::from_le_bytes(b)
}

/// `POST /device/enroll`.
pub async fn enroll(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<EnrollRequest>,
) -> Result<(StatusCode, Json<EnrollResponse>), AppError> {
    check_field("name", &req.name, true)?;
    check_field("compatible", &req.compatible, true)?;
    check_field("agent_version", &req.agent_version, false)?;
    check_field("active_version", &req.active_version, false)?;
    let id = format!(
        "dev_{}",
        random_hex(10).map_err(|e| AppError::internal(e.to_string()))?
    );
    let credential = new_secret("mdc_")?;
    let cred_hash = hash(&credential);
    let device_id = id.clone();
    let versions = Versions {
        active_version: req.active_version.clone(),
        agent_version: req.agent_version.clone(),
        compatible: req.compatible.clone(),
        inactive_version: None,
    };
    let group = state
        .db
        .write(move |tx| {
            let group: Option<(i64, String)> = tx
                .query_row(
                    "SELECT id, name FROM groups WHERE enrollment_token = ?1",
                    [req.token.trim()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let (gid, gname) =
                group.ok_or_else(|| AppError::unauthorized("unknown enrollment token"))?;
            let t = now();
            tx.execute(
                "INSERT INTO devices (id, credential_hash, name, group_id, compatible,
                     agent_version, active_version, enrolled, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                params![
                    device_id,
                    cred_hash.as_bytes().as_slice(),
                    req.name.trim(),
                    gid,
                    req.compatible,
                    req.agent_version,
                    req.active_version,
                    t
                ],
            )?;
            deployments::pick_up(tx, &device_id, &gname, t)?;
            Ok(gname)
        })
        .await?;
    // Committed: its first poll needs neither a credential lookup nor a write.
    state.seen.remember(&cred_hash, &id);
    state.seen.stored(&id, versions);
    tracing::info!("device {id} enrolled in group {group}");
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            device_id: id,
            credential,
            group,
            // The first poll comes soon: a new device may have work waiting.
            poll_interval_secs: WORK_INTERVAL_SECS,
        }),
    ))
}

/// The device's open deployments, oldest first. A pending one is held while its
/// wave has not started or its plan halted the deployment.
fn open_targets(tx: &Transaction<'_>, device: &str) -> Result<Vec<Open>, AppError> {
    let mut st = tx.prepare_cached(
        "SELECT t.deployment_id, t.state, t.abort_requested, t.final_reported,
                t.state = 'pending' AND (t.wave > d.wave OR d.halted IS NOT NULL)
         FROM targets t JOIN deployments d ON d.id = t.deployment_id
         WHERE t.device_id = ?1
           AND (t.state IN ('pending', 'downloading', 'installing')
                OR (t.abort_requested = 1 AND t.final_reported = 0))
         ORDER BY t.deployment_id",
    )?;
    let rows = st.query_map([device], |r| <(i64, String, bool, bool, bool)>::try_from(r))?;
    let mut out = Vec::new();
    for row in rows {
        let (d, s, abort_requested, final_reported, held) = row?;
        out.push(Open {
            deployment: unsigned(d),
            state: parse_state(&s)?,
            abort_requested,
            final_reported,
            held,
        });
    }
    Ok(out)
}

/// A failure class as stored.
pub fn class_name(c: FailureClass) -> &'static str {
    match c {
        FailureClass::Transient => "transient",
        FailureClass::Deterministic => "deterministic",
    }
}

/// A failure class read from the database.
pub fn parse_class(s: &str) -> Result<FailureClass, AppError> {
    match s {
        "transient" => Ok(FailureClass::Transient),
        "deterministic" => Ok(FailureClass::Deterministic),
        _ => Err(AppError::internal(format!(
            "database holds an unknown failure class `{s}`"
        ))),
    }
}

/// A state read from the database.
pub fn parse_state(s: &str) -> Result<DeviceState, AppError> {
    DeviceState::from_name(s)
        .ok_or_else(|| AppError::internal(format!("database holds an unknown device state `{s}`")))
}

/// `POST /device/poll`.
///
/// Versions are written durably when they differ from what the database holds;
/// `last_seen` alone is only noted in memory and written in batches (seen.rs),
/// so an idle device's poll is one read.
pub async fn poll(
    State(state): State<AppState>,
    Device(device): Device,
    JsonBody(req): JsonBody<PollRequest>,
) -> Result<Json<PollResponse>, AppError> {
    check_field("compatible", &req.compatible, true)?;
    check_field("agent_version", &req.agent_version, false)?;
    check_field("active_version", &req.active_version, false)?;
    if let Some(v) = &req.inactive_version {
        check_field("inactive_version", v, false)?;
    }
    let t = now();
    let versions = Versions {
        active_version: req.active_version,
        agent_version: req.agent_version,
        compatible: req.compatible,
        inactive_version: req.inactive_version,
    };
    if !state.seen.poll(&device, &versions, t) {
        let st = state.clone();
        let dev = device.clone();
        state
            .db
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute(
                    "UPDATE devices SET last_seen = MAX(COALESCE(last_seen, 0), ?2),
                         active_version = ?3, agent_version = ?4, compatible = ?5,
                         inactive_version = ?6
                     WHERE id = ?1",
                    params![
                        dev,
                        t,
                        versions.active_version,
                        versions.agent_version,
                        versions.compatible,
                        versions.inactive_version
                    ],
                )?;
                tx.commit()?;
                // Still under the writer's lock: no other write to this device's
                // versions can come between the commit and this.
                st.seen.stored(&dev, versions);
                Ok(())
            })
            .await?;
    }
    // A read on the reading connection, which never waits for a commit's fsync:
    // inline when that connection is free (the common case), else on the pool.
    let in_progress = req.in_progress;
    let action = match state.db.read_now(|tx| decide(tx, &device, in_progress)) {
        Some(r) => r?,
        None => {
            state
                .db
                .read(move |tx| decide(tx, &device, in_progress))
                .await?
        }
    };
    let (action, busy) = action;
    let base = if busy {
        WORK_INTERVAL_SECS
    } else {
        state.poll_interval
    };
    Ok(Json(PollResponse {
        action,
        poll_interval_secs: rollout::jittered(base, random_u32()),
    }))
}

/// What a poll answers `device` (that says it is installing `in_progress`), and
/// whether it has work (a shorter poll interval).
fn decide(
    tx: &Transaction<'_>,
    device: &str,
    in_progress: Option<u64>,
) -> Result<(PollAction, bool), AppError> {
    let open = open_targets(tx, device)?;
    Ok(match rollout::decide(in_progress, &open) {
        Decision::Nothing { busy } => (PollAction::None, busy),
        Decision::Abort(deployment) => (PollAction::Abort { deployment }, true),
        Decision::Install(deployment) => {
            let (version, size, blake3) = tx.query_row(
                "SELECT u.version, u.size, u.blake3 FROM deployments d
                 JOIN updates u ON u.id = d.update_id WHERE d.id = ?1",
                [signed(deployment, "deployment")?],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)?, r.get(2)?)),
            )?;
            let offer = Offer {
                deployment,
                version,
                bundle_path: format!("{API_PREFIX}/device/deployments/{deployment}/bundle"),
                bundle_size: unsigned(size),
                bundle_blake3: blake3,
            };
            (PollAction::Install(offer), true)
        }
    })
}

/// The device's row in a deployment: 404 for an unknown deployment, 403 when the
/// deployment does not include the device.
fn target_of(
    tx: &Transaction<'_>,
    deployment: i64,
    device: &str,
) -> Result<(DeviceState, u64, u64), AppError> {
    let row: Option<(String, i64, i64)> = tx
        .query_row(
            "SELECT state, last_seq, log_bytes FROM targets
             WHERE deployment_id = ?1 AND device_id = ?2",
            params![deployment, device],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match row {
        Some((s, seq, log)) => Ok((parse_state(&s)?, unsigned(seq), unsigned(log))),
        None => {
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM deployments WHERE id = ?1)",
                [deployment],
                |r| r.get(0),
            )?;
            Err(if exists {
                AppError::forbidden(format!(
                    "deployment {deployment} does not include device {device}"
                ))
            } else {
                AppError::not_found(format!("deployment {deployment} does not exist"))
            })
        }
    }
}

/// `POST /device/deployments/{id}/report`.
pub async fn report(
    State(state): State<AppState>,
    Device(device): Device,
    PathParams(id): PathParams<u64>,
    JsonBody(rep): JsonBody<Report>,
) -> Result<Json<ReportResponse>, AppError> {
    if rep.log.len() > MAX_REPORT_LOG {
        return Err(AppError::too_large(format!(
            "`log` is {} bytes; a report carries at most {MAX_REPORT_LOG}",
            rep.log.len()
        )));
    }
    if let Some(m) = rep
        .message
        .as_deref()
        .filter(|m| m.len() > MAX_REPORT_MESSAGE)
    {
        return Err(AppError::too_large(format!(
            "`message` is {} bytes; a report carries at most {MAX_REPORT_MESSAGE}",
            m.len()
        )));
    }
    if rep.seq == 0 {
        return Err(AppError::bad_request("`seq` starts at 1"));
    }
    check_field("phase", &rep.phase, false)?;
    check_field("active_version", &rep.active_version, false)?;
    if let Some(f) = &rep.failure {
        check_field("failure.cause", &f.cause, true)?;
    }
    let dep = signed(id, "deployment")?;
    let seq = signed(rep.seq, "seq")?;
    let st = state.clone();
    let answer = state
        .db
        .write(move |tx| {
            let (current, last_seq, log_bytes) = target_of(tx, dep, &device)?;
            let t = now();
            // A refused report (stale, duplicate, or after the final one) changes
            // nothing, not even the device's row: it may be a replay of an old one.
            let closes = match rollout::judge(current, last_seq, rep.seq, rep.state) {
                Judgement::Closed => {
                    return Ok(ReportResponse {
                        accepted: false,
                        closed: true,
                    })
                }
                Judgement::Duplicate => {
                    return Ok(ReportResponse {
                        accepted: false,
                        closed: false,
                    })
                }
                Judgement::Accept { closes } => closes,
            };
            // This writes the device's active version: its next poll writes its own again.
            st.seen.forget(&device);
            tx.execute(
                "UPDATE devices SET last_seen = ?2, active_version = ?3 WHERE id = ?1",
                params![device, t, rep.active_version],
            )?;
            let (done, total) = match rep.progress {
                Some(p) => (
                    Some(signed(p.done, "progress.done")?),
                    Some(signed(p.total, "progress.total")?),
                ),
                None => (None, None),
            };
            let log_len = rep.log.len() as u64;
            let (cause, class) = match &rep.failure {
                Some(f) => (Some(f.cause.as_str()), Some(class_name(f.class))),
                None => (None, None),
            };
            tx.execute(
                "UPDATE targets SET state = ?3, phase = ?4, progress_done = ?5,
                     progress_total = ?6, message = ?7, last_seq = ?8, final_reported = ?9,
                     log_bytes = ?10, updated = ?11, failure_cause = ?12, failure_class = ?13
                 WHERE deployment_id = ?1 AND device_id = ?2",
                params![
                    dep,
                    device,
                    rep.state.name(),
                    rep.phase,
                    done,
                    total,
                    rep.message,
                    seq,
                    closes,
                    signed(log_bytes + log_len, "log size")?,
                    t,
                    cause,
                    class
                ],
            )?;
            if log_len > 0 {
                append_log(tx, dep, &device, seq, &rep.log, log_bytes + log_len)?;
            }
            if closes {
                tracing::info!(
                    "device {device} finished deployment {dep}: {}",
                    rep.state.name()
                );
                // A final state may open the wave's gate or reach the halt threshold.
                gates::advance(tx, dep, t)?;
            }
            Ok(ReportResponse {
                accepted: true,
                closed: closes,
            })
        })
        .await?;
    Ok(Json(answer))
}

/// Adds a report's log text and drops the oldest reports' text while what remains
/// without them still holds [`MAX_LOG`] bytes (the reader trims the first to fit).
fn append_log(
    tx: &Transaction<'_>,
    dep: i64,
    device: &str,
    seq: i64,
    text: &str,
    mut total: u64,
) -> Result<(), AppError> {
    tx.execute(
        "INSERT INTO logs (deployment_id, device_id, seq, text) VALUES (?1, ?2, ?3, ?4)",
        params![dep, device, seq, text],
    )?;
    while total > MAX_LOG {
        let oldest: Option<(i64, i64)> = tx
            .query_row(
                "SELECT seq, length(CAST(text AS BLOB)) FROM logs
                 WHERE deployment_id = ?1 AND device_id = ?2 ORDER BY seq LIMIT 1",
                params![dep, device],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((oldest_seq, len)) = oldest else {
            break;
        };
        let len = unsigned(len);
        if total - len < MAX_LOG {
            break;
        }
        tx.execute(
            "DELETE FROM logs WHERE deployment_id = ?1 AND device_id = ?2 AND seq = ?3",
            params![dep, device, oldest_seq],
        )?;
        total -= len;
    }
    tx.execute(
        "UPDATE targets SET log_bytes = ?3 WHERE deployment_id = ?1 AND device_id = ?2",
        params![dep, device, signed(total, "log size")?],
    )?;
    Ok(())
}

/// `GET /device/deployments/{id}/bundle`.
pub async fn bundle(
    State(state): State<AppState>,
    Device(device): Device,
    PathParams(id): PathParams<u64>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let dep = signed(id, "deployment")?;
    let (size, blake3) = state
        .db
        .read(move |tx| {
            target_of(tx, dep, &device)?;
            let row: (i64, String) = tx.query_row(
                "SELECT u.size, u.blake3 FROM deployments d JOIN updates u ON u.id = d.update_id
                 WHERE d.id = ?1",
                [dep],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok(row)
        })
        .await?;
    let path = state.store.bundle_path(&blake3);
    range::serve(&path, unsigned(size), &blake3, &headers).await
}
