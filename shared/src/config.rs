//! Settings: every environment variable tenantry reads, its default, and its parsing.
//!
//! The names in DESIGN.md's contract are fixed; every variable is a `const` here so a
//! test can check that deployment files set only names the binaries read.
//! Loading is `Settings::from_env()` (defaults, then the environment); a bad value is
//! an error naming the variable, never a silent default.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const ENV_DATABASE_URL: &str = "TENANTRY_DATABASE_URL";
pub const ENV_AMQP_URL: &str = "TENANTRY_AMQP_URL";
pub const ENV_QUEUE_PREFIX: &str = "TENANTRY_QUEUE_PREFIX";
pub const ENV_HTTP_ADDR: &str = "TENANTRY_HTTP_ADDR";
pub const ENV_ADMIN_TOKEN: &str = "TENANTRY_ADMIN_TOKEN";
pub const ENV_SIGNING_SECRET: &str = "TENANTRY_SIGNING_SECRET";
/// The key webhook signing secrets are sealed with at rest (`webhook::sealing`).
pub const ENV_SECRETS_KEY: &str = "TENANTRY_SECRETS_KEY";
/// The sealing key being rotated out: still opens, never seals.
pub const ENV_SECRETS_KEY_PREVIOUS: &str = "TENANTRY_SECRETS_KEY_PREVIOUS";
pub const ENV_VECTOR_BACKEND: &str = "TENANTRY_VECTOR_BACKEND";
pub const ENV_DATA_DIR: &str = "TENANTRY_DATA_DIR";
pub const ENV_QDRANT_URL: &str = "QDRANT_URL";
pub const ENV_QDRANT_API_KEY: &str = "QDRANT_API_KEY";
pub const ENV_WEBHOOK_ALLOW_PRIVATE: &str = "TENANTRY_WEBHOOK_ALLOW_PRIVATE";
pub const ENV_EMBEDDER: &str = "TENANTRY_EMBEDDER";
pub const ENV_EMBEDDER_URL: &str = "TENANTRY_EMBEDDER_URL";
pub const ENV_EMBEDDER_MODEL: &str = "TENANTRY_EMBEDDER_MODEL";
pub const ENV_EMBEDDER_DIM: &str = "TENANTRY_EMBEDDER_DIM";
pub const ENV_EMBEDDER_API_KEY: &str = "TENANTRY_EMBEDDER_API_KEY";
// Additions to the contract (tunables); each has a default that suits one machine.
/// `dev` allows a missing signing secret (a fixed, loudly-logged development key).
pub const ENV_PROFILE: &str = "TENANTRY_PROFILE";
pub const ENV_MAX_BODY_BYTES: &str = "TENANTRY_MAX_BODY_BYTES";
pub const ENV_BATCH_MAX_ITEMS: &str = "TENANTRY_BATCH_MAX_ITEMS";
pub const ENV_WORKER_PREFETCH: &str = "TENANTRY_WORKER_PREFETCH";
pub const ENV_WORKER_CONCURRENCY: &str = "TENANTRY_WORKER_CONCURRENCY";
/// Jobs one worker task processes at once (at most its prefetch).
pub const ENV_WORKER_IN_FLIGHT: &str = "TENANTRY_WORKER_IN_FLIGHT";
pub const ENV_MAX_ATTEMPTS: &str = "TENANTRY_MAX_ATTEMPTS";
pub const ENV_SHUTDOWN_GRACE_SECS: &str = "TENANTRY_SHUTDOWN_GRACE_SECS";
pub const ENV_AUTH_CACHE_SECS: &str = "TENANTRY_AUTH_CACHE_SECS";
pub const ENV_TENANT_WINDOW: &str = "TENANTRY_TENANT_WINDOW";
/// Most jobs of one tenant the pump puts in one message.
pub const ENV_JOBS_PER_MESSAGE: &str = "TENANTRY_JOBS_PER_MESSAGE";
/// How often the embedded store is checkpointed (milliseconds).
pub const ENV_CHECKPOINT_MS: &str = "TENANTRY_CHECKPOINT_MS";
/// Collections the embedded store keeps open at most.
pub const ENV_EDGE_MAX_OPEN: &str = "TENANTRY_EDGE_MAX_OPEN_COLLECTIONS";
/// WAL segment size of the embedded store's collections (KiB).
pub const ENV_EDGE_WAL_SEGMENT_KB: &str = "TENANTRY_EDGE_WAL_SEGMENT_KB";
pub const ENV_FLEET_WINDOW: &str = "TENANTRY_FLEET_WINDOW";
pub const ENV_HEARTBEAT_SECS: &str = "TENANTRY_HEARTBEAT_SECS";
pub const ENV_LOG_FORMAT: &str = "TENANTRY_LOG_FORMAT";
/// Retries of one embedding request inside a job attempt, before the job itself is
/// retried through the broker (0: every failure goes straight to the job's retry).
pub const ENV_EMBEDDER_MAX_RETRIES: &str = "TENANTRY_EMBEDDER_MAX_RETRIES";
/// Where a `worker` process serves `/metrics` (unset: no listener; port 0: any free port).
pub const ENV_METRICS_ADDR: &str = "TENANTRY_METRICS_ADDR";
/// Tenants given their own label in per-tenant metrics; the rest are summed as "other".
pub const ENV_METRICS_TOP_TENANTS: &str = "TENANTRY_METRICS_TOP_TENANTS";
/// Whether this dispatcher runs the webhook delivery loop (every dispatcher does by default).
pub const ENV_WEBHOOK_DELIVERY: &str = "TENANTRY_WEBHOOK_DELIVERY";
/// Wait after a webhook's first failed attempt; each later wait doubles.
pub const ENV_WEBHOOK_RETRY_BASE_MS: &str = "TENANTRY_WEBHOOK_RETRY_BASE_MS";
/// Longest wait between two attempts of one webhook.
pub const ENV_WEBHOOK_RETRY_MAX_MS: &str = "TENANTRY_WEBHOOK_RETRY_MAX_MS";
/// How long after an event was created (or redelivered) its retries stop: then it is dead.
pub const ENV_WEBHOOK_GIVE_UP_SECS: &str = "TENANTRY_WEBHOOK_GIVE_UP_SECS";
/// Total time one webhook attempt may take (connecting, sending, the answer).
pub const ENV_WEBHOOK_TIMEOUT_SECS: &str = "TENANTRY_WEBHOOK_TIMEOUT_SECS";
/// How often an idle delivery loop looks for due events.
pub const ENV_WEBHOOK_POLL_MS: &str = "TENANTRY_WEBHOOK_POLL_MS";
// Read by `tenantryctl` only.
/// Base URL of the dispatcher tenantryctl talks to.
pub const ENV_URL: &str = "TENANTRY_URL";
/// A tenant's API key, for tenantryctl's tenant commands (`jobs`, `submit`).
pub const ENV_API_KEY: &str = "TENANTRY_API_KEY";

