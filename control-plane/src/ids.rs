//! Identifiers and secrets: how they are generated, what they look like on the
//! wire, and how they are hashed for storage.
//!
//! Install IDs and API keys carry 128 and 256 random bits; a single SHA-256 is
//! therefore enough to store them (a slow password hash protects low-entropy
//! secrets, which these are not).

use rand::RngCore;
use ring::digest;

/// Random lowercase base-36-ish identifier of `len` characters.
fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| {
            // Rejection sampling keeps the distribution uniform.
            loop {
                let b = (rng.next_u32() & 0x3f) as usize;
                if b < ALPHABET.len() {
                    return ALPHABET[b] as char;
                }
            }
        })
        .collect()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// A device id: 20 characters of `[a-z0-9]` (~103 bits), safe in URLs, a
/// certificate CN and a URI SAN.
pub fn new_device_id() -> String {
    random_token(20)
}

/// A fresh install ID: `inst_` + 128 random bits in hex.
pub fn new_install_id() -> String {
    format!("inst_{}", random_hex(16))
}

/// What every enrollment token starts with.
pub const ENROLL_TOKEN_PREFIX: &str = "oet_";

/// A fresh enrollment token: `oet_` + 256 random bits in hex (it enrolls
/// many boxes and may live long, so as strong as an API key).
pub fn new_enroll_token() -> String {
    format!("{ENROLL_TOKEN_PREFIX}{}", random_hex(32))
}

/// An enrollment token's id (public, in URLs and events): 20 characters of
/// `[a-z0-9]`, as device ids.
pub fn new_enroll_token_id() -> String {
    random_token(20)
}

/// A fresh API key: `opk_` + 256 random bits in hex.
pub fn new_api_key() -> String {
    format!("opk_{}", random_hex(32))
}

/// A random 16-byte id for sessions and similar internal handles.
pub fn new_internal_id() -> String {
    random_hex(16)
}

/// SHA-256 of a secret, hex. Used for install IDs, API keys and public keys.
pub fn hash_secret(secret: &str) -> String {
    sha256_hex(secret.as_bytes())
}

/// SHA-256 of arbitrary bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes))
}

/// Checks that a path segment looks like a device id before it reaches the
/// store (keeps garbage out of queries and logs).
pub fn is_valid_device_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Workspace names: 1-64 chars of `[a-z0-9-_]`, starting with a letter or digit.
pub fn is_valid_workspace_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_documented_shape_and_are_unique() {
        let a = new_device_id();
        let b = new_device_id();
        assert_eq!(a.len(), 20);
        assert!(is_valid_device_id(&a));
        assert_ne!(a, b);
        let inst = new_install_id();
        assert!(inst.starts_with("inst_"));
        assert_eq!(inst.len(), 5 + 32);
        let key = new_api_key();
        assert!(key.starts_with("opk_"));
        assert_eq!(key.len(), 4 + 64);
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn workspace_and_device_id_validation() {
        assert!(is_valid_workspace_name("acme-prod_1"));
        assert!(!is_valid_workspace_name("-acme"));
        assert!(!is_valid_workspace_name("Acme"));
        assert!(!is_valid_workspace_name(""));
        assert!(!is_valid_device_id("../etc"));
        assert!(!is_valid_device_id("ABC"));
    }
}
