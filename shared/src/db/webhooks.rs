//! The webhook outbox: recording events in the transaction of their cause, the
//! delivery loop's claims and results, the tenant's deliveries view, and the tenant's
//! signing secrets.
//!
//! An event is recorded only if the tenant has a `webhook_url` and its
//! `notification_preferences` want the type (read from the tenant row inside the same
//! transaction). Quota events fire once per crossing: a marker row per (tenant,
//! resource, type, period) is inserted with the event, and an existing marker
//! suppresses it. The period is the UTC clock hour for `quota_exceeded` and for
//! API_CALLS_PER_HOUR warnings (the counter restarts every hour), the UTC day for
//! other warnings (so a tenant hovering around 80 % hears of it at most once a day).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::error_code::Code;
use crate::job::JobStatus;
use crate::quota::{QuotaExceeded, ResourceKind, WARNING_PERCENT};
use crate::tenancy::TenantId;
use crate::tenant::TenantConfig;
use crate::webhook::EventType;
use crate::webhook::sealing::SecretSealer;

/// Delivered and dead events are kept this long for the deliveries view.
pub const RETENTION_DAYS: i32 = 30;

/// Whether the tenant has a webhook URL and wants events of this type.
async fn wants(
    conn: &mut PgConnection,
    tenant: &TenantId,
    event: EventType,
) -> Result<bool, sqlx::Error> {
    let config: Option<Value> = sqlx::query_scalar("SELECT config FROM tenants WHERE id = $1")
        .bind(tenant.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(config
        .map(TenantConfig::from_stored)
        .is_some_and(|c| c.webhook_url.is_some() && c.wants(event.as_str())))
}

/// Records `job_completed` or `job_failed` for a job that just ended, inside the
/// transaction that ended it (call after the job row is updated). A job failed with
/// code `quota_exceeded` (its measured size did not fit) also records `quota_exceeded`.
pub async fn job_ended(
    conn: &mut PgConnection,
    tenant: &TenantId,
    job_id: Uuid,
    status: JobStatus,
    error: Option<(Code, &str)>,
) -> Result<(), sqlx::Error> {
    jobs_ended(conn, &[(tenant.clone(), job_id)], status).await?;
    if let Some((Code::QuotaExceeded, message)) = error
        && let Some(resource) = message
            .split_whitespace()
            .next()
            .and_then(ResourceKind::parse)
    {
        let data = json!({ "resource": resource, "job_id": job_id, "message": message });
        quota_event(conn, tenant, EventType::QuotaExceeded, resource, data).await?;
    }
    Ok(())
}

/// Records `job_completed` or `job_failed` for jobs that just ended with `status`, inside
/// the transaction that ended them: one read of their tenants' preferences and one
/// insert, however many jobs.
pub async fn jobs_ended(
    conn: &mut PgConnection,
    jobs: &[(TenantId, Uuid)],
    status: JobStatus,
) -> Result<(), sqlx::Error> {
    let event = match status {
        JobStatus::Finished => EventType::JobCompleted,
        JobStatus::Failed => EventType::JobFailed,
        _ => return Ok(()),
    };
    if jobs.is_empty() {
        return Ok(());
    }
    let mut tenants: Vec<&str> = jobs.iter().map(|(t, _)| t.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let configs: Vec<(String, Value)> =
        sqlx::query_as("SELECT id, config FROM tenants WHERE id = ANY($1)")
            .bind(&tenants)
            .fetch_all(&mut *conn)
            .await?;
    let wanting: Vec<String> = configs
        .into_iter()
        .filter(|(_, config)| {
            let config = TenantConfig::from_stored(config.clone());
            config.webhook_url.is_some() && config.wants(event.as_str())
        })
        .map(|(id, _)| id)
        .collect();
    let ids: Vec<Uuid> = jobs
        .iter()
        .filter(|(t, _)| wanting.iter().any(|w| w == t.as_str()))
        .map(|(_, id)| *id)
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO webhook_events (id, tenant_id, event_type, payload)
         SELECT gen_random_uuid(), j.tenant_id, $2,
                jsonb_build_object(
                    'job_id', j.id, 'document_id', j.document_id, 'database', d.database,
                    'source_type', d.source_type, 'metadata', d.metadata, 'status', j.status,
                    'attempts', j.attempts, 'chunks', j.chunks,
                    'created_at', j.created_at, 'finished_at', j.finished_at,
                    'error', CASE WHEN j.error_code IS NULL OR j.status <> 'FAILED' THEN NULL
                                  ELSE jsonb_build_object('code', j.error_code, 'message', j.error) END)
           FROM jobs j JOIN documents d ON d.id = j.document_id
          WHERE j.id = ANY($1)",
    )
    .bind(&ids)
    .bind(event.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records `quota_warning` for a reservation that took `resource` from below to at
/// least [`WARNING_PERCENT`] of its limit, inside the reservation's transaction.
pub async fn quota_warning(
    conn: &mut PgConnection,
    tenant: &TenantId,
    resource: ResourceKind,
    limit: i64,
    used: i64,
    percentage: f64,
) -> Result<(), sqlx::Error> {
    let data = json!({
        "resource": resource,
        "limit": limit,
        "current_usage": used,
        "percentage_used": (percentage * 10.0).round() / 10.0,
        "threshold_percent": WARNING_PERCENT,
    });
    quota_event(conn, tenant, EventType::QuotaWarning, resource, data).await
}

/// Records `quota_exceeded` for a refused reservation. The refusal rolled its own
/// transaction back, so this is a transaction of its own.
pub async fn quota_exceeded(
    pool: &PgPool,
    tenant: &TenantId,
    refused: &QuotaExceeded,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    quota_exceeded_in(&mut tx, tenant, refused).await?;
    tx.commit().await
}

/// [`quota_exceeded`] inside the caller's transaction.
pub async fn quota_exceeded_in(
    conn: &mut PgConnection,
    tenant: &TenantId,
    refused: &QuotaExceeded,
) -> Result<(), sqlx::Error> {
    let data = json!({
        "resource": refused.resource,
        "limit": refused.limit,
        "current_usage": refused.used,
        "requested": refused.requested,
        "message": refused.to_string(),
    });
    quota_event(
        conn,
        tenant,
        EventType::QuotaExceeded,
        refused.resource,
        data,
    )
    .await
}

/// Inserts the period's marker and, if it was not there yet, the event.
async fn quota_event(
    conn: &mut PgConnection,
    tenant: &TenantId,
    event: EventType,
    resource: ResourceKind,
    data: Value,
) -> Result<(), sqlx::Error> {
    if !wants(conn, tenant, event).await? {
        return Ok(());
    }
    let hourly = event == EventType::QuotaExceeded || resource == ResourceKind::ApiCallsPerHour;
    sqlx::query(
        "WITH mark AS (
             INSERT INTO webhook_quota_marks (tenant_id, resource, event_type, period)
             VALUES ($1, $2, $3, date_trunc(CASE WHEN $4 THEN 'hour' ELSE 'day' END,
                                            now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
             ON CONFLICT DO NOTHING
             RETURNING tenant_id)
         INSERT INTO webhook_events (id, tenant_id, event_type, payload)
         SELECT $5, tenant_id, $3, $6 FROM mark",
    )
    .bind(tenant.as_str())
    .bind(resource.as_str())
    .bind(event.as_str())
    .bind(hourly)
    .bind(Uuid::new_v4())
    .bind(data)
    .execute(conn)
    .await?;
    Ok(())
}

/// An event claimed for one attempt.
#[derive(Debug, Clone)]
pub struct DueEvent {
    pub id: Uuid,
    pub tenant: String,
    pub event_type: String,
    pub data: Value,
    /// This attempt's number (1-based).
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
    /// The tenant's webhook URL now (it may have changed since the event).
    pub url: Option<String>,
    /// The current secret, and the previous one while it is in its grace period.
    pub secrets: Vec<String>,
}

/// Claims up to `max` due events for one attempt each: counts the attempt and moves
/// `next_attempt_at` past `lease`, so no other process takes them meanwhile. If this
/// process dies mid-attempt, the event is due again when the lease ends.
pub async fn claim_due(
    pool: &PgPool,
    sealer: &SecretSealer,
    max: i64,
    lease: std::time::Duration,
) -> Result<Vec<DueEvent>, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE webhook_events e
            SET attempts = e.attempts + 1, last_attempt_at = now(),
                next_attempt_at = now() + make_interval(secs => $2)
           FROM (SELECT id FROM webhook_events
                  WHERE status = 'pending' AND next_attempt_at <= now()
                  ORDER BY next_attempt_at
                  LIMIT $1
                    FOR UPDATE SKIP LOCKED) due
          WHERE e.id = due.id
      RETURNING e.id, e.tenant_id, e.event_type, e.payload, e.attempts, e.created_at,
                (SELECT t.config ->> 'webhook_url' FROM tenants t WHERE t.id = e.tenant_id) AS url,
                (SELECT s.secret FROM webhook_secrets s WHERE s.tenant_id = e.tenant_id) AS secret,
                (SELECT s.previous_secret FROM webhook_secrets s
                  WHERE s.tenant_id = e.tenant_id AND s.previous_until > now()) AS previous_secret",
    )
    .bind(max)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let tenant: String = row.try_get("tenant_id")?;
            let secret: Option<String> = row.try_get("secret")?;
            let previous: Option<String> = row.try_get("previous_secret")?;
            let secrets = secret
                .into_iter()
                .chain(previous)
                .filter_map(|stored| match sealer.open(&tenant, &stored) {
                    Ok(secret) => Some(secret),
                    Err(e) => {
                        // The event waits (no secret: never sent unsigned) until the
                        // operator sets the key that sealed it.
                        tracing::error!(tenant_id = %tenant, error = %e, "A webhook signing secret does not open.");
                        None
                    }
                })
                .collect();
            Ok(DueEvent {
                id: row.try_get("id")?,
                tenant,
                event_type: row.try_get("event_type")?,
                data: row.try_get("payload")?,
                attempt: row.try_get("attempts")?,
                created_at: row.try_get("created_at")?,
                url: row.try_get("url")?,
                secrets,
            })
        })
        .collect()
}

