//! `--serve` (a specialised standby pod's main process), `--relay` (the
//! per-job exec) and `--serving` (its readiness probe): the job runs on the
//! serving runner's pre-started interpreter; when nothing serves, the relay
//! runs it itself, cold, with the same result.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use warmpod_protocol::{JobResult, Status};

use crate::helpers::{
    RUNNER, assert_nothing_left, assert_status, job, parse_single_line, run_raw, wait_until,
};

/// A `warmpod-runner --serve` process with its socket and its work root in
/// a private directory (removed on drop, with whatever a killed runner left
/// there); killed if still running when dropped.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    work_root: PathBuf,
}

impl Server {
    /// Starts a serving runner pre-starting `language`, and waits until it
    /// serves (as the pod's readiness probe does).
    fn start(language: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("serve.sock");
        // The program uid must reach its work directory, as under /tmp.
        let work_root = dir.path().join("work");
        std::fs::create_dir(&work_root).expect("work root");
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&work_root, Permissions::from_mode(0o1777)).expect("chmod");
        let child = Command::new(RUNNER)
            .arg("--serve")
            .arg(&socket)
            .arg("--work-root")
            .arg(&work_root)
            .args(["--prestart", language])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("serving runner starts");
        wait_until("the runner serves", || probe(&socket));
        Self {
            child,
            _dir: dir,
            socket,
            work_root,
        }
    }

    /// Asserts the (exited) serving runner removed everything it created in
    /// its work root: the pre-started interpreter's and the job's
    /// directories, and any bootstrap file.
    fn assert_work_root_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.work_root)
            .expect("work root readable")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "left in the work root: {left:?}");
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    /// Waits for the serving runner to exit; returns its exit code.
    fn exited(&mut self) -> Option<i32> {
        let mut status = None;
        wait_until("the serving runner exits", || {
            status = self.child.try_wait().expect("waitable");
            status.is_some()
        });
        status.and_then(|s| s.code())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `warmpod-runner --serving <socket>` succeeded.
fn probe(socket: &Path) -> bool {
    Command::new(RUNNER)
        .arg("--serving")
        .arg(socket)
        .stderr(Stdio::null())
        .status()
        .expect("probe runs")
        .success()
}

/// Relays `test_job` through `socket`; the result line.
fn relay(socket: &Path, line: &str) -> JobResult {
    let socket = socket.to_str().expect("UTF-8 path");
    let (status, stdout) = run_raw(&["--relay", socket], line);
    assert!(status.success(), "relay exited with {status}");
    parse_single_line(&stdout)
}

/// A Python program printing its parent's pid (the runner that started
/// its interpreter) and the CPU its interpreter had used when it began.
const WHO_RAN_ME: &str = "import os, time, sys\nprint(os.getppid(), round(time.process_time() * 1000), sys.stdin.read())";

fn parent_and_cpu(result: &JobResult) -> (i32, u64) {
    let mut words = result.stdout.split_whitespace();
    let parent = words.next().and_then(|w| w.parse().ok()).expect("a pid");
    let cpu = words.next().and_then(|w| w.parse().ok()).expect("a number");
    (parent, cpu)
}

#[test]
fn a_relayed_job_runs_on_the_serving_runners_prestarted_interpreter() {
    let mut server = Server::start("python");
    let test_job = job("python", WHO_RAN_ME).stdin("in");
    let result = relay(&server.socket, &test_job.line());
    assert_status(&result, Status::Accepted);
    let (parent, at_start) = parent_and_cpu(&result);
    assert_eq!(
        parent,
        server.pid(),
        "run by the serving runner: {result:?}"
    );
    assert!(result.stdout.ends_with(" in\n"), "{result:?}");
    assert!(
        result.cpu_time_ms < at_start,
        "pre-started: the start-up CPU ({at_start} ms) is not charged ({} ms)",
        result.cpu_time_ms
    );
    assert_eq!(server.exited(), Some(0), "one job, then the runner exits");
    assert!(!server.socket.exists(), "the socket is gone");
    assert_nothing_left(test_job.id);
    server.assert_work_root_empty();
}

#[test]
fn a_relayed_java_job_compiles_and_runs_on_the_serving_runners_jvms() {
    let mut server = Server::start("java");
    // The warm program JVM's parent is the serving runner; a cold `java`
    // would be the relay's child.
    let code = "public class Main { public static void main(String[] a) throws Exception {\n System.out.println(ProcessHandle.current().parent().get().pid() + \" \" + new String(System.in.readAllBytes()) + \" \" + Util.twice(a[0])); } }";
    let test_job = job("java", code)
        .file(
            "Util.java",
            "public class Util { static String twice(String s) { return s + s; } }",
        )
        .stdin("in")
        .args(&["ab"]);
    let result = relay(&server.socket, &test_job.line());
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, format!("{} in abab\n", server.pid()));
    assert_eq!(server.exited(), Some(0), "one job, then the runner exits");
    assert!(!server.socket.exists(), "the socket is gone");
    assert_nothing_left(test_job.id);
    server.assert_work_root_empty();
}

