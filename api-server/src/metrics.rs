//! Prometheus metrics, served on `/metrics`.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The api-server's metrics.
pub struct Metrics {
    registry: Registry,
    /// Submissions by façade and outcome (`accepted`, `rejected`, `queue_full`, `unavailable`).
    pub submissions: IntCounterVec,
    /// Events read from the events exchange.
    pub events_consumed: prometheus::IntCounter,
    /// Webhook deliveries by outcome (`delivered`, `failed`, `refused`).
    pub callbacks: IntCounterVec,
    /// 1 while connected to RabbitMQ with consumers running.
    pub broker_ready: IntGauge,
    /// Jobs in this replica's state store.
    pub stored_jobs: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let submissions = IntCounterVec::new(
            Opts::new(
                "warmpod_api_submissions_total",
                "Submissions by API and outcome",
            ),
            &["api", "outcome"],
        )
        .expect("valid metric");
        let events_consumed = prometheus::IntCounter::new(
            "warmpod_api_events_consumed_total",
            "Events read from the events exchange",
        )
        .expect("valid metric");
        let callbacks = IntCounterVec::new(
            Opts::new(
                "warmpod_api_callbacks_total",
                "Webhook deliveries by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let broker_ready =
            IntGauge::new("warmpod_api_broker_ready", "1 while connected to RabbitMQ")
                .expect("valid metric");
        let stored_jobs = IntGauge::new(
            "warmpod_api_stored_jobs",
            "Jobs in this replica's state store",
        )
        .expect("valid metric");
        let registry = Registry::new();
        for c in [
            Box::new(submissions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(events_consumed.clone()),
            Box::new(callbacks.clone()),
            Box::new(broker_ready.clone()),
            Box::new(stored_jobs.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            submissions,
            events_consumed,
            callbacks,
            broker_ready,
            stored_jobs,
        }
    }
}

impl Metrics {
    /// Counts one submission.
    pub fn submitted(&self, api: &str, outcome: &str) {
        self.submissions.with_label_values(&[api, outcome]).inc();
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
