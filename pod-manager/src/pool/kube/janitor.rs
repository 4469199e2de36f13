//! The janitor: deletes claimed pods that no manager will destroy.
//!
//! A manager that crashes between claim and destroy leaves its pod
//! `claimed` (outside the Deployment, so nothing else deletes it). Every
//! sweep lists the pool's claimed pods (one LIST per period, not per job)
//! and deletes, with grace 0, those claimed longer ago than the longest
//! possible job plus a margin ([`KubeConfig::janitor_max_age`]).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{KubeConfig, KubeMetrics, api_code, kube_error, labels};
use crate::pool::Result;

/// Sweeps one pool's abandoned claimed pods.
#[derive(Clone)]
pub struct Janitor {
    pods: Api<Pod>,
    pool: String,
    max_age: Duration,
    metrics: KubeMetrics,
}

impl Janitor {
    /// A janitor for `cfg`'s pool.
    pub fn new(pods: Api<Pod>, cfg: &KubeConfig, metrics: KubeMetrics) -> Self {
        Self {
            pods,
            pool: cfg.pool.clone(),
            max_age: cfg.janitor_max_age,
            metrics,
        }
    }

    /// One sweep: deletes every abandoned claimed pod and returns their names.
    ///
    /// # Errors
    /// The LIST failed; failed deletes are logged and retried next sweep.
    pub async fn sweep(&self) -> Result<Vec<String>> {
        self.metrics.api_call("list");
        let claimed = self
            .pods
            .list(
                &ListParams::default().labels(&labels::state_selector(&self.pool, labels::CLAIMED)),
            )
            .await
            .map_err(|e| kube_error("listing claimed pods", e))?;
        let now = Timestamp::now();
        let mut deleted = Vec::new();
        for pod in claimed
            .items
            .iter()
            .filter(|p| is_abandoned(p, now, self.max_age))
        {
            let name = pod.name_any();
            self.metrics.api_call("delete");
            match self
                .pods
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(_) => {
                    info!(pod = %name, job = ?pod.labels().get(labels::JOB), claimed_by = ?pod.labels().get(labels::CLAIMED_BY), "janitor deleted an abandoned claimed pod");
                    self.metrics.janitor_deleted();
                    deleted.push(name);
                }
                Err(e) if api_code(&e) == Some(404) => {}
                Err(e) => {
                    warn!(pod = %name, error = %e, "janitor could not delete pod; retrying next sweep")
                }
            }
        }
        Ok(deleted)
    }

    /// Sweeps every `period` until `shutdown` fires.
    pub async fn run(self, period: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sweep().await {
                warn!(error = %e, "janitor sweep failed; retrying next period");
            }
        }
    }
}

/// Whether a claimed pod was claimed more than `max_age` before `now`. The
/// claim time is the `warmpod.io/claimed-at` annotation; a claimed pod
/// without a readable one falls back to its creation time, and without
/// either counts as abandoned (nothing would ever clean it up otherwise).
pub fn is_abandoned(pod: &Pod, now: Timestamp, max_age: Duration) -> bool {
    if pod.labels().get(labels::STATE).map(String::as_str) != Some(labels::CLAIMED) {
        return false;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let claimed_at = pod
        .annotations()
        .get(labels::CLAIMED_AT)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let Some(claimed_at) = claimed_at else {
        return true;
    };
    let age = now.duration_since(claimed_at);
    age.is_positive() && age.unsigned_abs() > max_age
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claimed(annotation: Option<&str>, created: Option<&str>) -> Pod {
        let mut pod =
            json!({"metadata": {"name": "p", "labels": {labels::STATE: labels::CLAIMED}}});
        if let Some(a) = annotation {
            pod["metadata"]["annotations"] = json!({labels::CLAIMED_AT: a});
        }
        if let Some(c) = created {
            pod["metadata"]["creationTimestamp"] = json!(c);
        }
        serde_json::from_value(pod).unwrap()
    }

    #[test]
    fn age_decides_from_the_claim_annotation() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let max = Duration::from_secs(300);
        let cases = [
            (
                claimed(Some("2026-01-01T00:00:00Z"), None),
                true,
                "claimed 10 min ago",
            ),
            (
                claimed(Some("2026-01-01T00:09:00Z"), None),
                false,
                "claimed 1 min ago",
            ),
            (
                claimed(Some("2026-01-01T00:20:00Z"), None),
                false,
                "claimed in the future (clock skew)",
            ),
            (
                claimed(Some("garbage"), Some("2026-01-01T00:00:00Z")),
                true,
                "bad annotation: creation time",
            ),
            (
                claimed(None, Some("2026-01-01T00:08:00Z")),
                false,
                "no annotation, young pod",
            ),
            (claimed(None, None), true, "no time at all"),
        ];
        for (pod, want, why) in cases {
            assert_eq!(is_abandoned(&pod, now, max), want, "{why}");
        }
    }

    #[test]
    fn standby_and_terminating_pods_are_left_alone() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let mut standby = claimed(Some("2000-01-01T00:00:00Z"), None);
        standby
            .labels_mut()
            .insert(labels::STATE.into(), labels::STANDBY.into());
        assert!(!is_abandoned(&standby, now, Duration::ZERO));
        let mut terminating = claimed(Some("2000-01-01T00:00:00Z"), None);
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
        assert!(!is_abandoned(&terminating, now, Duration::ZERO));
    }
}
