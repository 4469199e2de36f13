//! Typed configuration, read once from the environment at start-up.
//!
//! Every variable is documented in `docs/operations.md` ("pod-manager
//! configuration"). [`Config::from_env`] reads the process environment;
//! [`Config::from_lookup`] takes any lookup function, so tests build a
//! config without touching the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::pool::kube::{KubeConfig, LanguagePool, ScalePolicy};
use warmpod_protocol::queue::{
    DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, EVENTS_EXCHANGE, JOBS_QUEUE, JOBS_QUEUE_MAX_LENGTH,
    JOBS_QUEUE_TYPE_VAR, JobsQueueType,
};

/// Default `AMQP_URL`.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default `WARMPOD_POOL_SIZE`: ready sandboxes kept.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Default `WARMPOD_MAX_ATTEMPTS`: deliveries of one job before it is given up.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default `WARMPOD_JOB_GRACE_MS`: added to a job's wall limits before the
/// sandbox is considered hung.
pub const DEFAULT_JOB_GRACE_MS: u64 = 5_000;
/// Default `WARMPOD_METRICS_ADDR`.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9091";
/// Default `WARMPOD_SANDBOX_MEMORY_MB`: the cgroup memory limit of one
/// sandbox. Above the largest job memory limit (2 GiB) plus the runner's and
/// compilers' own needs, so the runner's precise verdict wins.
pub const DEFAULT_SANDBOX_MEMORY_MB: u64 = 3_072;
/// Default `WARMPOD_SANDBOX_PIDS_MAX`: the cgroup pids limit of one sandbox,
/// above the largest `max_processes` a job may ask for (512).
pub const DEFAULT_SANDBOX_PIDS_MAX: u64 = 1_024;
/// Default `WARMPOD_SANDBOX_TMP_MB`: size of a sandbox's private `/tmp`.
pub const DEFAULT_SANDBOX_TMP_MB: u64 = 512;
/// Default `WARMPOD_SANDBOX_UID_BASE`: sandbox `i` runs as uid/gid base + i
/// when the pod-manager is root.
pub const DEFAULT_SANDBOX_UID_BASE: u32 = 62_000;
/// Default `WARMPOD_VERSIONS_INTERVAL_S`.
pub const DEFAULT_VERSIONS_INTERVAL_S: u64 = 60;
/// Default `WARMPOD_PRESTART_LANGUAGES`: languages whose interpreter may
/// be pre-started in a sandbox, as the job mix asks. Not `java` (opt-in):
/// its two warm JVMs cost two to three times a cold compile + run's CPU to start
/// and ~220 MB per sandbox, too much for the default 2-core box's Java
/// throughput (docs/operations.md).
pub const DEFAULT_PRESTART_LANGUAGES: &str = "python,javascript";
/// Default `WARMPOD_BWRAP`.
pub const DEFAULT_BWRAP: &str = "/usr/bin/bwrap";

/// Exit code for bad configuration (`EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason} (got {value:?})")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What was found.
    pub value: String,
    /// Why it is wrong.
    pub reason: String,
}

/// Parses `WARMPOD_PRESTART_LANGUAGES`: language keys or aliases with a
/// pre-start command in the language table, or `none`.
fn prestart_languages(raw: &str) -> Result<Vec<&'static str>, ConfigError> {
    let var = "WARMPOD_PRESTART_LANGUAGES";
    if raw.trim().eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut keys = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let language = warmpod_protocol::Language::find(name)
            .ok_or_else(|| bad(var, raw, &format!("unknown language {name:?}")))?;
        if language.prestart.is_none() {
            return Err(bad(
                var,
                raw,
                &format!("{} cannot be pre-started", language.key),
            ));
        }
        if !keys.contains(&language.key) {
            keys.push(language.key);
        }
    }
    Ok(keys)
}

/// Which [`WarmPool`](crate::pool::WarmPool) backend runs jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// bubblewrap sandboxes on this machine (the default).
    Local,
    /// Standby pods in a Kubernetes cluster.
    Kube,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A connection URL whose password never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl(String);

