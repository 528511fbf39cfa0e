//! The one error type of both APIs, the extractors that reject with it, and the layer that turns every other error answer (but the web UI's HTML pages) into the JSON `ApiError`.
//!
//! docs/api.md promises `{"error": "…"}` for every 4xx and 5xx. Axum's own
//! rejections (bad paths, wrong methods, body limits) answer plain text, so the
//! extractors here wrap axum's and say what was wrong in our words, and
//! [`json_errors`] catches whatever still slips through (a 405, an unknown route).
//! hyper's own answers to a request it cannot parse (400, 414, 431) never reach
//! the router; conn/head_errors.rs gives them the body.

use axum::body::{to_bytes, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::{ALLOW, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use molt_engine::protocol::ApiError;
use serde::de::DeserializeOwned;

/// Largest JSON body any route takes.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// An error answer: a status and a sentence naming what was wrong.
#[derive(Debug)]
pub struct AppError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What was wrong, and where.
    pub message: String,
}

impl AppError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        AppError {
            status,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 500: something on the server side, logged where it happens.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!("{}", molt_engine::text::Escaped::new(&message));
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<rusqlite::Error> for AppError {
    fn from(e: rusqlite::Error) -> Self {
        AppError::internal(format!("database: {e}"))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = ApiError {
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// A JSON request body of at most [`MAX_JSON_BODY`] bytes.
///
/// Unlike `axum::Json` it does not insist on a `Content-Type` (curl users forget
/// it and the body says what it is), and its errors are [`AppError`]s naming the
/// line and column serde stopped at.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::too_large(format!(
                    "JSON body larger than {} KiB",
                    MAX_JSON_BODY / 1024
                ))
            } else {
                AppError::bad_request(format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| AppError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Path parameters, rejected as a 400 that names the bad segment.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathParams(t))
            .map_err(|e| AppError::bad_request(e.body_text()))
    }
}

/// Query parameters, rejected as a 400 that names the bad parameter.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| QueryParams(t))
            .map_err(|e| AppError::bad_request(e.body_text()))
    }
}

/// The answer to a route that does not exist.
pub async fn no_route(req: Request) -> AppError {
    AppError::not_found(format!("no route {} {}", req.method(), req.uri().path()))
}

/// Turns an error answer that is not JSON (axum's 405, a rejection's text) into
/// the `ApiError` body, keeping its status, its headers (a 405's `Allow`) and its
/// text as the message; a bodyless one is named by its status and the request
/// (`method DELETE is not allowed on /api/v1/groups; allowed: GET, HEAD, POST`).
pub async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let res = next.run(req).await;
    let status = res.status();
    // The web UI's error pages are HTML on purpose; only other bodies are rewritten.
    let is_json_or_page = res
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if status.as_u16() < 400 || is_json_or_page {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    // Rejection texts are one line; anything longer is not worth echoing whole.
    let text = match to_bytes(body, 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if !text.is_empty() {
        text
    } else if status == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = parts
            .headers
            .get(ALLOW)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').map(str::trim).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        format!("method {method} is not allowed on {path}; allowed: {allowed}")
    } else {
        let reason = status.canonical_reason().unwrap_or("error").to_lowercase();
        format!("{reason}: {method} {path}")
    };
    let json = AppError::new(status, message).into_response();
    let (json_parts, json_body) = json.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.extend(json_parts.headers);
    Response::from_parts(parts, json_body)
}
