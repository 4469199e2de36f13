//! Reading and checking the one job line.
//!
//! [`read_line`] takes one line from the runner's stdin without waiting for
//! EOF; [`parse`] turns it into a [`PreparedJob`] whose every field has been
//! checked, or a [`JobError`] naming the field at fault, together with the
//! best id that could be salvaged from the line.

use std::io::{self, BufRead, Read};

use uuid::Uuid;
use warmpod_protocol::{Job, Language, LimitError, ResolvedLimits, SourceFile};

/// The longest job line accepted, in bytes.
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// A job whose fields are all valid.
#[derive(Debug, Clone)]
pub struct PreparedJob {
    /// The job's id.
    pub id: Uuid,
    /// Its language.
    pub language: &'static Language,
    /// `(name, content)` of every file, entry point first, names checked.
    pub files: Vec<(String, String)>,
    /// Bytes for the program's stdin.
    pub stdin: String,
    /// Arguments appended to the run command.
    pub args: Vec<String>,
    /// Run limits.
    pub limits: ResolvedLimits,
    /// Compile limits.
    pub compile_limits: ResolvedLimits,
}

/// What is wrong with a job line.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Nothing arrived on stdin.
    #[error("no job line on stdin")]
    Empty,
    /// The line could not be read.
    #[error("reading the job line failed: {0}")]
    Read(#[source] io::Error),
    /// The line is longer than [`MAX_LINE_BYTES`].
    #[error("the job line is longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    /// Not a JSON `Job`.
    #[error("malformed job JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// `language` is not in the table.
    #[error("language: unknown language {0:?}")]
    Language(String),
    /// `files` is empty.
    #[error("files: at least one file is required")]
    NoFiles,
    /// A file name is not a plain file name.
    #[error("files[{index}].name: {name:?} is not a valid file name")]
    FileName {
        /// Position in `files`.
        index: usize,
        /// The name given.
        name: String,
    },
    /// Two files share a name.
    #[error("files[{index}].name: {name:?} is used twice")]
    DuplicateName {
        /// Position in `files` of the second use.
        index: usize,
        /// The name given.
        name: String,
    },
    /// An argument holds a NUL byte, which no program can receive.
    #[error("args[{0}]: contains a NUL byte")]
    ArgNul(usize),
    /// A run limit is zero or above its maximum.
    #[error("{0}")]
    Limits(#[source] LimitError),
    /// A compile limit is zero or above its maximum.
    #[error("compile_{0}")]
    CompileLimits(#[source] LimitError),
}

/// Reads one line (up to `\n` or EOF) from `input`, without the newline.
///
/// # Errors
/// [`JobError::Empty`] at immediate EOF, [`JobError::TooLong`] past
/// [`MAX_LINE_BYTES`], [`JobError::Read`] on I/O errors.
pub fn read_line(input: &mut impl BufRead) -> Result<Vec<u8>, JobError> {
    let mut line = Vec::new();
    let mut limited = input.by_ref().take(MAX_LINE_BYTES as u64 + 1);
    limited
        .read_until(b'\n', &mut line)
        .map_err(JobError::Read)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_LINE_BYTES {
        return Err(JobError::TooLong);
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(JobError::Empty);
    }
    Ok(line)
}

/// The `id` of a line that may not be a valid job: a valid uuid `id` of a
/// JSON object, else the nil uuid.
pub fn salvage_id(line: &[u8]) -> Uuid {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("id")?.as_str()?.parse().ok())
        .unwrap_or(Uuid::nil())
}

/// Parses and checks a job line.
///
/// # Errors
/// The id salvaged from the line (see [`salvage_id`]) and what is wrong.
pub fn parse(line: &[u8]) -> Result<PreparedJob, (Uuid, JobError)> {
    let job: Job =
        serde_json::from_slice(line).map_err(|e| (salvage_id(line), JobError::Json(e)))?;
    let id = job.id;
    prepare(job).map_err(|e| (id, e))
}

fn prepare(job: Job) -> Result<PreparedJob, JobError> {
    let language =
        Language::find(&job.language).ok_or_else(|| JobError::Language(job.language.clone()))?;
    if job.files.is_empty() {
        return Err(JobError::NoFiles);
    }
    let limits = job
        .limits
        .resolve(&ResolvedLimits::DEFAULT, &ResolvedLimits::MAXIMUM)
        .map_err(JobError::Limits)?;
    let compile_limits = job
        .compile_limits
        .resolve(
            &ResolvedLimits::COMPILE_DEFAULT,
            &ResolvedLimits::COMPILE_MAXIMUM,
        )
        .map_err(JobError::CompileLimits)?;
    if let Some(index) = job.args.iter().position(|a| a.contains('\0')) {
        return Err(JobError::ArgNul(index));
    }
    let entry = job.entry_name(language.source_file).to_string();
    let mut files: Vec<(String, String)> = Vec::with_capacity(job.files.len());
    for (index, SourceFile { name, content }) in job.files.into_iter().enumerate() {
        let name = if index == 0 { entry.clone() } else { name };
        if !SourceFile::is_valid_name(&name) {
            return Err(JobError::FileName { index, name });
        }
        if files.iter().any(|(n, _)| *n == name) {
            return Err(JobError::DuplicateName { index, name });
        }
        files.push((name, content));
    }
    Ok(PreparedJob {
        id: job.id,
        language,
        files,
        stdin: job.stdin,
        args: job.args,
        limits,
        compile_limits,
    })
}

impl PreparedJob {
    /// The names `{sources}` expands to: the entry point, then every other
    /// file with the entry point's extension.
    pub fn sources(&self) -> Vec<&str> {
        let entry = self.files[0].0.as_str();
        let ext = entry.rsplit_once('.').map(|(_, e)| e);
        let mut out = vec![entry];
        out.extend(
            self.files[1..]
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| n.rsplit_once('.').map(|(_, e)| e) == ext),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5f0c6d1e-6a53-4f43-9a1d-0c8b2a1e9f10";

    fn line(extra: &str) -> String {
        format!(
            r#"{{"id":"{ID}","language":"python","files":[{{"name":"","content":"print(1)"}}]{extra}}}"#
        )
    }

    #[test]
    fn a_minimal_job_takes_defaults() {
        let job = parse(line("").as_bytes()).unwrap();
        assert_eq!(job.id.to_string(), ID);
        assert_eq!(job.language.key, "python");
        assert_eq!(job.files[0].0, "main.py");
        assert_eq!(job.limits, ResolvedLimits::DEFAULT);
        assert_eq!(job.compile_limits, ResolvedLimits::COMPILE_DEFAULT);
    }

    #[test]
    fn bad_jobs_name_the_field() {
        let cases = [
            (
                line(r#","limits":{"memory_kb":99999999999}"#),
                "limits.memory_kb",
            ),
            (
                line(r#","compile_limits":{"wall_time_ms":0}"#),
                "compile_limits.wall_time_ms",
            ),
            (line(r#","args":["a\u0000b"]"#), "args[0]"),
            (
                format!(r#"{{"id":"{ID}","language":"cobol","files":[{{"content":""}}]}}"#),
                "language",
            ),
            (
                format!(r#"{{"id":"{ID}","language":"c","files":[]}}"#),
                "files",
            ),
            (
                format!(
                    r#"{{"id":"{ID}","language":"c","files":[{{"content":""}},{{"name":"../x","content":""}}]}}"#
                ),
                "files[1].name",
            ),
            (
                format!(
                    r#"{{"id":"{ID}","language":"c","files":[{{"name":"a.c","content":""}},{{"name":"a.c","content":""}}]}}"#
                ),
                "files[1].name",
            ),
        ];
        for (input, field) in cases {
            let (id, err) = parse(input.as_bytes()).unwrap_err();
            assert_eq!(id.to_string(), ID, "{input}");
            assert!(err.to_string().starts_with(field), "{input}: {err}");
        }
    }

    #[test]
    fn malformed_lines_salvage_the_id() {
        let (id, err) = parse(format!(r#"{{"id":"{ID}","language":5}}"#).as_bytes()).unwrap_err();
        assert_eq!(id.to_string(), ID);
        assert!(matches!(err, JobError::Json(_)));
        for junk in ["not json", r#"{"id":"nope"}"#, "[1,2]", r#"{"id":"#] {
            assert_eq!(parse(junk.as_bytes()).unwrap_err().0, Uuid::nil(), "{junk}");
        }
    }

    #[test]
    fn read_line_stops_at_newline_and_refuses_nothing() {
        let mut input: &[u8] = b"{\"a\":1}\nrest";
        assert_eq!(read_line(&mut input).unwrap(), b"{\"a\":1}");
        let mut empty: &[u8] = b"";
        assert!(matches!(read_line(&mut empty), Err(JobError::Empty)));
        let mut blank: &[u8] = b"  \n";
        assert!(matches!(read_line(&mut blank), Err(JobError::Empty)));
        let mut no_newline: &[u8] = b"{}";
        assert_eq!(read_line(&mut no_newline).unwrap(), b"{}");
    }

    #[test]
    fn sources_keep_the_entry_first_and_its_extension_only() {
        let input = format!(
            r#"{{"id":"{ID}","language":"c","files":[{{"name":"z.c","content":""}},{{"name":"a.h","content":""}},{{"name":"b.c","content":""}}]}}"#
        );
        let job = parse(input.as_bytes()).unwrap();
        assert_eq!(job.sources(), ["z.c", "b.c"]);
    }
}
