//! How much work each tenant has waiting and under way: the per-tenant view that
//! operators (`/metrics`, `GET /v1/admin/queues`) and the fair-share scheduler read.
//!
//! - backlog: `PENDING` jobs still in the Postgres outbox (`published_at IS NULL`);
//! - in flight: jobs handed to the broker and not ended (`PENDING` on the broker or
//!   `PROCESSING` in a worker);
//! - oldest pending: age of the tenant's oldest `PENDING` job, in the backlog or on
//!   the broker — how long its longest-waiting document has waited.

use serde::Serialize;
use sqlx::PgPool;

use crate::tenancy::TenantId;

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TenantLoad {
    pub tenant_id: String,
    pub backlog: i64,
    pub in_flight: i64,
    /// Of the in-flight jobs, those a worker is processing now.
    pub processing: i64,
    /// Seconds since the oldest `PENDING` job was submitted; None when none is pending.
    pub oldest_pending_secs: Option<f64>,
}

/// Every tenant with work waiting or under way (or only `tenant`'s), the deepest
/// backlog first. One grouped scan of the jobs that have not ended.
pub async fn tenant_loads(
    pool: &PgPool,
    tenant: Option<&TenantId>,
) -> Result<Vec<TenantLoad>, sqlx::Error> {
    sqlx::query_as(
        "SELECT tenant_id,
                count(*) FILTER (WHERE status = 'PENDING' AND published_at IS NULL) AS backlog,
                count(*) FILTER (WHERE published_at IS NOT NULL) AS in_flight,
                count(*) FILTER (WHERE status = 'PROCESSING') AS processing,
                EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE status = 'PENDING'))::float8
                    AS oldest_pending_secs
           FROM jobs
          WHERE status IN ('PENDING', 'PROCESSING')
            AND ($1::text IS NULL OR tenant_id = $1)
          GROUP BY tenant_id
          ORDER BY backlog DESC, in_flight DESC, tenant_id",
    )
    .bind(tenant.map(TenantId::as_str))
    .fetch_all(pool)
    .await
}

/// The first `n` loads as given, and the rest summed into one named `other`
/// (None when nothing is left over): bounded label cardinality for metrics.
pub fn top_n(loads: &[TenantLoad], n: usize) -> (Vec<TenantLoad>, Option<TenantLoad>) {
    let n = n.min(loads.len());
    let (top, rest) = loads.split_at(n);
    let other = (!rest.is_empty()).then(|| TenantLoad {
        tenant_id: OTHER.to_owned(),
        backlog: rest.iter().map(|l| l.backlog).sum(),
        in_flight: rest.iter().map(|l| l.in_flight).sum(),
        processing: rest.iter().map(|l| l.processing).sum(),
        oldest_pending_secs: rest
            .iter()
            .filter_map(|l| l.oldest_pending_secs)
            .reduce(f64::max),
    });
    (top.to_vec(), other)
}

/// The label of the tenants summed together. Not a valid tenant id (ids are
/// checked by `tenancy`, and cannot collide with it: see the test).
pub const OTHER: &str = "_other";

#[cfg(test)]
mod tests {
    use super::*;

    fn load(id: &str, backlog: i64, age: Option<f64>) -> TenantLoad {
        TenantLoad {
            tenant_id: id.into(),
            backlog,
            in_flight: 1,
            processing: 0,
            oldest_pending_secs: age,
        }
    }

    #[test]
    fn the_rest_is_summed_into_other() {
        let loads = [
            load("a", 9, Some(1.0)),
            load("b", 5, Some(7.0)),
            load("c", 2, None),
        ];
        let (top, other) = top_n(&loads, 1);
        assert_eq!(top, vec![loads[0].clone()]);
        let other = other.unwrap();
        assert_eq!((other.backlog, other.in_flight), (7, 2));
        assert_eq!(other.oldest_pending_secs, Some(7.0));
        assert_eq!(top_n(&loads, 10), (loads.to_vec(), None));
        let (none, all) = top_n(&loads, 0);
        assert!(none.is_empty() && all.unwrap().backlog == 16);
    }

    #[test]
    fn other_is_not_a_tenant_id() {
        assert!(TenantId::parse(OTHER).is_err());
    }
}
