//! The conformance suite every [`VectorStore`] back-end must pass: the trait's contract as
//! executable checks, written against `&dyn VectorStore` only, so that the embedded and the
//! Qdrant-server back-ends are held to exactly the same behaviour.
//!
//! Every case runs in both isolation modes and panics with a message naming the back-end,
//! the case and the mode. Callers pass a fleet prefix unique to the run (every collection
//! name starts with it), so runs sharing a Qdrant server never meet:
//!
//! ```no_run
//! # async fn example(store: tenantry::vector::SharedVectorStore) {
//! let fleet = format!("conf-{}", uuid::Uuid::new_v4().simple());
//! tenantry::vector::conformance::run_all(store, &fleet).await;
//! # }
//! ```

use std::collections::BTreeSet;
use std::fmt::Debug;

use serde_json::{Map, json};
use uuid::Uuid;

use super::{FieldMatch, Hit, MatchValue, PointRecord, Result, SharedVectorStore, VectorError};
use super::{VectorSpec, VectorStore};
use crate::tenancy::{
    CHUNK_INDEX_KEY, DATABASE_KEY, DOCUMENT_KEY, DatabaseName, IsolationMode, METADATA_KEY,
    Namespace, TENANT_KEY, TEXT_KEY, TenantId, point_id,
};

/// Dimension of every vector the suite writes.
pub const DIMENSION: usize = 8;
/// Model name the suite's namespaces are created with.
pub const MODEL: &str = "conformance-8";
/// Both isolation modes; every case runs in each.
pub const MODES: [IsolationMode; 2] = [IsolationMode::Collection, IsolationMode::Partition];

/// One check of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Create is idempotent; another dimension or model is refused.
    NamespaceLifecycle,
    /// Same ids twice leave the count unchanged; a malformed batch writes nothing.
    IdempotentUpsert,
    /// Counts per tenant and per document.
    Counts,
    /// Nearest first, best first, `limit` respected; `FieldMatch` conditions narrow.
    FilteredSearch,
    /// Another tenant's reads, deletes and forged writes never see or touch a tenant's points.
    TenantIsolation,
    /// Deleting a document removes that document's points only.
    DeleteDocument,
    /// Dropping removes the tenant's points only.
    DropNamespace,
    /// Scrolling pages through all of a tenant's points exactly once, in id order.
    Scroll,
    /// Reads and deletes on a namespace that was never created are empty, not errors.
    MissingNamespace,
}

impl Case {
    pub const ALL: [Case; 9] = [
        Case::NamespaceLifecycle,
        Case::IdempotentUpsert,
        Case::Counts,
        Case::FilteredSearch,
        Case::TenantIsolation,
        Case::DeleteDocument,
        Case::DropNamespace,
        Case::Scroll,
        Case::MissingNamespace,
    ];

    /// Also the database name the case writes into, so cases never share a collection.
    pub fn name(self) -> &'static str {
        match self {
            Case::NamespaceLifecycle => "lifecycle",
            Case::IdempotentUpsert => "idempotent-upsert",
            Case::Counts => "counts",
            Case::FilteredSearch => "filtered-search",
            Case::TenantIsolation => "tenant-isolation",
            Case::DeleteDocument => "delete-document",
            Case::DropNamespace => "drop-namespace",
            Case::Scroll => "scroll",
            Case::MissingNamespace => "missing-namespace",
        }
    }
}

/// Runs every case in both isolation modes, one after another.
pub async fn run_all(store: SharedVectorStore, fleet: &str) {
    for case in Case::ALL {
        for mode in MODES {
            run_case(store.as_ref(), fleet, case, mode).await;
        }
    }
}

/// Runs one case in one isolation mode.
pub async fn run_case(store: &dyn VectorStore, fleet: &str, case: Case, mode: IsolationMode) {
    let check = Check::new(store, fleet, case, mode);
    match case {
        Case::NamespaceLifecycle => namespace_lifecycle(&check).await,
        Case::IdempotentUpsert => idempotent_upsert(&check).await,
        Case::Counts => counts(&check).await,
        Case::FilteredSearch => filtered_search(&check).await,
        Case::TenantIsolation => tenant_isolation(&check).await,
        Case::DeleteDocument => delete_document(&check).await,
        Case::DropNamespace => drop_namespace(&check).await,
        Case::Scroll => scroll(&check).await,
        Case::MissingNamespace => missing_namespace(&check).await,
    }
}

