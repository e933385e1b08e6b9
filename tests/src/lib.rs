//! Support for end-to-end tests: [`TestEnv`] starts a real dispatcher (with in-process
//! workers) against the real RabbitMQ and Postgres of the machine, isolated from every
//! other test by its own database, queue prefix and data directory, and removes all
//! three when it ends. Tests poll with deadlines; nothing sleeps to synchronise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantry::broker::{self, Topology};
use tenantry::config::{self, Settings};
use tenantry_dispatcher::Application;
use tenantry_dispatcher::state::AppState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const SIGNING_SECRET: &str = "test-signing-secret-0123456789";
/// How long a test waits for something that should happen.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| config::DEFAULT_AMQP_URL.to_owned())
}

/// Logs only with `TEST_LOG=1`.
pub fn init_logs() {
    if std::env::var("TEST_LOG").is_ok_and(|v| v == "1") {
        tenantry::telemetry::init(config::LogFormat::Text);
    }
}

/// Settings for one isolated fleet: unique database, queue prefix, data dir.
pub struct FleetIds {
    pub id: String,
    pub database_url: String,
    pub prefix: String,
    pub data_dir: tempfile::TempDir,
}

impl FleetIds {
    pub fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        Self {
            database_url: format!("{}/tenantry_test_{id}", postgres_base()),
            prefix: format!("test-{id}"),
            data_dir: tempfile::tempdir().expect("temp dir"),
            id,
        }
    }

    /// The environment a process of this fleet would get.
    pub fn env(&self) -> HashMap<String, String> {
        let mut env = HashMap::new();
        env.insert(config::ENV_DATABASE_URL.into(), self.database_url.clone());
        env.insert(config::ENV_AMQP_URL.into(), amqp_url());
        env.insert(config::ENV_QUEUE_PREFIX.into(), self.prefix.clone());
        env.insert(config::ENV_HTTP_ADDR.into(), "127.0.0.1:0".into());
        env.insert(config::ENV_ADMIN_TOKEN.into(), ADMIN_TOKEN.into());
        env.insert(config::ENV_SIGNING_SECRET.into(), SIGNING_SECRET.into());
        env.insert(
            config::ENV_DATA_DIR.into(),
            self.data_dir.path().display().to_string(),
        );
        env.insert(config::ENV_AUTH_CACHE_SECS.into(), "1".into());
        env.insert(config::ENV_SHUTDOWN_GRACE_SECS.into(), "10".into());
        env
    }

    pub fn settings(&self, overrides: &[(&str, &str)]) -> Settings {
        let mut env = self.env();
        for (k, v) in overrides {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        Settings::from_lookup(|k| env.get(k).cloned()).expect("valid test settings")
    }
}

impl Default for FleetIds {
    fn default() -> Self {
        Self::new()
    }
}

/// A running all-in-one fleet (dispatcher + in-process workers).
pub struct TestEnv {
    pub base_url: String,
    /// The operator-only `/metrics` address (`http://…`), when the test set
    /// `TENANTRY_METRICS_ADDR`.
    pub metrics_base_url: Option<String>,
    pub http: reqwest::Client,
    /// Declared before `ids`: fields drop in order, and the embedded store flushes on
    /// drop, so it must go before its temporary data directory does.
    pub state: AppState,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    pub ids: FleetIds,
}

impl TestEnv {
    /// A fleet with `workers` in-process workers and default settings.
    pub async fn start(workers: usize) -> Self {
        Self::start_with(workers, &[]).await
    }

    /// A fleet with some settings overridden (environment variable names and values).
    pub async fn start_with(workers: usize, overrides: &[(&str, &str)]) -> Self {
        Self::start_with_ids(FleetIds::new(), workers, overrides).await
    }

