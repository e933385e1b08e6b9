//! Queries on `jobs` and `documents`: submission, the backlog the pump publishes
//! from, and every state change a worker makes.
//!
//! A job's life: `PENDING` in the backlog (`published_at IS NULL`) → `PENDING` on
//! the broker (published) → `PROCESSING` (holds a PROCESSING_JOBS slot) →
//! `FINISHED` | `FAILED` | back to `PENDING` for a retry. `CANCELLED` is reachable
//! while `PENDING`. Each transition is one transaction that also moves the usage
//! counters it affects, so counters and rows cannot drift apart.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::{Acquire, PgConnection, PgPool, Row};
use uuid::Uuid;

use super::attempts;
use crate::job::{JobOptions, JobStatus, Priority};
use crate::quota::{self, QuotaError, QuotaExceeded};
use crate::tenancy::{DatabaseName, TenantId};

/// How long an `Idempotency-Key` returns the job it first created.
pub const IDEMPOTENCY_WINDOW_HOURS: i64 = 24;

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    pub job_id: Uuid,
    pub document_id: Uuid,
    pub status: JobStatus,
    pub database: String,
    pub source_type: String,
    pub priority: Priority,
    pub attempts: i32,
    pub chunks: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// From first start to end, in milliseconds.
    pub duration_ms: Option<i64>,
    /// Whether the job has been handed to the broker (false: waiting in the backlog).
    pub queued: bool,
    pub error: Option<JobErrorView>,
    /// Milliseconds per stage of the last attempt.
    pub timings: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobErrorView {
    pub code: String,
    pub message: String,
}

const VIEW_COLUMNS: &str = "j.id, j.document_id, j.status, d.database, d.source_type, j.priority, j.attempts, \
    j.chunks, j.created_at, j.started_at, j.finished_at, j.published_at, j.error_code, j.error, j.timings";

fn view_from_row(row: &PgRow) -> Result<JobView, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let started_at: Option<DateTime<Utc>> = row.try_get("started_at")?;
    let finished_at: Option<DateTime<Utc>> = row.try_get("finished_at")?;
    let published_at: Option<DateTime<Utc>> = row.try_get("published_at")?;
    let error_code: Option<String> = row.try_get("error_code")?;
    let error: Option<String> = row.try_get("error")?;
    Ok(JobView {
        job_id: row.try_get("id")?,
        document_id: row.try_get("document_id")?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode("unknown job status".into()))?,
        database: row.try_get("database")?,
        source_type: row.try_get("source_type")?,
        priority: Priority::from_i16(row.try_get("priority")?),
        attempts: row.try_get("attempts")?,
        chunks: row.try_get("chunks")?,
        created_at: row.try_get("created_at")?,
        started_at,
        finished_at,
        duration_ms: match (started_at, finished_at) {
            (Some(s), Some(f)) => Some((f - s).num_milliseconds()),
            _ => None,
        },
        queued: published_at.is_some(),
        error: error_code.map(|code| JobErrorView {
            code,
            message: error.unwrap_or_default(),
        }),
        timings: row.try_get("timings")?,
    })
}

/// One document to submit.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    pub job_id: Uuid,
    pub document_id: Uuid,
    pub tenant: &'a TenantId,
    pub database: &'a DatabaseName,
    pub source_type: &'a str,
    pub text: &'a str,
    pub metadata: &'a Map<String, Value>,
    pub options: &'a JobOptions,
    pub priority: Priority,
    pub idempotency_key: Option<&'a str>,
    /// Bytes reserved against STORAGE_MB until the worker measures the real size.
    pub reserved_bytes: i64,
    /// Embedding model and dimension the database is (or will be) bound to.
    pub model: &'a str,
    pub dimension: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// A new job, waiting in the backlog.
    Created(JobView),
    /// The job an earlier request with the same idempotency key created.
    Existing(JobView),
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    #[error(
        "database {database} holds vectors of model {model} ({dimension} dimensions); this fleet embeds with {requested}"
    )]
    ModelMismatch {
        database: String,
        model: String,
        dimension: i32,
        requested: String,
    },
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

impl From<QuotaError> for SubmitError {
    fn from(e: QuotaError) -> Self {
        match e {
            QuotaError::Exceeded(q) => Self::Quota(q),
            QuotaError::Sql(s) => Self::Sql(s),
        }
    }
}

