//! The server back-end: a Qdrant server (1.x, written against 1.19) over gRPC with
//! `qdrant-client`, for production and for several worker processes.
//!
//! How the trait maps onto the server (each point checked in qdrant-client 1.20's source
//! and Qdrant's documentation, not against a running server — see the crate's notes):
//! - A namespace's collection has one unnamed dense vector (cosine). Its spec (model and
//!   dimension) is recorded in the collection's `metadata` (a server feature since 1.16),
//!   so a second fleet member, or a restart, refuses a mismatch exactly like the embedded
//!   back-end does with its `tenantry_spec.json`.
//! - Shared (partition-mode) collections follow Qdrant's multitenancy guide: a `tenant_id`
//!   keyword payload index with `is_tenant: true`, and HNSW with `m: 0, payload_m: 16`, so
//!   the server builds one graph per tenant and none across tenants. Every collection also
//!   gets a keyword index on `document_id`, which deletes and counts filter on.
//! - Writes wait for the server to apply them (`wait: true`) with `medium` write ordering,
//!   so `Ok` means applied, as the trait promises; counts are exact.
//! - Every call has a timeout (the client's), and transient failures (unavailable,
//!   deadline, resource exhausted, aborted, internal) are retried here a few times with
//!   exponential backoff and jitter before surfacing as [`VectorError::Unavailable`],
//!   which the worker retries again later. Requests the server refuses as malformed become
//!   [`VectorError::Refused`] (permanent). Retrying a write is safe: point ids are
//!   deterministic and deletes are by filter.
//! - A missing collection is not an error for reads and deletes (empty, as on the
//!   embedded back-end); `NotFound` from the server is how that is recognised.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable as _};
use parking_lot::Mutex;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, HnswConfigDiffBuilder,
    KeywordIndexParamsBuilder, PointId, PointStruct, Query, QueryPointsBuilder, RetrievedPoint,
    ScrollPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder, VectorsOutput, WriteOrdering,
    WriteOrderingType, point_id::PointIdOptions, vector_output, vectors_config, vectors_output,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{
    FieldMatch, Hit, MatchValue, PointRecord, Result, ScrollPage, VectorError, VectorSpec,
    VectorStore, check_point_owner,
};
use crate::tenancy::{DOCUMENT_KEY, IsolationMode, Namespace, TENANT_KEY};

/// Longest a single request may take before it counts as failed (and is retried).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest establishing the connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of one call after a transient failure, on top of the first try.
const RETRIES: usize = 4;
const RETRY_MIN_DELAY: Duration = Duration::from_millis(100);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(3);
/// Points per upsert request: keeps requests far below the server's message size limit.
const UPSERT_BATCH: usize = 256;
/// Per-tenant HNSW links in shared collections (Qdrant's default `m`).
const PAYLOAD_M: u64 = 16;
/// Collection metadata keys holding the spec.
const META_MODEL: &str = "tenantry_model";
const META_DIMENSION: &str = "tenantry_dimension";
/// Collection metadata key saying which layout the collection was created with.
const META_LAYOUT: &str = "tenantry_layout";

/// A Qdrant server. Cheap to share; all methods take `&self`.
pub struct QdrantStore {
    client: Qdrant,
    /// For messages only (never the API key).
    url: String,
    /// Specs of collections known to exist with their indexes, by name: a hit here is the
    /// whole cost of `ensure_namespace` on the hot path. A stale entry (collection dropped by
    /// another process) is noticed by the `NotFound` of the next write and forgotten.
    known: Mutex<HashMap<String, VectorSpec>>,
}

impl std::fmt::Debug for QdrantStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// How a failed call is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The collection does not exist.
    NotFound,
    /// The server is down, slow or busy: retried here, then `Unavailable`.
    Transient,
    /// The API key was refused: not retried here (it will not fix itself within seconds),
    /// but `Unavailable`, so jobs wait for an operator instead of failing for good.
    Auth,
    /// The request is malformed: `Refused`, never retried.
    Refused,
}

