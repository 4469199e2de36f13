//! The happy path: claim → exec → result → delete, over v5 and v4.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use pod_manager::pool::WarmPool;
use serde_json::json;
use warmpod_protocol::{Job, Limits, SourceFile, Status};

use crate::fake_api::{FakeOptions, V4, V5, pods_in_state};
use crate::helpers::{client, fake, pool, python};

/// Requests of `method` on `path`.
fn count(fake: &crate::fake_api::FakeApi, method: &str, path: &str) -> usize {
    fake.with(|st| {
        st.requests
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    })
}

#[tokio::test]
async fn a_job_is_claimed_run_and_deleted_in_three_api_calls() {
    // Arrange
    let fake = fake(FakeOptions::default()).await;
    let (pool, metrics) = pool(&fake, "manager-1").await;
    let mut job = python(
        "import sys\nprint('hello', sys.stdin.read().strip())",
        10_000,
    );
    job.stdin = "world\n".into();

    // Act
    let claimed = pool.claim(job.id).await.expect("claim");
    let mut sandbox = claimed.sandbox;
    let name = sandbox.name().to_owned();
    let result = pool.run(&mut sandbox, &job).await.expect("run");
    pool.destroy(sandbox).await;

    // Assert: the runner's real result came back.
    assert_eq!(result.id, job.id);
    assert_eq!(result.status, Status::Accepted, "{result:?}");
    assert_eq!(result.stdout, "hello world\n");
    // The pod was claimed once, by us, for this job, and is gone.
    let claims = fake.with(|st| st.claims.clone());
    assert_eq!(claims.len(), 1);
    assert_eq!(
        (claims[0].pod.as_str(), claims[0].claimed_by.as_str()),
        (name.as_str(), "manager-1")
    );
    assert_eq!(claims[0].job, job.id.to_string());
    assert!(fake.with(|st| !st.pods.contains_key(&name)), "pod deleted");
    // Exactly three calls for the job: patch, exec, delete.
    let pod_path = format!(
        "/api/v1/namespaces/{}/pods/{name}",
        fake.options().namespace
    );
    assert_eq!(count(&fake, "PATCH", &pod_path), 1);
    assert_eq!(count(&fake, "GET", &format!("{pod_path}/exec")), 1);
    assert_eq!(count(&fake, "DELETE", &pod_path), 1);
    assert_eq!(metrics.jobs_and_calls(), (1, 3));
    // No LIST per job: the standby set is listed once by the reflector (and
    // once at start-up as a check); the janitor lists claimed pods on its own clock.
    let standby_lists = fake.with(|st| {
        st.requests
            .iter()
            .filter(|r| {
                r.method == "GET"
                    && r.path.ends_with("/pods")
                    && !r.watch
                    && !r.selector.contains("state=claimed")
            })
            .count()
    });
    assert_eq!(
        standby_lists,
        2,
        "{:#?}",
        fake.with(|st| st.requests.clone())
    );
    // The ReplicaSet refilled the pool.
    fake.wait_for("two standby pods again", |st| {
        pods_in_state(st, "standby").len() == 2
    })
    .await;
}

#[tokio::test]
async fn a_v4_only_server_runs_compiled_jobs_too() {
    let fake = fake(FakeOptions {
        protocols: vec![V4],
        ..FakeOptions::default()
    })
    .await;
    let (pool, _) = pool(&fake, "manager-1").await;
    let job = Job {
        id: uuid::Uuid::new_v4(),
        language: "c".into(),
        files: vec![SourceFile {
            name: String::new(),
            content: "#include <stdio.h>\nint main(void){printf(\"%d\\n\", 6*7);return 0;}\n"
                .into(),
        }],
        stdin: String::new(),
        args: vec![],
        limits: Limits::default(),
        compile_limits: Limits::default(),
    };

    let mut sandbox = pool.claim(job.id).await.unwrap().sandbox;
    let result = pool.run(&mut sandbox, &job).await.expect("run over v4");
    pool.destroy(sandbox).await;

    assert_eq!(result.status, Status::Accepted, "{result:?}");
    assert_eq!(result.stdout, "42\n");
}

