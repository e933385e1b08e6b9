//! `/v1/admin/dead-letters`: list dead letters (per tenant, or all) and replay one
//! (admin token only). A replay puts the job back into the Postgres backlog; the pump
//! republishes it, so a replay made while the broker is down is not lost.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tenantry::db::{self, dead_letters::ReplayError, dead_letters::ReplayOutcome};
use tenantry::error_code::Code;
use tenantry::tenancy::TenantId;
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiPath, ApiQuery};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListDeadLetters {
    pub tenant: Option<String>,
    pub limit: Option<i64>,
}

/// `GET /v1/admin/dead-letters?tenant=&limit=`: newest first. Without `tenant`, every
/// dead letter, including those attributed to no tenant (unsigned or forged messages).
pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<ListDeadLetters>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let tenant = match q.tenant.as_deref() {
        None | Some("") => None,
        Some(raw) => {
            let id = TenantId::parse(raw).map_err(|e| ApiError::invalid("tenant", e))?;
            let mut conn = state.pool.acquire().await?;
            if db::tenants::get(&mut conn, &id).await?.is_none() {
                return Err(ApiError::not_found("tenant"));
            }
            Some(id)
        }
    };
    let letters = db::dead_letters::list(&state.pool, tenant.as_ref(), limit).await?;
    Ok(Json(json!({ "dead_letters": letters })).into_response())
}

/// `POST /v1/admin/dead-letters/{id}/replay`: the job goes back to PENDING with its
/// full number of attempts; `202` once that is committed.
pub async fn replay(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("dead letter"))?;
    match db::dead_letters::replay(&state.pool, id, Admin::ACTOR).await {
        Ok(ReplayOutcome::Replayed { tenant, job_id }) => {
            state.pump_wake.notify_one();
            tracing::info!(dead_letter = %id, tenant_id = %tenant, job_id = %job_id, "Replayed a dead letter.");
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({
                    "dead_letter_id": id,
                    "tenant_id": tenant,
                    "job_id": job_id,
                    "status": "PENDING",
                })),
            )
                .into_response())
        }
        Ok(ReplayOutcome::NotFound) => Err(ApiError::not_found("dead letter")),
        Ok(ReplayOutcome::NotReplayable(why)) => {
            Err(ApiError::new(Code::NotReplayable, why.to_owned()))
        }
        Ok(ReplayOutcome::AlreadyReplayed(at)) => Err(ApiError::new(
            Code::AlreadyReplayed,
            format!("this dead letter was replayed at {}", at.to_rfc3339()),
        )),
        Ok(ReplayOutcome::JobNotFailed(status)) => Err(ApiError::new(
            Code::JobNotFailed,
            format!("the job is {status}; only FAILED jobs can be replayed"),
        )),
        Err(ReplayError::Quota(q)) => Err(ApiError::quota(&q, None)),
        Err(ReplayError::Sql(e)) => Err(e.into()),
    }
}