/// Records a document and its job in the backlog, reserving its quota, in one
/// transaction: either all of it happens or none of it does.
pub async fn submit(pool: &PgPool, new: &NewJob<'_>) -> Result<Submitted, SubmitError> {
    let mut tx = pool.begin().await?;
    if let Some(key) = new.idempotency_key
        && let Some(existing) = find_by_idempotency_key(&mut tx, new.tenant, key).await?
    {
        return Ok(Submitted::Existing(existing));
    }
    if let Some(view) = insert_job(&mut tx, new).await? {
        tx.commit().await?;
        return Ok(Submitted::Created(view));
    }
    // A concurrent request with the same key won; undo ours, answer with theirs.
    tx.rollback().await?;
    let mut conn = pool.acquire().await?;
    let key = new.idempotency_key.unwrap_or_default();
    match find_by_idempotency_key(&mut conn, new.tenant, key).await? {
        Some(existing) => Ok(Submitted::Existing(existing)),
        None => Err(SubmitError::Sql(sqlx::Error::RowNotFound)),
    }
}

/// Records many documents (without idempotency keys) in one transaction, each accepted
/// or refused on its own: a refused one's writes are undone to its savepoint, the
/// others stay. One commit for the lot, and the tenant's usage row is locked once
/// rather than once per document. A database error fails the whole call.
pub async fn submit_many(
    pool: &PgPool,
    news: &[NewJob<'_>],
) -> Result<Vec<Result<JobView, SubmitError>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut outcomes = Vec::with_capacity(news.len());
    for new in news {
        // A savepoint: the connection is already inside `tx`.
        let mut document = Acquire::begin(&mut *tx).await?;
        match insert_job(&mut document, new).await {
            Ok(Some(view)) => {
                document.commit().await?;
                outcomes.push(Ok(view));
            }
            Ok(None) => return Err(sqlx::Error::RowNotFound),
            Err(SubmitError::Sql(e)) => return Err(e),
            Err(refused) => {
                document.rollback().await?;
                outcomes.push(Err(refused));
            }
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// The writes of one submission inside the caller's transaction; `None` if another
/// job holds its idempotency key. The quota is reserved last, so the tenant's usage
/// row stays locked only from there to the commit.
async fn insert_job(
    conn: &mut PgConnection,
    new: &NewJob<'_>,
) -> Result<Option<JobView>, SubmitError> {
    ensure_database(conn, new).await?;
    let (job_id, document_id) = (new.job_id, new.document_id);
    sqlx::query(
        "INSERT INTO documents (id, tenant_id, database, source_type, metadata, text_bytes, reserved_bytes)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(document_id)
    .bind(new.tenant.as_str())
    .bind(new.database.as_str())
    .bind(new.source_type)
    .bind(Value::Object(new.metadata.clone()))
    .bind(new.text.len() as i64)
    .bind(new.reserved_bytes)
    .execute(&mut *conn)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, tenant_id, document_id, priority, body, options, idempotency_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING id",
    )
    .bind(job_id)
    .bind(new.tenant.as_str())
    .bind(document_id)
    .bind(new.priority.as_i16())
    .bind(new.text)
    .bind(serde_json::to_value(new.options).unwrap_or_default())
    .bind(new.idempotency_key)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_none() {
        return Ok(None);
    }
    let view = get_on(conn, new.tenant, job_id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    quota::reserve_document(conn, new.tenant, new.reserved_bytes).await?;
    Ok(Some(view))
}

async fn find_by_idempotency_key(
    conn: &mut PgConnection,
    tenant: &TenantId,
    key: &str,
) -> Result<Option<JobView>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {VIEW_COLUMNS}, j.created_at > now() - make_interval(hours => $3) AS fresh
           FROM jobs j JOIN documents d ON d.id = j.document_id
          WHERE j.tenant_id = $1 AND j.idempotency_key = $2"
    )))
    .bind(tenant.as_str())
    .bind(key)
    .bind(IDEMPOTENCY_WINDOW_HOURS as i32)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    if row.try_get::<bool, _>("fresh")? {
        return view_from_row(&row).map(Some);
    }
    // Older than the window: the key is free again.
    sqlx::query(
        "UPDATE jobs SET idempotency_key = NULL WHERE tenant_id = $1 AND idempotency_key = $2",
    )
    .bind(tenant.as_str())
    .bind(key)
    .execute(&mut *conn)
    .await?;
    Ok(None)
}

