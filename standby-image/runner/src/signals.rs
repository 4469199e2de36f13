//! Signals that ask the runner to stop in the middle of a job.
//!
//! While a job runs, SIGTERM, SIGINT and SIGHUP are blocked and read from a
//! signalfd that the supervisor polls with the program's pipes: the runner
//! then kills and reaps the program's processes and still answers with a
//! result line (`internal_error`) before exiting, instead of dying and
//! leaving orphans. While idle (waiting for its job line) the runner keeps
//! the default actions. Programs start with an empty signal mask (std resets
//! it between fork and exec).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals that stop a job.
const STOP: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// A signalfd for the stop signals, which are blocked in the thread that
/// installs it and in every thread it starts afterwards.
#[derive(Debug)]
pub struct StopSignals(SignalFd);

impl StopSignals {
    /// Blocks the stop signals in this thread and opens the signalfd.
    ///
    /// # Errors
    /// When the mask or the signalfd cannot be set up.
    pub fn install() -> io::Result<Self> {
        let mut mask = SigSet::empty();
        for sig in STOP {
            mask.add(sig);
        }
        mask.thread_block()?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Self(fd))
    }

    /// The descriptor to poll: readable once a stop signal is pending.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// The name of a pending stop signal, if one arrived (consumes it).
    pub fn received(&self) -> Option<&'static str> {
        let info = self.0.read_signal().ok()??;
        let sig = Signal::try_from(i32::try_from(info.ssi_signo).ok()?).ok()?;
        Some(sig.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_signal_is_read_not_delivered() {
        let signals = StopSignals::install().unwrap();
        assert_eq!(signals.received(), None);
        nix::sys::signal::raise(Signal::SIGTERM).unwrap();
        assert_eq!(signals.received(), Some("SIGTERM"));
        assert_eq!(signals.received(), None, "consumed");
    }
}
