//! tenantryctl: the operator's command line over the dispatcher's HTTP API — tenants,
//! keys, the status of queues and workers, a tenant's jobs, and bulk `submit` of files
//! for upstream systems and backfills.
//!
//! # Layout
//! - [`Cli`] and [`run`]: the commands; `main.rs` only parses and reports.
//! - [`client`]: HTTP, credentials, the API's error shape.
//! - [`submit`]: files and directories in, a progress bar, a summary out.
//! - [`webhooks`]: a tenant's webhook deliveries and signing secret.
//! - [`table`]: readable tables (every command also speaks `--json`).
//!
//! It reads `TENANTRY_URL`, `TENANTRY_ADMIN_TOKEN` and `TENANTRY_API_KEY`; flags override.

use std::io::Write;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use tenantry::config::{ENV_ADMIN_TOKEN, ENV_API_KEY, ENV_URL};

pub mod client;
pub mod submit;
pub mod table;
pub mod webhooks;

use client::{As, Client, encode};
use table::{Table, age, field};

/// Where tenantryctl looks when neither TENANTRY_URL nor --url is given.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

#[derive(Debug, Parser)]
#[command(
    name = "tenantryctl",
    version,
    about = "Operate a tenantry fleet: tenants, keys, queues, workers, jobs, bulk submit"
)]
pub struct Cli {
    /// Base URL of a dispatcher.
    #[arg(long, global = true, env = ENV_URL, default_value = DEFAULT_URL)]
    pub url: String,
    /// Admin token (admin commands).
    #[arg(long, global = true, env = ENV_ADMIN_TOKEN, hide_env_values = true)]
    pub token: Option<String>,
    /// A tenant's API key (jobs, submit).
    #[arg(long, global = true, env = ENV_API_KEY, hide_env_values = true)]
    pub key: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list and show tenants (admin).
    #[command(subcommand)]
    Tenants(TenantsCmd),
    /// Issue, list and revoke a tenant's API keys (admin).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Queues (depth and consumers, as the broker counts them), live workers,
    /// per-tenant backlog, dead letters (admin).
    Status(StatusArgs),
    /// A tenant's jobs: list, show, cancel (tenant key).
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Submit a file or every file under a directory for a tenant (tenant key).
    Submit(submit::SubmitArgs),
    /// Show or override a tenant's quotas (admin).
    #[command(subcommand)]
    Quotas(QuotasCmd),
    /// Usage of every tenant over the last days, for billing (admin).
    Usage {
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// List dead letters, replay one (admin).
    #[command(subcommand)]
    DeadLetters(DeadLettersCmd),
    /// A tenant's webhook deliveries, redelivery, signing secret (tenant key).
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCmd),
}

