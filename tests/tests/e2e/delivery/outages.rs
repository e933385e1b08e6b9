//! Broker and database outages, made by cutting a proxy between the fleet and the
//! real services (other tests keep using them): `/readyz` says so, submissions are
//! still accepted into the outbox while the broker is away (503 while Postgres is),
//! and every accepted job ends FINISHED exactly once when the services return.

use serde_json::{Value, json};
use tenantry::config::{ENV_AMQP_URL, ENV_DATABASE_URL};
use tenantry_tests::{FleetIds, TestEnv, eventually};

use super::faults::FaultProxy;
use super::{points, usage};

/// `host:port` of a URL like `scheme://user:pass@host:port/path`.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    rest.split('/').next().unwrap().to_owned()
}

async fn readiness(env: &TestEnv) -> (u16, Value) {
    let r = env.http.get(env.url("/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn document(i: usize) -> String {
    (0..40)
        .map(|s| {
            format!("Document {i}, sentence {s}: the outage report lists what was delayed and why.")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_and_database_outages_lose_nothing_and_double_nothing() {
    let amqp = FaultProxy::start(&host_port(&tenantry_tests::amqp_url())).await;
    let pg = FaultProxy::start(&host_port(&tenantry_tests::postgres_base())).await;
    let ids = FleetIds::new();
    let database = ids.database_url.rsplit('/').next().unwrap().to_owned();
    let amqp_url = format!("amqp://guest:guest@{}/%2f", amqp.addr);
    let database_url = format!("postgres://postgres@{}/{database}", pg.addr);
    let env = TestEnv::start_with_ids(
        ids,
        2,
        &[
            (ENV_AMQP_URL, amqp_url.as_str()),
            (ENV_DATABASE_URL, database_url.as_str()),
        ],
    )
    .await;
    let key = env.tenant("steady").await;
    let mut jobs = Vec::new();
    for i in 0..10 {
        jobs.push(env.submit(&key, json!({ "text": document(i) })).await);
    }

    // The broker goes away: not ready, but submissions are accepted into the outbox
    // and none counts as published.
    amqp.cut();
    eventually("/readyz to report the broker down", || async {
        let (status, body) = readiness(&env).await;
        (status == 503 && body["broker"] == "down").then_some(())
    })
    .await;
    let mut during = Vec::new();
    for i in 10..20 {
        during.push(env.submit(&key, json!({ "text": document(i) })).await);
    }
    for accepted in &during {
        let view: Value = env
            .get(
                &key,
                &format!("/v1/jobs/{}", accepted["job_id"].as_str().unwrap()),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            view["queued"], false,
            "published while the broker was down: {view}"
        );
    }
    jobs.extend(during);
    amqp.restore();
    eventually("/readyz to recover from the broker outage", || async {
        (readiness(&env).await.0 == 200).then_some(())
    })
    .await;

    // Postgres goes away: not ready, and a submission is a clean 503.
    pg.cut();
    eventually("/readyz to report the database down", || async {
        let (status, body) = readiness(&env).await;
        (status == 503 && body["database"] == "down").then_some(())
    })
    .await;
    let refused = env
        .post(&key, "/v1/jobs", json!({ "text": "Not now." }))
        .await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    pg.restore();
    eventually("/readyz to recover from the database outage", || async {
        (readiness(&env).await.0 == 200).then_some(())
    })
    .await;
    for i in 20..30 {
        jobs.push(env.submit(&key, json!({ "text": document(i) })).await);
    }

    // Every accepted job ends FINISHED, its points exactly once, its usage once.
    let mut chunks = 0;
    for accepted in &jobs {
        let view = env
            .wait_for_job(&key, accepted["job_id"].as_str().unwrap())
            .await;
        assert_eq!(view["status"], "FINISHED", "{view}");
        let document_id = accepted["document_id"].as_str().unwrap().parse().unwrap();
        let stored = env
            .state
            .store
            .count(&super::ns(&env.ids.prefix, "steady"), Some(document_id))
            .await
            .unwrap();
        assert_eq!(stored, view["chunks"].as_u64().unwrap(), "{view}");
        chunks += stored;
    }
    assert_eq!(points(&env, "steady").await, chunks);
    let (documents, storage) = usage(&env, "steady").await;
    let measured: i64 = sqlx::query_scalar("SELECT sum(stored_bytes)::bigint FROM documents")
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!((documents, storage), (jobs.len() as i64, measured));
    let dead: Vec<String> = sqlx::query_scalar("SELECT reason FROM dead_letters")
        .fetch_all(env.pool())
        .await
        .unwrap();
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    env.stop().await;
}
