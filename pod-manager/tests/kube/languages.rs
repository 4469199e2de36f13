//! Language pools: a Python job claims a pod of the Python pool and runs
//! on the interpreter its main process (the serving runner) pre-started;
//! other jobs, or a Python job when no Python pod is ready, take a generic
//! pod at once; a dead serving runner leaves the job to the relay, cold;
//! each Deployment's scaler follows the job mix.

use pod_manager::pool::WarmPool;
use pod_manager::pool::kube::KubePool;
use pod_manager::pool::mix::DemandMix;
use uuid::Uuid;
use warmpod_protocol::{JobResult, Status};

use crate::fake_api::{FakeApi, FakeOptions, is_ready, pods_of};
use crate::helpers::{
    fake, job, language_config, language_pool, pool_with, wait_in_flight, wait_ready,
};

/// A fake with `python` Python pods (waited for until Ready) and
/// `generic` generic ones, and a pool that knows the Python pool.
async fn cluster(python: i32, generic: i32) -> (FakeApi, KubePool) {
    let fake = fake(FakeOptions {
        replicas: generic,
        language_pools: vec![language_pool("python", python)],
        ..FakeOptions::default()
    })
    .await;
    fake.wait_for("the Python pods to be Ready (serving)", |st| {
        let pods = pods_of(st, Some("python"), "standby");
        pods.len() == python as usize && pods.iter().all(|p| is_ready(st, p))
    })
    .await;
    let (pool, _) = pool_with(&fake, language_config(&fake, "manager-1")).await;
    wait_ready(&pool, (python + generic) as u64).await;
    (fake, pool)
}

/// Prints the pid of the runner that started the interpreter and the CPU
/// the interpreter had used when the program began.
const WHO_RAN_ME: &str = "import os, time\nprint(os.getppid(), round(time.process_time() * 1000))";

fn parent_and_cpu(result: &JobResult) -> (u32, u64) {
    let mut words = result.stdout.split_whitespace();
    let parent = words.next().and_then(|w| w.parse().ok()).expect("a pid");
    let cpu = words.next().and_then(|w| w.parse().ok()).expect("a number");
    (parent, cpu)
}

#[tokio::test]
async fn a_python_job_runs_on_a_python_pods_prestarted_interpreter() {
    let (fake, pool) = cluster(1, 1).await;
    let python_pod = fake.with(|st| pods_of(st, Some("python"), "standby"))[0].clone();
    let main = fake.main_pid(&python_pod).expect("the serving runner runs");

    let job = job("python", WHO_RAN_ME);
    let claimed = pool.claim_for(job.id, "python").await.unwrap();
    assert_eq!(claimed.kind(), "specialised");
    let mut sandbox = claimed.sandbox;
    assert_eq!(sandbox.name(), python_pod);
    assert_eq!(sandbox.prestart(), Some("python"));
    let result = pool.run(&mut sandbox, &job).await.unwrap();

    assert_eq!(result.status, Status::Accepted, "{result:#?}");
    let (parent, at_start) = parent_and_cpu(&result);
    assert_eq!(parent, main, "run by the pod's main process: {result:?}");
    assert!(
        result.cpu_time_ms < at_start,
        "pre-started: the interpreter's start-up ({at_start} ms) is not charged ({} ms)",
        result.cpu_time_ms
    );
    pool.destroy(sandbox).await;
}

#[tokio::test]
async fn a_job_of_another_language_uses_a_generic_pod() {
    let (fake, pool) = cluster(1, 1).await;
    let generic_pod = fake.with(|st| pods_of(st, None, "standby"))[0].clone();

    let job = job("bash", "echo hi from bash");
    let claimed = pool.claim_for(job.id, "bash").await.unwrap();
    assert_eq!(claimed.kind(), "generic");
    let mut sandbox = claimed.sandbox;
    assert_eq!(sandbox.name(), generic_pod);
    assert_eq!(sandbox.prestart(), None);
    let result = pool.run(&mut sandbox, &job).await.unwrap();

    assert_eq!(result.status, Status::Accepted, "{result:#?}");
    assert_eq!(result.stdout, "hi from bash\n");
    pool.destroy(sandbox).await;
}