    async fn wait_until_ready(&self) {
        eventually("the dispatcher to be ready", || async {
            let r = self.http.get(self.url("/readyz")).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Another dispatcher of the same fleet (same database, queue prefix and settings,
    /// API only: the embedded store belongs to the first one's process, so this one gets
    /// a data directory of its own). Stops when dropped or with [`ExtraDispatcher::stop`].
    pub async fn add_dispatcher(&self, overrides: &[(&str, &str)]) -> ExtraDispatcher {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let data = data_dir.path().display().to_string();
        let mut all: Vec<(&str, &str)> = vec![(config::ENV_DATA_DIR, data.as_str())];
        all.extend_from_slice(overrides);
        let settings = self.ids.settings(&all);
        let stop = CancellationToken::new();
        let app = Application::build(settings, 0, &stop)
            .await
            .expect("second dispatcher builds");
        let base_url = format!("http://{}", app.local_addr());
        let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
        let extra = ExtraDispatcher {
            base_url,
            stop,
            handle: Some(handle),
            _data_dir: data_dir,
        };
        let http = &self.http;
        eventually("the second dispatcher to be ready", || async {
            let r = http
                .get(format!("{}/readyz", extra.base_url))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
        extra
    }

    pub fn topology(&self) -> Topology {
        Topology::new(&self.ids.prefix)
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.state.pool
    }

    /// Creates a tenant and issues it a key; returns the key.
    pub async fn tenant(&self, id: &str) -> String {
        self.tenant_with(json!({ "id": id, "name": format!("Tenant {id}"), "email": format!("{id}@example.com") }))
            .await
    }

    pub async fn tenant_with(&self, body: Value) -> String {
        let id = body["id"].as_str().expect("tenant id").to_owned();
        let r = self.admin_post("/v1/admin/tenants", body).await;
        assert_eq!(
            r.status(),
            201,
            "create tenant: {}",
            r.text().await.unwrap_or_default()
        );
        let r = self
            .admin_post(&format!("/v1/admin/tenants/{id}/keys"), json!({}))
            .await;
        assert_eq!(r.status(), 201);
        let key: Value = r.json().await.unwrap();
        key["key"].as_str().expect("key shown once").to_owned()
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.admin_send(reqwest::Method::POST, path, body).await
    }

    pub async fn admin_put(&self, path: &str, body: Value) -> reqwest::Response {
        self.admin_send(reqwest::Method::PUT, path, body).await
    }

    async fn admin_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> reqwest::Response {
        self.http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, key: &str, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, key: &str, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("request")
    }

    /// Submits one document; asserts 202 and returns the answer.
    pub async fn submit(&self, key: &str, body: Value) -> Value {
        let r = self.post(key, "/v1/jobs", body).await;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(status, 202, "submit: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Polls a job until it reaches a final status; returns its view.
    pub async fn wait_for_job(&self, key: &str, job_id: &str) -> Value {
        eventually(&format!("job {job_id} to end"), || async {
            let r = self.get(key, &format!("/v1/jobs/{job_id}")).await;
            let v: Value = r.json().await.ok()?;
            matches!(
                v["status"].as_str(),
                Some("FINISHED" | "FAILED" | "CANCELLED")
            )
            .then_some(v)
        })
        .await
    }

    /// Queue depth as the broker counts it.
    pub async fn queue_depth(&self, queue: &str) -> u64 {
        let conn = broker::connect(&amqp_url(), "test-probe")
            .await
            .expect("broker");
        let stats = broker::queue_stats(&conn, queue)
            .await
            .expect("queue stats");
        let _ = conn.close(200, "done".into()).await;
        stats.messages
    }

    /// Stops the fleet and removes its database, queues and exchanges.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), handle).await;
        }
        self.state.pool.close().await;
        cleanup(&self.ids).await;
    }
}

/// A dispatcher added to a running [`TestEnv`] fleet.
pub struct ExtraDispatcher {
    pub base_url: String,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    _data_dir: tempfile::TempDir,
}

impl ExtraDispatcher {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), handle).await;
        }
    }
}

impl Drop for ExtraDispatcher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Removes a fleet's database and broker topology (best effort).
pub async fn cleanup(ids: &FleetIds) {
    let _ = tenantry::db::drop_database(&ids.database_url).await;
    if let Ok(conn) = broker::connect(&amqp_url(), "test-cleanup").await {
        let _ = broker::delete_topology(&conn, &Topology::new(&ids.prefix)).await;
        let _ = conn.close(200, "done".into()).await;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // A test that panicked did not call stop(): clean up on a thread of our own,
        // since this runtime may be shutting down.
        if self.handle.is_some() {
            self.stop.cancel();
            let ids = FleetIds {
                id: self.ids.id.clone(),
                database_url: self.ids.database_url.clone(),
                prefix: self.ids.prefix.clone(),
                data_dir: tempfile::tempdir().expect("temp dir"),
            };
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(cleanup(&ids));
                }
            })
            .join();
        }
    }
}