#[derive(Debug)]
struct CallError {
    failure: Failure,
    message: String,
}

impl QdrantStore {
    /// A client for the server at `url` (gRPC, e.g. `http://127.0.0.1:6334`). Connects
    /// lazily: an unreachable server shows up as `Unavailable` on use, not here.
    pub fn connect(url: &str, api_key: Option<&str>) -> Result<Self> {
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .keep_alive_while_idle()
            // The check prints to stdout and blocks in a thread; we check with `ping`.
            .skip_compatibility_check()
            .build()
            .map_err(|e| VectorError::Refused(format!("invalid QDRANT_URL {url:?}: {e}")))?;
        Ok(Self {
            client,
            url: url.to_owned(),
            known: Mutex::new(HashMap::new()),
        })
    }

    /// Asks the server for its version: `Ok(version)` if it answers.
    /// Deletes every collection of `fleet` (see `tenancy::fleet_collection_prefix`);
    /// returns how many. For benchmarks and tests that make a fleet of their own.
    pub async fn drop_fleet(&self, fleet: &str) -> Result<usize> {
        let prefix = crate::tenancy::fleet_collection_prefix(fleet);
        let listed = self
            .call("list collections", || self.client.list_collections())
            .await
            .map_err(|e| self.error(e))?;
        let mut dropped = 0;
        for collection in listed.collections {
            if !collection.name.starts_with(&prefix) {
                continue;
            }
            let name = collection.name.clone();
            self.forget(&name);
            self.call("delete collection", || {
                self.client.delete_collection(name.clone())
            })
            .await
            .map_err(|e| self.error(e))?;
            dropped += 1;
        }
        Ok(dropped)
    }

    pub async fn ping(&self) -> Result<String> {
        let reply = self
            .call("health check", || self.client.health_check())
            .await
            .map_err(|e| self.error(e))?;
        Ok(reply.version)
    }

    /// Runs one request, retrying transient failures with exponential backoff and jitter.
    async fn call<T, F, Fut>(&self, what: &str, mut request: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, QdrantError>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(RETRY_MIN_DELAY)
            .with_max_delay(RETRY_MAX_DELAY)
            .with_max_times(RETRIES)
            .with_jitter();
        (|| {
            let pending = request();
            async move { pending.await.map_err(classify) }
        })
        .retry(backoff)
        .when(|e: &CallError| e.failure == Failure::Transient)
        .notify(|e: &CallError, after: Duration| {
            tracing::debug!(
                url = %self.url,
                call = what,
                error = %e.message,
                retry_in_ms = after.as_millis() as u64,
                "Qdrant call failed; retrying."
            );
        })
        .await
        .map_err(|e| CallError {
            failure: e.failure,
            message: format!("{what}: {}", e.message),
        })
    }

    /// The trait's error for a failed call that is not an expected `NotFound`.
    fn error(&self, e: CallError) -> VectorError {
        match e.failure {
            Failure::NotFound => {
                VectorError::Engine(format!("Qdrant at {}: {}", self.url, e.message))
            }
            Failure::Transient => VectorError::Unavailable(format!(
                "Qdrant at {} ({}); start it with `docker run -p 6334:6334 qdrant/qdrant:v1.19.0`, or check QDRANT_URL",
                self.url, e.message
            )),
            Failure::Auth => VectorError::Unavailable(format!(
                "Qdrant at {} refused the credentials ({}); check QDRANT_API_KEY",
                self.url, e.message
            )),
            Failure::Refused => {
                VectorError::Refused(format!("Qdrant at {}: {}", self.url, e.message))
            }
        }
    }

    /// `NotFound` as `None`, any other failure as the trait's error.
    fn found<T>(&self, result: Result<T, CallError>) -> Result<Option<T>> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.failure == Failure::NotFound => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    fn forget(&self, collection: &str) {
        self.known.lock().remove(collection);
    }

