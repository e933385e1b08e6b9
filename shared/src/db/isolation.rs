//! Queries on `isolation_moves`: switching a tenant's isolation mode, and the record of
//! moving its points (the moving itself is `vector::migrate`).
//!
//! A move, step by step:
//! 1. [`switch`]: in one transaction, `tenants.isolation` becomes the new mode and an
//!    unfinished move row is written. From here on (within the tenant caches' period),
//!    new points go to the new namespace.
//! 2. The mover copies the old namespace into the new one, waits until no worker can still
//!    write with the old mode ([`stale_writers`]), copies again to catch their points,
//!    removes from the new namespace the points of documents deleted meanwhile
//!    ([`dead_documents`]), verifies, drops the old namespace, and [`finish`]es.
//!    While unfinished, readers read both namespaces and deleters delete in both
//!    ([`modes`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::tenancy::{DatabaseName, IsolationMode, TenantId};
use crate::vector::VectorSpec;

/// A tenant's latest move, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IsolationMove {
    pub tenant_id: TenantId,
    pub from: IsolationMode,
    pub to: IsolationMode,
    pub switched_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub points_moved: i64,
    pub error: Option<String>,
    /// `moving` or `finished`.
    pub state: &'static str,
}

const MOVE_COLUMNS: &str =
    "tenant_id, from_mode, to_mode, switched_at, finished_at, points_moved, error";

fn decode_err(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("invalid {what} in isolation_moves").into())
}

fn mode(raw: &str) -> Result<IsolationMode, sqlx::Error> {
    IsolationMode::parse(raw).ok_or_else(|| decode_err("mode"))
}

fn from_row(row: &PgRow) -> Result<IsolationMove, sqlx::Error> {
    let tenant: String = row.try_get("tenant_id")?;
    let finished_at: Option<DateTime<Utc>> = row.try_get("finished_at")?;
    Ok(IsolationMove {
        tenant_id: TenantId::parse(&tenant).map_err(|_| decode_err("tenant id"))?,
        from: mode(&row.try_get::<String, _>("from_mode")?)?,
        to: mode(&row.try_get::<String, _>("to_mode")?)?,
        switched_at: row.try_get("switched_at")?,
        finished_at,
        points_moved: row.try_get("points_moved")?,
        error: row.try_get("error")?,
        state: if finished_at.is_some() {
            "finished"
        } else {
            "moving"
        },
    })
}

/// What [`switch`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum SwitchOutcome {
    /// The mode changed; a move is recorded and must be run.
    Switched(IsolationMove),
    /// The tenant already has this mode (and no move is running): nothing to do.
    Unchanged,
    /// A previous move has not finished yet.
    Busy(IsolationMove),
    NotFound,
}

/// Switches the tenant to `to` and records the move, in `conn`'s transaction. The
/// tenant row is locked, so two concurrent switches serialise.
pub async fn switch(
    conn: &mut PgConnection,
    tenant: &TenantId,
    to: IsolationMode,
) -> Result<SwitchOutcome, sqlx::Error> {
    let current: Option<String> =
        sqlx::query_scalar("SELECT isolation FROM tenants WHERE id = $1 FOR UPDATE")
            .bind(tenant.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    let Some(current) = current else {
        return Ok(SwitchOutcome::NotFound);
    };
    let current = mode(&current)?;
    if let Some(running) = unfinished(&mut *conn, tenant).await? {
        return Ok(SwitchOutcome::Busy(running));
    }
    if current == to {
        return Ok(SwitchOutcome::Unchanged);
    }
    sqlx::query("UPDATE tenants SET isolation = $2, updated_at = now() WHERE id = $1")
        .bind(tenant.as_str())
        .bind(to.as_str())
        .execute(&mut *conn)
        .await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO isolation_moves (tenant_id, from_mode, to_mode) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id) DO UPDATE
            SET from_mode = EXCLUDED.from_mode, to_mode = EXCLUDED.to_mode, switched_at = now(),
                finished_at = NULL, points_moved = 0, error = NULL
         RETURNING {MOVE_COLUMNS}"
    )))
    .bind(tenant.as_str())
    .bind(current.as_str())
    .bind(to.as_str())
    .fetch_one(&mut *conn)
    .await?;
    Ok(SwitchOutcome::Switched(from_row(&row)?))
}

