//! The core every façade translates onto: validate a [`Submission`], publish
//! it with publisher confirms, read and wait for job state.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;
use warmpod_protocol::{
    Job, JobEvent, JobMessage, JobMeta, Language, Limits, SourceFile, Status, UnixMillis,
};

use crate::{
    broker::{Broker, PublishError},
    config::Config,
    error::ApiError,
    languages::Versions,
    metrics::Metrics,
    state::{Execution, StateStore, SubmissionInfo},
};

/// Which façade a job came through; shapes its callback body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The native `/v1` API.
    V1,
    /// The Judge0-compatible API.
    Judge0,
    /// The Judge0-compatible API with `base64_encoded=true` (its callback
    /// carries base64 texts, as Judge0's does).
    Judge0Base64,
    /// The seed systems' endpoints.
    Compat,
}

impl Api {
    /// The `meta.api` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::V1 => "v1",
            Api::Judge0 => "judge0",
            Api::Judge0Base64 => "judge0-base64",
            Api::Compat => "compat",
        }
    }
}

/// A job as a façade hands it to the core.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Language key, alias, or (for Judge0) resolved beforehand.
    pub language: String,
    /// Source files, entry point first.
    pub files: Vec<SourceFile>,
    /// Standard input.
    pub stdin: String,
    /// Command-line arguments.
    pub args: Vec<String>,
    /// Run limits.
    pub limits: Limits,
    /// Expected stdout, for an `accepted`/`wrong_answer` verdict.
    pub expected_output: Option<String>,
    /// Webhook target.
    pub callback_url: Option<String>,
    /// Client label.
    pub tag: Option<String>,
    /// The façade.
    pub api: Api,
}

/// How the submitting replica learns a job's final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// From the events exchange, like every replica.
    Event,
    /// Also from a fast reply straight to this replica (a client waits).
    Direct,
}

