//! Fair share across tenants (DESIGN rule 7): one tenant's backlog never starves
//! another. Every test builds its backlogs with no worker running, then starts workers
//! and asserts on the *order* in which jobs finished (from `finished_at`), never on time.

use serde_json::{Value, json};
use tenantry::config;
use tenantry_tests::{TestEnv, eventually};

fn documents(n: usize, priority: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "text": format!("Document {i}. A sentence about fairness. Another one follows it."),
                "priority": priority,
            })
        })
        .collect()
}

async fn tenant_on_plan(env: &TestEnv, id: &str, plan: &str) -> String {
    env.tenant_with(
        json!({ "id": id, "name": id, "email": format!("{id}@example.com"), "plan": plan }),
    )
    .await
}

/// Tenant of each of the first `n` finished jobs, in the order they finished.
async fn finish_order(env: &TestEnv, n: i64) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT tenant_id FROM jobs WHERE status = 'FINISHED' ORDER BY finished_at, id LIMIT $1",
    )
    .bind(n)
    .fetch_all(env.pool())
    .await
    .unwrap()
}

async fn wait_finished(env: &TestEnv, n: i64) {
    eventually(&format!("{n} jobs to finish"), || async {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'FINISHED'")
            .fetch_one(env.pool())
            .await
            .ok()?;
        (done >= n).then_some(())
    })
    .await;
}

/// When each of these jobs finished, in order.
async fn finished_times(env: &TestEnv, ids: &[String]) -> Vec<chrono::DateTime<chrono::Utc>> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(|i| i.parse().unwrap()).collect();
    sqlx::query_scalar(
        "SELECT finished_at FROM jobs WHERE id = ANY($1) AND status = 'FINISHED' ORDER BY finished_at",
    )
    .bind(ids)
    .fetch_all(env.pool())
    .await
    .unwrap()
}

