//! Queries on `jobs` and `documents`: submission, the backlog the pump publishes
//! from, and every state change a worker makes.
//!
//! A job's life: `PENDING` in the backlog (`published_at IS NULL`) → `PENDING` on
//! the broker (published: in flight, which is what PROCESSING_JOBS counts) →
//! `PROCESSING` → `FINISHED` | `FAILED` | back to `PENDING` (still in flight) for a
//! retry. `CANCELLED` is reachable while `PENDING`. Each transition is one transaction
//! that also moves the usage counters it affects, so counters and rows cannot drift
//! apart.
//!
//! The hot path works on groups: submissions of many calls commit together
//! ([`submit_group`]), the pump claims and marks a round in one statement
//! ([`claim_backlog`]), and workers start and finish batches of jobs with one
//! statement per table ([`start_many`], [`finish_many`]). No per-job statement loop
//! and no per-tenant counter row on the way of every job.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::{Acquire, PgConnection, PgPool, Row};
use uuid::Uuid;

use super::{THIS_HOUR, attempts, webhooks};
use crate::error_code::Code;
use crate::job::{JobOptions, JobStatus, Priority};
use crate::quota::{self, Ledger, Limits, QuotaError, QuotaExceeded};
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
pub struct NewJob {
    pub job_id: Uuid,
    pub document_id: Uuid,
    pub tenant: TenantId,
    pub database: DatabaseName,
    pub source_type: String,
    pub text: String,
    pub metadata: Map<String, Value>,
    pub options: JobOptions,
    pub priority: Priority,
    pub idempotency_key: Option<String>,
    /// Bytes reserved against STORAGE_MB until the worker measures the real size.
    pub reserved_bytes: i64,
    /// Embedding model and dimension the database is (or will be) bound to.
    pub model: String,
    pub dimension: i32,
}

/// One HTTP call's submissions: its documents, and whether the call itself is still
/// to be counted against API_CALLS_PER_HOUR (it is counted in the transaction that
/// records its documents, so a call and its jobs commit together).
#[derive(Debug, Clone)]
pub struct Request {
    pub tenant: TenantId,
    pub count_call: bool,
    pub jobs: Vec<NewJob>,
}

/// A recorded job, as the submitter is told.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub job_id: Uuid,
    pub document_id: Uuid,
    pub status: JobStatus,
    /// The job an earlier request with the same idempotency key created.
    pub replayed: bool,
}

/// What became of one [`Request`].
#[derive(Debug)]
pub enum RequestOutcome {
    /// The call was over API_CALLS_PER_HOUR: nothing of it was recorded.
    CallRefused {
        exceeded: QuotaExceeded,
        retry_after_secs: i64,
    },
    /// The call was counted; each document was accepted or refused on its own, in order.
    Recorded {
        jobs: Vec<Result<Accepted, SubmitError>>,
        /// The tenant's API_CALLS_PER_HOUR limit, for the dispatcher's shaping.
        api_calls_limit: i64,
    },
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
}

/// Records the submissions of many calls, of any tenants, in one transaction: the
/// dispatcher's group commit. Each call is counted (or refused) and each document
/// accepted or refused in order, exactly as if they had come one by one (see
/// [`quota::Ledger`]); the accepted ones are inserted with one statement per table.
/// Only a database error fails the call, for all of them (the caller then records
/// them one at a time). Requests with an idempotency key go to [`submit_keyed`].
pub async fn submit_group(
    pool: &PgPool,
    requests: &[Request],
) -> Result<Vec<RequestOutcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let recorded = record(&mut tx, requests).await?;
    if recorded.conflicts > 0 {
        // Only keyed jobs can conflict, and they do not come this way.
        return Err(sqlx::Error::Protocol(
            "an idempotency key conflicted in a group submission".into(),
        ));
    }
    tx.commit().await?;
    Ok(recorded.outcomes)
}

/// Records one call with one document under an `Idempotency-Key`: a repeat within
/// [`IDEMPOTENCY_WINDOW_HOURS`] answers the job the key first created (still counting
/// the call). Concurrent repeats are serialised by the unique index, so they make one job.
pub async fn submit_keyed(
    pool: &PgPool,
    request: &Request,
    key: &str,
) -> Result<RequestOutcome, sqlx::Error> {
    let count_only = Request {
        tenant: request.tenant.clone(),
        count_call: request.count_call,
        jobs: Vec::new(),
    };
    for _ in 0..2 {
        let mut tx = pool.begin().await?;
        if let Some(existing) = find_by_idempotency_key(&mut tx, &request.tenant, key).await? {
            let mut counted = record(&mut tx, std::slice::from_ref(&count_only)).await?;
            tx.commit().await?;
            return match counted.outcomes.pop() {
                Some(RequestOutcome::Recorded {
                    api_calls_limit, ..
                }) => Ok(RequestOutcome::Recorded {
                    jobs: vec![Ok(existing)],
                    api_calls_limit,
                }),
                Some(refused) => Ok(refused),
                None => Err(sqlx::Error::RowNotFound),
            };
        }
        let mut recorded = record(&mut tx, std::slice::from_ref(request)).await?;
        if recorded.conflicts == 0 {
            tx.commit().await?;
            return recorded.outcomes.pop().ok_or(sqlx::Error::RowNotFound);
        }
        // A concurrent request with the same key won: undo ours, answer with theirs.
        tx.rollback().await?;
    }
    Err(sqlx::Error::RowNotFound)
}

/// What [`record`] did.
struct Recording {
    outcomes: Vec<RequestOutcome>,
    /// Jobs not inserted because another job holds their idempotency key.
    conflicts: usize,
}

