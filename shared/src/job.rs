//! The job: its states, its per-job options, and the versioned, signed message on the wire.
//!
//! The dispatcher serialises a [`JobMessage`] once and signs those exact bytes with
//! HMAC-SHA256 under the fleet's signing secret (header [`SIGNATURE_HEADER`]). A worker
//! verifies the bytes it received before it believes anything in them, so a message
//! published straight to the broker cannot act for a tenant. The body carries
//! `schema_version`; a worker refuses versions it does not know to the dead-letter
//! queue instead of guessing, which lets a mixed fleet roll forward.

use std::fmt;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;
use uuid::Uuid;

use crate::chunk::{ChunkParamError, ChunkParams, ChunkStrategy};
use crate::tenancy::{DatabaseName, TenantId};

/// Version of [`JobMessage`] this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;
/// AMQP header holding `v1=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "x-tenantry-signature";
/// AMQP header repeating the tenant for operators' eyes only; never trusted.
pub const TENANT_HEADER: &str = "x-tenantry-tenant";
/// AMQP header with the reason a message was dead-lettered.
pub const REASON_HEADER: &str = "x-tenantry-reason";
/// AMQP header with a dead letter's id, so recording it twice keeps one row.
pub const DEAD_ID_HEADER: &str = "x-tenantry-dead-id";
const SIGNATURE_SCHEME: &str = "v1=";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JobStatus {
    Pending,
    Processing,
    Finished,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        Self::Pending,
        Self::Processing,
        Self::Finished,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Processing => "PROCESSING",
            Self::Finished => "FINISHED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Finished | Self::Failed | Self::Cancelled)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Orders work within one tenant; never across tenants' shares.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub fn as_i16(self) -> i16 {
        match self {
            Self::Low => 0,
            Self::Normal => 1,
            Self::High => 2,
        }
    }

    pub fn from_i16(v: i16) -> Self {
        match v {
            0 => Self::Low,
            2 => Self::High,
            _ => Self::Normal,
        }
    }
}

/// Per-job chunking overrides; each falls back to the tenant's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_overlap: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunking_strategy: Option<ChunkStrategy>,
}

impl JobOptions {
    /// The chunk parameters of this job given the tenant's defaults, validated with
    /// the same ranges as the tenant configuration.
    pub fn resolve(&self, tenant_default: &ChunkParams) -> Result<ChunkParams, ChunkParamError> {
        ChunkParams::new(
            self.chunk_size.unwrap_or(tenant_default.size()),
            self.chunk_overlap.unwrap_or(tenant_default.overlap()),
            self.chunking_strategy.unwrap_or(tenant_default.strategy()),
        )
    }
}

/// The message a worker receives. Additive fields may appear within a version
/// (unknown fields are ignored); anything else needs a new `schema_version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    pub schema_version: u32,
    pub job_id: Uuid,
    pub tenant_id: TenantId,
    pub document_id: Uuid,
    pub database: DatabaseName,
    pub source_type: String,
    pub text: String,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub options: JobOptions,
    #[serde(default)]
    pub priority: Priority,
    pub submitted_at: DateTime<Utc>,
}

/// Why a message could not be accepted as a job. Each is permanent: it goes to the
/// dead-letter queue with this text as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    Oversized { size: usize, limit: usize },
    #[error("message is not a JSON object: {0}")]
    NotJson(String),
    #[error("message has no schema_version")]
    NoVersion,
    #[error("unknown schema_version {0} (this worker reads {SCHEMA_VERSION})")]
    UnknownVersion(u64),
    #[error("message is malformed: {0}")]
    Malformed(String),
    #[error("message is unsigned")]
    Unsigned,
    #[error("message signature does not match (forged or altered)")]
    BadSignature,
}

impl JobMessage {
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, maps and numbers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a body whose signature has already been verified.
    pub fn from_bytes(body: &[u8], limit: usize) -> Result<Self, MessageError> {
        if body.len() > limit {
            return Err(MessageError::Oversized {
                size: body.len(),
                limit,
            });
        }
        let value: Value =
            serde_json::from_slice(body).map_err(|e| MessageError::NotJson(e.to_string()))?;
        let Value::Object(ref fields) = value else {
            return Err(MessageError::NotJson("top level is not an object".into()));
        };
        match fields.get("schema_version") {
            None => return Err(MessageError::NoVersion),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if v == u64::from(SCHEMA_VERSION) => {}
                Some(v) => return Err(MessageError::UnknownVersion(v)),
                None => {
                    return Err(MessageError::Malformed(
                        "schema_version is not a whole number".into(),
                    ));
                }
            },
            Some(_) => {
                return Err(MessageError::Malformed(
                    "schema_version is not a number".into(),
                ));
            }
        }
        serde_json::from_value(value).map_err(|e| MessageError::Malformed(e.to_string()))
    }
}

