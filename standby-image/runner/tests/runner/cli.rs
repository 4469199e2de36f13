//! The `--versions` and `--check` modes.

use std::os::unix::process::ExitStatusExt;
use warmpod_protocol::Status;

use crate::helpers::{
    assert_nothing_left, assert_status, is_root, job, parse_single_line, run_raw, wait_until,
};

#[test]
fn versions_prints_one_json_object_of_every_language() {
    let (status, stdout) = run_raw(&["--versions"], "");
    assert!(status.success());
    assert_eq!(stdout.lines().count(), 1);
    let versions: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&stdout).expect("a JSON object");
    for lang in warmpod_protocol::LANGUAGES {
        assert!(
            versions.contains_key(lang.key),
            "{} missing: {stdout}",
            lang.key
        );
    }
    assert!(versions["python"].as_str().unwrap().starts_with("Python 3"));
}

#[test]
fn check_passes_when_every_runtime_is_installed() {
    let (status, stdout) = run_raw(&["--check"], "");
    assert!(status.success(), "{stdout}");
}

#[test]
fn bad_flags_exit_64() {
    let (status, stdout) = run_raw(&["--no-such-flag"], "");
    assert_eq!(status.code(), Some(64));
    assert_eq!(stdout, "");
}

#[test]
fn a_pinned_uid_is_used_when_root() {
    if !is_root() {
        return; // Not root: programs run as the runner's own uid.
    }
    let uid = 64_000 + std::process::id() % 1000;
    let test_job = job("python", "import os\nprint(os.getuid(), os.getgid())");
    let (status, stdout) = run_raw(&["--uid", &uid.to_string()], &test_job.line());
    assert!(status.success());
    let result = parse_single_line(&stdout);
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, format!("{uid} {uid}\n"));
    assert_nothing_left(test_job.id);
}

#[test]
fn a_failed_start_still_answers_with_a_result_line() {
    if !is_root() {
        return; // Only root uses the lock directory.
    }
    let not_a_dir = tempfile::NamedTempFile::new().expect("temp file");
    let lock_dir = not_a_dir.path().to_str().expect("UTF-8 path");
    let test_job = job("python", "print(1)");
    let (status, stdout) = run_raw(&["--lock-dir", lock_dir], &test_job.line());
    assert!(status.success());
    let result = parse_single_line(&stdout);
    assert_status(&result, Status::InternalError);
    assert_eq!(result.id, test_job.id);
    assert!(
        result
            .message
            .unwrap_or_default()
            .contains("lock directory")
    );
}

#[test]
fn leftovers_of_a_crashed_runner_are_killed_at_start() {
    if !is_root() {
        return; // Only root runners own dedicated uids.
    }
    let uid = (65_000 + std::process::id() % 500).to_string();
    let locks = tempfile::tempdir().expect("lock dir");
    let lock_dir = locks.path().to_str().expect("UTF-8 path");
    // A process of the uid that no runner reaped (the lock file does not
    // say `clean`, as after a runner killed mid-job).
    let leftover = std::process::Command::new("/usr/bin/setpriv")
        .args([
            "--reuid",
            &uid,
            "--regid",
            &uid,
            "--clear-groups",
            "/bin/sleep",
            "600",
        ])
        .spawn()
        .expect("leftover started");
    let mut leftover = KillOnDrop(leftover);
    let leftover = &mut leftover.0;
    wait_until("the leftover runs as the uid", || {
        std::fs::read_to_string(format!("/proc/{}/status", leftover.id()))
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(uid.as_str()))
    });
    let test_job = job("bash", "echo hi");
    let (status, stdout) = run_raw(&["--uid", &uid, "--lock-dir", lock_dir], &test_job.line());
    assert!(status.success());
    assert_status(&parse_single_line(&stdout), Status::Accepted);
    let mut exit = None;
    wait_until("the leftover is killed by the start-up sweep", || {
        exit = leftover.try_wait().expect("leftover waited for");
        exit.is_some()
    });
    assert_eq!(exit.and_then(|e| e.signal()), Some(9), "killed by SIGKILL");
    let state =
        std::fs::read_to_string(locks.path().join(format!("{uid}.lock"))).expect("lock file");
    assert_eq!(
        state, "clean\n",
        "a runner that reaped everything leaves the uid clean"
    );
}

/// A child killed and reaped when the test ends, even when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