/// Every variable the binaries read, for deployment-file checks.
pub const ALL_ENV_VARS: &[&str] = &[
    ENV_DATABASE_URL,
    ENV_AMQP_URL,
    ENV_QUEUE_PREFIX,
    ENV_HTTP_ADDR,
    ENV_ADMIN_TOKEN,
    ENV_SECRETS_KEY,
    ENV_SECRETS_KEY_PREVIOUS,
    ENV_SIGNING_SECRET,
    ENV_VECTOR_BACKEND,
    ENV_DATA_DIR,
    ENV_QDRANT_URL,
    ENV_QDRANT_API_KEY,
    ENV_WEBHOOK_ALLOW_PRIVATE,
    ENV_EMBEDDER,
    ENV_EMBEDDER_URL,
    ENV_EMBEDDER_MODEL,
    ENV_EMBEDDER_DIM,
    ENV_EMBEDDER_API_KEY,
    ENV_PROFILE,
    ENV_MAX_BODY_BYTES,
    ENV_BATCH_MAX_ITEMS,
    ENV_WORKER_PREFETCH,
    ENV_WORKER_CONCURRENCY,
    ENV_WORKER_IN_FLIGHT,
    ENV_MAX_ATTEMPTS,
    ENV_SHUTDOWN_GRACE_SECS,
    ENV_AUTH_CACHE_SECS,
    ENV_TENANT_WINDOW,
    ENV_FLEET_WINDOW,
    ENV_HEARTBEAT_SECS,
    ENV_LOG_FORMAT,
    ENV_EMBEDDER_MAX_RETRIES,
    ENV_METRICS_ADDR,
    ENV_METRICS_TOP_TENANTS,
    ENV_WEBHOOK_DELIVERY,
    ENV_WEBHOOK_RETRY_BASE_MS,
    ENV_WEBHOOK_RETRY_MAX_MS,
    ENV_WEBHOOK_GIVE_UP_SECS,
    ENV_WEBHOOK_TIMEOUT_SECS,
    ENV_WEBHOOK_POLL_MS,
    ENV_URL,
    ENV_API_KEY,
    "RUST_LOG",
];

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tenantry";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_QUEUE_PREFIX: &str = "tenantry";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_QDRANT_URL: &str = "http://127.0.0.1:6334";

