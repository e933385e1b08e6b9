//! Queries on `tenants` (and the `tenant_usage` row created with each tenant).

use std::collections::BTreeMap;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::quota::BYTES_PER_MB;
use crate::tenancy::{IsolationMode, TenantId};
use crate::tenant::{Tenant, TenantChanges, TenantConfig, TenantInfo, TenantStatus};

const TENANT_COLUMNS: &str = "id, name, email, status, plan, isolation, quota_overrides, weight_override, config, \
                              created_at, updated_at, last_active";

/// What the admin gives to create a tenant.
#[derive(Debug, Clone)]
pub struct NewTenant {
    pub id: TenantId,
    pub name: String,
    pub email: String,
    pub plan: String,
    pub isolation: IsolationMode,
}

#[derive(Debug, thiserror::Error)]
pub enum TenantWriteError {
    #[error("tenant {0} already exists")]
    Exists(TenantId),
    #[error("unknown plan {0:?}")]
    UnknownPlan(String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

fn from_row(row: &PgRow) -> Result<Tenant, sqlx::Error> {
    let decode = |column: &str, what: &str| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("invalid {what}").into(),
    };
    let id: String = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    let isolation: String = row.try_get("isolation")?;
    let overrides: serde_json::Value = row.try_get("quota_overrides")?;
    let config: serde_json::Value = row.try_get("config")?;
    Ok(Tenant {
        id: TenantId::parse(&id).map_err(|_| decode("id", "tenant id"))?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        status: TenantStatus::parse(&status).ok_or_else(|| decode("status", "status"))?,
        plan: row.try_get("plan")?,
        isolation: IsolationMode::parse(&isolation)
            .ok_or_else(|| decode("isolation", "isolation mode"))?,
        quota_overrides: serde_json::from_value::<BTreeMap<String, i64>>(overrides)
            .unwrap_or_default(),
        weight_override: row.try_get("weight_override")?,
        config: TenantConfig::from_stored(config),
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_active: row.try_get("last_active")?,
    })
}

/// Creates a tenant and its usage row, and records it in the audit log, in one transaction.
pub async fn create(
    pool: &PgPool,
    new: &NewTenant,
    actor: &str,
) -> Result<Tenant, TenantWriteError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO tenants (id, name, email, plan, isolation) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO NOTHING RETURNING {TENANT_COLUMNS}"
    )))
    .bind(new.id.as_str())
    .bind(&new.name)
    .bind(&new.email)
    .bind(&new.plan)
    .bind(new.isolation.as_str())
    .fetch_optional(&mut *tx)
    .await;
    let row = match inserted {
        Ok(Some(row)) => row,
        Ok(None) => return Err(TenantWriteError::Exists(new.id.clone())),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => {
            return Err(TenantWriteError::UnknownPlan(new.plan.clone()));
        }
        Err(e) => return Err(e.into()),
    };
    sqlx::query("INSERT INTO tenant_usage (tenant_id) VALUES ($1)")
        .bind(new.id.as_str())
        .execute(&mut *tx)
        .await?;
    let tenant = from_row(&row)?;
    super::audit::record(
        &mut tx,
        Some(&tenant.id),
        actor,
        "tenant.created",
        None,
        serde_json::to_value(&tenant).ok(),
    )
    .await?;
    tx.commit().await?;
    Ok(tenant)
}

pub async fn get(conn: &mut PgConnection, id: &TenantId) -> Result<Option<Tenant>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"
    )))
    .bind(id.as_str())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Tenants in id order, `limit` at most, after the id `after` (keyset pagination).
pub async fn list(
    pool: &PgPool,
    after: Option<&TenantId>,
    limit: i64,
) -> Result<Vec<Tenant>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2"
    )))
    .bind(after.map(|t| t.as_str()))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Records that the tenant did something (shown as `last_active`). Coarse on
