//! api-server: warmpod's HTTP API.
//!
//! Clients submit code through one of three façades; each is a thin
//! translation onto one core [`Core`] service that validates, publishes the
//! job to RabbitMQ with publisher confirms, and reads job state from a store
//! fed by the events every pod-manager publishes.
//!
//! # Layout
//! - [`config`]: typed configuration read once from the environment.
//! - [`startup`]: [`Application`], which binds the HTTP server and runs it
//!   with the broker supervisor.
//! - `broker`: the RabbitMQ connection: confirmed publishes, the events
//!   consumer, reconnection with backoff, readiness.
//! - `state`: the bounded, TTL'd store of job states and its change feed.
//! - `submit`: the core: validation, submission, waiting.
//! - `callbacks`: webhook delivery (competing consumers, retries, HMAC,
//!   SSRF guard).
//! - `languages`: runtime versions (announced by pod-managers or read
//!   locally).
//! - `auth`: API keys and per-key rate limits.
//! - `error`: [`ApiError`], the one place errors become HTTP responses.
//! - `view`: how a job's state is shown to each API's clients (native view,
//!   Judge0 submission and status ids, seed callback body).
//! - `routes`: `v1` (native), `judge0`, `compat` (the seed endpoints), `ops`
//!   (health, readiness, metrics, OpenAPI).
//! - `metrics`, [`telemetry`].
#![forbid(unsafe_code)]

mod auth;
mod broker;
mod callbacks;
pub mod config;
mod error;
mod languages;
mod metrics;
mod routes;
pub mod startup;
mod state;
mod submit;
pub mod telemetry;
mod view;

pub use config::Config;
pub use error::ApiError;
pub use startup::Application;
pub use submit::Core;
