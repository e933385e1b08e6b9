//! Metrics: every metric name (spelled here and nowhere else), the process's registry,
//! and the Prometheus text exposition.
//!
//! Two kinds live side by side:
//! - process counters and histograms, moved by the code that does the work (a
//!   dispatcher counts submissions and refusals, a worker counts outcomes and times
//!   stages). Sum them across instances.
//! - fleet gauges, read at scrape time from the broker (queue depth and consumers,
//!   by passive declare: the broker's own count) and from Postgres (per-tenant backlog,
//!   live workers, dead letters). Every instance reports the same fleet: aggregate
//!   them with `max`, not `sum`.
//!
//! Labels stay low-cardinality: `reason` is a job's error code (a fixed set), `stage`
//! one of four, `queue` one of the fleet's seven queues, and `tenant` at most
//! `TENANTRY_METRICS_TOP_TENANTS` tenants plus `_other`.

use crate::error_code::Code;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::db::backlog;
use crate::fleet::{FleetSnapshot, QueueView};

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

// Process counters and histograms.
pub const JOBS_SUBMITTED: &str = "tenantry_jobs_submitted_total";
pub const JOBS_FINISHED: &str = "tenantry_jobs_finished_total";
pub const JOBS_FAILED: &str = "tenantry_jobs_failed_total";
pub const JOBS_RETRIED: &str = "tenantry_jobs_retried_total";
pub const JOBS_DEFERRED: &str = "tenantry_jobs_deferred_total";
pub const JOB_DURATION: &str = "tenantry_job_duration_seconds";
pub const STAGE_DURATION: &str = "tenantry_job_stage_duration_seconds";
pub const QUOTA_REJECTIONS: &str = "tenantry_quota_rejections_total";
pub const RATE_LIMITED: &str = "tenantry_rate_limited_total";
pub const WORKER_IN_FLIGHT: &str = "tenantry_worker_in_flight_jobs";
pub const WEBHOOK_ATTEMPTS: &str = "tenantry_webhook_attempts_total";
// Fleet gauges, read at scrape time.
pub const BROKER_UP: &str = "tenantry_broker_up";
pub const QUEUE_MESSAGES: &str = "tenantry_queue_messages";
pub const QUEUE_CONSUMERS: &str = "tenantry_queue_consumers";
pub const BACKLOG: &str = "tenantry_backlog_jobs";
pub const IN_FLIGHT: &str = "tenantry_in_flight_jobs";
pub const TENANT_BACKLOG: &str = "tenantry_tenant_backlog_jobs";
pub const TENANT_IN_FLIGHT: &str = "tenantry_tenant_in_flight_jobs";
pub const TENANT_OLDEST_PENDING: &str = "tenantry_tenant_oldest_pending_seconds";
pub const WORKERS_LIVE: &str = "tenantry_workers_live";
pub const WORKER_TASKS_LIVE: &str = "tenantry_worker_tasks_live";
pub const DEAD_LETTERS: &str = "tenantry_dead_letters";

// Label names.
pub const LABEL_REASON: &str = "reason";
pub const LABEL_STAGE: &str = "stage";
pub const LABEL_RESOURCE: &str = "resource";
pub const LABEL_CODE: &str = "code";
pub const LABEL_QUEUE: &str = "queue";
pub const LABEL_ROLE: &str = "role";
pub const LABEL_TENANT: &str = "tenant";
pub const LABEL_STATE: &str = "state";
pub const LABEL_OUTCOME: &str = "outcome";

/// The stages a job's `timings` record, in order.
pub const STAGES: [&str; 4] = ["chunk", "embed", "upsert", "record"];

/// Seconds: 5 ms to ~80 s, doubling.
fn duration_buckets() -> Vec<f64> {
    (0..15).map(|i| 0.005 * f64::from(1u32 << i)).collect()
}

/// The metrics of one process (shared by its dispatcher and in-process workers).
pub struct Metrics {
    registry: Registry,
    jobs_submitted: IntCounter,
    jobs_finished: IntCounter,
    jobs_failed: IntCounterVec,
    jobs_retried: IntCounterVec,
    jobs_deferred: IntCounter,
    job_duration: Histogram,
    stage_duration: HistogramVec,
    quota_rejections: IntCounterVec,
    rate_limited: IntCounterVec,
    worker_in_flight: IntGauge,
    webhook_attempts: IntCounterVec,
    fleet: FleetGauges,
    /// One scrape at a time: fleet gauges are reset and refilled for each.
    scrape: tokio::sync::Mutex<()>,
}

