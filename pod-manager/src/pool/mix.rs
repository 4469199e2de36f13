//! The job mix: which languages recent jobs used, as an exponentially
//! weighted moving average, and how a pool of `size` sandboxes is split
//! between generic sandboxes and sandboxes specialised for a language (a
//! pre-started interpreter waiting in them). Pure: no clock, no I/O.
//!
//! Any sandbox can run any job (a specialised one runs another language's
//! job on the cold path), so the split only decides where the pre-started
//! interpreters go: each language gets its share of the pool, rounded by
//! largest remainder, and at least one sandbox stays generic when the pool
//! has two or more. A job whose language has no sandbox ready takes one of
//! the kind most above its target ([`Split::surplus`]), so the pool follows
//! a changed mix without killing anything: the refill starts the kind
//! furthest below ([`Split::next_kind`]).

/// Weight of each new job in the average: the mix follows roughly the last
/// `1 / ALPHA` jobs.
pub const ALPHA: f64 = 0.05;

/// Recent demand per pre-startable language.
#[derive(Debug, Clone, PartialEq)]
pub struct DemandMix {
    /// Language keys that can be pre-started, in a fixed order.
    languages: Vec<&'static str>,
    /// Their shares of recent jobs (0..=1); the rest is other languages.
    shares: Vec<f64>,
}

/// How many sandboxes of each kind the pool should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Sandboxes without a pre-started interpreter.
    pub generic: usize,
    /// Per language key, sandboxes with its interpreter pre-started.
    pub specialised: Vec<(&'static str, usize)>,
}

impl DemandMix {
    /// A mix with no demand seen yet (everything generic).
    pub fn new(languages: &[&'static str]) -> Self {
        Self {
            languages: languages.to_vec(),
            shares: vec![0.0; languages.len()],
        }
    }

    /// Counts one job of `language` (a language key).
    pub fn observe(&mut self, language: &str) {
        for (key, share) in self.languages.iter().zip(&mut self.shares) {
            let hit = if *key == language { 1.0 } else { 0.0 };
            *share += ALPHA * (hit - *share);
        }
    }

    /// `language`'s share of recent jobs (0 when not pre-startable).
    pub fn share(&self, language: &str) -> f64 {
        self.languages
            .iter()
            .position(|k| *k == language)
            .map_or(0.0, |i| self.shares[i])
    }

    /// Splits `size` sandboxes by the shares (largest remainder; ties go
    /// to generic, then to the earlier language), keeping one generic
    /// sandbox when `size` ≥ 2.
    pub fn split(&self, size: usize) -> Split {
        let other = (1.0 - self.shares.iter().sum::<f64>()).max(0.0);
        // Index 0 is generic, then the languages in order.
        let quotas: Vec<f64> = std::iter::once(other)
            .chain(self.shares.iter().copied())
            .map(|s| s * size as f64)
            .collect();
        let mut counts: Vec<usize> = quotas.iter().map(|q| q.floor() as usize).collect();
        let mut order: Vec<usize> = (0..quotas.len()).collect();
        // Stable sort: equal remainders keep index order (generic first).
        order.sort_by(|&a, &b| {
            let (ra, rb) = (quotas[a] - quotas[a].floor(), quotas[b] - quotas[b].floor());
            rb.total_cmp(&ra)
        });
        let left = size.saturating_sub(counts.iter().sum());
        for &i in order.iter().cycle().take(left) {
            counts[i] += 1;
        }
        if size >= 2 && counts[0] == 0 {
            // Take the generic sandbox from the largest specialised count.
            if let Some(big) = (1..counts.len()).max_by_key(|&i| (counts[i], usize::MAX - i)) {
                counts[big] -= 1;
                counts[0] = 1;
            }
        }
        Split {
            generic: counts[0],
            specialised: self
                .languages
                .iter()
                .copied()
                .zip(counts[1..].iter().copied())
                .collect(),
        }
    }
}

impl Split {
    /// How many sandboxes of `kind` (`None`: generic) the pool should hold;
    /// 0 for a language it does not pre-start.
    pub fn target(&self, kind: Option<&str>) -> usize {
        match kind {
            None => self.generic,
            Some(key) => self
                .specialised
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(0, |&(_, n)| n),
        }
    }