/// Signs and verifies message bodies with the fleet's secret.
#[derive(Clone)]
pub struct Signer {
    key: Hmac<Sha256>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of any length.
        let key = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        Self { key }
    }

    /// The header value for `body`: `v1=<hex>`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.key.clone();
        mac.update(body);
        format!(
            "{SIGNATURE_SCHEME}{}",
            hex::encode(mac.finalize().into_bytes())
        )
    }

    /// Checks a header value against `body` in constant time.
    pub fn verify(&self, body: &[u8], header: Option<&str>) -> Result<(), MessageError> {
        let header = header.ok_or(MessageError::Unsigned)?;
        let hex_sig = header
            .strip_prefix(SIGNATURE_SCHEME)
            .ok_or(MessageError::BadSignature)?;
        let sig = hex::decode(hex_sig).map_err(|_| MessageError::BadSignature)?;
        let mut mac = self.key.clone();
        mac.update(body);
        mac.verify_slice(&sig)
            .map_err(|_| MessageError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JobMessage {
        let mut metadata = Map::new();
        metadata.insert("lang".into(), Value::String("fr".into()));
        JobMessage {
            schema_version: SCHEMA_VERSION,
            job_id: Uuid::new_v4(),
            tenant_id: TenantId::parse("acme").unwrap(),
            document_id: Uuid::new_v4(),
            database: DatabaseName::default_name(),
            source_type: "text".into(),
            text: "Bonjour 🌍. Ça va?".into(),
            metadata,
            options: JobOptions {
                chunk_size: Some(800),
                ..Default::default()
            },
            priority: Priority::High,
            submitted_at: Utc::now(),
        }
    }

    #[test]
    fn round_trips_with_its_version() {
        let msg = sample();
        let bytes = msg.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"schema_version\":1"));
        assert_eq!(JobMessage::from_bytes(&bytes, 1 << 20).unwrap(), msg);
    }

    #[test]
    fn unknown_fields_within_a_version_are_ignored() {
        let mut value = serde_json::to_value(sample()).unwrap();
        value["added_later"] = Value::Bool(true);
        assert!(JobMessage::from_bytes(&serde_json::to_vec(&value).unwrap(), 1 << 20).is_ok());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let limit = 1 << 20;
        assert!(matches!(
            JobMessage::from_bytes(b"not json", limit),
            Err(MessageError::NotJson(_))
        ));
        assert!(matches!(
            JobMessage::from_bytes(b"[1,2]", limit),
            Err(MessageError::NotJson(_))
        ));
        assert_eq!(
            JobMessage::from_bytes(b"{}", limit),
            Err(MessageError::NoVersion)
        );
        assert_eq!(
            JobMessage::from_bytes(br#"{"schema_version":2}"#, limit),
            Err(MessageError::UnknownVersion(2))
        );
        assert!(matches!(
            JobMessage::from_bytes(br#"{"schema_version":"1"}"#, limit),
            Err(MessageError::Malformed(_))
        ));
        assert!(matches!(
            JobMessage::from_bytes(br#"{"schema_version":1,"tenant_id":"../etc"}"#, limit),
            Err(MessageError::Malformed(_))
        ));
        let big = sample().to_bytes();
        assert!(matches!(
            JobMessage::from_bytes(&big, 10),
            Err(MessageError::Oversized { .. })
        ));
    }

    #[test]
    fn signatures_bind_the_exact_bytes() {
        let signer = Signer::new(b"fleet-secret-0123456789");
        let body = sample().to_bytes();
        let sig = signer.sign(&body);
        assert!(signer.verify(&body, Some(&sig)).is_ok());
        assert_eq!(signer.verify(&body, None), Err(MessageError::Unsigned));
        let mut altered = body.clone();
        let last = altered.len() - 2;
        altered[last] ^= 1;
        assert_eq!(
            signer.verify(&altered, Some(&sig)),
            Err(MessageError::BadSignature)
        );
        let other = Signer::new(b"another-secret-0123456789");
        assert_eq!(
            other.verify(&body, Some(&sig)),
            Err(MessageError::BadSignature)
        );
        assert_eq!(
            signer.verify(&body, Some("v1=zz")),
            Err(MessageError::BadSignature)
        );
        assert_eq!(
            signer.verify(&body, Some(&sig[3..])),
            Err(MessageError::BadSignature)
        );
    }
}