/// The spec of every namespace the suite creates.
pub fn spec() -> VectorSpec {
    VectorSpec {
        dimension: DIMENSION,
        model: MODEL.to_owned(),
    }
}

/// A unit vector at `angle` radians in the first plane: the angle between two of them is
/// the difference of their angles, so the expected ranking of any query is known exactly.
pub fn unit_vector(angle: f32) -> Vec<f32> {
    let mut v = vec![0.0; DIMENSION];
    v[0] = angle.cos();
    v[1] = angle.sin();
    v
}

/// A well-formed point of `tenant`, as the worker writes them: deterministic id, the
/// payload keys the trait documents, and `metadata.lang` / `metadata.draft` for filters.
pub fn chunk_point(
    tenant: &TenantId,
    database: &DatabaseName,
    document: Uuid,
    chunk_index: u32,
    vector: Vec<f32>,
    lang: &str,
) -> PointRecord {
    let mut payload = Map::new();
    payload.insert(TENANT_KEY.into(), json!(tenant.as_str()));
    payload.insert(DOCUMENT_KEY.into(), json!(document.to_string()));
    payload.insert(DATABASE_KEY.into(), json!(database.as_str()));
    payload.insert(CHUNK_INDEX_KEY.into(), json!(chunk_index));
    payload.insert(
        TEXT_KEY.into(),
        json!(format!("chunk {chunk_index} of {document}")),
    );
    payload.insert(
        METADATA_KEY.into(),
        json!({ "lang": lang, "draft": chunk_index.is_multiple_of(3) }),
    );
    PointRecord {
        id: point_id(tenant, document, chunk_index, MODEL),
        vector,
        payload,
    }
}

/// Context of one case in one mode: builds namespaces and turns failures into panics that
/// say where they happened.
struct Check<'a> {
    store: &'a dyn VectorStore,
    fleet: &'a str,
    case: Case,
    mode: IsolationMode,
    database: DatabaseName,
    tenant_a: TenantId,
    tenant_b: TenantId,
}

impl<'a> Check<'a> {
    fn new(store: &'a dyn VectorStore, fleet: &'a str, case: Case, mode: IsolationMode) -> Self {
        Self {
            store,
            fleet,
            case,
            mode,
            database: id(DatabaseName::parse(case.name())),
            tenant_a: id(TenantId::parse("tenant-a")),
            tenant_b: id(TenantId::parse("tenant-b")),
        }
    }

    fn ns(&self, tenant: &TenantId) -> Namespace {
        Namespace::new(self.fleet, tenant, &self.database, self.mode)
    }

    fn a(&self) -> Namespace {
        self.ns(&self.tenant_a)
    }

    fn b(&self) -> Namespace {
        self.ns(&self.tenant_b)
    }

    /// A point of `tenant` in this case's database, at angle `0.1 × chunk_index`.
    fn point(&self, tenant: &TenantId, document: Uuid, chunk_index: u32) -> PointRecord {
        let lang = if chunk_index.is_multiple_of(2) {
            "en"
        } else {
            "de"
        };
        chunk_point(
            tenant,
            &self.database,
            document,
            chunk_index,
            unit_vector(0.1 * chunk_index as f32),
            lang,
        )
    }

    fn points(
        &self,
        tenant: &TenantId,
        document: Uuid,
        chunks: std::ops::Range<u32>,
    ) -> Vec<PointRecord> {
        chunks.map(|i| self.point(tenant, document, i)).collect()
    }

    #[track_caller]
    fn fail(&self, message: impl std::fmt::Display) -> ! {
        panic!(
            "conformance [{} back-end, case {}, {} mode]: {message}",
            self.store.backend(),
            self.case.name(),
            self.mode.as_str()
        )
    }

    #[track_caller]
    fn ok<T>(&self, what: &str, result: Result<T>) -> T {
        result.unwrap_or_else(|e| self.fail(format_args!("{what} failed: {e}")))
    }

    #[track_caller]
    fn expect_eq<T: PartialEq + Debug>(&self, what: &str, actual: T, expected: T) {
        if actual != expected {
            self.fail(format_args!(
                "{what}: expected {expected:?}, got {actual:?}"
            ));
        }
    }

    #[track_caller]
    fn expect(&self, what: &str, condition: bool) {
        if !condition {
            self.fail(what);
        }
    }

