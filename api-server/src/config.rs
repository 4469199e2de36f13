//! Typed configuration, read once from `WARMPOD_*` env vars and `AMQP_URL`.
//!
//! Every variable, its default and its meaning is listed in
//! docs/operations.md. Secrets live in [`Secret`], whose `Debug` hides them.

use std::{fmt, net::SocketAddr, num::NonZeroU32, time::Duration};

use warmpod_protocol::{
    ResolvedLimits,
    queue::{self, JOBS_QUEUE_TYPE_VAR, JobsQueueType},
};

/// A value that must not appear in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret string.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// RabbitMQ names, all carrying the configured prefix so that parallel test
/// runs (and several deployments on one broker) do not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The jobs queue.
    pub jobs_queue: String,
    /// The jobs queue's dead-letter exchange (fanout).
    pub dead_letter_exchange: String,
    /// The queue bound to the dead-letter exchange.
    pub dead_letter_queue: String,
    /// The events topic exchange.
    pub events_exchange: String,
    /// The durable webhook queue, consumed competitively.
    pub callbacks_queue: String,
    /// `x-max-length` of the jobs queue.
    pub jobs_queue_max_length: i64,
    /// `x-queue-type` of the jobs queue (`WARMPOD_JOBS_QUEUE_TYPE`); must
    /// equal the pod-managers'.
    pub jobs_queue_type: JobsQueueType,
}

impl Topology {
    /// Names for `prefix` (prepended verbatim, e.g. `"test-1234."`), with a
    /// jobs queue of the default type (classic); see
    /// [`Topology::with_queue_type`].
    pub fn new(prefix: &str, jobs_queue_max_length: i64) -> Self {
        Self {
            jobs_queue: format!("{prefix}{}", queue::JOBS_QUEUE),
            dead_letter_exchange: format!("{prefix}{}", queue::DEAD_LETTER_EXCHANGE),
            dead_letter_queue: format!("{prefix}{}", queue::DEAD_LETTER_QUEUE),
            events_exchange: format!("{prefix}{}", queue::EVENTS_EXCHANGE),
            callbacks_queue: format!("{prefix}{}", queue::CALLBACKS_QUEUE),
            jobs_queue_max_length,
            jobs_queue_type: JobsQueueType::default(),
        }
    }

    /// The same names with a jobs queue of `queue_type`.
    pub fn with_queue_type(self, queue_type: JobsQueueType) -> Self {
        Self {
            jobs_queue_type: queue_type,
            ..self
        }
    }
}

/// Webhook delivery policy.
#[derive(Debug, Clone)]
pub struct CallbackConfig {
    /// Key of the `X-Warmpod-Signature` HMAC-SHA256 header, when set.
    pub secret: Option<Secret>,
    /// Whether private, loopback and link-local destinations are allowed.
    pub allow_private: bool,
    /// Timeout of one delivery attempt.
    pub timeout: Duration,
    /// Attempts before giving up.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled each time.
    pub initial_backoff: Duration,
}

/// The api-server's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `WARMPOD_HTTP_ADDR`: where to listen (port 0 picks a free port).
    pub http_addr: SocketAddr,
    /// `AMQP_URL`.
    pub amqp_url: Secret,
    /// Queue and exchange names (`WARMPOD_QUEUE_PREFIX`, `WARMPOD_QUEUE_MAX_LENGTH`).
    pub topology: Topology,
    /// `WARMPOD_WAIT_TIMEOUT_MS`: longest a synchronous request waits.
    pub wait_timeout: Duration,
    /// `WARMPOD_RESULT_TTL_S`: how long job states are kept.
    pub result_ttl: Duration,
    /// `WARMPOD_RESULT_CAPACITY`: most job states kept per replica.
    pub result_capacity: usize,
    /// `WARMPOD_RESULT_MAX_BYTES`: most bytes of outputs and sources kept.
    pub result_max_bytes: usize,
    /// `WARMPOD_MAX_SOURCE_BYTES`: largest total source size.
    pub max_source_bytes: usize,
    /// `WARMPOD_MAX_STDIN_BYTES`: largest stdin.
    pub max_stdin_bytes: usize,
    /// `WARMPOD_MAX_BATCH`: most jobs in one batch request.
    pub max_batch: usize,
    /// `WARMPOD_DEFAULT_<LIMIT>`: limits of jobs that do not set them.
    pub default_limits: ResolvedLimits,
    /// `WARMPOD_MAX_<LIMIT>`: the most a job may ask for.
    pub max_limits: ResolvedLimits,
    /// `WARMPOD_API_KEYS` (comma-separated); empty means auth is off.
    pub api_keys: Vec<Secret>,
    /// `WARMPOD_RATE_LIMIT_PER_S`: per-key requests per second; `None` is off.
    pub rate_limit_per_s: Option<NonZeroU32>,
    /// `WARMPOD_RETRY_AFTER_S`: the `Retry-After` sent with 429 on a full queue.
    pub retry_after_s: u64,
    /// Webhooks (`WARMPOD_CALLBACK_*`).
    pub callbacks: CallbackConfig,
    /// `WARMPOD_LOG_FORMAT`: `json` or `text`.
    pub log_json: bool,
}

