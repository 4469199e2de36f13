//! The jobs consumer: takes job messages off the queue, runs each in a
//! claimed sandbox, publishes its events with publisher confirms, and acks
//! only once the final event is confirmed.
//!
//! Per delivery ([`handle`]): parse (malformed: dead-letter), check the
//! failed-deliveries count (too many: answer `internal_error`, dead-letter;
//! a `redelivered` message, whose earlier delivery died unsettled, is
//! counted and requeued rather than run), publish
//! `running` while claiming (its confirm is awaited in the background), run
//! (an infrastructure failure is retried once on a fresh sandbox), publish
//! the final event with timings (and the fast reply, when the message's
//! `reply_to` asks for one), ack once the event is confirmed, destroy.
//! Every failure goes through [`error_policy`]. A requeue is a confirmed
//! copy with the `warmpod-failed-deliveries` header incremented, then an
//! ack of the original (`warmpod_protocol::queue`, "Counting failed
//! deliveries"), so the count works on a classic queue too.
//!
//! Connection losses are survived: the loop reconnects with back-off while
//! jobs already running finish and publish on the new connection; the
//! broker redelivers their (now unackable) messages, and the [`Ledger`]
//! answers those redeliveries from the recorded outcome instead of running
//! the job again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, field::Empty};
use uuid::Uuid;
use warmpod_protocol::{Job, JobEvent, JobMessage, JobResult, RuntimeVersions, Status};

use crate::config::Config;
use crate::metrics::{DeliveryOutcome, Metrics, Phase};
use crate::pool::{self, Claimed, WarmPool};
use crate::queue::{self, Broker, Publisher, failed_deliveries, requeued_properties};

/// Completed job ids remembered for answering redeliveries.
const LEDGER_CAPACITY: usize = 10_000;
/// How long a finished job keeps trying to publish its final event (across
/// reconnects) before leaving it to redelivery.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(60);
/// Reconnect back-off bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What to do with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Done: remove it from the queue.
    Ack,
    /// Put it back for another delivery, counting this one as failed: a
    /// confirmed copy with `warmpod-failed-deliveries` incremented, then an
    /// ack of the original (a broker requeue when the copy cannot be
    /// published: the `redelivered` flag then carries the count).
    Requeue,
    /// Reject without requeue: the queue dead-letters it.
    DeadLetter,
}