/// The submission core, shared by every route; cheap to clone.
#[derive(Clone)]
pub struct Core {
    /// Configuration.
    pub config: Arc<Config>,
    /// Publishing.
    pub broker: Broker,
    /// Job states.
    pub state: StateStore,
    /// Runtime versions.
    pub versions: Versions,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Core {
    /// Checks a submission and builds the message to publish.
    ///
    /// # Errors
    /// 422 for an unknown language, bad file names, limits above the
    /// maxima, a refused callback URL; 413 for source or stdin too large.
    pub fn validate(&self, s: Submission) -> Result<(JobMessage, SubmissionInfo), ApiError> {
        let lang = Language::find(&s.language).ok_or_else(|| {
            ApiError::invalid(
                "language",
                format!(
                    "unknown language {:?}; GET /v1/languages lists them",
                    s.language
                ),
            )
        })?;
        if s.files.is_empty() || s.files.iter().all(|f| f.content.is_empty()) {
            return Err(ApiError::invalid(
                "source",
                "source is required and must not be empty",
            ));
        }
        let size: usize = s.files.iter().map(|f| f.content.len()).sum();
        if size > self.config.max_source_bytes {
            return Err(ApiError::too_large(
                "source",
                format!(
                    "source is {size} bytes, above the limit of {}",
                    self.config.max_source_bytes
                ),
            ));
        }
        if s.stdin.len() > self.config.max_stdin_bytes {
            return Err(ApiError::too_large(
                "stdin",
                format!(
                    "stdin is {} bytes, above the limit of {}",
                    s.stdin.len(),
                    self.config.max_stdin_bytes
                ),
            ));
        }
        for (i, f) in s.files.iter().enumerate() {
            let unnamed_entry_point = i == 0 && f.name.is_empty();
            if !unnamed_entry_point && !SourceFile::is_valid_name(&f.name) {
                return Err(ApiError::invalid(
                    format!("files[{i}].name"),
                    format!("{:?} is not a plain file name", f.name),
                ));
            }
        }
        let limits = s
            .limits
            .resolve(&self.config.default_limits, &self.config.max_limits)
            .map_err(|e| ApiError::invalid(format!("limits.{}", e.field()), e.to_string()))?;
        if let Some(url) = &s.callback_url {
            check_callback_url(url, self.config.callbacks.allow_private)?;
        }
        let id = Uuid::new_v4();
        let info = SubmissionInfo {
            language: lang.key.to_string(),
            source: s.files[0].content.clone(),
            stdin: s.stdin.clone(),
        };
        let job = Job {
            id,
            language: lang.key.to_string(),
            files: s.files,
            stdin: s.stdin,
            args: s.args,
            limits: Limits {
                wall_time_ms: Some(limits.wall_time_ms),
                cpu_time_ms: Some(limits.cpu_time_ms),
                memory_kb: Some(limits.memory_kb),
                max_processes: Some(limits.max_processes),
                max_output_bytes: Some(limits.max_output_bytes),
                max_file_size_kb: Some(limits.max_file_size_kb),
            },
            compile_limits: Limits::default(),
        };
        let meta = JobMeta {
            callback_url: s.callback_url,
            expected_output: s.expected_output,
            tag: s.tag,
            api: Some(s.api.as_str().to_string()),
            language: Some(lang.key.to_string()),
        };
        Ok((
            JobMessage {
                job,
                submitted_at_ms: now_ms(),
                meta,
            },
            info,
        ))
    }

    /// Validates and publishes one job; returns its id once the broker has
    /// confirmed it.
    ///
    /// # Errors
    /// Validation errors; 429 when the queue is full; 503 when the broker
    /// is unavailable.
    pub async fn submit(&self, s: Submission) -> Result<Uuid, ApiError> {
        self.submit_with(s, Reply::Event).await
    }

    /// As [`Core::submit`], for a caller about to [`Core::wait_final`]: the
    /// job asks the pod-manager for a fast reply to this replica besides
    /// the final event (whichever arrives first settles the wait).
    ///
    /// # Errors
    /// As [`Core::submit`].
    pub async fn submit_waiting(&self, s: Submission) -> Result<Uuid, ApiError> {
        self.submit_with(s, Reply::Direct).await
    }

    async fn submit_with(&self, s: Submission, reply: Reply) -> Result<Uuid, ApiError> {
        let api = s.api.as_str();
        let (message, info) = self
            .validate(s)
            .inspect_err(|_| self.metrics.submitted(api, "rejected"))?;
        self.publish_with(message, info, reply).await
    }

    /// Publishes a validated job (see [`Core::submit`]).
    ///
    /// # Errors
    /// 429 when the queue is full; 503 when the broker is unavailable.
    pub async fn publish(
        &self,
        message: JobMessage,
        info: SubmissionInfo,
    ) -> Result<Uuid, ApiError> {
        self.publish_with(message, info, Reply::Event).await
    }

    #[tracing::instrument(name = "submit", skip_all, fields(id = %message.job.id, language = %message.job.language))]
    async fn publish_with(
        &self,
        message: JobMessage,
        info: SubmissionInfo,
        reply: Reply,
    ) -> Result<Uuid, ApiError> {
        let id = message.job.id;
        let api = message.meta.api.clone().unwrap_or_default();
        let queued = JobEvent {
            id,
            status: Status::Queued,
            at_ms: message.submitted_at_ms,
            meta: message.meta.clone(),
            result: None,
        };
        // Recorded first, so a fast `running` event finds the job.
        self.state.insert_submitted(&queued, info);
        if let Err(e) = self
            .broker
            .publish_job(&message, reply == Reply::Direct)
            .await
        {
            self.state.remove_unpublished(id);
            return Err(match e {
                PublishError::Rejected => {
                    self.metrics.submitted(&api, "queue_full");
                    ApiError::QueueFull {
                        retry_after_s: self.config.retry_after_s,
                    }
                }
                PublishError::Unavailable(e) => {
                    self.metrics.submitted(&api, "unavailable");
                    ApiError::Unavailable(e)
                }
            });
        }
        self.metrics.submitted(&api, "accepted");
        self.metrics.stored_jobs.set(self.state.len() as i64);
        // The job is safe in the queue; the event only tells other replicas,
        // so the client does not wait for its confirm.
        let broker = self.broker.clone();
        tokio::spawn(async move {
            if let Err(e) = broker.publish_event(&queued).await {
                tracing::warn!(%id, error = %e, "publishing the queued event failed; other replicas learn of the job when it runs");
            }
        });
        Ok(id)
    }

    /// Validates every submission first, then publishes them in order;
    /// `field` is the request's name for the list (for error fields).
    ///
    /// # Errors
    /// 422 when there are more than the configured maximum; the first
    /// validation error (its field prefixed with `<field>[i].`); 429 or
    /// 503 from publishing, as [`ApiError::PartialBatch`] with the ids
    /// already queued when some were.
    pub async fn submit_batch(
        &self,
        field: &str,
        batch: Vec<Submission>,
    ) -> Result<Vec<Uuid>, ApiError> {
        self.check_batch_size(field, batch.len())?;
        let mut checked = Vec::with_capacity(batch.len());
        for (i, s) in batch.into_iter().enumerate() {
            checked.push(
                self.validate(s)
                    .map_err(|e| prefix_field(e, &format!("{field}[{i}]")))?,
            );
        }
        let mut ids = Vec::with_capacity(checked.len());
        for (message, info) in checked {
            match self.publish(message, info).await {
                Ok(id) => ids.push(id),
                Err(e) => return Err(partial(ids, e)),
            }
        }
        Ok(ids)
    }

    /// 422 (naming `field`) unless `n` is between 1 and the configured maximum.
    ///
    /// # Errors
    /// As described.
    pub fn check_batch_size(&self, field: &str, n: usize) -> Result<(), ApiError> {
        if n == 0 || n > self.config.max_batch {
            return Err(ApiError::invalid(
                field,
                format!("a batch holds 1 to {} jobs, not {n}", self.config.max_batch),
            ));
        }
        Ok(())
    }

    /// The job's state on this replica.
    ///
    /// # Errors
    /// 404 when unknown or expired.
    pub fn get(&self, id: Uuid) -> Result<Execution, ApiError> {
        self.state
            .get(id)
            .ok_or_else(|| ApiError::NotFound(format!("execution {id}")))
    }

    /// Waits (woken by events, not polling) until the job is final or
    /// `timeout` passes; returns its state then.
    pub async fn wait_final(&self, id: Uuid, timeout: Duration) -> Option<Execution> {
        let mut feed = self.state.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let current = self.state.get(id);
            if current.as_ref().is_some_and(|e| e.status.is_final()) {
                return current;
            }
            loop {
                match tokio::time::timeout_at(deadline, feed.recv()).await {
                    Err(_) => return self.state.get(id),
                    Ok(Ok(change)) if change.id == id && change.status.is_final() => {
                        return Some((*change).clone());
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(RecvError::Lagged(_))) => break, // re-read the store
                    Ok(Err(RecvError::Closed)) => return self.state.get(id),
                }
            }
        }
    }
}