    #[track_caller]
    fn expect_invalid_point<T: Debug>(&self, what: &str, result: Result<T>) {
        match result {
            Err(VectorError::InvalidPoint(_)) => {}
            other => self.fail(format_args!("{what}: expected InvalidPoint, got {other:?}")),
        }
    }

    #[track_caller]
    fn expect_spec_mismatch(&self, what: &str, result: Result<()>) {
        match result {
            Err(VectorError::SpecMismatch { .. }) => {}
            other => self.fail(format_args!("{what}: expected SpecMismatch, got {other:?}")),
        }
    }

    async fn ensure(&self, ns: &Namespace) {
        self.ok(
            &format!("ensure_namespace({})", ns.tenant),
            self.store.ensure_namespace(ns, &spec()).await,
        );
    }

    async fn upsert(&self, ns: &Namespace, points: Vec<PointRecord>) {
        self.ok(
            &format!("upsert into {}", ns.tenant),
            self.store.upsert(ns, points).await,
        );
    }

    async fn count(&self, ns: &Namespace, document: Option<Uuid>) -> u64 {
        self.ok(
            &format!("count of {}", ns.tenant),
            self.store.count(ns, document).await,
        )
    }

    async fn search(
        &self,
        ns: &Namespace,
        vector: Vec<f32>,
        limit: usize,
        filter: &[FieldMatch],
    ) -> Vec<Hit> {
        let hits = self.ok(
            &format!("search of {}", ns.tenant),
            self.store.search(ns, vector, limit, filter).await,
        );
        self.expect(
            &format!("search returned {} hits for limit {limit}", hits.len()),
            hits.len() <= limit,
        );
        self.expect(
            "search hits are ordered best first",
            hits.windows(2).all(|w| w[0].score >= w[1].score),
        );
        for hit in &hits {
            self.expect_eq(
                "tenant of a search hit",
                hit.payload.get(TENANT_KEY),
                Some(&json!(ns.tenant.as_str())),
            );
        }
        hits
    }

    /// Every point of `ns` through `scroll`, checking the paging contract on the way.
    async fn scroll_all(&self, ns: &Namespace, page_size: usize) -> Vec<PointRecord> {
        let mut all: Vec<PointRecord> = Vec::new();
        let mut offset = None;
        // Bounded, so a back-end that never ends a scroll fails instead of hanging.
        for _ in 0..10_000 {
            let page = self.ok(
                &format!("scroll of {}", ns.tenant),
                self.store.scroll(ns, offset, page_size).await,
            );
            self.expect(
                &format!(
                    "scroll page of {} points for limit {page_size}",
                    page.points.len()
                ),
                page.points.len() <= page_size,
            );
            for point in &page.points {
                if let Some(previous) = all.last() {
                    self.expect(
                        &format!("scroll ids ascend: {} came after {}", point.id, previous.id),
                        point.id > previous.id,
                    );
                }
                self.expect_eq(
                    "tenant of a scrolled point",
                    point.payload.get(TENANT_KEY),
                    Some(&json!(ns.tenant.as_str())),
                );
            }
            let empty = page.points.is_empty();
            all.extend(page.points);
            match page.next_offset {
                None => return all,
                Some(next) => {
                    self.expect("a scroll page before the last is not empty", !empty);
                    if let Some(last) = all.last() {
                        self.expect("next_offset is past the page", next > last.id);
                    }
                    offset = Some(next);
                }
            }
        }
        self.fail("scroll did not end after 10 000 pages")
    }
}

fn id<T, E: Debug>(parsed: std::result::Result<T, E>) -> T {
    parsed.unwrap_or_else(|e| panic!("conformance suite uses an invalid id: {e:?}"))
}

fn ids(points: &[PointRecord]) -> BTreeSet<Uuid> {
    points.iter().map(|p| p.id).collect()
}

fn hit_ids(hits: &[Hit]) -> Vec<Uuid> {
    hits.iter().map(|h| h.id).collect()
}

fn keyword(key: &str, value: &str) -> FieldMatch {
    FieldMatch {
        key: key.to_owned(),
        value: MatchValue::Keyword(value.to_owned()),
    }
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
}

