//! `tenantry-bench`: one command that measures tenantry end to end against the raw
//! broker on the same machine and prints a table (docs/BENCHMARKS.md keeps the latest).
//!
//! # Layout
//! - [`baseline`]: raw lapin publish-with-confirms + consume-with-acks, no work.
//! - [`fleet`]: a real fleet in a child process (this binary, `fleet` subcommand).
//! - [`load`]: submitting documents and reading the outcome from Postgres.
//! - [`stats`]: percentiles and the table.

use clap::{Parser, Subcommand};
use tenantry::config;

mod baseline;
mod cpu;
mod fleet;
mod load;
mod stats;

use fleet::{Fleet, Services};
use load::Submit;
use stats::{mean, percentile, print_table};

#[derive(Parser)]
#[command(
    about = "tenantry end to end against the raw broker: throughput, latency, scaling, tenants, fairness, memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// A smaller run (a few minutes less): fewer documents, at most 1 000 tenants.
    #[arg(long)]
    quick: bool,
    /// 1 KB documents per throughput run.
    #[arg(long)]
    docs: Option<usize>,
    /// Largest tenant count of the tenants table.
    #[arg(long)]
    max_tenants: Option<usize>,
    /// Worker tasks of the main fleet.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Isolation modes of the tenants table.
    #[arg(long, value_delimiter = ',', default_value = "partition,collection")]
    modes: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// (internal) run a fleet in this process until stdin closes.
    #[command(hide = true)]
    Fleet {
        #[arg(long)]
        workers: usize,
        /// Start the workers only when a line arrives on stdin.
        #[arg(long)]
        hold: bool,
    },
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Fleet { workers, hold }) = cli.command {
        return fleet::serve_child(workers, hold).await;
    }
    let services = Services {
        postgres: std::env::var("BENCH_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
        amqp: std::env::var(config::ENV_AMQP_URL)
            .unwrap_or_else(|_| config::DEFAULT_AMQP_URL.into()),
    };
    let docs = cli.docs.unwrap_or(if cli.quick { 1000 } else { 5000 });
    let big_docs = (docs / 4).max(100);
    let max_tenants = cli
        .max_tenants
        .unwrap_or(if cli.quick { 1000 } else { 10_000 });
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "tenantry-bench — {cpus} CPUs, hashing embedder, embedded Qdrant store, {} worker tasks",
        cli.workers
    );
    println!("(figures from the fleet's own Postgres records; latency is submit → FINISHED)\n");

    // 1. The raw broker.
    let raw_1k = baseline::raw_broker(&services.amqp, docs, 1024, 32).await?;
    let raw_10k = baseline::raw_broker(&services.amqp, big_docs, 10 * 1024, 32).await?;
    println!(
        "raw broker (publish with confirms + consume with acks, quorum queue): {} msg/s at 1 KB, {} msg/s at 10 KB\n",
        fmt(raw_1k),
        fmt(raw_10k)
    );

    // 2. End to end on one fleet.
    let fleet = Fleet::start(&services, cli.workers, &[]).await?;
    let pool = load::pool(&fleet).await?;
    let keys = fleet.tenants("solo", 1, "collection", "enterprise").await?;
    let (idle_rss, _) = fleet.memory_mib();
    let mut rows = vec![header(&[
        "run",
        "docs",
        "jobs/s",
        "chunks/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "ratio to raw",
    ])];
    let single = load::ingest(
        &fleet,
        &pool,
        &keys,
        docs,
        1024,
        Submit::Single { concurrency: 32 },
    )
    .await?;
    rows.push(row("1 KB, POST /v1/jobs", &single, raw_1k));
    truncate_jobs(&pool).await?;
    let batch = load::ingest(
        &fleet,
        &pool,
        &keys,
        docs,
        1024,
        Submit::Batch { concurrency: 4 },
    )
    .await?;
    rows.push(row("1 KB, POST /v1/jobs/batch", &batch, raw_1k));
    truncate_jobs(&pool).await?;
    let big = load::ingest(
        &fleet,
        &pool,
        &keys,
        big_docs,
        10 * 1024,
        Submit::Batch { concurrency: 4 },
    )
    .await?;
    rows.push(row("10 KB, POST /v1/jobs/batch", &big, raw_10k));
    truncate_jobs(&pool).await?;
    // The production shape: one tenant of the standard plan, at its default
    // PROCESSING_JOBS (10 jobs in flight at once); its document quota raised so the run fits.
    let standard = fleet
        .tenants("standard", 1, "collection", "standard")
        .await?;
    fleet
        .set_quotas("standard-0", serde_json::json!({ "DOCUMENTS": 10_000_000 }))
        .await?;
    let alone = load::ingest(
        &fleet,
        &pool,
        &standard,
        docs,
        1024,
        Submit::Batch { concurrency: 4 },
    )
    .await?;
    rows.push(row(
        "1 KB batch, one standard tenant (10 in flight)",
        &alone,
        raw_1k,
    ));
    truncate_jobs(&pool).await?;
    let peak_rate = single.jobs_per_sec().max(batch.jobs_per_sec());
    let paced = load::paced(
        &fleet,
        &pool,
        &keys,
        (docs / 2).max(200),
        1024,
        peak_rate / 2.0,
    )
    .await?;
    rows.push(row(
        &format!("1 KB paced at {} jobs/s (half peak)", fmt(peak_rate / 2.0)),
        &paced,
        raw_1k,
    ));
    truncate_jobs(&pool).await?;
    let (_, peak_rss) = fleet.memory_mib();
    print_table(&rows);
    println!();
    println!(
        "ratio to raw broker, 1 KB: {:.2} (single), {:.2} (batch); 10 KB: {:.2}   goal ≥ 0.5 at 1 KB",
        single.jobs_per_sec() / raw_1k,
        batch.jobs_per_sec() / raw_1k,
        big.jobs_per_sec() / raw_10k
    );
    println!(
        "p99 at half the peak rate: {} ms   goal < 100 ms\n",
        fmt(paced.p(99.0))
    );

    // Machine CPU per job, by process.
    let mut cpu_rows = vec![header(&[
        "CPU ms per job",
        "fleet",
        "postgres",
        "rabbitmq",
        "qdrant",
        "machine",
        "bench client",
    ])];
    for (name, run) in [
        ("1 KB single", &single),
        ("1 KB batch", &batch),
        ("10 KB batch", &big),
        ("1 KB batch, one standard tenant", &alone),
    ] {
        cpu_rows.push(cpu_row(name, run));
    }
    print_table(&cpu_rows);
    println!("(machine = every process but the benchmark's client; goal ≤ 1 ms per job at 1 KB)\n");

    // 3. Where the time goes.
    let mut stage_rows = vec![header(&[
        "stage (mean ms per job)",
        "1 KB single",
        "1 KB batch",
        "10 KB batch",
    ])];
    stage_rows.push(vec![
        "HTTP call (client side, per call)".into(),
        fmt(mean(&single.http)),
        fmt(mean(&batch.http)),
        fmt(mean(&big.http)),
    ]);
    let describe = |name: &str| match name {
        "backlog" => "Postgres backlog (created → published)",
        "broker" => "broker queue (published → started)",
        "chunk" => "chunk",
        "embed" => "embed",
        "upsert" => "upsert (vectors flushed)",
        "record" => "Postgres (start + finish transactions)",
        _ => "?",
    };
    for (i, (name, _)) in single.stages.iter().enumerate() {
        stage_rows.push(vec![
            describe(name).into(),
            fmt(single.stages[i].1),
            fmt(batch.stages[i].1),
            fmt(big.stages[i].1),
        ]);
    }
    print_table(&stage_rows);
    println!();
    fleet.stop().await;

    // 4. Worker scaling.
    let mut scale_rows = vec![header(&[
        "worker tasks",
        "docs",
        "jobs/s",
        "chunks/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "ratio to raw",
        "CPU ms/job",
        "peak RSS MiB",
    ])];
    for workers in [1, 2, 4] {
        let f = Fleet::start(&services, workers, &[]).await?;
        let p = load::pool(&f).await?;
        let k = f.tenants("scale", 1, "collection", "enterprise").await?;
        let run = load::ingest(&f, &p, &k, docs, 1024, Submit::Batch { concurrency: 4 }).await?;
        let mut r = row(&workers.to_string(), &run, raw_1k);
        r.push(format!("{:.2}", run.machine_ms_per_job()));
        r.push(fmt(f.memory_mib().1));
        scale_rows.push(r);
        p.close().await;
        f.stop().await;
    }
    print_table(&scale_rows);
    println!();

    // 4b. Worker processes on a Qdrant server, when one is configured.
    if let Ok(url) = std::env::var(config::ENV_QDRANT_URL) {
        qdrant_scale_out(&services, &url, docs, raw_1k).await?;
    }

    // 5. Tenants sharing the load, in both isolation modes.
    let mut tenant_rows = vec![header(&[
        "tenants",
        "mode",
        "docs",
        "jobs/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "setup s",
        "peak RSS MiB",
    ])];
    for tenants in [1, 100, 10_000]
        .into_iter()
        .filter(|t| *t <= max_tenants)
        .chain((max_tenants < 10_000 && max_tenants > 100).then_some(max_tenants))
    {
        for mode in cli.modes.iter().map(String::as_str) {
            let f = Fleet::start(&services, cli.workers, &[]).await?;
            let p = load::pool(&f).await?;
            let setup = std::time::Instant::now();
            let k = f.tenants("t", tenants, mode, "enterprise").await?;
            let setup = setup.elapsed().as_secs_f64();
            let n = docs.max(tenants);
            let run = load::ingest(&f, &p, &k, n, 1024, Submit::Batch { concurrency: 4 }).await?;
            tenant_rows.push(vec![
                tenants.to_string(),
                mode.into(),
                n.to_string(),
                fmt(run.jobs_per_sec()),
                fmt(run.p(50.0)),
                fmt(run.p(95.0)),
                fmt(run.p(99.0)),
                fmt(setup),
                fmt(f.memory_mib().1),
            ]);
            p.close().await;
            f.stop().await;
        }
    }
    print_table(&tenant_rows);
    println!();

    // 6. Fairness: a small tenant beside a deep backlog, and 100 equal tenants.
    fairness(
        &services,
        cli.workers,
        if cli.quick { 2000 } else { 10_000 },
    )
    .await?;

    println!(
        "memory: fleet idle {} MiB resident (goal < 50), peak {} MiB during the runs above",
        fmt(idle_rss),
        fmt(peak_rss)
    );
    Ok(())
}

