//! Vector storage behind one trait, with two back-ends: `edge` (the Qdrant engine
//! in-process, the default) and `qdrant` (a Qdrant server over gRPC).
//!
//! The trait speaks in [`Namespace`]s, which only `tenancy` can build. Every
//! operation of every back-end filters on the namespace's tenant — in partition
//! mode because the collection is shared, and in collection mode as a second wall —
//! and `upsert` refuses a point whose payload names another tenant.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::{Settings, VectorBackend};
use crate::tenancy::{Namespace, TenantId};

#[doc(hidden)]
pub mod conformance;
pub mod edge;
pub mod migrate;
pub mod qdrant;

/// One point to store: a chunk's vector and its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRecord {
    /// Deterministic id from [`crate::tenancy::point_id`].
    pub id: Uuid,
    pub vector: Vec<f32>,
    /// Must contain `tenant_id` (equal to the namespace's tenant), `document_id`,
    /// `database`, `chunk_index`, `text` and `metadata`.
    pub payload: Map<String, Value>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: Uuid,
    pub score: f32,
    pub payload: Map<String, Value>,
}

/// An exact-match condition on a payload key (dotted paths allowed, e.g.
/// `metadata.lang`). All conditions of a search must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldMatch {
    pub key: String,
    pub value: MatchValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MatchValue {
    Keyword(String),
    Integer(i64),
    Bool(bool),
}

/// What a collection is created with. Recorded by the back-end so a later
/// mismatch (another dimension, another model) is refused instead of mixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorSpec {
    pub dimension: usize,
    /// Embedding model name, e.g. `hash-256` or `text-embedding-3-small`.
    pub model: String,
}

/// A page of points read back in id order, for moving a tenant between modes.
#[derive(Debug, Clone, Default)]
pub struct ScrollPage {
    pub points: Vec<PointRecord>,
    /// Pass back as `offset` to read the next page; `None` when done.
    pub next_offset: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// The store could not be reached or timed out: worth retrying later.
    #[error("vector store unavailable: {0}")]
    Unavailable(String),
    /// The namespace exists with another dimension or model.
    #[error("vector spec mismatch in {collection}: stored {stored}, requested {requested}")]
    SpecMismatch {
        collection: String,
        stored: String,
        requested: String,
    },
    /// A point's payload does not belong to the namespace's tenant, or is malformed.
    #[error("invalid point: {0}")]
    InvalidPoint(String),
    /// Another process holds the embedded store.
    #[error("{0}")]
    Locked(String),
    /// The store refused the request as malformed: trying again cannot help.
    #[error("vector store refused the request: {0}")]
    Refused(String),
    /// Anything else the engine reported.
    #[error("vector store error: {0}")]
    Engine(String),
}

impl VectorError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Engine(_))
    }
}

pub type Result<T, E = VectorError> = std::result::Result<T, E>;

