//! What a worker does with one delivery — a signed group of one tenant's jobs — and
//! what then happens to the message.
//!
//! Order of trust: size, then signature, then parse — nothing in a message is
//! believed before its signature checks — then the tenant's status, then each job's
//! state in Postgres, from which the job's document is read. The group's jobs are then
//! processed together: started in one batch, chunked, embedded in one call, upserted
//! into each namespace in one write, and finished in one batch. Every failure is
//! classified per job as permanent (job FAILED, a dead letter of its own, never
//! retried) or retryable (a delayed redelivery of the failed jobs with backoff, up to
//! `TENANTRY_MAX_ATTEMPTS`); waiting that is nobody's failure (tenant suspended,
//! Postgres down before the jobs started) defers the whole message without counting
//! an attempt.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Map, Value, json};
use tenantry::chunk::ChunkParams;
use tenantry::db::attempts::{self, AttemptOutcome};
use tenantry::db::jobs::{self as job_db, Outcome, StartOutcome, StartedJob};
use tenantry::embed::EmbedError;
use tenantry::error_code::Code;
use tenantry::ingest;
use tenantry::job::{JobMessage, JobOptions, JobRef};
use tenantry::tenancy::{DatabaseName, Namespace};
use tenantry::tenant::{Tenant, TenantStatus};
use tenantry::vector::{PointRecord, VectorError, VectorSpec};
use tracing::Instrument;
use uuid::Uuid;

use crate::context::WorkerContext;

/// Retry tier (index into `broker::RETRY_TIERS`) for waiting while the tenant is
/// suspended or Postgres is down.
const TIER_WAIT: usize = 1;
/// Texts above this are chunked off the async threads.
const BLOCKING_CHUNK_BYTES: usize = 256 * 1024;

/// What to do with the delivery once the work is over: publish each action's message
/// (confirmed), then acknowledge. No action: just acknowledge.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disposition {
    pub actions: Vec<Action>,
}

/// A message to publish on the delivery's behalf. `part`: a new message holding some of
/// the delivery's jobs (signed by the worker); `None`: the delivery itself, as it came.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Try again after the delay of `tier`.
    Later {
        tier: usize,
        why: String,
        part: Option<JobMessage>,
    },
    /// Permanently refused: to the dead-letter queue with this reason.
    Dead {
        reason: String,
        part: Option<JobMessage>,
    },
}

impl Disposition {
    fn ack() -> Self {
        Self::default()
    }

    fn later_all(tier: usize, why: impl Into<String>) -> Self {
        Self {
            actions: vec![Action::Later {
                tier,
                why: why.into(),
                part: None,
            }],
        }
    }

    fn dead_all(reason: impl Into<String>) -> Self {
        Self {
            actions: vec![Action::Dead {
                reason: reason.into(),
                part: None,
            }],
        }
    }
}

/// The delivery's jobs `jobs` as a message: the delivery itself if they are all of it.
fn part_of(message: &JobMessage, jobs: Vec<JobRef>) -> Option<JobMessage> {
    (jobs.len() != message.jobs.len()).then(|| JobMessage {
        jobs,
        ..message.clone()
    })
}

/// A failure while processing a started job.
#[derive(Debug, Clone)]
struct StageError {
    code: Code,
    message: String,
    retryable: bool,
}

impl StageError {
    fn permanent(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retryable: false,
        }
    }
    fn retryable(code: Code, message: impl Into<String>) -> Self {
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
                Code::VectorStoreUnavailable
            } else {
                Code::VectorStoreRefused
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
                Code::EmbedderUnavailable
            } else {
                Code::EmbedderRefused
            },
            message: e.to_string(),
            retryable,
        }
    }
}

