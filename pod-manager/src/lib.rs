//! pod-manager: consumes jobs from RabbitMQ and runs each one in a claimed
//! warm sandbox.
//!
//! # Layout
//! - [`config`]: the typed [`Config`](config::Config), read once from the
//!   environment.
//! - [`telemetry`]: tracing subscriber set-up (text or JSON).
//! - [`metrics`]: Prometheus metrics as a struct, and the `/metrics` server.
//! - [`queue`]: broker connection, topology, the confirming event publisher.
//! - [`consumer`]: per-job handling and the one `error_policy`.
//! - [`pool`]: the [`WarmPool`](pool::WarmPool) trait and its backends
//!   (`pool/local.rs`: bubblewrap sandboxes; `pool/kube.rs`: standby pods).
//! - [`cgroup`]: per-sandbox cgroups (v1 and v2) for the local backend.
//! - [`startup`]: [`Application::build`](startup::Application::build) and
//!   `run_until_stopped`.
//! - `spawn`: the one module with `unsafe` code (a vfork-style clone whose
//!   child joins the sandbox's cgroups and drops privileges before exec).
//! - `process`: a spawned sandbox process driven from tokio (pipes, pidfd
//!   wait, kill and reap on drop).
#![deny(unsafe_code)]

pub mod cgroup;
pub mod config;
pub mod consumer;
pub mod metrics;
pub mod pool;
mod process;
pub mod queue;
mod spawn;
pub mod startup;
pub mod telemetry;

pub use config::Config;
pub use startup::Application;
