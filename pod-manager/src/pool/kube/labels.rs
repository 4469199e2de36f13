//! Label and annotation names of standby pods, shared with `k8s-config/`
//! (the standby Deployment's template and selector) and the docs.

/// `app.kubernetes.io/name`: identifies standby pods.
pub const NAME: &str = "app.kubernetes.io/name";
/// Value of [`NAME`] on standby pods.
pub const STANDBY_APP: &str = "warmpod-standby";
/// `warmpod.io/pool`: which pool a pod belongs to.
pub const POOL: &str = "warmpod.io/pool";
/// `warmpod.io/state`: [`STANDBY`] or [`CLAIMED`]; part of the
/// Deployment's selector, so relabelling orphans the pod.
pub const STATE: &str = "warmpod.io/state";
/// State of a pod waiting for a job.
pub const STANDBY: &str = "standby";
/// State of a pod running (or having run) a job.
pub const CLAIMED: &str = "claimed";
/// `warmpod.io/job`: the job a claimed pod runs.
pub const JOB: &str = "warmpod.io/job";
/// `warmpod.io/claimed-by`: the manager pod that claimed it.
pub const CLAIMED_BY: &str = "warmpod.io/claimed-by";
/// `warmpod.io/claimed-at` (annotation): RFC 3339 time of the claim.
pub const CLAIMED_AT: &str = "warmpod.io/claimed-at";
/// `warmpod.io/language`: on a specialised standby pod, the key of the
/// language whose interpreter its main process pre-started (the serving
/// runner); generic pods do not carry it. Part of every standby
/// Deployment's selector (generic: `DoesNotExist`), so the pools never
/// overlap.
pub const LANGUAGE: &str = "warmpod.io/language";

/// Selector of every pod of `pool`, whatever its state.
pub fn pool_selector(pool: &str) -> String {
    format!("{NAME}={STANDBY_APP},{POOL}={pool}")
}

/// Selector of `pool`'s pods in `state`.
pub fn state_selector(pool: &str, state: &str) -> String {
    format!("{},{STATE}={state}", pool_selector(pool))
}

/// Selector of `pool`'s generic standby pods: those without a language
/// label, or with one this manager has no pool for (`!=` also matches a
/// missing label). Their runner runs any job.
pub fn generic_selector(pool: &str, languages: &[&str]) -> String {
    let mut selector = state_selector(pool, STANDBY);
    for key in languages {
        selector.push_str(&format!(",{LANGUAGE}!={key}"));
    }
    selector
}

/// Selector of `pool`'s standby pods specialised for language `key`.
pub fn language_selector(pool: &str, key: &str) -> String {
    format!("{},{LANGUAGE}={key}", state_selector(pool, STANDBY))
}

/// A JSON pointer to `/metadata/<map>/<key>`, with `/` in the key escaped
/// as RFC 6901 says (`~1`).
pub fn pointer(map: &str, key: &str) -> String {
    format!(
        "/metadata/{map}/{}",
        key.replace('~', "~0").replace('/', "~1")
    )
}

/// `s` made into a valid label value: at most 63 characters of
/// `[A-Za-z0-9._-]`, starting and ending with an alphanumeric; other
/// characters become `-`. An empty result becomes `unknown`.
pub fn label_value(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        "unknown".into()
    } else {
        trimmed.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_name_app_pool_and_state() {
        assert_eq!(
            state_selector("default", STANDBY),
            "app.kubernetes.io/name=warmpod-standby,warmpod.io/pool=default,warmpod.io/state=standby"
        );
    }

    #[test]
    fn generic_and_language_pools_never_overlap() {
        assert_eq!(
            generic_selector("p", &[]),
            state_selector("p", STANDBY),
            "no language pools: every standby pod is generic"
        );
        assert_eq!(
            generic_selector("p", &["python", "javascript"]),
            format!(
                "{},warmpod.io/language!=python,warmpod.io/language!=javascript",
                state_selector("p", STANDBY)
            )
        );
        assert_eq!(
            language_selector("p", "python"),
            format!(
                "{},warmpod.io/language=python",
                state_selector("p", STANDBY)
            )
        );
    }

    #[test]
    fn pointers_escape_slashes() {
        assert_eq!(
            pointer("labels", STATE),
            "/metadata/labels/warmpod.io~1state"
        );
        assert_eq!(
            pointer("annotations", "a~b/c"),
            "/metadata/annotations/a~0b~1c"
        );
    }

    #[test]
    fn label_values_are_made_valid() {
        let cases = [
            (
                "pod-manager-7d9f-x2x9k",
                "pod-manager-7d9f-x2x9k",
                "already valid",
            ),
            ("a b/c", "a-b-c", "bad characters replaced"),
            ("-x-", "x", "must start and end alphanumeric"),
            ("", "unknown", "empty"),
        ];
        for (input, want, why) in cases {
            assert_eq!(label_value(input), want, "{why}");
        }
        assert_eq!(
            label_value(&"x".repeat(100)).len(),
            63,
            "at most 63 characters"
        );
    }
}
