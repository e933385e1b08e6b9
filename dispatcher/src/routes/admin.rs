//! `/v1/admin/…`: tenants and their keys (admin token only).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use tenantry::api_key::ApiKey;
use tenantry::db::{self, tenants::NewTenant, tenants::TenantWriteError};
use tenantry::error_code::Code;
use tenantry::tenancy::{IsolationMode, TenantId};
use tenantry::tenant::{Tenant, TenantChanges, TenantStatus};
use uuid::Uuid;

use crate::auth::Admin;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiBytes, ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

const MAX_NAME_LEN: usize = 200;
const MAX_EMAIL_LEN: usize = 254;

pub(crate) fn parse_tenant_id(raw: &str) -> ApiResult<TenantId> {
    // A malformed id cannot name an existing tenant.
    TenantId::parse(raw).map_err(|_| ApiError::not_found("tenant"))
}

/// The tenant named by a path id, or 404.
pub(crate) async fn find_tenant(state: &AppState, raw: &str) -> ApiResult<Tenant> {
    let id = parse_tenant_id(raw)?;
    let mut conn = state.pool.acquire().await?;
    db::tenants::get(&mut conn, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))
}

pub(crate) fn validate_name(field: &str, name: &str) -> ApiResult<()> {
    if name.trim().is_empty()
        || name.chars().count() > MAX_NAME_LEN
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            field,
            format!("must be 1–{MAX_NAME_LEN} characters without control characters"),
        ));
    }
    Ok(())
}

