//! Shared helpers: configs with unique queue names, a test broker client
//! (publish jobs, watch events, read the dead-letter queue), job builders,
//! waiting on conditions with deadlines, a cuttable TCP proxy, and the
//! real `pod-manager` binary as a child process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use pod_manager::config::Config;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;
use warmpod_protocol::{Job, Limits, SourceFile};

pub use crate::broker::{TestBroker, amqp_url, failed_deliveries_header, unique_prefix};

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

/// Writes an executable fake `warmpod-runner` (a Bash script) in `dir`:
/// like the real one, given `--ready-fd N` it writes one byte to N and
/// closes it first (then shifts those two arguments away), and runs
/// `body` after that.
pub fn fake_runner(dir: &std::path::Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("warmpod-runner");
    let script = format!(
        "#!/usr/bin/bash\n\
         if [ \"$1\" = --ready-fd ]; then printf R >&\"$2\"; eval \"exec $2>&-\"; shift 2; fi\n\
         {body}"
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
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
