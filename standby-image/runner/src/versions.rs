//! Runtime versions (`--versions`) and the readiness check (`--check`).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use warmpod_protocol::{LANGUAGES, Language};

/// How long every version command may take, all together.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// `{language key: version line}` for every language whose version command
/// answered within [`VERSION_TIMEOUT`]; languages whose runtime is missing
/// or silent are left out.
pub fn versions() -> BTreeMap<&'static str, String> {
    let (tx, rx) = mpsc::channel();
    let mut running = Vec::new();
    for lang in LANGUAGES {
        let Ok(child) = Command::new(lang.version_command[0])
            .args(&lang.version_command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        else {
            continue;
        };
        running.push((lang.key, child.id()));
        let tx = tx.clone();
        thread::spawn(move || {
            let line = child
                .wait_with_output()
                .ok()
                .and_then(|out| first_line(&out.stdout).or_else(|| first_line(&out.stderr)));
            let _ = tx.send((lang.key, line));
        });
    }
    drop(tx);
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let mut found = BTreeMap::new();
    while let Ok((key, line)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        running.retain(|(k, _)| *k != key);
        if let Some(line) = line {
            found.insert(key, line);
        }
    }
    // Whatever has not answered by the deadline is still unreaped: kill it.
    for (_, pid) in running {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    found
}

/// The first non-empty line of `bytes`, trimmed.
fn first_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// `(language key, program)` for every program of the table that is not an
/// executable file here.
pub fn missing_programs() -> Vec<(&'static str, &'static str)> {
    LANGUAGES
        .iter()
        .flat_map(|l: &Language| l.programs().into_iter().map(move |p| (l.key, p)))
        .filter(|(_, p)| !is_executable(Path::new(p)))
        .collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_skips_blank_lines() {
        assert_eq!(
            first_line(b"\n  \nPython 3.11.2\nmore"),
            Some("Python 3.11.2".into())
        );
        assert_eq!(first_line(b"  \n"), None);
    }

    #[test]
    fn executables_are_recognised() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tool");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        assert!(!is_executable(&file), "mode 644");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(is_executable(&file), "mode 755");
        assert!(!is_executable(dir.path()), "a directory");
        assert!(!is_executable(&dir.path().join("missing")), "missing");
    }
}
