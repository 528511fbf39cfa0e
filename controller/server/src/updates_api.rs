//! The operator API's updates (docs/api.md): upload a signed bundle (streamed, verified, then stored), list the stored ones with the deployments that used them, and delete one nothing used.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Transaction};

use super::auth::Operator;
use super::db::{rfc3339, signed, unsigned};
use super::error::{AppError, PathParams, QueryParams};
use super::store;
use super::AppState;
use molt_api::{Update, UpdateDeleted};

/// `?comment=` of an upload.
#[derive(Deserialize)]
pub struct UploadQuery {
    /// The operator's comment (default: the bundle's own).
    pub comment: Option<String>,
}

/// `POST /updates`: the bundle is the body.
pub async fn upload(
    _: Operator,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Update>), AppError> {
    // A declared length over the limit is refused before a byte is stored; the
    // count while streaming catches bodies that do not declare one.
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_bundle_bytes) {
        return Err(AppError::too_large(format!(
            "bundle larger than the limit of {} bytes (--max-bundle-bytes)",
            state.max_bundle_bytes
        )));
    }
    let got = store::receive(&state.store, body, state.max_bundle_bytes).await?;
    let update = ingest(state, got, q.comment).await?;
    Ok((StatusCode::CREATED, Json(update)))
}

/// Runs [`store::ingest`] on the blocking pool: verification reads the whole bundle.
pub async fn ingest(
    state: AppState,
    got: store::Received,
    comment: Option<String>,
) -> Result<Update, AppError> {
    tokio::task::spawn_blocking(move || store::ingest(&state, got, comment))
        .await
        .map_err(|e| AppError::internal(format!("bundle verification task failed: {e}")))?
}

/// `GET /updates`, newest first.
pub async fn list(
    _: Operator,
    State(state): State<AppState>,
) -> Result<Json<Vec<Update>>, AppError> {
    Ok(Json(state.db.read(updates).await?))
}

/// Every stored update, newest first, with the deployments that used it.
pub fn updates(tx: &Transaction<'_>) -> Result<Vec<Update>, AppError> {
    let mut used: HashMap<i64, Vec<u64>> = HashMap::new();
    let mut st = tx.prepare("SELECT update_id, id FROM deployments ORDER BY id")?;
    for r in st.query_map([], |r| <(i64, i64)>::try_from(r))? {
        let (update, dep) = r?;
        used.entry(update).or_default().push(unsigned(dep));
    }
    let mut st = tx.prepare(
        "SELECT id, version, compatible, kind, size, blake3, comment, created, recipe, signer
         FROM updates ORDER BY id DESC",
    )?;
    type Row = (
        i64,
        String,
        String,
        String,
        i64,
        String,
        String,
        i64,
        String,
        String,
    );
    let rows = st.query_map([], |r| Row::try_from(r))?;
    let mut out = Vec::new();
    for r in rows {
        let (id, version, compatible, kind, size, blake3, comment, created, recipe, signer) = r?;
        out.push(Update {
            id: unsigned(id),
            version,
            compatible,
            kind,
            size: unsigned(size),
            blake3,
            comment,
            created: rfc3339(created),
            recipe: serde_json::from_str(&recipe).unwrap_or_default(),
            signer,
            deployments: used.remove(&id).unwrap_or_default(),
        });
    }
    Ok(out)
}

/// `DELETE /updates/{id}`: the row first (one transaction), then the bundle file; a
/// file left by a crash in between is removed at the next start (`Store::sweep`).
pub async fn remove(
    _: Operator,
    State(state): State<AppState>,
    PathParams(id): PathParams<u64>,
) -> Result<Json<UpdateDeleted>, AppError> {
    let uid = signed(id, "update")?;
    let (version, blake3) = state
        .db
        .write(move |tx| {
            let row: Option<(String, String)> = tx
                .query_row(
                    "SELECT version, blake3 FROM updates WHERE id = ?1",
                    [uid],
                    |r| r.try_into(),
                )
                .optional()?;
            let row =
                row.ok_or_else(|| AppError::not_found(format!("update {id} does not exist")))?;
            let mut st =
                tx.prepare("SELECT id FROM deployments WHERE update_id = ?1 ORDER BY id")?;
            let used = st
                .query_map([uid], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            if !used.is_empty() {
                let list: Vec<String> = used.iter().map(i64::to_string).collect();
                return Err(AppError::conflict(format!(
                    "update {id} (version {}) is used by deployment(s) {}: its history needs it",
                    row.0,
                    list.join(", ")
                )));
            }
            tx.execute("DELETE FROM updates WHERE id = ?1", [uid])?;
            Ok(row)
        })
        .await?;
    let path = state.store.bundle_path(&blake3);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            let _ = store::sync_dir(path.parent().unwrap_or(std::path::Path::new(".")));
        }
        Err(e) => tracing::warn!(
            "update {id} deleted, but {} stays until the next start: {e}",
            path.display()
        ),
    }
    tracing::info!("update {id} (version {version}) deleted");
    Ok(Json(UpdateDeleted { id, version }))
}