/// Makes sure the job's database exists, creating it (and taking a
/// VECTOR_COLLECTIONS unit) on first use; refuses a model or dimension mismatch.
async fn ensure_database(conn: &mut PgConnection, new: &NewJob<'_>) -> Result<(), SubmitError> {
    let created = sqlx::query(
        "INSERT INTO databases (tenant_id, name, model, dimension) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, name) DO NOTHING RETURNING name",
    )
    .bind(new.tenant.as_str())
    .bind(new.database.as_str())
    .bind(new.model)
    .bind(new.dimension)
    .fetch_optional(&mut *conn)
    .await?;
    if created.is_some() {
        quota::reserve_collection(conn, new.tenant).await?;
        return Ok(());
    }
    let (model, dimension): (String, i32) =
        sqlx::query_as("SELECT model, dimension FROM databases WHERE tenant_id = $1 AND name = $2")
            .bind(new.tenant.as_str())
            .bind(new.database.as_str())
            .fetch_one(&mut *conn)
            .await?;
    if model != new.model || dimension != new.dimension {
        return Err(SubmitError::ModelMismatch {
            database: new.database.to_string(),
            model,
            dimension,
            requested: format!("{} ({} dimensions)", new.model, new.dimension),
        });
    }
    Ok(())
}

/// One job of one tenant, or None (also when it belongs to someone else).
pub async fn get(
    pool: &PgPool,
    tenant: &TenantId,
    job_id: Uuid,
) -> Result<Option<JobView>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    get_on(&mut conn, tenant, job_id).await
}

async fn get_on(
    conn: &mut PgConnection,
    tenant: &TenantId,
    job_id: Uuid,
) -> Result<Option<JobView>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {VIEW_COLUMNS} FROM jobs j JOIN documents d ON d.id = j.document_id
          WHERE j.tenant_id = $1 AND j.id = $2"
    )))
    .bind(tenant.as_str())
    .bind(job_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(view_from_row).transpose()
}

/// A tenant's jobs, newest first, optionally of one status; `after` is the last job
/// id of the previous page.
pub async fn list(
    pool: &PgPool,
    tenant: &TenantId,
    status: Option<JobStatus>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<JobView>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {VIEW_COLUMNS} FROM jobs j JOIN documents d ON d.id = j.document_id
          WHERE j.tenant_id = $1
            AND ($2::text IS NULL OR j.status = $2)
            AND ($3::uuid IS NULL OR (j.created_at, j.id) <
                 (SELECT c.created_at, c.id FROM jobs c WHERE c.tenant_id = $1 AND c.id = $3))
          ORDER BY j.created_at DESC, j.id DESC
          LIMIT $4"
    )))
    .bind(tenant.as_str())
    .bind(status.map(JobStatus::as_str))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(view_from_row).collect()
}

#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    Cancelled(Box<JobView>),
    NotFound,
    /// The job has started or ended; its status is given.
    NotCancellable(JobStatus),
}

/// Cancels a job that is not being processed and gives its quota back. Whether it
/// had written points in an earlier attempt is returned (attempts > 0), so the
/// caller can remove them.
pub async fn cancel(
    pool: &PgPool,
    tenant: &TenantId,
    job_id: Uuid,
) -> Result<CancelOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(
        "SELECT status, document_id FROM jobs WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(CancelOutcome::NotFound);
    };
    let status: String = row.try_get("status")?;
    let status = JobStatus::parse(&status).unwrap_or(JobStatus::Failed);
    if status != JobStatus::Pending {
        return Ok(CancelOutcome::NotCancellable(status));
    }
    let document_id: Uuid = row.try_get("document_id")?;
    sqlx::query(
        "UPDATE jobs SET status = 'CANCELLED', finished_at = now(), updated_at = now(), body = NULL,
                error_code = 'cancelled', error = 'cancelled by the tenant'
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .execute(&mut *tx)
    .await?;
    release_document_quota(&mut tx, tenant, document_id, "DELETED").await?;
    let view = get_on(&mut tx, tenant, job_id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    tx.commit().await?;
    Ok(CancelOutcome::Cancelled(Box::new(view)))
}

/// Moves a document out of the quota (once: `holds_quota` guards against doing it twice).
async fn release_document_quota(
    conn: &mut PgConnection,
    tenant: &TenantId,
    document_id: Uuid,
    state: &str,
) -> Result<(), sqlx::Error> {
    let held: Option<(bool, i64)> = sqlx::query_as(
        "SELECT holds_quota, reserved_bytes FROM documents WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
    )
    .bind(tenant.as_str())
    .bind(document_id)
    .fetch_optional(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE documents SET holds_quota = false, reserved_bytes = 0, state = $3,
                deleted_at = CASE WHEN $3 = 'DELETED' THEN now() ELSE deleted_at END
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.as_str())
    .bind(document_id)
    .bind(state)
    .execute(&mut *conn)
    .await?;
    if let Some((true, bytes)) = held {
        quota::release_document(conn, tenant, bytes).await?;
    }
    Ok(())
}

/// A backlog job claimed for publishing.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub job_id: Uuid,
    pub tenant: TenantId,
    pub document_id: Uuid,
    pub database: DatabaseName,
    pub source_type: String,
    pub metadata: Map<String, Value>,
    pub text: String,
    pub options: JobOptions,
    pub priority: Priority,
    pub created_at: DateTime<Utc>,
}

