//! Signing deliveries, Stripe style: `Tenantry-Signature: t=<unix seconds>,v1=<hex>`,
//! where the hex is HMAC-SHA256 with the tenant's webhook secret over
//! `"<t>." + body`. While a rotated-out secret is still in its grace period, a second
//! `v1=` signed with it follows, so a receiver holding either secret can verify.
//! Signing the timestamp lets a receiver refuse replays older than its tolerance.

use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Prefix of every webhook secret (so a leaked one is recognisable).
pub const SECRET_PREFIX: &str = "whsec_";
/// The tolerance receivers should allow between `t` and their clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// A new random secret: `whsec_` + 256 bits, hex.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `timestamp` (unix seconds), one `v1=` per secret.
pub fn sign(secrets: &[&str], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let digest = mac(secret, timestamp, body).finalize().into_bytes();
        header.push_str(",v1=");
        header.push_str(&hex::encode(digest));
    }
    header
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the timestamp is outside the tolerance (a replay, or a skewed clock)")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

/// Verifies a header against `body` as a receiver would: the timestamp within
/// `tolerance` of `now` (unix seconds), and some `v1=` matching `secret` (compared in
/// constant time).
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", sig)) => {
                signatures.push(hex::decode(sig).map_err(|_| VerifyError::Malformed)?)
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed)?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed);
    }
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        return Err(VerifyError::Stale);
    }
    let expected = mac(secret, timestamp, body);
    signatures
        .iter()
        .any(|sig| expected.clone().verify_slice(sig).is_ok())
        .then_some(())
        .ok_or(VerifyError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_secret_only() {
        let body = br#"{"id":"e1","type":"job_completed"}"#;
        let header = sign(&["whsec_a"], 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        assert_eq!(
            verify("whsec_a", &header, body, 1_700_000_010, DEFAULT_TOLERANCE),
            Ok(())
        );
        assert_eq!(
            verify("whsec_b", &header, body, 1_700_000_010, DEFAULT_TOLERANCE),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("whsec_a", &header, b"{}", 1_700_000_010, DEFAULT_TOLERANCE),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn the_timestamp_is_signed_and_bounded() {
        let body = b"{}";
        let header = sign(&["s"], 1_700_000_000, body);
        // A replay long after: refused even though the signature is right.
        assert_eq!(
            verify("s", &header, body, 1_700_000_000 + 301, DEFAULT_TOLERANCE),
            Err(VerifyError::Stale)
        );
        // Moving the timestamp forward breaks the signature.
        let forged = header.replace("t=1700000000", "t=1700000500");
        assert_eq!(
            verify("s", &forged, body, 1_700_000_500, DEFAULT_TOLERANCE),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("s", "v1=zz", body, 0, DEFAULT_TOLERANCE),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            verify("s", "t=1", body, 1, DEFAULT_TOLERANCE),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn during_rotation_both_secrets_verify() {
        let body = b"{}";
        let header = sign(&["new", "old"], 10, body);
        assert_eq!(header.matches("v1=").count(), 2);
        assert!(verify("new", &header, body, 10, DEFAULT_TOLERANCE).is_ok());
        assert!(verify("old", &header, body, 10, DEFAULT_TOLERANCE).is_ok());
        assert!(verify("other", &header, body, 10, DEFAULT_TOLERANCE).is_err());
    }

    #[test]
    fn secrets_are_random_and_prefixed() {
        let (a, b) = (new_secret(), new_secret());
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 64);
        assert_ne!(a, b);
    }
}
