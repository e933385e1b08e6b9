//! The fleet as operators see it: depth and consumers of every queue (read from the
//! broker), per-tenant backlog and in-flight work, live workers and dead letters (read
//! from Postgres). One snapshot feeds `/metrics` and `GET /v1/admin/queues`.

use std::time::Duration;

use lapin::Connection;
use serde::Serialize;
use sqlx::PgPool;

use crate::broker::{self, BrokerError, Topology};
use crate::db::backlog::{self, TenantLoad};
use crate::db::dead_letters;
use crate::db::workers::{self, WorkerRow};

/// One queue as the broker counts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueView {
    /// `jobs`, `retry` or `dead`.
    pub role: &'static str,
    pub name: String,
    /// Messages ready for delivery (not counting those a consumer holds unacknowledged).
    pub messages: u64,
    pub consumers: u64,
}

/// Dead letters recorded in Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeadLetterCounts {
    pub recorded: i64,
    /// Not replayed yet.
    pub pending: i64,
}

/// The Postgres side of the view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetSnapshot {
    /// Jobs in the Postgres backlog, all tenants.
    pub backlog: i64,
    /// Jobs on the broker or in a worker, all tenants.
    pub in_flight: i64,
    /// Every tenant with work waiting or under way, deepest backlog first.
    pub tenants: Vec<TenantLoad>,
    /// Worker processes whose last beat is within the heartbeat interval.
    pub workers: Vec<WorkerRow>,
    pub dead_letters: DeadLetterCounts,
}

/// Reads the Postgres side: per-tenant load, live workers, dead letters.
pub async fn snapshot(pool: &PgPool, heartbeat: Duration) -> Result<FleetSnapshot, sqlx::Error> {
    let tenants = backlog::tenant_loads(pool, None).await?;
    let workers = workers::live(pool, heartbeat).await?;
    let (recorded, pending) = dead_letters::counts(pool).await?;
    Ok(FleetSnapshot {
        backlog: tenants.iter().map(|t| t.backlog).sum(),
        in_flight: tenants.iter().map(|t| t.in_flight).sum(),
        tenants,
        workers,
        dead_letters: DeadLetterCounts { recorded, pending },
    })
}

/// Reads queue counts over one long-lived connection, reopened when it drops.
pub struct BrokerProbe {
    url: String,
    name: String,
    conn: tokio::sync::Mutex<Option<Connection>>,
}

impl BrokerProbe {
    pub fn new(url: &str, name: &str) -> Self {
        Self {
            url: url.to_owned(),
            name: name.to_owned(),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Every queue of the fleet that exists, in topology order: jobs, retry tiers, dead.
    /// Fails only when the broker cannot be reached.
    pub async fn queues(&self, topology: &Topology) -> Result<Vec<QueueView>, BrokerError> {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_none_or(|c| !c.status().connected()) {
            let conn = tokio::time::timeout(
                Duration::from_secs(5),
                broker::connect(&self.url, &self.name),
            )
            .await
            .map_err(|_| BrokerError::ConsumerClosed)??;
            *guard = Some(conn);
        }
        let Some(conn) = guard.as_ref() else {
            return Err(BrokerError::ConsumerClosed);
        };
        let mut queues = Vec::new();
        let dead = topology.dead_queue();
        let jobs = topology.jobs_queue();
        for name in topology.all_queues() {
            let role = if name == jobs {
                "jobs"
            } else if name == dead {
                "dead"
            } else {
                "retry"
            };
            match broker::queue_stats(conn, &name).await {
                Ok(stats) => queues.push(QueueView {
                    role,
                    name,
                    messages: stats.messages,
                    consumers: stats.consumers,
                }),
                // A missing queue closes only its channel: not declared yet.
                Err(_) if conn.status().connected() => {}
                Err(e) => {
                    *guard = None;
                    return Err(e);
                }
            }
        }
        // Jobs first, then retry tiers, then the dead-letter queue.
        queues.sort_by_key(|q| match q.role {
            "jobs" => 0,
            "retry" => 1,
            _ => 2,
        });
        Ok(queues)
    }

    pub async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = conn.close(200, "done".into()).await;
        }
    }
}
