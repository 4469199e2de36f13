//! The pod-manager binary with `WARMPOD_BACKEND=kube`, end to end: a job
//! published on RabbitMQ is claimed, run and deleted in the fake cluster
//! (reached through `KUBECONFIG`), and its result comes back as an event.
//! Needs RabbitMQ (`make test` starts it).

use std::process::Stdio;
use std::time::Duration;

use pod_manager::config::Config;
use pod_manager::startup::Application;
use warmpod_protocol::Status;

use crate::broker::{TestBroker, amqp_url, unique_prefix};
use crate::fake_api::{FakeApi, FakeOptions};
use crate::helpers::{fake, job, language_config, language_pool, pool_with, python, wait_ready};

/// A kubeconfig for the fake (plain HTTP, no credentials).
fn kubeconfig(fake: &FakeApi, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: fake\n    user: test\n    namespace: {}\ncurrent-context: test\n",
        fake.url(),
        fake.options().namespace
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn the_pod_manager_binary_runs_a_queued_job_in_a_standby_pod() {
    // Arrange: the fake cluster, a unique queue topology and an events queue.
    let fake = fake(FakeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix();
    let broker = TestBroker::new(&prefix).await;
    let o = fake.options();
    let mut manager = tokio::process::Command::new(env!("CARGO_BIN_EXE_pod-manager"))
        .env("WARMPOD_BACKEND", "kube")
        .env("KUBECONFIG", kubeconfig(&fake, dir.path()))
        .env("AMQP_URL", amqp_url())
        .env("WARMPOD_QUEUE_PREFIX", &prefix)
        .env("WARMPOD_METRICS_ADDR", "127.0.0.1:0")
        .env("WARMPOD_KUBE_NAMESPACE", &o.namespace)
        .env("WARMPOD_KUBE_POOL", &o.pool)
        .env("WARMPOD_KUBE_DEPLOYMENT", &o.deployment)
        .env("WARMPOD_POD_NAME", "e2e-manager")
        .env("WARMPOD_POOL_MIN", "3")
        .env("WARMPOD_POOL_MAX", "3")
        .env("WARMPOD_POOL_SCALE_INTERVAL_S", "1")
        .stdout(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stderr(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("start pod-manager");

    // Act: publish a job as the api-server would.
    let job = python("print('hello from the fake cluster')", 10_000);
    broker.publish(&job).await;

    // Assert: the final event carries the runner's result.
    let event = tokio::select! {
        event = broker.wait_event(job.id, None, Duration::from_secs(90)) => event,
        exited = manager.wait() => panic!("pod-manager exited before the result: {exited:?}"),
    };
    let result = event.result.expect("final events carry the result");
    assert_eq!(result.status, Status::Accepted, "{result:?}");
    assert_eq!(result.stdout, "hello from the fake cluster\n");
    let claims = fake.with(|st| st.claims.clone());
    assert_eq!(claims.len(), 1);
    assert_eq!(
        (claims[0].job.as_str(), claims[0].claimed_by.as_str()),
        (job.id.to_string().as_str(), "e2e-manager")
    );
    let pod = claims[0].pod.clone();
    fake.wait_for("the claimed pod to be deleted", |st| {
        !st.pods.contains_key(&pod)
    })
    .await;
    // The scaler read the queue depth and set the Deployment to the minimum of 3.
    fake.wait_for("the scaler to set 3 replicas", |st| st.replicas == 3)
        .await;
    manager.start_kill().unwrap();
    manager.wait().await.unwrap();
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_counted_by_kind_and_language_with_language_pools() {
    // Arrange: one Python pod (serving), one generic pod, the service
    // around a pool that knows the Python pool.
    let fake = fake(FakeOptions {
        replicas: 1,
        language_pools: vec![language_pool("python", 1)],
        ..FakeOptions::default()
    })
    .await;
    let (pool, kube_metrics) = pool_with(&fake, language_config(&fake, "e2e-manager")).await;
    wait_ready(&pool, 2).await;
    let prefix = unique_prefix();
    let broker = TestBroker::new(&prefix).await;
    let env = [
        ("AMQP_URL", amqp_url()),
        ("WARMPOD_QUEUE_PREFIX", prefix.clone()),
        ("WARMPOD_METRICS_ADDR", "127.0.0.1:0".into()),
        ("WARMPOD_POOL_SIZE", "2".into()),
    ];
    let config = Config::from_lookup(|k| {
        env.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.clone())
    })
    .expect("valid config");
    let app = Application::with_pool_registering(config, pool, |r| kube_metrics.register(r))
        .await
        .unwrap();
    let (stop, metrics) = (app.shutdown_token(), app.metrics_addr());
    let running = tokio::spawn(app.run_until_stopped());

    // Act: a Python job, then a Bash job.
    for (language, code, out) in [
        ("python", "print('py')", "py\n"),
        ("bash", "echo sh", "sh\n"),
    ] {
        let job = job(language, code);
        broker.publish(&job).await;
        let event = broker
            .wait_event(job.id, None, Duration::from_secs(90))
            .await;
        let result = event.result.expect("final events carry the result");
        assert_eq!(result.stdout, out, "{result:?}");
    }

    // Assert: one specialised Python claim, one generic Bash claim.
    let needles = [
        "warmpod_pod_manager_claims_total{kind=\"specialised\",language=\"python\"} 1",
        "warmpod_pod_manager_claims_total{kind=\"generic\",language=\"bash\"} 1",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = metrics_text(metrics).await;
        if needles.iter().all(|n| text.contains(n)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{needles:?} not all in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    broker.cleanup().await;
}

/// The service's `/metrics` text.
async fn metrics_text(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
