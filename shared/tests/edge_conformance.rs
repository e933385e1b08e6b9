//! The shared conformance suite on the embedded back-end, plus what only the embedded
//! back-end has: the data-directory lock, durability across reopen and across a crash, and
//! concurrent writers (qdrant-edge 0.7's `flush` panics if it races an `update`).

// A test binary: an unwrap that fails is a failed test. (clippy's allow-unwrap-in-tests
// covers `#[test]` functions only, not the helpers beside them.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tenantry::tenancy::{DatabaseName, IsolationMode, Namespace, TenantId};
use tenantry::vector::conformance::{self, Case, MODES};
use tenantry::vector::edge::{EdgeOptions, EdgeStore};
use tenantry::vector::{SharedVectorStore, VectorError, VectorSpec, VectorStore};
use uuid::Uuid;

/// Spawning a process copies this process's file descriptors into the child until it execs,
/// and the data-directory lock (a `flock`) with them: a store closed meanwhile stays locked
/// for that moment. Tests that close and reopen a store hold this shared; the crash test,
/// which spawns, holds it exclusively. Measured: without it, about one run in eight failed.
static SPAWNING: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A fleet prefix of its own for every run, as the suite asks.
fn fleet() -> String {
    format!("conf-{}", Uuid::new_v4().simple())
}

fn tenant(raw: &str) -> TenantId {
    TenantId::parse(raw).unwrap()
}

fn database(raw: &str) -> DatabaseName {
    DatabaseName::parse(raw).unwrap()
}

macro_rules! conformance_case {
    ($($test:ident => $case:expr),+ $(,)?) => {$(
        #[tokio::test]
        async fn $test() {
            let dir = tempfile::tempdir().unwrap();
            let store = EdgeStore::open(dir.path()).unwrap();
            for mode in MODES {
                conformance::run_case(&store, &fleet(), $case, mode).await;
            }
        }
    )+};
}

conformance_case! {
    conformance_namespace_lifecycle => Case::NamespaceLifecycle,
    conformance_idempotent_upsert => Case::IdempotentUpsert,
    conformance_counts => Case::Counts,
    conformance_filtered_search => Case::FilteredSearch,
    conformance_tenant_isolation => Case::TenantIsolation,
    conformance_delete_document => Case::DeleteDocument,
    conformance_drop_namespace => Case::DropNamespace,
    conformance_scroll => Case::Scroll,
    conformance_missing_namespace => Case::MissingNamespace,
}

