//! The embedded store's durability, with Postgres as the log.
//!
//! qdrant-edge 0.7 makes a write durable only by flushing the whole collection (its WAL
//! and every segment file: 15–25 syncs), and never replays its WAL. Flushing per job
//! made the store's fsyncs the fleet's ceiling, so the worker writes with
//! `upsert_deferred` instead, and durability becomes a protocol:
//!
//! 1. A worker upserts a job's points (applied, not flushed), then commits the job
//!    FINISHED — keeping its text, and recording the chunking it used — then acks.
//! 2. Every [`Checkpointer`] period, the process that owns the store reads a mark
//!    (Postgres' `now()`), flushes every collection written since the last checkpoint,
//!    records the mark in the data directory, and releases the text of jobs finished
//!    before it (less a margin for clocks). A job finished before the mark had upserted
//!    before its finishing transaction began, so before the flush began: its points
//!    are in what was flushed.
//! 3. On open, [`recover`] re-derives (chunk, embed, upsert) the points of every job
//!    finished since the last mark whose text is still kept and whose document is still
//!    INGESTED — deterministic point ids make that idempotent — then checkpoints.
//!
//! Deletes, namespace drops and isolation moves still flush before they return, so a
//! deleted document's points cannot come back, and recovery never re-derives a deleted
//! or failed document's points. A crash at any point (after the FINISHED commit, during
//! a flush, during recovery) leaves the same state to recover from.
//!
//! Back-ends that are durable on write (the Qdrant server) do none of this: the worker
//! drops each job's text when it finishes, as before.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::chunk::ChunkParams;
use crate::db;
use crate::db::jobs::{self as job_db, Rederivable};
use crate::embed::{EmbedError, Embedder};
use crate::ingest;
use crate::tenancy::{Namespace, TenantId};
use crate::tenant::Tenant;
use crate::vector::{VectorError, VectorSpec, VectorStore};

/// Kept around each mark against clock steps: recovery re-derives, and checkpoints keep
/// texts, this much before it too (re-deriving more is harmless).
pub const CLOCK_MARGIN: Duration = Duration::from_secs(1);
/// Jobs re-derived per page during recovery.
const RECOVERY_PAGE: i64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum DurabilityError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error(transparent)]
    Vector(#[from] VectorError),
    #[error("re-deriving points: {0}")]
    Embed(#[from] EmbedError),
}

/// What [`recover`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    pub jobs: u64,
    pub points: u64,
}

fn margin() -> chrono::Duration {
    chrono::Duration::from_std(CLOCK_MARGIN).unwrap_or_else(|_| chrono::Duration::seconds(1))
}

async fn postgres_now(pool: &PgPool) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT now()").fetch_one(pool).await
}

/// One checkpoint: mark, flush, record, release texts. Returns the mark.
pub async fn checkpoint(
    pool: &PgPool,
    store: &dyn VectorStore,
) -> Result<DateTime<Utc>, DurabilityError> {
    let mark = postgres_now(pool).await?;
    store.checkpoint(mark).await?;
    crate::failpoint::hit("checkpoint-before-release");
    let released = job_db::release_texts(pool, mark - margin()).await?;
    if released > 0 {
        tracing::debug!(released, %mark, "Checkpoint: released the texts it covers.");
    }
    Ok(mark)
}

/// Re-derives the points of jobs finished since the store's last checkpoint (see the
/// module), then checkpoints. Run it after opening the store and before anything else
/// writes or deletes in it. Nothing to do for stores that do not defer durability.
pub async fn recover(
    pool: &PgPool,
    store: &dyn VectorStore,
    embedder: &dyn Embedder,
    fleet: &str,
) -> Result<Recovered, DurabilityError> {
    let mut recovered = Recovered::default();
    if !store.defers_durability() {
        return Ok(recovered);
    }
    let since = store
        .last_checkpoint()
        .map_or(DateTime::<Utc>::UNIX_EPOCH, |m| m - margin());
    let spec = VectorSpec {
        dimension: embedder.dimension(),
        model: embedder.model().to_owned(),
    };
    let mut tenants: HashMap<TenantId, Option<Tenant>> = HashMap::new();
    let mut after = None;
    loop {
        let page = job_db::rederivable(pool, since, after, RECOVERY_PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some((last.finished_at, last.doc.job_id));
        for job in &page {
            if !tenants.contains_key(&job.doc.tenant) {
                let mut conn = pool.acquire().await?;
                let tenant = db::tenants::get(&mut conn, &job.doc.tenant).await?;
                tenants.insert(job.doc.tenant.clone(), tenant);
            }
            // A tenant removed meanwhile has no namespace to restore.
            let Some(Some(tenant)) = tenants.get(&job.doc.tenant) else {
                continue;
            };
            recovered.points += rederive(store, embedder, fleet, tenant, job, &spec).await?;
            recovered.jobs += 1;
            crate::failpoint::hit("recovery-after-first-job");
        }
    }
    checkpoint(pool, store).await?;
    if recovered.jobs > 0 {
        tracing::info!(
            jobs = recovered.jobs,
            points = recovered.points,
            "Recovered the points of jobs finished after the last checkpoint."
        );
    }
    Ok(recovered)
}

/// [`recover`], retried with backoff until it succeeds or `stop` fires: an outage of the
/// database or of a remote embedder delays the start, it never skips recovery. `None`
/// if stopped first.
pub async fn recover_with_retry(
    pool: &PgPool,
    store: &dyn VectorStore,
    embedder: &dyn Embedder,
    fleet: &str,
    stop: &CancellationToken,
) -> Option<Recovered> {
    let mut delay = Duration::from_millis(200);
    loop {
        match recover(pool, store, embedder, fleet).await {
            Ok(recovered) => return Some(recovered),
            Err(e) => tracing::warn!(error = %e, "Recovering the embedded store failed; retrying."),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Chunks, embeds and upserts one finished job's points again, as the worker made them.
async fn rederive(
    store: &dyn VectorStore,
    embedder: &dyn Embedder,
    fleet: &str,
    tenant: &Tenant,
    job: &Rederivable,
    spec: &VectorSpec,
) -> Result<u64, DurabilityError> {
    let default = tenant
        .config
        .chunk_params()
        .unwrap_or_else(|_| ChunkParams::default());
    let Ok(params) = job.params.resolve(&default) else {
        return Ok(0);
    };
    let doc = job.doc.reference();
    let payloads = ingest::chunk_payloads(doc, &job.doc.text, &params);
    let points = ingest::embed_points(doc, payloads, embedder).await?;
    let count = points.len() as u64;
    let ns = Namespace::new(fleet, &job.doc.tenant, &job.doc.database, tenant.isolation);
    store.ensure_namespace(&ns, spec).await?;
    store.upsert_deferred(&ns, points).await?;
    Ok(count)
}

/// Checkpoints the store every `period` until `stop` (the owner checkpoints once more
/// after its workers have drained).
pub struct Checkpointer {
    pub pool: PgPool,
    pub store: crate::vector::SharedVectorStore,
    pub period: Duration,
}

impl Checkpointer {
    pub async fn run(self, stop: CancellationToken) {
        if !self.store.defers_durability() {
            return;
        }
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.period) => {}
            }
            match checkpoint(&self.pool, self.store.as_ref()).await {
                Ok(_) if failing => {
                    tracing::info!("Checkpoints of the embedded store work again.");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "A checkpoint of the embedded store failed; retrying. Finished jobs keep their text until one succeeds.");
                    }
                    failing = true;
                }
            }
        }
    }
}