/// Records a delivered attempt. Guarded by the attempt number: a stale attempt (its
/// lease ran out and another took over) records nothing.
pub async fn record_delivered(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    status_code: u16,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_events
            SET status = 'delivered', delivered_at = now(), last_status_code = $3, last_error = NULL
          WHERE id = $1 AND attempts = $2 AND status = 'pending'",
    )
    .bind(id)
    .bind(attempt)
    .bind(i32::from(status_code))
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a failed attempt: the next one after `retry_in`, or dead if `dead_now` or
/// if that would fall after the event's give-up time. Returns whether it is dead.
pub async fn record_failed(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    status_code: Option<u16>,
    error: &str,
    retry_in: std::time::Duration,
    dead_now: bool,
) -> Result<bool, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar(
        "UPDATE webhook_events
            SET last_error = $3, last_status_code = $4,
                status = CASE WHEN $6 OR now() + make_interval(secs => $5) > give_up_at
                              THEN 'dead' ELSE 'pending' END,
                next_attempt_at = now() + make_interval(secs => $5)
          WHERE id = $1 AND attempts = $2 AND status = 'pending'
      RETURNING status",
    )
    .bind(id)
    .bind(attempt)
    .bind(truncate(error, 1000))
    .bind(status_code.map(i32::from))
    .bind(retry_in.as_secs_f64())
    .bind(dead_now)
    .fetch_optional(pool)
    .await?;
    Ok(status.as_deref() == Some("dead"))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Removes delivered and dead events past [`RETENTION_DAYS`], and quota markers of
