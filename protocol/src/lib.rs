//! Wire types shared by every warmpod component.
//!
//! Pure data and pure functions: no I/O, no async, no environment. The
//! api-server, the pod-manager and `warmpod-runner` all speak these types as
//! JSON, so a field renamed here is a protocol change.
//!
//! # Layout
//! - [`job`]: [`Job`] (what the runner executes) and [`JobMessage`] (what
//!   travels on the jobs queue, with the metadata the runner never sees).
//! - [`limits`]: [`Limits`] as sent by clients and [`ResolvedLimits`] after
//!   defaults and maxima are applied.
//! - [`result`]: [`JobResult`] and the closed [`Status`] set.
//! - [`language`]: the language table, data rather than code branches.
//! - [`queue`]: RabbitMQ names and the [`JobEvent`] published on the events
//!   exchange.
#![forbid(unsafe_code)]

pub mod job;
pub mod language;
pub mod limits;
pub mod queue;
pub mod result;

pub use job::{Job, JobMessage, JobMeta, SourceFile};
pub use language::{LANGUAGES, Language, MemoryModel};
pub use limits::{LimitError, Limits, ResolvedLimits};
pub use queue::{JobEvent, RuntimeVersions};
pub use result::{JobResult, Status};

/// Milliseconds since the Unix epoch, the one clock format on the wire.
pub type UnixMillis = u64;
