//! `/v1/jobs`: submit (one or a batch), show, list, cancel.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tenantry::db::jobs::{self as job_db, CancelOutcome, NewJob, SubmitError, Submitted};
use tenantry::ingest::{self, DocumentRef};
use tenantry::job::{JobOptions, JobStatus, Priority};
use tenantry::tenancy::DatabaseName;
use tenantry::tenant::TenantStatus;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery, PageQuery, page_limit, uuid_cursor};
use crate::state::AppState;

/// Longest `source_type`, metadata key, and idempotency key accepted.
const MAX_SOURCE_TYPE_LEN: usize = 64;
const MAX_METADATA_BYTES: usize = 64 * 1024;
const MAX_METADATA_KEY_LEN: usize = 128;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Texts above this are chunked (for the storage estimate) off the async runtime.
const BLOCKING_ESTIMATE_BYTES: usize = 256 * 1024;

/// The body of `POST /v1/jobs` (and of each batch item).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    pub text: String,
    #[serde(default)]
    pub source_type: Option<String>,
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub options: Option<JobOptions>,
    #[serde(default)]
    pub priority: Option<Priority>,
}

/// A submission checked at the edge: past this, every value is valid.
struct ValidSubmission {
    text: String,
    source_type: String,
    database: DatabaseName,
    metadata: Map<String, Value>,
    options: JobOptions,
    priority: Priority,
    params: tenantry::chunk::ChunkParams,
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

fn validate(body: SubmitBody, caller: &Caller, field_prefix: &str) -> ApiResult<ValidSubmission> {
    let field = |name: &str| format!("{field_prefix}{name}");
    if body.text.trim().is_empty() {
        return Err(ApiError::invalid(
            &field("text"),
            "must contain some non-whitespace text",
        ));
    }
    if body.text.contains('\0') {
        return Err(ApiError::invalid(
            &field("text"),
            "must not contain NUL characters",
        ));
    }
    let source_type = body.source_type.unwrap_or_else(|| "text".to_owned());
    if source_type.is_empty()
        || source_type.len() > MAX_SOURCE_TYPE_LEN
        || !source_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        return Err(ApiError::invalid(
            &field("source_type"),
            format!(
                "must be 1–{MAX_SOURCE_TYPE_LEN} characters of letters, digits, '-', '_', '.', '/'"
            ),
        ));
    }
    let database = match body.database {
        Some(db) => {
            DatabaseName::parse(&db).map_err(|e| ApiError::invalid(&field("database"), e))?
        }
        None => caller.tenant.config.default_database(),
    };
    let metadata = body.metadata.unwrap_or_default();
    let metadata_value = Value::Object(metadata);
    if has_nul(&metadata_value) {
        return Err(ApiError::invalid(
            &field("metadata"),
            "must not contain NUL characters",
        ));
    }
    let Value::Object(metadata) = metadata_value else {
        unreachable!("built from an object")
    };
    if let Some(key) = metadata
        .keys()
        .find(|k| k.is_empty() || k.len() > MAX_METADATA_KEY_LEN)
    {
        return Err(ApiError::invalid(
            &field("metadata"),
            format!("key {key:?} must be 1–{MAX_METADATA_KEY_LEN} bytes"),
        ));
    }
    if serde_json::to_vec(&metadata)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
        > MAX_METADATA_BYTES
    {
        return Err(ApiError::invalid(
            &field("metadata"),
            "must be at most 64 KiB of JSON",
        ));
    }
    let options = body.options.unwrap_or_default();
    let tenant_params = caller
        .tenant
        .config
        .chunk_params()
        .map_err(|e| ApiError::internal("Stored tenant configuration is invalid.", e))?;
    let params = options
        .resolve(&tenant_params)
        .map_err(|e| ApiError::invalid(&field(&format!("options.{}", e.field())), e))?;
    Ok(ValidSubmission {
        text: body.text,
        source_type,
        database,
        metadata,
        options,
        priority: body.priority.unwrap_or_default(),
        params,
    })
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_header",
                format!(
                    "Idempotency-Key must be 1–{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
                ),
            )
        })?;
    Ok(Some(key.to_owned()))
}

fn refuse_if_suspended(caller: &Caller) -> ApiResult<()> {
    if caller.tenant.status == TenantStatus::Suspended {
        return Err(ApiError::forbidden(
            "tenant_suspended",
            "the tenant is suspended: submissions are refused until it is reactivated",
        ));
    }
    Ok(())
}

