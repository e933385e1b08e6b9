//! The mover: runs recorded isolation moves (`PATCH /v1/admin/tenants/{id}` records them)
//! to their end, resuming unfinished ones after a restart. Any dispatcher may run one; a
//! Postgres advisory lock per tenant keeps two from moving the same tenant at once.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tenantry::db::isolation::{self, IsolationMove};
use tenantry::vector::SharedVectorStore;
use tenantry::vector::migrate::{self, MoveError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often unfinished moves are looked for without being woken (other dispatchers'
/// switches, retries after a failure).
const POLL: Duration = Duration::from_secs(5);
/// Advisory lock class of a tenant's move (the pump uses 7310).
const LOCK_CLASS: i32 = 7311;

pub struct Mover {
    pub pool: PgPool,
    pub store: SharedVectorStore,
    pub fleet: String,
    /// The tenant caches' period (`TENANTRY_AUTH_CACHE_SECS`).
    pub cache_period: Duration,
    pub wake: Arc<Notify>,
}

impl Mover {
    pub async fn run(self, stop: CancellationToken) {
        loop {
            match isolation::unfinished_moves(&self.pool).await {
                Ok(moves) => {
                    for movement in moves {
                        if stop.is_cancelled() {
                            return;
                        }
                        self.run_one(&movement, &stop).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Could not list isolation moves."),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn run_one(&self, movement: &IsolationMove, stop: &CancellationToken) {
        let tenant = &movement.tenant_id;
        // A dedicated connection holds the session lock for the whole move.
        let mut conn = match self.pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "Could not start an isolation move.");
                return;
            }
        };
        let locked: Result<bool, _> =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
                .bind(LOCK_CLASS)
                .bind(tenant.as_str())
                .fetch_one(&mut *conn)
                .await;
        if !matches!(locked, Ok(true)) {
            return;
        }
        let result = migrate::move_tenant(
            &self.pool,
            self.store.as_ref(),
            &self.fleet,
            self.cache_period,
            movement,
            stop,
        )
        .await;
        match result {
            Ok(_) | Err(MoveError::Stopped) => {}
            Err(e) => {
                tracing::warn!(tenant_id = %tenant, error = %e, "Isolation move failed; it will be retried.");
                let _ =
                    isolation::record_attempt(&self.pool, tenant, 0, Some(&e.to_string())).await;
            }
        }
        let _ = sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(tenant.as_str())
            .execute(&mut *conn)
            .await;
    }
}