/// The writes of a group of submissions inside the caller's transaction.
async fn record(conn: &mut PgConnection, requests: &[Request]) -> Result<Recording, sqlx::Error> {
    let mut tenants: Vec<&str> = requests.iter().map(|r| r.tenant.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let mut callers: Vec<&str> = requests
        .iter()
        .filter(|r| r.count_call)
        .map(|r| r.tenant.as_str())
        .collect();
    callers.sort_unstable();
    callers.dedup();
    let mut ledgers = lock_ledgers(conn, &tenants, &callers).await?;
    let before = ledgers.clone();
    let databases = ensure_databases(conn, requests).await?;

    let mut outcomes = Vec::with_capacity(requests.len());
    let mut refusals: Vec<(TenantId, QuotaExceeded)> = Vec::new();
    let mut charged: HashSet<(&str, &str)> = HashSet::new();
    let mut accepted: Vec<&NewJob> = Vec::new();
    for request in requests {
        let ledger = ledgers
            .get_mut(request.tenant.as_str())
            .ok_or(sqlx::Error::RowNotFound)?;
        if request.count_call
            && let Err(exceeded) = ledger.count_call()
        {
            refusals.push((request.tenant.clone(), exceeded.clone()));
            outcomes.push(RequestOutcome::CallRefused {
                exceeded,
                retry_after_secs: ledger.secs_to_next_hour.max(1),
            });
            continue;
        }
        let mut results = Vec::with_capacity(request.jobs.len());
        for job in &request.jobs {
            let key = (job.tenant.as_str(), job.database.as_str());
            let Some(db) = databases.get(&key) else {
                return Err(sqlx::Error::RowNotFound);
            };
            if db.model != job.model || db.dimension != job.dimension {
                results.push(Err(SubmitError::ModelMismatch {
                    database: job.database.to_string(),
                    model: db.model.clone(),
                    dimension: db.dimension,
                    requested: format!("{} ({} dimensions)", job.model, job.dimension),
                }));
                continue;
            }
            // A database created by this group takes its collection unit with its
            // first accepted document.
            let first = db.created && !charged.contains(&key);
            if first && let Err(q) = ledger.reserve_collection() {
                refusals.push((job.tenant.clone(), q.clone()));
                results.push(Err(q.into()));
                continue;
            }
            match ledger.reserve_document(job.reserved_bytes) {
                Ok(()) => {
                    if first {
                        charged.insert(key);
                    }
                    accepted.push(job);
                    results.push(Ok(Accepted {
                        job_id: job.job_id,
                        document_id: job.document_id,
                        status: JobStatus::Pending,
                        replayed: false,
                    }));
                }
                Err(q) => {
                    if first {
                        ledger.unreserve_collection();
                    }
                    refusals.push((job.tenant.clone(), q.clone()));
                    results.push(Err(q.into()));
                }
            }
        }
        outcomes.push(RequestOutcome::Recorded {
            jobs: results,
            api_calls_limit: ledger.limits.api_calls_per_hour,
        });
    }

    // Databases this group created but gave no document stay uncreated.
    let unused: Vec<(&str, &str)> = databases
        .iter()
        .filter(|(key, db)| db.created && !charged.contains(*key))
        .map(|(key, _)| *key)
        .collect();
    if !unused.is_empty() {
        let (t, n): (Vec<&str>, Vec<&str>) = unused.into_iter().unzip();
        sqlx::query(
            "DELETE FROM databases d USING unnest($1::text[], $2::text[]) AS u(tenant_id, name)
              WHERE d.tenant_id = u.tenant_id AND d.name = u.name",
        )
        .bind(&t)
        .bind(&n)
        .execute(&mut *conn)
        .await?;
    }

    let conflicts = insert_jobs(conn, &accepted).await?;
    write_ledgers(conn, &before, &ledgers).await?;
    for (tenant, ledger) in &ledgers {
        let tenant = TenantId::parse(tenant).map_err(|e| sqlx::Error::Decode(e.into()))?;
        for c in &ledger.crossings {
            let kind = c.resource;
            webhooks::quota_warning(conn, &tenant, kind, c.limit, c.used, c.percentage).await?;
        }
    }
    for (tenant, refused) in &refusals {
        webhooks::quota_exceeded_in(conn, tenant, refused).await?;
    }
    Ok(Recording {
        outcomes,
        conflicts,
    })
}

/// Locks the usage rows of `tenants` (and the current hour's call rows of `callers`),
/// in tenant order so that concurrent groups never wait on each other in a cycle, and
/// reads them with their limits.
async fn lock_ledgers(
    conn: &mut PgConnection,
    tenants: &[&str],
    callers: &[&str],
) -> Result<BTreeMap<String, Ledger>, sqlx::Error> {
    let mut calls: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    if !callers.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO api_calls (tenant_id, hour, calls)
             SELECT t, {THIS_HOUR}, 0 FROM unnest($1::text[]) AS t
             ON CONFLICT (tenant_id, hour) DO NOTHING"
        )))
        .bind(callers)
        .execute(&mut *conn)
        .await?;
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT tenant_id, calls,
                    ceil(extract(epoch FROM hour + interval '1 hour' - now()))::bigint
               FROM api_calls WHERE tenant_id = ANY($1) AND hour = {THIS_HOUR}
              ORDER BY tenant_id FOR UPDATE"
        )))
        .bind(callers)
        .fetch_all(&mut *conn)
        .await?;
        calls = rows.into_iter().map(|(t, n, s)| (t, (n, s))).collect();
    }
    let rows = sqlx::query(
        "SELECT u.tenant_id, u.documents, u.storage_bytes, u.collections,
                l.documents AS documents_limit, l.storage_mb, l.api_calls_per_hour,
                l.processing_jobs, l.vector_collections
           FROM tenant_usage u JOIN tenant_limits l USING (tenant_id)
          WHERE u.tenant_id = ANY($1)
          ORDER BY u.tenant_id
            FOR UPDATE OF u",
    )
    .bind(tenants)
    .fetch_all(&mut *conn)
    .await?;
    let mut ledgers = BTreeMap::new();
    for row in rows {
        let tenant: String = row.try_get("tenant_id")?;
        let (api_calls, secs) = calls.get(&tenant).copied().unwrap_or((0, 3600));
        ledgers.insert(
            tenant,
            Ledger {
                limits: Limits {
                    documents: row.try_get("documents_limit")?,
                    storage_mb: row.try_get("storage_mb")?,
                    api_calls_per_hour: row.try_get("api_calls_per_hour")?,
                    processing_jobs: row.try_get("processing_jobs")?,
                    vector_collections: row.try_get("vector_collections")?,
                },
                documents: row.try_get("documents")?,
                storage_bytes: row.try_get("storage_bytes")?,
                collections: row.try_get("collections")?,
                api_calls,
                secs_to_next_hour: secs,
                crossings: Vec::new(),
            },
        );
    }
    Ok(ledgers)
}

