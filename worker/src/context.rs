//! Everything a worker needs, shared by all worker tasks of a process.

use std::future::Future;
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

use tenantry::db::jobs::{self as job_db, Outcome, StartOutcome};
use tenantry::quota::QuotaExceeded;
use tenantry::tenancy::TenantId;
use uuid::Uuid;

use crate::batch::Batcher;
use crate::tenants::TenantCache;

/// Most job starts or finishes written in one transaction.
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
            finishes: finish_batcher(pool.clone()),
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

    /// Marks a job PROCESSING (taking a slot), together with whatever other starts are
    /// waiting: see [`job_db::begin_processing_many`].
    pub async fn begin_processing(&self, tenant: &TenantId, job_id: Uuid) -> Started {
        self.starts
            .call((tenant.clone(), job_id))
            .await
            .unwrap_or(Err(sqlx::Error::PoolClosed))
    }

    /// Records a job FINISHED, together with whatever other finishes are waiting: see
    /// [`job_db::finish_many`].
    pub async fn finish(&self, tenant: &TenantId, job_id: Uuid, outcome: Outcome) -> Finished {
        self.finishes
            .call((tenant.clone(), job_id, outcome))
            .await
            .unwrap_or(Err(sqlx::Error::PoolClosed))
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
            async move { job_db::begin_processing_many(&pool, &jobs, &worker_id).await }
        })
    })
}

fn finish_batcher(pool: PgPool) -> Batcher<(TenantId, Uuid, Outcome), Finished> {
    Batcher::spawn(MAX_BATCH, move |jobs: Vec<(TenantId, Uuid, Outcome)>| {
        let pool = pool.clone();
        all_or_each(jobs, move |jobs| {
            let pool = pool.clone();
            async move { job_db::finish_many(&pool, &jobs).await }
        })
    })
}

/// Runs the batch in one transaction; if that fails, each job in a batch of its own, so
/// every job gets its own outcome or error (a deadlock or one bad row does not fail the
/// others).
async fn all_or_each<Job, T, F, Fut>(jobs: Vec<Job>, run: F) -> Vec<Result<T, sqlx::Error>>
where
    Job: Clone,
    F: Fn(Arc<[Job]>) -> Fut,
    Fut: Future<Output = Result<Vec<T>, sqlx::Error>>,
{
    let jobs: Arc<[Job]> = jobs.into();
    if let Ok(all) = run(Arc::clone(&jobs)).await {
        return all.into_iter().map(Ok).collect();
    }
    let mut each = Vec::with_capacity(jobs.len());
    for job in jobs.iter() {
        each.push(
            run(Arc::from([job.clone()]))
                .await
                .and_then(|mut one| one.pop().ok_or(sqlx::Error::RowNotFound)),
        );
    }
    each
}
