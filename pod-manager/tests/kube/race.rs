//! Managers racing for the same pods never double-claim.

use std::collections::{BTreeMap, BTreeSet};

use pod_manager::pool::WarmPool;
use uuid::Uuid;

use crate::fake_api::{FakeApi, FakeOptions};
use crate::helpers::{fake, pool, wait_ready};

fn assert_each_pod_claimed_once(fake: &FakeApi, expected: usize) {
    let claims = fake.with(|st| st.claims.clone());
    assert_eq!(claims.len(), expected, "successful claims");
    let mut per_pod: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &claims {
        *per_pod.entry(c.pod.as_str()).or_default() += 1;
    }
    let doubles: Vec<_> = per_pod.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubles.is_empty(),
        "pods claimed more than once: {doubles:?}"
    );
}

#[tokio::test]
async fn a_manager_that_loses_a_race_takes_the_next_pod() {
    // Arrange: one pod, seen by both managers; B's watch is frozen so it
    // still believes the pod is standby after A claimed it.
    let fake = fake(FakeOptions {
        replicas: 1,
        ..FakeOptions::default()
    })
    .await;
    let (a, _) = pool(&fake, "manager-a").await;
    let (b, b_metrics) = pool(&fake, "manager-b").await;
    wait_ready(&a, 1).await;
    wait_ready(&b, 1).await;
    fake.freeze_watches();

    // Act
    let won = a.claim(Uuid::new_v4()).await.unwrap().sandbox;
    let b_claim = tokio::spawn({
        let b = b.clone();
        async move { b.claim(Uuid::new_v4()).await }
    });
    fake.wait_for("B's losing PATCH", |st| {
        st.requests.iter().filter(|r| r.method == "PATCH").count() == 2
    })
    .await;
    fake.thaw_watches();
    let got = b_claim
        .await
        .unwrap()
        .expect("B claims the replacement pod");

    // Assert
    assert_ne!(won.name(), got.sandbox.name());
    assert_eq!(b_metrics.claim_conflicts(), 1, "B got a 422 and moved on");
    assert!(!got.warm, "B had to wait for the replacement");
    assert_each_pod_claimed_once(&fake, 2);
    a.destroy(won).await;
    b.destroy(got.sandbox).await;
}

#[tokio::test]
async fn many_concurrent_claims_from_three_managers_never_double_claim() {
    const PER_MANAGER: usize = 12;
    let fake = fake(FakeOptions {
        replicas: 6,
        ..FakeOptions::default()
    })
    .await;
    let mut pools = Vec::new();
    for m in ["manager-a", "manager-b", "manager-c"] {
        let (p, metrics) = pool(&fake, m).await;
        wait_ready(&p, 6).await;
        pools.push((m, p, metrics));
    }

    // Act: every manager claims concurrently; each claimed pod is destroyed
    // at once so the ReplicaSet keeps refilling.
    let mut tasks = Vec::new();
    for (m, p, _) in &pools {
        for _ in 0..PER_MANAGER {
            let (m, p) = (m.to_string(), p.clone());
            tasks.push(tokio::spawn(async move {
                let job = Uuid::new_v4();
                let claimed = p.claim(job).await.expect("claim");
                let pod = claimed.sandbox.name().to_owned();
                p.destroy(claimed.sandbox).await;
                (m, pod, job)
            }));
        }
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }

    // Assert: every claim got its own pod, and the fake agrees on who.
    assert_each_pod_claimed_once(&fake, 3 * PER_MANAGER);
    let pods: BTreeSet<_> = got.iter().map(|(_, pod, _)| pod.clone()).collect();
    assert_eq!(pods.len(), got.len(), "distinct pods");
    let records = fake.with(|st| st.claims.clone());
    for (m, pod, job) in &got {
        let r = records
            .iter()
            .find(|r| &r.pod == pod)
            .expect("claim recorded");
        assert_eq!((&r.claimed_by, &r.job), (m, &job.to_string()));
    }
    let conflicts: u64 = pools
        .iter()
        .map(|(_, _, metrics)| metrics.claim_conflicts())
        .sum();
    eprintln!("claim conflicts resolved: {conflicts}");
}

#[tokio::test]
async fn the_api_answers_422_to_a_failed_test_and_409_to_a_stale_resource_version() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, Patch, PatchParams};
    use pod_manager::pool::kube::claim::{claim_patch, lost_race};

    let fake = fake(FakeOptions {
        replicas: 1,
        ..FakeOptions::default()
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(crate::helpers::client(&fake), &fake.options().namespace);
    let name = fake.with(|st| st.pods.keys().next().cloned()).unwrap();
    let patch = |p: json_patch::Patch| Patch::Json::<()>(p);
    let now = k8s_openapi::jiff::Timestamp::now();
    let code = |e: kube::Error| match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other}"),
    };

    // The first claim wins; the same patch again fails its `test` op.
    pods.patch(
        &name,
        &PatchParams::default(),
        &patch(claim_patch(false, Uuid::new_v4(), "a", now)),
    )
    .await
    .unwrap();
    let err = pods
        .patch(
            &name,
            &PatchParams::default(),
            &patch(claim_patch(true, Uuid::new_v4(), "b", now)),
        )
        .await
        .unwrap_err();
    let failed_test = code(err);
    // A patch carrying a stale resourceVersion conflicts.
    let stale: json_patch::Patch = serde_json::from_value(
        serde_json::json!([{"op": "replace", "path": "/metadata/resourceVersion", "value": "1"}]),
    )
    .unwrap();
    let err = pods
        .patch(&name, &PatchParams::default(), &patch(stale))
        .await
        .unwrap_err();
    let conflict = code(err);

    assert_eq!((failed_test, conflict), (422, 409));
    assert!(lost_race(Some(failed_test)) && lost_race(Some(conflict)));
    assert_each_pod_claimed_once(&fake, 1);
}