struct FleetGauges {
    broker_up: IntGauge,
    queue_messages: IntGaugeVec,
    queue_consumers: IntGaugeVec,
    backlog: IntGauge,
    in_flight: IntGauge,
    tenant_backlog: IntGaugeVec,
    tenant_in_flight: IntGaugeVec,
    tenant_oldest: GaugeVec,
    workers_live: IntGauge,
    worker_tasks_live: IntGauge,
    dead_letters: IntGaugeVec,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    // Names are constants and distinct, so registration cannot fail.
    let _ = registry.register(Box::new(c.clone()));
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[allow(clippy::expect_used)] // constant, valid names and labels: cannot fail
impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str| {
            register(&r, IntCounter::new(name, help).expect("valid metric"))
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
            )
        };
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid metric"));
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let fleet = FleetGauges {
            broker_up: gauge(BROKER_UP, "1 if the broker answered this scrape's queue reads."),
            queue_messages: gauge_vec(
                QUEUE_MESSAGES,
                "Messages ready in a queue, as the broker counts them (passive declare).",
                &[LABEL_QUEUE, LABEL_ROLE],
            ),
            queue_consumers: gauge_vec(
                QUEUE_CONSUMERS,
                "Consumers of a queue, as the broker counts them.",
                &[LABEL_QUEUE, LABEL_ROLE],
            ),
            backlog: gauge(
                BACKLOG,
                "PENDING jobs of all tenants still in the Postgres backlog (not yet published).",
            ),
            in_flight: gauge(
                IN_FLIGHT,
                "Jobs of all tenants published to the broker and not ended.",
            ),
            tenant_backlog: gauge_vec(
                TENANT_BACKLOG,
                "PENDING jobs of a tenant still in the Postgres backlog (top tenants, rest as _other).",
                &[LABEL_TENANT],
            ),
            tenant_in_flight: gauge_vec(
                TENANT_IN_FLIGHT,
                "Jobs of a tenant published and not ended (top tenants, rest as _other).",
                &[LABEL_TENANT],
            ),
            tenant_oldest: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        TENANT_OLDEST_PENDING,
                        "Age of a tenant's oldest PENDING job (top tenants, _other: the oldest of the rest).",
                    ),
                    &[LABEL_TENANT],
                )
                .expect("valid metric"),
            ),
            workers_live: gauge(WORKERS_LIVE, "Worker processes whose heartbeat is current."),
            worker_tasks_live: gauge(
                WORKER_TASKS_LIVE,
                "Worker tasks (concurrency) of the live worker processes.",
            ),
            dead_letters: gauge_vec(
                DEAD_LETTERS,
                "Dead letters recorded in Postgres, by state (pending: not replayed).",
                &[LABEL_STATE],
            ),
        };
        Self {
            jobs_submitted: counter(JOBS_SUBMITTED, "Jobs accepted into the backlog."),
            jobs_finished: counter(JOBS_FINISHED, "Jobs a worker of this process finished."),
            jobs_failed: counter_vec(
                JOBS_FAILED,
                "Jobs a worker of this process failed for good, by error code.",
                LABEL_REASON,
            ),
            jobs_retried: counter_vec(
                JOBS_RETRIED,
                "Attempts that failed and were scheduled again, by error code.",
                LABEL_REASON,
            ),
            jobs_deferred: counter(
                JOBS_DEFERRED,
                "Deliveries put back to wait without an attempt (no free slot, tenant suspended, database down).",
            ),
            job_duration: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        JOB_DURATION,
                        "Time from a job's start in a worker to its recorded outcome.",
                    )
                    .buckets(duration_buckets()),
                )
                .expect("valid metric"),
            ),
            stage_duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(STAGE_DURATION, "Time of each stage of a finished job.")
                        .buckets(duration_buckets()),
                    &[LABEL_STAGE],
                )
                .expect("valid metric"),
            ),
            quota_rejections: counter_vec(
                QUOTA_REJECTIONS,
                "Submissions refused because a quota was reached, by resource.",
                LABEL_RESOURCE,
            ),
            rate_limited: counter_vec(
                RATE_LIMITED,
                "Calls answered 429 (rate limit or a quota that frees up by itself), by error code.",
                LABEL_CODE,
            ),
            worker_in_flight: gauge(
                WORKER_IN_FLIGHT,
                "Deliveries this process's workers are handling now.",
            ),
            webhook_attempts: counter_vec(
                WEBHOOK_ATTEMPTS,
                "Webhook attempts of this process, by outcome (delivered, retry, dead).",
                LABEL_OUTCOME,
            ),
            fleet,
            registry: r,
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    pub fn shared() -> Arc<Self> {
        Arc::new(Self::new())
    }

    pub fn job_submitted(&self) {
        self.jobs_submitted.inc();
    }

    /// A finished job: its duration and the stages of its `timings` (milliseconds).
    pub fn job_finished(&self, duration: Duration, timings: &serde_json::Value) {
        self.jobs_finished.inc();
        self.job_duration.observe(duration.as_secs_f64());
        for stage in STAGES {
            if let Some(ms) = timings.get(stage).and_then(serde_json::Value::as_f64) {
                self.stage_duration
                    .with_label_values(&[stage])
                    .observe(ms / 1000.0);
            }
        }
    }

    /// A job failed for good; the `reason` label is its error code (a fixed set of words).
    pub fn job_failed(&self, reason: Code, duration: Option<Duration>) {
        self.jobs_failed.with_label_values(&[reason.as_str()]).inc();
        if let Some(d) = duration {
            self.job_duration.observe(d.as_secs_f64());
        }
    }

    pub fn job_retried(&self, reason: Code) {
        self.jobs_retried
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    pub fn job_deferred(&self) {
        self.jobs_deferred.inc();
    }

    /// One webhook attempt of this process: `delivered`, `retry` (failed, will be
    /// tried again) or `dead` (failed for good).
    pub fn webhook_attempt(&self, outcome: &str) {
        self.webhook_attempts.with_label_values(&[outcome]).inc();
    }

    pub fn quota_rejected(&self, resource: &str) {
        self.quota_rejections.with_label_values(&[resource]).inc();
    }

    /// A call answered 429; the `code` label is its error code.
    pub fn rate_limited(&self, code: Code) {
        self.rate_limited.with_label_values(&[code.as_str()]).inc();
    }

    /// Deliveries this process's workers are handling now.
    pub fn worker_in_flight(&self) -> i64 {
        self.worker_in_flight.get()
    }

    /// Counts a delivery in hand until the guard drops.
    pub fn in_flight_guard(self: &Arc<Self>) -> InFlightGuard {
        self.worker_in_flight.inc();
        InFlightGuard(self.clone())
    }

    /// The text exposition of this process's metrics and of `fleet` (what the
    /// caller could read of it this scrape).
    pub async fn render(&self, fleet: &FleetView<'_>) -> String {
        let _one_at_a_time = self.scrape.lock().await;
        self.fill(fleet);
        let mut out = Vec::new();
        // Encoding into memory fails only on invalid families, which the registry refuses.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    fn fill(&self, view: &FleetView<'_>) {
        let g = &self.fleet;
        g.queue_messages.reset();
        g.queue_consumers.reset();
        g.broker_up.set(i64::from(view.queues.is_some()));
        for q in view.queues.unwrap_or_default() {
            let labels = [q.name.as_str(), q.role];
            g.queue_messages
                .with_label_values(&labels)
                .set(q.messages as i64);
            g.queue_consumers
                .with_label_values(&labels)
                .set(q.consumers as i64);
        }
        g.tenant_backlog.reset();
        g.tenant_in_flight.reset();
        g.tenant_oldest.reset();
        g.dead_letters.reset();
        let Some(snapshot) = view.snapshot else {
            return;
        };
        g.backlog.set(snapshot.backlog);
        g.in_flight.set(snapshot.in_flight);
        let (top, other) = backlog::top_n(&snapshot.tenants, view.top_tenants);
        for load in top.iter().chain(other.iter()) {
            let tenant = [load.tenant_id.as_str()];
            g.tenant_backlog
                .with_label_values(&tenant)
                .set(load.backlog);
            g.tenant_in_flight
                .with_label_values(&tenant)
                .set(load.in_flight);
            if let Some(age) = load.oldest_pending_secs {
                g.tenant_oldest.with_label_values(&tenant).set(age);
            }
        }
        g.workers_live.set(snapshot.workers.len() as i64);
        g.worker_tasks_live.set(
            snapshot
                .workers
                .iter()
                .map(|w| i64::from(w.concurrency))
                .sum(),
        );
        g.dead_letters
            .with_label_values(&["pending"])
            .set(snapshot.dead_letters.pending);
        g.dead_letters
            .with_label_values(&["replayed"])
            .set(snapshot.dead_letters.recorded - snapshot.dead_letters.pending);
    }
}

