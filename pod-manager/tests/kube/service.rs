//! The pod-manager binary with `WARMPOD_BACKEND=kube`, end to end: a job
//! published on RabbitMQ is claimed, run and deleted in the fake cluster
//! (reached through `KUBECONFIG`), and its result comes back as an event.
//! Needs RabbitMQ (`make test` starts it).

use std::process::Stdio;
use std::time::Duration;

use warmpod_protocol::Status;

use crate::broker::{TestBroker, amqp_url, unique_prefix};
use crate::fake_api::{FakeApi, FakeOptions};
use crate::helpers::{fake, python};

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
