//! Queries on `tenants` (and the `tenant_usage` row created with each tenant).

use std::collections::BTreeMap;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};

use crate::tenancy::{IsolationMode, TenantId};
use crate::tenant::{Tenant, TenantConfig, TenantStatus};

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
