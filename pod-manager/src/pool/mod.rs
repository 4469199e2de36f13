//! The warm pool: ready sandboxes, each with `warmpod-runner` started and
//! waiting for one job.
//!
//! A sandbox is used for exactly one job and then destroyed; the pool
//! refills in the background, never on a job's critical path. Backends:
//! `local` (bubblewrap, the embedded default) and `kube` (standby pods).

pub mod kube;
pub mod local;
pub mod mix;

pub use local::{LocalPool, LocalSandbox};

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use uuid::Uuid;
use warmpod_protocol::{Job, JobResult, Language, ResolvedLimits};

/// Errors of a pool backend. A pool error is an infrastructure failure: the
/// consumer answers `internal_error` (or retries on a fresh sandbox), never
/// blames the user's program.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Starting, talking to or stopping a sandbox failed.
    #[error("sandbox i/o failed: {context}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The runner answered something that is not one JobResult line.
    #[error("runner protocol violated: {0}")]
    Protocol(String),
    /// The sandbox did not answer within the job's limits plus grace.
    #[error("sandbox did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The pool is shutting down.
    #[error("pool is shutting down")]
    Closed,
}

/// Result alias for pool operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A claimed sandbox and how it was obtained.
#[derive(Debug)]
pub struct Claimed<S> {
    /// The sandbox, exclusively ours until destroyed.
    pub sandbox: S,
    /// `true` if a ready sandbox was available at once; `false` if the
    /// claim had to wait for one to start (a cold claim).
    pub warm: bool,
    /// `true` if the sandbox was specialised for the job's language (its
    /// interpreter pre-started and waiting) and ready at once.
    pub specialised: bool,
}

impl<S> Claimed<S> {
    /// How the claim was served: `specialised`, `generic` or `cold`.
    pub fn kind(&self) -> &'static str {
        match (self.warm, self.specialised) {
            (false, _) => "cold",
            (true, true) => "specialised",
            (true, false) => "generic",
        }
    }
}

/// Point-in-time pool figures, for metrics and `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Sandboxes started and waiting for a job.
    pub ready: u64,
    /// Sandboxes claimed by a job and not yet destroyed.
    pub claimed: u64,
    /// Sandboxes being started.
    pub starting: u64,
    /// Claims served at once from a ready sandbox (counter).
    pub warm_hits: u64,
    /// Claims that had to wait for a sandbox (counter).
    pub cold_claims: u64,
}

/// A set of pre-warmed, single-use sandboxes.
pub trait WarmPool: Send + Sync + 'static {
    /// A claimed sandbox.
    type Sandbox: Send + 'static;

    /// Takes a ready sandbox for `job_id`, waiting for one if none is
    /// ready (a cold claim); never fails just because the pool is empty.
    ///
    /// # Errors
    /// [`Error::Closed`] on shutdown; backend errors otherwise.
    fn claim(&self, job_id: Uuid) -> impl Future<Output = Result<Claimed<Self::Sandbox>>> + Send;

    /// Like [`claim`](WarmPool::claim) for a job of `language` (as the job
    /// names it): a ready sandbox specialised for it if there is one, else
    /// any ready sandbox; never waits for a specialised one. Backends
    /// without specialised sandboxes just [`claim`](WarmPool::claim).
    ///
    /// # Errors
    /// As [`claim`](WarmPool::claim).
    fn claim_for(
        &self,
        job_id: Uuid,
        language: &str,
    ) -> impl Future<Output = Result<Claimed<Self::Sandbox>>> + Send {
        let _ = language;
        self.claim(job_id)
    }

    /// Hands `job` to the runner in `sandbox` and returns its one result.
    /// Bounded by the job's limits plus a grace: a sandbox that does not
    /// answer in time yields [`Error::Timeout`].
    ///
    /// # Errors
    /// Infrastructure failures only; the program's own failures are a
    /// normal [`JobResult`].
    fn run(
        &self,
        sandbox: &mut Self::Sandbox,
        job: &Job,
    ) -> impl Future<Output = Result<JobResult>> + Send;

    /// Destroys a sandbox and everything that ran in it.
    fn destroy(&self, sandbox: Self::Sandbox) -> impl Future<Output = ()> + Send;

    /// Current figures.
    fn stats(&self) -> PoolStats;

    /// The language runtimes' versions as a sandbox sees them: the JSON
    /// object `warmpod-runner --versions` prints (language key to version
    /// line), read by running that command in a sandbox of this pool. The
    /// pod-manager announces it on the events exchange at start-up and
    /// periodically ([`RuntimeVersions`](warmpod_protocol::RuntimeVersions)).
    ///
    /// # Errors
    /// The sandbox could not be started or its answer was not that object.
    fn runtime_versions(&self) -> impl Future<Output = Result<BTreeMap<String, String>>> + Send;

    /// Stops refilling and destroys every ready (unclaimed) sandbox; later
    /// claims fail with [`Error::Closed`]. Claimed sandboxes stay usable
    /// until their owner destroys them. Called once, on graceful shutdown.
    fn shutdown(&self) -> impl Future<Output = ()> + Send;
}

