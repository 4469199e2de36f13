//! A fake Kubernetes API server that speaks the real wire protocol, for the
//! kube backend's tests.
//!
//! - `GET /api/v1/namespaces/{ns}/pods` lists, or with `watch=true` streams
//!   JSON-lines `WatchEvent`s from a `resourceVersion`, honouring
//!   `labelSelector` (an object that stops matching is reported `DELETED`,
//!   one that starts matching `ADDED`, as the real server does).
//! - `PATCH .../pods/{name}` applies `application/json-patch+json` for real
//!   (the `json-patch` crate): a failed op (e.g. `test`) answers 422, a
//!   `metadata.resourceVersion` other than the stored one answers 409.
//!   `application/merge-patch+json` is applied too.
//! - `DELETE .../pods/{name}` removes the pod (and kills its execs).
//! - `.../deployments/{name}/scale` GET/PATCH/PUT for the generic standby
//!   Deployment and each language pool's ([`FakePool`]); a simulated
//!   ReplicaSet per Deployment keeps `replicas` standby pods (labels
//!   app/pool/state=standby, plus `warmpod.io/language` for a language
//!   pool), creating one as soon as a pod is relabelled or deleted.
//!   Generic pods are Running and Ready at once and run nothing but their
//!   execs.
//! - A simulated kubelet gives every pod its own directory as its `/tmp`
//!   (the emptyDir, removed with the pod: every `/tmp` path in its commands is
//!   rewritten into it, and `WARMPOD_RUNNER_WORK_ROOT` points there),
//!   starts the container's main command (the serving runner) when the pod
//!   is created, runs the readiness probe's exec command every 20 ms until
//!   it succeeds (the pod then turns Ready), and kills the main process
//!   once the pod is deleted.
//! - `GET .../pods/{name}/exec` upgrades to a WebSocket speaking
//!   `v5.channel.k8s.io` or `v4.channel.k8s.io` (first byte of each binary
//!   frame is the channel: 0 stdin, 1 stdout, 2 stderr, 3 status, 255 close
//!   in v5) and runs the command as a local process; `warmpod-runner` is
//!   the REAL runner binary from the target directory.
//!
//! Faults can be injected into the next exec: drop the connection mid-job,
//! or hang without answering.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key};
use tokio_util::sync::CancellationToken;

type Body = BoxBody<Bytes, Infallible>;

/// The v5 exec subprotocol.
pub const V5: &str = "v5.channel.k8s.io";
/// The v4 exec subprotocol.
pub const V4: &str = "v4.channel.k8s.io";

/// How the fake cluster is set up.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Namespace served.
    pub namespace: String,
    /// Pool label of the standby pods.
    pub pool: String,
    /// Standby Deployment name.
    pub deployment: String,
    /// Initial standby replicas.
    pub replicas: i32,
    /// Exec subprotocols the server accepts, in its order of preference.
    pub protocols: Vec<&'static str>,
    /// Language pools: more standby Deployments, whose pods run a main
    /// command.
    pub language_pools: Vec<FakePool>,
}

/// A language pool's standby Deployment, as its template describes it.
#[derive(Debug, Clone)]
pub struct FakePool {
    /// Deployment name.
    pub deployment: String,
    /// Value of the pods' `warmpod.io/language` label.
    pub language: String,
    /// Initial replicas.
    pub replicas: i32,
    /// The container's command (its main process).
    pub main: Vec<String>,
    /// The readiness probe's exec command.
    pub probe: Vec<String>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            namespace: "warmpod-test".into(),
            pool: "test".into(),
            deployment: "warmpod-standby".into(),
            replicas: 2,
            protocols: vec![V5, V4],
            language_pools: Vec::new(),
        }
    }
}

/// A fault for the next exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecFault {
    /// Start the runner, forward the job to it, then drop the TCP
    /// connection without a close frame (and kill the process).
    DropAfterStdin,
    /// Accept the connection and the job, never start anything, never
    /// answer, keep the connection open.
    Hang,
}

/// One request the fake served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Whether it was a watch.
    pub watch: bool,
    /// The decoded `labelSelector`, if any.
    pub selector: String,
}

/// A successful claim transition (standby → claimed) the fake applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    /// The pod.
    pub pod: String,
    /// Its `warmpod.io/job` label after the patch.
    pub job: String,
    /// Its `warmpod.io/claimed-by` label after the patch.
    pub claimed_by: String,
}

