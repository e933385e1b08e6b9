//! `DELETE /v1/documents/{id}`: removes a document's points and gives its usage back.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tenantry::db::{self, documents::DeleteOutcome};
use tenantry::error_code::Code;
use tenantry::tenancy::Namespace;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiPath;
use crate::routes::search::vector_error;
use crate::state::AppState;

/// `DELETE /v1/documents/{id}`. The document is marked DELETED and its quota released in one
/// transaction first, then its points are removed (in both namespaces during an isolation
/// move). If removing the points fails the answer is 503 and a repeated DELETE finishes it;
/// a repeated DELETE of a deleted document answers 200 again without releasing twice.
/// Another tenant's document, or no document, is 404; one still being ingested is 409.
pub async fn delete_document(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("document"))?;
    let tenant = &caller.tenant.id;
    let (database, released_bytes, already) = match db::documents::delete(&state.pool, tenant, id)
        .await?
    {
        DeleteOutcome::NotFound => return Err(ApiError::not_found("document")),
        DeleteOutcome::InProgress => {
            return Err(ApiError::new(
                Code::DocumentInProgress,
                "the document's job is pending or processing; cancel it (DELETE /v1/jobs/{id}) or wait until it ends",
            ));
        }
        DeleteOutcome::Deleted {
            database,
            released_bytes,
        } => (database, released_bytes, false),
        DeleteOutcome::AlreadyDeleted { database } => (database, 0, true),
    };
    let mut points_removed = 0u64;
    for mode in db::isolation::modes(&state.pool, tenant).await? {
        let ns = Namespace::new(&state.settings.queue_prefix, tenant, &database, mode);
        points_removed += state
            .store
            .count(&ns, Some(id))
            .await
            .map_err(vector_error)?;
        state
            .store
            .delete_document(&ns, id)
            .await
            .map_err(vector_error)?;
    }
    tracing::info!(tenant_id = %tenant, document_id = %id, points = points_removed, "Deleted a document.");
    Ok(Json(json!({
        "document_id": id,
        "database": database,
        "state": "DELETED",
        "already_deleted": already,
        "points_removed": points_removed,
        "released_bytes": released_bytes,
    }))
    .into_response())
}
