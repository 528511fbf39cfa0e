//! `molt bundle build`: a planned recipe in, a signed and checked bundle file out, atomically; and `molt digest`, the file digests bundles record.
//!
//! The bundle is written to a temporary file beside the output, read back with the
//! public halves of the signing keys by the decoder a device runs, and only then
//! renamed into place: a failed or interrupted build never leaves a partial or
//! unverifiable file under the output name.
//!
//! How deep the read-back goes is [`Check`]. By default it is the chain: signature,
//! manifest and limits, and every chunk's digest, lengths and frame header, i.e.
//! every byte of the file as written, at hashing speed. It does not decompress the
//! entries the encoder has just made from the sources; the controller decodes every
//! uploaded bundle in full and a device every bundle it installs, so the full decode
//! here (`--verify`) would be the third. It cost a quarter of the build
//! (docs/benchmarks.md, bundle-build).
//!
//! Speed: each source file is read once into one reused buffer and handed to the
//! encoder, which hashes it and packs it; the encoder compresses in a second
//! thread while this one reads the next files, spools frames into the bundle file
//! itself (no second file), and the bundle's fsync runs beside the self-check.

use std::fs::{File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ed25519_dalek::SigningKey;
use molt_engine::bundle::encoder::{digest_reader, Encoder, EncoderOptions};
use molt_engine::bundle::format::{key_id, Digest, KeyId, MAX_SIGNATURES};
use molt_engine::bundle::{EntryHeader, EntryKind, TrustedKey};
use molt_engine::error::LimitKind;
use molt_engine::Error;

use crate::inspect::{self, Refusal};
use crate::progress::{Counted, Progress};
use crate::recipe::{self, BuildTime, Plan, PlannedKind};

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

/// How [`build`] reads the bundle back before it gets the output's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Signature, manifest and the whole chunk chain, without decompressing
    /// ([`inspect::verify_chain`]).
    Chain,
    /// Everything a device checks: also every entry and file digest
    /// ([`inspect::verify`], `molt bundle build --verify`).
    Full,
}

/// How to build: everything but the recipe, the output and the keys.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// How deep the bundle is read back before it gets its name.
    pub check: Check,
    /// The build's time ([`BuildTime::from_env`] honours `SOURCE_DATE_EPOCH`).
    pub time: BuildTime,
    /// Compression threads; `None` for the encoder's default. The bundle's bytes do
    /// not depend on it.
    pub threads: Option<usize>,
}

impl Options {
    /// A build at `time`, read back as `check` says, on the default threads.
    pub fn new(check: Check, time: BuildTime) -> Self {
        Options {
            check,
            time,
            threads: None,
        }
    }
}

