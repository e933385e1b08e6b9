//! Operating the fleet: `/metrics` and `GET /v1/admin/queues` report the broker's own
//! queue counts and the per-tenant backlog; worker processes announce themselves and
//! vanish from the view when they die; tenantryctl drives all of it.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use tenantry::config;
use tenantry_tests::{ADMIN_TOKEN, SIGNING_SECRET, TestEnv, eventually, eventually_within};

/// One sample of the text exposition format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text format strictly enough to catch malformed output: every
/// line is a `# HELP`/`# TYPE` comment or `name{label="value",...} number`, every
/// sample's family has a TYPE, and names and labels are well-formed.
fn parse_exposition(text: &str) -> Vec<Sample> {
    fn valid_name(n: &str) -> bool {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap_or_default();
            assert!(valid_name(name), "bad metric name in {line:?}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or_default();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "bad type in {line:?}"
                );
                typed.insert(name.to_owned(), t.to_owned());
            } else {
                assert_eq!(kind, "HELP", "unknown comment {line:?}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels close");
                let mut labels = BTreeMap::new();
                let mut chars = body.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                    assert!(valid_name(&key), "bad label name in {line:?}");
                    assert_eq!(chars.next(), Some('"'), "label value quoted in {line:?}");
                    let mut val = String::new();
                    loop {
                        match chars.next().expect("label value ends") {
                            '\\' => val.push(chars.next().expect("escape")),
                            '"' => break,
                            c => val.push(c),
                        }
                    }
                    labels.insert(key, val);
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                (name, labels)
            }
        };
        assert!(valid_name(name), "bad sample name in {line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains_key(*f)))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "no TYPE for {name}");
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

fn find(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// (ready messages, consumers) of a queue, as `rabbitmqctl` reports them: the broker's
/// own count, by another road than the AMQP passive declare the code uses.
async fn rabbitmqctl_counts(queue: &str) -> (u64, u64) {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "-p",
            "/",
            "name",
            "messages_ready",
            "consumers",
            "--no-table-headers",
        ])
        .output()
        .await
        .expect("rabbitmqctl runs (it comes with the RabbitMQ server)");
    assert!(output.status.success(), "rabbitmqctl: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.len() == 3 && cols[0] == queue)
                .then(|| (cols[1].parse().unwrap(), cols[2].parse().unwrap()))
        })
        .unwrap_or_else(|| panic!("{queue} not listed by rabbitmqctl: {text}"))
}

/// Scrapes a `/metrics` URL, with a bearer token where one is given.
async fn scrape(env: &TestEnv, url: &str, token: Option<&str>) -> (String, Vec<Sample>) {
    let mut request = env.http.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = r.text().await.unwrap();
    let samples = parse_exposition(&text);
    (text, samples)
}

/// Runs tenantryctl's library with these arguments against the fleet; returns its output.
pub(crate) async fn ctl(env: &TestEnv, args: &[&str]) -> anyhow::Result<String> {
    ctl_at(&env.base_url, args).await
}

