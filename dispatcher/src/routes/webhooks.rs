//! `/v1/tenant/webhooks…`: the calling tenant's signing secret, its deliveries, and
//! redelivery of one. Another tenant's event ids answer 404.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tenantry::db::webhooks as outbox;
use tenantry::webhook::{EVENT_ID_HEADER, ROTATION_GRACE, SIGNATURE_HEADER};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery, PageQuery, page_limit, uuid_cursor};
use crate::state::AppState;

/// Most deliveries one page shows.
const MAX_PAGE: i64 = 100;

/// `POST /v1/tenant/webhooks/secret`: issues a new signing secret, shown this once.
/// The previous one (if any) keeps signing beside it for [`ROTATION_GRACE`].
pub async fn rotate_secret(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let (secret, previous_until) = outbox::rotate_secret(
        &state.pool,
        &state.sealer,
        &caller.tenant.id,
        ROTATION_GRACE,
    )
    .await?;
    tracing::info!(tenant_id = %caller.tenant.id, key_id = %caller.key_id, "Webhook secret issued.");
    let body = json!({
        "secret": secret,
        "previous_secret_valid_until": previous_until,
        "signature_header": SIGNATURE_HEADER,
        "event_id_header": EVENT_ID_HEADER,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /v1/tenant/webhooks/deliveries?status=&limit=&cursor=`: newest first.
pub async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Response> {
    let status = q.status.as_deref().filter(|s| !s.is_empty());
    if let Some(s) = status
        && !matches!(s, "pending" | "delivered" | "dead")
    {
        return Err(ApiError::invalid(
            "status",
            "must be one of pending, delivered, dead",
        ));
    }
    let limit = page_limit(q.limit, 20, MAX_PAGE)?;
    let after = uuid_cursor(q.cursor.as_deref())?;
    let page = outbox::list(&state.pool, &caller.tenant.id, status, after, limit).await?;
    let next_cursor = if page.len() as i64 == limit {
        page.last().map(|d| d.event_id)
    } else {
        None
    };
    Ok(Json(json!({ "deliveries": page, "next_cursor": next_cursor })).into_response())
}

/// `POST /v1/tenant/webhooks/deliveries/{id}/redeliver`: the event is due again now
/// (dead and delivered ones too), with a fresh retry period.
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("delivery"))?;
    let give_up = state.settings.webhook.retry.give_up;
    let view = outbox::redeliver(&state.pool, &caller.tenant.id, id, give_up)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}
