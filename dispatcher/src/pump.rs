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
//! per-tenant advisory lock. The claim also holds each tenant to its PROCESSING_JOBS
//! limit of jobs in flight, so a job's slot runs from here to its end. A message
//! carries a group of up to `TENANTRY_JOBS_PER_MESSAGE` jobs of one tenant (their ids;
//! workers read the rest from Postgres), so the broker moves groups, not documents.
//!
//! A pump wakes on a local submission, on a job ending anywhere in the fleet (workers
//! `NOTIFY` [`job_db::ROOM_CHANNEL`] after each batch of finishes; the pump `LISTEN`s),
//! and otherwise every [`TICK`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tenantry::broker::{self, ConfirmedPublisher, Outgoing, Topology};
use tenantry::db::jobs::{self as job_db, ClaimedJob};
use tenantry::job::{JobMessage, JobRef, SCHEMA_VERSION, Signer};
use tenantry::tenancy::TenantId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often an idle pump looks for work it was not told about.
pub const TICK: Duration = Duration::from_millis(200);
/// Most jobs claimed and published in one round.
const BATCH: i64 = 1024;

pub struct Pump {
    pub pool: PgPool,
    pub amqp_url: String,
    pub topology: Topology,
    pub signer: Signer,
    /// How many jobs each tenant, and the fleet, may have on the broker at once.
    pub windows: job_db::Windows,
    /// Most jobs of one tenant in one message.
    pub jobs_per_message: usize,
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
        let listening = tokio::spawn(listen(
            self.pool.clone(),
            self.wake.clone(),
            stop.child_token(),
        ));
        self.pump(&stop).await;
        let _ = listening.await;
        tracing::debug!("The pump stopped.");
    }

    async fn pump(&self, stop: &CancellationToken) {
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
    }

    async fn open_publisher(&self) -> Result<ConfirmedPublisher, broker::BrokerError> {
        let publisher =
            ConfirmedPublisher::open(&self.amqp_url, "tenantry-pump", &self.topology).await?;
        broker::declare_topology(publisher.channel(), &self.topology).await?;
        Ok(publisher)
    }

    /// Claims a round, publishes it, records it. Returns how many jobs were published.
    ///
    /// The round's transaction does not wait for its commit's WAL flush
    /// (`synchronous_commit = off`): losing it to a Postgres crash only puts its jobs
    /// back in the backlog, and publishing them again is absorbed by the workers (a job
    /// is processed to one outcome; point ids are deterministic). Every other guarantee
    /// hangs on commits that do wait.
    async fn round(&self, publisher: &ConfirmedPublisher) -> Result<usize, RoundError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let claimed = job_db::claim_backlog(&mut tx, self.windows, BATCH).await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let messages = self.messages(&claimed);
        publisher.publish_jobs(&messages).await?;
        tx.commit().await?;
        tracing::debug!(
            published = claimed.len(),
            messages = messages.len(),
            "Published backlog jobs."
        );
        Ok(claimed.len())
    }

    /// The round's jobs as messages: each tenant's, in their turn, in groups of up to
    /// `jobs_per_message`; every tenant's first group before anyone's second.
    fn messages(&self, claimed: &[ClaimedJob]) -> Vec<Outgoing> {
        let mut tenants: Vec<(&TenantId, Vec<&ClaimedJob>)> = Vec::new();
        for job in claimed {
            match tenants.iter_mut().find(|(t, _)| **t == job.tenant) {
                Some((_, jobs)) => jobs.push(job),
                None => tenants.push((&job.tenant, vec![job])),
            }
        }
        let per = self.jobs_per_message.max(1);
        let mut rounds: Vec<Vec<Outgoing>> = Vec::new();
        for (tenant, jobs) in &tenants {
            for (i, group) in jobs.chunks(per).enumerate() {
                if rounds.len() <= i {
                    rounds.push(Vec::new());
                }
                rounds[i].push(self.outgoing(tenant, group));
            }
        }
        rounds.into_iter().flatten().collect()
    }

    fn outgoing(&self, tenant: &TenantId, jobs: &[&ClaimedJob]) -> Outgoing {
        let oldest = jobs
            .iter()
            .map(|j| j.created_at)
            .min()
            .unwrap_or_else(Utc::now);
        let message = JobMessage {
            schema_version: SCHEMA_VERSION,
            tenant_id: tenant.clone(),
            jobs: jobs
                .iter()
                .map(|j| JobRef {
                    job_id: j.job_id,
                    traceparent: None,
                })
                .collect(),
            submitted_at: oldest.min(Utc::now()),
        };
        let body = message.to_bytes();
        Outgoing {
            signature: Some(self.signer.sign(&body)),
            tenant: Some(tenant.to_string()),
            reason: None,
            message_id: jobs.first().map(|j| j.job_id.to_string()),
            dead_id: None,
            body,
        }
    }
}

/// Wakes the pump whenever jobs end anywhere in the fleet (see [`job_db::notify_room`]).
/// Reconnects on its own; while it cannot listen, the pump's tick still finds the room.
async fn listen(pool: PgPool, wake: Arc<Notify>, stop: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    while !stop.is_cancelled() {
        let listening = listen_once(&pool, &wake);
        tokio::select! {
            _ = stop.cancelled() => return,
            Err(e) = listening => {
                tracing::debug!(error = %e, "The pump's LISTEN connection failed; reconnecting.");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(broker::jittered(delay)) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn listen_once(
    pool: &PgPool,
    wake: &Notify,
) -> Result<std::convert::Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(job_db::ROOM_CHANNEL).await?;
    loop {
        // None: the connection was lost (and is re-opened by the next call); a
        // notification may have been missed, so look anyway.
        let _notification = listener.try_recv().await?;
        wake.notify_one();
    }
}