/// How much of a tenant's work may be on the broker (published, not yet ended) at once.
///
/// The broker queue is FIFO, so what bounds a newcomer's wait is how much *other*
/// work sits ahead of it: at most the fleet window. And since every tenant keeps its
/// window full while it has a backlog, each one's share of the workers' time is its
/// share of the jobs in flight, which these windows make proportional to its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Guaranteed in flight per unit of plan weight, whatever else is running.
    pub tenant: i64,
    /// Total in flight the pumps aim for. While the fleet is below it, a tenant may
    /// go beyond its guarantee up to its weighted share of this window — so one
    /// tenant alone can keep every worker busy, and yields as others arrive.
    pub fleet: i64,
}

/// Claims, inside `tx`, up to `max` backlog jobs to publish, fairly (see [`Windows`]).
/// Each active tenant with a backlog gets `room` = its window (the larger of its
/// guarantee and, while the fleet is below its window, its weighted share of it, but
/// never more than its PROCESSING_JOBS limit: more could not run at once, and workers
/// would only defer them) minus what it has in flight; its own jobs are taken by priority, then age. When
/// `max` cuts the round short, tenants are served round-robin (every tenant's first
/// job, then every tenant's second, …) in random order, so none is favoured by its
/// name. Tenants with a backlog are found with a loose index scan (one index probe
/// per tenant, however deep its backlog), and a per-tenant advisory lock keeps two
/// pumps from filling one tenant's window twice. Claimed rows stay locked until `tx`
/// ends: publish them, then [`mark_published`], then commit.
pub async fn claim_backlog(
    conn: &mut PgConnection,
    windows: Windows,
    max: i64,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH RECURSIVE backlog AS (
             (SELECT tenant_id FROM jobs WHERE status = 'PENDING' AND published_at IS NULL
               ORDER BY tenant_id LIMIT 1)
           UNION ALL
             SELECT (SELECT j.tenant_id FROM jobs j
                      WHERE j.status = 'PENDING' AND j.published_at IS NULL AND j.tenant_id > b.tenant_id
                      ORDER BY j.tenant_id LIMIT 1)
               FROM backlog b WHERE b.tenant_id IS NOT NULL
         ),
         active AS (
             SELECT b.tenant_id, l.weight, l.processing_jobs,
                    (SELECT count(*) FROM jobs f
                      WHERE f.tenant_id = b.tenant_id
                        AND f.status IN ('PENDING', 'PROCESSING')
                        AND f.published_at IS NOT NULL) AS in_flight
               FROM backlog b
               JOIN tenants t ON t.id = b.tenant_id
               JOIN tenant_limits l ON l.tenant_id = b.tenant_id
              WHERE b.tenant_id IS NOT NULL
                AND t.status = 'ACTIVE'
                AND COALESCE((t.config ->> 'enable_auto_processing')::boolean, true)
         ),
         fleet AS (
             SELECT (SELECT count(*) FROM jobs
                      WHERE status IN ('PENDING', 'PROCESSING') AND published_at IS NOT NULL) AS in_flight,
                    (SELECT GREATEST(COALESCE(sum(weight), 0), 1) FROM active) AS weight
         ),
         eligible AS (
             SELECT a.tenant_id,
                    LEAST(GREATEST($1 * a.weight,
                                   CASE WHEN f.in_flight < $3 THEN ($3 * a.weight) / f.weight ELSE 0 END),
                          a.processing_jobs)
                      - a.in_flight AS room
               FROM active a CROSS JOIN fleet f
         ),
         locked AS (
             SELECT tenant_id, room FROM eligible
              WHERE room > 0 AND pg_try_advisory_xact_lock(7310, hashtext(tenant_id))
         ),
         picked AS (
             SELECT j.*, row_number() OVER (PARTITION BY j.tenant_id
                                            ORDER BY j.priority DESC, j.created_at, j.id) AS turn
               FROM locked e
               CROSS JOIN LATERAL (
                    SELECT q.id, q.tenant_id, q.document_id, q.body, q.options, q.priority, q.created_at
                      FROM jobs q
                     WHERE q.tenant_id = e.tenant_id AND q.status = 'PENDING' AND q.published_at IS NULL
                     ORDER BY q.priority DESC, q.created_at, q.id
                     LIMIT e.room
                       FOR UPDATE SKIP LOCKED) j
         )
         SELECT p.id, p.tenant_id, p.document_id, p.body, p.options, p.priority, p.created_at,
                d.database, d.source_type, d.metadata
           FROM picked p
           JOIN documents d ON d.id = p.document_id
          ORDER BY p.turn, random()
          LIMIT $2",
    )
    .bind(windows.tenant)
    .bind(max)
    .bind(windows.fleet)
    .fetch_all(&mut *conn)
    .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let tenant: String = row.try_get("tenant_id")?;
        let options: Value = row.try_get("options")?;
        let metadata: Value = row.try_get("metadata")?;
        claimed.push(ClaimedJob {
            job_id: row.try_get("id")?,
            tenant: TenantId::parse(&tenant).map_err(|e| sqlx::Error::Decode(e.into()))?,
            document_id: row.try_get("document_id")?,
            database: DatabaseName::parse(&row.try_get::<String, _>("database")?)
                .map_err(|e| sqlx::Error::Decode(e.into()))?,
            source_type: row.try_get("source_type")?,
            metadata: match metadata {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            text: row
                .try_get::<Option<String>, _>("body")?
                .unwrap_or_default(),
            options: serde_json::from_value(options).unwrap_or_default(),
            priority: Priority::from_i16(row.try_get("priority")?),
            created_at: row.try_get("created_at")?,
        });
    }
    Ok(claimed)
}

