//! RabbitMQ: the connection, the topology (declared exactly as
//! `warmpod_protocol::queue` specifies, so the api-server's declarations
//! match), and the confirming [`Publisher`] of events and of requeued job
//! copies ([`Publisher::requeue_job`], `warmpod_protocol::queue`, "Counting
//! failed deliveries"), which also sends the unconfirmed fast replies
//! (`warmpod_protocol::queue`, "The fast reply").

use lapin::PublisherConfirm;
use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use warmpod_protocol::queue::{
    DIRECT_REPLY_TO, FAILED_DELIVERIES_HEADER, JobsQueueType, QueueArgument,
    RUNTIME_VERSIONS_ROUTING_KEY, is_queue_type_refusal, queue_type_mismatch_hint,
};
use warmpod_protocol::{JobEvent, RuntimeVersions};

use crate::config::{Config, QueueNames};

/// Broker failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An AMQP operation failed (connection lost, declaration refused...).
    #[error("{context}")]
    Amqp {
        /// What we were doing.
        context: &'static str,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The broker refused (nacked) a published message.
    #[error("the broker refused the {0} message")]
    Nacked(&'static str),
    /// The broker returned a mandatory message no queue took.
    #[error("no queue took the {0} message")]
    Unroutable(&'static str),
    /// The jobs queue exists with another `x-queue-type` than configured
    /// (`WARMPOD_JOBS_QUEUE_TYPE`); the message says how to fix it.
    #[error("{hint}")]
    QueueTypeMismatch {
        /// What to do (set the variable to match, or drain and delete).
        hint: String,
        /// The broker's refusal.
        #[source]
        source: lapin::Error,
    },
}

impl Error {
    /// Whether no retry can help: the broker refused a declaration
    /// (`PRECONDITION_FAILED`: something exists with other arguments).
    pub fn is_fatal(&self) -> bool {
        match self {
            Error::QueueTypeMismatch { .. } => true,
            Error::Amqp { source, .. } => precondition_failed(source).is_some(),
            Error::Nacked(_) | Error::Unroutable(_) => false,
        }
    }
}

/// The broker's text when `e` is a `PRECONDITION_FAILED` refusal.
fn precondition_failed(e: &lapin::Error) -> Option<String> {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(
                amqp.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            ) =>
        {
            Some(amqp.get_message().to_string())
        }
        _ => None,
    }
}

/// Result alias for broker operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn amqp(context: &'static str) -> impl FnOnce(lapin::Error) -> Error {
    move |source| Error::Amqp { context, source }
}

/// An open connection with the channels the pod-manager uses.
pub struct Broker {
    /// The connection (closed on shutdown).
    pub connection: Connection,
    /// The channel deliveries arrive on, with prefetch set.
    pub consume: Channel,
    /// Publishes events and requeued job copies with publisher confirms.
    pub publisher: Publisher,
}