/// Why a delivery was not completed normally.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The body is not a `JobMessage`.
    #[error("malformed job message: {0}")]
    Malformed(String),
    /// Delivered too often; answered `internal_error`.
    #[error("gave up after {0} failed deliveries")]
    GaveUp(u64),
    /// Arrived `redelivered`: an earlier delivery ended without an ack (its
    /// consumer died or lost the connection). Counted, not run.
    #[error("an earlier delivery was interrupted ({0} failed so far)")]
    Interrupted(u64),
    /// Shutting down before the job started.
    #[error("shutting down before the job started")]
    NotStarted,
    /// No sandbox could be claimed.
    #[error("claiming a sandbox failed")]
    Claim(#[source] pool::Error),
    /// The final (or give-up) event could not be confirmed.
    #[error("publishing the final event failed")]
    Publish(#[source] queue::Error),
}

/// The one place that decides a failed delivery's fate.
pub fn error_policy(err: &JobError) -> Decision {
    match err {
        JobError::Malformed(_) | JobError::GaveUp(_) => Decision::DeadLetter,
        JobError::Interrupted(_)
        | JobError::NotStarted
        | JobError::Claim(_)
        | JobError::Publish(_) => Decision::Requeue,
    }
}

/// What a job handler needs.
pub struct Context<P: WarmPool> {
    /// The warm pool.
    pub pool: Arc<P>,
    /// Metrics.
    pub metrics: Metrics,
    /// The current publisher; `None` while disconnected. Jobs that finish
    /// during a reconnect wait here for the next one.
    pub publisher: watch::Receiver<Option<Publisher>>,
    /// Deliveries at or past which a job is given up.
    pub max_attempts: u32,
    /// Outcomes of recent jobs, for redeliveries.
    pub ledger: Ledger,
    /// Fires on shutdown: jobs not yet started are requeued.
    pub shutdown: CancellationToken,
    /// Sandbox destructions in the background (awaited before the pool
    /// shuts down).
    pub destroys: TaskTracker,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The consume loop with reconnects.
pub struct Consumer<P: WarmPool> {
    ctx: Arc<Context<P>>,
    config: Config,
    publisher_tx: watch::Sender<Option<Publisher>>,
    jobs: TaskTracker,
}

impl<P: WarmPool> Consumer<P> {
    /// A consumer running jobs in `pool`; stops when `shutdown` fires.
    pub fn new(
        config: Config,
        pool: Arc<P>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        let (publisher_tx, publisher) = watch::channel(None);
        let ctx = Arc::new(Context {
            pool,
            metrics,
            publisher,
            max_attempts: config.max_attempts,
            ledger: Ledger::default(),
            shutdown,
            destroys: TaskTracker::new(),
        });
        Self {
            ctx,
            config,
            publisher_tx,
            jobs: TaskTracker::new(),
        }
    }

    /// The shared context (for the runtime versions announcer).
    pub fn context(&self) -> Arc<Context<P>> {
        self.ctx.clone()
    }

    /// Consumes until shutdown, reconnecting with back-off; then waits for
    /// in-flight jobs and sandbox destructions.
    ///
    /// # Errors
    /// Only unrecoverable broker refusals (a declaration with other
    /// arguments), after in-flight jobs are drained.
    pub async fn run(self) -> anyhow::Result<()> {
        let mut backoff = BACKOFF_MIN;
        let mut fatal = None;
        let mut last_connection = None;
        while !self.ctx.shutdown.is_cancelled() {
            let broker = match Broker::connect(&self.config).await {
                Ok(b) => b,
                Err(e) => {
                    if e.is_fatal() {
                        tracing::error!(error.cause_chain = ?e, error.message = %e,
                            "the broker refused our topology (declared elsewhere with other arguments)");
                        fatal = Some(e);
                        break;
                    }
                    tracing::warn!(error = %e, ?backoff, "RabbitMQ unavailable; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.ctx.shutdown.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            tracing::info!(queue = %self.config.queues.jobs, prefetch = self.config.prefetch(),
                "connected to RabbitMQ; consuming");
            self.ctx.metrics.broker_connected(true);
            let _ = self.publisher_tx.send(Some(broker.publisher.clone()));
            let outcome = self.consume(&broker).await;
            self.ctx.metrics.broker_connected(false);
            match outcome {
                Ok(()) => {
                    last_connection = Some(broker);
                    break;
                }
                Err(e) => {
                    let _ = self.publisher_tx.send(None);
                    tracing::warn!(error = %e, "lost the RabbitMQ connection; reconnecting");
                    close_within(&broker, 320, "reconnecting").await;
                }
            }
        }
        // Finish in-flight jobs (they publish on the connection still
        // open), then close it.
        self.jobs.close();
        tracing::info!(
            in_flight = self.jobs.len(),
            "consumer stopped; draining in-flight jobs"
        );
        self.jobs.wait().await;
        if let Some(broker) = last_connection {
            tracing::info!("jobs drained; closing the RabbitMQ connection");
            close_within(&broker, 200, "shutting down").await;
        }
        let _ = self.publisher_tx.send(None);
        self.ctx.destroys.close();
        tracing::info!(
            pending = self.ctx.destroys.len(),
            "waiting for sandbox destructions"
        );
        self.ctx.destroys.wait().await;
        tracing::info!("consumer done");
        match fatal {
            Some(e) => Err(anyhow::Error::new(e).context("RabbitMQ topology")),
            None => Ok(()),
        }
    }

    /// Consumes on one connection. `Ok` on shutdown, `Err` when the
    /// connection or channel is lost.
    async fn consume(&self, broker: &Broker) -> Result<(), String> {
        let tag = format!(
            "{}-{}",
            self.config.connection_name,
            Uuid::new_v4().simple()
        );
        let mut deliveries = broker
            .consume
            .basic_consume(
                self.config.queues.jobs.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("starting the consumer: {e}"))?;
        // A channel closed by a channel-level error leaves the connection
        // up; check both channels now and then and reconnect if one died.
        let mut health = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = health.tick() => {
                    if !broker.consume.status().connected() || !broker.publisher.is_open() {
                        return Err("a channel closed".into());
                    }
                }
                () = self.ctx.shutdown.cancelled() => {
                    let cancel = broker.consume.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
                    if tokio::time::timeout(BROKER_REPLY_TIMEOUT, cancel).await.is_err() {
                        tracing::warn!("the broker did not answer the consumer's cancel; stopping anyway");
                    }
                    return Ok(());
                }
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let ctx = self.ctx.clone();
                        let span = tracing::info_span!("job", job_id = Empty, delivery_tag = delivery.delivery_tag, attempt = Empty);
                        self.jobs.spawn(handle(ctx, delivery).instrument(span));
                    }
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the consumer was cancelled by the broker".into()),
                },
            }
        }
    }
}

