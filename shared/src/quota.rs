//! Quotas: resource kinds, and every change to a usage counter.
//!
//! Each reservation is ONE conditional `UPDATE … WHERE used + n <= limit RETURNING`
//! on the tenant's `tenant_usage` row. Postgres re-checks the condition against the
//! latest row version when concurrent updates queue on the row lock, so N workers
//! and M dispatchers racing can never push a counter past its limit — unlike the
//! original plan's count-then-act. Limits come from the `tenant_limits` view (plan
//! default unless the tenant has an override): the only place they are combined.
//! The same statement returns the usage and limit after the change, so a reservation
//! that takes usage across 80 % records its `quota_warning` in its own transaction
//! (`db::webhooks`) at no extra cost to the others.

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
    let reserved: Option<(i64, i64, i64, i64)> = sqlx::query_as(
        "UPDATE tenant_usage u
            SET documents = u.documents + 1, storage_bytes = u.storage_bytes + $2
           FROM tenant_limits l
          WHERE u.tenant_id = $1 AND l.tenant_id = u.tenant_id
            AND u.documents + 1 <= l.documents
            AND u.storage_bytes + $2 <= l.storage_mb * 1048576
      RETURNING u.documents, l.documents, u.storage_bytes, l.storage_mb",
    )
    .bind(tenant.as_str())
    .bind(bytes)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((docs, docs_limit, storage, storage_mb)) = reserved {
        warn_on_crossing(
            conn,
            tenant,
            ResourceKind::Documents,
            docs - 1,
            docs,
            docs_limit,
        )
        .await?;
        warn_on_storage_crossing(conn, tenant, storage - bytes, storage, storage_mb).await?;
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

/// Whether usage going from `before` to `after` (of `limit`) crosses
/// [`WARNING_PERCENT`]: the moment a `quota_warning` is due.
pub fn crosses_warning(before: f64, after: f64, limit: f64) -> bool {
    limit > 0.0
        && percentage(before, limit) < WARNING_PERCENT
        && percentage(after, limit) >= WARNING_PERCENT
}

/// Records a `quota_warning` in the caller's transaction if this change crossed 80 %.
async fn warn_on_crossing(
    conn: &mut PgConnection,
    tenant: &TenantId,
    kind: ResourceKind,
    before: i64,
    after: i64,
    limit: i64,
) -> Result<(), sqlx::Error> {
    if !crosses_warning(before as f64, after as f64, limit as f64) {
        return Ok(());
    }
    let pct = percentage(after as f64, limit as f64);
    crate::db::webhooks::quota_warning(conn, tenant, kind, limit, after, pct).await
}

/// [`warn_on_crossing`] for STORAGE_MB, judged on bytes (the limit is in MiB).
async fn warn_on_storage_crossing(
    conn: &mut PgConnection,
    tenant: &TenantId,
    before_bytes: i64,
    after_bytes: i64,
    limit_mb: i64,
) -> Result<(), sqlx::Error> {
    let limit_bytes = (limit_mb * BYTES_PER_MB) as f64;
    if !crosses_warning(before_bytes as f64, after_bytes as f64, limit_bytes) {
        return Ok(());
    }
    let pct = percentage(after_bytes as f64, limit_bytes);
    let (kind, used) = (ResourceKind::StorageMb, megabytes(after_bytes));
    crate::db::webhooks::quota_warning(conn, tenant, kind, limit_mb, used, pct).await
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
    let settled: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE tenant_usage u
            SET storage_bytes = u.storage_bytes - $2 + $3
           FROM tenant_limits l
          WHERE u.tenant_id = $1 AND l.tenant_id = u.tenant_id
            AND ($3 <= $2 OR u.storage_bytes - $2 + $3 <= l.storage_mb * 1048576)
      RETURNING u.storage_bytes, l.storage_mb",
    )
    .bind(tenant.as_str())
    .bind(reserved)
    .bind(measured)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((storage, storage_mb)) = settled {
        let before = storage - measured + reserved;
        warn_on_storage_crossing(conn, tenant, before, storage, storage_mb).await?;
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

/// Takes one VECTOR_COLLECTIONS unit for a new database of the tenant.
pub async fn reserve_collection(
    conn: &mut PgConnection,
    tenant: &TenantId,
) -> Result<(), QuotaError> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE tenant_usage u
            SET collections = u.collections + 1
           FROM tenant_limits l
          WHERE u.tenant_id = $1 AND l.tenant_id = u.tenant_id
            AND u.collections + 1 <= l.vector_collections
      RETURNING u.collections, l.vector_collections",
    )
    .bind(tenant.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some((used, limit)) = row {
        let kind = ResourceKind::VectorCollections;
        warn_on_crossing(conn, tenant, kind, used - 1, used, limit).await?;
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

/// A usage counter crossing [`WARNING_PERCENT`]: a `quota_warning` is due.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crossing {
    pub resource: ResourceKind,
    pub limit: i64,
    /// Usage after the change, in the resource's units (whole MiB for STORAGE_MB).
    pub used: i64,
    pub percentage: f64,
}

/// One tenant's counters and limits, read under the row locks of a group of
/// reservations (every submission a dispatcher commits together). Each reservation
/// is decided here, in order, against what the ones before it took, so the group
/// never takes more than the limits allow; the caller then writes the final counters
/// back in one statement and commits. The same arithmetic as the single-statement
/// reservations above, for many at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Ledger {
    pub limits: Limits,
    pub documents: i64,
    pub storage_bytes: i64,
    pub collections: i64,
    /// Calls counted in the current clock hour.
    pub api_calls: i64,
    /// Seconds until the next clock hour (the `Retry-After` of a refused call).
    pub secs_to_next_hour: i64,
    /// Warnings due for what this ledger reserved.
    pub crossings: Vec<Crossing>,
}

impl Ledger {
    /// Counts one API call, or refuses it (the hour's allowance is used up).
    pub fn count_call(&mut self) -> Result<(), QuotaExceeded> {
        let limit = self.limits.api_calls_per_hour;
        if self.api_calls + 1 > limit {
            return Err(QuotaExceeded {
                resource: ResourceKind::ApiCallsPerHour,
                limit,
                used: self.api_calls.max(limit),
                requested: 1,
            });
        }
        self.api_calls += 1;
        self.note(
            ResourceKind::ApiCallsPerHour,
            self.api_calls - 1,
            self.api_calls,
        );
        Ok(())
    }

    /// Takes one VECTOR_COLLECTIONS unit (a database's first document).
    pub fn reserve_collection(&mut self) -> Result<(), QuotaExceeded> {
        let limit = self.limits.vector_collections;
        if self.collections + 1 > limit {
            return Err(QuotaExceeded {
                resource: ResourceKind::VectorCollections,
                limit,
                used: self.collections,
                requested: 1,
            });
        }
        self.collections += 1;
        self.note(
            ResourceKind::VectorCollections,
            self.collections - 1,
            self.collections,
        );
        Ok(())
    }

    /// Takes one document and `bytes` of storage, or says which of the two is full.
    pub fn reserve_document(&mut self, bytes: i64) -> Result<(), QuotaExceeded> {
        let (docs_limit, storage_mb) = (self.limits.documents, self.limits.storage_mb);
        if self.documents + 1 > docs_limit {
            return Err(QuotaExceeded {
                resource: ResourceKind::Documents,
                limit: docs_limit,
                used: self.documents,
                requested: 1,
            });
        }
        if self.storage_bytes + bytes > storage_mb * BYTES_PER_MB {
            return Err(QuotaExceeded {
                resource: ResourceKind::StorageMb,
                limit: storage_mb,
                used: megabytes(self.storage_bytes),
                requested: megabytes(bytes),
            });
        }
        self.documents += 1;
        self.storage_bytes += bytes;
        self.note(ResourceKind::Documents, self.documents - 1, self.documents);
        self.note_storage(self.storage_bytes - bytes, self.storage_bytes);
        Ok(())
    }

    /// Gives back a collection taken by [`Self::reserve_collection`] in this group (its
    /// database got no document after all).
    pub fn unreserve_collection(&mut self) {
        self.collections -= 1;
        self.crossings.retain(|c| {
            c.resource != ResourceKind::VectorCollections || c.used <= self.collections
        });
    }

    fn note(&mut self, resource: ResourceKind, before: i64, after: i64) {
        let limit = self.limits.of(resource);
        if crosses_warning(before as f64, after as f64, limit as f64) {
            self.crossings.push(Crossing {
                resource,
                limit,
                used: after,
                percentage: percentage(after as f64, limit as f64),
            });
        }
    }

    fn note_storage(&mut self, before: i64, after: i64) {
        let limit_mb = self.limits.storage_mb;
        let limit = (limit_mb * BYTES_PER_MB) as f64;
        if crosses_warning(before as f64, after as f64, limit) {
            self.crossings.push(Crossing {
                resource: ResourceKind::StorageMb,
                limit: limit_mb,
                used: megabytes(after),
                percentage: percentage(after as f64, limit),
            });
        }
    }
}

/// Largest limit an override may set (keeps `STORAGE_MB × 1 MiB` far inside `i64`).
pub const MAX_LIMIT: i64 = 1_000_000_000_000;

/// Checks one override value: a whole number in `0..=MAX_LIMIT`, except that
/// PROCESSING_JOBS must be at least 1 (zero slots would park the tenant's jobs in
/// the retry tiers forever; suspend the tenant to stop its processing instead).
pub fn validate_limit(kind: ResourceKind, value: &serde_json::Value) -> Result<i64, String> {
    let min = if kind == ResourceKind::ProcessingJobs {
        1
    } else {
        0
    };
    match value.as_i64() {
        Some(n) if (min..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a whole number between {min} and {MAX_LIMIT}"
        )),
    }
}

