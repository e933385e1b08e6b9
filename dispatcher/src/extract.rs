//! Request extractors that turn every rejection into the API's error shape:
//! malformed JSON → 400, a valid JSON document with wrong fields or types → 422,
//! too large → 413, wrong content type → 415, a bad path or query → 400.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tenantry::error_code::Code;

use crate::body::{self, BodyError};
use crate::error::ApiError;

/// `Json<T>` with our errors, read by [`body::from_value`]: no NUL anywhere, and an
/// object wherever `T` (or a struct inside it) expects one.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => from_value(value).map(Self),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// The raw body with our errors (a body over the limit is the JSON 413 of every other
/// endpoint), for handlers that look at the bytes before choosing a type; they read
/// it with [`parse_json`].
pub struct ApiBytes(pub Bytes);

impl<S> FromRequest<S> for ApiBytes
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(bytes_rejection)
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        "request body exceeds the configured limit (TENANTRY_MAX_BODY_BYTES)",
    )
}

fn bytes_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large()
    } else {
        ApiError::new(Code::BadRequest, rejection.body_text())
    }
}

fn malformed(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        Code::MalformedJson,
        format!("request body is not valid JSON: {e}"),
    )
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        // Only a value nested deeper than serde_json's recursion limit gets here (any
        // JSON document is a `Value`): not something this API can read.
        JsonRejection::JsonDataError(e) => malformed(
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.body_text()),
        ),
        JsonRejection::JsonSyntaxError(e) => malformed(
            std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.body_text()),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            Code::UnsupportedMediaType,
            "send the body as JSON with Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        other => ApiError::new(Code::BadRequest, other.body_text()),
    }
}

/// Reads `T` from a parsed body ([`body::from_value`]): a value that does not fit is a
/// 422 naming its field (`error.field`: the path, or the unknown field's name).
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    body::from_value(value).map_err(|BodyError { path, message }| {
        let field = if path.is_empty() || path == "." {
            // serde names an unknown field only in its message: "unknown field `x`, …".
            message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .unwrap_or("body")
                .to_owned()
        } else {
            path
        };
        ApiError::invalid(&field, format!("invalid request body: {message}"))
    })
}

/// Parses JSON from raw bytes with the same rules and errors as [`ApiJson`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(malformed)?;
    from_value(value)
}

/// `Path<T>` with our errors.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    ApiError::new(Code::InvalidPath, rejection.body_text())
}

/// The query of a paged list filtered by status: `?status=&limit=&cursor=`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub status: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// The `limit` of a paged list: `default` when absent, else within `1..=max` (422).
pub fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {max}"),
        ))
    }
}

/// The `cursor` of a paged list keyed by UUID: the last id of the previous page.
pub fn uuid_cursor(cursor: Option<&str>) -> Result<Option<uuid::Uuid>, ApiError> {
    match cursor {
        None | Some("") => Ok(None),
        Some(c) => uuid::Uuid::parse_str(c)
            .map(Some)
            .map_err(|_| ApiError::invalid("cursor", "is not a cursor from a previous page")),
    }
}

/// `Query<T>` with our errors.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // The one way a NUL reaches a query value (see `body` for why it may not).
        if parts
            .uri
            .query()
            .is_some_and(|q| q.to_ascii_lowercase().contains("%00"))
        {
            return Err(ApiError::new(
                Code::InvalidQuery,
                "the query string must not contain the NUL character (%00)",
            ));
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::new(Code::InvalidQuery, rejection.body_text())
}