/// A variable with a value it cannot have.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct ConfigError {
    /// The variable.
    pub name: String,
    /// Its value.
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds the configuration from any variable lookup (tests use a map).
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&get);
        let prefix = env.string("WARMPOD_QUEUE_PREFIX", "");
        let max_len = env.parse("WARMPOD_QUEUE_MAX_LENGTH", queue::JOBS_QUEUE_MAX_LENGTH)?;
        if max_len < 1 {
            return Err(env.bad("WARMPOD_QUEUE_MAX_LENGTH", "must be at least 1"));
        }
        let queue_type = env.parse(JOBS_QUEUE_TYPE_VAR, JobsQueueType::default())?;
        let max_limits = env.limits("WARMPOD_MAX_", ResolvedLimits::MAXIMUM)?;
        let default_limits = env.limits("WARMPOD_DEFAULT_", ResolvedLimits::DEFAULT)?;
        let api_keys = env
            .string("WARMPOD_API_KEYS", "")
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(Secret::new)
            .collect();
        let rate: u32 = env.parse("WARMPOD_RATE_LIMIT_PER_S", 0)?;
        let config = Self {
            http_addr: env.parse(
                "WARMPOD_HTTP_ADDR",
                "127.0.0.1:8080".parse().expect("valid"),
            )?,
            amqp_url: Secret::new(env.string("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")),
            topology: Topology::new(&prefix, max_len).with_queue_type(queue_type),
            wait_timeout: Duration::from_millis(env.parse("WARMPOD_WAIT_TIMEOUT_MS", 30_000)?),
            result_ttl: Duration::from_secs(env.parse("WARMPOD_RESULT_TTL_S", 3_600)?),
            result_capacity: env.parse("WARMPOD_RESULT_CAPACITY", 100_000)?,
            result_max_bytes: env.parse("WARMPOD_RESULT_MAX_BYTES", 536_870_912)?,
            max_source_bytes: env.parse("WARMPOD_MAX_SOURCE_BYTES", 1_048_576)?,
            max_stdin_bytes: env.parse("WARMPOD_MAX_STDIN_BYTES", 1_048_576)?,
            max_batch: env.parse("WARMPOD_MAX_BATCH", 20)?,
            default_limits,
            max_limits,
            api_keys,
            rate_limit_per_s: NonZeroU32::new(rate),
            retry_after_s: env.parse("WARMPOD_RETRY_AFTER_S", 1)?,
            callbacks: CallbackConfig {
                secret: get("WARMPOD_CALLBACK_SECRET")
                    .filter(|s| !s.is_empty())
                    .map(Secret::new),
                allow_private: env.parse("WARMPOD_CALLBACK_ALLOW_PRIVATE", false)?,
                timeout: Duration::from_millis(env.parse("WARMPOD_CALLBACK_TIMEOUT_MS", 5_000)?),
                max_attempts: env.parse("WARMPOD_CALLBACK_MAX_ATTEMPTS", 5)?,
                initial_backoff: Duration::from_millis(
                    env.parse("WARMPOD_CALLBACK_BACKOFF_MS", 500)?,
                ),
            },
            log_json: match env.string("WARMPOD_LOG_FORMAT", "text").as_str() {
                "json" => true,
                "text" => false,
                _ => return Err(env.bad("WARMPOD_LOG_FORMAT", "must be json or text")),
            },
        };
        config.check()
    }

    fn check(self) -> Result<Self, ConfigError> {
        let bad = |name: &str, value: String, reason: &str| ConfigError {
            name: name.into(),
            value,
            reason: reason.into(),
        };
        if self.result_capacity == 0 {
            return Err(bad(
                "WARMPOD_RESULT_CAPACITY",
                "0".into(),
                "must be at least 1",
            ));
        }
        if self.max_batch == 0 {
            return Err(bad("WARMPOD_MAX_BATCH", "0".into(), "must be at least 1"));
        }
        if self.callbacks.max_attempts == 0 {
            return Err(bad(
                "WARMPOD_CALLBACK_MAX_ATTEMPTS",
                "0".into(),
                "must be at least 1",
            ));
        }
        for (name, value) in self.max_limits.fields() {
            if value == 0 {
                return Err(bad(
                    &format!("WARMPOD_MAX_{}", name.to_uppercase()),
                    "0".into(),
                    "must be greater than 0",
                ));
            }
        }
        Ok(self)
    }

    /// Whether requests need an API key.
    pub fn auth_enabled(&self) -> bool {
        !self.api_keys.is_empty()
    }

    /// The largest request body accepted: sources and stdin at their limits,
    /// in base64 (Judge0 clients), plus room for the other fields.
    pub fn max_body_bytes(&self) -> usize {
        (self.max_source_bytes + self.max_stdin_bytes) * 4 / 3 + 65_536
    }
}

