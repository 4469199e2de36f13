//! Results: what became of a job.
//!
//! `warmpod-runner` fills the execution fields; the pod-manager adds the
//! timing fields (`queue_ms`, `claim_ms`, `exec_ms`, `total_ms`, `warm`);
//! the api-server may turn `accepted` into `wrong_answer` with
//! [`JobResult::judged`].

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The closed set of job states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted by the api-server, waiting in the queue.
    Queued,
    /// Claimed by a pod-manager and handed to a sandbox.
    Running,
    /// Exited with code 0 (and matched `expected_output`, if any).
    Accepted,
    /// Exited with code 0 but its output differs from `expected_output`.
    WrongAnswer,
    /// The compile step failed; see `compile_output`.
    CompileError,
    /// Non-zero exit code, or killed by a signal (named in the result).
    RuntimeError,
    /// CPU or wall-clock limit reached; the whole process tree was killed.
    TimeLimitExceeded,
    /// Memory limit reached.
    MemoryLimitExceeded,
    /// More than `max_output_bytes` on stdout or stderr.
    OutputLimitExceeded,
    /// warmpod failed, not the program; see `message`.
    InternalError,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 10] = [
        Status::Queued,
        Status::Running,
        Status::Accepted,
        Status::WrongAnswer,
        Status::CompileError,
        Status::RuntimeError,
        Status::TimeLimitExceeded,
        Status::MemoryLimitExceeded,
        Status::OutputLimitExceeded,
        Status::InternalError,
    ];

    /// Whether the job is done (nothing will change any more).
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }

    /// The wire name, e.g. `"time_limit_exceeded"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Accepted => "accepted",
            Status::WrongAnswer => "wrong_answer",
            Status::CompileError => "compile_error",
            Status::RuntimeError => "runtime_error",
            Status::TimeLimitExceeded => "time_limit_exceeded",
            Status::MemoryLimitExceeded => "memory_limit_exceeded",
            Status::OutputLimitExceeded => "output_limit_exceeded",
            Status::InternalError => "internal_error",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one job. Output fields are always valid UTF-8 (invalid
/// bytes are replaced lossily by the runner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The job's id.
    pub id: Uuid,
    /// The verdict.
    pub status: Status,
    /// Exit code, when the program exited on its own.
    pub exit_code: Option<i32>,
    /// The signal number that ended the program, if one did.
    pub signal: Option<i32>,
    /// The signal's name, e.g. `"SIGSEGV"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_name: Option<String>,
    /// Standard output, at most `max_output_bytes`.
    pub stdout: String,
    /// Standard error, at most `max_output_bytes`.
    pub stderr: String,
    /// What the compiler printed (empty for interpreted languages).
    pub compile_output: String,
    /// Whether stdout was cut at the limit.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the limit.
    pub stderr_truncated: bool,
    /// Wall-clock time of the run (not the compile), in milliseconds.
    pub wall_time_ms: u64,
    /// CPU time of the run, user + system, all processes, in milliseconds.
    pub cpu_time_ms: u64,
    /// Peak resident memory of the run, in KiB.
    pub memory_kb: u64,
    /// A human explanation for `internal_error` (and some limit verdicts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Time in the queue before a pod-manager took the job (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<u64>,
    /// Time to claim a sandbox (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_ms: Option<u64>,
    /// Time from handing the job to the sandbox to reading its result (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_ms: Option<u64>,
    /// Time from submission to the result being published (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
    /// Whether a ready (pre-warmed) sandbox was claimed without waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<bool>,
}

impl JobResult {
    /// An empty result with `status`, to be filled in.
    pub fn new(id: Uuid, status: Status) -> Self {
        Self {
            id,
            status,
            exit_code: None,
            signal: None,
            signal_name: None,
            stdout: String::new(),
            stderr: String::new(),
            compile_output: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            wall_time_ms: 0,
            cpu_time_ms: 0,
            memory_kb: 0,
            message: None,
            queue_ms: None,
            claim_ms: None,
            exec_ms: None,
            total_ms: None,
            warm: None,
        }
    }

    /// An `internal_error` result explaining what went wrong.
    pub fn internal_error(id: Uuid, message: impl Into<String>) -> Self {
        Self {
            message: Some(message.into()),
            ..Self::new(id, Status::InternalError)
        }
    }

    /// The verdict once `expected_output` is considered: an `accepted` run
    /// whose stdout differs from `expected` (both with trailing whitespace
    /// trimmed on every line and at the end, as judges compare) becomes
    /// `wrong_answer`. Any other status is returned unchanged.
    pub fn judged(&self, expected: Option<&str>) -> Status {
        match (self.status, expected) {
            (Status::Accepted, Some(expected)) if !output_matches(&self.stdout, expected) => {
                Status::WrongAnswer
            }
            (status, _) => status,
        }
    }
}

/// Compares program output with an expected answer the way online judges
/// do: trailing whitespace on each line and trailing blank lines ignored.
pub fn output_matches(actual: &str, expected: &str) -> bool {
    fn norm(s: &str) -> impl Iterator<Item = &str> {
        s.trim_end().lines().map(str::trim_end)
    }
    norm(actual).eq(norm(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_snake_case_on_the_wire() {
        for status in Status::ALL {
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            let back: Status = serde_json::from_str(&json).unwrap();
            assert_eq!(back, status);
        }
    }

    #[test]
    fn only_queued_and_running_are_not_final() {
        let open: Vec<_> = Status::ALL.into_iter().filter(|s| !s.is_final()).collect();
        assert_eq!(open, [Status::Queued, Status::Running]);
    }

    #[test]
    fn result_keeps_exact_field_names() {
        let r = JobResult::new(Uuid::nil(), Status::Accepted);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for field in [
            "id",
            "status",
            "exit_code",
            "signal",
            "stdout",
            "stderr",
            "compile_output",
            "stdout_truncated",
            "stderr_truncated",
            "wall_time_ms",
            "cpu_time_ms",
            "memory_kb",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert!(v.get("message").is_none(), "message only when set");
    }

    #[test]
    fn judging_trims_trailing_whitespace_only() {
        let mut r = JobResult::new(Uuid::nil(), Status::Accepted);
        r.stdout = "1 2 \n3\n\n".into();
        assert_eq!(r.judged(None), Status::Accepted);
        assert_eq!(r.judged(Some("1 2\n3")), Status::Accepted);
        assert_eq!(r.judged(Some("1  2\n3")), Status::WrongAnswer);
        assert_eq!(r.judged(Some(" 1 2\n3")), Status::WrongAnswer);
        r.status = Status::RuntimeError;
        assert_eq!(r.judged(Some("anything")), Status::RuntimeError);
    }
}