/// Every case, both modes, one store: cases must not disturb each other either.
#[tokio::test]
async fn conformance_run_all_on_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedVectorStore = Arc::new(EdgeStore::open(dir.path()).unwrap());
    conformance::run_all(store, &fleet()).await;
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_locked() {
    let _no_spawn = SPAWNING.read().await;
    let dir = tempfile::tempdir().unwrap();
    let first = EdgeStore::open(dir.path()).unwrap();
    match EdgeStore::open(dir.path()) {
        Err(VectorError::Locked(message)) => {
            assert!(
                message.contains(&dir.path().display().to_string()),
                "{message}"
            );
            assert!(
                message.contains("TENANTRY_VECTOR_BACKEND=qdrant"),
                "{message}"
            );
            assert!(!message.contains('\n'), "one line: {message}");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(first);
    EdgeStore::open(dir.path()).expect("the lock goes with the store");
}

#[tokio::test]
async fn data_survives_close_and_reopen() {
    let _no_spawn = SPAWNING.read().await;
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet();
    let db = database("default");
    let acme = tenant("acme");
    let spec = conformance::spec();
    let document = Uuid::new_v4();
    let namespaces: Vec<Namespace> = MODES
        .iter()
        .map(|&mode| Namespace::new(&fleet, &acme, &db, mode))
        .collect();

    let points: Vec<_> = (0..6)
        .map(|i| {
            conformance::chunk_point(
                &acme,
                &db,
                document,
                i,
                conformance::unit_vector(0.1 * i as f32),
                "en",
            )
        })
        .collect();
    {
        let store = EdgeStore::open(dir.path()).unwrap();
        for ns in &namespaces {
            store.ensure_namespace(ns, &spec).await.unwrap();
            store.upsert(ns, points.clone()).await.unwrap();
            store.delete_document(ns, Uuid::new_v4()).await.unwrap();
        }
    }

    let store = EdgeStore::open(dir.path()).unwrap();
    for ns in &namespaces {
        // Lazily reopened by a read, before any ensure_namespace.
        assert_eq!(store.count(ns, None).await.unwrap(), 6, "{:?}", ns.mode);
        let hits = store
            .search(ns, conformance::unit_vector(0.3), 1, &[])
            .await
            .unwrap();
        assert_eq!(hits[0].id, points[3].id);
        assert_eq!(hits[0].payload, points[3].payload);
        // The spec was persisted with the collection.
        let other = VectorSpec {
            dimension: conformance::DIMENSION,
            model: "another-model".into(),
        };
        assert!(matches!(
            store.ensure_namespace(ns, &other).await,
            Err(VectorError::SpecMismatch { .. })
        ));
        store.ensure_namespace(ns, &spec).await.unwrap();
        store.delete_document(ns, document).await.unwrap();
    }
    drop(store);

    let store = EdgeStore::open(dir.path()).unwrap();
    for ns in &namespaces {
        assert_eq!(
            store.count(ns, None).await.unwrap(),
            0,
            "deletes are durable too"
        );
    }
}

/// Set in the child process of `an_acknowledged_upsert_survives_a_crash`.
const CRASH_CHILD_DIR: &str = "TENANTRY_TEST_CRASH_CHILD_DIR";
const CRASH_POINTS: u32 = 5;
/// Concurrent upserts of the crash child, one document each.
const CRASH_WRITERS: u32 = 8;

fn crash_namespace() -> Namespace {
    Namespace::new(
        "crash",
        &tenant("acme"),
        &database("default"),
        IsolationMode::Partition,
    )
}

/// 0.7's `EdgeShard::load` does not replay the WAL, and `Drop` flushes: only a crash shows
/// whether an acknowledged upsert was really flushed. The child upserts (concurrently, so
/// the writes commit as a group), then aborts (no destructors run); the parent reopens and
/// counts.
#[tokio::test]
async fn an_acknowledged_upsert_survives_a_crash() {
    if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
        crash_child(Path::new(&dir)).await;
        unreachable!("the crash child aborts");
    }
    let dir = tempfile::tempdir().unwrap();
    run_aborting_child(
        "an_acknowledged_upsert_survives_a_crash",
        CRASH_CHILD_DIR,
        dir.path(),
    )
    .await;

    let store = EdgeStore::open(dir.path()).expect("a dead process releases the lock");
    let ns = crash_namespace();
    let expected = CRASH_WRITERS * CRASH_POINTS;
    assert_eq!(store.count(&ns, None).await.unwrap(), u64::from(expected));
    let page = store.scroll(&ns, None, 100).await.unwrap();
    assert_eq!(page.points.len(), expected as usize);
}

async fn crash_child(dir: &Path) {
    let store = Arc::new(EdgeStore::open(dir).unwrap());
    let ns = crash_namespace();
    store
        .ensure_namespace(&ns, &conformance::spec())
        .await
        .unwrap();
    // Concurrent upserts commit as a group (they share flushes): each must still be
    // durable once it has returned.
    let writes = (0..CRASH_WRITERS).map(|_| {
        let (store, ns) = (Arc::clone(&store), ns.clone());
        tokio::spawn(async move {
            let document = Uuid::new_v4();
            let points = (0..CRASH_POINTS)
                .map(|i| {
                    conformance::chunk_point(
                        &ns.tenant,
                        &ns.database,
                        document,
                        i,
                        conformance::unit_vector(0.1 * i as f32),
                        "en",
                    )
                })
                .collect();
            store.upsert(&ns, points).await
        })
    });
    for write in writes.collect::<Vec<_>>() {
        write.await.unwrap().unwrap();
    }
    // Like a power cut right after the acknowledgement: no Drop, no flush-on-drop.
    std::process::abort();
}

/// Many tasks write and read one shared collection at once: update+flush must be
/// serialised per shard, or 0.7's `flush` panics on its WAL `try_lock`. Also races the
/// creation of the collection itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_one_collection() {
    const TASKS: u32 = 16;
    const BATCHES: u32 = 6;
    const BATCH: u32 = 5;
    let dir = tempfile::tempdir().unwrap();
    let store: SharedVectorStore = Arc::new(EdgeStore::open(dir.path()).unwrap());
    let fleet = fleet();
    let db = database("busy");
    let tenants = [tenant("tenant-a"), tenant("tenant-b")];

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        let tenant = tenants[(task % 2) as usize].clone();
        let ns = Namespace::new(&fleet, &tenant, &db, IsolationMode::Partition);
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            store.ensure_namespace(&ns, &conformance::spec()).await?;
            for _ in 0..BATCHES {
                let document = Uuid::new_v4();
                let points = (0..BATCH)
                    .map(|i| {
                        conformance::chunk_point(
                            &tenant,
                            &db,
                            document,
                            i,
                            conformance::unit_vector(0.1 * i as f32),
                            "en",
                        )
                    })
                    .collect();
                store.upsert(&ns, points).await?;
                assert_eq!(store.count(&ns, Some(document)).await?, u64::from(BATCH));
                let hits = store
                    .search(&ns, conformance::unit_vector(0.0), 3, &[])
                    .await?;
                assert_eq!(hits.len(), 3);
            }
            Ok::<_, VectorError>(())
        }));
    }
    for task in tasks {
        task.await
            .expect("no task panicked")
            .expect("every call succeeded");
    }
    for tenant in &tenants {
        let ns = Namespace::new(&fleet, tenant, &db, IsolationMode::Partition);
        assert_eq!(
            store.count(&ns, None).await.unwrap(),
            u64::from(TASKS / 2 * BATCHES * BATCH)
        );
    }
}

