//! Black-box tests of pod-manager on the local (bubblewrap) backend,
//! against a real RabbitMQ at `AMQP_URL`. Each test uses its own queue and
//! exchange names.
#[path = "../common/broker.rs"]
mod broker;
mod cgroup;
mod consumer;
mod helpers;
#[path = "../common/metrics.rs"]
mod metrics;
mod pool;
mod queue_type;
mod resilience;
mod sandbox;