/// Checks, estimates and records one submission in the backlog.
/// A validated document with its ids and storage estimate, ready to be recorded.
struct Prepared {
    valid: ValidSubmission,
    job_id: Uuid,
    document_id: Uuid,
    estimate: i64,
}

impl Prepared {
    fn new_job<'a>(
        &'a self,
        state: &'a AppState,
        caller: &'a Caller,
        key: Option<&'a str>,
    ) -> NewJob<'a> {
        NewJob {
            job_id: self.job_id,
            document_id: self.document_id,
            tenant: &caller.tenant.id,
            database: &self.valid.database,
            source_type: &self.valid.source_type,
            text: &self.valid.text,
            metadata: &self.valid.metadata,
            options: &self.valid.options,
            priority: self.valid.priority,
            idempotency_key: key,
            reserved_bytes: self.estimate,
            model: state.embedder.model(),
            dimension: state.embedder.dimension() as i32,
        }
    }
}

/// Gives a validated document its ids and estimates the storage it will take.
async fn prepare(state: &AppState, caller: &Caller, valid: ValidSubmission) -> ApiResult<Prepared> {
    let document_id = Uuid::new_v4();
    let dimension = state.embedder.dimension();
    let estimate = {
        let tenant = caller.tenant.id.clone();
        let database = valid.database.clone();
        let source_type = valid.source_type.clone();
        let metadata = valid.metadata.clone();
        let params = valid.params;
        let estimate = move |text: &str| {
            let doc = DocumentRef {
                tenant: &tenant,
                document_id,
                database: &database,
                source_type: &source_type,
                metadata: &metadata,
            };
            ingest::estimate_bytes(doc, text, &params, dimension)
        };
        if valid.text.len() > BLOCKING_ESTIMATE_BYTES {
            let text = valid.text.clone();
            tokio::task::spawn_blocking(move || estimate(&text))
                .await
                .map_err(|e| ApiError::internal("Estimating storage failed.", e))?
        } else {
            estimate(&valid.text)
        }
    };
    Ok(Prepared {
        valid,
        job_id: Uuid::new_v4(),
        document_id,
        estimate,
    })
}

async fn submit_one(
    state: &AppState,
    caller: &Caller,
    valid: ValidSubmission,
    key: Option<&str>,
) -> ApiResult<Submitted> {
    let prepared = prepare(state, caller, valid).await?;
    let outcome = job_db::submit(&state.pool, &prepared.new_job(state, caller, key)).await;
    answer(state, caller, outcome).await
}

/// What the caller is told about one recorded (or refused) submission.
async fn answer(
    state: &AppState,
    caller: &Caller,
    outcome: Result<Submitted, SubmitError>,
) -> ApiResult<Submitted> {
    match outcome {
        Ok(submitted) => {
            if matches!(submitted, Submitted::Created(_)) {
                state.metrics.job_submitted();
            }
            Ok(submitted)
        }
        Err(SubmitError::Quota(q)) => {
            state.metrics.quota_rejected(q.resource.as_str());
            crate::webhooks::notify_quota_exceeded(state, &caller.tenant.id, &q).await;
            Err(ApiError::quota(&q, None))
        }
        Err(e @ SubmitError::ModelMismatch { .. }) => {
            Err(ApiError::conflict("model_mismatch", e.to_string()))
        }
        Err(SubmitError::Sql(e)) => Err(e.into()),
    }
}

fn accepted(submitted: &Submitted) -> Response {
    let (view, replayed) = match submitted {
        Submitted::Created(v) => (v, false),
        Submitted::Existing(v) => (v, true),
    };
    let body = json!({
        "job_id": view.job_id,
        "document_id": view.document_id,
        "status": view.status,
    });
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// `POST /v1/jobs`
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SubmitBody>,
) -> ApiResult<Response> {
    refuse_if_suspended(&caller)?;
    let key = idempotency_key(&headers)?;
    let valid = validate(body, &caller, "")?;
    let submitted = submit_one(&state, &caller, valid, key.as_deref()).await?;
    if matches!(submitted, Submitted::Created(_)) {
        state.pump_wake.notify_one();
    }
    Ok(accepted(&submitted))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub documents: Vec<SubmitBody>,
}

