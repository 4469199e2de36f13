//! Shared helpers: configs with unique queue names, a test broker client
//! (publish jobs, watch events, read the dead-letter queue), job builders,
//! waiting on conditions with deadlines, a cuttable TCP proxy, and the
//! real `pod-manager` binary as a child process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use pod_manager::config::{Config, QueueNames};
use pod_manager::consumer::now_ms;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;
use warmpod_protocol::{Job, JobEvent, JobMessage, JobMeta, Limits, SourceFile, Status};

/// The broker the tests use.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_string())
}

/// Logs to the test output when `TEST_LOG` is set.
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            pod_manager::telemetry::init(pod_manager::config::LogFormat::Text, std::io::stderr);
        }
    });
}

/// `warmpod-runner` next to the test binary's target dir, built on demand.
pub fn runner_path() -> PathBuf {
    static BUILD: Once = Once::new();
    let path = pod_manager::config::default_runner_path();
    BUILD.call_once(|| {
        if !path.exists() {
            let target = path
                .parent()
                .and_then(|d| d.parent())
                .expect("runner path has a target dir");
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "-q", "-p", "warmpod-runner"])
                .env("CARGO_TARGET_DIR", target)
                .status()
                .expect("running cargo build");
            assert!(status.success(), "building warmpod-runner failed");
        }
    });
    assert!(path.exists(), "no warmpod-runner at {}", path.display());
    path
}

/// A unique queue-name prefix.
pub fn unique_prefix() -> String {
    format!("test-{}.", Uuid::new_v4().simple())
}

