//! Real faults for the delivery tests: an OpenAI-compatible embeddings server that
//! fails or stalls on demand, a TCP proxy that can cut every connection to a real
//! service and refuse new ones, a raw publisher that puts any bytes on a fleet's
//! jobs queue, and the fleet's own binaries as child processes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tenantry::broker::{ConfirmedPublisher, Outgoing, Topology};
use tenantry::embed::HashEmbedder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Dimension of the test embeddings server's vectors.
pub const EMBED_DIM: usize = 8;
pub const EMBED_MODEL: &str = "test-embedder";

/// What the embeddings server does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Vectors,
    Status(u16),
    /// Wait, then answer with vectors.
    Stall(Duration),
}

/// Decides the reply from the request's 0-based sequence number and its first input.
pub type Policy = Arc<dyn Fn(usize, &str) -> Reply + Send + Sync>;

#[derive(Clone)]
struct EmbedState {
    policy: Policy,
    requests: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    arrived: Arc<Notify>,
    vectors: Arc<HashEmbedder>,
}

/// An OpenAI-compatible `/v1/embeddings` server on 127.0.0.1.
pub struct EmbedServer {
    pub addr: SocketAddr,
    /// Requests received so far.
    pub requests: Arc<AtomicUsize>,
    /// Once set, every request gets vectors whatever the policy says.
    pub healthy: Arc<AtomicBool>,
    /// Notified (one permit) when a request arrives.
    pub arrived: Arc<Notify>,
    task: JoinHandle<()>,
}

impl EmbedServer {
    pub async fn start(policy: Policy) -> Self {
        let state = EmbedState {
            policy,
            requests: Arc::new(AtomicUsize::new(0)),
            healthy: Arc::new(AtomicBool::new(false)),
            arrived: Arc::new(Notify::new()),
            vectors: Arc::new(HashEmbedder::new(EMBED_DIM)),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/embeddings", post(embeddings))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            requests: state.requests,
            healthy: state.healthy,
            arrived: state.arrived,
            task,
        }
    }

    /// Settings that make a fleet embed through this server, one request per attempt
    /// (no retries inside an attempt: every failure is the job's to retry).
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TENANTRY_EMBEDDER", "openai".to_owned()),
            ("TENANTRY_EMBEDDER_URL", format!("http://{}", self.addr)),
            ("TENANTRY_EMBEDDER_MODEL", EMBED_MODEL.to_owned()),
            ("TENANTRY_EMBEDDER_DIM", EMBED_DIM.to_string()),
            ("TENANTRY_EMBEDDER_MAX_RETRIES", "0".to_owned()),
        ]
    }

    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for EmbedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn embeddings(State(state): State<EmbedState>, Json(body): Json<Value>) -> Response {
    let n = state.requests.fetch_add(1, Ordering::SeqCst);
    state.arrived.notify_one();
    let inputs: Vec<String> = body["input"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let first = inputs.first().map(String::as_str).unwrap_or("");
    let reply = if state.healthy.load(Ordering::SeqCst) {
        Reply::Vectors
    } else {
        (state.policy)(n, first)
    };
    match reply {
        Reply::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            let message = format!("test server says {code}");
            return (status, Json(json!({ "error": { "message": message } }))).into_response();
        }
        Reply::Stall(d) => tokio::time::sleep(d).await,
        Reply::Vectors => {}
    }
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({ "object": "embedding", "index": i, "embedding": state.vectors.embed_one(t) }))
        .collect();
    Json(json!({ "object": "list", "data": data, "model": EMBED_MODEL })).into_response()
}

/// A TCP proxy in front of a real service. [`FaultProxy::cut`] closes every open
/// connection and refuses new ones (accepts and closes them at once) until
/// [`FaultProxy::restore`]: an outage as the fleet sees it, without stopping the
/// shared service other tests use.
pub struct FaultProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: Arc<Mutex<CancellationToken>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let upstream = upstream.to_owned();
        let (up2, gen2) = (up.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let cut = gen2.lock().unwrap().clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            generation,
            task,
        }
    }

    /// Cuts every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let mut current = self.generation.lock().unwrap();
        current.cancel();
        *current = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.lock().unwrap().cancel();
    }
}

/// Publishes raw messages straight to a fleet's jobs exchange, as anyone with broker
/// credentials could, and waits for the broker's confirms.
pub async fn publish_raw(topology: &Topology, messages: Vec<Outgoing>) {
    let publisher = ConfirmedPublisher::open(&tenantry_tests::amqp_url(), "test-raw", topology)
        .await
        .expect("broker");
    tenantry::broker::declare_topology(publisher.channel(), topology)
        .await
        .expect("topology");
    publisher.publish_jobs(&messages).await.expect("published");
    publisher.close().await;
}

