//! Announces a worker process in the `workers` table while it runs: a beat three
//! times per `TENANTRY_HEARTBEAT_SECS`, so a live worker's row is never older than a
//! third of the interval and one that died (killed, machine lost) leaves the view —
//! which shows rows younger than one interval — within the interval. A clean stop
//! deletes the row at once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tenantry::db::workers::{self, Beat};
use tokio_util::sync::CancellationToken;

use crate::context::WorkerContext;

/// How the workers of a process run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A `worker` process.
    Process,
    /// Workers inside a dispatcher (`dispatcher --workers N`).
    InDispatcher,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "worker",
            Self::InDispatcher => "dispatcher",
        }
    }
}

/// What the process says about itself besides its counters.
#[derive(Debug, Clone)]
pub struct Announce {
    pub mode: Mode,
    pub concurrency: usize,
    pub metrics_addr: Option<String>,
}

/// The pause between beats for a liveness interval.
pub fn beat_every(interval: Duration) -> Duration {
    (interval / 3).max(Duration::from_millis(100))
}

/// Beats until `stop`. A failed beat is logged once per outage and retried at the
/// next one: a worker whose database is down cannot work either.
pub async fn run(ctx: &WorkerContext, announce: &Announce, stop: CancellationToken) {
    let every = beat_every(ctx.settings.worker.heartbeat);
    let mut failing = false;
    let mut beats: u64 = 0;
    loop {
        let beat = Beat {
            id: &ctx.worker_id,
            host: &ctx.host,
            pid: std::process::id() as i32,
            mode: announce.mode.as_str(),
            concurrency: announce.concurrency as i32,
            prefetch: i32::from(ctx.settings.worker.prefetch),
            metrics_addr: announce.metrics_addr.as_deref(),
            version: env!("CARGO_PKG_VERSION"),
            jobs_done: ctx.jobs_done.load(Ordering::Relaxed) as i64,
            in_flight: ctx.metrics.worker_in_flight() as i32,
        };
        match workers::beat(&ctx.pool, &beat).await {
            Ok(()) if failing => {
                tracing::info!(worker_id = %ctx.worker_id, "Heartbeats are recorded again.");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(worker_id = %ctx.worker_id, error = %e, "Could not record a heartbeat; this worker may look dead.");
                failing = true;
            }
            Err(_) => {}
        }
        // Now and then, sweep rows of workers that died long ago.
        if beats.is_multiple_of(1000) {
            let _ = workers::forget_stale(&ctx.pool).await;
        }
        beats += 1;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Deletes the process's row: it stopped cleanly.
pub async fn leave(ctx: &WorkerContext) {
    if let Err(e) = workers::remove(&ctx.pool, &ctx.worker_id).await {
        tracing::warn!(worker_id = %ctx.worker_id, error = %e, "Could not remove the heartbeat row; it expires by itself.");
    }
}
