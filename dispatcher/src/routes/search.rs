//! `POST /v1/search`: the caller's own namespace only, embedded with the fleet's embedder.

use std::collections::HashSet;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tenantry::db;
use tenantry::embed::EmbedError;
use tenantry::error_code::Code;
use tenantry::tenancy::{
    CHUNK_INDEX_KEY, DOCUMENT_KEY, DatabaseName, METADATA_KEY, Namespace, TENANT_KEY, TEXT_KEY,
};
use tenantry::vector::{FieldMatch, Hit, MatchValue, VectorError};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::state::AppState;

/// Hits returned when the request names no limit.
pub const DEFAULT_LIMIT: u64 = 10;
/// Most hits one search returns.
pub const MAX_LIMIT: u64 = 100;
/// Longest query, in bytes.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;
/// Most conditions in one filter.
pub const MAX_FILTER_KEYS: usize = 16;
/// Longest filter key and string value.
const MAX_FILTER_KEY_LEN: usize = 128;
const MAX_FILTER_VALUE_LEN: usize = 1024;

/// Fields are taken as raw JSON so that each wrong one is named in a precise 422.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    pub query: Option<Value>,
    pub database: Option<Value>,
    pub limit: Option<Value>,
    pub filter: Option<Value>,
}

/// A search checked at the edge.
struct ValidSearch {
    query: String,
    database: DatabaseName,
    limit: usize,
    filter: Vec<FieldMatch>,
}

fn validate(body: SearchBody, caller: &Caller) -> ApiResult<ValidSearch> {
    let query = match body.query {
        Some(Value::String(q)) => q,
        Some(_) => return Err(ApiError::invalid("query", "must be a string")),
        None => return Err(ApiError::invalid("query", "is required")),
    };
    if query.trim().is_empty() {
        return Err(ApiError::invalid(
            "query",
            "must contain some non-whitespace text",
        ));
    }
    if query.len() > MAX_QUERY_BYTES {
        return Err(ApiError::invalid(
            "query",
            format!("must be at most {MAX_QUERY_BYTES} bytes"),
        ));
    }
    let database = match body.database {
        None | Some(Value::Null) => caller.tenant.config.default_database(),
        Some(Value::String(db)) => {
            DatabaseName::parse(&db).map_err(|e| ApiError::invalid("database", e))?
        }
        Some(_) => return Err(ApiError::invalid("database", "must be a string")),
    };
    let limit = match body.limit {
        None | Some(Value::Null) => DEFAULT_LIMIT,
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid("limit", format!("must be an integer from 1 to {MAX_LIMIT}"))
            })?,
        Some(_) => {
            return Err(ApiError::invalid(
                "limit",
                format!("must be an integer from 1 to {MAX_LIMIT}"),
            ));
        }
    };
    let filter = match body.filter {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(conditions)) => parse_filter(conditions)?,
        Some(_) => {
            return Err(ApiError::invalid(
                "filter",
                "must be an object of metadata keys and the values they must equal",
            ));
        }
    };
    Ok(ValidSearch {
        query,
        database,
        limit: limit as usize,
        filter,
    })
}

/// `{"lang": "en", "year": 2024, "draft": false}` → equality conditions on `metadata.*`.
/// Keys are plain names (no dots or brackets), so a condition can only name a field
/// inside the caller's metadata, never `tenant_id` or a path of the engine's syntax.
fn parse_filter(conditions: Map<String, Value>) -> ApiResult<Vec<FieldMatch>> {
    if conditions.len() > MAX_FILTER_KEYS {
        return Err(ApiError::invalid(
            "filter",
            format!("may hold at most {MAX_FILTER_KEYS} conditions"),
        ));
    }
    let mut matches = Vec::with_capacity(conditions.len());
    for (key, value) in conditions {
        let field = format!("filter.{key}");
        let key_ok = !key.is_empty()
            && key.len() <= MAX_FILTER_KEY_LEN
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !key_ok {
            return Err(ApiError::invalid(
                "filter",
                format!(
                    "key {key:?} must be 1–{MAX_FILTER_KEY_LEN} ASCII letters, digits, '_' or '-'"
                ),
            ));
        }
        let value = match value {
            Value::String(s) if s.len() <= MAX_FILTER_VALUE_LEN => MatchValue::Keyword(s),
            Value::Bool(b) => MatchValue::Bool(b),
            Value::Number(n) if n.as_i64().is_some() => {
                MatchValue::Integer(n.as_i64().unwrap_or_default())
            }
            _ => {
                return Err(ApiError::invalid(
                    &field,
                    format!(
                        "must be a string (at most {MAX_FILTER_VALUE_LEN} bytes), an integer or a boolean"
                    ),
                ));
            }
        };
        matches.push(FieldMatch {
            key: format!("{METADATA_KEY}.{key}"),
            value,
        });
    }
    Ok(matches)
}