async fn ctl_at(url: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut argv = vec!["tenantryctl", "--url", url, "--token", ADMIN_TOKEN];
    argv.extend_from_slice(args);
    let cli = tenantryctl::Cli::try_parse_from(argv)?;
    let mut out = Vec::new();
    tenantryctl::run(cli, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

async fn ctl_json(env: &TestEnv, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = ctl(env, &all).await.unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_and_the_queues_view_report_the_brokers_count_and_each_tenants_backlog() {
    // No workers: published jobs stay on the broker, the rest waits in the backlog,
    // two per tenant at a time.
    let env = TestEnv::start_with(
        0,
        &[
            (config::ENV_TENANT_WINDOW, "2"),
            // No extra share of the fleet window: exactly the tenant windows.
            (config::ENV_FLEET_WINDOW, "1"),
            (config::ENV_METRICS_TOP_TENANTS, "1"),
            // The broker counts messages: one job per message, so its count is the
            // number of jobs published.
            (config::ENV_JOBS_PER_MESSAGE, "1"),
            // The operator-only listener, scraped without credentials below.
            (config::ENV_METRICS_ADDR, "127.0.0.1:0"),
        ],
    )
    .await;
    let operator_metrics = format!(
        "{}/metrics",
        env.metrics_base_url.as_deref().expect("a metrics listener")
    );
    let key_a = env.tenant("acme").await;
    let key_b = env.tenant("bravo").await;
    for i in 0..7 {
        env.submit(&key_a, json!({ "text": format!("Acme document {i}.") }))
            .await;
    }
    for i in 0..3 {
        env.submit(&key_b, json!({ "text": format!("Bravo document {i}.") }))
            .await;
    }
    let jobs_queue = env.topology().jobs_queue();
    eventually("both windows to be published", || async {
        (env.queue_depth(&jobs_queue).await == 4).then_some(())
    })
    .await;

    // /metrics: the broker's own count, the backlog per tenant (top 1 + _other).
    // rabbitmqctl reads quorum-queue counters the broker refreshes every few seconds:
    // wait for them to show the (now stable) state, then compare.
    let (ready, consumers) = eventually("rabbitmqctl to count the jobs", || async {
        let counts = rabbitmqctl_counts(&jobs_queue).await;
        (counts.0 == 4).then_some(counts)
    })
    .await;
    let (text, samples) = scrape(&env, &operator_metrics, None).await;
    let labels = [("queue", jobs_queue.as_str()), ("role", "jobs")];
    assert_eq!(
        find(&samples, "tenantry_queue_messages", &labels),
        Some(ready as f64),
        "{text}"
    );
    assert_eq!(
        find(&samples, "tenantry_queue_consumers", &labels),
        Some(consumers as f64)
    );
    let dead = env.topology().dead_queue();
    assert!(
        find(
            &samples,
            "tenantry_queue_messages",
            &[("queue", dead.as_str()), ("role", "dead")]
        )
        .is_some()
    );
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.name == "tenantry_queue_messages" && s.labels["role"] == "retry")
            .count(),
        5
    );
    assert_eq!(find(&samples, "tenantry_broker_up", &[]), Some(1.0));
    assert_eq!(find(&samples, "tenantry_backlog_jobs", &[]), Some(6.0));
    assert_eq!(find(&samples, "tenantry_in_flight_jobs", &[]), Some(4.0));
    let tenant = |name: &str, t: &str| find(&samples, name, &[("tenant", t)]);
    assert_eq!(tenant("tenantry_tenant_backlog_jobs", "acme"), Some(5.0));
    assert_eq!(tenant("tenantry_tenant_in_flight_jobs", "acme"), Some(2.0));
    assert_eq!(tenant("tenantry_tenant_backlog_jobs", "_other"), Some(1.0));
    assert_eq!(
        tenant("tenantry_tenant_in_flight_jobs", "_other"),
        Some(2.0)
    );
    assert_eq!(
        tenant("tenantry_tenant_backlog_jobs", "bravo"),
        None,
        "bounded cardinality"
    );
    assert!(tenant("tenantry_tenant_oldest_pending_seconds", "acme").is_some_and(|a| a >= 0.0));
    assert_eq!(
        find(&samples, "tenantry_jobs_submitted_total", &[]),
        Some(10.0)
    );
    assert_eq!(find(&samples, "tenantry_workers_live", &[]), Some(0.0));

    // The same view as JSON, every tenant listed.
    let r = env.admin_get("/v1/admin/queues").await;
    assert_eq!(r.status(), 200);
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["broker"]["up"], true);
    assert_eq!(view["jobs_queue"]["name"], jobs_queue.as_str());
    assert_eq!(view["jobs_queue"]["messages"], ready);
    assert_eq!(view["backlog"], 6);
    assert_eq!(view["in_flight"], 4);
    assert_eq!(view["tenants_total"], 2);
    assert_eq!(view["tenants"][0]["tenant_id"], "acme");
    assert_eq!(view["tenants"][0]["backlog"], 5);
    assert_eq!(view["tenants"][1]["tenant_id"], "bravo");
    assert_eq!(view["tenants"][1]["backlog"], 1);
    assert_eq!(view["tenants"][1]["in_flight"], 2);
    assert_eq!(view["dead_letters"]["queued"], 0);
    assert_eq!(view["dead_letters"]["recorded"], 0);
    assert_eq!(view["workers_live"], 0);
    // The admin view needs the admin token; bad input is named.
    let r = env.get(&key_a, "/v1/admin/queues").await;
    assert_eq!(r.status(), 401);
    tenantry_tests::assert_error(
        env.admin_get("/v1/admin/queues?limit=0").await,
        422,
        "invalid_value",
    )
    .await;

    // tenantryctl status shows the same, as JSON and as a table.
    let status = ctl_json(&env, &["status"]).await;
    assert_eq!(status["jobs_queue"]["messages"], 4);
    let table = ctl(&env, &["status"]).await.unwrap();
    assert!(table.contains(&jobs_queue), "{table}");
    assert!(table.contains("acme") && table.contains("bravo"), "{table}");
    assert!(
        table.contains("Backlog: 6 jobs waiting in Postgres, 4 in flight"),
        "{table}"
    );

    // A quota refusal is counted by resource.
    sqlx::query("UPDATE tenants SET quota_overrides = '{\"DOCUMENTS\": 3}' WHERE id = 'bravo'")
        .execute(env.pool())
        .await
        .unwrap();
    let r = env
        .post(&key_b, "/v1/jobs", json!({ "text": "One too many." }))
        .await;
    tenantry_tests::assert_error(r, 403, "quota_exceeded").await;
    // On the public port, with the admin token: the same exposition.
    let (_, samples) = scrape(&env, &env.url("/metrics"), Some(ADMIN_TOKEN)).await;
    assert_eq!(
        find(
            &samples,
            "tenantry_quota_rejections_total",
            &[("resource", "DOCUMENTS")]
        ),
        Some(1.0)
    );
    env.stop().await;
}

