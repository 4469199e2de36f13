//! Shared test helpers: [`spawn_app`] starts the real `api-server` (and,
//! unless told otherwise, the real `pod-manager` with `warmpod-runner`)
//! against the real RabbitMQ, with unique queue names and free ports, and
//! returns a [`TestApp`] with request helpers. Processes are stopped and
//! the test's queues and exchanges deleted on drop. Child logs are shown
//! only with `TEST_LOG` set.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener as StdListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Once, mpsc},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use serde_json::Value;
use uuid::Uuid;

/// How long anything in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The broker the tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_api-server"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

/// `pod-manager` and `warmpod-runner` beside `api-server`, built on demand.
fn pod_manager_bins() -> (PathBuf, PathBuf) {
    static BUILD: Once = Once::new();
    let dir = bin_dir();
    let (pm, runner) = (dir.join("pod-manager"), dir.join("warmpod-runner"));
    BUILD.call_once(|| {
        if !pm.exists() || !runner.exists() {
            let target = dir.parent().expect("target dir");
            let status = Command::new(env!("CARGO"))
                .args(["build", "-q", "-p", "pod-manager", "-p", "warmpod-runner"])
                .env("CARGO_TARGET_DIR", target)
                .status()
                .expect("running cargo build");
            assert!(
                status.success(),
                "building pod-manager and warmpod-runner failed"
            );
        }
    });
    (pm, runner)
}

/// What to start.
#[derive(Clone)]
pub struct Options {
    /// Start a pod-manager (jobs actually run).
    pub pod_manager: bool,
    /// How many api-server replicas.
    pub replicas: usize,
    /// Extra env for every api-server.
    pub env: Vec<(String, String)>,
    /// `WARMPOD_QUEUE_MAX_LENGTH` for everyone.
    pub queue_max_length: Option<u32>,
    /// Override `AMQP_URL` of the api-servers (a dead broker).
    pub amqp_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pod_manager: true,
            replicas: 1,
            env: Vec::new(),
            queue_max_length: None,
            amqp_url: None,
        }
    }
}

impl Options {
    /// Without a pod-manager: jobs stay queued.
    pub fn without_pod_manager() -> Self {
        Self {
            pod_manager: false,
            ..Self::default()
        }
    }

    /// Adds an api-server env var.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
}

