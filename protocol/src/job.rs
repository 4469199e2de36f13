//! Jobs: what a client asked to run.
//!
//! [`Job`] is exactly what `warmpod-runner` reads as one JSON line.
//! [`JobMessage`] wraps it for the jobs queue with metadata that only the
//! api-server interprets ([`JobMeta`]); the pod-manager echoes that metadata
//! on every event without looking inside.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{UnixMillis, limits::Limits};

/// One program to compile (if its language needs it) and run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Assigned by the api-server; echoed in the result.
    pub id: Uuid,
    /// A key of the [language table](crate::LANGUAGES), e.g. `"python"`.
    pub language: String,
    /// Source files. The first is the entry point; a first file with an
    /// empty name takes the language's default source file name.
    pub files: Vec<SourceFile>,
    /// Bytes fed to the program's standard input.
    #[serde(default)]
    pub stdin: String,
    /// Extra command-line arguments appended to the run command.
    #[serde(default)]
    pub args: Vec<String>,
    /// Limits for the run; unset fields take [`ResolvedLimits::DEFAULT`](crate::ResolvedLimits::DEFAULT).
    #[serde(default)]
    pub limits: Limits,
    /// Limits for the compile step of compiled languages; unset fields take
    /// [`ResolvedLimits::COMPILE_DEFAULT`](crate::ResolvedLimits::COMPILE_DEFAULT).
    #[serde(default)]
    pub compile_limits: Limits,
}

/// One file of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// A plain file name (no `/`, not `.` or `..`); may be empty for the
    /// entry point, see [`Job::files`].
    #[serde(default)]
    pub name: String,
    /// The file's text.
    pub content: String,
}

/// What the api-server publishes on the jobs queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    /// The job for the runner.
    pub job: Job,
    /// When the api-server accepted the job; the pod-manager derives
    /// `queue_ms` from it.
    pub submitted_at_ms: UnixMillis,
    /// Client-facing metadata, echoed on every [`JobEvent`](crate::JobEvent).
    #[serde(default)]
    pub meta: JobMeta,
}

/// Metadata the pod-manager carries through untouched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMeta {
    /// Where to POST the final result (one api-server replica does it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// When set, a successful run is judged `accepted` or `wrong_answer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_output: Option<String>,
    /// A client's own label (e.g. a user id on the WebSocket API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Which API façade accepted the job (`v1`, `judge0`, `compat`), so
    /// callbacks can be shaped the way that client expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The job's language key, so that every api-server replica (not only
    /// the one that accepted the job) can show it, e.g. Judge0's
    /// `language_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

impl Job {
    /// The entry point's file name: the first file's name, or `default`
    /// (the language's source file name) when that is empty.
    pub fn entry_name<'a>(&'a self, default: &'a str) -> &'a str {
        match self.files.first() {
            Some(f) if !f.name.is_empty() => &f.name,
            _ => default,
        }
    }
}

impl SourceFile {
    /// Whether `name` is safe to create inside a work directory: a single
    /// path component, not hidden traversal, no NUL, at most 255 bytes.
    pub fn is_valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 255
            && name != "."
            && name != ".."
            && !name.contains(['/', '\0'])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_round_trips_with_defaults() {
        let json = r#"{"id":"00000000-0000-0000-0000-000000000001","language":"python",
                       "files":[{"name":"","content":"print(1)"}]}"#;
        let job: Job = serde_json::from_str(json).unwrap();
        assert_eq!(job.stdin, "");
        assert!(job.args.is_empty());
        assert_eq!(job.limits, Limits::default());
        assert_eq!(job.entry_name("main.py"), "main.py");
        let back: Job = serde_json::from_str(&serde_json::to_string(&job).unwrap()).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn file_names_are_checked() {
        for ok in ["main.py", "a b.txt", "..hidden"] {
            assert!(SourceFile::is_valid_name(ok), "{ok} should be valid");
        }
        for bad in ["", ".", "..", "a/b", "/etc/passwd", "a\0b"] {
            assert!(!SourceFile::is_valid_name(bad), "{bad:?} should be invalid");
        }
        assert!(!SourceFile::is_valid_name(&"x".repeat(256)));
    }
}