impl AmqpUrl {
    /// The full URL, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        let s = &self.0;
        match (s.find("://"), s.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &s[scheme + 3..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        format!("{}{}:***{}", &s[..scheme + 3], &userinfo[..colon], &s[at..])
                    }
                    None => s.clone(),
                }
            }
            _ => s.clone(),
        }
    }
}

impl std::fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// RabbitMQ names, all derived from one optional prefix so that test suites
/// (and separate deployments on one broker) never share queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    /// The jobs queue ([`JOBS_QUEUE`]).
    pub jobs: String,
    /// The dead-letter exchange ([`DEAD_LETTER_EXCHANGE`]).
    pub dead_letter_exchange: String,
    /// The dead-letter queue ([`DEAD_LETTER_QUEUE`]).
    pub dead_letter_queue: String,
    /// The events exchange ([`EVENTS_EXCHANGE`]).
    pub events: String,
}

impl QueueNames {
    /// The protocol's names with `prefix` in front (empty: the names as is).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            jobs: format!("{prefix}{JOBS_QUEUE}"),
            dead_letter_exchange: format!("{prefix}{DEAD_LETTER_EXCHANGE}"),
            dead_letter_queue: format!("{prefix}{DEAD_LETTER_QUEUE}"),
            events: format!("{prefix}{EVENTS_EXCHANGE}"),
        }
    }
}

/// Settings of the local (bubblewrap) backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalConfig {
    /// Ready sandboxes kept (`WARMPOD_POOL_SIZE`).
    pub pool_size: usize,
    /// The `warmpod-runner` binary on the host (`WARMPOD_RUNNER_PATH`).
    pub runner_path: PathBuf,
    /// The `bwrap` binary (`WARMPOD_BWRAP`).
    pub bwrap_path: PathBuf,
    /// cgroup memory limit per sandbox, MiB (`WARMPOD_SANDBOX_MEMORY_MB`).
    pub memory_mb: u64,
    /// cgroup pids limit per sandbox (`WARMPOD_SANDBOX_PIDS_MAX`).
    pub pids_max: u64,
    /// Size of the private `/tmp`, MiB (`WARMPOD_SANDBOX_TMP_MB`).
    pub tmp_mb: u64,
    /// First sandbox uid/gid when running as root (`WARMPOD_SANDBOX_UID_BASE`).
    pub uid_base: u32,
    /// Whether to use cgroups at all (`WARMPOD_CGROUPS`, `auto` or `off`).
    pub cgroups: bool,
    /// Added to a job's wall limits before a silent sandbox is given up
    /// (`WARMPOD_JOB_GRACE_MS`).
    pub job_grace: Duration,
    /// Language keys whose interpreter sandboxes may pre-start, split by
    /// the job mix (`WARMPOD_PRESTART_LANGUAGES`, comma-separated, `none`
    /// for none).
    pub prestart_languages: Vec<&'static str>,
}

