//! How a job's state is shown to each API's clients: the native view, the
//! Judge0 submission, and the seed systems' callback body. Shared by the
//! routes and the webhook deliverer, so a callback carries exactly what a
//! GET would return.

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use uuid::Uuid;
use warmpod_protocol::{JobResult, Status};

use crate::state::Execution;

/// A job as the native API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExecutionView {
    /// The job's id.
    pub id: Uuid,
    /// `queued`, `running`, or a final verdict: `accepted`, `wrong_answer`,
    /// `compile_error`, `runtime_error`, `time_limit_exceeded`,
    /// `memory_limit_exceeded`, `output_limit_exceeded`, `internal_error`.
    #[schema(example = "accepted")]
    pub status: String,
    /// The client's own label, if it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The language key, e.g. `python`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// When the job was queued (ms since the epoch), if this replica saw it.
    pub queued_at_ms: Option<u64>,
    /// When it started running, if this replica saw it.
    pub running_at_ms: Option<u64>,
    /// When it finished.
    pub finished_at_ms: Option<u64>,
    /// The result fields; present once the job is final.
    #[serde(flatten)]
    pub result: Option<ResultView>,
}

/// The result fields of a finished job (see `warmpod_protocol::JobResult`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResultView {
    /// Exit code, when the program exited on its own.
    pub exit_code: Option<i32>,
    /// The signal number that ended the program.
    pub signal: Option<i32>,
    /// The signal's name, e.g. `SIGSEGV`.
    pub signal_name: Option<String>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// What the compiler printed.
    pub compile_output: String,
    /// Whether stdout was cut at the limit.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at the limit.
    pub stderr_truncated: bool,
    /// Wall-clock time of the run (ms).
    pub wall_time_ms: u64,
    /// CPU time of the run (ms).
    pub cpu_time_ms: u64,
    /// Peak memory (KiB).
    pub memory_kb: u64,
    /// Explanation for `internal_error` and some limit verdicts.
    pub message: Option<String>,
    /// Time in the queue (ms).
    pub queue_ms: Option<u64>,
    /// Time to claim a sandbox (ms).
    pub claim_ms: Option<u64>,
    /// Time in the sandbox (ms).
    pub exec_ms: Option<u64>,
    /// Submission to result (ms).
    pub total_ms: Option<u64>,
    /// Whether a pre-warmed sandbox was ready.
    pub warm: Option<bool>,
}

impl From<&JobResult> for ResultView {
    fn from(r: &JobResult) -> Self {
        Self {
            exit_code: r.exit_code,
            signal: r.signal,
            signal_name: r.signal_name.clone(),
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            compile_output: r.compile_output.clone(),
            stdout_truncated: r.stdout_truncated,
            stderr_truncated: r.stderr_truncated,
            wall_time_ms: r.wall_time_ms,
            cpu_time_ms: r.cpu_time_ms,
            memory_kb: r.memory_kb,
            message: r.message.clone(),
            queue_ms: r.queue_ms,
            claim_ms: r.claim_ms,
            exec_ms: r.exec_ms,
            total_ms: r.total_ms,
            warm: r.warm,
        }
    }
}

impl From<&Execution> for ExecutionView {
    fn from(e: &Execution) -> Self {
        Self {
            id: e.id,
            status: e.status.as_str().to_string(),
            tag: e.meta.tag.clone(),
            language: e.language().map(|l| l.key.to_string()),
            queued_at_ms: e.queued_at_ms,
            running_at_ms: e.running_at_ms,
            finished_at_ms: e.finished_at_ms,
            result: e.result.as_ref().map(ResultView::from),
        }
    }
}

/// Judge0's status ids and descriptions, 1–14.
pub const JUDGE0_STATUSES: [(u32, &str); 14] = [
    (1, "In Queue"),
    (2, "Processing"),
    (3, "Accepted"),
    (4, "Wrong Answer"),
    (5, "Time Limit Exceeded"),
    (6, "Compilation Error"),
    (7, "Runtime Error (SIGSEGV)"),
    (8, "Runtime Error (SIGXFSZ)"),
    (9, "Runtime Error (SIGFPE)"),
    (10, "Runtime Error (SIGABRT)"),
    (11, "Runtime Error (NZEC)"),
    (12, "Runtime Error (Other)"),
    (13, "Internal Error"),
    (14, "Exec Format Error"),
];

