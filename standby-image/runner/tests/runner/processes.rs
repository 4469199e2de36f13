//! Processes: fork bombs, daemons and `setsid` grandchildren are all
//! killed; the program runs unprivileged in a clean environment.

use std::time::{Duration, Instant};

use serde_json::json;
use warmpod_protocol::Status;

use crate::helpers::{
    RUNNER, assert_nothing_left, assert_status, is_marked, is_root, job, parse_single_line,
    processes_marked, wait_until,
};

#[test]
fn fork_bomb_is_contained() {
    // The bomb runs in the background; the main process sleeps on, so the
    // wall clock ends the run.
    let started = Instant::now();
    let result = job("bash", ":(){ :|:& };:\nexec sleep 600")
        .limits(json!({ "max_processes": 16, "wall_time_ms": 3000 }))
        .run();
    // A bound with a wide margin, not a performance figure.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the runner returned promptly"
    );
    assert_status(&result, Status::TimeLimitExceeded);
    assert!(
        result.stderr.contains("Resource temporarily unavailable"),
        "the bomb reached max_processes: {result:#?}"
    );
}

#[test]
fn c_fork_bomb_is_contained() {
    let code = "#include <unistd.h>\nint main(void) { for (;;) fork(); }";
    let result = job("c", code)
        .limits(json!({ "max_processes": 16, "wall_time_ms": 2000, "cpu_time_ms": 1000 }))
        .run();
    assert_status(&result, Status::TimeLimitExceeded);
}

/// A Python program that double-forks a daemon (new session, stdout and
/// stderr kept open, sleeping), prints its pid and exits.
const DAEMON: &str = "import os, sys, time\n\
    r, w = os.pipe()\n\
    if os.fork() == 0:\n\
    \x20   os.setsid()\n\
    \x20   if os.fork() == 0:\n\
    \x20       os.write(w, str(os.getpid()).encode())\n\
    \x20       os.close(w)\n\
    \x20       time.sleep(600)\n\
    \x20   os._exit(0)\n\
    os.close(w)\n\
    print(os.read(r, 32).decode(), flush=True)\n";

#[test]
fn double_forked_daemon_is_killed() {
    // The daemon keeps stdout and stderr open and sleeps; the runner must
    // not wait for those pipes, and must kill it.
    let test_job = job("python", DAEMON).limits(json!({ "wall_time_ms": 20000 }));
    let started = Instant::now();
    let result = test_job.run();
    // A bound, not a performance figure: the daemon sleeps 600 s.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the runner returned within the wall limit"
    );
    assert_status(&result, Status::Accepted);
    let daemon: i32 = result.stdout.trim().parse().expect("daemon pid printed");
    assert!(
        !is_marked(daemon, &test_job.id.to_string()),
        "daemon {daemon} alive"
    );
}

#[test]
fn setsid_grandchild_is_killed_on_timeout() {
    let test_job = job("bash", "setsid sleep 600 &\necho $!\nsleep 600")
        .limits(json!({ "wall_time_ms": 2000 }));
    let result = test_job.run();
    assert_status(&result, Status::TimeLimitExceeded);
    let pid: i32 = result.stdout.trim().parse().expect("pid printed");
    assert!(
        !is_marked(pid, &test_job.id.to_string()),
        "grandchild {pid} alive"
    );
}

#[test]
fn sigterm_to_the_runner_ends_the_job_with_a_result() {
    use std::io::{Read, Write};

    let test_job = job("bash", "sleep 600 &\nsetsid sleep 600 &\nsleep 600");
    let mut runner = std::process::Command::new(RUNNER)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("runner starts");
    let mut stdin = runner.stdin.take().expect("stdin");
    writeln!(stdin, "{}", test_job.line()).expect("job written");
    let marker = test_job.id.to_string();
    wait_until("the program's three sleeps run", || {
        processes_marked(&marker).len() >= 4
    });
    nix_kill(runner.id(), "TERM");
    let mut stdout = String::new();
    runner
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("output read");
    assert!(runner.wait().expect("runner waited for").success());
    let result = parse_single_line(&stdout);
    assert_status(&result, Status::InternalError);
    assert!(result.message.unwrap_or_default().contains("SIGTERM"));
    assert_nothing_left(test_job.id);
}

fn nix_kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[test]
fn background_children_die_with_the_program() {
    let result = job("bash", "sleep 600 &\nsleep 600 &\necho done").run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "done\n");
}

