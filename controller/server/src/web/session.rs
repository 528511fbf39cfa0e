//! Web UI sessions: the operator token exchanged for a session cookie, the extractor that requires one, and the CSRF checks every form POST passes.
//!
//! A session secret is 256 random bits in an `HttpOnly`, `SameSite=Strict` cookie
//! (`Secure` over TLS); the database keeps only its BLAKE3 (like every other
//! credential, see auth.rs), its expiry and the session's form token. Cross-site
//! form posts are refused twice over: the browser does not send a `Strict` cookie
//! with them, and every POST must carry the session's form token in its `csrf`
//! field and, when the browser names one, come from this server's own origin.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::header::{COOKIE, HOST, ORIGIN, REFERER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use rusqlite::{params, OptionalExtension};

use super::super::auth::{hash, random_hex};
use super::super::db::now;
use super::super::error::AppError;
use super::super::AppState;
use super::layout;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "molt_session";

/// How long a session lasts after login: a working day.
pub const LIFETIME_SECS: i64 = 12 * 3600;

/// Whether the server answers over TLS (set by `serve`), for the cookie's `Secure`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Transport {
    /// Served over HTTPS.
    pub https: bool,
}

/// A logged-in operator's session.
#[derive(Clone, Debug)]
pub struct Session {
    /// The form token every POST of this session carries.
    pub csrf: String,
    /// The hash of the cookie's secret (the session's key), for logout.
    key: [u8; 32],
}

/// The value of cookie `name` in the request, if sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Looks the request's session up; `None` without a cookie or for an unknown or expired one.
async fn lookup(parts: &Parts, state: &AppState) -> Result<Option<Session>, AppError> {
    let Some(secret) = cookie(&parts.headers, COOKIE_NAME) else {
        return Ok(None);
    };
    let key = *hash(secret).as_bytes();
    let csrf = state
        .db
        .call(move |c| {
            Ok(c.query_row(
                "SELECT csrf FROM sessions WHERE hash = ?1 AND expires > ?2",
                params![key.as_slice(), now()],
                |r| r.get::<_, String>(0),
            )
            .optional()?)
        })
        .await?;
    Ok(csrf.map(|csrf| Session { csrf, key }))
}

/// Where to send someone who is not logged in: the login page, then back here
/// (for a page GET; a POST's target is not a page to come back to).
fn to_login(parts: &Parts) -> Response {
    let here = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if parts.method == axum::http::Method::GET && here != "/" {
        let next: String = form_urlencoded_component(here);
        Redirect::to(&format!("/login?next={next}")).into_response()
    } else {
        Redirect::to("/login").into_response()
    }
}

/// Percent-encodes `s` for a query parameter value.
fn form_urlencoded_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match lookup(parts, state).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(to_login(parts)),
            Err(e) => Err(layout::error_page(None, e.status, &e.message)),
        }
    }
}

impl OptionalFromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Response> {
        lookup(parts, state)
            .await
            .map_err(|e| layout::error_page(None, e.status, &e.message))
    }
}

/// A `next` target that stays on this server: a local path, never `//host`.
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

/// Starts a session: stores its hash and form token; returns the `Set-Cookie` value.
pub async fn create(state: &AppState, transport: Transport) -> Result<String, AppError> {
    let secret = random_hex(32).map_err(|e| AppError::internal(e.to_string()))?;
    let csrf = random_hex(32).map_err(|e| AppError::internal(e.to_string()))?;
    let key = *hash(&secret).as_bytes();
    state
        .db
        .write(move |tx| {
            let t = now();
            // Expired sessions go whenever a new one starts: no timer needed.
            tx.execute("DELETE FROM sessions WHERE expires <= ?1", [t])?;
            tx.execute(
                "INSERT INTO sessions (hash, csrf, created, expires) VALUES (?1, ?2, ?3, ?4)",
                params![key.as_slice(), csrf, t, t + LIFETIME_SECS],
            )?;
            Ok(())
        })
        .await?;
    tracing::info!("web UI: operator logged in");
    Ok(cookie_value(&secret, LIFETIME_SECS, transport))
}