/// Writes back the counters a group changed (the rows are locked by [`lock_ledgers`]).
async fn write_ledgers(
    conn: &mut PgConnection,
    before: &BTreeMap<String, Ledger>,
    after: &BTreeMap<String, Ledger>,
) -> Result<(), sqlx::Error> {
    let changed: Vec<(&String, &Ledger)> = after
        .iter()
        .filter(|(t, l)| {
            before.get(*t).is_none_or(|b| {
                (b.documents, b.storage_bytes, b.collections)
                    != (l.documents, l.storage_bytes, l.collections)
            })
        })
        .collect();
    if !changed.is_empty() {
        sqlx::query(
            "UPDATE tenant_usage u SET documents = v.documents, storage_bytes = v.storage_bytes,
                    collections = v.collections
               FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[])
                    AS v(tenant_id, documents, storage_bytes, collections)
              WHERE u.tenant_id = v.tenant_id",
        )
        .bind(changed.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>())
        .bind(changed.iter().map(|(_, l)| l.documents).collect::<Vec<_>>())
        .bind(
            changed
                .iter()
                .map(|(_, l)| l.storage_bytes)
                .collect::<Vec<_>>(),
        )
        .bind(
            changed
                .iter()
                .map(|(_, l)| l.collections)
                .collect::<Vec<_>>(),
        )
        .execute(&mut *conn)
        .await?;
    }
    let counted: Vec<(&String, i64)> = after
        .iter()
        .filter(|(t, l)| before.get(*t).is_none_or(|b| b.api_calls != l.api_calls))
        .map(|(t, l)| (t, l.api_calls))
        .collect();
    if !counted.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE api_calls a SET calls = v.calls
               FROM unnest($1::text[], $2::int8[]) AS v(tenant_id, calls)
              WHERE a.tenant_id = v.tenant_id AND a.hour = {THIS_HOUR}"
        )))
        .bind(counted.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>())
        .bind(counted.iter().map(|(_, n)| *n).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A database a group writes to: its stored model, or the requested one if this
/// group created it.
struct GroupDatabase {
    model: String,
    dimension: i32,
    created: bool,
}

/// Makes sure every database the group names exists (creating missing ones with the
/// requested model), in one statement; says which it created.
async fn ensure_databases<'a>(
    conn: &mut PgConnection,
    requests: &'a [Request],
) -> Result<HashMap<(&'a str, &'a str), GroupDatabase>, sqlx::Error> {
    let mut wanted: BTreeMap<(&str, &str), (&str, i32)> = BTreeMap::new();
    for job in requests.iter().flat_map(|r| &r.jobs) {
        wanted
            .entry((job.tenant.as_str(), job.database.as_str()))
            .or_insert((job.model.as_str(), job.dimension));
    }
    let mut out = HashMap::with_capacity(wanted.len());
    if wanted.is_empty() {
        return Ok(out);
    }
    let rows: Vec<(String, String, String, i32, bool)> = sqlx::query_as(
        "WITH want AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[])
                 AS w(tenant_id, name, model, dimension)),
         created AS (
             INSERT INTO databases (tenant_id, name, model, dimension)
             SELECT tenant_id, name, model, dimension FROM want
             ORDER BY tenant_id, name
             ON CONFLICT (tenant_id, name) DO NOTHING
             RETURNING tenant_id, name)
         SELECT w.tenant_id, w.name, COALESCE(d.model, w.model), COALESCE(d.dimension, w.dimension),
                EXISTS (SELECT 1 FROM created c WHERE c.tenant_id = w.tenant_id AND c.name = w.name)
           FROM want w
           LEFT JOIN databases d ON d.tenant_id = w.tenant_id AND d.name = w.name",
    )
    .bind(wanted.keys().map(|k| k.0).collect::<Vec<_>>())
    .bind(wanted.keys().map(|k| k.1).collect::<Vec<_>>())
    .bind(wanted.values().map(|v| v.0).collect::<Vec<_>>())
    .bind(wanted.values().map(|v| v.1).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    for (tenant, name, model, dimension, created) in rows {
        // Keys borrowed from the requests, so the map outlives this statement's rows.
        let Some(key) = wanted
            .keys()
            .find(|(t, n)| *t == tenant && *n == name)
            .copied()
        else {
            continue;
        };
        out.insert(
            key,
            GroupDatabase {
                model,
                dimension,
                created,
            },
        );
    }
    Ok(out)
}

