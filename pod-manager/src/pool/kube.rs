//! The Kubernetes backend: standby pods of a Deployment as the warm pool.
//!
//! Standby pods carry `app.kubernetes.io/name=warmpod-standby`,
//! `warmpod.io/pool=<pool>` and `warmpod.io/state=standby`; the standby
//! Deployment's selector includes the state label. A generic pod's main
//! process only idles; `warmpod-runner` is started by an exec per job.
//!
//! Language pools (optional, [`KubeConfig::languages`]): a standby
//! Deployment per pre-startable language whose pods also carry
//! `warmpod.io/language=<key>` and whose main process is the serving runner
//! (`warmpod-runner --serve <socket> --prestart <key>`: the interpreter is
//! started before any job and waits). A job's exec there is the relay
//! (`warmpod-runner --relay <socket>`), which hands the job line to the
//! serving runner and copies its result back, or runs the job itself, cold,
//! if nothing serves. [`WarmPool::claim_for`] claims from the job's
//! language pool first and falls back to the generic pool (then the other
//! languages' pools) at once: it never waits for a specialised pod. The
//! recent job mix ([`super::mix`]) splits the wanted pool size between the
//! Deployments, each sized by its own [`Scaler`].
//!
//! A job costs three API calls on the happy path:
//! 1. **claim**: one JSON patch whose first op `test`s the state label, then
//!    relabels the pod `claimed` with the job and this manager's name (see
//!    [`claim`]). The API server applies patches atomically, so of two
//!    managers racing for a pod exactly one wins; the loser gets a 409/422
//!    and tries the next pod. The relabel takes the pod out of the
//!    ReplicaSet's selector, which starts a replacement at once.
//! 2. **run**: an exec of `warmpod-runner` over a WebSocket (`v5.channel.k8s.io`
//!    when offered, `v4` otherwise): the job line on stdin, the result line on
//!    stdout, the exit status on the status channel, all bounded by a
//!    deadline (see [`exec`]). A timeout or a broken stream deletes the pod.
//! 3. **destroy**: delete with `gracePeriodSeconds: 0`.
//!
//! The standby set is kept in memory by a kube-runtime reflector (see
//! [`standby`]), so claiming never lists. Beside the pool run the
//! [`janitor`] (deletes claimed pods a crashed manager left behind) and the
//! [`scaler`] (keeps the standby Deployment's replicas between a minimum and
//! a maximum from queue depth and in-flight jobs).
//!
//! # Layout
//! - [`KubeConfig`]: the backend's typed settings, [`KubePool`]: the
//!   [`WarmPool`] implementation, [`PodSandbox`]: a claimed pod.
//! - [`labels`]: label and annotation names, shared with `k8s-config/`.
//! - [`standby`]: the reflector of ready standby pods.
//! - [`claim`]: the claim patch and the claim loop.
//! - [`exec`]: running the runner over the exec WebSocket.
//! - [`janitor`]: the crash-leftover sweeper.
//! - [`scaler`]: pool sizing, decisions as pure functions, one scaler per
//!   standby Deployment;
//!   [`queue_depth`]: the demand it reads from RabbitMQ.
//! - [`metrics`]: per-phase timings and API calls per job.

pub mod claim;
pub mod exec;
pub mod janitor;
pub mod labels;
pub mod metrics;
pub mod queue_depth;
pub mod scaler;
pub mod standby;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;
use warmpod_protocol::{Job, JobResult, Language};

use super::mix::DemandMix;
use super::{Claimed, Error, PoolStats, Result, WarmPool};
pub use metrics::KubeMetrics;
pub use scaler::{Demand, ScalePolicy, Scaler};

/// A language pool: the standby Deployment whose pods' main process
/// pre-started `language`'s interpreter and serves one job on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanguagePool {
    /// The language key (the pods' `warmpod.io/language` label).
    pub language: &'static str,
    /// The Deployment's name (for its scale subresource).
    pub deployment: String,
}

