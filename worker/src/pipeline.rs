//! What a worker does with one delivery, and what then happens to the message.
//!
//! Order of trust: size, then signature, then parse — nothing in a message is
//! believed before its signature checks — then the tenant's status, then the job's
//! state in Postgres. Every failure is classified as permanent (dead-letter, job
//! FAILED, never retried) or retryable (delayed redelivery with backoff, up to
//! `TENANTRY_MAX_ATTEMPTS`); waiting that is nobody's failure (no free slot, tenant
//! suspended, Postgres down before the job started) defers without counting an attempt.

use std::time::Instant;

use serde_json::{Map, Value, json};
use tenantry::db::attempts::{self, AttemptOutcome};
use tenantry::db::jobs::{self as job_db, Outcome, StartOutcome};
use tenantry::embed::EmbedError;
use tenantry::ingest::{self, DocumentRef};
use tenantry::job::JobMessage;
use tenantry::tenancy::Namespace;
use tenantry::tenant::{Tenant, TenantStatus};
use tenantry::vector::{VectorError, VectorSpec};
use tracing::Instrument;

use crate::context::WorkerContext;

/// Retry tier (index into `broker::RETRY_TIERS`) for waiting on a slot.
const TIER_SLOT: usize = 0;
/// Retry tier for waiting while the tenant is suspended or Postgres is down.
const TIER_WAIT: usize = 1;

/// What to do with the delivery once the work is over.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Done (or nothing to do): acknowledge.
    Ack,
    /// Permanently refused: to the dead-letter queue with this reason, then acknowledge.
    Dead { reason: String },
    /// Try again after the delay of `tier`, then acknowledge this copy.
    Later { tier: usize, why: String },
}

/// A failure while processing a started job.
#[derive(Debug)]
struct StageError {
    code: &'static str,
    message: String,
    retryable: bool,
}

impl StageError {
    fn permanent(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: false,
        }
    }
    fn retryable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: true,
        }
    }
}

impl From<VectorError> for StageError {
    fn from(e: VectorError) -> Self {
        let retryable = e.is_retryable();
        Self {
            code: if retryable {
                "vector_store_unavailable"
            } else {
                "vector_store_refused"
            },
            message: e.to_string(),
            retryable,
        }
    }
}

impl From<EmbedError> for StageError {
    fn from(e: EmbedError) -> Self {
        let retryable = e.is_retryable();
        Self {
            code: if retryable {
                "embedder_unavailable"
            } else {
                "embedder_refused"
            },
            message: e.to_string(),
            retryable,
        }
    }
}

/// Decides and does the work for one delivered message body.
pub async fn process(ctx: &WorkerContext, body: &[u8], signature: Option<&str>) -> Disposition {
    if body.len() > ctx.max_message_bytes {
        return Disposition::Dead {
            reason: format!(
                "message of {} bytes exceeds the limit of {}",
                body.len(),
                ctx.max_message_bytes
            ),
        };
    }
    if let Err(e) = ctx.signer.verify(body, signature) {
        tracing::warn!(error = %e, "Refused an unsigned or forged message.");
        return Disposition::Dead {
            reason: e.to_string(),
        };
    }
    let message = match JobMessage::from_bytes(body, ctx.max_message_bytes) {
        Ok(m) => m,
        Err(e) => {
            return Disposition::Dead {
                reason: e.to_string(),
            };
        }
    };
    let span = tracing::info_span!("job", tenant_id = %message.tenant_id, job_id = %message.job_id);
    process_job(ctx, message).instrument(span).await
}