/// Inserts the accepted documents and their jobs, one statement each; returns how many
/// jobs were not inserted because another job holds their idempotency key.
async fn insert_jobs(conn: &mut PgConnection, jobs: &[&NewJob]) -> Result<usize, sqlx::Error> {
    if jobs.is_empty() {
        return Ok(0);
    }
    sqlx::query(
        "INSERT INTO documents (id, tenant_id, database, source_type, metadata, text_bytes, reserved_bytes)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                              $6::int8[], $7::int8[])",
    )
    .bind(jobs.iter().map(|j| j.document_id).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.tenant.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.database.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.source_type.as_str()).collect::<Vec<_>>())
    .bind(
        jobs.iter()
            .map(|j| Value::Object(j.metadata.clone()))
            .collect::<Vec<_>>(),
    )
    .bind(jobs.iter().map(|j| j.text.len() as i64).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.reserved_bytes).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    // created_at from the clock, row by row in submission order: the backlog takes a
    // tenant's jobs oldest first, and a group's jobs keep the order they came in.
    let inserted = sqlx::query(
        "INSERT INTO jobs (id, tenant_id, document_id, priority, body, options, idempotency_key, created_at)
         SELECT id, tenant_id, document_id, priority, body, options, idempotency_key, clock_timestamp()
           FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::int2[], $5::text[], $6::jsonb[], $7::text[])
                AS j(id, tenant_id, document_id, priority, body, options, idempotency_key)
         ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    )
    .bind(jobs.iter().map(|j| j.job_id).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.tenant.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.document_id).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.priority.as_i16()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.text.as_str()).collect::<Vec<_>>())
    .bind(
        jobs.iter()
            .map(|j| serde_json::to_value(j.options).unwrap_or_default())
            .collect::<Vec<_>>(),
    )
    .bind(
        jobs.iter()
            .map(|j| j.idempotency_key.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(jobs.len().saturating_sub(inserted as usize))
}

async fn find_by_idempotency_key(
    conn: &mut PgConnection,
    tenant: &TenantId,
    key: &str,
) -> Result<Option<Accepted>, sqlx::Error> {
    let row: Option<(Uuid, Uuid, String, bool)> = sqlx::query_as(
        "SELECT id, document_id, status, created_at > now() - make_interval(hours => $3)
           FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2",
    )
    .bind(tenant.as_str())
    .bind(key)
    .bind(IDEMPOTENCY_WINDOW_HOURS as i32)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((job_id, document_id, status, fresh)) = row else {
        return Ok(None);
    };
    if fresh {
        return Ok(Some(Accepted {
            job_id,
            document_id,
            status: JobStatus::parse(&status).unwrap_or(JobStatus::Pending),
            replayed: true,
        }));
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
    let row = lock_job(&mut tx, tenant, job_id).await?;
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
                error_code = $3, error = 'cancelled by the tenant'
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .bind(Code::Cancelled.as_str())
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

/// How much of a tenant's work may be on the broker (published, not yet ended) at once.
///
/// The broker queue is FIFO, so what bounds a newcomer's wait is how much *other*
/// work sits ahead of it: about the fleet window. And since every tenant keeps its
/// window full while it has a backlog, each one's share of the workers' time is its
/// share of the jobs in flight, which these windows make proportional to its weight.
/// A window depends only on the weights of the tenants with a backlog, never on the
/// moment a tenant's jobs happen to end (workers end jobs in batches: a rule that
/// looked at the fleet's momentary total would favour whoever ended when it was low).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Guaranteed in flight per unit of plan weight, whatever else is running.
    pub tenant: i64,
    /// Total in flight the pumps aim for: a tenant may go beyond its guarantee up to
    /// its weighted share of this window among the tenants with a backlog — so one
    /// tenant alone can keep every worker busy, and yields as others arrive.
    pub fleet: i64,
}

/// A backlog job claimed for publishing.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub job_id: Uuid,
    pub tenant: TenantId,
    pub priority: Priority,
    pub created_at: DateTime<Utc>,
    /// Its place among its tenant's jobs of this round (1 = first).
    pub turn: i64,
}

/// Most tenants one round looks at (each gets a transaction-scoped advisory lock).
const TENANTS_PER_ROUND: i64 = 512;

/// Claims and marks published, inside `tx`, up to `max` backlog jobs, fairly (see
/// [`Windows`]). Each active tenant with a backlog gets `room` = its window (the larger
/// of its guarantee and its weighted share of the fleet window), never more than its
/// PROCESSING_JOBS limit, minus what it has in flight; its own jobs are taken by
/// priority, then age.
///
/// This is where PROCESSING_JOBS holds: a tenant never has more jobs in flight (handed
/// to the broker, not ended) than its limit, so workers need no slot counter. Two
/// statements make that exact across any number of pumps: the first takes a
/// transaction-scoped advisory lock per tenant (held until `tx` ends, after the marks
/// are committed), the second — with a snapshot taken after the locks, so it sees every
/// earlier holder's marks — counts what is in flight, claims with `SKIP LOCKED` and
/// marks in the same statement. Tenants with a backlog are found with a loose index scan
/// (one index probe per tenant, however deep its backlog); when more than
/// [`TENANTS_PER_ROUND`] have one, a random subset is served this round. Publish the
/// claimed jobs, then commit (or roll back to return them to the backlog).
pub async fn claim_backlog(
    conn: &mut PgConnection,
    windows: Windows,
    max: i64,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    let locked: Vec<(String, i64)> = sqlx::query_as(
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
             SELECT b.tenant_id, l.weight
               FROM backlog b
               JOIN tenants t ON t.id = b.tenant_id
               JOIN tenant_limits l ON l.tenant_id = b.tenant_id
              WHERE b.tenant_id IS NOT NULL
                AND t.status = 'ACTIVE'
                AND COALESCE((t.config ->> 'enable_auto_processing')::boolean, true)
         ),
         total AS (SELECT GREATEST(COALESCE(sum(weight), 0), 1)::bigint AS weight FROM active),
         sampled AS (SELECT tenant_id FROM active ORDER BY random() LIMIT $1)
         SELECT s.tenant_id, total.weight FROM sampled s, total
          WHERE pg_try_advisory_xact_lock(7310, hashtext(s.tenant_id))",
    )
    .bind(TENANTS_PER_ROUND)
    .fetch_all(&mut *conn)
    .await?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    let total_weight = locked[0].1;
    let tenants: Vec<&str> = locked.iter().map(|(t, _)| t.as_str()).collect();
    let rows = sqlx::query(
        "WITH room AS (
             SELECT l.tenant_id,
                    LEAST(GREATEST($2 * l.weight, ($3 * l.weight) / $4), l.processing_jobs)
                      - (SELECT count(*) FROM jobs x
                          WHERE x.tenant_id = l.tenant_id
                            AND x.status IN ('PENDING', 'PROCESSING') AND x.published_at IS NOT NULL)
                      AS room
               FROM tenant_limits l
              WHERE l.tenant_id = ANY($1)
         ),
         picked AS (
             SELECT j.id, row_number() OVER (PARTITION BY j.tenant_id
                                             ORDER BY j.priority DESC, j.created_at, j.id) AS turn
               FROM room r
               CROSS JOIN LATERAL (
                    SELECT q.id, q.tenant_id, q.priority, q.created_at
                      FROM jobs q
                     WHERE q.tenant_id = r.tenant_id AND q.status = 'PENDING' AND q.published_at IS NULL
                     ORDER BY q.priority DESC, q.created_at, q.id
                     LIMIT GREATEST(r.room, 0)
                       FOR UPDATE SKIP LOCKED) j
         ),
         chosen AS (SELECT id, turn FROM picked ORDER BY turn, random() LIMIT $5)
         UPDATE jobs j SET published_at = now(), updated_at = now()
           FROM chosen c
          WHERE j.id = c.id
         RETURNING j.id, j.tenant_id, j.priority, j.created_at, c.turn",
    )
    .bind(&tenants)
    .bind(windows.tenant)
    .bind(windows.fleet)
    .bind(total_weight)
    .bind(max)
    .fetch_all(&mut *conn)
    .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let tenant: String = row.try_get("tenant_id")?;
        claimed.push(ClaimedJob {
            job_id: row.try_get("id")?,
            tenant: TenantId::parse(&tenant).map_err(|e| sqlx::Error::Decode(e.into()))?,
            priority: Priority::from_i16(row.try_get("priority")?),
            created_at: row.try_get("created_at")?,
            turn: row.try_get("turn")?,
        });
    }
    claimed.sort_by_key(|j| j.turn);
    Ok(claimed)
}

