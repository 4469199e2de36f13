//! Pre-started interpreters (`--prestart`): the same results as the cold
//! path, every limit still binding, nothing of the interpreter left behind.
//! (The whole suite also runs in this mode: `make test-runner-prestart`.)

use std::fs;

use serde_json::json;
use warmpod_protocol::{JobResult, Status};

use crate::helpers::{TestJob, assert_status, job, run_raw};

/// The result with the work directory's name (it holds the runner's pid,
/// different in every run) replaced by a placeholder.
fn normalised(result: &JobResult) -> JobResult {
    let dir = format!("/tmp/warmpod-{}-", result.id);
    let strip = |s: &str| {
        let mut out = String::new();
        let mut rest = s;
        while let Some(at) = rest.find(&dir) {
            out.push_str(&rest[..at]);
            out.push_str("<dir>");
            rest = rest[at + dir.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        }
        out + rest
    };
    JobResult {
        stdout: strip(&result.stdout),
        stderr: strip(&result.stderr),
        wall_time_ms: 0,
        cpu_time_ms: 0,
        memory_kb: 0,
        ..result.clone()
    }
}

/// Runs `test_job` cold and pre-started; asserts equal results (but for
/// times, peak memory and the runner's pid in paths) and returns the
/// pre-started one.
fn same_both_ways(test_job: &TestJob) -> JobResult {
    let cold = test_job.run_with_args(&[]);
    let warm = test_job.run_prestarted();
    assert_eq!(normalised(&warm), normalised(&cold), "pre-started vs cold");
    warm
}

#[test]
fn results_are_those_of_the_cold_path() {
    let programs = [
        "import sys\nprint(sys.argv, sys.path[0] == __import__('os').getcwd())\nprint(__name__, __file__, __cached__, __spec__)\nprint(sorted(globals()))",
        "def f():\n    raise ValueError('boom')\nf()",
        "foo(",
        "import sys\nsys.exit('bye')",
        "import sys\nprint('partial')\nsys.exit(3)",
        "try:\n    1 / 0\nexcept Exception as e:\n    raise KeyError('k') from e",
        "import os\nprint(os.environ['HOME'] == os.getcwd(), os.environ['TMPDIR'] == os.getcwd(), sorted(os.environ))",
        "import sys\nprint(repr(sys.stdin.read()), sys.stdin.isatty())",
        "import atexit, threading\natexit.register(print, 'bye')\nthreading.Thread(target=print, args=('thread',)).start()\nraise OSError(2, 'gone')",
        "import os\nprint(sorted(os.listdir('.')), os.getuid() != 0)",
    ];
    for code in programs {
        same_both_ways(&job("python", code).args(&["a", "b c", "ü"]));
    }
}

#[test]
fn stdin_args_and_a_second_file() {
    let result = same_both_ways(
        &job(
            "python",
            "import sys, util\nprint(util.twice(sys.stdin.readline().strip()), sys.argv[1:])",
        )
        .file("util.py", "def twice(s):\n    return s + s\n")
        .stdin("ab\ncd\n")
        .args(&["x", "y z"]),
    );
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "abab ['x', 'y z']\n");
}

#[test]
fn the_interpreters_start_up_cpu_is_not_charged() {
    // The program prints the CPU time its process had used when the
    // program began: all start-up. The job's CPU time counts from there.
    let code = "import time\nprint(round(time.process_time() * 1000))";
    let result = job("python", code).run_prestarted();
    assert_status(&result, Status::Accepted);
    let at_start: u64 = result.stdout.trim().parse().expect("a number");
    assert!(
        result.cpu_time_ms < at_start,
        "charged {} ms, the start-up alone used {at_start} ms",
        result.cpu_time_ms
    );
}

#[test]
fn cpu_loop_exceeds_the_time_limit() {
    let result = job("python", "while True:\n    pass")
        .limits(json!({ "cpu_time_ms": 500, "wall_time_ms": 20000 }))
        .run_prestarted();
    assert_status(&result, Status::TimeLimitExceeded);
    assert!(result.cpu_time_ms >= 500, "{result:#?}");
}

