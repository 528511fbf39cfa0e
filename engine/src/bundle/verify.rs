//! Signature checking: pinned ed25519 keys with key ids, revocation, and the exact signed message.

use ed25519_dalek::{Signature, VerifyingKey};

use crate::bundle::format::{key_id, KeyId, HEADER_LEN, SIGNATURE_CONTEXT};
use crate::error::Error;

/// A public key the device trusts.
#[derive(Clone, Copy, Debug)]
pub struct TrustedKey {
    /// Its id (first 8 bytes of BLAKE3 of the key).
    pub id: KeyId,
    /// The key.
    pub key: VerifyingKey,
}

impl TrustedKey {
    /// Parses a 32-byte ed25519 public key.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| Error::Field {
            field: "public key",
            why: "not a valid ed25519 point",
        })?;
        Ok(TrustedKey {
            id: key_id(bytes),
            key,
        })
    }
}

/// How the decoder treats signatures.
#[derive(Clone, Copy, Debug)]
pub enum Trust<'k> {
    /// At least one signature must verify with a pinned key; revoked keys are refused outright.
    Pinned {
        /// Keys the device trusts (several, for rotation).
        keys: &'k [TrustedKey],
        /// Key ids the device has revoked.
        revoked: &'k [KeyId],
    },
    /// Do not check signatures (the chunk chain is still checked). Only for `molt bundle inspect`:
    /// nothing decoded this way may be installed.
    InspectOnly,
}

/// The message that signatures sign: a domain string and the BLAKE3 digest of the fixed
/// header followed by the manifest bytes.
pub fn signed_message(header: &[u8; HEADER_LEN], manifest: &[u8]) -> [u8; 24 + 32] {
    let mut h = blake3::Hasher::new();
    h.update(header);
    h.update(manifest);
    let mut msg = [0u8; 24 + 32];
    let (ctx, digest) = msg.split_at_mut(24);
    ctx.copy_from_slice(SIGNATURE_CONTEXT);
    digest.copy_from_slice(h.finalize().as_bytes());
    msg
}

/// Checks the signature records against the trust setting; returns the id of the key that verified.
pub fn check_signatures<'s>(
    trust: &Trust<'_>,
    records: impl Iterator<Item = (&'s KeyId, &'s [u8; 64])> + Clone,
    message: &[u8],
) -> Result<Option<KeyId>, Error> {
    let (keys, revoked) = match trust {
        Trust::InspectOnly => return Ok(None),
        Trust::Pinned { keys, revoked } => (keys, revoked),
    };
    for (id, _) in records.clone() {
        if revoked.contains(id) {
            return Err(Error::RevokedKey { key_id: *id });
        }
    }
    // Any pinned key's valid signature is enough (a bundle may carry an old and a new
    // key's signatures during rotation); a pinned key whose signature fails is reported
    // only if nothing else verifies.
    let mut first_id = None;
    let mut failed = None;
    for (id, sig) in records {
        first_id.get_or_insert(*id);
        if let Some(k) = keys.iter().find(|k| &k.id == id) {
            let sig = Signature::from_bytes(sig);
            // verify_strict refuses small-order keys and malleable signatures.
            match k.key.verify_strict(message, &sig) {
                Ok(()) => return Ok(Some(*id)),
                Err(_) => {
                    failed.get_or_insert(*id);
                }
            }
        }
    }
    match failed {
        Some(key_id) => Err(Error::BadSignature { key_id }),
        None => Err(Error::UnknownKey {
            key_id: first_id.unwrap_or([0; 8]),
        }),
    }
}
