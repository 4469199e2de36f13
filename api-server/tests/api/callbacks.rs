//! Webhooks with two replicas: each delivered exactly once, signed,
//! retried; and state readable from the replica that did not accept a job.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{DEADLINE, Options, Receiver, TestApp, job, spawn_app_with};

/// The `warmpod_api_callbacks_total{outcome}` counter of one replica.
async fn callbacks(app: &TestApp, replica: usize, outcome: &str) -> u64 {
    app.counter(
        replica,
        &format!("warmpod_api_callbacks_total{{outcome=\"{outcome}\"}}"),
    )
    .await
}

#[tokio::test]
async fn each_callback_is_delivered_once_by_one_of_two_replicas() {
    let app = spawn_app_with(Options {
        replicas: 2,
        ..Options::default()
            .env("WARMPOD_CALLBACK_ALLOW_PRIVATE", "true")
            .env("WARMPOD_CALLBACK_SECRET", "s3cret")
    })
    .await;
    let mut receiver = Receiver::start(vec![]);

    let mut ids = Vec::new();
    for i in 0..4 {
        let mut body = job("python", &format!("print({i})"));
        body["callback_url"] = json!(receiver.url);
        let r = app
            .client
            .post(app.url_at(i % 2, "/v1/executions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }

    let mut got = Vec::new();
    for _ in 0..4 {
        let req = receiver.next().await;
        assert_eq!(req.method, "POST");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(&req.body);
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            req.header("x-warmpod-signature"),
            Some(want.as_str()),
            "signed body"
        );
        got.push(req.json());
    }
    let mut got_ids: Vec<String> = got
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    got_ids.sort();
    ids.sort();
    assert_eq!(got_ids, ids, "every job called back, none twice");
    for b in &got {
        assert_eq!(b["status"], "accepted");
    }

    // Both replicas together counted exactly four deliveries, and no
    // further request reached the receiver.
    let deadline = Instant::now() + DEADLINE;
    while callbacks(&app, 0, "delivered").await + callbacks(&app, 1, "delivered").await < 4 {
        assert!(Instant::now() < deadline, "deliveries never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        callbacks(&app, 0, "delivered").await + callbacks(&app, 1, "delivered").await,
        4
    );
    assert!(receiver.drain().is_empty(), "no duplicate callbacks");
}

#[tokio::test]
async fn any_replica_serves_state_and_failed_callbacks_are_retried() {
    let app = spawn_app_with(Options {
        replicas: 2,
        ..Options::default()
            .env("WARMPOD_CALLBACK_ALLOW_PRIVATE", "true")
            .env("WARMPOD_CALLBACK_BACKOFF_MS", "50")
    })
    .await;
    // The receiver fails twice before accepting.
    let mut receiver = Receiver::start(vec![500, 503]);

    let mut body = job("python", "print('twice')");
    body["callback_url"] = json!(receiver.url);
    let r = app
        .client
        .post(app.url_at(0, "/v1/executions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Replica 1 never saw the request, only the events.
    let state = app.final_state_at(1, &id).await;
    assert_eq!(state["status"], "accepted");
    assert_eq!(state["stdout"], "twice\n");
    assert_eq!(
        state["language"], "python",
        "the language travels with the events"
    );
    let judge0: Value = app
        .client
        .get(app.url_at(1, &format!("/submissions/{id}?fields=language_id,stdout")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(judge0, json!({"language_id": 71, "stdout": "twice\n"}));

    let attempts = [
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
    ];
    for a in &attempts {
        assert_eq!(a.json()["id"], id.as_str());
        assert!(
            a.header("x-warmpod-signature").is_none(),
            "no secret, no signature"
        );
    }
    assert_eq!(
        attempts[0].body, attempts[2].body,
        "retries resend the same body"
    );
}

#[tokio::test]
async fn names_resolving_to_private_addresses_are_refused_at_delivery() {
    let app = crate::helpers::spawn_app().await;
    let mut receiver = Receiver::start(vec![]);
    // This machine's own name passes the submission check (it is not an
    // address) but resolves to a private or loopback address.
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let port = receiver.url.rsplit(':').next().unwrap().to_string();
    let mut body = job("python", "print(1)");
    body["callback_url"] = json!(format!("http://{host}:{port}/hook"));

    let done = app.run(&body).await;
    assert_eq!(done["status"], "accepted");

    let deadline = Instant::now() + DEADLINE;
    while callbacks(&app, 0, "refused").await < 1 {
        assert!(Instant::now() < deadline, "the callback was never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        receiver.drain().is_empty(),
        "nothing reached the private address"
    );
}
