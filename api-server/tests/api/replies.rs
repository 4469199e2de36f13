//! The fast reply: a waiting request asks the pod-manager for a copy of the
//! final event straight to its replica (RabbitMQ direct reply-to), and the
//! durable final event on the events exchange still answers without it.
//! A stand-in pod-manager (the test's own RabbitMQ client) decides which
//! copies are sent.

use futures::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions},
    types::FieldTable,
};
use serde_json::{Value, json};
use warmpod_protocol::{JobEvent, JobMessage, JobResult, Status, queue};

use crate::helpers::{DEADLINE, Options, amqp_url, job, spawn_app, spawn_app_with};

/// Consumes the test's jobs queue in place of a pod-manager.
struct FakePodManager {
    _connection: Connection,
    channel: Channel,
    jobs: lapin::Consumer,
    events_exchange: String,
}

impl FakePodManager {
    async fn start(prefix: &str) -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("connecting to RabbitMQ");
        let channel = connection.create_channel().await.unwrap();
        let jobs = channel
            .basic_consume(
                format!("{prefix}{}", queue::JOBS_QUEUE).as_str().into(),
                "fake-pod-manager".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consuming the jobs queue");
        Self {
            _connection: connection,
            channel,
            jobs,
            events_exchange: format!("{prefix}{}", queue::EVENTS_EXCHANGE),
        }
    }

    /// The next job message (acked), with its `reply_to`.
    async fn next_job(&mut self) -> (JobMessage, Option<String>) {
        let delivery: Delivery = tokio::time::timeout(DEADLINE, self.jobs.next())
            .await
            .expect("a job within the deadline")
            .expect("the consumer is open")
            .expect("a delivery");
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        let reply_to = delivery
            .properties
            .reply_to()
            .as_ref()
            .map(|s| s.to_string());
        (serde_json::from_slice(&delivery.data).unwrap(), reply_to)
    }

    /// The final event this fake "ran" the job to: accepted, with `stdout`.
    fn final_event(msg: &JobMessage, stdout: &str) -> Vec<u8> {
        let mut result = JobResult::new(msg.job.id, Status::Accepted);
        result.stdout = stdout.into();
        let event = JobEvent {
            id: msg.job.id,
            status: Status::Accepted,
            at_ms: 1,
            meta: msg.meta.clone(),
            result: Some(result),
        };
        serde_json::to_vec(&event).unwrap()
    }

    /// Publishes on the events exchange (what every replica receives).
    async fn publish_event(&self, body: &[u8]) {
        // Not a confirm channel: the "confirm" resolves at once.
        self.channel
            .basic_publish(
                self.events_exchange.as_str().into(),
                "job.final.accepted".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Publishes a fast reply to `reply_to` only.
    async fn publish_reply(&self, reply_to: &str, body: &[u8]) {
        self.channel
            .basic_publish(
                "".into(),
                reply_to.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(1),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

const VIA_REPLY: &str = "warmpod_api_final_results_total{via=\"reply\"}";
const VIA_EVENT: &str = "warmpod_api_final_results_total{via=\"event\"}";

#[tokio::test]
async fn a_waiting_request_is_answered_by_the_fast_reply_alone() {
    let app = spawn_app_with(Options::without_pod_manager()).await;
    let mut fake = FakePodManager::start(&app.prefix).await;

    let body = job("python", "print('from the sandbox')");
    let request = app.post_json("/v1/executions?wait=true", &body);
    let serve = async {
        let (msg, reply_to) = fake.next_job().await;
        let reply_to = reply_to.expect("a waiting request asks for a fast reply");
        assert!(
            reply_to.starts_with("amq.rabbitmq.reply-to."),
            "the broker's direct reply-to address, not {reply_to:?}"
        );
        // Only the fast reply: no event on the exchange.
        fake.publish_reply(&reply_to, &FakePodManager::final_event(&msg, "fast\n"))
            .await;
    };
    let (response, ()) = tokio::join!(request, serve);

    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    assert_eq!(body["stdout"], "fast\n");
    assert_eq!(app.counter(0, VIA_REPLY).await, 1);
    assert_eq!(app.counter(0, VIA_EVENT).await, 0);
}

#[tokio::test]
async fn without_the_fast_reply_the_final_event_answers() {
    let app = spawn_app_with(Options::without_pod_manager()).await;
    let mut fake = FakePodManager::start(&app.prefix).await;

    let body = json!({"source_code": "print(1)", "language_id": 71});
    let request = app.post_json("/submissions?wait=true", &body);
    let serve = async {
        let (msg, reply_to) = fake.next_job().await;
        assert!(reply_to.is_some(), "Judge0's wait=true asks for one too");
        // The fast reply is lost: only the durable event is published.
        fake.publish_event(&FakePodManager::final_event(&msg, "durable\n"))
            .await;
    };
    let (response, ()) = tokio::join!(request, serve);

    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["stdout"], "durable\n");
    assert_eq!(app.counter(0, VIA_EVENT).await, 1);
    assert_eq!(app.counter(0, VIA_REPLY).await, 0);
}

#[tokio::test]
async fn jobs_nobody_waits_for_ask_for_no_fast_reply() {
    let app = spawn_app_with(Options::without_pod_manager()).await;
    let mut fake = FakePodManager::start(&app.prefix).await;

    let r = app
        .post_json("/v1/executions", &job("python", "print(1)"))
        .await;
    assert_eq!(r.status(), 202);
    let (_, reply_to) = fake.next_job().await;
    assert_eq!(reply_to, None);

    let r = app
        .post_json(
            "/submissions",
            &json!({"source_code": "print(1)", "language_id": 71}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let (_, reply_to) = fake.next_job().await;
    assert_eq!(reply_to, None);
}

#[tokio::test]
async fn a_replica_that_did_not_submit_still_learns_the_final_state() {
    let app = spawn_app_with(Options {
        replicas: 2,
        ..Options::default()
    })
    .await;

    let done = app.run(&job("python", "print(6 * 7)")).await;
    assert_eq!(done["stdout"], "42\n");
    let id = done["id"].as_str().unwrap();

    let elsewhere = app.final_state_at(1, id).await;
    assert_eq!(elsewhere["status"], "accepted");
    assert_eq!(elsewhere["stdout"], "42\n");
    assert_eq!(
        app.counter(1, VIA_REPLY).await,
        0,
        "replica 1 waited for nothing"
    );
    // Replica 0 learnt it once, by whichever copy came first.
    assert_eq!(
        app.counter(0, VIA_REPLY).await + app.counter(0, VIA_EVENT).await,
        1
    );
}

#[tokio::test]
async fn a_real_pod_manager_answers_waiting_requests_of_every_facade() {
    let app = spawn_app().await;
    let v1 = app.run(&job("python", "print('v1')")).await;
    assert_eq!(v1["stdout"], "v1\n");
    let judge0: Value = app
        .post_json(
            "/submissions?wait=true",
            &json!({"source_code": "print('judge0')", "language_id": 71}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(judge0["stdout"], "judge0\n");
    let compat = app
        .client
        .post(app.url("/execute?language=python"))
        .header("content-type", "text/plain")
        .body("print('compat')")
        .send()
        .await
        .unwrap();
    assert_eq!(compat.status(), 200);
    assert!(compat.text().await.unwrap().contains("compat"));
}