/// How long shutdown waits for the broker to answer a cancel or a close:
/// a connection that broke without our noticing yet must not hold the
/// pod-manager's stop (unacked deliveries are redelivered either way).
const BROKER_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes `broker`'s connection, giving up after [`BROKER_REPLY_TIMEOUT`].
async fn close_within(broker: &Broker, code: u16, reason: &str) {
    let close = broker.connection.close(code, reason.into());
    if tokio::time::timeout(BROKER_REPLY_TIMEOUT, close)
        .await
        .is_err()
    {
        tracing::warn!(
            reason,
            "the broker did not answer our close; dropping the connection"
        );
    }
}

/// Handles one delivery from start to ack (or requeue / dead-letter).
pub async fn handle<P: WarmPool>(ctx: Arc<Context<P>>, delivery: Delivery) {
    let _in_flight = ctx.metrics.in_flight();
    let outcome = process(&ctx, &delivery).await;
    let decision = match &outcome {
        Ok(()) => Decision::Ack,
        Err(e) => {
            let decision = error_policy(e);
            match e {
                JobError::Malformed(_) => {
                    ctx.metrics.dead_lettered("malformed");
                    tracing::warn!(reason = %e, "rejecting a malformed message to the dead-letter queue");
                }
                JobError::GaveUp(_) => {
                    ctx.metrics.dead_lettered("attempts");
                    tracing::warn!(reason = %e, "dead-lettering a job that keeps failing");
                }
                JobError::NotStarted => {
                    tracing::info!("requeueing a job not started before shutdown")
                }
                JobError::Interrupted(_) => {
                    tracing::info!(reason = %e, "counting an interrupted delivery and requeueing the job")
                }
                other => {
                    tracing::error!(error.cause_chain = ?other, error.message = %other, ?decision, "job failed")
                }
            }
            decision
        }
    };
    let (settled, outcome) = match decision {
        Decision::Ack => (
            delivery.ack(BasicAckOptions::default()).await,
            DeliveryOutcome::Acked,
        ),
        Decision::Requeue => requeue(&ctx, &delivery).await,
        Decision::DeadLetter => (
            delivery.reject(BasicRejectOptions { requeue: false }).await,
            DeliveryOutcome::DeadLettered,
        ),
    };
    match settled {
        Ok(_) => ctx.metrics.delivery(outcome),
        Err(e) => {
            // The channel is gone; the broker redelivers (flagged
            // `redelivered`, which counts as a failed delivery) and the
            // ledger answers if the job finished here.
            ctx.metrics.delivery(DeliveryOutcome::Unsettled);
            tracing::info!(error = %e, ?decision, "could not settle the delivery; it will be redelivered");
        }
    }
}

