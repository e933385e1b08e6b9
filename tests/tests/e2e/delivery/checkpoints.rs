//! The embedded store's durability with Postgres as the log (`tenantry::checkpoint`):
//! the fleet's real binary killed after its jobs' FINISHED commits but before any
//! checkpoint, then killed again in the middle of recovering them, then in the middle of
//! the checkpoint that follows the recovery — and every accepted job still ends with
//! its points present exactly once and its usage counted once.

use std::time::Duration;

use tenantry::config::ENV_CHECKPOINT_MS;
use tenantry::failpoint::ENV_FAILPOINT;
use tenantry_tests::{FleetIds, eventually};

use super::faults::{FleetHttp, points_once_and_usage_exact, spawn_binary, stops_cleanly};

fn document(i: usize) -> String {
    (0..30)
        .map(|s| format!("Logged document {i}, sentence {s}: Postgres keeps what re-derives it."))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits for a child that must die by its failpoint (an abort).
async fn aborts(child: &mut tokio::process::Child, what: &str) {
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what}: the process did not reach its failpoint"))
        .unwrap();
    assert!(!status.success(), "{what}: expected an abort, got {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_before_a_checkpoint_and_during_recovery_loses_and_doubles_nothing() {
    tenantry_tests::init_logs();
    let ids = FleetIds::new();
    let mut vars = ids.env();
    let api = FleetHttp::new(&mut vars);
    // No checkpoint during the first run: every finished job's points are applied but
    // not flushed when the kill comes.
    vars.insert(ENV_CHECKPOINT_MS.into(), "3600000".into());

    let mut fleet = spawn_binary("dispatcher", &["--workers", "2"], &vars);
    eventually("the fleet to be ready", || api.ready()).await;
    let key = api.tenant_key("logged").await;
    let (api_ref, key) = (&api, key.as_str());
    let submit = move |first: usize, count: usize| {
        api_ref.submit_batch(key, (first..first + count).map(document).collect())
    };
    submit(0, 100).await;
    submit(100, 50).await;

    let pool = sqlx::PgPool::connect(&ids.database_url).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    eventually("every job to finish", || async {
        (count("SELECT count(*) FROM jobs WHERE status = 'FINISHED'").await == 150).then_some(())
    })
    .await;
    // Postgres is the log: until a checkpoint covers them, finished jobs keep their text.
    assert_eq!(
        count("SELECT count(*) FROM jobs WHERE status = 'FINISHED' AND body IS NOT NULL").await,
        150
    );
    fleet.start_kill().unwrap();
    fleet.wait().await.unwrap();

    // Killed in the middle of recovering them (after the first job is re-derived)…
    let mut mid_recovery = vars.clone();
    mid_recovery.insert(ENV_FAILPOINT.into(), "recovery-after-first-job".into());
    let mut fleet = spawn_binary("dispatcher", &["--workers", "2"], &mid_recovery);
    aborts(&mut fleet, "mid-recovery").await;
    // …then after the recovery's flush, before its mark is recorded.
    let mut mid_checkpoint = vars.clone();
    mid_checkpoint.insert(ENV_FAILPOINT.into(), "checkpoint-before-mark".into());
    let mut fleet = spawn_binary("dispatcher", &["--workers", "2"], &mid_checkpoint);
    aborts(&mut fleet, "mid-checkpoint").await;
    assert_eq!(
        count("SELECT count(*) FROM jobs WHERE status = 'FINISHED' AND body IS NOT NULL").await,
        150,
        "no text is released before a checkpoint is recorded"
    );

    // A normal start recovers, and the fleet goes on working (checkpointing often now).
    let mut running = vars.clone();
    running.insert(ENV_CHECKPOINT_MS.into(), "100".into());
    let fleet = spawn_binary("dispatcher", &["--workers", "2"], &running);
    eventually("the recovered fleet to be ready", || api.ready()).await;
    submit(150, 30).await;
    eventually("the new jobs to finish", || async {
        (count("SELECT count(*) FROM jobs WHERE status = 'FINISHED'").await == 180).then_some(())
    })
    .await;
    eventually("checkpoints to release the texts they cover", || async {
        (count("SELECT count(*) FROM jobs WHERE body IS NOT NULL").await == 0).then_some(())
    })
    .await;
    stops_cleanly(fleet).await;

    assert_eq!(
        points_once_and_usage_exact(&ids, &pool, "logged").await,
        180
    );
    assert_eq!(
        count("SELECT count(*) FROM jobs WHERE attempts <> 1").await,
        0,
        "recovery re-derives, it does not run jobs again"
    );
    pool.close().await;
    tenantry_tests::cleanup(&ids).await;
}
