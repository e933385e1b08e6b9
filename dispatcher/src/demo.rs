//! `dispatcher --demo`: the first thing a newcomer runs. Starts the all-in-one fleet,
//! creates one tenant per folder of the samples directory over the real HTTP API,
//! ingests the folder's documents, waits for every job, prints a summary per tenant
//! (jobs, chunks, points in its namespace, the best hit of a search), and stops.
//! Re-running it is safe: tenants are reused and documents carry idempotency keys.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tenantry::config::Settings;
use tenantry::tenancy::{DatabaseName, Namespace, TenantId};
use tokio_util::sync::CancellationToken;

use crate::Application;

/// A query per demo tenant, to show that each finds its own documents only.
const QUERIES: &[(&str, &str)] = &[
    ("acme", "anvil falling rope"),
    ("globex", "marmalade in the volcano"),
];
const JOB_DEADLINE: Duration = Duration::from_secs(120);

struct TenantRun {
    id: TenantId,
    key: String,
    jobs: Vec<String>,
}

pub async fn run(
    settings: Settings,
    workers: usize,
    samples: PathBuf,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let admin = settings
        .admin_token
        .clone()
        .context("the demo needs an admin token")?;
    let app = Application::build(settings, workers, &stop).await?;
    let base = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    let server = tokio::spawn(app.run_until_stopped(stop.clone()));
    let http = tenantry::tls::http_client().build()?;
    let result = drive(&http, &base, admin.expose(), &samples, &state).await;
    stop.cancel();
    server.await.context("fleet task")??;
    result
}

async fn drive(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    samples: &Path,
    state: &crate::state::AppState,
) -> anyhow::Result<()> {
    wait_ready(http, base).await?;
    let mut tenants = Vec::new();
    let mut folders: Vec<PathBuf> = std::fs::read_dir(samples)
        .with_context(|| format!("reading samples directory {}", samples.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    if folders.is_empty() {
        bail!("{} has no tenant folders", samples.display());
    }
    let started = Instant::now();
    for folder in folders {
        let name = folder
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let id = TenantId::parse(&format!("demo-{name}"))
            .with_context(|| format!("folder name {name:?}"))?;
        let key = ensure_tenant(http, base, admin, &id).await?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let mut jobs = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let file_name = file.file_name().and_then(|n| n.to_str()).unwrap_or("doc");
            let response = http
                .post(format!("{base}/v1/jobs"))
                .bearer_auth(&key)
                .header(
                    "idempotency-key",
                    format!("demo-{file_name}-{}", text.len()),
                )
                .json(&json!({
                    "text": text,
                    "source_type": "text",
                    "metadata": { "file": file_name },
                    "options": { "chunk_size": 500, "chunk_overlap": 50 }
                }))
                .send()
                .await?;
            let status = response.status();
            let body: Value = response.json().await?;
            if status != 202 {
                bail!("submitting {}: {status} {body}", file.display());
            }
            jobs.push(body["job_id"].as_str().unwrap_or_default().to_owned());
        }
        println!("submitted {} documents for tenant {id}", jobs.len());
        tenants.push(TenantRun { id, key, jobs });
    }

    println!();
    println!(
        "{:<14} {:>5} {:>9} {:>7} {:>7} {:>7}  best hit for its own query",
        "tenant", "jobs", "finished", "failed", "chunks", "points"
    );
    let mut all_finished = true;
    for tenant in &tenants {
        let (mut finished, mut failed, mut chunks) = (0, 0, 0);
        for job in &tenant.jobs {
            let view = wait_job(http, base, &tenant.key, job).await?;
            match view["status"].as_str() {
                Some("FINISHED") => {
                    finished += 1;
                    chunks += view["chunks"].as_u64().unwrap_or(0);
                }
                _ => failed += 1,
            }
        }
        all_finished &= failed == 0;
        let ns = Namespace::new(
            &state.settings.queue_prefix,
            &tenant.id,
            &DatabaseName::default_name(),
            tenantry::tenancy::IsolationMode::Collection,
        );
        let points = state.store.count(&ns, None).await?;
        let query = QUERIES
            .iter()
            .find(|(t, _)| tenant.id.as_str().ends_with(t))
            .map(|(_, q)| *q)
            .unwrap_or("document");
        let vector = state.embedder.embed(&[query]).await?.remove(0);
        let hits = state.store.search(&ns, vector, 1, &[]).await?;
        let best = hits
            .first()
            .and_then(|h| h.payload.get("text").and_then(Value::as_str))
            .map(|t| {
                format!(
                    "{query:?} → \"{}…\"",
                    t.chars().take(60).collect::<String>().replace('\n', " ")
                )
            })
            .unwrap_or_else(|| "(no hits)".into());
        println!(
            "{:<14} {:>5} {:>9} {:>7} {:>7} {:>7}  {best}",
            tenant.id,
            tenant.jobs.len(),
            finished,
            failed,
            chunks,
            points
        );
    }
    println!();
    println!(
        "ingested in {:.1} s; each tenant's points live in its own namespace.",
        started.elapsed().as_secs_f64()
    );
    if !all_finished {
        bail!("some jobs did not finish");
    }
    Ok(())
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the fleet did not become ready within 60 s (is RabbitMQ running? `rabbitmq-server -detached`)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the tenant if it does not exist; issues a fresh key either way.
async fn ensure_tenant(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    id: &TenantId,
) -> anyhow::Result<String> {
    let created = http
        .post(format!("{base}/v1/admin/tenants"))
        .bearer_auth(admin)
        .json(&json!({ "id": id, "name": format!("Demo {id}"), "email": format!("{id}@example.com") }))
        .send()
        .await?;
    if !matches!(created.status().as_u16(), 201 | 409) {
        bail!(
            "creating tenant {id}: {} {}",
            created.status(),
            created.text().await?
        );
    }
    let issued = http
        .post(format!("{base}/v1/admin/tenants/{id}/keys"))
        .bearer_auth(admin)
        .json(&json!({ "name": "demo" }))
        .send()
        .await?;
    let body: Value = issued.json().await?;
    body["key"]
        .as_str()
        .map(str::to_owned)
        .context("no key in the answer")
}

async fn wait_job(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    job: &str,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + JOB_DEADLINE;
    loop {
        let view: Value = http
            .get(format!("{base}/v1/jobs/{job}"))
            .bearer_auth(key)
            .send()
            .await?
            .json()
            .await?;
        if matches!(
            view["status"].as_str(),
            Some("FINISHED" | "FAILED" | "CANCELLED")
        ) {
            return Ok(view);
        }
        if Instant::now() > deadline {
            bail!("job {job} did not end within {JOB_DEADLINE:?}: {view}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