/// The Judge0 status id of a job state. Output over the limit is reported
/// as SIGXFSZ (8), as Judge0 does; memory over the limit as "Other" (12).
pub fn judge0_status_id(status: Status, result: Option<&JobResult>) -> u32 {
    match status {
        Status::Queued => 1,
        Status::Running => 2,
        Status::Accepted => 3,
        Status::WrongAnswer => 4,
        Status::TimeLimitExceeded => 5,
        Status::CompileError => 6,
        Status::OutputLimitExceeded => 8,
        Status::MemoryLimitExceeded => 12,
        Status::InternalError => 13,
        Status::RuntimeError => {
            let signal = result.and_then(|r| r.signal_name.as_deref());
            match signal {
                Some("SIGSEGV") => 7,
                Some("SIGXFSZ") => 8,
                Some("SIGFPE") => 9,
                Some("SIGABRT") => 10,
                Some(_) => 12,
                None if result.and_then(|r| r.signal).is_some() => 12,
                None => 11,
            }
        }
    }
}

/// The Judge0 `status` object for an id.
pub fn judge0_status(id: u32) -> Value {
    let description = JUDGE0_STATUSES
        .iter()
        .find(|(i, _)| *i == id)
        .map_or("Unknown", |(_, d)| d);
    json!({"id": id, "description": description})
}

/// Every field a Judge0 submission has (`fields=*`).
pub const JUDGE0_ALL_FIELDS: &[&str] = &[
    "source_code",
    "language_id",
    "stdin",
    "expected_output",
    "stdout",
    "status_id",
    "created_at",
    "finished_at",
    "time",
    "memory",
    "stderr",
    "token",
    "number_of_runs",
    "cpu_time_limit",
    "cpu_extra_time",
    "wall_time_limit",
    "memory_limit",
    "stack_limit",
    "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "max_file_size",
    "compile_output",
    "exit_code",
    "exit_signal",
    "message",
    "wall_time",
    "compiler_options",
    "command_line_arguments",
    "redirect_stderr_to_stdout",
    "callback_url",
    "additional_files",
    "enable_network",
    "status",
    "language",
    "post_execution_filesystem",
];

/// Judge0's default fields of `GET /submissions/{token}`.
pub const JUDGE0_DEFAULT_FIELDS: &[&str] = &[
    "stdout",
    "time",
    "memory",
    "stderr",
    "token",
    "compile_output",
    "message",
    "status",
];

/// A Judge0 submission object with every field (filter with
/// [`select_fields`]). Text fields are base64 when `base64` is set.
pub fn judge0_submission(
    e: &Execution,
    base64: bool,
    language_name: Option<String>,
) -> Map<String, Value> {
    let text = |s: Option<&str>| -> Value {
        match s {
            None => Value::Null,
            Some(s) if base64 => Value::String(B64.encode(s)),
            Some(s) => Value::String(s.to_string()),
        }
    };
    let r = e.result.as_ref();
    let status_id = judge0_status_id(e.status, r);
    let lang = e.language();
    let seconds = |ms: u64| Value::String(format!("{:.3}", ms as f64 / 1000.0));
    let message = r.and_then(|r| {
        r.message
            .clone()
            .or_else(|| match (r.status, r.exit_code, &r.signal_name) {
                (_, _, Some(sig)) => Some(format!(
                    "Killed by signal {} ({sig})",
                    r.signal.unwrap_or(0)
                )),
                (Status::RuntimeError, Some(code), None) => {
                    Some(format!("Exited with error status {code}"))
                }
                _ => None,
            })
    });
    let mut m = Map::new();
    for name in JUDGE0_ALL_FIELDS {
        m.insert((*name).to_string(), Value::Null);
    }
    m.insert("token".into(), json!(e.id));
    m.insert(
        "source_code".into(),
        text(e.submission.as_ref().map(|s| s.source.as_str())),
    );
    m.insert(
        "stdin".into(),
        text(e.submission.as_ref().map(|s| s.stdin.as_str())),
    );
    m.insert("language_id".into(), json!(lang.map(|l| l.judge0_id())));
    if let Some(l) = lang {
        m.insert("language".into(), json!({"id": l.judge0_id(), "name": language_name.unwrap_or_else(|| l.name.to_string())}));
    }
    m.insert(
        "expected_output".into(),
        text(e.meta.expected_output.as_deref()),
    );
    m.insert("callback_url".into(), json!(e.meta.callback_url));
    m.insert("stdout".into(), text(r.map(|r| r.stdout.as_str())));
    m.insert("stderr".into(), text(r.map(|r| r.stderr.as_str())));
    m.insert(
        "compile_output".into(),
        text(r.map(|r| r.compile_output.as_str())),
    );
    m.insert("message".into(), text(message.as_deref()));
    m.insert("status_id".into(), json!(status_id));
    m.insert("status".into(), judge0_status(status_id));
    m.insert(
        "time".into(),
        r.map_or(Value::Null, |r| seconds(r.cpu_time_ms)),
    );
    m.insert(
        "wall_time".into(),
        r.map_or(Value::Null, |r| seconds(r.wall_time_ms)),
    );
    m.insert("memory".into(), json!(r.map(|r| r.memory_kb)));
    m.insert("exit_code".into(), json!(r.and_then(|r| r.exit_code)));
    m.insert("exit_signal".into(), json!(r.and_then(|r| r.signal)));
    m.insert("created_at".into(), json!(e.queued_at_ms.map(iso8601)));
    m.insert("finished_at".into(), json!(e.finished_at_ms.map(iso8601)));
    m.insert("number_of_runs".into(), json!(1));
    m.insert("redirect_stderr_to_stdout".into(), json!(false));
    m.insert("enable_network".into(), json!(false));
    m
}