/// Puts a delivery back counting it as failed: publishes a copy with
/// `warmpod-failed-deliveries` one higher, waits for its confirm, then acks
/// the original. When the copy cannot be published (disconnected, queue
/// full, nacked), the original is returned to the broker instead (nack with
/// requeue), never dropped: it comes back `redelivered`, which counts.
async fn requeue<P: WarmPool>(
    ctx: &Context<P>,
    delivery: &Delivery,
) -> (lapin::Result<bool>, DeliveryOutcome) {
    let failed = failed_deliveries(&delivery.properties) + 1;
    let publisher = ctx.publisher.borrow().clone();
    let copied = match publisher {
        Some(p) => {
            p.requeue_job(
                &delivery.data,
                requeued_properties(&delivery.properties, failed),
            )
            .await
        }
        None => Err(queue::Error::Nacked("requeued job (no connection)")),
    };
    match copied {
        Ok(()) => (
            delivery.ack(BasicAckOptions::default()).await,
            DeliveryOutcome::Requeued,
        ),
        Err(e) => {
            tracing::warn!(error = %e, failed, "could not publish the requeued copy; returning the delivery to the broker");
            let nacked = delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await;
            (nacked, DeliveryOutcome::Returned)
        }
    }
}

async fn process<P: WarmPool>(ctx: &Context<P>, delivery: &Delivery) -> Result<(), JobError> {
    let msg: JobMessage =
        serde_json::from_slice(&delivery.data).map_err(|e| JobError::Malformed(e.to_string()))?;
    let id = msg.job.id;
    // Earlier deliveries that failed: those counted in the header, plus the
    // one that ended unsettled if the broker flags this one `redelivered`.
    let attempts = failed_deliveries(&delivery.properties) + u64::from(delivery.redelivered);
    let reply_to = delivery.properties.reply_to().as_ref().map(|s| s.as_str());
    let span = tracing::Span::current();
    span.record("job_id", tracing::field::display(id));
    span.record("attempt", attempts + 1);

    let slot = match ctx.ledger.begin(id) {
        Begin::Fresh(slot) => slot,
        Begin::Duplicate(mut earlier) => {
            tracing::info!("redelivery of a job handled here; answering from its recorded outcome");
            let outcome = earlier
                .wait_for(Option::is_some)
                .await
                .map(|o| o.clone())
                .ok()
                .flatten();
            let Some(outcome) = outcome else {
                return Err(JobError::NotStarted);
            };
            if !outcome.confirmed {
                publish_final(ctx, &outcome.event, reply_to).await?;
                ctx.ledger.confirm(id);
            }
            return Ok(());
        }
    };

    if attempts >= u64::from(ctx.max_attempts) {
        let result = JobResult::internal_error(
            id,
            format!(
                "the job failed {attempts} times (its sandbox or pod-manager kept failing); giving up"
            ),
        );
        let event = final_event(&msg, result);
        publish_final(ctx, &event, reply_to).await?;
        slot.finish(event, true);
        ctx.metrics.finished(Status::InternalError);
        return Err(JobError::GaveUp(attempts));
    }
    if delivery.redelivered {
        // Not run now: a crash while running it would bring it back with
        // the same header, uncounted. The requeued copy carries the count.
        return Err(JobError::Interrupted(attempts));
    }

    let picked_up = now_ms();
    let queue_ms = picked_up.saturating_sub(msg.submitted_at_ms);
    ctx.metrics
        .phase(Phase::Queue, Duration::from_millis(queue_ms));
    let mut result = run_job(ctx, &msg).await?;
    result.queue_ms = Some(queue_ms);
    let event = final_event(&msg, result);
    let status = event.status;
    if let Err(e) = publish_final(ctx, &event, reply_to).await {
        slot.finish(event, false);
        return Err(e);
    }
    let total = now_ms().saturating_sub(msg.submitted_at_ms);
    ctx.metrics
        .phase(Phase::Total, Duration::from_millis(total));
    ctx.metrics.finished(status);
    tracing::info!(%status, "job done");
    slot.finish(event, true);
    Ok(())
}

