//! The one user-facing error of the HTTP API: a stable machine-readable code, a
//! message, and the status it maps to. Every handler returns it; it is logged in one
//! place (`IntoResponse`), server-side failures at error level with their cause.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tenantry::db::DbError;
use tenantry::error_code::Code;
use tenantry::quota::QuotaExceeded;

#[derive(Debug)]
pub struct ApiError {
    /// Derived from `code` by the table in [`tenantry::error_code`]; only a quota that
    /// waiting cannot free answers otherwise (403, see [`ApiError::quota`]).
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    /// Sent as `Retry-After` (seconds) with 429 and 503.
    pub retry_after: Option<Duration>,
    /// Extra fields merged into the error object (e.g. the exceeded resource). Boxed:
    /// the error travels in every `Result` of every handler, and is rarely detailed.
    pub details: Option<Box<serde_json::Value>>,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The code of an error answer, attached to the response's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub Code);

/// The status the table gives `code`. A code the HTTP edge never answers is a server
/// bug if it gets here: 500.
fn status_of(code: Code) -> StatusCode {
    code.http_status()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            status: status_of(code),
            code,
            message: message.into(),
            retry_after: None,
            details: None,
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(Code::NotFound, format!("{what} not found"))
    }
    /// An invalid value: the message names the field.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(Code::InvalidValue, format!("{field}: {message}"))
            .with_details(json!({ "field": field }))
    }
    pub fn unavailable(what: &str) -> Self {
        Self::new(
            Code::Unavailable,
            format!("{what} is unavailable; try again shortly"),
        )
        .with_retry_after(Duration::from_secs(5))
    }
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(Code::Internal, "internal error")
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// 429 where waiting frees the resource (hourly calls, concurrent jobs), 403
    /// where only deleting or a higher limit can (documents, storage, collections).
    pub fn quota(q: &QuotaExceeded, retry_after: Option<Duration>) -> Self {
        let mut err = Self::new(Code::QuotaExceeded, q.to_string()).with_details(json!({
            "resource": q.resource,
            "limit": q.limit,
            "current_usage": q.used,
        }));
        // The one status the table cannot give: the same code, answered by resource.
        if !q.resource.frees_up_by_itself() {
            err.status = StatusCode::FORBIDDEN;
        }
        if err.status == StatusCode::TOO_MANY_REQUESTS {
            err.retry_after = Some(retry_after.unwrap_or(Duration::from_secs(1)));
        }
        err
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if tenantry::db::is_unavailable(&e) {
            tracing::warn!(error = %e, "Postgres unavailable.");
            Self::unavailable("the database")
        } else {
            Self::internal("Database query failed.", e)
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sql(e) => e.into(),
            other if other.is_unavailable() => Self::unavailable("the database"),
            other => Self::internal("Database failure.", other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::debug!(
                status = self.status.as_u16(),
                code = self.code.as_str(),
                "Request failed."
            );
        }
        let mut error = json!({ "code": self.code.as_str(), "message": self.message });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (self.details.map(|d| *d), error.as_object_mut())
        {
            for (k, v) in extra {
                obj.entry(k).or_insert(v);
            }
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        // For middleware that counts refusals (metrics) without reading the body.
        response.extensions_mut().insert(ErrorCode(self.code));
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}
