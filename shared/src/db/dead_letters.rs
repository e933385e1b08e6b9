//! Queries on `dead_letters`: messages refused for good, with their reason.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::tenancy::TenantId;

/// A dead letter to record.
#[derive(Debug, Clone)]
pub struct NewDeadLetter<'a> {
    pub id: Uuid,
    /// Only when the message's signature verified: a forged message names no tenant.
    pub tenant: Option<&'a TenantId>,
    pub job_id: Option<Uuid>,
    pub reason: &'a str,
    pub body: &'a [u8],
    pub headers: Value,
}

#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: Uuid,
    pub tenant_id: Option<String>,
    pub job_id: Option<Uuid>,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// Records a dead letter once (its id makes a second recording a no-op).
pub async fn record(pool: &PgPool, dl: &NewDeadLetter<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letters (id, tenant_id, job_id, reason, body, headers) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(dl.id)
    .bind(dl.tenant.map(TenantId::as_str))
    .bind(dl.job_id)
    .bind(dl.reason)
    .bind(dl.body)
    .bind(&dl.headers)
    .execute(pool)
    .await?;
    Ok(())
}

/// Dead letters, newest first, optionally of one tenant.
pub async fn list(
    pool: &PgPool,
    tenant: Option<&TenantId>,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, tenant_id, job_id, reason, created_at, replayed_at FROM dead_letters
          WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY created_at DESC, id LIMIT $2",
    )
    .bind(tenant.map(TenantId::as_str))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Dead letters recorded, and of those not replayed yet (for the operators' view).
pub async fn counts(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE replayed_at IS NULL) FROM dead_letters")
        .fetch_one(pool)
        .await
}