/// Claims and runs, publishing `running` meanwhile (off the critical path).
/// Before returning it waits until `running` is handed to the broker, so the
/// final event, published later on the same channel, is routed after it;
/// `running` is informational, so its confirm is only awaited (and a
/// failure logged) in the background.
async fn run_job<P: WarmPool>(ctx: &Context<P>, msg: &JobMessage) -> Result<JobResult, JobError> {
    let running = JobEvent {
        id: msg.job.id,
        status: Status::Running,
        at_ms: now_ms(),
        meta: msg.meta.clone(),
        result: None,
    };
    let publisher = ctx.publisher.borrow().clone();
    let running_sent = tokio::spawn(async move {
        match publisher {
            Some(p) => p.send_event(&running).await.map(Some),
            None => Ok(None),
        }
    });
    let outcome = claim_and_run(ctx, &msg.job).await;
    match running_sent.await {
        Ok(Ok(Some(sent))) => {
            let confirmed = async move {
                if let Err(e) = sent.confirmed().await {
                    tracing::warn!(error = %e, "the running event was not confirmed");
                }
            };
            tokio::spawn(confirmed.in_current_span());
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "publishing the running event failed"),
        Err(e) => tracing::warn!(error = %e, "publishing the running event failed"),
    }
    outcome
}

/// Claims a sandbox and runs the job, retrying an infrastructure failure
/// once on a fresh sandbox. A sandbox that does not answer within the job's
/// limits plus grace is answered `time_limit_exceeded` without a retry.
async fn claim_and_run<P: WarmPool>(ctx: &Context<P>, job: &Job) -> Result<JobResult, JobError> {
    let mut claim_ms = 0u64;
    let mut warm_first = None;
    let mut last_error = None;
    for attempt in 1..=2 {
        let claim_started = Instant::now();
        let claimed = tokio::select! {
            claimed = ctx.pool.claim_for(job.id, &job.language) => claimed,
            () = ctx.shutdown.cancelled() => {
                if attempt == 1 {
                    return Err(JobError::NotStarted);
                }
                return Ok(JobResult::internal_error(
                    job.id,
                    "pod-manager shut down before the job could be retried",
                ));
            }
        };
        let claimed = claimed.map_err(JobError::Claim)?;
        ctx.metrics.claimed(claimed.kind(), &job.language);
        let Claimed {
            mut sandbox, warm, ..
        } = claimed;
        let took = claim_started.elapsed();
        claim_ms += took.as_millis() as u64;
        ctx.metrics.phase(Phase::Claim, took);
        warm_first.get_or_insert(warm);
        let exec_started = Instant::now();
        let ran = ctx.pool.run(&mut sandbox, job).await;
        let exec = exec_started.elapsed();
        let pool = ctx.pool.clone();
        ctx.destroys
            .spawn(async move { pool.destroy(sandbox).await });
        let mut result = match ran {
            Ok(result) => {
                ctx.metrics.phase(Phase::Exec, exec);
                result
            }
            Err(pool::Error::Timeout(limit)) => {
                // The runner enforces the job's limits itself; a sandbox
                // that stays silent past limits + grace is most likely held
                // up by the program (e.g. it starved the runner), so the
                // verdict is the program's and running it again would only
                // double the damage.
                ctx.metrics.infra_failure(&pool::Error::Timeout(limit));
                tracing::warn!(?limit, "the sandbox did not answer in time; not retried");
                let mut result = JobResult::new(job.id, Status::TimeLimitExceeded);
                result.wall_time_ms = limit.as_millis() as u64;
                result.message = Some(format!(
                    "the sandbox did not answer within {limit:?} (the job's limits plus grace) and was destroyed"
                ));
                result
            }
            Err(e) => {
                ctx.metrics.infra_failure(&e);
                tracing::warn!(error = %e, attempt, "the sandbox failed");
                if attempt == 1 {
                    last_error = Some(e);
                    continue;
                }
                JobResult::internal_error(
                    job.id,
                    format!("the sandbox failed twice; last error: {e}"),
                )
            }
        };
        result.claim_ms = Some(claim_ms);
        result.exec_ms = Some(exec.as_millis() as u64);
        result.warm = warm_first;
        return Ok(result);
    }
    unreachable!("the second attempt always returns (first error: {last_error:?})")
}

