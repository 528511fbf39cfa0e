//! `molt bundle build`: a planned recipe in, a signed and self-verified bundle file out, atomically.
//!
//! The bundle is written to a temporary file beside the output, verified with the
//! public halves of the signing keys (the same decoder a device runs), and only
//! then renamed into place: a failed or interrupted build never leaves a partial
//! or unverifiable file under the output name.

use std::fs::{File, Permissions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ed25519_dalek::SigningKey;
use indicatif::ProgressBar;
use molt_engine::bundle::encoder::{digest_reader, Encoder, EncoderOptions};
use molt_engine::bundle::format::{key_id, KeyId, MAX_SIGNATURES};
use molt_engine::bundle::{EntryHeader, EntryKind, TrustedKey};
use molt_engine::error::LimitKind;
use molt_engine::Error;

use crate::inspect::{self, Refusal};
use crate::recipe::{self, Plan, PlannedKind};

/// What was built.
#[derive(Debug)]
pub struct Built {
    /// The bundle file.
    pub path: PathBuf,
    /// The update version.
    pub version: String,
    /// Full or patch.
    pub full: bool,
    /// The controller's target group, from the recipe (not in the bundle).
    pub target_group: Option<String>,
    /// Number of entries.
    pub entries: u32,
    /// Number of chunks.
    pub chunks: u32,
    /// Size of the bundle file.
    pub bundle_len: u64,
    /// Sum of file sizes.
    pub file_bytes: u64,
    /// Ids of the signing keys.
    pub key_ids: Vec<KeyId>,
}

/// Builds the bundle described by the recipe at `recipe_path` into `output`, signed with
/// every key in `keys`. `progress` counts file bytes; pass `ProgressBar::hidden()` for none.
pub fn build(
    recipe_path: &Path,
    output: &Path,
    keys: &[SigningKey],
    progress: &ProgressBar,
) -> Result<Built> {
    if keys.is_empty() || keys.len() > MAX_SIGNATURES {
        bail!(
            "give 1 to {MAX_SIGNATURES} signing keys (--key), not {}",
            keys.len()
        );
    }
    let plan = recipe::load(recipe_path)?;
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = output
        .file_name()
        .ok_or_else(|| anyhow!("output {} is not a file name", output.display()))?;
    if output.is_dir() {
        bail!("output {} is a directory", output.display());
    }
    // Both temporaries live in the output directory: it must hold the bundle anyway,
    // /tmp is often a small tmpfs, and a rename within one file system is atomic.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let spool = tempfile::tempfile_in(dir)
        .with_context(|| format!("cannot create a spool file in {}", dir.display()))?;

    progress.set_length(plan.file_bytes());
    progress.set_message("packing");
    let summary = encode(&plan, spool, keys, tmp.as_file_mut(), progress)
        .map_err(|e| anyhow!("{}: {e:#}", recipe_path.display()))?;
    tmp.as_file()
        .sync_all()
        .context("cannot flush the bundle to disk")?;

    // Read the result back the way a device will, before it gets the output's name.
    progress.set_message("verifying");
    progress.set_position(0);
    progress.set_length(summary.bundle_len);
    let public: Vec<TrustedKey> = keys
        .iter()
        .map(|k| TrustedKey::from_bytes(k.verifying_key().as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("signing key: {e}"))?;
    if let Err(e) = inspect::verify(tmp.path(), &public, Some(progress)) {
        return Err(anyhow!(
            "{}: {:#}",
            recipe_path.display(),
            explain_self_check(e)
        ));
    }

    tmp.as_file()
        .set_permissions(Permissions::from_mode(0o644))
        .context("cannot set the bundle's permissions")?;
    tmp.persist(output).map_err(|e| {
        anyhow!(
            "cannot rename the bundle to {}: {}",
            output.display(),
            e.error
        )
    })?;
    // The rename is durable only once the directory is synced.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    progress.finish_and_clear();
    Ok(Built {
        path: output.to_path_buf(),
        version: plan.version.clone(),
        full: plan.is_full(),
        target_group: plan.target_group.clone(),
        entries: summary.entries,
        chunks: summary.chunks,
        bundle_len: summary.bundle_len,
        file_bytes: summary.file_bytes,
        key_ids: keys
            .iter()
            .map(|k| key_id(k.verifying_key().as_bytes()))
            .collect(),
    })
}

/// Turns a failed self-check into advice: the encoder checks entries and fields, so what
/// the decoder still refuses is a source that changed mid-build or a limit only it knows.
fn explain_self_check(e: anyhow::Error) -> anyhow::Error {
    let Some(r) = e.downcast_ref::<Refusal>() else {
        return e;
    };
    match r.error {
        Error::EntryDigest { .. } | Error::EntryTable { .. } => anyhow!(
            "the bundle just built does not verify: {r}; did a source file change during the build?"
        ),
        Error::Limit {
            limit: LimitKind::ManifestLen,
            ..
        } => anyhow!(
            "the manifest is larger than devices accept (64 KiB): shorten the scripts, \
             the comment or the package list"
        ),
        _ => anyhow!("the bundle just built does not verify: {r}"),
    }
}

/// Streams the plan's entries through the encoder into `out`.
fn encode(
    plan: &Plan,
    spool: File,
    keys: &[SigningKey],
    out: &mut File,
    progress: &ProgressBar,
) -> Result<molt_engine::bundle::encoder::Summary> {
    let mut enc = Encoder::new(
        spool,
        EncoderOptions::default(),
        plan.is_full(),
        plan.specials,
    )
    .context("cannot start the encoder")?;
    for e in &plan.entries {
        let origin = plan.origin(e);
        let mut header = EntryHeader {
            path: &e.path,
            kind: EntryKind::Dir,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
        };
        match &e.kind {
            PlannedKind::Dir => enc.add(&header, None),
            PlannedKind::Delete => {
                header.kind = EntryKind::Delete;
                enc.add(&header, None)
            }
            PlannedKind::Symlink { target } => {
                header.kind = EntryKind::Symlink { target };
                enc.add(&header, None)
            }
            PlannedKind::File { source, .. } => {
                let open = || {
                    File::open(source)
                        .with_context(|| format!("{origin}: cannot open {}", source.display()))
                };
                // The digest goes in the header, ahead of the content, so each file is read
                // twice. The size is the one hashed now, not the one seen while planning.
                let (digest, size) = digest_reader(&mut open()?)
                    .with_context(|| format!("{origin}: cannot read {}", source.display()))?;
                header.kind = EntryKind::File { size, digest };
                let mut content = progress.wrap_read(open()?);
                enc.add(&header, Some(&mut content))
            }
        }
        .map_err(|err| anyhow!("{origin}: {err}"))?;
    }
    progress.set_message("signing");
    let manifest = plan.manifest()?;
    let mut w = BufWriter::new(out);
    let summary = enc.finish(manifest, keys, &mut w).map_err(|err| {
        // Field errors were caught while planning; name the recipe field if one slips through.
        let text = err.to_string();
        match text
            .strip_prefix("manifest field `")
            .and_then(|t| t.split_once("`: "))
        {
            Some((field, why)) => anyhow!("{}: {why}", recipe::recipe_field(field)),
            None => anyhow!("cannot write the bundle: {text}"),
        }
    })?;
    w.flush().context("cannot write the bundle")?;
    Ok(summary)
}
