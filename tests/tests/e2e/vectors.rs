//! Vector namespaces end to end: tenant-scoped search in both isolation modes, deleting a
//! document (points and usage go down), and moving a tenant between modes without losing
//! or doubling a point.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use tenantry::tenancy::{DatabaseName, IsolationMode, Namespace, TenantId};
use tenantry::vector::migrate::point_ids;
use tenantry_tests::{ADMIN_TOKEN, TestEnv, assert_error, eventually};
use uuid::Uuid;

fn ns(env: &TestEnv, tenant: &str, database: &str, mode: IsolationMode) -> Namespace {
    Namespace::new(
        &env.ids.prefix,
        &TenantId::parse(tenant).unwrap(),
        &DatabaseName::parse(database).unwrap(),
        mode,
    )
}

/// A document of `sentences` sentences about `topic`.
fn document(topic: &str, sentences: usize) -> String {
    (0..sentences)
        .map(|i| format!("Section {i} of the notes is about {topic} and nothing else."))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Submits and waits; returns (document id, chunks).
async fn ingest(env: &TestEnv, key: &str, body: Value) -> (String, u64) {
    let accepted = env.submit(key, body).await;
    let view = env
        .wait_for_job(key, accepted["job_id"].as_str().unwrap())
        .await;
    assert_eq!(view["status"], "FINISHED", "{view}");
    (
        accepted["document_id"].as_str().unwrap().to_owned(),
        view["chunks"].as_u64().unwrap(),
    )
}

async fn search(env: &TestEnv, key: &str, body: Value) -> Vec<Value> {
    let r = env.post(key, "/v1/search", body).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "search: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["hits"].as_array().unwrap().clone()
}

fn documents_of(hits: &[Value]) -> BTreeSet<String> {
    hits.iter()
        .map(|h| h["document_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn delete(env: &TestEnv, key: &str, path: &str) -> reqwest::Response {
    env.http
        .delete(env.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn patch_isolation(env: &TestEnv, tenant: &str, body: Value) -> reqwest::Response {
    env.http
        .patch(env.url(&format!("/v1/admin/tenants/{tenant}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Switches and waits for the move to finish; returns the finished move.
async fn switch_and_wait(env: &TestEnv, tenant: &str, mode: &str) -> Value {
    let r = patch_isolation(env, tenant, json!({ "isolation": mode })).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["tenant"]["isolation"], mode, "{body}");
    assert_eq!(body["move"]["to"], mode, "{body}");
    assert_eq!(body["move"]["state"], "moving", "{body}");
    eventually(&format!("{tenant}'s move to {mode}"), || async {
        let r = env
            .admin_get(&format!("/v1/admin/tenants/{tenant}/isolation"))
            .await;
        let v: Value = r.json().await.ok()?;
        (v["move"]["state"] == "finished").then_some(v)
    })
    .await
}

async fn usage(env: &TestEnv, tenant: &str) -> (i64, i64) {
    sqlx::query_as("SELECT documents, storage_bytes FROM tenant_usage WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(env.pool())
        .await
        .unwrap()
}

/// The acceptance test of the issue: a phrase of A's document is found by A and never
/// returned to B, in both modes (in partition mode A and B share one collection), for
/// every database name B tries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenants_phrase_is_found_by_it_and_never_by_another_in_both_modes() {
    let env = TestEnv::start(2).await;
    for mode in ["collection", "partition"] {
        let (a, b) = (format!("alpha-{mode}"), format!("beta-{mode}"));
        let key_a = env
            .tenant_with(
                json!({ "id": a, "name": "A", "email": "a@example.com", "isolation": mode }),
            )
            .await;
        let key_b = env
            .tenant_with(
                json!({ "id": b, "name": "B", "email": "b@example.com", "isolation": mode }),
            )
            .await;
        let (doc_a, _) = ingest(
            &env,
            &key_a,
            json!({ "text": document("the zeppelin aurora borealis", 6), "metadata": { "lang": "en" } }),
        )
        .await;
        let (doc_a_de, _) = ingest(
            &env,
            &key_a,
            json!({ "text": document("the zeppelin in german", 3), "metadata": { "lang": "de", "year": 2024, "draft": true } }),
        )
        .await;
        let (doc_b, _) = ingest(
            &env,
            &key_b,
            json!({ "text": document("marmalade and toast", 4) }),
        )
        .await;

        // A finds its phrase, best hit first, with the fields of the contract.
        let hits = search(
            &env,
            &key_a,
            json!({ "query": "zeppelin aurora borealis", "limit": 5 }),
        )
        .await;
        assert!(!hits.is_empty() && hits.len() <= 5, "{mode}: {hits:?}");
        let best = &hits[0];
        assert_eq!(best["document_id"], doc_a.as_str(), "{mode}: {best}");
        assert!(best["text"].as_str().unwrap().contains("aurora"), "{best}");
        assert!(best["chunk_index"].is_u64(), "{best}");
        assert!(best["score"].as_f64().unwrap() > 0.0, "{best}");
        assert_eq!(best["metadata"], json!({ "lang": "en" }), "{best}");
        let own = BTreeSet::from([doc_a.clone(), doc_a_de.clone()]);
        assert!(documents_of(&hits).is_subset(&own), "{mode}: {hits:?}");

        // The metadata filter narrows to equal values only.
        let de = search(
            &env,
            &key_a,
            json!({ "query": "zeppelin", "filter": { "lang": "de" } }),
        )
        .await;
        assert_eq!(
            documents_of(&de),
            BTreeSet::from([doc_a_de.clone()]),
            "{mode}"
        );
        let typed = search(
            &env,
            &key_a,
            json!({ "query": "zeppelin", "filter": { "year": 2024, "draft": true } }),
        )
        .await;
        assert_eq!(documents_of(&typed), BTreeSet::from([doc_a_de.clone()]));
        let none = search(
            &env,
            &key_a,
            json!({ "query": "zeppelin", "filter": { "lang": "fr" } }),
        )
        .await;
        assert!(none.is_empty(), "{none:?}");

        // B never sees A's points: whatever database, filter or limit it asks for.
        for database in [
            None,
            Some("default"),
            Some("other"),
            Some(a.as_str()),
            Some("default_default"),
            Some("c5_alpha"),
        ] {
            let mut body = json!({ "query": "zeppelin aurora borealis", "limit": 100 });
            if let Some(db) = database {
                body["database"] = json!(db);
            }
            let hits = search(&env, &key_b, body.clone()).await;
            let seen = documents_of(&hits);
            assert!(
                seen.is_subset(&BTreeSet::from([doc_b.clone()])),
                "{mode}: B saw {seen:?} searching {body}"
            );
            body["filter"] = json!({ "lang": "en" });
            assert!(search(&env, &key_b, body).await.is_empty(), "{mode}");
        }
        // B's own document is found by B.
        let hits = search(&env, &key_b, json!({ "query": "marmalade toast" })).await;
        assert_eq!(documents_of(&hits), BTreeSet::from([doc_b.clone()]));
    }
    env.stop().await;
}

#[tokio::test]
async fn bad_searches_are_precise_4xx() {
    let env = TestEnv::start(0).await;
    let key = env.tenant("acme").await;
    for (body, field) in [
        (json!({}), "query"),
        (json!({ "query": "" }), "query"),
        (json!({ "query": 7 }), "query"),
        (json!({ "query": "x", "limit": 0 }), "limit"),
        (json!({ "query": "x", "limit": 101 }), "limit"),
        (json!({ "query": "x", "limit": "ten" }), "limit"),
        (json!({ "query": "x", "limit": 2.5 }), "limit"),
        (json!({ "query": "x", "database": "Bad Name" }), "database"),
        (json!({ "query": "x", "filter": [1] }), "filter"),
        (json!({ "query": "x", "filter": { "a.b": "c" } }), "filter"),
        (
            json!({ "query": "x", "filter": { "tenant_id": 1.5 } }),
            "filter.tenant_id",
        ),
        (
            json!({ "query": "x", "filter": { "lang": null } }),
            "filter.lang",
        ),
        (json!({ "query": "x".repeat(9000) }), "query"),
    ] {
        let body_text = body.to_string();
        let r = env.post(&key, "/v1/search", body).await;
        let error = assert_error(r, 422, "invalid_value").await;
        assert_eq!(error["error"]["field"], field, "{body_text}: {error}");
    }
    let r = env
        .post(
            &key,
            "/v1/search",
            json!({ "query": "x", "tenant": "other" }),
        )
        .await;
    assert_error(r, 422, "invalid_value").await;
    let r = env
        .post("tnry_nope", "/v1/search", json!({ "query": "x" }))
        .await;
    assert_eq!(r.status(), 401);
    // A database the tenant never wrote to is empty, not an error.
    assert!(
        search(&env, &key, json!({ "query": "anything" }))
            .await
            .is_empty()
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_document_removes_its_points_and_releases_its_usage() {
    let env = TestEnv::start(2).await;
    for mode in ["collection", "partition"] {
        let (a, b) = (format!("delete-a-{mode}"), format!("delete-b-{mode}"));
        let key_a = env
            .tenant_with(
                json!({ "id": a, "name": "A", "email": "a@example.com", "isolation": mode }),
            )
            .await;
        let key_b = env
            .tenant_with(
                json!({ "id": b, "name": "B", "email": "b@example.com", "isolation": mode }),
            )
            .await;
        let isolation = IsolationMode::parse(mode).unwrap();
        let space = ns(&env, &a, "default", isolation);
        let (doc1, chunks1) =
            ingest(&env, &key_a, json!({ "text": document("walrus", 200) })).await;
        let (doc2, chunks2) =
            ingest(&env, &key_a, json!({ "text": document("pelican", 30) })).await;
        assert!(chunks1 > 1);
        let (_doc_b, chunks_b) =
            ingest(&env, &key_b, json!({ "text": document("walrus", 50) })).await;
        let store = &env.state.store;
        assert_eq!(store.count(&space, None).await.unwrap(), chunks1 + chunks2);
        let (docs_before, bytes_before) = usage(&env, &a).await;
        assert_eq!(docs_before, 2);

        // Another tenant's document, an unknown one, a malformed id: 404, nothing changes.
        for (key, id) in [
            (&key_b, doc1.clone()),
            (&key_a, Uuid::new_v4().to_string()),
            (&key_a, "not-a-uuid".to_owned()),
        ] {
            let r = delete(&env, key, &format!("/v1/documents/{id}")).await;
            assert_error(r, 404, "not_found").await;
        }
        assert_eq!(store.count(&space, None).await.unwrap(), chunks1 + chunks2);

        let r = delete(&env, &key_a, &format!("/v1/documents/{doc1}")).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["points_removed"].as_u64(), Some(chunks1), "{body}");
        assert_eq!(body["already_deleted"], false, "{body}");
        let released = body["released_bytes"].as_i64().unwrap();
        assert!(released > 0, "{body}");

        // Points and usage go down; the rest stays.
        assert_eq!(store.count(&space, None).await.unwrap(), chunks2);
        let doc1_uuid = Uuid::parse_str(&doc1).unwrap();
        assert_eq!(store.count(&space, Some(doc1_uuid)).await.unwrap(), 0);
        let (docs_after, bytes_after) = usage(&env, &a).await;
        assert_eq!(docs_after, 1);
        assert_eq!(bytes_after, bytes_before - released);
        let hits = search(&env, &key_a, json!({ "query": "walrus", "limit": 100 })).await;
        assert_eq!(
            documents_of(&hits),
            BTreeSet::from([doc2.clone()]),
            "{hits:?}"
        );
        // B's points, at the same words, are untouched.
        let b_space = ns(&env, &b, "default", isolation);
        assert_eq!(store.count(&b_space, None).await.unwrap(), chunks_b);

        // Again: answered, nothing released twice.
        let r = delete(&env, &key_a, &format!("/v1/documents/{doc1}")).await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["already_deleted"], true, "{body}");
        assert_eq!(body["released_bytes"], 0, "{body}");
        assert_eq!(usage(&env, &a).await, (docs_after, bytes_after));
    }
    env.stop().await;
}

/// Every id of `tenant` in each mode's namespace of `database`.
async fn ids(env: &TestEnv, tenant: &str, database: &str, mode: IsolationMode) -> BTreeSet<Uuid> {
    point_ids(env.state.store.as_ref(), &ns(env, tenant, database, mode))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switching_isolation_moves_every_point_once_and_search_keeps_working() {
    let env = TestEnv::start(2).await;
    let key_a = env.tenant("mover").await;
    let key_b = env
        .tenant_with(json!({ "id": "neighbour", "name": "N", "email": "n@example.com", "isolation": "partition" }))
        .await;
    let mut chunks_by_db = [0u64, 0u64];
    for (i, (db, topic, n)) in [
        ("default", "lighthouse keepers", 120),
        ("default", "orchards", 20),
        ("notes", "glaciers", 60),
    ]
    .into_iter()
    .enumerate()
    {
        let (_, chunks) = ingest(
            &env,
            &key_a,
            json!({ "text": document(topic, n), "database": db, "metadata": { "n": i } }),
        )
        .await;
        chunks_by_db[usize::from(db == "notes")] += chunks;
    }
    let (_, neighbour_chunks) = ingest(
        &env,
        &key_b,
        json!({ "text": document("lighthouse keepers", 40) }),
    )
    .await;
    let neighbour = || ids(&env, "neighbour", "default", IsolationMode::Partition);
    let neighbour_before = neighbour().await;
    assert_eq!(neighbour_before.len() as u64, neighbour_chunks);

    let before = [
        ids(&env, "mover", "default", IsolationMode::Collection).await,
        ids(&env, "mover", "notes", IsolationMode::Collection).await,
    ];
    assert_eq!(before[0].len() as u64, chunks_by_db[0]);
    assert_eq!(before[1].len() as u64, chunks_by_db[1]);

    // Collection → partition: into the collection the neighbour already uses.
    let finished = switch_and_wait(&env, "mover", "partition").await;
    assert_eq!(finished["isolation"], "partition");
    assert_eq!(
        finished["move"]["points_moved"].as_u64(),
        Some(chunks_by_db[0] + chunks_by_db[1]),
        "{finished}"
    );
    for (i, db) in ["default", "notes"].into_iter().enumerate() {
        let moved = ids(&env, "mover", db, IsolationMode::Partition).await;
        assert_eq!(moved, before[i], "{db}: the same points, each once");
        let store = &env.state.store;
        let space = ns(&env, "mover", db, IsolationMode::Partition);
        assert_eq!(
            store.count(&space, None).await.unwrap(),
            before[i].len() as u64
        );
        let old = ns(&env, "mover", db, IsolationMode::Collection);
        assert_eq!(
            store.count(&old, None).await.unwrap(),
            0,
            "{db}: old namespace emptied"
        );
    }
    assert_eq!(
        neighbour().await,
        neighbour_before,
        "the neighbour is untouched"
    );
    let hits = search(
        &env,
        &key_a,
        json!({ "query": "lighthouse keepers", "limit": 100 }),
    )
    .await;
    assert!(!hits.is_empty());
    let hits_b = search(
        &env,
        &key_b,
        json!({ "query": "lighthouse keepers", "limit": 100 }),
    )
    .await;
    assert_eq!(
        hits_b.len() as u64,
        neighbour_chunks,
        "B sees its own points only"
    );
    let notes = search(
        &env,
        &key_a,
        json!({ "query": "glaciers", "database": "notes", "limit": 100 }),
    )
    .await;
    assert_eq!(notes.len() as u64, chunks_by_db[1]);

    // The same mode again: nothing to do. A wrong value: 422. Unknown tenant: 404.
    let r = patch_isolation(&env, "mover", json!({ "isolation": "partition" })).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(body["move"].is_null(), "{body}");
    let r = patch_isolation(&env, "mover", json!({ "isolation": "shared" })).await;
    assert_error(r, 422, "invalid_value").await;
    let r = patch_isolation(&env, "nobody", json!({ "isolation": "partition" })).await;
    assert_error(r, 404, "not_found").await;

    // Partition → collection, with a document submitted while the move runs. The move
    // waits at least the tenant caches' period, so a second switch right away must wait.
    let r = patch_isolation(&env, "mover", json!({ "isolation": "collection" })).await;
    assert_eq!(r.status(), 202);
    let r = patch_isolation(&env, "mover", json!({ "isolation": "partition" })).await;
    assert_error(r, 409, "isolation_move_in_progress").await;
    let (late_doc, late_chunks) = ingest(
        &env,
        &key_a,
        json!({ "text": document("lighthouse lamps", 15) }),
    )
    .await;
    eventually("the move back to collection", || async {
        let v: Value = env
            .admin_get("/v1/admin/tenants/mover/isolation")
            .await
            .json()
            .await
            .ok()?;
        (v["move"]["state"] == "finished" && v["move"]["to"] == "collection").then_some(())
    })
    .await;
    let back = ids(&env, "mover", "default", IsolationMode::Collection).await;
    assert!(back.is_superset(&before[0]), "nothing lost");
    assert_eq!(
        back.len() as u64,
        chunks_by_db[0] + late_chunks,
        "nothing doubled"
    );
    assert_eq!(
        ids(&env, "mover", "notes", IsolationMode::Collection).await,
        before[1]
    );
    for db in ["default", "notes"] {
        let shared = ns(&env, "mover", db, IsolationMode::Partition);
        assert_eq!(env.state.store.count(&shared, None).await.unwrap(), 0);
    }
    assert_eq!(neighbour().await, neighbour_before);
    let hits = search(
        &env,
        &key_a,
        json!({ "query": "lighthouse lamps", "limit": 3 }),
    )
    .await;
    assert_eq!(hits[0]["document_id"], late_doc.as_str());
    env.stop().await;
}