fn final_event(msg: &JobMessage, mut result: JobResult) -> JobEvent {
    let at_ms = now_ms();
    result.total_ms = Some(at_ms.saturating_sub(msg.submitted_at_ms));
    JobEvent {
        id: msg.job.id,
        status: result.status,
        at_ms,
        meta: msg.meta.clone(),
        result: Some(result),
    }
}

/// Publishes a final event (and its fast reply to `reply_to`, if any),
/// waiting through reconnects for up to [`PUBLISH_PATIENCE`] for the
/// event's confirm.
async fn publish_final<P: WarmPool>(
    ctx: &Context<P>,
    event: &JobEvent,
    reply_to: Option<&str>,
) -> Result<(), JobError> {
    let deadline = tokio::time::Instant::now() + PUBLISH_PATIENCE;
    let mut rx = ctx.publisher.clone();
    let mut last_err = None;
    loop {
        let current = rx.borrow_and_update().clone();
        if let Some(publisher) = current {
            match publisher.final_event(event, reply_to).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "publishing the final event failed; waiting for a new connection");
                    last_err = Some(e);
                }
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => {
                return Err(JobError::Publish(
                    last_err.unwrap_or(queue::Error::Nacked("final event (no connection)")),
                ));
            }
        }
    }
}

/// Publishes the pool's runtime versions now and every `interval` until
/// shutdown.
pub async fn announce_versions<P: WarmPool>(ctx: Arc<Context<P>>, interval: Duration) {
    let mut rx = ctx.publisher.clone();
    loop {
        let publisher = tokio::select! {
            p = rx.wait_for(Option::is_some) => match p { Ok(p) => p.clone(), Err(_) => return },
            () = ctx.shutdown.cancelled() => return,
        };
        let Some(publisher) = publisher else { continue };
        match ctx.pool.runtime_versions().await {
            Ok(versions) => {
                let msg = RuntimeVersions {
                    at_ms: now_ms(),
                    versions,
                };
                match publisher.versions(&msg).await {
                    Ok(()) => tracing::debug!(
                        languages = msg.versions.len(),
                        "announced runtime versions"
                    ),
                    Err(e) => tracing::warn!(error = %e, "announcing runtime versions failed"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading runtime versions failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = ctx.shutdown.cancelled() => return,
        }
    }
}

/// A finished job's final event and whether the broker confirmed it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The final event.
    pub event: JobEvent,
    /// Whether it was confirmed.
    pub confirmed: bool,
}

type OutcomeRx = watch::Receiver<Option<Outcome>>;

/// Recent jobs handled by this process, so that a redelivery (after a lost
/// connection made the ack impossible) is answered from the recorded
/// outcome instead of running the program again.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
}

#[derive(Default)]
struct LedgerInner {
    jobs: HashMap<Uuid, OutcomeRx>,
    order: VecDeque<Uuid>,
}

/// Result of [`Ledger::begin`].
pub enum Begin<'a> {
    /// First time here: run it and record the outcome in the slot.
    Fresh(Slot<'a>),
    /// Already handled (or being handled) here: wait for that outcome.
    Duplicate(OutcomeRx),
}

/// The right to record a job's outcome; forgetting the job if dropped
/// without one (so a requeued job is run again when it comes back).
pub struct Slot<'a> {
    ledger: &'a Ledger,
    id: Uuid,
    tx: Option<watch::Sender<Option<Outcome>>>,
}