#[derive(Debug, Subcommand)]
pub enum QuotasCmd {
    Show {
        tenant: String,
    },
    /// Replace the tenant's overrides: `KIND=LIMIT` pairs, e.g. `DOCUMENTS=10
    /// STORAGE_MB=50`; a kind left out takes the plan default again.
    Set {
        tenant: String,
        limits: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCmd {
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Put the dead-lettered job back in its tenant's backlog.
    Replay { id: String },
}

#[derive(Debug, Subcommand)]
pub enum TenantsCmd {
    Create {
        /// Tenant id (generated when absent).
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        plan: Option<String>,
        /// `collection` or `partition`.
        #[arg(long)]
        isolation: Option<String>,
    },
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    Show {
        id: String,
    },
    /// Change name, email, plan, status (ACTIVE, SUSPENDED, INACTIVE) or isolation.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        isolation: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Issue a key; the secret is printed once.
    Issue {
        tenant: String,
        #[arg(long)]
        name: Option<String>,
    },
    List {
        tenant: String,
    },
    Revoke {
        tenant: String,
        key_id: String,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Most tenants listed.
    #[arg(long, default_value_t = 20)]
    pub tenants: u32,
}

#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    List {
        /// PENDING, PROCESSING, FINISHED, FAILED or CANCELLED.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    Show {
        id: String,
    },
    Cancel {
        id: String,
    },
}

/// Runs one command, writing its answer to `out`.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let client = Client::new(&cli.url, cli.token.clone(), cli.key.clone())?;
    let json = cli.json;
    match cli.command {
        Command::Tenants(cmd) => tenants(&client, cmd, json, out).await,
        Command::Keys(cmd) => keys(&client, cmd, json, out).await,
        Command::Status(args) => status(&client, &args, json, out).await,
        Command::Jobs(cmd) => jobs(&client, cmd, json, out).await,
        Command::Webhooks(cmd) => webhooks::run(&client, cmd, json, out).await,
        Command::Submit(args) => submit::run(&client, &args, json, out).await,
        Command::Quotas(cmd) => quotas(&client, cmd, json, out).await,
        Command::Usage { days } => {
            let answer = client
                .get(As::Admin, &format!("/v1/admin/usage?days={days}"))
                .await?;
            print_answer(out, &answer, json)
        }
        Command::DeadLetters(cmd) => {
            let answer = match cmd {
                DeadLettersCmd::List { tenant } => {
                    let query = tenant.map_or(String::new(), |t| format!("?tenant={}", encode(&t)));
                    client
                        .get(As::Admin, &format!("/v1/admin/dead-letters{query}"))
                        .await?
                }
                DeadLettersCmd::Replay { id } => {
                    client
                        .post(
                            As::Admin,
                            &format!("/v1/admin/dead-letters/{}/replay", encode(&id)),
                            &json!({}),
                        )
                        .await?
                }
            };
            print_answer(out, &answer, json)
        }
    }
}

/// JSON with `--json`, else `key: value` lines.
fn print_answer(out: &mut (dyn Write + Send), answer: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(out, answer)
    } else {
        print_fields(out, answer)
    }
}

async fn quotas(
    client: &Client,
    cmd: QuotasCmd,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let answer = match cmd {
        QuotasCmd::Show { tenant } => {
            client
                .get(
                    As::Admin,
                    &format!("/v1/admin/tenants/{}/quotas", encode(&tenant)),
                )
                .await?
        }
        QuotasCmd::Set { tenant, limits } => {
            let mut body = serde_json::Map::new();
            for pair in &limits {
                let (kind, limit) = pair
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("{pair:?}: expected KIND=LIMIT"))?;
                let limit: i64 = limit
                    .parse()
                    .map_err(|_| anyhow::anyhow!("{pair:?}: the limit is not a whole number"))?;
                body.insert(kind.to_owned(), json!(limit));
            }
            client
                .call(
                    As::Admin,
                    reqwest::Method::PUT,
                    &format!("/v1/admin/tenants/{}/quotas", encode(&tenant)),
                    Some(&Value::Object(body)),
                    &[],
                )
                .await?
        }
    };
    print_answer(out, &answer, json)
}

fn print_json(out: &mut (dyn Write + Send), value: &Value) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// An object as `key: value` lines.
fn print_fields(out: &mut (dyn Write + Send), value: &Value) -> anyhow::Result<()> {
    if let Value::Object(map) = value {
        let width = map.keys().map(|k| k.len()).max().unwrap_or(0);
        for (k, v) in map {
            let shown = match v {
                Value::Object(_) | Value::Array(_) => v.to_string(),
                other => table::cell(other),
            };
            writeln!(out, "{k:<width$}  {shown}")?;
        }
    } else {
        writeln!(out, "{}", table::cell(value))?;
    }
    Ok(())
}

