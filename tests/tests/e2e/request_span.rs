//! Every HTTP call runs in a `request` span carrying its method, route template,
//! status, latency and — once authenticated — its tenant; an error answer is logged
//! once, inside that span.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use tenantry_tests::TestEnv;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

type Fields = BTreeMap<String, String>;

/// What the capturing layer saw: every span (with its fields as last recorded) and
/// every event (with its fields and the fields of the span it happened in).
#[derive(Default)]
struct Seen {
    spans: Vec<(&'static str, Fields)>,
    /// Open spans' indexes in `spans` (ids are reused once a span closes).
    open: HashMap<Id, usize>,
    events: Vec<(Fields, Option<usize>)>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Seen>>);

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Visitor(&mut fields));
        let mut seen = self.0.lock().unwrap();
        seen.spans.push((attrs.metadata().name(), fields));
        let index = seen.spans.len() - 1;
        seen.open.insert(id.clone(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut seen = self.0.lock().unwrap();
        if let Some(&i) = seen.open.get(id) {
            values.record(&mut Visitor(&mut seen.spans[i].1));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        let parent = ctx.event_span(event).map(|s| s.id());
        let mut seen = self.0.lock().unwrap();
        let index = parent.and_then(|id| seen.open.get(&id).copied());
        seen.events.push((fields, index));
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        self.0.lock().unwrap().open.remove(&id);
    }
}

/// One thread runs the fleet and the client, so the subscriber set for this thread
/// sees the dispatcher's spans.
#[tokio::test(flavor = "current_thread")]
async fn request_span_carries_route_status_and_tenant() {
    let env = TestEnv::start(0).await;
    let key = env.tenant("span-acme").await;
    let capture = Capture::default();
    let guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));

    let job = uuid::Uuid::new_v4();
    let missing = env.get(&key, &format!("/v1/jobs/{job}")).await;
    assert_eq!(missing.status(), 404);
    let listed = env.get(&key, "/v1/jobs").await;
    assert_eq!(listed.status(), 200);
    let anonymous = env.http.get(env.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    drop(guard);

    let seen = std::mem::take(&mut *capture.0.lock().unwrap());
    let requests: Vec<&Fields> = seen
        .spans
        .iter()
        .filter(|(name, f)| *name == "request" && f.contains_key("route"))
        .map(|(_, f)| f)
        .collect();
    assert_eq!(requests.len(), 3, "one span per call: {requests:#?}");
    let find = |route: &str, status: &str| -> &Fields {
        requests
            .iter()
            .find(|f| f["route"] == route && f.get("status").map(String::as_str) == Some(status))
            .unwrap_or_else(|| panic!("no span for {route} answering {status}: {requests:#?}"))
    };

    // The matched template, not the raw URI; the tenant once authenticated.
    let by_id = find("/v1/jobs/{id}", "404");
    assert_eq!(by_id["method"], "GET");
    assert_eq!(
        by_id.get("tenant_id").map(String::as_str),
        Some("span-acme")
    );
    assert!(by_id.contains_key("latency_ms"), "{by_id:?}");
    assert!(
        requests
            .iter()
            .all(|f| f.values().all(|v| !v.contains(&job.to_string()))),
        "the raw URI leaked into a span: {requests:#?}"
    );
    let list = find("/v1/jobs", "200");
    assert_eq!(list.get("tenant_id").map(String::as_str), Some("span-acme"));
    // A refused caller is no tenant.
    let refused = find("/v1/jobs", "401");
    assert!(!refused.contains_key("tenant_id"), "{refused:?}");

    // The error answer is logged once, inside its request's span.
    let not_found: Vec<_> = seen
        .events
        .iter()
        .filter(|(f, _)| f.get("code").map(String::as_str) == Some("not_found"))
        .collect();
    assert_eq!(not_found.len(), 1, "{not_found:#?}");
    let span = not_found[0].1.map(|i| &seen.spans[i].1);
    assert_eq!(
        span.and_then(|f| f.get("route")).map(String::as_str),
        Some("/v1/jobs/{id}")
    );
    env.stop().await;
}