/// Marks claimed jobs as handed to the broker.
pub async fn mark_published(conn: &mut PgConnection, job_ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE jobs SET published_at = now(), updated_at = now() WHERE id = ANY($1)")
        .bind(job_ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Number of jobs waiting in the backlog (not yet on the broker), all tenants.
pub async fn backlog_size(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status = 'PENDING' AND published_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

/// What a worker may do with a delivered job.
#[derive(Debug, Clone, PartialEq)]
pub enum StartOutcome {
    /// Go ahead: the job is PROCESSING and holds a slot. `attempt` is 1-based.
    Started { attempt: i32, reserved_bytes: i64 },
    /// All the tenant's PROCESSING_JOBS slots are taken: try again later.
    NoSlot,
    /// Already ended (a redelivery after the work was recorded): just acknowledge.
    AlreadyDone(JobStatus),
    /// No such job for this tenant.
    Unknown,
}

/// Starts (or resumes, after a crash) processing jobs, in one transaction (one commit,
/// each tenant's usage row locked once): for each, takes a PROCESSING_JOBS slot unless
/// the job already holds one and counts the attempt. Only a database error fails the
/// call, for all of them.
pub async fn begin_processing_many(
    pool: &PgPool,
    jobs: &[(TenantId, Uuid)],
    worker_id: &str,
) -> Result<Vec<StartOutcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut started: Vec<Option<StartOutcome>> = (0..jobs.len()).map(|_| None).collect();
    for i in in_tenant_order(jobs.len(), |i| &jobs[i].0) {
        let (tenant, job_id) = &jobs[i];
        started[i] = Some(begin_in(&mut tx, tenant, *job_id, worker_id).await?);
    }
    tx.commit().await?;
    Ok(started.into_iter().flatten().collect())
}

/// Indices `0..len` ordered by tenant: batches lock tenants' usage rows in one order,
/// so two batches never wait on each other in a cycle.
fn in_tenant_order<'a>(len: usize, tenant: impl Fn(usize) -> &'a TenantId) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.sort_by(|&a, &b| tenant(a).as_str().cmp(tenant(b).as_str()));
    order
}

