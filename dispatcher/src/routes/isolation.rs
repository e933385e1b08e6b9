//! `PATCH /v1/admin/tenants/{id}` with `{"isolation": "collection" | "partition"}`: switches
//! a tenant's isolation mode and has the mover move its points (see
//! `tenantry::db::isolation` for the protocol). `GET /v1/admin/tenants/{id}/isolation`
//! shows the latest move.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tenantry::db::{self, isolation::SwitchOutcome};
use tenantry::error_code::Code;
use tenantry::tenancy::IsolationMode;

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchIsolation {
    pub isolation: IsolationMode,
}

/// `PATCH /v1/admin/tenants/{id}` (the isolation field). Answers `202` with the tenant and
/// the move when the mode changes (points move in the background; poll
/// `GET …/isolation`), `200` when the tenant already has the mode, `409` while a previous
/// move is still running.
pub async fn patch_isolation(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PatchIsolation>,
) -> ApiResult<Response> {
    let id = super::admin::parse_tenant_id(&id)?;
    let mut tx = state.pool.begin().await?;
    let before = db::tenants::get(&mut tx, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    match db::isolation::switch(&mut tx, &id, body.isolation).await? {
        SwitchOutcome::NotFound => Err(ApiError::not_found("tenant")),
        SwitchOutcome::Busy(running) => Err(ApiError::new(
            Code::IsolationMoveInProgress,
            format!(
                "the tenant's points are still moving from {} to {}; try again when GET /v1/admin/tenants/{id}/isolation says finished",
                running.from.as_str(),
                running.to.as_str()
            ),
        )),
        SwitchOutcome::Unchanged => {
            tx.rollback().await?;
            Ok(Json(json!({ "tenant": before, "move": null })).into_response())
        }
        SwitchOutcome::Switched(movement) => {
            let after = db::tenants::get(&mut tx, &id)
                .await?
                .ok_or_else(|| ApiError::not_found("tenant"))?;
            db::audit::record(
                &mut tx,
                Some(&id),
                Admin::ACTOR,
                "tenant.isolation_changed",
                Some(json!({ "isolation": before.isolation })),
                Some(json!({ "isolation": after.isolation })),
            )
            .await?;
            tx.commit().await?;
            state.keys.forget_tenant(id.as_str());
            state.move_wake.notify_one();
            tracing::info!(
                tenant_id = %id,
                from = movement.from.as_str(),
                to = movement.to.as_str(),
                "Switched a tenant's isolation mode; its points are moving."
            );
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "tenant": after, "move": movement })),
            )
                .into_response())
        }
    }
}

/// `GET /v1/admin/tenants/{id}/isolation`: the mode and the latest move (or null).
pub async fn show_isolation(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let tenant = super::admin::find_tenant(&state, &id).await?;
    let movement = db::isolation::latest(&state.pool, &tenant.id).await?;
    Ok(Json(json!({ "isolation": tenant.isolation, "move": movement })).into_response())
}
