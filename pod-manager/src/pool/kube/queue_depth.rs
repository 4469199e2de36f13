//! The jobs queue's depth, for the [`Scaler`](super::Scaler): a passive
//! `queue.declare` on a connection of its own (the consumer's channels are
//! never touched), reopened after any failure.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;
use tracing::warn;

/// Reads the number of ready messages in one queue.
pub struct QueueDepth {
    url: String,
    queue: String,
    open: Mutex<Option<(Connection, Channel)>>,
}

impl QueueDepth {
    /// A reader of `queue`'s depth on the broker at `url` (connects lazily).
    pub fn new(url: impl Into<String>, queue: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            queue: queue.into(),
            open: Mutex::new(None),
        }
    }

    /// The queue's ready messages now; `None` (logged) when the broker or
    /// the queue cannot be reached this time.
    pub async fn read(&self) -> Option<u64> {
        let mut open = self.open.lock().await;
        if !open.as_ref().is_some_and(|(_, ch)| ch.status().connected()) {
            *open = None;
            let props =
                ConnectionProperties::default().with_connection_name("pod-manager-scaler".into());
            let connection = match Connection::connect(&self.url, props).await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "scaler: cannot reach RabbitMQ for the queue depth");
                    return None;
                }
            };
            match connection.create_channel().await {
                Ok(ch) => *open = Some((connection, ch)),
                Err(e) => {
                    warn!(error = %e, "scaler: cannot open a channel for the queue depth");
                    return None;
                }
            }
        }
        let (_, channel) = open.as_ref()?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(self.queue.as_str().into(), passive, FieldTable::default())
            .await
        {
            Ok(q) => Some(u64::from(q.message_count())),
            Err(e) => {
                // A failed passive declare closes the channel: start over next time.
                warn!(error = %e, queue = %self.queue, "scaler: cannot read the queue depth");
                *open = None;
                None
            }
        }
    }
}
