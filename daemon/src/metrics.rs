//! Prometheus metrics: what the daemon counts, encoded in the OpenMetrics
//! text format for the `GET /metrics` endpoint ([`crate::http::metrics`];
//! `metrics:` in the configuration, without it nothing listens).
//!
//! One [`Metrics`] per daemon holds the registry and a typed handle for each
//! family. The admin service (events), the scheduler (delivery outcomes),
//! the plugin host (call latency) and the reload path get it as an `Arc` and
//! count as things happen. Cases by state and the backlog are not counted
//! but read from the store when the endpoint is scraped.
//!
//! Invariants:
//! - Label values are bounded by the configuration: channel and workflow
//!   names, event types that a served workflow names (any other type counts
//!   as `other`), and fixed words. Never a customer, case or event id.
//! - The store is read at most once per [`STORE_READ_INTERVAL`], however
//!   often the endpoint is scraped, and scrapes take turns: a scraper cannot
//!   hammer the database.
//! - A scrape answers even when the database does not: the store-derived
//!   families are left out of it (and the error logged) rather than shown
//!   stale; everything counted in memory is there.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use dunningd_plugin_api::wire::DeliveryResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::store::{Completion, Gauges, Store};
use crate::workflow::WorkflowSet;

/// What `GET /metrics` answers with: OpenMetrics 1.0 text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long one reading of the store serves scrapes.
pub const STORE_READ_INTERVAL: Duration = Duration::from_secs(1);

/// The `type` label of events whose type no served workflow names.
pub const OTHER_EVENT_TYPE: &str = "other";

/// What became of an event sent to `SendEvents`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    /// Stored (whether or not it started or ended a case).
    Accepted,
    /// Its id was already stored: acknowledged and ignored.
    Duplicate,
    /// Its batch was refused (an invalid event, or the database did not
    /// answer): nothing of it was stored.
    Refused,
}

impl EventResult {
    fn as_str(self) -> &'static str {
        match self {
            EventResult::Accepted => "accepted",
            EventResult::Duplicate => "duplicate",
            EventResult::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    r#type: String,
    result: &'static str,
}

/// Deliveries and plugin calls are both counted per channel and outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelOutcome {
    channel: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// Every outcome of a delivery, as its `outcome` label: what the scheduler
/// decided for a dispatched one, and `given_up` for one failed without
/// being dispatched (see [`Metrics::given_up`]).
const DELIVERY_OUTCOMES: [&str; 6] = ["sent", "retry", "failed", "skipped", "deferred", "given_up"];

fn delivery_outcome(completion: &Completion) -> &'static str {
    match completion {
        Completion::Sent { .. } => "sent",
        Completion::Retry { .. } => "retry",
        Completion::Failed { .. } => "failed",
        Completion::Skipped { .. } => "skipped",
        Completion::Defer { .. } => "deferred",
    }
}

fn plugin_outcome(response: &DeliveryResponse) -> &'static str {
    match response {
        DeliveryResponse::Sent { .. } => "sent",
        DeliveryResponse::Retryable { .. } => "retryable",
        DeliveryResponse::Permanent { .. } => "permanent",
        DeliveryResponse::Unknown { .. } => "unknown",
        DeliveryResponse::Skipped { .. } => "skipped",
    }
}

