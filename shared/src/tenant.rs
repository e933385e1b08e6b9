//! Tenants: status, plan, and the per-tenant configuration of the original plan
//! (`TenantConfiguration`), validated so that an invalid value names its field.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::chunk::{self, ChunkParams, ChunkStrategy};
use crate::tenancy::{DatabaseName, IsolationMode, TenantId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TenantStatus {
    /// Everything works.
    Active,
    /// Reads work; submissions are refused and queued jobs wait, writing nothing.
    Suspended,
    /// Every key is refused.
    Inactive,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Suspended => "SUSPENDED",
            Self::Inactive => "INACTIVE",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "ACTIVE" => Some(Self::Active),
            "SUSPENDED" => Some(Self::Suspended),
            "INACTIVE" => Some(Self::Inactive),
            _ => None,
        }
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub email: String,
    pub status: TenantStatus,
    pub plan: String,
    pub isolation: IsolationMode,
    pub quota_overrides: BTreeMap<String, i64>,
    pub weight_override: Option<i32>,
    pub config: TenantConfig,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_active: Option<DateTime<Utc>>,
}

/// `TenantInfo` of the original plan, every figure read from records (see
/// `db::tenants::info` for where each comes from).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantInfo {
    pub user_id: TenantId,
    pub email: String,
    pub name: String,
    pub status: TenantStatus,
    pub created_at: DateTime<Utc>,
    pub last_active: Option<DateTime<Utc>>,
    /// Documents stored (ingested, not deleted).
    pub total_documents: i64,
    /// Measured bytes of the stored documents (payload JSON + vectors), in MiB.
    pub total_storage_mb: f64,
    /// API calls counted in `api_calls` (all hours).
    pub total_api_calls: i64,
    /// Jobs PENDING or PROCESSING.
    pub active_jobs: i64,
}

/// What the admin may change on a tenant (`PATCH /v1/admin/tenants/{id}`); `None`
/// keeps the current value. The isolation mode is changed elsewhere (it moves points).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantChanges {
    pub name: Option<String>,
    pub email: Option<String>,
    pub plan: Option<String>,
    pub status: Option<TenantStatus>,
}

/// Event types a tenant can be notified of.
pub const NOTIFICATION_EVENTS: [&str; 4] = [
    "job_completed",
    "job_failed",
    "quota_warning",
    "quota_exceeded",
];
/// The original plan's defaults: every event but `quota_exceeded` (which can be
/// frequent: every refused call) is sent.
fn wanted_by_default(event: &str) -> bool {
    NOTIFICATION_EVENTS.contains(&event) && event != "quota_exceeded"
}

/// Longest webhook URL accepted.
pub const MAX_WEBHOOK_URL_LEN: usize = 2048;

/// `TenantConfiguration` of the original plan. Stored as JSON; every field has the
/// plan's default, so a tenant that never configured anything gets those.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    pub default_database_id: Option<String>,
    pub default_chunk_size: usize,
    pub default_chunk_overlap: usize,
    pub default_chunking_strategy: ChunkStrategy,
    /// When false, submitted jobs are accepted and wait (PENDING) until it is turned on again.
    pub enable_auto_processing: bool,
    pub webhook_url: Option<String>,
    pub notification_preferences: BTreeMap<String, bool>,
    pub processing_preferences: Map<String, Value>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            default_database_id: None,
            default_chunk_size: chunk::DEFAULT_CHUNK_SIZE,
            default_chunk_overlap: chunk::DEFAULT_CHUNK_OVERLAP,
            default_chunking_strategy: ChunkStrategy::Sentence,
            enable_auto_processing: true,
            webhook_url: None,
            notification_preferences: NOTIFICATION_EVENTS
                .iter()
                .map(|e| (e.to_string(), wanted_by_default(e)))
                .collect(),
            processing_preferences: serde_json::json!({
                "use_docling": false,
                "enable_thumbnails": false,
                "audio_model_size": "base",
                "enable_speaker_diarization": true,
                "enable_topic_segmentation": true
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        }
    }
}

/// An invalid configuration value: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigFieldError {
    pub field: String,
    pub message: String,
}

fn field_error(field: &str, message: impl Into<String>) -> ConfigFieldError {
    ConfigFieldError {
        field: field.to_owned(),
        message: message.into(),
    }
}