/// The whole pod-manager configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Broker URL (`AMQP_URL`).
    pub amqp_url: AmqpUrl,
    /// Queue and exchange names (`WARMPOD_QUEUE_PREFIX`).
    pub queues: QueueNames,
    /// `x-max-length` of the jobs queue (`WARMPOD_QUEUE_MAX_LENGTH`); must
    /// equal the api-server's.
    pub queue_max_length: i64,
    /// Type of the jobs queue (`WARMPOD_JOBS_QUEUE_TYPE`, `classic` or
    /// `quorum`, default `classic`); must equal the api-server's.
    pub jobs_queue_type: JobsQueueType,
    /// Deliveries of one job before it is answered `internal_error` and
    /// dead-lettered (`WARMPOD_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// Which pool backend (`WARMPOD_BACKEND`).
    pub backend: Backend,
    /// The local backend's settings (also read when `backend` is `kube`,
    /// for the shared pool size).
    pub local: LocalConfig,
    /// The Kubernetes backend's settings (`WARMPOD_KUBE_*`, `WARMPOD_POD_NAME`,
    /// `WARMPOD_POOL_*`, `WARMPOD_JANITOR_*`; see docs/operations.md).
    pub kube: KubeConfig,
    /// Where `/metrics` and `/health` are served (`WARMPOD_METRICS_ADDR`;
    /// port 0 picks a free one).
    pub metrics_addr: SocketAddr,
    /// Log format (`WARMPOD_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Name of the broker connection, shown in the management UI
    /// (`WARMPOD_CONNECTION_NAME`).
    pub connection_name: String,
    /// How often runtime versions are announced (`WARMPOD_VERSIONS_INTERVAL_S`).
    pub versions_interval: Duration,
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// The first variable that is set to something unusable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `get` (`None`: unset).
    ///
    /// # Errors
    /// The first variable that is set to something unusable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let backend = match get("WARMPOD_BACKEND").as_deref().map(str::trim) {
            None | Some("local") => Backend::Local,
            Some("kube") => Backend::Kube,
            Some(other) => return Err(bad("WARMPOD_BACKEND", other, "expected local or kube")),
        };
        let log_format = match get("WARMPOD_LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(bad("WARMPOD_LOG_FORMAT", other, "expected text or json")),
        };
        let cgroups = match get("WARMPOD_CGROUPS").as_deref().map(str::trim) {
            None | Some("auto") => true,
            Some("off") => false,
            Some(other) => return Err(bad("WARMPOD_CGROUPS", other, "expected auto or off")),
        };
        let amqp_url = get("AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.to_string());
        if !amqp_url.starts_with("amqp://") && !amqp_url.starts_with("amqps://") {
            return Err(bad(
                "AMQP_URL",
                "(hidden)",
                "expected an amqp:// or amqps:// URL",
            ));
        }
        let prefix = get("WARMPOD_QUEUE_PREFIX").unwrap_or_default();
        let pool_size: usize = parse(&get, "WARMPOD_POOL_SIZE", DEFAULT_POOL_SIZE)?;
        if !(1..=256).contains(&pool_size) {
            return Err(bad(
                "WARMPOD_POOL_SIZE",
                &pool_size.to_string(),
                "expected 1 to 256",
            ));
        }
        let max_attempts: u32 = parse(&get, "WARMPOD_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)?;
        if max_attempts == 0 {
            return Err(bad("WARMPOD_MAX_ATTEMPTS", "0", "expected at least 1"));
        }
        let queue_max_length: i64 = parse(&get, "WARMPOD_QUEUE_MAX_LENGTH", JOBS_QUEUE_MAX_LENGTH)?;
        if queue_max_length < 1 {
            return Err(bad(
                "WARMPOD_QUEUE_MAX_LENGTH",
                &queue_max_length.to_string(),
                "expected at least 1",
            ));
        }
        let jobs_queue_type = match get(JOBS_QUEUE_TYPE_VAR) {
            None => JobsQueueType::default(),
            Some(raw) => raw
                .parse()
                .map_err(|_| bad(JOBS_QUEUE_TYPE_VAR, &raw, "expected classic or quorum"))?,
        };
        let runner_path = match get("WARMPOD_RUNNER_PATH") {
            Some(p) => PathBuf::from(p),
            None => default_runner_path(),
        };
        let local = LocalConfig {
            pool_size,
            runner_path,
            bwrap_path: get("WARMPOD_BWRAP")
                .unwrap_or_else(|| DEFAULT_BWRAP.into())
                .into(),
            memory_mb: positive(&get, "WARMPOD_SANDBOX_MEMORY_MB", DEFAULT_SANDBOX_MEMORY_MB)?,
            pids_max: positive(&get, "WARMPOD_SANDBOX_PIDS_MAX", DEFAULT_SANDBOX_PIDS_MAX)?,
            tmp_mb: positive(&get, "WARMPOD_SANDBOX_TMP_MB", DEFAULT_SANDBOX_TMP_MB)?,
            uid_base: parse(&get, "WARMPOD_SANDBOX_UID_BASE", DEFAULT_SANDBOX_UID_BASE)?,
            cgroups,
            job_grace: Duration::from_millis(parse(
                &get,
                "WARMPOD_JOB_GRACE_MS",
                DEFAULT_JOB_GRACE_MS,
            )?),
            prestart_languages: prestart_languages(
                &get("WARMPOD_PRESTART_LANGUAGES")
                    .unwrap_or_else(|| DEFAULT_PRESTART_LANGUAGES.into()),
            )?,
        };
        if local.uid_base < 1000 || local.uid_base.checked_add(2 * 256 + 1).is_none() {
            return Err(bad(
                "WARMPOD_SANDBOX_UID_BASE",
                &local.uid_base.to_string(),
                "expected an unused uid range starting at 1000 or above",
            ));
        }
        let kube = kube_config(&get, local.job_grace)?;
        let metrics_raw =
            get("WARMPOD_METRICS_ADDR").unwrap_or_else(|| DEFAULT_METRICS_ADDR.into());
        let metrics_addr = metrics_raw.trim().parse().map_err(|_| {
            bad(
                "WARMPOD_METRICS_ADDR",
                &metrics_raw,
                "expected host:port, e.g. 127.0.0.1:9091",
            )
        })?;
        let connection_name = get("WARMPOD_CONNECTION_NAME")
            .unwrap_or_else(|| format!("pod-manager-{}", std::process::id()));
        let versions_interval = Duration::from_secs(positive(
            &get,
            "WARMPOD_VERSIONS_INTERVAL_S",
            DEFAULT_VERSIONS_INTERVAL_S,
        )?);
        Ok(Self {
            amqp_url: AmqpUrl(amqp_url),
            queues: QueueNames::with_prefix(&prefix),
            queue_max_length,
            jobs_queue_type,
            max_attempts,
            backend,
            local,
            kube,
            metrics_addr,
            log_format,
            connection_name,
            versions_interval,
        })
    }

    /// Jobs taken from the queue at once: the pool's capacity.
    pub fn prefetch(&self) -> u16 {
        u16::try_from(self.local.pool_size).unwrap_or(u16::MAX)
    }
}