/// Number of jobs waiting in the backlog (not yet on the broker), all tenants.
pub async fn backlog_size(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status = 'PENDING' AND published_at IS NULL",
    )
    .fetch_one(pool)
    .await
}

/// A job's document as processing and recovery need it: whose, where, and its text.
#[derive(Debug, Clone)]
pub struct JobDocument {
    pub job_id: Uuid,
    pub tenant: TenantId,
    pub document_id: Uuid,
    pub database: DatabaseName,
    pub source_type: String,
    pub metadata: Map<String, Value>,
    pub text: String,
}

impl JobDocument {
    /// Decodes the columns `id`, `tenant_id`, `document_id`, `database`, `source_type`,
    /// `metadata` and `body` (NULL = empty text) of a job joined with its document.
    fn decode(row: &PgRow) -> Result<Self, sqlx::Error> {
        let decode = |e: crate::tenancy::IdError| sqlx::Error::Decode(e.into());
        Ok(Self {
            job_id: row.try_get("id")?,
            tenant: TenantId::parse(&row.try_get::<String, _>("tenant_id")?).map_err(decode)?,
            document_id: row.try_get("document_id")?,
            database: DatabaseName::parse(&row.try_get::<String, _>("database")?)
                .map_err(decode)?,
            source_type: row.try_get("source_type")?,
            metadata: match row.try_get("metadata")? {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            text: row
                .try_get::<Option<String>, _>("body")?
                .unwrap_or_default(),
        })
    }

    /// The document as chunk payloads name it.
    pub fn reference(&self) -> crate::ingest::DocumentRef<'_> {
        crate::ingest::DocumentRef {
            tenant: &self.tenant,
            document_id: self.document_id,
            database: &self.database,
            source_type: &self.source_type,
            metadata: &self.metadata,
        }
    }
}

/// A job a worker has started: what it needs to process it, read from Postgres.
#[derive(Debug, Clone)]
pub struct StartedJob {
    pub doc: JobDocument,
    pub options: JobOptions,
    pub priority: Priority,
    /// 1-based.
    pub attempt: i32,
    /// Bytes the document holds against STORAGE_MB until the job settles them.
    pub reserved_bytes: i64,
}

/// What a worker may do with a delivered job.
#[derive(Debug, Clone)]
pub enum StartOutcome {
    /// Go ahead: the job is PROCESSING.
    Started(Box<StartedJob>),
    /// Already ended (a redelivery after the work was recorded), or PROCESSING for
    /// another delivery of it in the same batch: nothing to do.
    AlreadyDone(JobStatus),
    /// No such job for this tenant.
    Unknown,
}