impl TenantConfig {
    /// Checks every field; the first problem names its field.
    pub fn validate(&self) -> Result<(), ConfigFieldError> {
        if let Some(db) = &self.default_database_id {
            DatabaseName::parse(db)
                .map_err(|e| field_error("default_database_id", e.to_string()))?;
        }
        self.chunk_params()
            .map_err(|e| field_error(&format!("default_{}", e.field()), e.to_string()))?;
        if let Some(url) = &self.webhook_url {
            validate_webhook_url(url).map_err(|m| field_error("webhook_url", m))?;
        }
        for key in self.notification_preferences.keys() {
            if !NOTIFICATION_EVENTS.contains(&key.as_str()) {
                return Err(field_error(
                    "notification_preferences",
                    format!(
                        "unknown event {key:?}; known: {}",
                        NOTIFICATION_EVENTS.join(", ")
                    ),
                ));
            }
        }
        let prefs_size = serde_json::to_vec(&self.processing_preferences)
            .map(|v| v.len())
            .unwrap_or(0);
        if prefs_size > 16 * 1024 {
            return Err(field_error(
                "processing_preferences",
                "must be at most 16 KiB of JSON",
            ));
        }
        Ok(())
    }

    /// The tenant's default chunking.
    pub fn chunk_params(&self) -> Result<ChunkParams, chunk::ChunkParamError> {
        ChunkParams::new(
            self.default_chunk_size,
            self.default_chunk_overlap,
            self.default_chunking_strategy,
        )
    }

    /// The database a job goes to when it names none.
    pub fn default_database(&self) -> DatabaseName {
        self.default_database_id
            .as_deref()
            .and_then(|d| DatabaseName::parse(d).ok())
            .unwrap_or_else(DatabaseName::default_name)
    }

    /// Whether the tenant wants events of this type. An event the preferences leave
    /// out takes its default (as when no preferences were given at all), so
    /// `{"quota_exceeded": true}` adds that event rather than silencing the others.
    pub fn wants(&self, event: &str) -> bool {
        self.notification_preferences
            .get(event)
            .copied()
            .unwrap_or_else(|| wanted_by_default(event))
    }

    /// Reads a stored configuration; anything unreadable falls back to defaults field
    /// by field rather than failing the tenant (the stored value was validated on write).
    pub fn from_stored(value: Value) -> Self {
        serde_json::from_value(value).unwrap_or_default()
    }
}

/// http or https, with a host, at most [`MAX_WEBHOOK_URL_LEN`] characters.
/// (Whether the host may be private is decided at delivery time.)
pub fn validate_webhook_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_WEBHOOK_URL_LEN {
        return Err(format!("must be at most {MAX_WEBHOOK_URL_LEN} characters"));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| "must be an http or https URL".to_owned())?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map(|(_, h)| h).unwrap_or(host);
    if host.is_empty() || host.starts_with(':') {
        return Err("must name a host".to_owned());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_original_plans() {
        let c = TenantConfig::default();
        assert_eq!(c.default_chunk_size, 4000);
        assert_eq!(c.default_chunk_overlap, 200);
        assert_eq!(c.default_chunking_strategy, ChunkStrategy::Sentence);
        assert!(c.enable_auto_processing);
        assert!(c.wants("job_completed") && !c.wants("quota_exceeded"));
        let partial: TenantConfig = serde_json::from_value(
            serde_json::json!({"notification_preferences": {"quota_exceeded": true, "job_completed": false}}),
        )
        .unwrap();
        assert!(partial.wants("quota_exceeded") && partial.wants("job_failed"));
        assert!(!partial.wants("job_completed") && !partial.wants("nonsense"));
        assert!(c.validate().is_ok());
        assert_eq!(TenantConfig::from_stored(serde_json::json!({})), c);
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases: Vec<(Value, &str)> = vec![
            (
                serde_json::json!({"default_chunk_size": 100}),
                "default_chunk_size",
            ),
            (
                serde_json::json!({"default_chunk_size": 20000}),
                "default_chunk_size",
            ),
            (
                serde_json::json!({"default_chunk_overlap": 1001}),
                "default_chunk_overlap",
            ),
            (
                serde_json::json!({"default_chunk_size": 600, "default_chunk_overlap": 600}),
                "default_chunk_overlap",
            ),
            (serde_json::json!({"webhook_url": "ftp://x"}), "webhook_url"),
            (
                serde_json::json!({"webhook_url": "https://"}),
                "webhook_url",
            ),
            (
                serde_json::json!({"default_database_id": "Bad Name"}),
                "default_database_id",
            ),
            (
                serde_json::json!({"notification_preferences": {"spam": true}}),
                "notification_preferences",
            ),
        ];
        for (value, field) in cases {
            let config: TenantConfig = serde_json::from_value(value.clone()).unwrap();
            let err = config.validate().unwrap_err();
            assert_eq!(err.field, field, "{value}");
        }
        assert!(serde_json::from_value::<TenantConfig>(serde_json::json!({"nope": 1})).is_err());
        assert!(
            serde_json::from_value::<TenantConfig>(
                serde_json::json!({"default_chunking_strategy": "WORDS"})
            )
            .is_err()
        );
    }
}
