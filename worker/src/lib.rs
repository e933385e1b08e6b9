//! tenantry's workers: consume jobs, chunk, embed, upsert into the tenant's own
//! namespace, record the outcome, then acknowledge.
//!
//! # Layout
//! - [`consumer`]: one worker task — connection, consumer, reconnection, settling.
//! - [`pipeline`]: one job — trust checks, stages, and what happens to the message.
//! - [`dead_letters`]: drains the dead-letter queue into Postgres.
//! - [`tenants`]: a short-lived tenant cache.
//! - [`context`]: what all worker tasks of a process share.
//! - [`heartbeat`]: announces the process in `workers` while it runs.
//! - [`metrics_server`]: `/metrics` of a `worker` process (`TENANTRY_METRICS_ADDR`).
//! - [`cli`]: the `worker` binary's whole body.

use std::sync::Arc;

use sqlx::PgPool;
use tenantry::config::Settings;
use tenantry::embed::Embedder;
use tenantry::metrics::Metrics;
use tenantry::vector::SharedVectorStore;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub mod cli;
pub mod consumer;
pub mod context;
pub mod dead_letters;
pub mod heartbeat;
pub mod metrics_server;
pub mod pipeline;
pub mod tenants;

pub use context::WorkerContext;

/// What workers run on; in all-in-one mode the dispatcher lends its own.
pub struct Resources {
    pub settings: Settings,
    pub pool: PgPool,
    pub store: SharedVectorStore,
    pub embedder: Arc<dyn Embedder>,
    /// Told when a job ends (an in-process pump refills the tenant's window).
    pub on_job_end: Option<Arc<Notify>>,
    /// The process's metrics (a dispatcher shares its own with its workers).
    pub metrics: Arc<Metrics>,
    /// How the workers run, as announced in their heartbeat row.
    pub mode: heartbeat::Mode,
    /// Where this process serves `/metrics`, as announced in its heartbeat row.
    pub metrics_addr: Option<String>,
}

/// Runs `count` worker tasks and the dead-letter recorder until `stop`; then waits
/// for in-flight jobs up to the shutdown grace period.
pub async fn run_workers(
    resources: Resources,
    count: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let grace = resources.settings.worker.shutdown_grace;
    let mut ctx = WorkerContext::new(
        resources.settings,
        resources.pool,
        resources.store,
        resources.embedder,
        resources.on_job_end,
    );
    ctx.metrics = resources.metrics;
    let ctx = Arc::new(ctx);
    let announce = heartbeat::Announce {
        mode: resources.mode,
        concurrency: count,
        metrics_addr: resources.metrics_addr,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..count {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tasks.spawn(async move { consumer::run(&ctx, index, stop).await });
    }
    {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tasks.spawn(async move { dead_letters::run(&ctx, stop).await });
    }
    // The heartbeat outlives `stop` until the jobs in hand are drained: a draining
    // worker is still alive.
    let beat_stop = CancellationToken::new();
    let beating = {
        let (ctx, beat_stop) = (ctx.clone(), beat_stop.clone());
        tokio::spawn(async move { heartbeat::run(&ctx, &announce, beat_stop).await })
    };
    tracing::info!(workers = count, worker_id = %ctx.worker_id, "Workers started.");
    stop.cancelled().await;
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "In-flight jobs did not finish within the grace period; they will be redelivered."
        );
        tasks.abort_all();
    }
    // The row goes once the work has: the process leaves the view at once.
    beat_stop.cancel();
    let _ = beating.await;
    heartbeat::leave(&ctx).await;
    Ok(())
}
