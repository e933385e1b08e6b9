//! Driving a fleet: documents in through the HTTP API, then the outcome read back from
//! the fleet's own Postgres records (created → published → started → finished, and
//! the worker's per-stage timings), so every figure is what the fleet recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::{PgPool, Row};

use crate::cpu::{self, Role};
use crate::fleet::Fleet;
use crate::stats::{mean, percentile};

/// How documents are submitted.
#[derive(Debug, Clone, Copy)]
pub enum Submit {
    /// `POST /v1/jobs`, this many requests at a time.
    Single { concurrency: usize },
    /// `POST /v1/jobs/batch` with up to 100 documents, this many calls at a time.
    Batch { concurrency: usize },
}

/// Deterministic prose of exactly `size` bytes (ASCII), different for every `seed`.
pub fn document(seed: usize, size: usize) -> String {
    const WORDS: &[&str] = &[
        "tenant",
        "vector",
        "broker",
        "queue",
        "shard",
        "quota",
        "chunk",
        "embedding",
        "search",
        "latency",
        "worker",
        "fleet",
        "document",
        "partition",
        "collection",
        "signature",
        "window",
        "backlog",
        "payload",
        "index",
        "retrieval",
        "answer",
        "context",
        "model",
    ];
    let mut text = String::with_capacity(size + 16);
    let mut state = seed as u64 * 0x9E37_79B9_7F4A_7C15 + 1;
    let mut words_in_sentence = 0;
    while text.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = WORDS[(state % WORDS.len() as u64) as usize];
        if words_in_sentence == 0 {
            let mut c = word.chars();
            if let Some(first) = c.next() {
                text.push(first.to_ascii_uppercase());
                text.push_str(c.as_str());
            }
        } else {
            text.push(' ');
            text.push_str(word);
        }
        words_in_sentence += 1;
        if words_in_sentence >= 8 + (state % 9) as usize {
            text.push_str(". ");
            words_in_sentence = 0;
        }
    }
    text.truncate(size);
    text
}

/// What one ingestion run measured.
#[derive(Debug, Default, Clone)]
pub struct Run {
    pub jobs: usize,
    pub failed: i64,
    pub wall: Duration,
    pub chunks: i64,
    /// Submit → FINISHED, ms, per job (from the fleet's records).
    pub latency: Vec<f64>,
    /// HTTP round trip of each submitting call, ms (client side).
    pub http: Vec<f64>,
    /// Mean ms per job: backlog (created → published), broker (published → started),
    /// then the worker's stages.
    pub stages: Vec<(String, f64)>,
    /// CPU seconds each kind of process used during the run.
    pub cpu: HashMap<Role, f64>,
}