/// What one scrape could read of the fleet.
#[derive(Debug, Default)]
pub struct FleetView<'a> {
    /// The queues, or None when the broker did not answer.
    pub queues: Option<&'a [QueueView]>,
    /// The Postgres side, when this process reports it (dispatchers do).
    pub snapshot: Option<&'a FleetSnapshot>,
    /// Tenants labelled by name.
    pub top_tenants: usize,
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlightGuard(Arc<Metrics>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.worker_in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_text_with_every_process_metric() {
        let m = Metrics::shared();
        m.job_submitted();
        m.job_finished(
            Duration::from_millis(120),
            &serde_json::json!({"chunk": 1.5, "embed": 20.0, "upsert": 80.0, "record": 4.0}),
        );
        m.job_failed(Code::NoContent, None);
        m.quota_rejected("DOCUMENTS");
        {
            let _g = m.in_flight_guard();
        }
        let text = m.render(&FleetView::default()).await;
        for name in [
            JOBS_SUBMITTED,
            JOBS_FINISHED,
            JOBS_FAILED,
            QUOTA_REJECTIONS,
            WORKER_IN_FLIGHT,
            BROKER_UP,
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} in {text}"
            );
        }
        assert!(text.contains("tenantry_job_stage_duration_seconds_count{stage=\"upsert\"} 1"));
        assert!(text.contains("tenantry_jobs_failed_total{reason=\"no_content\"} 1"));
        assert!(text.contains("tenantry_worker_in_flight_jobs 0"));
        assert!(text.contains("tenantry_broker_up 0"));
    }
}