async fn process_job(ctx: &WorkerContext, message: JobMessage) -> Disposition {
    let tenant = match ctx.tenants.get(&ctx.pool, &message.tenant_id).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Disposition::Dead {
                reason: format!("unknown tenant {}", message.tenant_id),
            };
        }
        Err(e) => return database_down(e),
    };
    match tenant.status {
        TenantStatus::Active => {}
        TenantStatus::Suspended => {
            tracing::debug!("Tenant suspended; the job waits.");
            ctx.metrics.job_deferred();
            return Disposition::Later {
                tier: TIER_WAIT,
                why: "tenant suspended".into(),
            };
        }
        TenantStatus::Inactive => {
            let reason = "the tenant is inactive".to_owned();
            return match job_db::fail(
                &ctx.pool,
                &tenant.id,
                message.job_id,
                "tenant_inactive",
                &reason,
            )
            .await
            {
                Ok(_) => {
                    ctx.metrics.job_failed("tenant_inactive", None);
                    ctx.count_done();
                    ctx.job_ended();
                    Disposition::Dead { reason }
                }
                Err(e) => database_down(e),
            };
        }
    }
    let started = match ctx.begin_processing(&tenant.id, message.job_id).await {
        Ok(s) => s,
        Err(e) => return database_down(e),
    };
    let attempt = match started {
        StartOutcome::Started { attempt, .. } => attempt,
        StartOutcome::NoSlot => {
            tracing::debug!("No PROCESSING_JOBS slot free; deferring.");
            ctx.metrics.job_deferred();
            return Disposition::Later {
                tier: TIER_SLOT,
                why: "PROCESSING_JOBS limit reached".into(),
            };
        }
        StartOutcome::AlreadyDone(status) => {
            tracing::debug!(%status, "Duplicate delivery of an ended job; acknowledging.");
            return Disposition::Ack;
        }
        StartOutcome::Unknown => {
            return Disposition::Dead {
                reason: format!("no job {} for tenant {}", message.job_id, tenant.id),
            };
        }
    };
    let started_at = Instant::now();
    let (disposition, ended) = match run_stages(ctx, &tenant, &message).await {
        Ok(outcome) => record_finished(ctx, &tenant, &message, outcome, started_at).await,
        Err(e) if e.retryable && (attempt as u32) < ctx.settings.worker.max_attempts => {
            tracing::warn!(attempt, code = e.code, error = %e.message, "Attempt failed; retrying later.");
            ctx.metrics.job_retried(e.code);
            if let Err(db) =
                job_db::retry_later(&ctx.pool, &tenant.id, message.job_id, e.code, &e.message).await
            {
                // The job keeps its slot; the next delivery resumes it.
                tracing::warn!(error = %db, "Could not record the retry.");
            }
            let ended = Some((AttemptOutcome::Retry, Some((e.code, e.message.clone()))));
            let later = Disposition::Later {
                tier: (attempt as usize).saturating_sub(1),
                why: e.message,
            };
            (later, ended)
        }
        Err(e) => {
            let code = e.code;
            // A retryable failure that used up its attempts says so; a permanent
            // one failed at once and is not retried.
            let reason = if e.retryable {
                format!("{} (after {attempt} attempts)", e.message)
            } else {
                e.message
            };
            let disposition = fail_permanently(ctx, &tenant, &message, code, &reason).await;
            ctx.metrics.job_failed(code, Some(started_at.elapsed()));
            let ended = matches!(disposition, Disposition::Dead { .. })
                .then_some((AttemptOutcome::Failed, Some((code, reason))));
            (disposition, ended)
        }
    };
    if let Some((outcome, error)) = ended {
        let error = error.as_ref().map(|(c, m)| (*c, m.as_str()));
        if let Err(e) = attempts::end(
            &ctx.pool,
            &tenant.id,
            message.job_id,
            attempt,
            outcome,
            error,
        )
        .await
        {
            tracing::warn!(attempt, error = %e, "Could not record the end of an attempt.");
        }
    }
    disposition
}