#[test]
fn fork_bomb_is_contained_by_the_applied_process_limit() {
    let code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError as e:\n        print(e.strerror, flush=True)\n        break\nimport time\ntime.sleep(600)";
    let result = job("python", code)
        .limits(json!({ "max_processes": 16, "wall_time_ms": 3000 }))
        .run_prestarted();
    assert_status(&result, Status::TimeLimitExceeded);
    assert!(
        result.stdout.contains("Resource temporarily unavailable"),
        "the bomb reached max_processes: {result:#?}"
    );
}

#[test]
fn memory_bomb_is_a_memory_limit() {
    let result = job(
        "python",
        "blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 20))",
    )
    .limits(json!({ "memory_kb": 65536, "cpu_time_ms": 20000, "wall_time_ms": 30000 }))
    .run_prestarted();
    assert_status(&result, Status::MemoryLimitExceeded);
}

#[test]
fn output_flood_is_cut() {
    let result = job("python", "while True:\n    print('x' * 999)")
        .limits(json!({ "max_output_bytes": 10000 }))
        .run_prestarted();
    assert_status(&result, Status::OutputLimitExceeded);
    assert_eq!(result.stdout.len(), 10000);
}

#[test]
fn open_files_and_file_size_limits_bind() {
    let code = "import resource\nprint(resource.getrlimit(resource.RLIMIT_NOFILE), resource.getrlimit(resource.RLIMIT_FSIZE), resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(resource.RLIMIT_NPROC))";
    let test_job = job("python", code).limits(json!({ "memory_kb": 131072, "max_processes": 7 }));
    let result = same_both_ways(&test_job);
    assert_status(&result, Status::Accepted);
}

#[test]
fn a_job_of_another_language_runs_cold_and_the_interpreter_is_gone() {
    let root = tempfile::tempdir().expect("temp dir");
    let root_arg = root.path().to_str().expect("UTF-8").to_string();
    let test_job = job("bash", "echo hi; ls -a");
    let line = test_job.line();
    let (status, stdout) = run_raw(&["--prestart", "python", "--work-root", &root_arg], &line);
    assert!(status.success());
    let result: JobResult = serde_json::from_str(stdout.trim_end()).expect("a result line");
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "hi\n.\n..\nmain.sh\n");
    let left: Vec<_> = fs::read_dir(root.path())
        .expect("readable")
        .flatten()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    crate::helpers::assert_nothing_left(test_job.id);
}

#[test]
fn a_malformed_job_gets_an_internal_error_and_the_interpreter_is_gone() {
    let root = tempfile::tempdir().expect("temp dir");
    let root_arg = root.path().to_str().expect("UTF-8").to_string();
    let args = ["--prestart", "python", "--work-root", &root_arg];
    let (status, stdout) = run_raw(
        &args,
        r#"{"id":"5f0c6d1e-6a53-4f43-9a1d-0c8b2a1e9f10","language":42}"#,
    );
    assert!(status.success());
    let result: JobResult = serde_json::from_str(stdout.trim_end()).expect("a result line");
    assert_status(&result, Status::InternalError);
    let left: Vec<_> = fs::read_dir(root.path())
        .expect("readable")
        .flatten()
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_job_with_another_memory_limit_still_runs() {
    // Python's pre-start command does not depend on the memory limit.
    let result = job("python", "print('ok')")
        .limits(json!({ "memory_kb": 100000 }))
        .run_prestarted();
    assert_status(&result, Status::Accepted);
}

#[test]
fn unknown_or_unsupported_prestart_languages_are_config_errors() {
    for language in ["cobol", "java"] {
        let (status, _) = run_raw(&["--prestart", language], "");
        assert_eq!(status.code(), Some(64), "{language}");
    }
}

mod unprivileged {
    use super::*;

    #[test]
    fn hello_world_and_a_contained_fork_bomb() {
        let args = ["--prestart", "python"];
        let result = job("python", "import os\nprint('hi', os.getuid() != 0)")
            .run_unprivileged_with_args(&args);
        assert_status(&result, Status::Accepted);
        assert_eq!(result.stdout, "hi True\n");
        let code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        break\nimport time\ntime.sleep(600)";
        let result = job("python", code)
            .limits(json!({ "max_processes": 16, "wall_time_ms": 3000 }))
            .run_unprivileged_with_args(&args);
        assert_status(&result, Status::TimeLimitExceeded);
    }
}
