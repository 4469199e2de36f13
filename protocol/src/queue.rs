//! RabbitMQ names and the event format. See docs/architecture.md for the
//! topology.
//!
//! Every service declares what it uses, idempotently, with exactly these
//! arguments (a declaration with other arguments fails with
//! `PRECONDITION_FAILED`, which the services report and exit on):
//! - [`JOBS_QUEUE`]: durable, `x-queue-type=<`[`JobsQueueType`]`, from
//!   `WARMPOD_JOBS_QUEUE_TYPE`, default `classic`>`,
//!   `x-max-length=<WARMPOD_QUEUE_MAX_LENGTH, default [`JOBS_QUEUE_MAX_LENGTH`]>`,
//!   `x-overflow=reject-publish` (a full queue nacks the publish: the API
//!   answers 429), `x-dead-letter-exchange=`[`DEAD_LETTER_EXCHANGE`]; a
//!   quorum queue also gets `x-delivery-limit=`[`JOBS_QUEUE_DELIVERY_LIMIT`]
//!   (a broker-side backstop only). Job messages are persistent and
//!   published with confirms whatever the type, so a classic queue loses
//!   nothing on a broker restart either.
//!
//! # Counting failed deliveries (either queue type)
//!
//! A classic queue keeps no delivery count, so the pod-manager counts
//! itself, in the [`FAILED_DELIVERIES_HEADER`] message header: a job it
//! puts back (the delivery failed, or the message arrived `redelivered`
//! because an earlier consumer died or lost its connection holding it) is
//! republished to the jobs queue as a copy with the header incremented,
//! confirmed, and only then is the original acked. A message whose count
//! reaches the pod-manager's attempts limit is answered `internal_error`
//! and dead-lettered. The quorum queue's own `x-delivery-count` is not
//! read (each copy is a new message to the broker).
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
/// Header of a job message counting its earlier failed deliveries (absent:
/// none), kept by the pod-manager; see the module docs, "Counting failed
/// deliveries".
pub const FAILED_DELIVERIES_HEADER: &str = "warmpod-failed-deliveries";
/// The variable choosing the jobs queue's type; every service that declares
/// the topology must read the same value.
pub const JOBS_QUEUE_TYPE_VAR: &str = "WARMPOD_JOBS_QUEUE_TYPE";
/// Default `x-max-length` of [`JOBS_QUEUE`].
pub const JOBS_QUEUE_MAX_LENGTH: i64 = 10_000;
/// `x-delivery-limit` of [`JOBS_QUEUE`] when it is a quorum queue.
pub const JOBS_QUEUE_DELIVERY_LIMIT: i64 = 10;

/// The RabbitMQ queue type of [`JOBS_QUEUE`] (`x-queue-type`).
///
/// `Classic` (the default) delivers in about a third of a quorum queue's
/// time on one broker (docs/benchmarks.md) and, durable with persistent
/// messages, survives a broker restart; `Quorum` replicates across a
/// cluster's nodes. The type of an existing queue cannot change: switching
/// means draining and deleting it (docs/operations.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum JobsQueueType {
    /// A durable classic queue.
    #[default]
    Classic,
    /// A quorum queue.
    Quorum,
}

/// A [`JobsQueueType`] name that is neither `classic` nor `quorum`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected classic or quorum")]
pub struct UnknownQueueType;

impl JobsQueueType {
    /// The allowed values, as written in `WARMPOD_JOBS_QUEUE_TYPE`.
    pub const ALLOWED: &'static str = "classic or quorum";

    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobsQueueType::Classic => "classic",
            JobsQueueType::Quorum => "quorum",
        }
    }
}

impl std::fmt::Display for JobsQueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobsQueueType {
    type Err = UnknownQueueType;

    /// `classic` or `quorum`, any case, surrounding blanks ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "classic" => Ok(JobsQueueType::Classic),
            "quorum" => Ok(JobsQueueType::Quorum),
            _ => Err(UnknownQueueType),
        }
    }
}

/// The value of one [`jobs_queue_arguments`] entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueArgument {
    /// An AMQP long string.
    Text(String),
    /// An AMQP long long int.
    Int(i64),
}

/// The arguments [`JOBS_QUEUE`] is declared with, as the module docs list
/// them: every service that declares it builds its AMQP table from this one
/// list, so their declarations cannot drift apart (the broker refuses a
/// declaration with other arguments).
pub fn jobs_queue_arguments(
    queue_type: JobsQueueType,
    max_length: i64,
    dead_letter_exchange: &str,
) -> Vec<(&'static str, QueueArgument)> {
    let mut args = vec![
        (
            "x-queue-type",
            QueueArgument::Text(queue_type.as_str().into()),
        ),
        ("x-max-length", QueueArgument::Int(max_length)),
        ("x-overflow", QueueArgument::Text("reject-publish".into())),
        (
            "x-dead-letter-exchange",
            QueueArgument::Text(dead_letter_exchange.into()),
        ),
    ];
    if queue_type == JobsQueueType::Quorum {
        args.push((
            "x-delivery-limit",
            QueueArgument::Int(JOBS_QUEUE_DELIVERY_LIMIT),
        ));
    }
    args
}

/// The remedy for a jobs queue that exists with another type than the one
/// configured (the broker's `PRECONDITION_FAILED - inequivalent arg
/// 'x-queue-type'`), for the services' start-up error.
pub fn queue_type_mismatch_hint(queue: &str, configured: JobsQueueType) -> String {
    let other = match configured {
        JobsQueueType::Classic => JobsQueueType::Quorum,
        JobsQueueType::Quorum => JobsQueueType::Classic,
    };
    format!(
        "the jobs queue {queue:?} already exists with another x-queue-type than \
         {JOBS_QUEUE_TYPE_VAR}={configured}: set {JOBS_QUEUE_TYPE_VAR}={other} (on every \
         api-server and pod-manager) to keep it, or stop the api-servers, let the pod-managers \
         drain it, delete it and restart (docs/operations.md, \"Jobs queue type\")"
    )
}

/// Whether a broker refusal text is about the `x-queue-type` argument.
pub fn is_queue_type_refusal(message: &str) -> bool {
    message.contains("x-queue-type")
}
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

    #[test]
    fn queue_types_parse_and_print() {
        for (raw, want) in [
            ("classic", Ok(JobsQueueType::Classic)),
            (" Quorum ", Ok(JobsQueueType::Quorum)),
            ("stream", Err(UnknownQueueType)),
            ("", Err(UnknownQueueType)),
        ] {
            assert_eq!(raw.parse::<JobsQueueType>(), want, "{raw:?}");
        }
        assert_eq!(JobsQueueType::default().as_str(), "classic");
        let hint = queue_type_mismatch_hint("warmpod.jobs", JobsQueueType::Classic);
        assert!(hint.contains("WARMPOD_JOBS_QUEUE_TYPE=quorum"), "{hint}");
    }
}
