//! The `--versions` and `--check` modes.

use crate::helpers::run_raw;

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
