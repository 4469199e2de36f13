//! The RabbitMQ side of the api-server.
//!
//! [`Broker`] is the handle request handlers use: confirmed publishes on
//! one shared confirm channel, and readiness. [`Supervisor`] owns the
//! connection: it declares the topology (with exactly the arguments of
//! `warmpod_protocol::queue`), consumes the events exchange into the state
//! store through this replica's own durable events queue (named once per
//! process, so it outlives a broker restart or a lost connection and the
//! events published meanwhile wait in it; `x-expires` removes it once the
//! replica is gone), consumes the webhook queue competitively, and
//! reconnects with backoff when the broker goes away. Readiness is true
//! only while all of that runs.
//!
//! A job with a client waiting for it is published with `reply_to` set to
//! RabbitMQ's direct reply-to, consumed on the publisher channel itself: the
//! pod-manager sends the final event there too (transient, unconfirmed),
//! which skips the events queue. Whichever copy arrives first settles the
//! job in the state store; the durable event remains the one every replica
//! gets (`warmpod_protocol::queue`, "The fast reply").

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use futures::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    },
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable},
};
use serde::Serialize;
use tracing::{debug, error, info, warn};
use warmpod_protocol::{JobEvent, JobMessage, RuntimeVersions, queue};

use crate::{
    callbacks::Deliverer, config::Topology, languages::Versions, metrics::Metrics,
    state::StateStore,
};

/// How long a publish may wait for the broker's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Webhooks delivered at once by this replica.
const CALLBACK_PREFETCH: u16 = 16;
/// A replica's events queue is deleted by the broker after this long
/// without a consumer (the replica died, or is away longer than any
/// reconnection takes).
const EVENTS_QUEUE_EXPIRES_MS: i64 = 5 * 60 * 1000;
/// Most events kept for an absent replica (the oldest are dropped first).
const EVENTS_QUEUE_MAX_LENGTH: i64 = 100_000;
/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why a publish did not go through.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker nacked it: the jobs queue is full (`reject-publish`).
    #[error("the broker refused the message (queue full)")]
    Rejected,
    /// Not connected, or the publish or its confirm failed.
    #[error("the broker is unavailable")]
    Unavailable(#[source] anyhow::Error),
}

struct Shared {
    /// The confirm-mode channel every publish goes through; `None` while
    /// disconnected.
    publisher: RwLock<Option<Channel>>,
    /// Connected, topology declared, both consumers running.
    ready: AtomicBool,
    topology: Topology,
    /// This replica's events queue: `<events exchange>.replica.<uuid>`.
    events_queue: String,
}