/// The writes of one start inside the caller's transaction. Refusals (no slot, ended,
/// unknown) write nothing.
async fn begin_in(
    tx: &mut PgConnection,
    tenant: &TenantId,
    job_id: Uuid,
    worker_id: &str,
) -> Result<StartOutcome, sqlx::Error> {
    let row = sqlx::query(
        "SELECT j.status, j.holds_slot, d.reserved_bytes FROM jobs j JOIN documents d ON d.id = j.document_id
          WHERE j.tenant_id = $1 AND j.id = $2 FOR UPDATE OF j",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(StartOutcome::Unknown);
    };
    let status: String = row.try_get("status")?;
    let status = JobStatus::parse(&status).unwrap_or(JobStatus::Failed);
    if status.is_terminal() {
        return Ok(StartOutcome::AlreadyDone(status));
    }
    let holds_slot: bool = row.try_get("holds_slot")?;
    if !holds_slot && !quota::acquire_processing_slot(tx, tenant).await? {
        return Ok(StartOutcome::NoSlot);
    }
    // clock_timestamp(), not now(): the moment the slot is held, not the start of the
    // transaction, so [started_at, finished_at] lies inside the time the job held its
    // PROCESSING_JOBS slot (and the slot's exclusivity shows in the records).
    let attempt: i32 = sqlx::query_scalar(
        "UPDATE jobs SET status = 'PROCESSING', holds_slot = true, attempts = attempts + 1,
                started_at = COALESCE(started_at, clock_timestamp()), worker_id = $3, updated_at = now(),
                published_at = COALESCE(published_at, now())
          WHERE tenant_id = $1 AND id = $2 RETURNING attempts",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .bind(worker_id)
    .fetch_one(&mut *tx)
    .await?;
    attempts::start(tx, tenant, job_id, attempt, worker_id).await?;
    let reserved_bytes: i64 = row.try_get("reserved_bytes")?;
    Ok(StartOutcome::Started {
        attempt,
        reserved_bytes,
    })
}

/// What a finished job stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub chunks: i32,
    /// Measured bytes: payload JSON plus vector bytes of every point.
    pub stored_bytes: i64,
    pub timings: Value,
}

/// Records jobs FINISHED, in one transaction (one commit, each tenant's usage row
/// locked once): for each, settles its storage to the measured size, marks the document
/// ingested, releases the slot, drops the kept text. A job whose measured size does not
/// fit the tenant's storage quota is undone to its savepoint and its refusal returned
/// (the caller removes the points and fails the job); the others are recorded. Only a
/// database error fails the call, for all of them.
pub async fn finish_many(
    pool: &PgPool,
    jobs: &[(TenantId, Uuid, Outcome)],
) -> Result<Vec<Result<(), QuotaExceeded>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut finished: Vec<Option<Result<(), QuotaExceeded>>> =
        (0..jobs.len()).map(|_| None).collect();
    for i in in_tenant_order(jobs.len(), |i| &jobs[i].0) {
        let (tenant, job_id, outcome) = &jobs[i];
        let mut one = Acquire::begin(&mut *tx).await?;
        let result = finish_in(&mut one, tenant, *job_id, outcome).await?;
        if result.is_ok() {
            one.commit().await?;
        } else {
            one.rollback().await?;
        }
        finished[i] = Some(result);
    }
    tx.commit().await?;
    Ok(finished.into_iter().flatten().collect())
}

/// The writes of one finish inside the caller's transaction; on a quota refusal the
/// caller must undo them (roll back).
async fn finish_in(
    tx: &mut PgConnection,
    tenant: &TenantId,
    job_id: Uuid,
    outcome: &Outcome,
) -> Result<Result<(), QuotaExceeded>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT j.status, j.holds_slot, j.document_id, d.reserved_bytes, d.holds_quota
           FROM jobs j JOIN documents d ON d.id = j.document_id
          WHERE j.tenant_id = $1 AND j.id = $2 FOR UPDATE OF j, d",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(sqlx::Error::RowNotFound);
    };
    let status: String = row.try_get("status")?;
    if JobStatus::parse(&status).is_some_and(JobStatus::is_terminal) {
        // Recorded already (a duplicate delivery raced us): nothing to do.
        return Ok(Ok(()));
    }
    let document_id: Uuid = row.try_get("document_id")?;
    let reserved: i64 = row.try_get("reserved_bytes")?;
    let holds_quota: bool = row.try_get("holds_quota")?;
    if holds_quota {
        match quota::settle_storage(tx, tenant, reserved, outcome.stored_bytes).await {
            Ok(()) => {}
            Err(QuotaError::Exceeded(q)) => return Ok(Err(q)),
            Err(QuotaError::Sql(e)) => return Err(e),
        }
    }
    sqlx::query(
        "UPDATE documents SET state = 'INGESTED', chunks = $3, stored_bytes = $4,
                reserved_bytes = CASE WHEN holds_quota THEN $4 ELSE 0 END, ingested_at = now()
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.as_str())
    .bind(document_id)
    .bind(outcome.chunks)
    .bind(outcome.stored_bytes)
    .execute(&mut *tx)
    .await?;
    end_job(
        tx,
        tenant,
        job_id,
        row.try_get("holds_slot")?,
        JobStatus::Finished,
        None,
        outcome,
    )
    .await?;
    attempts::end_running_finished(tx, tenant, job_id).await?;
    Ok(Ok(()))
}