async fn fairness(services: &Services, workers: usize, backlog: usize) -> anyhow::Result<()> {
    // B alone on an idle fleet.
    let f = Fleet::start(services, workers, &[]).await?;
    let p = load::pool(&f).await?;
    let b = f.tenants("b", 1, "collection", "standard").await?;
    load::ingest(&f, &p, &b, 20, 1024, Submit::Batch { concurrency: 1 }).await?;
    let solo = load::measure(&p, Some("b-0")).await?;
    p.close().await;
    f.stop().await;

    // B after A submitted a deep backlog.
    let f = Fleet::start(services, workers, &[]).await?;
    let p = load::pool(&f).await?;
    let a = f.tenants("a", 1, "collection", "pro").await?;
    let b = f.tenants("b", 1, "collection", "standard").await?;
    load::submit(&f, &a, 0, backlog, 1024, Submit::Batch { concurrency: 4 }).await?;
    load::submit(&f, &b, 0, 20, 1024, Submit::Batch { concurrency: 1 }).await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE tenant_id = 'b-0' AND status = 'FINISHED'",
        )
        .fetch_one(&p)
        .await?;
        if done >= 20 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "B's jobs did not finish"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let loaded = load::measure(&p, Some("b-0")).await?;
    let a_pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE tenant_id = 'a-0' AND status <> 'FINISHED'",
    )
    .fetch_one(&p)
    .await?;
    let a_all = load::measure(&p, Some("a-0")).await?;
    p.close().await;
    f.stop().await;
    // "One batch of in-flight work": the fleet window of jobs ahead of B, at the
    // fleet's own pace (A's jobs/s while B was running).
    let window = f64::from(config::Settings::from_lookup(|_| None).map_or(256, |s| s.fleet_window));
    let in_flight_ms = window / a_all.jobs_per_sec().max(1e-9) * 1000.0;
    let (solo_p95, loaded_p95) = (solo.p(95.0), loaded.p(95.0));
    println!(
        "fairness: A (plan pro, weight 4) submits {backlog} documents, then B (standard, weight 1) submits 20"
    );
    println!(
        "  B p95 submit → FINISHED: {} ms beside A's backlog, {} ms alone; goal ≤ 2 × alone + one window ({} jobs ≈ {} ms) = {} ms; A still pending: {a_pending}",
        fmt(loaded_p95),
        fmt(solo_p95),
        window,
        fmt(in_flight_ms),
        fmt(2.0 * solo_p95 + in_flight_ms)
    );

    // 100 equal tenants, every backlog built before the workers start, so what is
    // measured is the steady state, not who arrived first.
    let mut f = Fleet::start_held(services, workers).await?;
    let p = load::pool(&f).await?;
    let keys = f.tenants("eq", 100, "partition", "standard").await?;
    let before = load::ended(&p).await?;
    load::submit(&f, &keys, 0, 5000, 1024, Submit::Batch { concurrency: 4 }).await?;
    f.release_workers().await?;
    load::wait_ended(&p, before + 5000).await?;
    // The middle of the run, when every tenant still has a backlog.
    let counts = load::completions_by_tenant(&p, 1000, 4000).await?;
    p.close().await;
    f.stop().await;
    let mut shares: Vec<f64> = counts.iter().map(|(_, n)| *n as f64).collect();
    let fair = 3000.0 / 100.0;
    let worst = shares
        .iter()
        .map(|n| (n - fair).abs() / fair)
        .fold(0.0, f64::max);
    println!(
        "  100 equal tenants, 50 documents each: {} tenants served in the middle 3000 completions; per tenant min {} / median {} / max {} (fair {fair}); worst deviation {:.1}%   goal ≤ 10%\n",
        counts.len(),
        fmt(percentile(&mut shares, 0.0)),
        fmt(percentile(&mut shares, 50.0)),
        fmt(percentile(&mut shares, 100.0)),
        worst * 100.0
    );
    Ok(())
}

