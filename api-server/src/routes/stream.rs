//! Live job progress for the native API: Server-Sent Events on
//! `GET /v1/executions/{id}/events` and a WebSocket on `GET /v1/ws`.
//!
//! Both subscribe to the state store's change feed *before* reading the
//! current state, then emit `queued`, `running` and `result` in that order,
//! each at most once, whatever order the broker delivered them in.

use std::{collections::HashMap, convert::Infallible, time::Duration};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::AggregatedMessage;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast::error::RecvError, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;
use uuid::Uuid;
use warmpod_protocol::Status;

use crate::{
    ApiError, Core, error::ErrorBody, routes::v1::ExecutionRequest, state::Execution, submit::Api,
    view::ExecutionView,
};

/// SSE comment sent this often so proxies keep the stream open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Registers the streaming routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/executions/{id}/events", web::get().to(events))
        .route("/v1/ws", web::get().to(websocket));
}

/// Which of a job's three events a client has been sent.
#[derive(Debug, Default, Clone, Copy)]
struct Sent(u8);

impl Sent {
    /// The events `e` adds to what was sent: `queued`, `running`, `result`.
    fn advance(&mut self, e: &Execution) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.0 < 1 {
            out.push("queued");
            self.0 = 1;
        }
        if self.0 < 2 && (e.running_at_ms.is_some() || e.status == Status::Running) {
            out.push("running");
            self.0 = 2;
        }
        if self.0 < 3 && e.status.is_final() {
            out.push("result");
            self.0 = 3;
        }
        out
    }

    fn done(self) -> bool {
        self.0 >= 3
    }
}

/// Server-Sent Events of one job: `queued`, `running`, then `result` (the
/// final state, whose `status` is the verdict); the stream then ends.
#[utoipa::path(
    get, path = "/v1/executions/{id}/events", tag = "v1",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, description = "text/event-stream; each event's data is an ExecutionView", content_type = "text/event-stream", body = String),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn events(core: web::Data<Core>, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let mut feed = core.state.subscribe();
    let current = core.get(id)?;
    let (tx, rx) = mpsc::channel::<Result<web::Bytes, Infallible>>(16);
    let core = core.into_inner();
    actix_web::rt::spawn(async move {
        let mut sent = Sent::default();
        let mut latest = current;
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            for name in sent.advance(&latest) {
                let data = serde_json::to_string(&ExecutionView::from(&latest)).unwrap_or_default();
                let frame = format!("event: {name}\nid: {id}\ndata: {data}\n\n");
                if tx.send(Ok(web::Bytes::from(frame))).await.is_err() {
                    return;
                }
            }
            if sent.done() {
                return;
            }
            tokio::select! {
                change = feed.recv() => match change {
                    Ok(e) if e.id == id => latest = (*e).clone(),
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => match core.state.get(id) {
                        Some(e) => latest = e,
                        None => return,
                    },
                    Err(RecvError::Closed) => return,
                },
                _ = keepalive.tick() => {
                    if tx.send(Ok(web::Bytes::from_static(b": keepalive\n\n"))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(ReceiverStream::new(rx)))
}

/// A message from a WebSocket client.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Run a job; its events follow.
    Submit {
        /// Echoed on the `accepted` or `error` reply.
        #[serde(rename = "ref")]
        reference: Option<String>,
        /// A label for the job (e.g. a user id), echoed on every event.
        tag: Option<String>,
        /// The job, as for `POST /v1/executions`.
        job: Box<ExecutionRequest>,
    },
    /// Follow an existing job.
    Subscribe {
        /// The job's id.
        id: Uuid,
    },
}

/// A message to a WebSocket client.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// A job was queued.
    Accepted {
        /// The submit's `ref`.
        #[serde(rename = "ref")]
        reference: Option<String>,
        /// The job's id.
        id: Uuid,
        /// The job's tag.
        tag: Option<String>,
    },
    /// A message could not be handled.
    Error {
        /// The submit's `ref`, if it had one.
        #[serde(rename = "ref")]
        reference: Option<String>,
        /// What went wrong.
        error: ErrorBody,
    },
    /// A job's progress: `queued`, `running`, or `result`.
    Event {
        /// `queued`, `running` or `result`.
        event: String,
        /// The job's id.
        id: Uuid,
        /// The job's tag.
        tag: Option<String>,
        /// Its state.
        execution: Box<ExecutionView>,
    },
}

/// WebSocket: send `{"type":"submit","ref":..,"tag":..,"job":{..}}` or
/// `{"type":"subscribe","id":..}`; receive `accepted`, `error` and `event`
/// messages (`queued`, `running`, `result`) for your jobs.
#[utoipa::path(
    get, path = "/v1/ws", tag = "v1",
    responses((status = 101, description = "Switching to the WebSocket protocol")),
)]
pub async fn websocket(
    core: web::Data<Core>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let max = core.config.max_body_bytes();
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    actix_web::rt::spawn(serve_socket(core.into_inner(), session, stream));
    Ok(response)
}