/// A `worker` process of the fleet, with its output lines collected.
struct WorkerProcess {
    child: std::process::Child,
    logs: Vec<std::thread::JoinHandle<Vec<String>>>,
    _data_dir: tempfile::TempDir,
}

impl WorkerProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (up to `deadline`) for the process to exit; returns its output.
    async fn exit(mut self, deadline: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < deadline,
                "worker {} did not exit",
                self.pid()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut lines = Vec::new();
        for handle in std::mem::take(&mut self.logs) {
            lines.extend(handle.join().unwrap());
        }
        (status, lines)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_worker(env: &TestEnv, heartbeat: &str) -> WorkerProcess {
    use std::io::BufRead;
    let data_dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_e2e-worker"))
        .env_clear()
        .envs(env.ids.env())
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // The embedded store belongs to one process: each worker gets its own.
        .env(config::ENV_DATA_DIR, data_dir.path())
        .env(config::ENV_METRICS_ADDR, "127.0.0.1:0")
        .env(config::ENV_HEARTBEAT_SECS, heartbeat)
        .env(config::ENV_LOG_FORMAT, "json")
        .env("RUST_LOG", "info,qdrant_edge=error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a worker process");
    let collect = |stream: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        })
    };
    let logs = vec![
        collect(Box::new(child.stdout.take().unwrap())),
        collect(Box::new(child.stderr.take().unwrap())),
    ];
    WorkerProcess {
        child,
        logs,
        _data_dir: data_dir,
    }
}

async fn status(env: &TestEnv) -> Value {
    ctl_json(env, &["status"]).await
}