/// Handle for publishing and readiness; cheap to clone.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl Broker {
    /// A broker handle, not yet connected (see [`Supervisor::run`]).
    pub fn new(topology: Topology) -> Self {
        Self {
            shared: Arc::new(Shared {
                publisher: RwLock::new(None),
                ready: AtomicBool::new(false),
                events_queue: format!(
                    "{}.replica.{}",
                    topology.events_exchange,
                    uuid::Uuid::new_v4()
                ),
                topology,
            }),
        }
    }

    /// Whether the connection is up and the consumers run.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    /// Publishes a job, persistent, on the jobs queue and waits for the
    /// broker's confirm. With `reply`, the message asks for a fast reply
    /// (`reply_to` = direct reply-to of the publisher channel): use it when a
    /// client waits for the result.
    ///
    /// # Errors
    /// [`PublishError::Rejected`] when the queue is full,
    /// [`PublishError::Unavailable`] otherwise.
    pub async fn publish_job(&self, message: &JobMessage, reply: bool) -> Result<(), PublishError> {
        let queue = self.shared.topology.jobs_queue.clone();
        let reply_to = reply.then_some(queue::DIRECT_REPLY_TO);
        self.publish("", &queue, message, &message.job.id.to_string(), reply_to)
            .await
    }

    /// Publishes a job event on the events exchange (confirmed).
    ///
    /// # Errors
    /// As [`Broker::publish_job`].
    pub async fn publish_event(&self, event: &JobEvent) -> Result<(), PublishError> {
        let exchange = self.shared.topology.events_exchange.clone();
        self.publish(
            &exchange,
            &event.routing_key(),
            event,
            &event.id.to_string(),
            None,
        )
        .await
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &impl Serialize,
        message_id: &str,
        reply_to: Option<&str>,
    ) -> Result<(), PublishError> {
        let channel = self
            .shared
            .publisher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|c| c.status().connected())
            .ok_or_else(|| {
                PublishError::Unavailable(anyhow::anyhow!("not connected to RabbitMQ"))
            })?;
        let payload = serde_json::to_vec(body)
            .context("serialising a message")
            .map_err(PublishError::Unavailable)?;
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(message_id.into());
        if let Some(reply_to) = reply_to {
            properties = properties.with_reply_to(reply_to.into());
        }
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = async {
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    &payload,
                    properties,
                )
                .await?
                .await
        };
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| {
                PublishError::Unavailable(anyhow::anyhow!("no confirm within {CONFIRM_TIMEOUT:?}"))
            })?
            .context("publishing")
            .map_err(PublishError::Unavailable)?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) if !exchange.is_empty() => Ok(()), // an event nobody is bound for yet
            Confirmation::Ack(Some(returned)) => Err(PublishError::Unavailable(anyhow::anyhow!(
                "the broker returned the message: {}",
                returned.reply_text
            ))),
            Confirmation::Nack(_) => Err(PublishError::Rejected),
            Confirmation::NotRequested => Err(PublishError::Unavailable(anyhow::anyhow!(
                "the publisher channel is not in confirm mode"
            ))),
        }
    }
}