/// periods long over.
pub async fn prune(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM webhook_events
          WHERE status <> 'pending' AND created_at < now() - make_interval(days => $1)",
    )
    .bind(RETENTION_DAYS)
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM webhook_quota_marks WHERE period < now() - interval '2 days'")
        .execute(pool)
        .await?;
    Ok(())
}

/// One event in the tenant's deliveries view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryView {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    /// `pending`, `delivered` or `dead`.
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub last_status_code: Option<i32>,
    /// When the next attempt is due (pending events only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The event's `data`, as delivered.
    pub data: Value,
}

const DELIVERY_COLUMNS: &str = "id, event_type, status, attempts, last_error, last_status_code, \
    next_attempt_at, last_attempt_at, created_at, delivered_at, payload";

fn delivery_from_row(row: &PgRow) -> Result<DeliveryView, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let next: DateTime<Utc> = row.try_get("next_attempt_at")?;
    Ok(DeliveryView {
        event_id: row.try_get("id")?,
        event_type: row.try_get("event_type")?,
        next_attempt_at: (status == "pending").then_some(next),
        status,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        last_status_code: row.try_get("last_status_code")?,
        last_attempt_at: row.try_get("last_attempt_at")?,
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
        data: row.try_get("payload")?,
    })
}

/// The tenant's events, newest first, optionally of one status; `after` is the last
/// event id of the previous page.
pub async fn list(
    pool: &PgPool,
    tenant: &TenantId,
    status: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<DeliveryView>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_events e
          WHERE e.tenant_id = $1
            AND ($2::text IS NULL OR e.status = $2)
            AND ($3::uuid IS NULL OR (e.created_at, e.id) <
                 (SELECT c.created_at, c.id FROM webhook_events c WHERE c.tenant_id = $1 AND c.id = $3))
          ORDER BY e.created_at DESC, e.id DESC
          LIMIT $4"
    )))
    .bind(tenant.as_str())
    .bind(status)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(delivery_from_row).collect()
}

