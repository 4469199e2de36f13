//! Running `warmpod-runner` in a claimed pod over the exec WebSocket.
//!
//! kube-rs negotiates `v5.channel.k8s.io` when the API server offers it and
//! `v4.channel.k8s.io` otherwise. We write the job line on stdin and keep
//! stdin open (on v4, closing stdin closes the whole socket; the runner
//! does not wait for EOF), read one line from stdout, drain stderr, and
//! read the `Status` from channel 3.
//!
//! Never trust the stream to end: when the connection fails, kube-rs ends
//! its message task without closing our stdout reader. So every exec is
//! raced against a deadline, and the status future (which resolves as soon
//! as that task ends, with or without a status) tells a broken stream from
//! a slow runner.

use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{Api, AttachParams};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::debug;
use warmpod_protocol::{Job, JobResult};

use super::kube_error;
use crate::pool::{Error, answer_cap};

/// Deadline of a `warmpod-runner --versions` exec.
pub const VERSIONS_DEADLINE: Duration = Duration::from_secs(30);
/// How long to wait for the status channel once the result line is in.
const STATUS_WAIT: Duration = Duration::from_secs(5);
/// Size of kube-rs' in-memory pipes between its socket task and us.
const PIPE_BYTES: usize = 64 * 1024;
/// Runner stderr kept for error messages.
const STDERR_KEEP: usize = 4 * 1024;

/// Why an exec gave no result.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The deadline passed (the runner hung, or the stream stalled).
    #[error("exec did not finish within {0:?}")]
    Timeout(Duration),
    /// The exec could not be started (upgrade refused, pod gone, ...).
    #[error("starting the exec failed")]
    Connect(#[source] kube::Error),
    /// The connection broke before the result line arrived.
    #[error("exec stream broke before the result arrived: {0}")]
    StreamBroken(String),
    /// The runner ended without printing a result line.
    #[error("runner ended without a result (status: {status}; stderr: {stderr:?})")]
    NoResult {
        /// The exec's status message, or `none`.
        status: String,
        /// The start of the runner's stderr.
        stderr: String,
    },
    /// The runner printed something that is not the job's result.
    #[error("runner printed an invalid result: {0}")]
    BadResult(String),
}

impl ExecError {
    /// A label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Connect(_) => "connect",
            Self::StreamBroken(_) => "stream_broken",
            Self::NoResult { .. } => "no_result",
            Self::BadResult(_) => "bad_result",
        }
    }

    /// The pool error the consumer acts on: a timeout stays a timeout,
    /// stream failures are i/o, a misbehaving runner a protocol violation.
    pub fn into_pool_error(self, deadline: Duration) -> Error {
        match self {
            Self::Timeout(_) => Error::Timeout(deadline),
            Self::Connect(e) => kube_error("starting the exec", e),
            e @ Self::StreamBroken(_) => Error::Io {
                context: "running the job over exec".into(),
                source: std::io::Error::other(e),
            },
            e @ (Self::NoResult { .. } | Self::BadResult(_)) => Error::Protocol(e.to_string()),
        }
    }
}

/// Runs `job` with `command` in `pod` and returns its result.
///
/// # Errors
/// See [`ExecError`]; the caller deletes the pod on any of them.
pub async fn run_job(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    command: &[String],
    job: &Job,
    deadline: Duration,
) -> Result<JobResult, ExecError> {
    let mut line = serde_json::to_vec(job)
        .map_err(|e| ExecError::BadResult(format!("encoding the job: {e}")))?;
    line.push(b'\n');
    let out = session(
        pods,
        pod,
        container,
        command,
        &line,
        Read::Line(answer_cap(job)),
        deadline,
    )
    .await?;
    let result: JobResult = serde_json::from_slice(&out)
        .map_err(|e| ExecError::BadResult(format!("not a JobResult line: {e}")))?;
    if result.id != job.id {
        return Err(ExecError::BadResult(format!(
            "result is for job {}, not {}",
            result.id, job.id
        )));
    }
    Ok(result)
}

/// Runs `command` in `pod` with empty stdin and returns its whole stdout.
///
/// # Errors
/// See [`ExecError`].
pub async fn run_command(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    command: &[String],
    deadline: Duration,
) -> Result<String, ExecError> {
    let out = session(
        pods,
        pod,
        container,
        command,
        b"",
        Read::ToEnd(1024 * 1024),
        deadline,
    )
    .await?;
    String::from_utf8(out).map_err(|e| ExecError::BadResult(format!("output is not UTF-8: {e}")))
}