pub(crate) fn vector_error(e: VectorError) -> ApiError {
    match e {
        VectorError::Unavailable(_) => {
            ApiError::unavailable("the vector store").with_cause("Vector store unavailable.", e)
        }
        other => ApiError::internal("Vector store failed.", other),
    }
}

/// `POST /v1/search`
pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<SearchBody>,
) -> ApiResult<Response> {
    let valid = validate(body, &caller)?;
    let tenant = &caller.tenant.id;
    let databases = db::isolation::databases(&state.pool, tenant).await?;
    let Some((_, spec)) = databases.into_iter().find(|(db, _)| *db == valid.database) else {
        // A database the tenant never wrote to holds nothing of its own.
        return Ok(answer(&valid, Vec::new()));
    };
    let (model, dimension) = (state.embedder.model(), state.embedder.dimension());
    if spec.model != model || spec.dimension != dimension {
        return Err(ApiError::new(
            Code::ModelMismatch,
            format!(
                "database {} holds vectors of model {} ({} dimensions); this fleet embeds with {model} ({dimension} dimensions)",
                valid.database, spec.model, spec.dimension
            ),
        ));
    }
    let vector = match state.embedder.embed(&[valid.query.as_str()]).await {
        Ok(mut vectors) if vectors.len() == 1 => vectors.remove(0),
        Ok(_) => {
            return Err(ApiError::internal(
                "Embedding the query failed.",
                "wrong count",
            ));
        }
        Err(EmbedError::Unavailable(e)) => {
            return Err(
                ApiError::unavailable("the embedder").with_cause("Embedder unavailable.", e)
            );
        }
        Err(EmbedError::Rejected(e)) => {
            return Err(ApiError::invalid(
                "query",
                format!("the embedder refused it: {e}"),
            ));
        }
    };
    // During an isolation move the tenant's points may be in either namespace.
    let modes = db::isolation::modes(&state.pool, tenant).await?;
    let mut hits: Vec<Hit> = Vec::new();
    for mode in modes {
        let ns = Namespace::new(&state.settings.queue_prefix, tenant, &valid.database, mode);
        let found = state
            .store
            .search(&ns, vector.clone(), valid.limit, &valid.filter)
            .await
            .map_err(vector_error)?;
        hits.extend(found);
    }
    hits.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut seen = HashSet::new();
    hits.retain(|hit| seen.insert(hit.id));
    // The second wall: a hit that is not the caller's is never shown, whatever happened.
    hits.retain(|hit| {
        let own = hit.payload.get(TENANT_KEY).and_then(Value::as_str) == Some(tenant.as_str());
        if !own {
            tracing::error!(tenant_id = %tenant, point = %hit.id, "A search returned a foreign point; dropped.");
        }
        own
    });
    hits.truncate(valid.limit);
    Ok(answer(&valid, hits))
}

fn answer(valid: &ValidSearch, hits: Vec<Hit>) -> Response {
    let hits: Vec<Value> = hits
        .into_iter()
        .map(|hit| {
            let field = |key: &str| hit.payload.get(key).cloned().unwrap_or(Value::Null);
            json!({
                "document_id": field(DOCUMENT_KEY),
                "chunk_index": field(CHUNK_INDEX_KEY),
                "text": field(TEXT_KEY),
                "score": hit.score,
                "metadata": hit.payload.get(METADATA_KEY).cloned().unwrap_or_else(|| json!({})),
            })
        })
        .collect();
    Json(json!({ "database": valid.database, "hits": hits })).into_response()
}
