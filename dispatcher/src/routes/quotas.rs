//! Quotas and usage: the admin's per-tenant overrides, the tenant's own views, and
//! the billing view of every tenant.
//!
//! Over a limit, submissions answer `quota_exceeded` naming the resource: 429 with
//! `Retry-After` where waiting frees it (API_CALLS_PER_HOUR, PROCESSING_JOBS), 403
//! where only deleting something or a higher limit can (DOCUMENTS, STORAGE_MB,
//! VECTOR_COLLECTIONS) — see `ApiError::quota`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tenantry::db::quotas::{self as quota_db, MAX_USAGE_DAYS};
use tenantry::quota::{self, ResourceKind};
use tenantry::tenancy::TenantId;

use crate::auth::{Admin, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

const DEFAULT_USAGE_DAYS: i64 = 30;
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

fn parse_tenant_id(raw: &str) -> ApiResult<TenantId> {
    // A malformed id cannot name an existing tenant.
    TenantId::parse(raw).map_err(|_| ApiError::not_found("tenant"))
}

/// Checks a `{kind: limit}` object: every key a resource kind, every value a valid
/// limit. The first bad entry is named (by its key) in the 422.
fn parse_overrides(body: &Map<String, Value>) -> ApiResult<BTreeMap<ResourceKind, i64>> {
    let mut overrides = BTreeMap::new();
    for (key, value) in body {
        let kind = ResourceKind::parse(key).ok_or_else(|| {
            let kinds: Vec<&str> = ResourceKind::ALL.iter().map(|k| k.as_str()).collect();
            ApiError::invalid(
                key,
                format!("is not a resource kind (one of {})", kinds.join(", ")),
            )
        })?;
        let limit = quota::validate_limit(kind, value).map_err(|e| ApiError::invalid(key, e))?;
        overrides.insert(kind, limit);
    }
    Ok(overrides)
}

/// `PUT /v1/admin/tenants/{id}/quotas`: `{"DOCUMENTS": 10, ...}` replaces the
/// tenant's overrides (a kind left out takes the plan's default again; `{}` clears
/// them all). Answers the tenant's `TenantQuotas` under the new limits. A limit
/// below the current usage is accepted: nothing more of that resource is reserved
/// until usage falls under it, and the view shows `is_over_limit`.
pub async fn set_overrides(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let tenant = parse_tenant_id(&id)?;
    let Value::Object(body) = body else {
        return Err(ApiError::invalid(
            "body",
            "must be a JSON object of resource kind → limit",
        ));
    };
    let overrides = parse_overrides(&body)?;
    let view = quota_db::set_overrides(&state.pool, &tenant, &overrides, Admin::ACTOR)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    // This process's cached copy of the tenant is stale now; the limits themselves
    // are read from Postgres by every reservation, fleet-wide, so they hold at once.
    state.keys.forget_tenant(tenant.as_str());
    state.calls.forget(&tenant);
    tracing::info!(tenant_id = %tenant, overrides = ?overrides, "Quota overrides set.");
    Ok(Json(view).into_response())
}

/// `GET /v1/admin/tenants/{id}/quotas`: the same view as the tenant's own.
pub async fn admin_show(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let tenant = parse_tenant_id(&id)?;
    let view = quota_db::tenant_quotas(&state.pool, &tenant)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    Ok(Json(view).into_response())
}

/// `GET /v1/tenant/quotas`: limits, usage, percentages, warnings at ≥ 80 %,
/// `is_over_limit`.
pub async fn show(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let view = quota_db::tenant_quotas(&state.pool, &caller.tenant.id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    Ok(Json(view).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    pub days: Option<String>,
}

fn parse_days(raw: Option<&str>) -> ApiResult<i64> {
    match raw {
        None => Ok(DEFAULT_USAGE_DAYS),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|d| (1..=MAX_USAGE_DAYS).contains(d))
            .ok_or_else(|| {
                ApiError::invalid(
                    "days",
                    format!("must be a whole number of days between 1 and {MAX_USAGE_DAYS}"),
                )
            }),
    }
}

/// `GET /v1/tenant/usage?days=N`: `TenantUsageStats` over the last N days (default 30).
pub async fn usage(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> ApiResult<Response> {
    let days = parse_days(q.days.as_deref())?;
    let stats = quota_db::usage_stats(&state.pool, &caller.tenant.id, days)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    Ok(Json(stats).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminUsageQuery {
    pub days: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// `GET /v1/admin/usage?days=N&limit=&cursor=`: every tenant's usage over the
/// period with its limits and counters now, by tenant id, a page at a time.
pub async fn admin_usage(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<AdminUsageQuery>,
) -> ApiResult<Response> {
    let days = parse_days(q.days.as_deref())?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_PAGE).contains(l))
            .ok_or_else(|| {
                ApiError::invalid("limit", format!("must be between 1 and {MAX_PAGE}"))
            })?,
    };
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            TenantId::parse(c)
                .map_err(|_| ApiError::invalid("cursor", "is not a cursor from a previous page"))?,
        ),
    };
    let tenants = quota_db::all_usage(&state.pool, days, after.as_ref(), limit).await?;
    let next_cursor = (tenants.len() as i64 == limit)
        .then(|| tenants.last().map(|t| t.usage.tenant_id.clone()))
        .flatten();
    let (period_start, period_end) = tenants
        .first()
        .map(|t| (Some(t.usage.period_start), Some(t.usage.period_end)))
        .unwrap_or_default();
    Ok(Json(json!({
        "days": days,
        "period_start": period_start,
        "period_end": period_end,
        "tenants": tenants,
        "next_cursor": next_cursor,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_name_the_bad_field() {
        let ok: Map<String, Value> =
            serde_json::from_value(json!({"DOCUMENTS": 10, "STORAGE_MB": 0})).unwrap();
        let parsed = parse_overrides(&ok).unwrap();
        assert_eq!(parsed[&ResourceKind::Documents], 10);
        let bad: Map<String, Value> = serde_json::from_value(json!({"DOCUMENT": 10})).unwrap();
        assert!(
            parse_overrides(&bad)
                .unwrap_err()
                .message
                .starts_with("DOCUMENT:")
        );
        let bad: Map<String, Value> = serde_json::from_value(json!({"DOCUMENTS": -1})).unwrap();
        assert!(
            parse_overrides(&bad)
                .unwrap_err()
                .message
                .starts_with("DOCUMENTS:")
        );
        assert_eq!(parse_days(None).unwrap(), 30);
        assert!(parse_days(Some("0")).is_err());
        assert!(parse_days(Some("abc")).is_err());
        assert_eq!(parse_days(Some("7")).unwrap(), 7);
    }
}
