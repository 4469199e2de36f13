//! From resolved job limits to the resource limits a program starts with.
//!
//! Pure computation: [`plan`] decides every `RLIMIT_*` value, so it can be
//! tested without spawning anything.

use warmpod_protocol::{Language, ResolvedLimits};

use crate::sys::{RLIMIT_COUNT, Rlimit};

/// `RLIMIT_NOFILE` of every program.
pub const OPEN_FILES: u64 = 256;

/// Largest `RLIMIT_STACK`; a smaller memory limit lowers it.
pub const MAX_STACK_BYTES: u64 = 64 * 1024 * 1024;

/// The resource limits of one program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RlimitPlan {
    /// `RLIMIT_CPU` soft limit in seconds (the hard limit is one more).
    pub cpu_seconds: u64,
    /// `RLIMIT_AS` in bytes.
    pub address_space_bytes: u64,
    /// `RLIMIT_FSIZE` in bytes.
    pub file_size_bytes: u64,
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// `RLIMIT_NPROC`: counted per real uid, threads included.
    pub processes: u64,
    /// `RLIMIT_STACK` in bytes.
    pub stack_bytes: u64,
}

/// Decides the limits of a program of `language` under `limits`.
///
/// `already_running` is how many processes (threads included) the
/// program's uid has before it starts: 0 for a dedicated uid, the count of
/// the runner's own uid otherwise, since `RLIMIT_NPROC` counts them all.
pub fn plan(language: &Language, limits: &ResolvedLimits, already_running: u64) -> RlimitPlan {
    let address_space_bytes = language
        .address_space_kb(limits.memory_kb)
        .saturating_mul(1024);
    RlimitPlan {
        cpu_seconds: limits.cpu_time_ms.div_ceil(1000).max(1),
        address_space_bytes,
        file_size_bytes: limits.max_file_size_kb.saturating_mul(1024),
        open_files: OPEN_FILES,
        processes: limits.max_processes.saturating_add(already_running),
        stack_bytes: MAX_STACK_BYTES.min(limits.memory_kb.saturating_mul(1024)),
    }
}

impl RlimitPlan {
    /// The `(resource, soft, hard)` triples to apply, core dumps off.
    pub fn rlimits(&self) -> [Rlimit; RLIMIT_COUNT] {
        let same = |r, v| (r, v, v);
        [
            (
                libc::RLIMIT_CPU,
                self.cpu_seconds,
                self.cpu_seconds.saturating_add(1),
            ),
            same(libc::RLIMIT_AS, self.address_space_bytes),
            same(libc::RLIMIT_FSIZE, self.file_size_bytes),
            same(libc::RLIMIT_NOFILE, self.open_files),
            same(libc::RLIMIT_NPROC, self.processes),
            same(libc::RLIMIT_STACK, self.stack_bytes),
            same(libc::RLIMIT_CORE, 0),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lang(key: &str) -> &'static Language {
        Language::find(key).unwrap()
    }

    #[test]
    fn cpu_seconds_round_up_with_a_hard_margin() {
        let mut limits = ResolvedLimits::DEFAULT;
        for (ms, secs) in [(1, 1), (1000, 1), (1001, 2), (5000, 5)] {
            limits.cpu_time_ms = ms;
            let p = plan(lang("c"), &limits, 0);
            assert_eq!(p.cpu_seconds, secs, "{ms} ms");
            let cpu = p.rlimits()[0];
            assert_eq!((cpu.1, cpu.2), (secs, secs + 1), "{ms} ms");
        }
    }

    #[test]
    fn address_space_follows_the_memory_model() {
        let limits = ResolvedLimits::DEFAULT;
        assert_eq!(
            plan(lang("python"), &limits, 0).address_space_bytes,
            limits.memory_kb * 1024
        );
        let java = plan(lang("java"), &limits, 0).address_space_bytes;
        assert!(
            java > limits.memory_kb * 1024 + 1024 * 1024 * 1024,
            "{java}"
        );
    }

    #[test]
    fn stack_is_capped_by_memory() {
        let mut limits = ResolvedLimits::DEFAULT;
        assert_eq!(plan(lang("c"), &limits, 0).stack_bytes, MAX_STACK_BYTES);
        limits.memory_kb = 16 * 1024;
        assert_eq!(plan(lang("c"), &limits, 0).stack_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn processes_count_what_the_uid_already_runs() {
        let mut limits = ResolvedLimits::DEFAULT;
        limits.max_processes = 16;
        assert_eq!(plan(lang("bash"), &limits, 0).processes, 16);
        assert_eq!(plan(lang("bash"), &limits, 5).processes, 21);
    }

    #[test]
    fn file_size_and_core() {
        let limits = ResolvedLimits::DEFAULT;
        let rl = plan(lang("c"), &limits, 0).rlimits();
        let get = |r| rl.iter().find(|(res, _, _)| *res == r).unwrap().1;
        assert_eq!(get(libc::RLIMIT_FSIZE), limits.max_file_size_kb * 1024);
        assert_eq!(get(libc::RLIMIT_CORE), 0);
        assert_eq!(get(libc::RLIMIT_NOFILE), OPEN_FILES);
    }
}
