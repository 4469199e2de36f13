//! Synchronous requests that outlive `WARMPOD_WAIT_TIMEOUT_MS`.

use serde_json::{Value, json};

use crate::helpers::{Options, job, spawn_app_with};

#[tokio::test]
async fn waits_end_at_the_timeout_with_the_job_still_queued() {
    // No pod-manager: nothing ever runs.
    let app =
        spawn_app_with(Options::without_pod_manager().env("WARMPOD_WAIT_TIMEOUT_MS", "300")).await;

    let r = app
        .post_json("/v1/executions?wait=true", &job("python", "print(1)"))
        .await;
    assert_eq!(r.status(), 202, "not done in time: the id, not a result");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "queued");
    assert!(body["id"].is_string());

    let r = app
        .post_json(
            "/submissions?wait=true",
            &json!({"source_code": "print(1)", "language_id": 71}),
        )
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.json::<Value>().await.unwrap()["status"]["id"],
        1,
        "In Queue"
    );

    let r = app
        .client
        .post(app.url("/execute"))
        .header("content-type", "text/plain")
        .body("print(1)")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "wait_timeout");
}