/// `worker` processes on a Qdrant server: a backlog is built first, then N processes
/// drain it (the rate is jobs over the time from starting them to the last finish).
async fn qdrant_scale_out(
    services: &Services,
    url: &str,
    docs: usize,
    raw_1k: f64,
) -> anyhow::Result<()> {
    let mut extra = vec![
        (config::ENV_VECTOR_BACKEND, "qdrant".to_owned()),
        (config::ENV_QDRANT_URL, url.to_owned()),
    ];
    if let Ok(key) = std::env::var(config::ENV_QDRANT_API_KEY) {
        extra.push((config::ENV_QDRANT_API_KEY, key));
    }
    let mut rows = vec![header(&[
        "Qdrant server: drain",
        "docs",
        "jobs/s",
        "ratio to raw",
        "fleet",
        "postgres",
        "rabbitmq",
        "qdrant",
        "machine CPU ms/job",
    ])];
    let total = docs * 3;
    let shapes: Vec<(String, usize, usize, &str)> = [1, 2, 4]
        .into_iter()
        .map(|n| {
            (
                format!("{n} worker process(es), 10 tenants"),
                n,
                10,
                "enterprise",
            )
        })
        .chain(std::iter::once((
            "2 worker processes, one standard tenant".to_owned(),
            2,
            1,
            "standard",
        )))
        .collect();
    for (name, processes, tenants, plan) in shapes {
        let mut f = Fleet::start(services, 0, &extra).await?;
        let p = load::pool(&f).await?;
        let keys = f.tenants("q", tenants, "collection", plan).await?;
        for i in 0..tenants {
            f.set_quotas(
                &format!("q-{i}"),
                serde_json::json!({ "DOCUMENTS": 10_000_000 }),
            )
            .await?;
        }
        let before = load::ended(&p).await?;
        load::submit(&f, &keys, 0, total, 1024, Submit::Batch { concurrency: 4 }).await?;
        let scope_before = {
            f.add_worker_processes(processes)?;
            f.scope().snapshot()
        };
        let started = std::time::Instant::now();
        load::wait_ended(&p, before + total as i64).await?;
        let elapsed = started.elapsed().as_secs_f64();
        let used = cpu::between(&scope_before, &f.scope().snapshot());
        let per_job =
            |role: cpu::Role| used.get(&role).copied().unwrap_or(0.0) * 1000.0 / total as f64;
        let rate = total as f64 / elapsed.max(1e-9);
        let machine: f64 = [
            cpu::Role::Fleet,
            cpu::Role::Postgres,
            cpu::Role::RabbitMq,
            cpu::Role::Qdrant,
        ]
        .into_iter()
        .map(per_job)
        .sum();
        rows.push(vec![
            name,
            total.to_string(),
            fmt(rate),
            format!("{:.2}", rate / raw_1k),
            format!("{:.3}", per_job(cpu::Role::Fleet)),
            format!("{:.3}", per_job(cpu::Role::Postgres)),
            format!("{:.3}", per_job(cpu::Role::RabbitMq)),
            format!("{:.3}", per_job(cpu::Role::Qdrant)),
            format!("{machine:.3}"),
        ]);
        p.close().await;
        f.stop().await;
    }
    print_table(&rows);
    println!(
        "(the backlog is built before the worker processes start; fleet = dispatcher + workers)\n"
    );
    Ok(())
}

