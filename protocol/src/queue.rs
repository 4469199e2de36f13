//! RabbitMQ names and the event format. See docs/architecture.md for the
//! topology.
//!
//! Every service declares what it uses, idempotently, with exactly these
//! arguments (a declaration with other arguments fails with
//! `PRECONDITION_FAILED`, which the services report and exit on):
//! - [`JOBS_QUEUE`]: durable, `x-queue-type=quorum`,
//!   `x-max-length=<WARMPOD_QUEUE_MAX_LENGTH, default [`JOBS_QUEUE_MAX_LENGTH`]>`,
//!   `x-overflow=reject-publish` (a full queue nacks the publish: the API
//!   answers 429), `x-dead-letter-exchange=`[`DEAD_LETTER_EXCHANGE`],
//!   `x-delivery-limit=`[`JOBS_QUEUE_DELIVERY_LIMIT`] (the broker's backstop;
//!   the pod-manager gives up earlier, after its own attempts limit, reading
//!   the quorum queue's `x-delivery-count` header).
//! - [`DEAD_LETTER_EXCHANGE`]: durable fanout; [`DEAD_LETTER_QUEUE`]:
//!   durable classic queue bound to it, no arguments.
//! - [`EVENTS_EXCHANGE`]: durable topic exchange.
//! - [`CALLBACKS_QUEUE`]: durable classic queue, no arguments, bound to
//!   [`EVENTS_EXCHANGE`] with [`FINAL_EVENTS_BINDING`].
//!
//! # The fast reply (optional, besides the final event)
//!
//! A job message published by an api-server that has a client waiting for
//! the result (a synchronous request) carries the AMQP `reply_to` property
//! [`DIRECT_REPLY_TO`]; the broker rewrites it to an address of the
//! publishing channel (RabbitMQ's direct reply-to). A pod-manager that
//! finds a `reply_to` on a job message also publishes the job's final
//! [`JobEvent`] there, right after the final event itself: through the
//! default exchange with the address as routing key, transient, not
//! mandatory, without waiting for a confirm. That copy is a shortcut that
//! may be lost (the api-server reconnected, the broker dropped it), and
//! nothing depends on it: the final event on [`EVENTS_EXCHANGE`] stays the
//! source of truth for every replica, for the callbacks queue and for the
//! ack of the job. Both sides ignore what they do not know: a message
//! without `reply_to` gets no fast reply, and an api-server that never
//! asked for one never receives one.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{JobMeta, JobResult, Status, UnixMillis};

/// Durable queue of [`JobMessage`](crate::JobMessage)s, consumed by
/// pod-managers with manual acks.
pub const JOBS_QUEUE: &str = "warmpod.jobs";
/// Dead-letter exchange of the jobs queue (fanout).
pub const DEAD_LETTER_EXCHANGE: &str = "warmpod.dlx";
/// Where dead-lettered job messages end up.
pub const DEAD_LETTER_QUEUE: &str = "warmpod.jobs.dead";
/// Topic exchange of [`JobEvent`]s; routing key from [`JobEvent::routing_key`].
pub const EVENTS_EXCHANGE: &str = "warmpod.events";
/// Durable queue of final events for webhook delivery, consumed
/// competitively so one api-server replica posts each callback.
pub const CALLBACKS_QUEUE: &str = "warmpod.callbacks";
/// Binding of [`CALLBACKS_QUEUE`] (and of anyone who wants only results).
pub const FINAL_EVENTS_BINDING: &str = "job.final.*";
/// Binding that receives every event.
pub const ALL_EVENTS_BINDING: &str = "job.#";
/// Header a quorum queue sets on redelivered messages: how many earlier
/// deliveries failed (consumer crash, nack with requeue, lost connection).
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// Default `x-max-length` of [`JOBS_QUEUE`].
pub const JOBS_QUEUE_MAX_LENGTH: i64 = 10_000;
/// `x-delivery-limit` of [`JOBS_QUEUE`].
pub const JOBS_QUEUE_DELIVERY_LIMIT: i64 = 10;
/// The `reply_to` of a job message whose submitter waits for the result:
/// RabbitMQ's direct reply-to pseudo-queue, consumed (no-ack) on the
/// channel that publishes the job. See the module docs, "The fast reply".
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Routing key on [`EVENTS_EXCHANGE`] of [`RuntimeVersions`] announcements.
pub const RUNTIME_VERSIONS_ROUTING_KEY: &str = "pool.versions";

/// The language runtimes' versions as found in a sandbox, announced by
/// pod-managers on [`EVENTS_EXCHANGE`] at start-up and periodically, so an
/// api-server (which has no runtimes of its own in a cluster) can list them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeVersions {
    /// When the versions were read.
    pub at_ms: UnixMillis,
    /// Language key to version line, e.g. `"python" -> "Python 3.11.2"`.
    pub versions: std::collections::BTreeMap<String, String>,
}

/// A change of a job's state, published on [`EVENTS_EXCHANGE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub id: Uuid,
    /// Its new state; final states carry `result`.
    pub status: Status,
    /// When the state changed.
    pub at_ms: UnixMillis,
    /// The job's metadata, echoed from its [`JobMessage`](crate::JobMessage).
    #[serde(default)]
    pub meta: JobMeta,
    /// The result, on final events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
}

impl JobEvent {
    /// `job.queued`, `job.running`, or `job.final.<status>`.
    pub fn routing_key(&self) -> String {
        if self.status.is_final() {
            format!("job.final.{}", self.status)
        } else {
            format!("job.{}", self.status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_separate_final_events() {
        let mut e = JobEvent {
            id: Uuid::nil(),
            status: Status::Running,
            at_ms: 0,
            meta: JobMeta::default(),
            result: None,
        };
        assert_eq!(e.routing_key(), "job.running");
        e.status = Status::TimeLimitExceeded;
        assert_eq!(e.routing_key(), "job.final.time_limit_exceeded");
    }
}
