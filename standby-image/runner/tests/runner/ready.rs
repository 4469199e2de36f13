//! `--ready-fd N`: one byte on descriptor N, then N closed, once the runner
//! can take its job (after any pre-start, before it reads the job), and
//! nothing the runner starts ever holds N. Bad values are usage errors.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;

use nix::sys::stat::Mode;
use warmpod_protocol::Status;

use crate::helpers::{
    DEADLINE, RUNNER, assert_nothing_left, assert_status, job, parse_single_line, wait_until,
};

/// A runner whose descriptor 3 is the write end of a FIFO in a private
/// directory (a FIFO, not an inherited pipe: other tests' children cannot
/// hold it); killed if still running when dropped.
struct ReadyRunner {
    child: Child,
    fifo: PathBuf,
    _dir: tempfile::TempDir,
}

impl ReadyRunner {
    /// Starts `warmpod-runner --ready-fd 3 <args>` (through `sh`, which
    /// opens the FIFO as descriptor 3 and execs the runner).
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("ready");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let child = Command::new("/bin/sh")
            .args(["-c", "exec \"$0\" --ready-fd 3 \"$@\" 3>\"$READY_FIFO\""])
            .arg(RUNNER)
            .args(args)
            .env("READY_FIFO", &fifo)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("runner starts");
        Self {
            child,
            fifo,
            _dir: dir,
        }
    }

    /// Everything written on the ready descriptor until every writer
    /// closed it (fails the test past [`DEADLINE`]). Once only.
    fn read_ready_to_eof(&mut self) -> Vec<u8> {
        let fifo = self.fifo.clone();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            // Meets `sh`'s open for writing (each open waits for the other
            // side): reading before a writer came would be EOF at once.
            let mut got = Vec::new();
            let read = File::open(&fifo).and_then(|mut ready| ready.read_to_end(&mut got));
            let read = read.map(|_| got);
            let _ = tx.send(read);
        });
        rx.recv_timeout(DEADLINE)
            .expect("the ready descriptor was closed in time")
            .expect("reading the ready FIFO")
    }

    /// Sends the job line (stdin stays open) and returns the runner's
    /// whole stdout once it exited successfully.
    fn answer(mut self, line: &str) -> String {
        let mut stdin = self.child.stdin.take().expect("stdin");
        stdin.write_all(line.as_bytes()).expect("job written");
        stdin.write_all(b"\n").expect("job written");
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("stdout read");
        let status = self.child.wait().expect("runner waited for");
        drop(stdin);
        assert!(status.success(), "runner exited with {status}");
        out
    }
}

impl Drop for ReadyRunner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python job printing where each of its descriptors points.
fn python_listing_its_descriptors() -> crate::helpers::TestJob {
    job(
        "python",
        "import os\nfor fd in os.listdir('/proc/self/fd'):\n    \
         try:\n        print(fd, os.readlink('/proc/self/fd/' + fd))\n    \
         except OSError:\n        pass\n",
    )
}

/// The byte comes, and the descriptor closes, while the runner waits for
/// its job (stdin open, nothing written yet); the job then runs as usual
/// and never sees the descriptor.
fn ready_before_the_job(args: &[&str]) {
    let mut runner = ReadyRunner::start(args);
    assert_eq!(runner.read_ready_to_eof(), b"R", "one byte, then EOF");
    assert!(
        runner.child.try_wait().expect("try_wait").is_none(),
        "the runner still waits for its job"
    );
    let test_job = python_listing_its_descriptors();
    let fifo = runner.fifo.clone();
    let result = parse_single_line(&runner.answer(&test_job.line()));
    assert_status(&result, Status::Accepted);
    assert!(
        !result.stdout.contains(fifo.to_str().expect("UTF-8 path")),
        "the program holds the ready descriptor: {}",
        result.stdout
    );
    assert_nothing_left(test_job.id);
}

#[test]
fn the_ready_byte_comes_before_the_job_is_read() {
    ready_before_the_job(&[]);
}

#[test]
fn the_ready_byte_comes_after_the_prestart_and_the_interpreter_never_holds_it() {
    // EOF after the byte means the pre-started interpreter, already
    // running, did not inherit the descriptor.
    ready_before_the_job(&["--prestart", "python"]);
}

#[test]
fn a_serving_runner_is_ready_once_its_socket_listens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("serve.sock");
    let socket_arg = socket.to_str().expect("UTF-8 path");
    let mut runner = ReadyRunner::start(&["--serve", socket_arg]);
    assert_eq!(runner.read_ready_to_eof(), b"R");
    assert!(warmpod_runner::serve::is_serving(&socket), "listening");
    let test_job = job("bash", "echo served");
    let relayed = warmpod_runner::serve::relay(&socket, test_job.line().as_bytes());
    let warmpod_runner::serve::Relayed::Answer(line, connection) = relayed else {
        panic!("no answer: {relayed:?}");
    };
    drop(connection);
    let result = parse_single_line(&(String::from_utf8(line).expect("UTF-8") + "\n"));
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "served\n");
    wait_until("the serving runner exits", || {
        runner.child.try_wait().expect("try_wait").is_some()
    });
}

/// Runs `sh -c script` (which execs the runner with bad `--ready-fd`
/// values); returns its exit code, stdout and stderr.
fn run_sh(script: &str) -> (Option<i32>, String, String) {
    let out = Command::new("/bin/sh")
        .args(["-c", script])
        .arg(RUNNER)
        .stdin(Stdio::null())
        .output()
        .expect("runner starts");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_ready_fds_are_usage_errors() {
    let cases = [
        ("exec \"$0\" --ready-fd abc", "not a number"),
        ("exec \"$0\" --ready-fd -1", "negative"),
        ("exec \"$0\" --ready-fd 1", "stdout: the job's stdio"),
        ("exec \"$0\" --ready-fd 2", "stderr: the job's stdio"),
        ("exec \"$0\" --ready-fd 9 9>&-", "not an open descriptor"),
        ("exec \"$0\" --ready-fd 3 3</dev/null", "open read-only"),
        (
            "exec \"$0\" --ready-fd 3 --versions 3>/dev/null",
            "with --versions",
        ),
        (
            "exec \"$0\" --ready-fd 3 --relay /nonexistent 3>/dev/null",
            "with --relay",
        ),
    ];
    for (script, reason) in cases {
        let (code, stdout, stderr) = run_sh(script);
        assert_eq!(code, Some(64), "{reason}: {stderr}");
        assert_eq!(stdout, "", "{reason}: nothing on stdout");
        assert!(stderr.contains("--ready-fd"), "{reason}: {stderr}");
    }
}

#[test]
fn a_job_already_waiting_still_comes_after_the_byte() {
    // The parent may write the job before reading the byte: the runner
    // signals, then reads the job at once.
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("ready");
    let test_job = job("bash", "echo hi");
    let mut child = Command::new("/bin/sh")
        .args(["-c", "exec \"$0\" --ready-fd 3 3>\"$1\""])
        .arg(RUNNER)
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("runner starts");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{}", test_job.line()).expect("job written");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("stdout read");
    assert!(child.wait().expect("waited").success());
    drop(stdin);
    assert_status(&parse_single_line(&stdout), Status::Accepted);
    assert_eq!(read_file(&out), b"R");
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("file written")
}
