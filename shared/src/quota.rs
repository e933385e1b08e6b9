//! Quotas: resource kinds, and every change to a usage counter.
//!
//! Each reservation is ONE conditional `UPDATE … WHERE used + n <= limit RETURNING`
//! on the tenant's `tenant_usage` row. Postgres re-checks the condition against the
//! latest row version when concurrent updates queue on the row lock, so N workers
//! and M dispatchers racing can never push a counter past its limit — unlike the
//! original plan's count-then-act. Limits come from the `tenant_limits` view (plan
//! default unless the tenant has an override): the only place they are combined.

use std::fmt;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::tenancy::TenantId;

pub const BYTES_PER_MB: i64 = 1024 * 1024;

/// Whole megabytes needed to hold `bytes` (rounded up; negative counts as zero).
pub fn megabytes(bytes: i64) -> i64 {
    (bytes.max(0) + BYTES_PER_MB - 1) / BYTES_PER_MB
}
/// Usage at or above this percentage of a limit produces a warning.
pub const WARNING_PERCENT: f64 = 80.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResourceKind {
    Documents,
    StorageMb,
    ApiCallsPerHour,
    ProcessingJobs,
    VectorCollections,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 5] = [
        Self::Documents,
        Self::StorageMb,
        Self::ApiCallsPerHour,
        Self::ProcessingJobs,
        Self::VectorCollections,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Documents => "DOCUMENTS",
            Self::StorageMb => "STORAGE_MB",
            Self::ApiCallsPerHour => "API_CALLS_PER_HOUR",
            Self::ProcessingJobs => "PROCESSING_JOBS",
            Self::VectorCollections => "VECTOR_COLLECTIONS",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// Whether waiting can bring usage back under the limit on its own (hourly calls,
    /// concurrent jobs: 429 with Retry-After) or only deleting something or raising the
    /// limit can (documents, storage, collections: 403).
    pub fn frees_up_by_itself(self) -> bool {
        matches!(self, Self::ApiCallsPerHour | Self::ProcessingJobs)
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused reservation: which resource, and the numbers behind the refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{resource} quota exceeded: {used} used of {limit}, {requested} more requested")]
pub struct QuotaExceeded {
    pub resource: ResourceKind,
    pub limit: i64,
    pub used: i64,
    pub requested: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error(transparent)]
    Exceeded(#[from] QuotaExceeded),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Reserves one document and `bytes` of storage, or says which of the two is full.
pub async fn reserve_document(
    conn: &mut PgConnection,
    tenant: &TenantId,
    bytes: i64,
) -> Result<(), QuotaError> {
    let reserved = sqlx::query(
        "UPDATE tenant_usage u
            SET documents = u.documents + 1, storage_bytes = u.storage_bytes + $2
           FROM tenant_limits l
          WHERE u.tenant_id = $1 AND l.tenant_id = u.tenant_id
            AND u.documents + 1 <= l.documents
            AND u.storage_bytes + $2 <= l.storage_mb * 1048576
      RETURNING u.documents",
    )
    .bind(tenant.as_str())
    .bind(bytes)
    .fetch_optional(&mut *conn)
    .await?;
    if reserved.is_some() {
        return Ok(());
    }
    // Refused: read the numbers only to say which resource (the decision is made).
    let (docs, docs_limit, storage, storage_limit_mb): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT u.documents, l.documents, u.storage_bytes, l.storage_mb
           FROM tenant_usage u JOIN tenant_limits l USING (tenant_id) WHERE u.tenant_id = $1",
    )
    .bind(tenant.as_str())
    .fetch_one(&mut *conn)
    .await?;
    Err(if docs + 1 > docs_limit {
        QuotaExceeded {
            resource: ResourceKind::Documents,
            limit: docs_limit,
            used: docs,
            requested: 1,
        }
    } else {
        QuotaExceeded {
            resource: ResourceKind::StorageMb,
            limit: storage_limit_mb,
            used: megabytes(storage),
            requested: megabytes(bytes),
        }
    }
    .into())
}

/// Gives back one document and `bytes` of storage (failed, cancelled or deleted).
pub async fn release_document(
    conn: &mut PgConnection,
    tenant: &TenantId,
    bytes: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tenant_usage
            SET documents = documents - 1, storage_bytes = storage_bytes - $2
          WHERE tenant_id = $1",
    )
    .bind(tenant.as_str())
    .bind(bytes)
    .execute(conn)
    .await?;
    Ok(())
}

/// Replaces a document's reserved bytes by its measured bytes. Refused only if the
/// measure is larger than the reservation and the difference does not fit.
pub async fn settle_storage(
    conn: &mut PgConnection,
    tenant: &TenantId,
    reserved: i64,
    measured: i64,
) -> Result<(), QuotaError> {
    let settled = sqlx::query(
        "UPDATE tenant_usage u
            SET storage_bytes = u.storage_bytes - $2 + $3
           FROM tenant_limits l
          WHERE u.tenant_id = $1 AND l.tenant_id = u.tenant_id
            AND ($3 <= $2 OR u.storage_bytes - $2 + $3 <= l.storage_mb * 1048576)
      RETURNING u.storage_bytes",
    )
    .bind(tenant.as_str())
    .bind(reserved)
    .bind(measured)
    .fetch_optional(&mut *conn)
    .await?;
    if settled.is_some() {
        return Ok(());
    }
    let (storage, limit_mb): (i64, i64) = sqlx::query_as(
        "SELECT u.storage_bytes, l.storage_mb FROM tenant_usage u JOIN tenant_limits l USING (tenant_id)
          WHERE u.tenant_id = $1",
    )
    .bind(tenant.as_str())
    .fetch_one(&mut *conn)
    .await?;
    Err(QuotaExceeded {
        resource: ResourceKind::StorageMb,
        limit: limit_mb,
        used: megabytes(storage),
        requested: megabytes(measured - reserved),
    }
    .into())
}

/// Takes one of the tenant's fleet-wide PROCESSING_JOBS slots; false if all are taken.
pub async fn acquire_processing_slot(
    conn: &mut PgConnection,
    tenant: &TenantId,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE tenant_usage u
            SET processing_jobs = u.processing_jobs + 1
           FROM tenant_limits l
          WHERE u.tenant_id = $1 AND l.tenant_id = u.tenant_id
            AND u.processing_jobs + 1 <= l.processing_jobs
      RETURNING u.processing_jobs",
    )
    .bind(tenant.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}

pub async fn release_processing_slot(
    conn: &mut PgConnection,
    tenant: &TenantId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE tenant_usage SET processing_jobs = processing_jobs - 1 WHERE tenant_id = $1",
    )
    .bind(tenant.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes one VECTOR_COLLECTIONS unit for a new database of the tenant.
pub async fn reserve_collection(
    conn: &mut PgConnection,
    tenant: &TenantId,
) -> Result<(), QuotaError> {
    let row = sqlx::query(
        "UPDATE tenant_usage u
            SET collections = u.collections + 1
           FROM tenant_limits l
          WHERE u.tenant_id = $1 AND l.tenant_id = u.tenant_id
            AND u.collections + 1 <= l.vector_collections
      RETURNING u.collections",
    )
    .bind(tenant.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    if row.is_some() {
        return Ok(());
    }
    let (used, limit): (i64, i64) = sqlx::query_as(
        "SELECT u.collections, l.vector_collections FROM tenant_usage u JOIN tenant_limits l USING (tenant_id)
          WHERE u.tenant_id = $1",
    )
    .bind(tenant.as_str())
    .fetch_one(&mut *conn)
    .await?;
    Err(QuotaExceeded {
        resource: ResourceKind::VectorCollections,
        limit,
        used,
        requested: 1,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_classify() {
        for kind in ResourceKind::ALL {
            assert_eq!(ResourceKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert!(ResourceKind::ApiCallsPerHour.frees_up_by_itself());
        assert!(!ResourceKind::Documents.frees_up_by_itself());
        assert_eq!(ResourceKind::parse("documents"), None);
    }
}