/// Starts (or resumes, after a crash) jobs: marks them PROCESSING, counts the attempt,
/// records it in the history (an attempt of the job still RUNNING is marked
/// INTERRUPTED: its worker stopped without an outcome), and reads each job's document —
/// one statement per table for the whole batch, one commit.
///
/// The commit does not wait for its WAL flush (`synchronous_commit = off`): losing a
/// start to a Postgres crash loses only the PROCESSING mark and one attempt count, and
/// the job is simply started again (its message is acknowledged only after the
/// FINISHED commit, which is synchronous and flushes this one's WAL before it).
pub async fn start_many(
    pool: &PgPool,
    jobs: &[(TenantId, Uuid)],
    worker_id: &str,
) -> Result<Vec<StartOutcome>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    let (tenants, ids) = split(jobs);
    let rows = sqlx::query(
        "WITH input AS (SELECT * FROM unnest($1::text[], $2::uuid[]) AS i(tenant_id, job_id)),
         started AS (
             UPDATE jobs j SET status = 'PROCESSING', attempts = j.attempts + 1,
                    started_at = COALESCE(j.started_at, clock_timestamp()), worker_id = $3,
                    updated_at = now(), published_at = COALESCE(j.published_at, now())
               FROM input i
              WHERE j.tenant_id = i.tenant_id AND j.id = i.job_id
                AND j.status IN ('PENDING', 'PROCESSING')
             RETURNING j.id, j.tenant_id, j.document_id, j.attempts, j.body, j.options, j.priority)
         SELECT s.*, d.database, d.source_type, d.metadata, d.reserved_bytes
           FROM started s JOIN documents d ON d.id = s.document_id",
    )
    .bind(&tenants)
    .bind(&ids)
    .bind(worker_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut started: HashMap<Uuid, StartedJob> = HashMap::with_capacity(rows.len());
    for row in rows {
        let options: Value = row.try_get("options")?;
        let job = StartedJob {
            doc: JobDocument::decode(&row)?,
            options: serde_json::from_value(options).unwrap_or_default(),
            priority: Priority::from_i16(row.try_get("priority")?),
            attempt: row.try_get("attempts")?,
            reserved_bytes: row.try_get("reserved_bytes")?,
        };
        started.insert(job.doc.job_id, job);
    }
    if !started.is_empty() {
        let jobs: Vec<&StartedJob> = started.values().collect();
        let resumed: Vec<&&StartedJob> = jobs.iter().filter(|j| j.attempt > 1).collect();
        if !resumed.is_empty() {
            sqlx::query(
                "UPDATE job_attempts a SET outcome = 'INTERRUPTED', ended_at = now()
                   FROM unnest($1::text[], $2::uuid[]) AS i(tenant_id, job_id)
                  WHERE a.tenant_id = i.tenant_id AND a.job_id = i.job_id AND a.outcome = 'RUNNING'",
            )
            .bind(resumed.iter().map(|j| j.doc.tenant.as_str()).collect::<Vec<_>>())
            .bind(resumed.iter().map(|j| j.doc.job_id).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO job_attempts (tenant_id, job_id, attempt, worker_id)
             SELECT tenant_id, job_id, attempt, $4
               FROM unnest($1::text[], $2::uuid[], $3::int4[]) AS i(tenant_id, job_id, attempt)",
        )
        .bind(
            jobs.iter()
                .map(|j| j.doc.tenant.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(jobs.iter().map(|j| j.doc.job_id).collect::<Vec<_>>())
        .bind(jobs.iter().map(|j| j.attempt).collect::<Vec<_>>())
        .bind(worker_id)
        .execute(&mut *tx)
        .await?;
    }
    // Jobs not started have ended already, or are not this tenant's: say which.
    let missing: Vec<(&TenantId, Uuid)> = jobs
        .iter()
        .filter(|(_, id)| !started.contains_key(id))
        .map(|(t, id)| (t, *id))
        .collect();
    let mut ended: HashMap<Uuid, JobStatus> = HashMap::new();
    if !missing.is_empty() {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT j.id, j.status FROM jobs j
               JOIN unnest($1::text[], $2::uuid[]) AS i(tenant_id, job_id)
                 ON j.tenant_id = i.tenant_id AND j.id = i.job_id",
        )
        .bind(missing.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>())
        .bind(missing.iter().map(|(_, id)| *id).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        for (id, status) in rows {
            ended.insert(id, JobStatus::parse(&status).unwrap_or(JobStatus::Failed));
        }
    }
    tx.commit().await?;
    // A job twice in one batch (two deliveries of it, e.g. published again after a
    // pump's round was lost to an outage) is started once: the first delivery has it,
    // the others find it PROCESSING.
    let mut answered = HashSet::with_capacity(jobs.len());
    Ok(jobs
        .iter()
        .map(|(_, id)| {
            if !answered.insert(*id) {
                return StartOutcome::AlreadyDone(JobStatus::Processing);
            }
            match started.remove(id) {
                Some(job) => StartOutcome::Started(Box::new(job)),
                None => match ended.get(id) {
                    Some(status) => StartOutcome::AlreadyDone(*status),
                    None => StartOutcome::Unknown,
                },
            }
        })
        .collect())
}

/// Tenants and ids as two columns, for `unnest`.
fn split(jobs: &[(TenantId, Uuid)]) -> (Vec<&str>, Vec<Uuid>) {
    jobs.iter().map(|(t, id)| (t.as_str(), *id)).unzip()
}

/// What a finished job stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub chunks: i32,
    /// Measured bytes: payload JSON plus vector bytes of every point.
    pub stored_bytes: i64,
    pub timings: Value,
    /// The chunking parameters it was processed with (see `JobOptions::pinned`).
    pub params: Value,
}

/// Records jobs FINISHED, in one transaction: for each, the document becomes INGESTED
/// with its measured size and chunks, the attempt ends, `job_completed` is recorded for
/// tenants that want it — one statement per table for the whole batch. The measured
/// size replaces the reservation; it is the same number whenever the tenant's chunking
/// did not change since submission, and then no usage row is touched at all. Where it
/// differs the tenant's storage is settled, once per tenant; if a larger measure does
/// not fit the quota the batch is redone job by job, and each job that does not fit
/// gets its refusal back (the caller removes its points and fails it). A job that has
/// ended already (a duplicate delivery) is left as it is.
///
/// `keep_text`: the jobs' text stays until a checkpoint of the vector store covers
/// their points (the embedded store; see `release_texts`); otherwise it goes now.
pub async fn finish_many(
    pool: &PgPool,
    jobs: &[(TenantId, Uuid, Outcome)],
    keep_text: bool,
) -> Result<Vec<Result<(), QuotaExceeded>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut all = Acquire::begin(&mut *tx).await?;
    let settled = finish_together(&mut all, jobs, keep_text).await?;
    let results = if settled {
        all.commit().await?;
        jobs.iter().map(|_| Ok(())).collect()
    } else {
        all.rollback().await?;
        let mut results = Vec::with_capacity(jobs.len());
        for (tenant, job_id, outcome) in jobs {
            let mut one = Acquire::begin(&mut *tx).await?;
            let result = finish_in(&mut one, tenant, *job_id, outcome, keep_text).await?;
            if result.is_ok() {
                one.commit().await?;
            } else {
                one.rollback().await?;
            }
            results.push(result);
        }
        results
    };
    tx.commit().await?;
    Ok(results)
}

/// The set-based finish; false if some tenant's storage cannot absorb what its jobs
/// measured beyond their reservations (the caller undoes it and goes job by job).
async fn finish_together(
    conn: &mut PgConnection,
    jobs: &[(TenantId, Uuid, Outcome)],
    keep_text: bool,
) -> Result<bool, sqlx::Error> {
    let rows: Vec<(String, Uuid, bool, i64, i64)> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM unnest($1::text[], $2::uuid[], $3::int4[], $4::int8[], $5::jsonb[], $6::jsonb[])
                 AS i(tenant_id, job_id, chunks, stored, timings, params)),
         finished AS (
             UPDATE jobs j SET status = 'FINISHED', finished_at = now(), updated_at = now(),
                    chunks = i.chunks, timings = i.timings, params = i.params,
                    body = CASE WHEN $7 THEN j.body ELSE NULL END, error_code = NULL, error = NULL
               FROM input i
              WHERE j.tenant_id = i.tenant_id AND j.id = i.job_id
                AND j.status IN ('PENDING', 'PROCESSING')
             RETURNING j.id, j.tenant_id, j.document_id, i.chunks, i.stored),
         held AS (
             SELECT d.id, d.reserved_bytes, d.holds_quota
               FROM documents d JOIN finished f ON d.id = f.document_id
                FOR UPDATE OF d),
         ingested AS (
             UPDATE documents d SET state = 'INGESTED', chunks = f.chunks, stored_bytes = f.stored,
                    reserved_bytes = CASE WHEN h.holds_quota THEN f.stored ELSE 0 END,
                    ingested_at = now()
               FROM finished f JOIN held h ON h.id = f.document_id
              WHERE d.id = f.document_id
             RETURNING f.tenant_id, f.id AS job_id, h.holds_quota, h.reserved_bytes, f.stored)
         SELECT tenant_id, job_id, holds_quota, reserved_bytes, stored FROM ingested",
    )
    .bind(jobs.iter().map(|j| j.0.as_str()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.1).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.2.chunks).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.2.stored_bytes).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.2.timings.clone()).collect::<Vec<_>>())
    .bind(jobs.iter().map(|j| j.2.params.clone()).collect::<Vec<_>>())
    .bind(keep_text)
    .fetch_all(&mut *conn)
    .await?;
    // Storage to settle per tenant: measured minus reserved, where the document holds quota.
    let mut deltas: BTreeMap<&str, i64> = BTreeMap::new();
    for (tenant, _, holds, reserved, stored) in &rows {
        if *holds && stored != reserved {
            *deltas.entry(tenant.as_str()).or_default() += stored - reserved;
        }
    }
    for (tenant, delta) in deltas.into_iter().filter(|(_, d)| *d != 0) {
        let tenant = TenantId::parse(tenant).map_err(|e| sqlx::Error::Decode(e.into()))?;
        match quota::settle_storage(conn, &tenant, 0, delta).await {
            Ok(()) => {}
            Err(QuotaError::Exceeded(_)) => return Ok(false),
            Err(QuotaError::Sql(e)) => return Err(e),
        }
    }
    let ended: Vec<(TenantId, Uuid)> = rows
        .iter()
        .filter_map(|(t, id, ..)| TenantId::parse(t).ok().map(|t| (t, *id)))
        .collect();
    if !ended.is_empty() {
        let (tenants, ids) = split(&ended);
        sqlx::query(
            "UPDATE job_attempts a SET outcome = 'FINISHED', ended_at = now()
               FROM unnest($1::text[], $2::uuid[]) AS i(tenant_id, job_id)
              WHERE a.tenant_id = i.tenant_id AND a.job_id = i.job_id AND a.outcome = 'RUNNING'",
        )
        .bind(&tenants)
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
        webhooks::jobs_ended(conn, &ended, JobStatus::Finished).await?;
    }
    Ok(true)
}