/// Settings of the Kubernetes backend, built once by the binary's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfig {
    /// Namespace of the standby pods and their Deployment.
    pub namespace: String,
    /// Value of the `warmpod.io/pool` label this manager claims from.
    pub pool: String,
    /// Name of the standby Deployment (for the scale subresource).
    pub deployment: String,
    /// Container in the standby pod that holds `warmpod-runner`.
    pub container: String,
    /// Command that starts the runner inside that container.
    pub runner_command: Vec<String>,
    /// Language pools, in order of preference when a job's own language
    /// has none ready (empty: generic pods only).
    pub languages: Vec<LanguagePool>,
    /// Command that relays the job to the serving runner of a specialised
    /// pod (which runs it itself, cold, when nothing serves).
    pub relay_command: Vec<String>,
    /// This manager's pod name (downward API), written to
    /// `warmpod.io/claimed-by` on every pod it claims.
    pub manager: String,
    /// Added to a job's run and compile wall limits to bound its exec.
    pub exec_grace: Duration,
    /// Claimed pods older than this are crash leftovers: the janitor
    /// deletes them. Must exceed the longest possible job.
    pub janitor_max_age: Duration,
    /// How often the janitor sweeps.
    pub janitor_interval: Duration,
    /// Pool sizing bounds and damping.
    pub scale: ScalePolicy,
    /// Whether this manager runs the scaler (off when KEDA or an operator
    /// owns the standby Deployment's replicas).
    pub autoscale: bool,
}

impl Default for KubeConfig {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.into(),
            pool: DEFAULT_POOL.into(),
            deployment: DEFAULT_DEPLOYMENT.into(),
            container: DEFAULT_CONTAINER.into(),
            runner_command: vec![DEFAULT_RUNNER_PATH.into()],
            languages: Vec::new(),
            relay_command: vec![
                DEFAULT_RUNNER_PATH.into(),
                "--relay".into(),
                DEFAULT_SERVE_SOCKET.into(),
            ],
            manager: "pod-manager".into(),
            exec_grace: DEFAULT_EXEC_GRACE,
            janitor_max_age: DEFAULT_JANITOR_MAX_AGE,
            janitor_interval: DEFAULT_JANITOR_INTERVAL,
            scale: ScalePolicy::default(),
            autoscale: true,
        }
    }
}

/// Default namespace (`k8s-config/` creates it).
pub const DEFAULT_NAMESPACE: &str = "warmpod";
/// Default pool name.
pub const DEFAULT_POOL: &str = "default";
/// Default name of the standby Deployment.
pub const DEFAULT_DEPLOYMENT: &str = "warmpod-standby";
/// Default name of the runner's container in a standby pod.
pub const DEFAULT_CONTAINER: &str = "runner";
/// Where the standby image installs the runner.
pub const DEFAULT_RUNNER_PATH: &str = "/usr/local/bin/warmpod-runner";
/// Where a specialised standby pod's serving runner listens (in its
/// `/tmp` emptyDir; `k8s-config/standby-pools/base/deployment.yaml`).
pub const DEFAULT_SERVE_SOCKET: &str = "/tmp/warmpod-serve.sock";
/// Default exec grace beyond the job's own wall limits.
pub const DEFAULT_EXEC_GRACE: Duration = Duration::from_secs(10);
/// Default janitor age: the longest job (60 s run + 60 s compile at the
/// protocol maxima) plus the grace, with a wide margin.
pub const DEFAULT_JANITOR_MAX_AGE: Duration = Duration::from_secs(300);
/// Standby pods asked for the runtime versions before giving up.
const VERSIONS_TRIES: usize = 3;
/// Default janitor period.
pub const DEFAULT_JANITOR_INTERVAL: Duration = Duration::from_secs(30);