fn points_of(ns: &Namespace, document: Uuid, count: u32) -> Vec<tenantry::vector::PointRecord> {
    (0..count)
        .map(|i| {
            conformance::chunk_point(
                &ns.tenant,
                &ns.database,
                document,
                i,
                conformance::unit_vector(0.01 * i as f32),
                "en",
            )
        })
        .collect()
}

/// Bytes of the files in a directory (not recursive).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// qdrant-edge 0.7 never truncates its WAL: without rotation it grows with every write
/// for ever. Writing many segments' worth, with checkpoints, leaves a WAL of a few
/// segments — and everything written is still there after a reopen.
#[tokio::test]
async fn the_wal_stays_bounded_across_many_segments_of_writes() {
    let _no_spawn = SPAWNING.read().await;
    let dir = tempfile::tempdir().unwrap();
    const SEGMENT: usize = 64 * 1024;
    let options = EdgeOptions {
        max_open: 16,
        wal_segment_bytes: SEGMENT,
    };
    let ns = Namespace::new(
        &fleet(),
        &tenant("acme"),
        &database("default"),
        IsolationMode::Partition,
    );
    let wal = dir
        .path()
        .join("collections")
        .join(&ns.collection)
        .join("shard")
        .join("wal");
    let mut written = 0u64;
    let mut largest = 0u64;
    {
        let store = EdgeStore::open_with(dir.path(), options).unwrap();
        store
            .ensure_namespace(&ns, &conformance::spec())
            .await
            .unwrap();
        for round in 0..60 {
            let before = dir_bytes(&wal);
            store
                .upsert_deferred(&ns, points_of(&ns, Uuid::new_v4(), 50))
                .await
                .unwrap();
            written += dir_bytes(&wal).saturating_sub(before);
            if round % 5 == 4 {
                store.checkpoint(chrono::Utc::now()).await.unwrap();
                largest = largest.max(dir_bytes(&wal));
            }
        }
        assert_eq!(store.count(&ns, None).await.unwrap(), 60 * 50);
    }
    // Segments are preallocated, so "written" undercounts: it is still many segments.
    let closed: Vec<u64> = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("closed-")?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        closed.iter().all(|start| *start > 0),
        "the first segments were removed: {closed:?}"
    );
    assert!(
        largest <= 6 * SEGMENT as u64,
        "the WAL reached {largest} bytes (segments of {SEGMENT})"
    );
    eprintln!("WAL: at most {largest} bytes while at least {written} were appended");
    let store = EdgeStore::open_with(dir.path(), options).unwrap();
    assert_eq!(store.count(&ns, None).await.unwrap(), 60 * 50);
}