/// Decides and does the work for one delivered message body.
pub async fn process(ctx: &WorkerContext, body: &[u8], signature: Option<&str>) -> Disposition {
    if body.len() > ctx.max_message_bytes {
        return Disposition::dead_all(format!(
            "message of {} bytes exceeds the limit of {}",
            body.len(),
            ctx.max_message_bytes
        ));
    }
    if let Err(e) = ctx.signer.verify(body, signature) {
        tracing::warn!(error = %e, "Refused an unsigned or forged message.");
        return Disposition::dead_all(e.to_string());
    }
    let message = match JobMessage::from_bytes(body, ctx.max_message_bytes) {
        Ok(m) => m,
        Err(e) => return Disposition::dead_all(e.to_string()),
    };
    let span =
        tracing::info_span!("jobs", tenant_id = %message.tenant_id, jobs = message.jobs.len());
    process_group(ctx, message).instrument(span).await
}

/// One job of the group on its way through the stages.
struct Work {
    reference: JobRef,
    job: StartedJob,
    /// Where the job stands: its points so far, or why it stopped.
    state: Result<Stage, StageError>,
    timings: Map<String, Value>,
}

/// What a job has made so far.
struct Stage {
    params: ChunkParams,
    payloads: Vec<Map<String, Value>>,
    points: Vec<PointRecord>,
    stored_bytes: i64,
}

async fn process_group(ctx: &WorkerContext, message: JobMessage) -> Disposition {
    let tenant = match ctx.tenants.get(&ctx.pool, &message.tenant_id).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return Disposition::dead_all(format!("unknown tenant {}", message.tenant_id));
        }
        Err(e) => return database_down(e),
    };
    match tenant.status {
        TenantStatus::Active => {}
        TenantStatus::Suspended => {
            tracing::debug!("Tenant suspended; the jobs wait.");
            ctx.metrics.job_deferred();
            return Disposition::later_all(TIER_WAIT, "tenant suspended");
        }
        TenantStatus::Inactive => {
            let reason = "the tenant is inactive".to_owned();
            for job in &message.jobs {
                match job_db::fail(
                    &ctx.pool,
                    &tenant.id,
                    job.job_id,
                    Code::TenantInactive,
                    &reason,
                )
                .await
                {
                    Ok(true) => {
                        ctx.metrics.job_failed(Code::TenantInactive, None);
                        ctx.count_done();
                    }
                    Ok(false) => {}
                    Err(e) => return database_down(e),
                }
            }
            ctx.job_ended();
            return Disposition::dead_all(reason);
        }
    }
    let started = match ctx.start(&tenant.id, &message.job_ids()).await {
        Ok(s) => s,
        Err(e) => return database_down(e),
    };
    let clock = Instant::now();
    let mut disposition = Disposition::ack();
    let mut works = Vec::with_capacity(started.len());
    for (reference, outcome) in message.jobs.iter().zip(started) {
        match outcome {
            StartOutcome::Started(job) => works.push(Work {
                reference: reference.clone(),
                job: *job,
                state: Err(StageError::retryable(Code::NotStarted, "not processed")),
                timings: Map::new(),
            }),
            StartOutcome::AlreadyDone(status) => {
                tracing::debug!(job_id = %reference.job_id, %status, "Duplicate delivery of a job ended or held by another delivery.");
            }
            StartOutcome::Unknown => disposition.actions.push(Action::Dead {
                reason: format!("no job {} for tenant {}", reference.job_id, tenant.id),
                part: part_of(&message, vec![reference.clone()]),
            }),
        }
    }
    if works.is_empty() {
        return disposition;
    }

    chunk(ctx, &tenant, &mut works).await;
    embed(ctx, &mut works).await;
    upsert(ctx, &tenant, &mut works).await;
    record(ctx, &tenant, &message, works, clock, &mut disposition).await;
    disposition
}