fn worker_ids(status: &Value) -> Vec<String> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_worker_processes_show_in_status_and_a_killed_one_leaves_within_the_heartbeat() {
    const HEARTBEAT_SECS: u64 = 2;
    let heartbeat = HEARTBEAT_SECS.to_string();
    let env = TestEnv::start_with(0, &[(config::ENV_HEARTBEAT_SECS, heartbeat.as_str())]).await;
    let key = env.tenant("acme").await;
    let mut workers: Vec<WorkerProcess> = (0..3).map(|_| spawn_worker(&env, &heartbeat)).collect();
    let jobs_queue = env.topology().jobs_queue();

    // All three announce themselves and consume; the view agrees with the broker.
    let view = eventually("three live workers consuming", || async {
        let s = status(&env).await;
        (s["workers_live"] == 3 && s["jobs_queue"]["consumers"] == 3).then_some(s)
    })
    .await;
    eventually("rabbitmqctl to count three consumers", || async {
        (rabbitmqctl_counts(&jobs_queue).await.1 == 3).then_some(())
    })
    .await;
    let pids: Vec<u32> = workers.iter().map(WorkerProcess::pid).collect();
    for w in view["workers"].as_array().unwrap() {
        assert_eq!(w["mode"], "worker");
        assert!(pids.contains(&(w["pid"].as_u64().unwrap() as u32)), "{w}");
    }
    let table = ctl(&env, &["status"]).await.unwrap();
    for id in worker_ids(&view) {
        assert!(table.contains(&id), "{table}");
    }
    assert!(table.contains("Workers: 3 live"), "{table}");

    // They work: a job submitted now ends FINISHED in one of them.
    let accepted = env
        .submit(
            &key,
            json!({ "text": "A document for the worker processes." }),
        )
        .await;
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let done = env.wait_for_job(&key, &job_id).await;
    assert_eq!(done["status"], "FINISHED", "{done}");

    // Each serves /metrics with the broker's queue view and its own counters.
    let mut finished = 0.0;
    for w in view["workers"].as_array().unwrap() {
        let addr = w["metrics_addr"]
            .as_str()
            .expect("metrics address announced");
        let (text, samples) = scrape(&env, &format!("http://{addr}/metrics"), None).await;
        assert!(
            find(&samples, "tenantry_queue_consumers", &[("role", "jobs")]).is_some(),
            "{text}"
        );
        finished += find(&samples, "tenantry_jobs_finished_total", &[]).unwrap_or(0.0);
    }
    assert_eq!(finished, 1.0);

    // Kill one outright: it leaves the view within the heartbeat interval.
    let mut victim = workers.remove(0);
    let victim_pid = victim.pid();
    let victim_id = view["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["pid"].as_u64() == Some(u64::from(victim_pid)))
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .unwrap();
    victim.child.kill().unwrap();
    let killed_at = Instant::now();
    let (_, mut logs) = victim.exit(Duration::from_secs(10)).await;
    let after = eventually_within(
        "the killed worker to leave the view",
        Duration::from_secs(30),
        || async {
            let s = status(&env).await;
            (!worker_ids(&s).contains(&victim_id)).then_some(s)
        },
    )
    .await;
    let gone_after = killed_at.elapsed();
    eprintln!("The killed worker left the view after {gone_after:?}.");
    // One interval, plus the time one status call takes on a busy machine.
    assert!(
        gone_after <= Duration::from_secs(HEARTBEAT_SECS) + Duration::from_millis(1500),
        "the dead worker stayed {gone_after:?}"
    );
    assert_eq!(after["workers_live"], 2, "{after}");
    eventually("the broker to drop the dead consumer", || async {
        (status(&env).await["jobs_queue"]["consumers"] == 2).then_some(())
    })
    .await;

    // SIGTERM: the others stop cleanly and remove themselves at once.
    for w in &workers {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &w.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    for w in workers {
        let (exit, lines) = w.exit(Duration::from_secs(30)).await;
        assert!(exit.success(), "{exit:?}: {lines:#?}");
        logs.extend(lines);
    }
    assert_eq!(status(&env).await["workers_live"], 0);

    // Logs: JSON lines; the job's lines carry tenant_id and job_id; no secret anywhere.
    let mut job_lines = 0;
    for line in &logs {
        for secret in [SIGNING_SECRET, ADMIN_TOKEN, key.as_str()] {
            assert!(!line.contains(secret), "a secret was logged: {line}");
        }
        // Every line of ours is JSON; skip anything a library printed by itself.
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["span"]["name"] == "job" || line.contains(&job_id) {
            assert_eq!(v["span"]["tenant_id"], "acme", "{line}");
            assert_eq!(v["span"]["job_id"], job_id.as_str(), "{line}");
            job_lines += 1;
        }
    }
    assert!(job_lines >= 1, "no log line of the job in {logs:#?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenantryctl_manages_tenants_and_keys_and_backfills_a_directory() {
    let env = TestEnv::start(2).await;
    // Tenants.
    let created = ctl_json(
        &env,
        &[
            "tenants",
            "create",
            "--id",
            "initech",
            "--name",
            "Initech",
            "--email",
            "ops@initech.test",
        ],
    )
    .await;
    assert_eq!(created["id"], "initech");
    let listed = ctl(&env, &["tenants", "list"]).await.unwrap();
    assert!(
        listed.contains("initech") && listed.contains("Initech"),
        "{listed}"
    );
    let shown = ctl(&env, &["tenants", "show", "initech"]).await.unwrap();
    assert!(shown.contains("ops@initech.test"), "{shown}");
    let missing = ctl(&env, &["tenants", "show", "nobody"]).await.unwrap_err();
    assert!(missing.to_string().contains("404 not_found"), "{missing}");

    // Keys: issued once, listed by prefix, revoked.
    let issued = ctl_json(&env, &["keys", "issue", "initech", "--name", "backfill"]).await;
    let key = issued["key"].as_str().unwrap().to_owned();
    let spare = ctl_json(&env, &["keys", "issue", "initech"]).await;
    let keys = ctl(&env, &["keys", "list", "initech"]).await.unwrap();
    assert!(keys.contains("backfill") && !keys.contains(&key), "{keys}");
    let revoked = ctl(
        &env,
        &["keys", "revoke", "initech", spare["id"].as_str().unwrap()],
    )
    .await
    .unwrap();
    assert!(revoked.starts_with("Revoked key"), "{revoked}");

    // Without the admin token, admin commands say what is missing.
    let cli = tenantryctl::Cli::try_parse_from(["tenantryctl", "--url", &env.base_url, "status"])
        .unwrap();
    let mut sink = Vec::new();
    if std::env::var(config::ENV_ADMIN_TOKEN).is_err() {
        let err = tenantryctl::run(cli, &mut sink).await.unwrap_err();
        assert!(err.to_string().contains("TENANTRY_ADMIN_TOKEN"), "{err}");
    }

    // Submit a directory, wait for every job, read the summary.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    std::fs::write(
        dir.path().join("a.txt"),
        "Staplers are red in the basement.",
    )
    .unwrap();
    std::fs::write(dir.path().join("b.md"), "TPS reports need a cover sheet.").unwrap();
    std::fs::write(
        dir.path().join("nested/c.txt"),
        "The printer jams on Tuesdays.",
    )
    .unwrap();
    std::fs::write(dir.path().join(".hidden"), "Not submitted.").unwrap();
    let path = dir.path().display().to_string();
    let summary = ctl_json(&env, &["--key", &key, "submit", &path, "--wait"]).await;
    assert_eq!(summary["files"], 3, "{summary}");
    assert_eq!(summary["accepted"], 3);
    assert_eq!(summary["refused"], 0);
    assert_eq!(summary["outcomes"]["FINISHED"], 3, "{summary}");
    assert!(summary["chunks"].as_i64().unwrap() >= 3);
    // Run again: the same files are the same jobs (a backfill can be resumed).
    let again = ctl_json(&env, &["--key", &key, "submit", &path, "--ext", "txt"]).await;
    assert_eq!(again["files"], 2);
    let first: Vec<&Value> = summary["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| &j["job_id"])
        .collect();
    for job in again["jobs"].as_array().unwrap() {
        assert!(first.contains(&&job["job_id"]), "{job} resubmitted");
    }
    // The human summary.
    let text = ctl(&env, &["--key", &key, "submit", &path, "--wait"])
        .await
        .unwrap();
    assert!(text.contains("Submitted 3 of 3 files"), "{text}");
    assert!(text.contains("3 FINISHED"), "{text}");

    // Jobs of the tenant: list, show, cancel (refused: it has ended).
    let jobs = ctl(
        &env,
        &["--key", &key, "jobs", "list", "--status", "FINISHED"],
    )
    .await
    .unwrap();
    let some_job = summary["jobs"][0]["job_id"].as_str().unwrap();
    assert!(jobs.contains(some_job), "{jobs}");
    let shown = ctl_json(&env, &["--key", &key, "jobs", "show", some_job]).await;
    assert_eq!(shown["status"], "FINISHED");
    let refused = ctl(&env, &["--key", &key, "jobs", "cancel", some_job])
        .await
        .unwrap_err();
    assert!(refused.to_string().starts_with("409"), "{refused}");

    // The in-process workers announce themselves too: one process, two tasks.
    let view = eventually("the in-process workers to beat", || async {
        let s = ctl_json(&env, &["status"]).await;
        (s["workers_live"] == 1 && s["workers"][0]["jobs_done"] == 3).then_some(s)
    })
    .await;
    assert_eq!(view["workers"][0]["mode"], "dispatcher");
    assert_eq!(view["workers"][0]["concurrency"], 2);
    env.stop().await;
}

/// `/metrics` names tenants (their backlog): on the API port only the admin token reads
/// it; a tenant's key or no credentials get the JSON 401 and not a line of it. The
/// operator's scraper reads it without credentials on `TENANTRY_METRICS_ADDR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_on_the_api_port_need_the_admin_token() {
    let env = TestEnv::start_with(0, &[(config::ENV_METRICS_ADDR, "127.0.0.1:0")]).await;
    let key_a = env.tenant("acme").await;
    let key_b = env.tenant("bravo").await;
    env.submit(&key_b, json!({ "text": "Bravo's secret backlog." }))
        .await;
    let bravo_series = format!("{}{{tenant=\"bravo\"}}", tenantry::metrics::TENANT_BACKLOG);
    let operator_metrics = format!(
        "{}/metrics",
        env.metrics_base_url.as_deref().expect("a metrics listener")
    );
    // What is being protected is there for the operator: bravo's backlog by name.
    let (text, _) = scrape(&env, &operator_metrics, None).await;
    assert!(text.contains(&bravo_series), "{text}");
    let (text, _) = scrape(&env, &env.url("/metrics"), Some(ADMIN_TOKEN)).await;
    assert!(text.contains(&bravo_series), "{text}");

    // Another tenant's key, a wrong token, no credentials: refused, no series.
    for token in [Some(key_a.as_str()), Some("not-the-admin-token"), None] {
        let mut request = env.http.get(env.url("/metrics"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        let body = tenantry_tests::assert_error(r, 401, "unauthorized").await;
        assert!(!body.to_string().contains("bravo"), "{body}");
    }
    // The operator listener serves metrics and health, not the API.
    let base = env.metrics_base_url.clone().unwrap();
    let r = env
        .http
        .get(format!("{base}/v1/admin/tenants"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = env
        .http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    env.stop().await;
}
