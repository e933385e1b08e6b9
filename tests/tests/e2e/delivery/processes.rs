//! The fleet's real binaries as child processes: SIGTERM drains the job in hand and
//! exits 0; SIGKILL mid-batch loses nothing and doubles nothing once restarted.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tenantry::config::{
    ENV_DATA_DIR, ENV_JOBS_PER_MESSAGE, ENV_SHUTDOWN_GRACE_SECS, ENV_WORKER_IN_FLIGHT,
    ENV_WORKER_PREFETCH,
};
use tenantry_tests::{DEADLINE, FleetIds, TestEnv, eventually};

use super::faults::{
    EmbedServer, FleetHttp, Reply, points_once_and_usage_exact, sigterm, spawn_binary,
    stops_cleanly,
};
use super::{ns, refs};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_the_job_in_hand_and_exits_zero() {
    // The embedder holds the first request for 3 s: that job is in flight at SIGTERM.
    let server = EmbedServer::start(Arc::new(|n, _| {
        if n == 0 {
            Reply::Stall(Duration::from_secs(3))
        } else {
            Reply::Vectors
        }
    }))
    .await;
    let mut settings = server.settings();
    // One job per message, so that "the job in hand" and "the prefetched messages" are
    // jobs (a message otherwise carries a group of a tenant's jobs, which a worker
    // finishes together).
    settings.push((ENV_JOBS_PER_MESSAGE, "1".into()));
    let env = TestEnv::start_with(0, &refs(&settings)).await;
    let key = env.tenant("patient").await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(
            env.submit(
                &key,
                json!({ "text": format!("Document {i} waits for a slow embedder.") }),
            )
            .await,
        );
    }

    let worker_data = tempfile::tempdir().unwrap();
    let mut vars = env.ids.env();
    for (k, v) in &settings {
        vars.insert((*k).to_owned(), v.clone());
    }
    vars.insert(
        ENV_DATA_DIR.into(),
        worker_data.path().display().to_string(),
    );
    vars.insert(ENV_SHUTDOWN_GRACE_SECS.into(), "20".into());
    vars.insert(ENV_WORKER_PREFETCH.into(), "8".into());
    // One job at a time: the other two are prefetched but not started at SIGTERM.
    vars.insert(ENV_WORKER_IN_FLIGHT.into(), "1".into());
    let mut worker = spawn_binary("worker", &[], &vars);
    tokio::time::timeout(DEADLINE, server.arrived.notified())
        .await
        .expect("the worker took a job");
    sigterm(&worker).await;
    let status = tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .expect("the worker exits within the grace period")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(server.request_count(), 1, "no job started after SIGTERM");

    let mut views = Vec::new();
    for accepted in &jobs {
        let view: Value = env
            .get(
                &key,
                &format!("/v1/jobs/{}", accepted["job_id"].as_str().unwrap()),
            )
            .await
            .json()
            .await
            .unwrap();
        views.push(view);
    }
    let finished = views.iter().filter(|v| v["status"] == "FINISHED").count();
    assert_eq!(finished, 1, "the job in hand finished: {views:#?}");
    for v in views.iter().filter(|v| v["status"] != "FINISHED") {
        assert_eq!(v["status"], "PENDING", "{v}");
        assert_eq!(v["attempts"], 0, "{v}");
    }
    // The prefetched, unstarted messages went back to the queue.
    let queue = env.topology().jobs_queue();
    eventually("the unstarted jobs back on the queue", || async {
        (env.queue_depth(&queue).await == 2).then_some(())
    })
    .await;

    // A new worker takes over the rest.
    let mut second = spawn_binary("worker", &[], &vars);
    let mut chunks = 0;
    for accepted in &jobs {
        let view = env
            .wait_for_job(&key, accepted["job_id"].as_str().unwrap())
            .await;
        assert_eq!(view["status"], "FINISHED", "{view}");
        assert_eq!(view["attempts"], 1, "{view}");
        chunks += view["chunks"].as_u64().unwrap();
    }
    sigterm(&second).await;
    let status = tokio::time::timeout(Duration::from_secs(20), second.wait())
        .await
        .expect("the second worker exits")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    // The workers' own store holds each chunk once.
    let data = worker_data.path().display().to_string();
    let mut store_settings = settings.clone();
    store_settings.push((ENV_DATA_DIR, data));
    let store = tenantry::vector::open(&env.ids.settings(&refs(&store_settings)))
        .await
        .unwrap();
    assert_eq!(
        store
            .count(&ns(&env.ids.prefix, "patient"), None)
            .await
            .unwrap(),
        chunks
    );
    drop(store);
    env.stop().await;
}

fn document(i: usize) -> String {
    (0..120)
        .map(|s| format!("Batch document {i}, sentence {s}, survives a crash of the whole fleet."))
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_batch_then_restart_finishes_every_job_exactly_once() {
    tenantry_tests::init_logs();
    let ids = FleetIds::new();
    let mut vars = ids.env();
    // Every embedding takes 50 ms, so the kill lands with jobs in flight and most of the
    // backlog still waiting (a hashing embedder finishes the batch before the kill).
    let server = EmbedServer::start(Arc::new(|_, _| Reply::Stall(Duration::from_millis(50)))).await;
    for (k, v) in server.settings() {
        vars.insert(k.to_owned(), v);
    }
    let api = FleetHttp::new(&mut vars);

    let mut fleet = spawn_binary("dispatcher", &["--workers", "2"], &vars);
    eventually("the fleet to be ready", || api.ready()).await;
    let key = api.tenant_key("survivor").await;
    // Submitted in batches, so the whole backlog exists early.
    let total = 200;
    for first in (0..total).step_by(100) {
        api.submit_batch(&key, (first..first + 100).map(document).collect())
            .await;
    }

    let pool = sqlx::PgPool::connect(&ids.database_url).await.unwrap();
    let finished = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE status = 'FINISHED'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    eventually("a few jobs to finish", || async {
        (finished().await >= 3).then_some(())
    })
    .await;
    fleet.start_kill().unwrap();
    fleet.wait().await.unwrap();
    let at_kill = finished().await;

    let fleet = spawn_binary("dispatcher", &["--workers", "2"], &vars);
    eventually("the restarted fleet to be ready", || api.ready()).await;
    eventually("every job to finish after the restart", || async {
        (finished().await == total as i64).then_some(())
    })
    .await;
    stops_cleanly(fleet).await;

    assert_eq!(
        points_once_and_usage_exact(&ids, &pool, "survivor").await,
        total
    );
    assert!(
        at_kill < total as i64,
        "killed mid-batch ({at_kill} of {total} had finished)"
    );
    pool.close().await;
    tenantry_tests::cleanup(&ids).await;
}
