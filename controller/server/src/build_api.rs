//! `POST /updates/build`: a recipe and its files as `multipart/form-data`, built and signed with the controller's own key, then stored like an upload.
//!
//! The parts are written into a fresh directory beneath `<data>/tmp/` (see
//! build_dir.rs), laid out so the recipe's relative sources resolve to them, and
//! the recipe is built by the same code as `molt bundle build`. Every path the
//! recipe names (sources, scripts, package files) must be relative and stay
//! inside that directory: a recipe that named `/etc/shadow` or
//! `../signing.secret` would otherwise ship the server's own files to a fleet.

use std::fs;

use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

use super::auth::Operator;
use super::build_dir::{BuildDir, Kind, PartMeta, RECIPE_NAME};
use super::error::{AppError, QueryParams, MAX_JSON_BODY};
use super::store::Received;
use super::updates_api::{ingest, UploadQuery};
use super::AppState;
use molt_api::Update;
use molt_bundle::build;
use molt_bundle::recipe::{BuildTime, RecipeFile};

fn part_error(e: MultipartError) -> AppError {
    AppError::new(
        e.status(),
        format!("cannot read the multipart body: {}", e.body_text()),
    )
}

/// Reads the form into `dir`; returns the recipe's text.
async fn receive_parts(
    multipart: &mut Multipart,
    dir: &mut BuildDir,
    max: u64,
) -> Result<String, AppError> {
    let mut recipe: Option<String> = None;
    let mut total: u64 = 0;
    while let Some(mut field) = multipart.next_field().await.map_err(part_error)? {
        let name = field
            .name()
            .ok_or_else(|| AppError::bad_request("a multipart part has no name"))?
            .to_owned();
        if name == "recipe" {
            if recipe.is_some() {
                return Err(AppError::bad_request("two `recipe` parts"));
            }
            let bytes = field.bytes().await.map_err(part_error)?;
            if bytes.len() > MAX_JSON_BODY {
                return Err(AppError::too_large("the recipe part is larger than 1 MiB"));
            }
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|_| AppError::bad_request("the recipe part is not UTF-8 text"))?;
            recipe = Some(text);
            continue;
        }
        let meta = PartMeta::read(&name, field.headers())?;
        let dest = dir.place(&name, meta.kind)?;
        match meta.kind {
            Kind::Dir => dir.add_dir(&dest, meta)?,
            Kind::Symlink => {
                let target = field.bytes().await.map_err(part_error)?;
                let target = std::str::from_utf8(&target).map_err(|_| {
                    AppError::bad_request(format!("part `{name}`: symlink target is not UTF-8"))
                })?;
                dir.add_symlink(&dest, target)?;
            }
            Kind::File => {
                let io = |e: std::io::Error| {
                    AppError::internal(format!("cannot store part `{name}`: {e}"))
                };
                let mut out = tokio::fs::File::create(&dest).await.map_err(io)?;
                while let Some(chunk) = field.chunk().await.map_err(part_error)? {
                    total += chunk.len() as u64;
                    if total > max {
                        return Err(AppError::too_large(format!(
                            "the files are larger than the limit of {max} bytes (--max-bundle-bytes)"
                        )));
                    }
                    out.write_all(&chunk).await.map_err(io)?;
                }
                out.flush().await.map_err(io)?;
                drop(out);
                dir.finish_file(&dest, meta)?;
            }
        }
    }
    recipe.ok_or_else(|| AppError::bad_request("no `recipe` part (the recipe TOML)"))
}

/// `POST /updates/build`.
pub async fn build(
    _: Operator,
    State(state): State<AppState>,
    QueryParams(q): QueryParams<UploadQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<Update>), AppError> {
    // Before a byte of the sources is received.
    if state.signing.is_none() {
        return Err(AppError::conflict(NO_SIGNING_KEY));
    }
    let mut multipart = multipart.map_err(|e| {
        AppError::new(
            e.status(),
            format!("expected a multipart/form-data body: {}", e.body_text()),
        )
    })?;
    let (tmp, mut dir) = new_build_dir(&state)?;
    let received = receive_parts(&mut multipart, &mut dir, state.max_bundle_bytes).await;
    let update = build_received(state, tmp, dir, received, q.comment).await?;
    Ok((StatusCode::CREATED, Json(update)))
}