/// Ends `session`; returns the `Set-Cookie` value that clears the cookie.
pub async fn end(
    state: &AppState,
    session: &Session,
    transport: Transport,
) -> Result<String, AppError> {
    let key = session.key;
    state
        .db
        .write(move |tx| {
            tx.execute("DELETE FROM sessions WHERE hash = ?1", [key.as_slice()])?;
            Ok(())
        })
        .await?;
    Ok(cookie_value("", 0, transport))
}

fn cookie_value(secret: &str, max_age: i64, transport: Transport) -> String {
    let secure = if transport.https { "; Secure" } else { "" };
    format!("{COOKIE_NAME}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// The `host[:port]` an `Origin` or `Referer` value names (`None` for `null` or junk).
fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    Some(rest.split(['/', '?', '#']).next().unwrap_or(rest))
}

/// Refuses a POST whose `Origin` (or, without one, `Referer`) names another site
/// than the host it was sent to (`Host`, or HTTP/2's `:authority` given as
/// `authority`). Browsers send at least one of them with form posts; a client that
/// sends neither is no browser another site could steer.
pub fn check_origin(headers: &HeaderMap, authority_of_uri: Option<&str>) -> Result<(), AppError> {
    let host = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or(authority_of_uri);
    let claimed = headers
        .get(ORIGIN)
        .or_else(|| headers.get(REFERER))
        .and_then(|v| v.to_str().ok());
    let Some(claimed) = claimed else {
        return Ok(());
    };
    match (authority(claimed), host) {
        (Some(from), Some(host)) if from.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(AppError::forbidden(format!(
            "cross-site form post refused: it comes from `{claimed}`, not from this server"
        ))),
    }
}

impl Session {
    /// Checks a POST's form token (its `csrf` field); the origin was checked by
    /// the web router's middleware before the handler ran.
    pub fn check_token(&self, token: Option<&str>) -> Result<(), AppError> {
        // Compared as hashes: `blake3::Hash` equality is constant-time.
        match token {
            Some(t) if hash(t) == hash(&self.csrf) => Ok(()),
            Some(_) => Err(AppError::forbidden(
                "the form's token does not match this session (a form from an older login?); \
                 reload the page and try again",
            )),
            None => Err(AppError::forbidden(
                "the form carries no token (field `csrf`); reload the page and try again",
            )),
        }
    }
}

/// A refused POST as a page: 403 with the reason.
pub fn refused(session: Option<&Session>, e: &AppError) -> Response {
    layout::error_page(session, StatusCode::FORBIDDEN, &e.message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(axum::http::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[(COOKIE, "a=1; molt_session=abc ; b=2")]);
        assert_eq!(cookie(&h, COOKIE_NAME), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn origins_must_match_the_host() {
        let ok = headers(&[(HOST, "127.0.0.1:8080"), (ORIGIN, "http://127.0.0.1:8080")]);
        assert!(check_origin(&ok, None).is_ok());
        let referer = headers(&[
            (HOST, "127.0.0.1:8080"),
            (REFERER, "http://127.0.0.1:8080/updates/new?x=1"),
        ]);
        assert!(check_origin(&referer, None).is_ok());
        let evil = headers(&[(HOST, "127.0.0.1:8080"), (ORIGIN, "http://evil.example")]);
        assert!(check_origin(&evil, None).is_err());
        let null = headers(&[(HOST, "127.0.0.1:8080"), (ORIGIN, "null")]);
        assert!(check_origin(&null, None).is_err());
        assert!(check_origin(&headers(&[(HOST, "h")]), None).is_ok());
        let h2 = headers(&[(ORIGIN, "https://ctl.example:8443")]);
        assert!(check_origin(&h2, Some("ctl.example:8443")).is_ok());
    }

    #[test]
    fn next_stays_on_this_server() {
        assert_eq!(safe_next(Some("/deployments/3")), "/deployments/3");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(None), "/");
        assert_eq!(
            form_urlencoded_component("/devices?group=a b"),
            "/devices%3Fgroup%3Da%20b"
        );
    }
}
