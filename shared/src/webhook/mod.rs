//! Webhooks: the events tenants are notified of, how a delivery is signed, which
//! destinations may be called, and when a failed delivery is tried again.
//!
//! Events are written to a Postgres outbox (`db::webhooks`) in the transaction of the
//! state change that causes them; every dispatcher runs a delivery loop over that
//! outbox. This module holds the pure parts and the HTTP sender:
//! - [`signature`]: `Tenantry-Signature: t=…,v1=…` (HMAC-SHA256 over `t.body`) and
//!   its verification with a tolerance window against replays.
//! - [`address`]: the server-side request forgery rule — which IP addresses a webhook
//!   may reach — and a DNS resolver that applies it to the addresses it resolves.
//! - [`sender`]: the HTTP client (timeouts, no redirects, no proxy, bounded body).
//! - [`sealing`]: signing secrets sealed at rest under the operator's key.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

pub mod address;
pub mod sealing;
pub mod sender;
pub mod signature;

/// Header carrying the signature: `t=<unix seconds>,v1=<hex>[,v1=<hex>]`.
pub const SIGNATURE_HEADER: &str = "Tenantry-Signature";
/// Header carrying the event id, the same on every attempt: receivers dedupe on it.
pub const EVENT_ID_HEADER: &str = "Tenantry-Event-Id";
/// Header carrying the event type.
pub const EVENT_TYPE_HEADER: &str = "Tenantry-Event-Type";
/// Header carrying the 1-based attempt number (informational).
pub const ATTEMPT_HEADER: &str = "Tenantry-Delivery-Attempt";
/// `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("tenantry-webhooks/", env!("CARGO_PKG_VERSION"));
/// How long a rotated-out secret keeps signing beside the new one.
pub const ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Most bytes of a receiver's answer kept (for `last_error`); the rest is not read.
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// What a tenant can be notified of (the names of `notification_preferences`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    JobCompleted,
    JobFailed,
    QuotaWarning,
    QuotaExceeded,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        Self::JobCompleted,
        Self::JobFailed,
        Self::QuotaWarning,
        Self::QuotaExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::JobCompleted => "job_completed",
            Self::JobFailed => "job_failed",
            Self::QuotaWarning => "quota_warning",
            Self::QuotaExceeded => "quota_exceeded",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == raw)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of a delivery: the same bytes on every attempt of one event.
pub fn event_body(
    id: Uuid,
    event_type: &str,
    tenant: &str,
    created_at: DateTime<Utc>,
    data: &Value,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Envelope<'a> {
        id: Uuid,
        #[serde(rename = "type")]
        event_type: &'a str,
        tenant_id: &'a str,
        created_at: String,
        data: &'a Value,
    }
    serde_json::to_vec(&Envelope {
        id,
        event_type,
        tenant_id: tenant,
        created_at: created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        data,
    })
    .unwrap_or_default()
}

/// When failed deliveries are tried again: exponential backoff from `base`, doubling,
/// each delay capped at `max_delay` and jittered ±20 %; an event whose next attempt
/// would fall more than `give_up` after it was created (or redelivered) is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    pub base: Duration,
    pub max_delay: Duration,
    pub give_up: Duration,
}

impl RetrySchedule {
    /// The wait after failed attempt `attempt` (1-based), before jitter.
    pub fn nominal_delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(40);
        self.base
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max_delay)
    }

    /// The wait after failed attempt `attempt`, jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        crate::broker::jittered(self.nominal_delay(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_gives_up_within_a_day() {
        let s = RetrySchedule {
            base: Duration::from_secs(10),
            max_delay: Duration::from_secs(4 * 3600),
            give_up: Duration::from_secs(24 * 3600),
        };
        assert_eq!(s.nominal_delay(1), Duration::from_secs(10));
        assert_eq!(s.nominal_delay(2), Duration::from_secs(20));
        assert_eq!(s.nominal_delay(5), Duration::from_secs(160));
        assert_eq!(s.nominal_delay(12), Duration::from_secs(4 * 3600));
        assert_eq!(s.nominal_delay(1000), Duration::from_secs(4 * 3600));
        // The attempts that fit in a day with the nominal delays.
        let (mut elapsed, mut attempts) = (Duration::ZERO, 1);
        while elapsed + s.nominal_delay(attempts) <= s.give_up {
            elapsed += s.nominal_delay(attempts);
            attempts += 1;
        }
        assert!((14..=18).contains(&attempts), "{attempts}");
        for attempt in 1..20 {
            let d = s.delay(attempt).as_secs_f64();
            let n = s.nominal_delay(attempt).as_secs_f64();
            assert!(d >= n * 0.79 && d <= n * 1.21, "{attempt}: {d} vs {n}");
        }
    }

    #[test]
    fn event_types_round_trip_and_match_the_preferences() {
        for e in EventType::ALL {
            assert_eq!(EventType::parse(e.as_str()), Some(e));
            assert!(crate::tenant::NOTIFICATION_EVENTS.contains(&e.as_str()));
        }
        assert_eq!(EventType::parse("job_started"), None);
    }

    #[test]
    fn the_body_is_the_envelope() {
        let id = Uuid::new_v4();
        let at = DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let body = event_body(
            id,
            "job_completed",
            "acme",
            at,
            &serde_json::json!({"x": 1}),
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], id.to_string());
        assert_eq!(v["type"], "job_completed");
        assert_eq!(v["tenant_id"], "acme");
        assert_eq!(v["created_at"], "2026-11-27T12:00:00.000000Z");
        assert_eq!(v["data"]["x"], 1);
    }
}
