//! Language runtime versions.
//!
//! The latest [`RuntimeVersions`] announcement from a pod-manager wins.
//! Until one arrives, each language's `version_command` is run locally if
//! that runtime exists on this machine (the local backend shares it);
//! otherwise the version is unknown.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use warmpod_protocol::{LANGUAGES, Language, RuntimeVersions};

#[derive(Default)]
struct Known {
    announced: Option<RuntimeVersions>,
    local: BTreeMap<String, String>,
}

/// Version lines by language key; cheap to clone.
#[derive(Clone, Default)]
pub struct Versions {
    known: Arc<RwLock<Known>>,
}

impl Versions {
    /// Records a pod-manager's announcement (newer ones replace older).
    pub fn announced(&self, versions: RuntimeVersions) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if known
            .announced
            .as_ref()
            .is_none_or(|old| old.at_ms <= versions.at_ms)
        {
            known.announced = Some(versions);
        }
    }

    /// The version line of `key`, e.g. `"Python 3.11.2"`.
    pub fn line(&self, key: &str) -> Option<String> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        known
            .announced
            .as_ref()
            .and_then(|a| a.versions.get(key).cloned())
            .or_else(|| known.local.get(key).cloned())
    }

    /// The bare version number of `key`, e.g. `"3.11.2"`.
    pub fn number(&self, key: &str) -> Option<String> {
        self.line(key).and_then(|l| version_number(&l))
    }

    /// Runs the local version commands of the runtimes present here.
    pub async fn probe_local(&self) {
        for lang in LANGUAGES {
            if !std::path::Path::new(lang.version_command[0]).exists() {
                continue;
            }
            if let Some(line) = run_version_command(lang).await {
                self.known
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .local
                    .insert(lang.key.to_string(), line);
            }
        }
    }
}

async fn run_version_command(lang: &Language) -> Option<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(lang.version_command[0])
            .args(&lang.version_command[1..])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .ok()?
    .ok()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// The version number in a version line: the last word that starts like
/// `1.2`, cut at the first character that is not a digit or a dot.
pub fn version_number(line: &str) -> Option<String> {
    line.split_whitespace()
        .rev()
        .map(|w| w.trim_start_matches(['v', 'V', '(']))
        .filter_map(|w| {
            let n: String = w
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let n = n.trim_end_matches('.').to_string();
            (n.contains('.') && n.starts_with(|c: char| c.is_ascii_digit())).then_some(n)
        })
        .next()
}

/// Judge0-style display name: `"Python (3.11.2)"`, `"C (GCC 12.2.0)"`.
pub fn display_name(lang: &Language, version: Option<&str>) -> String {
    match (version, lang.name.strip_suffix(')')) {
        (None, _) => lang.name.to_string(),
        (Some(v), Some(open)) => format!("{open} {v})"),
        (Some(v), None) => format!("{} ({v})", lang.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_numbers_are_found() {
        for (line, want) in [
            ("Python 3.11.2", "3.11.2"),
            ("v20.19.2", "20.19.2"),
            ("gcc (Debian 12.2.0-14) 12.2.0", "12.2.0"),
            ("javac 17.0.13", "17.0.13"),
            (
                "GNU bash, version 5.2.15(1)-release (x86_64-pc-linux-gnu)",
                "5.2.15",
            ),
        ] {
            assert_eq!(version_number(line).as_deref(), Some(want), "{line}");
        }
        assert_eq!(version_number("no version here"), None);
    }

    #[test]
    fn display_names_look_like_judge0() {
        let py = Language::find("python").unwrap();
        let c = Language::find("c").unwrap();
        assert_eq!(display_name(py, Some("3.11.2")), "Python (3.11.2)");
        assert_eq!(display_name(c, Some("12.2.0")), "C (GCC 12.2.0)");
        assert_eq!(display_name(py, None), "Python");
    }

    #[test]
    fn announcements_win_over_local_and_newer_over_older() {
        let v = Versions::default();
        v.known
            .write()
            .unwrap()
            .local
            .insert("python".into(), "Python 3.0.0".into());
        assert_eq!(v.number("python").as_deref(), Some("3.0.0"));
        let ann = |at, ver: &str| RuntimeVersions {
            at_ms: at,
            versions: [("python".to_string(), ver.to_string())].into(),
        };
        v.announced(ann(2, "Python 3.11.2"));
        v.announced(ann(1, "Python 3.9.0"));
        assert_eq!(v.number("python").as_deref(), Some("3.11.2"));
    }
}
