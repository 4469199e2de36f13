//! The Judge0-compatible API, as an unmodified Judge0 client uses it.

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[tokio::test]
async fn submissions_map_verdicts_onto_judge0_status_ids() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"source_code": "print(input())", "stdin": "hi", "language_id": 71}),
            3,
            "accepted",
        ),
        (
            json!({"source_code": "print(1)", "language_id": 71, "expected_output": "2"}),
            4,
            "wrong answer",
        ),
        (
            json!({"source_code": "while True: pass", "language_id": 71, "cpu_time_limit": 0.5, "wall_time_limit": 3}),
            5,
            "time limit",
        ),
        (
            json!({"source_code": "int main( {", "language_id": 50}),
            6,
            "compile error",
        ),
        (
            json!({"source_code": "import os; os.kill(os.getpid(), 11)", "language_id": 71}),
            7,
            "SIGSEGV",
        ),
        (
            json!({"source_code": "import os; os.kill(os.getpid(), 8)", "language_id": 71}),
            9,
            "SIGFPE",
        ),
        (
            json!({"source_code": "import os; os.abort()", "language_id": 71}),
            10,
            "SIGABRT",
        ),
        (
            json!({"source_code": "exit 3", "language_id": 46}),
            11,
            "non-zero exit",
        ),
        (
            json!({"source_code": "import os; os.kill(os.getpid(), 10)", "language_id": 71}),
            12,
            "other signal",
        ),
    ];
    for (body, status_id, why) in cases {
        let r = app
            // Judge0 clients often add a trailing slash.
            .post_json("/submissions/?wait=true&fields=*", &body)
            .await;
        assert_eq!(r.status(), 201, "{why}");
        let s: Value = r.json().await.unwrap();
        assert_eq!(s["status"]["id"], status_id, "{why}: {s}");
        assert_eq!(s["status_id"], status_id, "{why}");
        assert!(
            s["token"].is_string() && s["language_id"].is_u64(),
            "{why}: {s}"
        );
        if status_id == 3 {
            assert_eq!(s["stdout"], "hi\n");
            assert!(
                s["time"].as_str().unwrap().parse::<f64>().is_ok(),
                "time is seconds as a string"
            );
            assert!(s["memory"].is_u64(), "memory is KB");
            assert_eq!(s["source_code"], "print(input())");
        }
    }
}