/// Builds the bundle described by the recipe at `recipe_path` into `output`, signed with
/// every key in `keys`, and reads it back as deep as `opts.check` says. Its bytes depend
/// only on the recipe, its sources, the keys and `opts.time`. `progress` hears of the
/// file bytes packed, then of the bundle bytes verified; pass
/// [`Silent`](crate::progress::Silent) for none.
pub fn build(
    recipe_path: &Path,
    output: &Path,
    keys: &[SigningKey],
    opts: Options,
    progress: &dyn Progress,
) -> Result<Built> {
    if keys.is_empty() || keys.len() > MAX_SIGNATURES {
        bail!(
            "give 1 to {MAX_SIGNATURES} signing keys (--key), not {}",
            keys.len()
        );
    }
    let plan = recipe::load(recipe_path, opts.time)?;
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
    // The temporary lives in the output directory: it must hold the bundle anyway,
    // /tmp is often a small tmpfs, and a rename within one file system is atomic.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;

    progress.stage("packing", Some(plan.file_bytes()));
    // The encoder spools its frames into the bundle file itself and moves them into
    // place at the end: no second file, half the page cache and writeback.
    let file = tmp
        .as_file()
        .try_clone()
        .context("cannot reopen the temporary file")?;
    let summary = std::thread::scope(|s| {
        let flush = EarlyFlush::start(s, tmp.as_file());
        let summary = encode(&plan, file, keys, opts.threads, &flush, progress);
        let flushed = flush.finish();
        let summary = summary?;
        flushed.context("cannot flush the bundle to disk")?;
        Ok::<_, anyhow::Error>(summary)
    })
    .map_err(|e| anyhow!("{}: {e:#}", recipe_path.display()))?;

    // Read the result back the way a device will, before it gets the output's name.
    progress.stage("verifying", Some(summary.bundle_len));
    let public: Vec<TrustedKey> = keys
        .iter()
        .map(|k| TrustedKey::from_bytes(k.verifying_key().as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("signing key: {e}"))?;
    // The fsync waits on the disk and the self-check on the CPU: run them side by
    // side; both must succeed before the rename.
    let (synced, verified) = std::thread::scope(|s| {
        let file = tmp.as_file();
        let sync = s.spawn(move || file.sync_all());
        let verified = match opts.check {
            Check::Chain => inspect::verify_chain(tmp.path(), &public, Some(progress)),
            Check::Full => inspect::verify(tmp.path(), &public, Some(progress)),
        };
        (sync.join(), verified)
    });
    if let Err(e) = verified {
        return Err(anyhow!(
            "{}: {:#}",
            recipe_path.display(),
            explain_self_check(e)
        ));
    }
    synced
        .map_err(|_| anyhow!("the fsync thread panicked"))?
        .context("cannot flush the bundle to disk")?;

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

/// Bytes read from the sources between two early flushes of the bundle file.
const FLUSH_EVERY: u64 = 16 << 20;

/// Writes the bundle file's pages out while the build goes on, so that the fsync
/// before the rename finds little left to write: a thread runs `fdatasync` each time
/// the build has read another [`FLUSH_EVERY`] bytes. Without it the whole bundle
/// waited for the disk at the end (80 ms of a 0.45 s build of 117 MiB).
struct EarlyFlush<'scope> {
    tx: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::ScopedJoinHandle<'scope, io::Result<()>>>,
    read: std::cell::Cell<u64>,
    last: std::cell::Cell<u64>,
}

impl<'scope> EarlyFlush<'scope> {
    /// Starts the thread in `scope` (without one, if it cannot start: then the final
    /// fsync simply does all the writing).
    fn start(scope: &'scope std::thread::Scope<'scope, '_>, file: &'scope File) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("molt-flush".into())
            .spawn_scoped(scope, move || {
                for () in rx {
                    file.sync_data()?;
                }
                Ok(())
            });
        match spawned {
            Ok(thread) => EarlyFlush {
                tx: Some(tx),
                thread: Some(thread),
                read: Default::default(),
                last: Default::default(),
            },
            Err(_) => EarlyFlush {
                tx: None,
                thread: None,
                read: Default::default(),
                last: Default::default(),
            },
        }
    }

    /// Stops the thread and returns its first error. It must not be dropped silently:
    /// a write-back error is reported once per open file, so the fsync before the
    /// rename, on the same file, would not see it again.
    fn finish(mut self) -> io::Result<()> {
        drop(self.tx.take());
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the flushing thread panicked")),
            None => Ok(()),
        }
    }

    /// Counts `n` more source bytes; asks for a flush when due (never waits: a flush
    /// still running absorbs the request).
    fn read(&self, n: u64) {
        let read = self.read.get() + n;
        self.read.set(read);
        if read - self.last.get() >= FLUSH_EVERY {
            self.last.set(read);
            if let Some(tx) = &self.tx {
                let _ = tx.try_send(());
            }
        }
    }
}

