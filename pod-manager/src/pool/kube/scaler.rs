//! Pool sizing: each standby Deployment's replicas follow demand.
//!
//! Demand is the jobs waiting in the queue plus the jobs running now: every
//! queued job will claim a pod, and the running ones predict the next wave.
//! With language pools, that total is split between the Deployments by the
//! recent job mix and each has its own scaler (see
//! [`KubePool::scalers`](super::KubePool::scalers)). The decision is two
//! pure functions, apart from the client:
//! [`desired_replicas`] (clamp to `[min, max]`, scale up at once, scale
//! down only beyond a hysteresis band) and [`damped`] (a scale-down must be
//! wanted for `scale_down_delay` before it happens, so a short lull does not
//! throw away warm pods). [`Scaler::reconcile`] reads and writes the
//! Deployment's `scale` subresource.
//!
//! With several pod-managers each runs a scaler; they read the same queue
//! depth and count the same in-flight jobs (every manager's claimed pods,
//! watched by [`KubePool`](super::KubePool)), so they converge on the same
//! target. KEDA's RabbitMQ scaler is the
//! alternative (see docs/operations.md): disable ours with
//! `WARMPOD_POOL_SCALER=off` and let a `ScaledObject` own the replicas.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{KubeMetrics, kube_error};
use crate::pool::Result;
use crate::pool::mix::DemandMix;

/// Bounds and damping of the standby pool size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalePolicy {
    /// Fewest standby pods.
    pub min: i32,
    /// Most standby pods.
    pub max: i32,
    /// Scale down only when the target is more than this below the current
    /// size.
    pub hysteresis: i32,
    /// How long a lower target must persist before scaling down.
    pub scale_down_delay: Duration,
    /// How often the scaler looks.
    pub interval: Duration,
}

impl Default for ScalePolicy {
    fn default() -> Self {
        Self {
            min: 2,
            max: 20,
            hysteresis: 1,
            scale_down_delay: Duration::from_secs(60),
            interval: Duration::from_secs(5),
        }
    }
}

/// The replicas demand asks for: `queue_depth + in_flight` clamped to
/// `[min, max]`. Above the current size (itself clamped to the bounds) it
/// is taken at once; below it only when more than `hysteresis` below, else
/// the (clamped) current size is kept.
pub fn desired_replicas(
    queue_depth: u64,
    in_flight: u64,
    current: i32,
    min: i32,
    max: i32,
    hysteresis: i32,
) -> i32 {
    let max = max.max(min);
    let demand = i32::try_from(queue_depth.saturating_add(in_flight)).unwrap_or(i32::MAX);
    let want = demand.clamp(min, max);
    let held = current.clamp(min, max);
    if want > held || held - want > hysteresis {
        want
    } else {
        held
    }
}

/// One Deployment's share of `demand` (queue depth + jobs in flight) when
/// language pools split the pool: the total clamped to the policy's
/// `[min, max]`, split by `mix` ([`DemandMix::split`]); `kind` is the
/// Deployment's language key, `None` for the generic one.
pub fn share_of_demand(
    demand: u64,
    policy: &ScalePolicy,
    mix: &DemandMix,
    kind: Option<&str>,
) -> u64 {
    let min = u64::try_from(policy.min).unwrap_or(0);
    let max = u64::try_from(policy.max).unwrap_or(0).max(min);
    let total = usize::try_from(demand.clamp(min, max)).unwrap_or(usize::MAX);
    let split = mix.split(total);
    let share = match kind {
        None => split.generic,
        Some(key) => split
            .specialised
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, n)| *n),
    };
    share as u64
}

/// Applies the scale-down delay: returns the replicas to set now and when
/// the pending scale-down was first wanted. Scale-ups and holds clear it.
pub fn damped(
    current: i32,
    want: i32,
    down_since: Option<Instant>,
    now: Instant,
    delay: Duration,
) -> (i32, Option<Instant>) {
    if want >= current {
        return (want, None);
    }
    let since = down_since.unwrap_or(now);
    if now.saturating_duration_since(since) >= delay {
        (want, None)
    } else {
        (current, Some(since))
    }
}

/// A Deployment's demand given the queue depth: the replicas it should
/// have before bounds, hysteresis and damping (see
/// [`KubePool::scalers`](super::KubePool::scalers)).
pub type Demand = Arc<dyn Fn(u64) -> u64 + Send + Sync>;

/// Keeps one standby Deployment sized to demand.
pub struct Scaler {
    deployments: Api<Deployment>,
    name: String,
    policy: ScalePolicy,
    demand: Demand,
    metrics: KubeMetrics,
    down_since: Mutex<Option<Instant>>,
}

impl Scaler {
    /// A scaler of deployment `name` whose demand `demand` computes from
    /// the queue depth.
    pub fn new(
        deployments: Api<Deployment>,
        name: String,
        policy: ScalePolicy,
        demand: Demand,
        metrics: KubeMetrics,
    ) -> Self {
        Self {
            deployments,
            name,
            policy,
            demand,
            metrics,
            down_since: Mutex::new(None),
        }
    }

