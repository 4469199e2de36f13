//! The tests' own RabbitMQ client, shared by the `local` and `kube` test
//! binaries: unique queue names, publishing jobs as the api-server does,
//! collecting every event, reading the dead-letter queue, cleaning up.
// Each test binary uses a subset of these helpers.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use pod_manager::config::QueueNames;
use pod_manager::consumer::now_ms;
use tokio::sync::watch;
use uuid::Uuid;
use warmpod_protocol::queue::JobsQueueType;
use warmpod_protocol::{Job, JobEvent, JobMessage, JobMeta, Status};

/// The broker the tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// A unique queue-name prefix.
pub fn unique_prefix() -> String {
    format!("test-{}.", Uuid::new_v4().simple())
}

/// The test's own broker client.
pub struct TestBroker {
    pub names: QueueNames,
    connection: Connection,
    channel: Channel,
    events_rx: watch::Receiver<Vec<JobEvent>>,
    versions_rx: watch::Receiver<Vec<serde_json::Value>>,
}

impl TestBroker {
    /// Connects, declares the topology with `prefix` (a classic jobs queue,
    /// the default) and starts collecting every event.
    pub async fn new(prefix: &str) -> Self {
        Self::with_type(prefix, JobsQueueType::default()).await
    }

    /// As [`TestBroker::new`], with a jobs queue of `queue_type`.
    pub async fn with_type(prefix: &str, queue_type: JobsQueueType) -> Self {
        let names = QueueNames::with_prefix(prefix);
        let connection =
            match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
                Ok(c) => c,
                Err(_) => {
                    ensure_rabbitmq();
                    Connection::connect(&amqp_url(), ConnectionProperties::default())
                        .await
                        .expect("RabbitMQ does not answer even after scripts/ensure-rabbitmq.sh")
                }
            };
        let channel = connection.create_channel().await.unwrap();
        pod_manager::queue::declare_topology(
            &channel,
            &names,
            warmpod_protocol::queue::JOBS_QUEUE_MAX_LENGTH,
            queue_type,
        )
        .await
        .unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let events_channel = connection.create_channel().await.unwrap();
        let q = events_channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        events_channel
            .queue_bind(
                q.name().clone(),
                names.events.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut consumer = events_channel
            .basic_consume(
                q.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (events_tx, events_rx) = watch::channel(Vec::new());
        let (versions_tx, versions_rx) = watch::channel(Vec::new());
        tokio::spawn(async move {
            let _keep = events_channel;
            while let Some(Ok(d)) = consumer.next().await {
                if d.routing_key.as_str() == warmpod_protocol::queue::RUNTIME_VERSIONS_ROUTING_KEY {
                    let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
                    versions_tx.send_modify(|all| all.push(v));
                } else {
                    let e: JobEvent =
                        serde_json::from_slice(&d.data).expect("events are JobEvents");
                    assert_eq!(d.routing_key.as_str(), e.routing_key());
                    events_tx.send_modify(|all| all.push(e));
                }
            }
        });
        Self {
            names,
            connection,
            channel,
            events_rx,
            versions_rx,
        }
    }

    /// Publishes `job` as a JobMessage (persistent, confirmed).
    pub async fn publish(&self, job: &Job) {
        self.publish_with(job, FieldTable::default()).await
    }

    /// Publishes `job` with message headers.
    pub async fn publish_with(&self, job: &Job, headers: FieldTable) {
        let msg = JobMessage {
            job: job.clone(),
            submitted_at_ms: now_ms(),
            meta: JobMeta {
                tag: Some(format!("tag-{}", job.id)),
                ..JobMeta::default()
            },
        };
        self.publish_raw(&serde_json::to_vec(&msg).unwrap(), headers)
            .await;
    }

    /// Publishes `job` asking for a fast reply, as the api-server does for
    /// a waiting client: on a channel of its own that consumes RabbitMQ's
    /// direct reply-to, with `reply_to` set. Returns where the replies
    /// arrive.
    pub async fn publish_for_reply(&self, job: &Job) -> FastReplies {
        let channel = self.connection.create_channel().await.unwrap();
        let consumer = channel
            .basic_consume(
                warmpod_protocol::queue::DIRECT_REPLY_TO.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let msg = JobMessage {
            job: job.clone(),
            submitted_at_ms: now_ms(),
            meta: JobMeta::default(),
        };
        channel
            .basic_publish(
                "".into(),
                self.names.jobs.as_str().into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(&msg).unwrap(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_reply_to(warmpod_protocol::queue::DIRECT_REPLY_TO.into()),
            )
            .await
            .unwrap();
        FastReplies {
            _channel: channel,
            consumer,
        }
    }

    /// Publishes raw bytes to the jobs queue.
    pub async fn publish_raw(&self, body: &[u8], headers: FieldTable) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.names.jobs.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the broker refused the job");
    }

    /// A watch of every event seen so far, to wait on.
    pub fn clone_events(&self) -> watch::Receiver<Vec<JobEvent>> {
        self.events_rx.clone()
    }

    /// Every event seen so far.
    pub fn events(&self) -> Vec<JobEvent> {
        self.events_rx.borrow().clone()
    }

    /// Final events of `id` seen so far.
    pub fn finals(&self, id: Uuid) -> Vec<JobEvent> {
        self.events()
            .into_iter()
            .filter(|e| e.id == id && e.status.is_final())
            .collect()
    }

    /// Waits for the first event of `id` with `status` (any final status
    /// when `None`).
    pub async fn wait_event(&self, id: Uuid, status: Option<Status>, within: Duration) -> JobEvent {
        let mut rx = self.events_rx.clone();
        tokio::time::timeout(
            within,
            rx.wait_for(|all| {
                all.iter()
                    .any(|e| e.id == id && status.map_or(e.status.is_final(), |s| e.status == s))
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("no {status:?} event for {id} within {within:?}"))
        .unwrap()
        .iter()
        .find(|e| e.id == id && status.map_or(e.status.is_final(), |s| e.status == s))
        .cloned()
        .unwrap()
    }

    /// Waits until `id` has started: its `running` event or, since a
    /// `running` event published on a connection that then broke is not
    /// resent (only final events are), its final one.
    pub async fn wait_started(&self, id: Uuid, within: Duration) {
        let mut rx = self.events_rx.clone();
        tokio::time::timeout(
            within,
            rx.wait_for(|all| {
                all.iter()
                    .any(|e| e.id == id && (e.status == Status::Running || e.status.is_final()))
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("{id} did not start within {within:?}"))
        .unwrap();
    }

    /// Waits for the first runtime versions announcement.
    pub async fn wait_versions(&self, within: Duration) -> serde_json::Value {
        let mut rx = self.versions_rx.clone();
        tokio::time::timeout(within, rx.wait_for(|v| !v.is_empty()))
            .await
            .expect("no runtime versions announced")
            .unwrap()[0]
            .clone()
    }

    /// Takes one message from the dead-letter queue, waiting for it.
    pub async fn wait_dead_letter(&self, within: Duration) -> (Vec<u8>, FieldTable) {
        let deadline = Instant::now() + within;
        let mut pause = Duration::from_millis(10);
        loop {
            let got = self
                .channel
                .basic_get(
                    self.names.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap();
            if let Some(m) = got {
                let headers = m.delivery.properties.headers().clone().unwrap_or_default();
                return (m.delivery.data.clone(), headers);
            }
            assert!(
                Instant::now() < deadline,
                "nothing dead-lettered within {within:?}"
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Looks at the first message waiting in the jobs queue without taking
    /// it (got, then returned with a requeue): its failed-deliveries header
    /// (`None` when absent) and whether the broker flags it `redelivered`.
    pub async fn peek_job(&self) -> Option<(Option<i64>, bool)> {
        let (ch, got) = self.get_job().await;
        let got = got?;
        let header = got
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| {
                h.inner()
                    .get(warmpod_protocol::queue::FAILED_DELIVERIES_HEADER)
                    .cloned()
            })
            .map(|v| match v {
                AMQPValue::LongLongInt(n) => n,
                other => panic!("the header is a long long int, not {other:?}"),
            });
        let redelivered = got.delivery.redelivered;
        got.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .unwrap();
        let _ = ch.close(200, "".into()).await;
        Some((header, redelivered))
    }

    /// Takes the first job message and closes the channel without settling
    /// it, as a consumer that dies holding a delivery: the broker puts it
    /// back flagged `redelivered`.
    pub async fn take_and_abandon_job(&self) {
        let (ch, got) = self.get_job().await;
        assert!(got.is_some(), "a job to take");
        ch.close(200, "".into()).await.unwrap();
    }

    /// Gets the first job message, unsettled, on a channel of its own.
    async fn get_job(&self) -> (Channel, Option<lapin::message::BasicGetMessage>) {
        let ch = self.connection.create_channel().await.unwrap();
        let got = ch
            .basic_get(
                self.names.jobs.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap();
        (ch, got)
    }

    /// Messages waiting in the jobs queue.
    pub async fn jobs_waiting(&self) -> u32 {
        tokio::time::timeout(Duration::from_secs(30), self.jobs_waiting_now())
            .await
            .expect("the broker answers a passive declare of the jobs queue")
    }

    async fn jobs_waiting_now(&self) -> u32 {
        let ch = self.connection.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                self.names.jobs.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = ch.close(200, "".into()).await;
        q.message_count()
    }

    /// Deletes the test's queues and exchanges.
    pub async fn cleanup(self) {
        let ch = self.connection.create_channel().await.unwrap();
        for q in [&self.names.jobs, &self.names.dead_letter_queue] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for x in [&self.names.events, &self.names.dead_letter_exchange] {
            let _ = ch
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "".into()).await;
    }
}

/// The type of the jobs queue as the broker has it, once it exists:
/// the declaration (with this suite's arguments) the broker accepts as
/// equivalent.
pub async fn jobs_queue_type(names: &QueueNames, within: Duration) -> JobsQueueType {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        let ch = connection.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        if ch
            .queue_declare(names.jobs.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok()
        {
            let _ = ch.close(200, "".into()).await;
            break;
        }
        assert!(Instant::now() < deadline, "no jobs queue within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut found = Vec::new();
    for queue_type in [JobsQueueType::Classic, JobsQueueType::Quorum] {
        let ch = connection.create_channel().await.unwrap();
        let declared = ch
            .queue_declare(
                names.jobs.as_str().into(),
                QueueDeclareOptions::durable(),
                pod_manager::queue::jobs_queue_arguments(
                    names,
                    warmpod_protocol::queue::JOBS_QUEUE_MAX_LENGTH,
                    queue_type,
                ),
            )
            .await;
        if declared.is_ok() {
            found.push(queue_type);
            let _ = ch.close(200, "".into()).await;
        }
    }
    assert_eq!(found.len(), 1, "exactly one type is equivalent: {found:?}");
    let _ = connection.close(200, "".into()).await;
    found[0]
}

/// Fast replies to one publishing channel (see
/// [`TestBroker::publish_for_reply`]).
pub struct FastReplies {
    _channel: Channel,
    consumer: lapin::Consumer,
}

impl FastReplies {
    /// The next fast reply, as a job event.
    pub async fn next(&mut self, within: Duration) -> JobEvent {
        let delivery = tokio::time::timeout(within, self.consumer.next())
            .await
            .unwrap_or_else(|_| panic!("no fast reply within {within:?}"))
            .expect("the replies consumer ended")
            .expect("a delivery");
        assert_eq!(
            delivery.properties.delivery_mode(),
            &Some(1),
            "fast replies are transient"
        );
        serde_json::from_slice(&delivery.data).expect("fast replies are JobEvents")
    }
}

/// Starts RabbitMQ through the project's script (idempotent).
fn ensure_rabbitmq() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ensure-rabbitmq.sh");
    let status = std::process::Command::new(script)
        .env("AMQP_URL", amqp_url())
        .status()
        .expect("running scripts/ensure-rabbitmq.sh");
    assert!(status.success(), "scripts/ensure-rabbitmq.sh failed");
}

/// A header table with the failed-deliveries count preset.
pub fn failed_deliveries_header(n: i64) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert(
        warmpod_protocol::queue::FAILED_DELIVERIES_HEADER.into(),
        AMQPValue::LongLongInt(n),
    );
    h
}
