//! Assembling and running a dispatcher: `Application::build` connects and binds,
//! `run_until_stopped` serves until the token is cancelled, then drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use tenantry::broker::Topology;
use tenantry::checkpoint::{self, Checkpointer};
use tenantry::config::Settings;
use tenantry::fleet::BrokerProbe;
use tenantry::job::Signer;
use tenantry::metrics::Metrics;
use tenantry::webhook::sealing::SecretSealer;
use tenantry::{db, embed, vector};
use tenantry_worker::heartbeat::Mode;
use tenantry_worker::{Resources, run_workers};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::KeyCache;
use crate::mover::Mover;
use crate::pump::Pump;
use crate::rate_limit::CallShaper;
use crate::routes::{ops_admin, router};
use crate::state::{AppState, Inner};
use crate::submitter::Submitter;
use crate::webhooks::Deliverer;

pub struct Application {
    listener: TcpListener,
    /// The operator-only listener (`TENANTRY_METRICS_ADDR`): `/metrics` without
    /// credentials, for a scraper on a network tenants do not reach.
    metrics_listener: Option<TcpListener>,
    state: AppState,
    /// Workers run inside this process (`--workers N`), sharing its vector store.
    workers: usize,
}

impl Application {
    /// Connects to Postgres (creating and migrating the database; retried with backoff
    /// while it is down), opens the vector store, binds the listener. The broker is
    /// connected by the pump, which keeps retrying on its own.
    pub async fn build(
        settings: Settings,
        workers: usize,
        stop: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let pool = db::connect_with_retry(&settings.database_url, 16 + 2 * workers as u32, stop)
            .await
            .context("connecting to PostgreSQL")?;
        // Webhook secrets stored in clear, or under a sealing key being rotated out,
        // are sealed under the current key before anything reads them.
        let sealer = SecretSealer::from_settings(&settings);
        let resealed = db::webhooks::reseal_secrets(&pool, &sealer)
            .await
            .context("sealing webhook secrets under TENANTRY_SECRETS_KEY")?;
        if resealed > 0 {
            tracing::info!(
                tenants = resealed,
                "Webhook signing secrets sealed under the current key."
            );
        }
        let store = vector::open(&settings).await?;
        let embedder = embed::from_settings(&settings.embedder)?;
        // What the store's last checkpoint did not cover is re-derived before anything
        // reads, writes or deletes in it.
        checkpoint::recover_with_retry(
            &pool,
            store.as_ref(),
            embedder.as_ref(),
            &settings.queue_prefix,
            stop,
        )
        .await
        .context("stopped while recovering the vector store")?;
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("binding {}", settings.http_addr))?;
        let metrics_listener = match settings.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics listener {addr}"))?,
            ),
            None => None,
        };
        let state = AppState::new(Inner {
            keys: KeyCache::new(settings.auth_cache_ttl),
            calls: CallShaper::default(),
            topology: Topology::new(&settings.queue_prefix),
            submitter: Submitter::spawn(pool.clone()),
            pool,
            embedder,
            store,
            pump_wake: Arc::new(Notify::new()),
            move_wake: Arc::new(Notify::new()),
            broker_up: Arc::new(AtomicBool::new(false)),
            metrics: Metrics::shared(),
            probe: BrokerProbe::new(&settings.amqp_url, "tenantry-dispatcher-probe"),
            sealer,
            settings,
        });
        Ok(Self {
            listener,
            metrics_listener,
            state,
            workers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.state.settings.http_addr)
    }

    /// Where the operator-only `/metrics` is served, if `TENANTRY_METRICS_ADDR` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// What in-process workers run on: this dispatcher's pool, store, embedder and
    /// metrics (for workers started later than the dispatcher, as the benchmark does).
    pub fn worker_resources(&self) -> Resources {
        worker_resources(&self.state)
    }

    /// Serves until `stop` is cancelled; then stops accepting, lets in-flight requests
    /// and jobs finish (workers up to the shutdown grace period), and returns.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let state = self.state;
        let settings = &state.settings;
        let pump = Pump {
            pool: state.pool.clone(),
            amqp_url: settings.amqp_url.clone(),
            topology: state.topology.clone(),
            signer: Signer::new(settings.signing_secret.expose().as_bytes()),
            windows: tenantry::db::jobs::Windows {
                tenant: i64::from(settings.tenant_window),
                fleet: i64::from(settings.fleet_window),
            },
            jobs_per_message: settings.jobs_per_message,
            wake: state.pump_wake.clone(),
            broker_up: state.broker_up.clone(),
        };
        let pump_task = tokio::spawn(pump.run(stop.child_token()));
        let mover = Mover {
            pool: state.pool.clone(),
            store: state.store.clone(),
            fleet: settings.queue_prefix.clone(),
            cache_period: settings.auth_cache_ttl,
            wake: state.move_wake.clone(),
        };
        let mover_task = tokio::spawn(mover.run(stop.child_token()));
        let checkpoint_task = tokio::spawn(
            Checkpointer {
                pool: state.pool.clone(),
                store: state.store.clone(),
                period: settings.checkpoint_period,
            }
            .run(stop.child_token()),
        );
        let webhook_task = if settings.webhook.delivery {
            let deliverer =
                Deliverer::from_settings(settings, state.pool.clone(), state.metrics.clone())
                    .context("building the webhook client")?;
            Some(tokio::spawn(deliverer.run(stop.child_token())))
        } else {
            None
        };
        let workers_task = (self.workers > 0).then(|| {
            tokio::spawn(run_workers(
                worker_resources(&state),
                self.workers,
                stop.child_token(),
            ))
        });
        let metrics_task = self.metrics_listener.map(|listener| {
            let app = ops_admin::operator_router(state.clone());
            let stop = stop.clone();
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                {
                    tracing::warn!(error = %e, "The metrics listener stopped.");
                }
            })
        });
        tracing::info!(
            addr = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            workers = self.workers,
            backend = state.store.backend(),
            "The dispatcher is listening."
        );
        axum::serve(self.listener, router(state.clone()))
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .await
            .context("serving HTTP")?;
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        if let Some(task) = workers_task {
            task.await.context("worker task")??;
        }
        let _ = pump_task.await;
        let _ = mover_task.await;
        let _ = checkpoint_task.await;
        // Once the workers have drained: the next start has nothing to recover.
        if state.store.defers_durability()
            && let Err(e) = checkpoint::checkpoint(&state.pool, state.store.as_ref()).await
        {
            tracing::warn!(error = %e, "The last checkpoint failed; the next start recovers.");
        }
        if let Some(task) = webhook_task {
            let _ = task.await;
        }
        state.probe.close().await;
        tracing::info!("The dispatcher stopped.");
        Ok(())
    }
}

fn worker_resources(state: &AppState) -> Resources {
    Resources {
        settings: state.settings.clone(),
        pool: state.pool.clone(),
        store: state.store.clone(),
        embedder: state.embedder.clone(),
        on_job_end: Some(state.pump_wake.clone()),
        metrics: state.metrics.clone(),
        mode: Mode::InDispatcher,
        metrics_addr: None,
    }
}
