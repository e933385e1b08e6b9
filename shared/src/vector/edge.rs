//! The embedded back-end: the Qdrant engine in-process (`qdrant-edge` 0.7), one shard per
//! collection under `<data_dir>/collections/<collection>/`, for one machine and for CI.
//!
//! Layout of the data directory:
//!
//! ```text
//! <data_dir>/tenantry.lock                       exclusive lock: one process per directory
//! <data_dir>/collections/<name>/shard/           the engine's files (WAL, segments, config)
//! <data_dir>/collections/<name>/tenantry_spec.json   dimension + model; written last, so a
//!                                                 collection without it is an unfinished one
//! ```
//!
//! qdrant-edge 0.7 behaviours this module is shaped around (checked in its source):
//! - The API is blocking; every call goes through `spawn_blocking`.
//! - `EdgeShard::load` does not replay the WAL, so a write is durable only once
//!   `EdgeShard::flush` has run. `upsert`, deletes and drops flush before they return;
//!   `upsert_deferred` (the worker's hot path) does not: a background checkpoint
//!   flushes every collection written since the last one and records its mark
//!   (`checkpoint.json`), and the fleet re-derives from Postgres what finished after
//!   the last mark (`tenantry::checkpoint`).
//! - 0.7 never truncates its WAL (nothing reads it back either): collections are created
//!   with small WAL segments, and closed segments are removed — all but the newest, which
//!   carries the operation numbering on — whenever a collection is loaded, and by a
//!   checkpoint once they pass [`WAL_ROTATE_SEGMENTS`] segments (the collection is closed and
//!   reopened for it). The data directory then grows with live data, not with history.
//! - Every open collection maps its files and keeps engine threads: at most
//!   `max_open` collections stay open, the least recently used idle ones are closed
//!   (flushed) beyond that, so 10 000 tenants in collection mode stay within the
//!   kernel's map count.
//! - `EdgeShard::flush` does `wal.try_lock().expect(..)` and panics if another thread is inside
//!   `update`; so update and flush each run under a per-shard writer mutex. Reads do not touch
//!   the WAL and run concurrently with writes and flushes.
//! - A flush costs milliseconds (it syncs the WAL and every segment) whatever it covers, so
//!   writes commit as a group: each write applies its update, then waits until one flush that
//!   started after its update has finished. Concurrent writers share that flush
//!   ([`Collection::write`]); none returns before its own update is durable.
//! - `Drop for EdgeShard` flushes too, so a shard is dropped only when nobody is using it.
//! - `PointStruct::new` panics on a payload that is not a JSON object; we build the
//!   engine's `PointStructPersisted` from the payload map directly, so that cannot happen.
//! - There is no background indexing: search is brute force until `EdgeShard::optimize`
//!   builds HNSW. Nothing here calls it (see [`EdgeStore::search`]).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, DEFAULT_VECTOR_NAME, Distance, EdgeConfig, EdgeShard,
    EdgeVectorParams, FieldCondition, FieldIndexOperations, Filter, JsonPath, KeywordIndexParams,
    Match, NamedQuery, OperationError, Payload, PayloadFieldSchema, PayloadSchemaParams, PointId,
    PointInsertOperations, PointOperations, PointStructPersisted, QueryEnum, QueryRequest,
    ScoringQuery, ScrollRequest, UpdateOperation, ValueVariants, VectorInternal,
    VectorStructInternal, VectorStructPersisted, WithPayloadInterface, WithVector,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    FieldMatch, Hit, MatchValue, PointRecord, Result, ScrollPage, VectorError, VectorSpec,
    VectorStore, check_point_owner,
};
use crate::tenancy::{DOCUMENT_KEY, IsolationMode, Namespace, TENANT_KEY};

/// Lock file in the data directory; its `flock` is what keeps a second process out.
const LOCK_FILE: &str = "tenantry.lock";
/// Directory under the data directory holding one directory per collection.
const COLLECTIONS_DIR: &str = "collections";
/// The engine's own directory inside a collection directory.
const SHARD_DIR: &str = "shard";
/// Our record of the collection's spec, beside the shard. Written after the shard is built.
const SPEC_FILE: &str = "tenantry_spec.json";
/// The last checkpoint's mark, in the data directory.
const CHECKPOINT_FILE: &str = "checkpoint.json";
/// The engine's WAL directory inside a shard directory.
const WAL_DIR: &str = "wal";
/// WAL segment size of our collections (the engine's default is 32 MiB, mapped whole).
pub const WAL_SEGMENT_BYTES: usize = 4 * 1024 * 1024;
/// A checkpoint rotates a collection's WAL once its closed segments hold this many
/// segments' worth of bytes.
const WAL_ROTATE_SEGMENTS: u64 = 2;
/// Stripes of the per-collection lifecycle locks.
const LIFECYCLE_STRIPES: usize = 64;
/// Collections kept open at most, by default.
pub const DEFAULT_MAX_OPEN: usize = 256;