#[tokio::test]
async fn without_a_ready_python_pod_a_python_job_takes_a_generic_pod_at_once() {
    let (fake, pool) = cluster(0, 1).await;
    let generic_pod = fake.with(|st| pods_of(st, None, "standby"))[0].clone();

    let job = job("python", "print('generic')");
    let claimed = pool.claim_for(job.id, "python").await.unwrap();
    // Warm: the first pass over the pools found it, nothing was awaited.
    assert!(claimed.warm);
    assert_eq!(claimed.kind(), "generic");
    let mut sandbox = claimed.sandbox;
    assert_eq!(sandbox.name(), generic_pod);
    let result = pool.run(&mut sandbox, &job).await.unwrap();
    assert_eq!(result.stdout, "generic\n", "{result:#?}");
    pool.destroy(sandbox).await;
}

#[tokio::test]
async fn a_dead_serving_runner_leaves_the_job_to_the_relay_cold() {
    let (fake, pool) = cluster(1, 0).await;
    let job = job("python", WHO_RAN_ME);
    let mut sandbox = pool.claim_for(job.id, "python").await.unwrap().sandbox;
    let main = fake
        .main_pid(sandbox.name())
        .expect("the serving runner runs");
    fake.kill_main(sandbox.name()).await;

    let result = pool.run(&mut sandbox, &job).await.unwrap();

    assert_eq!(result.status, Status::Accepted, "{result:#?}");
    assert_eq!(result.id, job.id);
    assert_ne!(parent_and_cpu(&result).0, main, "run by the relay itself");
    pool.destroy(sandbox).await;
}

#[tokio::test]
async fn each_pools_scaler_follows_the_job_mix() {
    // No Python pod yet: Python jobs take generic pods, and the mix learns.
    let (fake, pool) = cluster(0, 1).await;
    let mut mix = DemandMix::new(&["python"]);
    for _ in 0..20 {
        let claimed = pool.claim_for(Uuid::new_v4(), "python").await.unwrap();
        mix.observe("python");
        pool.destroy(claimed.sandbox).await;
    }
    assert!((pool.demand_share("python") - mix.share("python")).abs() < 1e-9);
    wait_in_flight(&pool, 0).await;
    let scalers = pool.scalers();
    assert_eq!(
        scalers.len(),
        2,
        "the generic Deployment's, the Python one's"
    );

    // A queue of 4: the total (min 1, max 5) is split by the mix.
    let want = mix.split(4);
    assert!(want.specialised[0].1 >= 2, "{want:?}");
    assert_eq!(scalers[0].reconcile(4).await.unwrap(), want.generic as i32);
    assert_eq!(
        scalers[1].reconcile(4).await.unwrap(),
        want.specialised[0].1 as i32
    );
    let replicas = fake.with(|st| (st.replicas, st.pool_replicas["warmpod-standby-python"]));
    assert_eq!(
        replicas,
        (want.generic as i32, want.specialised[0].1 as i32)
    );

    // The mix turns to C: the Python pool shrinks again.
    for _ in 0..60 {
        let claimed = pool.claim_for(Uuid::new_v4(), "c").await.unwrap();
        mix.observe("c");
        pool.destroy(claimed.sandbox).await;
    }
    wait_in_flight(&pool, 0).await;
    let want = mix.split(4);
    assert_eq!(want.specialised[0].1, 0, "{want:?}");
    assert_eq!(scalers[1].reconcile(4).await.unwrap(), 0);
    assert_eq!(scalers[0].reconcile(4).await.unwrap(), 4);
}

#[tokio::test]
async fn runtime_versions_come_from_a_language_pools_pod_when_no_generic_pod_is_ready() {
    let (fake, pool) = cluster(1, 0).await;
    let python_pod = fake.with(|st| pods_of(st, Some("python"), "standby"))[0].clone();

    let versions = pool.runtime_versions().await.expect("versions");

    assert!(versions["python"].starts_with("Python 3"), "{versions:?}");
    // The pod stays in the pool, its serving runner untouched.
    assert!(fake.with(|st| st.claims.is_empty()));
    let job = job("python", WHO_RAN_ME);
    let mut sandbox = pool.claim_for(job.id, "python").await.unwrap().sandbox;
    assert_eq!(sandbox.name(), python_pod);
    let main = fake.main_pid(&python_pod).expect("the serving runner runs");
    let result = pool.run(&mut sandbox, &job).await.unwrap();
    assert_eq!(parent_and_cpu(&result).0, main, "{result:?}");
    pool.destroy(sandbox).await;
}
