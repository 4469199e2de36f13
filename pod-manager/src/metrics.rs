//! Prometheus metrics as a struct, and a tiny HTTP server for `/metrics`,
//! `/health` (the process answers) and `/readyz` (connected to RabbitMQ).
//!
//! Metric names (all prefixed `warmpod_pod_manager_`):
//! - `phase_seconds{phase}`: histogram of `queue`, `claim`, `exec`, `total`;
//! - `jobs_total{status}`: finished jobs by final status;
//! - `infra_failures_total{kind}`: sandbox failures by pool error variant;
//! - `dead_lettered_total{reason}`: messages rejected to the dead-letter queue;
//! - `deliveries_total{outcome}`: job deliveries by how they were settled
//!   ([`DeliveryOutcome`]: `acked`, `requeued`, `returned`, `dead_lettered`,
//!   `unsettled`);
//! - `pool_ready`, `pool_claimed`, `pool_starting`: pool gauges;
//! - `pool_warm_hits`, `pool_cold_claims`, `pool_warm_hit_ratio`;
//! - `claims_total{kind,language}`: claims by how they were served
//!   (`specialised`: a ready sandbox with the job's interpreter
//!   pre-started; `generic`: another ready one; `cold`: had to wait) and
//!   the job's language key;
//! - `jobs_in_flight`, `broker_connected`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warmpod_protocol::Status;

use crate::pool::{self, PoolStats};

const PREFIX: &str = "warmpod_pod_manager";

/// Every metric of the pod-manager.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    phase: HistogramVec,
    jobs: IntCounterVec,
    infra_failures: IntCounterVec,
    dead_lettered: IntCounterVec,
    deliveries: IntCounterVec,
    claims: IntCounterVec,
    pool_ready: IntGauge,
    pool_claimed: IntGauge,
    pool_starting: IntGauge,
    pool_warm_hits: IntGauge,
    pool_cold_claims: IntGauge,
    pool_warm_hit_ratio: Gauge,
    in_flight: IntGauge,
    broker_connected: IntGauge,
}

/// A job phase measured by [`Metrics::phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Submission to being taken from the queue.
    Queue,
    /// Claiming a sandbox.
    Claim,
    /// Handing the job to the sandbox until its result is read.
    Exec,
    /// Submission to the result being published.
    Total,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Queue => "queue",
            Phase::Claim => "claim",
            Phase::Exec => "exec",
            Phase::Total => "total",
        }
    }
}

/// How a job delivery was settled, counted by [`Metrics::delivery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Done (run, or answered from the ledger): acked.
    Acked,
    /// Put back as a confirmed copy with the failed-deliveries header
    /// incremented, then acked.
    Requeued,
    /// The copy could not be published: handed back to the broker (nack
    /// with requeue), to come back `redelivered`.
    Returned,
    /// Rejected to the dead-letter queue (malformed, or given up).
    DeadLettered,
    /// Could not be settled (the channel is gone); the broker redelivers.
    Unsettled,
}