impl Broker {
    /// Connects, declares the topology and opens both channels.
    ///
    /// # Errors
    /// The broker is unreachable or refuses a declaration (e.g. a queue
    /// exists with other arguments: `PRECONDITION_FAILED`).
    pub async fn connect(config: &Config) -> Result<Self> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(config.connection_name.as_str()));
        let connection = Connection::connect(config.amqp_url.expose(), props)
            .await
            .map_err(amqp("connecting to RabbitMQ"))?;
        let consume = connection
            .create_channel()
            .await
            .map_err(amqp("opening the consume channel"))?;
        declare_topology(
            &consume,
            &config.queues,
            config.queue_max_length,
            config.jobs_queue_type,
        )
        .await?;
        consume
            .basic_qos(config.prefetch(), BasicQosOptions::default())
            .await
            .map_err(amqp("setting the prefetch"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(amqp("opening the publish channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp("enabling publisher confirms"))?;
        let replies = connection
            .create_channel()
            .await
            .map_err(amqp("opening the fast replies channel"))?;
        Ok(Self {
            connection,
            consume,
            publisher: Publisher {
                channel,
                replies,
                exchange: config.queues.events.clone(),
                jobs: config.queues.jobs.clone(),
            },
        })
    }
}

/// The arguments of the jobs queue, exactly as `warmpod_protocol::queue`
/// documents them for `queue_type`.
pub fn jobs_queue_arguments(
    names: &QueueNames,
    max_length: i64,
    queue_type: JobsQueueType,
) -> FieldTable {
    let mut args = FieldTable::default();
    for (key, value) in warmpod_protocol::queue::jobs_queue_arguments(
        queue_type,
        max_length,
        &names.dead_letter_exchange,
    ) {
        let value = match value {
            QueueArgument::Text(text) => AMQPValue::LongString(text.into()),
            QueueArgument::Int(n) => AMQPValue::LongLongInt(n),
        };
        args.insert(ShortString::from(key), value);
    }
    args
}

/// Declares (idempotently) the jobs queue (durable, of `queue_type`), the
/// dead-letter exchange and queue, and the events exchange.
///
/// # Errors
/// A declaration was refused: [`Error::QueueTypeMismatch`] when the jobs
/// queue exists with the other type (the channel is closed by the broker).
pub async fn declare_topology(
    channel: &Channel,
    names: &QueueNames,
    max_length: i64,
    queue_type: JobsQueueType,
) -> Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            names.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(amqp("declaring the dead-letter exchange"))?;
    channel
        .queue_declare(
            names.dead_letter_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("declaring the dead-letter queue"))?;
    channel
        .queue_bind(
            names.dead_letter_queue.as_str().into(),
            names.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp("binding the dead-letter queue"))?;
    channel
        .queue_declare(
            names.jobs.as_str().into(),
            QueueDeclareOptions::durable(),
            jobs_queue_arguments(names, max_length, queue_type),
        )
        .await
        .map_err(|source| match precondition_failed(&source) {
            Some(text) if is_queue_type_refusal(&text) => Error::QueueTypeMismatch {
                hint: queue_type_mismatch_hint(&names.jobs, queue_type),
                source,
            },
            _ => Error::Amqp {
                context: "declaring the jobs queue",
                source,
            },
        })?;
    channel
        .exchange_declare(
            names.events.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(amqp("declaring the events exchange"))?;
    Ok(())
}

/// Earlier failed deliveries of a message as counted in its
/// [`FAILED_DELIVERIES_HEADER`] (0 when absent or unreadable).
pub fn failed_deliveries(properties: &BasicProperties) -> u64 {
    let Some(headers) = properties.headers() else {
        return 0;
    };
    let Some(value) = headers.inner().get(FAILED_DELIVERIES_HEADER) else {
        return 0;
    };
    let n: i64 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => *v,
        _ => 0,
    };
    u64::try_from(n).unwrap_or(0)
}

/// The properties of a requeued copy of a job message: the original's
/// (`reply_to`, content type, other headers), persistent, with
/// [`FAILED_DELIVERIES_HEADER`] set to `failed`.
pub fn requeued_properties(original: &BasicProperties, failed: u64) -> BasicProperties {
    let mut headers = original.headers().clone().unwrap_or_default();
    headers.insert(
        FAILED_DELIVERIES_HEADER.into(),
        AMQPValue::LongLongInt(i64::try_from(failed).unwrap_or(i64::MAX)),
    );
    original.clone().with_headers(headers).with_delivery_mode(2)
}

/// Whether `reply_to` is a direct reply-to address (what the broker makes
/// of [`DIRECT_REPLY_TO`]); nothing else gets a fast reply, so a job
/// message cannot make the pod-manager publish into an ordinary queue.
pub fn is_direct_reply_address(reply_to: &str) -> bool {
    reply_to
        .strip_prefix(DIRECT_REPLY_TO)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|key| !key.is_empty())
}

