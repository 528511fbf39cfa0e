//! The operator API's updates (docs/api.md): upload a signed bundle (streamed, verified, then stored) and list the stored ones.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;

use super::auth::Operator;
use super::db::{rfc3339, unsigned};
use super::error::{AppError, QueryParams};
use super::store;
use super::AppState;
use molt_api::Update;

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
    let updates = state
        .db
        .read(|tx| {
            let mut st = tx.prepare(
                "SELECT id, version, compatible, kind, size, blake3, comment, created, recipe
                 FROM updates ORDER BY id DESC",
            )?;
            let rows = st.query_map([], |r| {
                let recipe: String = r.get(8)?;
                Ok(Update {
                    id: unsigned(r.get(0)?),
                    version: r.get(1)?,
                    compatible: r.get(2)?,
                    kind: r.get(3)?,
                    size: unsigned(r.get(4)?),
                    blake3: r.get(5)?,
                    comment: r.get(6)?,
                    created: rfc3339(r.get(7)?),
                    recipe: serde_json::from_str(&recipe).unwrap_or_default(),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    Ok(Json(updates))
}