/// Resolves each job's chunking and chunks it (large texts off the async threads).
async fn chunk(ctx: &WorkerContext, tenant: &Tenant, works: &mut [Work]) {
    let tenant_params = tenant.config.chunk_params();
    for work in works.iter_mut() {
        let clock = Instant::now();
        let params = match &tenant_params {
            Ok(p) => work
                .job
                .options
                .resolve(p)
                .map_err(|e| StageError::permanent(Code::InvalidOptions, e.to_string())),
            Err(e) => Err(StageError::permanent(
                Code::InvalidConfiguration,
                e.to_string(),
            )),
        };
        let params = match params {
            Ok(p) => p,
            Err(e) => {
                work.state = Err(e);
                continue;
            }
        };
        let job = &work.job;
        let payloads = if job.doc.text.len() > BLOCKING_CHUNK_BYTES {
            let job = job.clone();
            tokio::task::spawn_blocking(move || {
                ingest::chunk_payloads(job.doc.reference(), &job.doc.text, &params)
            })
            .await
            .map_err(|e| StageError::retryable(Code::WorkerError, e.to_string()))
        } else {
            Ok(ingest::chunk_payloads(
                job.doc.reference(),
                &job.doc.text,
                &params,
            ))
        };
        work.state = match payloads {
            Ok(p) if p.is_empty() => Err(StageError::permanent(
                Code::NoContent,
                "the document has no text to index",
            )),
            Ok(payloads) => Ok(Stage {
                params,
                stored_bytes: ingest::stored_bytes(&payloads, ctx.embedder.dimension()),
                payloads,
                points: Vec::new(),
            }),
            Err(e) => Err(e),
        };
        lap(&mut work.timings, "chunk", clock);
    }
}

/// Embeds every chunked job's texts in one call. A permanent refusal of the whole call
/// is retried job by job, so one job the embedder refuses fails alone.
async fn embed(ctx: &WorkerContext, works: &mut [Work]) {
    let clock = Instant::now();
    let ready: Vec<usize> = (0..works.len())
        .filter(|&i| works[i].state.is_ok())
        .collect();
    let texts: Vec<&str> = ready
        .iter()
        .filter_map(|&i| works[i].state.as_ref().ok())
        .flat_map(|s| s.payloads.iter().map(ingest::payload_text))
        .collect();
    if texts.is_empty() {
        return;
    }
    let together = ctx.embedder.embed(&texts).await;
    drop(texts);
    match together {
        Ok(vectors) => {
            let mut vectors = vectors.into_iter();
            for &i in &ready {
                let work = &mut works[i];
                if let Ok(stage) = &mut work.state {
                    let mine: Vec<Vec<f32>> = vectors.by_ref().take(stage.payloads.len()).collect();
                    let payloads = std::mem::take(&mut stage.payloads);
                    stage.points = ingest::points(
                        work.job.doc.reference(),
                        payloads,
                        mine,
                        ctx.embedder.model(),
                    );
                }
            }
        }
        Err(e) if e.is_retryable() || ready.len() == 1 => {
            let failure = StageError::from(e);
            for &i in &ready {
                works[i].state = Err(failure.clone());
            }
        }
        Err(_) => {
            for &i in &ready {
                let work = &mut works[i];
                if let Ok(stage) = &mut work.state {
                    let payloads = std::mem::take(&mut stage.payloads);
                    match ingest::embed_points(
                        work.job.doc.reference(),
                        payloads,
                        ctx.embedder.as_ref(),
                    )
                    .await
                    {
                        Ok(points) => stage.points = points,
                        Err(e) => work.state = Err(e.into()),
                    }
                }
            }
        }
    }
    for &i in &ready {
        lap(&mut works[i].timings, "embed", clock);
    }
}

/// Upserts the jobs' points, one write per namespace. Durable at the store's next
/// checkpoint; until then the jobs' texts stay in Postgres (see `tenantry::checkpoint`).
async fn upsert(ctx: &WorkerContext, tenant: &Tenant, works: &mut [Work]) {
    let clock = Instant::now();
    let mut by_database: BTreeMap<DatabaseName, Vec<usize>> = BTreeMap::new();
    for (i, work) in works.iter().enumerate() {
        if work.state.is_ok() {
            by_database
                .entry(work.job.doc.database.clone())
                .or_default()
                .push(i);
        }
    }
    let spec = VectorSpec {
        dimension: ctx.embedder.dimension(),
        model: ctx.embedder.model().to_owned(),
    };
    for (database, members) in by_database {
        let ns = namespace(ctx, tenant, &database);
        let points: Vec<PointRecord> = members
            .iter()
            .filter_map(|&i| works[i].state.as_ref().ok())
            .flat_map(|s| s.points.iter().cloned())
            .collect();
        let written = match ctx.store.ensure_namespace(&ns, &spec).await {
            Ok(()) => ctx.store.upsert_deferred(&ns, points).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            let failure = StageError::from(e);
            for &i in &members {
                works[i].state = Err(failure.clone());
            }
        }
        for &i in &members {
            lap(&mut works[i].timings, "upsert", clock);
        }
    }
}

