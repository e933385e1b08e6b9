//! A fleet under test: the real `dispatcher --workers N` code, in a child process of
//! its own (this binary re-executed as `tenantry-bench fleet`), so its resident memory
//! is the fleet's alone. Each fleet gets a fresh database, queue prefix and data
//! directory, removed when it stops.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Value, json};
use tenantry::broker::{self, Topology};
use tenantry::config::{self, Settings};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const SIGNING_SECRET: &str = "bench-signing-secret-0123456789";

/// What the parent knows of where services run.
#[derive(Clone)]
pub struct Services {
    pub postgres: String,
    pub amqp: String,
}

pub struct Fleet {
    child: Child,
    pub base_url: String,
    pub database_url: String,
    prefix: String,
    amqp: String,
    _data_dir: tempfile::TempDir,
    pub http: reqwest::Client,
    /// The environment the fleet runs with, for `worker` processes joining it.
    env: Vec<(String, String)>,
    /// `worker` processes started with [`Fleet::add_worker_processes`].
    workers: Vec<Child>,
}

/// Runs in the child: a dispatcher with `workers` in-process workers, configured from
/// the environment, until its stdin closes. With `hold`, the workers start only when a
/// line arrives on stdin, so a backlog can be built before anything is consumed.
pub async fn serve_child(workers: usize, hold: bool) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let stop = CancellationToken::new();
    let app =
        tenantry_dispatcher::Application::build(settings, if hold { 0 } else { workers }, &stop)
            .await?;
    println!("LISTENING {}", app.local_addr());
    let held = hold.then(|| app.worker_resources());
    let watcher = stop.clone();
    let held_workers = tokio::spawn(async move {
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        if let Some(resources) = held
            && let Ok(Some(_go)) = stdin.next_line().await
        {
            let token = watcher.child_token();
            let running = tokio::spawn(tenantry_worker::run_workers(resources, workers, token));
            while let Ok(Some(_)) = stdin.next_line().await {}
            watcher.cancel();
            return running.await.ok();
        }
        while let Ok(Some(_)) = stdin.next_line().await {}
        watcher.cancel();
        None
    });
    app.run_until_stopped(stop).await?;
    if let Ok(Some(workers)) = held_workers.await {
        workers?;
    }
    Ok(())
}

impl Fleet {
    /// Starts a fleet with `workers` worker tasks and extra settings.
    pub async fn start(
        services: &Services,
        workers: usize,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        Self::spawn(services, workers, false, extra).await
    }

    /// A fleet whose workers wait for [`Fleet::release_workers`].
    pub async fn start_held(services: &Services, workers: usize) -> anyhow::Result<Self> {
        Self::spawn(services, workers, true, &[]).await
    }

