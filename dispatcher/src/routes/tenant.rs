//! `/v1/tenant…`: the calling tenant's own record and configuration (API key only;
//! the tenant is always the key's, never one named in a request).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tenantry::db;
use tenantry::tenant::TenantConfig;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::state::AppState;

/// `GET /v1/tenant`: `TenantInfo`, read fresh (the key cache may be a second old).
pub async fn show(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let info = db::tenants::info(&state.pool, &caller.tenant.id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    Ok(Json(info).into_response())
}

/// `TenantConfiguration` as the original plan shows it: `user_id` and every field.
fn config_view(caller: &Caller, config: &TenantConfig) -> ApiResult<Value> {
    let mut view = serde_json::to_value(config)
        .map_err(|e| ApiError::internal("Serialising a configuration failed.", e))?;
    if let Some(obj) = view.as_object_mut() {
        obj.insert(
            "user_id".into(),
            Value::String(caller.tenant.id.to_string()),
        );
    }
    Ok(view)
}

/// `GET /v1/tenant/config`
pub async fn get_config(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let mut conn = state.pool.acquire().await?;
    let tenant = db::tenants::get(&mut conn, &caller.tenant.id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    Ok(Json(config_view(&caller, &tenant.config)?).into_response())
}

/// Parses a configuration body so that every refusal names its field: an unknown
/// field, a wrong type, or a value out of range → 422 with `error.field`.
fn parse_config(caller: &Caller, value: Value) -> ApiResult<TenantConfig> {
    let Value::Object(mut obj) = value else {
        return Err(ApiError::invalid("body", "must be a JSON object"));
    };
    // `user_id` is shown by GET, so a GET-modify-PUT round trip sends it back; it may
    // only name the caller (a body never chooses the tenant).
    match obj.remove("user_id") {
        None | Some(Value::Null) => {}
        Some(Value::String(id)) if id == caller.tenant.id.as_str() => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "user_id",
                "must be omitted or be the calling tenant's id",
            ));
        }
    }
    let config: TenantConfig = crate::extract::from_value(Value::Object(obj))?;
    config
        .validate()
        .map_err(|e| ApiError::invalid(&e.field, e.message))?;
    Ok(config)
}

/// `PUT /v1/tenant/config`: replaces the whole configuration; absent fields take
/// their defaults. Workers use it for jobs they start after the tenant cache period.
pub async fn put_config(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<Response> {
    let config = parse_config(&caller, body)?;
    let actor = format!("tenant-key:{}", caller.key_id);
    db::tenants::set_config(&state.pool, &caller.tenant.id, &config, &actor)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    state.keys.forget_tenant(caller.tenant.id.as_str());
    if config.enable_auto_processing {
        // Jobs held while auto-processing was off may go now.
        state.pump_wake.notify_one();
    }
    Ok(Json(config_view(&caller, &config)?).into_response())
}
