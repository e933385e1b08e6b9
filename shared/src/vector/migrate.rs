//! Moving a tenant's points between isolation modes without losing or duplicating any.
//!
//! The vector half of a move is [`copy_namespace`] (page through the old namespace,
//! upsert into the new one) and [`verify_copied`] (every old id is in the new namespace);
//! both are idempotent because point ids are deterministic (`tenancy::point_id`), so a
//! second pass, or a pass repeated after a crash, overwrites instead of doubling.
//! [`move_tenant`] is the whole protocol, with the Postgres bookkeeping of
//! `db::isolation` (see there for the steps and why readers see both namespaces meanwhile).

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Result as VectorResult, VectorError, VectorSpec, VectorStore};
use crate::db::isolation::{self, IsolationMove};
use crate::tenancy::{DOCUMENT_KEY, Namespace};

/// Points read and written per page while moving.
pub const MOVE_PAGE: usize = 256;
/// Extra wait after the tenant caches' period, for clocks and in-flight requests.
const CACHE_MARGIN: Duration = Duration::from_secs(1);
/// How often the mover looks again while waiting for old writers to finish.
const WRITER_POLL: Duration = Duration::from_millis(200);

/// What copying one namespace did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Points read from the source and upserted into the target.
    pub copied: u64,
    /// Documents the copied points belong to.
    pub documents: BTreeSet<Uuid>,
}

/// Copies every point of `from` into `to` (same tenant and database, the other mode),
/// creating `to` with `spec` if needed. Leaves `from` as it is.
pub async fn copy_namespace(
    store: &dyn VectorStore,
    from: &Namespace,
    to: &Namespace,
    spec: &VectorSpec,
) -> VectorResult<CopyReport> {
    if from.tenant != to.tenant || from.database != to.database {
        return Err(VectorError::InvalidPoint(format!(
            "a move stays within one tenant and database: {}/{} → {}/{}",
            from.tenant, from.database, to.tenant, to.database
        )));
    }
    store.ensure_namespace(to, spec).await?;
    let mut report = CopyReport::default();
    let mut offset = None;
    loop {
        let page = store.scroll(from, offset, MOVE_PAGE).await?;
        report.copied += page.points.len() as u64;
        for point in &page.points {
            if let Some(document) = point
                .payload
                .get(DOCUMENT_KEY)
                .and_then(|v| v.as_str())
                .and_then(|s| Uuid::parse_str(s).ok())
            {
                report.documents.insert(document);
            }
        }
        // `upsert` checks every point's tenant against `to`: a move cannot adopt a foreign point.
        store.upsert(to, page.points).await?;
        match page.next_offset {
            Some(next) => offset = Some(next),
            None => return Ok(report),
        }
    }
}

/// Every id of `ns`, by scrolling.
pub async fn point_ids(store: &dyn VectorStore, ns: &Namespace) -> VectorResult<BTreeSet<Uuid>> {
    let mut ids = BTreeSet::new();
    let mut offset = None;
    loop {
        let page = store.scroll(ns, offset, MOVE_PAGE).await?;
        ids.extend(page.points.iter().map(|p| p.id));
        match page.next_offset {
            Some(next) => offset = Some(next),
            None => return Ok(ids),
        }
    }
}

/// Checks that every point of `from` is in `to`; fails naming how many are missing.
pub async fn verify_copied(
    store: &dyn VectorStore,
    from: &Namespace,
    to: &Namespace,
) -> VectorResult<()> {
    let source = point_ids(store, from).await?;
    let target = point_ids(store, to).await?;
    let missing = source.difference(&target).count();
    if missing > 0 {
        return Err(VectorError::Engine(format!(
            "{missing} of {} points of {} were not found in {} after copying",
            source.len(),
            from.collection,
            to.collection
        )));
    }
    Ok(())
}

/// Why a move attempt stopped.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error(transparent)]
    Vector(#[from] VectorError),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("stopped")]
    Stopped,
}

/// Runs (or resumes) a recorded move to its end: copy, wait for writers that may still use
/// the old mode, copy again, remove points of documents deleted meanwhile, verify, drop
/// the old namespaces, mark finished. Safe to run again after any failure or crash.
///
/// `cache_period` is how long a process may act on a tenant read before the switch
/// (`TENANTRY_AUTH_CACHE_SECS`, the period of the workers' tenant cache).
pub async fn move_tenant(
    pool: &PgPool,
    store: &dyn VectorStore,
    fleet: &str,
    cache_period: Duration,
    movement: &IsolationMove,
    stop: &CancellationToken,
) -> Result<u64, MoveError> {
    let tenant = &movement.tenant_id;
    let databases = isolation::databases(pool, tenant).await?;
    let pairs: Vec<(Namespace, Namespace, VectorSpec)> = databases
        .into_iter()
        .map(|(db, spec)| {
            (
                Namespace::new(fleet, tenant, &db, movement.from),
                Namespace::new(fleet, tenant, &db, movement.to),
                spec,
            )
        })
        .collect();

    // Pass 1 moves the bulk while late writers may still add to the old namespace.
    let mut moved = 0u64;
    for (from, to, spec) in &pairs {
        moved += copy_namespace(store, from, to, spec).await?.copied;
    }
    isolation::record_attempt(pool, tenant, moved as i64, None).await?;

    // Wait until nobody can still write with the old mode: the caches' period has passed
    // since the switch, and no job that may have read the old mode is still processing.
    let cache = chrono::Duration::from_std(cache_period + CACHE_MARGIN)
        .unwrap_or_else(|_| chrono::Duration::seconds(60));
    let cutoff = movement.switched_at + cache;
    loop {
        let settled =
            Utc::now() >= cutoff && isolation::stale_writers(pool, tenant, cutoff).await? == 0;
        if settled {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => return Err(MoveError::Stopped),
            _ = tokio::time::sleep(WRITER_POLL) => {}
        }
    }

    // Pass 2 catches what late writers added; then nothing writes the old namespace.
    let mut total = 0u64;
    for (from, to, spec) in &pairs {
        let report = copy_namespace(store, from, to, spec).await?;
        total += report.copied;
        // A document deleted (or failed) during the move may have been copied after its
        // points were deleted: its points must not survive in the new namespace.
        let documents: Vec<Uuid> = report.documents.into_iter().collect();
        for dead in isolation::dead_documents(pool, tenant, &documents).await? {
            store.delete_document(to, dead).await?;
            store.delete_document(from, dead).await?;
        }
        verify_copied(store, from, to).await?;
    }
    for (from, _, _) in &pairs {
        store.drop_namespace(from).await?;
    }
    // Points of the old namespaces at their last pass: what now lives in the new ones.
    let moved = total;
    isolation::finish(pool, tenant, moved as i64).await?;
    tracing::info!(
        tenant_id = %tenant,
        from = movement.from.as_str(),
        to = movement.to.as_str(),
        points = moved,
        databases = pairs.len(),
        "Moved a tenant to another isolation mode."
    );
    Ok(moved)
}
