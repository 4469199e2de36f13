//! Shared set-up: the fake cluster, kube clients pointed at it, pools and
//! jobs.

use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use pod_manager::pool::WarmPool;
use pod_manager::pool::kube::{
    DEFAULT_RUNNER_PATH, DEFAULT_SERVE_SOCKET, KubeConfig, KubeMetrics, KubePool, LanguagePool,
    ScalePolicy,
};
use uuid::Uuid;
use warmpod_protocol::{Job, Limits, SourceFile};

use crate::fake_api::{FakeApi, FakeOptions, FakePool};

/// The real runner, built next to this test executable
/// (`target/debug/deps/kube-*` → `target/debug/warmpod-runner`).
pub fn runner_path() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let runner = dir.join("warmpod-runner");
    assert!(
        runner.is_file(),
        "{} is missing: build it first with `cargo build -p warmpod-runner` (make test does)",
        runner.display()
    );
    runner
}

/// Logs to stdout when `TEST_LOG` is set.
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    "debug,hyper=info,tower=info",
                ))
                .with_test_writer()
                .init();
        }
    });
}

/// A fake cluster with `opts`.
pub async fn fake(opts: FakeOptions) -> FakeApi {
    init_logs();
    FakeApi::start(opts, runner_path()).await
}

/// A kube client talking to `fake` over plain HTTP.
pub fn client(fake: &FakeApi) -> kube::Client {
    let mut cfg = kube::Config::new(fake.url().parse().expect("fake URL"));
    cfg.default_namespace = fake.options().namespace.clone();
    kube::Client::try_from(cfg).expect("kube client for the fake")
}

/// Backend settings for `fake` as manager `manager`; the janitor sweeps
/// rarely (tests call it directly).
pub fn config(fake: &FakeApi, manager: &str) -> KubeConfig {
    let o = fake.options();
    KubeConfig {
        namespace: o.namespace.clone(),
        pool: o.pool.clone(),
        deployment: o.deployment.clone(),
        manager: manager.into(),
        exec_grace: Duration::from_secs(30),
        janitor_interval: Duration::from_secs(3600),
        scale: ScalePolicy {
            min: 1,
            max: 5,
            hysteresis: 0,
            scale_down_delay: Duration::ZERO,
            interval: Duration::from_secs(3600),
        },
        ..KubeConfig::default()
    }
}

/// A started pool with its own client and metrics.
pub async fn pool_with(fake: &FakeApi, cfg: KubeConfig) -> (KubePool, KubeMetrics) {
    let metrics = KubeMetrics::default();
    let pool = KubePool::start(client(fake), cfg, metrics.clone())
        .await
        .expect("pool starts against the fake");
    (pool, metrics)
}

/// A started pool for manager `manager` with default test settings.
pub async fn pool(fake: &FakeApi, manager: &str) -> (KubePool, KubeMetrics) {
    pool_with(fake, config(fake, manager)).await
}

/// A language pool of `replicas` pods for `language`, as
/// `k8s-config/standby-pools/<language>` describes it: the main process is
/// the serving runner, the readiness probe asks whether it serves.
pub fn language_pool(language: &str, replicas: i32) -> FakePool {
    let runner = DEFAULT_RUNNER_PATH.to_string();
    let socket = DEFAULT_SERVE_SOCKET.to_string();
    FakePool {
        deployment: format!("warmpod-standby-{language}"),
        language: language.into(),
        replicas,
        main: vec![
            runner.clone(),
            "--serve".into(),
            socket.clone(),
            "--prestart".into(),
            language.into(),
        ],
        probe: vec![runner, "--serving".into(), socket],
    }
}

/// [`config`] with a language pool per pool of `fake`.
pub fn language_config(fake: &FakeApi, manager: &str) -> KubeConfig {
    let languages = fake
        .options()
        .language_pools
        .iter()
        .map(|p| LanguagePool {
            language: warmpod_protocol::Language::find(&p.language)
                .expect("a known language")
                .key,
            deployment: p.deployment.clone(),
        })
        .collect();
    KubeConfig {
        languages,
        ..config(fake, manager)
    }
}

/// A job of `language` running `code`.
pub fn job(language: &str, code: &str) -> Job {
    Job {
        language: language.into(),
        ..python(code, 10_000)
    }
}

/// A Python job.
pub fn python(code: &str, wall_ms: u64) -> Job {
    Job {
        id: Uuid::new_v4(),
        language: "python".into(),
        files: vec![SourceFile {
            name: String::new(),
            content: code.into(),
        }],
        stdin: String::new(),
        args: vec![],
        limits: Limits {
            wall_time_ms: Some(wall_ms),
            ..Limits::default()
        },
        compile_limits: Limits::default(),
    }
}

/// Polls until `pool`'s claimed-pods watch sees `n` jobs in flight (60 s at most).
pub async fn wait_in_flight(pool: &pod_manager::pool::kube::KubePool, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while pool.jobs_in_flight() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {n} jobs in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `pool` until its reflector sees `n` ready pods (60 s at most).
pub async fn wait_ready(pool: &KubePool, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while pool.stats().ready < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pool never saw {n} ready pods"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
