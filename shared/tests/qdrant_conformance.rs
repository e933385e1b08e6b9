//! The shared conformance suite on the Qdrant server back-end. The cases that need a
//! server are `#[ignore]`d, so a run without one reports them as ignored rather than as
//! passed: run them with `QDRANT_URL=http://127.0.0.1:6334 cargo test --test
//! qdrant_conformance -- --ignored` (with `QDRANT_API_KEY` if the server wants one).
//!
//! Every run uses a fleet prefix of its own, so runs sharing a server never meet; the
//! collections it creates are dropped at the end of each case where the case drops them,
//! and otherwise stay under that prefix (`f…_conf-<uuid>_…`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use tenantry::config::{ENV_QDRANT_API_KEY, ENV_QDRANT_URL};
use tenantry::vector::conformance::{self, Case, MODES};
use tenantry::vector::qdrant::QdrantStore;
use tenantry::vector::{SharedVectorStore, VectorStore};
use uuid::Uuid;

/// The reason every test that needs a server is ignored by default.
const NEEDS_SERVER: &str = "needs a Qdrant server: set QDRANT_URL";

/// The store at `QDRANT_URL`. An ignored test run without it fails: asked for, it must
/// not pass having checked nothing.
async fn store(test: &str) -> QdrantStore {
    let url = std::env::var(ENV_QDRANT_URL)
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| panic!("{test}: {NEEDS_SERVER}"));
    let key = std::env::var(ENV_QDRANT_API_KEY)
        .ok()
        .filter(|k| !k.is_empty());
    let store = QdrantStore::connect(&url, key.as_deref()).expect("a valid QDRANT_URL");
    let version = store
        .ping()
        .await
        .unwrap_or_else(|e| panic!("QDRANT_URL is set but the server does not answer: {e}"));
    println!("{test}: Qdrant {version} at {url}");
    store
}

fn fleet() -> String {
    format!("conf-{}", Uuid::new_v4().simple())
}

macro_rules! conformance_case {
    ($($test:ident => $case:expr),+ $(,)?) => {$(
        #[tokio::test]
        #[ignore = "needs a Qdrant server: set QDRANT_URL"]
        async fn $test() {
            let store = store(stringify!($test)).await;
            for mode in MODES {
                conformance::run_case(&store, &fleet(), $case, mode).await;
            }
        }
    )+};
}

conformance_case! {
    qdrant_conformance_namespace_lifecycle => Case::NamespaceLifecycle,
    qdrant_conformance_idempotent_upsert => Case::IdempotentUpsert,
    qdrant_conformance_counts => Case::Counts,
    qdrant_conformance_filtered_search => Case::FilteredSearch,
    qdrant_conformance_tenant_isolation => Case::TenantIsolation,
    qdrant_conformance_delete_document => Case::DeleteDocument,
    qdrant_conformance_drop_namespace => Case::DropNamespace,
    qdrant_conformance_scroll => Case::Scroll,
    qdrant_conformance_missing_namespace => Case::MissingNamespace,
}

/// Every case, both modes, one client.
#[tokio::test]
#[ignore = "needs a Qdrant server: set QDRANT_URL"]
async fn qdrant_conformance_run_all_on_one_store() {
    let store = store("qdrant_conformance_run_all_on_one_store").await;
    let store: SharedVectorStore = Arc::new(store);
    assert_eq!(store.backend(), "qdrant");
    conformance::run_all(store, &fleet()).await;
}

/// Without a server, calls fail as `Unavailable` (retryable), in one line naming the
/// address, after the client's retries — never a panic or a hang.
#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    use tenantry::tenancy::{DatabaseName, IsolationMode, Namespace, TenantId};
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let store = QdrantStore::connect(&url, None).unwrap();
    let ns = Namespace::new(
        "unreachable",
        &TenantId::parse("acme").unwrap(),
        &DatabaseName::default_name(),
        IsolationMode::Partition,
    );
    let started = std::time::Instant::now();
    let err = store
        .ensure_namespace(&ns, &conformance::spec())
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        matches!(err, tenantry::vector::VectorError::Unavailable(_)),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&url), "{message}");
    assert!(!message.contains('\n'), "{message}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(store.ping().await.is_err());
}
