//! Signing keys from fixed seeds, and how configs and the engine name them.

use ed25519_dalek::SigningKey;
use molt_engine::bundle::format::key_id;
use molt_engine::bundle::TrustedKey;

/// A signing key from a fixed seed (every byte `seed`).
pub fn seeded(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// The release key every test device trusts.
pub fn key() -> SigningKey {
    seeded(42)
}

/// A second key, trusted by devices that test revocation.
pub fn key2() -> SigningKey {
    seeded(43)
}

/// A key no device trusts.
pub fn stranger() -> SigningKey {
    seeded(99)
}

/// The public half of `k` as a config wants it (64 hex digits).
pub fn pub_hex(k: &SigningKey) -> String {
    hex::encode(k.verifying_key().as_bytes())
}

/// The key id of `k` as `revoked_keys` wants it (16 hex digits).
pub fn id_hex(k: &SigningKey) -> String {
    hex::encode(key_id(k.verifying_key().as_bytes()))
}

/// The public half of `k` as the decoder pins it.
pub fn trusted(k: &SigningKey) -> TrustedKey {
    TrustedKey::from_bytes(k.verifying_key().as_bytes()).expect("a valid ed25519 public key")
}
