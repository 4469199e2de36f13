//! Building and running the service: `Application::build(config)` starts
//! the pool and binds the metrics server (so a broken set-up fails before
//! anything runs); `run_until_stopped` consumes until SIGTERM/SIGINT (or
//! [`Application::shutdown_token`] fires), drains, and tears down.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::{Backend, Config};
use crate::consumer::{Consumer, announce_versions};
use crate::metrics::{Metrics, MetricsServer};
use crate::pool::kube::{KubeMetrics, KubePool, queue_depth::QueueDepth};
use crate::pool::{LocalPool, WarmPool};

type RunFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A built pod-manager, ready to run.
pub struct Application {
    metrics_addr: SocketAddr,
    shutdown: CancellationToken,
    run: RunFuture,
}

impl Application {
    /// Starts the configured pool backend and binds the metrics server.
    ///
    /// # Errors
    /// The pool cannot start (bubblewrap or the runner unusable) or the
    /// metrics address cannot be bound.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        match config.backend {
            Backend::Local => {
                let pool = LocalPool::start(config.local.clone())
                    .await
                    .context("starting the local sandbox pool")?;
                Self::with_pool(config, pool).await
            }
            Backend::Kube => {
                let client = kube::Client::try_default().await.context(
                    "connecting to Kubernetes (no in-cluster service account and no usable KUBECONFIG)",
                )?;
                let kube_metrics = KubeMetrics::default();
                let pool = KubePool::start(client, config.kube.clone(), kube_metrics.clone())
                    .await
                    .context("starting the Kubernetes pool")?;
                if config.kube.autoscale {
                    pool.spawn_scaler(QueueDepth::new(
                        config.amqp_url.expose(),
                        config.queues.jobs.clone(),
                    ));
                }
                Self::with_pool_registering(config, pool, |r| kube_metrics.register(r)).await
            }
        }
    }

    /// Builds the service around an already started `pool`.
    ///
    /// # Errors
    /// The metrics address cannot be bound.
    pub async fn with_pool<P: WarmPool>(config: Config, pool: P) -> anyhow::Result<Self> {
        Self::with_pool_registering(config, pool, |_| Ok(())).await
    }

    /// [`with_pool`](Self::with_pool), letting `register` add the backend's
    /// own series to the `/metrics` registry.
    ///
    /// # Errors
    /// A series cannot be registered or the metrics address cannot be bound.
    pub async fn with_pool_registering<P: WarmPool>(
        config: Config,
        pool: P,
        register: impl FnOnce(&prometheus::Registry) -> prometheus::Result<()>,
    ) -> anyhow::Result<Self> {
        let metrics = Metrics::new().context("registering metrics")?;
        register(metrics.registry()).context("registering the pool backend's metrics")?;
        let server = MetricsServer::bind(config.metrics_addr)
            .await
            .with_context(|| format!("binding the metrics server on {}", config.metrics_addr))?;
        let metrics_addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let pool = Arc::new(pool);
        let consumer = Consumer::new(
            config.clone(),
            pool.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let versions_every = config.versions_interval;
        let run = Box::pin(async move {
            let stats_pool = pool.clone();
            let serving = tokio::spawn(server.serve(metrics, Arc::new(move || stats_pool.stats())));
            let announcing = tokio::spawn(announce_versions(consumer.context(), versions_every));
            let consumed = consumer.run().await;
            announcing.abort();
            pool.shutdown().await;
            serving.abort();
            consumed
        });
        Ok(Self {
            metrics_addr,
            shutdown,
            run,
        })
    }

    /// Where `/metrics` and `/health` are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Fires a graceful shutdown, like SIGTERM does.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until SIGTERM, SIGINT or the shutdown token; then stops
    /// consuming, finishes in-flight jobs (requeueing those not started),
    /// destroys every sandbox and removes the cgroups.
    ///
    /// # Errors
    /// The broker refused our topology.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let token = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown_signal() => {
                    tracing::info!("shutdown requested; draining in-flight jobs");
                    token.cancel();
                }
                () = token.cancelled() => {}
            }
        });
        self.run.await
    }
}

/// Resolves on SIGTERM (Kubernetes, systemd) or SIGINT (a terminal).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
