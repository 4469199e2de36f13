//! API keys and per-key rate limits.

use serde_json::Value;

use crate::helpers::{Options, spawn_app_with};

#[tokio::test]
async fn keys_are_required_except_on_probes() {
    let app =
        spawn_app_with(Options::without_pod_manager().env("WARMPOD_API_KEYS", "key-one,key-two"))
            .await;

    for path in ["/v1/languages", "/languages", "/statuses", "/openapi.json"] {
        let r = app.get(path).await;
        assert_eq!(r.status(), 401, "{path} without a key");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "unauthorized");
        let wrong = app
            .client
            .get(app.url(path))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong key");
        let bearer = app
            .client
            .get(app.url(path))
            .bearer_auth("key-one")
            .send()
            .await
            .unwrap();
        assert_eq!(bearer.status(), 200, "{path} with Authorization: Bearer");
        let judge0 = app
            .client
            .get(app.url(path))
            .header("X-Auth-Token", "key-two")
            .send()
            .await
            .unwrap();
        assert_eq!(judge0.status(), 200, "{path} with X-Auth-Token");
    }
    let post = app
        .client
        .post(app.url("/execute"))
        .body("print(1)")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 401, "submissions need a key too");
    for path in ["/healthz", "/readyz", "/metrics", "/health"] {
        assert_eq!(app.get(path).await.status(), 200, "{path} is open");
    }
}

#[tokio::test]
async fn auth_is_off_when_no_keys_are_set() {
    let app = spawn_app_with(Options::without_pod_manager()).await;
    assert_eq!(app.get("/v1/languages").await.status(), 200);
}

#[tokio::test]
async fn each_key_has_its_own_token_bucket() {
    let app = spawn_app_with(
        Options::without_pod_manager()
            .env("WARMPOD_API_KEYS", "a,b")
            .env("WARMPOD_RATE_LIMIT_PER_S", "1"),
    )
    .await;

    // One token per second: twenty quick requests cannot all pass.
    let mut limited = None;
    for _ in 0..20 {
        let r = app
            .client
            .get(app.url("/statuses"))
            .bearer_auth("a")
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let limited = limited.expect("the rate limit applied");
    assert!(
        limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(
        limited.json::<Value>().await.unwrap()["code"],
        "rate_limited"
    );

    let other = app
        .client
        .get(app.url("/statuses"))
        .bearer_auth("b")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200, "key b has its own bucket");
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "probes are not limited"
    );
}