/// `POST /v1/jobs/batch`: each document is accepted or refused on its own; the
/// answer lists a result per document, in order.
pub async fn submit_batch(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<BatchBody>,
) -> ApiResult<Response> {
    refuse_if_suspended(&caller)?;
    let max = state.settings.batch_max_items;
    if body.documents.is_empty() || body.documents.len() > max {
        return Err(ApiError::invalid(
            "documents",
            format!("must hold 1–{max} documents"),
        ));
    }
    // Validated and prepared one by one; the valid ones are recorded together, in one
    // transaction, each accepted or refused on its own.
    let mut prepared = Vec::with_capacity(body.documents.len());
    let mut outcomes: Vec<Option<ApiResult<Submitted>>> = Vec::with_capacity(prepared.capacity());
    for (i, doc) in body.documents.into_iter().enumerate() {
        match validate(doc, &caller, &format!("documents[{i}].")) {
            Ok(valid) => {
                prepared.push(prepare(&state, &caller, valid).await?);
                outcomes.push(None);
            }
            Err(e) => outcomes.push(Some(Err(e))),
        }
    }
    let news: Vec<NewJob<'_>> = prepared
        .iter()
        .map(|p| p.new_job(&state, &caller, None))
        .collect();
    let mut recorded = job_db::submit_many(&state.pool, &news)
        .await
        .map_err(ApiError::from)?
        .into_iter();
    let mut results = Vec::with_capacity(outcomes.len());
    let mut accepted_count = 0usize;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let outcome = match outcome {
            Some(refused) => refused,
            None => match recorded.next() {
                Some(one) => answer(&state, &caller, one.map(Submitted::Created)).await,
                None => Err(ApiError::internal(
                    "Recording the batch failed.",
                    "fewer outcomes than documents",
                )),
            },
        };
        results.push(match outcome {
            Ok(Submitted::Created(view) | Submitted::Existing(view)) => {
                accepted_count += 1;
                json!({ "index": i, "status": view.status, "job_id": view.job_id, "document_id": view.document_id })
            }
            Err(e) if e.status.is_server_error() => return Err(e),
            Err(e) => json!({ "index": i, "error": { "code": e.code, "message": e.message, "status": e.status.as_u16() } }),
        });
    }
    if accepted_count > 0 {
        state.pump_wake.notify_one();
    }
    let total = results.len();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": accepted_count, "rejected": total - accepted_count, "results": results })),
    )
        .into_response())
}

/// `GET /v1/jobs/{id}`
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("job"))?;
    let view = job_db::get(&state.pool, &caller.tenant.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    let history = tenantry::db::attempts::history(&state.pool, &caller.tenant.id, id).await?;
    let mut view = serde_json::to_value(view)
        .map_err(|e| ApiError::internal("Serialising a job failed.", e))?;
    view["attempt_history"] = json!(history);
    Ok(Json(view).into_response())
}

/// `GET /v1/jobs?status=&limit=&cursor=`
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Response> {
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(JobStatus::parse(&s.to_ascii_uppercase()).ok_or_else(|| {
            ApiError::invalid(
                "status",
                "must be one of PENDING, PROCESSING, FINISHED, FAILED, CANCELLED",
            )
        })?),
    };
    let limit = page_limit(q.limit, 50, 500)?;
    let cursor = uuid_cursor(q.cursor.as_deref())?;
    let jobs = job_db::list(&state.pool, &caller.tenant.id, status, cursor, limit).await?;
    let next_cursor = (jobs.len() as i64 == limit)
        .then(|| jobs.last().map(|j| j.job_id))
        .flatten();
    Ok(Json(json!({ "jobs": jobs, "next_cursor": next_cursor })).into_response())
}

/// `DELETE /v1/jobs/{id}`: cancels a job that has not started.
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("job"))?;
    match job_db::cancel(&state.pool, &caller.tenant.id, id).await? {
        CancelOutcome::Cancelled(view) => {
            let view = *view;
            if view.attempts > 0 {
                // An earlier attempt may have written points before failing over.
                crate::documents::remove_points(&state, &caller.tenant, &view).await;
            }
            Ok(Json(view).into_response())
        }
        CancelOutcome::NotFound => Err(ApiError::not_found("job")),
        CancelOutcome::NotCancellable(status) => Err(ApiError::conflict(
            "job_not_cancellable",
            format!("the job is {status}; only PENDING jobs can be cancelled"),
        )),
    }
}
