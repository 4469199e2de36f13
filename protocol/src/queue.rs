//! RabbitMQ names and the event format. See docs/architecture.md for the
//! topology.

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
/// Message header counting redeliveries done by the pod-manager.
pub const ATTEMPTS_HEADER: &str = "x-warmpod-attempts";

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