fn namespace(ctx: &WorkerContext, tenant: &Tenant, database: &DatabaseName) -> Namespace {
    Namespace::new(
        &ctx.settings.queue_prefix,
        &tenant.id,
        database,
        tenant.isolation,
    )
}

/// Records every job's outcome: the finished ones in one batch, then each failure.
async fn record(
    ctx: &WorkerContext,
    tenant: &Tenant,
    message: &JobMessage,
    works: Vec<Work>,
    since: Instant,
    disposition: &mut Disposition,
) {
    let mut done: Vec<(Work, Outcome)> = Vec::new();
    let mut failed: Vec<(Work, StageError)> = Vec::new();
    for mut work in works {
        match std::mem::replace(
            &mut work.state,
            Err(StageError::retryable(Code::NotStarted, "recorded")),
        ) {
            Ok(stage) => {
                let outcome = Outcome {
                    chunks: stage.points.len() as i32,
                    stored_bytes: stage.stored_bytes,
                    timings: Value::Object(work.timings.clone()),
                    params: serde_json::to_value(JobOptions::pinned(&stage.params))
                        .unwrap_or_default(),
                };
                done.push((work, outcome));
            }
            Err(e) => failed.push((work, e)),
        }
    }
    let mut later: BTreeMap<usize, (Vec<JobRef>, String)> = BTreeMap::new();
    if !done.is_empty() {
        let clock = Instant::now();
        let batch: Vec<_> = done
            .iter()
            .map(|(w, o)| (tenant.id.clone(), w.job.doc.job_id, o.clone()))
            .collect();
        let recorded = ctx.finish(batch).await;
        for ((work, mut outcome), result) in done.into_iter().zip(recorded) {
            if let Value::Object(t) = &mut outcome.timings {
                lap(t, "record", clock);
            }
            let span =
                tracing::info_span!("job", tenant_id = %tenant.id, job_id = %work.job.doc.job_id);
            let _entered = span.enter();
            match result {
                Ok(Ok(())) => {
                    tracing::info!(
                        chunks = outcome.chunks,
                        bytes = outcome.stored_bytes,
                        ms = since.elapsed().as_millis() as u64,
                        "Job finished."
                    );
                    ctx.metrics.job_finished(since.elapsed(), &outcome.timings);
                    ctx.count_done();
                }
                Ok(Err(quota)) => {
                    let e = StageError::permanent(Code::QuotaExceeded, quota.to_string());
                    failed.push((work, e));
                }
                Err(e) => {
                    // The points are written (idempotently); recording them again is safe.
                    tracing::warn!(error = %e, "Could not record the finished job; retrying later.");
                    let entry = later
                        .entry(TIER_WAIT)
                        .or_insert_with(|| (Vec::new(), format!("recording failed: {e}")));
                    entry.0.push(work.reference);
                }
            }
        }
    }
    for (work, e) in failed {
        let span =
            tracing::info_span!("job", tenant_id = %tenant.id, job_id = %work.job.doc.job_id);
        match fail_or_retry(ctx, tenant, &work, e).instrument(span).await {
            Settled::Retry { tier, why } => {
                let entry = later.entry(tier).or_insert_with(|| (Vec::new(), why));
                entry.0.push(work.reference);
            }
            Settled::Dead { reason } => disposition.actions.push(Action::Dead {
                reason,
                part: part_of(message, vec![work.reference]),
            }),
            Settled::Wait(why) => {
                let entry = later.entry(TIER_WAIT).or_insert_with(|| (Vec::new(), why));
                entry.0.push(work.reference);
            }
        }
    }
    for (tier, (jobs, why)) in later {
        disposition.actions.push(Action::Later {
            tier,
            why,
            part: part_of(message, jobs),
        });
    }
    ctx.job_ended();
}

