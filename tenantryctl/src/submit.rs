//! `submit`: every file under the given paths, as one job each, for the tenant whose
//! key is given — the path for upstream systems and backfills.
//!
//! Each file is sent with an `Idempotency-Key` derived from its path and content, so
//! a backfill that is interrupted and run again does not submit a document twice (the
//! dispatcher answers with the job the first run created). Calls refused with 429 or
//! 503 wait for `Retry-After` and try again. With `--wait`, it then follows every job
//! to its end. A progress bar shows on a terminal; a summary closes the run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::client::{ApiFailure, As, Client, encode};

/// Times a call refused with 429/503 is tried again.
const MAX_RETRIES: u32 = 20;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Files or directories (walked recursively; hidden entries skipped).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The tenant's database (default: the tenant's default database).
    #[arg(long)]
    pub database: Option<String>,
    /// Source type recorded with each document.
    #[arg(long, default_value = "text")]
    pub source_type: String,
    /// Only files with these extensions (comma-separated, e.g. `txt,md`).
    #[arg(long, value_delimiter = ',')]
    pub ext: Vec<String>,
    /// Submissions in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Follow every job until it ends, and report how they ended.
    #[arg(long)]
    pub wait: bool,
}

/// What happened to one file.
#[derive(Debug, Clone)]
enum Sent {
    Accepted { job_id: String },
    Refused { code: String, message: String },
}

/// Every file under `paths`, sorted, hidden entries skipped.
pub fn collect_files(paths: &[PathBuf], ext: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        walk(path, &mut files)?;
    }
    if !ext.is_empty() {
        files.retain(|f| {
            f.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| ext.iter().any(|x| x.trim_start_matches('.') == e))
        });
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn walk(path: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    if meta.is_file() {
        files.push(path.to_owned());
    } else if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            walk(&entry.path(), files)?;
        }
    }
    Ok(())
}

/// The idempotency key of a file: its name and content, hashed.
pub fn idempotency_key(name: &str, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    format!("tenantryctl-{}", hex::encode(&h.finalize()[..16]))
}

fn bar(len: usize, hidden: bool, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len as u64),
        if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    if let Ok(style) =
        ProgressStyle::with_template("{msg:10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar
}

async fn send_one(client: &Client, args: &SubmitArgs, path: &Path) -> Sent {
    let text = match tokio::fs::read(path).await {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                return Sent::Refused {
                    code: "not_utf8".into(),
                    message: "the file is not UTF-8 text".into(),
                };
            }
        },
        Err(e) => {
            return Sent::Refused {
                code: "unreadable".into(),
                message: e.to_string(),
            };
        }
    };
    let name = path.display().to_string();
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut body = json!({
        "text": text,
        "source_type": args.source_type,
        "metadata": { "path": name, "filename": file_name },
    });
    if let Some(db) = &args.database {
        body["database"] = json!(db);
    }
    let key = idempotency_key(&name, &text);
    let mut tries = 0;
    loop {
        let answer = client
            .call(
                As::Tenant,
                Method::POST,
                "/v1/jobs",
                Some(&body),
                &[("idempotency-key", key.as_str())],
            )
            .await;
        match answer {
            Ok(v) => {
                return Sent::Accepted {
                    job_id: v["job_id"].as_str().unwrap_or_default().to_owned(),
                };
            }
            Err(e) => match e.downcast::<ApiFailure>() {
                Ok(f) if matches!(f.status, 429 | 503) && tries < MAX_RETRIES => {
                    tries += 1;
                    let wait = Duration::from_secs(f.retry_after.unwrap_or(1).clamp(1, 60));
                    tokio::time::sleep(wait).await;
                }
                Ok(f) => {
                    return Sent::Refused {
                        code: f.code,
                        message: f.message,
                    };
                }
                Err(other) => {
                    return Sent::Refused {
                        code: "unreachable".into(),
                        message: format!("{other:#}"),
                    };
                }
            },
        }
    }
}

