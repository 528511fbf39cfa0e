//! `molt-controller serve`: the fleet server. Opening the data directory (database, bundle store, signing key, operator token), the router, and serving it over HTTP or HTTPS.
//!
//! The data directory holds everything; nothing else is read or written:
//!
//! ```text
//! molt.db (+ -wal, -shm)   the SQLite database (db.rs)
//! bundles/<blake3>.bundle  stored, verified bundles (store.rs)
//! tmp/                     uploads and builds in progress; emptied at every start
//! operator-token           the operator's bearer token (mode 0600); only its hash is in the database
//! signing.secret, .pub     the key server-side builds are signed with (trusted); none with --no-signing-key
//! trusted-keys             more public keys that uploads may be signed with, one hex key per line
//! ```

mod auth;
mod build_api;
mod build_dir;
pub mod conn;
mod db;
mod deployments;
mod device_api;
mod error;
mod gates;
mod operator_api;
mod range;
mod rollout;
mod seen;
mod store;
mod updates_api;
mod waves;
mod web;

use std::fs::{self, DirBuilder};
use std::future::Future;
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post};
use axum::Router;
use ed25519_dalek::SigningKey;
use molt_engine::bundle::TrustedKey;
use molt_engine::protocol::API_PREFIX;

use db::Db;
use molt_bundle::keys;
use store::Store;

/// Default poll interval, in seconds.
pub const DEFAULT_POLL_INTERVAL: u32 = 60;
/// Default limit of an uploaded bundle: 4 GiB.
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 4 << 30;

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// The data directory.
    pub data: PathBuf,
    /// Seconds between a device's polls when it has nothing to do.
    pub poll_interval_secs: u32,
    /// Largest bundle upload (and server-side build input) accepted.
    pub max_bundle_bytes: u64,
    /// Public keys (64 hex digits) trusted beside the data directory's.
    pub trusted_keys: Vec<String>,
    /// Hold no private key: no server-side builds, only uploads signed elsewhere.
    pub no_signing_key: bool,
}

/// The data directory when none is given: `/var/lib/molt-controller` for root,
/// else `$HOME/.local/share/molt-controller`.
pub fn default_data_dir() -> PathBuf {
    // The owner of /proc/self is the process's effective user; no libc call needed.
    let root = fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    match std::env::var_os("HOME") {
        Some(home) if !root && !home.is_empty() => {
            PathBuf::from(home).join(".local/share/molt-controller")
        }
        _ => PathBuf::from("/var/lib/molt-controller"),
    }
}

/// What every handler shares.
pub struct Shared {
    db: Db,
    store: Store,
    /// Keys uploads are verified with: the signing key's public half first.
    keys: Vec<TrustedKey>,
    /// Signs server-side builds; `None` (`--no-signing-key`) refuses them.
    signing: Option<SigningKey>,
    operator_hash: blake3::Hash,
    /// Device credentials found, versions stored, and poll times not yet written.
    seen: seen::Seen,
    poll_interval: u32,
    max_bundle_bytes: u64,
}

/// The handlers' state.
pub type AppState = Arc<Shared>;

/// An opened data directory, ready to serve.
pub struct Server {
    state: AppState,
    /// The operator token, when this start created it (print it once).
    pub new_operator_token: Option<String>,
    /// Where the operator token is kept.
    pub operator_token_file: PathBuf,
}