/// How a failed job was settled.
enum Settled {
    /// Retry after the delay of `tier`.
    Retry { tier: usize, why: String },
    /// Failed for good: dead-letter it with `reason`.
    Dead { reason: String },
    /// Postgres could not record the failure: redeliver later, as it is.
    Wait(String),
}

async fn fail_or_retry(
    ctx: &WorkerContext,
    tenant: &Tenant,
    work: &Work,
    e: StageError,
) -> Settled {
    let attempt = work.job.attempt;
    let job_id = work.job.doc.job_id;
    if e.retryable && (attempt as u32) < ctx.settings.worker.max_attempts {
        tracing::warn!(attempt, code = e.code.as_str(), error = %e.message, "Attempt failed; retrying later.");
        ctx.metrics.job_retried(e.code);
        if let Err(db) =
            job_db::retry_later(&ctx.pool, &tenant.id, job_id, e.code, &e.message).await
        {
            // The next delivery resumes the job.
            tracing::warn!(error = %db, "Could not record the retry.");
        }
        end_attempt(
            ctx,
            tenant,
            job_id,
            attempt,
            AttemptOutcome::Retry,
            Some((e.code, &e.message)),
        )
        .await;
        return Settled::Retry {
            tier: (attempt as usize).saturating_sub(1),
            why: e.message,
        };
    }
    let code = e.code;
    // A retryable failure that used up its attempts says so; a permanent one failed at
    // once and is not retried.
    let reason = if e.retryable {
        format!("{} (after {attempt} attempts)", e.message)
    } else {
        e.message
    };
    tracing::warn!(code = code.as_str(), error = %reason, "Job failed.");
    // A failed job writes nothing: remove whatever an attempt may have upserted.
    let ns = namespace(ctx, tenant, &work.job.doc.database);
    if let Err(e) = ctx
        .store
        .delete_document(&ns, work.job.doc.document_id)
        .await
    {
        tracing::warn!(error = %e, "Could not remove the failed job's points.");
    }
    match job_db::fail(&ctx.pool, &tenant.id, job_id, code, &reason).await {
        Ok(_) => {
            ctx.metrics.job_failed(code, None);
            ctx.count_done();
            end_attempt(
                ctx,
                tenant,
                job_id,
                attempt,
                AttemptOutcome::Failed,
                Some((code, &reason)),
            )
            .await;
            Settled::Dead {
                reason: format!("{code}: {reason}"),
            }
        }
        Err(e) => match database_down(e).actions.pop() {
            Some(Action::Dead { reason, .. }) => Settled::Dead { reason },
            Some(Action::Later { why, .. }) => Settled::Wait(why),
            None => Settled::Wait("database unavailable".into()),
        },
    }
}

async fn end_attempt(
    ctx: &WorkerContext,
    tenant: &Tenant,
    job_id: Uuid,
    attempt: i32,
    outcome: AttemptOutcome,
    error: Option<(Code, &str)>,
) {
    if let Err(e) = attempts::end(&ctx.pool, &tenant.id, job_id, attempt, outcome, error).await {
        tracing::warn!(attempt, error = %e, "Could not record the end of an attempt.");
    }
}

fn lap(timings: &mut Map<String, Value>, stage: &str, since: Instant) {
    timings.insert(
        stage.to_owned(),
        json!(since.elapsed().as_secs_f64() * 1000.0),
    );
}

/// Postgres down or busy: wait. Any other database error would fail the same way
/// every time, so it goes to the dead-letter queue rather than loop.
fn database_down(e: sqlx::Error) -> Disposition {
    if tenantry::db::is_unavailable(&e) {
        tracing::warn!(error = %e, "Postgres unavailable; the jobs wait.");
        Disposition::later_all(TIER_WAIT, format!("database unavailable: {e}"))
    } else {
        tracing::error!(error = %e, "Database error while processing jobs.");
        Disposition::dead_all(format!("database error: {e}"))
    }
}
