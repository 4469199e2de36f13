//! Failures under a job: a dropped exec stream, a hung exec, a pod deleted
//! underneath the job. None may hang the job; each deletes the pod.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use pod_manager::pool::{Error, WarmPool};

use crate::fake_api::{ExecFault, FakeOptions, V4, V5};
use crate::helpers::{client, config, fake, pool_with, python};

#[tokio::test]
async fn a_dropped_exec_stream_fails_the_job_and_deletes_the_pod() {
    for protocol in [V5, V4] {
        // Arrange: a grace so long that only noticing the broken stream
        // (not the deadline) can end the run before the test times out.
        let fake = fake(FakeOptions {
            protocols: vec![protocol],
            ..FakeOptions::default()
        })
        .await;
        let mut cfg = config(&fake, "manager-1");
        cfg.exec_grace = Duration::from_secs(600);
        let (pool, _) = pool_with(&fake, cfg).await;
        let job = python("import time\ntime.sleep(2)\nprint('late')", 10_000);
        fake.inject_exec_fault(ExecFault::DropAfterStdin);

        // Act
        let mut sandbox = pool.claim(job.id).await.unwrap().sandbox;
        let name = sandbox.name().to_owned();
        let outcome = pool.run(&mut sandbox, &job).await;
        pool.destroy(sandbox).await;

        // Assert
        assert!(
            matches!(outcome, Err(Error::Io { .. })),
            "{protocol}: {outcome:?}"
        );
        assert!(
            fake.with(|st| !st.pods.contains_key(&name)),
            "{protocol}: pod deleted"
        );
        let deletes = fake.with(|st| st.requests.iter().filter(|r| r.method == "DELETE").count());
        assert_eq!(
            deletes, 1,
            "{protocol}: deleted once, by run; destroy does not repeat it"
        );
    }
}

#[tokio::test]
async fn a_hung_exec_times_out_and_deletes_the_pod() {
    let fake = fake(FakeOptions::default()).await;
    let mut cfg = config(&fake, "manager-1");
    cfg.exec_grace = Duration::from_millis(500);
    let (pool, metrics) = pool_with(&fake, cfg).await;
    let job = python("print('never runs')", 200);
    fake.inject_exec_fault(ExecFault::Hang);

    let mut sandbox = pool.claim(job.id).await.unwrap().sandbox;
    let name = sandbox.name().to_owned();
    let outcome = pool.run(&mut sandbox, &job).await;
    pool.destroy(sandbox).await;

    match outcome {
        Err(Error::Timeout(d)) => assert_eq!(d, Duration::from_millis(700), "wall limit + grace"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(fake.with(|st| !st.pods.contains_key(&name)), "pod deleted");
    assert_eq!(
        metrics.jobs_and_calls(),
        (1, 3),
        "patch, exec, delete (by run, not again by destroy)"
    );
}

#[tokio::test]
async fn a_pod_deleted_underneath_a_job_fails_it_without_hanging() {
    let fake = fake(FakeOptions::default()).await;
    let mut cfg = config(&fake, "manager-1");
    cfg.exec_grace = Duration::from_secs(600);
    let (pool, _) = pool_with(&fake, cfg).await;
    let job = python("import time\ntime.sleep(20)\nprint('late')", 30_000);
    let mut sandbox = pool.claim(job.id).await.unwrap().sandbox;
    let name = sandbox.name().to_owned();
    let run = tokio::spawn({
        let pool = pool.clone();
        async move {
            let outcome = pool.run(&mut sandbox, &job).await;
            (outcome, sandbox)
        }
    });
    fake.wait_for("the runner to start in the pod", |st| {
        st.execs_running.contains_key(&name)
    })
    .await;

    // Act: someone deletes the pod (kubectl delete pod, node drain, ...).
    let pods: Api<Pod> = Api::namespaced(client(&fake), &fake.options().namespace);
    pods.delete(&name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();

    // Assert: the job fails as an infrastructure error, destroy copes with
    // the pod being gone, and the runner process was reaped.
    let (outcome, sandbox) = run.await.unwrap();
    assert!(
        matches!(outcome, Err(Error::Protocol(_) | Error::Io { .. })),
        "{outcome:?}"
    );
    pool.destroy(sandbox).await;
    assert!(fake.with(|st| !st.pods.contains_key(&name)));
    fake.wait_for("the runner process to be gone", |st| {
        st.execs_running.is_empty()
    })
    .await;
}
