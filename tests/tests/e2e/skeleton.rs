//! The walking skeleton: documents go from HTTP through RabbitMQ into the tenant's own
//! namespace and Postgres; bad credentials and bad input change nothing.

use serde_json::{Value, json};
use tenantry::chunk::{ChunkParams, ChunkStrategy, chunk_text};
use tenantry::tenancy::{DatabaseName, IsolationMode, Namespace, TenantId};
use tenantry_tests::{TestEnv, assert_error};

fn ns(env: &TestEnv, tenant: &str) -> Namespace {
    Namespace::new(
        &env.ids.prefix,
        &TenantId::parse(tenant).unwrap(),
        &DatabaseName::default_name(),
        IsolationMode::Collection,
    )
}

/// A document of `sentences` distinct sentences mentioning `word`.
fn document(word: &str, sentences: usize) -> String {
    (0..sentences)
        .map(|i| {
            format!("The {word} report, section {i}, describes quarterly results in some detail.")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn expected_chunks(text: &str) -> usize {
    let params = ChunkParams::new(4000, 200, ChunkStrategy::Sentence).unwrap();
    chunk_text(text, &params).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tenants_documents_land_in_their_own_namespaces_only() {
    let env = TestEnv::start(2).await;
    let key_a = env.tenant("acme").await;
    let key_b = env.tenant("globex").await;

    let docs_a: Vec<String> = vec![
        document("zeppelin", 5),
        document("zeppelin", 120),
        document("zeppelin", 300),
    ];
    let docs_b: Vec<String> = vec![document("marmalade", 40), document("marmalade", 200)];
    let mut jobs = Vec::new();
    for text in &docs_a {
        let r = env
            .submit(
                &key_a,
                json!({ "text": text, "metadata": { "lang": "en" } }),
            )
            .await;
        assert_eq!(r["status"], "PENDING");
        jobs.push((key_a.clone(), r, expected_chunks(text)));
    }
    for text in &docs_b {
        let r = env.submit(&key_b, json!({ "text": text })).await;
        jobs.push((key_b.clone(), r, expected_chunks(text)));
    }

    let mut chunks_a = 0;
    let mut chunks_b = 0;
    for (key, accepted, expected) in &jobs {
        let view = env
            .wait_for_job(key, accepted["job_id"].as_str().unwrap())
            .await;
        assert_eq!(view["status"], "FINISHED", "{view}");
        assert_eq!(
            view["chunks"].as_u64().unwrap() as usize,
            *expected,
            "{view}"
        );
        assert_eq!(view["attempts"], 1);
        assert_eq!(view["document_id"], accepted["document_id"]);
        assert!(
            view["duration_ms"].as_i64().is_some_and(|d| d >= 0),
            "{view}"
        );
        assert!(view["started_at"].is_string() && view["finished_at"].is_string());
        assert!(view["error"].is_null());
        if key == &key_a {
            chunks_a += expected;
        } else {
            chunks_b += expected;
        }
    }
    assert!(
        chunks_a > 3 && chunks_b > 2,
        "the documents span several chunks"
    );

    let store = &env.state.store;
    let (ns_a, ns_b) = (ns(&env, "acme"), ns(&env, "globex"));
    assert_ne!(ns_a.collection, ns_b.collection);
    assert_eq!(store.count(&ns_a, None).await.unwrap() as usize, chunks_a);
    assert_eq!(store.count(&ns_b, None).await.unwrap() as usize, chunks_b);

    // Every point carries its owner, and only its owner's points are in its namespace.
    for (namespace, owner) in [(&ns_a, "acme"), (&ns_b, "globex")] {
        let mut offset = None;
        let mut seen = 0;
        loop {
            let page = store.scroll(namespace, offset, 100).await.unwrap();
            for p in &page.points {
                assert_eq!(p.payload["tenant_id"], owner);
                seen += 1;
            }
            match page.next_offset {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, if owner == "acme" { chunks_a } else { chunks_b });
    }

    // A's word is found in A's namespace and nowhere in B's.
    let query = env
        .state
        .embedder
        .embed(&["zeppelin report"])
        .await
        .unwrap()
        .remove(0);
    let hits_a = store.search(&ns_a, query.clone(), 5, &[]).await.unwrap();
    assert!(!hits_a.is_empty());
    assert!(
        hits_a
            .iter()
            .all(|h| h.payload["text"].as_str().unwrap().contains("zeppelin"))
    );
    let hits_b = store.search(&ns_b, query, 50, &[]).await.unwrap();
    assert!(hits_b.iter().all(|h| h.payload["tenant_id"] == "globex"));
    assert!(
        hits_b
            .iter()
            .all(|h| !h.payload["text"].as_str().unwrap().contains("zeppelin"))
    );

    // Postgres agrees: every job FINISHED, the queue drained.
    let finished: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'FINISHED'")
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!(finished, 5);
    assert_eq!(env.queue_depth(&env.topology().jobs_queue()).await, 0);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_are_required_and_other_tenants_jobs_are_not_found() {
    let env = TestEnv::start(1).await;
    let key_a = env.tenant("alpha").await;
    let key_b = env.tenant("beta").await;
    let accepted = env
        .submit(&key_a, json!({ "text": "Alpha's private note." }))
        .await;
    let job = accepted["job_id"].as_str().unwrap();

    let no_key = env
        .http
        .get(env.url(&format!("/v1/jobs/{job}")))
        .send()
        .await
        .unwrap();
    assert_error(no_key, 401, "unauthorized").await;
    let wrong_key = format!("tnry_{}", "0".repeat(64));
    assert_error(
        env.get(&wrong_key, &format!("/v1/jobs/{job}")).await,
        401,
        "unauthorized",
    )
    .await;
    assert_error(
        env.get("not-a-key", &format!("/v1/jobs/{job}")).await,
        401,
        "unauthorized",
    )
    .await;
    let basic = env
        .http
        .get(env.url(&format!("/v1/jobs/{job}")))
        .header("authorization", format!("Basic {key_a}"))
        .send()
        .await
        .unwrap();
    assert_error(basic, 401, "unauthorized").await;
    let submit_without_key = env
        .http
        .post(env.url("/v1/jobs"))
        .json(&json!({ "text": "x" }))
        .send()
        .await
        .unwrap();
    assert_error(submit_without_key, 401, "unauthorized").await;

    // B cannot see A's job: 404, exactly like a job that does not exist.
    assert_error(
        env.get(&key_b, &format!("/v1/jobs/{job}")).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        env.get(&key_b, &format!("/v1/jobs/{}", uuid::Uuid::new_v4()))
            .await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        env.get(&key_b, "/v1/jobs/not-a-uuid").await,
        404,
        "not_found",
    )
    .await;
    let list: Value = env.get(&key_b, "/v1/jobs").await.json().await.unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0);
    // A tenant key never opens the admin API.
    assert_error(
        env.get(&key_a, "/v1/admin/tenants").await,
        401,
        "unauthorized",
    )
    .await;

    let view = env.wait_for_job(&key_a, job).await;
    assert_eq!(view["status"], "FINISHED");

    // A second dispatcher of the same fleet knows the same tenants and keys.
    let second = env.add_dispatcher(&[]).await;
    let r = env
        .http
        .get(second.url(&format!("/v1/jobs/{job}")))
        .bearer_auth(&key_a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_error(
        env.http
            .get(second.url(&format!("/v1/jobs/{job}")))
            .bearer_auth(&key_b)
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    second.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let env = TestEnv::start_with(1, &[("TENANTRY_MAX_BODY_BYTES", "65536")]).await;
    let key = env.tenant("careful").await;

    let malformed = env
        .http
        .post(env.url("/v1/jobs"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{\"text\": \"unterminated")
        .send()
        .await
        .unwrap();
    assert_error(malformed, 400, "malformed_json").await;
    assert_error(
        env.post(&key, "/v1/jobs", json!({ "text": "" })).await,
        422,
        "invalid_value",
    )
    .await;
    assert_error(
        env.post(&key, "/v1/jobs", json!({ "text": "   \n\t " }))
            .await,
        422,
        "invalid_value",
    )
    .await;
    let too_big = "a".repeat(70_000);
    assert_error(
        env.post(&key, "/v1/jobs", json!({ "text": too_big })).await,
        413,
        "payload_too_large",
    )
    .await;
    assert_error(
        env.post(
            &key,
            "/v1/jobs",
            json!({ "text": "ok", "tenant_id": "other" }),
        )
        .await,
        422,
        "invalid_value",
    )
    .await;
    assert_error(
        env.post(&key, "/v1/jobs", json!({ "text": 42 })).await,
        422,
        "invalid_value",
    )
    .await;
    assert_error(
        env.post(&key, "/v1/jobs", json!({ "text": "a\u{0}b" }))
            .await,
        422,
        "invalid_value",
    )
    .await;
    assert_error(
        env.post(
            &key,
            "/v1/jobs",
            json!({ "text": "ok", "database": "../etc" }),
        )
        .await,
        422,
        "invalid_value",
    )
    .await;
    assert_error(
        env.post(
            &key,
            "/v1/jobs",
            json!({ "text": "ok", "options": { "chunk_size": 10 } }),
        )
        .await,
        422,
        "invalid_value",
    )
    .await;
    let not_json = env
        .http
        .post(env.url("/v1/jobs"))
        .bearer_auth(&key)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_error(not_json, 415, "unsupported_media_type").await;

    // Nothing reached the database or the broker.
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(env.pool())
        .await
        .unwrap();
    let documents: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
        .fetch_one(env.pool())
        .await
        .unwrap();
    let usage: i64 =
        sqlx::query_scalar("SELECT documents FROM tenant_usage WHERE tenant_id = 'careful'")
            .fetch_one(env.pool())
            .await
            .unwrap();
    assert_eq!((jobs, documents, usage), (0, 0, 0));
    assert_eq!(env.queue_depth(&env.topology().jobs_queue()).await, 0);
    env.stop().await;
}