/// Plugin call latency buckets: 1 ms, doubling up to about 33 s (channel
/// timeouts default to 30 s).
fn plugin_call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Buckets of the time from an outcome to its commit, finest around the
/// 20 ms the scheduler aims to stay under.
const COMMIT_DELAY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The daemon's metrics: the registry and a handle on each family.
pub struct Metrics {
    registry: Registry,
    events: Family<EventLabels, Counter>,
    deliveries: Family<ChannelOutcome, Counter>,
    plugin_calls: Family<ChannelOutcome, Histogram, fn() -> Histogram>,
    outcome_commits: Histogram,
    reloads: Family<ReloadLabels, Counter>,
    source_events: Family<SourceLabels, Counter>,
    workflows_served: Gauge,
    /// Cases and backlog, as last read from the store.
    store: Arc<StoreReading>,
    /// Scrapes take turns, so that concurrent ones share one store read.
    scrape_turn: tokio::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("dunningd");
        registry.register(
            "build",
            "The running dunningd's version",
            Info::new([("version", crate::VERSION)]),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Events received over SendEvents, by type (as named by a served workflow, else 'other') and result",
            events.clone(),
        );
        let deliveries = Family::<ChannelOutcome, Counter>::default();
        registry.register(
            "deliveries",
            "Claimed deliveries by channel and outcome: what this daemon decided for each it dispatched (sent, retry, failed, skipped, deferred), or given_up: failed without a send, claimed too often without an outcome (a crash loop) or its stored row unreadable",
            deliveries.clone(),
        );
        let plugin_calls =
            Family::<ChannelOutcome, Histogram, fn() -> Histogram>::new_with_constructor(
                plugin_call_histogram,
            );
        registry.register_with_unit(
            "plugin_call_duration",
            "How long channel plugins took to answer a send, by channel and the plugin's answer (sent, retryable, permanent, unknown, skipped; a timeout is unknown)",
            Unit::Seconds,
            plugin_calls.clone(),
        );
        let outcome_commits = Histogram::new(COMMIT_DELAY_BUCKETS);
        registry.register_with_unit(
            "outcome_commit_delay",
            "How long a dispatched delivery's outcome (a plugin's answer) waited until it was committed: the window in which a crash would send it again",
            Unit::Seconds,
            outcome_commits.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "reloads",
            "Reloads of the configuration and workflows (start-up included), by result; a failure keeps the last good version",
            reloads.clone(),
        );
        // Both series exist from the start, so an alert on an increase of
        // failures fires on the first one.
        for result in ["success", "failure"] {
            let _ = reloads.get_or_create(&ReloadLabels { result });
        }
        let source_events = Family::<SourceLabels, Counter>::default();
        registry.register(
            "source_events",
            "Webhooks received by each billing source (sources:), by result: accepted, duplicate, ignored (not mapped; answered 2xx), refused (signature or event; 4xx), unavailable (the provider's API or the database did not answer; 5xx, the provider retries)",
            source_events.clone(),
        );
        let workflows_served = Gauge::default();
        registry.register(
            "workflows_served",
            "Workflows served from the workflows folder since the last reload",
            workflows_served.clone(),
        );
        let store = Arc::new(StoreReading::default());
        registry.register_collector(Box::new(store.clone()));
        Metrics {
            registry,
            events,
            deliveries,
            plugin_calls,
            outcome_commits,
            reloads,
            source_events,
            workflows_served,
            store,
            scrape_turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Counts one event received over `SendEvents`.
    pub fn event(&self, workflows: &WorkflowSet, event_type: &str, result: EventResult) {
        self.events
            .get_or_create(&EventLabels {
                r#type: event_type_label(workflows, event_type).to_string(),
                result: result.as_str(),
            })
            .inc();
    }

    /// Counts what the scheduler decided for one claimed delivery.
    pub fn delivery(&self, channel: &str, completion: &Completion) {
        self.deliveries
            .get_or_create(&ChannelOutcome {
                channel: channel.to_string(),
                outcome: delivery_outcome(completion),
            })
            .inc();
    }

    /// Counts one claimed delivery failed without being dispatched (see
    /// `Claims::given_up`): something an operator must look at.
    pub fn given_up(&self, channel: &str) {
        self.deliveries
            .get_or_create(&ChannelOutcome {
                channel: channel.to_string(),
                outcome: "given_up",
            })
            .inc();
    }

    /// Records how long one plugin call took and what it answered.
    pub fn plugin_call(&self, channel: &str, response: &DeliveryResponse, took: Duration) {
        self.plugin_calls
            .get_or_create(&ChannelOutcome {
                channel: channel.to_string(),
                outcome: plugin_outcome(response),
            })
            .observe(took.as_secs_f64());
    }

    /// Records how long one outcome waited for its commit.
    pub fn outcome_committed(&self, waited: Duration) {
        self.outcome_commits.observe(waited.as_secs_f64());
    }

    /// Counts a reload and what it left in force. The channels configured
    /// get every delivery outcome at 0, so increases show from the first.
    pub fn reloaded<'a>(
        &self,
        ok: bool,
        workflows_served: u32,
        channels: impl IntoIterator<Item = &'a String>,
    ) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.workflows_served.set(i64::from(workflows_served));
        for channel in channels {
            for outcome in DELIVERY_OUTCOMES {
                let _ = self.deliveries.get_or_create(&ChannelOutcome {
                    channel: channel.clone(),
                    outcome,
                });
            }
        }
    }

    /// Counts one webhook received by a billing source.
    pub fn source_event(&self, source: &str, outcome: crate::sources::activity::Outcome) {
        self.source_events
            .get_or_create(&SourceLabels {
                source: source.to_string(),
                result: outcome.as_str(),
            })
            .inc();
    }

    /// Gives each configured source every result at 0, so increases show
    /// from the first webhook.
    pub fn sources_configured<'a>(&self, sources: impl IntoIterator<Item = &'a str>) {
        for source in sources {
            for outcome in crate::sources::activity::Outcome::ALL {
                let _ = self.source_events.get_or_create(&SourceLabels {
                    source: source.to_string(),
                    result: outcome.as_str(),
                });
            }
        }
    }

    /// Reads the store if the last reading is older than
    /// [`STORE_READ_INTERVAL`], then encodes every family. `now` is the
    /// engine's clock, read once this scrape's turn has come.
    pub async fn scrape(&self, store: &dyn Store, now: impl FnOnce() -> DateTime<Utc>) -> String {
        let _turn = self.scrape_turn.lock().await;
        let now = now();
        if self.store.stale() {
            let gauges = match store.gauges(now).await {
                Ok(gauges) => Some(gauges),
                Err(error) => {
                    tracing::warn!(%error, "cannot read cases and backlog for the metrics; leaving them out of this scrape");
                    None
                }
            };
            self.store.set(gauges);
        }
        self.store.set_now(now);
        self.encode()
    }

    /// Every family in the OpenMetrics text format, as last read.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Writing into a String does not fail; an encoder that did would
            // leave a truncated exposition, which scrapers refuse.
            tracing::error!(%error, "cannot encode the metrics");
        }
        text
    }
}