/// Owns the connection and its consumers.
pub struct Supervisor {
    /// The handle the supervisor fills on connect and clears on loss.
    pub broker: Broker,
    /// `AMQP_URL`.
    pub amqp_url: String,
    /// Fed with job events.
    pub state: StateStore,
    /// Fed with runtime-version announcements.
    pub versions: Versions,
    /// Delivers webhooks.
    pub deliverer: Deliverer,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// Ends a session: reconnect, or give up (a topology mismatch).
enum SessionEnd {
    Lost(anyhow::Error),
    Fatal(anyhow::Error),
}

impl Supervisor {
    /// Connects, serves, and reconnects with backoff until a fatal error.
    ///
    /// # Errors
    /// Only when the broker refuses the topology (`PRECONDITION_FAILED`: a
    /// queue exists with other arguments), which no retry can fix.
    pub async fn run(self) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.session().await {
                SessionEnd::Fatal(e) => return Err(e),
                SessionEnd::Lost(e) => {
                    self.set_disconnected();
                    warn!(error.cause_chain = ?e, retry_in = ?backoff, "RabbitMQ connection lost");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn set_disconnected(&self) {
        self.broker.shared.ready.store(false, Ordering::SeqCst);
        self.metrics.broker_ready.set(0);
        *self
            .broker
            .shared
            .publisher
            .write()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn session(&self) -> SessionEnd {
        let topology = &self.broker.shared.topology;
        let props =
            ConnectionProperties::default().with_connection_name("warmpod-api-server".into());
        let connection = match Connection::connect(&self.amqp_url, props).await {
            Ok(c) => c,
            Err(e) => {
                return SessionEnd::Lost(anyhow::Error::new(e).context("connecting to RabbitMQ"));
            }
        };
        let setup = async {
            let publisher = connection.create_channel().await?;
            declare_topology(&publisher, topology).await?;
            publisher
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            // Before any publish with `reply_to`: the broker refuses (and
            // closes the channel) one from a channel without this consumer.
            let replies = consume_replies(&publisher).await?;
            let events =
                consume_events(&connection, topology, &self.broker.shared.events_queue).await?;
            let callbacks = consume_callbacks(&connection, topology).await?;
            Ok::<_, lapin::Error>((publisher, replies, events, callbacks))
        };
        let (publisher, replies, events, callbacks) = match setup.await {
            Ok(parts) => parts,
            Err(e) if refuses_queue_type(&e) => {
                let hint =
                    queue::queue_type_mismatch_hint(&topology.jobs_queue, topology.jobs_queue_type);
                return SessionEnd::Fatal(anyhow::Error::new(e).context(hint));
            }
            Err(e) if is_precondition_failed(&e) => {
                return SessionEnd::Fatal(anyhow::Error::new(e).context(
                    "RabbitMQ refused the topology: a queue or exchange exists with other arguments \
                     (delete it, or use the same WARMPOD_QUEUE_MAX_LENGTH everywhere)",
                ));
            }
            Err(e) => {
                return SessionEnd::Lost(anyhow::Error::new(e).context("declaring the topology"));
            }
        };
        *self
            .broker
            .shared
            .publisher
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(publisher.clone());
        self.broker.shared.ready.store(true, Ordering::SeqCst);
        self.metrics.broker_ready.set(1);
        info!("connected to RabbitMQ; consuming events and callbacks");
        let end = tokio::select! {
            e = self.run_events(events) => e,
            e = self.run_replies(replies) => e,
            e = self.run_callbacks(callbacks) => e,
            e = watch_channel(&publisher) => e,
        };
        let _ = connection.close(200, "reconnecting".into()).await;
        SessionEnd::Lost(end)
    }

    async fn run_events(&self, mut consumer: lapin::Consumer) -> anyhow::Error {
        while let Some(delivery) = consumer.next().await {
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => return anyhow::Error::new(e).context("events consumer"),
            };
            self.metrics.events_consumed.inc();
            if delivery.routing_key.as_str() == queue::RUNTIME_VERSIONS_ROUTING_KEY {
                match serde_json::from_slice::<RuntimeVersions>(&delivery.data) {
                    Ok(v) => self.versions.announced(v),
                    Err(e) => {
                        warn!(error = %e, "ignoring a malformed runtime-versions announcement")
                    }
                }
                continue;
            }
            match serde_json::from_slice::<JobEvent>(&delivery.data) {
                Ok(event) => {
                    debug!(id = %event.id, status = %event.status, "event");
                    let is_final = event.status.is_final();
                    self.state.apply_noting(&event, |_| {
                        if is_final {
                            self.metrics.final_seen("event");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, routing_key = %delivery.routing_key, "ignoring a malformed job event")
                }
            }
        }
        anyhow::anyhow!("the events consumer was cancelled")
    }

    /// Applies fast replies: final events sent straight to this channel.
    /// Only final events are taken (a fast reply is never anything else),
    /// and applying one is idempotent with the durable copy that follows.
    async fn run_replies(&self, mut consumer: lapin::Consumer) -> anyhow::Error {
        while let Some(delivery) = consumer.next().await {
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => return anyhow::Error::new(e).context("fast replies consumer"),
            };
            match serde_json::from_slice::<JobEvent>(&delivery.data) {
                Ok(event) if event.status.is_final() => {
                    self.state
                        .apply_noting(&event, |_| self.metrics.final_seen("reply"));
                }
                Ok(event) => {
                    warn!(id = %event.id, status = %event.status, "ignoring a fast reply that is not final")
                }
                Err(e) => warn!(error = %e, "ignoring a malformed fast reply"),
            }
        }
        anyhow::anyhow!("the fast replies consumer was cancelled")
    }

    async fn run_callbacks(&self, mut consumer: lapin::Consumer) -> anyhow::Error {
        while let Some(delivery) = consumer.next().await {
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => return anyhow::Error::new(e).context("callbacks consumer"),
            };
            let deliverer = self.deliverer.clone();
            tokio::spawn(async move {
                match serde_json::from_slice::<JobEvent>(&delivery.data) {
                    Ok(event) => deliverer.deliver(&event).await,
                    Err(e) => {
                        warn!(error = %e, "dropping a malformed event from the callbacks queue")
                    }
                }
                // Acked after the delivery (or its last attempt): a replica
                // that dies mid-delivery leaves it to another one.
                if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                    error!(error = %e, "acking a callback delivery");
                }
            });
        }
        anyhow::anyhow!("the callbacks consumer was cancelled")
    }
}

/// Returns when the publisher channel stops being usable.
async fn watch_channel(channel: &Channel) -> anyhow::Error {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if !channel.status().connected() {
            return anyhow::anyhow!("the publisher channel closed");
        }
    }
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

/// Whether the broker refused a declaration for its `x-queue-type` (the jobs
/// queue exists with the other type).
fn refuses_queue_type(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            is_precondition_failed(e) && queue::is_queue_type_refusal(amqp.get_message().as_str())
        }
        _ => false,
    }
}

