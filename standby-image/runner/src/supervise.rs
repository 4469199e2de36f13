//! Watching a started program until it ends, and cleaning up after it.
//!
//! Threads, no async runtime: one waits for the program's exit (without
//! reaping it, so its pid and process group id stay reserved), one per
//! output pipe reads with a byte cap, and the calling thread is the timer:
//! it wakes every [`POLL_INTERVAL`] to check the wall clock and the
//! program's CPU time. When the program exits or a limit fires, everything
//! is killed and reaped *before* the output pipes are drained, so an orphan
//! holding a pipe open can never make the runner wait.

use std::fs::{self, File};
use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::reaper::{self, ReapedUsage};
use crate::spawn::Launched;
use crate::sys;

/// How often the timer checks the wall clock and the main process's CPU
/// time.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Every how many polls the CPU time of the whole process tree is summed
/// (a `/proc` scan, so less often).
pub const TREE_POLL_EVERY: u32 = 10;

/// How long to wait for a SIGKILLed program to exit, and for the output
/// readers to finish once every process is gone.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The limits the supervisor enforces itself.
#[derive(Debug, Clone, Copy)]
pub struct Watch {
    /// Wall-clock limit, counted from `started`.
    pub wall: Duration,
    /// CPU limit in milliseconds (the main process and its reaped children).
    pub cpu_ms: u64,
    /// Bytes kept per output stream.
    pub output_cap: usize,
    /// The program's uid when it is dedicated to programs (so everything it
    /// owns may be killed).
    pub dedicated_uid: Option<u32>,
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

enum Event {
    Exited(Instant),
    WaitFailed(io::Error),
    Overflow,
    ReaderDone,
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
) -> Result<Outcome, SuperviseError> {
    let pid = launched.pid;
    let (tx, rx) = mpsc::channel();
    spawn_waiter(pid, tx.clone());
    let stdout = spawn_reader(launched.stdout, watch.output_cap, tx.clone());
    let stderr = launched
        .stderr
        .map(|f| spawn_reader(f, watch.output_cap, tx.clone()));
    let readers = 1 + usize::from(stderr.is_some());
    drop(tx);

    let mut events = Events::default();
    let stop = watch_until_end(pid, started, watch, &rx, &mut events)?;
    // Still unreaped, the program's pid holds its process group id, so the
    // group cannot be a stranger's. A program that ended on its own needs
    // no /proc scan: whatever it left is now our child (see `reaper`).
    reaper::kill_everything(Some(pid), watch.dedicated_uid, stop.is_some());
    let exited_at = match events.exited_at {
        Some(t) => t,
        None => events.wait_exit(&rx)?,
    };
    let main = sys::wait4(pid, false)
        .map_err(SuperviseError::Wait)?
        .ok_or(SuperviseError::Unkillable)?;
    let rest: ReapedUsage = reaper::reap_all(watch.dedicated_uid).map_err(SuperviseError::Reap)?;
    events.wait_readers(&rx, readers);

    Ok(Outcome {
        exit: decode_status(main.status),
        stop,
        wall: exited_at.saturating_duration_since(started),
        cpu_ms: reaper::rusage_cpu_ms(&main.rusage) + rest.cpu_ms,
        max_rss_kb: (main.rusage.ru_maxrss.max(0) as u64).max(rest.max_rss_kb),
        stdout: take(&stdout),
        stderr: stderr.as_ref().map(take).unwrap_or_default(),
    })
}

#[derive(Default)]
struct Events {
    exited_at: Option<Instant>,
    readers_done: usize,
}

impl Events {
    /// Waits for the exit of a program that was just SIGKILLed.
    fn wait_exit(&mut self, rx: &Receiver<Event>) -> Result<Instant, SuperviseError> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Event::Exited(t)) => return Ok(t),
                Ok(Event::WaitFailed(e)) => return Err(SuperviseError::Wait(e)),
                Ok(Event::ReaderDone) => self.readers_done += 1,
                Ok(Event::Overflow) => {}
                Err(_) => return Err(SuperviseError::Unkillable),
            }
        }
    }

    /// Waits (bounded) for the readers to reach EOF; every writer is dead
    /// by now, so this only drains what the pipes still hold.
    fn wait_readers(&mut self, rx: &Receiver<Event>, readers: usize) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while self.readers_done < readers {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Event::ReaderDone) => self.readers_done += 1,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

/// The timer loop: returns when the program exits (`None`) or a limit
/// fires (`Some(stop)`).
fn watch_until_end(
    pid: i32,
    started: Instant,
    watch: &Watch,
    rx: &Receiver<Event>,
    events: &mut Events,
) -> Result<Option<Stop>, SuperviseError> {
    let wall_deadline = started + watch.wall;
    let mut polls = 0u32;
    loop {
        let now = Instant::now();
        if now >= wall_deadline {
            return Ok(Some(Stop::WallTime));
        }
        match rx.recv_timeout(POLL_INTERVAL.min(wall_deadline - now)) {
            Ok(Event::Exited(t)) => {
                events.exited_at = Some(t);
                return Ok(None);
            }
            Ok(Event::WaitFailed(e)) => return Err(SuperviseError::Wait(e)),
            Ok(Event::Overflow) => return Ok(Some(Stop::Output)),
            Ok(Event::ReaderDone) => events.readers_done += 1,
            Err(RecvTimeoutError::Timeout) => {
                polls = polls.wrapping_add(1);
                let cpu_ms = if polls.is_multiple_of(TREE_POLL_EVERY) {
                    Some(ticks_to_ms(reaper::descendants_cpu_ticks()))
                } else {
                    cpu_time_ms(pid)
                };
                if cpu_ms.is_some_and(|ms| ms >= watch.cpu_ms) {
                    return Ok(Some(Stop::CpuTime));
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(SuperviseError::Wait(io::Error::other(
                    "waiter thread vanished",
                )));
            }
        }
    }
}

fn spawn_waiter(pid: i32, tx: Sender<Event>) {
    thread::spawn(move || {
        let event = match sys::wait_exit_keep_zombie(pid) {
            Ok(()) => Event::Exited(Instant::now()),
            Err(e) => Event::WaitFailed(e),
        };
        let _ = tx.send(event);
    });
}

type Shared = Arc<Mutex<Captured>>;

fn spawn_reader(mut pipe: File, cap: usize, tx: Sender<Event>) -> Shared {
    let shared = Shared::default();
    let buf = Arc::clone(&shared);
    thread::spawn(move || {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut told = false;
        loop {
            let n = match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let mut c = buf.lock().unwrap_or_else(PoisonError::into_inner);
            let room = cap.saturating_sub(c.bytes.len());
            c.bytes.extend_from_slice(&chunk[..n.min(room)]);
            if n > room {
                c.truncated = true;
                if !told {
                    told = true;
                    let _ = tx.send(Event::Overflow);
                }
            }
        }
        let _ = tx.send(Event::ReaderDone);
    });
    shared
}

fn take(shared: &Shared) -> Captured {
    std::mem::take(&mut *shared.lock().unwrap_or_else(PoisonError::into_inner))
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
fn cpu_time_ms(pid: i32) -> Option<u64> {
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
