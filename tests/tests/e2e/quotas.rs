//! Quotas that never overshoot: racing submissions through two dispatchers, storage
//! settled to measured bytes, reservations released on cancel and failure,
//! PROCESSING_JOBS and API_CALLS_PER_HOUR across the fleet, and the usage views.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tenantry::chunk::{ChunkParams, ChunkStrategy};
use tenantry::ingest::{self, DocumentRef};
use tenantry::tenancy::{DatabaseName, TenantId};
use tenantry_tests::{TestEnv, assert_error, eventually};
use tokio_util::sync::CancellationToken;

fn document(word: &str, sentences: usize) -> String {
    (0..sentences)
        .map(|i| format!("The {word} memo, item {i}, lists what the team shipped this week."))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn put_quotas(env: &TestEnv, tenant: &str, body: Value) -> reqwest::Response {
    env.admin_put(&format!("/v1/admin/tenants/{tenant}/quotas"), body)
        .await
}

async fn set_quotas(env: &TestEnv, tenant: &str, body: Value) -> Value {
    let r = put_quotas(env, tenant, body).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// (documents, storage_bytes, processing_jobs) of the tenant: its counters, and how many
/// of its jobs a worker is processing. (PROCESSING_JOBS is no longer a counter row: the
/// pump holds a tenant's jobs in flight to it, see `db::jobs::claim_backlog`.)
async fn counters(env: &TestEnv, tenant: &str) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT documents, storage_bytes,
                (SELECT count(*) FROM jobs j WHERE j.tenant_id = u.tenant_id AND j.status = 'PROCESSING')
           FROM tenant_usage u WHERE tenant_id = $1",
    )
    .bind(tenant)
    .fetch_one(env.pool())
    .await
    .unwrap()
}

async fn count_rows(env: &TestEnv, table: &str, tenant: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {table} WHERE tenant_id = $1");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .fetch_one(env.pool())
        .await
        .unwrap()
}

fn quota_of<'a>(view: &'a Value, kind: &str) -> &'a Value {
    view["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["resource_type"] == kind)
        .unwrap_or_else(|| panic!("{kind} in {view}"))
}