/// The fake's state, visible to tests.
#[derive(Debug, Default)]
pub struct State {
    rv: u64,
    /// Pods by name, as JSON.
    pub pods: BTreeMap<String, Value>,
    history: Vec<Change>,
    watchers: Vec<Watcher>,
    /// Replicas of the generic standby Deployment.
    pub replicas: i32,
    /// Replicas of each language pool's Deployment, by name.
    pub pool_replicas: BTreeMap<String, i32>,
    next_pod: u64,
    /// Every standby → claimed transition, in order.
    pub claims: Vec<ClaimRecord>,
    /// Every request.
    pub requests: Vec<Logged>,
    faults: VecDeque<ExecFault>,
    /// Kill switches of running execs, by pod.
    running: HashMap<String, Vec<CancellationToken>>,
    /// Execs started, by pod.
    pub execs_started: BTreeMap<String, u32>,
    /// Pods whose exec process the fake has started and not yet finished.
    pub execs_running: BTreeMap<String, u32>,
    /// While set, watch events after this resourceVersion are held back.
    frozen_since: Option<u64>,
}

#[derive(Debug)]
struct Change {
    rv: u64,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Debug)]
struct Watcher {
    selector: Selector,
    tx: mpsc::UnboundedSender<Bytes>,
}

struct Shared {
    opts: FakeOptions,
    runner: PathBuf,
    state: Mutex<State>,
    changed: Notify,
    /// The kubelet's side of pods with a main command, by pod.
    runtimes: Mutex<HashMap<String, PodRuntime>>,
}

/// A pod's private `/tmp` and its main process (killed when dropped).
struct PodRuntime {
    tmp: tempfile::TempDir,
    main: Option<tokio::process::Child>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake API server.
pub struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    kubelet: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
        self.kubelet.abort();
        // Main processes die, private directories go.
        self.shared
            .runtimes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl FakeApi {
    /// Starts a fake on a free port with `opts.replicas` Ready standby pods.
    pub async fn start(opts: FakeOptions, runner: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                replicas: opts.replicas,
                pool_replicas: opts
                    .language_pools
                    .iter()
                    .map(|p| (p.deployment.clone(), p.replicas))
                    .collect(),
                ..State::default()
            }),
            opts,
            runner,
            changed: Notify::new(),
            runtimes: Mutex::new(HashMap::new()),
        });
        {
            let mut st = shared.lock();
            reconcile_replicas(&shared.opts, &mut st);
        }
        let server = tokio::spawn({
            let shared = shared.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            }
        });
        let kubelet = tokio::spawn(kubelet(shared.clone()));
        Self {
            addr,
            shared,
            server,
            kubelet,
        }
    }

    /// The pid of `pod`'s main process, if it runs one.
    pub fn main_pid(&self, pod: &str) -> Option<u32> {
        let runtimes = self
            .shared
            .runtimes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        runtimes.get(pod)?.main.as_ref()?.id()
    }

    /// Kills `pod`'s main process (SIGKILL) and waits for it: the pod
    /// stays, as it would until its container restarted.
    pub async fn kill_main(&self, pod: &str) {
        let main = self
            .shared
            .runtimes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(pod)
            .and_then(|r| r.main.take());
        let mut main = main.expect("the pod runs a main process");
        main.kill().await.expect("main process killed");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The options it was started with.
    pub fn options(&self) -> &FakeOptions {
        &self.shared.opts
    }

    /// Runs `f` on the state.
    pub fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.shared.lock())
    }

    /// Queues a fault for the next exec.
    pub fn inject_exec_fault(&self, fault: ExecFault) {
        self.shared.lock().faults.push_back(fault);
    }

    /// Holds back watch events (as a slow watch would) until
    /// [`thaw_watches`](Self::thaw_watches).
    pub fn freeze_watches(&self) {
        let mut st = self.shared.lock();
        st.frozen_since = Some(st.rv);
    }

    /// Sends the held-back watch events.
    pub fn thaw_watches(&self) {
        let mut st = self.shared.lock();
        let Some(since) = st.frozen_since.take() else {
            return;
        };
        let State {
            history, watchers, ..
        } = &mut *st;
        for c in history.iter().filter(|c| c.rv > since) {
            watchers.retain(|w| match w.selector.event(c.old.as_ref(), c.new.as_ref()) {
                Some((kind, obj)) => w.tx.send(event_line(kind, obj)).is_ok(),
                None => !w.tx.is_closed(),
            });
        }
    }

    /// Adds (or replaces) a pod as if some controller had created it.
    pub fn insert_pod(&self, mut pod: Value) {
        let mut st = self.shared.lock();
        let name = pod["metadata"]["name"]
            .as_str()
            .expect("pod has a name")
            .to_owned();
        st.rv += 1;
        let rv = st.rv;
        pod["metadata"]["resourceVersion"] = json!(rv.to_string());
        pod["metadata"]["namespace"] = json!(self.shared.opts.namespace);
        pod["apiVersion"] = json!("v1");
        pod["kind"] = json!("Pod");
        let old = st.pods.insert(name, pod.clone());
        record(&mut st, rv, old, Some(pod));
        reconcile_replicas(&self.shared.opts, &mut st);
        drop(st);
        self.shared.changed.notify_waiters();
    }

    /// Waits until `cond` holds, panicking with `what` after 60 s.
    pub async fn wait_for(&self, what: &str, cond: impl Fn(&State) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let notified = self.shared.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if cond(&self.shared.lock()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for: {what}");
            }
        }
    }
}

