//! Postgres: connecting (creating the database if missing), migrations, and the
//! queries of each table family. Every query on a tenant-owned row takes the
//! `&TenantId` and filters on it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

pub mod attempts;
pub mod audit;
pub mod backlog;
pub mod dead_letters;
pub mod documents;
pub mod isolation;
pub mod jobs;
pub mod keys;
pub mod quotas;
pub mod tenants;
pub mod webhooks;
pub mod workers;

/// The current UTC clock hour, as `api_calls.hour` stores it (SQL).
pub(crate) const THIS_HOUR: &str =
    "date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'";

/// The schema's migrations, embedded at build time (no database needed to build).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "PostgreSQL at {addr} is unreachable ({source}); start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
    )]
    Unreachable {
        addr: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("invalid database URL: {0}")]
    BadUrl(String),
    #[error("migrating the schema failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

impl DbError {
    /// Whether the database could not be reached (as opposed to a query being wrong).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Sql(e) => is_unavailable(e),
            _ => false,
        }
    }
}

/// Whether an sqlx error means "the database is down or busy", i.e. worth retrying.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        // A protocol error is a connection cut mid-conversation (e.g. a proxy or
        // pooler that accepts and then drops the connection while Postgres is down:
        // the TLS negotiation then reads nothing): the server, not the query, failed.
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            // Class 08 (connection), 53 (resources), 57 (operator intervention:
            // shutdown, admin restart), 40001/40P01 (serialization, deadlock).
            db.code().is_some_and(|c| {
                c.starts_with("08")
                    || c.starts_with("53")
                    || c.starts_with("57")
                    || c == "40001"
                    || c == "40P01"
            })
        }
        _ => false,
    }
}

fn options(url: &str) -> Result<PgConnectOptions, DbError> {
    PgConnectOptions::from_str(url)
        .map(|o| o.log_statements(tracing::log::LevelFilter::Trace))
        .map_err(|e| DbError::BadUrl(e.to_string()))
}

/// Creates the database named in `url` if it does not exist yet.
pub async fn create_database_if_missing(url: &str) -> Result<(), DbError> {
    let opts = options(url)?;
    let name = opts.get_database().unwrap_or("postgres").to_owned();
    let unreachable = |source| DbError::Unreachable {
        addr: Settings::redacted_url(url),
        source,
    };
    let mut admin = opts
        .clone()
        .database("postgres")
        .connect()
        .await
        .map_err(unreachable)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .execute(&mut admin)
            .await;
        match created {
            Ok(_) => tracing::info!(database = %name, "Created the database."),
            // Another process created it at the same moment.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    let _ = admin.close().await;
    Ok(())
}

/// Opens a pool on an existing, migrated database.
pub async fn pool(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options(url)?)
        .await
        .map_err(|source| DbError::Unreachable {
            addr: Settings::redacted_url(url),
            source,
        })?;
    Ok(pool)
}

/// Creates the database if missing, migrates it (sqlx holds an advisory lock, so
/// processes starting together do not race), and returns a pool.
pub async fn connect_and_migrate(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    create_database_if_missing(url).await?;
    let pool = pool(url, max_connections).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}

/// [`connect_and_migrate`], retried with backoff until it works or `stop` fires.
/// Reports an outage once, in one line naming the address and how to start Postgres.
pub async fn connect_with_retry(
    url: &str,
    max_connections: u32,
    stop: &CancellationToken,
) -> Result<PgPool, DbError> {
    let mut delay = Duration::from_millis(200);
    let mut reported = false;
    loop {
        match connect_and_migrate(url, max_connections).await {
            Ok(pool) => {
                if reported {
                    tracing::info!(addr = %Settings::redacted_url(url), "PostgreSQL is reachable again.");
                }
                return Ok(pool);
            }
            Err(err) if err.is_unavailable() => {
                if !reported {
                    tracing::error!("{err}; retrying with backoff.");
                    reported = true;
                }
            }
            Err(err) => return Err(err),
        }
        tokio::select! {
            _ = stop.cancelled() => return Err(DbError::Sql(sqlx::Error::PoolClosed)),
            _ = tokio::time::sleep(crate::broker::jittered(delay)) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Drops a database (tests' teardown). Terminates its other sessions first.
pub async fn drop_database(url: &str) -> Result<(), DbError> {
    let opts = options(url)?;
    let Some(name) = opts.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = opts.database("postgres").connect().await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}