async fn tenants(
    client: &Client,
    cmd: TenantsCmd,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let answer = match cmd {
        TenantsCmd::Create {
            id,
            name,
            email,
            plan,
            isolation,
        } => {
            let mut body = json!({ "name": name, "email": email });
            for (k, v) in [("id", id), ("plan", plan), ("isolation", isolation)] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            client.post(As::Admin, "/v1/admin/tenants", &body).await?
        }
        TenantsCmd::List { limit } => {
            let answer = client
                .get(As::Admin, &format!("/v1/admin/tenants?limit={limit}"))
                .await?;
            if json {
                return print_json(out, &answer);
            }
            let mut t = Table::new(&["ID", "NAME", "STATUS", "PLAN", "ISOLATION", "CREATED"]);
            for tenant in answer["tenants"].as_array().into_iter().flatten() {
                t.row(vec![
                    field(tenant, "id"),
                    field(tenant, "name"),
                    field(tenant, "status"),
                    field(tenant, "plan"),
                    field(tenant, "isolation"),
                    field(tenant, "created_at"),
                ]);
            }
            write!(out, "{}", t.render())?;
            return Ok(());
        }
        TenantsCmd::Show { id } => {
            client
                .get(As::Admin, &format!("/v1/admin/tenants/{}", encode(&id)))
                .await?
        }
        TenantsCmd::Update {
            id,
            name,
            email,
            plan,
            status,
            isolation,
        } => {
            let mut body = json!({});
            for (k, v) in [
                ("name", name),
                ("email", email),
                ("plan", plan),
                ("status", status),
                ("isolation", isolation),
            ] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            client
                .call(
                    As::Admin,
                    reqwest::Method::PATCH,
                    &format!("/v1/admin/tenants/{}", encode(&id)),
                    Some(&body),
                    &[],
                )
                .await?
        }
    };
    if json {
        print_json(out, &answer)
    } else {
        print_fields(out, &answer)
    }
}

async fn keys(
    client: &Client,
    cmd: KeysCmd,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Issue { tenant, name } => {
            let body = match name {
                Some(n) => json!({ "name": n }),
                None => json!({}),
            };
            let answer = client
                .post(
                    As::Admin,
                    &format!("/v1/admin/tenants/{}/keys", encode(&tenant)),
                    &body,
                )
                .await?;
            if json {
                return print_json(out, &answer);
            }
            print_fields(out, &answer)?;
            writeln!(out, "\nThe key is shown once: store it now.")?;
        }
        KeysCmd::List { tenant } => {
            let answer = client
                .get(
                    As::Admin,
                    &format!("/v1/admin/tenants/{}/keys", encode(&tenant)),
                )
                .await?;
            if json {
                return print_json(out, &answer);
            }
            let mut t = Table::new(&[
                "ID",
                "PREFIX",
                "NAME",
                "CREATED",
                "EXPIRES",
                "REVOKED",
                "LAST USED",
            ]);
            for key in answer["keys"].as_array().into_iter().flatten() {
                t.row(vec![
                    field(key, "id"),
                    field(key, "prefix"),
                    field(key, "name"),
                    field(key, "created_at"),
                    field(key, "expires_at"),
                    field(key, "revoked_at"),
                    field(key, "last_used_at"),
                ]);
            }
            write!(out, "{}", t.render())?;
        }
        KeysCmd::Revoke { tenant, key_id } => {
            let answer = client
                .delete(
                    As::Admin,
                    &format!(
                        "/v1/admin/tenants/{}/keys/{}",
                        encode(&tenant),
                        encode(&key_id)
                    ),
                )
                .await?;
            if json {
                return print_json(out, &answer);
            }
            writeln!(
                out,
                "Revoked key {} of tenant {tenant}.",
                field(&answer, "prefix")
            )?;
        }
    }
    Ok(())
}

/// `status`: the view of `GET /v1/admin/queues`.
async fn status(
    client: &Client,
    args: &StatusArgs,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let v = client
        .get(
            As::Admin,
            &format!("/v1/admin/queues?limit={}", args.tenants.max(1)),
        )
        .await?;
    if json {
        return print_json(out, &v);
    }
    write!(out, "{}", render_status(&v))?;
    Ok(())
}