/// The environment of a test pod-manager: unique names, free metrics
/// port, the built runner, plus `extra`.
pub fn test_env(prefix: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("AMQP_URL", amqp_url()),
        ("WARMPOD_QUEUE_PREFIX", prefix.to_string()),
        ("WARMPOD_METRICS_ADDR", "127.0.0.1:0".to_string()),
        ("WARMPOD_POOL_SIZE", "2".to_string()),
        (
            "WARMPOD_RUNNER_PATH",
            runner_path().to_string_lossy().into_owned(),
        ),
        ("WARMPOD_CONNECTION_NAME", format!("{prefix}pod-manager")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// A typed config from [`test_env`].
pub fn test_config(prefix: &str, extra: &[(&str, &str)]) -> Config {
    let env = test_env(prefix, extra);
    Config::from_lookup(|k| env.get(k).cloned()).expect("test config is valid")
}

/// A job in `language` with one source file.
pub fn job(language: &str, source: &str) -> Job {
    Job {
        id: Uuid::new_v4(),
        language: language.into(),
        files: vec![SourceFile {
            name: String::new(),
            content: source.into(),
        }],
        stdin: String::new(),
        args: vec![],
        limits: Limits::default(),
        compile_limits: Limits::default(),
    }
}

/// Waits until `cond` holds, polling, or panics after `within`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The test's own broker client.
pub struct TestBroker {
    pub names: QueueNames,
    connection: Connection,
    channel: Channel,
    events_rx: watch::Receiver<Vec<JobEvent>>,
    versions_rx: watch::Receiver<Vec<serde_json::Value>>,
}

impl TestBroker {
    /// Connects, declares the topology with `prefix` and starts collecting
    /// every event.
    pub async fn new(prefix: &str) -> Self {
        let names = QueueNames::with_prefix(prefix);
        let connection =
            match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
                Ok(c) => c,
                Err(_) => {
                    ensure_rabbitmq();
                    Connection::connect(&amqp_url(), ConnectionProperties::default())
                        .await
                        .expect("RabbitMQ does not answer even after scripts/ensure-rabbitmq.sh")
                }
            };
        let channel = connection.create_channel().await.unwrap();
        pod_manager::queue::declare_topology(
            &channel,
            &names,
            warmpod_protocol::queue::JOBS_QUEUE_MAX_LENGTH,
        )
        .await
        .unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let events_channel = connection.create_channel().await.unwrap();
        let q = events_channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        events_channel
            .queue_bind(
                q.name().clone(),
                names.events.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut consumer = events_channel
            .basic_consume(
                q.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (events_tx, events_rx) = watch::channel(Vec::new());
        let (versions_tx, versions_rx) = watch::channel(Vec::new());
        tokio::spawn(async move {
            let _keep = events_channel;
            while let Some(Ok(d)) = consumer.next().await {
                if d.routing_key.as_str() == warmpod_protocol::queue::RUNTIME_VERSIONS_ROUTING_KEY {
                    let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
                    versions_tx.send_modify(|all| all.push(v));
                } else {
                    let e: JobEvent =
                        serde_json::from_slice(&d.data).expect("events are JobEvents");
                    assert_eq!(d.routing_key.as_str(), e.routing_key());
                    events_tx.send_modify(|all| all.push(e));
                }
            }
        });
        Self {
            names,
            connection,
            channel,
            events_rx,
            versions_rx,
        }
    }

    /// Publishes `job` as a JobMessage (persistent, confirmed).
    pub async fn publish(&self, job: &Job) {
        self.publish_with(job, FieldTable::default()).await
    }

    /// Publishes `job` with message headers.
    pub async fn publish_with(&self, job: &Job, headers: FieldTable) {
        let msg = JobMessage {
            job: job.clone(),
            submitted_at_ms: now_ms(),
            meta: JobMeta {
                tag: Some(format!("tag-{}", job.id)),
                ..JobMeta::default()
            },
        };
        self.publish_raw(&serde_json::to_vec(&msg).unwrap(), headers)
            .await;
    }

    /// Publishes raw bytes to the jobs queue.
    pub async fn publish_raw(&self, body: &[u8], headers: FieldTable) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.names.jobs.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the broker refused the job");
    }

    /// Every event seen so far.
    pub fn events(&self) -> Vec<JobEvent> {
        self.events_rx.borrow().clone()
    }

    /// Final events of `id` seen so far.
    pub fn finals(&self, id: Uuid) -> Vec<JobEvent> {
        self.events()
            .into_iter()
            .filter(|e| e.id == id && e.status.is_final())
            .collect()
    }

    /// Waits for the first event of `id` with `status` (any final status
    /// when `None`).
    pub async fn wait_event(&self, id: Uuid, status: Option<Status>, within: Duration) -> JobEvent {
        let mut rx = self.events_rx.clone();
        tokio::time::timeout(
            within,
            rx.wait_for(|all| {
                all.iter()
                    .any(|e| e.id == id && status.map_or(e.status.is_final(), |s| e.status == s))
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("no {status:?} event for {id} within {within:?}"))
        .unwrap()
        .iter()
        .find(|e| e.id == id && status.map_or(e.status.is_final(), |s| e.status == s))
        .cloned()
        .unwrap()
    }

    /// Waits for the first runtime versions announcement.
    pub async fn wait_versions(&self, within: Duration) -> serde_json::Value {
        let mut rx = self.versions_rx.clone();
        tokio::time::timeout(within, rx.wait_for(|v| !v.is_empty()))
            .await
            .expect("no runtime versions announced")
            .unwrap()[0]
            .clone()
    }

    /// Takes one message from the dead-letter queue, waiting for it.
    pub async fn wait_dead_letter(&self, within: Duration) -> (Vec<u8>, FieldTable) {
        let deadline = Instant::now() + within;
        let mut pause = Duration::from_millis(10);
        loop {
            let got = self
                .channel
                .basic_get(
                    self.names.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap();
            if let Some(m) = got {
                let headers = m.delivery.properties.headers().clone().unwrap_or_default();
                return (m.delivery.data.clone(), headers);
            }
            assert!(
                Instant::now() < deadline,
                "nothing dead-lettered within {within:?}"
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Messages waiting in the jobs queue.
    pub async fn jobs_waiting(&self) -> u32 {
        let ch = self.connection.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                self.names.jobs.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = ch.close(200, "".into()).await;
        q.message_count()
    }

    /// Deletes the test's queues and exchanges.
    pub async fn cleanup(self) {
        let ch = self.connection.create_channel().await.unwrap();
        for q in [&self.names.jobs, &self.names.dead_letter_queue] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for x in [&self.names.events, &self.names.dead_letter_exchange] {
            let _ = ch
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.connection.close(200, "".into()).await;
    }
}

/// Starts RabbitMQ through the project's script (idempotent).
fn ensure_rabbitmq() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ensure-rabbitmq.sh");
    let status = std::process::Command::new(script)
        .env("AMQP_URL", amqp_url())
        .status()
        .expect("running scripts/ensure-rabbitmq.sh");
    assert!(status.success(), "scripts/ensure-rabbitmq.sh failed");
}

/// A header table with the quorum queue's delivery count preset.
pub fn delivery_count_header(n: i64) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert(
        warmpod_protocol::queue::DELIVERY_COUNT_HEADER.into(),
        AMQPValue::LongLongInt(n),
    );
    h
}

/// A TCP proxy in front of the broker whose connections the test can cut,
/// which to the pod-manager looks like a broker restart.
pub struct CuttableProxy {
    pub port: u16,
    cut: watch::Sender<u64>,
    pub accepted: Arc<Mutex<u64>>,
}

impl CuttableProxy {
    /// Listens on a free port and forwards to the broker.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = {
            let url = amqp_url();
            let rest = url.split("://").nth(1).unwrap();
            let hostport = rest.rsplit('@').next().unwrap().split('/').next().unwrap();
            if hostport.contains(':') {
                hostport.to_string()
            } else {
                format!("{hostport}:5672")
            }
        };
        let (cut, cut_rx) = watch::channel(0u64);
        let accepted = Arc::new(Mutex::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                *counter.lock().unwrap() += 1;
                let upstream = upstream.clone();
                let mut cut_rx = cut_rx.clone();
                cut_rx.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            cut,
            accepted,
        }
    }

    /// The broker URL through the proxy.
    pub fn url(&self) -> String {
        let url = amqp_url();
        let (scheme, rest) = url.split_once("://").unwrap();
        let (creds, after) = rest.rsplit_once('@').unwrap();
        let vhost = after.split_once('/').map(|(_, v)| v).unwrap_or("");
        format!("{scheme}://{creds}@127.0.0.1:{}/{vhost}", self.port)
    }

    /// Drops every proxied connection (new ones are still accepted).
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// The real `pod-manager` binary running as a child process.
pub struct PodManagerProcess {
    pub child: tokio::process::Child,
}

impl PodManagerProcess {
    /// Starts the binary with `env` (nothing inherited but `PATH`).
    pub fn spawn(env: &HashMap<String, String>) -> Self {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pod-manager"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if std::env::var_os("TEST_LOG").is_none() {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        Self {
            child: cmd.spawn().expect("starting pod-manager"),
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    /// Pids of every process below this one (its sandboxes).
    pub fn descendants(&self) -> Vec<u32> {
        descendants(self.pid() as u32)
    }
}

/// Pids of every process below `pid`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{p}/task"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            .unwrap_or_default();
        for t in tasks {
            let t = t.to_string_lossy();
            let children =
                std::fs::read_to_string(format!("/proc/{p}/task/{t}/children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// cgroup directories of pod-manager `pid` that still exist.
pub fn cgroups_of(pid: i32) -> Vec<PathBuf> {
    let prefix = format!("warmpod-pm-{pid}-");
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                out.push(e.path());
            } else if dir.components().count() < 9 {
                stack.push(e.path());
            }
        }
    }
    out
}
