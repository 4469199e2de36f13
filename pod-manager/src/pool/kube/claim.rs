//! Claiming a standby pod: one JSON patch, guarded by a `test` op.
//!
//! The patch's first op tests that the state label is still `standby`; the
//! API server applies a JSON patch atomically against the stored object, so
//! when two managers patch the same pod the second test fails and the API
//! server answers 422 (or 409 on a resourceVersion conflict). The loser
//! marks the pod as taken and tries the next one. The standby sets are
//! tried in the caller's order of preference (the job's language pool, then
//! the generic pool, then the other languages' pools), every ready pod of
//! one before the next set; with no ready pod in any, the claim waits for a
//! reflector to report one (a cold claim), never for a particular set.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::debug;
use uuid::Uuid;

use super::standby::StandbySet;
use super::{KubeMetrics, api_code, kube_error, labels};
use crate::pool::{Error, Result};

/// What a successful claim got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimOutcome {
    /// The claimed pod.
    pub pod: String,
    /// Index (in the caller's order) of the standby set it came from.
    pub set: usize,
    /// Whether a ready pod was there at once.
    pub warm: bool,
    /// PATCH calls it took (1 unless another manager won a race).
    pub attempts: u32,
}

/// The claim patch: `test` state = standby, `replace` it with claimed, add
/// the job and manager labels and the claimed-at annotation. When the pod
/// has no annotations yet the whole map is added (adding a key under a
/// missing map would fail).
pub fn claim_patch(
    has_annotations: bool,
    job: Uuid,
    manager: &str,
    now: Timestamp,
) -> json_patch::Patch {
    let state = labels::pointer("labels", labels::STATE);
    let claimed_at = if has_annotations {
        json!({"op": "add", "path": labels::pointer("annotations", labels::CLAIMED_AT), "value": now.to_string()})
    } else {
        json!({"op": "add", "path": "/metadata/annotations", "value": {labels::CLAIMED_AT: now.to_string()}})
    };
    let ops = json!([
        {"op": "test", "path": state, "value": labels::STANDBY},
        {"op": "replace", "path": state, "value": labels::CLAIMED},
        {"op": "add", "path": labels::pointer("labels", labels::JOB), "value": job.to_string()},
        {"op": "add", "path": labels::pointer("labels", labels::CLAIMED_BY), "value": labels::label_value(manager)},
        claimed_at,
    ]);
    serde_json::from_value::<json_patch::Patch>(ops)
        .expect("the claim patch is a well-formed JSON patch")
}

/// Whether a failed claim PATCH means "this pod is not ours to take"
/// (another manager won, or the pod is gone) rather than a failure.
pub fn lost_race(code: Option<u16>) -> bool {
    matches!(code, Some(404 | 409 | 422))
}

/// Claims a standby pod of `sets` (tried in that order) for `job`,
/// waiting for one when none is ready.
///
/// # Errors
/// [`Error::Closed`] when `shutdown` fires; an API failure other than a lost
/// race (e.g. the API server is unreachable or forbids the patch).
pub async fn claim(
    pods: &Api<Pod>,
    sets: &[&StandbySet],
    manager: &str,
    job: Uuid,
    metrics: &KubeMetrics,
    shutdown: &CancellationToken,
) -> Result<ClaimOutcome> {
    let mut changes: Vec<_> = sets.iter().map(|s| s.subscribe()).collect();
    let mut attempts = 0;
    let mut warm = true;
    loop {
        if shutdown.is_cancelled() {
            return Err(Error::Closed);
        }
        for c in &mut changes {
            c.borrow_and_update();
        }
        for (set, standby) in sets.iter().enumerate() {
            if let Some(pod) =
                claim_from(pods, standby, manager, job, metrics, &mut attempts).await?
            {
                return Ok(ClaimOutcome {
                    pod,
                    set,
                    warm,
                    attempts,
                });
            }
        }
        warm = false;
        let any_change =
            futures::future::select_all(changes.iter_mut().map(|c| Box::pin(c.changed())));
        tokio::select! {
            (changed, _, _) = any_change => changed.map_err(|_| Error::Closed)?,
            () = shutdown.cancelled() => return Err(Error::Closed),
        }
    }
}

