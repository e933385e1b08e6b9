//! The `worker` binary: runs workers only. Several `worker` processes need the Qdrant
//! server back-end (`TENANTRY_VECTOR_BACKEND=qdrant`): the embedded store belongs to
//! one process. Kept in the library so tests can run the very same program.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tenantry::broker::Topology;
use tenantry::checkpoint::{self, Checkpointer};
use tenantry::config::Settings;
use tenantry::metrics::Metrics;
use tenantry::{db, embed, vector};
use tokio_util::sync::CancellationToken;

use crate::heartbeat::Mode;
use crate::{Resources, metrics_server, run_workers};

#[derive(Debug, Parser)]
#[command(version, about = "tenantry worker: consumes jobs and writes vectors")]
struct Args {
    /// Worker tasks in this process (default: TENANTRY_WORKER_CONCURRENCY, else 1).
    #[arg(long)]
    concurrency: Option<usize>,
}

/// The whole program: parses arguments and the environment, runs until SIGTERM.
pub fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("worker: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("worker: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args, settings))
}

async fn run(args: Args, settings: Settings) -> std::process::ExitCode {
    tenantry::telemetry::init(settings.log_format);
    let stop = CancellationToken::new();
    tokio::spawn(tenantry::telemetry::stop_on_signal(stop.clone()));
    let count = args
        .concurrency
        .unwrap_or(settings.worker.concurrency)
        .max(1);
    let result: anyhow::Result<()> = async {
        let metrics = Metrics::shared();
        let metrics_addr = match settings.metrics_addr {
            Some(addr) => {
                let listener = metrics_server::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics listener on {addr}"))?;
                let bound = listener.local_addr().context("metrics listener address")?;
                tracing::info!(addr = %bound, "Serving /metrics.");
                tokio::spawn(metrics_server::serve(
                    listener,
                    metrics.clone(),
                    settings.amqp_url.clone(),
                    Topology::new(&settings.queue_prefix),
                    stop.child_token(),
                ));
                Some(bound.to_string())
            }
            None => None,
        };
        let pool = db::connect_with_retry(&settings.database_url, 4 + count as u32, &stop)
            .await
            .context("connecting to PostgreSQL")?;
        let store = vector::open(&settings).await?;
        let embedder = embed::from_settings(&settings.embedder)?;
        let fleet = settings.queue_prefix.clone();
        if checkpoint::recover_with_retry(&pool, store.as_ref(), embedder.as_ref(), &fleet, &stop)
            .await
            .is_none()
        {
            return Ok(());
        }
        let checkpoints = tokio::spawn(
            Checkpointer {
                pool: pool.clone(),
                store: Arc::clone(&store),
                period: settings.checkpoint_period,
            }
            .run(stop.child_token()),
        );
        let resources = Resources {
            settings,
            pool: pool.clone(),
            store: Arc::clone(&store),
            embedder,
            on_job_end: None,
            metrics: Arc::clone(&metrics),
            mode: Mode::Process,
            metrics_addr,
        };
        let ran = run_workers(resources, count, stop.clone()).await;
        let _ = checkpoints.await;
        if store.defers_durability()
            && let Err(e) = checkpoint::checkpoint(&pool, store.as_ref()).await
        {
            tracing::warn!(error = %e, "The last checkpoint failed; the next start recovers.");
        }
        ran
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) if stop.is_cancelled() => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