/// Publishes on the events exchange (and requeued job copies on the jobs
/// queue) through one confirm-mode channel and waits for the broker's
/// confirmation of each message; fast replies go through a second channel
/// without confirms.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    /// Fast replies: transient, never confirmed, so a lost one costs
    /// nothing but the shortcut.
    replies: Channel,
    exchange: String,
    /// The jobs queue, for [`Publisher::requeue_job`].
    jobs: String,
}

/// An event handed to the broker whose confirm has not been awaited yet.
pub struct Sent {
    confirm: PublisherConfirm,
    what: &'static str,
}

impl Sent {
    /// Waits for the broker's confirm.
    ///
    /// # Errors
    /// The channel is gone or the broker nacked the message.
    pub async fn confirmed(self) -> Result<()> {
        let confirm = self
            .confirm
            .await
            .map_err(amqp("waiting for the publish confirm"))?;
        match confirm {
            lapin::Confirmation::Ack(None) => Ok(()),
            lapin::Confirmation::Ack(Some(_)) => Err(Error::Unroutable(self.what)),
            _ => Err(Error::Nacked(self.what)),
        }
    }
}

impl Publisher {
    /// Whether the publish channels are still open.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected() && self.replies.status().connected()
    }

    /// Publishes `event` (persistent, routing key from the event) and waits
    /// until the broker confirms it.
    ///
    /// # Errors
    /// The channel is gone or the broker nacked the message.
    pub async fn event(&self, event: &JobEvent) -> Result<()> {
        self.send_event(event).await?.confirmed().await
    }

    /// Hands `event` to the broker without waiting for its confirm. Events
    /// published later on this publisher are routed after it.
    ///
    /// # Errors
    /// The channel is gone.
    pub async fn send_event(&self, event: &JobEvent) -> Result<Sent> {
        let body = serde_json::to_vec(event).expect("events always serialize");
        self.send_event_body(event, &body).await
    }

    async fn send_event_body(&self, event: &JobEvent, body: &[u8]) -> Result<Sent> {
        let props = BasicProperties::default().with_message_id(event.id.to_string().into());
        self.send(&event.routing_key(), body, props, "event").await
    }

    /// Publishes a final event and, when the job asked for one (`reply_to`
    /// a direct reply-to address), its fast reply right after it; waits for
    /// the event's confirm only. A fast reply that cannot be sent is logged
    /// and forgotten: the event is what counts.
    ///
    /// # Errors
    /// As [`Publisher::event`].
    pub async fn final_event(&self, event: &JobEvent, reply_to: Option<&str>) -> Result<()> {
        let body = serde_json::to_vec(event).expect("events always serialize");
        let reply_to = reply_to.filter(|to| is_direct_reply_address(to));
        // Polled together, so both are handed to the connection at once, the
        // event first.
        let (sent, replied) = futures::join!(self.send_event_body(event, &body), async {
            match reply_to {
                Some(to) => Some(self.reply(to, &body).await),
                None => None,
            }
        });
        if let Some(Err(e)) = replied {
            tracing::debug!(error = %e, "the fast reply was not sent; the final event answers");
        }
        sent?.confirmed().await
    }

    /// Publishes a fast reply: default exchange, transient, not mandatory,
    /// not confirmed.
    async fn reply(&self, to: &str, body: &[u8]) -> Result<()> {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(1);
        self.replies
            .basic_publish(
                "".into(),
                to.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .map_err(amqp("publishing a fast reply"))?;
        Ok(())
    }

    /// Puts a copy of a job message back on the jobs queue (default
    /// exchange, persistent, mandatory) with `properties` (see
    /// [`requeued_properties`]) and waits for the broker's confirm; only
    /// then may the original delivery be acked.
    ///
    /// # Errors
    /// The channel is gone, the broker nacked the copy (the queue is full:
    /// `reject-publish`) or no queue took it.
    pub async fn requeue_job(&self, body: &[u8], properties: BasicProperties) -> Result<()> {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.jobs.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(amqp("requeueing a job"))?;
        Sent {
            confirm,
            what: "requeued job",
        }
        .confirmed()
        .await
    }

    /// Publishes a runtime versions announcement and waits for its confirm.
    ///
    /// # Errors
    /// The channel is gone or the broker nacked the message.
    pub async fn versions(&self, versions: &RuntimeVersions) -> Result<()> {
        let body = serde_json::to_vec(versions).expect("versions always serialize");
        self.publish(
            RUNTIME_VERSIONS_ROUTING_KEY,
            &body,
            BasicProperties::default(),
            "versions",
        )
        .await
    }

    async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
        what: &'static str,
    ) -> Result<()> {
        self.send(routing_key, body, props, what)
            .await?
            .confirmed()
            .await
    }

    async fn send(
        &self,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
        what: &'static str,
    ) -> Result<Sent> {
        let props = props
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .map_err(amqp("publishing"))?;
        Ok(Sent { confirm, what })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_deliveries_reads_any_integer_width() {
        assert_eq!(failed_deliveries(&BasicProperties::default()), 0);
        for v in [
            AMQPValue::LongLongInt(2),
            AMQPValue::LongInt(2),
            AMQPValue::ShortShortUInt(2),
        ] {
            let mut h = FieldTable::default();
            h.insert(FAILED_DELIVERIES_HEADER.into(), v);
            assert_eq!(
                failed_deliveries(&BasicProperties::default().with_headers(h)),
                2
            );
        }
    }

    #[test]
    fn a_requeued_copy_keeps_the_properties_and_counts_up() {
        let mut h = FieldTable::default();
        h.insert("other".into(), AMQPValue::LongString("kept".into()));
        h.insert(FAILED_DELIVERIES_HEADER.into(), AMQPValue::LongLongInt(1));
        let original = BasicProperties::default()
            .with_headers(h)
            .with_reply_to("amq.rabbitmq.reply-to.abc".into())
            .with_content_type("application/json".into());
        let copy = requeued_properties(&original, failed_deliveries(&original) + 1);
        assert_eq!(failed_deliveries(&copy), 2);
        assert_eq!(copy.delivery_mode(), &Some(2), "persistent");
        assert_eq!(copy.reply_to(), original.reply_to());
        assert_eq!(copy.content_type(), original.content_type());
        assert_eq!(
            copy.headers().as_ref().unwrap().inner().get("other"),
            Some(&AMQPValue::LongString("kept".into()))
        );
    }

    #[test]
    fn only_direct_reply_addresses_get_fast_replies() {
        for (to, ok) in [
            ("amq.rabbitmq.reply-to.g1h2AA5yZXBseUAx", true),
            ("amq.rabbitmq.reply-to", false),
            ("amq.rabbitmq.reply-to.", false),
            ("amq.rabbitmq.reply-tox", false),
            ("warmpod.jobs", false),
            ("", false),
        ] {
            assert_eq!(is_direct_reply_address(to), ok, "{to:?}");
        }
    }

    #[test]
    fn jobs_queue_is_a_bounded_queue_with_dead_lettering_of_either_type() {
        let names = QueueNames::with_prefix("");
        for queue_type in [JobsQueueType::Classic, JobsQueueType::Quorum] {
            let args = jobs_queue_arguments(&names, 10, queue_type);
            let get = |k: &str| args.inner().get(k).cloned();
            assert_eq!(
                get("x-queue-type"),
                Some(AMQPValue::LongString(queue_type.as_str().into()))
            );
            assert_eq!(get("x-max-length"), Some(AMQPValue::LongLongInt(10)));
            assert_eq!(
                get("x-overflow"),
                Some(AMQPValue::LongString("reject-publish".into()))
            );
            assert_eq!(
                get("x-dead-letter-exchange"),
                Some(AMQPValue::LongString("warmpod.dlx".into()))
            );
            let limit = (queue_type == JobsQueueType::Quorum).then_some(AMQPValue::LongLongInt(
                warmpod_protocol::queue::JOBS_QUEUE_DELIVERY_LIMIT,
            ));
            assert_eq!(get("x-delivery-limit"), limit, "{queue_type}");
        }
    }
}
