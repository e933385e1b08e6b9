//! Hostile input at the HTTP edge (issue 17): a NUL in any string a request carries,
//! bodies over the limit on every endpoint, arrays where an object is expected. Each is
//! a precise 4xx with the JSON error body, and nothing is recorded.

use serde_json::{Value, json};
use tenantry::config;
use tenantry_tests::{ADMIN_TOKEN, TestEnv, assert_error};

const NUL: &str = "a\u{0}b";

/// Rows of the tables a refused request could have written to.
async fn rows(env: &TestEnv) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "tenants",
        "api_keys",
        "jobs",
        "documents",
        "audit_log",
        "webhook_events",
    ] {
        let sql = format!("SELECT count(*) FROM {table}");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(env.pool())
            .await
            .unwrap();
        counts.push(n);
    }
    counts
}

async fn send(
    env: &TestEnv,
    method: reqwest::Method,
    token: &str,
    path: &str,
    body: &Value,
) -> reqwest::Response {
    env.http
        .request(method, env.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn send_raw(
    env: &TestEnv,
    method: reqwest::Method,
    token: &str,
    path: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    env.http
        .request(method, env.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// A request and the field its refusal names: (method, token, path, body, field).
type Case<'a> = (reqwest::Method, &'a str, &'a str, Value, &'a str);

/// Sends each case; asserts a 422 `invalid_value` naming its field, and that nothing
/// was written by it: no row, and tenant `acme` (whose key is `key`) as it was.
async fn assert_all_refused(env: &TestEnv, key: &str, cases: Vec<Case<'_>>) {
    let config_before = config_of(env, key).await;
    let tenant_before = admin_view(env, "acme").await;
    let before = rows(env).await;
    for (method, token, path, body, field) in cases {
        let case = format!("{method} {path} {body}");
        let r = send(env, method, token, path, &body).await;
        let answer = assert_error(r, 422, "invalid_value").await;
        assert_eq!(answer["error"]["field"], field, "{case}: {answer}");
        assert_eq!(rows(env).await, before, "{case} recorded something");
    }
    assert_eq!(config_of(env, key).await, config_before);
    assert_eq!(admin_view(env, "acme").await, tenant_before);
}

/// The stored record of a tenant (not its activity figures, which a refused call with
/// its key may move).
async fn admin_view(env: &TestEnv, tenant: &str) -> Value {
    let r = env.admin_get(&format!("/v1/admin/tenants/{tenant}")).await;
    let view: Value = r.json().await.unwrap();
    let fields = [
        "name",
        "email",
        "status",
        "plan",
        "isolation",
        "quota_overrides",
        "config",
        "updated_at",
    ];
    fields
        .iter()
        .map(|f| (f.to_string(), view[f].clone()))
        .collect()
}

async fn config_of(env: &TestEnv, key: &str) -> Value {
    env.get(key, "/v1/tenant/config")
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_nul_is_refused_wherever_a_string_reaches_postgres() {
    use reqwest::Method;
    let env = TestEnv::start(0).await;
    let key = env.tenant("acme").await;
    let before = rows(&env).await;

    let admin = ADMIN_TOKEN;
    let cases: Vec<Case> = vec![
        // The tenant's configuration: a value, a key, nested both ways, the webhook URL.
        (
            Method::PUT,
            &key,
            "/v1/tenant/config",
            json!({ "processing_preferences": { "model": NUL } }),
            "processing_preferences.model",
        ),
        (
            Method::PUT,
            &key,
            "/v1/tenant/config",
            json!({ "processing_preferences": { "deep": { "list": ["ok", NUL] } } }),
            "processing_preferences.deep.list[1]",
        ),
        (
            Method::PUT,
            &key,
            "/v1/tenant/config",
            json!({ "processing_preferences": { NUL: true } }),
            "processing_preferences",
        ),
        (
            Method::PUT,
            &key,
            "/v1/tenant/config",
            json!({ "processing_preferences": { "deep": { NUL: 1 } } }),
            "processing_preferences.deep",
        ),
        (
            Method::PUT,
            &key,
            "/v1/tenant/config",
            json!({ "webhook_url": format!("https://example.com/{NUL}") }),
            "webhook_url",
        ),
        (
            Method::PUT,
            &key,
            "/v1/tenant/config",
            json!({ "default_database_id": NUL }),
            "default_database_id",
        ),
        // Admin: plan, name, email on create and on change; key names; quota keys.
        (
            Method::POST,
            admin,
            "/v1/admin/tenants",
            json!({ "id": "other", "name": "Other", "email": "o@example.com", "plan": NUL }),
            "plan",
        ),
        (
            Method::POST,
            admin,
            "/v1/admin/tenants",
            json!({ "id": "other", "name": NUL, "email": "o@example.com" }),
            "name",
        ),
        (
            Method::PATCH,
            admin,
            "/v1/admin/tenants/acme",
            json!({ "plan": NUL }),
            "plan",
        ),
        (
            Method::PATCH,
            admin,
            "/v1/admin/tenants/acme",
            json!({ "email": NUL }),
            "email",
        ),
        (
            Method::POST,
            admin,
            "/v1/admin/tenants/acme/keys",
            json!({ "name": NUL }),
            "name",
        ),
        (
            Method::PUT,
            admin,
            "/v1/admin/tenants/acme/quotas",
            json!({ NUL: 5 }),
            "body",
        ),
        // Documents: text, metadata (value and key, nested), database, source type,
        // each batch item.
        (
            Method::POST,
            &key,
            "/v1/jobs",
            json!({ "text": NUL }),
            "text",
        ),
        (
            Method::POST,
            &key,
            "/v1/jobs",
            json!({ "text": "x", "metadata": { "k": { "n": [NUL] } } }),
            "metadata.k.n[0]",
        ),
        (
            Method::POST,
            &key,
            "/v1/jobs",
            json!({ "text": "x", "metadata": { "k": { NUL: 1 } } }),
            "metadata.k",
        ),
        (
            Method::POST,
            &key,
            "/v1/jobs",
            json!({ "text": "x", "database": NUL }),
            "database",
        ),
        (
            Method::POST,
            &key,
            "/v1/jobs",
            json!({ "text": "x", "source_type": NUL }),
            "source_type",
        ),
        (
            Method::POST,
            &key,
            "/v1/jobs/batch",
            json!({ "documents": [{ "text": "fine" }, { "text": NUL }] }),
            "documents[1].text",
        ),
        (
            Method::POST,
            &key,
            "/v1/search",
            json!({ "query": NUL }),
            "query",
        ),
        (
            Method::POST,
            &key,
            "/v1/search",
            json!({ "query": "x", "filter": { "k": NUL } }),
            "filter.k",
        ),
    ];
    assert_all_refused(&env, &key, cases).await;

    // A query string: a NUL there is refused before any handler reads it.
    for path in [
        "/v1/jobs?status=%00",
        "/v1/tenant/webhooks/deliveries?status=a%00",
    ] {
        let r = env.get(&key, path).await;
        assert_error(r, 400, "invalid_query").await;
    }

    // Ids in a path are parsed before anything is read: a NUL there names nothing.
    let r = env.get(&key, "/v1/jobs/a%00b").await;
    assert_error(r, 404, "not_found").await;
    let r = env.admin_get("/v1/admin/tenants/acme%00").await;
    assert_error(r, 404, "not_found").await;
    let r = env
        .http
        .delete(env.url("/v1/documents/%00"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "not_found").await;
    assert_eq!(rows(&env).await, before);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_bodies_over_the_limit_answer_the_json_413_everywhere() {
    use reqwest::Method;
    let env = TestEnv::start_with(0, &[(config::ENV_MAX_BODY_BYTES, "4096")]).await;
    let key = env.tenant("acme").await;
    let before = rows(&env).await;
    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(8192)).into_bytes();
    for (method, token, path) in [
        (Method::PATCH, ADMIN_TOKEN, "/v1/admin/tenants/acme"),
        (Method::POST, ADMIN_TOKEN, "/v1/admin/tenants/acme/keys"),
        (Method::POST, ADMIN_TOKEN, "/v1/admin/tenants"),
        (Method::PUT, ADMIN_TOKEN, "/v1/admin/tenants/acme/quotas"),
        (Method::PUT, key.as_str(), "/v1/tenant/config"),
        (Method::POST, key.as_str(), "/v1/jobs"),
        (Method::POST, key.as_str(), "/v1/search"),
    ] {
        let r = send_raw(&env, method.clone(), token, path, big.clone()).await;
        assert_eq!(
            r.headers()["content-type"],
            "application/json",
            "{method} {path}"
        );
        assert_error(r, 413, "payload_too_large").await;
    }
    assert_eq!(rows(&env).await, before);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_arrays_are_not_read_as_objects() {
    use reqwest::Method;
    let env = TestEnv::start(0).await;
    let key = env.tenant("acme").await;
    let admin = ADMIN_TOKEN;
    let cases: Vec<Case> = vec![
        (Method::POST, &key, "/v1/jobs", json!(["some text"]), "body"),
        (
            Method::POST,
            &key,
            "/v1/jobs",
            json!({ "text": "x", "options": [600, 0, "FIXED"] }),
            "options",
        ),
        (
            Method::POST,
            &key,
            "/v1/jobs/batch",
            json!([[{ "text": "x" }]]),
            "body",
        ),
        (
            Method::POST,
            &key,
            "/v1/jobs/batch",
            json!({ "documents": [["x"]] }),
            "documents[0]",
        ),
        (Method::POST, &key, "/v1/search", json!(["x"]), "body"),
        (
            Method::PUT,
            &key,
            "/v1/tenant/config",
            json!([null, 600]),
            "body",
        ),
        (
            Method::POST,
            admin,
            "/v1/admin/tenants",
            json!(["other", "Other", "o@example.com"]),
            "body",
        ),
        (
            Method::PATCH,
            admin,
            "/v1/admin/tenants/acme",
            json!(["Renamed"]),
            "body",
        ),
        (
            Method::POST,
            admin,
            "/v1/admin/tenants/acme/keys",
            json!([]),
            "body",
        ),
        (
            Method::POST,
            admin,
            "/v1/admin/tenants/acme/keys",
            json!(["named"]),
            "body",
        ),
        (
            Method::PUT,
            admin,
            "/v1/admin/tenants/acme/quotas",
            json!([5]),
            "body",
        ),
    ];
    assert_all_refused(&env, &key, cases).await;
    env.stop().await;
}