/// How the embedded store runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeOptions {
    /// Collections kept open at most; the least recently used idle ones are closed beyond.
    pub max_open: usize,
    /// WAL segment size of new and reloaded collections.
    pub wal_segment_bytes: usize,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        Self {
            max_open: DEFAULT_MAX_OPEN,
            wal_segment_bytes: WAL_SEGMENT_BYTES,
        }
    }
}

/// The embedded vector store. Owns its data directory exclusively for its lifetime.
///
/// Cheap to share (`Arc<dyn VectorStore>`); all methods take `&self`.
#[derive(Debug)]
pub struct EdgeStore {
    /// The data directory (holds the checkpoint mark).
    data_dir: PathBuf,
    /// `<data_dir>/collections`.
    collections_dir: PathBuf,
    options: EdgeOptions,
    /// The last checkpoint's mark (mirrors `checkpoint.json`).
    checkpoint: Mutex<Option<DateTime<Utc>>>,
    /// Ticks of use, for closing the least recently used collections.
    clock: AtomicU64,
    /// Collections opened so far, by name. A hit here is the whole cost of
    /// `ensure_namespace` on the hot path. Held only for map lookups, never across I/O.
    open: Mutex<HashMap<String, Arc<Collection>>>,
    /// Serialise creating, loading, closing and dropping a collection (striped by name:
    /// different collections are created concurrently), so two tasks never build or load
    /// the same shard twice, and a drop or close never races a load of its directory.
    lifecycle: Vec<tokio::sync::Mutex<()>>,
    /// The locked lock file. Declared last so that it is released only after `open` has
    /// dropped (and thereby flushed) the shards.
    _lock: File,
}

/// One open collection.
#[derive(Debug)]
struct Collection {
    /// The spec the collection was created with (from `tenantry_spec.json`).
    spec: VectorSpec,
    /// The engine shard; `None` once the collection has been dropped, so a task still holding
    /// this `Arc` sees an absent collection instead of writing into a deleted directory.
    /// Reads and writes take the read side; only dropping takes the write side.
    shard: RwLock<Option<EdgeShard>>,
    /// Serialises `update` and `flush`: `EdgeShard::flush` panics if another thread is
    /// inside `update` (it `try_lock`s the WAL).
    writer: Mutex<()>,
    /// Updates applied so far (a sequence number, taken under `writer`).
    applied: AtomicU64,
    /// Group commit: held by the one thread flushing; the value is the highest update
    /// number known durable. Taken before `writer`, never while holding it.
    durable: Mutex<u64>,
    /// The store's clock at the last use (least recently used ones are closed first).
    used: AtomicU64,
    /// `<collections>/<name>/shard`, for rotating the WAL.
    shard_dir: PathBuf,
    wal_segment_bytes: usize,
}

/// `checkpoint.json`.
#[derive(Debug, Serialize, Deserialize)]
struct StoredCheckpoint {
    mark: DateTime<Utc>,
}

/// `tenantry_spec.json`: the `VectorSpec`, which stays serde-free in the trait module.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSpec {
    dimension: usize,
    model: String,
}

