//! `/metrics` (and `/healthz`) of a `worker` process, on `TENANTRY_METRICS_ADDR`: the
//! process's counters and histograms, and the depth and consumers of the fleet's
//! queues as the broker counts them.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tenantry::broker::Topology;
use tenantry::fleet::BrokerProbe;
use tenantry::metrics::{self, FleetView, Metrics};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct Scrape {
    metrics: Arc<Metrics>,
    probe: BrokerProbe,
    topology: Topology,
}

/// Binds `addr`; the returned address is the one bound (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `stop`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    amqp_url: String,
    topology: Topology,
    stop: CancellationToken,
) {
    let state = Arc::new(Scrape {
        metrics,
        probe: BrokerProbe::new(&amqp_url, "tenantry-worker-metrics"),
        topology,
    });
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state.clone());
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "The metrics listener stopped.");
    }
    state.probe.close().await;
}

async fn render(State(scrape): State<Arc<Scrape>>) -> impl IntoResponse {
    let queues = scrape.probe.queues(&scrape.topology).await.ok();
    let body = scrape
        .metrics
        .render(&FleetView {
            queues: queues.as_deref(),
            snapshot: None,
            top_tenants: 0,
        })
        .await;
    ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], body)
}