/// Names of pods of language pool `language` (`None`: generic pods) in
/// `state` (by label).
pub fn pods_of(st: &State, language: Option<&str>, state: &str) -> Vec<String> {
    st.pods
        .iter()
        .filter(|(_, p)| {
            let l = &p["metadata"]["labels"];
            l["warmpod.io/state"] == state && l["warmpod.io/language"].as_str() == language
        })
        .map(|(n, _)| n.clone())
        .collect()
}

/// Whether `pod` is Ready.
pub fn is_ready(st: &State, pod: &str) -> bool {
    st.pods.get(pod).is_some_and(|p| {
        p["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    })
}

/// Names of pods in `state` (by label) among `pods`.
pub fn pods_in_state(st: &State, state: &str) -> Vec<String> {
    st.pods
        .iter()
        .filter(|(_, p)| p["metadata"]["labels"]["warmpod.io/state"] == state)
        .map(|(n, _)| n.clone())
        .collect()
}

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

async fn handle(
    shared: Arc<Shared>,
    req: http::Request<Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let watch = query.get("watch").is_some_and(|v| v == "true" || v == "1");
    let selector = query.get("labelSelector").cloned().unwrap_or_default();
    shared.lock().requests.push(Logged {
        method: req.method().to_string(),
        path: path.clone(),
        watch,
        selector,
    });
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ns = &shared.opts.namespace;
    let response = match segments.as_slice() {
        ["api", "v1", "namespaces", n, "pods"] if n == ns && req.method() == Method::GET => {
            if watch {
                watch_pods(&shared, &query)
            } else {
                list_pods(&shared, &query)
            }
        }
        ["api", "v1", "namespaces", n, "pods", name] if n == ns => {
            let name = (*name).to_owned();
            match req.method().clone() {
                Method::GET => get_pod(&shared, &name),
                Method::PATCH => {
                    let ctype = content_type(&req);
                    let body = read_body(req).await;
                    patch_pod(&shared, &name, &ctype, &body)
                }
                Method::DELETE => {
                    let body = read_body(req).await;
                    delete_pod(&shared, &name, &body, &query)
                }
                _ => status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "method not allowed",
                ),
            }
        }
        ["api", "v1", "namespaces", n, "pods", name, "exec"] if n == ns => {
            let name = (*name).to_owned();
            exec(&shared, &name, req, &query)
        }
        [
            "apis",
            "apps",
            "v1",
            "namespaces",
            n,
            "deployments",
            d,
            "scale",
        ] if n == ns && deployments(&shared.opts).iter().any(|(name, _)| name == d) => {
            let d = (*d).to_owned();
            match req.method().clone() {
                Method::GET => scale_response(&shared, &d),
                Method::PATCH | Method::PUT => {
                    let ctype = content_type(&req);
                    let body = read_body(req).await;
                    set_scale(&shared, &d, &ctype, &body)
                }
                _ => status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "method not allowed",
                ),
            }
        }
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        ),
    };
    shared.changed.notify_waiters();
    Ok(response)
}