struct Env<'a, F: Fn(&str) -> Option<String>>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    fn string(&self, name: &str, default: &str) -> String {
        (self.0)(name).unwrap_or_else(|| default.to_string())
    }

    fn bad(&self, name: &str, reason: &str) -> ConfigError {
        ConfigError {
            name: name.into(),
            value: (self.0)(name).unwrap_or_default(),
            reason: reason.into(),
        }
    }

    fn parse<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match (self.0)(name) {
            None => Ok(default),
            Some(v) if v.trim().is_empty() => Ok(default),
            Some(v) => v.trim().parse().map_err(|e: T::Err| ConfigError {
                name: name.into(),
                value: v.clone(),
                reason: e.to_string(),
            }),
        }
    }

    fn limits(&self, prefix: &str, base: ResolvedLimits) -> Result<ResolvedLimits, ConfigError> {
        let mut out = [0u64; 6];
        for (i, (field, value)) in base.fields().into_iter().enumerate() {
            out[i] = self.parse(&format!("{prefix}{}", field.to_uppercase()), value)?;
        }
        Ok(ResolvedLimits::from_values(out))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply() {
        let c = config(&[]).unwrap();
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.topology.jobs_queue, "warmpod.jobs");
        assert_eq!(c.topology.jobs_queue_type, JobsQueueType::Classic);
        assert_eq!(c.max_limits, ResolvedLimits::MAXIMUM);
        assert!(!c.auth_enabled());
        assert!(c.rate_limit_per_s.is_none());
    }

    #[test]
    fn prefix_and_limits_are_read() {
        let c = config(&[
            ("WARMPOD_QUEUE_PREFIX", "t1."),
            ("WARMPOD_MAX_WALL_TIME_MS", "5000"),
            ("WARMPOD_API_KEYS", "a, b,,"),
        ])
        .unwrap();
        assert_eq!(c.topology.events_exchange, "t1.warmpod.events");
        assert_eq!(c.max_limits.wall_time_ms, 5000);
        assert_eq!(c.api_keys.len(), 2);
        assert_eq!(format!("{:?}", c.api_keys[0]), "Secret(***)");
    }

    #[test]
    fn jobs_queue_type_is_read_and_checked() {
        let c = config(&[("WARMPOD_JOBS_QUEUE_TYPE", "quorum")]).unwrap();
        assert_eq!(c.topology.jobs_queue_type, JobsQueueType::Quorum);
        let err = config(&[("WARMPOD_JOBS_QUEUE_TYPE", "lazy")]).unwrap_err();
        assert!(
            err.to_string().contains("classic or quorum"),
            "the message names the allowed values: {err}"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (vars, name) in [
            (vec![("WARMPOD_HTTP_ADDR", "nope")], "WARMPOD_HTTP_ADDR"),
            (vec![("WARMPOD_MAX_BATCH", "0")], "WARMPOD_MAX_BATCH"),
            (
                vec![("WARMPOD_MAX_MEMORY_KB", "x")],
                "WARMPOD_MAX_MEMORY_KB",
            ),
            (
                vec![("WARMPOD_CALLBACK_ALLOW_PRIVATE", "yes")],
                "WARMPOD_CALLBACK_ALLOW_PRIVATE",
            ),
            (vec![("WARMPOD_LOG_FORMAT", "xml")], "WARMPOD_LOG_FORMAT"),
            (
                vec![("WARMPOD_JOBS_QUEUE_TYPE", "stream")],
                "WARMPOD_JOBS_QUEUE_TYPE",
            ),
        ] {
            let err = config(&vars).unwrap_err();
            assert_eq!(err.name, name, "{vars:?}");
        }
    }
}
