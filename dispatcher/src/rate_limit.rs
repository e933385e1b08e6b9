//! API_CALLS_PER_HOUR, in two layers.
//!
//! - **Fleet-wide, exact**: every authenticated tenant call is counted in Postgres
//!   (`quota::count_api_call`: one conditional upsert on the tenant's row of the
//!   current UTC clock hour), so the limit holds across any number of dispatchers.
//!   Over it: 429 `quota_exceeded` naming API_CALLS_PER_HOUR, `Retry-After` = seconds
//!   to the next clock hour.
//! - **Per process, shaping**: a governor (GCRA) limiter per tenant, burst = the
//!   hourly limit, refilled evenly over an hour. No process lets a tenant through
//!   more than its hourly limit in any rolling hour, and a tenant hammering after its
//!   allowance is gone is refused here, in memory, without a Postgres round trip:
//!   429 `rate_limited` with the limiter's own `Retry-After`. After a burst that used
//!   the whole allowance, calls come back spread evenly instead of all at once at the
//!   top of the hour.
//!
//! What counts: every request that authenticates as a tenant (any `/v1/…` tenant
//! endpoint, whatever its answer afterwards, including 4xx validation errors). Not
//! counted: requests refused before that (401: no, bad, expired or revoked key;
//! inactive tenant), calls refused by the limit itself, admin calls, `/healthz`,
//! `/readyz`, `/metrics`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::json;
use tenantry::error_code::Code;
use tenantry::quota::{self, CallCount, ResourceKind};
use tenantry::tenancy::TenantId;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Tenants whose limiter is kept at most; past it the map starts over.
const MAX_TRACKED_TENANTS: usize = 100_000;
const HOUR: Duration = Duration::from_secs(3600);
/// How often a tenant refused by this process's limiter is re-checked with Postgres.
const RELEARN: Duration = Duration::from_secs(5);

/// Per-process limiters, one per tenant, built with the limit Postgres last reported.
#[derive(Default)]
pub struct CallShaper {
    limiters: Mutex<HashMap<TenantId, Shaped>>,
}

struct Shaped {
    /// The limit the limiter was built for.
    limit: i64,
    limiter: Arc<DefaultDirectRateLimiter>,
    /// When Postgres last told us the limit: a tenant refused here still reaches
    /// Postgres once per [`RELEARN`], so a raised limit is seen within it.
    learned: Instant,
}

impl CallShaper {
    /// The wait before this process lets the tenant's next call through to
    /// Postgres, or None to go ahead (also when the tenant is not known yet).
    fn check(&self, tenant: &TenantId) -> Option<(Duration, i64)> {
        let mut limiters = self.limiters.lock().ok()?;
        let shaped = limiters.get_mut(tenant)?;
        match shaped.limiter.check() {
            Ok(()) => None,
            Err(_) if shaped.learned.elapsed() >= RELEARN => {
                shaped.learned = Instant::now();
                None
            }
            Err(not_until) => Some((
                not_until.wait_time_from(DefaultClock::default().now()),
                shaped.limit,
            )),
        }
    }

    /// Forgets the tenant (its limit was just changed through this process).
    pub fn forget(&self, tenant: &TenantId) {
        if let Ok(mut limiters) = self.limiters.lock() {
            limiters.remove(tenant);
        }
    }

    /// Records the tenant's current limit; a new or changed limit gets a fresh
    /// limiter, charged with the call just counted.
    pub(crate) fn learn(&self, tenant: &TenantId, limit: i64) {
        let Ok(mut limiters) = self.limiters.lock() else {
            return;
        };
        if let Some(shaped) = limiters.get_mut(tenant)
            && shaped.limit == limit
        {
            shaped.learned = Instant::now();
            return;
        }
        let burst = u32::try_from(limit).unwrap_or(u32::MAX);
        let Some(quota) = NonZeroU32::new(burst)
            .and_then(|burst| Quota::with_period(HOUR / burst.get()).map(|q| q.allow_burst(burst)))
        else {
            // A zero limit: Postgres refuses every call; nothing to shape.
            limiters.remove(tenant);
            return;
        };
        let limiter = RateLimiter::direct(quota);
        let _ = limiter.check();
        if limiters.len() >= MAX_TRACKED_TENANTS {
            limiters.clear();
        }
        limiters.insert(
            tenant.clone(),
            Shaped {
                limit,
                limiter: Arc::new(limiter),
                learned: Instant::now(),
            },
        );
    }
}

/// Refuses, in memory, a call of a tenant this process has seen use up its allowance
/// (429 `rate_limited`); the fleet-wide count is Postgres' ([`admit`], or a submission's
/// own transaction).
pub fn shape(state: &AppState, tenant: &TenantId) -> ApiResult<()> {
    if let Some((wait, limit)) = state.calls.check(tenant) {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Err(ApiError::new(
            Code::RateLimited,
            format!(
                "{} exceeded: calls are spread over the hour ({limit} per hour); retry in {secs} s",
                ResourceKind::ApiCallsPerHour
            ),
        )
        .with_details(json!({ "resource": ResourceKind::ApiCallsPerHour, "limit": limit }))
        .with_retry_after(Duration::from_secs(secs.max(1))));
    }
    Ok(())
}

/// Admits one call of `tenant`, counting it fleet-wide, or refuses it with 429.
pub async fn admit(state: &AppState, tenant: &TenantId) -> ApiResult<()> {
    shape(state, tenant)?;
    // A transaction, so that the call crossing 80 % commits with its quota_warning.
    let mut tx = state.pool.begin().await?;
    let counted = quota::count_api_call(&mut tx, tenant).await?;
    tx.commit().await?;
    match counted {
        CallCount::Counted { limit, .. } => {
            state.calls.learn(tenant, limit);
            Ok(())
        }
        CallCount::Refused {
            exceeded,
            retry_after_secs,
        } => {
            state.calls.learn(tenant, exceeded.limit);
            crate::webhooks::notify_quota_exceeded(state, tenant, &exceeded).await;
            Err(ApiError::quota(
                &exceeded,
                Some(Duration::from_secs(retry_after_secs.max(1) as u64)),
            ))
        }
    }
}