/// Makes one of the tenant's events due now, whatever its status (a dead one gets a
/// new retry period of `give_up`; a delivered one is sent again). None if the tenant
/// has no such event.
pub async fn redeliver(
    pool: &PgPool,
    tenant: &TenantId,
    id: Uuid,
    give_up: std::time::Duration,
) -> Result<Option<DeliveryView>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE webhook_events
            SET status = 'pending', next_attempt_at = now(), delivered_at = NULL,
                give_up_at = now() + make_interval(secs => $3)
          WHERE tenant_id = $1 AND id = $2
      RETURNING {DELIVERY_COLUMNS}"
    )))
    .bind(tenant.as_str())
    .bind(id)
    .bind(give_up.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(delivery_from_row).transpose()
}

/// Issues the tenant a new signing secret. The one it replaces keeps signing beside
/// it for `grace`; returns the new secret and until when the old one still signs.
pub async fn rotate_secret(
    pool: &PgPool,
    sealer: &SecretSealer,
    tenant: &TenantId,
    grace: std::time::Duration,
) -> Result<(String, Option<DateTime<Utc>>), sqlx::Error> {
    let secret = crate::webhook::signature::new_secret();
    let sealed = sealer.seal(tenant.as_str(), &secret);
    let previous_until: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO webhook_secrets (tenant_id, secret) VALUES ($1, $2)
         ON CONFLICT (tenant_id) DO UPDATE
            SET previous_secret = webhook_secrets.secret,
                previous_until = now() + make_interval(secs => $3),
                secret = EXCLUDED.secret, rotated_at = now()
      RETURNING previous_until",
    )
    .bind(tenant.as_str())
    .bind(&sealed)
    .bind(grace.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok((secret, previous_until))
}

/// Seals every signing secret not sealed under the sealer's current key (one stored in
/// clear before sealing, or under the key being rotated out); returns how many rows
/// changed. Rows are locked while resealed, so dispatchers starting together agree.
/// A secret that does not open is left as it is (and logged).
pub async fn reseal_secrets(pool: &PgPool, sealer: &SecretSealer) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows = sqlx::query(
        "SELECT tenant_id, secret, previous_secret FROM webhook_secrets ORDER BY tenant_id FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await?;
    let reseal = |tenant: &str, stored: &str| -> Option<String> {
        if sealer.is_current(stored) {
            return Some(stored.to_owned());
        }
        match sealer.open(tenant, stored) {
            Ok(secret) => Some(sealer.seal(tenant, &secret)),
            Err(e) => {
                tracing::error!(tenant_id = %tenant, error = %e, "A webhook signing secret does not open; left as it is.");
                None
            }
        }
    };
    let mut changed = 0;
    for row in rows {
        let tenant: String = row.try_get("tenant_id")?;
        let secret: String = row.try_get("secret")?;
        let previous: Option<String> = row.try_get("previous_secret")?;
        let new_secret = reseal(&tenant, &secret).unwrap_or_else(|| secret.clone());
        let new_previous = previous
            .as_deref()
            .map(|p| reseal(&tenant, p).unwrap_or_else(|| p.to_owned()));
        if new_secret == secret && new_previous == previous {
            continue;
        }
        sqlx::query(
            "UPDATE webhook_secrets SET secret = $2, previous_secret = $3 WHERE tenant_id = $1",
        )
        .bind(&tenant)
        .bind(&new_secret)
        .bind(&new_previous)
        .execute(&mut *tx)
        .await?;
        changed += 1;
    }
    tx.commit().await?;
    Ok(changed)
}