fn content_type(req: &http::Request<Incoming>) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn read_body(req: http::Request<Incoming>) -> Bytes {
    req.into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

fn full(code: StatusCode, body: Value) -> http::Response<Body> {
    http::Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

/// A `metav1.Status` failure, as the real API server sends it.
fn status(code: StatusCode, reason: &str, message: &str) -> http::Response<Body> {
    full(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

fn not_found(name: &str) -> http::Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("pods \"{name}\" not found"),
    )
}

// ---------------------------------------------------------------------------
// Pods: list, watch, get, patch, delete
// ---------------------------------------------------------------------------

fn list_pods(shared: &Shared, query: &HashMap<String, String>) -> http::Response<Body> {
    let selector = match Selector::parse(query.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let st = shared.lock();
    let items: Vec<Value> = st
        .pods
        .values()
        .filter(|p| selector.matches(p))
        .cloned()
        .collect();
    full(
        StatusCode::OK,
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
    )
}

fn watch_pods(shared: &Shared, query: &HashMap<String, String>) -> http::Response<Body> {
    let selector = match Selector::parse(query.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut st = shared.lock();
        if from == 0 {
            for pod in st.pods.values().filter(|p| selector.matches(p)) {
                let _ = tx.send(event_line("ADDED", pod));
            }
        } else {
            for c in st.history.iter().filter(|c| c.rv > from) {
                if let Some((kind, obj)) = selector.event(c.old.as_ref(), c.new.as_ref()) {
                    let _ = tx.send(event_line(kind, obj));
                }
            }
        }
        st.watchers.push(Watcher { selector, tx });
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    http::Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": obj}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn get_pod(shared: &Shared, name: &str) -> http::Response<Body> {
    match shared.lock().pods.get(name) {
        Some(p) => full(StatusCode::OK, p.clone()),
        None => not_found(name),
    }
}

fn patch_pod(shared: &Shared, name: &str, ctype: &str, body: &[u8]) -> http::Response<Body> {
    let mut st = shared.lock();
    let Some(current) = st.pods.get(name).cloned() else {
        return not_found(name);
    };
    let mut patched = current.clone();
    if let Err(resp) = apply_patch(&mut patched, ctype, body) {
        return *resp;
    }
    let rv = current["metadata"]["resourceVersion"].clone();
    match &patched["metadata"]["resourceVersion"] {
        v if *v == rv || v.is_null() => {}
        _ => {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on pods \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                ),
            );
        }
    }
    let label = |p: &Value, k: &str| p["metadata"]["labels"][k].as_str().unwrap_or("").to_owned();
    if label(&current, "warmpod.io/state") == "standby"
        && label(&patched, "warmpod.io/state") == "claimed"
    {
        let record = ClaimRecord {
            pod: name.to_owned(),
            job: label(&patched, "warmpod.io/job"),
            claimed_by: label(&patched, "warmpod.io/claimed-by"),
        };
        st.claims.push(record);
    }
    st.rv += 1;
    let new_rv = st.rv;
    patched["metadata"]["resourceVersion"] = json!(new_rv.to_string());
    st.pods.insert(name.to_owned(), patched.clone());
    record(&mut st, new_rv, Some(current), Some(patched.clone()));
    reconcile_replicas(&shared.opts, &mut st);
    full(StatusCode::OK, patched)
}

/// Applies a JSON patch or merge patch; errors are the API server's answers.
fn apply_patch(doc: &mut Value, ctype: &str, body: &[u8]) -> Result<(), Box<http::Response<Body>>> {
    let ctype = ctype.split(';').next().unwrap_or("").trim();
    match ctype {
        "application/json-patch+json" => {
            let patch: json_patch::Patch = serde_json::from_slice(body).map_err(|e| {
                Box::new(status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid JSON patch: {e}"),
                ))
            })?;
            json_patch::patch(doc, &patch).map_err(|e| {
                Box::new(status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    &format!("the server rejected our request due to an error in our request: {e}"),
                ))
            })
        }
        "application/merge-patch+json" => {
            let patch: Value = serde_json::from_slice(body).map_err(|e| {
                Box::new(status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("invalid merge patch: {e}"),
                ))
            })?;
            json_patch::merge(doc, &patch);
            Ok(())
        }
        other => Err(Box::new(status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json (got {other:?})"
            ),
        ))),
    }
}

fn delete_pod(
    shared: &Shared,
    name: &str,
    body: &[u8],
    query: &HashMap<String, String>,
) -> http::Response<Body> {
    let grace = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["gracePeriodSeconds"].as_i64())
        .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()))
        .unwrap_or(30);
    let mut st = shared.lock();
    if !st.pods.contains_key(name) {
        return not_found(name);
    }
    let pod = remove_pod(&mut st, name, grace);
    reconcile_replicas(&shared.opts, &mut st);
    full(StatusCode::OK, pod)
}

