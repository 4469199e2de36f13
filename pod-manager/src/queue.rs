//! RabbitMQ: the connection, the topology (declared exactly as
//! `warmpod_protocol::queue` specifies, so the api-server's declarations
//! match), and the confirming event [`Publisher`].

use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use warmpod_protocol::queue::{
    DELIVERY_COUNT_HEADER, JOBS_QUEUE_DELIVERY_LIMIT, RUNTIME_VERSIONS_ROUTING_KEY,
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

/// An open connection with the two channels the pod-manager uses.
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
        Ok(Self {
            connection,
            consume,
            publisher: Publisher {
                channel,
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

/// Publishes on the events exchange through one confirm-mode channel and
/// waits for the broker's confirmation of each message.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    exchange: String,
}

impl Publisher {
    /// Whether the publish channel is still open.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes `event` (persistent, routing key from the event) and waits
    /// until the broker confirms it.
    ///
    /// # Errors
    /// The channel is gone or the broker nacked the message.
    pub async fn event(&self, event: &JobEvent) -> Result<()> {
        let body = serde_json::to_vec(event).expect("events always serialize");
        let props = BasicProperties::default().with_message_id(event.id.to_string().into());
        self.publish(&event.routing_key(), &body, props, "event")
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
            .map_err(amqp("publishing"))?
            .await
            .map_err(amqp("waiting for the publish confirm"))?;
        if confirm.is_ack() {
            Ok(())
        } else {
            Err(Error::Nacked(what))
        }
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
