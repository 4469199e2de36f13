//! Watching a started program until it ends, and cleaning up after it.
//!
//! One thread, no async runtime: the supervisor `poll`s the program's exit
//! (a pidfd, which does not reap it, so its pid and process group id stay
//! reserved) and its output pipes together, reading each pipe up to a byte
//! cap, and wakes every [`POLL_INTERVAL`] to check the wall clock and the
//! CPU time. When the program exits or a limit fires, everything is killed
//! and reaped *before* the output pipes are drained, so an orphan holding a
//! pipe open can never make the runner wait. (Where pidfds are missing, a
//! helper thread waits for the exit and signals it through a pipe.)

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::reaper::{self, ReapedUsage};
use crate::signals::StopSignals;
use crate::spawn::Launched;
use crate::sys;

/// How often the timer checks the wall clock and the main process's CPU
/// time.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Every how many CPU checks the whole process tree's CPU time is summed
/// instead of the main process's (a `/proc` scan, so less often).
pub const TREE_POLL_EVERY: u32 = 10;

/// How long to wait for a SIGKILLed program to exit, and for the output
/// pipes to reach EOF once every process is gone.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read from a pipe at a time.
const CHUNK: usize = 64 * 1024;

/// The limits the supervisor enforces itself.
#[derive(Debug, Clone, Copy)]
pub struct Watch {
    /// Wall-clock limit, counted from `started`.
    pub wall: Duration,
    /// CPU limit in milliseconds (the whole process tree).
    pub cpu_ms: u64,
    /// Bytes kept per output stream.
    pub output_cap: usize,
    /// The program's uid when it is dedicated to programs (so everything it
    /// owns may be killed).
    pub dedicated_uid: Option<u32>,
    /// Tasks the program's tree may have, when `RLIMIT_NPROC` cannot hold
    /// it there exactly (checked with the tree's CPU time).
    pub max_tasks: Option<u64>,
    /// A process that is not the program's and must outlive it: a later
    /// step's pre-started program, waiting (see `reaper`).
    pub keep: Option<i32>,
}

/// Why the supervisor ended the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The wall-clock limit passed.
    WallTime,
    /// The CPU limit passed.
    CpuTime,
    /// An output stream passed its cap.
    Output,
    /// The program's tree had more tasks than `max_processes`.
    Processes,
    /// The runner itself was told to stop (the signal's name).
    Terminated(&'static str),
}

/// How the program's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// What was read from one output stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The first bytes, at most the cap.
    pub bytes: Vec<u8>,
    /// Whether more arrived than was kept.
    pub truncated: bool,
}

/// Everything known about a finished program.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How the main process ended.
    pub exit: Exit,
    /// Whether (and why) the supervisor killed it.
    pub stop: Option<Stop>,
    /// From start to the main process's exit.
    pub wall: Duration,
    /// CPU time of the main process and every descendant, in ms.
    pub cpu_ms: u64,
    /// Peak RSS of the largest process, in KiB.
    pub max_rss_kb: u64,
    /// Its stdout (with stderr when merged).
    pub stdout: Captured,
    /// Its stderr (empty when merged).
    pub stderr: Captured,
}

