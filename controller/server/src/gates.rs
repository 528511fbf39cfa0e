//! A deployment's rollout plan applied to the database: the waves given when it is made, each gate looked at after every report and when a soak ends, halts, and an operator's resume.
//!
//! The decisions are `waves.rs`'s; this file reads what they need and writes
//! what they decide in the caller's transaction. The wave in progress, the halt
//! and the end of a soak are columns of `deployments`, so a controller killed at
//! any instant resumes the plan exactly: a wave is released by an `UPDATE …
//! WHERE wave = <the one read>`, never twice, and a halt is written in the
//! transaction of the report that caused it.

use molt_api::plan::RolloutPlan;
use molt_api::{DeviceState, Rollout};
use rusqlite::{params, OptionalExtension, Transaction};

use super::db::{rfc3339, signed, unsigned};
use super::device_api::parse_state;
use super::error::AppError;
use super::waves::{self, Gate, Tally, CANARY_WAVE};

/// A plan as stored: `''` is the default plan, so rows from before plans read as one.
pub fn stored(plan: &RolloutPlan) -> Result<String, AppError> {
    if plan.is_default() {
        return Ok(String::new());
    }
    serde_json::to_string(plan).map_err(|e| AppError::internal(format!("plan: {e}")))
}

/// A plan as stored, read back.
pub fn parse(text: &str) -> Result<RolloutPlan, AppError> {
    if text.is_empty() {
        return Ok(RolloutPlan::default());
    }
    serde_json::from_str(text)
        .map_err(|e| AppError::internal(format!("the database holds a plan it cannot read: {e}")))
}

/// A deployment's plan columns.
struct PlanRow {
    plan: RolloutPlan,
    wave: u32,
    halted: Option<String>,
    aborted: bool,
    halt_base: u64,
    gate_at: Option<i64>,
}

fn load(tx: &Transaction<'_>, dep: i64) -> Result<Option<PlanRow>, AppError> {
    let row = tx
        .query_row(
            "SELECT plan, wave, halted IS NOT NULL, halt_reason, aborted IS NOT NULL, halt_base,
                    gate_at
             FROM deployments WHERE id = ?1",
            [dep],
            |r| <(String, i64, bool, Option<String>, bool, i64, Option<i64>)>::try_from(r),
        )
        .optional()?;
    let Some((plan, wave, halted, reason, aborted, halt_base, gate_at)) = row else {
        return Ok(None);
    };
    Ok(Some(PlanRow {
        plan: parse(&plan)?,
        wave: u32::try_from(wave).unwrap_or(u32::MAX),
        halted: halted.then(|| reason.unwrap_or_default()),
        aborted,
        halt_base: unsigned(halt_base),
        gate_at,
    }))
}

/// Where deployment `dep`'s plan stands, for the API and the web UI.
pub fn rollout(tx: &Transaction<'_>, dep: i64) -> Result<Rollout, AppError> {
    let Some(row) = load(tx, dep)? else {
        return Err(AppError::not_found(format!(
            "deployment {dep} does not exist"
        )));
    };
    Ok(Rollout {
        waves: u32::try_from(row.plan.waves.len()).unwrap_or(u32::MAX),
        plan: row.plan,
        wave: row.wave,
        halted: row.halted,
        soak_until: row.gate_at.map(rfc3339),
    })
}

