//! The one user-facing error of the HTTP API: a stable machine-readable code (from the
//! table in [`tenantry::error_code`]), a message, and the status the table maps it to.
//! Every handler returns it. Nothing here logs: the answer carries its code and, for a
//! server-side failure, its [`Cause`] in the response's extensions, and the request
//! span's response hook ([`crate::request_span`]) logs it once.

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
    /// What went wrong on our side, for the log only (the caller is not told).
    pub cause: Option<Cause>,
}

/// A server-side failure's cause: logged with the request, never sent to the caller.
#[derive(Debug, Clone)]
pub struct Cause {
    /// What the server was doing, as a log message (a capitalised sentence).
    pub context: &'static str,
    pub error: String,
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
            cause: None,
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
    pub fn internal(context: &'static str, err: impl std::fmt::Display) -> Self {
        Self::new(Code::Internal, "internal error").with_cause(context, err)
    }

    /// Records why, for the log (see [`Cause`]).
    pub fn with_cause(mut self, context: &'static str, err: impl std::fmt::Display) -> Self {
        self.cause = Some(Cause {
            context,
            error: err.to_string(),
        });
        self
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
            Self::unavailable("the database").with_cause("Postgres unavailable.", e)
        } else {
            Self::internal("Database query failed.", e)
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sql(e) => e.into(),
            other if other.is_unavailable() => {
                Self::unavailable("the database").with_cause("Postgres unavailable.", other)
            }
            other => Self::internal("Database failure.", other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code.as_str(), "message": self.message });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) =
            (self.details.map(|d| *d), error.as_object_mut())
        {
            for (k, v) in extra {
                obj.entry(k).or_insert(v);
            }
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        // For middleware that counts refusals (metrics) and for the request span's
        // response hook, which logs the error once.
        response.extensions_mut().insert(ErrorCode(self.code));
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(cause);
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use tenantry::quota::ResourceKind;

    use super::*;

    #[test]
    fn every_answer_takes_its_status_from_the_table() {
        for &code in Code::ALL {
            let response = ApiError::new(code, "x").into_response();
            let expected = code.http_status().unwrap_or(500);
            assert_eq!(response.status().as_u16(), expected, "{code}");
            assert_eq!(
                response.extensions().get::<ErrorCode>(),
                Some(&ErrorCode(code))
            );
        }
    }

    #[test]
    fn a_quota_is_429_when_waiting_frees_it_and_403_when_not() {
        let refused = |resource| {
            let q = QuotaExceeded {
                resource,
                limit: 1,
                used: 1,
                requested: 1,
            };
            ApiError::quota(&q, None)
        };
        let calls = refused(ResourceKind::ApiCallsPerHour);
        assert_eq!(
            (calls.status, calls.code),
            (StatusCode::TOO_MANY_REQUESTS, Code::QuotaExceeded)
        );
        assert!(calls.retry_after.is_some());
        let documents = refused(ResourceKind::Documents);
        assert_eq!(
            (documents.status, documents.code),
            (StatusCode::FORBIDDEN, Code::QuotaExceeded)
        );
        assert!(documents.retry_after.is_none());
    }
}
