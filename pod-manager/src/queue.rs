//! RabbitMQ: the connection, the topology (declared exactly as
//! `warmpod_protocol::queue` specifies, so the api-server's declarations
//! match), and the confirming event [`Publisher`], which also sends the
//! unconfirmed fast replies (`warmpod_protocol::queue`, "The fast reply").

use lapin::PublisherConfirm;
use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use warmpod_protocol::queue::{
    DELIVERY_COUNT_HEADER, DIRECT_REPLY_TO, JOBS_QUEUE_DELIVERY_LIMIT, RUNTIME_VERSIONS_ROUTING_KEY,
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
    /// Publishes events with publisher confirms.
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
        declare_topology(&consume, &config.queues, config.queue_max_length).await?;
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
            },
        })
    }
}

/// The arguments of the jobs queue, exactly as `warmpod_protocol::queue`
/// documents them.
pub fn jobs_queue_arguments(names: &QueueNames, max_length: i64) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        ShortString::from("x-max-length"),
        AMQPValue::LongLongInt(max_length),
    );
    args.insert(
        ShortString::from("x-overflow"),
        AMQPValue::LongString("reject-publish".into()),
    );
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(names.dead_letter_exchange.as_str().into()),
    );
    args.insert(
        ShortString::from("x-delivery-limit"),
        AMQPValue::LongLongInt(JOBS_QUEUE_DELIVERY_LIMIT),
    );
    args
}

/// Declares (idempotently) the jobs queue, the dead-letter exchange and
/// queue, and the events exchange.
///
/// # Errors
/// A declaration was refused.
pub async fn declare_topology(
    channel: &Channel,
    names: &QueueNames,
    max_length: i64,
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
            jobs_queue_arguments(names, max_length),
        )
        .await
        .map_err(amqp("declaring the jobs queue"))?;
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

/// Earlier failed deliveries of a message, from the quorum queue's
/// `x-delivery-count` header (0 on the first delivery).
pub fn delivery_count(properties: &BasicProperties) -> u64 {
    let Some(headers) = properties.headers() else {
        return 0;
    };
    let Some(value) = headers.inner().get(DELIVERY_COUNT_HEADER) else {
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

/// Whether `reply_to` is a direct reply-to address (what the broker makes
/// of [`DIRECT_REPLY_TO`]); nothing else gets a fast reply, so a job
/// message cannot make the pod-manager publish into an ordinary queue.
pub fn is_direct_reply_address(reply_to: &str) -> bool {
    reply_to
        .strip_prefix(DIRECT_REPLY_TO)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|key| !key.is_empty())
}

/// Publishes on the events exchange through one confirm-mode channel and
/// waits for the broker's confirmation of each message; fast replies go
/// through a second channel without confirms.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    /// Fast replies: transient, never confirmed, so a lost one costs
    /// nothing but the shortcut.
    replies: Channel,
    exchange: String,
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
        if confirm.is_ack() {
            Ok(())
        } else {
            Err(Error::Nacked(self.what))
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
    fn delivery_count_reads_any_integer_width() {
        assert_eq!(delivery_count(&BasicProperties::default()), 0);
        for v in [
            AMQPValue::LongLongInt(2),
            AMQPValue::LongInt(2),
            AMQPValue::ShortShortUInt(2),
        ] {
            let mut h = FieldTable::default();
            h.insert(DELIVERY_COUNT_HEADER.into(), v);
            assert_eq!(
                delivery_count(&BasicProperties::default().with_headers(h)),
                2
            );
        }
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
    fn jobs_queue_is_a_bounded_quorum_queue_with_dead_lettering() {
        let names = QueueNames::with_prefix("");
        let args = jobs_queue_arguments(&names, 10);
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
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
        assert_eq!(
            get("x-delivery-limit"),
            Some(AMQPValue::LongLongInt(JOBS_QUEUE_DELIVERY_LIMIT))
        );
    }
}