/// The development signing key, used only with `TENANTRY_PROFILE=dev`.
const DEV_SIGNING_SECRET: &str = "tenantry-development-signing-secret-not-for-production";

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Prod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorBackend {
    Edge,
    Qdrant,
}

impl VectorBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Edge => "edge",
            Self::Qdrant => "qdrant",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EmbedderSettings {
    /// The deterministic feature-hashing embedder (offline, lexical).
    Hash { dimension: usize },
    /// An OpenAI-compatible `/v1/embeddings` server.
    OpenAi {
        url: String,
        model: String,
        dimension: usize,
        api_key: Option<Secret>,
        /// Retries of one request within a job attempt (`TENANTRY_EMBEDDER_MAX_RETRIES`).
        max_retries: u32,
    },
}

/// Worker tunables.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSettings {
    /// Unacknowledged deliveries a worker holds at once (AMQP prefetch).
    pub prefetch: u16,
    /// Worker tasks of a process (each its own connection and consumer).
    pub concurrency: usize,
    /// Deliveries one worker task processes at once; never more than `prefetch`.
    pub in_flight: usize,
    /// Attempts before a retryable failure becomes FAILED and dead-lettered.
    pub max_attempts: u32,
    /// How long SIGTERM waits for in-flight jobs before exiting.
    pub shutdown_grace: Duration,
    /// How long a worker that stopped announcing itself still counts as alive: a worker
    /// beats three times per interval, so a dead one leaves the view within one interval.
    pub heartbeat: Duration,
}

/// Webhook delivery tunables (where a delivery may go is `Settings::webhook_allow_private`).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSettings {
    /// Whether this process runs the delivery loop.
    pub delivery: bool,
    /// Backoff between attempts, and when to give up.
    pub retry: crate::webhook::RetrySchedule,
    /// Total time of one attempt.
    pub timeout: Duration,
    /// How often an idle delivery loop looks for due events.
    pub poll: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub profile: Profile,
    pub database_url: String,
    pub amqp_url: String,
    pub queue_prefix: String,
    pub http_addr: SocketAddr,
    pub admin_token: Option<Secret>,
    pub signing_secret: Secret,
    /// Seals webhook signing secrets at rest; None: a key derived from `signing_secret`.
    pub secrets_key: Option<Secret>,
    /// The sealing key being rotated out (opens, never seals).
    pub secrets_key_previous: Option<Secret>,
    pub vector_backend: VectorBackend,
    pub data_dir: PathBuf,
    pub qdrant_url: String,
    pub qdrant_api_key: Option<Secret>,
    pub webhook_allow_private: bool,
    pub webhook: WebhookSettings,
    pub embedder: EmbedderSettings,
    /// Largest request body the dispatcher reads (413 above).
    pub max_body_bytes: usize,
    /// Most documents in one `POST /v1/jobs/batch`.
    pub batch_max_items: usize,
    /// How long a verified API key (and its tenant's status) is trusted before
    /// Postgres is asked again: the upper bound on how long a revoked key still works.
    pub auth_cache_ttl: Duration,
    /// Jobs of one tenant guaranteed on the broker at once, per unit of plan weight
    /// (fair share: see `db::jobs::Windows`).
    pub tenant_window: u32,
    /// Jobs of the whole fleet the pumps aim to keep on the broker; a tenant may use
    /// its weighted share of it while the fleet is below it.
    pub fleet_window: u32,
    /// Most jobs of one tenant in one message: a message is a group of jobs, started,
    /// embedded, upserted and finished together.
    pub jobs_per_message: usize,
    /// How often the embedded store is checkpointed (see `tenantry::checkpoint`).
    pub checkpoint_period: Duration,
    /// Options of the embedded store.
    pub edge: crate::vector::edge::EdgeOptions,
    pub worker: WorkerSettings,
    pub log_format: LogFormat,
    /// Where a `worker` or `dispatcher` process serves `/metrics` to the operator,
    /// without credentials; None: not at all (a dispatcher still serves it to the
    /// admin token on its API port).
    pub metrics_addr: Option<SocketAddr>,
    /// Tenants labelled by name in per-tenant metrics (the rest are "other").
    pub metrics_top_tenants: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

