//! Queries on `workers`: each worker process upserts its row every beat, deletes it
//! when it stops cleanly, and counts as alive while its last beat is recent enough.
//! Every time is Postgres's own `now()`, so clocks of the machines never disagree.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// Rows not refreshed for this long are deleted by the next beat of any worker.
const FORGET_AFTER_HOURS: i32 = 24;

/// What a worker process announces.
#[derive(Debug, Clone)]
pub struct Beat<'a> {
    pub id: &'a str,
    pub host: &'a str,
    pub pid: i32,
    /// `worker` (a `worker` process) or `dispatcher` (workers inside a dispatcher).
    pub mode: &'a str,
    pub concurrency: i32,
    pub prefetch: i32,
    pub metrics_addr: Option<&'a str>,
    pub version: &'a str,
    pub jobs_done: i64,
    pub in_flight: i32,
}

/// A live worker process, as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub mode: String,
    pub concurrency: i32,
    pub prefetch: i32,
    pub metrics_addr: Option<String>,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Seconds since the last beat, by Postgres's clock.
    pub heartbeat_age_secs: f64,
    pub jobs_done: i64,
    pub in_flight: i32,
}

/// Records a beat (creating the row on the first one).
pub async fn beat(pool: &PgPool, beat: &Beat<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO workers (id, host, pid, mode, concurrency, prefetch, metrics_addr, version, jobs_done, in_flight)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), jobs_done = EXCLUDED.jobs_done,
                in_flight = EXCLUDED.in_flight, metrics_addr = EXCLUDED.metrics_addr",
    )
    .bind(beat.id)
    .bind(beat.host)
    .bind(beat.pid)
    .bind(beat.mode)
    .bind(beat.concurrency)
    .bind(beat.prefetch)
    .bind(beat.metrics_addr)
    .bind(beat.version)
    .bind(beat.jobs_done)
    .bind(beat.in_flight)
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes long-dead rows (a crashed worker never deletes its own).
pub async fn forget_stale(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM workers WHERE heartbeat_at < now() - make_interval(hours => $1)")
            .bind(FORGET_AFTER_HOURS)
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}

/// Removes a worker's row (a clean stop: it leaves the view at once).
pub async fn remove(pool: &PgPool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM workers WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Workers whose last beat is younger than `within`, oldest first.
pub async fn live(pool: &PgPool, within: Duration) -> Result<Vec<WorkerRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, host, pid, mode, concurrency, prefetch, metrics_addr, version, started_at,
                heartbeat_at, EXTRACT(EPOCH FROM now() - heartbeat_at)::float8 AS heartbeat_age_secs,
                jobs_done, in_flight
           FROM workers
          WHERE heartbeat_at > now() - make_interval(secs => $1)
          ORDER BY started_at, id",
    )
    .bind(within.as_secs_f64())
    .fetch_all(pool)
    .await
}