#[test]
fn program_runs_unprivileged_with_a_clean_environment() {
    let code = "import os\n\
                print(os.getuid() != 0, os.getgid() != 0, os.getgroups())\n\
                print(sorted(os.environ))\n\
                print(os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR'])\n\
                print(os.environ['PATH'])";
    let result = job("python", code).run();
    assert_status(&result, Status::Accepted);
    let lines: Vec<&str> = result.stdout.lines().collect();
    let root = is_root();
    if root {
        assert_eq!(lines[0], "True True []", "{result:#?}");
    }
    assert_eq!(
        lines[1], "['HOME', 'LANG', 'PATH', 'TMPDIR']",
        "{result:#?}"
    );
    assert_eq!(lines[2], "True");
    assert_eq!(lines[3], "/usr/local/bin:/usr/bin:/bin");
}

#[test]
fn program_cannot_write_outside_its_work_dir_when_root_drops() {
    if !is_root() {
        return; // Only a root runner changes the program's uid.
    }
    let result = job(
        "bash",
        "touch /etc/warmpod-should-not-exist 2>/dev/null && echo wrote || echo refused",
    )
    .run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "refused\n");
}

#[test]
fn open_files_are_limited() {
    let code = "import os\nfds = []\ntry:\n    while True: fds.append(os.open('/dev/null', os.O_RDONLY))\nexcept OSError as e:\n    print(len(fds) < 300, e.errno)";
    let result = job("python", code).run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "True 24\n");
}

mod unprivileged_runner {
    //! The runner as it runs in a sandbox or a non-root pod: programs run
    //! as its own uid, `RLIMIT_NPROC` counts what that uid runs already,
    //! and descendants are found through the subreaper alone.

    use serde_json::json;
    use warmpod_protocol::Status;

    use crate::helpers::{assert_status, is_marked, job};

    #[test]
    fn hello_world() {
        let result = job("python", "import os\nprint('hi', os.getuid() != 0)").run_unprivileged();
        assert_status(&result, Status::Accepted);
        assert_eq!(result.stdout, "hi True\n");
    }

    #[test]
    fn fork_bomb_is_contained() {
        let result = job("bash", ":(){ :|:& };:\nexec sleep 600")
            .limits(json!({ "max_processes": 16, "wall_time_ms": 3000 }))
            .run_unprivileged();
        assert_status(&result, Status::TimeLimitExceeded);
        assert!(
            result.stderr.contains("Resource temporarily unavailable"),
            "the bomb reached max_processes: {result:#?}"
        );
    }

    #[test]
    fn a_locked_up_work_dir_is_still_removed() {
        // `run_unprivileged` asserts the work directory is gone.
        let result = job(
            "bash",
            "mkdir -p a/b && touch a/b/f && chmod 000 a/b a && echo locked",
        )
        .run_unprivileged();
        assert_status(&result, Status::Accepted);
        assert_eq!(result.stdout, "locked\n");
    }

    #[test]
    fn double_forked_daemon_is_killed() {
        let test_job = job("python", super::DAEMON).limits(json!({ "wall_time_ms": 20000 }));
        let result = test_job.run_unprivileged();
        assert_status(&result, Status::Accepted);
        let daemon: i32 = result.stdout.trim().parse().expect("daemon pid printed");
        assert!(
            !is_marked(daemon, &test_job.id.to_string()),
            "daemon {daemon} alive"
        );
    }
}

mod in_a_pid_namespace {
    //! The runner as a container's entry point (pid 1 of its own pid
    //! namespace). Unprivileged there without a user namespace of its own,
    //! as in a Kubernetes pod, its uid may run processes it cannot see, so
    //! `RLIMIT_NPROC` gets headroom and the supervisor counts the program's
    //! tasks itself.

    use serde_json::json;
    use warmpod_protocol::Status;

    use crate::helpers::{assert_status, is_root, job};

    #[test]
    fn hello_world_as_pid_1() {
        if !is_root() {
            return; // Creating a pid namespace needs root.
        }
        let result = job("python", "import os\nprint(os.getppid())").run_in_pid_namespace(false);
        assert_status(&result, Status::Accepted);
        assert_eq!(
            result.stdout, "1\n",
            "the runner is pid 1, the program's parent"
        );
    }

    #[test]
    fn fork_bomb_is_stopped_by_counting_tasks() {
        if !is_root() {
            return; // Creating a pid namespace needs root.
        }
        let result = job("bash", ":(){ :|:& };:\nexec sleep 600")
            .limits(json!({ "max_processes": 16, "wall_time_ms": 10000 }))
            .run_in_pid_namespace(true);
        assert_status(&result, Status::RuntimeError);
        let message = result.message.clone().unwrap_or_default();
        assert!(message.contains("more than 16 processes"), "{result:#?}");
    }
}