    /// The kind to start next, given how many of each kind are ready or
    /// starting (`have(None)` generic, `have(Some(key))` specialised): the
    /// kind furthest below its target, a language before generic on a tie
    /// (any sandbox runs any job, but only a specialised one runs its
    /// language warm); generic when none is below.
    pub fn next_kind(&self, have: impl Fn(Option<&'static str>) -> usize) -> Option<&'static str> {
        let mut best: (usize, Option<&'static str>) =
            (self.generic.saturating_sub(have(None)), None);
        for &(key, target) in &self.specialised {
            let deficit = target.saturating_sub(have(Some(key)));
            if deficit > best.0 || (deficit > 0 && deficit == best.0 && best.1.is_none()) {
                best = (deficit, Some(key));
            }
        }
        best.1
    }

    /// How far `kind` is above its target when `have` of it are ready or
    /// starting (negative: below). A job with no sandbox of its own
    /// language ready takes one of the kind most above target: the pool
    /// then refills towards the split instead of keeping sandboxes for
    /// languages no longer asked for.
    pub fn surplus(&self, kind: Option<&str>, have: usize) -> i64 {
        have as i64 - self.target(kind) as i64
    }
}

/// Which of the `ready` sandboxes (their kinds, oldest first) a job of
/// language `key` takes: one specialised for it; else one of the kind most
/// above its target in `split` (counting those `starting` too), a generic
/// one first on a tie, then the oldest. Without a split (nothing is
/// pre-started, all are generic): the oldest.
pub fn pick(
    ready: &[Option<&'static str>],
    key: Option<&str>,
    split: Option<&Split>,
    starting: &[Option<&'static str>],
) -> Option<usize> {
    if let Some(at) = key.and_then(|k| ready.iter().position(|s| *s == Some(k))) {
        return Some(at);
    }
    let held = |kind: Option<&str>| ready.iter().chain(starting).filter(|k| **k == kind).count();
    let surplus = |kind| split.map_or(0, |split| split.surplus(kind, held(kind)));
    (0..ready.len()).max_by_key(|&i| {
        let kind = ready[i];
        (surplus(kind), kind.is_none(), std::cmp::Reverse(i))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix_after(jobs: &[(&str, usize)]) -> DemandMix {
        let mut mix = DemandMix::new(&["python", "javascript"]);
        for &(language, n) in jobs {
            for _ in 0..n {
                mix.observe(language);
            }
        }
        mix
    }

    #[test]
    fn without_demand_everything_is_generic() {
        let split = mix_after(&[]).split(4);
        assert_eq!(split.generic, 4);
        assert_eq!(split.specialised, [("python", 0), ("javascript", 0)]);
    }

    #[test]
    fn the_average_follows_recent_jobs() {
        let mix = mix_after(&[("python", 200)]);
        assert!(mix.share("python") > 0.99, "{mix:?}");
        let mix = mix_after(&[("python", 200), ("c", 200)]);
        assert!(mix.share("python") < 0.01, "{mix:?}");
        assert_eq!(mix.share("cobol"), 0.0);
    }

    #[test]
    fn the_pool_is_split_by_share_with_one_generic_sandbox_kept() {
        // Python only: all but the one generic sandbox.
        let split = mix_after(&[("python", 200)]).split(4);
        assert_eq!((split.generic, split.specialised[0]), (1, ("python", 3)));
        // Half Python, half JavaScript (interleaved).
        let mut mix = DemandMix::new(&["python", "javascript"]);
        for _ in 0..200 {
            mix.observe("python");
            mix.observe("javascript");
        }
        let split = mix.split(8);
        assert_eq!(split.generic, 1);
        assert_eq!(
            split.specialised.iter().map(|s| s.1).sum::<usize>(),
            7,
            "{split:?}"
        );
        // Every size adds up, one generic kept from two on.
        for size in 1..=20 {
            let split = mix.split(size);
            let total = split.generic + split.specialised.iter().map(|s| s.1).sum::<usize>();
            assert_eq!(total, size, "{split:?}");
            assert!(size < 2 || split.generic >= 1, "{split:?}");
        }
    }

    #[test]
    fn a_single_sandbox_follows_the_dominant_language() {
        assert_eq!(mix_after(&[("python", 200)]).split(1).generic, 0);
        assert_eq!(mix_after(&[("c", 200)]).split(1).generic, 1);
    }

    #[test]
    fn the_next_start_fills_the_largest_deficit() {
        let split = Split {
            generic: 1,
            specialised: vec![("python", 3), ("javascript", 1)],
        };
        let have = |ready: [usize; 3]| {
            move |kind: Option<&'static str>| match kind {
                None => ready[0],
                Some("python") => ready[1],
                _ => ready[2],
            }
        };
        assert_eq!(split.next_kind(have([1, 0, 0])), Some("python"));
        assert_eq!(split.next_kind(have([0, 3, 1])), None);
        assert_eq!(split.next_kind(have([1, 3, 0])), Some("javascript"));
        // Every target met (the pool is short for other reasons): generic.
        assert_eq!(split.next_kind(have([1, 3, 1])), None);
        // Equal deficits: the language first, generic after.
        assert_eq!(split.next_kind(have([0, 3, 0])), Some("javascript"));
        assert_eq!(split.next_kind(have([0, 2, 1])), Some("python"));
    }

    #[test]
    fn a_job_takes_its_language_else_the_kind_most_above_target() {
        let split = Split {
            generic: 1,
            specialised: vec![("python", 2), ("javascript", 1)],
        };
        let (py, js, gn) = (Some("python"), Some("javascript"), None);
        // Its own language, wherever it is in the queue.
        assert_eq!(
            pick(&[py, gn, js], Some("javascript"), Some(&split), &[]),
            Some(2)
        );
        // Mix moved to JavaScript with Python sandboxes left over: a
        // surplus Python one, not the one generic sandbox.
        assert_eq!(
            pick(&[py, py, py, gn], Some("javascript"), Some(&split), &[]),
            Some(0)
        );
        // Nothing above target: generic first, then the oldest.
        assert_eq!(
            pick(&[py, gn], Some("javascript"), Some(&split), &[py]),
            Some(1)
        );
        assert_eq!(pick(&[py, py], Some("c"), Some(&split), &[]), Some(0));
        // Starting sandboxes count: two Python ones starting make the
        // ready one surplus.
        assert_eq!(pick(&[gn, py], None, Some(&split), &[py, py]), Some(1));
        // Nothing pre-started: the oldest; nothing ready: none.
        assert_eq!(pick(&[gn, gn], Some("python"), None, &[]), Some(0));
        assert_eq!(pick(&[], Some("python"), Some(&split), &[]), None);
    }

    #[test]
    fn targets_and_surpluses_follow_the_split() {
        let split = Split {
            generic: 1,
            specialised: vec![("python", 2), ("javascript", 1)],
        };
        assert_eq!(split.target(None), 1);
        assert_eq!(split.target(Some("python")), 2);
        assert_eq!(split.target(Some("java")), 0);
        assert_eq!(split.surplus(Some("python"), 3), 1);
        assert_eq!(split.surplus(Some("javascript"), 0), -1);
        assert_eq!(split.surplus(Some("java"), 1), 1);
    }
}