/// `warmpod-runner` next to the running executable (where cargo puts both);
/// for a test binary in `target/<profile>/deps/`, the one in
/// `target/<profile>/`.
pub fn default_runner_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let beside = dir.join("warmpod-runner");
    if beside.exists() || dir.file_name().is_none_or(|n| n != "deps") {
        return beside;
    }
    dir.parent().unwrap_or(&dir).join("warmpod-runner")
}

fn bad(var: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError {
        var,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// The Kubernetes backend's settings. `exec_grace` is `WARMPOD_JOB_GRACE_MS`,
/// shared with the local backend.
fn kube_config(
    get: &impl Fn(&str) -> Option<String>,
    exec_grace: Duration,
) -> Result<KubeConfig, ConfigError> {
    let d = KubeConfig::default();
    let text = |var: &str, default: &str| {
        get(var).map_or_else(|| default.to_string(), |v| v.trim().to_string())
    };
    let scale = ScalePolicy {
        min: parse(get, "WARMPOD_POOL_MIN", d.scale.min)?,
        max: parse(get, "WARMPOD_POOL_MAX", d.scale.max)?,
        hysteresis: parse(get, "WARMPOD_POOL_HYSTERESIS", d.scale.hysteresis)?,
        scale_down_delay: Duration::from_secs(parse(
            get,
            "WARMPOD_POOL_SCALE_DOWN_DELAY_S",
            d.scale.scale_down_delay.as_secs(),
        )?),
        interval: Duration::from_secs(positive(
            get,
            "WARMPOD_POOL_SCALE_INTERVAL_S",
            d.scale.interval.as_secs(),
        )?),
    };
    for (var, n) in [
        ("WARMPOD_POOL_MIN", scale.min),
        ("WARMPOD_POOL_MAX", scale.max),
        ("WARMPOD_POOL_HYSTERESIS", scale.hysteresis),
    ] {
        if n < 0 {
            return Err(bad(
                var,
                &n.to_string(),
                "expected a non-negative whole number",
            ));
        }
    }
    if scale.max < scale.min.max(1) {
        return Err(bad(
            "WARMPOD_POOL_MAX",
            &scale.max.to_string(),
            "expected at least 1 and at least WARMPOD_POOL_MIN",
        ));
    }
    let autoscale = match get("WARMPOD_POOL_SCALER").as_deref().map(str::trim) {
        None | Some("on") => true,
        Some("off") => false,
        Some(other) => return Err(bad("WARMPOD_POOL_SCALER", other, "expected on or off")),
    };
    let janitor_max_age = Duration::from_secs(positive(
        get,
        "WARMPOD_JANITOR_MAX_AGE_S",
        d.janitor_max_age.as_secs(),
    )?);
    // The longest job: the maximum run and compile wall limits plus the grace.
    let longest = Duration::from_millis(
        warmpod_protocol::ResolvedLimits::MAXIMUM.wall_time_ms
            + warmpod_protocol::ResolvedLimits::COMPILE_MAXIMUM.wall_time_ms,
    ) + exec_grace;
    if janitor_max_age <= longest {
        return Err(bad(
            "WARMPOD_JANITOR_MAX_AGE_S",
            &janitor_max_age.as_secs().to_string(),
            &format!(
                "expected more than the longest job ({} s)",
                longest.as_secs()
            ),
        ));
    }
    let runner = text("WARMPOD_KUBE_RUNNER", &d.runner_command[0]);
    Ok(KubeConfig {
        namespace: text("WARMPOD_KUBE_NAMESPACE", &d.namespace),
        pool: text("WARMPOD_KUBE_POOL", &d.pool),
        deployment: text("WARMPOD_KUBE_DEPLOYMENT", &d.deployment),
        container: text("WARMPOD_KUBE_CONTAINER", &d.container),
        runner_command: vec![runner.clone()],
        languages: kube_language_pools(
            get("WARMPOD_KUBE_LANGUAGE_POOLS").as_deref(),
            &text("WARMPOD_KUBE_DEPLOYMENT", &d.deployment),
        )?,
        relay_command: relay_command(
            runner,
            text("WARMPOD_KUBE_SERVE_SOCKET", &d.relay_command[2]),
        )?,
        manager: get("WARMPOD_POD_NAME")
            .or_else(|| get("HOSTNAME"))
            .map_or_else(|| d.manager.clone(), |v| v.trim().to_string()),
        exec_grace,
        janitor_max_age,
        janitor_interval: Duration::from_secs(positive(
            get,
            "WARMPOD_JANITOR_INTERVAL_S",
            d.janitor_interval.as_secs(),
        )?),
        scale,
        autoscale,
    })
}

/// Parses `WARMPOD_KUBE_LANGUAGE_POOLS`: `<language>=<deployment>,…`
/// (unset, empty or `none`: no language pools). Each language must be
/// pre-startable, each named once; each Deployment a valid name, distinct
/// from the others and from the generic one (`generic`).
fn kube_language_pools(raw: Option<&str>, generic: &str) -> Result<Vec<LanguagePool>, ConfigError> {
    let var = "WARMPOD_KUBE_LANGUAGE_POOLS";
    let raw = raw.unwrap_or("").trim();
    if raw.is_empty() || raw.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut pools: Vec<LanguagePool> = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let fail = |why: String| bad(var, raw, &why);
        let (name, deployment) = entry
            .split_once('=')
            .map(|(n, d)| (n.trim(), d.trim()))
            .ok_or_else(|| fail(format!("{entry:?}: expected <language>=<deployment>")))?;
        let language = warmpod_protocol::Language::find(name)
            .ok_or_else(|| fail(format!("unknown language {name:?}")))?;
        if language.prestart.is_none() {
            return Err(fail(format!("{} cannot be pre-started", language.key)));
        }
        if !is_dns_label(deployment) {
            return Err(fail(format!(
                "{deployment:?} is not a Deployment name (lowercase letters, digits and '-', at most 63)"
            )));
        }
        if deployment == generic || pools.iter().any(|p| p.deployment == deployment) {
            return Err(fail(format!("Deployment {deployment:?} is used twice")));
        }
        if pools.iter().any(|p| p.language == language.key) {
            return Err(fail(format!("{} has two pools", language.key)));
        }
        pools.push(LanguagePool {
            language: language.key,
            deployment: deployment.to_owned(),
        });
    }
    Ok(pools)
}

/// Whether `s` is an RFC 1123 label (a valid Deployment name here).
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The relay command of specialised pods: the runner with `--relay` and
/// `WARMPOD_KUBE_SERVE_SOCKET` (an absolute path).
fn relay_command(runner: String, socket: String) -> Result<Vec<String>, ConfigError> {
    if !socket.starts_with('/') {
        return Err(bad(
            "WARMPOD_KUBE_SERVE_SOCKET",
            &socket,
            "expected an absolute path",
        ));
    }
    Ok(vec![runner, "--relay".into(), socket])
}

fn parse<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|_| bad(var, &raw, "expected a non-negative whole number")),
    }
}