/// Every open collection maps its files and keeps engine threads; beyond the limit the
/// least recently used idle ones are closed, and reopened on their next use.
#[tokio::test]
async fn idle_collections_close_beyond_the_limit_and_reopen_on_use() {
    let _no_spawn = SPAWNING.read().await;
    let dir = tempfile::tempdir().unwrap();
    let options = EdgeOptions {
        max_open: 4,
        ..EdgeOptions::default()
    };
    let store = EdgeStore::open_with(dir.path(), options).unwrap();
    let fleet = fleet();
    let namespaces: Vec<Namespace> = (0..20)
        .map(|i| {
            Namespace::new(
                &fleet,
                &tenant(&format!("tenant-{i}")),
                &database("default"),
                IsolationMode::Collection,
            )
        })
        .collect();
    for ns in &namespaces {
        store
            .ensure_namespace(ns, &conformance::spec())
            .await
            .unwrap();
        store
            .upsert_deferred(ns, points_of(ns, Uuid::new_v4(), 3))
            .await
            .unwrap();
        assert!(
            store.open_collections() <= 4,
            "{}",
            store.open_collections()
        );
    }
    for ns in &namespaces {
        assert_eq!(store.count(ns, None).await.unwrap(), 3, "{}", ns.collection);
        assert!(store.open_collections() <= 4);
    }
}

/// Set in the child process of `a_checkpoint_survives_a_crash`.
const CHECKPOINT_CHILD_DIR: &str = "TENANTRY_TEST_CHECKPOINT_CHILD_DIR";

/// Deferred upserts are durable once a checkpoint has returned: the child writes,
/// checkpoints, writes more, then aborts; the parent finds the checkpoint's mark and
/// everything it covered.
#[tokio::test]
async fn a_checkpoint_survives_a_crash() {
    if let Some(dir) = std::env::var_os(CHECKPOINT_CHILD_DIR) {
        checkpoint_child(Path::new(&dir)).await;
        unreachable!("the checkpoint child aborts");
    }
    let dir = tempfile::tempdir().unwrap();
    run_aborting_child(
        "a_checkpoint_survives_a_crash",
        CHECKPOINT_CHILD_DIR,
        dir.path(),
    )
    .await;

    let store = EdgeStore::open(dir.path()).expect("a dead process releases the lock");
    let mark: chrono::DateTime<chrono::Utc> = "2026-12-05T12:00:00Z".parse().unwrap();
    assert_eq!(store.last_checkpoint(), Some(mark));
    let ns = crash_namespace();
    for document in checkpointed_documents() {
        assert_eq!(store.count(&ns, Some(document)).await.unwrap(), 4);
    }
}

fn checkpointed_documents() -> Vec<Uuid> {
    (1..=3u128).map(Uuid::from_u128).collect()
}

async fn checkpoint_child(dir: &Path) {
    let store = EdgeStore::open(dir).unwrap();
    let ns = crash_namespace();
    store
        .ensure_namespace(&ns, &conformance::spec())
        .await
        .unwrap();
    for document in checkpointed_documents() {
        store
            .upsert_deferred(&ns, points_of(&ns, document, 4))
            .await
            .unwrap();
    }
    store
        .checkpoint("2026-12-05T12:00:00Z".parse().unwrap())
        .await
        .unwrap();
    // Written after the checkpoint: not promised to survive (recovery re-derives it).
    store
        .upsert_deferred(&ns, points_of(&ns, Uuid::new_v4(), 4))
        .await
        .unwrap();
    std::process::abort();
}

/// Runs this test binary's test `name` alone in a child process with `var` set to `dir`,
/// and asserts that the child died by abort (the crash the test simulates).
async fn run_aborting_child(name: &str, var: &str, dir: &Path) {
    let spawning = SPAWNING.write().await;
    let status = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(var, dir)
        .status()
        .unwrap();
    drop(spawning);
    assert!(
        !status.success(),
        "the child must die by abort, got {status}"
    );
}
