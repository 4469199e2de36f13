//! The jobs queue's type: classic by default, as `WARMPOD_JOBS_QUEUE_TYPE`
//! says, and a clear stop when the broker has it with the other type.

use std::process::Stdio;

use lapin::{
    Connection, ConnectionProperties,
    options::QueueDeclareOptions,
    types::{AMQPValue, FieldTable},
};
use uuid::Uuid;
use warmpod_protocol::queue::{JOBS_QUEUE_DELIVERY_LIMIT, JOBS_QUEUE_MAX_LENGTH, JobsQueueType};

use crate::helpers::{DEADLINE, Options, amqp_url, delete_topology, spawn_app_with};

/// The jobs queue arguments of `prefix` for `queue_type`, as
/// `warmpod_protocol::queue` specifies them (default max length).
fn jobs_queue_arguments(prefix: &str, queue_type: JobsQueueType) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.as_str().into()),
    );
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(JOBS_QUEUE_MAX_LENGTH),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(format!("{prefix}warmpod.dlx").into()),
    );
    if queue_type == JobsQueueType::Quorum {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(JOBS_QUEUE_DELIVERY_LIMIT),
        );
    }
    args
}

/// Declares the jobs queue of `prefix` as `queue_type`; whether the broker
/// accepted (it refuses a declaration inequivalent to an existing queue).
async fn declare_jobs_queue(prefix: &str, queue_type: JobsQueueType) -> bool {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ answers");
    let ch = conn.create_channel().await.unwrap();
    let declared = ch
        .queue_declare(
            format!("{prefix}warmpod.jobs").as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            jobs_queue_arguments(prefix, queue_type),
        )
        .await
        .is_ok();
    let _ = conn.close(200, "".into()).await;
    declared
}

#[tokio::test]
async fn the_jobs_queue_is_declared_classic_by_default() {
    let app = spawn_app_with(Options::without_pod_manager()).await;

    // Ready means the topology is declared.
    let as_classic = declare_jobs_queue(&app.prefix, JobsQueueType::Classic).await;
    let as_quorum = declare_jobs_queue(&app.prefix, JobsQueueType::Quorum).await;

    assert_eq!((as_classic, as_quorum), (true, false));
}

#[tokio::test]
async fn quorum_is_declared_when_asked_for() {
    let app =
        spawn_app_with(Options::without_pod_manager().env("WARMPOD_JOBS_QUEUE_TYPE", "quorum"))
            .await;

    let as_classic = declare_jobs_queue(&app.prefix, JobsQueueType::Classic).await;
    let as_quorum = declare_jobs_queue(&app.prefix, JobsQueueType::Quorum).await;

    assert_eq!((as_classic, as_quorum), (false, true));
}

#[test]
fn an_unknown_queue_type_exits_64_naming_the_variable_and_the_choices() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_api-server"))
        .env("WARMPOD_HTTP_ADDR", "127.0.0.1:0")
        .env("WARMPOD_JOBS_QUEUE_TYPE", "lazy")
        .output()
        .expect("api-server runs");

    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WARMPOD_JOBS_QUEUE_TYPE"), "{stderr}");
    assert!(stderr.contains("classic or quorum"), "{stderr}");
}

#[tokio::test]
async fn a_jobs_queue_of_the_other_type_stops_the_api_server_with_the_remedy() {
    let prefix = format!("test-{}.", Uuid::new_v4().simple());
    assert!(declare_jobs_queue(&prefix, JobsQueueType::Quorum).await);

    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_api-server"))
        .env("AMQP_URL", amqp_url())
        .env("WARMPOD_QUEUE_PREFIX", &prefix)
        .env("WARMPOD_HTTP_ADDR", "127.0.0.1:0")
        .env_remove("WARMPOD_JOBS_QUEUE_TYPE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning api-server");
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("the api-server exits on its own")
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in ["WARMPOD_JOBS_QUEUE_TYPE=quorum", "drain", "delete"] {
        assert!(stderr.contains(needle), "{needle:?} missing in:\n{stderr}");
    }
    assert!(
        declare_jobs_queue(&prefix, JobsQueueType::Quorum).await,
        "the queue is left as it was"
    );
    delete_topology(&prefix).await;
}