/// The operations tenantry needs from a vector store.
///
/// Contract shared by all back-ends (and checked by the conformance suite in
/// `conformance`):
/// - `ensure_namespace` is idempotent; it creates the collection on first use (for a
///   shared collection also the `tenant_id` keyword index with `is_tenant`), and
///   fails with [`VectorError::SpecMismatch`] if the collection exists with another spec.
/// - `upsert` is idempotent on point ids and durable when it returns `Ok`;
///   `upsert_deferred` is idempotent too, and durable after the next `checkpoint`.
/// - reads and deletes never see or touch another tenant's points.
#[async_trait]
pub trait VectorStore: Send + Sync + 'static {
    /// `edge` or `qdrant`.
    fn backend(&self) -> &'static str;

    async fn ensure_namespace(&self, ns: &Namespace, spec: &VectorSpec) -> Result<()>;

    /// Durable when it returns `Ok`.
    async fn upsert(&self, ns: &Namespace, points: Vec<PointRecord>) -> Result<()>;

    /// Applied (visible to reads) when it returns `Ok`, durable once a later
    /// [`VectorStore::checkpoint`] has returned — for callers that keep, until then,
    /// what re-derives the points (the worker: Postgres holds each finished job's text
    /// until a checkpoint covers it). Back-ends whose writes are durable anyway do an
    /// ordinary upsert.
    async fn upsert_deferred(&self, ns: &Namespace, points: Vec<PointRecord>) -> Result<()> {
        self.upsert(ns, points).await
    }

    /// Whether [`VectorStore::upsert_deferred`] really defers (so callers must keep what
    /// re-derives its points until a checkpoint).
    fn defers_durability(&self) -> bool {
        false
    }

    /// Makes every write applied before the call durable, then records `mark` (a
    /// Postgres timestamp read before the call) as the store's last checkpoint.
    async fn checkpoint(&self, mark: DateTime<Utc>) -> Result<()> {
        let _ = mark;
        Ok(())
    }

    /// The mark of the last checkpoint that completed, if any (see
    /// [`VectorStore::checkpoint`]).
    fn last_checkpoint(&self) -> Option<DateTime<Utc>> {
        None
    }

    /// Points of the namespace's tenant, optionally only those of one document.
    async fn count(&self, ns: &Namespace, document: Option<Uuid>) -> Result<u64>;

    async fn search(
        &self,
        ns: &Namespace,
        vector: Vec<f32>,
        limit: usize,
        filter: &[FieldMatch],
    ) -> Result<Vec<Hit>>;

    /// Removes one document's points; a missing namespace or document is not an error.
    async fn delete_document(&self, ns: &Namespace, document: Uuid) -> Result<()>;

    /// Removes every point of the namespace's tenant: drops the collection in
    /// collection mode, deletes by tenant filter in partition mode.
    async fn drop_namespace(&self, ns: &Namespace) -> Result<()>;

    /// Reads the tenant's points (with vectors) in pages, ordered by id.
    async fn scroll(
        &self,
        ns: &Namespace,
        offset: Option<Uuid>,
        limit: usize,
    ) -> Result<ScrollPage>;
}

pub type SharedVectorStore = Arc<dyn VectorStore>;

/// Opens the back-end the settings name.
pub async fn open(settings: &Settings) -> Result<SharedVectorStore> {
    match settings.vector_backend {
        VectorBackend::Edge => {
            let dir = settings.data_dir.clone();
            let options = settings.edge;
            let store =
                tokio::task::spawn_blocking(move || edge::EdgeStore::open_with(&dir, options))
                    .await
                    .map_err(|e| VectorError::Engine(e.to_string()))??;
            Ok(Arc::new(store))
        }
        VectorBackend::Qdrant => {
            let store = qdrant::QdrantStore::connect(
                &settings.qdrant_url,
                settings.qdrant_api_key.as_ref().map(|k| k.expose()),
            )?;
            // The client connects lazily; say now, in one line, if the server is not there.
            // Not fatal: every call retries, and jobs wait for the server.
            match store.ping().await {
                Ok(version) => {
                    tracing::info!(url = %settings.qdrant_url, %version, "Connected to Qdrant.")
                }
                Err(e) => tracing::error!("{e}; retrying on every use."),
            }
            Ok(Arc::new(store))
        }
    }
}

/// Checks that a point may be written into `ns`: its payload names the same tenant.
/// Back-ends call this before every write.
pub fn check_point_owner(tenant: &TenantId, point: &PointRecord) -> Result<()> {
    match point.payload.get(crate::tenancy::TENANT_KEY) {
        Some(Value::String(owner)) if owner == tenant.as_str() => Ok(()),
        Some(other) => Err(VectorError::InvalidPoint(format!(
            "point {} claims tenant {other}, namespace belongs to {tenant}",
            point.id
        ))),
        None => Err(VectorError::InvalidPoint(format!(
            "point {} has no tenant_id in its payload",
            point.id
        ))),
    }
}
