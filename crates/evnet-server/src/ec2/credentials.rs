//! Per-tenant access keys for SigV4.
//!
//! Verifying a SigV4 signature needs the secret itself (the signature is an
//! HMAC keyed by it), so unlike bearer tokens the store cannot keep only a
//! hash. It keeps the secret sealed with ChaCha20-Poly1305 under a key
//! derived from the server's admin token (HMAC-SHA256 over a fixed label),
//! with the access key id and tenant as associated data: a copy of the store
//! (a redb file, an etcd backup) does not give the secrets away without the
//! admin token, a record cannot be moved to another key id or tenant, and
//! every replica that shares the store and the admin token can verify. The
//! API never answers a secret except once, when it is created. Changing the
//! admin token makes existing access keys unusable; create new ones.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

/// The sealing key for access-key secrets, from the admin token.
pub fn sealing_key(admin_token: &str) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(b"evnet access-key sealing v1").expect("HMAC takes keys of any length");
    m.update(admin_token.as_bytes());
    m.finalize().into_bytes().into()
}

fn aad(access_key_id: &str, tenant_id: &str) -> Vec<u8> {
    format!("{access_key_id}\n{tenant_id}").into_bytes()
}

/// Seals `secret`: hex of a random 96-bit nonce followed by the ciphertext.
pub fn seal(key: &[u8; 32], access_key_id: &str, tenant_id: &str, secret: &str) -> String {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let nonce: [u8; 12] = rand::random();
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: secret.as_bytes(), aad: &aad(access_key_id, tenant_id) })
        .expect("ChaCha20-Poly1305 seals any message under 256 GiB");
    let mut out = nonce.to_vec();
    out.extend(ct);
    hex::encode(out)
}

/// Opens a sealed secret; `None` when it was sealed under another key or
/// for another key id or tenant.
pub fn open(key: &[u8; 32], access_key_id: &str, tenant_id: &str, sealed: &str) -> Option<String> {
    let bytes = hex::decode(sealed).ok()?;
    if bytes.len() < 12 {
        return None;
    }
    let (nonce, ct) = bytes.split_at(12);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let pt = cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad(access_key_id, tenant_id) }).ok()?;
    String::from_utf8(pt).ok()
}

/// A new access key id: `AKIA` and 16 characters of AWS's alphabet
/// (A-Z, 2-7).
pub fn new_access_key_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::rng();
    let tail: String = (0..16).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
    format!("AKIA{tail}")
}

/// A new secret: 40 characters, as AWS's are.
pub fn new_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    (0..40).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

/// Whether `s` looks like an access key id this server makes.
pub fn is_access_key_id(s: &str) -> bool {
    s.len() == 20 && s.starts_with("AKIA") && s[4..].bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key_id_tenant_and_key() {
        let k = sealing_key("admin");
        let id = new_access_key_id();
        assert!(is_access_key_id(&id), "{id}");
        let secret = new_secret();
        let sealed = seal(&k, &id, "tenant-1", &secret);
        assert!(!sealed.contains(&hex::encode(secret.as_bytes())));
        assert_eq!(open(&k, &id, "tenant-1", &sealed).as_deref(), Some(secret.as_str()));
        assert_eq!(open(&k, &id, "tenant-2", &sealed), None);
        assert_eq!(open(&k, "AKIAAAAAAAAAAAAAAAAA", "tenant-1", &sealed), None);
        assert_eq!(open(&sealing_key("other"), &id, "tenant-1", &sealed), None);
    }
}
