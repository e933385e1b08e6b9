//! `dispatcher`: serves the HTTP API; `--workers N` also runs N workers in-process
//! (the all-in-one mode, required by the embedded vector store); `--demo` runs the
//! newcomer's demo on the samples and exits.

use std::path::PathBuf;

use clap::Parser;
use tenantry::config::{self, Settings};
use tenantry_dispatcher::Application;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "tenantry dispatcher: the HTTP API (and, with --workers, the whole fleet)"
)]
struct Args {
    /// Workers to run inside this process (0: API only).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Run the demo: ingest the samples for two tenants, print a summary, exit.
    /// Uses the development profile and a one-off admin token unless configured.
    #[arg(long)]
    demo: bool,
    /// Where the demo's sample documents are (one folder per tenant).
    #[arg(long, default_value = "samples")]
    samples: PathBuf,
}

fn load_settings(demo: bool) -> Result<Settings, config::ConfigError> {
    if !demo {
        return Settings::from_env();
    }
    let one_off_token = format!("demo-{}", uuid::Uuid::new_v4().simple());
    Settings::from_lookup(|k| match std::env::var(k).ok().filter(|v| !v.is_empty()) {
        Some(v) => Some(v),
        None if k == config::ENV_PROFILE => Some("dev".into()),
        None if k == config::ENV_ADMIN_TOKEN => Some(one_off_token.clone()),
        // Any free port: the demo talks to itself and must not collide with a running fleet.
        None if k == config::ENV_HTTP_ADDR => Some("127.0.0.1:0".into()),
        None => None,
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let settings = match load_settings(args.demo) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dispatcher: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.demo {
        // The demo prints a table; only problems should interrupt it.
        tenantry::telemetry::init_with_default(settings.log_format, "warn,qdrant_edge=error");
    } else {
        tenantry::telemetry::init(settings.log_format);
    }
    if settings.profile == config::Profile::Dev
        && std::env::var(config::ENV_SIGNING_SECRET).is_err()
    {
        tracing::warn!(
            "Development profile: tenant stamps are signed with a built-in key. Set TENANTRY_SIGNING_SECRET in production."
        );
    }
    let stop = CancellationToken::new();
    tokio::spawn(tenantry::telemetry::stop_on_signal(stop.clone()));
    let result = if args.demo {
        let workers = args.workers.max(1);
        tenantry_dispatcher::demo::run(settings, workers, args.samples, stop.clone()).await
    } else {
        async {
            let app = Application::build(settings, args.workers, &stop).await?;
            app.run_until_stopped(stop.clone()).await
        }
        .await
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Asked to stop while still starting (e.g. waiting for Postgres): not a failure.
        Err(_) if stop.is_cancelled() && !args.demo => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dispatcher: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
