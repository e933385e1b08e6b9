//! Webhook signing secrets at rest. A signing secret must be recoverable to sign with,
//! so it cannot be hashed like an API key: it is sealed with XChaCha20-Poly1305 under
//! a key the operator holds (`TENANTRY_SECRETS_KEY`, or one derived from
//! `TENANTRY_SIGNING_SECRET` when unset), with the tenant id as associated data (a
//! sealed secret copied to another tenant's row does not open). A database dump alone
//! hands out no secret.
//!
//! Stored form: `sealed:v1:<key id>:<hex nonce>:<hex ciphertext>`. The key id (a hash
//! prefix of the key, not the key) says which key sealed it, so the key can be rotated:
//! the new one in `TENANTRY_SECRETS_KEY`, the old one in `TENANTRY_SECRETS_KEY_PREVIOUS`;
//! secrets sealed under the previous key still open, and each dispatcher reseals them
//! under the current key when it starts ([`crate::db::webhooks::reseal_secrets`]).
//! A value without the prefix is a secret stored in clear before sealing existed: it
//! is read as is and sealed by the same pass.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::config::Settings;

const PREFIX: &str = "sealed:v1:";
/// Domain separation of the derived keys: the sealing key is never the stamp key.
const KEY_LABEL: &[u8] = b"tenantry webhook secrets v1";

/// A stored secret that does not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error(
        "sealed under key {0}, which is neither TENANTRY_SECRETS_KEY nor TENANTRY_SECRETS_KEY_PREVIOUS"
    )]
    UnknownKey(String),
    #[error("malformed or tampered sealed secret")]
    Corrupt,
}

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    /// The 32-byte key: HMAC-SHA256 of the label under the operator's material (any
    /// length, at least 16 characters as the configuration checks).
    fn derive(material: &str) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(material.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(KEY_LABEL);
        let bytes = mac.finalize().into_bytes();
        let id = hex::encode(&Sha256::digest(bytes)[..4]);
        Self {
            id,
            cipher: XChaCha20Poly1305::new(&bytes),
        }
    }
}

/// The current sealing key and the previous one (during a rotation).
pub struct SecretSealer {
    current: Key,
    previous: Option<Key>,
}

impl std::fmt::Debug for SecretSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSealer")
            .field("current", &self.current.id)
            .field("previous", &self.previous.as_ref().map(|k| &k.id))
            .finish()
    }
}

impl SecretSealer {
    /// `current`: the operator's key material; `previous`: the one it replaces.
    pub fn new(current: &str, previous: Option<&str>) -> Self {
        Self {
            current: Key::derive(current),
            previous: previous.map(Key::derive),
        }
    }

    /// `TENANTRY_SECRETS_KEY` (and `_PREVIOUS`), or a key derived from the signing
    /// secret when it is unset.
    pub fn from_settings(settings: &Settings) -> Self {
        let current = settings
            .secrets_key
            .as_ref()
            .unwrap_or(&settings.signing_secret);
        Self::new(
            current.expose(),
            settings.secrets_key_previous.as_ref().map(|s| s.expose()),
        )
    }

    /// Seals `secret` for `tenant`'s row.
    pub fn seal(&self, tenant: &str, secret: &str) -> String {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .current
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.as_bytes(),
                    aad: tenant.as_bytes(),
                },
            )
            .unwrap_or_else(|_| unreachable!("sealing a short secret cannot fail"));
        format!(
            "{PREFIX}{}:{}:{}",
            self.current.id,
            hex::encode(nonce),
            hex::encode(sealed)
        )
    }

    /// Opens a stored secret of `tenant`'s row (a clear one from before sealing as is).
    pub fn open(&self, tenant: &str, stored: &str) -> Result<String, SealError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(id), Some(nonce), Some(sealed)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Corrupt);
        };
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_owned()))?;
        let nonce = hex::decode(nonce).map_err(|_| SealError::Corrupt)?;
        let sealed = hex::decode(sealed).map_err(|_| SealError::Corrupt)?;
        if nonce.len() != 24 {
            return Err(SealError::Corrupt);
        }
        let clear = key
            .cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: tenant.as_bytes(),
                },
            )
            .map_err(|_| SealError::Corrupt)?;
        String::from_utf8(clear).map_err(|_| SealError::Corrupt)
    }

    /// Whether a stored secret is sealed under the current key (nothing to reseal).
    pub fn is_current(&self, stored: &str) -> bool {
        stored
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split(':').next())
            .is_some_and(|id| id == self.current.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_0123456789abcdef";

    #[test]
    fn seals_and_opens_without_the_secret_in_the_stored_form() {
        let sealer = SecretSealer::new("operator-key-0123456789", None);
        let stored = sealer.seal("acme", SECRET);
        assert!(stored.starts_with(PREFIX), "{stored}");
        assert!(!stored.contains(SECRET));
        assert!(sealer.is_current(&stored));
        assert_eq!(sealer.open("acme", &stored).unwrap(), SECRET);
        // A fresh nonce each time.
        assert_ne!(sealer.seal("acme", SECRET), stored);
    }

    #[test]
    fn another_tenant_or_a_tampered_value_does_not_open() {
        let sealer = SecretSealer::new("operator-key-0123456789", None);
        let stored = sealer.seal("acme", SECRET);
        assert_eq!(sealer.open("bravo", &stored), Err(SealError::Corrupt));
        let mut tampered = stored.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(sealer.open("acme", &tampered), Err(SealError::Corrupt));
        assert_eq!(
            sealer.open("acme", "sealed:v1:nonsense"),
            Err(SealError::Corrupt)
        );
    }

    #[test]
    fn rotation_opens_the_previous_keys_secrets_and_not_an_unknown_keys() {
        let old = SecretSealer::new("old-key-0123456789", None);
        let stored = old.seal("acme", SECRET);
        let rotated = SecretSealer::new("new-key-0123456789", Some("old-key-0123456789"));
        assert!(!rotated.is_current(&stored));
        assert_eq!(rotated.open("acme", &stored).unwrap(), SECRET);
        let resealed = rotated.seal("acme", SECRET);
        assert!(rotated.is_current(&resealed));
        let stranger = SecretSealer::new("new-key-0123456789", None);
        assert!(matches!(
            stranger.open("acme", &stored),
            Err(SealError::UnknownKey(_))
        ));
        // A secret stored in clear before sealing reads as is and is not current.
        assert_eq!(rotated.open("acme", SECRET).unwrap(), SECRET);
        assert!(!rotated.is_current(SECRET));
    }
}
