//! A full queue answers 429 with Retry-After; a dead broker 503.

use serde_json::Value;

use crate::helpers::{Options, job, spawn_app_with};

#[tokio::test]
async fn full_queue_answers_429_with_retry_after() {
    // No pod-manager: nothing drains the one-slot queue.
    let app = spawn_app_with(Options {
        queue_max_length: Some(1),
        ..Options::without_pod_manager()
    })
    .await;

    let first = app
        .post_json("/v1/executions", &job("python", "print(1)"))
        .await;
    assert_eq!(first.status(), 202, "the first job fits");
    let first: Value = first.json().await.unwrap();

    // A quorum queue checks its limit when a message arrives, so it may
    // take one over the limit before it refuses; it must refuse soon.
    let mut refused = None;
    for i in 2..=4 {
        let r = app
            .post_json("/v1/executions", &job("python", &format!("print({i})")))
            .await;
        if r.status() == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status(), 202);
    }
    let refused = refused.expect("the full queue refused a job");
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "queue_full");

    // The accepted job is still known and queued; the refused one is not.
    let state: Value = app
        .get(&format!("/v1/executions/{}", first["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(state["status"], "queued");

    let judge0 = app
        .post_json(
            "/submissions",
            &serde_json::json!({"language_id": 71, "source_code": "print(3)"}),
        )
        .await;
    assert_eq!(judge0.status(), 429, "every façade shares the backpressure");
}

#[tokio::test]
async fn a_batch_meeting_a_full_queue_names_the_jobs_it_queued() {
    let app = spawn_app_with(Options {
        queue_max_length: Some(1),
        ..Options::without_pod_manager()
    })
    .await;

    let jobs: Vec<Value> = (0..4)
        .map(|i| job("python", &format!("print({i})")))
        .collect();
    let r = app
        .post_json(
            "/v1/executions/batch",
            &serde_json::json!({"executions": jobs}),
        )
        .await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "queue_full");
    let accepted = body["accepted"]
        .as_array()
        .expect("the first job was queued");
    assert!((1..4).contains(&accepted.len()), "{body}");
    for id in accepted {
        let state: Value = app
            .get(&format!("/v1/executions/{}", id.as_str().unwrap()))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            state["status"], "queued",
            "an accepted id is a real queued job"
        );
    }
}

#[tokio::test]
async fn broker_down_answers_503_and_is_not_ready() {
    let app = spawn_app_with(Options {
        amqp_url: Some("amqp://guest:guest@127.0.0.1:1/%2f".into()),
        ..Options::without_pod_manager()
    })
    .await;

    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "alive without a broker"
    );
    assert_eq!(app.get("/readyz").await.status(), 503);
    let r = app
        .post_json("/v1/executions", &job("python", "print(1)"))
        .await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "unavailable");
}

#[tokio::test]
async fn reconnects_after_losing_the_broker() {
    let proxy = crate::helpers::BrokerProxy::start().await;
    let app = spawn_app_with(Options {
        amqp_url: Some(proxy.amqp_url.clone()),
        ..Options::default()
    })
    .await;
    app.wait_ready(0).await;
    assert_eq!(
        app.run(&job("python", "print('before')")).await["stdout"],
        "before\n"
    );

    proxy.set_down(true);
    app.wait_readiness(0, 503).await;
    let r = app
        .post_json("/v1/executions", &job("python", "print(1)"))
        .await;
    assert_eq!(r.status(), 503, "no 2xx without the broker");

    proxy.set_down(false);
    app.wait_ready(0).await;
    assert_eq!(
        app.run(&job("python", "print('after')")).await["stdout"],
        "after\n"
    );
}
