//! The pod-manager binary with `WARMPOD_BACKEND=kube`, end to end: a job
//! published on RabbitMQ is claimed, run and deleted in the fake cluster
//! (reached through `KUBECONFIG`), and its result comes back as an event.
//! Needs RabbitMQ (`make test` starts it).

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use pod_manager::config::QueueNames;
use warmpod_protocol::{JobEvent, JobMessage, JobMeta, Status};

use crate::fake_api::{FakeApi, FakeOptions};
use crate::helpers::{fake, python};

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

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
    let prefix = format!("test-{}.", uuid::Uuid::new_v4().simple());
    let names = QueueNames::with_prefix(&prefix);
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ must be running (scripts/ensure-rabbitmq.sh)");
    let channel = connection.create_channel().await.unwrap();
    pod_manager::queue::declare_topology(
        &channel,
        &names,
        warmpod_protocol::queue::JOBS_QUEUE_MAX_LENGTH,
    )
    .await
    .unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let events = channel
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    channel
        .queue_bind(
            events.name().clone(),
            names.events.as_str().into(),
            "job.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut consumer = channel
        .basic_consume(
            events.name().clone(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .unwrap();
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
    let msg = JobMessage {
        job: job.clone(),
        submitted_at_ms: pod_manager::consumer::now_ms(),
        meta: JobMeta::default(),
    };
    let confirm = channel
        .basic_publish(
            "".into(),
            names.jobs.as_str().into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&msg).unwrap(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());

    // Assert: the final event carries the runner's result.
    let result = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(Ok(d)) = consumer.next().await {
            let e: JobEvent = serde_json::from_slice(&d.data).unwrap();
            if e.id == job.id && e.status.is_final() {
                return e.result.expect("final events carry the result");
            }
        }
        panic!("the events consumer ended");
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no final event; pod-manager exited: {:?}",
            manager.try_wait()
        )
    });
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
    channel
        .queue_delete(names.jobs.as_str().into(), Default::default())
        .await
        .unwrap();
    channel
        .queue_delete(names.dead_letter_queue.as_str().into(), Default::default())
        .await
        .unwrap();
    channel
        .exchange_delete(names.events.as_str().into(), Default::default())
        .await
        .unwrap();
    channel
        .exchange_delete(
            names.dead_letter_exchange.as_str().into(),
            Default::default(),
        )
        .await
        .unwrap();
}
