//! `worker`: runs workers only. Several `worker` processes need the Qdrant server
//! back-end (`TENANTRY_VECTOR_BACKEND=qdrant`): the embedded store belongs to one process.

use anyhow::Context;
use clap::Parser;
use tenantry::config::Settings;
use tenantry::{db, embed, vector};
use tenantry_worker::{Resources, run_workers};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(version, about = "tenantry worker: consumes jobs and writes vectors")]
struct Args {
    /// Worker tasks in this process (default: TENANTRY_WORKER_CONCURRENCY, else 1).
    #[arg(long)]
    concurrency: Option<usize>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("worker: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tenantry::telemetry::init(settings.log_format);
    let stop = CancellationToken::new();
    tokio::spawn(tenantry::telemetry::stop_on_signal(stop.clone()));
    let count = args
        .concurrency
        .unwrap_or(settings.worker.concurrency)
        .max(1);
    let result: anyhow::Result<()> = async {
        let pool = db::connect_with_retry(&settings.database_url, 4 + count as u32, &stop)
            .await
            .context("connecting to PostgreSQL")?;
        let store = vector::open(&settings).await?;
        let embedder = embed::from_settings(&settings.embedder)?;
        let resources = Resources {
            settings,
            pool,
            store,
            embedder,
            on_job_end: None,
        };
        run_workers(resources, count, stop.clone()).await
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