/// How long a sandbox may take to answer `job`, whatever the backend: its
/// run wall limit, plus its compile wall limit for compiled languages, plus
/// `grace` (runner and runtime start, transport). Unset limits take the
/// protocol defaults; values are capped at the protocol maxima, so even a
/// job the runner will refuse gets a bounded wait.
pub fn answer_deadline(job: &Job, grace: Duration) -> Duration {
    let run = job
        .limits
        .wall_time_ms
        .unwrap_or(ResolvedLimits::DEFAULT.wall_time_ms)
        .min(ResolvedLimits::MAXIMUM.wall_time_ms);
    let compiled = Language::find(&job.language).is_some_and(|l| l.compile.is_some());
    let compile = if compiled {
        job.compile_limits
            .wall_time_ms
            .unwrap_or(ResolvedLimits::COMPILE_DEFAULT.wall_time_ms)
            .min(ResolvedLimits::COMPILE_MAXIMUM.wall_time_ms)
    } else {
        0
    };
    Duration::from_millis(run + compile) + grace
}

/// The longest result line a runner can legitimately print for `job`:
/// stdout, stderr and compile output at their caps, each byte escaped as
/// `\u00XX` (6 bytes) in the worst case, plus room for the other fields.
/// A longer line is a protocol violation, not a result.
pub fn answer_cap(job: &Job) -> u64 {
    let out = job
        .limits
        .max_output_bytes
        .unwrap_or(ResolvedLimits::DEFAULT.max_output_bytes)
        .min(ResolvedLimits::MAXIMUM.max_output_bytes);
    let compile = ResolvedLimits::COMPILE_MAXIMUM.max_output_bytes;
    6 * (2 * out + compile) + 1024 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;
    use warmpod_protocol::{Limits, SourceFile};

    fn job(language: &str, wall: Option<u64>, compile_wall: Option<u64>) -> Job {
        Job {
            id: Uuid::nil(),
            language: language.into(),
            files: vec![SourceFile {
                name: String::new(),
                content: String::new(),
            }],
            stdin: String::new(),
            args: vec![],
            limits: Limits {
                wall_time_ms: wall,
                ..Limits::default()
            },
            compile_limits: Limits {
                wall_time_ms: compile_wall,
                ..Limits::default()
            },
        }
    }

    #[test]
    fn deadline_adds_compile_time_for_compiled_languages_only() {
        let grace = Duration::from_secs(10);
        let cases = [
            (
                job("python", Some(2_000), Some(5_000)),
                12_000,
                "interpreted: run + grace",
            ),
            (
                job("c", Some(2_000), Some(5_000)),
                17_000,
                "compiled: run + compile + grace",
            ),
            (
                job("c", None, None),
                40_000,
                "defaults: 10 s run + 20 s compile + grace",
            ),
            (
                job("python", Some(u64::MAX), None),
                70_000,
                "capped at the maximum",
            ),
        ];
        for (job, ms, why) in cases {
            assert_eq!(
                answer_deadline(&job, grace),
                Duration::from_millis(ms),
                "{why}"
            );
        }
    }

    #[test]
    fn answer_cap_covers_fully_escaped_output_at_the_caps() {
        let mut j = job("python", None, None);
        j.limits.max_output_bytes = Some(1_000);
        let compile = ResolvedLimits::COMPILE_MAXIMUM.max_output_bytes;
        assert!(answer_cap(&j) >= 6 * (2 * 1_000 + compile));
        j.limits.max_output_bytes = Some(u64::MAX);
        let max = ResolvedLimits::MAXIMUM.max_output_bytes;
        assert_eq!(answer_cap(&j), 6 * (2 * max + compile) + 1024 * 1024);
    }
}
