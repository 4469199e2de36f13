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

/// Selector of every pod of `pool`, whatever its state.
pub fn pool_selector(pool: &str) -> String {
    format!("{NAME}={STANDBY_APP},{POOL}={pool}")
}

/// Selector of `pool`'s pods in `state`.
pub fn state_selector(pool: &str, state: &str) -> String {
    format!("{},{STATE}={state}", pool_selector(pool))
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
