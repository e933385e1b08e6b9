//! The pump: moves jobs from the Postgres backlog onto the broker, fairly.
//!
//! A submission is accepted once it is committed to Postgres (the backlog is a
//! transactional outbox: the job, its document and its quota reservation commit
//! together, and nothing is lost if the broker is down). The pump then claims
//! backlog jobs — a bounded window in flight per tenant, weighted by plan (see
//! [`job_db::Windows`]), so a tenant with a deep backlog holds only its window on the
//! broker and cannot bury other tenants' work behind it — signs and publishes them with confirms, and
//! marks them published in the same transaction that locked them. If publishing
//! fails the transaction rolls back and the jobs stay in the backlog; if the
//! process dies after the broker confirmed but before the commit, the jobs are
//! published again, which workers absorb (a job is processed to one outcome,
//! points have deterministic ids).
//!
//! Every dispatcher runs a pump; they share the work through `SKIP LOCKED` and a
//! per-tenant advisory lock. A pump wakes on a local submission or a local job end,
//! and otherwise every [`TICK`] to notice room freed by workers elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tenantry::broker::{self, ConfirmedPublisher, Outgoing, Topology};
use tenantry::db::jobs::{self as job_db, ClaimedJob};
use tenantry::job::{JobMessage, SCHEMA_VERSION, Signer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often an idle pump looks for room freed elsewhere in the fleet.
pub const TICK: Duration = Duration::from_millis(200);
/// Most jobs claimed and published in one round.
const BATCH: i64 = 256;

pub struct Pump {
    pub pool: PgPool,
    pub amqp_url: String,
    pub topology: Topology,
    pub signer: Signer,
    /// How many jobs each tenant, and the fleet, may have on the broker at once.
    pub windows: job_db::Windows,
    pub wake: Arc<Notify>,
    pub broker_up: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl Pump {
    pub async fn run(self, stop: CancellationToken) {
        let mut publisher: Option<ConfirmedPublisher> = None;
        let mut delay = Duration::from_millis(200);
        let mut reported_down = false;
        while !stop.is_cancelled() {
            if publisher.as_ref().is_none_or(|p| !p.is_connected()) {
                self.broker_up.store(false, Ordering::Relaxed);
                match self.open_publisher().await {
                    Ok(p) => {
                        if reported_down {
                            tracing::info!("The pump reconnected to RabbitMQ.");
                        }
                        publisher = Some(p);
                        self.broker_up.store(true, Ordering::Relaxed);
                        reported_down = false;
                        delay = Duration::from_millis(200);
                    }
                    Err(e) => {
                        if !reported_down {
                            tracing::error!(
                                "{e}; jobs stay in the Postgres backlog until it is back."
                            );
                            reported_down = true;
                        }
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(broker::jittered(delay)) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
            }
            let Some(p) = publisher.as_ref() else {
                continue;
            };
            match self.round(p).await {
                // A full round: there may be more right away.
                Ok(n) if n as i64 >= BATCH => continue,
                Ok(_) => {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(TICK) => {}
                    }
                }
                Err(RoundError::Broker(e)) => {
                    tracing::warn!(error = %e, "Publishing failed; the jobs stay in the backlog.");
                    if let Some(p) = publisher.take() {
                        p.close().await;
                    }
                }
                Err(RoundError::Db(e)) => {
                    if tenantry::db::is_unavailable(&e) {
                        tracing::warn!(error = %e, "Postgres unavailable to the pump; retrying.");
                    } else {
                        tracing::error!(error = %e, "The pump's backlog query failed.");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        if let Some(p) = publisher {
            p.close().await;
        }
        tracing::debug!("The pump stopped.");
    }

    async fn open_publisher(&self) -> Result<ConfirmedPublisher, broker::BrokerError> {
        let publisher =
            ConfirmedPublisher::open(&self.amqp_url, "tenantry-pump", &self.topology).await?;
        broker::declare_topology(publisher.channel(), &self.topology).await?;
        Ok(publisher)
    }

    /// Claims a batch, publishes it, records it. Returns how many were published.
    async fn round(&self, publisher: &ConfirmedPublisher) -> Result<usize, RoundError> {
        let mut tx = self.pool.begin().await?;
        let claimed = job_db::claim_backlog(&mut tx, self.windows, BATCH).await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let messages: Vec<Outgoing> = claimed.iter().map(|job| self.outgoing(job)).collect();
        publisher.publish_jobs(&messages).await?;
        let ids: Vec<_> = claimed.iter().map(|j| j.job_id).collect();
        job_db::mark_published(&mut tx, &ids).await?;
        tx.commit().await?;
        tracing::debug!(published = ids.len(), "Published backlog jobs.");
        Ok(ids.len())
    }

    fn outgoing(&self, job: &ClaimedJob) -> Outgoing {
        let message = JobMessage {
            schema_version: SCHEMA_VERSION,
            job_id: job.job_id,
            tenant_id: job.tenant.clone(),
            document_id: job.document_id,
            database: job.database.clone(),
            source_type: job.source_type.clone(),
            text: job.text.clone(),
            metadata: job.metadata.clone(),
            options: job.options,
            priority: job.priority,
            submitted_at: job.created_at.min(Utc::now()),
        };
        let body = message.to_bytes();
        Outgoing {
            signature: Some(self.signer.sign(&body)),
            tenant: Some(job.tenant.to_string()),
            reason: None,
            message_id: Some(job.job_id.to_string()),
            dead_id: None,
            body,
        }
    }
}