#[tokio::test]
async fn base64_fields_and_polling_work() {
    let app = spawn_app().await;
    let body = json!({
        "source_code": B64.encode("print(input()[::-1])"),
        "stdin": B64.encode("olleh"),
        "language_id": 71,
    });
    let r = app
        .post_json("/submissions?base64_encoded=true", &body)
        .await;
    assert_eq!(r.status(), 201);
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();

    // Poll as Judge0 clients do, until the status leaves In Queue/Processing.
    let done = app.final_state_at(0, &token).await;
    assert_eq!(done["status"], "accepted");
    let s: Value = app
        .get(&format!("/submissions/{token}?base64_encoded=true"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        B64.decode(s["stdout"].as_str().unwrap()).unwrap(),
        b"hello\n"
    );
    let keys: Vec<&String> = s.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 8, "the default fields: {keys:?}");

    let s: Value = app
        .get(&format!("/submissions/{token}?fields=stdout,status_id"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(s, json!({"stdout": "hello\n", "status_id": 3}));
}

#[tokio::test]
async fn batches_create_and_fetch_in_order() {
    let app = spawn_app().await;
    let body = json!({"submissions": [
        {"source_code": "print('a')", "language_id": 71},
        {"source_code": "print('b')", "language_id": 9999},
        {"source_code": "console.log('c')", "language_id": 63},
    ]});
    let r = app.post_json("/submissions/batch", &body).await;
    assert_eq!(r.status(), 201);
    let items: Vec<Value> = r.json().await.unwrap();
    assert!(items[0]["token"].is_string());
    assert!(
        items[1]["language_id"].is_array(),
        "the bad one carries its error: {}",
        items[1]
    );
    assert!(items[2]["token"].is_string());

    let tokens = [
        items[0]["token"].as_str().unwrap(),
        items[2]["token"].as_str().unwrap(),
    ];
    for t in tokens {
        app.final_state_at(0, t).await;
    }
    let got: Value = app
        .get(&format!(
            "/submissions/batch?tokens={}&fields=stdout,token",
            tokens.join(",")
        ))
        .await
        .json()
        .await
        .unwrap();
    let subs = got["submissions"].as_array().unwrap();
    assert_eq!(subs[0]["stdout"], "a\n");
    assert_eq!(subs[1]["stdout"], "c\n");
    assert_eq!(subs[1]["token"], tokens[1]);
}

#[tokio::test]
async fn metadata_routes_answer_like_judge0() {
    let app = spawn_app().await;

    let about: Value = app.get("/about").await.json().await.unwrap();
    assert_eq!(about["version"], "1.13.1");

    let statuses: Vec<Value> = app.get("/statuses").await.json().await.unwrap();
    assert_eq!(statuses.len(), 14);
    assert_eq!(
        statuses[6],
        json!({"id": 7, "description": "Runtime Error (SIGSEGV)"})
    );

    let languages: Vec<Value> = app.get("/languages").await.json().await.unwrap();
    let python = languages
        .iter()
        .find(|l| l["id"] == 71)
        .expect("python is 71");
    let name = python["name"].as_str().unwrap();
    assert!(
        name.starts_with("Python (3.") && name.ends_with(')'),
        "{name}"
    );
    let one: Value = app.get("/languages/54").await.json().await.unwrap();
    assert_eq!(one["source_file"], "main.cpp");
    assert_eq!(app.get("/languages/9999").await.status(), 404);

    let config: Value = app.get("/config_info").await.json().await.unwrap();
    for field in [
        "maintenance_mode",
        "enable_wait_result",
        "enable_compiler_options",
        "allowed_languages_for_compile_options",
        "enable_command_line_arguments",
        "enable_submission_delete",
        "enable_callbacks",
        "callbacks_max_tries",
        "callbacks_timeout",
        "enable_additional_files",
        "max_queue_size",
        "cpu_time_limit",
        "max_cpu_time_limit",
        "cpu_extra_time",
        "max_cpu_extra_time",
        "wall_time_limit",
        "max_wall_time_limit",
        "memory_limit",
        "max_memory_limit",
        "stack_limit",
        "max_stack_limit",
        "max_processes_and_or_threads",
        "max_max_processes_and_or_threads",
        "enable_per_process_and_thread_time_limit",
        "allow_enable_per_process_and_thread_time_limit",
        "enable_per_process_and_thread_memory_limit",
        "allow_enable_per_process_and_thread_memory_limit",
        "max_file_size",
        "max_max_file_size",
        "number_of_runs",
        "max_number_of_runs",
        "redirect_stderr_to_stdout",
        "max_extract_size",
        "enable_batched_submissions",
        "max_submission_batch_size",
        "submission_cache_duration",
        "use_docs_as_homepage",
        "allow_enable_network",
        "enable_network",
    ] {
        assert!(config.get(field).is_some(), "config_info lacks {field}");
    }
    assert_eq!(
        config["max_cpu_time_limit"], 30.0,
        "seconds, from the real maximum"
    );
    assert_eq!(config["max_memory_limit"], 2_097_152, "KB");
}

#[tokio::test]
async fn callbacks_put_the_finished_submission() {
    let app = crate::helpers::spawn_app_with(
        crate::helpers::Options::default().env("WARMPOD_CALLBACK_ALLOW_PRIVATE", "true"),
    )
    .await;
    let mut receiver = crate::helpers::Receiver::start(vec![]);

    let r = app
        .post_json(
            "/submissions",
            &json!({"source_code": "print('cb')", "language_id": 71, "callback_url": receiver.url}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let token = r.json::<Value>().await.unwrap()["token"].clone();

    let req = receiver.next().await;
    assert_eq!(req.method, "PUT", "Judge0 PUTs callbacks");
    let body = req.json();
    assert_eq!(body["token"], token);
    assert_eq!(body["stdout"], "cb\n");
    assert_eq!(body["status"], json!({"id": 3, "description": "Accepted"}));

    // Submitted in base64: called back in base64.
    let r = app
        .post_json(
            "/submissions?base64_encoded=true",
            &json!({"source_code": B64.encode("print('b64')"), "language_id": 71, "callback_url": receiver.url}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let body = receiver.next().await.json();
    assert_eq!(
        B64.decode(body["stdout"].as_str().unwrap()).unwrap(),
        b"b64\n"
    );
}
