//! The operator web UI (docs/web-ui.md): server-rendered pages beside the JSON API, with the stylesheet and the little JavaScript compiled into the binary.
//!
//! Every page reads and changes state through the same functions as the operator
//! API (operator_api.rs, deployments.rs, build_api.rs), so both front ends
//! validate alike and say the same things. Nothing is fetched from elsewhere:
//! no CDN, no web fonts; the UI works on a closed network.
//!
//! | module | pages |
//! |---|---|
//! | `login.rs` | `/login`, `/logout` |
//! | `deployments.rs` | `/` (recent updates), `/deployments/{id}`, abort, deploy to others |
//! | `new_update.rs` | `/updates/new`: the six-stage recipe form |
//! | `fleet.rs` | `/groups`, `/devices` |
//! | `session.rs` | session cookies and CSRF checks |
//! | `layout.rs` | the page shell and shared renderers |

mod deployments;
mod fleet;
mod layout;
mod login;
mod new_update;
mod session;

use axum::extract::Request;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use molt_engine::protocol::API_PREFIX;

use super::AppState;

pub use session::Transport;

/// The stylesheet, compiled in.
const STYLE: &str = include_str!("assets/style.css");
/// The script: live table refresh and the Abort confirmation.
const SCRIPT: &str = include_str!("assets/app.js");

/// The web UI's routes (all outside `/api/v1`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/login", get(login::show).post(login::submit))
        .route("/logout", axum::routing::post(login::logout))
        .route("/", get(deployments::recent))
        .route("/deployments/table", get(deployments::recent_table))
        .route("/deployments/{id}", get(deployments::details))
        .route("/deployments/{id}/live", get(deployments::details_live))
        .route(
            "/deployments/{id}/abort",
            get(deployments::abort_get).post(deployments::abort),
        )
        .route(
            "/deployments/{id}/resume",
            axum::routing::post(deployments::resume),
        )
        .route(
            "/deployments/{id}/deploy-to-others",
            get(deployments::others_form).post(deployments::deploy_to_others),
        )
        .route(
            "/updates/new",
            get(new_update::show)
                .post(new_update::submit)
                // The form carries the update's files: the bundle limit applies (checked
                // while streaming), not the JSON one.
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/groups", get(fleet::groups).post(fleet::create_group))
        .route("/devices", get(fleet::devices))
        .route(
            "/devices/{id}/remove",
            axum::routing::post(fleet::remove_device),
        )
        .route("/assets/style.css", get(style))
        .route("/favicon.ico", get(favicon))
        .route("/assets/app.js", get(script))
        .layer(axum::middleware::from_fn(guard))
}

/// Every web response: no framing by other sites, no MIME sniffing, a strict
/// content policy (only this server's own script and style), and cross-site
/// POSTs refused before a handler runs.
async fn guard(req: Request, next: Next) -> Response {
    if req.method() == Method::POST {
        let authority = req.uri().authority().map(|a| a.as_str().to_owned());
        if let Err(e) = session::check_origin(req.headers(), authority.as_deref()) {
            // The message quotes the request's Origin header: one line in the log.
            tracing::warn!("web UI: {}", molt_engine::text::Escaped::new(&e.message));
            return session::refused(None, &e);
        }
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    for (k, v) in [
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    ] {
        h.insert(k, axum::http::HeaderValue::from_static(v));
    }
    res
}

/// Unknown paths: the JSON error under `/api/v1` (docs/api.md), an HTML page elsewhere.
pub async fn fallback(req: Request) -> Response {
    let path = req.uri().path();
    if path == API_PREFIX || path.starts_with(&format!("{API_PREFIX}/")) {
        return super::error::no_route(req).await.into_response();
    }
    let message = format!("There is no page {path}.");
    layout::error_page(None, StatusCode::NOT_FOUND, &message)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The tab icon browsers ask for on every page: an SVG "m" (no 404 in the log).
async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON)
}

const FAVICON: &str = "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 16 16'>\
<rect width='16' height='16' rx='3' fill='#1b2333'/>\
<text x='8' y='12' font-family='sans-serif' font-size='11' font-weight='bold' \
fill='#fff' text-anchor='middle'>m</text></svg>";

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