/// Runs `submit`.
pub async fn run(
    client: &Client,
    args: &SubmitArgs,
    json_out: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let files = collect_files(&args.paths, &args.ext)?;
    if files.is_empty() {
        anyhow::bail!("no files to submit under the given paths");
    }
    // Fail early, before the first file, if there is no key.
    if args.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    let started = Instant::now();
    let progress = bar(files.len(), json_out, "submitting");
    let ticker = progress.clone();
    let results: Vec<(PathBuf, Sent)> = futures::stream::iter(files.iter().cloned())
        .map(move |path| {
            let progress = ticker.clone();
            async move {
                let sent = send_one(client, args, &path).await;
                progress.inc(1);
                (path, sent)
            }
        })
        .buffered(args.concurrency)
        .collect()
        .await;
    progress.finish_and_clear();
    let submit_secs = started.elapsed().as_secs_f64();

    let accepted: Vec<(&PathBuf, &str)> = results
        .iter()
        .filter_map(|(p, s)| match s {
            Sent::Accepted { job_id } => Some((p, job_id.as_str())),
            Sent::Refused { .. } => None,
        })
        .collect();
    let mut refused_by_code: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, s) in &results {
        if let Sent::Refused { code, .. } = s {
            *refused_by_code.entry(code.as_str()).or_default() += 1;
        }
    }

    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut chunks: i64 = 0;
    let mut failures: Vec<Value> = Vec::new();
    if args.wait && !accepted.is_empty() {
        let progress = bar(accepted.len(), json_out, "processing");
        let ticker = progress.clone();
        let ended: Vec<(&PathBuf, Value)> = futures::stream::iter(accepted.iter().copied())
            .map(move |(path, job_id)| {
                let progress = ticker.clone();
                async move {
                    let view = follow(client, job_id).await;
                    progress.inc(1);
                    (path, view)
                }
            })
            .buffer_unordered(args.concurrency.max(8))
            .collect()
            .await;
        progress.finish_and_clear();
        for (path, view) in ended {
            let status = view["status"].as_str().unwrap_or("UNKNOWN").to_owned();
            chunks += view["chunks"].as_i64().unwrap_or(0);
            if status != "FINISHED" {
                failures.push(json!({
                    "path": path.display().to_string(),
                    "job_id": view["job_id"],
                    "status": status,
                    "error": view["error"],
                }));
            }
            *outcomes.entry(status).or_default() += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let refused: Vec<Value> = results
        .iter()
        .filter_map(|(p, s)| match s {
            Sent::Refused { code, message } => Some(json!({
                "path": p.display().to_string(), "code": code, "message": message,
            })),
            Sent::Accepted { .. } => None,
        })
        .collect();
    let summary = json!({
        "files": files.len(),
        "accepted": accepted.len(),
        "refused": refused.len(),
        "refused_by_code": refused_by_code,
        "refusals": refused,
        "jobs": accepted.iter().map(|(p, id)| json!({"path": p.display().to_string(), "job_id": id})).collect::<Vec<_>>(),
        "outcomes": outcomes,
        "chunks": chunks,
        "failures": failures,
        "submit_seconds": submit_secs,
        "seconds": elapsed,
    });
    if json_out {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        writeln!(
            out,
            "Submitted {} of {} files in {:.1}s ({:.1} files/s); {} refused.",
            accepted.len(),
            files.len(),
            submit_secs,
            accepted.len() as f64 / submit_secs.max(0.001),
            refused.len()
        )?;
        for (code, n) in &refused_by_code {
            writeln!(out, "  refused {code}: {n}")?;
        }
        for r in refused.iter().take(10) {
            writeln!(
                out,
                "  {}: {} ({})",
                r["path"].as_str().unwrap_or_default(),
                r["message"].as_str().unwrap_or_default(),
                r["code"].as_str().unwrap_or_default()
            )?;
        }
        if args.wait {
            let parts: Vec<String> = outcomes.iter().map(|(s, n)| format!("{n} {s}")).collect();
            writeln!(
                out,
                "Ended: {} ({} chunks) after {:.1}s.",
                if parts.is_empty() {
                    "none".to_owned()
                } else {
                    parts.join(", ")
                },
                chunks,
                elapsed
            )?;
            for f in failures.iter().take(10) {
                writeln!(
                    out,
                    "  {}: {} {}",
                    f["path"].as_str().unwrap_or_default(),
                    f["status"].as_str().unwrap_or_default(),
                    f["error"]["message"].as_str().unwrap_or_default()
                )?;
            }
        }
    }
    if !refused.is_empty() || !failures.is_empty() {
        anyhow::bail!(
            "{} files refused, {} jobs did not finish",
            refused.len(),
            failures.len()
        );
    }
    Ok(())
}

/// Polls a job until it ends (or the dispatcher stops answering for good).
async fn follow(client: &Client, job_id: &str) -> Value {
    let mut pause = Duration::from_millis(100);
    let mut errors = 0;
    loop {
        match client
            .get(As::Tenant, &format!("/v1/jobs/{}", encode(job_id)))
            .await
        {
            Ok(v) => {
                errors = 0;
                if matches!(
                    v["status"].as_str(),
                    Some("FINISHED" | "FAILED" | "CANCELLED")
                ) {
                    return v;
                }
            }
            Err(e) => {
                errors += 1;
                if errors > 30 {
                    return json!({ "job_id": job_id, "status": "UNKNOWN", "error": { "message": format!("{e:#}") } });
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
