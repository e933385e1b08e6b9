//! What every request handler can reach.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tenantry::webhook::sealing::SecretSealer;

use sqlx::PgPool;
use tenantry::broker::Topology;
use tenantry::config::Settings;
use tenantry::embed::Embedder;
use tenantry::fleet::BrokerProbe;
use tenantry::metrics::Metrics;
use tenantry::vector::SharedVectorStore;
use tokio::sync::Notify;

use crate::auth::KeyCache;
use crate::rate_limit::CallShaper;
use crate::submitter::Submitter;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub settings: Settings,
    pub pool: PgPool,
    pub keys: KeyCache,
    /// Per-process shaping of API_CALLS_PER_HOUR (the exact count is in Postgres).
    pub calls: CallShaper,
    pub embedder: Arc<dyn Embedder>,
    pub store: SharedVectorStore,
    pub topology: Topology,
    /// Records submissions, many calls per transaction.
    pub submitter: Submitter,
    /// Wakes the pump when a job enters the backlog.
    pub pump_wake: Arc<Notify>,
    /// Wakes the mover when a tenant's isolation mode is switched.
    pub move_wake: Arc<Notify>,
    /// Whether the pump's broker connection is up (for /readyz).
    pub broker_up: Arc<AtomicBool>,
    /// This process's metrics, shared with its in-process workers.
    pub metrics: Arc<Metrics>,
    /// Reads queue depth and consumers for `/metrics` and `/v1/admin/queues`.
    pub probe: BrokerProbe,
    /// Seals webhook signing secrets before they are stored.
    pub sealer: SecretSealer,
}

impl AppState {
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    pub fn broker_is_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