impl Server {
    /// Opens (creating on first start) the data directory: database and migrations,
    /// bundle store (leftovers of a crash removed), signing key, operator token,
    /// trusted keys.
    pub fn open(config: &Config) -> Result<Server> {
        if config.poll_interval_secs == 0 {
            bail!("--poll-interval must be at least 1 second");
        }
        let data = &config.data;
        // 0700: the directory holds the signing key and the database of credentials.
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data)
            .with_context(|| format!("cannot create the data directory {}", data.display()))?;
        let db = Db::open(&data.join("molt.db"))?;
        let store = Store::open(data)?;
        store.sweep(&db)?;
        let signing = if config.no_signing_key {
            if data.join("signing.secret").exists() {
                tracing::warn!(
                    "--no-signing-key: {} is neither used nor trusted; delete it",
                    data.join("signing.secret").display()
                );
            }
            None
        } else {
            Some(signing_key(data)?)
        };
        let keys = trusted_keys(data, signing.as_ref(), &config.trusted_keys)?;
        if keys.is_empty() {
            bail!(
                "--no-signing-key: no key to verify uploads with; give --trusted-key HEX \
                 or list public keys in {}",
                data.join("trusted-keys").display()
            );
        }
        let (operator_hash, new_operator_token) = auth::operator_token(&db.lock(), data)?;
        let _ = store::sync_dir(data);
        tracing::info!(
            "data directory {}; {} trusted key(s): {}",
            data.display(),
            keys.len(),
            keys.iter()
                .map(|k| hex::encode(k.id))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let state = Arc::new(Shared {
            db,
            store,
            keys,
            signing,
            operator_hash,
            seen: seen::Seen::default(),
            poll_interval: config.poll_interval_secs,
            max_bundle_bytes: config.max_bundle_bytes,
        });
        seen::start_flusher(Arc::downgrade(&state));
        gates::start_ticker(Arc::downgrade(&state));
        Ok(Server {
            state,
            new_operator_token,
            operator_token_file: data.join("operator-token"),
        })
    }

    /// The HTTP routes: the API under `/api/v1` (docs/api.md) and the web UI beside it (docs/web-ui.md).
    pub fn router(&self) -> Router {
        let max_bundle = usize::try_from(self.state.max_bundle_bytes).unwrap_or(usize::MAX);
        let api = Router::new()
            .route("/device/enroll", post(device_api::enroll))
            .route("/device/poll", post(device_api::poll))
            .route("/device/deployments/{id}/report", post(device_api::report))
            .route("/device/deployments/{id}/bundle", get(device_api::bundle))
            .route(
                "/groups",
                get(operator_api::list_groups).post(operator_api::create_group),
            )
            .route("/groups/{name}", patch(operator_api::patch_group))
            .route("/devices", get(operator_api::list_devices))
            .route(
                "/devices/{id}",
                get(operator_api::device_details)
                    .patch(operator_api::patch_device)
                    .delete(operator_api::remove_device),
            )
            .route(
                "/updates",
                get(updates_api::list)
                    .post(updates_api::upload)
                    .layer(DefaultBodyLimit::disable()),
            )
            .route("/updates/{id}", axum::routing::delete(updates_api::remove))
            .route(
                "/updates/build",
                post(build_api::build).layer(DefaultBodyLimit::max(max_bundle)),
            )
            .route(
                "/deployments",
                get(deployments::list).post(deployments::deploy),
            )
            .route("/deployments/{id}", get(deployments::details))
            .route(
                "/deployments/{id}/deploy-to-others",
                post(deployments::deploy_to_others),
            )
            .route("/deployments/{id}/abort", post(deployments::abort))
            .route("/deployments/{id}/resume", post(deployments::resume))
            .route(
                "/deployments/{id}/devices/{device}/log",
                get(deployments::log),
            );
        let app = Router::new()
            .nest(API_PREFIX, api)
            .merge(web::routes())
            .fallback(web::fallback)
            .layer(DefaultBodyLimit::max(error::MAX_JSON_BODY))
            .layer(axum::middleware::from_fn(conn::body_timeout))
            .layer(axum::middleware::from_fn(log_request))
            .with_state(self.state.clone());
        // Around the whole router rather than each route (as `Router::layer`
        // does), so it sees a 405 whole: axum adds its `Allow` outside the route.
        Router::new()
            .fallback_service(app)
            .layer(axum::middleware::from_fn(error::json_errors))
    }
}

impl Drop for Server {
    /// Writes the poll times still in memory: the server is stopping.
    fn drop(&mut self) {
        if let Err(e) = self.state.seen.flush(&mut self.state.db.lock()) {
            tracing::warn!("cannot write last_seen times: {}", e.message);
        }
    }
}

impl Shared {
    /// Writes the poll times still in memory, so that a read of `last_seen` that
    /// follows is exact (device listings call it first).
    async fn flush_seen(self: &Arc<Self>) -> Result<(), error::AppError> {
        let state = self.clone();
        self.db.call(move |c| state.seen.flush(c)).await
    }
}