/// One job's finish inside the caller's transaction (the slow path of [`finish_many`]);
/// on a quota refusal the caller must undo it (roll back).
async fn finish_in(
    tx: &mut PgConnection,
    tenant: &TenantId,
    job_id: Uuid,
    outcome: &Outcome,
    keep_text: bool,
) -> Result<Result<(), QuotaExceeded>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT j.status, j.document_id, d.reserved_bytes, d.holds_quota
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
        JobStatus::Finished,
        None,
        outcome,
        keep_text,
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
    code: Code,
    message: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row = lock_job(&mut tx, tenant, job_id).await?;
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
        params: Value::Null,
    };
    let error = Some((code, message));
    end_job(
        &mut tx,
        tenant,
        job_id,
        JobStatus::Failed,
        error,
        &no_outcome,
        true,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Ends a job with `status`. A FINISHED job records its outcome and drops its text
/// unless `keep_text`; a FAILED one keeps its text (for a replay).
async fn end_job(
    conn: &mut PgConnection,
    tenant: &TenantId,
    job_id: Uuid,
    status: JobStatus,
    error: Option<(Code, &str)>,
    outcome: &Outcome,
    keep_text: bool,
) -> Result<(), sqlx::Error> {
    let finished = status == JobStatus::Finished;
    sqlx::query(
        "UPDATE jobs SET status = $3, finished_at = now(), updated_at = now(),
                chunks = CASE WHEN $4 THEN $5 ELSE chunks END,
                timings = CASE WHEN $4 THEN $6 ELSE timings END,
                params = CASE WHEN $4 THEN $7 ELSE params END,
                body = CASE WHEN $4 AND NOT $10 THEN NULL ELSE body END,
                error_code = $8, error = $9
          WHERE tenant_id = $1 AND id = $2",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .bind(status.as_str())
    .bind(finished)
    .bind(outcome.chunks)
    .bind(&outcome.timings)
    .bind(&outcome.params)
    .bind(error.map(|e| e.0.as_str()))
    .bind(error.map(|e| e.1))
    .bind(keep_text)
    .execute(&mut *conn)
    .await?;
    // The notification commits with the outcome it reports, or not at all.
    crate::db::webhooks::job_ended(conn, tenant, job_id, status, error).await?;
    Ok(())
}

/// Puts a job back to PENDING after a retryable failure. It stays in flight (and so
/// keeps its PROCESSING_JOBS slot): the caller re-publishes it to a delay queue.
pub async fn retry_later(
    pool: &PgPool,
    tenant: &TenantId,
    job_id: Uuid,
    code: Code,
    message: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET status = 'PENDING', updated_at = now(), error_code = $3, error = $4
          WHERE tenant_id = $1 AND id = $2 AND status = 'PROCESSING'",
    )
    .bind(tenant.as_str())
    .bind(job_id)
    .bind(code.as_str())
    .bind(message)
    .execute(pool)
    .await?;
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

/// A finished job whose points a vector store may not hold durably yet, with what
/// re-derives them: its text, the chunking it was processed with, its document.
#[derive(Debug, Clone)]
pub struct Rederivable {
    pub doc: JobDocument,
    pub params: JobOptions,
    pub finished_at: DateTime<Utc>,
}

/// Finished jobs that still keep their text, finished at or after `since`, whose
/// document is still INGESTED (a deleted document's points must not come back), in
/// finishing order, after `after` (the last of the previous page).
pub async fn rederivable(
    pool: &PgPool,
    since: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Rederivable>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT j.id, j.tenant_id, j.document_id, j.body, j.params, j.finished_at,
                d.database, d.source_type, d.metadata
           FROM jobs j JOIN documents d ON d.id = j.document_id
          WHERE j.status = 'FINISHED' AND j.body IS NOT NULL AND j.finished_at >= $1
            AND ($2::timestamptz IS NULL OR (j.finished_at, j.id) > ($2, $3))
            AND d.state = 'INGESTED'
          ORDER BY j.finished_at, j.id
          LIMIT $4",
    )
    .bind(since)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let params: Option<Value> = row.try_get("params")?;
        out.push(Rederivable {
            doc: JobDocument::decode(&row)?,
            params: params
                .and_then(|p| serde_json::from_value(p).ok())
                .unwrap_or_default(),
            finished_at: row.try_get("finished_at")?,
        });
    }
    Ok(out)
}

/// Drops the kept text of jobs finished before `before` (a checkpoint of the vector
/// store covers their points). Returns how many were released.
pub async fn release_texts(pool: &PgPool, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE jobs SET body = NULL
          WHERE status = 'FINISHED' AND body IS NOT NULL AND finished_at < $1",
    )
    .bind(before)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The Postgres channel pumps listen on: jobs ended, so tenants have room again.
pub const ROOM_CHANNEL: &str = "tenantry_room";

/// Tells every pump (in any process) that jobs ended. Its own transaction, whose commit
/// does not wait for the WAL flush: a notification lost to a crash only delays a pump
/// until its next tick.
pub async fn notify_room(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(ROOM_CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Locks one job of a tenant for the rest of `tx`; its status and document id.
async fn lock_job(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &TenantId,
    job_id: Uuid,
) -> Result<Option<PgRow>, sqlx::Error> {
    sqlx::query("SELECT status, document_id FROM jobs WHERE tenant_id = $1 AND id = $2 FOR UPDATE")
        .bind(tenant.as_str())
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await
}