/// A standby pod claimed for one job.
#[derive(Debug)]
pub struct PodSandbox {
    name: String,
    job: Uuid,
    claimed_at: Instant,
    /// API calls made for this job so far (claim attempts, exec, delete).
    api_calls: u32,
    /// Set once the pod was deleted (after a failed exec), so `destroy`
    /// does not delete it again.
    deleted: bool,
    /// The language its serving runner pre-started (a language pool's
    /// pod: the job is relayed to it), or `None` (a generic pod).
    prestart: Option<&'static str>,
}

impl PodSandbox {
    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The job it was claimed for.
    pub fn job(&self) -> Uuid {
        self.job
    }

    /// API calls made for this job so far.
    pub fn api_calls(&self) -> u32 {
        self.api_calls
    }

    /// The language pool it came from (`None`: the generic pool).
    pub fn prestart(&self) -> Option<&'static str> {
        self.prestart
    }
}

/// The Kubernetes [`WarmPool`]: cheap to clone, background tasks stop when
/// [`WarmPool::shutdown`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct KubePool {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: KubeConfig,
    pods: Api<Pod>,
    deployments: Api<Deployment>,
    /// The generic pool's standby pods.
    standby: standby::StandbySet,
    /// Each language pool's standby pods, in `cfg.languages` order.
    languages: Vec<(&'static str, standby::StandbySet)>,
    /// The recent job mix over the language pools; splits the wanted size.
    mix: Arc<Mutex<DemandMix>>,
    /// Every manager's claimed pods of the pool (a second watch): the
    /// cluster-wide jobs in flight, for the scaler.
    claimed_pods: kube::runtime::reflector::Store<Pod>,
    metrics: KubeMetrics,
    claimed: AtomicU64,
    warm_hits: AtomicU64,
    cold_claims: AtomicU64,
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl std::fmt::Debug for KubePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubePool")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl KubePool {
    /// Checks the cluster answers (pods can be listed, the standby
    /// Deployment exists), then starts the standby reflector and the janitor.
    ///
    /// # Errors
    /// [`Error::Io`] naming the failed call, with a hint at RBAC or the
    /// manifests, when the cluster does not answer as expected.
    pub async fn start(client: Client, cfg: KubeConfig, metrics: KubeMetrics) -> Result<Self> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &cfg.namespace);
        let deployments: Api<Deployment> = Api::namespaced(client, &cfg.namespace);
        pods.list_metadata(
            &ListParams::default()
                .labels(&labels::pool_selector(&cfg.pool))
                .limit(1),
        )
        .await
        .map_err(|e| {
            kube_error(
                format!(
                    "listing pods in namespace {:?} (is the namespace there and may this \
                         service account list pods? see k8s-config/base/pod-manager.yaml)",
                    cfg.namespace
                ),
                e,
            )
        })?;
        let mut names = vec![&cfg.deployment];
        names.extend(cfg.languages.iter().map(|l| &l.deployment));
        for name in names {
            deployments.get_scale(name).await.map_err(|e| {
                kube_error(
                    format!(
                        "reading the scale of deployment {name:?} in {:?} (apply k8s-config first)",
                        cfg.namespace
                    ),
                    e,
                )
            })?;
        }
        let shutdown = CancellationToken::new();
        let keys: Vec<&'static str> = cfg.languages.iter().map(|l| l.language).collect();
        let standby = standby::StandbySet::start(
            pods.clone(),
            &labels::generic_selector(&cfg.pool, &keys),
            shutdown.child_token(),
        );
        let languages = keys
            .iter()
            .map(|key| {
                let selector = labels::language_selector(&cfg.pool, key);
                let set =
                    standby::StandbySet::start(pods.clone(), &selector, shutdown.child_token());
                (*key, set)
            })
            .collect();
        let (claimed_pods, _) = standby::reflect(
            pods.clone(),
            &labels::state_selector(&cfg.pool, labels::CLAIMED),
            shutdown.child_token(),
        );
        let janitor = janitor::Janitor::new(pods.clone(), &cfg, metrics.clone());
        tokio::spawn(janitor.run(cfg.janitor_interval, shutdown.child_token()));
        info!(namespace = %cfg.namespace, pool = %cfg.pool, manager = %cfg.manager, "kube pool started");
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                pods,
                deployments,
                standby,
                languages,
                mix: Arc::new(Mutex::new(DemandMix::new(&keys))),
                claimed_pods,
                metrics,
                claimed: AtomicU64::new(0),
                warm_hits: AtomicU64::new(0),
                cold_claims: AtomicU64::new(0),
                shutdown,
            }),
        })
    }

    /// The backend's settings.
    pub fn config(&self) -> &KubeConfig {
        &self.inner.cfg
    }

    /// The scaler of the generic standby Deployment (see
    /// [`scalers`](Self::scalers)); run it with [`Scaler::run`] and a
    /// queue-depth source.
    pub fn scaler(&self) -> Scaler {
        self.scalers().swap_remove(0)
    }

    /// One scaler per standby Deployment: the generic one first, then each
    /// language pool's in `cfg.languages` order.
    ///
    /// Demand is queue depth plus the cluster-wide jobs in flight
    /// ([`jobs_in_flight`](Self::jobs_in_flight)), so several managers
    /// compute the same total from the same queue. Without language pools
    /// the generic Deployment takes it all, within `[min, max]`. With them,
    /// that total (clamped to `[min, max]`) is split by the recent job mix
    /// ([`DemandMix::split`]: each language its share, at least one generic
    /// pod from a total of two on), and each Deployment's scaler applies
    /// the hysteresis and the scale-down delay to its own share.
    pub fn scalers(&self) -> Vec<Scaler> {
        let inner = &self.inner;
        let policy = inner.cfg.scale;
        let mut kinds: Vec<(Option<&'static str>, String)> =
            vec![(None, inner.cfg.deployment.clone())];
        kinds.extend(
            inner
                .cfg
                .languages
                .iter()
                .map(|l| (Some(l.language), l.deployment.clone())),
        );
        let split = !inner.cfg.languages.is_empty();
        kinds
            .into_iter()
            .map(|(kind, name)| {
                let claimed = inner.claimed_pods.clone();
                let mix = inner.mix.clone();
                let demand: Demand = Arc::new(move |queue_depth| {
                    let total = queue_depth.saturating_add(standby::running(&claimed));
                    if !split {
                        return total;
                    }
                    let mix = mix.lock().unwrap_or_else(PoisonError::into_inner);
                    scaler::share_of_demand(total, &policy, &mix, kind)
                });
                // With a split, the bounds apply to the total: each share
                // may be anything from 0.
                let policy = if split {
                    ScalePolicy { min: 0, ..policy }
                } else {
                    policy
                };
                Scaler::new(
                    inner.deployments.clone(),
                    name,
                    policy,
                    demand,
                    inner.metrics.clone(),
                )
            })
            .collect()
    }

    /// Jobs running in the pool now, across every manager: its claimed,
    /// not yet terminating pods, as the claimed-pods watch last saw them.
    pub fn jobs_in_flight(&self) -> u64 {
        standby::running(&self.inner.claimed_pods)
    }

    /// Runs every [`Scaler`] in the background with `depth` as the queue
    /// depth, until the pool shuts down.
    pub fn spawn_scaler(&self, depth: queue_depth::QueueDepth) {
        let depth = Arc::new(depth);
        for scaler in self.scalers() {
            let depth = depth.clone();
            let source = move || {
                let depth = depth.clone();
                async move { depth.read().await }
            };
            tokio::spawn(scaler.run(source, self.shutdown_token()));
        }
    }

    /// Recent demand of `language` (a key) as the scalers see it (0..=1).
    pub fn demand_share(&self, language: &str) -> f64 {
        self.inner
            .mix
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .share(language)
    }

    /// Fires when the pool shuts down; for tasks that live as long as it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Deletes `name` with grace 0; a pod already gone counts as deleted.
    async fn delete_pod(&self, name: &str) -> Result<()> {
        self.inner.metrics.api_call("delete");
        match self
            .inner
            .pods
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if api_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(kube_error(format!("deleting pod {name}"), e)),
        }
    }
}

