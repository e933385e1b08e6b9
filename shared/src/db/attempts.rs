//! Queries on `job_attempts`: the history of a job's attempts (worker, times,
//! outcome, error), written by workers as each attempt starts and ends.
//!
//! The history is a record, not the source of truth: the job's status and its
//! `attempts` counter decide what happens next. Writing it is therefore best effort
//! on the worker's side (a failure is logged, never retried on its own), and an
//! attempt whose worker died stays RUNNING until the next attempt marks it
//! INTERRUPTED.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error_code::Code;
use crate::tenancy::TenantId;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Finished,
    /// A retryable failure: the job waits in a delay queue for its next attempt.
    Retry,
    Failed,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Finished => "FINISHED",
            Self::Retry => "RETRY",
            Self::Failed => "FAILED",
        }
    }
}

/// One entry of a job's history, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AttemptView {
    pub attempt: i32,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: String,
    pub error_code: Option<String>,
    pub error: Option<String>,
}

/// Records that `worker_id` started attempt `attempt` (inside the transaction that marks
/// the job PROCESSING); any attempt of the job still RUNNING is marked INTERRUPTED first
/// (its worker stopped without an outcome).
pub async fn start(
    conn: &mut PgConnection,
    tenant: &TenantId,
    job_id: Uuid,
    attempt: i32,
    worker_id: &str,
) -> Result<(), sqlx::Error> {
    close_running(conn, tenant, job_id, "INTERRUPTED").await?;
    sqlx::query(
        "INSERT INTO job_attempts (tenant_id, job_id, attempt, worker_id) VALUES ($1, $2, $3, $4)",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .bind(attempt)
    .bind(worker_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records the running attempt of a job FINISHED (inside the transaction that finishes
/// the job).
pub async fn end_running_finished(
    conn: &mut PgConnection,
    tenant: &TenantId,
    job_id: Uuid,
) -> Result<(), sqlx::Error> {
    close_running(conn, tenant, job_id, AttemptOutcome::Finished.as_str()).await
}

/// Ends whatever attempt of the job is still RUNNING with `outcome`.
async fn close_running(
    conn: &mut PgConnection,
    tenant: &TenantId,
    job_id: Uuid,
    outcome: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE job_attempts SET outcome = $3, ended_at = now()
          WHERE tenant_id = $1 AND job_id = $2 AND outcome = 'RUNNING'",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .bind(outcome)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records how attempt `attempt` ended.
pub async fn end(
    pool: &PgPool,
    tenant: &TenantId,
    job_id: Uuid,
    attempt: i32,
    outcome: AttemptOutcome,
    error: Option<(Code, &str)>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE job_attempts SET outcome = $4, ended_at = now(), error_code = $5, error = $6
          WHERE id = (SELECT max(id) FROM job_attempts
                       WHERE tenant_id = $1 AND job_id = $2 AND attempt = $3)",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .bind(attempt)
    .bind(outcome.as_str())
    .bind(error.map(|e| e.0.as_str()))
    .bind(error.map(|e| e.1))
    .execute(pool)
    .await?;
    Ok(())
}

/// Records an admin's replay of a failed job (inside the replay's transaction).
pub async fn record_replay(
    conn: &mut PgConnection,
    tenant: &TenantId,
    job_id: Uuid,
    actor: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job_attempts (tenant_id, job_id, attempt, worker_id, ended_at, outcome)
         VALUES ($1, $2, 0, $3, now(), 'REPLAYED')",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .bind(actor)
    .execute(conn)
    .await?;
    Ok(())
}

/// A job's history, oldest first.
pub async fn history(
    pool: &PgPool,
    tenant: &TenantId,
    job_id: Uuid,
) -> Result<Vec<AttemptView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT attempt, worker_id, started_at, ended_at, outcome, error_code, error
           FROM job_attempts WHERE tenant_id = $1 AND job_id = $2 ORDER BY id",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .fetch_all(pool)
    .await
}
