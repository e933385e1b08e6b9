//! The HTTP API's routes, in one table.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use tenantry::error_code::Code;

use crate::error::ApiError;
use crate::state::AppState;

pub mod admin;
pub mod dead_letters;
pub mod documents;
pub mod isolation;
pub mod jobs;
pub mod ops;
pub mod ops_admin;
pub mod quotas;
pub mod search;
pub mod tenant;
pub mod webhooks;

/// Every route of the dispatcher; testable without a socket.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.max_body_bytes;
    Router::new()
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/batch", post(jobs::submit_batch))
        .route("/v1/jobs/{id}", get(jobs::show).delete(jobs::cancel))
        .route("/v1/search", post(search::search))
        .route("/v1/documents/{id}", delete(documents::delete_document))
        .route(
            "/v1/admin/tenants",
            post(admin::create_tenant).get(admin::list_tenants),
        )
        .route("/v1/tenant", get(tenant::show))
        .route(
            "/v1/tenant/config",
            get(tenant::get_config).put(tenant::put_config),
        )
        .route(
            "/v1/admin/tenants/{id}",
            get(admin::show_tenant).patch(admin::patch),
        )
        .route("/v1/admin/tenants/{id}/audit", get(admin::list_audit))
        .route(
            "/v1/admin/tenants/{id}/isolation",
            get(isolation::show_isolation),
        )
        .route(
            "/v1/admin/tenants/{id}/keys",
            post(admin::issue_key).get(admin::list_keys),
        )
        .route(
            "/v1/admin/tenants/{id}/keys/{key_id}",
            delete(admin::revoke_key),
        )
        .route(
            "/v1/admin/tenants/{id}/quotas",
            put(quotas::set_overrides).get(quotas::admin_show),
        )
        .route("/v1/admin/usage", get(quotas::admin_usage))
        .route("/v1/tenant/webhooks/secret", post(webhooks::rotate_secret))
        .route("/v1/tenant/webhooks/deliveries", get(webhooks::deliveries))
        .route(
            "/v1/tenant/webhooks/deliveries/{id}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/v1/tenant/quotas", get(quotas::show))
        .route("/v1/tenant/usage", get(quotas::usage))
        .route("/v1/admin/dead-letters", get(dead_letters::list))
        .route(
            "/v1/admin/dead-letters/{id}/replay",
            post(dead_letters::replay),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops_admin::metrics))
        .route("/v1/admin/queues", get(ops_admin::queues))
        .fallback(|| async { ApiError::new(Code::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                Code::MethodNotAllowed,
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops_admin::count_refusals,
        ))
        // Outermost: the span covers the whole call, refusals by the layers above included.
        .layer(crate::request_span::layer())
        .with_state(state)
}
