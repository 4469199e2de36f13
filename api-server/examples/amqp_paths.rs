//! How long one message takes through each RabbitMQ path warmpod uses or
//! could use, with the real client (lapin) and the local broker: the
//! figures behind docs/benchmarks.md "Broker path of a synchronous job".
//!
//! One message in flight at a time, publisher and consumer on two
//! connections of this process (as the api-server and the pod-manager are
//! two processes), timed with a monotonic clock from just before
//! `basic_publish` to the delivery reaching the consuming task, and to the
//! publisher confirm where there is one. Paths:
//! - `quorum`: a persistent message into a quorum queue with the jobs
//!   queue's arguments (the job message with `WARMPOD_JOBS_QUEUE_TYPE=quorum`);
//! - `classic`: the same into a durable classic queue with the jobs queue's
//!   arguments (the job message with the default `WARMPOD_JOBS_QUEUE_TYPE`);
//! - `event`: a persistent message on a topic exchange routed to a durable
//!   classic queue with a no-ack consumer (the final event today);
//! - `transient`: a transient message through the default exchange to an
//!   exclusive queue, no confirm (a per-replica reply queue);
//! - `direct`: a transient message to an `amq.rabbitmq.reply-to` address
//!   (RabbitMQ's direct reply-to), no confirm.
//!
//! ```text
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//!   cargo run --release -p api-server --example amqp_paths -- 300
//! ```

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(300);
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let a = Connection::connect(&url, ConnectionProperties::default()).await?;
    let b = Connection::connect(&url, ConnectionProperties::default()).await?;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let payload = vec![b'x'; 1500];
    println!(
        "{n} messages of {} bytes per path; medians / p90 / p99 in ms",
        payload.len()
    );
    println!("{:<10} {:>22} {:>22}", "path", "delivered", "confirmed");
    for path in ["quorum", "classic", "event", "transient", "direct"] {
        let (deliver, confirm) = measure(&a, &b, path, &tag, n, &payload).await?;
        println!(
            "{path:<10} {:>22} {:>22}",
            summary(deliver),
            confirm.map_or_else(|| "-".into(), summary)
        );
    }
    Ok(())
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    format!("{:.3} / {:.3} / {:.3}", at(0.5), at(0.9), at(0.99))
}

async fn measure(
    a: &Connection,
    b: &Connection,
    path: &str,
    tag: &str,
    n: usize,
    payload: &[u8],
) -> anyhow::Result<(Vec<Duration>, Option<Vec<Duration>>)> {
    let publisher = a.create_channel().await?;
    let consumer_ch = b.create_channel().await?;
    let confirmed = matches!(path, "quorum" | "classic" | "event");
    if confirmed {
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    let name = format!("warmpod.bench.{path}.{tag}");
    let exchange = format!("warmpod.bench.x.{tag}");
    // Where to publish, and the consumer to time.
    let (pub_exchange, routing_key, mut consumer) = match path {
        "quorum" | "classic" => {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), AMQPValue::LongString(path.into()));
            args.insert("x-max-length".into(), AMQPValue::LongLongInt(10_000));
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
            if path == "quorum" {
                args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(10));
            }
            consumer_ch
                .queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), args)
                .await?;
            let c = consume(&consumer_ch, &name, false).await?;
            (String::new(), name.clone(), c)
        }
        "event" => {
            consumer_ch
                .exchange_declare(
                    exchange.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            consumer_ch
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions::durable(),
                    FieldTable::default(),
                )
                .await?;
            consumer_ch
                .queue_bind(
                    name.as_str().into(),
                    exchange.as_str().into(),
                    "job.#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let c = consume(&consumer_ch, &name, true).await?;
            (exchange.clone(), "job.final.accepted".to_string(), c)
        }
        "transient" => {
            let q = consumer_ch
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let c = consume(&consumer_ch, q.name().as_str(), true).await?;
            (String::new(), name.clone(), c)
        }
        _ => {
            // The waiting side consumes the pseudo-queue on its channel and
            // publishes one request with reply_to on that channel; the
            // broker hands the request (reply_to rewritten) to the other
            // side, which then publishes the timed replies.
            let c = consume(&consumer_ch, "amq.rabbitmq.reply-to", true).await?;
            let request_q = consumer_ch
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let mut requests = consume(&consumer_ch, request_q.name().as_str(), true).await?;
            consumer_ch
                .basic_publish(
                    "".into(),
                    request_q.name().clone(),
                    BasicPublishOptions::default(),
                    b"request",
                    BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
                )
                .await?;
            let request = requests
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("no request"))??;
            let reply_to = request
                .properties
                .reply_to()
                .clone()
                .ok_or_else(|| anyhow::anyhow!("no reply_to"))?;
            (String::new(), reply_to.to_string(), c)
        }
    };
    let mut deliver = Vec::with_capacity(n);
    let mut confirm = Vec::with_capacity(n);
    let persistent = if confirmed { 2 } else { 1 };
    for _ in 0..n + 20 {
        let started = Instant::now();
        let pending = publisher
            .basic_publish(
                pub_exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default().with_delivery_mode(persistent),
            )
            .await?;
        let confirm_task = tokio::spawn(async move {
            let _ = pending.await;
            started.elapsed()
        });
        let delivery = consumer
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
        let delivered = started.elapsed();
        // The queues' consumers ack; the others are no-ack.
        if matches!(path, "quorum" | "classic") {
            delivery
                .ack(lapin::options::BasicAckOptions::default())
                .await?;
        }
        let confirmed_after = confirm_task.await?;
        deliver.push(delivered);
        confirm.push(confirmed_after);
    }
    // Drop the warm-up.
    deliver.drain(..20);
    confirm.drain(..20);
    if path != "direct" {
        let _ = consumer_ch
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = publisher.close(200, "done".into()).await;
    let _ = consumer_ch.close(200, "done".into()).await;
    Ok((deliver, confirmed.then_some(confirm)))
}

async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> lapin::Result<lapin::Consumer> {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}
