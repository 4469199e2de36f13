//! The in-memory set of standby pods, kept by a kube-runtime reflector.
//!
//! One watch per pool kind (label selector `app.kubernetes.io/name=warmpod-standby,
//! warmpod.io/pool=<pool>,warmpod.io/state=standby`, plus the
//! `warmpod.io/language` requirement of the generic or a language's pods)
//! feeds a reflector store, so a claim picks a pod from memory and never
//! lists. A pod that is
//! claimed (by anyone) stops matching the selector and leaves the store when
//! its watch event arrives; until then the claim's `test` op protects it.

use std::collections::HashSet;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use uuid::Uuid;

use super::labels;
use crate::pool::{Error, Result};

/// Ready and starting standby pods, as last seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Claimable now.
    pub ready: u64,
    /// Not ready yet (and not terminating).
    pub starting: u64,
}

/// The reflector-backed standby set of one pool.
pub struct StandbySet {
    store: Store<Pod>,
    /// Bumped on every watch event; claims wait on it when no pod is ready.
    changes: watch::Receiver<u64>,
    /// Pods this manager claimed, is claiming, or lost to another manager:
    /// never tried (again) while they are still in the store.
    taken: Mutex<HashSet<String>>,
}

impl StandbySet {
    /// Starts the watch of the standby pods `selector` picks (see
    /// [`labels::generic_selector`], [`labels::language_selector`]); it
    /// stops when `shutdown` fires. Watch errors are retried with
    /// kube-runtime's default backoff.
    pub fn start(pods: Api<Pod>, selector: &str, shutdown: CancellationToken) -> Self {
        let (store, changes) = reflect(pods, selector, shutdown);
        Self {
            store,
            changes,
            taken: Mutex::new(HashSet::new()),
        }
    }

    /// A receiver that changes on every watch event.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Claimable pods not taken by this manager, in an order rotated by
    /// `job` so that concurrent claims (here and in other managers) spread
    /// over the pool instead of all trying the same pod first.
    pub fn candidates(&self, job: Uuid) -> Vec<Arc<Pod>> {
        let pods = self.store.state();
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget pods that left the store: their name will not come back.
        taken.retain(|name| pods.iter().any(|p| p.name_any() == *name));
        let mut out: Vec<_> = pods
            .into_iter()
            .filter(|p| is_claimable(p) && !taken.contains(&p.name_any()))
            .collect();
        out.sort_by_key(|p| p.name_any());
        if !out.is_empty() {
            let n = out.len();
            out.rotate_left((job.as_u128() % n as u128) as usize);
        }
        out
    }

    /// Marks `name` as taken by this manager; `false` if it already was
    /// (another claim of ours is on it).
    pub fn reserve(&self, name: &str) -> bool {
        self.taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned())
    }

    /// Undoes [`reserve`](Self::reserve) after a claim failed for a reason
    /// that says nothing about the pod (e.g. the API server was down).
    pub fn release(&self, name: &str) {
        self.taken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// Ready and starting pods.
    pub fn counts(&self) -> Counts {
        let taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        let mut counts = Counts::default();
        for pod in self.store.state() {
            if is_claimable(&pod) {
                if !taken.contains(&pod.name_any()) {
                    counts.ready += 1;
                }
            } else if pod.metadata.deletion_timestamp.is_none() {
                counts.starting += 1;
            }
        }
        counts
    }
}

/// The name of some ready pod of `sets`, waiting for one if needed.
///
/// # Errors
/// [`Error::Closed`] when `shutdown` fires first.
pub async fn wait_any_ready(sets: &[&StandbySet], shutdown: &CancellationToken) -> Result<String> {
    let mut changes: Vec<_> = sets.iter().map(|s| s.subscribe()).collect();
    loop {
        for c in &mut changes {
            c.borrow_and_update();
        }
        let ready = sets
            .iter()
            .find_map(|s| s.candidates(Uuid::nil()).first().map(|p| p.name_any()));
        if let Some(pod) = ready {
            return Ok(pod);
        }
        let any_change =
            futures::future::select_all(changes.iter_mut().map(|c| Box::pin(c.changed())));
        tokio::select! {
            (changed, _, _) = any_change => changed.map_err(|_| Error::Closed)?,
            () = shutdown.cancelled() => return Err(Error::Closed),
        }
        if shutdown.is_cancelled() {
            return Err(Error::Closed);
        }
    }
}

/// Keeps a reflector store of the pods matching `selector` until
/// `shutdown` fires; the receiver changes on every watch event (and once
/// more when the watch stops). Watch errors are retried with
/// kube-runtime's default backoff.
pub fn reflect(
    pods: Api<Pod>,
    selector: &str,
    shutdown: CancellationToken,
) -> (Store<Pod>, watch::Receiver<u64>) {
    let (store, writer) = reflector::store();
    let (tx, changes) = watch::channel(0u64);
    let config = watcher::Config::default().labels(selector);
    let stream = reflector::reflector(writer, watcher(pods, config)).default_backoff();
    let selector = selector.to_owned();
    tokio::spawn(async move {
        let mut stream = pin!(stream);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                event = stream.next() => match event {
                    Some(Ok(_)) => tx.send_modify(|n| *n += 1),
                    Some(Err(e)) => warn!(error = %e, %selector, "pod watch failed; retrying"),
                    None => break,
                },
            }
        }
        // Wake waiters so they see the shutdown.
        tx.send_modify(|n| *n += 1);
    });
    (store, changes)
}

/// Claimed pods of the pool that are not terminating: the jobs running
/// now, across every manager.
pub fn running(claimed: &Store<Pod>) -> u64 {
    claimed
        .state()
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count() as u64
}

/// Whether `pod` can be claimed: labelled standby, running, Ready and not
/// terminating.
pub fn is_claimable(pod: &Pod) -> bool {
    let standby = pod
        .labels()
        .get(labels::STATE)
        .is_some_and(|s| s == labels::STANDBY);
    let status = pod.status.as_ref();
    let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    standby && running && ready && pod.metadata.deletion_timestamp.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(state: &str, phase: &str, ready: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "labels": {labels::STATE: state}},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]},
        }))
        .unwrap()
    }

    #[test]
    fn only_ready_running_standby_pods_are_claimable() {
        assert!(is_claimable(&pod("standby", "Running", "True")));
        let cases = [
            (pod("claimed", "Running", "True"), "claimed"),
            (pod("standby", "Pending", "False"), "pending"),
            (pod("standby", "Running", "False"), "not ready"),
        ];
        for (p, why) in cases {
            assert!(!is_claimable(&p), "{why}");
        }
        let mut terminating = pod("standby", "Running", "True");
        terminating.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert!(!is_claimable(&terminating), "terminating");
    }
}
