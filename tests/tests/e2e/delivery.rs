//! Delivery guarantees: retries with backoff against a real failing embedder, dead
//! letters and their replay, poison and forged messages on the jobs queue, hostile
//! HTTP input, idempotency under concurrency and redelivery, unroutable publishes.
//! Outages through a cutting proxy are in `delivery/outages.rs`, the fleet's binaries
//! under SIGTERM and SIGKILL in `delivery/processes.rs`, and SIGKILLs at each point of
//! the embedded store's checkpoint and recovery in `delivery/checkpoints.rs`.

mod checkpoints;
pub(crate) mod faults;
mod outages;
mod processes;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tenantry::broker::{Outgoing, Topology};
use tenantry::config;
use tenantry::job::Signer;
use tenantry::tenancy::{DatabaseName, IsolationMode, Namespace, TenantId};
use tenantry_tests::{SIGNING_SECRET, TestEnv, assert_error, eventually};
use uuid::Uuid;

use faults::{EmbedServer, Reply, publish_raw, raw};

pub(crate) fn ns(prefix: &str, tenant: &str) -> Namespace {
    Namespace::new(
        prefix,
        &TenantId::parse(tenant).unwrap(),
        &DatabaseName::default_name(),
        IsolationMode::Collection,
    )
}

pub(crate) fn refs<'a>(settings: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    settings.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// (documents, storage bytes) the tenant's usage counters hold.
pub(crate) async fn usage(env: &TestEnv, tenant: &str) -> (i64, i64) {
    sqlx::query_as("SELECT documents, storage_bytes FROM tenant_usage WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(env.pool())
        .await
        .unwrap()
}

/// Points in the tenant's default namespace (0 if it was never created).
pub(crate) async fn points(env: &TestEnv, tenant: &str) -> u64 {
    env.state
        .store
        .count(&ns(&env.ids.prefix, tenant), None)
        .await
        .unwrap_or(0)
}

async fn dead_letters(env: &TestEnv, query: &str) -> Vec<Value> {
    let r = env
        .admin_get(&format!("/v1/admin/dead-letters{query}"))
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["dead_letters"].as_array().unwrap().clone()
}

fn outcomes(view: &Value) -> Vec<String> {
    view["attempt_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap().to_owned())
        .collect()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

/// A well-formed version-1 job message body.
fn message(tenant: &str, job_id: Uuid, document_id: Uuid, text: &str) -> Value {
    json!({
        "schema_version": 1,
        "job_id": job_id,
        "tenant_id": tenant,
        "document_id": document_id,
        "database": "default",
        "source_type": "text",
        "text": text,
        "metadata": {},
        "options": {},
        "priority": "normal",
        "submitted_at": "2026-11-27T08:00:00Z",
    })
}

/// A message signed with the fleet's own secret.
fn signed(body: Vec<u8>) -> Outgoing {
    let sig = Signer::new(SIGNING_SECRET.as_bytes()).sign(&body);
    raw(body, Some(sig))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retryable_failures_back_off_and_the_job_finishes() {
    // A real HTTP embeddings server that answers 500 twice, then works.
    let server = EmbedServer::start(Arc::new(|n, _| {
        if n < 2 {
            Reply::Status(500)
        } else {
            Reply::Vectors
        }
    }))
    .await;
    let mut settings = server.settings();
    settings.push(("TENANTRY_MAX_ATTEMPTS", "4".into()));
    let env = TestEnv::start_with(1, &refs(&settings)).await;
    let key = env.tenant("flaky").await;

    let accepted = env
        .submit(
            &key,
            json!({ "text": "A short document whose embedder fails twice before it works." }),
        )
        .await;
    let view = env
        .wait_for_job(&key, accepted["job_id"].as_str().unwrap())
        .await;
    assert_eq!(view["status"], "FINISHED", "{view}");
    assert_eq!(view["attempts"], 3, "{view}");
    assert!(view["error"].is_null(), "{view}");
    assert_eq!(outcomes(&view), ["RETRY", "RETRY", "FINISHED"], "{view}");
    let history = view["attempt_history"].as_array().unwrap();
    for (i, attempt) in history.iter().enumerate() {
        assert_eq!(attempt["attempt"], i as i64 + 1);
        assert!(attempt["worker_id"].as_str().is_some_and(|w| !w.is_empty()));
        assert!(time(&attempt["ended_at"]) >= time(&attempt["started_at"]));
    }
    for failed in &history[..2] {
        assert_eq!(failed["error_code"], "embedder_unavailable", "{failed}");
        assert!(
            failed["error"].as_str().unwrap().contains("500"),
            "{failed}"
        );
    }
    // Backoff: ~1 s before the second attempt, ~5 s before the third (±20 % jitter).
    let gap =
        |a: &Value, b: &Value| (time(&b["started_at"]) - time(&a["ended_at"])).num_milliseconds();
    let (first_wait, second_wait) = (gap(&history[0], &history[1]), gap(&history[1], &history[2]));
    assert!(
        (750..3000).contains(&first_wait),
        "first wait {first_wait} ms"
    );
    assert!(
        (3900..9000).contains(&second_wait),
        "second wait {second_wait} ms"
    );
    assert_eq!(server.request_count(), 3);

    let chunks = view["chunks"].as_u64().unwrap();
    assert_eq!(points(&env, "flaky").await, chunks);
    assert_eq!(usage(&env, "flaky").await.0, 1);
    assert!(dead_letters(&env, "?tenant=flaky").await.is_empty());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exhausted_and_permanent_failures_are_dead_lettered_then_replayed() {
    // Down for everything, and refusing (400) texts that mention "refused".
    let server = EmbedServer::start(Arc::new(|_, text| {
        if text.contains("refused") {
            Reply::Status(400)
        } else {
            Reply::Status(503)
        }
    }))
    .await;
    let mut settings = server.settings();
    settings.push(("TENANTRY_MAX_ATTEMPTS", "3".into()));
    // One job per message, so each job's embedder calls are its own: the count below
    // is per job, not per however the pump happened to group the two.
    settings.push((config::ENV_JOBS_PER_MESSAGE, "1".into()));
    let env = TestEnv::start_with(1, &refs(&settings)).await;
    let key = env.tenant("doomed").await;

    let down = env
        .submit(
            &key,
            json!({ "text": "This text meets an embedder that is always down." }),
        )
        .await;
    let refused = env
        .submit(
            &key,
            json!({ "text": "This text is refused by the embedder for good." }),
        )
        .await;
    let down_id = down["job_id"].as_str().unwrap().to_owned();
    let refused_id = refused["job_id"].as_str().unwrap().to_owned();

    let view = env.wait_for_job(&key, &down_id).await;
    assert_eq!(view["status"], "FAILED", "{view}");
    assert_eq!(view["attempts"], 3);
    assert_eq!(view["error"]["code"], "embedder_unavailable");
    let message = view["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("503") && message.contains("after 3 attempts"),
        "{message}"
    );
    assert_eq!(outcomes(&view), ["RETRY", "RETRY", "FAILED"]);

    // A permanent failure is not retried.
    let view = env.wait_for_job(&key, &refused_id).await;
    assert_eq!(view["status"], "FAILED", "{view}");
    assert_eq!(view["attempts"], 1);
    assert_eq!(view["error"]["code"], "embedder_refused");
    assert_eq!(outcomes(&view), ["FAILED"]);
    assert_eq!(server.request_count(), 4);

    // Both are dead letters of the tenant, with their reasons; nothing is held.
    let letters = eventually("two dead letters", || async {
        let l = dead_letters(&env, "?tenant=doomed").await;
        (l.len() == 2).then_some(l)
    })
    .await;
    let letter = |job: &str| {
        letters
            .iter()
            .find(|l| l["job_id"] == job)
            .unwrap_or_else(|| panic!("no dead letter for {job}: {letters:?}"))
            .clone()
    };
    let (down_letter, refused_letter) = (letter(&down_id), letter(&refused_id));
    assert!(
        down_letter["reason"]
            .as_str()
            .unwrap()
            .starts_with("embedder_unavailable:")
    );
    assert!(
        refused_letter["reason"]
            .as_str()
            .unwrap()
            .starts_with("embedder_refused:")
    );
    assert!(down_letter["replayed_at"].is_null());
    assert_eq!(down_letter["tenant_id"], "doomed");
    assert_eq!(usage(&env, "doomed").await, (0, 0));
    assert_eq!(points(&env, "doomed").await, 0);

    // The embedder recovers; an admin replays both through the outbox.
    server
        .healthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for letter in [&down_letter, &refused_letter] {
        let id = letter["id"].as_str().unwrap();
        let r = env
            .admin_post(&format!("/v1/admin/dead-letters/{id}/replay"), json!({}))
            .await;
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "PENDING");
        assert_eq!(body["job_id"], letter["job_id"]);
    }
    let mut chunks = 0;
    for job in [&down_id, &refused_id] {
        let view = env.wait_for_job(&key, job).await;
        assert_eq!(view["status"], "FINISHED", "{view}");
        assert_eq!(
            view["attempts"], 1,
            "a replay gets its attempts back: {view}"
        );
        assert!(view["error"].is_null());
        assert_eq!(outcomes(&view).last().unwrap(), "FINISHED");
        assert!(outcomes(&view).contains(&"REPLAYED".to_owned()));
        chunks += view["chunks"].as_u64().unwrap();
    }
    assert_eq!(points(&env, "doomed").await, chunks);
    assert_eq!(usage(&env, "doomed").await.0, 2);
    assert!(
        dead_letters(&env, "?tenant=doomed")
            .await
            .iter()
            .all(|l| !l["replayed_at"].is_null())
    );

    // Replaying again, or what does not exist, is refused precisely.
    let again = env
        .admin_post(
            &format!(
                "/v1/admin/dead-letters/{}/replay",
                down_letter["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_error(again, 409, "already_replayed").await;
    let missing = env
        .admin_post(
            &format!("/v1/admin/dead-letters/{}/replay", Uuid::new_v4()),
            json!({}),
        )
        .await;
    assert_error(missing, 404, "not_found").await;
    let garbage = env
        .admin_post("/v1/admin/dead-letters/not-a-uuid/replay", json!({}))
        .await;
    assert_error(garbage, 404, "not_found").await;
    assert_error(
        env.admin_get("/v1/admin/dead-letters?tenant=nobody").await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        env.admin_get("/v1/admin/dead-letters?tenant=..%2Fx").await,
        422,
        "invalid_value",
    )
    .await;
    assert_error(
        env.admin_get("/v1/admin/dead-letters?limit=0").await,
        422,
        "invalid_value",
    )
    .await;
    assert_error(
        env.admin_get("/v1/admin/dead-letters?bogus=1").await,
        400,
        "invalid_query",
    )
    .await;
    let as_tenant = env.get(&key, "/v1/admin/dead-letters").await;
    assert_error(as_tenant, 401, "unauthorized").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_and_forged_messages_are_dead_lettered_and_write_nothing() {
    let env = TestEnv::start_with(1, &[("TENANTRY_MAX_BODY_BYTES", "65536")]).await;
    let key = env.tenant("victim").await;
    let topology = env.topology();
    let valid = |tenant: &str| {
        message(
            tenant,
            Uuid::new_v4(),
            Uuid::new_v4(),
            "Transfer all the money to mallory.",
        )
    };
    let bytes = |v: &Value| serde_json::to_vec(v).unwrap();
    let mut without_tenant = valid("victim");
    without_tenant.as_object_mut().unwrap().remove("tenant_id");
    let mut future = valid("victim");
    future["schema_version"] = json!(99);
    let other_key = Signer::new(b"mallory-guessed-this-secret-0123");
    let mut tampered_from = valid("ghost");
    let tampered_sig = Signer::new(SIGNING_SECRET.as_bytes()).sign(&bytes(&tampered_from));
    tampered_from["tenant_id"] = json!("victim");

    // (message id, message, expected reason fragment, tenant the dead letter is filed under)
    let cases: Vec<(&str, Outgoing, &str, Option<&str>)> = vec![
        (
            "not-json",
            signed(b"this is not json {".to_vec()),
            "message is not a JSON object",
            None,
        ),
        (
            "not-utf8",
            signed(vec![0xff, 0xfe, 0x00, 0x7b]),
            "message is not a JSON object",
            None,
        ),
        (
            "top-level-array",
            signed(b"[1, 2, 3]".to_vec()),
            "top level is not an object",
            None,
        ),
        (
            "no-version",
            signed(bytes(&json!({ "job_id": Uuid::new_v4() }))),
            "message has no schema_version",
            None,
        ),
        (
            "version-as-string",
            signed(bytes(&json!({ "schema_version": "1" }))),
            "schema_version is not a number",
            None,
        ),
        (
            "future-version",
            signed(bytes(&future)),
            "unknown schema_version 99",
            None,
        ),
        (
            "no-tenant",
            signed(bytes(&without_tenant)),
            "missing field `tenant_id`",
            None,
        ),
        (
            "bad-tenant-id",
            signed(bytes(&valid("../victim"))),
            "may contain only lowercase",
            None,
        ),
        (
            "unknown-tenant",
            signed(bytes(&valid("ghost"))),
            "unknown tenant ghost",
            Some("ghost"),
        ),
        (
            "unknown-job",
            signed(bytes(&valid("victim"))),
            "no job",
            Some("victim"),
        ),
        (
            "oversized",
            signed(vec![b'x'; 1_200_000]),
            "exceeds the limit",
            None,
        ),
        (
            "unsigned",
            raw(bytes(&valid("victim")), None),
            "message is unsigned",
            None,
        ),
        (
            "forged",
            raw(
                bytes(&valid("victim")),
                Some(other_key.sign(&bytes(&valid("victim")))),
            ),
            "signature does not match",
            None,
        ),
        (
            "tampered",
            raw(bytes(&tampered_from), Some(tampered_sig)),
            "signature does not match",
            None,
        ),
        (
            "bad-scheme",
            raw(bytes(&valid("victim")), Some("sha256=00ff".into())),
            "signature does not match",
            None,
        ),
        (
            "not-hex",
            raw(bytes(&valid("victim")), Some("v1=zz".into())),
            "signature does not match",
            None,
        ),
    ];
    let expected: HashMap<String, (&str, Option<&str>)> = cases
        .iter()
        .map(|(id, _, reason, tenant)| ((*id).to_owned(), (*reason, *tenant)))
        .collect();
    let messages = cases
        .into_iter()
        .map(|(id, mut m, _, _)| {
            m.message_id = Some(id.to_owned());
            // The operators' tenant header is never believed.
            m.tenant = Some("victim".into());
            m
        })
        .collect();
    publish_raw(&topology, messages).await;

    // The worker keeps serving: a real job after the poison finishes.
    let accepted = env
        .submit(
            &key,
            json!({ "text": "An honest document from the victim tenant." }),
        )
        .await;
    let view = env
        .wait_for_job(&key, accepted["job_id"].as_str().unwrap())
        .await;
    assert_eq!(view["status"], "FINISHED", "{view}");

    let letters = eventually("every poison message dead-lettered", || async {
        let l = dead_letters(&env, "").await;
        (l.len() >= expected.len()).then_some(l)
    })
    .await;
    assert_eq!(letters.len(), expected.len(), "{letters:#?}");
    for letter in &letters {
        let id = letter["message_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{letter}"));
        let (reason, tenant) = expected[id];
        assert!(
            letter["reason"].as_str().unwrap().contains(reason),
            "{id}: {letter}"
        );
        assert_eq!(letter["tenant_id"].as_str(), tenant, "{id}: {letter}");
    }

    // Nothing was written for anyone: one tenant, one job, its points and usage only.
    let chunks = view["chunks"].as_u64().unwrap();
    assert_eq!(points(&env, "victim").await, chunks);
    assert_eq!(usage(&env, "victim").await.0, 1);
    let counts: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tenants), (SELECT count(*) FROM jobs),
                (SELECT count(*) FROM documents), (SELECT count(*) FROM tenant_usage)",
    )
    .fetch_one(env.pool())
    .await
    .unwrap();
    assert_eq!(counts, (1, 1, 1, 1));
    assert_eq!(env.queue_depth(&topology.jobs_queue()).await, 0);

    // Unattributed dead letters cannot be replayed into anyone's namespace.
    for id in ["forged", "unknown-job"] {
        let letter = letters.iter().find(|l| l["message_id"] == id).unwrap();
        let r = env
            .admin_post(
                &format!(
                    "/v1/admin/dead-letters/{}/replay",
                    letter["id"].as_str().unwrap()
                ),
                json!({}),
            )
            .await;
        assert_error(r, 409, "not_replayable").await;
    }
    let filed: Vec<Value> = dead_letters(&env, "?tenant=victim").await;
    assert_eq!(
        filed.len(),
        1,
        "only the signed unknown-job message is the victim's"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_repeats_make_one_job_and_redelivery_doubles_nothing() {
    let env = TestEnv::start(1).await;
    let key = env.tenant("repeat").await;
    let text = "One document, submitted many times at once, indexed once.";

    let requests = (0..16).map(|_| {
        env.http
            .post(env.url("/v1/jobs"))
            .bearer_auth(&key)
            .header("idempotency-key", "order-42")
            .json(&json!({ "text": text }))
            .send()
    });
    let answers = futures_join_all(requests).await;
    let mut job_ids = std::collections::HashSet::new();
    let mut replayed = 0;
    for r in answers {
        let r = r.unwrap();
        assert_eq!(r.status(), 202);
        if r.headers().get("idempotent-replayed").is_some() {
            replayed += 1;
        }
        let body: Value = r.json().await.unwrap();
        job_ids.insert(body["job_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(job_ids.len(), 1, "one job for one key: {job_ids:?}");
    assert_eq!(replayed, 15);
    let job_id = job_ids.into_iter().next().unwrap();
    let view = env.wait_for_job(&key, &job_id).await;
    assert_eq!(view["status"], "FINISHED");
    let chunks = view["chunks"].as_u64().unwrap();
    let before = usage(&env, "repeat").await;
    assert_eq!(before.0, 1);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!(stored, 1);

    // The same signed message delivered twice more (a publish retried after a lost
    // confirm, a redelivery after a crash): acknowledged, nothing counted again.
    let document_id: Uuid = view["document_id"].as_str().unwrap().parse().unwrap();
    let body = serde_json::to_vec(&message(
        "repeat",
        job_id.parse().unwrap(),
        document_id,
        text,
    ))
    .unwrap();
    publish_raw(&env.topology(), vec![signed(body.clone()), signed(body)]).await;
    // One worker consumes in order: a job submitted after them ends after them.
    let barrier = env
        .submit(&key, json!({ "text": "A second, different document." }))
        .await;
    let barrier = env
        .wait_for_job(&key, barrier["job_id"].as_str().unwrap())
        .await;
    assert_eq!(barrier["status"], "FINISHED");

    let again = env.wait_for_job(&key, &job_id).await;
    assert_eq!(again["attempts"], 1, "{again}");
    assert_eq!(outcomes(&again), ["FINISHED"]);
    let after = usage(&env, "repeat").await;
    let barrier_bytes: i64 = sqlx::query_scalar("SELECT stored_bytes FROM documents WHERE id = $1")
        .bind(
            barrier["document_id"]
                .as_str()
                .unwrap()
                .parse::<Uuid>()
                .unwrap(),
        )
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!(after, (2, before.1 + barrier_bytes));
    let doc_points = env
        .state
        .store
        .count(&ns(&env.ids.prefix, "repeat"), Some(document_id))
        .await
        .unwrap();
    assert_eq!(doc_points, chunks);
    assert_eq!(
        points(&env, "repeat").await,
        chunks + barrier["chunks"].as_u64().unwrap()
    );
    assert!(dead_letters(&env, "").await.is_empty());
    env.stop().await;
}

/// Two deliveries of one job can land in one start batch (the pump publishes a round
/// again when its commit was lost to an outage): the job starts once, the other
/// delivery is told it is held, and neither is mistaken for a job that does not exist
/// (which would dead-letter it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_twice_in_one_start_batch_starts_once_and_is_never_unknown() {
    use tenantry::db::jobs::{StartOutcome, start_many};
    use tenantry::job::JobStatus;

    let env = TestEnv::start(0).await;
    let key = env.tenant("twice").await;
    let accepted = env
        .submit(&key, json!({ "text": "Delivered twice." }))
        .await;
    let job: Uuid = accepted["job_id"].as_str().unwrap().parse().unwrap();
    let tenant = TenantId::parse("twice").unwrap();
    let stranger = Uuid::new_v4();
    let batch = [
        (tenant.clone(), job),
        (tenant.clone(), stranger),
        (tenant.clone(), job),
    ];
    let outcomes = start_many(env.pool(), &batch, "test-worker").await.unwrap();
    assert!(
        matches!(&outcomes[0], StartOutcome::Started(j) if j.doc.job_id == job && j.attempt == 1),
        "{outcomes:?}"
    );
    assert!(matches!(outcomes[1], StartOutcome::Unknown), "{outcomes:?}");
    assert!(
        matches!(
            outcomes[2],
            StartOutcome::AlreadyDone(JobStatus::Processing)
        ),
        "{outcomes:?}"
    );
    let (status, attempts, history): (String, i32, i64) = sqlx::query_as(
        "SELECT status, attempts, (SELECT count(*) FROM job_attempts a WHERE a.job_id = j.id)
           FROM jobs j WHERE id = $1",
    )
    .bind(job)
    .fetch_one(env.pool())
    .await
    .unwrap();
    assert_eq!((status.as_str(), attempts, history), ("PROCESSING", 1, 1));
    env.stop().await;
}

async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_http_input_gets_precise_4xx_never_500() {
    let env = TestEnv::start_with(1, &[("TENANTRY_MAX_BODY_BYTES", "150000")]).await;
    let key = env.tenant("hostile").await;
    let jobs = env.url("/v1/jobs");
    let raw_post = |body: Vec<u8>, content_type: Option<&str>| {
        let mut r = env.http.post(&jobs).bearer_auth(&key).body(body);
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        r
    };
    let json_ct = Some("application/json");
    // (what, request, status, code)
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "not JSON",
            raw_post(b"hello".to_vec(), json_ct),
            400,
            "malformed_json",
        ),
        (
            "truncated",
            raw_post(b"{\"text\": \"abc\"".to_vec(), json_ct),
            400,
            "malformed_json",
        ),
        (
            "invalid UTF-8",
            raw_post(b"{\"text\": \"\xff\xfe\"}".to_vec(), json_ct),
            400,
            "malformed_json",
        ),
        (
            "lone surrogate",
            raw_post(br#"{"text": "\ud800 alone"}"#.to_vec(), json_ct),
            400,
            "malformed_json",
        ),
        (
            "trailing garbage",
            raw_post(br#"{"text": "x"} {"#.to_vec(), json_ct),
            400,
            "malformed_json",
        ),
        (
            "deep nesting",
            raw_post(
                format!(
                    "{{\"text\":\"x\",\"metadata\":{{\"a\":{}1{}}}}}",
                    "[".repeat(300),
                    "]".repeat(300)
                )
                .into_bytes(),
                json_ct,
            ),
            400,
            "malformed_json",
        ),
        (
            "top-level array",
            raw_post(b"[1]".to_vec(), json_ct),
            422,
            "invalid_value",
        ),
        (
            "text is a number",
            raw_post(br#"{"text": 42}"#.to_vec(), json_ct),
            422,
            "invalid_value",
        ),
        (
            "text missing",
            raw_post(br#"{"source_type": "text"}"#.to_vec(), json_ct),
            422,
            "invalid_value",
        ),
        (
            "text null",
            raw_post(br#"{"text": null}"#.to_vec(), json_ct),
            422,
            "invalid_value",
        ),
        (
            "unknown field",
            raw_post(br#"{"text": "x", "tenant_id": "other"}"#.to_vec(), json_ct),
            422,
            "invalid_value",
        ),
        (
            "NUL in text",
            raw_post(br#"{"text": "a\u0000b"}"#.to_vec(), json_ct),
            422,
            "invalid_value",
        ),
        (
            "NUL in metadata",
            raw_post(
                br#"{"text": "x", "metadata": {"k": "a\u0000"}}"#.to_vec(),
                json_ct,
            ),
            422,
            "invalid_value",
        ),
        (
            "metadata not object",
            raw_post(br#"{"text": "x", "metadata": [1]}"#.to_vec(), json_ct),
            422,
            "invalid_value",
        ),
        (
            "chunk size out of range",
            raw_post(
                br#"{"text": "x", "options": {"chunk_size": 99999999}}"#.to_vec(),
                json_ct,
            ),
            422,
            "invalid_value",
        ),
        (
            "negative overlap",
            raw_post(
                br#"{"text": "x", "options": {"chunk_overlap": -1}}"#.to_vec(),
                json_ct,
            ),
            422,
            "invalid_value",
        ),
        (
            "unknown option",
            raw_post(
                br#"{"text": "x", "options": {"turbo": true}}"#.to_vec(),
                json_ct,
            ),
            422,
            "invalid_value",
        ),
        (
            "bad priority",
            raw_post(
                br#"{"text": "x", "priority": "urgent!!"}"#.to_vec(),
                json_ct,
            ),
            422,
            "invalid_value",
        ),
        (
            "bad database",
            raw_post(
                br#"{"text": "x", "database": "Robert'); DROP TABLE jobs;--"}"#.to_vec(),
                json_ct,
            ),
            422,
            "invalid_value",
        ),
        (
            "bad source type",
            raw_post(
                br#"{"text": "x", "source_type": "<script>"}"#.to_vec(),
                json_ct,
            ),
            422,
            "invalid_value",
        ),
        (
            "body too large",
            raw_post(
                format!("{{\"text\": \"{}\"}}", "a".repeat(200_000)).into_bytes(),
                json_ct,
            ),
            413,
            "payload_too_large",
        ),
        (
            "text/plain",
            raw_post(br#"{"text": "x"}"#.to_vec(), Some("text/plain")),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type",
            raw_post(br#"{"text": "x"}"#.to_vec(), None),
            415,
            "unsupported_media_type",
        ),
        (
            "empty idempotency key",
            raw_post(br#"{"text": "x"}"#.to_vec(), json_ct).header("idempotency-key", ""),
            400,
            "invalid_header",
        ),
        (
            "long idempotency key",
            raw_post(br#"{"text": "x"}"#.to_vec(), json_ct)
                .header("idempotency-key", "k".repeat(300)),
            400,
            "invalid_header",
        ),
        (
            "idempotency key with spaces",
            raw_post(br#"{"text": "x"}"#.to_vec(), json_ct).header("idempotency-key", "a b"),
            400,
            "invalid_header",
        ),
        (
            "non-ASCII idempotency key",
            raw_post(br#"{"text": "x"}"#.to_vec(), json_ct).header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(b"cl\xe9").unwrap(),
            ),
            400,
            "invalid_header",
        ),
        (
            "non-ASCII authorization",
            env.http
                .post(&jobs)
                .header(
                    "authorization",
                    reqwest::header::HeaderValue::from_bytes(b"Bearer \xe9\xe9").unwrap(),
                )
                .json(&json!({"text": "x"})),
            401,
            "unauthorized",
        ),
        (
            "basic authorization",
            env.http
                .post(&jobs)
                .basic_auth("hostile", Some("pw"))
                .json(&json!({"text": "x"})),
            401,
            "unauthorized",
        ),
        (
            "empty bearer",
            env.http
                .post(&jobs)
                .header("authorization", "Bearer ")
                .json(&json!({"text": "x"})),
            401,
            "unauthorized",
        ),
        (
            "job id not a uuid",
            env.http
                .get(env.url("/v1/jobs/not-a-uuid"))
                .bearer_auth(&key),
            404,
            "not_found",
        ),
        (
            "job id not UTF-8",
            env.http.get(env.url("/v1/jobs/%ff%fe")).bearer_auth(&key),
            400,
            "invalid_path",
        ),
        (
            "limit not a number",
            env.http
                .get(env.url("/v1/jobs?limit=many"))
                .bearer_auth(&key),
            400,
            "invalid_query",
        ),
        (
            "empty batch",
            env.http
                .post(env.url("/v1/jobs/batch"))
                .bearer_auth(&key)
                .json(&json!({"documents": []})),
            422,
            "invalid_value",
        ),
        (
            "batch of wrong shape",
            env.http
                .post(env.url("/v1/jobs/batch"))
                .bearer_auth(&key)
                .json(&json!({"documents": {"text": "x"}})),
            422,
            "invalid_value",
        ),
        (
            "wrong method",
            env.http
                .put(&jobs)
                .bearer_auth(&key)
                .json(&json!({"text": "x"})),
            405,
            "method_not_allowed",
        ),
    ];
    assert!(cases.len() >= 20);
    for (what, request, status, code) in cases {
        let r = request.send().await.unwrap();
        let actual = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(actual, status, "{what}: {text}");
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing hostile was accepted");

    // Awkward but valid text ingests: a 100 KB "sentence" with no break in it,
    // mixed scripts and emoji across chunk boundaries, an escaped surrogate pair.
    let long_sentence = "lorem ".repeat(17 * 1024);
    let mixed = "汉字と仮名 — العربية — עברית — Ελληνικά — 👩‍👩‍👧‍👦🇫🇷 e\u{301} ".repeat(60);
    let bodies = [
        json!({ "text": long_sentence }),
        json!({ "text": mixed, "options": { "chunk_size": 500, "chunk_overlap": 50 } }),
    ];
    let mut accepted = Vec::new();
    for body in bodies {
        accepted.push(env.submit(&key, body).await);
    }
    let pair = raw_post(
        br#"{"text": "smile \ud83d\ude00 please"}"#.to_vec(),
        json_ct,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(pair.status(), 202);
    accepted.push(pair.json().await.unwrap());
    let mut chunks = 0;
    for a in &accepted {
        let view = env.wait_for_job(&key, a["job_id"].as_str().unwrap()).await;
        assert_eq!(view["status"], "FINISHED", "{view}");
        chunks += view["chunks"].as_u64().unwrap();
    }
    assert!(chunks > 3, "the long texts span several chunks");
    assert_eq!(points(&env, "hostile").await, chunks);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unroutable_publishes_are_refused_and_the_job_still_arrives() {
    // Straight at the publisher: an exchange with nothing bound is a refusal, not a success.
    let topology = Topology::new(&format!(
        "test-unroutable-{}",
        &Uuid::new_v4().simple().to_string()[..8]
    ));
    let publisher = tenantry::broker::ConfirmedPublisher::open(
        &tenantry_tests::amqp_url(),
        "test-unroutable",
        &topology,
    )
    .await
    .unwrap();
    publisher
        .channel()
        .exchange_declare(
            topology.jobs_exchange().into(),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let refused = publisher.publish_jobs(&[raw(b"{}".to_vec(), None)]).await;
    assert!(
        matches!(refused, Err(tenantry::broker::BrokerError::Unroutable(_))),
        "{refused:?}"
    );
    publisher.close().await;

    // In a fleet: the jobs queue loses its binding; the pump's publish comes back
    // unroutable, the job stays in the backlog, and it arrives once the pump has
    // reconnected and re-declared the topology.
    let env = TestEnv::start(1).await;
    let key = env.tenant("routed").await;
    let topology = env.topology();
    let conn = tenantry::broker::connect(&tenantry_tests::amqp_url(), "test-unbind")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_unbind(
            topology.jobs_queue().into(),
            topology.jobs_exchange().into(),
            tenantry::broker::JOB_ROUTING_KEY.into(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
    let accepted = env
        .submit(
            &key,
            json!({ "text": "Published into the void, then for real." }),
        )
        .await;
    let view = env
        .wait_for_job(&key, accepted["job_id"].as_str().unwrap())
        .await;
    assert_eq!(view["status"], "FINISHED", "{view}");
    assert_eq!(view["attempts"], 1);
    assert_eq!(
        points(&env, "routed").await,
        view["chunks"].as_u64().unwrap()
    );
    env.stop().await;
}
