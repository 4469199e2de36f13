//! Crashes, shutdowns and broker outages lose no job.

use std::collections::HashSet;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pod_manager::Application;
use warmpod_protocol::{Limits, Status};

use crate::helpers::{
    CuttableProxy, PodManagerProcess, TestBroker, alive, cgroups_of, job, test_config, test_env,
    unique_prefix, wait_until,
};

const WITHIN: Duration = Duration::from_secs(90);

/// A Python job that runs until told to stop by the test (a file can't be
/// shared; it sleeps a bounded time instead) and prints `done`.
fn slow_job(seconds: f64) -> warmpod_protocol::Job {
    let mut j = job(
        "python",
        &format!("import time\ntime.sleep({seconds})\nprint('done')"),
    );
    j.limits = Limits {
        wall_time_ms: Some(30_000),
        ..Limits::default()
    };
    j
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_in_flight_at_sigkill_is_redelivered_and_completes() {
    crate::helpers::init_logs();
    let prefix = unique_prefix();
    let broker = TestBroker::new(&prefix).await;
    let env = test_env(&prefix, &[("WARMPOD_POOL_SIZE", "1")]);
    let mut first = PodManagerProcess::spawn(&env);
    let j = slow_job(2.0);
    broker.publish(&j).await;
    broker.wait_event(j.id, Some(Status::Running), WITHIN).await;
    let sandboxes = first.descendants();
    let first_pid = first.pid();
    kill(Pid::from_raw(first_pid), Signal::SIGKILL).unwrap();
    first.child.wait().await.unwrap();
    wait_until("the crashed manager's sandboxes to die", WITHIN, || {
        sandboxes.iter().all(|p| !alive(*p))
    })
    .await;
    assert!(
        broker.finals(j.id).is_empty(),
        "the job did not finish before the crash"
    );

    let mut second = PodManagerProcess::spawn(&env);
    let fin = broker.wait_event(j.id, None, WITHIN).await;
    let r = fin.result.unwrap();
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (Status::Accepted, "done\n"),
        "{r:?}"
    );
    // The restarted manager removed the dead one's cgroups.
    wait_until("stale cgroups to be removed", WITHIN, || {
        cgroups_of(first_pid).is_empty()
    })
    .await;
    // ... and its runtime directory (the runner copy).
    let leftovers: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("warmpod-pm-{first_pid}-"))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    kill(Pid::from_raw(second.pid()), Signal::SIGTERM).unwrap();
    assert!(second.child.wait().await.unwrap().success());
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_job_in_flight_then_exits_cleanly() {
    crate::helpers::init_logs();
    let prefix = unique_prefix();
    let broker = TestBroker::new(&prefix).await;
    let env = test_env(&prefix, &[("WARMPOD_POOL_SIZE", "1")]);
    let mut pm = PodManagerProcess::spawn(&env);
    let running = slow_job(1.0);
    let waiting = job("python", "print('later')");
    broker.publish(&running).await;
    broker
        .wait_event(running.id, Some(Status::Running), WITHIN)
        .await;
    broker.publish(&waiting).await;
    let pid = pm.pid();
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(WITHIN, pm.child.wait())
        .await
        .expect("pod-manager exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    // Its final event was confirmed before the exit; it may still be on
    // its way to our consumer.
    let fin = broker.wait_event(running.id, None, WITHIN).await;
    assert_eq!(fin.result.unwrap().stdout, "done\n");
    assert_eq!(broker.finals(running.id).len(), 1);
    assert!(
        cgroups_of(pid).is_empty(),
        "cgroups left: {:?}",
        cgroups_of(pid)
    );
    // The job that had not started is still queued (possibly requeued).
    assert!(broker.finals(waiting.id).is_empty());
    wait_until_queued(&broker, 1).await;
    broker.cleanup().await;
}

async fn wait_until_queued(broker: &TestBroker, n: u32) {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let waiting = broker.jobs_waiting().await;
        if waiting == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} jobs queued, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_stream_loses_no_job() {
    crate::helpers::init_logs();
    let prefix = unique_prefix();
    let broker = TestBroker::new(&prefix).await;
    let proxy = CuttableProxy::start().await;
    let url = proxy.url();
    let config = test_config(&prefix, &[("WARMPOD_POOL_SIZE", "2"), ("AMQP_URL", &url)]);
    let app = Application::build(config).await.unwrap();
    let stop = app.shutdown_token();
    let task = tokio::spawn(app.run_until_stopped());

    let jobs: Vec<_> = (0..8).map(|_| slow_job(0.3)).collect();
    for j in &jobs {
        broker.publish(j).await;
    }
    // Cut twice while jobs are running and finishing.
    broker.wait_event(jobs[0].id, None, WITHIN).await;
    proxy.cut();
    wait_until("a reconnect", WITHIN, || {
        *proxy.accepted.lock().unwrap() >= 2
    })
    .await;
    broker.wait_started(jobs[3].id, WITHIN).await;
    proxy.cut();

    let mut seen = HashSet::new();
    for j in &jobs {
        let fin = broker.wait_event(j.id, None, WITHIN).await;
        let r = fin.result.unwrap();
        assert_eq!(
            (r.status, r.stdout.as_str()),
            (Status::Accepted, "done\n"),
            "{r:?}"
        );
        // Every final event of a job (a resend after an unconfirmed
        // publish is possible) carries the same result.
        for f in broker.finals(j.id) {
            assert_eq!(f.result.unwrap().stdout, "done\n");
        }
        seen.insert(j.id);
    }
    assert_eq!(seen.len(), jobs.len());
    wait_until_queued(&broker, 0).await;
    stop.cancel();
    tokio::time::timeout(WITHIN, task)
        .await
        .expect("the pod-manager stops after its broker connection came back")
        .unwrap()
        .unwrap();
    broker.cleanup().await;
}