/// Logs each request's method, path, status and time at debug level (`MOLT_LOG=debug`).
async fn log_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    tracing::debug!(
        "{method} {path} -> {} in {} ms",
        res.status().as_u16(),
        started.elapsed().as_millis()
    );
    res
}

/// Reads `<data>/signing.secret`, generating the pair on first start.
fn signing_key(data: &Path) -> Result<SigningKey> {
    let prefix = data.join("signing");
    let secret = data.join("signing.secret");
    if !secret.exists() {
        let g = keys::generate(&prefix).context("cannot create the controller's signing key")?;
        tracing::info!(
            "created signing key {} in {}",
            hex::encode(g.id),
            secret.display()
        );
    }
    keys::read_secret(&secret)
}

/// The signing key's public half (if the controller has one), `<data>/trusted-keys`
/// and the `--trusted-key`s.
fn trusted_keys(
    data: &Path,
    signing: Option<&SigningKey>,
    extra: &[String],
) -> Result<Vec<TrustedKey>> {
    let mut keys = Vec::new();
    if let Some(s) = signing {
        keys.push(
            TrustedKey::from_bytes(s.verifying_key().as_bytes())
                .map_err(|e| anyhow!("the signing key: {e}"))?,
        );
    }
    let parse = |text: &str, origin: &str| -> Result<TrustedKey> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(text, &mut b)
            .map_err(|_| anyhow!("{origin}: `{text}` is not a public key (64 hex digits)"))?;
        TrustedKey::from_bytes(&b).map_err(|e| anyhow!("{origin}: {e}"))
    };
    let file = data.join("trusted-keys");
    if let Ok(text) = fs::read_to_string(&file) {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(parse(line, &format!("{} line {}", file.display(), i + 1))?);
        }
    }
    for k in extra {
        keys.push(parse(k.trim(), "--trusted-key")?);
    }
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.id));
    Ok(keys)
}

/// Loads a PEM certificate chain and private key into a rustls server config
/// with the ring provider.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow!(
                "{}: cannot read a PEM certificate chain: {e}",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        bail!("{}: no certificate in it", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow!("{}: cannot read a PEM private key: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS set-up: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| anyhow!("{} and {}: {e}", cert.display(), key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` on `listener` (HTTPS when `tls` is given) until `shutdown`
/// completes, then lets requests in flight finish for up to 10 seconds. Idle and
/// slow clients are cut off and open connections capped at `max_connections`
/// (conn.rs), after raising the open-file limit; hyper's own answers to requests
/// it cannot parse get the JSON error body (conn/head_errors.rs).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    max_connections: Option<usize>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let fds = conn::raise_fd_limit();
    let cap = conn::max_connections(max_connections, fds);
    tracing::info!(
        "at most {cap} connections (open-file limit {})",
        fds.map_or("unknown".into(), |n| n.to_string())
    );
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        h.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    // The web UI marks its session cookie `Secure` when it is served over TLS.
    let app = app.layer(axum::Extension(web::Transport {
        https: tls.is_some(),
    }));
    let service = app.into_make_service();
    let capped = conn::Capped::new(axum_server::accept::DefaultAcceptor, cap);
    let mut server = axum_server::from_tcp(listener)?
        .handle(handle)
        .first_request_timeout(conn::FIRST_REQUEST)
        // Refused connections (the cap) are logged by the acceptor, once a minute.
        .accept_error_handler(|_, _| {});
    server
        .http_builder()
        .http1()
        .header_read_timeout(conn::HEADER_READ);
    match tls {
        Some(config) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(config);
            // The cap is the inner acceptor: a TLS handshake holds a permit too.
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config).acceptor(capped);
            // hyper's own answers are rewritten in plain text, above TLS.
            let acceptor = conn::JsonHeadErrors::new(acceptor);
            server.acceptor(acceptor).serve(service).await?
        }
        None => {
            let acceptor = conn::JsonHeadErrors::new(capped);
            server.acceptor(acceptor).serve(service).await?
        }
    }
    Ok(())
}