/// Removes a pod, killing its execs; with a grace period it is first
/// marked terminating (a `MODIFIED` event with `deletionTimestamp`).
fn remove_pod(st: &mut State, name: &str, grace: i64) -> Value {
    let mut pod = st.pods.remove(name).expect("pod exists");
    if grace > 0 {
        let old = pod.clone();
        st.rv += 1;
        pod["metadata"]["deletionTimestamp"] = json!(Timestamp::now().to_string());
        pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        pod["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let rv = st.rv;
        record(st, rv, Some(old), Some(pod.clone()));
    }
    st.rv += 1;
    let rv = st.rv;
    record(st, rv, Some(pod.clone()), None);
    for kill in st.running.remove(name).unwrap_or_default() {
        kill.cancel();
    }
    pod
}

/// Appends a change to the history and sends it to matching watchers
/// (unless watches are frozen).
fn record(st: &mut State, rv: u64, old: Option<Value>, new: Option<Value>) {
    if st.frozen_since.is_some() {
        st.history.push(Change { rv, old, new });
        return;
    }
    st.watchers
        .retain(|w| match w.selector.event(old.as_ref(), new.as_ref()) {
            Some((kind, obj)) => w.tx.send(event_line(kind, obj)).is_ok(),
            None => !w.tx.is_closed(),
        });
    st.history.push(Change { rv, old, new });
}

// ---------------------------------------------------------------------------
// The standby Deployment: scale subresource and a simulated ReplicaSet
// ---------------------------------------------------------------------------

fn scale_response(shared: &Shared, deployment: &str) -> http::Response<Body> {
    let st = shared.lock();
    full(StatusCode::OK, scale_json(&shared.opts, &st, deployment))
}

/// Every standby Deployment: the generic one (language `None`), then the
/// language pools'.
fn deployments(opts: &FakeOptions) -> Vec<(String, Option<String>)> {
    std::iter::once((opts.deployment.clone(), None))
        .chain(
            opts.language_pools
                .iter()
                .map(|p| (p.deployment.clone(), Some(p.language.clone()))),
        )
        .collect()
}

fn language_of(opts: &FakeOptions, deployment: &str) -> Option<String> {
    deployments(opts)
        .into_iter()
        .find(|(name, _)| name == deployment)
        .and_then(|(_, language)| language)
}

fn replicas_of(opts: &FakeOptions, st: &State, deployment: &str) -> i32 {
    if deployment == opts.deployment {
        st.replicas
    } else {
        st.pool_replicas.get(deployment).copied().unwrap_or(0)
    }
}

fn scale_json(opts: &FakeOptions, st: &State, deployment: &str) -> Value {
    let language = language_of(opts, deployment);
    let standby = st
        .pods
        .values()
        .filter(|p| is_replica(opts, language.as_deref(), p))
        .count();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": deployment, "namespace": opts.namespace, "resourceVersion": st.rv.to_string()},
        "spec": {"replicas": replicas_of(opts, st, deployment)},
        "status": {"replicas": standby, "selector": format!("app.kubernetes.io/name=warmpod-standby,warmpod.io/pool={},warmpod.io/state=standby", opts.pool)},
    })
}

fn set_scale(shared: &Shared, deployment: &str, ctype: &str, body: &[u8]) -> http::Response<Body> {
    let mut st = shared.lock();
    let mut scale = scale_json(&shared.opts, &st, deployment);
    let result = if ctype.starts_with("application/json") && !ctype.contains("patch") {
        serde_json::from_slice::<Value>(body)
            .map(|v| scale = v)
            .map_err(|e| {
                Box::new(status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &e.to_string(),
                ))
            })
    } else {
        apply_patch(&mut scale, ctype, body)
    };
    if let Err(resp) = result {
        return *resp;
    }
    let Some(replicas) = scale["spec"]["replicas"]
        .as_i64()
        .and_then(|r| i32::try_from(r).ok())
        .filter(|r| *r >= 0)
    else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "spec.replicas: Invalid value",
        );
    };
    if deployment == shared.opts.deployment {
        st.replicas = replicas;
    } else {
        st.pool_replicas.insert(deployment.to_owned(), replicas);
    }
    st.rv += 1;
    reconcile_replicas(&shared.opts, &mut st);
    full(StatusCode::OK, scale_json(&shared.opts, &st, deployment))
}

/// Whether `pod` counts for the standby ReplicaSet of language pool
/// `language` (`None`: the generic one): matches its selector, not
/// terminating.
fn is_replica(opts: &FakeOptions, language: Option<&str>, pod: &Value) -> bool {
    let l = &pod["metadata"]["labels"];
    l["app.kubernetes.io/name"] == "warmpod-standby"
        && l["warmpod.io/pool"] == opts.pool.as_str()
        && l["warmpod.io/state"] == "standby"
        && l["warmpod.io/language"].as_str() == language
        && pod["metadata"]["deletionTimestamp"].is_null()
}

