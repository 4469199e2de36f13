//! The job state store: what this replica knows about each job, fed by the
//! events exchange (and by its own submissions), with a change feed.
//!
//! Bounded (oldest jobs are dropped past a number of jobs and past a
//! number of bytes of output and source held) and with a TTL
//! counted from when this replica first saw the job. Events may arrive out
//! of order (the api-server's `queued` and the pod-manager's `running` come
//! from different publishers), so a state never moves backwards: queued <
//! running < final.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::broadcast;
use uuid::Uuid;
use warmpod_protocol::{JobEvent, JobMeta, JobResult, Status, UnixMillis};

/// What this replica knows about one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// The job's id.
    pub id: Uuid,
    /// Its state; final states are already judged against `expected_output`.
    pub status: Status,
    /// The job's metadata.
    pub meta: JobMeta,
    /// When the job was queued (if this replica saw that event).
    pub queued_at_ms: Option<UnixMillis>,
    /// When it started running (if this replica saw that event).
    pub running_at_ms: Option<UnixMillis>,
    /// When it finished.
    pub finished_at_ms: Option<UnixMillis>,
    /// The result, once final.
    pub result: Option<JobResult>,
    /// Known only on the replica that accepted the job.
    pub submission: Option<Arc<SubmissionInfo>>,
}

/// The submitted request's details, kept where the job was accepted (Judge0
/// returns them with `fields=*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionInfo {
    /// Language key.
    pub language: String,
    /// The entry point's source.
    pub source: String,
    /// Standard input.
    pub stdin: String,
}

fn rank(status: Status) -> u8 {
    match status {
        Status::Queued => 0,
        Status::Running => 1,
        _ => 2,
    }
}

impl Execution {
    /// The job's language: from its metadata, else from the submission
    /// when this replica accepted it.
    pub fn language(&self) -> Option<&'static warmpod_protocol::Language> {
        self.meta
            .language
            .as_deref()
            .or(self.submission.as_ref().map(|s| s.language.as_str()))
            .and_then(warmpod_protocol::Language::find)
    }

    /// The state described by one event (final results judged).
    pub fn from_event(event: &JobEvent) -> Self {
        let mut e = Self {
            id: event.id,
            status: Status::Queued,
            meta: event.meta.clone(),
            queued_at_ms: None,
            running_at_ms: None,
            finished_at_ms: None,
            result: None,
            submission: None,
        };
        e.merge(event);
        e
    }

    /// Folds a later event in; returns whether anything changed.
    fn merge(&mut self, event: &JobEvent) -> bool {
        let new_rank = rank(event.status);
        let changed = match event.status {
            Status::Queued if self.queued_at_ms.is_none() => {
                self.queued_at_ms = Some(event.at_ms);
                true
            }
            Status::Running if self.running_at_ms.is_none() => {
                self.running_at_ms = Some(event.at_ms);
                true
            }
            s if s.is_final() && self.finished_at_ms.is_none() => {
                self.finished_at_ms = Some(event.at_ms);
                let expected = event.meta.expected_output.as_deref();
                let mut result = event.result.clone().unwrap_or_else(|| {
                    JobResult::internal_error(event.id, "final event without a result")
                });
                result.status = result.judged(expected);
                self.result = Some(result);
                true
            }
            _ => false,
        };
        if new_rank >= rank(self.status) && changed {
            self.status = match &self.result {
                Some(r) => r.status,
                None => event.status,
            };
        }
        changed
    }
}

/// Roughly the bytes an execution holds (its texts dominate).
fn weight(e: &Execution) -> usize {
    let result = e.result.as_ref().map_or(0, |r| {
        r.stdout.len()
            + r.stderr.len()
            + r.compile_output.len()
            + r.message.as_ref().map_or(0, String::len)
    });
    let submission = e
        .submission
        .as_ref()
        .map_or(0, |s| s.source.len() + s.stdin.len());
    let meta = [&e.meta.expected_output, &e.meta.callback_url, &e.meta.tag]
        .iter()
        .map(|s| s.as_ref().map_or(0, String::len))
        .sum::<usize>();
    512 + result + submission + meta
}