pub(crate) fn validate_email(email: &str) -> ApiResult<()> {
    let ok = email.len() <= MAX_EMAIL_LEN
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if !ok {
        return Err(ApiError::invalid("email", "must be an email address"));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Chosen by the admin, or generated when absent.
    pub id: Option<String>,
    pub name: String,
    pub email: String,
    pub plan: Option<String>,
    pub isolation: Option<IsolationMode>,
}

/// `POST /v1/admin/tenants`
pub async fn create_tenant(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateTenant>,
) -> ApiResult<Response> {
    let id = match body.id.as_deref() {
        Some(raw) => TenantId::parse(raw).map_err(|e| ApiError::invalid("id", e))?,
        None => TenantId::generate(),
    };
    validate_name("name", &body.name)?;
    validate_email(&body.email)?;
    let new = NewTenant {
        id,
        name: body.name.trim().to_owned(),
        email: body.email,
        plan: body.plan.unwrap_or_else(|| "standard".to_owned()),
        isolation: body.isolation.unwrap_or(IsolationMode::Collection),
    };
    match db::tenants::create(&state.pool, &new, Admin::ACTOR).await {
        Ok(tenant) => Ok((StatusCode::CREATED, Json(tenant)).into_response()),
        Err(TenantWriteError::Exists(id)) => Err(ApiError::new(
            Code::TenantExists,
            format!("tenant {id} already exists"),
        )),
        Err(TenantWriteError::UnknownPlan(plan)) => {
            Err(ApiError::invalid("plan", format!("unknown plan {plan:?}")))
        }
        Err(TenantWriteError::Sql(e)) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListTenants {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// `GET /v1/admin/tenants`
pub async fn list_tenants(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<ListTenants>,
) -> ApiResult<Response> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            TenantId::parse(c)
                .map_err(|_| ApiError::invalid("cursor", "is not a cursor from a previous page"))?,
        ),
    };
    let tenants = db::tenants::list(&state.pool, after.as_ref(), limit).await?;
    let next_cursor = (tenants.len() as i64 == limit)
        .then(|| tenants.last().map(|t| t.id.clone()))
        .flatten();
    Ok(Json(json!({ "tenants": tenants, "next_cursor": next_cursor })).into_response())
}

/// The admin's view of a tenant: the stored record (plan, isolation, overrides,
/// configuration) and its `TenantInfo` figures, in one object.
async fn admin_view(state: &AppState, tenant: &Tenant) -> ApiResult<serde_json::Value> {
    let info = db::tenants::info(&state.pool, &tenant.id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let mut view = serde_json::to_value(tenant)
        .map_err(|e| ApiError::internal("Serialising a tenant failed.", e))?;
    if let (Some(obj), Ok(serde_json::Value::Object(info))) =
        (view.as_object_mut(), serde_json::to_value(&info))
    {
        for (k, v) in info {
            obj.insert(k, v);
        }
    }
    Ok(view)
}

/// `GET /v1/admin/tenants/{id}`
pub async fn show_tenant(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let tenant = find_tenant(&state, &id).await?;
    Ok(Json(admin_view(&state, &tenant).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchTenant {
    pub name: Option<String>,
    pub email: Option<String>,
    pub plan: Option<String>,
    /// Strings, parsed here: serde_json reports a number where an enum is expected as a
    /// syntax error, which would answer 400 instead of a 422 naming the field.
    pub status: Option<String>,
    pub isolation: Option<String>,
}

/// Longest plan name accepted (plans are rows of `plans`; this only bounds the input).
const MAX_PLAN_LEN: usize = 64;

/// `PATCH /v1/admin/tenants/{id}`: name, email, plan, status (each change audited
/// with before and after). Absent fields keep their value.
pub async fn patch_tenant(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PatchTenant>,
) -> ApiResult<Response> {
    let id = parse_tenant_id(&id)?;
    if let Some(name) = &body.name {
        validate_name("name", name)?;
    }
    if let Some(email) = &body.email {
        validate_email(email)?;
    }
    if let Some(plan) = &body.plan
        && (plan.is_empty() || plan.len() > MAX_PLAN_LEN)
    {
        return Err(ApiError::invalid(
            "plan",
            format!("must be 1–{MAX_PLAN_LEN} characters"),
        ));
    }
    let status = match body.status.as_deref() {
        None => None,
        Some(raw) => Some(TenantStatus::parse(raw).ok_or_else(|| {
            ApiError::invalid("status", "must be one of ACTIVE, SUSPENDED, INACTIVE")
        })?),
    };
    let isolation = match body.isolation.as_deref() {
        None => None,
        Some(raw) => Some(IsolationMode::parse(raw).ok_or_else(|| {
            ApiError::invalid("isolation", "must be one of collection, partition")
        })?),
    };
    if let Some(mode) = isolation {
        let mut conn = state.pool.acquire().await?;
        let current = db::tenants::get(&mut conn, &id)
            .await?
            .ok_or_else(|| ApiError::not_found("tenant"))?;
        drop(conn);
        if current.isolation != mode {
            change_isolation(&state, &current, mode).await?;
        }
    }
    let changes = TenantChanges {
        name: body.name.map(|n| n.trim().to_owned()),
        email: body.email,
        plan: body.plan,
        status,
    };
    let tenant = match db::tenants::update(&state.pool, &id, &changes, Admin::ACTOR).await {
        Ok(Some(tenant)) => tenant,
        Ok(None) => return Err(ApiError::not_found("tenant")),
        Err(TenantWriteError::UnknownPlan(plan)) => {
            return Err(ApiError::invalid("plan", format!("unknown plan {plan:?}")));
        }
        Err(TenantWriteError::Exists(_)) => {
            return Err(ApiError::internal(
                "Updating a tenant reported a duplicate.",
                "unexpected",
            ));
        }
        Err(TenantWriteError::Sql(e)) => return Err(e.into()),
    };
    // This process forgets the tenant now; other dispatchers and workers within the
    // auth cache period (TENANTRY_AUTH_CACHE_SECS).
    state.keys.forget_tenant(id.as_str());
    if tenant.status == TenantStatus::Active {
        // Reactivated: its backlog may be published again.
        state.pump_wake.notify_one();
    }
    Ok(Json(admin_view(&state, &tenant).await?).into_response())
}

/// Moves a tenant's points between isolation modes (issue 5's switch: audited, the
/// points move in the background; `GET /v1/admin/tenants/{id}/isolation` shows the move).
/// It commits before the other fields of the same PATCH are written.
async fn change_isolation(state: &AppState, tenant: &Tenant, mode: IsolationMode) -> ApiResult<()> {
    super::isolation::patch_isolation(
        State(state.clone()),
        Admin,
        ApiPath(tenant.id.to_string()),
        ApiJson(super::isolation::PatchIsolation { isolation: mode }),
    )
    .await
    .map(|_| ())
}

/// `PATCH /v1/admin/tenants/{id}`: a body with only `isolation` answers the isolation
/// view (`{"tenant", "move"}`, 202 when points start moving); any other body changes
/// name, email, plan, status (and isolation, if present) and answers the admin view.
pub async fn patch(
    state: State<AppState>,
    admin: Admin,
    id: ApiPath<String>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<Response> {
    let value: serde_json::Value = crate::extract::parse_json(&body)?;
    let only_isolation = value
        .as_object()
        .is_some_and(|o| o.len() == 1 && o.contains_key("isolation"));
    if only_isolation {
        if value["isolation"]
            .as_str()
            .and_then(IsolationMode::parse)
            .is_none()
        {
            return Err(ApiError::invalid(
                "isolation",
                "must be one of collection, partition",
            ));
        }
        let patch = crate::extract::parse_json(&body)?;
        return super::isolation::patch_isolation(state, admin, id, ApiJson(patch)).await;
    }
    let patch = crate::extract::parse_json(&body)?;
    patch_tenant(state, admin, id, ApiJson(patch)).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListAudit {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// `GET /v1/admin/tenants/{id}/audit?limit=&cursor=`: the tenant's audit trail, oldest first.
pub async fn list_audit(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListAudit>,
) -> ApiResult<Response> {
    let id = parse_tenant_id(&id)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let after =
        match q.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(c.parse::<i64>().ok().filter(|c| *c >= 0).ok_or_else(|| {
                ApiError::invalid("cursor", "is not a cursor from a previous page")
            })?),
        };
    let mut conn = state.pool.acquire().await?;
    if db::tenants::get(&mut conn, &id).await?.is_none() {
        return Err(ApiError::not_found("tenant"));
    }
    drop(conn);
    let entries = db::audit::list(&state.pool, &id, after, limit).await?;
    let next_cursor = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(json!({ "entries": entries, "next_cursor": next_cursor })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueKey {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// `POST /v1/admin/tenants/{id}/keys`: the secret is in this answer and nowhere else, ever.
pub async fn issue_key(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<Response> {
    let id = parse_tenant_id(&id)?;
    // The body is optional here: no body means an unnamed key that never expires.
    let body: IssueKey = if body.iter().all(u8::is_ascii_whitespace) {
        IssueKey {
            name: None,
            expires_at: None,
        }
    } else {
        crate::extract::parse_json(&body)?
    };
    let name = body.name.unwrap_or_default();
    if name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            format!("must be at most {MAX_NAME_LEN} characters without control characters"),
        ));
    }
    if body.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::invalid("expires_at", "must be in the future"));
    }
    let mut tx = state.pool.begin().await?;
    if db::tenants::get(&mut tx, &id).await?.is_none() {
        return Err(ApiError::not_found("tenant"));
    }
    let key = ApiKey::generate();
    let info = db::keys::insert(&mut tx, &id, &key, &name, body.expires_at).await?;
    db::audit::record(
        &mut tx,
        Some(&id),
        Admin::ACTOR,
        "key.issued",
        None,
        serde_json::to_value(&info).ok(),
    )
    .await?;
    tx.commit().await?;
    let mut answer = serde_json::to_value(&info).unwrap_or_default();
    answer["key"] = json!(key.expose());
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// `GET /v1/admin/tenants/{id}/keys`: prefixes and metadata only.
pub async fn list_keys(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let id = parse_tenant_id(&id)?;
    let mut conn = state.pool.acquire().await?;
    if db::tenants::get(&mut conn, &id).await?.is_none() {
        return Err(ApiError::not_found("tenant"));
    }
    drop(conn);
    let keys = db::keys::list(&state.pool, &id).await?;
    Ok(Json(json!({ "keys": keys })).into_response())
}

/// `DELETE /v1/admin/tenants/{id}/keys/{key_id}`: revokes; refused everywhere within
/// the auth cache period.
pub async fn revoke_key(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath((id, key_id)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let id = parse_tenant_id(&id)?;
    let key_id = Uuid::parse_str(&key_id).map_err(|_| ApiError::not_found("key"))?;
    let mut tx = state.pool.begin().await?;
    let (before, after) = db::keys::revoke(&mut tx, &id, key_id)
        .await?
        .ok_or_else(|| ApiError::not_found("key"))?;
    if before.revoked_at.is_none() {
        db::audit::record(
            &mut tx,
            Some(&id),
            Admin::ACTOR,
            "key.revoked",
            serde_json::to_value(&before).ok(),
            serde_json::to_value(&after).ok(),
        )
        .await?;
    }
    tx.commit().await?;
    state.keys.forget_tenant(id.as_str());
    Ok(Json(after).into_response())
}