impl DeliveryOutcome {
    fn label(self) -> &'static str {
        match self {
            DeliveryOutcome::Acked => "acked",
            DeliveryOutcome::Requeued => "requeued",
            DeliveryOutcome::Returned => "returned",
            DeliveryOutcome::DeadLettered => "dead_lettered",
            DeliveryOutcome::Unsettled => "unsettled",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let name = |n: &str| format!("{PREFIX}_{n}");
        let buckets = vec![
            0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
            120.0,
        ];
        let gauge = |n: &str, help: &str| IntGauge::new(name(n), help).expect("valid metric");
        Self {
            registry: Registry::new(),
            phase: HistogramVec::new(
                HistogramOpts::new(name("phase_seconds"), "Latency of a job's phases")
                    .buckets(buckets),
                &["phase"],
            )
            .expect("valid metric"),
            jobs: IntCounterVec::new(
                Opts::new(name("jobs_total"), "Finished jobs by final status"),
                &["status"],
            )
            .expect("valid metric"),
            infra_failures: IntCounterVec::new(
                Opts::new(name("infra_failures_total"), "Sandbox failures by kind"),
                &["kind"],
            )
            .expect("valid metric"),
            dead_lettered: IntCounterVec::new(
                Opts::new(
                    name("dead_lettered_total"),
                    "Messages sent to the dead-letter queue",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            deliveries: IntCounterVec::new(
                Opts::new(
                    name("deliveries_total"),
                    "Job deliveries by how they were settled",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            claims: IntCounterVec::new(
                Opts::new(
                    name("claims_total"),
                    "Sandbox claims by kind (specialised, generic, cold) and language",
                ),
                &["kind", "language"],
            )
            .expect("valid metric"),
            pool_ready: gauge("pool_ready", "Sandboxes ready for a job"),
            pool_claimed: gauge("pool_claimed", "Sandboxes claimed by a job"),
            pool_starting: gauge("pool_starting", "Sandboxes being started"),
            pool_warm_hits: gauge("pool_warm_hits", "Claims served at once (since start)"),
            pool_cold_claims: gauge("pool_cold_claims", "Claims that had to wait (since start)"),
            pool_warm_hit_ratio: Gauge::new(
                name("pool_warm_hit_ratio"),
                "Warm hits / all claims since start",
            )
            .expect("valid metric"),
            in_flight: gauge("jobs_in_flight", "Jobs being handled now"),
            broker_connected: gauge("broker_connected", "1 while connected to RabbitMQ"),
        }
    }
}

impl Metrics {
    /// Registers every metric with the struct's own registry.
    ///
    /// # Errors
    /// A metric was registered twice.
    pub fn new() -> Result<Self, prometheus::Error> {
        let m = Self::default();
        let r = &m.registry;
        r.register(Box::new(m.phase.clone()))?;
        r.register(Box::new(m.jobs.clone()))?;
        r.register(Box::new(m.infra_failures.clone()))?;
        r.register(Box::new(m.dead_lettered.clone()))?;
        r.register(Box::new(m.deliveries.clone()))?;
        r.register(Box::new(m.claims.clone()))?;
        for g in [
            &m.pool_ready,
            &m.pool_claimed,
            &m.pool_starting,
            &m.pool_warm_hits,
            &m.pool_cold_claims,
            &m.in_flight,
            &m.broker_connected,
        ] {
            r.register(Box::new(g.clone()))?;
        }
        r.register(Box::new(m.pool_warm_hit_ratio.clone()))?;
        Ok(m)
    }

    /// The registry `/metrics` renders, for a backend's own series.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records how long `phase` took.
    pub fn phase(&self, phase: Phase, took: Duration) {
        self.phase
            .with_label_values(&[phase.label()])
            .observe(took.as_secs_f64());
    }

    /// Counts a finished job.
    pub fn finished(&self, status: Status) {
        self.jobs.with_label_values(&[status.as_str()]).inc();
    }

    /// Counts a sandbox failure, labelled by the error's variant.
    pub fn infra_failure(&self, err: &pool::Error) {
        let kind = match err {
            pool::Error::Io { .. } => "io",
            pool::Error::Protocol(_) => "protocol",
            pool::Error::Timeout(_) => "timeout",
            pool::Error::Closed => "closed",
        };
        self.infra_failures.with_label_values(&[kind]).inc();
    }

    /// Counts a claim of `kind` (see [`Claimed::kind`](crate::pool::Claimed::kind))
    /// for a job of `language` (as sent; unknown names count as `unknown`).
    pub fn claimed(&self, kind: &'static str, language: &str) {
        let language = warmpod_protocol::Language::find(language).map_or("unknown", |l| l.key);
        self.claims.with_label_values(&[kind, language]).inc();
    }

    /// Counts a settled (or unsettleable) job delivery.
    pub fn delivery(&self, outcome: DeliveryOutcome) {
        self.deliveries.with_label_values(&[outcome.label()]).inc();
    }

    /// Counts a message sent to the dead-letter queue.
    pub fn dead_lettered(&self, reason: &'static str) {
        self.dead_lettered.with_label_values(&[reason]).inc();
    }

    /// Marks a job as being handled until the guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Records whether the broker connection is up.
    pub fn broker_connected(&self, up: bool) {
        self.broker_connected.set(i64::from(up));
    }

    /// Copies the pool's figures into the gauges.
    pub fn observe_pool(&self, s: PoolStats) {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.pool_ready.set(clamp(s.ready));
        self.pool_claimed.set(clamp(s.claimed));
        self.pool_starting.set(clamp(s.starting));
        self.pool_warm_hits.set(clamp(s.warm_hits));
        self.pool_cold_claims.set(clamp(s.cold_claims));
        let claims = s.warm_hits + s.cold_claims;
        self.pool_warm_hit_ratio.set(if claims == 0 {
            0.0
        } else {
            s.warm_hits as f64 / claims as f64
        });
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The bound `/metrics` + `/health` server.
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until the task is dropped; `stats` refreshes the pool gauges
    /// on every scrape.
    pub async fn serve(self, metrics: Metrics, stats: Arc<dyn Fn() -> PoolStats + Send + Sync>) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    answer(stream, &metrics, stats.as_ref()),
                )
                .await;
            });
        }
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    stats: &(dyn Fn() -> PoolStats + Send + Sync),
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&buf);
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            metrics.observe_pool(stats());
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render(),
            )
        }
        ("GET", "/health") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") if metrics.broker_connected.get() == 1 => {
            ("200 OK", "text/plain", "ready\n".to_string())
        }
        ("GET", "/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            "not connected to RabbitMQ\n".to_string(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_gauges_follow_pool_stats() {
        let m = Metrics::new().unwrap();
        m.observe_pool(PoolStats {
            ready: 3,
            claimed: 1,
            starting: 0,
            warm_hits: 3,
            cold_claims: 1,
        });
        m.phase(Phase::Claim, Duration::from_millis(2));
        m.finished(Status::Accepted);
        let text = m.render();
        assert!(text.contains("warmpod_pod_manager_pool_ready 3"), "{text}");
        assert!(
            text.contains("warmpod_pod_manager_pool_warm_hit_ratio 0.75"),
            "{text}"
        );
        assert!(
            text.contains("warmpod_pod_manager_jobs_total{status=\"accepted\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("warmpod_pod_manager_phase_seconds_count{phase=\"claim\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn claims_are_counted_by_kind_and_language_key() {
        let m = Metrics::new().unwrap();
        m.claimed("specialised", "py");
        m.claimed("specialised", "python");
        m.claimed("cold", "cobol");
        let text = m.render();
        assert!(
            text.contains(
                "warmpod_pod_manager_claims_total{kind=\"specialised\",language=\"python\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("warmpod_pod_manager_claims_total{kind=\"cold\",language=\"unknown\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn server_answers_metrics_health_and_readiness() {
        let m = Metrics::new().unwrap();
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        let task = tokio::spawn(server.serve(m.clone(), Arc::new(PoolStats::default)));
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let cases = [
            ("/health", "HTTP/1.1 200", "ok"),
            (
                "/metrics",
                "HTTP/1.1 200",
                "warmpod_pod_manager_pool_ready 0",
            ),
            ("/readyz", "HTTP/1.1 503", "not connected"),
            ("/nope", "HTTP/1.1 404", "not found"),
        ];
        for (path, status, body) in cases {
            let out = get(path).await;
            assert!(out.starts_with(status), "{path}: {out}");
            assert!(out.contains(body), "{path}: {out}");
        }
        m.broker_connected(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        task.abort();
    }
}