/// Resolves a plan's canaries (ids or names) among `members` (id, name), or says
/// which one is not a device of the deployment, or is a name two devices share.
pub fn canary_ids(
    plan: &RolloutPlan,
    members: &[(String, String)],
) -> Result<Vec<String>, AppError> {
    let mut ids = Vec::new();
    for c in &plan.canaries {
        let by_id = members.iter().find(|m| &m.0 == c);
        let by_name: Vec<&(String, String)> = members.iter().filter(|m| &m.1 == c).collect();
        let id = match (by_id, by_name.as_slice()) {
            (Some(m), _) => m.0.clone(),
            (None, [m]) => m.0.clone(),
            (None, []) => {
                return Err(AppError::bad_request(format!(
                    "canaries: {c:?} is not a device of this deployment"
                )))
            }
            (None, _) => {
                return Err(AppError::bad_request(format!(
                    "canaries: {} devices are named {c:?}; name the canary by its id",
                    by_name.len()
                )))
            }
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The tallies of each wave (indexed by wave) and of the whole deployment.
fn tallies(tx: &Transaction<'_>, dep: i64) -> Result<(Vec<Tally>, Tally), AppError> {
    let mut st = tx.prepare_cached(
        "SELECT wave, state, COUNT(*), MAX(updated) FROM targets WHERE deployment_id = ?1
         GROUP BY wave, state",
    )?;
    let rows = st.query_map([dep], |r| <(i64, String, i64, i64)>::try_from(r))?;
    let mut per_wave: Vec<Tally> = Vec::new();
    let mut overall = Tally::default();
    for row in rows {
        let (wave, state, n, updated) = row?;
        let (state, n) = (parse_state(&state)?, unsigned(n));
        let w = usize::try_from(wave).unwrap_or(0);
        if per_wave.len() <= w {
            per_wave.resize(w + 1, Tally::default());
        }
        for t in [&mut per_wave[w], &mut overall] {
            t.total += n;
            match state {
                DeviceState::Success => {
                    t.success += n;
                    t.last_success = t.last_success.max(Some(unsigned(updated)));
                }
                DeviceState::Failed | DeviceState::RolledBack => t.failed += n,
                DeviceState::Aborted => t.aborted += n,
                DeviceState::Pending | DeviceState::Downloading | DeviceState::Installing => {
                    t.unfinished += n
                }
            }
        }
    }
    Ok((per_wave, overall))
}

/// Looks at deployment `dep`'s gate at `now` and writes what the plan decides:
/// the next wave (and, when that one is empty or done, the one after), a halt,
/// or when to look again. Nothing for a halted or aborted deployment.
pub fn advance(tx: &Transaction<'_>, dep: i64, now: i64) -> Result<(), AppError> {
    loop {
        let Some(row) = load(tx, dep)? else {
            return Ok(());
        };
        if row.halted.is_some() || row.aborted {
            if row.gate_at.is_some() {
                tx.execute("UPDATE deployments SET gate_at = NULL WHERE id = ?1", [dep])?;
            }
            return Ok(());
        }
        let (per_wave, mut overall) = tallies(tx, dep)?;
        let w = usize::try_from(row.wave).unwrap_or(usize::MAX);
        let mut current = per_wave.get(w).copied().unwrap_or_default();
        // The failures an operator resumed past count no more; after a resume they
        // are all in the first wave (resume_in).
        overall.failed = overall.failed.saturating_sub(row.halt_base);
        if row.wave == CANARY_WAVE {
            current.failed = current.failed.saturating_sub(row.halt_base);
        }
        match waves::gate(&row.plan, row.wave, &current, &overall, unsigned(now)) {
            Gate::Halt(reason) => return halt(tx, dep, &row.plan, &reason, now),
            Gate::Wait { until } => {
                let until = until.map(|u| signed(u, "soak end")).transpose()?;
                if until != row.gate_at {
                    tx.execute(
                        "UPDATE deployments SET gate_at = ?2 WHERE id = ?1",
                        params![dep, until],
                    )?;
                }
                return Ok(());
            }
            Gate::Release => {
                tx.execute(
                    "UPDATE deployments SET wave = wave + 1, gate_at = NULL
                     WHERE id = ?1 AND wave = ?2",
                    params![dep, row.wave],
                )?;
                if per_wave.get(w + 1).is_some_and(|t| t.total > 0) {
                    tracing::info!("deployment {dep}: wave {} starts", row.wave + 1);
                }
            }
            Gate::Complete => {
                if row.gate_at.is_some() {
                    tx.execute("UPDATE deployments SET gate_at = NULL WHERE id = ?1", [dep])?;
                }
                return Ok(());
            }
        }
    }
}

/// Halts deployment `dep`: no device starts any more; with the plan's
/// `abort_in_flight`, the devices installing are told to abort on their next poll.
fn halt(
    tx: &Transaction<'_>,
    dep: i64,
    plan: &RolloutPlan,
    reason: &str,
    now: i64,
) -> Result<(), AppError> {
    tx.execute(
        "UPDATE deployments SET halted = ?2, halt_reason = ?3, gate_at = NULL
         WHERE id = ?1 AND halted IS NULL",
        params![dep, now, reason],
    )?;
    if plan.abort_in_flight {
        tx.execute(
            "UPDATE targets SET abort_requested = 1
             WHERE deployment_id = ?1 AND state IN ('downloading', 'installing')",
            [dep],
        )?;
    }
    tracing::warn!("deployment {dep} halted: {reason}");
    Ok(())
}

/// An operator's resume of halted deployment `id`, with the same plan or `plan`:
/// the devices started so far become the first wave, the others are spread over
/// the plan's waves again, and the halt threshold counts only the failures from
/// now on.
pub fn resume_in(
    tx: &Transaction<'_>,
    id: u64,
    plan: Option<RolloutPlan>,
    now: i64,
) -> Result<(), AppError> {
    let dep = signed(id, "deployment")?;
    let row = load(tx, dep)?
        .ok_or_else(|| AppError::not_found(format!("deployment {id} does not exist")))?;
    if row.aborted {
        return Err(AppError::conflict(format!(
            "deployment {id} was aborted; deploy the update again instead"
        )));
    }
    if row.halted.is_none() {
        return Err(AppError::conflict(format!("deployment {id} is not halted")));
    }
    let plan = plan.unwrap_or(row.plan);
    plan.check().map_err(AppError::bad_request)?;
    let mut st = tx.prepare(
        "SELECT t.device_id, d.name, t.wave FROM targets t JOIN devices d ON d.id = t.device_id
         WHERE t.deployment_id = ?1 ORDER BY t.device_id",
    )?;
    let rows = st.query_map([dep], |r| <(String, String, i64)>::try_from(r))?;
    let mut members = Vec::new();
    let mut started = Vec::new();
    for r in rows {
        let (device, name, wave) = r?;
        if wave <= i64::from(row.wave) {
            started.push(device.clone());
        }
        members.push((device, name));
    }
    // The new plan's canaries that have not started join the devices that have.
    for c in canary_ids(&plan, &members)? {
        if !started.contains(&c) {
            started.push(c);
        }
    }
    let ids: Vec<String> = members.into_iter().map(|m| m.0).collect();
    let assigned = waves::assign(&plan, &ids, &started, unsigned(dep));
    let mut set =
        tx.prepare("UPDATE targets SET wave = ?3 WHERE deployment_id = ?1 AND device_id = ?2")?;
    for (device, wave) in ids.iter().zip(assigned) {
        set.execute(params![dep, device, wave])?;
    }
    let (_, overall) = tallies(tx, dep)?;
    tx.execute(
        "UPDATE deployments SET plan = ?2, wave = ?3, halted = NULL, halt_reason = NULL,
             halt_base = ?4, gate_at = NULL
         WHERE id = ?1",
        params![
            dep,
            stored(&plan)?,
            CANARY_WAVE,
            signed(overall.failed, "failures")?
        ],
    )?;
    tracing::info!("deployment {id} resumed by an operator");
    advance(tx, dep, now)
}

/// The deployments whose soak has ended by `now`.
pub fn soaks_ended(tx: &Transaction<'_>, now: i64) -> Result<Vec<i64>, AppError> {
    let mut st = tx.prepare_cached("SELECT id FROM deployments WHERE gate_at <= ?1")?;
    let ids = st
        .query_map([now], |r| r.get(0))?
        .collect::<Result<Vec<i64>, _>>()?;
    Ok(ids)
}

/// How often the controller looks for soaks that ended.
pub const TICK_SECS: u64 = 1;

/// Looks every [`TICK_SECS`] for deployments whose soak ended and opens their gates,
/// on a thread of its own, until the state is gone. The soak's end is a column, so
/// a restarted controller finds the ones that ended while it was down.
pub fn start_ticker(state: std::sync::Weak<super::Shared>) {
    let spawned = std::thread::Builder::new()
        .name("rollout-gates".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(TICK_SECS));
            let Some(state) = state.upgrade() else {
                return;
            };
            let looked = tick(&mut state.db.lock());
            if let Err(e) = looked {
                tracing::warn!("cannot look at rollout gates: {}", e.message);
            }
        });
    if let Err(e) = spawned {
        // Then a soak ends only with the next report of its deployment.
        tracing::warn!("cannot start the rollout gate ticker: {e}");
    }
}

/// One look: every deployment whose soak ended, in one transaction.
fn tick(conn: &mut rusqlite::Connection) -> Result<(), AppError> {
    let now = super::db::now();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for dep in soaks_ended(&tx, now)? {
        advance(&tx, dep, now)?;
    }
    tx.commit()?;
    Ok(())
}