#[tokio::test]
async fn user_program_failures_are_results_not_pool_errors() {
    let fake = fake(FakeOptions {
        protocols: vec![V5],
        ..FakeOptions::default()
    })
    .await;
    let (pool, _) = pool(&fake, "manager-1").await;
    let cases = [
        (
            python("raise SystemExit(3)", 10_000),
            Status::RuntimeError,
            "non-zero exit",
        ),
        (
            python("while True:\n    pass", 500),
            Status::TimeLimitExceeded,
            "the runner's own time limit",
        ),
    ];
    for (job, want, why) in cases {
        let mut sandbox = pool.claim(job.id).await.unwrap().sandbox;
        let result = pool
            .run(&mut sandbox, &job)
            .await
            .unwrap_or_else(|e| panic!("{why}: {e:?}"));
        let name = sandbox.name().to_owned();
        pool.destroy(sandbox).await;
        assert_eq!(result.status, want, "{why}: {result:?}");
        assert!(
            fake.with(|st| !st.pods.contains_key(&name)),
            "{why}: pod deleted"
        );
    }
}

#[tokio::test]
async fn a_claim_waits_for_a_pod_when_the_pool_is_empty() {
    // Arrange: no standby pod at all.
    let fake = fake(FakeOptions {
        replicas: 0,
        ..FakeOptions::default()
    })
    .await;
    let (pool, _) = pool(&fake, "manager-1").await;
    let job = python("print(1)", 10_000);
    let claim = tokio::spawn({
        let pool = pool.clone();
        async move { pool.claim(job.id).await }
    });
    fake.wait_for("the reflector's watch", |st| {
        st.requests.iter().any(|r| r.watch)
    })
    .await;

    // Act: the Deployment is scaled up (by an operator, here).
    let deployments: Api<Deployment> = Api::namespaced(client(&fake), &fake.options().namespace);
    deployments
        .patch_scale(
            &fake.options().deployment,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();

    // Assert
    let claimed = claim.await.unwrap().expect("claim after the pod appeared");
    assert!(!claimed.warm, "the claim had to wait: cold");
    assert_eq!(pool.stats().cold_claims, 1);
    pool.destroy(claimed.sandbox).await;
}

#[tokio::test]
async fn runtime_versions_are_read_from_a_standby_pod_without_claiming_it() {
    let fake = fake(FakeOptions::default()).await;
    let (pool, _) = pool(&fake, "manager-1").await;

    let versions = pool.runtime_versions().await.expect("versions");

    assert!(
        versions.get("python").is_some_and(|v| v.contains("Python")),
        "{versions:?}"
    );
    assert!(fake.with(|st| st.claims.is_empty()), "no pod claimed");
    assert_eq!(fake.with(|st| pods_in_state(st, "standby").len()), 2);
}

#[tokio::test]
async fn claims_fail_once_the_pool_shuts_down() {
    let fake = fake(FakeOptions {
        replicas: 0,
        ..FakeOptions::default()
    })
    .await;
    let (pool, _) = pool(&fake, "manager-1").await;
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { pool.claim(uuid::Uuid::new_v4()).await }
    });

    pool.shutdown().await;

    assert!(matches!(
        waiting.await.unwrap(),
        Err(pod_manager::pool::Error::Closed)
    ));
    assert!(matches!(
        pool.claim(uuid::Uuid::new_v4()).await,
        Err(pod_manager::pool::Error::Closed)
    ));
}

#[tokio::test]
async fn a_large_result_crosses_many_frames_intact() {
    let fake = fake(FakeOptions::default()).await;
    let (pool, _) = pool(&fake, "manager-1").await;
    let mut job = python("import sys\nsys.stdout.write('ab' * 1_500_000)", 10_000);
    job.limits.max_output_bytes = Some(4 * 1024 * 1024);

    let mut sandbox = pool.claim(job.id).await.unwrap().sandbox;
    let result = pool.run(&mut sandbox, &job).await.expect("run");
    pool.destroy(sandbox).await;

    assert_eq!(result.status, Status::Accepted, "{}", result.stderr);
    assert_eq!(result.stdout.len(), 3_000_000);
    assert!(
        result
            .stdout
            .bytes()
            .enumerate()
            .all(|(i, b)| b == if i % 2 == 0 { b'a' } else { b'b' })
    );
}
