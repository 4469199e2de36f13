//! Turning what happened to a program into a verdict. Pure functions.
//!
//! The rules, in order:
//! 0. the runner itself was told to stop (SIGTERM…) → `internal_error`;
//! 1. an output stream passed its cap → `output_limit_exceeded`;
//! 2. the runner stopped it for wall or CPU time, it died of `SIGXCPU`, or
//!    its CPU time reached the limit → `time_limit_exceeded`;
//! 3. the runner stopped it for having more than `max_processes` tasks
//!    (only where `RLIMIT_NPROC` cannot be exact), or `SIGXFSZ` (a file
//!    past `max_file_size_kb`) → `runtime_error`;
//! 4. it failed (non-zero exit or a signal) AND (peak RSS ≥ 90% of the
//!    memory limit, OR its stderr shows the language's out-of-memory
//!    markers, OR a `SIGKILL` the runner did not send, i.e. the kernel OOM
//!    killer) → `memory_limit_exceeded`;
//! 5. exit 0 → `accepted`; otherwise `runtime_error` with the exit code or
//!    the signal.

use warmpod_protocol::{Language, ResolvedLimits, Status};

use crate::supervise::{Exit, Outcome, Stop};

/// Peak RSS at or above this share of the limit counts as memory
/// exhaustion on a failed run, in percent.
pub const MEMORY_THRESHOLD_PERCENT: u64 = 90;

/// A verdict with its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The status.
    pub status: Status,
    /// Why, for limit verdicts.
    pub message: Option<String>,
}

/// Judges a finished run of a `language` program under `limits`.
pub fn classify(outcome: &Outcome, language: &Language, limits: &ResolvedLimits) -> Verdict {
    let verdict = |status, message: String| Verdict {
        status,
        message: Some(message),
    };
    if let Some(Stop::Terminated(signal)) = outcome.stop {
        return verdict(
            Status::InternalError,
            format!("the runner was stopped by {signal}; the program was killed"),
        );
    }
    if outcome.stop == Some(Stop::Output) || outcome.stdout.truncated || outcome.stderr.truncated {
        return verdict(
            Status::OutputLimitExceeded,
            format!("output passed {} bytes", limits.max_output_bytes),
        );
    }
    if let Some(message) = time_limit(outcome, limits) {
        return verdict(Status::TimeLimitExceeded, message);
    }
    if outcome.stop == Some(Stop::Processes) {
        return verdict(
            Status::RuntimeError,
            format!("more than {} processes and threads", limits.max_processes),
        );
    }
    let failed = outcome.exit != Exit::Code(0);
    if failed
        && outcome.exit != Exit::Signal(libc::SIGXFSZ)
        && let Some(message) = memory_limit(outcome, language, limits)
    {
        return verdict(Status::MemoryLimitExceeded, message);
    }
    let status = if failed {
        Status::RuntimeError
    } else {
        Status::Accepted
    };
    let message = (outcome.exit == Exit::Signal(libc::SIGXFSZ)).then(|| {
        format!(
            "a file passed the size limit of {} KiB",
            limits.max_file_size_kb
        )
    });
    Verdict { status, message }
}

fn time_limit(outcome: &Outcome, limits: &ResolvedLimits) -> Option<String> {
    let cpu = || format!("CPU time limit of {} ms exceeded", limits.cpu_time_ms);
    match outcome.stop {
        Some(Stop::WallTime) => Some(format!(
            "wall time limit of {} ms exceeded",
            limits.wall_time_ms
        )),
        Some(Stop::CpuTime) => Some(cpu()),
        _ if outcome.exit == Exit::Signal(libc::SIGXCPU) => Some(cpu()),
        _ if outcome.cpu_ms > limits.cpu_time_ms => Some(cpu()),
        // RLIMIT_CPU's hard limit ends in SIGKILL.
        _ if outcome.exit == Exit::Signal(libc::SIGKILL)
            && outcome.cpu_ms >= limits.cpu_time_ms.div_ceil(1000) * 1000 =>
        {
            Some(cpu())
        }
        _ => None,
    }
}