async fn serve_socket(
    core: std::sync::Arc<Core>,
    mut session: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
) {
    let mut feed = core.state.subscribe();
    let mut jobs: HashMap<Uuid, Sent> = HashMap::new();
    loop {
        tokio::select! {
            message = stream.recv() => {
                let Some(Ok(message)) = message else { break };
                let replies = match message {
                    AggregatedMessage::Text(text) => handle_client(&core, &text, &mut jobs).await,
                    AggregatedMessage::Binary(bytes) => match std::str::from_utf8(&bytes) {
                        Ok(text) => handle_client(&core, text, &mut jobs).await,
                        Err(_) => vec![protocol_error(None, "messages must be UTF-8 JSON")],
                    },
                    AggregatedMessage::Ping(p) => {
                        if session.pong(&p).await.is_err() { break }
                        continue;
                    }
                    AggregatedMessage::Pong(_) => continue,
                    AggregatedMessage::Close(_) => break,
                };
                if send_all(&mut session, replies).await.is_err() { break }
            }
            change = feed.recv() => {
                let changed: Vec<Execution> = match change {
                    Ok(e) if jobs.contains_key(&e.id) => vec![(*e).clone()],
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => jobs.keys().filter_map(|id| core.state.get(*id)).collect(),
                    Err(RecvError::Closed) => break,
                };
                let mut out = Vec::new();
                for e in changed {
                    out.extend(progress(&mut jobs, &e));
                }
                if send_all(&mut session, out).await.is_err() { break }
            }
        }
    }
    let _ = session.close(None).await;
}

async fn send_all(
    session: &mut actix_ws::Session,
    messages: Vec<ServerMessage>,
) -> Result<(), actix_ws::Closed> {
    for m in messages {
        session
            .text(serde_json::to_string(&m).unwrap_or_default())
            .await?;
    }
    Ok(())
}

fn protocol_error(reference: Option<String>, message: &str) -> ServerMessage {
    let e = ApiError::bad_request(None, message);
    error_message(reference, &e)
}

fn error_message(reference: Option<String>, e: &ApiError) -> ServerMessage {
    ServerMessage::Error {
        reference,
        error: ErrorBody {
            error: e.to_string(),
            code: e.code().to_string(),
            field: e.field().map(str::to_string),
            accepted: None,
        },
    }
}

/// The events `e` adds for a tracked job; forgets it once final.
fn progress(jobs: &mut HashMap<Uuid, Sent>, e: &Execution) -> Vec<ServerMessage> {
    let Some(sent) = jobs.get_mut(&e.id) else {
        return Vec::new();
    };
    let out: Vec<ServerMessage> = sent
        .advance(e)
        .into_iter()
        .map(|name| ServerMessage::Event {
            event: name.to_string(),
            id: e.id,
            tag: e.meta.tag.clone(),
            execution: Box::new(ExecutionView::from(e)),
        })
        .collect();
    if sent.done() {
        jobs.remove(&e.id);
    }
    out
}

async fn handle_client(
    core: &Core,
    text: &str,
    jobs: &mut HashMap<Uuid, Sent>,
) -> Vec<ServerMessage> {
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => return vec![protocol_error(None, &format!("invalid message: {e}"))],
    };
    match message {
        ClientMessage::Submit {
            reference,
            tag,
            job,
        } => {
            let mut submission = match job.into_submission(Api::V1) {
                Ok(s) => s,
                Err(e) => return vec![error_message(reference, &e)],
            };
            if tag.is_some() {
                submission.tag = tag;
            }
            let tag = submission.tag.clone();
            match core.submit(submission).await {
                Ok(id) => {
                    jobs.insert(id, Sent::default());
                    let mut out = vec![ServerMessage::Accepted { reference, id, tag }];
                    if let Some(e) = core.state.get(id) {
                        out.extend(progress(jobs, &e));
                    }
                    out
                }
                Err(e) => vec![error_message(reference, &e)],
            }
        }
        ClientMessage::Subscribe { id } => match core.state.get(id) {
            Some(e) => {
                jobs.insert(id, Sent::default());
                progress(jobs, &e)
            }
            None => vec![error_message(
                None,
                &ApiError::NotFound(format!("execution {id}")),
            )],
        },
    }
}