impl Ledger {
    /// Registers `id` unless it is known.
    pub fn begin(&self, id: Uuid) -> Begin<'_> {
        let mut inner = self.inner.lock().expect("ledger lock");
        if let Some(rx) = inner.jobs.get(&id) {
            return Begin::Duplicate(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        inner.jobs.insert(id, rx);
        inner.order.push_back(id);
        while inner.order.len() > LEDGER_CAPACITY {
            if let Some(old) = inner.order.pop_front() {
                inner.jobs.remove(&old);
            }
        }
        Begin::Fresh(Slot {
            ledger: self,
            id,
            tx: Some(tx),
        })
    }

    /// Marks a recorded outcome as confirmed.
    pub fn confirm(&self, id: Uuid) {
        let inner = self.inner.lock().expect("ledger lock");
        if let Some(rx) = inner.jobs.get(&id) {
            let mut outcome = rx.borrow().clone();
            if let Some(o) = outcome.as_mut() {
                o.confirmed = true;
            }
            // The sender is gone once the slot finished; replace the entry.
            drop(inner);
            let (tx, rx) = watch::channel(outcome);
            drop(tx);
            self.inner.lock().expect("ledger lock").jobs.insert(id, rx);
        }
    }

    fn forget(&self, id: Uuid) {
        let mut inner = self.inner.lock().expect("ledger lock");
        inner.jobs.remove(&id);
        inner.order.retain(|x| *x != id);
    }
}

impl Slot<'_> {
    /// Records the outcome.
    pub fn finish(mut self, event: JobEvent, confirmed: bool) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Some(Outcome { event, confirmed }));
            // Keep the value readable after the sender drops.
            let rx = tx.subscribe();
            self.ledger
                .inner
                .lock()
                .expect("ledger lock")
                .jobs
                .insert(self.id, rx);
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.ledger.forget(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_dead_letters_only_hopeless_messages() {
        let cases = [
            (JobError::Malformed("x".into()), Decision::DeadLetter),
            (JobError::GaveUp(3), Decision::DeadLetter),
            (JobError::Interrupted(1), Decision::Requeue),
            (JobError::NotStarted, Decision::Requeue),
            (JobError::Claim(pool::Error::Closed), Decision::Requeue),
            (
                JobError::Publish(queue::Error::Nacked("event")),
                Decision::Requeue,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(error_policy(&err), want, "{err}");
        }
    }

    fn event(id: Uuid) -> JobEvent {
        JobEvent {
            id,
            status: Status::Accepted,
            at_ms: 1,
            meta: Default::default(),
            result: None,
        }
    }

    #[tokio::test]
    async fn ledger_answers_redeliveries_and_forgets_abandoned_jobs() {
        let ledger = Ledger::default();
        let id = Uuid::new_v4();
        let Begin::Fresh(slot) = ledger.begin(id) else {
            panic!("first sight must be fresh")
        };
        let Begin::Duplicate(mut rx) = ledger.begin(id) else {
            panic!("second sight must be a duplicate")
        };
        slot.finish(event(id), false);
        let seen = rx.wait_for(Option::is_some).await.unwrap().clone().unwrap();
        assert!(!seen.confirmed);
        ledger.confirm(id);
        let Begin::Duplicate(rx) = ledger.begin(id) else {
            panic!("finished jobs stay known")
        };
        assert!(rx.borrow().as_ref().unwrap().confirmed);

        let other = Uuid::new_v4();
        match ledger.begin(other) {
            Begin::Fresh(slot) => drop(slot),
            Begin::Duplicate(_) => panic!("fresh id"),
        }
        assert!(
            matches!(ledger.begin(other), Begin::Fresh(_)),
            "abandoned jobs are forgotten"
        );
    }
}
