//! Turning a document into points: chunk, build each chunk's payload, embed, and
//! measure what is stored. The dispatcher runs the same payload code to estimate a
//! document's storage before accepting it, so estimate and measure agree whenever
//! the tenant's chunking did not change in between.

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::chunk::{ChunkParams, chunk_text};
use crate::embed::{EmbedError, Embedder};
use crate::tenancy::{self, DatabaseName, TenantId};
use crate::vector::PointRecord;

/// Bytes of one stored `f32`.
const F32_BYTES: i64 = 4;

/// Who and what a document is, as every one of its points records it.
#[derive(Debug, Clone, Copy)]
pub struct DocumentRef<'a> {
    pub tenant: &'a TenantId,
    pub document_id: Uuid,
    pub database: &'a DatabaseName,
    pub source_type: &'a str,
    pub metadata: &'a Map<String, Value>,
}

/// The payload of each chunk of `text`, in order.
pub fn chunk_payloads(
    doc: DocumentRef<'_>,
    text: &str,
    params: &ChunkParams,
) -> Vec<Map<String, Value>> {
    chunk_text(text, params)
        .into_iter()
        .map(|chunk| {
            let mut payload = Map::with_capacity(7);
            payload.insert(
                tenancy::TENANT_KEY.into(),
                Value::String(doc.tenant.to_string()),
            );
            payload.insert(
                tenancy::DOCUMENT_KEY.into(),
                Value::String(doc.document_id.to_string()),
            );
            payload.insert(
                tenancy::DATABASE_KEY.into(),
                Value::String(doc.database.to_string()),
            );
            payload.insert(tenancy::CHUNK_INDEX_KEY.into(), Value::from(chunk.index));
            payload.insert(
                "source_type".into(),
                Value::String(doc.source_type.to_owned()),
            );
            payload.insert(
                tenancy::TEXT_KEY.into(),
                Value::String(chunk.text.to_owned()),
            );
            payload.insert(
                tenancy::METADATA_KEY.into(),
                Value::Object(doc.metadata.clone()),
            );
            payload
        })
        .collect()
}

/// Bytes a set of payloads occupies once stored with `dimension`-wide vectors:
/// each payload's JSON plus its vector. This is the STORAGE_MB measure.
pub fn stored_bytes<'a>(
    payloads: impl IntoIterator<Item = &'a Map<String, Value>>,
    dimension: usize,
) -> i64 {
    payloads
        .into_iter()
        .map(|p| {
            serde_json::to_vec(p).map(|v| v.len() as i64).unwrap_or(0)
                + dimension as i64 * F32_BYTES
        })
        .sum()
}

/// What a document will occupy, computed before accepting it.
pub fn estimate_bytes(
    doc: DocumentRef<'_>,
    text: &str,
    params: &ChunkParams,
    dimension: usize,
) -> i64 {
    stored_bytes(&chunk_payloads(doc, text, params), dimension)
}

/// The text each payload's vector is made from.
pub fn payload_text(payload: &Map<String, Value>) -> &str {
    payload
        .get(tenancy::TEXT_KEY)
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Points with deterministic ids from payloads and their vectors, in order.
pub fn points(
    doc: DocumentRef<'_>,
    payloads: Vec<Map<String, Value>>,
    vectors: Vec<Vec<f32>>,
    model: &str,
) -> Vec<PointRecord> {
    payloads
        .into_iter()
        .zip(vectors)
        .enumerate()
        .map(|(i, (payload, vector))| PointRecord {
            id: tenancy::point_id(doc.tenant, doc.document_id, i as u32, model),
            vector,
            payload,
        })
        .collect()
}

/// Embeds payloads into points with deterministic ids.
pub async fn embed_points(
    doc: DocumentRef<'_>,
    payloads: Vec<Map<String, Value>>,
    embedder: &dyn Embedder,
) -> Result<Vec<PointRecord>, EmbedError> {
    let texts: Vec<&str> = payloads.iter().map(payload_text).collect();
    let vectors = embedder.embed(&texts).await?;
    Ok(points(doc, payloads, vectors, embedder.model()))
}
