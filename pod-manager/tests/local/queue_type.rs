//! The jobs queue's type (`WARMPOD_JOBS_QUEUE_TYPE`) and the failed
//! deliveries count that works without a quorum queue.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pod_manager::Application;
use pod_manager::config::QueueNames;
use warmpod_protocol::queue::{FAILED_DELIVERIES_HEADER, JobsQueueType};
use warmpod_protocol::{JobMessage, Limits, Status};

use crate::broker::jobs_queue_type;
use crate::helpers::{
    PodManagerProcess, TestBroker, alive, job, test_config, test_env, unique_prefix, wait_until,
};
use crate::metrics::metrics_text;

const WITHIN: Duration = Duration::from_secs(90);

/// Runs the pod-manager binary with `env` until it exits on its own;
/// returns its exit code and stderr.
async fn run_to_exit(env: &HashMap<String, String>) -> (Option<i32>, String) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pod-manager"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting pod-manager");
    let out = tokio::time::timeout(WITHIN, child.wait_with_output())
        .await
        .expect("the pod-manager exits on its own")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_queue_is_a_classic_queue_by_default() {
    crate::helpers::init_logs();
    let prefix = unique_prefix();
    // Nobody but the pod-manager declares the topology here.
    let app = Application::build(test_config(&prefix, &[("WARMPOD_POOL_SIZE", "1")]))
        .await
        .unwrap();
    let stop = app.shutdown_token();
    let task = tokio::spawn(app.run_until_stopped());

    let declared = jobs_queue_type(&QueueNames::with_prefix(&prefix), WITHIN).await;

    assert_eq!(declared, JobsQueueType::Classic);
    // ... and it runs jobs (its topology is this suite's).
    let broker = TestBroker::new(&prefix).await;
    let j = job("python", "print('classic')");
    broker.publish(&j).await;
    let fin = broker.wait_event(j.id, None, WITHIN).await;
    assert_eq!(fin.result.unwrap().stdout, "classic\n");
    stop.cancel();
    task.await.unwrap().unwrap();
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_is_declared_when_asked_for() {
    crate::helpers::init_logs();
    let prefix = unique_prefix();
    let config = test_config(
        &prefix,
        &[
            ("WARMPOD_POOL_SIZE", "1"),
            ("WARMPOD_JOBS_QUEUE_TYPE", "quorum"),
        ],
    );
    let app = Application::build(config).await.unwrap();
    let stop = app.shutdown_token();
    let task = tokio::spawn(app.run_until_stopped());

    let declared = jobs_queue_type(&QueueNames::with_prefix(&prefix), WITHIN).await;

    assert_eq!(declared, JobsQueueType::Quorum);
    stop.cancel();
    task.await.unwrap().unwrap();
    TestBroker::with_type(&prefix, JobsQueueType::Quorum)
        .await
        .cleanup()
        .await;
}

#[tokio::test]
async fn an_unknown_queue_type_exits_64_naming_the_variable_and_the_choices() {
    let env = test_env(&unique_prefix(), &[("WARMPOD_JOBS_QUEUE_TYPE", "stream")]);

    let (code, stderr) = run_to_exit(&env).await;

    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("WARMPOD_JOBS_QUEUE_TYPE"), "{stderr}");
    assert!(stderr.contains("classic or quorum"), "{stderr}");
}

#[tokio::test]
async fn a_jobs_queue_of_the_other_type_stops_the_start_with_the_remedy() {
    let prefix = unique_prefix();
    // An existing quorum queue (as deployments before classic had), and a
    // pod-manager left at the default (classic).
    let broker = TestBroker::with_type(&prefix, JobsQueueType::Quorum).await;
    let env = test_env(&prefix, &[("WARMPOD_POOL_SIZE", "1")]);

    let (code, stderr) = run_to_exit(&env).await;

    assert_eq!(code, Some(1), "{stderr}");
    for needle in [
        "WARMPOD_JOBS_QUEUE_TYPE=quorum",
        "drain",
        "delete",
        "inequivalent arg 'x-queue-type'",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing in:\n{stderr}");
    }
    // The queue is untouched.
    assert_eq!(
        jobs_queue_type(&broker.names, WITHIN).await,
        JobsQueueType::Quorum
    );
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_delivery_is_counted_in_a_requeued_copy_then_run() {
    crate::helpers::init_logs();
    let prefix = unique_prefix();
    let broker = TestBroker::new(&prefix).await;
    let j = job("python", "print('after all')");
    broker.publish(&j).await;
    // A consumer dies holding it: back in the queue, flagged redelivered.
    broker.take_and_abandon_job().await;
    assert_eq!(broker.peek_job().await, Some((None, true)));

    let app = Application::build(test_config(&prefix, &[("WARMPOD_POOL_SIZE", "1")]))
        .await
        .unwrap();
    let stop = app.shutdown_token();
    let metrics = app.metrics_addr();
    let task = tokio::spawn(app.run_until_stopped());

    let fin = broker.wait_event(j.id, None, WITHIN).await;
    let r = fin.result.unwrap();
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (Status::Accepted, "after all\n")
    );
    assert_eq!(broker.finals(j.id).len(), 1, "run once");
    let needles = [
        "warmpod_pod_manager_deliveries_total{outcome=\"requeued\"} 1",
        "warmpod_pod_manager_deliveries_total{outcome=\"acked\"} 1",
    ];
    wait_until_metrics(metrics, &needles).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(broker.jobs_waiting().await, 0, "nothing left behind");
    broker.cleanup().await;
}