struct Entry {
    execution: Execution,
    seen: Instant,
    weight: usize,
}

struct Inner {
    jobs: HashMap<Uuid, Entry>,
    order: VecDeque<(Uuid, Instant)>,
    /// Sum of the entries' weights.
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, id: &Uuid) {
        if let Some(e) = self.jobs.remove(id) {
            self.bytes -= e.weight;
        }
    }
}

/// The store, shared by handlers and the events consumer.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Mutex<Inner>>,
    changes: broadcast::Sender<Arc<Execution>>,
    capacity: usize,
    max_bytes: usize,
    ttl: Duration,
}

impl StateStore {
    /// A store of at most `capacity` jobs and about `max_bytes` of their
    /// texts (the newest job is always kept), each kept `ttl`.
    pub fn new(capacity: usize, max_bytes: usize, ttl: Duration) -> Self {
        let (changes, _) = broadcast::channel(4096);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                jobs: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
            })),
            changes,
            capacity,
            max_bytes,
            ttl,
        }
    }

    /// A feed of every change from now on. Subscribe *before* reading the
    /// store, so nothing falls between the read and the feed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Execution>> {
        self.changes.subscribe()
    }

    /// The job's current state, if known and not expired.
    pub fn get(&self, id: Uuid) -> Option<Execution> {
        let mut inner = self.lock();
        self.expire(&mut inner);
        inner.jobs.get(&id).map(|e| e.execution.clone())
    }

    /// How many jobs are stored.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Records a job this replica accepted, before it is published.
    pub fn insert_submitted(&self, event: &JobEvent, submission: SubmissionInfo) {
        self.apply_with(event, Some(Arc::new(submission)), |_| {});
    }

    /// Forgets a job whose publish failed (only if nothing else was heard).
    pub fn remove_unpublished(&self, id: Uuid) {
        let mut inner = self.lock();
        if inner
            .jobs
            .get(&id)
            .is_some_and(|e| e.execution.status == Status::Queued)
        {
            inner.remove(&id);
        }
    }

    /// Applies an event from the exchange; publishes the change, if any.
    pub fn apply(&self, event: &JobEvent) {
        self.apply_with(event, None, |_| {});
    }

    /// As [`StateStore::apply`], calling `changed` with the new state
    /// before the change feed hears of it (so whatever it records is
    /// visible to anyone woken by the feed). A final event changes the
    /// state once: the first time it arrives, by whichever copy.
    pub fn apply_noting(&self, event: &JobEvent, changed: impl FnOnce(&Execution)) {
        self.apply_with(event, None, changed);
    }

    fn apply_with(
        &self,
        event: &JobEvent,
        submission: Option<Arc<SubmissionInfo>>,
        noted: impl FnOnce(&Execution),
    ) {
        let now = Instant::now();
        let changed = {
            let mut inner = self.lock();
            self.expire(&mut inner);
            let changed = match inner.jobs.get_mut(&event.id) {
                Some(entry) => {
                    if submission.is_some() {
                        entry.execution.submission = submission;
                    }
                    let changed = entry
                        .execution
                        .merge(event)
                        .then(|| entry.execution.clone());
                    let (old, new) = (entry.weight, weight(&entry.execution));
                    entry.weight = new;
                    inner.bytes = inner.bytes - old + new;
                    changed
                }
                None => {
                    let mut execution = Execution::from_event(event);
                    execution.submission = submission;
                    let w = weight(&execution);
                    inner.order.push_back((event.id, now));
                    inner.bytes += w;
                    inner.jobs.insert(
                        event.id,
                        Entry {
                            execution: execution.clone(),
                            seen: now,
                            weight: w,
                        },
                    );
                    Some(execution)
                }
            };
            self.evict(&mut inner);
            changed
        };
        if let Some(execution) = changed {
            noted(&execution);
            // No receivers is fine: nobody is waiting.
            let _ = self.changes.send(Arc::new(execution));
        }
    }

    /// Drops the oldest jobs while over the count or byte budget.
    fn evict(&self, inner: &mut Inner) {
        while (inner.jobs.len() > self.capacity || inner.bytes > self.max_bytes)
            && inner.jobs.len() > 1
        {
            let Some((old, seen)) = inner.order.pop_front() else {
                break;
            };
            if inner.jobs.get(&old).is_some_and(|e| e.seen == seen) {
                inner.remove(&old);
            }
        }
    }

    fn expire(&self, inner: &mut Inner) {
        let now = Instant::now();
        while let Some(&(id, seen)) = inner.order.front() {
            if now.duration_since(seen) < self.ttl {
                break;
            }
            inner.order.pop_front();
            if inner.jobs.get(&id).is_some_and(|e| e.seen == seen) {
                inner.remove(&id);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Uuid, status: Status) -> JobEvent {
        JobEvent {
            id,
            status,
            at_ms: 1,
            meta: JobMeta::default(),
            result: status.is_final().then(|| {
                let mut r = JobResult::new(id, status);
                r.stdout = "42\n".into();
                r
            }),
        }
    }

    #[test]
    fn states_never_move_backwards() {
        let store = StateStore::new(10, usize::MAX, Duration::from_secs(60));
        let id = Uuid::new_v4();
        store.apply(&event(id, Status::Running));
        store.apply(&event(id, Status::Queued));
        assert_eq!(store.get(id).unwrap().status, Status::Running);
        store.apply(&event(id, Status::Accepted));
        store.apply(&event(id, Status::Running));
        let e = store.get(id).unwrap();
        assert_eq!(e.status, Status::Accepted);
        assert!(e.queued_at_ms.is_some() && e.running_at_ms.is_some());
    }

    #[test]
    fn final_results_are_judged() {
        let store = StateStore::new(10, usize::MAX, Duration::from_secs(60));
        let id = Uuid::new_v4();
        let mut e = event(id, Status::Accepted);
        e.meta.expected_output = Some("41".into());
        store.apply(&e);
        let got = store.get(id).unwrap();
        assert_eq!(got.status, Status::WrongAnswer);
        assert_eq!(got.result.unwrap().status, Status::WrongAnswer);
    }

    #[test]
    fn capacity_drops_the_oldest() {
        let store = StateStore::new(2, usize::MAX, Duration::from_secs(60));
        let ids: Vec<_> = (0..3).map(|_| Uuid::new_v4()).collect();
        for id in &ids {
            store.apply(&event(*id, Status::Queued));
        }
        assert!(store.get(ids[0]).is_none());
        assert!(store.get(ids[2]).is_some());
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn the_byte_budget_drops_the_oldest_but_keeps_the_newest() {
        let store = StateStore::new(100, 10_000, Duration::from_secs(60));
        let big = |id| {
            let mut e = event(id, Status::Accepted);
            e.result.as_mut().unwrap().stdout = "x".repeat(6_000);
            e
        };
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        store.apply(&big(a));
        assert!(store.get(a).is_some());
        store.apply(&big(b));
        assert!(store.get(a).is_none(), "over budget: the oldest goes");
        assert!(store.get(b).is_some());
        let huge = Uuid::new_v4();
        let mut e = big(huge);
        e.result.as_mut().unwrap().stdout = "x".repeat(50_000);
        store.apply(&e);
        assert!(
            store.get(huge).is_some(),
            "the newest stays even alone over budget"
        );
    }

    #[test]
    fn entries_expire() {
        let store = StateStore::new(10, usize::MAX, Duration::ZERO);
        let id = Uuid::new_v4();
        store.apply(&event(id, Status::Queued));
        assert!(store.get(id).is_none());
    }

    #[test]
    fn changes_are_fed_to_subscribers() {
        let store = StateStore::new(10, usize::MAX, Duration::from_secs(60));
        let mut feed = store.subscribe();
        let id = Uuid::new_v4();
        store.apply(&event(id, Status::Queued));
        store.apply(&event(id, Status::Queued));
        store.apply(&event(id, Status::Accepted));
        assert_eq!(feed.try_recv().unwrap().status, Status::Queued);
        assert_eq!(feed.try_recv().unwrap().status, Status::Accepted);
        assert!(feed.try_recv().is_err(), "a repeated event is not a change");
    }
}