async fn published(env: &TestEnv, tenant: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE tenant_id = $1 AND published_at IS NOT NULL",
    )
    .bind(tenant)
    .fetch_one(env.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_tenant_finishes_while_a_big_backlog_waits() {
    let env = TestEnv::start_with(
        0,
        &[
            (config::ENV_TENANT_WINDOW, "8"),
            (config::ENV_FLEET_WINDOW, "64"),
            // One job per message: the bound below is the pump's per-job window
            // arithmetic. With groups of up to 16 (the default) the small tenant's 20
            // usually finish after 64–180 of the big tenant's jobs, but under CPU
            // starvation up to 386 were seen (issue 15, open: fairness with groups).
            (config::ENV_JOBS_PER_MESSAGE, "1"),
        ],
    )
    .await;
    // The big tenant even has four times the small one's weight.
    let big = tenant_on_plan(&env, "big", "pro").await;
    // Slots beyond the window, so the window alone bounds what it has on the broker.
    let lifted = env
        .admin_put(
            "/v1/admin/tenants/big/quotas",
            json!({ "PROCESSING_JOBS": 1000 }),
        )
        .await;
    assert_eq!(lifted.status(), 200);
    let small = env.tenant("small").await;
    env.submit_many(&big, documents(2000, "normal")).await;
    // Its window is on the broker before the small tenant arrives: the worst case.
    eventually("the big tenant's window to be published", || async {
        (published(&env, "big").await >= 64).then_some(())
    })
    .await;
    let small_jobs = env.submit_many(&small, documents(20, "normal")).await;
    let workers = env.start_workers(2);
    for id in &small_jobs {
        let job = env.wait_for_job(&small, id).await;
        assert_eq!(job["status"], "FINISHED", "{job}");
    }
    let (big_before, big_left): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'FINISHED' AND finished_at <=
                    (SELECT max(finished_at) FROM jobs WHERE tenant_id = 'small')),
                count(*) FILTER (WHERE status <> 'FINISHED' OR finished_at >
                    (SELECT max(finished_at) FROM jobs WHERE tenant_id = 'small'))
           FROM jobs WHERE tenant_id = 'big'",
    )
    .fetch_one(env.pool())
    .await
    .unwrap();
    eprintln!("small tenant done after {big_before} big jobs; {big_left} of 2000 still pending");
    // FIFO would finish all 2000 first. Fair share: the fleet window ahead of the
    // small tenant, then the big one's weighted share (4:1) while the 20 go through.
    assert!(
        big_before <= 64 + 4 * 20 + 64,
        "{big_before} of the big tenant's jobs finished before the small tenant's 20"
    );
    assert!(
        big_left >= 1700,
        "only {big_left} of 2000 still pending when the small tenant was done"
    );
    workers.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_are_shared_by_plan_weight() {
    let env = TestEnv::start_with(
        0,
        &[
            (config::ENV_TENANT_WINDOW, "4"),
            (config::ENV_FLEET_WINDOW, "40"),
        ],
    )
    .await;
    let heavy = tenant_on_plan(&env, "heavy", "pro").await; // weight 4
    let light = env.tenant("light").await; // weight 1
    env.submit_many(&heavy, documents(600, "normal")).await;
    env.submit_many(&light, documents(300, "normal")).await;
    let workers = env.start_workers(2);
    wait_finished(&env, 400).await;
    workers.stop().await;
    // Past the first windows (the heavy tenant was alone when it submitted).
    let order = finish_order(&env, 400).await;
    let heavy_share =
        order[100..].iter().filter(|t| *t == "heavy").count() as f64 / (order.len() - 100) as f64;
    eprintln!("weight 4 against 1: heavy share {heavy_share:.3}");
    assert!(
        (0.68..=0.92).contains(&heavy_share),
        "weight 4 against weight 1 should get about 0.8 of the work, got {heavy_share:.2}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn priority_orders_work_within_a_tenant_never_across_tenants() {
    let env = TestEnv::start_with(
        0,
        &[
            (config::ENV_TENANT_WINDOW, "4"),
            (config::ENV_FLEET_WINDOW, "32"),
        ],
    )
    .await;
    let mixed = env.tenant("mixed").await;
    let urgent = env.tenant("urgent").await;
    let low = env.submit_many(&mixed, documents(200, "low")).await;
    let high = env.submit_many(&mixed, documents(10, "high")).await;
    // Another tenant marks everything high: that buys it nothing against "mixed".
    env.submit_many(&urgent, documents(200, "high")).await;
    let workers = env.start_workers(2);
    wait_finished(&env, 300).await;
    workers.stop().await;

    let high_done = finished_times(&env, &high).await;
    let low_done = finished_times(&env, &low).await;
    assert_eq!(high_done.len(), 10, "every high-priority job finished");
    // Submitted after 200 low ones, yet done before most of them.
    assert!(
        low_done.len() >= 60,
        "{} low-priority jobs finished",
        low_done.len()
    );
    assert!(
        high_done[9] < low_done[59],
        "the last high-priority job finished after the 60th low-priority one"
    );
    let order = finish_order(&env, 300).await;
    let urgent_share =
        order[60..].iter().filter(|t| *t == "urgent").count() as f64 / (order.len() - 60) as f64;
    assert!(
        (0.35..=0.65).contains(&urgent_share),
        "high priority crossed tenants: the all-high tenant got {urgent_share:.2} of the work"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_equal_tenants_get_equal_shares() {
    let env = TestEnv::start_with(
        0,
        &[
            (config::ENV_TENANT_WINDOW, "2"),
            (config::ENV_FLEET_WINDOW, "40"),
        ],
    )
    .await;
    let names: Vec<String> = (0..10).map(|i| format!("equal-{i}")).collect();
    for name in &names {
        let key = env.tenant(name).await;
        env.submit_many(&key, documents(100, "normal")).await;
    }
    let workers = env.start_workers(2);
    wait_finished(&env, 380).await;
    workers.stop().await;
    let order = finish_order(&env, 380).await;
    // Skip the windows published while tenants were still arriving one by one.
    let window = &order[80..];
    let counts: Vec<usize> = names
        .iter()
        .map(|n| window.iter().filter(|t| *t == n).count())
        .collect();
    eprintln!("completions per tenant (fair 30): {counts:?}");
    for name in &names {
        let n = window.iter().filter(|t| *t == name).count();
        assert!(
            (20..=40).contains(&n),
            "{name} got {n} of {} completions, expected about 30",
            window.len()
        );
    }
    env.stop().await;
}