/// Streams the plan's entries through the encoder into `file` (empty), which then
/// holds the bundle.
fn encode(
    plan: &Plan,
    file: File,
    keys: &[SigningKey],
    threads: Option<usize>,
    flush: &EarlyFlush<'_>,
    progress: &dyn Progress,
) -> Result<molt_engine::bundle::encoder::Summary> {
    let mut opts = EncoderOptions::default();
    if let Some(n) = threads {
        opts.compress_threads = n;
    }
    let mut enc = match prefix_hint(plan, &opts, keys.len()) {
        Some(at) => Encoder::new_in_place_at(file, opts, plan.is_full(), plan.specials, at),
        None => Encoder::new_in_place(file, opts, plan.is_full(), plan.specials),
    }
    .context("cannot start the encoder")?;
    // One buffer for every file that fits, grown to the largest: most files are read
    // once, hashed in memory and packed from the same bytes.
    let mut buf = Vec::new();
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
                let mut file = open()?;
                // The digest goes in the header, ahead of the content. A file that fits
                // in memory is read once; a larger one is read twice (hashed, then
                // streamed, and hashed again by the encoder). The size is the one read
                // now, not the one seen while planning.
                buf.clear();
                let whole = read_at_most(&mut file, &mut buf, IN_MEMORY_MAX)
                    .with_context(|| format!("{origin}: cannot read {}", source.display()))?;
                if whole {
                    progress.advance(buf.len() as u64);
                    flush.read(buf.len() as u64);
                    // The encoder hashes the bytes it packs: one pass over memory.
                    enc.add_file_bytes(&header, &buf).map(|_| ())
                } else {
                    let (digest, size) = digest_reader(&mut open()?)
                        .with_context(|| format!("{origin}: cannot read {}", source.display()))?;
                    header.kind = EntryKind::File { size, digest };
                    let mut content = Counted {
                        inner: open()?,
                        progress,
                    };
                    flush.read(size);
                    enc.add(&header, Some(&mut content))
                }
            }
        }
        .map_err(|err| anyhow!("{origin}: {err}"))?;
    }
    progress.stage("signing", None);
    let manifest = plan.manifest()?;
    let (summary, _) = enc.finish_in_place(manifest, keys).map_err(|err| {
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
    Ok(summary)
}

/// Where the payload should start so that it need not move when the build ends:
/// the prefix's length for the plan's manifest, its payload and entry table
/// estimated from the plan (only the byte lengths of those numbers matter, so
/// the estimate is nearly always exact; when it is not, the payload moves once,
/// as it always did). `None` if the manifest cannot be made yet (the build
/// reports why when it needs it).
fn prefix_hint(plan: &Plan, opts: &EncoderOptions, keys: usize) -> Option<u64> {
    use molt_engine::bundle::encoder::prefix_len;
    use molt_engine::bundle::format::{EntryTable, Payload};
    let mut m = plan.manifest().ok()?;
    let file_bytes = plan.file_bytes();
    // Each entry adds a header of about its path plus 40 bytes to the raw stream.
    let raw: u64 = file_bytes
        + plan
            .entries
            .iter()
            .map(|e| e.path.len() as u64 + 64)
            .sum::<u64>();
    m.payload = Payload {
        chunk_count: u32::try_from(raw.div_ceil(u64::from(opts.chunk_size))).ok()?,
        chunk_size: opts.chunk_size,
        // zstd -3 on a typical tree; a wrong guess only costs the move.
        wire_len: raw / 5 * 3,
        raw_len: raw,
        first_chunk: [0; 32],
    };
    m.entries = EntryTable {
        count: u32::try_from(plan.entries.len()).ok()?,
        digest: [0; 32],
        file_bytes,
        specials: plan.specials,
    };
    prefix_len(&m, keys).ok()
}

/// Files up to this size are read into memory once; larger ones are streamed twice.
const IN_MEMORY_MAX: u64 = 64 << 20;

/// Reads `r` to its end into `buf` if it holds at most `max` bytes (true); else
/// stops after `max + 1` bytes (false), and the caller streams it instead.
fn read_at_most(r: &mut File, buf: &mut Vec<u8>, max: u64) -> io::Result<bool> {
    // The buffer keeps the capacity the largest file so far gave it, so a file
    // usually takes one read and the EOF check.
    let n = r.take(max + 1).read_to_end(buf)?;
    Ok(n as u64 <= max)
}

// ---------------------------------------------------------------------------
// `molt digest`: the file digests a bundle records, printed like `b3sum`.

/// The read size for hashing: large enough that a syscall per piece costs little,
/// small enough to stay in the CPU's cache between the copy and the hash.
const HASH_READ: usize = 256 * 1024;

/// The BLAKE3 digest and length of `file`'s content: a bundle's file digest.
/// `buf` is the caller's read buffer, reused across files (one allocation in all).
pub fn digest_file(file: &mut File, buf: &mut [u8]) -> io::Result<(Digest, u64)> {
    let mut h = blake3::Hasher::new();
    let mut n = 0u64;
    loop {
        let k = match file.read(buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // BLAKE3 hashes many 1 KiB chunks at once with SIMD (runtime-detected:
        // blake3's `std` feature is on in this crate), so large pieces go fast.
        h.update(buf.get(..k).unwrap_or(&[]));
        n += k as u64;
    }
    Ok((*h.finalize().as_bytes(), n))
}

/// Prints `HEX  PATH` for every regular file at or beneath `paths` (a file given
/// directly is hashed even through a symlink; below a directory symlinks and
/// special files are skipped, as `find -type f` does), directories in molt's
/// entry order. Lines are formatted as `b3sum` formats them, escapes included, so
/// `b3sum --check` reads them. Returns the number of files.
pub fn digest_paths(paths: &[PathBuf], out: &mut impl Write) -> Result<u64> {
    let mut buf = vec![0u8; HASH_READ];
    let mut files = 0u64;
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            digest_dir(&mut p.clone(), &mut buf, out, &mut files)?;
        } else {
            digest_one(p, &mut buf, out)?;
            files += 1;
        }
    }
    out.flush().context("cannot write the digests")?;
    Ok(files)
}