async fn wait_until_metrics(addr: std::net::SocketAddr, needles: &[&str]) {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let text = metrics_text(addr).await;
        let missing: Vec<_> = needles.iter().filter(|n| !text.contains(*n)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing:?} missing in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A job that outlives any test: its pod-manager is killed while it runs.
fn endless_job() -> warmpod_protocol::Job {
    let mut j = job("python", "import time\ntime.sleep(60)\nprint('done')");
    j.limits = Limits {
        wall_time_ms: Some(60_000),
        ..Limits::default()
    };
    j
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_killing_its_pod_manager_is_answered_after_max_attempts() {
    crate::helpers::init_logs();
    let prefix = unique_prefix();
    let broker = TestBroker::new(&prefix).await;
    let env = test_env(
        &prefix,
        &[("WARMPOD_POOL_SIZE", "1"), ("WARMPOD_MAX_ATTEMPTS", "3")],
    );
    let j = endless_job();
    broker.publish(&j).await;

    // Three deliveries, each ending with its pod-manager killed mid-job;
    // between them the message waits with the count so far.
    for delivery in 1..=3usize {
        let mut pm = PodManagerProcess::spawn(&env);
        let mut events = broker.clone_events();
        tokio::time::timeout(
            WITHIN,
            events.wait_for(|all| {
                all.iter()
                    .filter(|e| e.id == j.id && e.status == Status::Running)
                    .count()
                    == delivery
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("delivery {delivery} never ran"))
        .unwrap();
        let sandboxes = pm.descendants();
        kill(Pid::from_raw(pm.pid()), Signal::SIGKILL).unwrap();
        pm.child.wait().await.unwrap();
        wait_until("the killed manager's sandboxes to die", WITHIN, || {
            sandboxes.iter().all(|p| !alive(*p))
        })
        .await;
        wait_until_queued(&broker).await;
        let counted = (delivery > 1).then(|| delivery as i64 - 1);
        assert_eq!(
            broker.peek_job().await,
            Some((counted, true)),
            "after delivery {delivery}: the copy's count, flagged redelivered"
        );
    }

    // The fourth delivery counts 3 failed ones: answered, dead-lettered.
    let mut pm = PodManagerProcess::spawn(&env);
    let fin = broker.wait_event(j.id, None, WITHIN).await;
    assert_eq!(fin.status, Status::InternalError);
    let message = fin.result.unwrap().message.unwrap();
    assert!(message.contains("failed 3 times"), "{message}");
    let (body, headers) = broker.wait_dead_letter(WITHIN).await;
    let msg: JobMessage = serde_json::from_slice(&body).unwrap();
    assert_eq!(msg.job.id, j.id);
    assert_eq!(
        headers.inner().get(FAILED_DELIVERIES_HEADER),
        Some(&lapin::types::AMQPValue::LongLongInt(2))
    );
    assert_eq!(broker.finals(j.id).len(), 1, "one answer");
    kill(Pid::from_raw(pm.pid()), Signal::SIGTERM).unwrap();
    assert!(pm.child.wait().await.unwrap().success());
    assert_eq!(broker.jobs_waiting().await, 0);
    broker.cleanup().await;
}

async fn wait_until_queued(broker: &TestBroker) {
    let deadline = std::time::Instant::now() + WITHIN;
    while broker.jobs_waiting().await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the job never came back to the queue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