/// Tries every ready pod of `standby` once, counting PATCH calls in
/// `attempts`: the claimed pod's name, or `None` when every one was taken.
async fn claim_from(
    pods: &Api<Pod>,
    standby: &StandbySet,
    manager: &str,
    job: Uuid,
    metrics: &KubeMetrics,
    attempts: &mut u32,
) -> Result<Option<String>> {
    for pod in standby.candidates(job) {
        let name = pod.name_any();
        if !standby.reserve(&name) {
            continue;
        }
        *attempts += 1;
        metrics.api_call("patch");
        let patch = claim_patch(
            pod.metadata.annotations.is_some(),
            job,
            manager,
            Timestamp::now(),
        );
        match pods
            .patch(&name, &PatchParams::default(), &Patch::Json::<Value>(patch))
            .await
        {
            Ok(_) => return Ok(Some(name)),
            Err(e) if lost_race(api_code(&e)) => {
                metrics.claim_conflict();
                debug!(pod = %name, %job, error = %e, "lost the claim race; trying the next pod");
            }
            Err(e) => {
                standby.release(&name);
                return Err(kube_error(format!("claiming pod {name}"), e));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby_pod(annotations: Option<Value>) -> Value {
        let mut pod = json!({"metadata": {"name": "p", "labels": {labels::STATE: labels::STANDBY, labels::POOL: "default"}}});
        if let Some(a) = annotations {
            pod["metadata"]["annotations"] = a;
        }
        pod
    }

    #[test]
    fn first_op_tests_the_state_label() {
        let patch =
            serde_json::to_value(claim_patch(true, Uuid::nil(), "m", Timestamp::UNIX_EPOCH))
                .unwrap();
        assert_eq!(patch[0]["op"], "test");
        assert_eq!(patch[0]["path"], "/metadata/labels/warmpod.io~1state");
        assert_eq!(patch[0]["value"], "standby");
    }

    #[test]
    fn patch_relabels_a_standby_pod() {
        for annotations in [None, Some(json!({"other": "x"}))] {
            let mut pod = standby_pod(annotations.clone());
            let job = Uuid::from_u128(7);
            json_patch::patch(
                &mut pod,
                &claim_patch(annotations.is_some(), job, "mgr-1", Timestamp::UNIX_EPOCH),
            )
            .unwrap();
            let l = &pod["metadata"]["labels"];
            assert_eq!(l[labels::STATE], "claimed");
            assert_eq!(l[labels::JOB], job.to_string());
            assert_eq!(l[labels::CLAIMED_BY], "mgr-1");
            assert_eq!(l[labels::POOL], "default", "other labels kept");
            assert_eq!(
                pod["metadata"]["annotations"][labels::CLAIMED_AT],
                "1970-01-01T00:00:00Z"
            );
            if annotations.is_some() {
                assert_eq!(
                    pod["metadata"]["annotations"]["other"], "x",
                    "other annotations kept"
                );
            }
        }
    }

    #[test]
    fn a_second_claim_of_the_same_pod_fails_its_test() {
        let mut pod = standby_pod(None);
        json_patch::patch(
            &mut pod,
            &claim_patch(false, Uuid::from_u128(1), "a", Timestamp::UNIX_EPOCH),
        )
        .unwrap();
        let before = pod.clone();
        let err = json_patch::patch(
            &mut pod,
            &claim_patch(true, Uuid::from_u128(2), "b", Timestamp::UNIX_EPOCH),
        )
        .unwrap_err();
        assert!(
            matches!(err.kind, json_patch::PatchErrorKind::TestFailed),
            "{err}"
        );
        assert_eq!(pod, before, "a failed patch changes nothing");
    }

    #[test]
    fn lost_races_are_told_from_failures() {
        for code in [404, 409, 422] {
            assert!(lost_race(Some(code)), "{code}");
        }
        for code in [Some(403), Some(500), None] {
            assert!(!lost_race(code), "{code:?}");
        }
    }
}