/// Effective limits of one tenant (plan default unless overridden), from `tenant_limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub documents: i64,
    pub storage_mb: i64,
    pub api_calls_per_hour: i64,
    pub processing_jobs: i64,
    pub vector_collections: i64,
}

impl Limits {
    pub fn of(&self, kind: ResourceKind) -> i64 {
        match kind {
            ResourceKind::Documents => self.documents,
            ResourceKind::StorageMb => self.storage_mb,
            ResourceKind::ApiCallsPerHour => self.api_calls_per_hour,
            ResourceKind::ProcessingJobs => self.processing_jobs,
            ResourceKind::VectorCollections => self.vector_collections,
        }
    }
}

/// What one tenant holds right now: the counters of `tenant_usage` and the calls of
/// the current clock hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub documents: i64,
    pub storage_bytes: i64,
    pub api_calls_this_hour: i64,
    pub processing_jobs: i64,
    pub collections: i64,
}

/// One resource in the `TenantQuotas` view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceQuota {
    pub resource_type: ResourceKind,
    pub limit: i64,
    /// Whole units; STORAGE_MB is rounded up to the next megabyte.
    pub current_usage: i64,
    /// Exact (STORAGE_MB from bytes, not from the rounded megabytes).
    pub percentage_used: f64,
    /// Only for STORAGE_MB: the measured bytes behind `current_usage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_usage_bytes: Option<i64>,
}

