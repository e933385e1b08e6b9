//! `/v1/jobs`: submit (one or a batch), show, list, cancel.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tenantry::db::jobs::{
    self as job_db, Accepted, CancelOutcome, NewJob, Request, RequestOutcome, SubmitError,
};
use tenantry::error_code::Code;
use tenantry::ingest::{self, DocumentRef};
use tenantry::job::{JobOptions, JobStatus, Priority};
use tenantry::tenancy::DatabaseName;
use tenantry::tenant::TenantStatus;
use uuid::Uuid;

use crate::auth::{Caller, Submitting};
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

fn validate(body: SubmitBody, caller: &Caller, field_prefix: &str) -> ApiResult<ValidSubmission> {
    let field = |name: &str| format!("{field_prefix}{name}");
    if body.text.trim().is_empty() {
        return Err(ApiError::invalid(
            &field("text"),
            "must contain some non-whitespace text",
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
            ApiError::new(
                Code::InvalidHeader,
                format!(
                    "Idempotency-Key must be 1–{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"
                ),
            )
        })?;
    Ok(Some(key.to_owned()))
}

fn refuse_if_suspended(caller: &Caller) -> ApiResult<()> {
    if caller.tenant.status == TenantStatus::Suspended {
        return Err(ApiError::new(
            Code::TenantSuspended,
            "the tenant is suspended: submissions are refused until it is reactivated",
        ));
    }
    Ok(())
}

/// Gives a validated document its ids and estimates the storage it will take.
async fn prepare(state: &AppState, caller: &Caller, valid: ValidSubmission) -> ApiResult<NewJob> {
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
    Ok(NewJob {
        job_id: Uuid::new_v4(),
        document_id,
        tenant: caller.tenant.id.clone(),
        database: valid.database,
        source_type: valid.source_type,
        text: valid.text,
        metadata: valid.metadata,
        options: valid.options,
        priority: valid.priority,
        idempotency_key: None,
        reserved_bytes: estimate,
        model: state.embedder.model().to_owned(),
        dimension: dimension as i32,
    })
}

/// Records a call and its documents (none for a call refused before it got that far):
/// the call is counted against API_CALLS_PER_HOUR in the same transaction. Calls without
/// an idempotency key go through the group commit; one with a key is recorded alone.
/// The call's own refusal is the error; each document's outcome is in the list.
async fn record(
    state: &AppState,
    caller: &Caller,
    jobs: Vec<NewJob>,
    key: Option<&str>,
) -> ApiResult<Vec<ApiResult<Accepted>>> {
    let tenant = &caller.tenant.id;
    let request = Request {
        tenant: tenant.clone(),
        count_call: true,
        jobs,
    };
    let outcome = match key {
        Some(key) => job_db::submit_keyed(&state.pool, &request, key).await?,
        None => state.submitter.submit(request).await?,
    };
    match outcome {
        RequestOutcome::CallRefused {
            exceeded,
            retry_after_secs,
        } => {
            state.calls.learn(tenant, exceeded.limit);
            state.metrics.quota_rejected(exceeded.resource.as_str());
            let retry = std::time::Duration::from_secs(retry_after_secs.max(1) as u64);
            Err(ApiError::quota(&exceeded, Some(retry)))
        }
        RequestOutcome::Recorded {
            jobs,
            api_calls_limit,
        } => {
            state.calls.learn(tenant, api_calls_limit);
            Ok(jobs.into_iter().map(|job| answer(state, job)).collect())
        }
    }
}

/// What the caller is told about one recorded (or refused) document.
fn answer(state: &AppState, outcome: Result<Accepted, SubmitError>) -> ApiResult<Accepted> {
    match outcome {
        Ok(accepted) => {
            if !accepted.replayed {
                state.metrics.job_submitted();
            }
            Ok(accepted)
        }
        Err(SubmitError::Quota(q)) => {
            state.metrics.quota_rejected(q.resource.as_str());
            Err(ApiError::quota(&q, None))
        }
        Err(e @ SubmitError::ModelMismatch { .. }) => {
            Err(ApiError::new(Code::ModelMismatch, e.to_string()))
        }
    }
}

/// A call refused before any document of it was recorded: the call still counts
/// (unless it is itself over the limit, which is then the answer).
async fn refuse(state: &AppState, caller: &Caller, error: ApiError) -> ApiError {
    match record(state, caller, Vec::new(), None).await {
        Ok(_) => error,
        Err(refused) => refused,
    }
}

fn accepted(accepted: &Accepted) -> Response {
    let body = json!({
        "job_id": accepted.job_id,
        "document_id": accepted.document_id,
        "status": accepted.status,
    });
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if accepted.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// `POST /v1/jobs`
pub async fn submit(
    State(state): State<AppState>,
    Submitting(caller): Submitting,
    headers: HeaderMap,
    body: Result<ApiJson<SubmitBody>, ApiError>,
) -> ApiResult<Response> {
    let checked = refuse_if_suspended(&caller)
        .and_then(|()| idempotency_key(&headers))
        .and_then(|key| {
            let ApiJson(body) = body?;
            Ok((key, validate(body, &caller, "")?))
        });
    let (key, valid) = match checked {
        Ok(checked) => checked,
        Err(e) => return Err(refuse(&state, &caller, e).await),
    };
    let mut job = prepare(&state, &caller, valid).await?;
    job.idempotency_key = key.clone();
    let mut recorded = record(&state, &caller, vec![job], key.as_deref()).await?;
    let accepted_job = recorded
        .pop()
        .ok_or_else(|| ApiError::internal("Recording failed.", "no outcome"))??;
    if !accepted_job.replayed {
        state.pump_wake.notify_one();
    }
    Ok(accepted(&accepted_job))
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
    Submitting(caller): Submitting,
    body: Result<ApiJson<BatchBody>, ApiError>,
) -> ApiResult<Response> {
    let max = state.settings.batch_max_items;
    let checked = refuse_if_suspended(&caller).and_then(|()| {
        let ApiJson(body) = body?;
        if body.documents.is_empty() || body.documents.len() > max {
            return Err(ApiError::invalid(
                "documents",
                format!("must hold 1–{max} documents"),
            ));
        }
        Ok(body)
    });
    let body = match checked {
        Ok(body) => body,
        Err(e) => return Err(refuse(&state, &caller, e).await),
    };
    // Validated and prepared one by one; the valid ones are recorded together (with the
    // call), each accepted or refused on its own.
    let mut jobs = Vec::with_capacity(body.documents.len());
    let mut outcomes: Vec<Option<ApiResult<Accepted>>> = Vec::with_capacity(jobs.capacity());
    for (i, doc) in body.documents.into_iter().enumerate() {
        match validate(doc, &caller, &format!("documents[{i}].")) {
            Ok(valid) => {
                jobs.push(prepare(&state, &caller, valid).await?);
                outcomes.push(None);
            }
            Err(e) => outcomes.push(Some(Err(e))),
        }
    }
    let mut recorded = record(&state, &caller, jobs, None).await?.into_iter();
    let mut results = Vec::with_capacity(outcomes.len());
    let mut accepted_count = 0usize;
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let outcome = match outcome {
            Some(refused) => refused,
            None => recorded.next().unwrap_or_else(|| {
                Err(ApiError::internal(
                    "Recording the batch failed.",
                    "fewer outcomes than documents",
                ))
            }),
        };
        results.push(match outcome {
            Ok(view) => {
                accepted_count += 1;
                json!({ "index": i, "status": view.status, "job_id": view.job_id, "document_id": view.document_id })
            }
            Err(e) if e.status.is_server_error() => return Err(e),
            Err(e) => json!({ "index": i, "error": { "code": e.code.as_str(), "message": e.message, "status": e.status.as_u16() } }),
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
        CancelOutcome::NotCancellable(status) => Err(ApiError::new(
            Code::JobNotCancellable,
            format!("the job is {status}; only PENDING jobs can be cancelled"),
        )),
    }
}