/// purpose: at most one write per tenant per minute.
pub async fn touch(pool: &PgPool, id: &TenantId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tenants SET last_active = now()
          WHERE id = $1 AND (last_active IS NULL OR last_active < now() - interval '1 minute')",
    )
    .bind(id.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// `TenantInfo` from the records: documents and measured bytes from `documents`
/// (state INGESTED), API calls from `api_calls` (written by the rate limiter), active
/// jobs from `jobs` (PENDING or PROCESSING), `last_active` from the coarse mark the
/// dispatcher sets when a key is used. One statement, so the figures are consistent.
pub async fn info(pool: &PgPool, id: &TenantId) -> Result<Option<TenantInfo>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT t.id, t.email, t.name, t.status, t.created_at, t.last_active,
                d.documents, d.bytes,
                (SELECT COALESCE(sum(c.calls), 0)::bigint FROM api_calls c WHERE c.tenant_id = t.id) AS api_calls,
                (SELECT count(*) FROM jobs j
                  WHERE j.tenant_id = t.id AND j.status IN ('PENDING', 'PROCESSING')) AS active_jobs
           FROM tenants t
           CROSS JOIN LATERAL (
                SELECT count(*) AS documents, COALESCE(sum(stored_bytes), 0)::bigint AS bytes
                  FROM documents WHERE tenant_id = t.id AND state = 'INGESTED') d
          WHERE t.id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let status: String = row.try_get("status")?;
    let bytes: i64 = row.try_get("bytes")?;
    Ok(Some(TenantInfo {
        user_id: id.clone(),
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        status: TenantStatus::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "status".into(),
            source: "invalid status".into(),
        })?,
        created_at: row.try_get("created_at")?,
        last_active: row.try_get("last_active")?,
        total_documents: row.try_get("documents")?,
        total_storage_mb: bytes as f64 / BYTES_PER_MB as f64,
        total_api_calls: row.try_get("api_calls")?,
        active_jobs: row.try_get("active_jobs")?,
    }))
}

/// Applies the admin's changes in one transaction with one audit entry per changed
/// field (`tenant.name_changed`, `tenant.email_changed`, `tenant.plan_changed`,
/// `tenant.status_changed`, each with before and after). Returns the tenant after,
/// or None if there is no such tenant. Unchanged values write nothing.
pub async fn update(
    pool: &PgPool,
    id: &TenantId,
    changes: &TenantChanges,
    actor: &str,
) -> Result<Option<Tenant>, TenantWriteError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1 FOR UPDATE"
    )))
    .bind(id.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let before = from_row(&row)?;
    let mut diffs: Vec<(&str, serde_json::Value, serde_json::Value)> = Vec::new();
    let mut diff = |field: &'static str, old: &str, new: Option<&str>| {
        if let Some(new) = new.filter(|n| *n != old) {
            diffs.push((field, old.into(), new.into()));
        }
    };
    diff("name", &before.name, changes.name.as_deref());
    diff("email", &before.email, changes.email.as_deref());
    diff("plan", &before.plan, changes.plan.as_deref());
    diff(
        "status",
        before.status.as_str(),
        changes.status.map(TenantStatus::as_str),
    );
    if diffs.is_empty() {
        tx.commit().await?;
        return Ok(Some(before));
    }
    let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE tenants SET name = COALESCE($2, name), email = COALESCE($3, email),
                plan = COALESCE($4, plan), status = COALESCE($5, status), updated_at = now()
          WHERE id = $1 RETURNING {TENANT_COLUMNS}"
    )))
    .bind(id.as_str())
    .bind(changes.name.as_deref())
    .bind(changes.email.as_deref())
    .bind(changes.plan.as_deref())
    .bind(changes.status.map(TenantStatus::as_str))
    .fetch_one(&mut *tx)
    .await;
    let after = match updated {
        Ok(row) => from_row(&row)?,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23503") => {
            return Err(TenantWriteError::UnknownPlan(
                changes.plan.clone().unwrap_or_default(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    for (field, old, new) in diffs {
        super::audit::record(
            &mut tx,
            Some(id),
            actor,
            &format!("tenant.{field}_changed"),
            Some(serde_json::json!({ field: old })),
            Some(serde_json::json!({ field: new })),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Some(after))
}

/// Replaces a tenant's configuration (validated by the caller) and records the change
/// in the audit log with before and after. Returns the configuration before, or None
/// if there is no such tenant.
pub async fn set_config(
    pool: &PgPool,
    id: &TenantId,
    config: &TenantConfig,
    actor: &str,
) -> Result<Option<TenantConfig>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let before: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT config FROM tenants WHERE id = $1 FOR UPDATE")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let Some(before) = before else {
        return Ok(None);
    };
    let before = TenantConfig::from_stored(before);
    let after = serde_json::to_value(config).map_err(|e| sqlx::Error::Encode(e.into()))?;
    sqlx::query("UPDATE tenants SET config = $2, updated_at = now() WHERE id = $1")
        .bind(id.as_str())
        .bind(&after)
        .execute(&mut *tx)
        .await?;
    if &before != config {
        super::audit::record(
            &mut tx,
            Some(id),
            actor,
            "config.updated",
            serde_json::to_value(&before).ok(),
            Some(after),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Some(before))
}
