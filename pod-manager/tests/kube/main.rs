//! Black-box tests of the Kubernetes pool backend against a fake API server
//! that speaks the real wire protocol and runs the REAL `warmpod-runner`.
//!
//! Needs `target/<profile>/warmpod-runner`: `cargo build -p warmpod-runner`
//! (`make test` builds the whole workspace first).

#[path = "../common/broker.rs"]
mod broker;
mod fake_api;
mod helpers;

mod faults;
mod janitor;
mod languages;
mod lifecycle;
mod race;
mod scaler;
mod service;
