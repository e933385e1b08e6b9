//! The span every HTTP call runs in, and the one place an error answer is logged.
//!
//! Each call gets a `request` span with its `method` and `route` (the matched path
//! template, e.g. `/v1/jobs/{id}`, never the raw URI: ids stay out of the span's name
//! space and the field stays low-cardinality); `tenant_id` is recorded once the caller is
//! authenticated ([`record_tenant`]), `status` and `latency_ms` when the answer leaves.
//! [`on_response`] then writes the call's one event: a server-side failure at error level
//! (503 at warn) with its [`Cause`], a refusal at debug with its code.

use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::response::Response;
use tenantry::tenancy::TenantId;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing::field::Empty;

use crate::error::{Cause, ErrorCode};

/// The `route` of a call no route matched (the 404 and 405 fallbacks).
pub const UNMATCHED: &str = "unmatched";

/// [`layer`]'s type: `TraceLayer` with our span and response hook, and its own hooks off.
pub type RequestTraceLayer = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request) -> Span,
    (),
    fn(&Response, Duration, &Span),
    (),
    (),
    (),
>;

/// The tracing layer of the API router: our span, our one event per answer, and none of
/// `TraceLayer`'s own events (its failure hook would log a 5xx a second time).
pub fn layer() -> RequestTraceLayer {
    TraceLayer::new_for_http()
        .make_span_with(make_span as fn(&Request) -> Span)
        .on_request(())
        .on_response(on_response as fn(&Response, Duration, &Span))
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

fn make_span(request: &Request) -> Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str);
    tracing::info_span!(
        "request",
        method = %request.method(),
        route,
        status = Empty,
        latency_ms = Empty,
        tenant_id = Empty,
    )
}

/// Records the authenticated tenant on the current call's span.
pub fn record_tenant(tenant: &TenantId) {
    Span::current().record("tenant_id", tenant.as_str());
}

fn on_response(response: &Response, latency: Duration, span: &Span) {
    let status = response.status();
    span.record("status", status.as_u16());
    span.record(
        "latency_ms",
        u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
    );
    let code = response
        .extensions()
        .get::<ErrorCode>()
        .map(|c| c.0.as_str());
    match response.extensions().get::<Cause>() {
        Some(cause) if status == StatusCode::SERVICE_UNAVAILABLE => {
            tracing::warn!(code, error = %cause.error, "{}", cause.context);
        }
        Some(cause) => tracing::error!(code, error = %cause.error, "{}", cause.context),
        None if status.is_server_error() && code.is_some() => {
            tracing::error!(code, "Request failed.");
        }
        None if code.is_some() => tracing::debug!(code, "Request refused."),
        None => tracing::debug!("Request answered."),
    }
}