/// A message body with the given signature header (None: unsigned).
pub fn raw(body: Vec<u8>, signature: Option<String>) -> Outgoing {
    Outgoing {
        body,
        signature,
        tenant: None,
        reason: None,
        message_id: None,
        dead_id: None,
    }
}

/// The path of one of the fleet's binaries, next to the test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [deps.join(name), deps.parent().unwrap().join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the {name} binary is not next to {}; build it with `cargo build --workspace --bins`",
                exe.display()
            )
        })
}

/// Starts `name` with exactly the fleet's environment (plus PATH), output shown only
/// with TEST_LOG=1.
pub fn spawn_binary(
    name: &str,
    args: &[&str],
    env: &HashMap<String, String>,
) -> tokio::process::Child {
    let show = std::env::var("TEST_LOG").is_ok_and(|v| v == "1");
    let output = || {
        if show {
            Stdio::inherit()
        } else {
            Stdio::null()
        }
    };
    tokio::process::Command::new(binary(name))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdout(output())
        .stderr(output())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

/// Sends SIGTERM to a child process.
pub async fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("child still running");
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

/// A fleet binary's HTTP edge as a client sees it: the address it is told to listen on
/// (a free loopback port, written into the binary's environment) and the calls the
/// crash tests make on it.
pub struct FleetHttp {
    pub base: String,
    http: reqwest::Client,
}

impl FleetHttp {
    /// Picks a free port and sets `TENANTRY_HTTP_ADDR` in `vars` to it.
    pub fn new(vars: &mut HashMap<String, String>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        vars.insert(tenantry::config::ENV_HTTP_ADDR.into(), addr.clone());
        Self {
            base: format!("http://{addr}"),
            http: tenantry::tls::http_client().build().unwrap(),
        }
    }

    /// `Some` once `/readyz` answers 200 (for `eventually`).
    pub async fn ready(&self) -> Option<()> {
        let r = self
            .http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    }

    /// Creates tenant `id` with the admin token and returns a new key of it.
    pub async fn tenant_key(&self, id: &str) -> String {
        let r = self
            .http
            .post(format!("{}/v1/admin/tenants", self.base))
            .bearer_auth(tenantry_tests::ADMIN_TOKEN)
            .json(&json!({ "id": id, "name": id, "email": format!("{id}@example.com") }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let key: Value = self
            .http
            .post(format!("{}/v1/admin/tenants/{id}/keys", self.base))
            .bearer_auth(tenantry_tests::ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        key["key"].as_str().unwrap().to_owned()
    }

    /// Submits `texts` in one batch call and asserts that every one was accepted.
    pub async fn submit_batch(&self, key: &str, texts: Vec<String>) {
        let count = texts.len();
        let documents: Vec<Value> = texts.into_iter().map(|t| json!({ "text": t })).collect();
        let r = self
            .http
            .post(format!("{}/v1/jobs/batch", self.base))
            .bearer_auth(key)
            .json(&json!({ "documents": documents }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["accepted"], count, "{body}");
    }
}

/// SIGTERM, then the process must exit 0 within 30 s.
pub async fn stops_cleanly(mut child: tokio::process::Child) {
    sigterm(&child).await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the fleet stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

/// Each ingested document of `tenant` has its points exactly once in its namespace, and
/// the tenant's usage is the sum over its documents; returns how many documents there are.
pub async fn points_once_and_usage_exact(
    ids: &tenantry_tests::FleetIds,
    pool: &sqlx::PgPool,
    tenant: &str,
) -> usize {
    let store = tenantry::vector::open(&ids.settings(&[])).await.unwrap();
    let namespace = super::ns(&ids.prefix, tenant);
    let documents: Vec<(uuid::Uuid, i32, i64)> =
        sqlx::query_as("SELECT id, chunks, stored_bytes FROM documents WHERE state = 'INGESTED'")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut all_points = 0;
    for (id, chunks, _) in &documents {
        let n = store.count(&namespace, Some(*id)).await.unwrap();
        assert_eq!(n, *chunks as u64, "document {id}");
        all_points += n;
    }
    assert_eq!(store.count(&namespace, None).await.unwrap(), all_points);
    let usage: (i64, i64) =
        sqlx::query_as("SELECT documents, storage_bytes FROM tenant_usage WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(pool)
            .await
            .unwrap();
    let stored: i64 = documents.iter().map(|d| d.2).sum();
    assert_eq!(usage, (documents.len() as i64, stored));
    documents.len()
}