impl EdgeStore {
    /// Opens (creating if missing) the store in `data_dir` and locks it for this process.
    ///
    /// Fails with [`VectorError::Locked`] if another process, or another `EdgeStore` in this
    /// one, has it open: the engine's files must have a single owner. Collections are opened
    /// lazily on first use. Blocking: call it at startup, not from a request.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_with(data_dir, EdgeOptions::default())
    }

    /// [`EdgeStore::open`] with options.
    pub fn open_with(data_dir: &Path, options: EdgeOptions) -> Result<Self> {
        fs::create_dir_all(data_dir).map_err(|e| {
            VectorError::Engine(format!(
                "cannot create vector data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let lock_path = data_dir.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| {
                VectorError::Engine(format!(
                    "cannot open lock file {}: {e}",
                    lock_path.display()
                ))
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_holder(&mut lock);
                return Err(VectorError::Locked(format!(
                    "the embedded vector store in {} is already open{holder}; it belongs to one \
                     process: run workers inside that process (`dispatcher --workers N`), or \
                     use the Qdrant server back-end for several worker processes \
                     (TENANTRY_VECTOR_BACKEND=qdrant)",
                    data_dir.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(VectorError::Engine(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )));
            }
        }
        // Only a hint for the `Locked` message of the next opener; the lock is the flock.
        let _ = write_holder(&mut lock);

        let collections_dir = data_dir.join(COLLECTIONS_DIR);
        fs::create_dir_all(&collections_dir).map_err(|e| {
            VectorError::Engine(format!("cannot create {}: {e}", collections_dir.display()))
        })?;
        let checkpoint = read_checkpoint(data_dir)?;
        tracing::info!(data_dir = %data_dir.display(), checkpoint = ?checkpoint, "Opened the embedded vector store.");
        Ok(Self {
            data_dir: data_dir.to_owned(),
            collections_dir,
            options: EdgeOptions {
                max_open: options.max_open.max(1),
                ..options
            },
            checkpoint: Mutex::new(checkpoint),
            clock: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            lifecycle: (0..LIFECYCLE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            _lock: lock,
        })
    }

    /// Collections open now (at most `max_open`, plus those in use).
    pub fn open_collections(&self) -> usize {
        self.open.lock().len()
    }

    fn collection_dir(&self, name: &str) -> PathBuf {
        self.collections_dir.join(name)
    }

    fn cached(&self, name: &str) -> Option<Arc<Collection>> {
        let collection = self.open.lock().get(name).cloned()?;
        collection.used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        Some(collection)
    }

    fn stripe(name: &str) -> usize {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        (hasher.finish() % LIFECYCLE_STRIPES as u64) as usize
    }

    /// The lifecycle lock of collection `name`.
    fn lifecycle(&self, name: &str) -> &tokio::sync::Mutex<()> {
        &self.lifecycle[Self::stripe(name)]
    }

    /// Keeps a newly opened collection, closing the least recently used idle ones if
    /// more than `max_open` are open. Called under `name`'s lifecycle lock; a collection
    /// is closed only under its own (taken without waiting: a busy one stays open), so a
    /// closing shard's flush never races a load of its directory.
    async fn keep(&self, name: &str, collection: &Arc<Collection>) {
        collection.used.store(
            self.clock.fetch_add(1, Ordering::Relaxed),
            Ordering::Relaxed,
        );
        let mine = Self::stripe(name);
        let mut guards = Vec::new();
        let closing: Vec<Arc<Collection>> = {
            let mut open = self.open.lock();
            open.insert(name.to_owned(), Arc::clone(collection));
            let excess = open.len().saturating_sub(self.options.max_open);
            if excess == 0 {
                Vec::new()
            } else {
                // Idle: nobody but this map holds it (checked under the map's lock, which
                // every other holder took its clone under).
                let mut idle: Vec<(u64, String)> = open
                    .iter()
                    .filter(|(n, c)| n.as_str() != name && Arc::strong_count(c) == 1)
                    .map(|(n, c)| (c.used.load(Ordering::Relaxed), n.clone()))
                    .collect();
                idle.sort_unstable();
                let mut closing = Vec::with_capacity(excess);
                for (_, n) in idle {
                    if closing.len() == excess {
                        break;
                    }
                    let stripe = Self::stripe(&n);
                    if stripe != mine {
                        match self.lifecycle[stripe].try_lock() {
                            Ok(guard) => guards.push(guard),
                            Err(_) => continue,
                        }
                    }
                    if let Some(c) = open.remove(&n) {
                        closing.push(c);
                    }
                }
                closing
            }
        };
        if closing.is_empty() {
            return;
        }
        let count = closing.len();
        // Dropping a shard flushes it.
        if let Err(e) = blocking(move || {
            for collection in closing {
                collection.close();
            }
            Ok(())
        })
        .await
        {
            tracing::warn!(error = %e, "Closing idle embedded collections failed.");
        }
        drop(guards);
        tracing::debug!(closed = count, "Closed idle embedded collections.");
    }

    /// The collection of `ns`, loading it from disk on first use; `None` if it does not exist.
    async fn collection(&self, ns: &Namespace) -> Result<Option<Arc<Collection>>> {
        if let Some(collection) = self.cached(&ns.collection) {
            return Ok(Some(collection));
        }
        let _lifecycle = self.lifecycle(&ns.collection).lock().await;
        if let Some(collection) = self.cached(&ns.collection) {
            return Ok(Some(collection));
        }
        let dir = self.collection_dir(&ns.collection);
        let wal = self.options.wal_segment_bytes;
        let Some(collection) = blocking(move || Collection::load(&dir, wal)).await? else {
            return Ok(None);
        };
        let collection = Arc::new(collection);
        self.keep(&ns.collection, &collection).await;
        Ok(Some(collection))
    }

    /// Upserts points: durable on return if `durable`, else at the next checkpoint.
    async fn write_points(
        &self,
        ns: &Namespace,
        points: Vec<PointRecord>,
        durable: bool,
    ) -> Result<()> {
        // The whole batch is refused if any point is foreign, before anything is written.
        for point in &points {
            check_point_owner(&ns.tenant, point)?;
        }
        if points.is_empty() {
            return Ok(());
        }
        let collection = self.existing_collection(ns).await?;
        let dimension = collection.spec.dimension;
        if let Some(bad) = points.iter().find(|p| p.vector.len() != dimension) {
            return Err(VectorError::InvalidPoint(format!(
                "point {} has a {}-dimensional vector, collection {} holds {dimension}",
                bad.id,
                bad.vector.len(),
                ns.collection
            )));
        }
        let points = points
            .into_iter()
            .map(|point| PointStructPersisted {
                id: PointId::Uuid(point.id),
                vector: VectorStructPersisted::Single(point.vector),
                payload: Some(Payload(point.payload)),
            })
            .collect();
        // One operation for the batch: one WAL record and one flush.
        let operation = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsList(points),
        ));
        let name = ns.collection.clone();
        blocking(move || {
            let written = if durable {
                collection.write(operation)?
            } else {
                collection.apply(operation)?
            };
            if written {
                Ok(())
            } else {
                Err(dropped_while_writing(&name))
            }
        })
        .await
    }

    /// The collection an upsert goes to: it must have been ensured first, as on a server.
    async fn existing_collection(&self, ns: &Namespace) -> Result<Arc<Collection>> {
        self.collection(ns).await?.ok_or_else(|| {
            VectorError::Engine(format!(
                "collection {} does not exist: ensure_namespace must run before upsert",
                ns.collection
            ))
        })
    }
}

#[async_trait]
impl VectorStore for EdgeStore {
    fn backend(&self) -> &'static str {
        "edge"
    }

    async fn ensure_namespace(&self, ns: &Namespace, spec: &VectorSpec) -> Result<()> {
        if let Some(collection) = self.cached(&ns.collection) {
            return check_spec(&ns.collection, &collection.spec, spec);
        }
        let _lifecycle = self.lifecycle(&ns.collection).lock().await;
        if let Some(collection) = self.cached(&ns.collection) {
            return check_spec(&ns.collection, &collection.spec, spec);
        }
        let dir = self.collection_dir(&ns.collection);
        let requested = spec.clone();
        let shared = ns.is_shared();
        let name = ns.collection.clone();
        let wal = self.options.wal_segment_bytes;
        let collection = blocking(move || match Collection::load(&dir, wal)? {
            Some(existing) => Ok(existing),
            None => Collection::create(&name, &dir, requested, shared, wal),
        })
        .await?;
        let collection = Arc::new(collection);
        // Cached even on a mismatch: the collection is valid, only this request is not.
        self.keep(&ns.collection, &collection).await;
        check_spec(&ns.collection, &collection.spec, spec)
    }

    async fn upsert(&self, ns: &Namespace, points: Vec<PointRecord>) -> Result<()> {
        self.write_points(ns, points, true).await
    }

    async fn upsert_deferred(&self, ns: &Namespace, points: Vec<PointRecord>) -> Result<()> {
        self.write_points(ns, points, false).await
    }

    fn defers_durability(&self) -> bool {
        true
    }

    /// Flushes every open collection written since its last flush (several at once:
    /// concurrent syncs share the disk's cache flushes), rotates WALs that have grown,
    /// then records `mark` in `checkpoint.json` (written atomically). Collections closed
    /// since were flushed when they closed.
    async fn checkpoint(&self, mark: DateTime<Utc>) -> Result<()> {
        let open: Vec<Arc<Collection>> = self.open.lock().values().cloned().collect();
        let rotate = WAL_ROTATE_SEGMENTS * self.options.wal_segment_bytes as u64;
        let flushes = open.into_iter().map(|collection| {
            blocking(move || {
                collection.flush()?;
                collection.rotate_wal_past(rotate)
            })
        });
        for flushed in futures::future::join_all(flushes).await {
            flushed?;
        }
        crate::failpoint::hit("checkpoint-before-mark");
        let dir = self.data_dir.clone();
        blocking(move || write_checkpoint(&dir, mark)).await?;
        *self.checkpoint.lock() = Some(mark);
        Ok(())
    }

    fn last_checkpoint(&self) -> Option<DateTime<Utc>> {
        *self.checkpoint.lock()
    }

    async fn count(&self, ns: &Namespace, document: Option<Uuid>) -> Result<u64> {
        let Some(collection) = self.collection(ns).await? else {
            return Ok(0);
        };
        let filter = owner_filter(ns, document, &[])?;
        let counted = blocking(move || {
            collection.read(|shard| {
                shard
                    .count(CountRequest {
                        filter: Some(filter),
                        exact: true,
                    })
                    .map_err(engine("count"))
            })
        })
        .await?;
        Ok(counted.map_or(0, |n| n as u64))
    }

    /// Brute force over the collection: qdrant-edge builds no index in the background.
    /// Once collections grow (≈ 10⁵ points), a maintenance task should call
    /// `EdgeShard::optimize` off the request path (it is synchronous and CPU-heavy), then
    /// re-issue the payload index creation, which 0.7 does not record for new segments.
    async fn search(
        &self,
        ns: &Namespace,
        vector: Vec<f32>,
        limit: usize,
        filter: &[FieldMatch],
    ) -> Result<Vec<Hit>> {
        let Some(collection) = self.collection(ns).await? else {
            return Ok(Vec::new());
        };
        if vector.len() != collection.spec.dimension {
            return Err(VectorError::InvalidPoint(format!(
                "query vector has {} dimensions, collection {} holds {}",
                vector.len(),
                ns.collection,
                collection.spec.dimension
            )));
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let request = QueryRequest {
            prefetches: Vec::new(),
            query: Some(ScoringQuery::Vector(QueryEnum::Nearest(
                NamedQuery::default_dense(vector),
            ))),
            filter: Some(owner_filter(ns, None, filter)?),
            score_threshold: None,
            limit,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(true),
        };
        let scored = blocking(move || {
            collection.read(|shard| shard.query(request).map_err(engine("search")))
        })
        .await?
        .unwrap_or_default();
        scored
            .into_iter()
            .map(|point| {
                Ok(Hit {
                    id: uuid_of(point.id)?,
                    score: point.score,
                    payload: point.payload.map(|p| p.0).unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn delete_document(&self, ns: &Namespace, document: Uuid) -> Result<()> {
        let Some(collection) = self.collection(ns).await? else {
            return Ok(());
        };
        let operation = UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(
            owner_filter(ns, Some(document), &[])?,
        ));
        // A collection dropped meanwhile has no points of this document left: done either way.
        blocking(move || collection.write(operation).map(|_written| ())).await
    }

    async fn drop_namespace(&self, ns: &Namespace) -> Result<()> {
        match ns.mode {
            IsolationMode::Partition => {
                let Some(collection) = self.collection(ns).await? else {
                    return Ok(());
                };
                // Other tenants share the collection: only this tenant's points go.
                let operation = UpdateOperation::PointOperation(
                    PointOperations::DeletePointsByFilter(owner_filter(ns, None, &[])?),
                );
                blocking(move || collection.write(operation).map(|_written| ())).await
            }
            IsolationMode::Collection => {
                let _lifecycle = self.lifecycle(&ns.collection).lock().await;
                let collection = self.open.lock().remove(&ns.collection);
                let dir = self.collection_dir(&ns.collection);
                blocking(move || {
                    if let Some(collection) = collection {
                        // Waits for in-flight reads and writes; dropping the shard flushes it,
                        // which must happen before its directory goes.
                        drop(collection.shard.write().take());
                    }
                    remove_collection_dir(&dir)
                })
                .await?;
                tracing::info!(collection = %ns.collection, "Dropped embedded collection.");
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
        let Some(collection) = self.collection(ns).await? else {
            return Ok(ScrollPage::default());
        };
        let request = ScrollRequest {
            offset: offset.map(PointId::Uuid),
            // A page of 0 would make no progress (the engine would hand back the first id as
            // the next offset, forever); the server refuses it. Read at least one point.
            limit: Some(limit.max(1)),
            filter: Some(owner_filter(ns, None, &[])?),
            with_payload: Some(WithPayloadInterface::Bool(true)),
            with_vector: WithVector::Bool(true),
            order_by: None,
        };
        let Some((records, next)) = blocking(move || {
            collection.read(|shard| shard.scroll(request).map_err(engine("scroll")))
        })
        .await?
        else {
            return Ok(ScrollPage::default());
        };
        let points = records
            .into_iter()
            .map(|record| {
                let id = uuid_of(record.id)?;
                Ok(PointRecord {
                    id,
                    vector: dense_vector(id, record.vector)?,
                    payload: record.payload.map(|p| p.0).unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ScrollPage {
            points,
            next_offset: next.map(uuid_of).transpose()?,
        })
    }
}

impl Collection {
    /// Reads a collection from disk; `None` if it does not exist or was never finished
    /// (no spec file: creation or deletion was interrupted).
    fn load(dir: &Path, wal_segment_bytes: usize) -> Result<Option<Self>> {
        let spec_path = dir.join(SPEC_FILE);
        let raw = match fs::read(&spec_path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(VectorError::Engine(format!(
                    "cannot read {}: {e}",
                    spec_path.display()
                )));
            }
        };
        let stored: StoredSpec = serde_json::from_slice(&raw)
            .map_err(|e| VectorError::Engine(format!("corrupt {}: {e}", spec_path.display())))?;
        let shard_dir = dir.join(SHARD_DIR);
        let shard = open_shard(&shard_dir, wal_segment_bytes)?;
        tracing::debug!(dir = %dir.display(), "Loaded embedded collection.");
        Ok(Some(Self::new(
            VectorSpec {
                dimension: stored.dimension,
                model: stored.model,
            },
            shard,
            shard_dir,
            wal_segment_bytes,
        )))
    }

    /// Builds a new collection: the shard, its payload indexes, then the spec file, which
    /// marks the collection complete. Leftovers of an interrupted attempt are removed first.
    fn create(
        name: &str,
        dir: &Path,
        spec: VectorSpec,
        shared: bool,
        wal_segment_bytes: usize,
    ) -> Result<Self> {
        remove_collection_dir(dir)?;
        let shard_dir = dir.join(SHARD_DIR);
        fs::create_dir_all(&shard_dir)
            .map_err(|e| VectorError::Engine(format!("cannot create {}: {e}", dir.display())))?;
        // A single unnamed dense vector: points are written as `VectorStructPersisted::Single`
        // and queried with `NamedQuery::default_dense`, both of which mean the "" name.
        let config = EdgeConfig::builder()
            .vector(
                DEFAULT_VECTOR_NAME,
                EdgeVectorParams::builder(spec.dimension, Distance::Cosine).build(),
            )
            .wal_options(wal_options(wal_segment_bytes))
            .build();
        let shard = EdgeShard::new(&shard_dir, config).map_err(engine("create shard"))?;
        // Shared collections are partitioned on the tenant (Qdrant's multitenancy layout);
        // every collection gets the document index that deletes and counts filter on.
        let mut indexes = vec![(DOCUMENT_KEY, false)];
        if shared {
            indexes.insert(0, (TENANT_KEY, true));
        }
        for (field, is_tenant) in indexes {
            let index = UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(
                CreateIndex {
                    field_name: json_path(field)?,
                    field_schema: Some(PayloadFieldSchema::FieldParams(
                        PayloadSchemaParams::Keyword(KeywordIndexParams {
                            is_tenant: is_tenant.then_some(true),
                            ..KeywordIndexParams::default()
                        }),
                    )),
                },
            ));
            shard
                .update(index)
                .map_err(engine(&format!("create index on {field}")))?;
        }
        // Nobody else can see this shard yet, so flushing without the writer lock is safe.
        shard.flush();
        write_spec(dir, &spec)?;
        tracing::info!(
            collection = %name,
            dimension = spec.dimension,
            model = %spec.model,
            shared,
            "Created embedded collection."
        );
        Ok(Self::new(spec, shard, shard_dir, wal_segment_bytes))
    }

    fn new(
        spec: VectorSpec,
        shard: EdgeShard,
        shard_dir: PathBuf,
        wal_segment_bytes: usize,
    ) -> Self {
        Self {
            spec,
            shard: RwLock::new(Some(shard)),
            writer: Mutex::new(()),
            applied: AtomicU64::new(0),
            durable: Mutex::new(0),
            used: AtomicU64::new(0),
            shard_dir,
            wal_segment_bytes,
        }
    }

    /// Applies one update, visible to reads when it returns, durable at the next
    /// [`Collection::flush`]. `false` if the collection has been dropped.
    fn apply(&self, operation: UpdateOperation) -> Result<bool> {
        Ok(self.apply_numbered(operation)?.is_some())
    }

    /// Applies one update under `writer`; its sequence number, or None if dropped.
    fn apply_numbered(&self, operation: UpdateOperation) -> Result<Option<u64>> {
        let _writer = self.writer.lock();
        let shard = self.shard.read();
        let Some(shard) = shard.as_ref() else {
            return Ok(None);
        };
        shard.update(operation).map_err(engine("update"))?;
        Ok(Some(self.applied.fetch_add(1, Ordering::SeqCst) + 1))
    }

    /// Flushes what was applied since the last flush, if anything. `false` if the
    /// collection has been dropped.
    fn flush(&self) -> Result<bool> {
        let ticket = self.applied.load(Ordering::SeqCst);
        self.flush_through(ticket)
    }

    /// Returns once an update numbered `ticket` is durable: whoever holds `durable`
    /// flushes everything applied so far, so threads queued behind it usually find
    /// their update already covered (group commit).
    fn flush_through(&self, ticket: u64) -> Result<bool> {
        let mut durable = self.durable.lock();
        if *durable >= ticket {
            return Ok(true);
        }
        let _writer = self.writer.lock();
        let shard = self.shard.read();
        let Some(shard) = shard.as_ref() else {
            // Dropped after the update: the collection is gone, and the write with it.
            return Ok(false);
        };
        let covered = self.applied.load(Ordering::SeqCst);
        shard.flush();
        *durable = covered;
        Ok(true)
    }

    /// Closes the shard (which flushes it); the collection reads as dropped afterwards.
    fn close(&self) {
        drop(self.shard.write().take());
    }

    /// Removes the WAL's closed segments once they pass `limit` bytes: the shard is
    /// closed (flushed), the segments go, the shard is reopened. Reads and writes wait
    /// meanwhile (a few milliseconds: the segments are already flushed).
    fn rotate_wal_past(&self, limit: u64) -> Result<()> {
        let wal = self.shard_dir.join(WAL_DIR);
        if closed_wal_bytes(&wal) <= limit {
            return Ok(());
        }
        let _durable = self.durable.lock();
        let _writer = self.writer.lock();
        let mut shard = self.shard.write();
        if shard.is_none() {
            return Ok(());
        }
        // Dropping flushes: everything applied so far is durable.
        drop(shard.take());
        *shard = Some(open_shard(&self.shard_dir, self.wal_segment_bytes)?);
        tracing::debug!(dir = %self.shard_dir.display(), "Rotated an embedded collection's WAL.");
        Ok(())
    }

    /// Runs a read; `None` if the collection has been dropped.
    fn read<T>(&self, f: impl FnOnce(&EdgeShard) -> Result<T>) -> Result<Option<T>> {
        self.shard.read().as_ref().map(f).transpose()
    }

    /// Applies one update and returns once it is flushed, so it is durable (0.7's `load`
    /// does not replay the WAL). `false` if the collection has been dropped.
    ///
    /// Group commit: the update is applied under `writer` and numbered; then the writer
    /// waits for `durable`. Whoever holds `durable` flushes everything applied so far, so
    /// the threads queued behind it usually find their update already covered and return
    /// without a flush of their own: N concurrent writes cost about one flush, not N.
    fn write(&self, operation: UpdateOperation) -> Result<bool> {
        match self.apply_numbered(operation)? {
            Some(ticket) => self.flush_through(ticket),
            None => Ok(false),
        }
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
fn owner_filter(ns: &Namespace, document: Option<Uuid>, extra: &[FieldMatch]) -> Result<Filter> {
    let mut must = vec![keyword_condition(TENANT_KEY, ns.tenant.as_str())?];
    if let Some(document) = document {
        // Payloads carry the document id as serde writes a Uuid: hyphenated lowercase.
        must.push(keyword_condition(DOCUMENT_KEY, &document.to_string())?);
    }
    for condition in extra {
        let value = match &condition.value {
            MatchValue::Keyword(s) => ValueVariants::String(s.clone()),
            MatchValue::Integer(i) => ValueVariants::Integer(*i),
            MatchValue::Bool(b) => ValueVariants::Bool(*b),
        };
        must.push(Condition::Field(FieldCondition::new_match(
            json_path(&condition.key)?,
            Match::new_value(value),
        )));
    }
    Ok(Filter {
        must: Some(must),
        ..Filter::default()
    })
}

fn keyword_condition(key: &str, value: &str) -> Result<Condition> {
    Ok(Condition::Field(FieldCondition::new_match(
        json_path(key)?,
        Match::new_value(ValueVariants::String(value.to_owned())),
    )))
}

fn json_path(key: &str) -> Result<JsonPath> {
    key.parse()
        .map_err(|()| VectorError::InvalidPoint(format!("{key:?} is not a valid payload key")))
}

/// We only ever write UUID ids; anything else means files we did not write.
fn uuid_of(id: PointId) -> Result<Uuid> {
    match id {
        PointId::Uuid(uuid) => Ok(uuid),
        PointId::NumId(n) => Err(VectorError::Engine(format!(
            "unexpected numeric point id {n} in an embedded collection"
        ))),
    }
}

/// The single dense vector of a point as the engine returns it. Cosine collections store
/// vectors normalised, so this is the unit vector of what was written.
fn dense_vector(id: Uuid, vector: Option<VectorStructInternal>) -> Result<Vec<f32>> {
    match vector {
        Some(VectorStructInternal::Single(dense)) => Ok(dense),
        Some(VectorStructInternal::Named(mut named)) => match named.remove(DEFAULT_VECTOR_NAME) {
            Some(VectorInternal::Dense(dense)) => Ok(dense),
            _ => Err(VectorError::Engine(format!(
                "point {id} has no dense default vector"
            ))),
        },
        _ => Err(VectorError::Engine(format!(
            "point {id} came back without its dense vector"
        ))),
    }
}

/// Writes the spec atomically (temp file, fsync, rename): a crash leaves either no spec
/// (collection unfinished, rebuilt on the next ensure) or a whole one.
fn write_spec(dir: &Path, spec: &VectorSpec) -> Result<()> {
    let stored = StoredSpec {
        dimension: spec.dimension,
        model: spec.model.clone(),
    };
    let path = dir.join(SPEC_FILE);
    let tmp = dir.join(format!("{SPEC_FILE}.tmp"));
    let io =
        |e: std::io::Error| VectorError::Engine(format!("cannot write {}: {e}", path.display()));
    let json = serde_json::to_vec_pretty(&stored)
        .map_err(|e| VectorError::Engine(format!("cannot encode vector spec: {e}")))?;
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(&json).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)?;
    Ok(())
}

/// Removes a collection directory. The spec file goes first, so that an interrupted
/// removal leaves an unfinished collection (ignored, rebuilt on ensure), never a broken one.
fn remove_collection_dir(dir: &Path) -> Result<()> {
    let io =
        |e: std::io::Error| VectorError::Engine(format!("cannot remove {}: {e}", dir.display()));
    match fs::remove_file(dir.join(SPEC_FILE)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
    }
}

fn dropped_while_writing(collection: &str) -> VectorError {
    VectorError::Engine(format!(
        "collection {collection} was dropped while being written; ensure_namespace recreates it"
    ))
}

fn engine(context: &str) -> impl FnOnce(OperationError) -> VectorError + '_ {
    move |e| VectorError::Engine(format!("{context}: {e}"))
}

/// Runs blocking engine work off the async threads. A panic inside the engine (0.7 panics
/// rather than returning errors in `flush`) becomes an `Engine` error instead of unwinding
/// into the caller; the locks are parking_lot's, so nothing stays poisoned.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(VectorError::Engine(format!(
                "embedded engine panicked: {message}"
            )))
        }
        Err(e) => Err(VectorError::Engine(format!(
            "embedded engine task failed: {e}"
        ))),
    }
}

/// ` by pid N` if the lock file names its holder, for the `Locked` message.
fn read_holder(lock: &mut File) -> String {
    let mut pid = String::new();
    match lock.read_to_string(&mut pid) {
        Ok(_) if !pid.trim().is_empty() => format!(" by pid {}", pid.trim()),
        _ => String::new(),
    }
}

fn write_holder(lock: &mut File) -> std::io::Result<()> {
    lock.set_len(0)?;
    lock.rewind()?;
    write!(lock, "{}", std::process::id())?;
    lock.sync_all()
}

/// The WAL options of our collections: small segments (the engine maps them whole).
fn wal_options(segment_bytes: usize) -> qdrant_edge::WalOptions {
    qdrant_edge::WalOptions {
        segment_capacity: segment_bytes,
        ..qdrant_edge::WalOptions::default()
    }
}

/// Opens a shard after removing its WAL's closed segments but the newest (0.7 never reads
/// the WAL back: what is flushed is in the segments, and recovery re-derives the rest from
/// Postgres; the newest closed segment carries the operation numbering on, which point
/// versions depend on), with our WAL segment size.
fn open_shard(shard_dir: &Path, wal_segment_bytes: usize) -> Result<EdgeShard> {
    prune_wal(&shard_dir.join(WAL_DIR))?;
    let config_path = shard_dir.join("edge_config.json");
    let config = match fs::read(&config_path) {
        Ok(raw) => {
            let mut config: EdgeConfig = serde_json::from_slice(&raw).map_err(|e| {
                VectorError::Engine(format!("corrupt {}: {e}", config_path.display()))
            })?;
            config.wal_options = Some(wal_options(wal_segment_bytes));
            Some(config)
        }
        // Older shards may lack it: the engine infers it from the segments.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(VectorError::Engine(format!(
                "cannot read {}: {e}",
                config_path.display()
            )));
        }
    };
    EdgeShard::load(shard_dir, config)
        .map_err(engine(&format!("load shard in {}", shard_dir.display())))
}