fn positive(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match parse(get, var, default)? {
        0 => Err(bad(var, "0", "expected a number greater than 0")),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_work_out_of_the_box() {
        let c = config(&[]).unwrap();
        assert_eq!(c.backend, Backend::Local);
        assert_eq!(c.local.pool_size, DEFAULT_POOL_SIZE);
        assert_eq!(c.prefetch(), DEFAULT_POOL_SIZE as u16);
        assert_eq!(c.queues.jobs, JOBS_QUEUE);
        assert_eq!(c.queue_max_length, JOBS_QUEUE_MAX_LENGTH);
        assert_eq!(c.jobs_queue_type, JobsQueueType::Classic);
        assert_eq!(c.metrics_addr.to_string(), DEFAULT_METRICS_ADDR);
        assert_eq!(c.amqp_url.expose(), DEFAULT_AMQP_URL);
        assert!(c.local.cgroups);
    }

    #[test]
    fn prefix_applies_to_every_name() {
        let c = config(&[("WARMPOD_QUEUE_PREFIX", "t1.")]).unwrap();
        assert_eq!(c.queues.jobs, "t1.warmpod.jobs");
        assert_eq!(c.queues.dead_letter_exchange, "t1.warmpod.dlx");
        assert_eq!(c.queues.dead_letter_queue, "t1.warmpod.jobs.dead");
        assert_eq!(c.queues.events, "t1.warmpod.events");
    }

    #[test]
    fn prestart_languages_default_and_parse() {
        assert_eq!(
            config(&[]).unwrap().local.prestart_languages,
            ["python", "javascript"]
        );
        let none = config(&[("WARMPOD_PRESTART_LANGUAGES", "none")]).unwrap();
        assert!(none.local.prestart_languages.is_empty());
        let aliases = config(&[("WARMPOD_PRESTART_LANGUAGES", " py , python3 ")]).unwrap();
        assert_eq!(aliases.local.prestart_languages, ["python"]);
        let node = config(&[("WARMPOD_PRESTART_LANGUAGES", "node")]).unwrap();
        assert_eq!(node.local.prestart_languages, ["javascript"]);
        let java = config(&[("WARMPOD_PRESTART_LANGUAGES", "python,jdk")]).unwrap();
        assert_eq!(java.local.prestart_languages, ["python", "java"]);
        assert!(
            config(&[("WARMPOD_PRESTART_LANGUAGES", "c")]).is_err(),
            "C has no pre-start command"
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases = [
            ("WARMPOD_BACKEND", "docker"),
            ("WARMPOD_POOL_SIZE", "0"),
            ("WARMPOD_POOL_SIZE", "many"),
            ("WARMPOD_MAX_ATTEMPTS", "0"),
            ("WARMPOD_METRICS_ADDR", "nowhere"),
            ("WARMPOD_LOG_FORMAT", "xml"),
            ("WARMPOD_SANDBOX_MEMORY_MB", "0"),
            ("WARMPOD_SANDBOX_UID_BASE", "0"),
            ("WARMPOD_CGROUPS", "yes"),
            ("AMQP_URL", "http://x"),
            ("WARMPOD_PRESTART_LANGUAGES", "cobol"),
            ("WARMPOD_PRESTART_LANGUAGES", "python,bash"),
            ("WARMPOD_JOBS_QUEUE_TYPE", "stream"),
        ];
        for (var, value) in cases {
            let err = config(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{var}={value} should be refused");
        }
    }

    #[test]
    fn jobs_queue_type_is_classic_or_quorum() {
        let quorum = config(&[("WARMPOD_JOBS_QUEUE_TYPE", "quorum")]).unwrap();
        assert_eq!(quorum.jobs_queue_type, JobsQueueType::Quorum);
        let err = config(&[("WARMPOD_JOBS_QUEUE_TYPE", "lazy")]).unwrap_err();
        assert!(
            err.to_string().contains("classic or quorum"),
            "the message names the allowed values: {err}"
        );
    }

    #[test]
    fn kube_backend_is_selectable() {
        let c = config(&[("WARMPOD_BACKEND", "kube")]).unwrap();
        assert_eq!(c.backend, Backend::Kube);
    }

    #[test]
    fn kube_settings_come_from_their_variables() {
        let c = config(&[
            ("WARMPOD_BACKEND", "kube"),
            ("WARMPOD_KUBE_NAMESPACE", "ns1"),
            ("WARMPOD_POD_NAME", "pod-manager-abc"),
            ("WARMPOD_POOL_MIN", "3"),
            ("WARMPOD_POOL_MAX", "7"),
            ("WARMPOD_POOL_SCALER", "off"),
        ])
        .unwrap();
        assert_eq!(c.kube.namespace, "ns1");
        assert_eq!(c.kube.manager, "pod-manager-abc");
        assert_eq!((c.kube.scale.min, c.kube.scale.max), (3, 7));
        assert!(!c.kube.autoscale);
        assert_eq!(
            c.kube.exec_grace, c.local.job_grace,
            "one grace for both backends"
        );
        let bad = [
            (
                vec![("WARMPOD_POOL_MIN", "5"), ("WARMPOD_POOL_MAX", "2")],
                "WARMPOD_POOL_MAX",
            ),
            (vec![("WARMPOD_POOL_MIN", "-1")], "WARMPOD_POOL_MIN"),
            (
                vec![("WARMPOD_POOL_SCALER", "maybe")],
                "WARMPOD_POOL_SCALER",
            ),
            (
                vec![("WARMPOD_JANITOR_MAX_AGE_S", "60")],
                "WARMPOD_JANITOR_MAX_AGE_S",
            ),
        ];
        for (vars, var) in bad {
            assert_eq!(config(&vars).unwrap_err().var, var, "{vars:?}");
        }
    }

    #[test]
    fn kube_language_pools_are_parsed_and_checked() {
        let c = config(&[("WARMPOD_KUBE_LANGUAGE_POOLS", " python = standby-python ")]).unwrap();
        assert_eq!(
            c.kube.languages,
            [LanguagePool {
                language: "python",
                deployment: "standby-python".into()
            }]
        );
        assert_eq!(
            c.kube.relay_command,
            [
                "/usr/local/bin/warmpod-runner",
                "--relay",
                "/tmp/warmpod-serve.sock"
            ]
        );
        for raw in ["", "none"] {
            let c = config(&[("WARMPOD_KUBE_LANGUAGE_POOLS", raw)]).unwrap();
            assert!(c.kube.languages.is_empty(), "{raw:?}");
        }
        let cases = [
            ("python", "no deployment"),
            ("cobol=x", "unknown language"),
            ("c=standby-c", "not pre-startable"),
            ("python=Standby_Python", "not a Deployment name"),
            ("python=warmpod-standby", "the generic Deployment"),
            ("python=a,py=b", "a language twice"),
        ];
        for (raw, why) in cases {
            let err = config(&[("WARMPOD_KUBE_LANGUAGE_POOLS", raw)]).unwrap_err();
            assert_eq!(err.var, "WARMPOD_KUBE_LANGUAGE_POOLS", "{why}");
        }
        let err = config(&[("WARMPOD_KUBE_SERVE_SOCKET", "relative.sock")]).unwrap_err();
        assert_eq!(err.var, "WARMPOD_KUBE_SERVE_SOCKET");
    }

    #[test]
    fn password_is_hidden_from_debug() {
        let c = config(&[("AMQP_URL", "amqp://user:s3cret@host:5672/%2f")]).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("amqp://user:***@host:5672/%2f"), "{shown}");
    }
}
