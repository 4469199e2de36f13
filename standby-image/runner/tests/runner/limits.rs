//! Every verdict: compile error, non-zero exit, signals, time, memory,
//! output and file size limits.

use serde_json::json;
use warmpod_protocol::Status;

use crate::helpers::{assert_status, job};

#[test]
fn compile_error_reports_the_compiler_output() {
    let result = job("c", "int main(void) { return undefined_name; }").run();
    assert_status(&result, Status::CompileError);
    assert!(
        result.compile_output.contains("undefined_name"),
        "{result:#?}"
    );
    assert!(result.compile_output.contains("error"), "{result:#?}");
    assert_eq!(result.stdout, "");
}

#[test]
fn java_compile_error() {
    let result = job("java", "public class Main { void f() { int x = \"s\"; } }").run();
    assert_status(&result, Status::CompileError);
    assert!(
        result.compile_output.contains("incompatible types"),
        "{result:#?}"
    );
}

#[test]
fn compile_time_is_bounded() {
    // About 2^32 constexpr operations: far more than a second of work.
    let code = "constexpr long f() { long s = 0;\n\
                for (long i = 0; i < 200000; i++) for (long j = 0; j < 20000; j++) s += i ^ j;\n\
                return s; }\n\
                static_assert(f() != 1, \"\");\nint main() {}";
    let result = job("cpp", code)
        .compile_limits(json!({ "wall_time_ms": 1000 }))
        .run();
    assert_status(&result, Status::CompileError);
    let message = result.message.as_deref().unwrap_or_default();
    assert!(message.contains("compile time limit"), "{result:#?}");
}

#[test]
fn non_zero_exit_is_a_runtime_error_with_its_code() {
    let result = job("python", "import sys\nprint('partial')\nsys.exit(3)").run();
    assert_status(&result, Status::RuntimeError);
    assert_eq!(result.exit_code, Some(3));
    assert_eq!(result.signal, None);
    assert_eq!(result.stdout, "partial\n");
}

#[test]
fn uncaught_exception_keeps_stderr() {
    let result = job("python", "raise ValueError('boom')").run();
    assert_status(&result, Status::RuntimeError);
    assert_eq!(result.exit_code, Some(1));
    assert!(result.stderr.contains("ValueError: boom"), "{result:#?}");
}

#[test]
fn segfault_is_a_runtime_error_with_its_signal() {
    let result = job(
        "c",
        "int main(void) { volatile int *p = (int *)0; *p = 1; return 0; }",
    )
    .run();
    assert_status(&result, Status::RuntimeError);
    assert_eq!(result.signal, Some(11));
    assert_eq!(result.signal_name.as_deref(), Some("SIGSEGV"));
    assert_eq!(result.exit_code, None);
}

#[test]
fn cpu_loop_exceeds_the_time_limit() {
    let result = job(
        "c",
        "int main(void) { for (volatile unsigned long i = 0;; i++); }",
    )
    .limits(json!({ "cpu_time_ms": 500, "wall_time_ms": 20000 }))
    .run();
    assert_status(&result, Status::TimeLimitExceeded);
    assert!(result.cpu_time_ms >= 500, "{result:#?}");
    assert!(
        result
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("CPU"),
        "{result:#?}"
    );
}

#[test]
fn cpu_time_of_child_processes_counts() {
    let burn = "python3 -c 'while True: pass'";
    let result = job("bash", &format!("{burn} &\n{burn} &\nwait"))
        .limits(json!({ "cpu_time_ms": 1000, "wall_time_ms": 20000 }))
        .run();
    assert_status(&result, Status::TimeLimitExceeded);
    assert!(result.cpu_time_ms >= 1000, "{result:#?}");
}

#[test]
fn sleeping_past_the_wall_limit_is_killed() {
    let result = job("bash", "echo started\nsleep 600\necho never")
        .limits(json!({ "wall_time_ms": 2000 }))
        .run();
    assert_status(&result, Status::TimeLimitExceeded);
    assert_eq!(result.stdout, "started\n");
    assert!(
        result
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("wall"),
        "{result:#?}"
    );
}

#[test]
fn python_memory_bomb() {
    let result = job(
        "python",
        "blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 20))",
    )
    .limits(json!({ "memory_kb": 65536, "cpu_time_ms": 20000, "wall_time_ms": 30000 }))
    .run();
    assert_status(&result, Status::MemoryLimitExceeded);
}

#[test]
fn c_memory_bomb_touching_every_page() {
    let code = "#include <stdlib.h>\n#include <string.h>\n\
                int main(void) { for (;;) { char *p = malloc(1 << 20); memset(p, 1, 1 << 20); } }";
    let result = job("c", code)
        .limits(json!({ "memory_kb": 65536, "cpu_time_ms": 20000, "wall_time_ms": 30000 }))
        .run();
    assert_status(&result, Status::MemoryLimitExceeded);
    assert!(result.memory_kb >= 65536 * 9 / 10, "{result:#?}");
}

#[test]
fn javascript_heap_exhaustion() {
    let result = job(
        "javascript",
        "const a = []; for (;;) a.push(new Array(1e6).fill(1));",
    )
    .limits(json!({ "memory_kb": 65536, "cpu_time_ms": 20000, "wall_time_ms": 30000 }))
    .run();
    assert_status(&result, Status::MemoryLimitExceeded);
}

#[test]
fn java_heap_exhaustion() {
    let code = "import java.util.*;\n\
                public class Main { public static void main(String[] a) {\n\
                  List<long[]> l = new ArrayList<>(); while (true) l.add(new long[1 << 20]);\n\
                } }";
    let result = job("java", code)
        .limits(json!({ "memory_kb": 65536, "cpu_time_ms": 20000, "wall_time_ms": 30000 }))
        .run();
    assert_status(&result, Status::MemoryLimitExceeded);
    assert!(result.stderr.contains("Java heap space"), "{result:#?}");
}

#[test]
fn output_flood_is_cut_at_the_limit() {
    let result = job("python", "while True:\n    print('x' * 999)")
        .limits(json!({ "max_output_bytes": 10000 }))
        .run();
    assert_status(&result, Status::OutputLimitExceeded);
    assert!(result.stdout_truncated);
    assert_eq!(result.stdout.len(), 10000);
    assert!(result.stdout.starts_with(&"x".repeat(999)));
}

#[test]
fn stderr_flood_is_cut_too() {
    let result = job("bash", "yes err >&2")
        .limits(json!({ "max_output_bytes": 4096 }))
        .run();
    assert_status(&result, Status::OutputLimitExceeded);
    assert!(result.stderr_truncated && !result.stdout_truncated);
    assert_eq!(result.stderr.len(), 4096);
}

#[test]
fn file_larger_than_the_limit_gets_sigxfsz() {
    let result = job("bash", "exec head -c 2000000 /dev/zero > big")
        .limits(json!({ "max_file_size_kb": 1024 }))
        .run();
    assert_status(&result, Status::RuntimeError);
    assert_eq!(result.signal, Some(25));
    assert_eq!(result.signal_name.as_deref(), Some("SIGXFSZ"));
}

#[test]
fn files_within_the_limit_are_fine() {
    let result = job("bash", "head -c 100000 /dev/zero > f && stat -c %s f")
        .limits(json!({ "max_file_size_kb": 1024 }))
        .run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "100000\n");
}

#[test]
fn invalid_utf8_output_is_replaced() {
    let result = job(
        "python",
        "import sys\nsys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')\nsys.stderr.buffer.write(b'\\xc3')",
    )
    .run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "ok \u{FFFD}\u{FFFD} end\n");
    assert_eq!(result.stderr, "\u{FFFD}");
}