/// The `TenantQuotas` view of the original plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TenantQuotas {
    pub tenant_id: String,
    pub quotas: Vec<ResourceQuota>,
    /// Some resource is at or above its limit: nothing more of it can be reserved.
    pub is_over_limit: bool,
    pub warnings: Vec<String>,
}

/// Percentage of `limit` that `used` is; a zero limit counts as full.
pub fn percentage(used: f64, limit: f64) -> f64 {
    if limit > 0.0 {
        used / limit * 100.0
    } else {
        100.0
    }
}

/// Builds the view: a warning per resource at or above [`WARNING_PERCENT`], and
/// `is_over_limit` when one is at 100 % or more (lowering a limit below the usage
/// can put a tenant over it; reservations alone never do).
pub fn tenant_quotas(tenant: &TenantId, limits: &Limits, usage: &Usage) -> TenantQuotas {
    let mut quotas = Vec::with_capacity(ResourceKind::ALL.len());
    let mut warnings = Vec::new();
    let mut is_over_limit = false;
    for kind in ResourceKind::ALL {
        let limit = limits.of(kind);
        let (current, exact, bytes) = match kind {
            ResourceKind::Documents => (usage.documents, usage.documents as f64, None),
            ResourceKind::StorageMb => (
                megabytes(usage.storage_bytes),
                usage.storage_bytes as f64 / BYTES_PER_MB as f64,
                Some(usage.storage_bytes),
            ),
            ResourceKind::ApiCallsPerHour => (
                usage.api_calls_this_hour,
                usage.api_calls_this_hour as f64,
                None,
            ),
            ResourceKind::ProcessingJobs => {
                (usage.processing_jobs, usage.processing_jobs as f64, None)
            }
            ResourceKind::VectorCollections => (usage.collections, usage.collections as f64, None),
        };
        let pct = percentage(exact, limit as f64);
        if pct >= 100.0 {
            is_over_limit = true;
            warnings.push(format!("{kind} limit reached ({current}/{limit})"));
        } else if pct >= WARNING_PERCENT {
            warnings.push(format!("{kind} usage high ({pct:.1}%, {current}/{limit})"));
        }
        quotas.push(ResourceQuota {
            resource_type: kind,
            limit,
            current_usage: current,
            percentage_used: pct,
            current_usage_bytes: bytes,
        });
    }
    TenantQuotas {
        tenant_id: tenant.as_str().to_owned(),
        quotas,
        is_over_limit,
        warnings,
    }
}

