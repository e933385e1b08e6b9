//! Everything a worker needs, shared by all worker tasks of a process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::PgPool;
use tenantry::broker::Topology;
use tenantry::config::Settings;
use tenantry::embed::Embedder;
use tenantry::job::Signer;
use tenantry::metrics::Metrics;
use tenantry::vector::SharedVectorStore;
use tokio::sync::Notify;

use crate::tenants::TenantCache;

/// Headroom over the HTTP body limit for a message's JSON envelope (ids, metadata,
/// escaping), so every document the dispatcher accepted also fits on the wire.
const ENVELOPE_HEADROOM: usize = 1024 * 1024;

pub struct WorkerContext {
    pub settings: Settings,
    pub pool: PgPool,
    pub store: SharedVectorStore,
    pub embedder: Arc<dyn Embedder>,
    pub signer: Signer,
    pub topology: Topology,
    pub tenants: TenantCache,
    /// `host-pid-nonce`, recorded on the jobs this process works on and as its
    /// heartbeat row (the nonce keeps a restarted container with the same host and
    /// pid 1 apart from its predecessor).
    pub worker_id: String,
    pub host: String,
    /// Jobs this process ended (finished or failed), for its heartbeat row.
    pub jobs_done: AtomicU64,
    pub metrics: Arc<Metrics>,
    /// Largest message body accepted; anything larger is dead-lettered unread.
    pub max_message_bytes: usize,
    /// Told when a job ends, so an in-process pump can refill that tenant's window.
    pub on_job_end: Option<Arc<Notify>>,
}

impl WorkerContext {
    pub fn new(
        settings: Settings,
        pool: PgPool,
        store: SharedVectorStore,
        embedder: Arc<dyn Embedder>,
        on_job_end: Option<Arc<Notify>>,
    ) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        Self {
            signer: Signer::new(settings.signing_secret.expose().as_bytes()),
            topology: Topology::new(&settings.queue_prefix),
            tenants: TenantCache::new(settings.auth_cache_ttl),
            worker_id: format!(
                "{host}-{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..4]
            ),
            host,
            jobs_done: AtomicU64::new(0),
            metrics: Metrics::shared(),
            max_message_bytes: settings.max_body_bytes + ENVELOPE_HEADROOM,
            settings,
            pool,
            store,
            embedder,
            on_job_end,
        }
    }

    /// Counts a job that reached FINISHED or FAILED here.
    pub fn count_done(&self) {
        self.jobs_done.fetch_add(1, Ordering::Relaxed);
    }

    pub fn job_ended(&self) {
        if let Some(n) = &self.on_job_end {
            n.notify_one();
        }
    }
}