impl Run {
    pub fn jobs_per_sec(&self) -> f64 {
        self.jobs as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    pub fn chunks_per_sec(&self) -> f64 {
        self.chunks as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    pub fn p(&self, q: f64) -> f64 {
        percentile(&mut self.latency.clone(), q)
    }
    /// Milliseconds of `role`'s CPU per finished job.
    pub fn cpu_ms_per_job(&self, role: Role) -> f64 {
        self.cpu.get(&role).copied().unwrap_or(0.0) * 1000.0 / (self.jobs.max(1) as f64)
    }
    /// Milliseconds of machine CPU per job: every role but the benchmark's own client.
    pub fn machine_ms_per_job(&self) -> f64 {
        Role::ALL
            .into_iter()
            .filter(|r| *r != Role::Bench)
            .map(|r| self.cpu_ms_per_job(r))
            .sum()
    }
}

/// Submits `docs` documents of `size` bytes, spread round-robin over `keys`, and waits
/// until every job of the fleet has ended.
pub async fn ingest(
    fleet: &Fleet,
    pool: &PgPool,
    keys: &[String],
    docs: usize,
    size: usize,
    how: Submit,
) -> anyhow::Result<Run> {
    let before = ended(pool).await?;
    let scope = fleet.scope();
    let cpu_before = scope.snapshot();
    let started = Instant::now();
    let http = submit(fleet, keys, 0, docs, size, how).await?;
    wait_ended(pool, before + docs as i64).await?;
    let cpu_after = scope.snapshot();
    let mut run = measure(pool, None).await?;
    run.http = http;
    run.cpu = cpu::between(&cpu_before, &cpu_after);
    if run.wall.is_zero() {
        run.wall = started.elapsed();
    }
    Ok(run)
}

/// Submits documents `first..first + docs` (document `i` to `keys[i % len]`).
/// Returns the HTTP latency of each call, ms.
pub async fn submit(
    fleet: &Fleet,
    keys: &[String],
    first: usize,
    docs: usize,
    size: usize,
    how: Submit,
) -> anyhow::Result<Vec<f64>> {
    let calls: Vec<(String, Vec<Value>)> = match how {
        Submit::Single { .. } => (first..first + docs)
            .map(|i| {
                (
                    keys[i % keys.len()].clone(),
                    vec![json!({ "text": document(i, size) })],
                )
            })
            .collect(),
        Submit::Batch { .. } => {
            let mut per_key: Vec<Vec<Value>> = vec![Vec::new(); keys.len()];
            for i in first..first + docs {
                per_key[i % keys.len()].push(json!({ "text": document(i, size) }));
            }
            per_key
                .into_iter()
                .enumerate()
                .flat_map(|(k, docs)| {
                    let key = keys[k].clone();
                    docs.chunks(100)
                        .map(|c| (key.clone(), c.to_vec()))
                        .collect::<Vec<_>>()
                })
                .collect()
        }
    };
    let concurrency = match how {
        Submit::Single { concurrency } | Submit::Batch { concurrency } => concurrency,
    };
    let batch = matches!(how, Submit::Batch { .. });
    let results = futures::stream::iter(calls.into_iter().map(|(key, docs)| async move {
        let t = Instant::now();
        let request = if batch {
            fleet
                .http
                .post(fleet.url("/v1/jobs/batch"))
                .json(&json!({ "documents": docs }))
        } else {
            fleet.http.post(fleet.url("/v1/jobs")).json(&docs[0])
        };
        let r = request.bearer_auth(&key).send().await?;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "submit answered {status}: {body}");
        if batch {
            anyhow::ensure!(body["rejected"] == 0, "batch items refused: {body}");
        }
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    }))
    .buffer_unordered(concurrency)
    .collect::<Vec<_>>()
    .await;
    results.into_iter().collect()
}

/// Submits single documents at `rate` per second (open loop) for `docs` documents.
pub async fn paced(
    fleet: &Fleet,
    pool: &PgPool,
    keys: &[String],
    docs: usize,
    size: usize,
    rate: f64,
) -> anyhow::Result<Run> {
    let before = ended(pool).await?;
    let failures = Arc::new(AtomicUsize::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..docs {
        tick.tick().await;
        let request = fleet
            .http
            .post(fleet.url("/v1/jobs"))
            .bearer_auth(&keys[i % keys.len()])
            .json(&json!({ "text": document(1_000_000 + i, size) }));
        let failures = failures.clone();
        tasks.spawn(async move {
            if !request.send().await.is_ok_and(|r| r.status().is_success()) {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    anyhow::ensure!(
        failures.load(Ordering::Relaxed) == 0,
        "paced submissions failed"
    );
    wait_ended(pool, before + docs as i64).await?;
    let mut run = measure(pool, None).await?;
    // Only this run's jobs (the newest `docs`).
    let latest: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM finished_at - created_at) * 1000)::float8 FROM jobs
          WHERE status = 'FINISHED' ORDER BY created_at DESC LIMIT $1",
    )
    .bind(docs as i64)
    .fetch_all(pool)
    .await?;
    run.latency = latest;
    run.jobs = docs;
    Ok(run)
}

pub async fn ended(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status IN ('FINISHED', 'FAILED', 'CANCELLED')",
    )
    .fetch_one(pool)
    .await?)
}

pub async fn wait_ended(pool: &PgPool, target: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    while ended(pool).await? < target {
        anyhow::ensure!(Instant::now() < deadline, "jobs did not end within an hour");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Reads the outcome of every ended job (or of one tenant's) from Postgres.
pub async fn measure(pool: &PgPool, tenant: Option<&str>) -> anyhow::Result<Run> {
    let rows = sqlx::query(
        "SELECT status, COALESCE(chunks, 0) AS chunks, timings,
                (extract(epoch FROM finished_at - created_at) * 1000)::float8 AS latency,
                (extract(epoch FROM published_at - created_at) * 1000)::float8 AS backlog,
                (extract(epoch FROM started_at - published_at) * 1000)::float8 AS broker,
                (extract(epoch FROM finished_at - started_at) * 1000)::float8 AS processing
           FROM jobs WHERE status IN ('FINISHED', 'FAILED') AND ($1::text IS NULL OR tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    let span: Option<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM max(finished_at) - min(created_at)))::float8 FROM jobs
          WHERE status IN ('FINISHED', 'FAILED') AND ($1::text IS NULL OR tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await?;
    let mut run = Run {
        wall: Duration::from_secs_f64(span.unwrap_or(0.0).max(0.0)),
        ..Run::default()
    };
    let mut stage: Vec<(String, Vec<f64>)> =
        ["backlog", "broker", "chunk", "embed", "upsert", "record"]
            .iter()
            .map(|s| ((*s).to_owned(), Vec::new()))
            .collect();
    for row in rows {
        let status: String = row.try_get("status")?;
        if status != "FINISHED" {
            run.failed += 1;
            continue;
        }
        run.jobs += 1;
        run.chunks += i64::from(row.try_get::<i32, _>("chunks")?);
        run.latency
            .push(row.try_get::<Option<f64>, _>("latency")?.unwrap_or(0.0));
        let timings: Value = row.try_get("timings")?;
        let stage_ms = |name: &str| timings.get(name).and_then(Value::as_f64);
        for (name, samples) in &mut stage {
            let v = match name.as_str() {
                "backlog" => row.try_get::<Option<f64>, _>("backlog")?,
                "broker" => row.try_get::<Option<f64>, _>("broker")?,
                // The job's row cannot hold the time it takes to write itself: Postgres'
                // share is what the worker's clock leaves after its stages (the start
                // transaction's end and the finishing transaction).
                "record" => row.try_get::<Option<f64>, _>("processing")?.map(|total| {
                    let stages: f64 = ["chunk", "embed", "upsert"]
                        .iter()
                        .filter_map(|s| stage_ms(s))
                        .sum();
                    (total - stages).max(0.0)
                }),
                other => stage_ms(other),
            };
            if let Some(v) = v {
                samples.push(v);
            }
        }
    }
    run.stages = stage.into_iter().map(|(n, s)| (n, mean(&s))).collect();
    Ok(run)
}

/// Completions per tenant among the jobs that finished between ranks `from` and `to`
/// (0-based, in finishing order).
pub async fn completions_by_tenant(
    pool: &PgPool,
    from: i64,
    to: i64,
) -> anyhow::Result<Vec<(String, i64)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tenant_id, count(*) FROM (
             SELECT tenant_id FROM jobs WHERE status = 'FINISHED'
              ORDER BY finished_at, id OFFSET $1 LIMIT $2) w
          GROUP BY tenant_id ORDER BY tenant_id",
    )
    .bind(from)
    .bind(to - from)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// A pool on a fleet's database.
pub async fn pool(fleet: &Fleet) -> anyhow::Result<PgPool> {
    tenantry::db::pool(&fleet.database_url, 4)
        .await
        .context("bench pool")
}