    /// Starts the workers of a fleet started with [`Fleet::start_held`].
    pub async fn release_workers(&mut self) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("fleet stdin")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    async fn spawn(
        services: &Services,
        workers: usize,
        hold: bool,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let database_url = format!("{}/tenantry_bench_{id}", services.postgres);
        let prefix = format!("bench-{id}");
        let data_dir = tempfile::tempdir()?;
        let mut env: Vec<(String, String)> = [
            (config::ENV_DATABASE_URL, database_url.clone()),
            (config::ENV_AMQP_URL, services.amqp.clone()),
            (config::ENV_QUEUE_PREFIX, prefix.clone()),
            (config::ENV_ADMIN_TOKEN, ADMIN_TOKEN.to_owned()),
            (config::ENV_SIGNING_SECRET, SIGNING_SECRET.to_owned()),
            (config::ENV_DATA_DIR, data_dir.path().display().to_string()),
            (config::ENV_BATCH_MAX_ITEMS, "100".to_owned()),
            (
                "RUST_LOG",
                std::env::var("BENCH_LOG").unwrap_or_else(|_| "error".into()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("fleet")
            .arg("--workers")
            .arg(workers.to_string())
            .args(hold.then_some("--hold"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env(config::ENV_HTTP_ADDR, "127.0.0.1:0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting the fleet process")?;
        let stdout = child.stdout.take().context("fleet stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("LISTENING ") {
                    return anyhow::Ok(addr.to_owned());
                }
            }
            anyhow::bail!("the fleet process ended before listening")
        })
        .await
        .context("waiting for the fleet to listen")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let fleet = Self {
            child,
            base_url: format!("http://{addr}"),
            database_url,
            prefix,
            amqp: services.amqp.clone(),
            _data_dir: data_dir,
            http: tenantry::tls::http_client()
                .pool_max_idle_per_host(256)
                .build()?,
            env,
            workers: Vec::new(),
        };
        for _ in 0..600 {
            let ready = fleet.http.get(fleet.url("/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(fleet);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the fleet never became ready")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Starts `count` `worker` processes (the real binary, beside this one) on this
    /// fleet's database, broker prefix and vector store (which must be a server).
    pub fn add_worker_processes(&mut self, count: usize) -> anyhow::Result<()> {
        let binary = std::env::current_exe()?
            .parent()
            .context("the benchmark's directory")?
            .join("worker");
        for _ in 0..count {
            let child = Command::new(&binary)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            self.workers.push(child);
        }
        Ok(())
    }

    /// What the CPU split measures for this fleet.
    pub fn scope(&self) -> crate::cpu::Scope {
        crate::cpu::Scope {
            fleet_pids: self
                .pid()
                .into_iter()
                .chain(self.workers.iter().filter_map(Child::id))
                .collect(),
            database: self
                .database_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// Resident memory now, and its peak so far (VmRSS, VmHWM), in MiB.
    pub fn memory_mib(&self) -> (f64, f64) {
        let Some(pid) = self.pid() else {
            return (0.0, 0.0);
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Creates `count` tenants named `{stem}-{i}` (with `isolation`), issuing each a
    /// key, `concurrency` calls at a time. Returns the keys in order.
    pub async fn tenants(
        &self,
        stem: &str,
        count: usize,
        isolation: &str,
        plan: &str,
    ) -> anyhow::Result<Vec<String>> {
        let ids: Vec<String> = (0..count).map(|i| format!("{stem}-{i}")).collect();
        let results = futures::stream::iter(ids.into_iter().map(|id| async move {
            let created = self
                .admin(reqwest::Method::POST, "/v1/admin/tenants")
                .json(&json!({ "id": id, "name": id, "email": format!("{id}@bench.test"), "isolation": isolation, "plan": plan }))
                .send()
                .await?;
            anyhow::ensure!(created.status().is_success(), "create tenant: {}", created.text().await?);
            let key: Value = self
                .admin(reqwest::Method::POST, &format!("/v1/admin/tenants/{id}/keys"))
                .json(&json!({}))
                .send()
                .await?
                .json()
                .await?;
            key["key"].as_str().map(str::to_owned).context("no key in the answer")
        }))
        .buffered(32)
        .collect::<Vec<_>>()
        .await;
        results.into_iter().collect()
    }

    /// Sets a tenant's quota overrides.
    pub async fn set_quotas(&self, tenant: &str, overrides: Value) -> anyhow::Result<()> {
        let r = self
            .admin(
                reqwest::Method::PUT,
                &format!("/v1/admin/tenants/{tenant}/quotas"),
            )
            .json(&overrides)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "set quotas: {}", r.text().await?);
        Ok(())
    }

    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// Stops the child (closing its stdin asks it to drain and exit) and removes the
    /// fleet's database and broker topology.
    pub async fn stop(mut self) {
        for worker in &mut self.workers {
            if let Some(pid) = worker.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            if tokio::time::timeout(Duration::from_secs(30), worker.wait())
                .await
                .is_err()
            {
                let _ = worker.kill().await;
            }
        }
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = tenantry::db::drop_database(&self.database_url).await;
        if let Some((_, url)) = self.env.iter().find(|(k, _)| k == config::ENV_QDRANT_URL)
            && let Ok(store) = tenantry::vector::qdrant::QdrantStore::connect(
                url,
                self.env
                    .iter()
                    .find(|(k, _)| k == config::ENV_QDRANT_API_KEY)
                    .map(|(_, v)| v.as_str()),
            )
        {
            let _ = store.drop_fleet(&self.prefix).await;
        }
        if let Ok(conn) = broker::connect(&self.amqp, "bench-cleanup").await {
            let _ = broker::delete_topology(&conn, &Topology::new(&self.prefix)).await;
            let _ = conn.close(200, "done".into()).await;
        }
    }
}
