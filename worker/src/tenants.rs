//! A short-lived cache of tenants, so a worker reads each tenant's status and
//! configuration at most once per period instead of once per job. The period
//! (`TENANTRY_AUTH_CACHE_SECS`) bounds how long a suspension takes to reach workers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tenantry::db;
use tenantry::tenancy::TenantId;
use tenantry::tenant::Tenant;

pub struct TenantCache {
    ttl: Duration,
    entries: Mutex<HashMap<TenantId, (Option<Tenant>, Instant)>>,
}

impl TenantCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The tenant, or None if no such tenant exists.
    pub async fn get(&self, pool: &PgPool, id: &TenantId) -> Result<Option<Tenant>, sqlx::Error> {
        if let Ok(entries) = self.entries.lock()
            && let Some((tenant, at)) = entries.get(id)
            && at.elapsed() < self.ttl
        {
            return Ok(tenant.clone());
        }
        let mut conn = pool.acquire().await?;
        let tenant = db::tenants::get(&mut conn, id).await?;
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() > 100_000 {
                entries.clear();
            }
            entries.insert(id.clone(), (tenant.clone(), Instant::now()));
        }
        Ok(tenant)
    }
}
