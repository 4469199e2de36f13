//! The seed systems' endpoints.

use serde_json::{Value, json};

use crate::helpers::{Options, Receiver, spawn_app, spawn_app_with};

#[tokio::test]
async fn execute_and_lang_return_program_output() {
    let app = spawn_app().await;

    let text = app
        .client
        .post(app.url("/execute"))
        .header("content-type", "text/plain")
        .body("print('Hello, World!')")
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 200);
    assert!(
        text.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        text.text().await.unwrap(),
        "Hello, World!\n",
        "python is the default"
    );

    let js = app
        .client
        .post(app.url("/execute?language=javascript"))
        .header("content-type", "text/plain")
        .body("console.log(6 * 7)")
        .send()
        .await
        .unwrap();
    assert_eq!(js.text().await.unwrap(), "42\n");

    let r = app.post_json("/execute", &json!({"code": "import sys; print('out'); print('err', file=sys.stderr); sys.exit(2)", "language": "python"})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"output": "out\n", "error": "err\n", "status_code": 2})
    );

    let bash = app
        .client
        .post(app.url("/lang/bash"))
        .body("echo from bash")
        .send()
        .await
        .unwrap();
    assert_eq!(bash.text().await.unwrap(), "from bash\n");

    // A compiler warning is not output; a compile error is.
    let c = app
        .client
        .post(app.url("/lang/c"))
        .body("int main(){puts(\"c ok\");}")
        .send()
        .await
        .unwrap();
    assert_eq!(c.headers()["x-warmpod-status"], "accepted");
    assert_eq!(c.text().await.unwrap(), "c ok\n");
    let cpp = app
        .client
        .post(app.url("/lang/cpp"))
        .body("int main( {")
        .send()
        .await
        .unwrap();
    assert_eq!(cpp.headers()["x-warmpod-status"], "compile_error");
    assert!(cpp.text().await.unwrap().contains("error"));
}

#[tokio::test]
async fn batch_submissions_call_back_with_the_seed_format() {
    let app =
        spawn_app_with(Options::default().env("WARMPOD_CALLBACK_ALLOW_PRIVATE", "true")).await;
    let mut receiver = Receiver::start(vec![]);

    let body = json!({"submissions": [
        {"source_code": "print('one')", "language_id": 71, "problem_id": 7, "callback_url": receiver.url, "timeout": 5},
        {"source_code": "echo two", "language_id": "bash", "problem_id": "p8", "callback_url": receiver.url, "memory_limit": 65536},
    ]});
    let r = app.post_json("/submit/batch", &body).await;
    assert_eq!(r.status(), 202);
    let tokens: Vec<String> = r.json::<Value>().await.unwrap()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    assert_eq!(tokens.len(), 2);

    let mut bodies = [receiver.next().await.json(), receiver.next().await.json()];
    bodies.sort_by_key(|b| tokens.iter().position(|t| b["token"] == *t));
    for (b, stdout) in bodies.iter().zip(["one\n", "two\n"]) {
        let mut keys: Vec<&String> = b.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "execution_time",
                "exit_code",
                "status",
                "stderr",
                "stdout",
                "token"
            ]
        );
        assert_eq!(b["stdout"], stdout);
        assert_eq!(b["status"], "accepted");
        assert_eq!(b["exit_code"], 0);
    }
}