/// Polls `probe` until it returns Some, or panics after [`DEADLINE`] naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, DEADLINE, probe).await
}

pub async fn eventually_within<T, F, Fut>(what: &str, deadline: Duration, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Asserts an error answer has the contract's shape and the given status and code.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    let actual = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(actual, status, "status of {text}");
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("error body is not JSON: {text}"));
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

/// Workers started on a running [`TestEnv`] fleet, in this process, sharing its store
/// (so a test can build a backlog first and then let work begin).
pub struct Workers {
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestEnv {
    /// Starts `count` more worker tasks on this fleet.
    pub fn start_workers(&self, count: usize) -> Workers {
        let resources = tenantry_worker::Resources {
            settings: self.state.settings.clone(),
            pool: self.state.pool.clone(),
            store: self.state.store.clone(),
            embedder: self.state.embedder.clone(),
            on_job_end: Some(self.state.pump_wake.clone()),
            metrics: self.state.metrics.clone(),
            mode: tenantry_worker::heartbeat::Mode::InDispatcher,
            metrics_addr: None,
        };
        let stop = self.stop.child_token();
        let handle = tokio::spawn(tenantry_worker::run_workers(resources, count, stop.clone()));
        Workers {
            stop,
            handle: Some(handle),
        }
    }

    /// Submits documents through `POST /v1/jobs/batch` in calls of at most 100;
    /// asserts every one was accepted and returns their job ids in order.
    pub async fn submit_many(&self, key: &str, documents: Vec<Value>) -> Vec<String> {
        let mut ids = Vec::with_capacity(documents.len());
        for part in documents.chunks(100) {
            let r = self
                .post(key, "/v1/jobs/batch", json!({ "documents": part }))
                .await;
            let status = r.status();
            let body: Value = r.json().await.expect("batch answer is JSON");
            assert!(status.is_success(), "batch: {status} {body}");
            for item in body["results"].as_array().expect("results") {
                let id = item["job_id"].as_str();
                ids.push(
                    id.unwrap_or_else(|| panic!("batch item refused: {item}"))
                        .to_owned(),
                );
            }
        }
        ids
    }
}

impl Workers {
    /// Stops the workers, letting in-flight jobs end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), handle).await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl TestEnv {
    /// As [`TestEnv::start_with`], for a fleet whose ids the test made itself (to point
    /// its URLs somewhere else, e.g. through a fault-injecting proxy, while cleanup
    /// still uses the real services).
    pub async fn start_with_ids(ids: FleetIds, workers: usize, overrides: &[(&str, &str)]) -> Self {
        init_logs();
        let settings = ids.settings(overrides);
        let stop = CancellationToken::new();
        let app = Application::build(settings, workers, &stop)
            .await
            .expect("dispatcher builds");
        let base_url = format!("http://{}", app.local_addr());
        let metrics_base_url = app.metrics_addr().map(|a| format!("http://{a}"));
        let state = app.state().clone();
        let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
        let env = Self {
            ids,
            base_url,
            metrics_base_url,
            http: tenantry::tls::http_client().build().expect("http client"),
            state,
            stop,
            handle: Some(handle),
        };
        env.wait_until_ready().await;
        env
    }
}