    /// The spec of an existing collection (from its metadata), and which of our payload
    /// indexes it lacks; `None` if it does not exist.
    async fn inspect(&self, ns: &Namespace) -> Result<Option<(VectorSpec, Vec<&'static str>)>> {
        let name = ns.collection.clone();
        let info = self.found(
            self.call("collection info", || {
                self.client.collection_info(name.clone())
            })
            .await,
        )?;
        let Some(info) = info.and_then(|r| r.result) else {
            return Ok(None);
        };
        let config = info.config.unwrap_or_default();
        let dimension = config
            .params
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config)
            .map_or(0, |c| match c {
                vectors_config::Config::Params(params) => params.size as usize,
                // Named vectors: not a collection we created.
                vectors_config::Config::ParamsMap(_) => 0,
            });
        let model = config
            .metadata
            .get(META_MODEL)
            .map(|v| match v.clone().into_json() {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .unwrap_or_else(|| "unknown (created outside tenantry)".to_owned());
        let missing = wanted_indexes(ns)
            .into_iter()
            .map(|(field, _)| field)
            .filter(|field| !info.payload_schema.contains_key(*field))
            .collect();
        Ok(Some((VectorSpec { dimension, model }, missing)))
    }

    /// Creates the collection of `ns` with `spec`. `Err` with `Refused` if it exists already
    /// (another process won the race: the caller re-inspects).
    async fn create(&self, ns: &Namespace, spec: &VectorSpec) -> Result<(), CallError> {
        let mut metadata = HashMap::new();
        metadata.insert(META_MODEL.to_owned(), Value::from(spec.model.clone()));
        metadata.insert(META_DIMENSION.to_owned(), Value::from(spec.dimension));
        metadata.insert(
            META_LAYOUT.to_owned(),
            Value::from(if ns.is_shared() {
                "partition"
            } else {
                "collection"
            }),
        );
        let mut request = CreateCollectionBuilder::new(ns.collection.clone())
            .vectors_config(VectorParamsBuilder::new(
                spec.dimension as u64,
                Distance::Cosine,
            ))
            .metadata(metadata);
        if ns.is_shared() {
            // Qdrant's multitenancy layout: no global graph, one graph per tenant.
            request =
                request.hnsw_config(HnswConfigDiffBuilder::default().payload_m(PAYLOAD_M).m(0));
        }
        let request = request.build();
        self.call("create collection", || {
            self.client.create_collection(request.clone())
        })
        .await?;
        tracing::info!(
            collection = %ns.collection,
            dimension = spec.dimension,
            model = %spec.model,
            shared = ns.is_shared(),
            "Created Qdrant collection."
        );
        Ok(())
    }

    async fn create_indexes(&self, ns: &Namespace, fields: &[&'static str]) -> Result<()> {
        for (field, is_tenant) in wanted_indexes(ns) {
            if !fields.contains(&field) {
                continue;
            }
            let mut params = KeywordIndexParamsBuilder::default();
            if is_tenant {
                params = params.is_tenant(true);
            }
            let request = CreateFieldIndexCollectionBuilder::new(
                ns.collection.clone(),
                field,
                FieldType::Keyword,
            )
            .field_index_params(params)
            .wait(true)
            .build();
            self.call("create payload index", || {
                self.client.create_field_index(request.clone())
            })
            .await
            .map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// The spec of the collection of `ns`, from the cache or the server; `None` if missing.
    async fn spec_of(&self, ns: &Namespace) -> Result<Option<VectorSpec>> {
        if let Some(spec) = self.known.lock().get(&ns.collection).cloned() {
            return Ok(Some(spec));
        }
        Ok(self.inspect(ns).await?.map(|(spec, _)| spec))
    }

    /// A write that found no collection: forget it, and say how it comes back.
    fn gone(&self, ns: &Namespace) -> VectorError {
        self.forget(&ns.collection);
        VectorError::Engine(format!(
            "collection {} does not exist: ensure_namespace must run before upsert",
            ns.collection
        ))
    }
}

#[async_trait]
impl VectorStore for QdrantStore {
    fn backend(&self) -> &'static str {
        "qdrant"
    }

    async fn ensure_namespace(&self, ns: &Namespace, spec: &VectorSpec) -> Result<()> {
        if let Some(stored) = self.known.lock().get(&ns.collection).cloned() {
            return check_spec(&ns.collection, &stored, spec);
        }
        let (stored, missing) = match self.inspect(ns).await? {
            Some(found) => found,
            None => match self.create(ns, spec).await {
                Ok(()) => (
                    spec.clone(),
                    wanted_indexes(ns).iter().map(|(f, _)| *f).collect(),
                ),
                // Lost a creation race to another process (the server refuses a second
                // create as bad input): what it created is what counts.
                Err(e) => match self.inspect(ns).await? {
                    Some(found) => found,
                    None => return Err(self.error(e)),
                },
            },
        };
        // Also repairs a collection whose creation was interrupted before its indexes.
        self.create_indexes(ns, &missing).await?;
        self.known
            .lock()
            .insert(ns.collection.clone(), stored.clone());
        check_spec(&ns.collection, &stored, spec)
    }

    async fn upsert(&self, ns: &Namespace, points: Vec<PointRecord>) -> Result<()> {
        // The whole batch is refused if any point is foreign, before anything is written.
        for point in &points {
            check_point_owner(&ns.tenant, point)?;
        }
        if points.is_empty() {
            return Ok(());
        }
        let Some(spec) = self.spec_of(ns).await? else {
            return Err(self.gone(ns));
        };
        if let Some(bad) = points.iter().find(|p| p.vector.len() != spec.dimension) {
            return Err(VectorError::InvalidPoint(format!(
                "point {} has a {}-dimensional vector, collection {} holds {}",
                bad.id,
                bad.vector.len(),
                ns.collection,
                spec.dimension
            )));
        }
        let points: Vec<PointStruct> = points
            .into_iter()
            .map(|p| PointStruct::new(p.id.to_string(), p.vector, Payload::from(p.payload)))
            .collect();
        for batch in points.chunks(UPSERT_BATCH) {
            let request = UpsertPointsBuilder::new(ns.collection.clone(), batch.to_vec())
                .wait(true)
                .ordering(ordering())
                .build();
            let written = self
                .call("upsert", || self.client.upsert_points(request.clone()))
                .await;
            if self.found(written)?.is_none() {
                return Err(self.gone(ns));
            }
        }
        Ok(())
    }

    async fn count(&self, ns: &Namespace, document: Option<Uuid>) -> Result<u64> {
        let request = CountPointsBuilder::new(ns.collection.clone())
            .filter(owner_filter(ns, document, &[]))
            .exact(true)
            .build();
        let counted = self
            .call("count", || self.client.count(request.clone()))
            .await;
        Ok(self
            .found(counted)?
            .and_then(|r| r.result)
            .map_or(0, |r| r.count))
    }

    async fn search(
        &self,
        ns: &Namespace,
        vector: Vec<f32>,
        limit: usize,
        filter: &[FieldMatch],
    ) -> Result<Vec<Hit>> {
        let Some(spec) = self.spec_of(ns).await? else {
            return Ok(Vec::new());
        };
        if vector.len() != spec.dimension {
            return Err(VectorError::InvalidPoint(format!(
                "query vector has {} dimensions, collection {} holds {}",
                vector.len(),
                ns.collection,
                spec.dimension
            )));
        }
        if limit == 0 {
            // The server refuses a limit of 0; nothing can be asked for anyway.
            return Ok(Vec::new());
        }
        let request = QueryPointsBuilder::new(ns.collection.clone())
            .query(Query::new_nearest(vector))
            .filter(owner_filter(ns, None, filter))
            .limit(limit as u64)
            .with_payload(true)
            .build();
        let answer = self
            .call("query", || self.client.query(request.clone()))
            .await;
        let Some(answer) = self.found(answer)? else {
            return Ok(Vec::new());
        };
        answer
            .result
            .into_iter()
            .map(|point| {
                Ok(Hit {
                    id: uuid_of(point.id)?,
                    score: point.score,
                    payload: json_payload(point.payload),
                })
            })
            .collect()
    }

    async fn delete_document(&self, ns: &Namespace, document: Uuid) -> Result<()> {
        let request = DeletePointsBuilder::new(ns.collection.clone())
            .points(owner_filter(ns, Some(document), &[]))
            .wait(true)
            .ordering(ordering())
            .build();
        let deleted = self
            .call("delete document", || {
                self.client.delete_points(request.clone())
            })
            .await;
        self.found(deleted).map(|_| ())
    }

    async fn drop_namespace(&self, ns: &Namespace) -> Result<()> {
        match ns.mode {
            IsolationMode::Partition => {
                // Other tenants share the collection: only this tenant's points go.
                let request = DeletePointsBuilder::new(ns.collection.clone())
                    .points(owner_filter(ns, None, &[]))
                    .wait(true)
                    .ordering(ordering())
                    .build();
                let deleted = self
                    .call("delete tenant", || {
                        self.client.delete_points(request.clone())
                    })
                    .await;
                self.found(deleted).map(|_| ())
            }
            IsolationMode::Collection => {
                self.forget(&ns.collection);
                let name = ns.collection.clone();
                let dropped = self
                    .call("delete collection", || {
                        self.client.delete_collection(name.clone())
                    })
                    .await;
                self.found(dropped)?;
                self.forget(&ns.collection);
                tracing::info!(collection = %ns.collection, "Dropped Qdrant collection.");
                Ok(())
            }
        }
    }

    async fn scroll(
        &self,
        ns: &Namespace,
        offset: Option<Uuid>,
        limit: usize,
    ) -> Result<ScrollPage> {
        let mut request = ScrollPointsBuilder::new(ns.collection.clone())
            .filter(owner_filter(ns, None, &[]))
            // The server refuses a limit of 0, which would make no progress anyway.
            .limit(limit.clamp(1, u32::MAX as usize) as u32)
            .with_payload(true)
            .with_vectors(true);
        if let Some(offset) = offset {
            request = request.offset(PointId::from(offset.to_string()));
        }
        let request = request.build();
        let page = self
            .call("scroll", || self.client.scroll(request.clone()))
            .await;
        let Some(page) = self.found(page)? else {
            return Ok(ScrollPage::default());
        };
        let points = page
            .result
            .into_iter()
            .map(record_of)
            .collect::<Result<Vec<_>>>()?;
        Ok(ScrollPage {
            points,
            next_offset: page
                .next_page_offset
                .map(|id| uuid_of(Some(id)))
                .transpose()?,
        })
    }
}

/// Payload indexes of a collection: `(field, is_tenant)`.
fn wanted_indexes(ns: &Namespace) -> Vec<(&'static str, bool)> {
    if ns.is_shared() {
        vec![(TENANT_KEY, true), (DOCUMENT_KEY, false)]
    } else {
        vec![(DOCUMENT_KEY, false)]
    }
}

fn ordering() -> WriteOrdering {
    WriteOrdering {
        r#type: WriteOrderingType::Medium as i32,
    }
}

fn classify(e: QdrantError) -> CallError {
    let failure = match &e {
        QdrantError::ResponseError { status } => {
            use tonic::Code;
            match status.code() {
                Code::NotFound => Failure::NotFound,
                Code::Unauthenticated | Code::PermissionDenied => Failure::Auth,
                Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::AlreadyExists
                | Code::OutOfRange
                | Code::Unimplemented => Failure::Refused,
                // Unavailable, DeadlineExceeded, Aborted, Internal, Unknown (transport
                // errors surface as Unknown), Cancelled, ResourceExhausted, DataLoss.
                _ => Failure::Transient,
            }
        }
        QdrantError::ResourceExhaustedError { .. } | QdrantError::Io(_) => Failure::Transient,
        QdrantError::ConversionError(_) | QdrantError::InvalidUri(_) => Failure::Refused,
        _ => Failure::Transient,
    };
    CallError {
        failure,
        message: match e {
            QdrantError::ResponseError { status } => {
                format!("{:?}: {}", status.code(), status.message())
            }
            other => other.to_string(),
        },
    }
}

fn check_spec(collection: &str, stored: &VectorSpec, requested: &VectorSpec) -> Result<()> {
    if stored == requested {
        return Ok(());
    }
    Err(VectorError::SpecMismatch {
        collection: collection.to_owned(),
        stored: describe_spec(stored),
        requested: describe_spec(requested),
    })
}

fn describe_spec(spec: &VectorSpec) -> String {
    format!("{} ({} dimensions)", spec.model, spec.dimension)
}

/// The tenant wall plus the caller's conditions: every read and delete goes through it, in
/// both modes. All conditions are `must`, so extra conditions can only narrow.
fn owner_filter(ns: &Namespace, document: Option<Uuid>, extra: &[FieldMatch]) -> Filter {
    let mut must = vec![Condition::matches(
        TENANT_KEY,
        ns.tenant.as_str().to_owned(),
    )];
    if let Some(document) = document {
        // Payloads carry the document id as serde writes a Uuid: hyphenated lowercase.
        must.push(Condition::matches(DOCUMENT_KEY, document.to_string()));
    }
    for condition in extra {
        must.push(match &condition.value {
            MatchValue::Keyword(s) => Condition::matches(condition.key.clone(), s.clone()),
            MatchValue::Integer(i) => Condition::matches(condition.key.clone(), *i),
            MatchValue::Bool(b) => Condition::matches(condition.key.clone(), *b),
        });
    }
    Filter::must(must)
}

fn json_payload(payload: HashMap<String, qdrant_client::qdrant::Value>) -> Map<String, Value> {
    payload
        .into_iter()
        .map(|(k, v)| (k, v.into_json()))
        .collect()
}

/// We only ever write UUID ids; anything else is a point we did not write.
fn uuid_of(id: Option<PointId>) -> Result<Uuid> {
    match id.and_then(|id| id.point_id_options) {
        Some(PointIdOptions::Uuid(raw)) => Uuid::parse_str(&raw)
            .map_err(|e| VectorError::Engine(format!("bad point id {raw:?} from Qdrant: {e}"))),
        Some(PointIdOptions::Num(n)) => Err(VectorError::Engine(format!(
            "unexpected numeric point id {n} in a tenantry collection"
        ))),
        None => Err(VectorError::Engine(
            "a point came back without an id".into(),
        )),
    }
}

fn record_of(point: RetrievedPoint) -> Result<PointRecord> {
    let id = uuid_of(point.id)?;
    Ok(PointRecord {
        id,
        vector: dense_vector(id, point.vectors)?,
        payload: json_payload(point.payload),
    })
}

/// The single unnamed dense vector of a point. Cosine collections store vectors normalised,
/// so this is the unit vector of what was written.
fn dense_vector(id: Uuid, vectors: Option<VectorsOutput>) -> Result<Vec<f32>> {
    let missing = || VectorError::Engine(format!("point {id} came back without its dense vector"));
    let Some(vectors_output::VectorsOptions::Vector(output)) =
        vectors.and_then(|v| v.vectors_options)
    else {
        return Err(missing());
    };
    match output.vector {
        Some(vector_output::Vector::Dense(dense)) => Ok(dense.data),
        Some(_) => Err(missing()),
        // Servers before 1.14 fill only the deprecated flat field.
        #[allow(deprecated)]
        None if !output.data.is_empty() => Ok(output.data),
        None => Err(missing()),
    }
}