/// What the worker measures for a document: payload JSON plus vector bytes.
fn measured_bytes(tenant: &str, document_id: &str, text: &str, dimension: usize) -> i64 {
    let tenant = TenantId::parse(tenant).unwrap();
    let database = DatabaseName::default_name();
    let metadata = serde_json::Map::new();
    let doc = DocumentRef {
        tenant: &tenant,
        document_id: document_id.parse().unwrap(),
        database: &database,
        source_type: "text",
        metadata: &metadata,
    };
    let params = ChunkParams::new(4000, 200, ChunkStrategy::Sentence).unwrap();
    ingest::stored_bytes(&ingest::chunk_payloads(doc, text, &params), dimension)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_racing_submissions_through_two_dispatchers_accept_exactly_ten() {
    let env = TestEnv::start(4).await;
    let second = env.add_dispatcher(&[]).await;
    let key = env.tenant("acme").await;
    let view = set_quotas(&env, "acme", json!({ "DOCUMENTS": 10 })).await;
    assert_eq!(quota_of(&view, "DOCUMENTS")["limit"], 10);

    let requests = (0..60).map(|i| {
        let base = if i % 2 == 0 {
            env.url("/v1/jobs")
        } else {
            second.url("/v1/jobs")
        };
        let request = env
            .http
            .post(base)
            .bearer_auth(&key)
            .json(&json!({ "text": document(&format!("race{i}"), 20) }));
        async move {
            let r = request.send().await.expect("request");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    });
    let answers = futures::future::join_all(requests).await;
    let accepted: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 202)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(accepted.len(), 10, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != 202) {
        assert_eq!(*status, 403, "{body}");
        assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
        assert_eq!(body["error"]["resource"], "DOCUMENTS", "{body}");
        assert_eq!(body["error"]["limit"], 10, "{body}");
    }
    // Nothing written for the refused ones.
    assert_eq!(count_rows(&env, "jobs", "acme").await, 10);
    assert_eq!(count_rows(&env, "documents", "acme").await, 10);
    assert_eq!(counters(&env, "acme").await.0, 10);

    for body in &accepted {
        let view = env
            .wait_for_job(&key, body["job_id"].as_str().unwrap())
            .await;
        assert_eq!(view["status"], "FINISHED", "{view}");
    }
    let (documents, storage, processing) = counters(&env, "acme").await;
    assert_eq!((documents, processing), (10, 0));
    let stored: i64 = sqlx::query_scalar(
        "SELECT sum(stored_bytes)::bigint FROM documents WHERE tenant_id = 'acme'",
    )
    .fetch_one(env.pool())
    .await
    .unwrap();
    assert_eq!(storage, stored);

    let r = env.get(&key, "/v1/tenant/quotas").await;
    assert_eq!(r.status(), 200);
    let view: Value = r.json().await.unwrap();
    let docs = quota_of(&view, "DOCUMENTS");
    assert_eq!(docs["current_usage"], 10);
    assert_eq!(docs["percentage_used"], 100.0);
    assert_eq!(view["is_over_limit"], true);
    assert!(
        view["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().starts_with("DOCUMENTS limit reached")),
        "{view}"
    );
    // Still refused afterwards, through either dispatcher.
    let r = env
        .http
        .post(second.url("/v1/jobs"))
        .bearer_auth(&key)
        .json(&json!({ "text": "one more" }))
        .send()
        .await
        .unwrap();
    assert_error(r, 403, "quota_exceeded").await;
    second.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_settles_to_measured_bytes_and_refuses_what_does_not_fit() {
    let env = TestEnv::start(1).await;
    let key = env.tenant("acme").await;
    let dimension = env.state.embedder.dimension();
    let texts = [document("alpha", 30), document("beta", 150)];
    let mut expected = 0;
    for text in &texts {
        let accepted = env.submit(&key, json!({ "text": text })).await;
        let view = env
            .wait_for_job(&key, accepted["job_id"].as_str().unwrap())
            .await;
        assert_eq!(view["status"], "FINISHED", "{view}");
        expected += measured_bytes(
            "acme",
            accepted["document_id"].as_str().unwrap(),
            text,
            dimension,
        );
    }
    let (documents, storage, _) = counters(&env, "acme").await;
    assert_eq!(documents, 2);
    assert_eq!(storage, expected, "usage is the measured bytes");
    let reserved: i64 = sqlx::query_scalar(
        "SELECT sum(reserved_bytes)::bigint FROM documents WHERE tenant_id = 'acme' AND state = 'INGESTED'",
    )
    .fetch_one(env.pool())
    .await
    .unwrap();
    assert_eq!(
        reserved, expected,
        "each reservation settled to its measure"
    );

    let view: Value = env
        .get(&key, "/v1/tenant/quotas")
        .await
        .json()
        .await
        .unwrap();
    let storage_quota = quota_of(&view, "STORAGE_MB");
    assert_eq!(storage_quota["current_usage_bytes"], expected);
    assert_eq!(storage_quota["current_usage"], 1, "rounded up to whole MB");
    assert_eq!(storage_quota["limit"], 5000, "plan default");

    // A limit the usage is already over: the next document does not fit.
    let view = set_quotas(&env, "acme", json!({ "STORAGE_MB": 0 })).await;
    assert_eq!(view["is_over_limit"], true);
    let r = env
        .post(&key, "/v1/jobs", json!({ "text": document("gamma", 5) }))
        .await;
    let body = assert_error(r, 403, "quota_exceeded").await;
    assert_eq!(body["error"]["resource"], "STORAGE_MB");
    assert_eq!(count_rows(&env, "jobs", "acme").await, 2);
    assert_eq!(counters(&env, "acme").await, (2, expected, 0));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_and_failing_a_job_give_its_reservation_back() {
    // No workers yet: jobs wait on the broker, so the cancel cannot race a start.
    let env = TestEnv::start(0).await;
    let key = env.tenant("acme").await;
    let first = env
        .submit(&key, json!({ "text": document("first", 40) }))
        .await;
    let second = env
        .submit(&key, json!({ "text": document("second", 80) }))
        .await;
    let reserved = |doc: &Value| {
        let id: uuid::Uuid = doc["document_id"].as_str().unwrap().parse().unwrap();
        let pool = env.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT reserved_bytes FROM documents WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let (r1, r2) = (reserved(&first).await, reserved(&second).await);
    assert!(r1 > 0 && r2 > r1);
    // The pump publishes only an ACTIVE tenant's backlog: both jobs must be on the
    // broker before the tenant is made inactive below, or the second would stay in
    // the backlog and never reach the worker.
    eventually("both jobs to be published", || async {
        let unpublished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE tenant_id = 'acme' AND published_at IS NULL",
        )
        .fetch_one(env.pool())
        .await
        .ok()?;
        (unpublished == 0).then_some(())
    })
    .await;
    assert_eq!(counters(&env, "acme").await, (2, r1 + r2, 0));

    let r = env
        .http
        .delete(env.url(&format!("/v1/jobs/{}", first["job_id"].as_str().unwrap())))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["status"], "CANCELLED");
    assert_eq!(counters(&env, "acme").await, (1, r2, 0));

    // The tenant is made inactive behind the dispatcher's back; a worker started now
    // fails the queued job, which must give back its document and storage.
    sqlx::query("UPDATE tenants SET status = 'INACTIVE' WHERE id = 'acme'")
        .execute(env.pool())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let resources = tenantry_worker::Resources {
        settings: env.ids.settings(&[]),
        pool: env.pool().clone(),
        store: env.state.store.clone(),
        embedder: env.state.embedder.clone(),
        on_job_end: None,
        metrics: env.state.metrics.clone(),
        mode: tenantry_worker::heartbeat::Mode::InDispatcher,
        metrics_addr: None,
    };
    let workers = tokio::spawn(tenantry_worker::run_workers(resources, 1, stop.clone()));
    let job_id: uuid::Uuid = second["job_id"].as_str().unwrap().parse().unwrap();
    let (status, code): (String, Option<String>) = eventually("the job to fail", || async {
        let row: (String, Option<String>) =
            sqlx::query_as("SELECT status, error_code FROM jobs WHERE id = $1")
                .bind(job_id)
                .fetch_one(env.pool())
                .await
                .ok()?;
        (row.0 == "FAILED").then_some(row)
    })
    .await;
    assert_eq!(
        (status.as_str(), code.as_deref()),
        ("FAILED", Some("tenant_inactive"))
    );
    assert_eq!(counters(&env, "acme").await, (0, 0, 0));
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), workers).await;
    env.stop().await;
}

/// (started_at, finished_at) of every job of a tenant, by start.
async fn intervals(env: &TestEnv, tenant: &str) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    sqlx::query_as(
        "SELECT started_at, finished_at FROM jobs WHERE tenant_id = $1 AND status = 'FINISHED'
          ORDER BY started_at",
    )
    .bind(tenant)
    .fetch_all(env.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processing_jobs_limit_holds_across_workers_while_other_tenants_proceed() {
    let env = TestEnv::start(4).await;
    let slow = env.tenant("slow").await;
    let other = env.tenant("other").await;
    set_quotas(&env, "slow", json!({ "PROCESSING_JOBS": 1 })).await;
    let mut jobs = Vec::new();
    // Enough one-at-a-time work that the other tenant's six arrive while it runs.
    for i in 0..20 {
        let r = env
            .submit(&slow, json!({ "text": document(&format!("slow{i}"), 200) }))
            .await;
        jobs.push((slow.clone(), r));
    }
    for i in 0..6 {
        let r = env
            .submit(
                &other,
                json!({ "text": document(&format!("other{i}"), 200) }),
            )
            .await;
        jobs.push((other.clone(), r));
    }
    for (key, r) in &jobs {
        let view = env.wait_for_job(key, r["job_id"].as_str().unwrap()).await;
        assert_eq!(view["status"], "FINISHED", "{view}");
        // Waiting for a slot is nobody's failure: it never counts an attempt.
        assert_eq!(view["attempts"], 1, "{view}");
    }
    let slow_runs = intervals(&env, "slow").await;
    assert_eq!(slow_runs.len(), 20);
    for pair in slow_runs.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two jobs of a tenant with PROCESSING_JOBS=1 overlapped: {pair:?}"
        );
    }
    let other_runs = intervals(&env, "other").await;
    assert_eq!(other_runs.len(), 6);
    let slow_end = slow_runs.iter().map(|r| r.1).max().unwrap();
    let other_end = other_runs.iter().map(|r| r.1).max().unwrap();
    assert!(
        other_end < slow_end,
        "the other tenant finished while the limited one still waited for its slot"
    );
    // Both gave their slots back (the other tenant's limit is the plan's 5).
    assert_eq!(counters(&env, "slow").await.2, 0);
    assert_eq!(counters(&env, "other").await.2, 0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_calls_per_hour_hold_across_two_dispatchers() {
    let env = TestEnv::start(0).await;
    let second = env.add_dispatcher(&[]).await;
    let key = env.tenant("acme").await;
    set_quotas(&env, "acme", json!({ "API_CALLS_PER_HOUR": 20 })).await;
    let hour = || async {
        sqlx::query_scalar::<_, DateTime<Utc>>(
            "SELECT date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
        )
        .fetch_one(env.pool())
        .await
        .unwrap()
    };
    let hour_before = hour().await;

    let requests = (0..40).map(|i| {
        let url = if i % 2 == 0 {
            env.url("/v1/jobs")
        } else {
            second.url("/v1/jobs")
        };
        let request = env.http.get(url).bearer_auth(&key);
        async move {
            let r = request.send().await.expect("request");
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (status, retry_after, r.json::<Value>().await.unwrap())
        }
    });
    let answers = futures::future::join_all(requests).await;
    if hour().await != hour_before {
        // The counter starts over each clock hour; a run across the boundary proves nothing.
        eprintln!("skipped: the run crossed a clock hour");
        second.stop().await;
        env.stop().await;
        return;
    }
    let ok = answers.iter().filter(|(s, _, _)| *s == 200).count();
    assert_eq!(ok, 20, "{answers:?}");
    let secs_to_next_hour = (hour_before + chrono::Duration::hours(1) - Utc::now()).num_seconds();
    for (status, retry_after, body) in answers.iter().filter(|(s, _, _)| *s != 200) {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
        assert_eq!(body["error"]["resource"], "API_CALLS_PER_HOUR", "{body}");
        let after = retry_after.expect("Retry-After") as i64;
        assert!(
            (secs_to_next_hour - 5..=secs_to_next_hour + 5).contains(&after),
            "Retry-After {after} s, next hour in {secs_to_next_hour} s"
        );
    }
    let counted: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(calls), 0)::bigint FROM api_calls WHERE tenant_id = 'acme'",
    )
    .fetch_one(env.pool())
    .await
    .unwrap();
    assert_eq!(counted, 20);

    // Every tenant call counts, the views too; the admin still sees the tenant.
    let r = env.get(&key, "/v1/tenant/quotas").await;
    assert_eq!(r.status(), 429);
    let r = env.admin_get("/v1/admin/tenants/acme/quotas").await;
    assert_eq!(r.status(), 200);
    let view: Value = r.json().await.unwrap();
    assert_eq!(quota_of(&view, "API_CALLS_PER_HOUR")["current_usage"], 20);
    assert_eq!(view["is_over_limit"], true);

    // Raising the limit lets exactly the difference through.
    set_quotas(&env, "acme", json!({ "API_CALLS_PER_HOUR": 23 })).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(env.get(&key, "/v1/jobs").await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    second.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_overrides_are_validated_and_audited() {
    let env = TestEnv::start(0).await;
    env.tenant("acme").await;
    for (body, field) in [
        (json!({ "DOCUMENT": 5 }), "DOCUMENT"),
        (json!({ "DOCUMENTS": -1 }), "DOCUMENTS"),
        (json!({ "STORAGE_MB": 1.5 }), "STORAGE_MB"),
        (json!({ "API_CALLS_PER_HOUR": "100" }), "API_CALLS_PER_HOUR"),
        (json!({ "PROCESSING_JOBS": 0 }), "PROCESSING_JOBS"),
        (json!({ "VECTOR_COLLECTIONS": null }), "VECTOR_COLLECTIONS"),
        (json!([1, 2]), "body"),
    ] {
        let r = put_quotas(&env, "acme", body.clone()).await;
        let err = assert_error(r, 422, "invalid_value").await;
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
    }
    let r = put_quotas(&env, "nobody", json!({ "DOCUMENTS": 1 })).await;
    assert_error(r, 404, "not_found").await;
    let r = env
        .http
        .put(env.url("/v1/admin/tenants/acme/quotas"))
        .bearer_auth("not-the-admin")
        .json(&json!({ "DOCUMENTS": 1 }))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "unauthorized").await;

    let view = set_quotas(
        &env,
        "acme",
        json!({ "DOCUMENTS": 3, "VECTOR_COLLECTIONS": 2 }),
    )
    .await;
    assert_eq!(quota_of(&view, "DOCUMENTS")["limit"], 3);
    assert_eq!(quota_of(&view, "VECTOR_COLLECTIONS")["limit"], 2);
    assert_eq!(quota_of(&view, "STORAGE_MB")["limit"], 5000);
    // PUT replaces: a kind left out goes back to the plan's default.
    let view = set_quotas(&env, "acme", json!({ "DOCUMENTS": 4 })).await;
    assert_eq!(quota_of(&view, "VECTOR_COLLECTIONS")["limit"], 5);
    let audit: Vec<(Option<Value>, Option<Value>)> = sqlx::query_as(
        "SELECT before, after FROM audit_log WHERE tenant_id = 'acme' AND action = 'tenant.quotas.set' ORDER BY id",
    )
    .fetch_all(env.pool())
    .await
    .unwrap();
    assert_eq!(audit.len(), 2, "only the accepted changes are audited");
    assert_eq!(audit[0].0, Some(json!({})));
    assert_eq!(
        audit[0].1,
        Some(json!({ "DOCUMENTS": 3, "VECTOR_COLLECTIONS": 2 }))
    );
    assert_eq!(audit[1].1, Some(json!({ "DOCUMENTS": 4 })));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_views_come_from_real_records() {
    let env = TestEnv::start(2).await;
    let key = env.tenant("acme").await;
    let idle = env.tenant("globex").await;
    let mut chunks = 0;
    let mut durations_ms = Vec::new();
    for i in 0..3 {
        let r = env
            .submit(
                &key,
                json!({ "text": document(&format!("usage{i}"), 100 * (i + 1)) }),
            )
            .await;
        let view = env.wait_for_job(&key, r["job_id"].as_str().unwrap()).await;
        assert_eq!(view["status"], "FINISHED");
        chunks += view["chunks"].as_i64().unwrap();
        durations_ms.push(view["duration_ms"].as_i64().unwrap());
    }
    for bad in ["0", "367", "abc", "-3", "1.5"] {
        let r = env.get(&key, &format!("/v1/tenant/usage?days={bad}")).await;
        let err = assert_error(r, 422, "invalid_value").await;
        assert_eq!(err["error"]["field"], "days");
    }
    let r = env.get(&key, "/v1/tenant/usage?days=7").await;
    assert_eq!(r.status(), 200);
    let stats: Value = r.json().await.unwrap();
    let calls: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(calls), 0)::bigint FROM api_calls WHERE tenant_id = 'acme'",
    )
    .fetch_one(env.pool())
    .await
    .unwrap();
    let (_, storage, _) = counters(&env, "acme").await;
    assert_eq!(stats["tenant_id"], "acme");
    assert_eq!(stats["documents_processed"], 3);
    assert_eq!(stats["successful_jobs"], 3);
    assert_eq!(stats["failed_jobs"], 0);
    assert_eq!(stats["total_chunks_created"], chunks);
    assert_eq!(stats["api_calls_made"], calls, "{stats}");
    assert!(calls > 3 + 5, "submits, refused queries and this call");
    assert_eq!(stats["storage_used_bytes"], storage);
    let total_ms: i64 = durations_ms.iter().sum();
    let busy = stats["processing_time_seconds"].as_i64().unwrap();
    assert!(
        (busy - (total_ms as f64 / 1000.0).round() as i64).abs() <= 1,
        "{busy} s vs {durations_ms:?}"
    );
    let average = stats["average_job_duration"].as_f64().unwrap();
    assert!(
        (average - total_ms as f64 / 3000.0).abs() < 0.01,
        "{average} vs {durations_ms:?}"
    );
    let start: DateTime<Utc> = stats["period_start"].as_str().unwrap().parse().unwrap();
    let end: DateTime<Utc> = stats["period_end"].as_str().unwrap().parse().unwrap();
    assert_eq!((end - start).num_days(), 7);

    let r = env.get(&idle, "/v1/tenant/usage").await;
    let stats: Value = r.json().await.unwrap();
    assert_eq!(stats["documents_processed"], 0);
    assert_eq!(stats["api_calls_made"], 1, "this very call");

    let r = env.admin_get("/v1/admin/usage?days=30").await;
    assert_eq!(r.status(), 200);
    let all: Value = r.json().await.unwrap();
    let tenants = all["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 2);
    assert_eq!(tenants[0]["tenant_id"], "acme");
    assert_eq!(tenants[0]["documents_processed"], 3);
    assert_eq!(tenants[0]["storage_used_bytes"], storage);
    assert_eq!(
        quota_of(&tenants[0]["quotas"], "DOCUMENTS")["current_usage"],
        3
    );
    assert_eq!(tenants[1]["tenant_id"], "globex");
    let r = env.admin_get("/v1/admin/usage?limit=1").await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["tenants"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_cursor"], "acme");
    let r = env.admin_get("/v1/admin/usage?limit=1&cursor=acme").await;
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["tenants"][0]["tenant_id"], "globex");
    let r = env.get(&key, "/v1/admin/usage").await;
    assert_eq!(r.status(), 401);
    env.stop().await;
}

/// A batch is recorded in one transaction, yet each document is accepted or refused on
/// its own: an invalid one and one over the DOCUMENTS quota are refused with their own
/// errors, leave nothing behind, and the others are recorded, reserved and processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_refuses_documents_one_by_one_and_keeps_the_rest() {
    let env = TestEnv::start(2).await;
    let key = env.tenant("batcher").await;
    set_quotas(&env, "batcher", json!({ "DOCUMENTS": 3 })).await;
    let documents = json!({ "documents": [
        { "text": document("first", 3) },
        { "text": "" },
        { "text": document("second", 3) },
        { "text": document("third", 3) },
        { "text": document("fourth", 3) },
    ]});
    let r = env.post(&key, "/v1/jobs/batch", documents).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["accepted"], 3, "{body}");
    assert_eq!(body["rejected"], 2, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[1]["error"]["status"], 422, "{body}");
    assert_eq!(results[4]["error"]["code"], "quota_exceeded", "{body}");
    assert_eq!(results[4]["error"]["status"], 403, "{body}");
    let mut jobs = Vec::new();
    for i in [0, 2, 3] {
        assert_eq!(results[i]["index"], i, "{body}");
        jobs.push(results[i]["job_id"].as_str().unwrap().to_owned());
    }
    for job in &jobs {
        let view = env.wait_for_job(&key, job).await;
        assert_eq!(view["status"], "FINISHED", "{view}");
    }
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM documents WHERE tenant_id = 'batcher'")
            .fetch_one(env.pool())
            .await
            .unwrap();
    assert_eq!(rows, 3, "the refused documents left no rows");
    assert_eq!(counters(&env, "batcher").await.0, 3);
    env.stop().await;
}
