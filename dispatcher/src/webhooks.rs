//! The webhook delivery loop: every dispatcher runs one over the Postgres outbox
//! (`db::webhooks`), unless `TENANTRY_WEBHOOK_DELIVERY=false`.
//!
//! Each round claims due events (`FOR UPDATE SKIP LOCKED` plus a lease, so any number
//! of dispatchers share the outbox and each event has one attempt at a time), signs
//! and POSTs them concurrently, and records each result: 2xx → `delivered`; a refused
//! destination or an unusable URL → `dead` at once; anything else → tried again after
//! the backoff, or `dead` once the retry period is over. A process that dies
//! mid-attempt leaves the event leased; it is due again when the lease ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tenantry::db::webhooks::{self as outbox, DueEvent};
use tenantry::metrics::Metrics;
use tenantry::quota::QuotaExceeded;
use tenantry::tenancy::TenantId;
use tenantry::webhook::sealing::SecretSealer;
use tenantry::webhook::sender::{AttemptResult, Delivery, Sender};
use tenantry::webhook::{RetrySchedule, event_body, signature};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Most events claimed in one round.
const BATCH: usize = 32;
/// Most attempts in flight in one process.
const IN_FLIGHT: usize = 64;
/// How often old delivered and dead events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

pub struct Deliverer {
    pub pool: PgPool,
    pub sender: Sender,
    pub retry: RetrySchedule,
    /// How long a claimed event is left to its attempt before others may retry it.
    pub lease: Duration,
    pub poll: Duration,
    pub metrics: Arc<Metrics>,
    /// Opens the tenants' sealed signing secrets.
    pub sealer: SecretSealer,
}

impl Deliverer {
    pub fn from_settings(
        settings: &tenantry::config::Settings,
        pool: PgPool,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let w = &settings.webhook;
        Ok(Self {
            pool,
            sender: Sender::new(w.timeout, settings.webhook_allow_private)?,
            retry: w.retry,
            lease: w.timeout * 2 + Duration::from_secs(5),
            poll: w.poll,
            metrics,
            sealer: SecretSealer::from_settings(settings),
        })
    }

    /// Claims and attempts due events until `stop`. Attempts run as tasks, at most
    /// [`IN_FLIGHT`] at once, and the loop claims more as soon as some finish: a slow
    /// receiver holds its own attempts, not the others'.
    pub async fn run(self, stop: CancellationToken) {
        let this = Arc::new(self);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut attempts = JoinSet::new();
        let mut pruned: Option<Instant> = None;
        while !stop.is_cancelled() {
            while attempts.try_join_next().is_some() {}
            if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                if let Err(e) = outbox::prune(&this.pool).await {
                    tracing::warn!(error = %e, "Pruning old webhook events failed.");
                }
                pruned = Some(Instant::now());
            }
            let free = slots.available_permits().min(BATCH);
            let claimed = if free == 0 {
                Ok(Vec::new())
            } else {
                outbox::claim_due(&this.pool, &this.sealer, free as i64, this.lease).await
            };
            let pause = match claimed {
                Ok(due) => {
                    let full = due.len() == free && free > 0;
                    for event in due {
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        let this = this.clone();
                        attempts.spawn(async move {
                            this.attempt(&event).await;
                            drop(slot);
                        });
                    }
                    if full { Duration::ZERO } else { this.poll }
                }
                Err(e) => {
                    if tenantry::db::is_unavailable(&e) {
                        tracing::warn!(error = %e, "Postgres unavailable to the webhook loop; retrying.");
                    } else {
                        tracing::error!(error = %e, "Claiming webhook events failed.");
                    }
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
                // A finished attempt frees a slot: look for more at once if all were busy.
                Some(_) = attempts.join_next(), if free == 0 => {}
            }
        }
        // Stopping abandons the attempts in hand: their leases bring them back.
        attempts.abort_all();
        tracing::debug!("The webhook loop stopped.");
    }

    /// One attempt of one event, and its record.
    #[tracing::instrument(skip_all, fields(tenant_id = %event.tenant, event_id = %event.id, attempt = event.attempt))]
    async fn attempt(&self, event: &DueEvent) {
        let result = self.send(event).await;
        let recorded = match &result {
            AttemptResult::Delivered { status } => {
                self.metrics.webhook_attempt("delivered");
                tracing::debug!(status, "Webhook delivered.");
                outbox::record_delivered(&self.pool, event.id, event.attempt, *status).await
            }
            AttemptResult::Failed { status, error } => {
                let retry_in = self.retry.delay(event.attempt.max(1) as u32);
                self.record_failure(event, *status, error, retry_in, false)
                    .await
            }
            AttemptResult::Refused { error } => {
                self.record_failure(event, None, error, Duration::ZERO, true)
                    .await
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "Could not record a webhook attempt; it will be tried again.");
        }
    }

    async fn record_failure(
        &self,
        event: &DueEvent,
        status: Option<u16>,
        error: &str,
        retry_in: Duration,
        dead_now: bool,
    ) -> Result<(), sqlx::Error> {
        let dead = outbox::record_failed(
            &self.pool,
            event.id,
            event.attempt,
            status,
            error,
            retry_in,
            dead_now,
        )
        .await?;
        if dead {
            self.metrics.webhook_attempt("dead");
            tracing::warn!(error, "Webhook failed for good; the event is dead.");
        } else {
            self.metrics.webhook_attempt("retry");
            tracing::info!(
                error,
                retry_in_ms = retry_in.as_millis() as u64,
                "Webhook attempt failed; retrying later."
            );
        }
        Ok(())
    }

    async fn send(&self, event: &DueEvent) -> AttemptResult {
        let Some(url) = event.url.as_deref() else {
            return AttemptResult::Refused {
                error: "the tenant has no webhook_url configured any more".to_owned(),
            };
        };
        if event.secrets.is_empty() {
            // Never unsigned: the event waits (and can be redelivered) until a secret exists.
            return AttemptResult::Failed {
                status: None,
                error: "no webhook secret issued yet: POST /v1/tenant/webhooks/secret".to_owned(),
            };
        }
        let id = event.id.to_string();
        let body = event_body(
            event.id,
            &event.event_type,
            &event.tenant,
            event.created_at,
            &event.data,
        );
        let secrets: Vec<&str> = event.secrets.iter().map(String::as_str).collect();
        let header = signature::sign(&secrets, chrono::Utc::now().timestamp(), &body);
        self.sender
            .send(&Delivery {
                url,
                event_id: &id,
                event_type: &event.event_type,
                attempt: event.attempt,
                body: &body,
                signature: &header,
            })
            .await
    }
}

/// Records a `quota_exceeded` event for a refusal (best effort: a failure to record
/// is logged, and the caller still answers with the refusal).
pub async fn notify_quota_exceeded(state: &AppState, tenant: &TenantId, refused: &QuotaExceeded) {
    if let Err(e) = outbox::quota_exceeded(&state.pool, tenant, refused).await {
        tracing::warn!(error = %e, tenant_id = %tenant, "Could not record a quota_exceeded event.");
    }
}