    /// One look: reads the scale, decides, patches it if the target
    /// differs. Returns the replicas the Deployment has afterwards.
    ///
    /// # Errors
    /// Reading or patching the scale subresource failed.
    pub async fn reconcile(&self, queue_depth: u64) -> Result<i32> {
        self.metrics.api_call("get_scale");
        let scale = self
            .deployments
            .get_scale(&self.name)
            .await
            .map_err(|e| kube_error(format!("reading the scale of {}", self.name), e))?;
        let current = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
        let p = self.policy;
        let want = desired_replicas(
            (self.demand)(queue_depth),
            0,
            current,
            p.min,
            p.max,
            p.hysteresis,
        );
        let target = {
            let mut down_since = self
                .down_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let held = current.clamp(p.min, p.max.max(p.min));
            let (target, since) =
                damped(held, want, *down_since, Instant::now(), p.scale_down_delay);
            *down_since = since;
            target
        };
        self.metrics.desired_replicas(&self.name, target);
        if target == current {
            return Ok(current);
        }
        self.metrics.api_call("patch_scale");
        self.deployments
            .patch_scale(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": target}})),
            )
            .await
            .map_err(|e| kube_error(format!("scaling {} to {target}", self.name), e))?;
        info!(deployment = %self.name, from = current, to = target, queue_depth, "scaled a standby pool");
        Ok(target)
    }

    /// Reconciles every `policy.interval` with the depth `queue_depth`
    /// reports (`None`: unknown this time, skip) until `shutdown` fires.
    pub async fn run<F, Fut>(self, queue_depth: F, shutdown: CancellationToken)
    where
        F: Fn() -> Fut + Send,
        Fut: Future<Output = Option<u64>> + Send,
    {
        let mut tick = tokio::time::interval(self.policy.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(depth) = queue_depth().await else {
                continue;
            };
            if let Err(e) = self.reconcile(depth).await {
                warn!(error = %e, "pool scaler failed; retrying next period");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_replicas_follows_demand_within_bounds() {
        // (queue, in_flight, current, expected, why) with min 2, max 10, hysteresis 1
        let cases = [
            (0, 0, 2, 2, "idle at the minimum"),
            (5, 0, 2, 5, "queue grows: up at once"),
            (5, 3, 2, 8, "in-flight jobs count too"),
            (100, 0, 2, 10, "capped at max"),
            (0, 0, 0, 2, "below min is raised"),
            (20, 0, 15, 10, "above max is lowered to max"),
            (0, 0, 15, 2, "above max without demand: down to min"),
            (4, 0, 5, 5, "one below: inside the band, hold"),
            (3, 0, 5, 3, "two below: outside the band, down"),
            (0, 0, 3, 3, "min is 2, only one below: hold"),
            (0, 0, 10, 2, "idle after a burst: down to min"),
        ];
        for (q, f, cur, want, why) in cases {
            assert_eq!(desired_replicas(q, f, cur, 2, 10, 1), want, "{why}");
        }
    }

    #[test]
    fn shares_split_the_clamped_total_by_the_mix() {
        let policy = ScalePolicy {
            min: 2,
            max: 10,
            ..ScalePolicy::default()
        };
        let mut mix = DemandMix::new(&["python", "javascript"]);
        for _ in 0..200 {
            mix.observe("python");
        }
        let shares = |demand| {
            [None, Some("python"), Some("javascript")]
                .map(|kind| share_of_demand(demand, &policy, &mix, kind))
        };
        assert_eq!(shares(6), [1, 5, 0], "one generic pod kept");
        assert_eq!(shares(0), [1, 1, 0], "the minimum is the total's");
        assert_eq!(shares(100), [1, 9, 0], "so is the maximum");
        assert_eq!(
            share_of_demand(6, &policy, &mix, Some("cobol")),
            0,
            "no pool"
        );
    }

    #[test]
    fn huge_demand_does_not_overflow() {
        assert_eq!(desired_replicas(u64::MAX, u64::MAX, 1, 1, 50, 0), 50);
    }

    #[test]
    fn scale_down_waits_for_the_delay() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(60);
        let (n, since) = damped(10, 2, None, t0, delay);
        assert_eq!((n, since), (10, Some(t0)), "first wish to go down: hold");
        let (n, since) = damped(10, 2, since, t0 + Duration::from_secs(30), delay);
        assert_eq!((n, since), (10, Some(t0)), "still within the delay");
        let (n, since) = damped(10, 2, since, t0 + delay, delay);
        assert_eq!((n, since), (2, None), "after the delay: down");
        let (n, since) = damped(10, 12, Some(t0), t0 + delay, delay);
        assert_eq!(
            (n, since),
            (12, None),
            "scale-ups are immediate and reset the wait"
        );
        assert_eq!(
            damped(4, 2, None, t0, Duration::ZERO),
            (2, None),
            "no delay configured"
        );
    }
}