/// The `type` label of an event: its type when a served workflow names it
/// (as its trigger or among its exit events), otherwise `other`, so that
/// whatever billing sends cannot grow the label set without bound.
pub fn event_type_label<'a>(workflows: &WorkflowSet, event_type: &'a str) -> &'a str {
    let named = workflows.iter().any(|workflow| {
        workflow.trigger.event == event_type || workflow.exit_on.iter().any(|t| t == event_type)
    });
    if named { event_type } else { OTHER_EVENT_TYPE }
}

/// The store-derived families, encoded from the last reading on every scrape.
#[derive(Debug, Default)]
struct StoreReading {
    state: Mutex<ReadingState>,
}

#[derive(Debug, Default)]
struct ReadingState {
    /// When the store was last asked (wall-clock, for the cache), whether
    /// or not it answered.
    read_at: Option<Instant>,
    /// Its answer; `None` when it did not answer.
    gauges: Option<Gauges>,
    /// The engine's time at the scrape being encoded: the backlog's age
    /// moves with the clock even while a reading is reused.
    now: Option<DateTime<Utc>>,
}

impl StoreReading {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReadingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stale(&self) -> bool {
        self.lock()
            .read_at
            .is_none_or(|at| at.elapsed() >= STORE_READ_INTERVAL)
    }

    fn set(&self, gauges: Option<Gauges>) {
        let mut state = self.lock();
        state.read_at = Some(Instant::now());
        state.gauges = gauges;
    }

    fn set_now(&self, now: DateTime<Utc>) {
        self.lock().now = Some(now);
    }
}

