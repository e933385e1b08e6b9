//! Tenant API keys: a recognisable prefix, 256 random bits, only a SHA-256 stored.
//!
//! A key looks like `tnry_` followed by 64 hex digits. The prefix lets secret scanners
//! and people recognise a leaked key; the first 8 digits after it are shown in lists
//! so a tenant can tell keys apart. The whole key is shown once, when issued.

use std::fmt;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every tenant key starts with this.
pub const KEY_PREFIX: &str = "tnry_";
const SECRET_HEX_LEN: usize = 64;
/// Characters of a key shown in listings: the prefix and 8 hex digits.
pub const DISPLAY_PREFIX_LEN: usize = KEY_PREFIX.len() + 8;

/// A full API key. Its `Debug` never shows the secret part.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A fresh key with 256 random bits.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_HEX_LEN / 2];
        // ThreadRng is a CSPRNG (ChaCha12) seeded from the OS.
        rand::rng().fill_bytes(&mut bytes);
        Self(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
    }

    /// Accepts only well-formed keys, so garbage never reaches the database.
    pub fn parse(raw: &str) -> Option<Self> {
        let secret = raw.strip_prefix(KEY_PREFIX)?;
        let well_formed = secret.len() == SECRET_HEX_LEN
            && secret
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        well_formed.then(|| Self(raw.to_owned()))
    }

    /// The key itself: only for showing once to whoever created it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The part safe to show in listings.
    pub fn display_prefix(&self) -> &str {
        &self.0[..DISPLAY_PREFIX_LEN]
    }

    /// What is stored and looked up.
    pub fn hash(&self) -> KeyHash {
        KeyHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}…)", self.display_prefix())
    }
}

/// SHA-256 of a key. Keys have 256 random bits, so a fast hash is enough: there is
/// nothing to brute-force (unlike passwords).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// Constant-time comparison, used after the indexed lookup so that the final
    /// decision never depends on where two hashes first differ.
    pub fn verify(&self, stored: &KeyHash) -> bool {
        self.0.ct_eq(&stored.0).into()
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", hex::encode(&self.0[..4]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let a = ApiKey::generate();
        let b = ApiKey::generate();
        assert_ne!(a, b);
        assert_eq!(ApiKey::parse(a.expose()), Some(a.clone()));
        assert!(a.expose().starts_with("tnry_"));
        assert_eq!(a.expose().len(), 5 + 64);
        assert_eq!(a.display_prefix().len(), 13);
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "tnry_",
            "tnry_xyz",
            "sk-123",
            &format!("tnry_{}", "A".repeat(64)),
            &format!("tnry_{}", "a".repeat(65)),
        ] {
            assert!(ApiKey::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = ApiKey::generate();
        let printed = format!("{key:?} {:?}", key.hash());
        assert!(!printed.contains(&key.expose()[DISPLAY_PREFIX_LEN..]));
    }

    #[test]
    fn hashes_verify() {
        let key = ApiKey::generate();
        assert!(key.hash().verify(&key.hash()));
        assert!(!key.hash().verify(&ApiKey::generate().hash()));
    }
}