/// Hashes the files beneath `dir`, which it extends and restores (one path buffer
/// for the whole walk, not one per file).
fn digest_dir(
    dir: &mut PathBuf,
    buf: &mut [u8],
    out: &mut impl Write,
    files: &mut u64,
) -> Result<()> {
    let mut entries = std::fs::read_dir(&*dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|e| {
            let e = e?;
            // The directory entry's own type (no stat): symlinks are not followed.
            Ok((e.file_name(), e.file_type()?))
        })
        .collect::<io::Result<Vec<_>>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    // Names sorted bytewise and visited depth first give molt's order, where a
    // directory's contents come right after it (`a` < `a/b` < `a-b`).
    entries.sort_unstable_by(|a, b| {
        use std::os::unix::ffi::OsStrExt;
        a.0.as_bytes().cmp(b.0.as_bytes())
    });
    for (name, kind) in entries {
        dir.push(&name);
        if kind.is_dir() {
            digest_dir(dir, buf, out, files)?;
        } else if kind.is_file() {
            digest_one(dir, buf, out)?;
            *files += 1;
        }
        dir.pop();
    }
    Ok(())
}

fn digest_one(path: &Path, buf: &mut [u8], out: &mut impl Write) -> Result<()> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (digest, _) =
        digest_file(&mut f, buf).with_context(|| format!("cannot read {}", path.display()))?;
    write_b3sum_line(out, &digest, path).context("cannot write the digests")
}

/// Writes one `b3sum` output line: `HEX  PATH\n`, where a path holding a backslash
/// or a newline is escaped (as `\\` and `\n`) and the line then starts with a
/// backslash. Paths that are not UTF-8 are shown lossily, as `b3sum` shows them.
pub fn write_b3sum_line(out: &mut impl Write, digest: &Digest, path: &Path) -> io::Result<()> {
    let mut hex = [0u8; 64];
    // Cannot fail: 64 bytes hold 32 in hex.
    let _ = hex::encode_to_slice(digest, &mut hex);
    let shown = path.to_string_lossy();
    if shown.contains(['\\', '\n']) {
        out.write_all(b"\\")?;
        out.write_all(&hex)?;
        out.write_all(b"  ")?;
        let escaped = shown.replace('\\', "\\\\").replace('\n', "\\n");
        out.write_all(escaped.as_bytes())?;
    } else {
        out.write_all(&hex)?;
        out.write_all(b"  ")?;
        out.write_all(shown.as_bytes())?;
    }
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_early_flush_error_fails_the_build_rather_than_vanishing() {
        // fdatasync on a character device fails (EINVAL): a stand-in for a write-back
        // error, which the kernel reports once per open file and never again.
        let dev = File::open("/dev/null").unwrap();
        let r = std::thread::scope(|s| {
            let flush = EarlyFlush::start(s, &dev);
            flush.read(FLUSH_EVERY - 1);
            flush.read(1);
            flush.finish()
        });
        assert!(r.is_err(), "{r:?}");

        // A file flushes without error, and no flush is asked for below the interval.
        let tmp = tempfile::tempfile().unwrap();
        let r = std::thread::scope(|s| {
            let flush = EarlyFlush::start(s, &tmp);
            flush.read(3 * FLUSH_EVERY);
            flush.finish()
        });
        assert!(r.is_ok(), "{r:?}");
        let quiet = std::thread::scope(|s| {
            let flush = EarlyFlush::start(s, &dev);
            flush.read(FLUSH_EVERY - 1);
            flush.finish()
        });
        assert!(quiet.is_ok(), "{quiet:?}");
    }
}
