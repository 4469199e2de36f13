//! Probes, metrics and the OpenAPI document.

use serde_json::Value;

use crate::helpers::{Options, spawn_app_with};

#[tokio::test]
async fn probes_answer() {
    let app = spawn_app_with(Options::without_pod_manager()).await;

    for (path, want) in [
        ("/healthz", serde_json::json!({"status": "ok"})),
        ("/health", serde_json::json!({"status": "healthy"})),
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.json::<Value>().await.unwrap(), want, "{path}");
    }
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["broker"], "connected");

    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("warmpod_api_broker_ready 1"), "{metrics}");
    assert!(
        metrics.contains(
            r#"warmpod_api_http_requests_total{method="GET",route="/healthz",status="200"} 1"#
        ),
        "requests are counted by route pattern: {metrics}"
    );

    let missing = app.get("/no/such/route").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["code"], "not_found");
}

#[tokio::test]
async fn openapi_document_validates_and_lists_every_route() {
    let app = spawn_app_with(Options::without_pod_manager()).await;

    let text = app.get("/openapi.json").await.text().await.unwrap();
    let spec = oas3::from_json(&text).expect("a valid OpenAPI 3.1 document");

    let paths = spec.paths.expect("paths");
    let mut ids: Vec<String> = paths
        .values()
        .flat_map(|item| {
            item.methods()
                .into_iter()
                .filter_map(|(_, op)| op.operation_id.clone())
        })
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "operation ids are unique");
    for path in [
        "/v1/executions",
        "/v1/executions/{id}",
        "/v1/executions/batch",
        "/v1/executions/{id}/events",
        "/v1/ws",
        "/v1/languages",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/submissions",
        "/submissions/{token}",
        "/submissions/batch",
        "/languages",
        "/languages/{id}",
        "/statuses",
        "/about",
        "/config_info",
        "/execute",
        "/lang/{language}",
        "/submit/batch",
        "/health",
    ] {
        assert!(paths.contains_key(path), "OpenAPI lacks {path}");
    }
}

#[test]
fn bad_configuration_exits_64_naming_the_variable() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_api-server"))
        .env("WARMPOD_HTTP_ADDR", "127.0.0.1:0")
        .env("WARMPOD_MAX_BATCH", "zero")
        .output()
        .expect("api-server runs");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WARMPOD_MAX_BATCH"), "{stderr}");
}
