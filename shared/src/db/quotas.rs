//! Queries behind the quota and usage views, and the admin's per-tenant limit
//! overrides. Counters only change in `quota.rs`; this file reads them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::db::{THIS_HOUR, audit};
use crate::quota::{self, BYTES_PER_MB, Limits, ResourceKind, TenantQuotas, Usage};
use crate::tenancy::TenantId;

/// Longest period `TenantUsageStats` covers.
pub const MAX_USAGE_DAYS: i64 = 366;

/// PROCESSING_JOBS in use: the tenant's jobs in flight (handed to the broker, not ended),
/// which is what the pump holds to the limit (`db::jobs::claim_backlog`).
const IN_FLIGHT: &str = "(SELECT count(*) FROM jobs f WHERE f.tenant_id = u.tenant_id
      AND f.status IN ('PENDING', 'PROCESSING') AND f.published_at IS NOT NULL)";

/// The tenant's effective limits and current usage, or None if no such tenant.
pub async fn limits_and_usage(
    conn: &mut PgConnection,
    tenant: &TenantId,
) -> Result<Option<(Limits, Usage)>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT l.documents, l.storage_mb, l.api_calls_per_hour, l.processing_jobs, l.vector_collections,
                u.documents AS used_documents, u.storage_bytes, {IN_FLIGHT} AS used_processing_jobs,
                u.collections,
                COALESCE((SELECT calls FROM api_calls a WHERE a.tenant_id = $1 AND a.hour = {THIS_HOUR}), 0)
                    AS api_calls_this_hour
           FROM tenant_limits l JOIN tenant_usage u USING (tenant_id)
          WHERE l.tenant_id = $1"
    )))
    .bind(tenant.as_str())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(limits_usage_from_row).transpose()
}

fn limits_usage_from_row(row: &PgRow) -> Result<(Limits, Usage), sqlx::Error> {
    Ok((
        Limits {
            documents: row.try_get("documents")?,
            storage_mb: row.try_get("storage_mb")?,
            api_calls_per_hour: row.try_get("api_calls_per_hour")?,
            processing_jobs: row.try_get("processing_jobs")?,
            vector_collections: row.try_get("vector_collections")?,
        },
        Usage {
            documents: row.try_get("used_documents")?,
            storage_bytes: row.try_get("storage_bytes")?,
            api_calls_this_hour: row.try_get("api_calls_this_hour")?,
            processing_jobs: row.try_get("used_processing_jobs")?,
            collections: row.try_get("collections")?,
        },
    ))
}

/// The `TenantQuotas` view of one tenant, or None if no such tenant.
pub async fn tenant_quotas(
    pool: &PgPool,
    tenant: &TenantId,
) -> Result<Option<TenantQuotas>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    Ok(limits_and_usage(&mut conn, tenant)
        .await?
        .map(|(limits, usage)| quota::tenant_quotas(tenant, &limits, &usage)))
}

/// Replaces the tenant's limit overrides (kinds absent from `overrides` fall back to
/// the plan's default) and records the change in the audit log, in one transaction.
/// Returns None if no such tenant. The new limits hold fleet-wide at once: every
/// reservation reads them from `tenant_limits` in the same statement that reserves.
pub async fn set_overrides(
    pool: &PgPool,
    tenant: &TenantId,
    overrides: &BTreeMap<ResourceKind, i64>,
    actor: &str,
) -> Result<Option<TenantQuotas>, sqlx::Error> {
    let after: serde_json::Map<String, Value> = overrides
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), Value::from(*v)))
        .collect();
    let after = Value::Object(after);
    let mut tx = pool.begin().await?;
    let before: Option<Value> =
        sqlx::query_scalar("SELECT quota_overrides FROM tenants WHERE id = $1 FOR UPDATE")
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let Some(before) = before else {
        return Ok(None);
    };
    sqlx::query("UPDATE tenants SET quota_overrides = $2, updated_at = now() WHERE id = $1")
        .bind(tenant.as_str())
        .bind(&after)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        Some(tenant),
        actor,
        "tenant.quotas.set",
        Some(before),
        Some(after),
    )
    .await?;
    let view = limits_and_usage(&mut tx, tenant)
        .await?
        .map(|(limits, usage)| quota::tenant_quotas(tenant, &limits, &usage));
    tx.commit().await?;
    Ok(view)
}

/// The `TenantUsageStats` view of the original plan, every field from records:
/// jobs that ended in the period (by `finished_at`), the hourly API-call rows of the
/// period, and the measured storage held now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantUsageStats {
    pub tenant_id: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Jobs FINISHED in the period (one document each).
    pub documents_processed: i64,
    /// Chunks of those jobs.
    pub total_chunks_created: i64,
    /// Calls counted against API_CALLS_PER_HOUR in the clock hours the period touches.
    pub api_calls_made: i64,
    /// Measured bytes held now (payload and vectors of ingested documents, plus the
    /// reservations of documents not yet ingested), in MiB.
    pub storage_used_mb: f64,
    pub storage_used_bytes: i64,
    /// Sum over FINISHED and FAILED jobs of the period of `finished_at - started_at`.
    pub processing_time_seconds: i64,
    pub successful_jobs: i64,
    pub failed_jobs: i64,
    pub cancelled_jobs: i64,
    /// Mean of those durations, in seconds (0 when no job ended).
    pub average_job_duration: f64,
}

