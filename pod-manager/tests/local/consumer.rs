//! Jobs through RabbitMQ into the local pool and back, in-process.

use std::collections::HashMap;
use std::time::Duration;

use lapin::types::FieldTable;
use pod_manager::Application;
use tokio_util::sync::CancellationToken;
use warmpod_protocol::Status;

use crate::helpers::{
    TestBroker, failed_deliveries_header, fake_runner, job, test_config, unique_prefix,
};
use crate::metrics::metrics_text;

const WITHIN: Duration = Duration::from_secs(90);

struct Running {
    broker: TestBroker,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics: std::net::SocketAddr,
}

async fn start(extra: &[(&str, &str)]) -> Running {
    crate::helpers::init_logs();
    let prefix = unique_prefix();
    let broker = TestBroker::new(&prefix).await;
    let app = Application::build(test_config(&prefix, extra))
        .await
        .unwrap();
    let stop = app.shutdown_token();
    let metrics = app.metrics_addr();
    let task = tokio::spawn(app.run_until_stopped());
    Running {
        broker,
        stop,
        task,
        metrics,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
        self.broker.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_jobs_give_n_correct_results_once_each() {
    let app = start(&[("WARMPOD_POOL_SIZE", "3")]).await;
    let mut expected = HashMap::new();
    for i in 0..10u32 {
        let j = if i % 2 == 0 {
            job("python", &format!("print({i} * {i})"))
        } else {
            job("bash", &format!("echo $(( {i} * {i} ))"))
        };
        expected.insert(j.id, format!("{}\n", i * i));
        app.broker.publish(&j).await;
    }
    for (id, stdout) in &expected {
        let fin = app.broker.wait_event(*id, None, WITHIN).await;
        let r = fin.result.as_ref().expect("final events carry the result");
        assert_eq!(
            (r.status, r.stdout.as_str()),
            (Status::Accepted, stdout.as_str()),
            "{r:?}"
        );
        assert_eq!(fin.meta.tag, Some(format!("tag-{id}")), "meta is echoed");
        for (name, t) in [
            ("queue_ms", r.queue_ms),
            ("claim_ms", r.claim_ms),
            ("exec_ms", r.exec_ms),
            ("total_ms", r.total_ms),
        ] {
            assert!(t.is_some(), "{name} missing: {r:?}");
        }
        assert!(r.warm.is_some());
        assert!(fin.at_ms > 0);
    }
    let events = app.broker.events();
    for id in expected.keys() {
        assert_eq!(app.broker.finals(*id).len(), 1, "one final event per job");
        assert!(
            events
                .iter()
                .any(|e| e.id == *id && e.status == Status::Running),
            "a running event per job"
        );
    }
    assert!(
        events.iter().all(|e| expected.contains_key(&e.id)),
        "no foreign events"
    );

    // Metrics are recorded just after the final event is confirmed: poll.
    let needles = [
        "warmpod_pod_manager_jobs_total{status=\"accepted\"} 10",
        "warmpod_pod_manager_phase_seconds_count{phase=\"claim\"} 10",
        "warmpod_pod_manager_phase_seconds_count{phase=\"total\"} 10",
        "warmpod_pod_manager_pool_warm_hit_ratio",
        "warmpod_pod_manager_broker_connected 1",
        "warmpod_pod_manager_deliveries_total{outcome=\"acked\"} 10",
    ];
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let metrics = metrics_text(app.metrics).await;
        let missing: Vec<_> = needles.iter().filter(|n| !metrics.contains(*n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing:?} missing in:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_and_consuming_goes_on() {
    let app = start(&[("WARMPOD_POOL_SIZE", "1")]).await;
    app.broker
        .publish_raw(b"{\"this is\": \"not a job\"}", FieldTable::default())
        .await;
    let (body, _) = app.broker.wait_dead_letter(WITHIN).await;
    assert_eq!(body, b"{\"this is\": \"not a job\"}");
    let j = job("python", "print('still here')");
    app.broker.publish(&j).await;
    let fin = app.broker.wait_event(j.id, None, WITHIN).await;
    assert_eq!(fin.result.unwrap().stdout, "still here\n");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_asking_for_a_fast_reply_gets_it_besides_the_final_event() {
    let app = start(&[("WARMPOD_POOL_SIZE", "1")]).await;
    let j = job("python", "print('fast')");
    let mut replies = app.broker.publish_for_reply(&j).await;

    let reply = replies.next(WITHIN).await;
    let event = app.broker.wait_event(j.id, None, WITHIN).await;

    assert_eq!(reply.id, j.id);
    assert_eq!(reply.status, Status::Accepted);
    assert_eq!(reply.result.as_ref().unwrap().stdout, "fast\n");
    assert_eq!(reply, event, "the fast reply is a copy of the final event");
    assert_eq!(app.broker.finals(j.id).len(), 1, "one final event, as ever");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_delivered_too_often_is_answered_and_dead_lettered() {
    let app = start(&[("WARMPOD_POOL_SIZE", "1"), ("WARMPOD_MAX_ATTEMPTS", "3")]).await;
    let j = job("python", "print('never runs')");
    app.broker
        .publish_with(&j, failed_deliveries_header(3))
        .await;
    let fin = app.broker.wait_event(j.id, None, WITHIN).await;
    assert_eq!(fin.status, Status::InternalError);
    let r = fin.result.unwrap();
    assert!(r.message.unwrap().contains("failed 3 times"));
    let (body, _) = app.broker.wait_dead_letter(WITHIN).await;
    let msg: warmpod_protocol::JobMessage = serde_json::from_slice(&body).unwrap();
    assert_eq!(msg.job.id, j.id);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_versions_are_announced() {
    let app = start(&[("WARMPOD_POOL_SIZE", "1")]).await;
    let v = app.broker.wait_versions(WITHIN).await;
    for lang in ["python", "javascript", "c", "cpp", "java", "bash"] {
        assert!(v["versions"][lang].is_string(), "{lang} missing: {v}");
    }
    assert!(v["at_ms"].as_u64().unwrap() > 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sandbox_is_retried_once_then_internal_error() {
    let dir = tempfile::tempdir().unwrap();
    // Answers --versions, but dies on every job.
    let fake = fake_runner(
        dir.path(),
        "if [ \"$1\" = --versions ]; then echo '{}'; exit 0; fi\nread -r line\nexit 3\n",
    );
    let app = start(&[
        ("WARMPOD_POOL_SIZE", "1"),
        ("WARMPOD_RUNNER_PATH", fake.to_str().unwrap()),
    ])
    .await;
    let j = job("python", "print(1)");
    app.broker.publish(&j).await;
    let fin = app.broker.wait_event(j.id, None, WITHIN).await;
    assert_eq!(fin.status, Status::InternalError);
    let message = fin.result.unwrap().message.unwrap();
    assert!(message.contains("failed twice"), "{message}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sandbox_is_time_limit_exceeded_without_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    // Answers --versions, but never answers a job (a runner held up by
    // its program).
    let fake = fake_runner(
        dir.path(),
        "if [ \"$1\" = --versions ]; then echo '{}'; exit 0; fi\nread -r line\nexec sleep 1000\n",
    );
    let app = start(&[
        ("WARMPOD_POOL_SIZE", "1"),
        ("WARMPOD_RUNNER_PATH", fake.to_str().unwrap()),
        ("WARMPOD_JOB_GRACE_MS", "200"),
    ])
    .await;
    let mut j = job("python", "print(1)");
    j.limits.wall_time_ms = Some(300);
    app.broker.publish(&j).await;
    let fin = app.broker.wait_event(j.id, None, WITHIN).await;
    assert_eq!(fin.status, Status::TimeLimitExceeded);
    let message = fin.result.unwrap().message.unwrap();
    assert!(message.contains("did not answer"), "{message}");

    // Metrics are recorded just after the final event is confirmed: poll
    // for the verdict, then check that only one sandbox was claimed.
    let verdict = "warmpod_pod_manager_jobs_total{status=\"time_limit_exceeded\"} 1";
    let deadline = std::time::Instant::now() + WITHIN;
    let metrics = loop {
        let metrics = metrics_text(app.metrics).await;
        if metrics.contains(verdict) {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{verdict} missing in:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        metrics.contains("warmpod_pod_manager_phase_seconds_count{phase=\"claim\"} 1\n"),
        "the job must not be retried on a second sandbox:\n{metrics}"
    );
    app.stop().await;
}