/// The tenant's latest move, finished or not.
pub async fn latest(
    pool: &PgPool,
    tenant: &TenantId,
) -> Result<Option<IsolationMove>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MOVE_COLUMNS} FROM isolation_moves WHERE tenant_id = $1"
    )))
    .bind(tenant.as_str())
    .fetch_optional(pool)
    .await?;
    row.as_ref().map(from_row).transpose()
}

async fn unfinished(
    conn: &mut PgConnection,
    tenant: &TenantId,
) -> Result<Option<IsolationMove>, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MOVE_COLUMNS} FROM isolation_moves WHERE tenant_id = $1 AND finished_at IS NULL"
    )))
    .bind(tenant.as_str())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Every unfinished move, oldest first (for the mover, also after a restart).
pub async fn unfinished_moves(pool: &PgPool) -> Result<Vec<IsolationMove>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MOVE_COLUMNS} FROM isolation_moves WHERE finished_at IS NULL ORDER BY switched_at LIMIT 100"
    )))
    .fetch_all(pool)
    .await?;
    rows.iter().map(from_row).collect()
}

/// The modes whose namespaces may hold the tenant's points right now: its mode, and
/// during a move also the mode it is moving from. Read from Postgres, not from a cache,
/// so a search or delete right after a switch sees both.
pub async fn modes(pool: &PgPool, tenant: &TenantId) -> Result<Vec<IsolationMode>, sqlx::Error> {
    let row: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT t.isolation, m.from_mode FROM tenants t
           LEFT JOIN isolation_moves m ON m.tenant_id = t.id AND m.finished_at IS NULL
          WHERE t.id = $1",
    )
    .bind(tenant.as_str())
    .fetch_optional(pool)
    .await?;
    let Some((current, from)) = row else {
        return Ok(Vec::new());
    };
    let mut modes = vec![mode(&current)?];
    if let Some(from) = from {
        let from = mode(&from)?;
        if from != modes[0] {
            modes.push(from);
        }
    }
    Ok(modes)
}

/// The tenant's databases with the spec each was created with.
pub async fn databases(
    pool: &PgPool,
    tenant: &TenantId,
) -> Result<Vec<(DatabaseName, VectorSpec)>, sqlx::Error> {
    let rows: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT name, model, dimension FROM databases WHERE tenant_id = $1 ORDER BY name",
    )
    .bind(tenant.as_str())
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(name, model, dimension)| {
            Ok((
                DatabaseName::parse(&name).map_err(|_| decode_err("database name"))?,
                VectorSpec {
                    dimension: usize::try_from(dimension).map_err(|_| decode_err("dimension"))?,
                    model,
                },
            ))
        })
        .collect()
}

/// Jobs of the tenant that may still write with the mode they read before the switch:
/// processing, and started no later than `cutoff` (the switch plus the tenant caches'
/// period).
pub async fn stale_writers(
    pool: &PgPool,
    tenant: &TenantId,
    cutoff: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE tenant_id = $1 AND status = 'PROCESSING' AND updated_at <= $2",
    )
    .bind(tenant.as_str())
    .bind(cutoff)
    .fetch_one(pool)
    .await
}

/// Which of `documents` are deleted or failed: their points must not survive a move.
pub async fn dead_documents(
    pool: &PgPool,
    tenant: &TenantId,
    documents: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM documents WHERE tenant_id = $1 AND id = ANY($2) AND state IN ('DELETED', 'FAILED')",
    )
    .bind(tenant.as_str())
    .bind(documents)
    .fetch_all(pool)
    .await
}

/// Records progress or a failure of an attempt.
pub async fn record_attempt(
    pool: &PgPool,
    tenant: &TenantId,
    points_moved: i64,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE isolation_moves SET points_moved = $2, error = $3
          WHERE tenant_id = $1 AND finished_at IS NULL",
    )
    .bind(tenant.as_str())
    .bind(points_moved)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks the move finished: from now on only the new namespace is read.
pub async fn finish(
    pool: &PgPool,
    tenant: &TenantId,
    points_moved: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE isolation_moves SET finished_at = now(), points_moved = $2, error = NULL
          WHERE tenant_id = $1 AND finished_at IS NULL",
    )
    .bind(tenant.as_str())
    .bind(points_moved)
    .execute(pool)
    .await?;
    Ok(())
}