/// A batch's publish error, with the ids already queued if there are any.
pub fn partial(accepted: Vec<Uuid>, cause: ApiError) -> ApiError {
    if accepted.is_empty() {
        cause
    } else {
        ApiError::PartialBatch {
            accepted,
            cause: Box::new(cause),
        }
    }
}

/// Moves an error's field under `prefix` (`submissions[2].language`).
pub fn prefix_field(e: ApiError, prefix: &str) -> ApiError {
    match e {
        ApiError::Invalid { field, message } => ApiError::Invalid {
            field: format!("{prefix}.{field}"),
            message,
        },
        ApiError::TooLarge { field, message } => ApiError::TooLarge {
            field: format!("{prefix}.{field}"),
            message,
        },
        other => other,
    }
}

/// Refuses callback URLs that are not http(s), and literal private,
/// loopback or link-local destinations unless allowed. Names are resolved
/// and checked again at delivery time.
///
/// # Errors
/// 422 naming `callback_url`.
pub fn check_callback_url(url: &str, allow_private: bool) -> Result<(), ApiError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::invalid("callback_url", format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::invalid(
            "callback_url",
            "only http and https callbacks are supported",
        ));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| ApiError::invalid("callback_url", "the URL has no host"))?;
    if allow_private {
        return Ok(());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let refused = match host.parse::<IpAddr>() {
        Ok(ip) => is_private(ip),
        Err(_) => {
            host.eq_ignore_ascii_case("localhost")
                || host.to_ascii_lowercase().ends_with(".localhost")
        }
    };
    if refused {
        return Err(ApiError::invalid(
            "callback_url",
            "private, loopback and link-local callback destinations are refused",
        ));
    }
    Ok(())
}

/// Whether an address is not on the public internet: private, loopback,
/// link-local, unspecified, shared (CGNAT), multicast, or unique-local.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "10.0.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn callback_urls_are_checked() {
        for (url, ok) in [
            ("https://example.com/hook", true),
            ("http://127.0.0.1:9/x", false),
            ("http://[::1]/x", false),
            ("http://localhost/x", false),
            ("http://169.254.169.254/latest", false),
            ("ftp://example.com/", false),
            ("not a url", false),
        ] {
            assert_eq!(check_callback_url(url, false).is_ok(), ok, "{url}");
        }
        assert!(check_callback_url("http://127.0.0.1:9/x", true).is_ok());
    }
}
