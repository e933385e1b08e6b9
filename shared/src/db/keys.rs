//! Queries on `api_keys`: issue, look up by hash, list, revoke.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::api_key::{ApiKey, KeyHash};
use crate::tenancy::TenantId;
use crate::tenant::TenantStatus;

/// A key as listed: never the secret, only its visible prefix.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyInfo {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub prefix: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What a presented key resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyOwner {
    pub key_id: Uuid,
    pub tenant: TenantId,
    pub tenant_status: TenantStatus,
    pub expires_at: Option<DateTime<Utc>>,
}

fn info_from_row(row: &sqlx::postgres::PgRow) -> Result<KeyInfo, sqlx::Error> {
    let tenant: String = row.try_get("tenant_id")?;
    Ok(KeyInfo {
        id: row.try_get("id")?,
        tenant_id: TenantId::parse(&tenant).map_err(|e| sqlx::Error::Decode(e.into()))?,
        prefix: row.try_get("prefix")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
    })
}

/// Stores a new key's hash; the caller shows `key` once and forgets it.
pub async fn insert(
    conn: &mut sqlx::PgConnection,
    tenant: &TenantId,
    key: &ApiKey,
    name: &str,
    expires_at: Option<DateTime<Utc>>,
) -> Result<KeyInfo, sqlx::Error> {
    let row = sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, prefix, hash, name, expires_at) VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, tenant_id, prefix, name, created_at, expires_at, revoked_at, last_used_at",
    )
    .bind(Uuid::new_v4())
    .bind(tenant.as_str())
    .bind(key.display_prefix())
    .bind(&key.hash().0[..])
    .bind(name)
    .bind(expires_at)
    .fetch_one(conn)
    .await?;
    info_from_row(&row)
}

/// Resolves a key hash to its tenant, if the key exists and is not revoked.
/// Expiry and tenant status are returned for the caller to judge (and to cache).
pub async fn find_owner(pool: &PgPool, hash: &KeyHash) -> Result<Option<KeyOwner>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT k.id, k.tenant_id, k.hash, k.expires_at, t.status
           FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
          WHERE k.hash = $1 AND k.revoked_at IS NULL",
    )
    .bind(&hash.0[..])
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let stored: Vec<u8> = row.try_get("hash")?;
    // The index found the row by equality; confirm in constant time all the same.
    if !KeyHash::from_slice(&stored).is_some_and(|s| hash.verify(&s)) {
        return Ok(None);
    }
    let tenant: String = row.try_get("tenant_id")?;
    let status: String = row.try_get("status")?;
    Ok(Some(KeyOwner {
        key_id: row.try_get("id")?,
        tenant: TenantId::parse(&tenant).map_err(|e| sqlx::Error::Decode(e.into()))?,
        tenant_status: TenantStatus::parse(&status).unwrap_or(TenantStatus::Inactive),
        expires_at: row.try_get("expires_at")?,
    }))
}

pub async fn list(pool: &PgPool, tenant: &TenantId) -> Result<Vec<KeyInfo>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, tenant_id, prefix, name, created_at, expires_at, revoked_at, last_used_at
           FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id",
    )
    .bind(tenant.as_str())
    .fetch_all(pool)
    .await?;
    rows.iter().map(info_from_row).collect()
}

/// Revokes a key of this tenant. Returns the key as it was, or None if there is no
/// such key for this tenant. Revoking twice keeps the first time.
pub async fn revoke(
    conn: &mut sqlx::PgConnection,
    tenant: &TenantId,
    key_id: Uuid,
) -> Result<Option<(KeyInfo, KeyInfo)>, sqlx::Error> {
    let before = sqlx::query(
        "SELECT id, tenant_id, prefix, name, created_at, expires_at, revoked_at, last_used_at
           FROM api_keys WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(tenant.as_str())
    .bind(key_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(before) = before else {
        return Ok(None);
    };
    let after = sqlx::query(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE tenant_id = $1 AND id = $2
         RETURNING id, tenant_id, prefix, name, created_at, expires_at, revoked_at, last_used_at",
    )
    .bind(tenant.as_str())
    .bind(key_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Some((info_from_row(&before)?, info_from_row(&after)?)))
}

/// Notes that a key was used; coarse (once a minute) so it costs nearly nothing.
pub async fn touch(pool: &PgPool, key_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE api_keys SET last_used_at = now()
          WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(key_id)
    .execute(pool)
    .await?;
    Ok(())
}