/// Why a controller started with `--no-signing-key` builds nothing.
pub const NO_SIGNING_KEY: &str = "server-side builds are off: this controller holds no signing \
     key (--no-signing-key); build and sign the bundle elsewhere (`molt bundle build`) and \
     upload it (`molt update push BUNDLE`)";

/// A fresh temporary directory beneath `<data>/tmp/` and the empty build directory in it.
pub fn new_build_dir(state: &AppState) -> Result<(TempDir, BuildDir), AppError> {
    let tmp = state.store.temp_dir()?;
    let src = tmp.path().join("src");
    fs::create_dir(&src)
        .map_err(|e| AppError::internal(format!("cannot create {}: {e}", src.display())))?;
    Ok((tmp, BuildDir::new(src)))
}

/// Builds `recipe` over the parts received into `dir`, signs it with the controller's
/// key and stores it as a new update (the comment defaults to the recipe's).
///
/// `recipe` is the outcome of receiving the parts: an error there still releases
/// the directory. Every path the recipe names is checked to be an uploaded part.
pub async fn build_received(
    state: AppState,
    tmp: TempDir,
    mut dir: BuildDir,
    recipe: Result<String, AppError>,
    comment: Option<String>,
) -> Result<Update, AppError> {
    let src = dir.path().to_path_buf();
    let checked = recipe.and_then(|recipe| {
        dir.finish()?;
        let parsed: RecipeFile =
            toml::from_str(&recipe).map_err(|e| AppError::bad_request(format!("recipe: {e}")))?;
        for (field, path) in parsed.named_paths() {
            dir.check_named(&field, &path)?;
        }
        let recipe_path = src.join(RECIPE_NAME);
        fs::write(&recipe_path, &recipe).map_err(|e| {
            AppError::internal(format!("cannot write {}: {e}", recipe_path.display()))
        })?;
        Ok(recipe_path)
    });
    let recipe_path = match checked {
        Ok(p) => p,
        Err(e) => {
            dir.release();
            return Err(e);
        }
    };

    let Some(key) = state.signing.clone() else {
        dir.release();
        return Err(AppError::conflict(NO_SIGNING_KEY));
    };
    let output = state.store.temp_file()?;
    let out_path = output.path().to_path_buf();
    let built = tokio::task::spawn_blocking(move || {
        // The chain is checked here; `ingest` below decodes the bundle in full.
        let built = build::build(
            &recipe_path,
            &out_path,
            &[key],
            // The server's own clock: `SOURCE_DATE_EPOCH` in its environment would give
            // every build one `release` and so stop the anti-rollback counter.
            build::Options::new(build::Check::Chain, BuildTime::now()),
            &molt_bundle::progress::Silent,
        );
        // The directory goes only after the build is done with it.
        dir.release();
        drop(tmp);
        built.map_err(|e| {
            // Name the recipe and parts as the operator sent them, not by server paths.
            let src_text = format!("{}/", dir.path().display());
            let text = format!("{e:#}")
                .replace(&format!("{src_text}{RECIPE_NAME}"), "recipe")
                .replace(&src_text, "");
            AppError::bad_request(format!("build failed: {text}"))
        })?;
        let io =
            |e: std::io::Error| AppError::internal(format!("cannot read the built bundle: {e}"));
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_reader(fs::File::open(&out_path).map_err(io)?)
            .map_err(io)?;
        let size = fs::metadata(&out_path).map_err(io)?.len();
        Ok::<_, AppError>((hasher.finalize().to_hex().to_string(), size))
    })
    .await
    .map_err(|e| AppError::internal(format!("build task failed: {e}")))?;
    let (blake3, size) = built?;
    let got = Received {
        file: output,
        blake3,
        size,
    };
    ingest(state, got, comment).await
}