/// An optional secret of at least 16 characters.
fn optional_secret(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<Secret>, ConfigError> {
    match get(var) {
        Some(t) if t.len() < 16 => Err(bad(var, "must be at least 16 characters")),
        other => Ok(other.map(Secret)),
    }
}

fn bad(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

impl Settings {
    /// Loads from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Loads from any lookup (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let profile = match get(ENV_PROFILE).as_deref() {
            None | Some("prod") | Some("production") => Profile::Prod,
            Some("dev") | Some("development") => Profile::Dev,
            Some(other) => {
                return Err(bad(
                    ENV_PROFILE,
                    format!("expected dev or prod, got {other:?}"),
                ));
            }
        };
        let signing_secret = match (get(ENV_SIGNING_SECRET), profile) {
            (Some(s), _) if s.len() < 16 => {
                return Err(bad(ENV_SIGNING_SECRET, "must be at least 16 characters"));
            }
            (Some(s), _) => Secret(s),
            (None, Profile::Dev) => Secret(DEV_SIGNING_SECRET.to_owned()),
            (None, Profile::Prod) => {
                return Err(bad(
                    ENV_SIGNING_SECRET,
                    "is required (the HMAC key of tenant stamps); set it, or set TENANTRY_PROFILE=dev to use a development key",
                ));
            }
        };
        let queue_prefix = get(ENV_QUEUE_PREFIX).unwrap_or_else(|| DEFAULT_QUEUE_PREFIX.to_owned());
        if queue_prefix.len() > 64
            || !queue_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(bad(
                ENV_QUEUE_PREFIX,
                "must be at most 64 characters of ASCII letters, digits, '-', '_' or '.'",
            ));
        }
        let http_addr = get(ENV_HTTP_ADDR)
            .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_owned())
            .parse::<SocketAddr>()
            .map_err(|e| bad(ENV_HTTP_ADDR, format!("not a socket address: {e}")))?;
        let vector_backend = match get(ENV_VECTOR_BACKEND).as_deref() {
            None | Some("edge") => VectorBackend::Edge,
            Some("qdrant") => VectorBackend::Qdrant,
            Some(other) => {
                return Err(bad(
                    ENV_VECTOR_BACKEND,
                    format!("expected edge or qdrant, got {other:?}"),
                ));
            }
        };
        let embedder = match get(ENV_EMBEDDER).as_deref() {
            None | Some("hash") => EmbedderSettings::Hash {
                dimension: parse_num(&get, ENV_EMBEDDER_DIM, 256usize, 8, 8192)?,
            },
            Some("openai") => EmbedderSettings::OpenAi {
                url: get(ENV_EMBEDDER_URL).ok_or_else(|| {
                    bad(
                        ENV_EMBEDDER_URL,
                        "is required with TENANTRY_EMBEDDER=openai",
                    )
                })?,
                model: get(ENV_EMBEDDER_MODEL).ok_or_else(|| {
                    bad(
                        ENV_EMBEDDER_MODEL,
                        "is required with TENANTRY_EMBEDDER=openai",
                    )
                })?,
                dimension: match get(ENV_EMBEDDER_DIM) {
                    None => {
                        return Err(bad(
                            ENV_EMBEDDER_DIM,
                            "is required with TENANTRY_EMBEDDER=openai",
                        ));
                    }
                    Some(_) => parse_num(&get, ENV_EMBEDDER_DIM, 0usize, 1, 65536)?,
                },
                api_key: get(ENV_EMBEDDER_API_KEY).map(Secret),
                max_retries: parse_num(
                    &get,
                    ENV_EMBEDDER_MAX_RETRIES,
                    crate::embed::DEFAULT_MAX_RETRIES,
                    0,
                    20,
                )?,
            },
            Some(other) => {
                return Err(bad(
                    ENV_EMBEDDER,
                    format!("expected hash or openai, got {other:?}"),
                ));
            }
        };
        let log_format = match get(ENV_LOG_FORMAT).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(bad(
                    ENV_LOG_FORMAT,
                    format!("expected text or json, got {other:?}"),
                ));
            }
        };
        Ok(Self {
            profile,
            database_url: get(ENV_DATABASE_URL).unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
            amqp_url: get(ENV_AMQP_URL).unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned()),
            queue_prefix,
            http_addr,
            admin_token: optional_secret(&get, ENV_ADMIN_TOKEN)?,
            signing_secret,
            secrets_key: optional_secret(&get, ENV_SECRETS_KEY)?,
            secrets_key_previous: optional_secret(&get, ENV_SECRETS_KEY_PREVIOUS)?,
            vector_backend,
            data_dir: get(ENV_DATA_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("./data")),
            qdrant_url: get(ENV_QDRANT_URL).unwrap_or_else(|| DEFAULT_QDRANT_URL.to_owned()),
            qdrant_api_key: get(ENV_QDRANT_API_KEY).map(Secret),
            webhook_allow_private: parse_bool(&get, ENV_WEBHOOK_ALLOW_PRIVATE, false)?,
            webhook: WebhookSettings {
                delivery: parse_bool(&get, ENV_WEBHOOK_DELIVERY, true)?,
                retry: crate::webhook::RetrySchedule {
                    base: Duration::from_millis(parse_num(
                        &get,
                        ENV_WEBHOOK_RETRY_BASE_MS,
                        10_000u64,
                        1,
                        86_400_000,
                    )?),
                    max_delay: Duration::from_millis(parse_num(
                        &get,
                        ENV_WEBHOOK_RETRY_MAX_MS,
                        4 * 3_600_000u64,
                        1,
                        86_400_000,
                    )?),
                    give_up: Duration::from_secs(parse_num(
                        &get,
                        ENV_WEBHOOK_GIVE_UP_SECS,
                        86_400u64,
                        1,
                        30 * 86_400,
                    )?),
                },
                timeout: Duration::from_secs(parse_num(
                    &get,
                    ENV_WEBHOOK_TIMEOUT_SECS,
                    10u64,
                    1,
                    300,
                )?),
                poll: Duration::from_millis(parse_num(
                    &get,
                    ENV_WEBHOOK_POLL_MS,
                    500u64,
                    10,
                    60_000,
                )?),
            },
            embedder,
            max_body_bytes: parse_num(&get, ENV_MAX_BODY_BYTES, 8 * 1024 * 1024, 1024, 1 << 30)?,
            batch_max_items: parse_num(&get, ENV_BATCH_MAX_ITEMS, 100, 1, 10_000)?,
            auth_cache_ttl: Duration::from_secs(parse_num(
                &get,
                ENV_AUTH_CACHE_SECS,
                2u64,
                0,
                300,
            )?),
            tenant_window: parse_num(&get, ENV_TENANT_WINDOW, 8u32, 1, 100_000)?,
            fleet_window: parse_num(&get, ENV_FLEET_WINDOW, 256u32, 1, 1_000_000)?,
            jobs_per_message: parse_num(
                &get,
                ENV_JOBS_PER_MESSAGE,
                16usize,
                1,
                crate::job::MAX_JOBS_PER_MESSAGE,
            )?,
            checkpoint_period: Duration::from_millis(parse_num(
                &get,
                ENV_CHECKPOINT_MS,
                2000u64,
                10,
                3_600_000,
            )?),
            edge: crate::vector::edge::EdgeOptions {
                max_open: parse_num(
                    &get,
                    ENV_EDGE_MAX_OPEN,
                    crate::vector::edge::DEFAULT_MAX_OPEN,
                    1,
                    100_000,
                )?,
                wal_segment_bytes: parse_num(
                    &get,
                    ENV_EDGE_WAL_SEGMENT_KB,
                    crate::vector::edge::WAL_SEGMENT_BYTES / 1024,
                    64,
                    1024 * 1024,
                )? * 1024,
            },
            worker: WorkerSettings {
                prefetch: parse_num(&get, ENV_WORKER_PREFETCH, 32u16, 1, 10_000)?,
                concurrency: parse_num(&get, ENV_WORKER_CONCURRENCY, 1usize, 1, 1024)?,
                in_flight: parse_num(&get, ENV_WORKER_IN_FLIGHT, 16usize, 1, 10_000)?,
                max_attempts: parse_num(&get, ENV_MAX_ATTEMPTS, 5u32, 1, 100)?,
                shutdown_grace: Duration::from_secs(parse_num(
                    &get,
                    ENV_SHUTDOWN_GRACE_SECS,
                    30u64,
                    0,
                    3600,
                )?),
                heartbeat: Duration::from_secs(parse_num(&get, ENV_HEARTBEAT_SECS, 5u64, 1, 3600)?),
            },
            log_format,
            metrics_addr: get(ENV_METRICS_ADDR)
                .map(|a| {
                    a.parse::<SocketAddr>()
                        .map_err(|e| bad(ENV_METRICS_ADDR, format!("not a socket address: {e}")))
                })
                .transpose()?,
            metrics_top_tenants: parse_num(&get, ENV_METRICS_TOP_TENANTS, 20usize, 0, 1000)?,
        })
    }

    /// The address part of a URL with any password removed, for messages and logs.
    pub fn redacted_url(url: &str) -> String {
        match url.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
                format!("{scheme}://{host}")
            }
            None => url.to_owned(),
        }
    }
}