/// The status view as text (public for tests and for anyone embedding it).
pub fn render_status(v: &Value) -> String {
    let mut s = String::new();
    if v["broker"]["up"].as_bool() != Some(true) {
        s.push_str("Broker: DOWN (queue depth unknown)\n\n");
    }
    let mut queues = Table::new(&["QUEUE", "ROLE", "MESSAGES", "CONSUMERS"]);
    for q in v["queues"].as_array().into_iter().flatten() {
        queues.row(vec![
            field(q, "name"),
            field(q, "role"),
            field(q, "messages"),
            field(q, "consumers"),
        ]);
    }
    s.push_str(&queues.render());
    s.push_str(&format!(
        "\nBacklog: {} jobs waiting in Postgres, {} in flight. Dead letters: {} queued, {} recorded ({} not replayed).\n",
        field(v, "backlog"),
        field(v, "in_flight"),
        field(&v["dead_letters"], "queued"),
        field(&v["dead_letters"], "recorded"),
        field(&v["dead_letters"], "pending"),
    ));
    s.push_str(&format!(
        "\nWorkers: {} live ({} tasks; a worker silent for {}s is gone)\n",
        field(v, "workers_live"),
        field(v, "worker_tasks_live"),
        field(v, "heartbeat_secs"),
    ));
    let mut workers = Table::new(&[
        "ID",
        "HOST",
        "PID",
        "MODE",
        "TASKS",
        "IN FLIGHT",
        "DONE",
        "LAST BEAT",
        "METRICS",
    ]);
    for w in v["workers"].as_array().into_iter().flatten() {
        workers.row(vec![
            field(w, "id"),
            field(w, "host"),
            field(w, "pid"),
            field(w, "mode"),
            field(w, "concurrency"),
            field(w, "in_flight"),
            field(w, "jobs_done"),
            format!(
                "{} ago",
                age(w["heartbeat_age_secs"].as_f64().unwrap_or_default())
            ),
            field(w, "metrics_addr"),
        ]);
    }
    if !workers.is_empty() {
        s.push_str(&workers.render());
    }
    s.push_str(&format!(
        "\nTenants with work: {}\n",
        field(v, "tenants_total")
    ));
    let mut tenants = Table::new(&[
        "TENANT",
        "BACKLOG",
        "IN FLIGHT",
        "PROCESSING",
        "OLDEST PENDING",
    ]);
    for t in v["tenants"].as_array().into_iter().flatten() {
        tenants.row(vec![
            field(t, "tenant_id"),
            field(t, "backlog"),
            field(t, "in_flight"),
            field(t, "processing"),
            t["oldest_pending_secs"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), age),
        ]);
    }
    if !tenants.is_empty() {
        s.push_str(&tenants.render());
    }
    s
}

async fn jobs(
    client: &Client,
    cmd: JobsCmd,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match cmd {
        JobsCmd::List { status, limit } => {
            let mut path = format!("/v1/jobs?limit={limit}");
            if let Some(s) = status {
                path.push_str(&format!("&status={}", encode(&s)));
            }
            let answer = client.get(As::Tenant, &path).await?;
            if json {
                return print_json(out, &answer);
            }
            let mut t = Table::new(&[
                "JOB", "STATUS", "DATABASE", "ATTEMPTS", "CHUNKS", "CREATED", "ERROR",
            ]);
            let list = answer
                .get("jobs")
                .and_then(Value::as_array)
                .or_else(|| answer.as_array());
            for job in list.into_iter().flatten() {
                t.row(vec![
                    field(job, "job_id"),
                    field(job, "status"),
                    field(job, "database"),
                    field(job, "attempts"),
                    field(job, "chunks"),
                    field(job, "created_at"),
                    field(&job["error"], "code"),
                ]);
            }
            write!(out, "{}", t.render())?;
            Ok(())
        }
        JobsCmd::Show { id } => {
            let answer = client
                .get(As::Tenant, &format!("/v1/jobs/{}", encode(&id)))
                .await?;
            if json {
                print_json(out, &answer)
            } else {
                print_fields(out, &answer)
            }
        }
        JobsCmd::Cancel { id } => {
            let answer = client
                .delete(As::Tenant, &format!("/v1/jobs/{}", encode(&id)))
                .await?;
            if json {
                print_json(out, &answer)
            } else {
                writeln!(out, "Job {id}: {}.", field(&answer, "status"))?;
                Ok(())
            }
        }
    }
}