/// Per-tenant figures over a period, for one tenant or all (`tenant` None), ordered
/// by tenant id, at most `limit` tenants after `after`.
const STATS_SQL: &str = "
WITH period AS (SELECT now() - make_interval(days => $1::int) AS start_at, now() AS end_at),
ended AS (
  SELECT j.tenant_id,
         count(*) FILTER (WHERE j.status = 'FINISHED') AS successful,
         count(*) FILTER (WHERE j.status = 'FAILED') AS failed,
         count(*) FILTER (WHERE j.status = 'CANCELLED') AS cancelled,
         COALESCE(sum(j.chunks) FILTER (WHERE j.status = 'FINISHED'), 0)::bigint AS chunks,
         COALESCE(sum(extract(epoch FROM j.finished_at - j.started_at))
                  FILTER (WHERE j.status IN ('FINISHED', 'FAILED') AND j.started_at IS NOT NULL), 0)::float8 AS busy,
         count(*) FILTER (WHERE j.status IN ('FINISHED', 'FAILED') AND j.started_at IS NOT NULL) AS timed
    FROM jobs j, period
   WHERE j.finished_at >= period.start_at AND j.finished_at <= period.end_at
     AND ($2::text IS NULL OR j.tenant_id = $2)
   GROUP BY j.tenant_id),
calls AS (
  SELECT a.tenant_id, sum(a.calls)::bigint AS calls
    FROM api_calls a, period
   WHERE a.hour >= date_trunc('hour', period.start_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
     AND ($2::text IS NULL OR a.tenant_id = $2)
   GROUP BY a.tenant_id)
SELECT t.id AS tenant_id, period.start_at, period.end_at,
       COALESCE(e.successful, 0) AS successful, COALESCE(e.failed, 0) AS failed,
       COALESCE(e.cancelled, 0) AS cancelled, COALESCE(e.chunks, 0) AS chunks,
       COALESCE(e.busy, 0)::float8 AS busy, COALESCE(e.timed, 0) AS timed,
       COALESCE(c.calls, 0) AS calls, u.storage_bytes
  FROM tenants t
  JOIN tenant_usage u ON u.tenant_id = t.id
  CROSS JOIN period
  LEFT JOIN ended e ON e.tenant_id = t.id
  LEFT JOIN calls c ON c.tenant_id = t.id
 WHERE ($2::text IS NULL OR t.id = $2)
   AND ($3::text IS NULL OR t.id > $3)
 ORDER BY t.id
 LIMIT $4";

fn stats_from_row(row: &PgRow) -> Result<TenantUsageStats, sqlx::Error> {
    let busy: f64 = row.try_get("busy")?;
    let timed: i64 = row.try_get("timed")?;
    let storage: i64 = row.try_get("storage_bytes")?;
    Ok(TenantUsageStats {
        tenant_id: row.try_get("tenant_id")?,
        period_start: row.try_get("start_at")?,
        period_end: row.try_get("end_at")?,
        documents_processed: row.try_get("successful")?,
        total_chunks_created: row.try_get("chunks")?,
        api_calls_made: row.try_get("calls")?,
        storage_used_mb: storage as f64 / BYTES_PER_MB as f64,
        storage_used_bytes: storage,
        processing_time_seconds: busy.round() as i64,
        successful_jobs: row.try_get("successful")?,
        failed_jobs: row.try_get("failed")?,
        cancelled_jobs: row.try_get("cancelled")?,
        average_job_duration: if timed > 0 { busy / timed as f64 } else { 0.0 },
    })
}

/// One tenant's usage over the last `days` days, or None if no such tenant.
pub async fn usage_stats(
    pool: &PgPool,
    tenant: &TenantId,
    days: i64,
) -> Result<Option<TenantUsageStats>, sqlx::Error> {
    let row = sqlx::query(STATS_SQL)
        .bind(days.clamp(1, MAX_USAGE_DAYS) as i32)
        .bind(Some(tenant.as_str()))
        .bind(None::<&str>)
        .bind(1_i64)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(stats_from_row).transpose()
}

/// One tenant's line in the billing view: its usage over the period and its quotas now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantBilling {
    #[serde(flatten)]
    pub usage: TenantUsageStats,
    pub quotas: TenantQuotas,
}

/// Usage of every tenant over the last `days` days (a page of `limit` tenants after
/// `after`, by id), with each one's limits and current counters.
pub async fn all_usage(
    pool: &PgPool,
    days: i64,
    after: Option<&TenantId>,
    limit: i64,
) -> Result<Vec<TenantBilling>, sqlx::Error> {
    let rows = sqlx::query(STATS_SQL)
        .bind(days.clamp(1, MAX_USAGE_DAYS) as i32)
        .bind(None::<&str>)
        .bind(after.map(TenantId::as_str))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    let stats = rows
        .iter()
        .map(stats_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<&str> = stats.iter().map(|s| s.tenant_id.as_str()).collect();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT l.tenant_id, l.documents, l.storage_mb, l.api_calls_per_hour, l.processing_jobs,
                l.vector_collections, u.documents AS used_documents, u.storage_bytes,
                {IN_FLIGHT} AS used_processing_jobs, u.collections,
                COALESCE(a.calls, 0) AS api_calls_this_hour
           FROM tenant_limits l JOIN tenant_usage u USING (tenant_id)
           LEFT JOIN api_calls a ON a.tenant_id = l.tenant_id AND a.hour = {THIS_HOUR}
          WHERE l.tenant_id = ANY($1)"
    )))
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut quotas = BTreeMap::new();
    for row in &rows {
        let id: String = row.try_get("tenant_id")?;
        quotas.insert(id, limits_usage_from_row(row)?);
    }
    let mut out = Vec::with_capacity(stats.len());
    for usage in stats {
        let Some((limits, now)) = quotas.get(&usage.tenant_id) else {
            continue;
        };
        let Ok(id) = TenantId::parse(&usage.tenant_id) else {
            continue;
        };
        out.push(TenantBilling {
            quotas: quota::tenant_quotas(&id, limits, now),
            usage,
        });
    }
    Ok(out)
}
