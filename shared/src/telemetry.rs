//! Logging: human-readable text by default, JSON lines with `TENANTRY_LOG_FORMAT=json`.
//! `RUST_LOG` filters (default `info`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// What is logged when `RUST_LOG` is unset: our own info and above, and only errors
/// from the embedded engine (whose info and warnings are internal chatter).
pub const DEFAULT_FILTER: &str = "info,qdrant_edge=error";

/// Installs the global subscriber once; later calls do nothing (tests call it often).
pub fn init(format: LogFormat) {
    init_with_default(format, DEFAULT_FILTER);
}

/// As [`init`], with another filter when `RUST_LOG` is unset.
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Cancels `stop` on SIGINT or SIGTERM (the graceful-shutdown trigger of every binary).
pub async fn stop_on_signal(stop: tokio_util::sync::CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("Stopping: finishing in-flight work.");
    stop.cancel();
}