impl Collector for StoreReading {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.lock();
        let (Some(gauges), Some(now)) = (&state.gauges, state.now) else {
            return Ok(());
        };
        if !gauges.cases.is_empty() {
            let mut cases = encoder.encode_descriptor(
                "cases",
                "Cases by workflow and state, read from the database (at most once a second).",
                None,
                MetricType::Gauge,
            )?;
            for ((workflow, case_state), n) in &gauges.cases {
                let labels = [
                    ("workflow", workflow.as_str()),
                    ("state", case_state.as_str()),
                ];
                ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX))
                    .encode(cases.encode_family(&labels)?)?;
            }
        }
        let backlog = encoder.encode_descriptor(
            "backlog_deliveries",
            "Deliveries due by the engine's clock and not yet claimed (pending, of active cases, not leased).",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::try_from(gauges.backlog).unwrap_or(i64::MAX)).encode(backlog)?;
        let age = gauges.oldest_planned.map_or(0.0, |oldest| {
            (now - oldest).num_milliseconds().max(0) as f64 / 1000.0
        });
        let oldest = encoder.encode_descriptor(
            "backlog_oldest_age",
            "How long the oldest of the backlog's deliveries has been due (now minus its planned time; 0 without a backlog).",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        ConstGauge::new(age).encode(oldest)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CaseState;

    fn completion(outcome: &str) -> Completion {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        match outcome {
            "sent" => Completion::Sent { receipt: None },
            "retry" => Completion::Retry {
                error: "429".into(),
                at,
            },
            "failed" => Completion::Failed {
                error: "invalid number".into(),
                fallback: None,
            },
            "skipped" => Completion::Skipped {
                reason: "opted out".into(),
                fallback: None,
            },
            _ => Completion::Defer { at },
        }
    }

    /// The sample lines (no comments) of an exposition.
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn counters_encode_with_their_labels_and_help() {
        let metrics = Metrics::new();
        let workflows = WorkflowSet::empty();
        metrics.event(&workflows, "payment_failed", EventResult::Accepted);
        metrics.event(&workflows, "payment_failed", EventResult::Refused);
        metrics.event(&workflows, "payment_failed", EventResult::Refused);
        for outcome in ["sent", "retry", "failed", "skipped", "deferred"] {
            metrics.delivery("email", &completion(outcome));
        }
        metrics.given_up("email");
        metrics.delivery("sms", &completion("sent"));
        metrics.delivery("sms", &completion("sent"));
        metrics.plugin_call(
            "email",
            &DeliveryResponse::Sent { receipt: None },
            Duration::from_millis(3),
        );
        metrics.outcome_committed(Duration::from_millis(12));
        metrics.reloaded(true, 2, &["email".to_string()]);
        metrics.reloaded(false, 2, &[]);
        metrics.reloaded(true, 3, &[]);

        let text = metrics.encode();
        let samples = samples(&text);
        // No served workflow names the type: it counts as "other".
        for want in [
            r#"dunningd_build_info{version="0.1.0"} 1"#,
            r#"dunningd_events_total{type="other",result="accepted"} 1"#,
            r#"dunningd_events_total{type="other",result="refused"} 2"#,
            r#"dunningd_deliveries_total{channel="email",outcome="sent"} 1"#,
            r#"dunningd_deliveries_total{channel="email",outcome="retry"} 1"#,
            r#"dunningd_deliveries_total{channel="email",outcome="failed"} 1"#,
            r#"dunningd_deliveries_total{channel="email",outcome="skipped"} 1"#,
            r#"dunningd_deliveries_total{channel="email",outcome="deferred"} 1"#,
            r#"dunningd_deliveries_total{channel="email",outcome="given_up"} 1"#,
            r#"dunningd_deliveries_total{channel="sms",outcome="sent"} 2"#,
            r#"dunningd_plugin_call_duration_seconds_count{channel="email",outcome="sent"} 1"#,
            r#"dunningd_plugin_call_duration_seconds_bucket{le="0.004",channel="email",outcome="sent"} 1"#,
            r#"dunningd_plugin_call_duration_seconds_bucket{le="0.002",channel="email",outcome="sent"} 0"#,
            r#"dunningd_outcome_commit_delay_seconds_bucket{le="0.01"} 0"#,
            r#"dunningd_outcome_commit_delay_seconds_bucket{le="0.015"} 1"#,
            r#"dunningd_outcome_commit_delay_seconds_count 1"#,
            r#"dunningd_reloads_total{result="success"} 2"#,
            r#"dunningd_reloads_total{result="failure"} 1"#,
            "dunningd_workflows_served 3",
        ] {
            assert!(samples.contains(&want), "missing {want:?} in:\n{text}");
        }
        for family in [
            "# TYPE dunningd_events counter",
            "# TYPE dunningd_deliveries counter",
            "# TYPE dunningd_plugin_call_duration_seconds histogram",
            "# UNIT dunningd_plugin_call_duration_seconds seconds",
            "# TYPE dunningd_reloads counter",
            "# TYPE dunningd_workflows_served gauge",
            "# TYPE dunningd_build info",
            "# HELP dunningd_events Events received over SendEvents",
        ] {
            assert!(text.contains(family), "missing {family:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // The store has not been read: its families are left out.
        assert!(!text.contains("dunningd_cases"), "{text}");
        assert!(!text.contains("dunningd_backlog"), "{text}");
    }

    #[test]
    fn store_readings_encode_cases_and_the_backlog_age_at_the_scrape_time() {
        let metrics = Metrics::new();
        let planned: DateTime<Utc> = "2026-01-05T09:00:00Z".parse().expect("time");
        metrics.store.set(Some(Gauges {
            cases: [
                (("payment-failed".to_string(), CaseState::Active), 3),
                (("payment-failed".to_string(), CaseState::Recovered), 1),
                (("card-expiring".to_string(), CaseState::Exhausted), 2),
            ]
            .into_iter()
            .collect(),
            backlog: 4,
            oldest_planned: Some(planned),
        }));
        metrics
            .store
            .set_now(planned + chrono::Duration::milliseconds(90_500));
        let text = metrics.encode();
        let lines = samples(&text);
        for want in [
            r#"dunningd_cases{workflow="payment-failed",state="active"} 3"#,
            r#"dunningd_cases{workflow="payment-failed",state="recovered"} 1"#,
            r#"dunningd_cases{workflow="card-expiring",state="exhausted"} 2"#,
            "dunningd_backlog_deliveries 4",
            "dunningd_backlog_oldest_age_seconds 90.5",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in:\n{text}");
        }
        assert!(text.contains("# UNIT dunningd_backlog_oldest_age_seconds seconds"));

        // The reading is reused, the age follows the clock; no backlog is 0.
        metrics
            .store
            .set_now(planned + chrono::Duration::seconds(120));
        assert!(samples_of(&metrics).contains(&"dunningd_backlog_oldest_age_seconds 120.0".into()));
        metrics.store.set(Some(Gauges::default()));
        let text = metrics.encode();
        assert!(
            samples(&text).contains(&"dunningd_backlog_oldest_age_seconds 0.0"),
            "{text}"
        );
        assert!(
            samples(&text).contains(&"dunningd_backlog_deliveries 0"),
            "{text}"
        );
        assert!(
            !text.contains("dunningd_cases"),
            "no cases, no family: {text}"
        );

        // A store that did not answer: left out, not shown stale.
        metrics.store.set(None);
        assert!(!metrics.encode().contains("dunningd_backlog"));
    }

    fn samples_of(metrics: &Metrics) -> Vec<String> {
        samples(&metrics.encode())
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn event_types_are_labelled_only_as_named_by_a_served_workflow() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("reminders.yaml"),
            "name: reminders\ntrigger: { event: payment_failed }\nexit_on: [payment_succeeded]\nsteps:\n  - { name: notice, after: 0s, send: [{ channel: email, template: mail }] }\ntemplates:\n  mail: { subject: due, text: due }\n",
        )
        .expect("write workflow");
        let channels = ["email".to_string()].into_iter().collect();
        let workflows = WorkflowSet::load_dir(
            dir.path(),
            &channels,
            &WorkflowSet::empty(),
            crate::workflow::FileLimits::DEFAULT,
        );
        assert!(workflows.errors().is_empty(), "{:?}", workflows.errors());
        for (event_type, label) in [
            ("payment_failed", "payment_failed"),
            ("payment_succeeded", "payment_succeeded"),
            ("invoice_paid", "other"),
            ("cus_123", "other"),
        ] {
            assert_eq!(event_type_label(&workflows, event_type), label);
        }
    }

    #[test]
    fn the_store_is_read_at_most_once_a_second() {
        let metrics = Metrics::new();
        assert!(metrics.store.stale(), "never read");
        metrics.store.set(None);
        assert!(!metrics.store.stale(), "a failed read counts too");
        metrics.store.lock().read_at = Some(Instant::now() - STORE_READ_INTERVAL);
        assert!(metrics.store.stale());
    }
}