async fn namespace_lifecycle(c: &Check<'_>) {
    let (a, b) = (c.a(), c.b());
    c.ensure(&a).await;
    c.ensure(&a).await;
    c.expect_eq("count of a fresh namespace", c.count(&a, None).await, 0);

    let wider = VectorSpec {
        dimension: DIMENSION + 1,
        model: MODEL.to_owned(),
    };
    let other_model = VectorSpec {
        dimension: DIMENSION,
        model: format!("{MODEL}-other"),
    };
    c.expect_spec_mismatch(
        "ensure_namespace with another dimension",
        c.store.ensure_namespace(&a, &wider).await,
    );
    c.expect_spec_mismatch(
        "ensure_namespace with another model",
        c.store.ensure_namespace(&a, &other_model).await,
    );

    // A refused request leaves the namespace as it was, and usable.
    c.ensure(&a).await;
    c.upsert(&a, c.points(&c.tenant_a, Uuid::new_v4(), 0..2))
        .await;
    c.expect_eq("count after a refused ensure", c.count(&a, None).await, 2);

    match c.mode {
        // Another tenant's collection is its own: any spec is fine.
        IsolationMode::Collection => {
            c.ok(
                "ensure_namespace of another tenant with another model",
                c.store.ensure_namespace(&b, &other_model).await,
            );
        }
        // The collection is shared by every tenant of the database: one spec for all.
        IsolationMode::Partition => {
            c.expect_spec_mismatch(
                "another tenant's ensure_namespace on the shared collection with another model",
                c.store.ensure_namespace(&b, &other_model).await,
            );
            c.ensure(&b).await;
        }
    }
    c.expect_eq("count of the other tenant", c.count(&b, None).await, 0);
    c.expect_eq(
        "count after the other tenant's ensure",
        c.count(&a, None).await,
        2,
    );
}

async fn idempotent_upsert(c: &Check<'_>) {
    let a = c.a();
    c.ensure(&a).await;
    let document = Uuid::new_v4();
    let first = c.points(&c.tenant_a, document, 0..3);
    c.upsert(&a, first.clone()).await;
    c.expect_eq("count after the first upsert", c.count(&a, None).await, 3);

    // The same ids again (a redelivered job), with new text: replaced, not doubled.
    let mut again = first.clone();
    for point in &mut again {
        point.payload.insert(TEXT_KEY.into(), json!("rewritten"));
    }
    c.upsert(&a, again).await;
    c.upsert(&a, Vec::new()).await;
    c.expect_eq(
        "count after upserting the same ids",
        c.count(&a, None).await,
        3,
    );
    let stored = c.scroll_all(&a, 10).await;
    c.expect_eq(
        "ids after upserting the same ids",
        ids(&stored),
        ids(&first),
    );
    c.expect(
        "the second upsert replaced the payloads",
        stored
            .iter()
            .all(|p| p.payload.get(TEXT_KEY) == Some(&json!("rewritten"))),
    );

    // One malformed point refuses the whole batch, the good point in it included.
    let good = c.point(&c.tenant_a, document, 7);
    let mut short = c.point(&c.tenant_a, document, 8);
    short.vector.truncate(DIMENSION - 1);
    c.expect_invalid_point(
        "upsert of a vector with the wrong dimension",
        c.store.upsert(&a, vec![good, short]).await,
    );
    c.expect_eq("count after a refused batch", c.count(&a, None).await, 3);
}

