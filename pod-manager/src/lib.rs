//! pod-manager: consumes jobs from RabbitMQ and runs each one in a claimed
//! warm sandbox.
//!
//! # Layout
//! - [`pool`]: the [`WarmPool`](pool::WarmPool) trait and its backends
//!   (`pool/local.rs`: bubblewrap sandboxes; `pool/kube.rs`: standby pods).
#![forbid(unsafe_code)]

pub mod pool;