/// `closed-<first index>` files of a WAL directory, oldest first.
fn closed_wal_segments(wal: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(wal) else {
        return Vec::new();
    };
    let mut closed: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let start = name.to_str()?.strip_prefix("closed-")?.parse().ok()?;
            Some((start, e.path()))
        })
        .collect();
    closed.sort_unstable();
    closed
}

fn closed_wal_bytes(wal: &Path) -> u64 {
    closed_wal_segments(wal)
        .iter()
        .filter_map(|(_, p)| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Removes every closed WAL segment but the newest. Only while the shard is closed.
fn prune_wal(wal: &Path) -> Result<()> {
    let closed = closed_wal_segments(wal);
    for (_, path) in closed.iter().take(closed.len().saturating_sub(1)) {
        fs::remove_file(path)
            .map_err(|e| VectorError::Engine(format!("cannot remove {}: {e}", path.display())))?;
    }
    Ok(())
}

fn read_checkpoint(data_dir: &Path) -> Result<Option<DateTime<Utc>>> {
    let path = data_dir.join(CHECKPOINT_FILE);
    match fs::read(&path) {
        Ok(raw) => serde_json::from_slice::<StoredCheckpoint>(&raw)
            .map(|c| Some(c.mark))
            .map_err(|e| VectorError::Engine(format!("corrupt {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VectorError::Engine(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// Writes the mark atomically (temp file, fsync, rename, directory fsync).
fn write_checkpoint(data_dir: &Path, mark: DateTime<Utc>) -> Result<()> {
    let path = data_dir.join(CHECKPOINT_FILE);
    let tmp = data_dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    let io =
        |e: std::io::Error| VectorError::Engine(format!("cannot write {}: {e}", path.display()));
    let json = serde_json::to_vec(&StoredCheckpoint { mark })
        .map_err(|e| VectorError::Engine(format!("cannot encode the checkpoint: {e}")))?;
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(&json).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)?;
    File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}