/// Why supervision failed (the program's fate is unknown).
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// Waiting for the program failed.
    #[error("waiting for the program failed: {0}")]
    Wait(#[source] io::Error),
    /// The program did not die after SIGKILL.
    #[error("the program did not exit {}s after SIGKILL", SETTLE_TIMEOUT.as_secs())]
    Unkillable,
    /// Descendants could not all be reaped.
    #[error("cleaning up the program's processes failed: {0}")]
    Reap(#[source] io::Error),
}

/// Supervises `launched` (started at `started`) under `watch` until it and
/// every process it created are gone.
///
/// # Errors
/// See [`SuperviseError`].
pub fn supervise(
    launched: Launched,
    started: Instant,
    watch: &Watch,
    signals: Option<&StopSignals>,
) -> Result<Outcome, SuperviseError> {
    let pid = launched.pid;
    let cpu_before_ms = launched.cpu_before_ms;
    let exit = match ExitWatch::new(pid) {
        Ok(exit) => exit,
        Err(e) => {
            // Never leave a program running unsupervised.
            reaper::kill_everything(Some(pid), watch.dedicated_uid, true, watch.keep);
            let _ = sys::wait4(pid, false);
            return Err(SuperviseError::Wait(e));
        }
    };
    let mut streams = vec![Stream::new(launched.stdout, watch.output_cap)];
    if let Some(stderr) = launched.stderr {
        streams.push(Stream::new(stderr, watch.output_cap));
    }

    let end = watch_until_end(
        (pid, cpu_before_ms),
        started,
        watch,
        &exit,
        signals,
        &mut streams,
    );
    let (stop, exited_at) = match end {
        Ok(end) => end,
        Err(e) => {
            reaper::kill_everything(Some(pid), watch.dedicated_uid, true, watch.keep);
            let _ = sys::wait4(pid, false);
            return Err(e);
        }
    };
    // Still unreaped, the program's pid holds its process group id, so the
    // group cannot be a stranger's. A program that ended on its own needs
    // neither the /proc scan nor the kill-as-uid helper here: whatever it
    // left is now our child, and `reap_all` uses both if any child remains
    // (see `reaper`).
    let stopped = stop.is_some();
    reaper::kill_everything(
        Some(pid),
        watch.dedicated_uid.filter(|_| stopped),
        stopped,
        watch.keep,
    );
    let exited_at = match exited_at {
        Some(t) => t,
        None => exit.wait(SETTLE_TIMEOUT)?,
    };
    let main = sys::wait4(pid, false)
        .map_err(SuperviseError::Wait)?
        .ok_or(SuperviseError::Unkillable)?;
    let rest: ReapedUsage =
        reaper::reap_all(watch.dedicated_uid, watch.keep).map_err(SuperviseError::Reap)?;
    drain(&mut streams, SETTLE_TIMEOUT);

    let mut streams = streams.into_iter().map(|s| s.captured);
    Ok(Outcome {
        exit: decode_status(main.status),
        stop,
        wall: exited_at.saturating_duration_since(started),
        cpu_ms: (reaper::rusage_cpu_ms(&main.rusage) + rest.cpu_ms).saturating_sub(cpu_before_ms),
        max_rss_kb: (main.rusage.ru_maxrss.max(0) as u64).max(rest.max_rss_kb),
        stdout: streams.next().unwrap_or_default(),
        stderr: streams.next().unwrap_or_default(),
    })
}

/// The poll loop: returns when the program exits (no stop, with the exit
/// time) or a limit fires (the stop). The CPU time is checked every
/// [`POLL_INTERVAL`] whatever the pipes do, so a program that keeps writing
/// cannot keep the check from running. CPU time is counted from the
/// program's `cpu_before_ms` on (what a pre-started interpreter used
/// before the job arrived is not the job's).
fn watch_until_end(
    (pid, cpu_before_ms): (i32, u64),
    started: Instant,
    watch: &Watch,
    exit: &ExitWatch,
    signals: Option<&StopSignals>,
    streams: &mut [Stream],
) -> Result<(Option<Stop>, Option<Instant>), SuperviseError> {
    let wall_deadline = started + watch.wall;
    let mut next_check = started + POLL_INTERVAL;
    let mut checks = 0u32;
    loop {
        let now = Instant::now();
        if now >= wall_deadline {
            return Ok((Some(Stop::WallTime), None));
        }
        let wake = next_check.min(wall_deadline).saturating_duration_since(now);
        let ready = poll_ready(exit.fd(), signals.map(StopSignals::fd), streams, wake)
            .map_err(|e| SuperviseError::Wait(e.into()))?;
        if ready.signalled
            && let Some(name) = signals.and_then(StopSignals::received)
        {
            return Ok((Some(Stop::Terminated(name)), None));
        }
        let mut overflow = false;
        for (stream, readable) in streams.iter_mut().zip(&ready.streams) {
            if *readable {
                overflow |= stream.read_once();
            }
        }
        if overflow {
            return Ok((Some(Stop::Output), None));
        }
        if ready.exited {
            return Ok((None, Some(Instant::now())));
        }
        let now = Instant::now();
        if now >= next_check {
            next_check = now + POLL_INTERVAL;
            checks = checks.wrapping_add(1);
            let cpu_ms = if checks.is_multiple_of(TREE_POLL_EVERY) {
                let tree = reaper::descendants_usage(watch.keep);
                if watch.max_tasks.is_some_and(|max| tree.tasks > max) {
                    return Ok((Some(Stop::Processes), None));
                }
                Some(ticks_to_ms(tree.cpu_ticks))
            } else {
                cpu_time_ms(pid)
            };
            if cpu_ms.is_some_and(|ms| ms.saturating_sub(cpu_before_ms) >= watch.cpu_ms) {
                return Ok((Some(Stop::CpuTime), None));
            }
        }
    }
}

/// What one `poll` reported.
struct Ready {
    exited: bool,
    signalled: bool,
    streams: Vec<bool>,
    timed_out: bool,
}

/// Polls `exit` and `signal` (if any) and the open `streams` for at most
/// `timeout`.
fn poll_ready(
    exit: Option<BorrowedFd<'_>>,
    signal: Option<BorrowedFd<'_>>,
    streams: &[Stream],
    timeout: Duration,
) -> nix::Result<Ready> {
    let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(4);
    fds.extend(exit.map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
    fds.extend(signal.map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
    let open: Vec<usize> = (0..streams.len()).filter(|&i| streams[i].open).collect();
    fds.extend(
        open.iter()
            .map(|&i| PollFd::new(streams[i].file.as_fd(), PollFlags::POLLIN)),
    );
    let n = match poll(&mut fds, poll_timeout(timeout)) {
        Ok(n) => n,
        Err(Errno::EINTR) => 0,
        Err(e) => return Err(e),
    };
    let fired = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
    let mut next = fds.iter();
    let exited = exit.is_some() && next.next().is_some_and(fired);
    let signalled = signal.is_some() && next.next().is_some_and(fired);
    let mut ready = Ready {
        exited,
        signalled,
        streams: vec![false; streams.len()],
        timed_out: n == 0,
    };
    for (&i, fd) in open.iter().zip(next) {
        ready.streams[i] = fired(fd);
    }
    Ok(ready)
}

/// A poll timeout in whole milliseconds, rounded up so a sub-millisecond
/// remainder never becomes a busy loop.
fn poll_timeout(d: Duration) -> PollTimeout {
    let ms = d.as_micros().div_ceil(1000);
    PollTimeout::from(u16::try_from(ms).unwrap_or(u16::MAX))
}

/// Reads what is left in the pipes until EOF, for at most `timeout`
/// (every writer is dead by now, unless one escaped our process tree).
fn drain(streams: &mut [Stream], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while streams.iter().any(|s| s.open) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let Ok(ready) = poll_ready(None, None, streams, left) else {
            return;
        };
        if ready.timed_out {
            return;
        }
        for (stream, readable) in streams.iter_mut().zip(&ready.streams) {
            if *readable {
                stream.read_once();
            }
        }
    }
}

/// One output pipe and what was kept of it.
struct Stream {
    file: File,
    cap: usize,
    open: bool,
    captured: Captured,
    chunk: Vec<u8>,
}

impl Stream {
    fn new(file: File, cap: usize) -> Self {
        Self {
            file,
            cap,
            open: true,
            captured: Captured::default(),
            chunk: vec![0; CHUNK],
        }
    }

    /// One `read` (the pipe was reported readable, so it cannot block);
    /// returns whether this read passed the cap for the first time.
    fn read_once(&mut self) -> bool {
        let n = match self.file.read(&mut self.chunk) {
            Ok(0) => {
                self.open = false;
                return false;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return false,
            Err(_) => {
                self.open = false;
                return false;
            }
        };
        let c = &mut self.captured;
        let room = self.cap.saturating_sub(c.bytes.len());
        c.bytes.extend_from_slice(&self.chunk[..n.min(room)]);
        let first_overflow = n > room && !c.truncated;
        c.truncated |= n > room;
        first_overflow
    }
}

/// Becomes readable when the program's main process has exited, without
/// reaping it.
enum ExitWatch {
    /// A pidfd (Linux 5.3+).
    Pidfd(OwnedFd),
    /// The read end of a pipe a helper thread closes after `waitid`.
    Thread(File),
}

impl ExitWatch {
    fn new(pid: i32) -> io::Result<Self> {
        match sys::pidfd_open(pid) {
            Ok(fd) => Ok(Self::Pidfd(fd)),
            Err(_) => Self::with_thread(pid),
        }
    }

    fn with_thread(pid: i32) -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut write = File::from(write);
        thread::Builder::new()
            .name("exit-watch".into())
            .spawn(move || {
                let _ = sys::wait_exit_keep_zombie(pid);
                let _ = write.write_all(b"x");
            })?;
        Ok(Self::Thread(File::from(read)))
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(match self {
            Self::Pidfd(fd) => fd.as_fd(),
            Self::Thread(f) => f.as_fd(),
        })
    }

    /// Waits for the exit of a program that was just SIGKILLed.
    fn wait(&self, timeout: Duration) -> Result<Instant, SuperviseError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SuperviseError::Unkillable);
            }
            let ready = poll_ready(self.fd(), None, &[], left)
                .map_err(|e| SuperviseError::Wait(e.into()))?;
            if ready.exited {
                return Ok(Instant::now());
            }
        }
    }
}