#[test]
fn after_its_one_job_nothing_serves_and_the_relay_runs_the_next_job_cold() {
    let mut server = Server::start("python");
    let first = job("python", "print('first')");
    assert_eq!(relay(&server.socket, &first.line()).stdout, "first\n");
    server.exited();
    let second = job("python", WHO_RAN_ME);
    let result = relay(&server.socket, &second.line());
    assert_status(&result, Status::Accepted);
    assert_ne!(parent_and_cpu(&result).0, server.pid());
    assert_nothing_left(second.id);
}

#[test]
fn the_jobs_program_cannot_reach_the_socket() {
    let server = Server::start("python");
    let code = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect({:?})\n    print('connected')\nexcept OSError as e:\n    print('refused', type(e).__name__)",
        server.socket.to_str().expect("UTF-8")
    );
    let result = relay(&server.socket, &job("python", &code).line());
    assert_status(&result, Status::Accepted);
    assert!(result.stdout.starts_with("refused"), "{result:?}");
}

#[test]
fn a_dead_serving_runner_leaves_the_job_to_the_relay_cold() {
    let mut server = Server::start("python");
    kill(Pid::from_raw(server.pid()), Signal::SIGKILL).expect("kill");
    server.exited();
    assert!(server.socket.exists(), "a stale socket, nobody listening");
    let test_job = job("python", WHO_RAN_ME);
    let result = relay(&server.socket, &test_job.line());
    assert_status(&result, Status::Accepted);
    assert_ne!(parent_and_cpu(&result).0, server.pid());
    assert_nothing_left(test_job.id);
}

#[test]
fn a_relay_without_any_socket_runs_the_job_cold() {
    let dir = tempfile::tempdir().expect("temp dir");
    let test_job = job("bash", "echo cold");
    let result = relay(&dir.path().join("none.sock"), &test_job.line());
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "cold\n");
}

#[test]
fn a_job_of_another_language_is_served_cold_by_the_serving_runner() {
    let mut server = Server::start("python");
    let test_job = job("bash", "echo $PPID; echo other");
    let result = relay(&server.socket, &test_job.line());
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, format!("{}\nother\n", server.pid()));
    assert_eq!(server.exited(), Some(0));
    assert_nothing_left(test_job.id);
    server.assert_work_root_empty();
}

#[test]
fn a_malformed_job_gets_an_internal_error_from_the_serving_runner() {
    let mut server = Server::start("python");
    let result = relay(
        &server.socket,
        r#"{"id":"5f0c6d1e-6a53-4f43-9a1d-0c8b2a1e9f10"}"#,
    );
    assert_status(&result, Status::InternalError);
    assert_eq!(server.exited(), Some(0));
}

#[test]
fn sigterm_ends_an_idle_serving_runner_and_its_interpreter() {
    let mut server = Server::start("python");
    let interpreters = || children_of(server.pid());
    wait_until("the interpreter is started", || !interpreters().is_empty());
    let started = interpreters();
    kill(Pid::from_raw(server.pid()), Signal::SIGTERM).expect("kill");
    assert_eq!(server.exited(), Some(0));
    assert!(!server.socket.exists(), "the socket is removed");
    server.assert_work_root_empty();
    for pid in started {
        wait_until("the interpreter is gone", || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
    }
}

#[test]
fn the_probe_fails_without_a_socket_and_serve_conflicts_with_relay() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert!(!probe(&dir.path().join("none.sock")));
    let (status, _) = run_raw(&["--serve", "/tmp/a", "--relay", "/tmp/b"], "");
    assert_eq!(status.code(), Some(64));
}

/// Pids whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_owned();
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}