fn memory_limit(outcome: &Outcome, language: &Language, limits: &ResolvedLimits) -> Option<String> {
    let message = || format!("memory limit of {} KiB exceeded", limits.memory_kb);
    let threshold = limits.memory_kb * MEMORY_THRESHOLD_PERCENT / 100;
    let stderr = String::from_utf8_lossy(&outcome.stderr.bytes);
    let oom_killed = outcome.exit == Exit::Signal(libc::SIGKILL) && outcome.stop.is_none();
    (outcome.max_rss_kb >= threshold || language.looks_out_of_memory(&stderr) || oom_killed)
        .then(message)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::supervise::Captured;

    fn outcome(exit: Exit) -> Outcome {
        Outcome {
            exit,
            stop: None,
            wall: Duration::from_millis(10),
            cpu_ms: 5,
            max_rss_kb: 9_000,
            stdout: Captured::default(),
            stderr: Captured::default(),
        }
    }

    fn judge(o: &Outcome) -> Status {
        classify(
            o,
            Language::find("python").unwrap(),
            &ResolvedLimits::DEFAULT,
        )
        .status
    }

    #[test]
    fn exits_and_signals() {
        assert_eq!(judge(&outcome(Exit::Code(0))), Status::Accepted);
        assert_eq!(judge(&outcome(Exit::Code(3))), Status::RuntimeError);
        assert_eq!(
            judge(&outcome(Exit::Signal(libc::SIGSEGV))),
            Status::RuntimeError
        );
        assert_eq!(
            judge(&outcome(Exit::Signal(libc::SIGXFSZ))),
            Status::RuntimeError
        );
    }

    #[test]
    fn limits_the_runner_enforced() {
        for (stop, status) in [
            (Stop::WallTime, Status::TimeLimitExceeded),
            (Stop::CpuTime, Status::TimeLimitExceeded),
            (Stop::Output, Status::OutputLimitExceeded),
            (Stop::Processes, Status::RuntimeError),
            (Stop::Terminated("SIGTERM"), Status::InternalError),
        ] {
            let mut o = outcome(Exit::Signal(libc::SIGKILL));
            o.stop = Some(stop);
            assert_eq!(judge(&o), status, "{stop:?}");
        }
        let mut o = outcome(Exit::Code(0));
        o.stdout.truncated = true;
        assert_eq!(judge(&o), Status::OutputLimitExceeded, "late overflow");
    }

    #[test]
    fn cpu_limits_from_the_kernel_or_rusage() {
        assert_eq!(
            judge(&outcome(Exit::Signal(libc::SIGXCPU))),
            Status::TimeLimitExceeded
        );
        let mut o = outcome(Exit::Signal(libc::SIGKILL));
        o.cpu_ms = ResolvedLimits::DEFAULT.cpu_time_ms;
        assert_eq!(
            judge(&o),
            Status::TimeLimitExceeded,
            "RLIMIT_CPU hard limit"
        );
        let mut o = outcome(Exit::Code(0));
        o.cpu_ms = ResolvedLimits::DEFAULT.cpu_time_ms + 1;
        assert_eq!(judge(&o), Status::TimeLimitExceeded, "over after exit");
    }

    #[test]
    fn memory_exhaustion_needs_a_failed_run_and_a_sign() {
        let limit = ResolvedLimits::DEFAULT.memory_kb;
        let mut o = outcome(Exit::Signal(libc::SIGSEGV));
        o.max_rss_kb = limit * 95 / 100;
        assert_eq!(judge(&o), Status::MemoryLimitExceeded, "RSS at the limit");
        let mut o = outcome(Exit::Code(0));
        o.max_rss_kb = limit;
        assert_eq!(judge(&o), Status::Accepted, "success is never MLE");
        let mut o = outcome(Exit::Code(1));
        o.stderr.bytes = b"Traceback...\nMemoryError\n".to_vec();
        assert_eq!(judge(&o), Status::MemoryLimitExceeded, "marker");
        assert_eq!(
            judge(&outcome(Exit::Signal(libc::SIGKILL))),
            Status::MemoryLimitExceeded,
            "OOM killer"
        );
        let mut o = outcome(Exit::Signal(libc::SIGXFSZ));
        o.max_rss_kb = limit;
        assert_eq!(
            judge(&o),
            Status::RuntimeError,
            "SIGXFSZ stays a runtime error"
        );
    }
}