/// A disposition, and how the attempt ended if that is still to be recorded (None: it
/// will be resumed, or its end was recorded with the job's).
type Settled = (
    Disposition,
    Option<(AttemptOutcome, Option<(&'static str, String)>)>,
);

/// Chunk, embed, upsert. Returns what was stored, with stage timings.
async fn run_stages(
    ctx: &WorkerContext,
    tenant: &Tenant,
    message: &JobMessage,
) -> Result<Outcome, StageError> {
    let mut timings = Map::new();
    let clock = Instant::now();
    let tenant_params = tenant
        .config
        .chunk_params()
        .map_err(|e| StageError::permanent("invalid_configuration", e.to_string()))?;
    let params = message
        .options
        .resolve(&tenant_params)
        .map_err(|e| StageError::permanent("invalid_options", e.to_string()))?;
    let doc = DocumentRef {
        tenant: &tenant.id,
        document_id: message.document_id,
        database: &message.database,
        source_type: &message.source_type,
        metadata: &message.metadata,
    };
    let payloads = if message.text.len() > 256 * 1024 {
        let (text, metadata, tenant_id, database, source_type) = (
            message.text.clone(),
            message.metadata.clone(),
            tenant.id.clone(),
            message.database.clone(),
            message.source_type.clone(),
        );
        let document_id = message.document_id;
        tokio::task::spawn_blocking(move || {
            let doc = DocumentRef {
                tenant: &tenant_id,
                document_id,
                database: &database,
                source_type: &source_type,
                metadata: &metadata,
            };
            ingest::chunk_payloads(doc, &text, &params)
        })
        .await
        .map_err(|e| StageError::retryable("worker_error", e.to_string()))?
    } else {
        ingest::chunk_payloads(doc, &message.text, &params)
    };
    if payloads.is_empty() {
        return Err(StageError::permanent(
            "no_content",
            "the document has no text to index",
        ));
    }
    lap(&mut timings, "chunk", clock);

    let clock = Instant::now();
    let stored_bytes = ingest::stored_bytes(&payloads, ctx.embedder.dimension());
    let chunks = payloads.len() as i32;
    let points = ingest::embed_points(doc, payloads, ctx.embedder.as_ref()).await?;
    lap(&mut timings, "embed", clock);

    let clock = Instant::now();
    let ns = Namespace::new(
        &ctx.settings.queue_prefix,
        &tenant.id,
        &message.database,
        tenant.isolation,
    );
    let spec = VectorSpec {
        dimension: ctx.embedder.dimension(),
        model: ctx.embedder.model().to_owned(),
    };
    ctx.store.ensure_namespace(&ns, &spec).await?;
    ctx.store.upsert(&ns, points).await?;
    lap(&mut timings, "upsert", clock);
    Ok(Outcome {
        chunks,
        stored_bytes,
        timings: Value::Object(timings),
    })
}

fn lap(timings: &mut Map<String, Value>, stage: &str, since: Instant) {
    timings.insert(
        stage.to_owned(),
        json!(since.elapsed().as_secs_f64() * 1000.0),
    );
}

async fn record_finished(
    ctx: &WorkerContext,
    tenant: &Tenant,
    message: &JobMessage,
    mut outcome: Outcome,
    started_at: Instant,
) -> Settled {
    let clock = Instant::now();
    let recorded = ctx
        .finish(&tenant.id, message.job_id, outcome.clone())
        .await;
    if let Value::Object(t) = &mut outcome.timings {
        lap(t, "record", clock);
    }
    match recorded {
        Ok(Ok(())) => {
            tracing::info!(
                chunks = outcome.chunks,
                bytes = outcome.stored_bytes,
                ms = started_at.elapsed().as_millis() as u64,
                "Job finished."
            );
            ctx.metrics
                .job_finished(started_at.elapsed(), &outcome.timings);
            ctx.count_done();
            ctx.job_ended();
            // `finish` ended the attempt in the same transaction.
            (Disposition::Ack, None)
        }
        Ok(Err(quota)) => {
            remove_points(ctx, tenant, message).await;
            ctx.metrics
                .job_failed("quota_exceeded", Some(started_at.elapsed()));
            let reason = quota.to_string();
            let disposition =
                fail_permanently(ctx, tenant, message, "quota_exceeded", &reason).await;
            let ended = matches!(disposition, Disposition::Dead { .. })
                .then_some((AttemptOutcome::Failed, Some(("quota_exceeded", reason))));
            (disposition, ended)
        }
        Err(e) => {
            // The points are written (idempotently); recording them again is safe.
            tracing::warn!(error = %e, "Could not record the finished job; retrying later.");
            let later = Disposition::Later {
                tier: TIER_WAIT,
                why: format!("recording failed: {e}"),
            };
            (later, None)
        }
    }
}

async fn fail_permanently(
    ctx: &WorkerContext,
    tenant: &Tenant,
    message: &JobMessage,
    code: &str,
    reason: &str,
) -> Disposition {
    tracing::warn!(code, error = %reason, "Job failed.");
    remove_points(ctx, tenant, message).await;
    match job_db::fail(&ctx.pool, &tenant.id, message.job_id, code, reason).await {
        Ok(_) => {
            ctx.count_done();
            ctx.job_ended();
            Disposition::Dead {
                reason: format!("{code}: {reason}"),
            }
        }
        Err(e) => database_down(e),
    }
}

/// A failed job writes nothing: remove whatever an attempt may have upserted.
async fn remove_points(ctx: &WorkerContext, tenant: &Tenant, message: &JobMessage) {
    let ns = Namespace::new(
        &ctx.settings.queue_prefix,
        &tenant.id,
        &message.database,
        tenant.isolation,
    );
    if let Err(e) = ctx.store.delete_document(&ns, message.document_id).await {
        tracing::warn!(error = %e, "Could not remove the failed job's points.");
    }
}

/// Postgres down or busy: wait. Any other database error would fail the same way
/// every time, so it goes to the dead-letter queue rather than loop.
fn database_down(e: sqlx::Error) -> Disposition {
    if tenantry::db::is_unavailable(&e) {
        tracing::warn!(error = %e, "Postgres unavailable; the job waits.");
        Disposition::Later {
            tier: TIER_WAIT,
            why: format!("database unavailable: {e}"),
        }
    } else {
        tracing::error!(error = %e, "Database error while processing a job.");
        Disposition::Dead {
            reason: format!("database error: {e}"),
        }
    }
}
