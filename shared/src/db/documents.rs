//! Queries on `documents` that are not part of a job's life: deleting one.

use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::quota;
use crate::tenancy::{DatabaseName, TenantId};

/// What [`delete`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteOutcome {
    /// Marked DELETED now; its quota (one document and its bytes) was given back if it held
    /// any. The caller removes the points of `database`.
    Deleted {
        database: DatabaseName,
        released_bytes: i64,
    },
    /// Deleted before: nothing to give back (the caller may remove the points again).
    AlreadyDeleted { database: DatabaseName },
    /// A job of the document is pending or processing: it would write the points back.
    InProgress,
    /// No such document for this tenant.
    NotFound,
}

/// Marks a document of `tenant` DELETED and releases its quota, in one transaction. The
/// row is locked, and `holds_quota` guards the release, so a repeated or concurrent
/// delete releases once.
pub async fn delete(
    pool: &PgPool,
    tenant: &TenantId,
    document: Uuid,
) -> Result<DeleteOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT database, state, holds_quota, reserved_bytes FROM documents
          WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(tenant.as_str())
    .bind(document)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(DeleteOutcome::NotFound);
    };
    let database = DatabaseName::parse(&row.try_get::<String, _>("database")?)
        .map_err(|e| sqlx::Error::Decode(e.into()))?;
    let state: String = row.try_get("state")?;
    if state == "DELETED" {
        return Ok(DeleteOutcome::AlreadyDeleted { database });
    }
    let busy: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE tenant_id = $1 AND document_id = $2
                          AND status IN ('PENDING', 'PROCESSING'))",
    )
    .bind(tenant.as_str())
    .bind(document)
    .fetch_one(&mut *tx)
    .await?;
    if busy {
        return Ok(DeleteOutcome::InProgress);
    }
    let holds_quota: bool = row.try_get("holds_quota")?;
    let bytes: i64 = row.try_get("reserved_bytes")?;
    sqlx::query(
        "UPDATE documents SET state = 'DELETED', holds_quota = false, reserved_bytes = 0, deleted_at = now()
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.as_str())
    .bind(document)
    .execute(&mut *tx)
    .await?;
    if holds_quota {
        quota::release_document(&mut tx, tenant, bytes).await?;
    }
    tx.commit().await?;
    Ok(DeleteOutcome::Deleted {
        database,
        released_bytes: if holds_quota { bytes } else { 0 },
    })
}