/// The ReplicaSet controllers: create or delete standby pods until each
/// Deployment has its replicas. Generic pods are Running and Ready at
/// once; every other one has no annotations, so both shapes of the claim
/// patch are exercised. A language pool's pods carry its main command and
/// readiness probe, and are Ready once the kubelet's probe passes.
fn reconcile_replicas(opts: &FakeOptions, st: &mut State) {
    for (deployment, language) in deployments(opts) {
        let replicas = replicas_of(opts, st, &deployment);
        let pool = opts
            .language_pools
            .iter()
            .find(|p| Some(&p.language) == language.as_ref());
        let mut have: Vec<String> = st
            .pods
            .iter()
            .filter(|(_, p)| is_replica(opts, language.as_deref(), p))
            .map(|(n, _)| n.clone())
            .collect();
        while (have.len() as i64) < i64::from(replicas) {
            st.next_pod += 1;
            st.rv += 1;
            let name = format!("{deployment}-{:05}", st.next_pod);
            let mut pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": name, "namespace": opts.namespace, "uid": format!("uid-{}", st.next_pod),
                    "resourceVersion": st.rv.to_string(), "creationTimestamp": Timestamp::now().to_string(),
                    "labels": {"app.kubernetes.io/name": "warmpod-standby", "warmpod.io/pool": opts.pool, "warmpod.io/state": "standby"},
                },
                "spec": {"containers": [{"name": "runner", "image": "warmpod-standby:dev"}]},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            });
            if st.next_pod.is_multiple_of(2) {
                pod["metadata"]["annotations"] =
                    json!({"kubectl.kubernetes.io/default-container": "runner"});
            }
            if let Some(pool) = pool {
                pod["metadata"]["labels"]["warmpod.io/language"] = json!(pool.language);
                pod["spec"]["containers"][0]["command"] = json!(pool.main);
                pod["spec"]["containers"][0]["readinessProbe"] =
                    json!({"exec": {"command": pool.probe}});
                pod["status"]["conditions"][0]["status"] = json!("False");
            }
            st.pods.insert(name.clone(), pod.clone());
            let rv = st.rv;
            record(st, rv, None, Some(pod));
            have.push(name);
        }
        while (have.len() as i64) > i64::from(replicas) {
            let name = have.pop().expect("more than zero");
            remove_pod(st, &name, 0);
        }
    }
}

// ---------------------------------------------------------------------------
// The kubelet: main processes and readiness probes
// ---------------------------------------------------------------------------

/// How often the kubelet looks (its probes' period).
const KUBELET_PERIOD: Duration = Duration::from_millis(20);

