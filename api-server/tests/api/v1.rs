//! The native API end to end: real pod-manager, real sandboxes.

use serde_json::{Value, json};

use crate::helpers::{job, spawn_app};

#[tokio::test]
async fn runs_jobs_synchronously_and_asynchronously() {
    let app = spawn_app().await;

    // Synchronous.
    let r = app.run(&job("python", "print('Hello, World!')")).await;
    assert_eq!(r["status"], "accepted");
    assert_eq!(r["stdout"], "Hello, World!\n");
    assert_eq!(r["exit_code"], 0);
    assert!(r["id"].as_str().is_some() && r["wall_time_ms"].is_u64() && r["total_ms"].is_u64());

    // Asynchronous: 202 with the id, then GET until final.
    let accepted = app
        .post_json(
            "/v1/executions",
            &json!({"language": "bash", "source": "read x; echo $((x * 2))", "stdin": "21\n"}),
        )
        .await;
    assert_eq!(accepted.status(), 202);
    assert!(
        accepted.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v1/executions/")
    );
    let accepted: Value = accepted.json().await.unwrap();
    assert_eq!(accepted["status"], "queued");
    let done = app
        .final_state_at(0, accepted["id"].as_str().unwrap())
        .await;
    assert_eq!(done["status"], "accepted");
    assert_eq!(done["stdout"], "42\n");

    // Failures carry their verdict.
    let r = app
        .run(&json!({"language": "python", "source": "import sys; sys.exit(3)"}))
        .await;
    assert_eq!(r["status"], "runtime_error");
    assert_eq!(r["exit_code"], 3);
}

#[tokio::test]
async fn expected_output_is_judged_with_trailing_whitespace_trimmed() {
    let app = spawn_app().await;
    let source = "print('1 2  ')\nprint()";
    for (expected, verdict) in [
        ("1 2", "accepted"),
        ("1 2\n\n\n", "accepted"),
        ("1  2", "wrong_answer"),
        ("3", "wrong_answer"),
    ] {
        let r = app
            .run(&json!({"language": "python", "source": source, "expected_output": expected}))
            .await;
        assert_eq!(r["status"], verdict, "expected {expected:?}");
    }
}

#[tokio::test]
async fn batches_return_ids_in_order() {
    let app = spawn_app().await;
    let jobs: Vec<Value> = (0..3)
        .map(|i| job("python", &format!("print({i})")))
        .collect();

    let r = app
        .post_json("/v1/executions/batch", &json!({"executions": jobs}))
        .await;
    assert_eq!(r.status(), 202);
    let ids: Vec<String> = r.json::<Value>().await.unwrap()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    for (i, id) in ids.iter().enumerate() {
        let done = app.final_state_at(0, id).await;
        assert_eq!(
            done["stdout"],
            format!("{i}\n"),
            "job {i} is at position {i}"
        );
    }
}

#[tokio::test]
async fn languages_list_versions_from_the_runtimes() {
    let app = spawn_app().await;
    let list: Vec<Value> = app.get("/v1/languages").await.json().await.unwrap();
    let keys: Vec<&str> = list.iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["python", "javascript", "c", "cpp", "java", "bash"]);
    let python = &list[0];
    let version = python["version"]
        .as_str()
        .expect("python's version is known");
    assert!(version.starts_with("3."), "{python}");
    assert_eq!(python["name"], format!("Python ({version})"));
}
