//! Serving one job over a unix socket: the main process of a specialised
//! standby pod (`--serve <socket> --prestart <language>`) pre-starts the
//! interpreter, listens, accepts exactly ONE connection, reads the job line
//! from it, runs the job as the one-shot runner does and writes the result
//! line back. The per-job exec (`--relay <socket>`) copies the job line to
//! it and the result line back.
//!
//! - [`ServeSocket::bind`] removes a stale socket (a restarted container
//!   keeps its `/tmp`), creates the new one owner-only (mode 0600, under a
//!   umask set around `bind`) and listens.
//! - [`ServeSocket::accept_one`] waits for the connection or a stop signal
//!   (SIGTERM: a scale-down; the runner is often PID 1, which ignores
//!   signals it has no handler for), then closes the listener and removes
//!   the socket, so nothing else (the job's own program, which may run as
//!   the same uid in a non-root pod) can ever connect: never two jobs on
//!   one interpreter.
//! - [`relay`] tells "nothing serves there" (no socket, connection refused,
//!   or the server vanished before answering) from an answer, so the relay
//!   can run the job itself, cold: a job is never lost to a dead main
//!   process.
//! - The serving runner exits only once the relay has closed the
//!   connection (or after [`LINGER`]): in a pod it is the main process,
//!   and its exit ends the container, killing a relay that has not yet
//!   printed the result.
//! - [`is_serving`] is the readiness probe: it never connects (that would
//!   use up the one connection).

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::{Mode, umask};

use crate::job::{self, JobError};
use crate::signals::StopSignals;

/// The longest result line the relay copies back. A result carries at
/// most the protocol's output caps, escaped; anything longer is not a
/// result, and the relay answers with what it got for the pod-manager to
/// reject.
pub const MAX_RESULT_BYTES: u64 = 256 * 1024 * 1024;

/// How long a serving runner waits, after its answer, for the relay to
/// close the connection.
pub const LINGER: Duration = Duration::from_secs(10);

/// A listening socket that will take exactly one connection.
#[derive(Debug)]
pub struct ServeSocket {
    listener: UnixListener,
    path: PathBuf,
}

/// The one connection a serving runner accepted: the job line comes in,
/// the result line goes out.
#[derive(Debug)]
pub struct Connection {
    reader: BufReader<UnixStream>,
}

impl ServeSocket {
    /// Listens at `path`, owner-only; a socket already there (left by a
    /// previous main process of the same container) is removed first.
    ///
    /// # Errors
    /// When `path` exists and is not a socket, or binding fails.
    pub fn bind(path: &Path) -> io::Result<Self> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => fs::remove_file(path)?,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // The socket file takes its mode from the umask at bind: 0600.
        let previous = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        umask(previous);
        Ok(Self {
            listener: bound?,
            path: path.to_path_buf(),
        })
    }

    /// Waits for the one connection; `Ok(None)` when a stop signal
    /// (SIGTERM, SIGINT, SIGHUP) came first. Either way the socket is
    /// closed and removed before this returns.
    ///
    /// # Errors
    /// When polling or accepting fails.
    pub fn accept_one(self) -> io::Result<Option<Connection>> {
        let signals = StopSignals::install()?;
        let accepted = loop {
            let mut fds = [
                PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => break Err(e.into()),
            }
            if signals.received().is_some() {
                break Ok(None);
            }
            let listener_ready = fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLIN));
            if listener_ready {
                break self.listener.accept().map(|(stream, _)| Some(stream));
            }
        };
        // The signalfd goes; the signals stay blocked, so one arriving now
        // is still pending for the job's own stop-signal handling.
        drop(signals);
        drop(self);
        let stream = accepted?;
        Ok(stream.map(|stream| Connection {
            reader: BufReader::new(stream),
        }))
    }
}

impl Drop for ServeSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Connection {
    /// Reads the job line (not waiting for EOF).
    ///
    /// # Errors
    /// As [`job::read_line`].
    pub fn read_job(&mut self) -> Result<Vec<u8>, JobError> {
        job::read_line(&mut self.reader)
    }

