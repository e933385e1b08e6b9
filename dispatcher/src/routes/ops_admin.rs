//! The operator's views of the fleet: `GET /metrics` (Prometheus text) and
//! `GET /v1/admin/queues` (the same view as JSON), and the middleware that counts
//! refused calls for the metrics.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tenantry::fleet::{self, QueueView};
use tenantry::metrics::{self, FleetView};

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::extract::ApiQuery;
use crate::state::AppState;

/// Queue counts, or None (logged) when the broker does not answer.
async fn read_queues(state: &AppState) -> Option<Vec<QueueView>> {
    match state.probe.queues(&state.topology).await {
        Ok(q) => Some(q),
        Err(e) => {
            tracing::warn!(error = %e, "Could not read queue depth from the broker.");
            None
        }
    }
}

/// `GET /metrics` on the public API port: admin token only. The exposition names
/// tenants (their backlog and in-flight jobs), so a tenant's key may not read it.
pub async fn metrics(State(state): State<AppState>, _admin: Admin) -> Response {
    render(&state).await
}

/// The operator-only listener (`TENANTRY_METRICS_ADDR`): `/metrics` without
/// credentials, as Prometheus scrapes a worker, and `/healthz`. Bind it where only the
/// operator's network reaches.
pub fn operator_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(state): State<AppState>| async move { render(&state).await }),
        )
        .route("/healthz", get(super::ops::healthz))
        .layer(crate::request_span::layer())
        .with_state(state)
}

/// This process's counters and histograms, and the fleet's queues, backlog and
/// workers. Postgres being down leaves the Postgres-backed gauges out rather than
/// failing the scrape (the broker's view is still worth having).
async fn render(state: &AppState) -> Response {
    let queues = read_queues(state).await;
    let snapshot = match fleet::snapshot(&state.pool, state.settings.worker.heartbeat).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "Could not read the backlog for /metrics.");
            None
        }
    };
    let body = state
        .metrics
        .render(&FleetView {
            queues: queues.as_deref(),
            snapshot: snapshot.as_ref(),
            top_tenants: state.settings.metrics_top_tenants,
        })
        .await;
    ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueuesQuery {
    /// Most tenants listed (deepest backlog first).
    pub limit: Option<usize>,
}

/// `GET /v1/admin/queues`: depth and consumers of every queue (the broker's count),
/// per-tenant backlog and in-flight jobs, live workers, dead letters.
pub async fn queues(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<QueuesQuery>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 10000"));
    }
    let heartbeat = state.settings.worker.heartbeat;
    let (queues, snapshot) =
        tokio::join!(read_queues(&state), fleet::snapshot(&state.pool, heartbeat));
    let snapshot = snapshot?;
    let queued_dead = queues
        .as_ref()
        .and_then(|qs| qs.iter().find(|q| q.role == "dead").map(|q| q.messages));
    let jobs = queues
        .as_ref()
        .and_then(|qs| qs.iter().find(|q| q.role == "jobs").cloned());
    let tenants_total = snapshot.tenants.len();
    let tenants: Vec<_> = snapshot.tenants.iter().take(limit).collect();
    Ok(Json(json!({
        "broker": { "up": queues.is_some() },
        "jobs_queue": jobs,
        "queues": queues.unwrap_or_default(),
        "backlog": snapshot.backlog,
        "in_flight": snapshot.in_flight,
        "tenants": tenants,
        "tenants_total": tenants_total,
        "workers": snapshot.workers,
        "workers_live": snapshot.workers.len(),
        "worker_tasks_live": snapshot.workers.iter().map(|w| i64::from(w.concurrency)).sum::<i64>(),
        "heartbeat_secs": heartbeat.as_secs(),
        "dead_letters": {
            "queued": queued_dead,
            "recorded": snapshot.dead_letters.recorded,
            "pending": snapshot.dead_letters.pending,
        },
    }))
    .into_response())
}

/// Counts every 429 answer (a rate limit, or a quota that frees up by itself) by its
/// code. Quota refusals by resource are counted where they are decided.
pub async fn count_refusals(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    // Every 429 of this router is an `ApiError`, so it carries its code.
    if response.status() == StatusCode::TOO_MANY_REQUESTS
        && let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>()
    {
        state.metrics.rate_limited(*code);
    }
    response
}