impl WarmPool for KubePool {
    type Sandbox = PodSandbox;

    async fn claim(&self, job_id: Uuid) -> Result<Claimed<PodSandbox>> {
        self.claim_for(job_id, "").await
    }

    async fn claim_for(&self, job_id: Uuid, language: &str) -> Result<Claimed<PodSandbox>> {
        let started = Instant::now();
        let inner = &self.inner;
        let key = Language::find(language).map(|l| l.key);
        if let Some(key) = key {
            inner
                .mix
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(key);
        }
        let order = inner.claim_order(key);
        let sets: Vec<_> = order.iter().map(|(_, set)| *set).collect();
        let outcome = claim::claim(
            &inner.pods,
            &sets,
            &inner.cfg.manager,
            job_id,
            &inner.metrics,
            &inner.shutdown,
        )
        .await?;
        let prestart = order[outcome.set].0;
        inner.claimed.fetch_add(1, Ordering::Relaxed);
        if outcome.warm {
            inner.warm_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            inner.cold_claims.fetch_add(1, Ordering::Relaxed);
        }
        inner.metrics.phase("claim", started.elapsed());
        debug!(pod = %outcome.pod, job = %job_id, attempts = outcome.attempts, warm = outcome.warm, prestart, "claimed");
        Ok(Claimed {
            sandbox: PodSandbox {
                name: outcome.pod,
                job: job_id,
                claimed_at: started,
                api_calls: outcome.attempts,
                deleted: false,
                prestart,
            },
            warm: outcome.warm,
            specialised: outcome.warm && prestart.is_some() && prestart == key,
        })
    }