    /// Writes the result line, then waits (at most [`LINGER`]) until the
    /// relay has closed its end, i.e. has printed the result.
    ///
    /// # Errors
    /// When the relay is gone before the result is written.
    pub fn answer(self, result_line: &str) -> io::Result<()> {
        let mut stream = self.reader.into_inner();
        stream.write_all(result_line.as_bytes())?;
        stream.write_all(b"\n")?;
        stream.flush()?;
        stream.shutdown(std::net::Shutdown::Write)?;
        stream.set_read_timeout(Some(LINGER))?;
        // EOF, a timeout or an error: either way, done.
        let _ = io::copy(&mut stream, &mut io::sink());
        Ok(())
    }
}

/// What relaying a job line to a serving runner gave.
#[derive(Debug)]
pub enum Relayed {
    /// The serving runner's result line (without its newline), and the
    /// connection: drop it once the line is delivered (the serving runner
    /// waits for that before it exits).
    Answer(Vec<u8>, UnixStream),
    /// Nothing serves at the socket (missing, refused): the job was not
    /// handed over.
    NotServed(io::Error),
    /// The serving runner took the job but closed the connection without a
    /// whole result line (it died): nothing of the job is running any more
    /// (its programs die with their runner).
    Vanished,
}

/// Hands `line` (a job line without its newline) to the runner serving at
/// `path` and waits for its result line.
pub fn relay(path: &Path, line: &[u8]) -> Relayed {
    let mut stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(e) => return Relayed::NotServed(e),
    };
    let sent = stream
        .write_all(line)
        .and_then(|()| stream.write_all(b"\n"))
        .and_then(|()| stream.flush());
    if let Err(e) = sent {
        // The server closed before reading: it took nothing.
        return Relayed::NotServed(e);
    }
    let mut answer = Vec::new();
    let mut reader = BufReader::new(io::Read::take(&stream, MAX_RESULT_BYTES));
    match reader.read_until(b'\n', &mut answer) {
        Ok(_) if answer.last() == Some(&b'\n') => {
            answer.pop();
            Relayed::Answer(answer, stream)
        }
        Ok(_) if answer.len() as u64 >= MAX_RESULT_BYTES => Relayed::Answer(answer, stream),
        _ => Relayed::Vanished,
    }
}

/// Whether a serving runner listens at `path` (a socket is there); never
/// connects.
pub fn is_serving(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::thread;

    #[test]
    fn the_socket_is_owner_only_and_gone_after_the_one_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let socket = ServeSocket::bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(is_serving(&path));
        let client = {
            let path = path.clone();
            // The connection is dropped in the thread: `answer` waits
            // for that.
            thread::spawn(move || match relay(&path, b"{\"job\":1}") {
                Relayed::Answer(a, conn) => {
                    drop(conn);
                    Relayed::Answer(a, UnixStream::pair().unwrap().0)
                }
                other => other,
            })
        };
        let mut conn = socket.accept_one().unwrap().expect("a connection");
        assert!(!is_serving(&path), "removed once the connection is in");
        assert!(matches!(relay(&path, b"x"), Relayed::NotServed(_)));
        assert_eq!(conn.read_job().unwrap(), b"{\"job\":1}");
        conn.answer("{\"result\":2}").unwrap();
        match client.join().unwrap() {
            Relayed::Answer(a, _) => assert_eq!(a, b"{\"result\":2}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stale_socket_is_replaced_and_other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(matches!(relay(&path, b"x"), Relayed::NotServed(_)));
        let socket = ServeSocket::bind(&path).unwrap();
        drop(socket);
        assert!(!path.exists(), "removed when dropped");
        fs::write(&path, "not a socket").unwrap();
        assert!(ServeSocket::bind(&path).is_err());
        assert!(!is_serving(&path));
    }

    #[test]
    fn the_server_answers_then_waits_for_the_relay_to_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let socket = ServeSocket::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let mut conn = socket.accept_one().unwrap().expect("a connection");
            conn.read_job().unwrap();
            conn.answer("result").unwrap();
        });
        let Relayed::Answer(answer, conn) = relay(&path, b"job") else {
            panic!("no answer");
        };
        assert_eq!(answer, b"result");
        assert!(!server.is_finished(), "still waiting for the relay");
        drop(conn);
        server.join().unwrap();
    }

    #[test]
    fn a_server_closing_without_an_answer_is_vanished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let socket = ServeSocket::bind(&path).unwrap();
        let client = {
            let path = path.clone();
            thread::spawn(move || relay(&path, b"job"))
        };
        let mut conn = socket.accept_one().unwrap().expect("a connection");
        conn.read_job().unwrap();
        drop(conn);
        assert!(matches!(client.join().unwrap(), Relayed::Vanished));
    }
}