/// Records a job FAILED with its reason and gives back everything it held.
/// Returns false if the job had already ended.
pub async fn fail(
    pool: &PgPool,
    tenant: &TenantId,
    job_id: Uuid,
    code: &str,
    message: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query("SELECT status, holds_slot, document_id FROM jobs WHERE tenant_id = $1 AND id = $2 FOR UPDATE")
        .bind(tenant.as_str())
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let status: String = row.try_get("status")?;
    if JobStatus::parse(&status).is_some_and(JobStatus::is_terminal) {
        return Ok(false);
    }
    let document_id: Uuid = row.try_get("document_id")?;
    release_document_quota(&mut tx, tenant, document_id, "FAILED").await?;
    let no_outcome = Outcome {
        chunks: 0,
        stored_bytes: 0,
        timings: Value::Object(Map::new()),
    };
    end_job(
        &mut tx,
        tenant,
        job_id,
        row.try_get("holds_slot")?,
        JobStatus::Failed,
        Some((code, message)),
        &no_outcome,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

async fn end_job(
    conn: &mut PgConnection,
    tenant: &TenantId,
    job_id: Uuid,
    holds_slot: bool,
    status: JobStatus,
    error: Option<(&str, &str)>,
    outcome: &Outcome,
) -> Result<(), sqlx::Error> {
    if holds_slot {
        quota::release_processing_slot(conn, tenant).await?;
    }
    let finished = status == JobStatus::Finished;
    sqlx::query(
        "UPDATE jobs SET status = $3, holds_slot = false, finished_at = now(), updated_at = now(),
                chunks = CASE WHEN $4 THEN $5 ELSE chunks END,
                timings = CASE WHEN $4 THEN $6 ELSE timings END,
                body = CASE WHEN $4 THEN NULL ELSE body END,
                error_code = $7, error = $8
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .bind(status.as_str())
    .bind(finished)
    .bind(outcome.chunks)
    .bind(&outcome.timings)
    .bind(error.map(|e| e.0))
    .bind(error.map(|e| e.1))
    .execute(&mut *conn)
    .await?;
    // The notification commits with the outcome it reports, or not at all.
    crate::db::webhooks::job_ended(conn, tenant, job_id, status, error).await?;
    Ok(())
}

/// Puts a job back to PENDING after a retryable failure (it stays in flight: the
/// caller re-publishes it to a delay queue), releasing its slot meanwhile.
pub async fn retry_later(
    pool: &PgPool,
    tenant: &TenantId,
    job_id: Uuid,
    code: &str,
    message: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let holds_slot: Option<bool> = sqlx::query_scalar(
        "SELECT holds_slot FROM jobs WHERE tenant_id = $1 AND id = $2 AND status = 'PROCESSING' FOR UPDATE",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(holds_slot) = holds_slot else {
        return Ok(());
    };
    if holds_slot {
        quota::release_processing_slot(&mut tx, tenant).await?;
    }
    sqlx::query(
        "UPDATE jobs SET status = 'PENDING', holds_slot = false, updated_at = now(), error_code = $3, error = $4
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .bind(code)
    .bind(message)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Counts of a tenant's jobs by status (for views and tests).
pub async fn count_by_status(
    pool: &PgPool,
    tenant: &TenantId,
) -> Result<Vec<(JobStatus, i64)>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM jobs WHERE tenant_id = $1 GROUP BY status ORDER BY status",
    )
    .bind(tenant.as_str())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(s, n)| JobStatus::parse(&s).map(|s| (s, n)))
        .collect())
}