/// The jobs queue's arguments, exactly as `warmpod_protocol::queue` lists
/// them for the configured queue type.
pub fn jobs_queue_arguments(topology: &Topology) -> FieldTable {
    let mut args = FieldTable::default();
    for (key, value) in queue::jobs_queue_arguments(
        topology.jobs_queue_type,
        topology.jobs_queue_max_length,
        &topology.dead_letter_exchange,
    ) {
        let value = match value {
            queue::QueueArgument::Text(text) => AMQPValue::LongString(text.into()),
            queue::QueueArgument::Int(n) => AMQPValue::LongLongInt(n),
        };
        args.insert(key.into(), value);
    }
    args
}

async fn declare_topology(ch: &Channel, t: &Topology) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.exchange_declare(
        t.dead_letter_exchange.as_str().into(),
        ExchangeKind::Fanout,
        durable_exchange,
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        t.dead_letter_queue.as_str().into(),
        durable_queue,
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        t.dead_letter_queue.as_str().into(),
        t.dead_letter_exchange.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        t.jobs_queue.as_str().into(),
        durable_queue,
        jobs_queue_arguments(t),
    )
    .await?;
    ch.exchange_declare(
        t.events_exchange.as_str().into(),
        ExchangeKind::Topic,
        durable_exchange,
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        t.callbacks_queue.as_str().into(),
        durable_queue,
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        t.callbacks_queue.as_str().into(),
        t.events_exchange.as_str().into(),
        queue::FINAL_EVENTS_BINDING.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

async fn consume_events(
    connection: &Connection,
    t: &Topology,
    name: &str,
) -> lapin::Result<lapin::Consumer> {
    let ch = connection.create_channel().await?;
    // Durable and not exclusive, so it survives a broker restart and the
    // events published before this replica is back (persistent, like
    // every event) wait for it.
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut args = FieldTable::default();
    args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(EVENTS_QUEUE_EXPIRES_MS),
    );
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(EVENTS_QUEUE_MAX_LENGTH),
    );
    let q = ch.queue_declare(name.into(), options, args).await?;
    for key in [
        queue::ALL_EVENTS_BINDING,
        queue::RUNTIME_VERSIONS_ROUTING_KEY,
    ] {
        ch.queue_bind(
            q.name().clone(),
            t.events_exchange.as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let options = BasicConsumeOptions {
        no_ack: true,
        exclusive: true,
        ..BasicConsumeOptions::default()
    };
    ch.basic_consume(
        q.name().clone(),
        "api-server-events".into(),
        options,
        FieldTable::default(),
    )
    .await
}

/// The direct reply-to consumer, on the channel that publishes the jobs
/// (no-ack, as RabbitMQ requires).
async fn consume_replies(publisher: &Channel) -> lapin::Result<lapin::Consumer> {
    let options = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    publisher
        .basic_consume(
            queue::DIRECT_REPLY_TO.into(),
            "api-server-replies".into(),
            options,
            FieldTable::default(),
        )
        .await
}

async fn consume_callbacks(
    connection: &Connection,
    t: &Topology,
) -> lapin::Result<lapin::Consumer> {
    let ch = connection.create_channel().await?;
    ch.basic_qos(CALLBACK_PREFETCH, BasicQosOptions::default())
        .await?;
    ch.basic_consume(
        t.callbacks_queue.as_str().into(),
        "api-server-callbacks".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
}
