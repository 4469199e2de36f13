//! Bad requests get clear 4xx JSON errors naming the field.

use serde_json::{Value, json};

use crate::helpers::{Options, spawn_app_with};

async fn limited_app() -> crate::helpers::TestApp {
    spawn_app_with(
        Options::without_pod_manager()
            .env("WARMPOD_MAX_SOURCE_BYTES", "1000")
            .env("WARMPOD_MAX_STDIN_BYTES", "1000")
            .env("WARMPOD_MAX_BATCH", "2")
            .env("WARMPOD_MAX_WALL_TIME_MS", "5000"),
    )
    .await
}

#[tokio::test]
async fn native_api_rejects_bad_jobs_naming_the_field() {
    let app = limited_app().await;
    let big = "x".repeat(1001);
    let cases: Vec<(Value, u16, Option<&str>, &str)> = vec![
        (json!({"source": "print(1)"}), 400, None, "language missing"),
        (
            json!({"language": "python", "source": "1", "colour": "red"}),
            400,
            None,
            "unknown field",
        ),
        (
            json!({"language": "cobol", "source": "x"}),
            422,
            Some("language"),
            "unknown language",
        ),
        (
            json!({"language": "python"}),
            422,
            Some("source"),
            "no source",
        ),
        (
            json!({"language": "python", "source": ""}),
            422,
            Some("source"),
            "empty source",
        ),
        (
            json!({"language": "python", "source": big}),
            413,
            Some("source"),
            "source too large",
        ),
        (
            json!({"language": "python", "source": "1", "stdin": big}),
            413,
            Some("stdin"),
            "stdin too large",
        ),
        (
            json!({"language": "python", "source": "1", "limits": {"wall_time_ms": 5001}}),
            422,
            Some("limits.wall_time_ms"),
            "above the maximum",
        ),
        (
            json!({"language": "python", "source": "1", "limits": {"memory_kb": 0}}),
            422,
            Some("limits.memory_kb"),
            "zero limit",
        ),
        (
            json!({"language": "python", "files": [{"name": "a.py", "content": "1"}, {"name": "../b", "content": "2"}]}),
            422,
            Some("files[1].name"),
            "bad file name",
        ),
        (
            json!({"language": "python", "source": "1", "callback_url": "http://127.0.0.1:9/x"}),
            422,
            Some("callback_url"),
            "loopback callback",
        ),
        (
            json!({"language": "python", "source": "1", "callback_url": "http://169.254.169.254/"}),
            422,
            Some("callback_url"),
            "link-local callback",
        ),
    ];
    for (body, status, field, why) in cases {
        let r = app.post_json("/v1/executions", &body).await;
        assert_eq!(r.status().as_u16(), status, "{why}");
        let err: Value = r.json().await.unwrap();
        assert!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{why}: {err}"
        );
        assert_eq!(err["field"].as_str(), field, "{why}: {err}");
    }
}

#[tokio::test]
async fn malformed_bodies_batches_and_ids_are_refused() {
    let app = limited_app().await;

    let r = app
        .client
        .post(app.url("/v1/executions"))
        .header("content-type", "application/json")
        .body("{\"language\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "malformed JSON");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "bad_request");

    let huge = json!({"language": "python", "source": "x".repeat(200_000)});
    let r = app.post_json("/v1/executions", &huge).await;
    assert_eq!(r.status(), 413, "body over the request limit");
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "body");

    let one = json!({"language": "python", "source": "print(1)"});
    let r = app
        .post_json(
            "/v1/executions/batch",
            &json!({"executions": [one, one, one]}),
        )
        .await;
    assert_eq!(r.status(), 422, "batch too large");
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "executions");

    let r = app
        .post_json(
            "/v1/executions/batch",
            &json!({"executions": [one, {"language": "cobol", "source": "x"}]}),
        )
        .await;
    assert_eq!(r.status(), 422, "a bad job in a batch");
    assert_eq!(
        r.json::<Value>().await.unwrap()["field"],
        "executions[1].language"
    );

    for path in [
        "/v1/executions/00000000-0000-0000-0000-000000000000",
        "/v1/executions/not-a-uuid",
        "/submissions/nope",
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn judge0_and_seed_endpoints_validate_too() {
    let app = limited_app().await;
    let cases: Vec<(&str, Value, u16, Option<&str>, &str)> = vec![
        (
            "/submissions",
            json!({"source_code": "print(1)", "language_id": 999}),
            422,
            Some("language_id"),
            "unknown id",
        ),
        (
            "/submissions",
            json!({"source_code": "print(1)"}),
            422,
            Some("language_id"),
            "no language",
        ),
        (
            "/submissions",
            json!({"language_id": 71}),
            422,
            Some("source_code"),
            "no source",
        ),
        (
            "/submissions?base64_encoded=true",
            json!({"language_id": 71, "source_code": "%%%"}),
            400,
            Some("source_code"),
            "bad base64",
        ),
        (
            "/submissions",
            json!({"language_id": 71, "source_code": "1", "cpu_time_limit": 100}),
            422,
            Some("cpu_time_limit"),
            "cpu above max",
        ),
        (
            "/submissions",
            json!({"language_id": 71, "source_code": "1", "memory_limit": 99_999_999}),
            422,
            Some("memory_limit"),
            "memory above max",
        ),
        (
            "/submissions",
            json!({"language_id": 71, "source_code": "1", "enable_network": true}),
            422,
            Some("enable_network"),
            "network",
        ),
        (
            "/submit/batch",
            json!({"submissions": [{"source_code": "1", "language_id": 12345, "problem_id": 1}]}),
            422,
            Some("submissions[0].language_id"),
            "seed batch bad id",
        ),
    ];
    for (path, body, status, field, why) in cases {
        let r = app.post_json(path, &body).await;
        assert_eq!(r.status().as_u16(), status, "{why}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["field"].as_str(), field, "{why}: {err}");
    }

    let r = app
        .client
        .post(app.url("/lang/cobol"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "unknown /lang route language");

    let token = app
        .post_json(
            "/submissions",
            &json!({"language_id": 71, "source_code": "print(1)"}),
        )
        .await;
    assert_eq!(token.status(), 201);
    let token: Value = token.json().await.unwrap();
    let r = app
        .get(&format!(
            "/submissions/{}?fields=stdout,nope",
            token["token"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.status(), 400, "unknown field in fields");
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "fields");
}