/// A child process stopped with SIGTERM (then SIGKILL) on drop.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        use nix::{sys::signal, unistd::Pid};
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = signal::kill(pid, signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The running system under test.
pub struct TestApp {
    /// Base URLs of the api-server replicas (`http://127.0.0.1:port`).
    pub addresses: Vec<String>,
    /// The queue-name prefix.
    pub prefix: String,
    /// A client without redirects.
    pub client: reqwest::Client,
    api_servers: Vec<Proc>,
    pod_manager: Option<Proc>,
}

fn log_stdio() -> Stdio {
    if std::env::var_os("TEST_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

/// Spawns a pod-manager and one api-server.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// Spawns what `options` asks for and waits until every api-server is ready
/// (or, with a dead broker, listening).
pub async fn spawn_app_with(options: Options) -> TestApp {
    let prefix = format!("test-{}.", Uuid::new_v4().simple());
    let max_len = options.queue_max_length.map(|n| n.to_string());
    let pod_manager = options.pod_manager.then(|| {
        let (pm, runner) = pod_manager_bins();
        let mut cmd = Command::new(pm);
        cmd.env("AMQP_URL", amqp_url())
            .env("WARMPOD_QUEUE_PREFIX", &prefix)
            .env("WARMPOD_METRICS_ADDR", "127.0.0.1:0")
            .env("WARMPOD_POOL_SIZE", "1")
            .env("WARMPOD_BACKEND", "local")
            .env("WARMPOD_RUNNER_PATH", runner)
            .env("WARMPOD_CONNECTION_NAME", format!("{prefix}pod-manager"))
            .stdin(Stdio::null())
            .stdout(log_stdio())
            .stderr(log_stdio());
        if let Some(n) = &max_len {
            cmd.env("WARMPOD_QUEUE_MAX_LENGTH", n);
        }
        Proc {
            name: "pod-manager",
            child: cmd.spawn().expect("spawning pod-manager"),
        }
    });
    let mut api_servers = Vec::new();
    let mut addresses = Vec::new();
    for _ in 0..options.replicas {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_api-server"));
        cmd.env(
            "AMQP_URL",
            options.amqp_url.clone().unwrap_or_else(amqp_url),
        )
        .env("WARMPOD_QUEUE_PREFIX", &prefix)
        .env("WARMPOD_HTTP_ADDR", "127.0.0.1:0")
        .env("WARMPOD_WAIT_TIMEOUT_MS", "30000")
        .env_remove("WARMPOD_API_KEYS")
        .env_remove("WARMPOD_RATE_LIMIT_PER_S")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_stdio());
        if let Some(n) = &max_len {
            cmd.env("WARMPOD_QUEUE_MAX_LENGTH", n);
        }
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning api-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let proc = Proc {
            name: "api-server",
            child,
        };
        let port = read_port(stdout);
        addresses.push(format!("http://127.0.0.1:{port}"));
        api_servers.push(proc);
    }
    let app = TestApp {
        addresses,
        prefix,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(DEADLINE)
            .build()
            .expect("client"),
        api_servers,
        pod_manager,
    };
    if options.amqp_url.is_none() {
        for i in 0..app.addresses.len() {
            app.wait_ready(i).await;
        }
    }
    app
}

/// Reads `api-server listening on http://127.0.0.1:PORT` from stdout.
fn read_port(stdout: impl Read + Send + 'static) -> u16 {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(DEADLINE)
        .expect("api-server printed its address");
    line.rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

impl TestApp {
    /// The first replica's URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addresses[0])
    }

    /// Replica `i`'s URL for `path`.
    pub fn url_at(&self, i: usize, path: &str) -> String {
        format!("{}{path}", self.addresses[i])
    }

    /// Waits until replica `i` answers `/readyz` with 200.
    pub async fn wait_ready(&self, i: usize) {
        self.wait_readiness(i, 200).await;
    }

    /// POSTs JSON to replica 0.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// GETs from replica 0.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// Runs a native job synchronously; asserts 200 and returns the result.
    pub async fn run(&self, job: &Value) -> Value {
        let r = self.post_json("/v1/executions?wait=true", job).await;
        assert_eq!(r.status(), 200, "wait=true should finish");
        r.json().await.expect("JSON result")
    }

    /// Polls replica `i` (with a deadline) until job `id` is final there.
    pub async fn final_state_at(&self, i: usize, id: &str) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let r = self
                .client
                .get(self.url_at(i, &format!("/v1/executions/{id}")))
                .send()
                .await
                .expect("GET");
            if r.status() == 200 {
                let v: Value = r.json().await.expect("JSON");
                if !matches!(v["status"].as_str(), Some("queued" | "running")) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never finished on replica {i}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of one counter series (e.g.
    /// `warmpod_api_callbacks_total{outcome="delivered"}`) on replica `i`;
    /// 0 while it has not appeared.
    pub async fn counter(&self, i: usize, series: &str) -> u64 {
        let text = self
            .client
            .get(self.url_at(i, "/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Stops the pod-manager (jobs stay queued from now on).
    pub fn stop_pod_manager(&mut self) {
        self.pod_manager.take();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.api_servers.clear();
        self.pod_manager.take();
        let prefix = self.prefix.clone();
        // Delete this test's durable queues and exchanges.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(delete_topology(&prefix));
        })
        .join();
    }
}

/// Deletes the queues and exchanges of `prefix`.
pub async fn delete_topology(prefix: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(conn) =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    for q in ["warmpod.jobs", "warmpod.jobs.dead", "warmpod.callbacks"] {
        let _ = ch
            .queue_delete(
                format!("{prefix}{q}").as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
    }
    for x in ["warmpod.events", "warmpod.dlx"] {
        let _ = ch
            .exchange_delete(
                format!("{prefix}{x}").as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

/// A native job.
pub fn job(language: &str, source: &str) -> Value {
    serde_json::json!({"language": language, "source": source})
}

/// One HTTP request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    /// `POST`, `PUT`, ...
    pub method: String,
    /// Lower-cased header names with values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A tiny HTTP/1.1 server that records every request and answers with the
/// configured status codes in turn (then 200): a webhook receiver.
pub struct Receiver {
    /// `http://127.0.0.1:port`.
    pub url: String,
    rx: tokio::sync::mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    /// Starts a receiver answering `statuses` first, then 200.
    pub fn start(statuses: Vec<u16>) -> Self {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut statuses = statuses.into_iter();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(req) = read_request(&mut stream) else {
                    continue;
                };
                let status = statuses.next().unwrap_or(200);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.flush();
                if tx.send(req).is_err() {
                    return;
                }
            }
        });
        Self { url, rx }
    }

    /// The next request, within the deadline.
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(DEADLINE, self.rx.recv())
            .await
            .expect("a callback within the deadline")
            .expect("receiver alive")
    }

    /// Requests received so far, without waiting.
    pub fn drain(&mut self) -> Vec<Received> {
        let mut out = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            out.push(r);
        }
        out
    }
}

fn read_request(stream: &mut std::net::TcpStream) -> Option<Received> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let method = line.split_whitespace().next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        method,
        headers,
        body,
    })
}

/// Reads Server-Sent Events until the stream ends; returns `(event, data)`.
pub async fn read_sse(response: reqwest::Response) -> Vec<(String, Value)> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.expect("SSE chunk")));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let mut name = None;
                let mut data = None;
                for line in frame.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = Some(n.to_string());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(d).expect("JSON data"));
                    }
                }
                if let (Some(n), Some(d)) = (name, data) {
                    events.push((n, d));
                }
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("SSE stream ended within the deadline");
    events
}

/// A TCP proxy in front of RabbitMQ that a test can take down (cutting
/// every connection and refusing new ones) and bring back.
pub struct BrokerProxy {
    /// The proxy's `AMQP_URL`.
    pub amqp_url: String,
    down: tokio::sync::watch::Sender<bool>,
}

impl BrokerProxy {
    /// Starts forwarding to the broker of [`amqp_url`].
    pub async fn start() -> Self {
        let url = amqp_url();
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let (creds, rest) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
        let (hostport, vhost) = rest.split_once('/').unwrap_or((rest, "%2f"));
        let upstream = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:5672")
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (down, down_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if *down_rx.borrow() {
                    continue; // dropped: refused while down
                }
                let upstream = upstream.clone();
                let mut down_rx = down_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down_rx.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        Self {
            amqp_url: format!("amqp://{creds}@127.0.0.1:{port}/{vhost}"),
            down,
        }
    }

    /// Cuts every connection and refuses new ones (`true`), or accepts again.
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

impl TestApp {
    /// Waits until replica `i`'s `/readyz` answers `status`.
    pub async fn wait_readiness(&self, i: usize, status: u16) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(r) = self.client.get(self.url_at(i, "/readyz")).send().await
                && r.status() == status
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz of replica {i} never answered {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
