//! Queries on `dead_letters`: messages refused for good, with their reason.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::tenancy::TenantId;

/// A dead letter to record.
#[derive(Debug, Clone)]
pub struct NewDeadLetter<'a> {
    pub id: Uuid,
    /// Only when the message's signature verified: a forged message names no tenant.
    pub tenant: Option<&'a TenantId>,
    pub job_id: Option<Uuid>,
    pub reason: &'a str,
    pub body: &'a [u8],
    pub headers: Value,
    /// The AMQP message id it arrived with, if any (never trusted, only shown).
    pub message_id: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: Uuid,
    pub tenant_id: Option<String>,
    pub job_id: Option<Uuid>,
    pub reason: String,
    pub message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// Records a dead letter once (its id makes a second recording a no-op).
pub async fn record(pool: &PgPool, dl: &NewDeadLetter<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letters (id, tenant_id, job_id, reason, body, headers, message_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(dl.id)
    .bind(dl.tenant.map(TenantId::as_str))
    .bind(dl.job_id)
    .bind(dl.reason)
    .bind(dl.body)
    .bind(&dl.headers)
    .bind(dl.message_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Dead letters, newest first, optionally of one tenant.
pub async fn list(
    pool: &PgPool,
    tenant: Option<&TenantId>,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, tenant_id, job_id, reason, message_id, created_at, replayed_at FROM dead_letters
          WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY created_at DESC, id LIMIT $2",
    )
    .bind(tenant.map(TenantId::as_str))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// What a replay did, or why it could not.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayOutcome {
    /// The job is back in the backlog (PENDING, unpublished); the pump republishes it.
    Replayed {
        tenant: TenantId,
        job_id: Uuid,
    },
    NotFound,
    /// The dead letter names no verified tenant and job (unsigned, forged, unreadable).
    NotReplayable(&'static str),
    AlreadyReplayed(DateTime<Utc>),
    /// The job is not FAILED (it finished, was cancelled, or is still running).
    JobNotFailed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Quota(#[from] crate::quota::QuotaExceeded),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// A dead letter's tenant, job and replay time, as stored.
type DeadLetterRef = (Option<String>, Option<Uuid>, Option<DateTime<Utc>>);

/// Puts a dead-lettered job back into the backlog, in one transaction: the job
/// becomes PENDING and unpublished with its attempt counter reset (so it gets the
/// full number of attempts again), its document takes back one DOCUMENTS unit and a
/// storage reservation of its text size (settled to the measured size when it
/// finishes), the dead letter is marked replayed, and the replay is recorded in the
/// job's history and the audit log. Replaying goes through the outbox like any
/// submission: nothing is published here, so a broker outage cannot lose it.
pub async fn replay(pool: &PgPool, id: Uuid, actor: &str) -> Result<ReplayOutcome, ReplayError> {
    let mut tx = pool.begin().await?;
    let row: Option<DeadLetterRef> = sqlx::query_as(
        "SELECT tenant_id, job_id, replayed_at FROM dead_letters WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((tenant, job_id, replayed_at)) = row else {
        return Ok(ReplayOutcome::NotFound);
    };
    if let Some(at) = replayed_at {
        return Ok(ReplayOutcome::AlreadyReplayed(at));
    }
    let (Some(tenant), Some(job_id)) = (tenant, job_id) else {
        return Ok(ReplayOutcome::NotReplayable(
            "the message names no verified tenant and job (unsigned, forged or unreadable)",
        ));
    };
    let Ok(tenant) = TenantId::parse(&tenant) else {
        return Ok(ReplayOutcome::NotReplayable(
            "the recorded tenant id is invalid",
        ));
    };
    let job: Option<(String, Uuid, bool, i64)> = sqlx::query_as(
        "SELECT j.status, j.document_id, j.body IS NOT NULL, d.text_bytes
           FROM jobs j JOIN documents d ON d.id = j.document_id
          WHERE j.tenant_id = $1 AND j.id = $2 FOR UPDATE OF j, d",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, document_id, has_body, text_bytes)) = job else {
        return Ok(ReplayOutcome::NotReplayable(
            "the dead letter's job does not exist",
        ));
    };
    if status != "FAILED" {
        return Ok(ReplayOutcome::JobNotFailed(status));
    }
    if !has_body {
        return Ok(ReplayOutcome::NotReplayable(
            "the job's text is no longer kept",
        ));
    }
    match crate::quota::reserve_document(&mut tx, &tenant, text_bytes).await {
        Ok(()) => {}
        Err(crate::quota::QuotaError::Exceeded(q)) => return Err(q.into()),
        Err(crate::quota::QuotaError::Sql(e)) => return Err(e.into()),
    }
    sqlx::query(
        "UPDATE documents SET holds_quota = true, reserved_bytes = $3, state = 'PENDING'
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.as_str())
    .bind(document_id)
    .bind(text_bytes)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE jobs SET status = 'PENDING', published_at = NULL, attempts = 0,
                error_code = NULL, error = NULL, started_at = NULL, finished_at = NULL,
                updated_at = now()
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE dead_letters SET replayed_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    crate::db::attempts::record_replay(&mut tx, &tenant, job_id, actor).await?;
    crate::db::audit::record(
        &mut tx,
        Some(&tenant),
        actor,
        "dead_letter.replayed",
        Some(serde_json::json!({ "dead_letter_id": id, "job_id": job_id, "status": "FAILED" })),
        Some(serde_json::json!({ "dead_letter_id": id, "job_id": job_id, "status": "PENDING" })),
    )
    .await?;
    tx.commit().await?;
    Ok(ReplayOutcome::Replayed { tenant, job_id })
}

/// Dead letters recorded, and of those not replayed yet (for the operators' view).
pub async fn counts(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE replayed_at IS NULL) FROM dead_letters")
        .fetch_one(pool)
        .await
}
