//! Webhooks, against a real HTTP receiver on 127.0.0.1: every event type arrives once
//! with a valid signature and only the types the tenant enabled; a receiver failing
//! three times gets the event on the fourth try; an event committed while no
//! dispatcher delivers (or whose dispatcher stops mid-attempt) is delivered by the
//! next one; loopback destinations are refused without the setting; redelivery, and
//! tenant scoping of the views.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tenantry::config;
use tenantry_tests::{ADMIN_TOKEN, TestEnv, assert_error, eventually, eventually_within};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::delivery::faults::{EmbedServer, Reply};
use crate::delivery::refs;

/// Settings of a fleet that retries webhooks within a test's patience and may call
/// the loopback receiver.
fn fast(allow_private: bool) -> Vec<(&'static str, String)> {
    vec![
        (config::ENV_WEBHOOK_ALLOW_PRIVATE, allow_private.to_string()),
        (config::ENV_WEBHOOK_RETRY_BASE_MS, "100".into()),
        (config::ENV_WEBHOOK_RETRY_MAX_MS, "400".into()),
        (config::ENV_WEBHOOK_POLL_MS, "50".into()),
        (config::ENV_WEBHOOK_TIMEOUT_SECS, "5".into()),
    ]
}

/// [`fast`] with one more setting.
fn fast_and(allow_private: bool, var: &'static str, value: &str) -> Vec<(&'static str, String)> {
    let mut settings = fast(allow_private);
    settings.push((var, value.to_owned()));
    settings
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    event_id: String,
    event_type: String,
    signature: String,
    attempt: String,
    body: Vec<u8>,
    /// The status answered; 0 while the request hangs.
    answered: u16,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct ReceiverState {
    log: Mutex<Vec<Received>>,
    /// Requests still to answer 500.
    fail_next: AtomicUsize,
    /// While set, requests are recorded and left hanging.
    hang: AtomicBool,
    release: Notify,
}

/// A webhook receiver on 127.0.0.1: records every request, answers 200 (or 500 while
/// `fail_next` lasts, or nothing while `hang` is set).
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: JoinHandle<()>,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let hang = state.hang.load(Ordering::SeqCst);
    let fail = !hang
        && state
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    state.log.lock().unwrap().push(Received {
        event_id: header("tenantry-event-id"),
        event_type: header("tenantry-event-type"),
        signature: header("tenantry-signature"),
        attempt: header("tenantry-delivery-attempt"),
        body: body.to_vec(),
        answered: if hang { 0 } else { status.as_u16() },
    });
    if hang {
        state.release.notified().await;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    status
}

impl Receiver {
    async fn start() -> Self {
        let state = Arc::new(ReceiverState::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn log(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().clone()
    }

    /// Requests answered 2xx.
    fn delivered(&self) -> Vec<Received> {
        self.log()
            .into_iter()
            .filter(|r| r.answered == 200)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.state.release.notify_waiters();
        self.task.abort();
    }
}

/// Whether `header` (`t=…,v1=…[,v1=…]`) signs `body` with `secret`, checked the way
/// the README tells receivers to: HMAC-SHA256 over `t.body`, t within 5 minutes.
fn signed_with(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => signatures.push(v.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (chrono::Utc::now().timestamp() - t).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected = hex::encode(mac.finalize().into_bytes());
    signatures.contains(&expected)
}

/// Creates a tenant on the pro plan (tests poll), points its webhooks at `url` with
/// these preferences, and issues its secret. Returns (API key, secret).
async fn subscribe(env: &TestEnv, tenant: &str, url: &str, prefs: Value) -> (String, String) {
    let key = env
        .tenant_with(json!({
            "id": tenant, "name": tenant, "email": format!("{tenant}@example.com"), "plan": "pro"
        }))
        .await;
    let r = env
        .http
        .put(env.url("/v1/tenant/config"))
        .bearer_auth(&key)
        .json(&json!({ "webhook_url": url, "notification_preferences": prefs }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let secret = new_secret(env, &key).await;
    (key, secret)
}

async fn new_secret(env: &TestEnv, key: &str) -> String {
    let r = env.post(key, "/v1/tenant/webhooks/secret", json!({})).await;
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let secret = body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{body}");
    secret
}

async fn deliveries(env: &TestEnv, key: &str) -> Vec<Value> {
    let r = env
        .get(key, "/v1/tenant/webhooks/deliveries?limit=100")
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["deliveries"].as_array().unwrap().clone()
}

/// Waits until the tenant's deliveries view shows `n` events, all with `status`.
async fn wait_for_status(env: &TestEnv, key: &str, n: usize, status: &str) -> Vec<Value> {
    eventually(&format!("{n} deliveries {status}"), || async {
        let list = deliveries(env, key).await;
        (list.len() == n && list.iter().all(|d| d["status"] == status)).then_some(list)
    })
    .await
}

async fn set_quota(env: &TestEnv, tenant: &str, body: Value) {
    let r = env
        .http
        .put(env.url(&format!("/v1/admin/tenants/{tenant}/quotas")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

async fn run_job(env: &TestEnv, key: &str, text: &str) -> Value {
    let accepted = env.submit(key, json!({ "text": text })).await;
    env.wait_for_job(key, accepted["job_id"].as_str().unwrap())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_event_arrives_once_signed_and_only_when_enabled() {
    // Texts mentioning "refused" are refused by the embedder for good: the job fails.
    let embedder = EmbedServer::start(Arc::new(|_, text| {
        if text.contains("refused") {
            Reply::Status(400)
        } else {
            Reply::Vectors
        }
    }))
    .await;
    let mut settings = embedder.settings();
    settings.extend(fast(true));
    let env = TestEnv::start_with(1, &refs(&settings)).await;
    let hooked = Receiver::start().await;
    let quiet = Receiver::start().await;
    let all = json!({"job_completed": true, "job_failed": true, "quota_warning": true, "quota_exceeded": true});
    let (key, secret) = subscribe(&env, "hooked", &hooked.url(), all).await;
    set_quota(&env, "hooked", json!({ "DOCUMENTS": 5 })).await;

    // 3 of 5 documents: below 80 %.
    for i in 0..3 {
        let view = run_job(&env, &key, &format!("Document number {i} is fine.")).await;
        assert_eq!(view["status"], "FINISHED", "{view}");
    }
    // The 4th crosses 80 % (quota_warning) and fails (job_failed), giving its slot back.
    let failed = run_job(&env, &key, "This document is refused by the embedder.").await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    // Crossing 80 % again the same day warns no more; the 6th is refused (quota_exceeded,
    // once: the 7th is refused too, silently).
    let mut finished = Vec::new();
    for i in 3..5 {
        let view = run_job(&env, &key, &format!("Document number {i} is fine.")).await;
        assert_eq!(view["status"], "FINISHED", "{view}");
        finished.push(view);
    }
    for _ in 0..2 {
        let r = env
            .post(&key, "/v1/jobs", json!({ "text": "one too many" }))
            .await;
        assert_error(r, 403, "quota_exceeded").await;
    }

    // 5 completed, 1 failed, 1 warning, 1 exceeded: every one delivered, once.
    let list = wait_for_status(&env, &key, 8, "delivered").await;
    let log = hooked.log();
    assert_eq!(log.len(), 8, "{log:#?}");
    let ids: HashSet<&str> = log.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), 8, "every event once");
    let mut by_type: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in &log {
        assert_eq!(r.answered, 200);
        assert_eq!(r.attempt, "1");
        assert!(signed_with(&secret, &r.signature, &r.body), "{r:?}");
        assert!(!signed_with("whsec_other", &r.signature, &r.body));
        let body = r.json();
        assert_eq!(body["id"], r.event_id);
        assert_eq!(body["type"], r.event_type);
        assert_eq!(body["tenant_id"], "hooked");
        assert!(body["created_at"].as_str().is_some(), "{body}");
        by_type.entry(r.event_type.clone()).or_default().push(body);
    }
    let counts: BTreeMap<&str, usize> =
        by_type.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("job_completed", 5),
            ("job_failed", 1),
            ("quota_exceeded", 1),
            ("quota_warning", 1)
        ])
    );
    let failed_event = &by_type["job_failed"][0]["data"];
    assert_eq!(failed_event["job_id"], failed["job_id"]);
    assert_eq!(failed_event["status"], "FAILED");
    assert_eq!(failed_event["error"]["code"], "embedder_refused");
    let completed: HashSet<String> = by_type["job_completed"]
        .iter()
        .map(|e| e["data"]["job_id"].as_str().unwrap().to_owned())
        .collect();
    for view in &finished {
        assert!(completed.contains(view["job_id"].as_str().unwrap()));
    }
    let done = &by_type["job_completed"][0]["data"];
    assert_eq!(done["status"], "FINISHED");
    assert!(done["chunks"].as_i64().unwrap() >= 1, "{done}");
    assert!(done["error"].is_null(), "{done}");
    let warning = &by_type["quota_warning"][0]["data"];
    assert_eq!(warning["resource"], "DOCUMENTS");
    assert_eq!(
        (warning["limit"].as_i64(), warning["current_usage"].as_i64()),
        (Some(5), Some(4))
    );
    let exceeded = &by_type["quota_exceeded"][0]["data"];
    assert_eq!(exceeded["resource"], "DOCUMENTS");
    assert_eq!(exceeded["limit"], 5);
    // The view shows the same events.
    for d in &list {
        assert!(ids.contains(d["event_id"].as_str().unwrap()), "{d}");
        assert_eq!(d["attempts"], 1);
        assert!(
            d["delivered_at"].is_string() && d["next_attempt_at"].is_null(),
            "{d}"
        );
    }

    // A tenant that turned job_completed and quota_warning off (and left
    // quota_exceeded at its default, off) hears only of the failure.
    let prefs = json!({"job_completed": false, "quota_warning": false});
    let (quiet_key, quiet_secret) = subscribe(&env, "quiet", &quiet.url(), prefs).await;
    set_quota(&env, "quiet", json!({ "DOCUMENTS": 2 })).await;
    assert_eq!(
        run_job(&env, &quiet_key, "A fine document.").await["status"],
        "FINISHED"
    );
    assert_eq!(
        run_job(&env, &quiet_key, "A refused document.").await["status"],
        "FAILED"
    );
    assert_eq!(
        run_job(&env, &quiet_key, "Another fine one.").await["status"],
        "FINISHED"
    );
    let r = env
        .post(&quiet_key, "/v1/jobs", json!({ "text": "over" }))
        .await;
    assert_error(r, 403, "quota_exceeded").await;
    // Events are recorded with their cause, so the view is complete as soon as the jobs end.
    let list = wait_for_status(&env, &quiet_key, 1, "delivered").await;
    assert_eq!(list[0]["type"], "job_failed");
    let log = quiet.log();
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0].event_type, "job_failed");
    assert!(signed_with(&quiet_secret, &log[0].signature, &log[0].body));
    assert!(
        !signed_with(&secret, &log[0].signature, &log[0].body),
        "secrets are per tenant"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_failing_three_times_gets_the_event_on_the_fourth_try() {
    let env = TestEnv::start_with(1, &refs(&fast(true))).await;
    let receiver = Receiver::start().await;
    receiver.state.fail_next.store(3, Ordering::SeqCst);
    let (key, secret) = subscribe(&env, "flaky", &receiver.url(), json!({})).await;

    let job = run_job(&env, &key, "A document whose webhook fails three times.").await;
    assert_eq!(job["status"], "FINISHED");
    let list = wait_for_status(&env, &key, 1, "delivered").await;
    let log = receiver.log();
    let answered: Vec<u16> = log.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [500, 500, 500, 200]);
    let attempts: Vec<&str> = log.iter().map(|r| r.attempt.as_str()).collect();
    assert_eq!(attempts, ["1", "2", "3", "4"]);
    for r in &log {
        assert_eq!(r.event_id, log[0].event_id, "one event, tried four times");
        assert_eq!(r.body, log[0].body, "the same body every time");
        assert!(signed_with(&secret, &r.signature, &r.body));
    }
    assert_eq!(log[0].json()["data"]["job_id"], job["job_id"]);
    let d = &list[0];
    assert_eq!(d["event_id"], log[0].event_id.as_str());
    assert_eq!(d["type"], "job_completed");
    assert_eq!(d["attempts"], 4, "{d}");
    assert_eq!(d["last_status_code"], 200, "{d}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_outlives_the_dispatchers_that_should_deliver_it() {
    // The first dispatcher processes jobs but delivers no webhooks: every event is
    // committed with no process to deliver it.
    let settings = fast_and(true, config::ENV_WEBHOOK_DELIVERY, "false");
    let env = TestEnv::start_with(1, &refs(&settings)).await;
    let receiver = Receiver::start().await;
    let (key, secret) = subscribe(&env, "patient", &receiver.url(), json!({})).await;
    let job = run_job(&env, &key, "Committed while nobody delivers.").await;
    assert_eq!(job["status"], "FINISHED");
    let list = deliveries(&env, &key).await;
    assert_eq!(list.len(), 1, "recorded with the job's end");
    assert_eq!(
        (list[0]["status"].as_str(), list[0]["attempts"].as_i64()),
        (Some("pending"), Some(0))
    );
    assert!(receiver.log().is_empty());

    // A dispatcher that delivers comes up: the event arrives, once.
    let second = env.add_dispatcher(&refs(&delivering(true))).await;
    wait_for_status(&env, &key, 1, "delivered").await;
    let log = receiver.log();
    assert_eq!(log.len(), 1);
    assert!(signed_with(&secret, &log[0].signature, &log[0].body));
    assert_eq!(log[0].json()["data"]["job_id"], job["job_id"]);

    // It stops in the middle of an attempt (the receiver never answers): the event
    // stays claimed until its lease ends, then the next dispatcher delivers it.
    receiver.state.hang.store(true, Ordering::SeqCst);
    let job = run_job(&env, &key, "Its delivery is interrupted.").await;
    let hung = eventually("the attempt to reach the receiver", || async {
        receiver.log().into_iter().find(|r| r.answered == 0)
    })
    .await;
    assert_eq!(hung.json()["data"]["job_id"], job["job_id"]);
    second.stop().await;
    receiver.state.hang.store(false, Ordering::SeqCst);
    receiver.state.release.notify_waiters();
    let third = env.add_dispatcher(&refs(&delivering(true))).await;
    let list = wait_for_status(&env, &key, 2, "delivered").await;
    let resumed = list
        .iter()
        .find(|d| d["event_id"] == hung.event_id.as_str())
        .unwrap();
    assert_eq!(resumed["attempts"], 2, "{resumed}");
    let delivered: Vec<String> = receiver
        .delivered()
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    assert_eq!(
        delivered.len(),
        2,
        "each event answered 200 once: {delivered:?}"
    );
    assert!(delivered.contains(&hung.event_id));
    third.stop().await;
    env.stop().await;
}

/// Settings of a dispatcher that delivers webhooks (the fleet's first one does not).
fn delivering(allow_private: bool) -> Vec<(&'static str, String)> {
    fast_and(allow_private, config::ENV_WEBHOOK_DELIVERY, "true")
}

async fn redeliver(env: &TestEnv, key: &str, id: &str) {
    let path = format!("/v1/tenant/webhooks/deliveries/{id}/redeliver");
    let r = env.post(key, &path, json!({})).await;
    assert_eq!(r.status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loopback_destinations_are_refused_without_the_setting() {
    // Deliveries come only from the dispatchers the test adds: first one that guards
    // private destinations, then one that allows them.
    let settings = fast_and(false, config::ENV_WEBHOOK_DELIVERY, "false");
    let env = TestEnv::start_with(1, &refs(&settings)).await;
    let guarded = env.add_dispatcher(&refs(&delivering(false))).await;
    let receiver = Receiver::start().await;
    let (key, _) = subscribe(&env, "literal", &receiver.url(), json!({})).await;
    let by_name = format!("http://localhost:{}/hook", receiver.addr.port());
    let (named_key, _) = subscribe(&env, "named", &by_name, json!({})).await;

    run_job(&env, &key, "Its webhook points at a loopback address.").await;
    run_job(
        &env,
        &named_key,
        "Its webhook points at a name for loopback.",
    )
    .await;
    let literal = wait_for_status(&env, &key, 1, "dead").await;
    let named = wait_for_status(&env, &named_key, 1, "dead").await;
    for d in [&literal[0], &named[0]] {
        assert_eq!(d["attempts"], 1, "refused for good at once: {d}");
        let error = d["last_error"].as_str().unwrap();
        assert!(
            error.contains("destination refused") && error.contains("loopback"),
            "{error}"
        );
        assert!(error.contains("TENANTRY_WEBHOOK_ALLOW_PRIVATE"), "{error}");
    }
    let named_error = named[0]["last_error"].as_str().unwrap();
    assert!(
        named_error.contains("localhost resolves to"),
        "{named_error}"
    );
    assert!(receiver.log().is_empty(), "nothing reached the receiver");

    // Redelivering a dead event tries again (and is refused again).
    let id = literal[0]["event_id"].as_str().unwrap();
    redeliver(&env, &key, id).await;
    eventually("the second refusal", || async {
        let list = deliveries(&env, &key).await;
        (list[0]["attempts"] == 2 && list[0]["status"] == "dead").then_some(())
    })
    .await;
    assert!(receiver.log().is_empty());

    // With TENANTRY_WEBHOOK_ALLOW_PRIVATE=true the same events go through.
    guarded.stop().await;
    let open = env.add_dispatcher(&refs(&delivering(true))).await;
    redeliver(&env, &key, id).await;
    let named_id = named[0]["event_id"].as_str().unwrap();
    redeliver(&env, &named_key, named_id).await;
    wait_for_status(&env, &key, 1, "delivered").await;
    wait_for_status(&env, &named_key, 1, "delivered").await;
    let arrived: HashSet<String> = receiver
        .delivered()
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    assert_eq!(arrived, HashSet::from([id.to_owned(), named_id.to_owned()]));
    assert_eq!(receiver.log().len(), 2);
    open.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_dispatchers_deliver_each_event_once() {
    let env = TestEnv::start_with(2, &refs(&fast(true))).await;
    let second = env.add_dispatcher(&refs(&delivering(true))).await;
    let third = env.add_dispatcher(&refs(&delivering(true))).await;
    let receiver = Receiver::start().await;
    let (key, secret) = subscribe(&env, "busy", &receiver.url(), json!({})).await;
    let documents: Vec<Value> = (0..40)
        .map(|i| json!({ "text": format!("Document {i} of a busy tenant.") }))
        .collect();
    let jobs = env.submit_many(&key, documents).await;
    let list = eventually("40 deliveries", || async {
        let r = env
            .get(
                &key,
                "/v1/tenant/webhooks/deliveries?limit=100&status=delivered",
            )
            .await;
        let body: Value = r.json().await.ok()?;
        let list = body["deliveries"].as_array()?.clone();
        (list.len() == 40).then_some(list)
    })
    .await;
    assert!(list.iter().all(|d| d["attempts"] == 1), "one attempt each");
    let log = receiver.log();
    assert_eq!(
        log.len(),
        40,
        "every event once, whichever dispatcher sent it"
    );
    let ids: HashSet<&str> = log.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), 40);
    let reported: HashSet<String> = log
        .iter()
        .map(|r| r.json()["data"]["job_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reported, jobs.into_iter().collect::<HashSet<_>>());
    assert!(
        log.iter()
            .all(|r| signed_with(&secret, &r.signature, &r.body))
    );
    second.stop().await;
    third.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivery_rotation_and_tenant_scoping() {
    let env = TestEnv::start_with(1, &refs(&fast(true))).await;
    let receiver = Receiver::start().await;
    let (key, old_secret) = subscribe(&env, "owner", &receiver.url(), json!({})).await;
    let (other_key, _) = subscribe(&env, "other", &receiver.url(), json!({})).await;
    run_job(&env, &key, "A document to notify about twice.").await;
    let list = wait_for_status(&env, &key, 1, "delivered").await;
    let id = list[0]["event_id"].as_str().unwrap().to_owned();
    let redeliver = format!("/v1/tenant/webhooks/deliveries/{id}/redeliver");

    // Another tenant sees nothing of it and cannot redeliver it.
    assert!(deliveries(&env, &other_key).await.is_empty());
    assert_error(
        env.post(&other_key, &redeliver, json!({})).await,
        404,
        "not_found",
    )
    .await;
    let ghost = format!(
        "/v1/tenant/webhooks/deliveries/{}/redeliver",
        uuid::Uuid::new_v4()
    );
    assert_error(env.post(&key, &ghost, json!({})).await, 404, "not_found").await;
    let bad = "/v1/tenant/webhooks/deliveries/not-an-id/redeliver";
    assert_error(env.post(&key, bad, json!({})).await, 404, "not_found").await;
    for query in [
        "limit=0",
        "limit=101",
        "status=lost",
        "cursor=nope",
        "limit=x",
    ] {
        let r = env
            .get(&key, &format!("/v1/tenant/webhooks/deliveries?{query}"))
            .await;
        assert!(r.status().is_client_error(), "{query}: {}", r.status());
    }
    let r = env
        .get(&key, "/v1/tenant/webhooks/deliveries?status=dead")
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["deliveries"], json!([]));
    let r = env.http.post(env.url(&redeliver)).send().await.unwrap();
    assert_error(r, 401, "unauthorized").await;

    // Rotation: the new secret signs, and the old one still does during the grace period.
    let new_secret = new_secret(&env, &key).await;
    assert_ne!(new_secret, old_secret);
    let r = env.post(&key, &redeliver, json!({})).await;
    assert_eq!(r.status(), 202);
    let view: Value = r.json().await.unwrap();
    assert_eq!(view["event_id"], id.as_str());
    assert_eq!(view["status"], "pending");
    eventually("the redelivery", || async {
        let list = deliveries(&env, &key).await;
        (list[0]["attempts"] == 2 && list[0]["status"] == "delivered").then_some(())
    })
    .await;
    let log: Vec<Received> = receiver
        .log()
        .into_iter()
        .filter(|r| r.event_id == id)
        .collect();
    assert_eq!(log.len(), 2, "{log:#?}");
    assert_eq!(log[0].body, log[1].body, "the same event");
    assert!(signed_with(&old_secret, &log[0].signature, &log[0].body));
    assert_eq!(
        log[1].signature.matches("v1=").count(),
        2,
        "{}",
        log[1].signature
    );
    assert!(signed_with(&new_secret, &log[1].signature, &log[1].body));
    assert!(signed_with(&old_secret, &log[1].signature, &log[1].body));

    // tenantryctl shows the deliveries and redelivers.
    let table = crate::ops::ctl(&env, &["--key", &key, "webhooks", "deliveries"])
        .await
        .unwrap();
    assert!(
        table.contains(&id) && table.contains("job_completed"),
        "{table}"
    );
    let said = crate::ops::ctl(&env, &["--key", &key, "webhooks", "redeliver", &id])
        .await
        .unwrap();
    assert!(said.contains("due again"), "{said}");
    eventually("the third delivery", || async {
        let list = deliveries(&env, &key).await;
        (list[0]["attempts"] == 3 && list[0]["status"] == "delivered").then_some(())
    })
    .await;
    env.stop().await;
}

/// The tenant's events of one type, straight from the outbox.
async fn recorded(env: &TestEnv, tenant: &str, event_type: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events WHERE tenant_id = $1 AND event_type = $2",
    )
    .bind(tenant)
    .bind(event_type)
    .fetch_one(env.pool())
    .await
    .unwrap()
}

fn all_events() -> Value {
    json!({"job_completed": true, "job_failed": true, "quota_warning": true, "quota_exceeded": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_calls_warn_at_eighty_percent_and_a_refusal_is_reported_once() {
    let env = TestEnv::start_with(0, &refs(&fast(true))).await;
    let receiver = Receiver::start().await;
    // Two calls: the configuration and the secret.
    let (key, secret) = subscribe(&env, "chatty", &receiver.url(), all_events()).await;
    set_quota(&env, "chatty", json!({ "API_CALLS_PER_HOUR": 10 })).await;
    for _ in 0..6 {
        assert_eq!(env.get(&key, "/v1/tenant").await.status(), 200);
    }
    // The 8th call crossed 80 %; the 11th and later are refused. Calls refused by this
    // dispatcher's own limiter (rate_limited) do not reach Postgres; one reaches it at
    // least every few seconds and is refused there: that is the quota_exceeded.
    eventually("a call refused by the quota", || async {
        let r = env.get(&key, "/v1/tenant").await;
        let body: Value = r.json().await.ok()?;
        (body["error"]["code"] == "quota_exceeded").then_some(())
    })
    .await;
    let r = env.get(&key, "/v1/tenant").await;
    assert_eq!(r.status(), 429);
    let log = eventually("the warning and the refusal", || async {
        let log = receiver.delivered();
        (log.len() == 2).then_some(log)
    })
    .await;
    let by_type: BTreeMap<String, Value> = log
        .iter()
        .map(|r| {
            assert!(signed_with(&secret, &r.signature, &r.body));
            (r.event_type.clone(), r.json()["data"].clone())
        })
        .collect();
    let warning = &by_type["quota_warning"];
    assert_eq!(warning["resource"], "API_CALLS_PER_HOUR");
    assert_eq!(
        (warning["limit"].as_i64(), warning["current_usage"].as_i64()),
        (Some(10), Some(8))
    );
    assert_eq!(by_type["quota_exceeded"]["resource"], "API_CALLS_PER_HOUR");
    assert_eq!(
        recorded(&env, "chatty", "quota_exceeded").await,
        1,
        "once an hour"
    );
    assert_eq!(recorded(&env, "chatty", "quota_warning").await, 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_measured_size_that_does_not_fit_reports_the_failure_and_the_quota() {
    // No workers yet: the job waits while its tenant's chunking and storage limit change.
    let env = TestEnv::start_with(0, &refs(&fast(true))).await;
    let receiver = Receiver::start().await;
    let (key, _) = subscribe(&env, "grower", &receiver.url(), all_events()).await;
    let text = "A sentence that fills the document with words. ".repeat(120);
    let accepted = env.submit(&key, json!({ "text": text })).await;
    // Smaller chunks than the estimate assumed: the measured size outgrows the
    // reservation, and no storage is left to settle the difference.
    let r = env
        .http
        .put(env.url("/v1/tenant/config"))
        .bearer_auth(&key)
        .json(&json!({
            "webhook_url": receiver.url(), "notification_preferences": all_events(),
            "default_chunk_size": 500, "default_chunk_overlap": 0
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    set_quota(&env, "grower", json!({ "STORAGE_MB": 0 })).await;
    let workers = env.start_workers(1);
    let job = env
        .wait_for_job(&key, accepted["job_id"].as_str().unwrap())
        .await;
    assert_eq!(job["status"], "FAILED", "{job}");
    assert_eq!(job["error"]["code"], "quota_exceeded", "{job}");
    let list = wait_for_status(&env, &key, 2, "delivered").await;
    let mut types: Vec<&str> = list.iter().map(|d| d["type"].as_str().unwrap()).collect();
    types.sort();
    assert_eq!(types, ["job_failed", "quota_exceeded"]);
    let exceeded = list.iter().find(|d| d["type"] == "quota_exceeded").unwrap();
    assert_eq!(exceeded["data"]["resource"], "STORAGE_MB", "{exceeded}");
    assert_eq!(exceeded["data"]["job_id"], job["job_id"]);
    assert_eq!(receiver.delivered().len(), 2);
    workers.stop().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_hangs_does_not_hold_up_other_tenants() {
    let settings = fast_and(true, config::ENV_WEBHOOK_TIMEOUT_SECS, "30");
    let env = TestEnv::start_with(1, &refs(&settings)).await;
    let slow = Receiver::start().await;
    slow.state.hang.store(true, Ordering::SeqCst);
    let fast_receiver = Receiver::start().await;
    let (slow_key, _) = subscribe(&env, "slow", &slow.url(), json!({})).await;
    let (fast_key, _) = subscribe(&env, "quick", &fast_receiver.url(), json!({})).await;

    run_job(&env, &slow_key, "Its receiver never answers.").await;
    eventually("the slow receiver to be called", || async {
        (!slow.log().is_empty()).then_some(())
    })
    .await;
    run_job(&env, &fast_key, "Its receiver answers at once.").await;
    // Delivered while the other attempt is still hanging (it may take 30 s).
    eventually_within(
        "the other tenant's delivery",
        Duration::from_secs(10),
        || async {
            let list = deliveries(&env, &fast_key).await;
            (list.len() == 1 && list[0]["status"] == "delivered").then_some(())
        },
    )
    .await;
    let stuck = deliveries(&env, &slow_key).await;
    assert_eq!(
        (stuck[0]["status"].as_str(), stuck[0]["attempts"].as_i64()),
        (Some("pending"), Some(1))
    );
    assert_eq!(slow.log()[0].answered, 0);
    env.stop().await;
}

/// The stored form of a tenant's current and previous signing secret.
async fn stored_secrets(env: &TestEnv, tenant: &str) -> (String, Option<String>) {
    sqlx::query_as("SELECT secret, previous_secret FROM webhook_secrets WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(env.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signing_secrets_are_sealed_at_rest_and_survive_a_key_rotation() {
    const KEY_ONE: &str = "sealing-key-one-0123456789";
    const KEY_TWO: &str = "sealing-key-two-0123456789";
    // The first dispatcher seals under KEY_ONE and delivers nothing.
    let mut settings = fast_and(true, config::ENV_WEBHOOK_DELIVERY, "false");
    settings.push((config::ENV_SECRETS_KEY, KEY_ONE.to_owned()));
    let env = TestEnv::start_with(1, &refs(&settings)).await;
    let receiver = Receiver::start().await;
    let (key, first_secret) = subscribe(&env, "sealed", &receiver.url(), json!({})).await;
    // A rotation keeps the first secret signing beside the new one: both are stored.
    let secret = new_secret(&env, &key).await;
    let (current, previous) = stored_secrets(&env, "sealed").await;
    let previous = previous.expect("the rotated-out secret is kept for its grace period");
    for (stored, clear) in [(&current, &secret), (&previous, &first_secret)] {
        assert!(stored.starts_with("sealed:v1:"), "{stored}");
        assert!(!stored.contains(clear.trim_start_matches("whsec_")));
    }
    // A tenant whose secret was stored in clear before sealing existed.
    let (legacy_key, legacy_secret) = subscribe(&env, "legacy", &receiver.url(), json!({})).await;
    sqlx::query("UPDATE webhook_secrets SET secret = $1 WHERE tenant_id = 'legacy'")
        .bind(&legacy_secret)
        .execute(env.pool())
        .await
        .unwrap();
    run_job(&env, &key, "Delivered after the key rotation.").await;
    run_job(&env, &legacy_key, "Delivered after sealing.").await;

    // The operator rotates the sealing key: KEY_TWO seals, KEY_ONE still opens. The
    // dispatcher that starts reseals every row under KEY_TWO, then delivers.
    let mut rotated = delivering(true);
    rotated.push((config::ENV_SECRETS_KEY, KEY_TWO.to_owned()));
    rotated.push((config::ENV_SECRETS_KEY_PREVIOUS, KEY_ONE.to_owned()));
    let second = env.add_dispatcher(&refs(&rotated)).await;
    let (resealed, resealed_previous) = stored_secrets(&env, "sealed").await;
    assert!(resealed.starts_with("sealed:v1:") && resealed != current);
    let resealed_previous = resealed_previous.unwrap();
    assert!(resealed_previous.starts_with("sealed:v1:") && resealed_previous != previous);
    let (legacy_stored, _) = stored_secrets(&env, "legacy").await;
    assert!(legacy_stored.starts_with("sealed:v1:"), "{legacy_stored}");
    assert!(!legacy_stored.contains(legacy_secret.trim_start_matches("whsec_")));

    wait_for_status(&env, &key, 1, "delivered").await;
    wait_for_status(&env, &legacy_key, 1, "delivered").await;
    let log = receiver.delivered();
    assert_eq!(log.len(), 2, "{log:?}");
    for tenant_secrets in [[&secret, &first_secret], [&legacy_secret, &legacy_secret]] {
        assert!(
            log.iter()
                .any(|r| tenant_secrets
                    .iter()
                    .all(|s| signed_with(s, &r.signature, &r.body))),
            "a delivery signed with each of the tenant's secrets"
        );
    }
    second.stop().await;
    env.stop().await;
}
