//! Server-Sent Events and WebSocket: queued, running, result, in order.

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{DEADLINE, job, read_sse, spawn_app};

#[tokio::test]
async fn sse_sends_queued_running_and_result_in_order() {
    let app = spawn_app().await;
    let accepted: Value = app
        .post_json("/v1/executions", &job("python", "print('sse')"))
        .await
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap();

    let r = app.get(&format!("/v1/executions/{id}/events")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = read_sse(r).await;

    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["queued", "running", "result"]);
    let (_, result) = &events[2];
    assert_eq!(result["status"], "accepted");
    assert_eq!(result["stdout"], "sse\n");

    let missing = app
        .get("/v1/executions/00000000-0000-0000-0000-000000000000/events")
        .await;
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn websocket_streams_events_of_tagged_jobs() {
    let app = spawn_app().await;
    let url = app.url("/v1/ws").replace("http://", "ws://");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket handshake");

    let submit = json!({"type": "submit", "ref": "r1", "tag": "user-42", "job": {"language": "python", "source": "print('ws')"}});
    ws.send(Message::text(submit.to_string())).await.unwrap();
    ws.send(Message::text(
        json!({"type": "submit", "ref": "r2", "job": {"language": "cobol", "source": "x"}})
            .to_string(),
    ))
    .await
    .unwrap();

    let mut seen: Vec<Value> = Vec::new();
    let read = async {
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg.expect("frame") else {
                continue;
            };
            seen.push(serde_json::from_str(&text).unwrap());
            let done = seen.iter().any(|m| m["event"] == "result")
                && seen.iter().any(|m| m["type"] == "error");
            if done {
                break;
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("all events within the deadline");

    let accepted = seen
        .iter()
        .find(|m| m["type"] == "accepted")
        .expect("accepted");
    assert_eq!(accepted["ref"], "r1");
    assert_eq!(accepted["tag"], "user-42");
    let id = accepted["id"].clone();
    let error = seen
        .iter()
        .find(|m| m["type"] == "error")
        .expect("the bad job's error");
    assert_eq!(error["ref"], "r2");
    assert_eq!(error["error"]["field"], "language");

    let events: Vec<&Value> = seen.iter().filter(|m| m["type"] == "event").collect();
    let names: Vec<&str> = events
        .iter()
        .map(|m| m["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["queued", "running", "result"]);
    for e in &events {
        assert_eq!(e["id"], id);
        assert_eq!(e["tag"], "user-42");
    }
    assert_eq!(events[2]["execution"]["stdout"], "ws\n");
    assert_eq!(events[2]["execution"]["status"], "accepted");
}
