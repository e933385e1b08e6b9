//! The audit log: every admin action with actor, time, and before/after.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use crate::tenancy::TenantId;

#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub tenant_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub at: DateTime<Utc>,
}

/// Records an action; call it inside the transaction that makes the change, so the
/// log and the change commit together or not at all.
pub async fn record(
    conn: &mut PgConnection,
    tenant: Option<&TenantId>,
    actor: &str,
    action: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO audit_log (tenant_id, actor, action, before, after) VALUES ($1, $2, $3, $4, $5)")
        .bind(tenant.map(TenantId::as_str))
        .bind(actor)
        .bind(action)
        .bind(before)
        .bind(after)
        .execute(conn)
        .await?;
    Ok(())
}

/// A tenant's audit entries, oldest first, `limit` at most, after the entry `after`
/// (keyset pagination on the id, which grows with time).
pub async fn list(
    pool: &PgPool,
    tenant: &TenantId,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, tenant_id, actor, action, before, after, at FROM audit_log
          WHERE tenant_id = $1 AND ($2::bigint IS NULL OR id > $2) ORDER BY id LIMIT $3",
    )
    .bind(tenant.as_str())
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}