fn parse_num<T>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    match get(var) {
        None => Ok(default),
        Some(raw) => {
            let v: T = raw
                .trim()
                .parse()
                .map_err(|_| bad(var, format!("expected a number, got {raw:?}")))?;
            if v < min || v > max {
                return Err(bad(
                    var,
                    format!("must be between {min} and {max}, got {v}"),
                ));
            }
            Ok(v)
        }
    }
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(var).as_deref().map(str::trim) {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(bad(var, format!("expected true or false, got {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = load(&[(ENV_PROFILE, "dev")]).unwrap();
        assert_eq!(s.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(s.amqp_url, DEFAULT_AMQP_URL);
        assert_eq!(s.queue_prefix, "tenantry");
        assert_eq!(s.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.admin_token, None);
        assert_eq!(s.vector_backend, VectorBackend::Edge);
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.qdrant_url, "http://127.0.0.1:6334");
        assert!(!s.webhook_allow_private);
        assert!(s.webhook.delivery);
        assert_eq!(s.webhook.retry.base, Duration::from_secs(10));
        assert_eq!(s.webhook.retry.max_delay, Duration::from_secs(4 * 3600));
        assert_eq!(s.webhook.retry.give_up, Duration::from_secs(24 * 3600));
        assert_eq!(s.webhook.timeout, Duration::from_secs(10));
        assert_eq!(s.embedder, EmbedderSettings::Hash { dimension: 256 });
        assert_eq!(s.max_body_bytes, 8 * 1024 * 1024);
    }

    #[test]
    fn production_needs_a_signing_secret() {
        let err = load(&[]).unwrap_err();
        assert_eq!(err.var, ENV_SIGNING_SECRET);
        assert!(load(&[(ENV_SIGNING_SECRET, "short")]).is_err());
        assert!(load(&[(ENV_SIGNING_SECRET, "0123456789abcdef0123")]).is_ok());
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases = [
            (ENV_HTTP_ADDR, "nope"),
            (ENV_VECTOR_BACKEND, "milvus"),
            (ENV_EMBEDDER, "magic"),
            (ENV_WEBHOOK_ALLOW_PRIVATE, "maybe"),
            (ENV_WEBHOOK_RETRY_BASE_MS, "0"),
            (ENV_WEBHOOK_DELIVERY, "sometimes"),
            (ENV_MAX_BODY_BYTES, "-1"),
            (ENV_QUEUE_PREFIX, "has space"),
        ];
        for (var, value) in cases {
            let err = load(&[(ENV_PROFILE, "dev"), (var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{value}");
        }
        let err = load(&[(ENV_PROFILE, "dev"), (ENV_EMBEDDER, "openai")]).unwrap_err();
        assert_eq!(err.var, ENV_EMBEDDER_URL);
    }

    #[test]
    fn secrets_are_redacted() {
        let s = load(&[
            (ENV_PROFILE, "dev"),
            (ENV_ADMIN_TOKEN, "super-secret-admin-token"),
        ])
        .unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains("super-secret-admin-token"));
        assert!(!printed.contains(DEV_SIGNING_SECRET));
        assert_eq!(
            Settings::redacted_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
    }
}