/// Starts main processes of new pods, probes pods not Ready yet, and kills
/// the main process of pods that are gone or terminating.
async fn kubelet(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(KUBELET_PERIOD);
    loop {
        tick.tick().await;
        let (live, to_probe) = {
            let st = shared.lock();
            // Every pod not being deleted, with its main command if any.
            let live: HashMap<String, Option<Vec<String>>> = st
                .pods
                .iter()
                .filter(|(_, p)| p["metadata"]["deletionTimestamp"].is_null())
                .map(|(n, p)| (n.clone(), strings(&p["spec"]["containers"][0]["command"])))
                .collect();
            let to_probe: Vec<(String, Vec<String>)> = st
                .pods
                .iter()
                .filter(|(n, _)| live.contains_key(*n) && !is_ready(&st, n))
                .filter_map(|(n, p)| {
                    let probe =
                        strings(&p["spec"]["containers"][0]["readinessProbe"]["exec"]["command"])?;
                    Some((n.clone(), probe))
                })
                .collect();
            (live, to_probe)
        };
        {
            let mut runtimes = shared
                .runtimes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Dropping a runtime kills its main process and removes its /tmp.
            runtimes.retain(|pod, _| live.contains_key(pod));
            for (pod, command) in &live {
                if !runtimes.contains_key(pod) {
                    runtimes.insert(pod.clone(), start_main(&shared.runner, command.as_deref()));
                }
            }
        }
        for (pod, probe) in to_probe {
            let mut cmd = in_pod(&shared, &pod, &probe);
            let passed = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if passed {
                mark_ready(&shared, &pod);
            }
        }
    }
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// A pod's private `/tmp`, and its main command (if any) started in it.
fn start_main(runner: &std::path::Path, command: Option<&[String]>) -> PodRuntime {
    let tmp = tempfile::tempdir().expect("a private /tmp for the pod");
    let main = command.and_then(|command| {
        command_in(runner, tmp.path(), command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()
    });
    PodRuntime { tmp, main }
}

/// `command` as a process of `pod`, in its private `/tmp` (created here for
/// a generic pod the kubelet has not seen yet; a language pod's is created
/// with its main process, before it can be Ready and so be exec'd into).
fn in_pod(shared: &Shared, pod: &str, command: &[String]) -> tokio::process::Command {
    let mut runtimes = shared
        .runtimes
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let runtime = runtimes
        .entry(pod.to_owned())
        .or_insert_with(|| start_main(&shared.runner, None));
    command_in(&shared.runner, runtime.tmp.path(), command)
}

/// `command` with `warmpod-runner` the real runner, every `/tmp` path moved
/// into `tmp`, and the runner's work root there.
fn command_in(
    runner: &std::path::Path,
    tmp: &std::path::Path,
    command: &[String],
) -> tokio::process::Command {
    let moved: Vec<String> = command
        .iter()
        .map(|a| match a.strip_prefix("/tmp") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                format!("{}{rest}", tmp.display())
            }
            _ => a.clone(),
        })
        .collect();
    let program = if moved[0].ends_with("/warmpod-runner") {
        runner.to_path_buf()
    } else {
        PathBuf::from(&moved[0])
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&moved[1..]).env("WARMPOD_RUNNER_WORK_ROOT", tmp);
    cmd
}

fn mark_ready(shared: &Shared, pod: &str) {
    let mut st = shared.lock();
    let Some(old) = st.pods.get(pod).cloned() else {
        return;
    };
    let mut new = old.clone();
    new["status"]["conditions"][0]["status"] = json!("True");
    st.rv += 1;
    let rv = st.rv;
    new["metadata"]["resourceVersion"] = json!(rv.to_string());
    st.pods.insert(pod.to_owned(), new.clone());
    record(&mut st, rv, Some(old), Some(new));
    drop(st);
    shared.changed.notify_waiters();
}

// ---------------------------------------------------------------------------
// Exec over WebSocket
// ---------------------------------------------------------------------------

fn exec(
    shared: &Arc<Shared>,
    name: &str,
    mut req: http::Request<Incoming>,
    query: &HashMap<String, String>,
) -> http::Response<Body> {
    let commands: Vec<String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("command="))
        .map(decode)
        .collect();
    {
        let st = shared.lock();
        let Some(pod) = st.pods.get(name) else {
            return not_found(name);
        };
        let container = query
            .get("container")
            .cloned()
            .unwrap_or_else(|| "runner".into());
        let known = pod["spec"]["containers"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == container.as_str()));
        if !known {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("container {container} is not valid for pod {name}"),
            );
        }
    }
    if commands.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "you must specify at least 1 command",
        );
    }
    let offered: Vec<String> = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(',')
        .map(|p| p.trim().to_owned())
        .collect();
    let Some(protocol) = offered
        .iter()
        .find(|p| shared.opts.protocols.contains(&p.as_str()))
        .cloned()
    else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "no supported exec subprotocol offered",
        );
    };
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "not a WebSocket upgrade",
        );
    };
    let stdin = query.get("stdin").is_some_and(|v| v == "true");
    let (fault, kill) = {
        let mut st = shared.lock();
        let kill = CancellationToken::new();
        st.running
            .entry(name.to_owned())
            .or_default()
            .push(kill.clone());
        *st.execs_started.entry(name.to_owned()).or_default() += 1;
        (st.faults.pop_front(), kill)
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let shared = shared.clone();
    let pod = name.to_owned();
    let v5 = protocol == V5;
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        session(shared, pod, ws, v5, stdin, commands, fault, kill).await;
    });
    http::Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, key)
        .header(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(&protocol).unwrap(),
        )
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

