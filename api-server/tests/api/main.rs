//! Black-box tests of the api-server: the real binaries (api-server,
//! pod-manager, warmpod-runner) against the real RabbitMQ.

mod auth;
mod backpressure;
mod callbacks;
mod compat;
mod health;
mod helpers;
mod judge0;
mod queue_type;
mod replies;
mod stream;
mod v1;
mod validation;
mod waiting;
