//! Everything a worker needs, shared by all worker tasks of a process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::PgPool;
use tenantry::broker::Topology;
use tenantry::config::Settings;
use tenantry::embed::Embedder;
use tenantry::job::Signer;
use tenantry::metrics::Metrics;
use tenantry::vector::SharedVectorStore;
use tokio::sync::Notify;

use tenantry::batch::{Batcher, all_or_each};
use tenantry::db::jobs::{self as job_db, Outcome, StartOutcome};
use tenantry::quota::QuotaExceeded;
use tenantry::tenancy::TenantId;
use uuid::Uuid;

use crate::tenants::TenantCache;

/// Most messages whose job starts or finishes are written in one transaction.
const MAX_BATCH: usize = 64;

type Started = Result<StartOutcome, sqlx::Error>;
type Finished = Result<Result<(), QuotaExceeded>, sqlx::Error>;

/// Headroom over the HTTP body limit for a message's JSON envelope (ids, metadata,
/// escaping), so every document the dispatcher accepted also fits on the wire.
const ENVELOPE_HEADROOM: usize = 1024 * 1024;

pub struct WorkerContext {
    pub settings: Settings,
    pub pool: PgPool,
    pub store: SharedVectorStore,
    pub embedder: Arc<dyn Embedder>,
    pub signer: Signer,
    pub topology: Topology,
    pub tenants: TenantCache,
    /// `host-pid-nonce`, recorded on the jobs this process works on and as its
    /// heartbeat row (the nonce keeps a restarted container with the same host and
    /// pid 1 apart from its predecessor).
    pub worker_id: String,
    pub host: String,
    /// Jobs this process ended (finished or failed), for its heartbeat row.
    pub jobs_done: AtomicU64,
    pub metrics: Arc<Metrics>,
    /// Largest message body accepted; anything larger is dead-lettered unread.
    pub max_message_bytes: usize,
    /// Told when a job ends, so an in-process pump can refill that tenant's window.
    pub on_job_end: Option<Arc<Notify>>,
    /// Group commit of job starts and finishes (see [`crate::batch`]).
    starts: Batcher<(TenantId, Uuid), Started>,
    finishes: Batcher<(TenantId, Uuid, Outcome), Finished>,
}

impl WorkerContext {
    pub fn new(
        settings: Settings,
        pool: PgPool,
        store: SharedVectorStore,
        embedder: Arc<dyn Embedder>,
        on_job_end: Option<Arc<Notify>>,
    ) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        let worker_id = format!(
            "{host}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..4]
        );
        Self {
            starts: start_batcher(pool.clone(), worker_id.clone()),
            finishes: finish_batcher(pool.clone(), store.defers_durability()),
            signer: Signer::new(settings.signing_secret.expose().as_bytes()),
            topology: Topology::new(&settings.queue_prefix),
            tenants: TenantCache::new(settings.auth_cache_ttl),
            worker_id,
            host,
            jobs_done: AtomicU64::new(0),
            metrics: Metrics::shared(),
            max_message_bytes: settings.max_body_bytes + ENVELOPE_HEADROOM,
            settings,
            pool,
            store,
            embedder,
            on_job_end,
        }
    }

    /// Starts a message's jobs, together with whatever other starts are waiting: see
    /// [`job_db::start_many`]. One answer per job, in order.
    pub async fn start(
        &self,
        tenant: &TenantId,
        jobs: &[Uuid],
    ) -> Result<Vec<StartOutcome>, sqlx::Error> {
        let items = jobs.iter().map(|id| (tenant.clone(), *id)).collect();
        self.starts
            .call(items)
            .await
            .ok_or(sqlx::Error::PoolClosed)?
            .into_iter()
            .collect()
    }

    /// Records jobs FINISHED, together with whatever other finishes are waiting: see
    /// [`job_db::finish_many`]. One answer per job, in order.
    pub async fn finish(&self, jobs: Vec<(TenantId, Uuid, Outcome)>) -> Vec<Finished> {
        let n = jobs.len();
        match self.finishes.call(jobs).await {
            Some(answers) => answers,
            None => (0..n).map(|_| Err(sqlx::Error::PoolClosed)).collect(),
        }
    }

    /// Counts a job that reached FINISHED or FAILED here.
    pub fn count_done(&self) {
        self.jobs_done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn job_ended(&self) {
        if let Some(n) = &self.on_job_end {
            n.notify_one();
        }
    }
}

fn start_batcher(pool: PgPool, worker_id: String) -> Batcher<(TenantId, Uuid), Started> {
    Batcher::spawn(MAX_BATCH, move |jobs: Vec<(TenantId, Uuid)>| {
        let (pool, worker_id) = (pool.clone(), worker_id.clone());
        all_or_each(jobs, move |jobs| {
            let (pool, worker_id) = (pool.clone(), worker_id.clone());
            async move { job_db::start_many(&pool, &jobs, &worker_id).await }
        })
    })
}

/// `keep_text`: the vector store defers durability, so finished jobs keep their text
/// until a checkpoint covers them.
fn finish_batcher(pool: PgPool, keep_text: bool) -> Batcher<(TenantId, Uuid, Outcome), Finished> {
    Batcher::spawn(MAX_BATCH, move |jobs: Vec<(TenantId, Uuid, Outcome)>| {
        let pool = pool.clone();
        async move {
            let finished = all_or_each(jobs, |jobs| {
                let pool = pool.clone();
                async move { job_db::finish_many(&pool, &jobs, keep_text).await }
            })
            .await;
            // Their slots are free: pumps in other processes hear it at once.
            if finished.iter().any(Result::is_ok)
                && let Err(e) = job_db::notify_room(&pool).await
            {
                tracing::debug!(error = %e, "Could not notify the pumps.");
            }
            finished
        }
    })
}
