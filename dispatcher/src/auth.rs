//! Who is calling: a tenant (API key → tenant, never the body) or the admin (token).
//!
//! Verified keys are cached for `TENANTRY_AUTH_CACHE_SECS` (default 2 s) together with
//! their tenant, so a busy tenant costs one key lookup per cache period instead of one
//! per request. That period is also the bound on how long a revoked or expired key,
//! or a tenant made INACTIVE, keeps working on a dispatcher that saw it just before:
//! every process re-reads Postgres after it, so revocation is fleet-wide within 2 s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::Utc;
use subtle::ConstantTimeEq;
use tenantry::api_key::{ApiKey, KeyHash};
use tenantry::db;
use tenantry::error_code::Code;
use tenantry::tenant::{Tenant, TenantStatus};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// Entries kept at most; past it the cache starts over (cheap, and bounded).
const MAX_CACHED_KEYS: usize = 100_000;

/// An authenticated tenant caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Tenant,
    pub key_id: Uuid,
}

#[derive(Clone)]
struct Cached {
    caller: Caller,
    expires_at: Option<chrono::DateTime<Utc>>,
    fetched: Instant,
}

/// Verified keys, for a short time.
pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<KeyHash, Cached>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, hash: &KeyHash) -> Option<Cached> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(hash)
            .filter(|c| c.fetched.elapsed() < self.ttl)
            .cloned()
    }

    fn put(&self, hash: KeyHash, entry: Cached) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_CACHED_KEYS {
                entries.clear();
            }
            entries.insert(hash, entry);
        }
    }

    /// Forgets every entry of one tenant (after an admin change made here).
    pub fn forget_tenant(&self, tenant: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, c| c.caller.tenant.id.as_str() != tenant);
        }
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "missing Authorization: Bearer header"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::new(Code::Unauthorized, "malformed Authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "Authorization must be 'Bearer <key>'"))?;
    Ok(token.trim())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = authenticate(parts, state).await?;
        // Every authenticated tenant call counts against API_CALLS_PER_HOUR.
        crate::rate_limit::admit(state, &caller.tenant.id).await?;
        Ok(caller)
    }
}

/// An authenticated tenant whose call is not counted yet: a submission counts its call
/// in the same transaction that records its documents (see `routes::jobs`). Only the
/// per-process shaping of API_CALLS_PER_HOUR is applied here.
#[derive(Debug, Clone)]
pub struct Submitting(pub Caller);

impl FromRequestParts<AppState> for Submitting {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = authenticate(parts, state).await?;
        crate::rate_limit::shape(state, &caller.tenant.id)?;
        Ok(Self(caller))
    }
}

/// API key → tenant (cached briefly); refuses expired keys and inactive tenants.
async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let token = bearer(parts)?;
    let key =
        ApiKey::parse(token).ok_or_else(|| ApiError::new(Code::Unauthorized, "invalid API key"))?;
    let hash = key.hash();
    let cached = match state.keys.get(&hash) {
        Some(c) => c,
        None => {
            let owner = db::keys::find_owner(&state.pool, &hash)
                .await?
                .ok_or_else(|| ApiError::new(Code::Unauthorized, "invalid API key"))?;
            let mut conn = state.pool.acquire().await?;
            let tenant = db::tenants::get(&mut conn, &owner.tenant)
                .await?
                .ok_or_else(|| ApiError::new(Code::Unauthorized, "invalid API key"))?;
            let entry = Cached {
                caller: Caller {
                    tenant,
                    key_id: owner.key_id,
                },
                expires_at: owner.expires_at,
                fetched: Instant::now(),
            };
            state.keys.put(hash, entry.clone());
            // Coarse usage marks; failures here must not fail the request.
            let pool = state.pool.clone();
            let (key_id, tenant_id) = (owner.key_id, owner.tenant.clone());
            tokio::spawn(async move {
                let _ = db::keys::touch(&pool, key_id).await;
                let _ = db::tenants::touch(&pool, &tenant_id).await;
            });
            entry
        }
    };
    if cached.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::new(Code::KeyExpired, "API key has expired"));
    }
    if cached.caller.tenant.status == TenantStatus::Inactive {
        return Err(ApiError::new(
            Code::TenantInactive,
            "the tenant is inactive; its keys are refused",
        ));
    }
    crate::request_span::record_tenant(&cached.caller.tenant.id);
    Ok(cached.caller)
}

/// The admin, proven by `TENANTRY_ADMIN_TOKEN`.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl Admin {
    /// Name recorded as the actor in the audit log.
    pub const ACTOR: &'static str = "admin";
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(expected) = &state.settings.admin_token else {
            return Err(ApiError::new(
                Code::AdminApiDisabled,
                "the admin API is off; set TENANTRY_ADMIN_TOKEN to enable it",
            ));
        };
        let token = bearer(parts)?;
        if bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes())) {
            Ok(Admin)
        } else {
            Err(ApiError::new(Code::Unauthorized, "invalid admin token"))
        }
    }
}