/// What to read from stdout.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// One line (without its newline), at most this many bytes.
    Line(u64),
    /// Everything until the stream ends, at most this many bytes.
    ToEnd(u64),
}

/// One exec: write `input`, read stdout as `read` says, all within
/// `deadline`. Dropping the kube-rs process (on return or timeout) aborts
/// its socket task and closes the connection.
async fn session(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    command: &[String],
    input: &[u8],
    read: Read,
    deadline: Duration,
) -> Result<Vec<u8>, ExecError> {
    let params = AttachParams {
        container: Some(container.to_owned()),
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
        max_stdin_buf_size: Some(PIPE_BYTES),
        max_stdout_buf_size: Some(PIPE_BYTES),
        max_stderr_buf_size: Some(PIPE_BYTES),
    };
    let work = async {
        let mut process = pods
            .exec(pod, command.to_vec(), &params)
            .await
            .map_err(ExecError::Connect)?;
        let (Some(stdin), Some(stdout), Some(stderr), Some(status)) = (
            process.stdin(),
            process.stdout(),
            process.stderr(),
            process.take_status(),
        ) else {
            return Err(ExecError::StreamBroken("exec streams missing".into()));
        };
        let stderr_text = Arc::new(Mutex::new(Vec::new()));
        let _stderr_task = AbortOnDrop(tokio::spawn(keep_head(stderr, stderr_text.clone())));
        let outcome = exchange(stdin, stdout, status, input, read).await;
        let stderr =
            String::from_utf8_lossy(&stderr_text.lock().unwrap_or_else(PoisonError::into_inner))
                .into_owned();
        drop(process);
        match outcome {
            Exchange::Output(out) => Ok(out),
            Exchange::Ended(status) => Err(ExecError::NoResult { status, stderr }),
            Exchange::Broken(why) => Err(ExecError::StreamBroken(why)),
        }
    };
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or(Err(ExecError::Timeout(deadline)))
}

/// How the stdin/stdout exchange ended.
enum Exchange {
    /// The line (or whole output) arrived.
    Output(Vec<u8>),
    /// The process ended cleanly without it; the status message.
    Ended(String),
    /// The connection broke without it.
    Broken(String),
}

async fn exchange<W, R>(
    mut stdin: W,
    stdout: R,
    status: impl Future<Output = Option<Status>>,
    input: &[u8],
    read: Read,
) -> Exchange
where
    W: tokio::io::AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let (cap, line_mode) = match read {
        Read::Line(cap) => (cap, true),
        Read::ToEnd(cap) => (cap, false),
    };
    let mut reader = BufReader::new(stdout.take(cap));
    let mut buf = Vec::new();
    let mut status = pin!(status);
    // stdin stays open until we return: on v4 its end would close the socket.
    let mut write = pin!(async {
        stdin.write_all(input).await?;
        stdin.flush().await
    });
    let mut written = false;
    let mut seen_status: Option<Option<Status>> = None;
    let ended = loop {
        let read_more = async {
            if line_mode {
                reader.read_until(b'\n', &mut buf).await
            } else {
                reader.read_to_end(&mut buf).await
            }
        };
        tokio::select! {
            biased;
            r = read_more => break r,
            w = &mut write, if !written => {
                written = true;
                if let Err(e) = w {
                    debug!(error = %e, "writing the job to the exec stream failed");
                }
            }
            s = &mut status, if seen_status.is_none() => {
                let ended_without_status = s.is_none();
                seen_status = Some(s);
                if ended_without_status {
                    // The socket task is gone: everything it received is in
                    // the pipe already, but the pipe will never report EOF.
                    let drained = if line_mode {
                        reader.read_until(b'\n', &mut buf).now_or_never()
                    } else {
                        None
                    };
                    match drained {
                        Some(r) => break r,
                        None => return Exchange::Broken(broken_message(&buf)),
                    }
                }
            }
        }
    };
    if let Err(e) = ended {
        return Exchange::Broken(format!("reading stdout: {e}"));
    }
    if line_mode && buf.last() != Some(&b'\n') {
        if buf.len() as u64 >= cap {
            return Exchange::Broken(format!("result line longer than {cap} bytes"));
        }
        let status = match seen_status {
            Some(s) => s,
            None => tokio::time::timeout(STATUS_WAIT, &mut status)
                .await
                .ok()
                .flatten(),
        };
        return Exchange::Ended(describe(status.as_ref()));
    }
    if line_mode {
        buf.pop();
        if seen_status.is_none() {
            // The status only matters for the logs once the result is in.
            let status = tokio::time::timeout(STATUS_WAIT, &mut status)
                .await
                .ok()
                .flatten();
            if status.as_ref().and_then(|s| s.status.as_deref()) != Some("Success") {
                debug!(status = %describe(status.as_ref()), "runner exec ended without success status after its result");
            }
        }
    }
    Exchange::Output(buf)
}