/// The outcome of counting one API call against API_CALLS_PER_HOUR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallCount {
    /// Counted: `calls` of `limit` used in this clock hour.
    Counted { calls: i64, limit: i64 },
    /// Not counted: the hour's allowance is used up until the next clock hour,
    /// `retry_after_secs` away.
    Refused {
        exceeded: QuotaExceeded,
        retry_after_secs: i64,
    },
}

/// Counts one API call in the tenant's row of the current UTC clock hour, fleet-wide:
/// one `INSERT … ON CONFLICT DO UPDATE … WHERE calls + 1 <= limit`. Postgres
/// re-evaluates the `WHERE` on the latest row version under the row lock, so any
/// number of dispatchers racing never count past the limit. The call that crosses
/// 80 % records a `quota_warning` on `conn`: pass a transaction to make them atomic.
pub async fn count_api_call(
    conn: &mut PgConnection,
    tenant: &TenantId,
) -> Result<CallCount, sqlx::Error> {
    let row: (Option<i64>, Option<i64>, Option<i64>, i64) = sqlx::query_as(
        "WITH lim AS (SELECT api_calls_per_hour AS n FROM tenant_limits WHERE tenant_id = $1),
              hour AS (SELECT date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS h),
              counted AS (
                INSERT INTO api_calls AS a (tenant_id, hour, calls)
                SELECT $1, hour.h, 1 FROM lim, hour WHERE lim.n >= 1
                ON CONFLICT (tenant_id, hour) DO UPDATE SET calls = a.calls + 1
                 WHERE a.calls + 1 <= (SELECT n FROM lim)
                RETURNING calls)
         SELECT (SELECT calls FROM counted),
                (SELECT n FROM lim),
                (SELECT calls FROM api_calls, hour WHERE tenant_id = $1 AND api_calls.hour = hour.h),
                ceil(extract(epoch FROM (SELECT h FROM hour) + interval '1 hour' - now()))::bigint",
    )
    .bind(tenant.as_str())
    .fetch_one(&mut *conn)
    .await?;
    let (counted, limit, seen, secs_left) = row;
    let limit = limit.ok_or(sqlx::Error::RowNotFound)?;
    if let Some(calls) = counted {
        let kind = ResourceKind::ApiCallsPerHour;
        warn_on_crossing(conn, tenant, kind, calls - 1, calls, limit).await?;
    }
    Ok(match counted {
        Some(calls) => CallCount::Counted { calls, limit },
        None => CallCount::Refused {
            exceeded: QuotaExceeded {
                resource: ResourceKind::ApiCallsPerHour,
                limit,
                used: seen.unwrap_or(0).max(limit),
                requested: 1,
            },
            retry_after_secs: secs_left.max(1),
        },
    })
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

    #[test]
    fn limits_are_whole_numbers_in_range() {
        use serde_json::json;
        assert_eq!(validate_limit(ResourceKind::Documents, &json!(0)), Ok(0));
        assert_eq!(validate_limit(ResourceKind::Documents, &json!(10)), Ok(10));
        assert!(validate_limit(ResourceKind::Documents, &json!(-1)).is_err());
        assert!(validate_limit(ResourceKind::Documents, &json!(1.5)).is_err());
        assert!(validate_limit(ResourceKind::Documents, &json!("10")).is_err());
        assert!(validate_limit(ResourceKind::Documents, &json!(null)).is_err());
        assert!(validate_limit(ResourceKind::StorageMb, &json!(MAX_LIMIT + 1)).is_err());
        assert!(validate_limit(ResourceKind::ProcessingJobs, &json!(0)).is_err());
        assert_eq!(
            validate_limit(ResourceKind::ProcessingJobs, &json!(1)),
            Ok(1)
        );
    }

    #[test]
    fn a_warning_is_due_when_usage_crosses_eighty_percent() {
        assert!(crosses_warning(7.0, 8.0, 10.0));
        assert!(!crosses_warning(8.0, 9.0, 10.0), "already above");
        assert!(!crosses_warning(6.0, 7.0, 10.0), "still below");
        assert!(crosses_warning(0.0, 10.0, 10.0), "straight to full");
        assert!(!crosses_warning(0.0, 0.0, 0.0), "a zero limit never warns");
        assert!(crosses_warning(799.0, 800.0, 1000.0));
    }

    #[test]
    fn view_warns_at_eighty_percent_and_flags_full_resources() {
        let tenant = TenantId::parse("acme").unwrap();
        let limits = Limits {
            documents: 10,
            storage_mb: 2,
            api_calls_per_hour: 100,
            processing_jobs: 1,
            vector_collections: 5,
        };
        let usage = Usage {
            documents: 8,
            storage_bytes: BYTES_PER_MB + BYTES_PER_MB / 2,
            api_calls_this_hour: 79,
            processing_jobs: 0,
            collections: 5,
        };
        let view = tenant_quotas(&tenant, &limits, &usage);
        assert_eq!(view.quotas.len(), 5);
        let storage = &view.quotas[1];
        assert_eq!(storage.resource_type, ResourceKind::StorageMb);
        assert_eq!(storage.current_usage, 2);
        assert_eq!(storage.percentage_used, 75.0);
        assert_eq!(view.quotas[0].percentage_used, 80.0);
        assert!(view.is_over_limit, "collections are full");
        assert_eq!(view.warnings.len(), 2, "{:?}", view.warnings);
        assert!(view.warnings[0].starts_with("DOCUMENTS usage high"));
        assert!(view.warnings[1].starts_with("VECTOR_COLLECTIONS limit reached"));

        let idle = Usage {
            documents: 0,
            storage_bytes: 0,
            api_calls_this_hour: 0,
            processing_jobs: 0,
            collections: 0,
        };
        let view = tenant_quotas(&tenant, &limits, &idle);
        assert!(!view.is_over_limit);
        assert!(view.warnings.is_empty());
    }

    #[test]
    fn a_ledger_takes_in_order_and_refuses_what_does_not_fit() {
        let limits = Limits {
            documents: 3,
            storage_mb: 1,
            api_calls_per_hour: 2,
            processing_jobs: 10,
            vector_collections: 1,
        };
        let mut ledger = Ledger {
            limits,
            documents: 1,
            storage_bytes: 0,
            collections: 0,
            api_calls: 1,
            secs_to_next_hour: 60,
            crossings: Vec::new(),
        };
        assert_eq!(ledger.count_call(), Ok(()));
        let refused = ledger.count_call().unwrap_err();
        assert_eq!(refused.resource, ResourceKind::ApiCallsPerHour);
        assert_eq!((refused.limit, refused.used), (2, 2));
        assert_eq!(ledger.reserve_collection(), Ok(()));
        assert_eq!(
            ledger.reserve_collection().unwrap_err().resource,
            ResourceKind::VectorCollections
        );
        let too_big = ledger.reserve_document(BYTES_PER_MB + 1).unwrap_err();
        assert_eq!(too_big.resource, ResourceKind::StorageMb);
        assert_eq!(ledger.documents, 1, "a refusal takes nothing");
        assert_eq!(ledger.reserve_document(BYTES_PER_MB / 2), Ok(()));
        assert_eq!(ledger.reserve_document(BYTES_PER_MB / 2), Ok(()));
        let full = ledger.reserve_document(0).unwrap_err();
        assert_eq!((full.resource, full.used), (ResourceKind::Documents, 3));
        assert_eq!(ledger.storage_bytes, BYTES_PER_MB);
        // 2/2 calls, 1/1 collection, 3/3 documents (2/3 is below 80 %), 1/1 MiB.
        let kinds: Vec<ResourceKind> = ledger.crossings.iter().map(|c| c.resource).collect();
        assert_eq!(
            kinds,
            [
                ResourceKind::ApiCallsPerHour,
                ResourceKind::VectorCollections,
                ResourceKind::Documents,
                ResourceKind::StorageMb,
            ]
        );
        ledger.unreserve_collection();
        assert_eq!(ledger.collections, 0);
        assert_eq!(ledger.crossings.len(), 3);
    }
}
