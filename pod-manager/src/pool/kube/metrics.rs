//! Metrics of the Kubernetes backend: per-phase timings (claim, exec,
//! destroy) and API calls, in total by verb and per job (the target is 3:
//! patch, exec, delete).

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use super::exec::ExecError;

/// The backend's metrics; clones share the same series.
#[derive(Clone)]
pub struct KubeMetrics {
    api_calls: IntCounterVec,
    calls_per_job: Histogram,
    phase_seconds: HistogramVec,
    exec_failures: IntCounterVec,
    claim_conflicts: IntCounter,
    janitor_deleted: IntCounter,
    desired_replicas: IntGaugeVec,
}

impl Default for KubeMetrics {
    fn default() -> Self {
        Self {
            api_calls: IntCounterVec::new(
                Opts::new(
                    "warmpod_kube_api_calls_total",
                    "Kubernetes API calls by verb",
                ),
                &["verb"],
            )
            .expect("valid metric"),
            calls_per_job: Histogram::with_opts(
                HistogramOpts::new(
                    "warmpod_kube_api_calls_per_job",
                    "Kubernetes API calls a job cost (target: 3)",
                )
                .buckets(vec![3.0, 4.0, 5.0, 6.0, 8.0, 12.0]),
            )
            .expect("valid metric"),
            phase_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "warmpod_kube_phase_seconds",
                    "Time per job phase in the kube backend",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0,
                ]),
                &["phase"],
            )
            .expect("valid metric"),
            exec_failures: IntCounterVec::new(
                Opts::new(
                    "warmpod_kube_exec_failures_total",
                    "Execs that gave no result, by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            claim_conflicts: IntCounter::new(
                "warmpod_kube_claim_conflicts_total",
                "Claims lost to another manager (409/422) or to a vanished pod",
            )
            .expect("valid metric"),
            janitor_deleted: IntCounter::new(
                "warmpod_kube_janitor_deleted_total",
                "Abandoned claimed pods deleted by the janitor",
            )
            .expect("valid metric"),
            desired_replicas: IntGaugeVec::new(
                Opts::new(
                    "warmpod_kube_desired_replicas",
                    "Standby replicas the scaler last decided on, by Deployment",
                ),
                &["deployment"],
            )
            .expect("valid metric"),
        }
    }
}

impl KubeMetrics {
    /// Registers every series.
    ///
    /// # Errors
    /// A series of the same name is already registered.
    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.api_calls.clone()))?;
        registry.register(Box::new(self.calls_per_job.clone()))?;
        registry.register(Box::new(self.phase_seconds.clone()))?;
        registry.register(Box::new(self.exec_failures.clone()))?;
        registry.register(Box::new(self.claim_conflicts.clone()))?;
        registry.register(Box::new(self.janitor_deleted.clone()))?;
        registry.register(Box::new(self.desired_replicas.clone()))?;
        Ok(())
    }

    /// One API call of `verb`.
    pub fn api_call(&self, verb: &str) {
        self.api_calls.with_label_values(&[verb]).inc();
    }

    /// API calls of `verb` so far.
    pub fn api_calls(&self, verb: &str) -> u64 {
        self.api_calls.with_label_values(&[verb]).get()
    }

    /// A phase took `elapsed`.
    pub fn phase(&self, phase: &str, elapsed: Duration) {
        self.phase_seconds
            .with_label_values(&[phase])
            .observe(elapsed.as_secs_f64());
    }

    /// A job finished after `calls` API calls.
    pub fn job_done(&self, calls: u32) {
        self.calls_per_job.observe(f64::from(calls));
    }

    /// Jobs finished and the API calls they made in total.
    pub fn jobs_and_calls(&self) -> (u64, u64) {
        (
            self.calls_per_job.get_sample_count(),
            self.calls_per_job.get_sample_sum() as u64,
        )
    }

    /// An exec failed.
    pub fn exec_failed(&self, e: &ExecError) {
        self.exec_failures.with_label_values(&[e.kind()]).inc();
    }

    /// A claim lost a race.
    pub fn claim_conflict(&self) {
        self.claim_conflicts.inc();
    }

    /// Claims lost so far.
    pub fn claim_conflicts(&self) -> u64 {
        self.claim_conflicts.get()
    }

    /// The janitor deleted a pod.
    pub fn janitor_deleted(&self) {
        self.janitor_deleted.inc();
    }

    /// The scaler of `deployment` decided on `n` replicas.
    pub fn desired_replicas(&self, deployment: &str, n: i32) {
        self.desired_replicas
            .with_label_values(&[deployment])
            .set(i64::from(n));
    }
}
