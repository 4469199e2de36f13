//! Prometheus metrics, served on `/metrics`.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The api-server's metrics.
pub struct Metrics {
    registry: Registry,
    /// Submissions by façade and outcome (`accepted`, `rejected`, `queue_full`, `unavailable`).
    pub submissions: IntCounterVec,
    /// Events read from the events exchange.
    pub events_consumed: prometheus::IntCounter,
    /// Final states learnt, by the copy that brought them first: `event`
    /// (this replica's events queue) or `reply` (a fast reply to a job it
    /// published for a waiting client).
    pub finals: IntCounterVec,
    /// Webhook deliveries by outcome (`delivered`, `failed`, `refused`).
    pub callbacks: IntCounterVec,
    /// 1 while connected to RabbitMQ with consumers running.
    pub broker_ready: IntGauge,
    /// Jobs in this replica's state store.
    pub stored_jobs: IntGauge,
    /// HTTP requests by method, route pattern and status.
    pub http_requests: IntCounterVec,
    /// HTTP request durations by route pattern (seconds). For `wait=true`
    /// routes this includes the job's run.
    pub http_duration: prometheus::HistogramVec,
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
        let finals = IntCounterVec::new(
            Opts::new(
                "warmpod_api_final_results_total",
                "Final states learnt, by the copy that arrived first (event, reply)",
            ),
            &["via"],
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
        let http_requests = IntCounterVec::new(
            Opts::new(
                "warmpod_api_http_requests_total",
                "HTTP requests by method, route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let http_duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "warmpod_api_http_request_seconds",
                "HTTP request durations by route",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let registry = Registry::new();
        for c in [
            Box::new(submissions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(events_consumed.clone()),
            Box::new(finals.clone()),
            Box::new(callbacks.clone()),
            Box::new(broker_ready.clone()),
            Box::new(stored_jobs.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_duration.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            submissions,
            events_consumed,
            finals,
            callbacks,
            broker_ready,
            stored_jobs,
            http_requests,
            http_duration,
        }
    }
}

impl Metrics {
    /// Counts one submission.
    pub fn submitted(&self, api: &str, outcome: &str) {
        self.submissions.with_label_values(&[api, outcome]).inc();
    }

    /// Counts a final state this replica learnt first `via` one copy.
    pub fn final_seen(&self, via: &str) {
        self.finals.with_label_values(&[via]).inc();
    }

    /// Counts one answered HTTP request.
    pub fn request(&self, method: &str, route: &str, status: u16, took: std::time::Duration) {
        self.http_requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