#[allow(clippy::too_many_arguments)]
async fn session(
    shared: Arc<Shared>,
    pod: String,
    mut ws: Ws,
    v5: bool,
    want_stdin: bool,
    command: Vec<String>,
    fault: Option<ExecFault>,
    kill: CancellationToken,
) {
    if fault == Some(ExecFault::Hang) {
        // Read and drop whatever comes; never answer.
        loop {
            tokio::select! {
                m = ws.next() => if m.is_none() || matches!(m, Some(Err(_))) { return },
                () = kill.cancelled() => return,
            }
        }
    }
    let program = command[0].clone();
    let mut cmd = in_pod(&shared, &pod, &command);
    let mut child = match cmd
        .stdin(if want_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            // What the kubelet reports when the binary is missing.
            let msg = format!(
                "failed to exec in container: starting container process caused: exec: {program:?}: {e}"
            );
            let _ = ws.send(frame(3, json!({"metadata": {}, "status": "Failure", "message": msg, "reason": "InternalError"}).to_string().as_bytes())).await;
            let _ = ws.close(None).await;
            return;
        }
    };
    {
        let mut st = shared.lock();
        *st.execs_running.entry(pod.clone()).or_default() += 1;
    }
    shared.changed.notify_waiters();
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    // The real server opens each output channel with an empty frame.
    let _ = ws.send(frame(1, b"")).await;
    let _ = ws.send(frame(2, b"")).await;
    let (mut out_buf, mut err_buf) = ([0u8; 8192], [0u8; 8192]);
    let (mut out_open, mut err_open) = (true, true);
    let mut killed = false;
    let exit = loop {
        if !out_open && !err_open {
            break child.wait().await.ok();
        }
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Binary(data))) if !data.is_empty() => match data[0] {
                    0 => {
                        if let Some(s) = stdin.as_mut() {
                            let _ = s.write_all(&data[1..]).await;
                            let _ = s.flush().await;
                        }
                        if fault == Some(ExecFault::DropAfterStdin) {
                            // Let the runner start on the job, then vanish.
                            let _ = child.kill().await;
                            finish_exec(&shared, &pod);
                            drop(ws);
                            return;
                        }
                    }
                    255 if v5 && data.get(1) == Some(&0) => stdin = None,
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = child.kill().await;
                    finish_exec(&shared, &pod);
                    return;
                }
                Some(Ok(_)) => {}
            },
            n = stdout.read(&mut out_buf), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => { let _ = ws.send(frame(1, &out_buf[..n])).await; }
            },
            n = stderr.read(&mut err_buf), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => { let _ = ws.send(frame(2, &err_buf[..n])).await; }
            },
            () = kill.cancelled(), if !killed => {
                // The pod was deleted: its processes die with it.
                killed = true;
                let _ = child.start_kill();
            }
        }
    };
    finish_exec(&shared, &pod);
    let code = exit.map_or(137, |s| s.code().unwrap_or(137));
    let status = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure",
               "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
               "reason": "NonZeroExitCode",
               "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    };
    let _ = ws.send(frame(3, status.to_string().as_bytes())).await;
    let _ = ws.close(None).await;
    // Let the client read everything before the socket goes away.
    while let Some(Ok(_)) = ws.next().await {}
}

fn finish_exec(shared: &Shared, pod: &str) {
    let mut st = shared.lock();
    if let Some(n) = st.execs_running.get_mut(pod) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            st.execs_running.remove(pod);
        }
    }
    drop(st);
    shared.changed.notify_waiters();
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::binary(v)
}

// ---------------------------------------------------------------------------
// Label selectors and query strings
// ---------------------------------------------------------------------------

/// An equality-based label selector (`k=v`, `k==v`, `k!=v`, `k`, `!k`).
#[derive(Debug, Clone, Default)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, Clone)]
enum Requirement {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

impl Selector {
    fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(k.trim().into())
            } else if part.contains(' ') {
                return Err(format!("unable to parse requirement: {part:?}"));
            } else {
                Requirement::Exists(part.into())
            };
            out.push(req);
        }
        Ok(Self(out))
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels[k.as_str()] == v.as_str(),
            Requirement::Ne(k, v) => labels[k.as_str()] != v.as_str(),
            Requirement::Exists(k) => !labels[k.as_str()].is_null(),
            Requirement::Absent(k) => labels[k.as_str()].is_null(),
        })
    }

    /// The watch event a watcher with this selector gets for a change.
    fn event<'a>(
        &self,
        old: Option<&'a Value>,
        new: Option<&'a Value>,
    ) -> Option<(&'static str, &'a Value)> {
        let was = old.is_some_and(|o| self.matches(o));
        let is = new.is_some_and(|n| self.matches(n));
        match (was, is) {
            (false, true) => Some(("ADDED", new?)),
            (true, true) => Some(("MODIFIED", new?)),
            (true, false) => Some(("DELETED", new.or(old)?)),
            (false, false) => None,
        }
    }
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
