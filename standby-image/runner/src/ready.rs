//! Telling the parent "ready for a job" (`--ready-fd N`): the local
//! backend's pod-manager hands each sandbox's runner the write end of a
//! pipe as descriptor 3 and waits for one byte on it, instead of polling
//! `/proc` for a runner asleep on its stdin.
//!
//! - [`ReadyFd::adopt`] (at start, before anything else is opened or
//!   started) checks the descriptor is open for writing and marks it
//!   close-on-exec: neither a pre-started interpreter nor a job's program
//!   ever holds it, so when the runner dies the parent sees EOF.
//! - [`ReadyFd::signal`] writes [`READY_BYTE`] and closes it, right before
//!   the runner blocks reading its job (after any pre-start work): the
//!   byte means "can take a job now". EOF without the byte means the runner
//!   (or its sandbox) died or failed first.

use std::fs::File;
use std::io::{self, Write};

use crate::sys;

/// The byte written on the ready descriptor.
pub const READY_BYTE: u8 = b'R';

/// The inherited write end of the parent's readiness pipe.
#[derive(Debug)]
pub struct ReadyFd {
    file: File,
    fd: i32,
}

/// Why `--ready-fd` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--ready-fd {fd}: {reason}")]
pub struct ReadyFdError {
    fd: i32,
    reason: String,
}

impl ReadyFd {
    /// Takes ownership of inherited descriptor `fd` (once per process,
    /// before the runner opens anything itself).
    ///
    /// # Errors
    /// When `fd` is a standard stream, not open, or not open for writing.
    pub fn adopt(fd: i32) -> Result<Self, ReadyFdError> {
        let reason = |why: &str| ReadyFdError {
            fd,
            reason: why.to_string(),
        };
        match sys::adopt_inherited_writer(fd) {
            Ok(owned) => Ok(Self {
                file: File::from(owned),
                fd,
            }),
            Err(e) => Err(match e.raw_os_error() {
                Some(libc::EBADF) if fd < 3 => reason("0, 1 and 2 are the job's stdio"),
                Some(libc::EBADF) => reason("not an open descriptor"),
                Some(libc::EACCES) => reason("not open for writing"),
                Some(libc::EBUSY) => reason("already taken"),
                _ => reason(&e.to_string()),
            }),
        }
    }

    /// The descriptor's number.
    pub fn fd(&self) -> i32 {
        self.fd
    }

    /// Writes [`READY_BYTE`] and closes the descriptor.
    ///
    /// # Errors
    /// When the write fails (the reader is gone: `EPIPE`, as the runner
    /// ignores `SIGPIPE`); the descriptor is closed either way.
    pub fn signal(mut self) -> io::Result<()> {
        self.file.write_all(&[READY_BYTE])
    }
}