    async fn run(&self, sandbox: &mut PodSandbox, job: &Job) -> Result<JobResult> {
        let started = Instant::now();
        let inner = &self.inner;
        let deadline = super::answer_deadline(job, inner.cfg.exec_grace);
        sandbox.api_calls += 1;
        inner.metrics.api_call("exec");
        // A specialised pod's serving runner already holds the interpreter:
        // the exec only relays the job to it.
        let command = if sandbox.prestart.is_some() {
            &inner.cfg.relay_command
        } else {
            &inner.cfg.runner_command
        };
        let outcome = exec::run_job(
            &inner.pods,
            &sandbox.name,
            &inner.cfg.container,
            command,
            job,
            deadline,
        )
        .await;
        inner.metrics.phase("exec", started.elapsed());
        match outcome {
            Ok(result) => Ok(result),
            Err(e) => {
                // A pod whose exec failed may still run the program: kill it
                // now rather than at destroy, and never reuse it.
                warn!(pod = %sandbox.name, job = %job.id, error = %e, "exec failed, deleting pod");
                inner.metrics.exec_failed(&e);
                sandbox.api_calls += 1;
                match self.delete_pod(&sandbox.name).await {
                    Ok(()) => sandbox.deleted = true,
                    Err(del) => {
                        warn!(pod = %sandbox.name, error = %del, "delete after failed exec failed; the janitor will retry")
                    }
                }
                Err(e.into_pool_error(deadline))
            }
        }
    }

    async fn destroy(&self, mut sandbox: PodSandbox) {
        let started = Instant::now();
        if !sandbox.deleted {
            sandbox.api_calls += 1;
            if let Err(e) = self.delete_pod(&sandbox.name).await {
                warn!(pod = %sandbox.name, error = %e, "destroy failed; the janitor will delete the pod");
            }
        }
        let inner = &self.inner;
        inner.claimed.fetch_sub(1, Ordering::Relaxed);
        inner.metrics.phase("destroy", started.elapsed());
        inner.metrics.phase("held", sandbox.claimed_at.elapsed());
        inner.metrics.job_done(sandbox.api_calls);
        debug!(pod = %sandbox.name, job = %sandbox.job, api_calls = sandbox.api_calls, "destroyed");
    }

