//! What a quota reservation adds to a submission, measured against the real
//! Postgres: the latency of `quota::reserve_document` (and of the API-call counter,
//! `quota::count_api_call`) against a no-op round trip (`SELECT 1`), each timed as
//! one statement inside its own transaction (BEGIN; statement; COMMIT), as in a
//! submission. Run with 1 active tenant (every reservation contends for the same
//! `tenant_usage` row) and with 100 (spread over 100 rows).
//!
//! ```text
//! cargo build --workspace --examples && /work/target/debug/examples/reservation_latency
//! ```
//! (built with `--workspace` so it shares the workspace's dependency artefacts; with
//! the default target dir the binary is `target/debug/examples/reservation_latency`.)
//! `BENCH_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432`),
//! `BENCH_OPS` (per scenario, default 3000), `BENCH_CONCURRENCY` (default 16).
//! Uses a throwaway database, dropped at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tenantry::quota;
use tenantry::tenancy::TenantId;

#[derive(Clone, Copy, Debug)]
enum Op {
    Noop,
    Reserve,
    CountCall,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Noop => "no-op SELECT 1",
            Op::Reserve => "reserve_document",
            Op::CountCall => "count_api_call",
        }
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn one(pool: &PgPool, op: Op, tenant: &TenantId) -> Duration {
    let mut tx = pool.begin().await.unwrap();
    let clock = Instant::now();
    match op {
        Op::Noop => {
            sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
        }
        Op::Reserve => {
            quota::reserve_document(&mut tx, tenant, 10_000)
                .await
                .unwrap();
        }
        Op::CountCall => {
            let counted = quota::count_api_call(&mut tx, tenant).await.unwrap();
            assert!(matches!(counted, quota::CallCount::Counted { .. }));
        }
    }
    let took = clock.elapsed();
    tx.commit().await.unwrap();
    took
}

/// Runs `ops` operations from `concurrency` tasks over `tenants`; returns the
/// sorted latencies and the wall time.
async fn scenario(
    pool: &PgPool,
    op: Op,
    tenants: &Arc<Vec<TenantId>>,
    ops: usize,
    concurrency: usize,
) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency {
        let (pool, tenants) = (pool.clone(), tenants.clone());
        tasks.spawn(async move {
            let mut took = Vec::with_capacity(ops / concurrency + 1);
            let mut i = task;
            while i < ops {
                let tenant = &tenants[(i * 7919) % tenants.len()];
                took.push(one(&pool, op, tenant).await);
                i += concurrency;
            }
            took
        });
    }
    let mut all = Vec::with_capacity(ops);
    while let Some(took) = tasks.join_next().await {
        all.extend(took.unwrap());
    }
    all.sort();
    (all, started.elapsed())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base = std::env::var("BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let ops = env_or("BENCH_OPS", 3000);
    let concurrency = env_or("BENCH_CONCURRENCY", 16);
    let url = format!(
        "{base}/tenantry_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let pool = tenantry::db::connect_and_migrate(&url, concurrency as u32 + 2).await?;
    let mut ids = Vec::new();
    for i in 0..100 {
        let id = TenantId::parse(&format!("bench-{i:03}")).unwrap();
        sqlx::query(
            "INSERT INTO tenants (id, name, email, quota_overrides)
             VALUES ($1, $1, 'bench@example.com',
                     '{\"DOCUMENTS\": 1000000000000, \"STORAGE_MB\": 1000000000000, \"API_CALLS_PER_HOUR\": 1000000000000}')",
        )
        .bind(id.as_str())
        .execute(&pool)
        .await?;
        sqlx::query("INSERT INTO tenant_usage (tenant_id) VALUES ($1)")
            .bind(id.as_str())
            .execute(&pool)
            .await?;
        ids.push(id);
    }
    let one_tenant = Arc::new(vec![ids[0].clone()]);
    let hundred = Arc::new(ids);
    // Warm the pool and the plan cache.
    let _ = scenario(&pool, Op::Noop, &hundred, 200, concurrency).await;
    let _ = scenario(&pool, Op::Reserve, &hundred, 200, concurrency).await;

    println!(
        "{ops} operations per row, {concurrency} concurrent connections, each timed as one statement inside BEGIN … COMMIT"
    );
    println!(
        "{:<10} {:<18} {:>9} {:>9} {:>9} {:>9}",
        "tenants", "operation", "p50 ms", "p95 ms", "p99 ms", "ops/s"
    );
    for (label, tenants, conc) in [
        ("1 (seq)", &one_tenant, 1),
        ("1", &one_tenant, concurrency),
        ("100", &hundred, concurrency),
    ] {
        for op in [Op::Noop, Op::Reserve, Op::CountCall] {
            let (took, wall) = scenario(&pool, op, tenants, ops, conc).await;
            println!(
                "{:<10} {:<18} {:>9.3} {:>9.3} {:>9.3} {:>9.0}",
                label,
                op.name(),
                pct(&took, 0.50),
                pct(&took, 0.95),
                pct(&took, 0.99),
                took.len() as f64 / wall.as_secs_f64()
            );
        }
    }
    pool.close().await;
    tenantry::db::drop_database(&url).await?;
    Ok(())
}