async fn truncate_jobs(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    // Keeps later runs' percentiles to their own jobs: ended jobs move aside.
    sqlx::query("UPDATE jobs SET status = 'CANCELLED' WHERE status IN ('FINISHED', 'FAILED')")
        .execute(pool)
        .await?;
    Ok(())
}

fn cpu_row(name: &str, run: &load::Run) -> Vec<String> {
    let mut cells = vec![name.to_owned()];
    for role in [
        cpu::Role::Fleet,
        cpu::Role::Postgres,
        cpu::Role::RabbitMq,
        cpu::Role::Qdrant,
    ] {
        cells.push(format!("{:.3}", run.cpu_ms_per_job(role)));
    }
    cells.push(format!("{:.3}", run.machine_ms_per_job()));
    cells.push(format!("{:.3}", run.cpu_ms_per_job(cpu::Role::Bench)));
    cells
}

fn header(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| (*s).to_owned()).collect()
}

fn row(name: &str, run: &load::Run, raw: f64) -> Vec<String> {
    vec![
        name.to_owned(),
        run.jobs.to_string(),
        fmt(run.jobs_per_sec()),
        fmt(run.chunks_per_sec()),
        fmt(run.p(50.0)),
        fmt(run.p(95.0)),
        fmt(run.p(99.0)),
        format!("{:.2}", run.jobs_per_sec() / raw),
    ]
}
