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
use serde_json::Value;
use sha2::Sha256;
use uuid::Uuid;

use crate::chunk::{ChunkParamError, ChunkParams, ChunkStrategy};
use crate::tenancy::TenantId;

/// Version of [`JobMessage`] this build writes and reads.
pub const SCHEMA_VERSION: u32 = 2;
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
    /// Options that resolve to exactly `params` whatever the tenant's defaults: what a
    /// finished job records, so its points can be re-derived as they were made.
    pub fn pinned(params: &ChunkParams) -> Self {
        Self {
            chunk_size: Some(params.size()),
            chunk_overlap: Some(params.overlap()),
            chunking_strategy: Some(params.strategy()),
        }
    }

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

/// Most jobs one message may carry (the pump puts far fewer in one: see
/// `TENANTRY_JOBS_PER_MESSAGE`); a message naming more is refused unread.
pub const MAX_JOBS_PER_MESSAGE: usize = 1000;

/// The message a worker receives: a group of one tenant's jobs, named by id. The jobs'
/// text, metadata and options are read from Postgres (the log of record) when the
/// worker starts them, so the message is small whatever the documents, and nothing in
/// it but the tenant and the ids is believed — and those only once its signature checks.
///
/// Version 2. Additive fields may appear within a version (unknown fields are ignored);
/// anything else needs a new `schema_version`. Version 1 (one job, with its text) is
/// still read, as a group of one, so a fleet can roll with messages in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    pub schema_version: u32,
    pub tenant_id: TenantId,
    pub jobs: Vec<JobRef>,
    /// When the oldest job of the group was submitted.
    pub submitted_at: DateTime<Utc>,
}

/// One job of a [`JobMessage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    pub job_id: Uuid,
    /// The W3C trace context of the request that submitted the job, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Version 1 of the message: one job, carrying its document. Only read, and only
/// for the job's id (its document is read from Postgres like any other).
#[derive(Debug, Deserialize)]
struct MessageV1 {
    job_id: Uuid,
    tenant_id: TenantId,
    submitted_at: DateTime<Utc>,
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
    #[error("unknown schema_version {0} (this worker reads 1 and {SCHEMA_VERSION})")]
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
        let version = match fields.get("schema_version") {
            None => return Err(MessageError::NoVersion),
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
                MessageError::Malformed("schema_version is not a whole number".into())
            })?,
            Some(_) => {
                return Err(MessageError::Malformed(
                    "schema_version is not a number".into(),
                ));
            }
        };
        let malformed = |e: serde_json::Error| MessageError::Malformed(e.to_string());
        let message = match version {
            1 => {
                let v1: MessageV1 = serde_json::from_value(value).map_err(malformed)?;
                Self {
                    schema_version: SCHEMA_VERSION,
                    tenant_id: v1.tenant_id,
                    jobs: vec![JobRef {
                        job_id: v1.job_id,
                        traceparent: None,
                    }],
                    submitted_at: v1.submitted_at,
                }
            }
            2 => serde_json::from_value(value).map_err(malformed)?,
            other => return Err(MessageError::UnknownVersion(other)),
        };
        if message.jobs.is_empty() || message.jobs.len() > MAX_JOBS_PER_MESSAGE {
            return Err(MessageError::Malformed(format!(
                "a message names 1–{MAX_JOBS_PER_MESSAGE} jobs, this one {}",
                message.jobs.len()
            )));
        }
        let mut ids: Vec<Uuid> = message.jobs.iter().map(|j| j.job_id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(MessageError::Malformed("a job is named twice".into()));
        }
        Ok(message)
    }

    /// The ids of the message's jobs, in order.
    pub fn job_ids(&self) -> Vec<Uuid> {
        self.jobs.iter().map(|j| j.job_id).collect()
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
        JobMessage {
            schema_version: SCHEMA_VERSION,
            tenant_id: TenantId::parse("acme").unwrap(),
            jobs: vec![
                JobRef {
                    job_id: Uuid::new_v4(),
                    traceparent: Some(
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                    ),
                },
                JobRef {
                    job_id: Uuid::new_v4(),
                    traceparent: None,
                },
            ],
            submitted_at: Utc::now(),
        }
    }

    #[test]
    fn round_trips_with_its_version() {
        let msg = sample();
        let bytes = msg.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"schema_version\":2"));
        assert_eq!(JobMessage::from_bytes(&bytes, 1 << 20).unwrap(), msg);
        assert_eq!(msg.job_ids().len(), 2);
    }

    #[test]
    fn version_one_is_read_as_a_group_of_one() {
        let job_id = Uuid::new_v4();
        let v1 = serde_json::json!({
            "schema_version": 1, "job_id": job_id, "tenant_id": "acme",
            "document_id": Uuid::new_v4(), "database": "default", "source_type": "text",
            "text": "Bonjour 🌍.", "metadata": {}, "options": {}, "priority": "high",
            "submitted_at": "2026-11-27T08:00:00Z",
        });
        let msg = JobMessage::from_bytes(&serde_json::to_vec(&v1).unwrap(), 1 << 20).unwrap();
        assert_eq!(msg.tenant_id.as_str(), "acme");
        assert_eq!(msg.job_ids(), vec![job_id]);
        assert_eq!(msg.schema_version, SCHEMA_VERSION);
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
            JobMessage::from_bytes(br#"{"schema_version":3}"#, limit),
            Err(MessageError::UnknownVersion(3))
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
        let mut empty = sample();
        empty.jobs.clear();
        assert!(matches!(
            JobMessage::from_bytes(&empty.to_bytes(), limit),
            Err(MessageError::Malformed(_))
        ));
        let mut twice = sample();
        twice.jobs[1].job_id = twice.jobs[0].job_id;
        assert!(matches!(
            JobMessage::from_bytes(&twice.to_bytes(), limit),
            Err(MessageError::Malformed(_))
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
