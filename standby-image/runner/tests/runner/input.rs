//! Bad input always gets an `internal_error` line, never silence; stdin
//! of any size never deadlocks.

use uuid::Uuid;
use warmpod_protocol::Status;

use crate::helpers::{assert_status, job, run_line, run_raw};

const ID: &str = "0b6b3c6e-0a43-4d51-8a8b-3f1c5e7d9a21";

#[test]
fn malformed_json_gets_an_internal_error_with_the_nil_id() {
    let result = run_line("{this is not json");
    assert_status(&result, Status::InternalError);
    assert_eq!(result.id, Uuid::nil());
    assert!(
        result
            .message
            .unwrap_or_default()
            .contains("malformed job JSON")
    );
}

#[test]
fn malformed_job_keeps_a_valid_id() {
    let result = run_line(&format!(r#"{{"id":"{ID}","language":42}}"#));
    assert_status(&result, Status::InternalError);
    assert_eq!(result.id.to_string(), ID);
}

#[test]
fn empty_input_gets_an_internal_error() {
    let (status, stdout) = run_raw(&[], "");
    assert!(status.success());
    let result = crate::helpers::parse_single_line(&stdout);
    assert_status(&result, Status::InternalError);
    assert!(result.message.unwrap_or_default().contains("no job line"));
}

#[test]
fn invalid_fields_are_named() {
    let cases = [
        (
            r#""language":"cobol","files":[{"content":"x"}]"#,
            "language",
        ),
        (r#""language":"python","files":[]"#, "files"),
        (
            r#""language":"python","files":[{"content":"x"},{"name":"../evil.py","content":"x"}]"#,
            "files[1].name",
        ),
        (
            r#""language":"python","files":[{"content":"x"}],"limits":{"memory_kb":99999999}"#,
            "limits.memory_kb",
        ),
        (
            r#""language":"c","files":[{"content":"x"}],"compile_limits":{"cpu_time_ms":0}"#,
            "compile_limits.cpu_time_ms",
        ),
    ];
    for (fields, named) in cases {
        let result = run_line(&format!(r#"{{"id":"{ID}",{fields}}}"#));
        assert_status(&result, Status::InternalError);
        assert_eq!(result.id.to_string(), ID, "{fields}");
        let message = result.message.unwrap_or_default();
        assert!(message.starts_with(named), "{fields}: {message}");
    }
}

#[test]
fn large_stdin_is_fed_without_deadlock() {
    let big = "0123456789abcdef\n".repeat(64 * 1024); // 1.1 MB
    let result = job(
        "python",
        "import sys\ndata = sys.stdin.read()\nprint(len(data))",
    )
    .stdin(&big)
    .run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, format!("{}\n", big.len()));
}

#[test]
fn unread_large_stdin_does_not_block() {
    let big = "x".repeat(4 << 20);
    let result = job("bash", "echo ignored").stdin(&big).run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "ignored\n");
}

#[test]
fn first_file_takes_the_default_name_and_others_keep_theirs() {
    let result = job("bash", "ls | sort | tr '\\n' ' '")
        .file("data.txt", "x")
        .run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "data.txt main.sh ");
}

#[test]
fn without_stdin_the_program_reads_eof_not_the_runners_stdin() {
    // The runner's own stdin stays open in these tests: a program that got
    // it would block until the wall limit.
    let result = job("python", "import sys\nprint(repr(sys.stdin.read()))").run();
    assert_status(&result, Status::Accepted);
    assert_eq!(result.stdout, "''\n");
}

#[test]
fn compiler_warnings_are_kept_on_success() {
    let result = job(
        "c",
        "#warning \"careful now\"\nint main(void) { return 0; }",
    )
    .run();
    assert_status(&result, Status::Accepted);
    assert!(result.compile_output.contains("careful now"), "{result:#?}");
}
