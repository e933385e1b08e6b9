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
use tenantry::vector::edge::EdgeStore;
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
    let spawning = SPAWNING.write().await;
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "an_acknowledged_upsert_survives_a_crash",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_DIR, dir.path())
        .status()
        .unwrap();
    drop(spawning);
    assert!(
        !status.success(),
        "the child must die by abort, got {status}"
    );

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
