//! Credentials: random secrets, their hashes, the operator token's first-start set-up, and the extractors that authenticate operators and devices.
//!
//! Every secret is 256 random bits, so one BLAKE3 pass is a sound way to store
//! it (a slow password hash only helps secrets people choose). The operator
//! token's hash is compared in constant time (`blake3::Hash`'s `==` is); device
//! credentials are found by their hash through the database index, which leaks
//! nothing about a secret that an attacker could not compute from a guess.

use std::fs;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use rusqlite::{Connection, OptionalExtension};

use super::error::AppError;
use super::AppState;

/// `n` random bytes from the operating system, as lower-case hex.
pub fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b)
        .map_err(|e| anyhow!("cannot get randomness from the operating system: {e}"))?;
    Ok(hex::encode(b))
}

/// A new secret: `prefix` and 256 random bits.
pub fn new_secret(prefix: &str) -> Result<String, AppError> {
    random_hex(32)
        .map(|h| format!("{prefix}{h}"))
        .map_err(|e| AppError::internal(e.to_string()))
}

/// What is stored of a secret.
pub fn hash(secret: &str) -> blake3::Hash {
    blake3::hash(secret.as_bytes())
}

/// Loads the operator token's hash, creating the token on first start.
///
/// Returns the hash and, on first start only, the token itself (to print). The
/// file is written before the hash is committed: a crash between the two leaves
/// no hash, so the next start makes a new token and overwrites the file, rather
/// than keeping a hash whose token nobody has.
pub fn operator_token(conn: &Connection, data: &Path) -> Result<(blake3::Hash, Option<String>)> {
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'operator_token_hash'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(bytes) = stored {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow!("the stored operator token hash is not 32 bytes"))?;
        return Ok((blake3::Hash::from(arr), None));
    }
    let token = format!("mop_{}", random_hex(32)?);
    let path = data.join("operator-token");
    let tmp = data.join(".operator-token.tmp");
    let _ = fs::remove_file(&tmp);
    molt_bundle::keys::create_file(&tmp, 0o600, &format!("{token}\n"))?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    let h = hash(&token);
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('operator_token_hash', ?1)",
        [h.as_bytes().as_slice()],
    )?;
    Ok((h, Some(token)))
}

/// The bearer secret of a request, if it has one.
fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(secret.trim())
}

/// The bearer secret of a request, or a 401 saying to send `credential` (what the
/// route wants: the operator token or a device credential) that way.
fn bearer_or_401<'a>(parts: &'a Parts, credential: &str) -> Result<&'a str, AppError> {
    bearer(parts).ok_or_else(|| {
        AppError::unauthorized(format!(
            "missing credential: send `Authorization: Bearer <{credential}>`"
        ))
    })
}

/// The device a credential belongs to: from memory once it was found (a device's
/// credential never changes and devices are never deleted), else from the database.
async fn device_of(state: &AppState, secret: &str) -> Result<Option<String>, AppError> {
    let h = hash(secret);
    if let Some(id) = state.seen.device(&h) {
        return Ok(Some(id));
    }
    let found: Option<String> = state
        .db
        .call(move |c| {
            Ok(c.query_row(
                "SELECT id FROM devices WHERE credential_hash = ?1 AND removed = 0",
                [h.as_bytes().as_slice()],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await?;
    if let Some(id) = &found {
        state.seen.remember(&h, id);
    }
    Ok(found)
}

/// An authenticated operator.
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let secret = bearer_or_401(parts, "operator token")?;
        if hash(secret) == state.operator_hash {
            return Ok(Operator);
        }
        if device_of(state, secret).await?.is_some() {
            return Err(AppError::forbidden(
                "this is a device credential; operator routes need the operator token",
            ));
        }
        Err(AppError::unauthorized("unknown credential"))
    }
}

/// An authenticated device: its id.
pub struct Device(pub String);

impl FromRequestParts<AppState> for Device {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let secret = bearer_or_401(parts, "device credential")?;
        if let Some(id) = device_of(state, secret).await? {
            return Ok(Device(id));
        }
        if hash(secret) == state.operator_hash {
            return Err(AppError::forbidden(
                "this is the operator token; device routes need a device credential",
            ));
        }
        Err(AppError::unauthorized("unknown credential"))
    }
}
