//! Building jobs, running the binary with a deadline, and checking that a
//! job left no process or file behind.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;
use warmpod_protocol::{JobResult, Status};

/// The binary under test.
pub const RUNNER: &str = env!("CARGO_BIN_EXE_warmpod-runner");

/// How long any single runner invocation may take before the test fails
/// (generous: a loaded 2-core machine compiling Java).
pub const DEADLINE: Duration = Duration::from_secs(90);

/// A job under construction.
#[derive(Debug, Clone)]
pub struct TestJob {
    /// The job's id (unique per test: it marks the job's processes).
    pub id: Uuid,
    value: Value,
}

/// A job of `language` whose entry point is `code`.
pub fn job(language: &str, code: &str) -> TestJob {
    let id = Uuid::new_v4();
    TestJob {
        id,
        value: json!({
            "id": id,
            "language": language,
            "files": [{ "name": "", "content": code }],
        }),
    }
}

impl TestJob {
    /// Sets the program's stdin.
    pub fn stdin(mut self, stdin: &str) -> Self {
        self.value["stdin"] = json!(stdin);
        self
    }

    /// Sets the program's arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.value["args"] = json!(args);
        self
    }

    /// Names the entry point (by default the language's source file).
    pub fn entry_name(mut self, name: &str) -> Self {
        self.value["files"][0]["name"] = json!(name);
        self
    }

    /// Adds a file.
    pub fn file(mut self, name: &str, content: &str) -> Self {
        self.value["files"]
            .as_array_mut()
            .expect("files is an array")
            .push(json!({ "name": name, "content": content }));
        self
    }

    /// Sets run limits (a JSON object of `Limits` fields).
    pub fn limits(mut self, limits: Value) -> Self {
        self.value["limits"] = limits;
        self
    }

    /// Sets compile limits.
    pub fn compile_limits(mut self, limits: Value) -> Self {
        self.value["compile_limits"] = limits;
        self
    }

    /// The job as one JSON line (without the newline).
    pub fn line(&self) -> String {
        self.value.to_string()
    }

    /// Runs the job, checks the result is for this job and that nothing of
    /// it is left behind. With `WARMPOD_RUNNER_TEST_PRESTART=1`, jobs of a
    /// language the runner can pre-start run on a pre-started interpreter
    /// (the whole suite in pre-started mode: `make test-runner-prestart`).
    pub fn run(&self) -> JobResult {
        if prestart_mode() && self.prestartable() {
            return self.run_prestarted();
        }
        self.check(run_line(&self.value.to_string()))
    }

    /// Runs the job on a runner started with `--prestart <its language>`.
    pub fn run_prestarted(&self) -> JobResult {
        let language = self.language();
        self.run_with_args(&["--prestart", &language])
    }

    /// Runs the job on a runner started with `args`.
    pub fn run_with_args(&self, args: &[&str]) -> JobResult {
        let (status, stdout) = run_raw(args, &self.value.to_string());
        assert!(status.success(), "runner exited with {status}");
        self.check(parse_single_line(&stdout))
    }

    /// The job's language key as sent.
    pub fn language(&self) -> String {
        self.value["language"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Whether the runner can pre-start the job's language.
    pub fn prestartable(&self) -> bool {
        warmpod_protocol::Language::find(&self.language())
            .is_some_and(warmpod_runner::prestart_supported)
    }

    /// Like [`run`](Self::run), with the runner itself unprivileged (as it
    /// runs in a bubblewrap sandbox or a non-root pod): as a fresh uid when
    /// the tests run as root, else as the tests' own uid.
    pub fn run_unprivileged(&self) -> JobResult {
        self.run_unprivileged_with_args(&[])
    }

    /// Like [`run_unprivileged`](Self::run_unprivileged), the runner started
    /// with `args`.
    pub fn run_unprivileged_with_args(&self, args: &[&str]) -> JobResult {
        let (status, stdout) = run_unprivileged_raw(args, &self.value.to_string());
        assert!(status.success(), "runner exited with {status}");
        self.check(parse_single_line(&stdout))
    }

    /// Like [`run`](Self::run), with the runner as pid 1 of a new pid
    /// namespace (as the entry point of a container), unprivileged when
    /// `drop_root`: like a pod without user namespaces. Root only.
    pub fn run_in_pid_namespace(&self, drop_root: bool) -> JobResult {
        let unshare = ["/usr/bin/unshare", "--pid", "--fork", "--mount-proc"];
        let (status, stdout) = run_wrapped(&unshare, drop_root, &self.value.to_string());
        assert!(status.success(), "runner exited with {status}");
        self.check(parse_single_line(&stdout))
    }

    fn check(&self, result: JobResult) -> JobResult {
        assert_eq!(result.id, self.id, "result for another job: {result:?}");
        assert_nothing_left(self.id);
        result
    }
}

/// A uid for an unprivileged runner, outside the runner's own range.
fn unprivileged_uid() -> u32 {
    63_000 + std::process::id() % 1000
}

fn run_unprivileged_raw(args: &[&str], input: &str) -> (std::process::ExitStatus, String) {
    if !is_root() {
        return run_raw(args, input);
    }
    run_wrapped_with_args(&[], true, args, input)
}

/// Runs a copy of the runner (outside the build tree, which other uids may
/// not reach) behind the `wrapper` command, as a fresh unprivileged uid
/// when `drop_root`. Root only.
pub fn run_wrapped(
    wrapper: &[&str],
    drop_root: bool,
    input: &str,
) -> (std::process::ExitStatus, String) {
    run_wrapped_with_args(wrapper, drop_root, &[], input)
}

/// [`run_wrapped`] with arguments for the runner.
pub fn run_wrapped_with_args(
    wrapper: &[&str],
    drop_root: bool,
    args: &[&str],
    input: &str,
) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let runner = dir.path().join("warmpod-runner");
    fs::copy(RUNNER, &runner).expect("runner copied");
    let open = |p: &std::path::Path| fs::set_permissions(p, fs::Permissions::from_mode(0o755));
    open(dir.path()).expect("dir opened");
    open(&runner).expect("runner executable");
    let uid = unprivileged_uid().to_string();
    let mut argv: Vec<&str> = wrapper.to_vec();
    if drop_root {
        argv.extend([
            "/usr/bin/setpriv",
            "--reuid",
            &uid,
            "--regid",
            &uid,
            "--clear-groups",
        ]);
    }
    argv.push(runner.to_str().expect("UTF-8 path"));
    argv.extend(args);
    run_program(argv[0], &argv[1..], input)
}