    fn stats(&self) -> PoolStats {
        let inner = &self.inner;
        let counts = inner
            .all_sets()
            .into_iter()
            .map(standby::StandbySet::counts)
            .fold(standby::Counts::default(), |a, c| standby::Counts {
                ready: a.ready + c.ready,
                starting: a.starting + c.starting,
            });
        PoolStats {
            ready: counts.ready,
            claimed: inner.claimed.load(Ordering::Relaxed),
            starting: counts.starting,
            warm_hits: inner.warm_hits.load(Ordering::Relaxed),
            cold_claims: inner.cold_claims.load(Ordering::Relaxed),
        }
    }

    async fn runtime_versions(&self) -> Result<BTreeMap<String, String>> {
        // `--versions` runs beside the main process of a ready standby pod
        // of any pool (idle, or a serving runner, whose socket it does not
        // touch) and leaves nothing behind, so the pod stays in the pool. The
        // pod may be claimed and deleted meanwhile: then ask another one.
        let mut command = self.inner.cfg.runner_command.clone();
        command.push("--versions".into());
        let mut last = None;
        for _ in 0..VERSIONS_TRIES {
            let sets = self.inner.all_sets();
            let pod = standby::wait_any_ready(&sets, &self.inner.shutdown).await?;
            self.inner.metrics.api_call("exec");
            let out = exec::run_command(
                &self.inner.pods,
                &pod,
                &self.inner.cfg.container,
                &command,
                exec::VERSIONS_DEADLINE,
            )
            .await;
            let parsed = match out {
                Ok(out) => serde_json::from_str(out.trim()).map_err(|e| {
                    Error::Protocol(format!(
                        "`warmpod-runner --versions` in pod {pod} printed no JSON object: {e}"
                    ))
                }),
                Err(e) => Err(e.into_pool_error(exec::VERSIONS_DEADLINE)),
            };
            match parsed {
                Ok(versions) => return Ok(versions),
                Err(e) => {
                    debug!(%pod, error = %e, "reading runtime versions failed; trying another pod");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(Error::Closed))
    }

    async fn shutdown(&self) {
        // Standby pods belong to the Deployment and are shared with other
        // managers: they stay. Only this manager's claims and tasks stop.
        self.inner.shutdown.cancel();
    }
}

impl Inner {
    /// Every standby set: the generic pool's, then each language pool's.
    fn all_sets(&self) -> Vec<&standby::StandbySet> {
        std::iter::once(&self.standby)
            .chain(self.languages.iter().map(|(_, set)| set))
            .collect()
    }

    /// The standby sets a claim for a job of language `key` tries, in
    /// order, each with the language its pods pre-started: the language's
    /// own pool, the generic pool, then the other language pools (whose
    /// serving runner runs another language's job cold).
    fn claim_order(
        &self,
        key: Option<&'static str>,
    ) -> Vec<(Option<&'static str>, &standby::StandbySet)> {
        let own = self.languages.iter().find(|(k, _)| Some(*k) == key);
        let mut order: Vec<_> = own.map(|(k, set)| (Some(*k), set)).into_iter().collect();
        order.push((None, &self.standby));
        order.extend(
            self.languages
                .iter()
                .filter(|(k, _)| Some(*k) != key)
                .map(|(k, set)| (Some(*k), set)),
        );
        order
    }
}

/// Wraps a kube error as a pool error saying what we were doing.
pub(crate) fn kube_error(context: impl Into<String>, e: kube::Error) -> Error {
    Error::Io {
        context: context.into(),
        source: std::io::Error::other(e),
    }
}

/// The HTTP status of an API error, if `e` is one.
pub(crate) fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