fn broken_message(buf: &[u8]) -> String {
    if buf.is_empty() {
        "the connection ended before any output".into()
    } else {
        format!(
            "the connection ended after {} bytes of a partial result",
            buf.len()
        )
    }
}

/// A status for humans: its message, else its status, else `none`.
fn describe(status: Option<&Status>) -> String {
    match status {
        Some(s) => s
            .message
            .clone()
            .or_else(|| s.status.clone())
            .unwrap_or_else(|| "unknown".into()),
        None => "none".into(),
    }
}

/// Reads `from` to its end, keeping the first [`STDERR_KEEP`] bytes.
async fn keep_head(mut from: impl AsyncRead + Unpin, into: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = from.read(&mut chunk).await {
        let mut kept = into.lock().unwrap_or_else(PoisonError::into_inner);
        let room = STDERR_KEEP.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_line_before_a_clean_end_is_the_output() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        tx.write_all(b"{\"x\":1}\nrest").await.unwrap();
        let status = async {
            Some(Status {
                status: Some("Success".into()),
                ..Status::default()
            })
        };
        match exchange(tokio::io::sink(), rx, status, b"job\n", Read::Line(1 << 20)).await {
            Exchange::Output(out) => assert_eq!(out, b"{\"x\":1}"),
            _ => panic!("expected the line"),
        }
    }

    #[tokio::test]
    async fn a_task_ending_without_status_and_without_a_line_is_a_broken_stream() {
        // The writer half stays alive, as in kube-rs: the reader never sees EOF.
        let (mut tx, rx) = tokio::io::duplex(1024);
        tx.write_all(b"{\"partial").await.unwrap();
        let outcome = exchange(
            tokio::io::sink(),
            rx,
            async { None },
            b"job\n",
            Read::Line(1 << 20),
        )
        .await;
        assert!(
            matches!(outcome, Exchange::Broken(ref m) if m.contains("partial")),
            "must not hang or succeed"
        );
        drop(tx);
    }

    #[tokio::test]
    async fn a_buffered_line_survives_a_broken_stream() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        tx.write_all(b"{\"done\":true}\n").await.unwrap();
        match exchange(
            tokio::io::sink(),
            rx,
            async { None },
            b"job\n",
            Read::Line(1 << 20),
        )
        .await
        {
            Exchange::Output(out) => assert_eq!(out, b"{\"done\":true}"),
            _ => panic!("the complete line was received before the break"),
        }
        drop(tx);
    }

    #[tokio::test]
    async fn eof_without_a_line_reports_the_status() {
        let (tx, rx) = tokio::io::duplex(1024);
        drop(tx);
        let status = async {
            Some(Status {
                status: Some("Failure".into()),
                message: Some("command terminated with non-zero exit code: exit status 137".into()),
                ..Status::default()
            })
        };
        match exchange(tokio::io::sink(), rx, status, b"", Read::Line(1 << 20)).await {
            Exchange::Ended(msg) => assert!(msg.contains("137"), "{msg}"),
            _ => panic!("expected a clean end without a result"),
        }
    }

    #[tokio::test]
    async fn an_overlong_line_is_refused() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        tx.write_all(&[b'x'; 100]).await.unwrap();
        drop(tx);
        let outcome = exchange(
            tokio::io::sink(),
            rx,
            std::future::pending(),
            b"",
            Read::Line(10),
        )
        .await;
        assert!(matches!(outcome, Exchange::Broken(ref m) if m.contains("longer than 10")));
    }
}