/// Keeps only the `fields` asked for (comma-separated, `*` for all).
///
/// # Errors
/// The first name that is not a Judge0 submission field.
pub fn select_fields(
    mut all: Map<String, Value>,
    fields: Option<&str>,
    default: &[&str],
) -> Result<Map<String, Value>, String> {
    let wanted: Vec<&str> = match fields.map(str::trim) {
        Some("*") => return Ok(all),
        Some(f) if !f.is_empty() => f
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
        _ => default.to_vec(),
    };
    let mut out = Map::new();
    for name in wanted {
        match all.remove(name) {
            Some(v) => {
                out.insert(name.to_string(), v);
            }
            None if out.contains_key(name) => {}
            None => return Err(name.to_string()),
        }
    }
    Ok(out)
}

/// The body the seed systems' callbacks receive.
pub fn compat_callback(e: &Execution) -> Value {
    let r = e.result.as_ref();
    json!({
        "token": e.id,
        "stdout": r.map(|r| r.stdout.as_str()),
        "stderr": r.map(|r| r.stderr.as_str()),
        "status": e.status.as_str(),
        "execution_time": r.map(|r| r.wall_time_ms as f64 / 1000.0),
        "exit_code": r.and_then(|r| r.exit_code),
    })
}

/// `2024-05-01T12:00:00.123Z` for milliseconds since the epoch.
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: Status, signal: Option<(&str, i32)>, exit: Option<i32>) -> JobResult {
        let mut r = JobResult::new(Uuid::nil(), status);
        r.signal_name = signal.map(|s| s.0.to_string());
        r.signal = signal.map(|s| s.1);
        r.exit_code = exit;
        r
    }

    #[test]
    fn judge0_status_ids() {
        let cases = [
            (Status::Queued, None, None, 1),
            (Status::Running, None, None, 2),
            (Status::Accepted, None, Some(0), 3),
            (Status::WrongAnswer, None, Some(0), 4),
            (Status::TimeLimitExceeded, None, None, 5),
            (Status::CompileError, None, None, 6),
            (Status::RuntimeError, Some(("SIGSEGV", 11)), None, 7),
            (Status::RuntimeError, Some(("SIGXFSZ", 25)), None, 8),
            (Status::RuntimeError, Some(("SIGFPE", 8)), None, 9),
            (Status::RuntimeError, Some(("SIGABRT", 6)), None, 10),
            (Status::RuntimeError, None, Some(1), 11),
            (Status::RuntimeError, Some(("SIGKILL", 9)), None, 12),
            (Status::InternalError, None, None, 13),
        ];
        for (status, signal, exit, id) in cases {
            let r = result(status, signal, exit);
            assert_eq!(
                judge0_status_id(status, Some(&r)),
                id,
                "{status} {signal:?}"
            );
        }
    }

    #[test]
    fn fields_are_selected() {
        let mut all = Map::new();
        for f in JUDGE0_ALL_FIELDS {
            all.insert(f.to_string(), Value::Null);
        }
        let got = select_fields(all.clone(), Some("stdout, token"), JUDGE0_DEFAULT_FIELDS).unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), ["stdout", "token"]);
        assert_eq!(
            select_fields(all.clone(), Some("*"), &[]).unwrap().len(),
            JUDGE0_ALL_FIELDS.len()
        );
        assert_eq!(
            select_fields(all.clone(), None, JUDGE0_DEFAULT_FIELDS)
                .unwrap()
                .len(),
            8
        );
        assert_eq!(select_fields(all, Some("nope"), &[]).unwrap_err(), "nope");
    }

    #[test]
    fn timestamps_format() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
    }
}