/// Decodes a raw wait status.
pub fn decode_status(status: i32) -> Exit {
    if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    }
}

/// CPU time of `pid` and its reaped children from `/proc/<pid>/stat`, in ms.
pub(crate) fn cpu_time_ms(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ticks_to_ms(reaper::parse_stat(pid, &stat)?.cpu_ticks))
}

fn ticks_to_ms(ticks: u64) -> u64 {
    ticks * 1000 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit_watch_fires_on_exit(make: fn(i32) -> io::Result<ExitWatch>) {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "read x"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let watch = make(child.id() as i32).unwrap();
        let alive = poll_ready(watch.fd(), None, &[], Duration::from_millis(1)).unwrap();
        assert!(!alive.exited, "fired while the child runs");
        drop(child.stdin.take()); // EOF: the child exits
        watch.wait(Duration::from_secs(30)).unwrap();
        // `read` at EOF fails: exit code 1, collected only now.
        assert_eq!(
            child.wait().unwrap().code(),
            Some(1),
            "reapable after the watch"
        );
    }

    #[test]
    fn pidfd_exit_watch() {
        exit_watch_fires_on_exit(|pid| sys::pidfd_open(pid).map(ExitWatch::Pidfd));
    }

    #[test]
    fn thread_exit_watch() {
        exit_watch_fires_on_exit(ExitWatch::with_thread);
    }

    #[test]
    fn poll_timeouts_round_up() {
        assert_eq!(
            poll_timeout(Duration::from_micros(1)),
            PollTimeout::from(1u16)
        );
        assert_eq!(
            poll_timeout(Duration::from_millis(10)),
            PollTimeout::from(10u16)
        );
        assert_eq!(
            poll_timeout(Duration::from_secs(3600)),
            PollTimeout::from(u16::MAX)
        );
    }

    #[test]
    fn streams_keep_the_first_bytes_and_flag_the_overflow_once() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut w = File::from(w);
        w.write_all(b"0123456789").unwrap();
        let mut s = Stream::new(File::from(r), 4);
        assert!(s.read_once(), "first overflow");
        w.write_all(b"more").unwrap();
        assert!(!s.read_once(), "reported once");
        drop(w);
        assert!(!s.read_once());
        assert!(!s.open, "EOF closes the stream");
        assert_eq!(s.captured.bytes, b"0123");
        assert!(s.captured.truncated);
    }

    #[test]
    fn wait_statuses_decode() {
        assert_eq!(decode_status(3 << 8), Exit::Code(3));
        assert_eq!(decode_status(0), Exit::Code(0));
        assert_eq!(decode_status(libc::SIGSEGV), Exit::Signal(libc::SIGSEGV));
        assert_eq!(
            decode_status(libc::SIGKILL | 0x80),
            Exit::Signal(libc::SIGKILL)
        );
    }
}