async fn counts(c: &Check<'_>) {
    let (a, b) = (c.a(), c.b());
    c.ensure(&a).await;
    c.ensure(&b).await;
    let (doc1, doc2, doc3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let mut points = c.points(&c.tenant_a, doc1, 0..3);
    points.extend(c.points(&c.tenant_a, doc2, 0..2));
    c.upsert(&a, points).await;
    c.upsert(&b, c.points(&c.tenant_b, doc3, 0..4)).await;

    c.expect_eq("count of tenant A", c.count(&a, None).await, 5);
    c.expect_eq(
        "count of A's first document",
        c.count(&a, Some(doc1)).await,
        3,
    );
    c.expect_eq(
        "count of A's second document",
        c.count(&a, Some(doc2)).await,
        2,
    );
    c.expect_eq(
        "count of B's document through A",
        c.count(&a, Some(doc3)).await,
        0,
    );
    c.expect_eq(
        "count of an unknown document",
        c.count(&a, Some(Uuid::new_v4())).await,
        0,
    );
    c.expect_eq("count of tenant B", c.count(&b, None).await, 4);
    c.expect_eq("count of B's document", c.count(&b, Some(doc3)).await, 4);
}

async fn filtered_search(c: &Check<'_>) {
    let (a, b) = (c.a(), c.b());
    c.ensure(&a).await;
    c.ensure(&b).await;
    let document = Uuid::new_v4();
    // Chunks 0..6 at angles 0.0, 0.1 … 0.5; even chunks are "en", odd "de"; 0 and 3 drafts.
    let points = c.points(&c.tenant_a, document, 0..6);
    let id_of = |chunk: usize| points[chunk].id;
    c.upsert(&a, points.clone()).await;
    // Tenant B holds the very same vectors: any leak would rank among the best hits.
    c.upsert(&b, c.points(&c.tenant_b, document, 0..6)).await;

    // The query sits at 0.23: nearest is chunk 2 (0.03 away), then 3, 1, 4, 0, 5.
    let query = unit_vector(0.23);
    let hits = c.search(&a, query.clone(), 3, &[]).await;
    c.expect_eq(
        "unfiltered nearest three",
        hit_ids(&hits),
        vec![id_of(2), id_of(3), id_of(1)],
    );
    c.expect(
        &format!(
            "cosine score of the nearest hit is cos(0.03), got {}",
            hits[0].score
        ),
        (hits[0].score - 0.03f32.cos()).abs() < 1e-3,
    );
    c.expect_eq(
        "payload of the nearest hit",
        &hits[0].payload,
        &points[2].payload,
    );

    let all = c.search(&a, query.clone(), 100, &[]).await;
    c.expect_eq(
        "a large limit returns all of A's points and only those",
        hit_ids(&all),
        vec![id_of(2), id_of(3), id_of(1), id_of(4), id_of(0), id_of(5)],
    );

    let de = c
        .search(&a, query.clone(), 10, &[keyword("metadata.lang", "de")])
        .await;
    c.expect_eq(
        "search filtered on metadata.lang = de",
        hit_ids(&de),
        vec![id_of(3), id_of(1), id_of(5)],
    );
    let en = c
        .search(&a, query.clone(), 2, &[keyword("metadata.lang", "en")])
        .await;
    c.expect_eq(
        "search filtered on metadata.lang = en",
        hit_ids(&en),
        vec![id_of(2), id_of(4)],
    );

    let fourth = FieldMatch {
        key: CHUNK_INDEX_KEY.to_owned(),
        value: MatchValue::Integer(4),
    };
    let hits = c.search(&a, query.clone(), 10, &[fourth]).await;
    c.expect_eq(
        "search filtered on an integer",
        hit_ids(&hits),
        vec![id_of(4)],
    );

    let draft = FieldMatch {
        key: "metadata.draft".to_owned(),
        value: MatchValue::Bool(true),
    };
    let hits = c
        .search(
            &a,
            query.clone(),
            10,
            &[draft, keyword("metadata.lang", "de")],
        )
        .await;
    c.expect_eq(
        "search filtered on a bool and a keyword",
        hit_ids(&hits),
        vec![id_of(3)],
    );

    let none = c
        .search(&a, query.clone(), 10, &[keyword("metadata.lang", "fr")])
        .await;
    c.expect(
        "search filtered on an absent value is empty",
        none.is_empty(),
    );
    let zero = c.search(&a, query, 0, &[]).await;
    c.expect("search with limit 0 is empty", zero.is_empty());
}

async fn tenant_isolation(c: &Check<'_>) {
    let (a, b) = (c.a(), c.b());
    c.ensure(&a).await;
    c.ensure(&b).await;
    let doc_a = Uuid::new_v4();
    let points_a = c.points(&c.tenant_a, doc_a, 0..3);
    c.upsert(&a, points_a.clone()).await;

    // Reads through B see nothing of A, however they ask.
    c.expect_eq("B's count", c.count(&b, None).await, 0);
    c.expect_eq(
        "B's count of A's document",
        c.count(&b, Some(doc_a)).await,
        0,
    );
    let exact = points_a[1].vector.clone();
    c.expect(
        "B's search for A's exact vector is empty",
        c.search(&b, exact.clone(), 10, &[]).await.is_empty(),
    );
    let claim_a = keyword(TENANT_KEY, c.tenant_a.as_str());
    c.expect(
        "B's search filtered on A's tenant id is empty (a filter only narrows)",
        c.search(&b, exact.clone(), 10, &[claim_a]).await.is_empty(),
    );
    c.expect("B's scroll is empty", c.scroll_all(&b, 10).await.is_empty());

    // Deletes through B leave A alone.
    c.ok(
        "B's delete of A's document",
        c.store.delete_document(&b, doc_a).await,
    );
    c.expect_eq("A's count after B's delete", c.count(&a, None).await, 3);

    // Writes claiming A through B's namespace are refused and write nothing; the forged
    // point reuses the id of one of A's points, which it would overwrite in a shared collection.
    let mut forged = points_a[0].clone();
    forged.payload.insert(TEXT_KEY.into(), json!("forged"));
    c.expect_invalid_point(
        "upsert into B of a point claiming A",
        c.store.upsert(&b, vec![forged.clone()]).await,
    );
    let own = c.point(&c.tenant_b, Uuid::new_v4(), 0);
    c.expect_invalid_point(
        "upsert into B of a batch with one point claiming A",
        c.store.upsert(&b, vec![own.clone(), forged]).await,
    );
    let mut anonymous = c.point(&c.tenant_b, Uuid::new_v4(), 1);
    anonymous.payload.remove(TENANT_KEY);
    c.expect_invalid_point(
        "upsert of a point without tenant_id",
        c.store.upsert(&b, vec![anonymous]).await,
    );
    c.expect_eq(
        "B's count after refused upserts",
        c.count(&b, None).await,
        0,
    );
    let stored_a = c.scroll_all(&a, 10).await;
    c.expect_eq(
        "A's ids after refused upserts",
        ids(&stored_a),
        ids(&points_a),
    );
    c.expect(
        "A's payloads after refused upserts",
        stored_a.iter().all(|p| {
            points_a
                .iter()
                .any(|q| q.id == p.id && q.payload == p.payload)
        }),
    );

    // Dropping B leaves A alone.
    c.ok("drop of B", c.store.drop_namespace(&b).await);
    c.expect_eq("A's count after B's drop", c.count(&a, None).await, 3);

    // B's own points, at A's very vectors, stay B's.
    c.ensure(&b).await;
    c.upsert(&b, c.points(&c.tenant_b, doc_a, 0..2)).await;
    c.expect_eq("B's count after its own upsert", c.count(&b, None).await, 2);
    c.expect_eq("A's count after B's upsert", c.count(&a, None).await, 3);
    let hits = c.search(&a, exact, 10, &[]).await;
    c.expect_eq(
        "A's search sees A's points only",
        hit_ids(&hits).into_iter().collect::<BTreeSet<_>>(),
        ids(&points_a),
    );
}

async fn delete_document(c: &Check<'_>) {
    let (a, b) = (c.a(), c.b());
    c.ensure(&a).await;
    c.ensure(&b).await;
    let (doc1, doc2) = (Uuid::new_v4(), Uuid::new_v4());
    let mut points = c.points(&c.tenant_a, doc1, 0..3);
    points.extend(c.points(&c.tenant_a, doc2, 0..2));
    c.upsert(&a, points).await;
    // B holds points under the same document id: A's delete must not reach them.
    c.upsert(&b, c.points(&c.tenant_b, doc1, 0..2)).await;

    c.ok(
        "delete of the first document",
        c.store.delete_document(&a, doc1).await,
    );
    c.expect_eq(
        "count of the deleted document",
        c.count(&a, Some(doc1)).await,
        0,
    );
    c.expect_eq(
        "count of the other document",
        c.count(&a, Some(doc2)).await,
        2,
    );
    c.expect_eq("count of A", c.count(&a, None).await, 2);
    c.expect_eq(
        "count of B's points with the same document id",
        c.count(&b, Some(doc1)).await,
        2,
    );
    let hits = c.search(&a, unit_vector(0.0), 10, &[]).await;
    c.expect_eq("search hits after the delete", hits.len(), 2);
    c.expect(
        "no search hit from the deleted document",
        hits.iter()
            .all(|h| h.payload.get(DOCUMENT_KEY) == Some(&json!(doc2.to_string()))),
    );

    c.ok(
        "delete of the same document again",
        c.store.delete_document(&a, doc1).await,
    );
    c.ok(
        "delete of an unknown document",
        c.store.delete_document(&a, Uuid::new_v4()).await,
    );
    c.expect_eq("count of A after no-op deletes", c.count(&a, None).await, 2);
}

async fn drop_namespace(c: &Check<'_>) {
    let (a, b) = (c.a(), c.b());
    c.ensure(&a).await;
    c.ensure(&b).await;
    c.upsert(&a, c.points(&c.tenant_a, Uuid::new_v4(), 0..3))
        .await;
    c.upsert(&b, c.points(&c.tenant_b, Uuid::new_v4(), 0..2))
        .await;

    c.ok("drop of A", c.store.drop_namespace(&a).await);
    c.expect_eq("count of A after its drop", c.count(&a, None).await, 0);
    c.expect(
        "search of A after its drop",
        c.search(&a, unit_vector(0.0), 10, &[]).await.is_empty(),
    );
    c.expect(
        "scroll of A after its drop",
        c.scroll_all(&a, 10).await.is_empty(),
    );
    c.expect_eq("count of B after A's drop", c.count(&b, None).await, 2);
    c.ok("drop of A again", c.store.drop_namespace(&a).await);

    let other_model = VectorSpec {
        dimension: DIMENSION,
        model: format!("{MODEL}-other"),
    };
    let recreated = c.store.ensure_namespace(&a, &other_model).await;
    match c.mode {
        // The collection is gone, so it may come back with any spec.
        IsolationMode::Collection => c.ok("ensure after drop with another model", recreated),
        // The shared collection stays for the other tenants, with its spec.
        IsolationMode::Partition => {
            c.expect_spec_mismatch("ensure after drop with another model", recreated)
        }
    }
    if c.mode == IsolationMode::Collection {
        c.ok(
            "drop of the recreated namespace",
            c.store.drop_namespace(&a).await,
        );
    }
    c.ensure(&a).await;
    c.upsert(&a, c.points(&c.tenant_a, Uuid::new_v4(), 0..1))
        .await;
    c.expect_eq("count of A after recreating it", c.count(&a, None).await, 1);
    c.expect_eq("count of B at the end", c.count(&b, None).await, 2);
}

async fn scroll(c: &Check<'_>) {
    let (a, b) = (c.a(), c.b());
    c.ensure(&a).await;
    c.ensure(&b).await;
    let mut points_a = Vec::new();
    for _ in 0..3 {
        points_a.extend(c.points(&c.tenant_a, Uuid::new_v4(), 0..9));
    }
    points_a.truncate(25);
    c.upsert(&a, points_a.clone()).await;
    // B's points interleave with A's in id order in a shared collection.
    c.upsert(&b, c.points(&c.tenant_b, Uuid::new_v4(), 0..10))
        .await;

    for page_size in [7, 25, 100] {
        let scrolled = c.scroll_all(&a, page_size).await;
        c.expect_eq(
            &format!("number of scrolled points with pages of {page_size}"),
            scrolled.len(),
            points_a.len(),
        );
        c.expect_eq("scrolled ids", ids(&scrolled), ids(&points_a));
        for point in &scrolled {
            let Some(original) = points_a.iter().find(|p| p.id == point.id) else {
                c.fail(format_args!("scroll returned unknown point {}", point.id));
            };
            c.expect_eq(
                "payload of a scrolled point",
                &point.payload,
                &original.payload,
            );
            // Unit vectors were written, so even a back-end that normalises returns them.
            c.expect(
                &format!("vector of scrolled point {}", point.id),
                close(&point.vector, &original.vector),
            );
        }
    }
    c.expect_eq("B's points by scroll", c.scroll_all(&b, 3).await.len(), 10);
}

async fn missing_namespace(c: &Check<'_>) {
    let ghost = id(TenantId::parse("tenant-ghost"));
    let ns = c.ns(&ghost);
    c.expect_eq("count of a missing namespace", c.count(&ns, None).await, 0);
    c.expect_eq(
        "count of a document in a missing namespace",
        c.count(&ns, Some(Uuid::new_v4())).await,
        0,
    );
    c.expect(
        "search of a missing namespace",
        c.search(&ns, unit_vector(0.0), 10, &[]).await.is_empty(),
    );
    c.expect(
        "scroll of a missing namespace",
        c.scroll_all(&ns, 10).await.is_empty(),
    );
    c.ok(
        "delete in a missing namespace",
        c.store.delete_document(&ns, Uuid::new_v4()).await,
    );
    c.ok(
        "drop of a missing namespace",
        c.store.drop_namespace(&ns).await,
    );
    c.expect_eq(
        "count after no-ops on a missing namespace",
        c.count(&ns, None).await,
        0,
    );
}
