//! Signing keys for bundles: generating a key pair and reading `.secret` / `.pub` files.
//!
//! Both files hold 64 hex digits and a newline: the 32-byte ed25519 seed, or the
//! 32-byte public key. Hex keeps them printable, diffable and easy to paste into a
//! device's configuration; the key id (`format::key_id`) is what every tool prints.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use molt_engine::bundle::format::{key_id, KeyId};
use molt_engine::bundle::TrustedKey;

/// The files and key id `generate` produced.
#[derive(Debug)]
pub struct Generated {
    /// The secret seed file (mode 0600).
    pub secret: PathBuf,
    /// The public key file.
    pub public: PathBuf,
    /// The key id devices and `molt bundle inspect` show.
    pub id: KeyId,
}

/// Appends `suffix` to the file name of `prefix` (`keys/release` becomes `keys/release.secret`).
fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Generates a key pair from the operating system's randomness and writes
/// `<prefix>.secret` and `<prefix>.pub`.
///
/// Refuses if either file exists: overwriting a secret key would orphan every device
/// that pins its public half, and there is no way to get it back.
pub fn generate(prefix: &Path) -> Result<Generated> {
    let secret = with_suffix(prefix, ".secret");
    let public = with_suffix(prefix, ".pub");
    for p in [&secret, &public] {
        if fs::symlink_metadata(p).is_ok() {
            bail!(
                "{} already exists; refusing to overwrite a key",
                p.display()
            );
        }
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| anyhow::anyhow!("cannot get randomness from the operating system: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let verifying = key.verifying_key();

    // `create_new` makes the existence check above race-free, and the mode is set at
    // creation so the seed is never readable by others, not even for an instant.
    create_file(&secret, 0o600, &format!("{}\n", hex::encode(seed)))?;
    let written = create_file(
        &public,
        0o644,
        &format!("{}\n", hex::encode(verifying.as_bytes())),
    );
    if let Err(e) = written {
        // A secret without its public half is useless and confusing; take it back.
        let _ = fs::remove_file(&secret);
        return Err(e);
    }
    Ok(Generated {
        secret,
        public,
        id: key_id(verifying.as_bytes()),
    })
}

/// Writes `text` to a new file at `path`, refusing one that exists, with `mode` set at
/// creation (a secret is never readable by others, not even for an instant) and
/// synced before it returns. For keys and the controller's operator token.
pub fn create_file(path: &Path, mode: u32, text: &str) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Reads a file of 64 hex digits (surrounding whitespace allowed) into 32 bytes.
fn read_hex32(path: &Path, what: &str) -> Result<[u8; 32]> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| {
        anyhow::anyhow!(
            "{}: not a molt {what} (expected 64 hex digits)",
            path.display()
        )
    })?;
    Ok(out)
}

/// Reads a `.secret` file written by `molt keygen`.
///
/// Warns (on stderr) when the file is readable by group or others, as ssh does,
/// but still uses it: CI secrets mounted from a store often have odd modes.
pub fn read_secret(path: &Path) -> Result<SigningKey> {
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "warning: secret key {} is readable by others (mode {:04o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o7777
            );
        }
    }
    Ok(SigningKey::from_bytes(&read_hex32(path, "secret key")?))
}

/// Reads a `.pub` file written by `molt keygen`.
pub fn read_public(path: &Path) -> Result<TrustedKey> {
    let bytes = read_hex32(path, "public key")?;
    TrustedKey::from_bytes(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_read_back_and_match() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(&dir.path().join("k")).unwrap();
        let s = read_secret(&g.secret).unwrap();
        let p = read_public(&g.public).unwrap();
        assert_eq!(s.verifying_key(), p.key);
        assert_eq!(g.id, p.id);
        let mode = fs::metadata(&g.secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn an_existing_public_file_blocks_generation_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("k.pub"), "x").unwrap();
        let err = generate(&dir.path().join("k")).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert!(!dir.path().join("k.secret").exists());
    }

    #[test]
    fn garbage_key_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.pub");
        fs::write(&p, "not hex").unwrap();
        let err = read_public(&p).unwrap_err().to_string();
        assert!(
            err.contains("bad.pub") && err.contains("64 hex digits"),
            "{err}"
        );
    }
}