/// Whether `WARMPOD_RUNNER_TEST_PRESTART=1` asks for the pre-started mode.
pub fn prestart_mode() -> bool {
    std::env::var("WARMPOD_RUNNER_TEST_PRESTART").is_ok_and(|v| v == "1")
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}

/// Feeds `line` + `\n` to a fresh runner WITHOUT closing its stdin (the
/// runner must not wait for EOF), and parses its single output line.
/// Fails the test (killing the runner) past [`DEADLINE`].
pub fn run_line(line: &str) -> JobResult {
    let (status, stdout) = run_raw(&[], line);
    assert!(status.success(), "runner exited with {status}");
    parse_single_line(&stdout)
}

/// Runs the binary with `args` and `input` on stdin (kept open until it
/// exits); returns its exit status and stdout.
pub fn run_raw(args: &[&str], input: &str) -> (std::process::ExitStatus, String) {
    run_program(RUNNER, args, input)
}

fn run_program(program: &str, args: &[&str], input: &str) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("runner starts");
    let mut stdin = child.stdin.take().expect("stdin");
    // Modes that never read stdin (--check) may exit before the write.
    let _ = stdin.write_all(input.as_bytes());
    let _ = stdin.write_all(b"\n");
    let mut stdout = child.stdout.take().expect("stdout");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut out = String::new();
        let read = stdout.read_to_string(&mut out);
        let status = child.wait();
        let _ = tx.send((read.map(|_| out), status));
    });
    let Ok((out, status)) = rx.recv_timeout(DEADLINE) else {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("runner did not answer within {DEADLINE:?}");
    };
    drop(stdin);
    (
        status.expect("runner waited for"),
        out.expect("stdout is UTF-8"),
    )
}

/// Parses exactly one JSON line.
pub fn parse_single_line(stdout: &str) -> JobResult {
    assert!(stdout.ends_with('\n'), "no final newline: {stdout:?}");
    assert_eq!(stdout.lines().count(), 1, "more than one line: {stdout:?}");
    serde_json::from_str(stdout.trim_end())
        .unwrap_or_else(|e| panic!("bad result line {stdout:?}: {e}"))
}

/// Asserts no process of job `id` runs (every program process has the job
/// id in its environment, through `HOME`/`TMPDIR`, or in its cwd) and that
/// its work directory is gone.
pub fn assert_nothing_left(id: Uuid) {
    let marker = id.to_string();
    let left = processes_marked(&marker);
    assert!(left.is_empty(), "processes of job {id} left: {left:?}");
    let dirs: Vec<_> = fs::read_dir("/tmp")
        .expect("/tmp readable")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&marker))
        .collect();
    assert!(dirs.is_empty(), "work dirs of job {id} left: {dirs:?}");
}

/// Pids whose environment or cwd mentions `marker`.
pub fn processes_marked(marker: &str) -> Vec<i32> {
    fs::read_dir("/proc")
        .expect("/proc readable")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| is_marked(*pid, marker))
        .collect()
}

/// Whether process `pid` exists and mentions `marker` in its environment
/// or cwd (a pid reused by an unrelated process does not).
pub fn is_marked(pid: i32, marker: &str) -> bool {
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
    String::from_utf8_lossy(&environ).contains(marker) || cwd.to_string_lossy().contains(marker)
}

/// Asserts the status, printing the whole result when it differs.
#[track_caller]
pub fn assert_status(result: &JobResult, status: Status) {
    assert_eq!(result.status, status, "{result:#?}");
}

/// Waits (polling every 10 ms) until `condition` holds; fails the test
/// after [`DEADLINE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}
