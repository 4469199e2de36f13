//! Killing and reaping everything a program left behind.
//!
//! The runner is a child subreaper ([`become_subreaper`]), so every orphan
//! of a program (a double-forked daemon, a `setsid` grandchild) is
//! reparented to it rather than to init. Hence: once the runner has no
//! children left, no descendant is left. [`kill_everything`] kills the
//! program's process group, everything the dedicated uid owns, and every
//! process whose parent chain leads to the runner; [`reap_all`] repeats
//! that and reaps until `wait` says `ECHILD`.
//!
//! Each takes a `keep`: the pid of a process to spare (a later step's
//! pre-started program, waiting as the same uid; see `prestart`). It is
//! neither killed nor reaped, nor counted in [`descendants_usage`]; the
//! dedicated uid's processes are then found in `/proc` instead of with
//! `kill(-1)`, and reaping ends when `keep` is the runner's last child.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::sys;

/// How long [`reap_all`] keeps trying before giving up.
pub const REAP_DEADLINE: Duration = Duration::from_secs(10);

/// Makes orphaned descendants children of the runner.
///
/// # Errors
/// When `prctl` fails.
pub fn become_subreaper() -> io::Result<()> {
    Ok(nix::sys::prctl::set_child_subreaper(true)?)
}

/// Resource usage of descendants collected by [`reap_all`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReapedUsage {
    /// CPU time (user + system) in milliseconds.
    pub cpu_ms: u64,
    /// Largest peak RSS in KiB.
    pub max_rss_kb: u64,
}

/// SIGKILLs the process group `pgid`, everything `dedicated_uid` owns, and,
/// with `scan`, every descendant of the runner found in `/proc`; never
/// `keep`.
///
/// Without `scan`, descendants outside the group are left to [`reap_all`],
/// which finds them as the runner's own children once their parents are
/// gone (that is what the subreaper is for) and only then scans `/proc`.
pub fn kill_everything(
    pgid: Option<i32>,
    dedicated_uid: Option<u32>,
    scan: bool,
    keep: Option<i32>,
) {
    let kill = |pid: i32| {
        if Some(pid) != keep {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    };
    if let Some(pgid) = pgid.filter(|&g| Some(g) != keep) {
        let _ = signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    match (dedicated_uid, keep) {
        (Some(uid), None) => {
            let _ = sys::kill_all_owned_by(uid);
        }
        (Some(uid), Some(_)) => owned_by(uid).into_iter().for_each(kill),
        (None, _) => {}
    }
    if scan {
        for p in descendants(std::process::id() as i32) {
            kill(p.pid);
        }
    }
}

/// Kills and reaps every child but `keep` until none is left (or
/// [`REAP_DEADLINE`]).
///
/// # Errors
/// `TimedOut` when children were still alive at the deadline.
pub fn reap_all(dedicated_uid: Option<u32>, keep: Option<i32>) -> io::Result<ReapedUsage> {
    let deadline = Instant::now() + REAP_DEADLINE;
    let mut usage = ReapedUsage::default();
    loop {
        match reap_one(keep)? {
            Reap::Reaped(rusage) => usage.add(&rusage),
            Reap::Alive => {
                if Instant::now() > deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "descendants still alive after SIGKILL",
                    ));
                }
                kill_everything(None, dedicated_uid, true, keep);
                // Give the killed processes a moment to become zombies.
                std::thread::sleep(Duration::from_millis(1));
            }
            Reap::NoneLeft => return Ok(usage),
        }
    }
}

/// What one non-blocking reap found.
enum Reap {
    Reaped(libc::rusage),
    Alive,
    NoneLeft,
}

/// Reaps one exited child but `keep`, if any. (`wait4(-1)` cannot leave
/// one child out, so with `keep` the children are listed from `/proc`.)
fn reap_one(keep: Option<i32>) -> io::Result<Reap> {
    let Some(keep) = keep else {
        return match sys::wait4(-1, true) {
            Ok(Some(reaped)) => Ok(Reap::Reaped(reaped.rusage)),
            Ok(None) => Ok(Reap::Alive),
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(Reap::NoneLeft),
            Err(e) => Err(e),
        };
    };
    let me = std::process::id() as i32;
    let children: Vec<i32> = process_table()
        .into_iter()
        .filter(|p| p.ppid == me && p.pid != keep)
        .map(|p| p.pid)
        .collect();
    if children.is_empty() {
        return Ok(Reap::NoneLeft);
    }
    for pid in children {
        match sys::wait4(pid, true) {
            Ok(Some(reaped)) => return Ok(Reap::Reaped(reaped.rusage)),
            // Reaped already (listed while exiting): look again.
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(Reap::Alive),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Reap::Alive)
}

/// Pids of the processes whose real, effective or saved uid is `uid`
/// (those `kill(-1)` as `uid` reaches).
fn owned_by(uid: u32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .is_some_and(|ids| ids.split_whitespace().take(3).any(|v| v == uid.to_string()))
            })
        })
        .collect()
}

impl ReapedUsage {
    fn add(&mut self, ru: &libc::rusage) {
        self.cpu_ms += rusage_cpu_ms(ru);
        self.max_rss_kb = self.max_rss_kb.max(ru.ru_maxrss.max(0) as u64);
    }
}

/// User + system CPU time of a `rusage`, in milliseconds.
pub fn rusage_cpu_ms(ru: &libc::rusage) -> u64 {
    timeval_ms(ru.ru_utime) + timeval_ms(ru.ru_stime)
}

fn timeval_ms(tv: libc::timeval) -> u64 {
    tv.tv_sec.max(0) as u64 * 1000 + tv.tv_usec.max(0) as u64 / 1000
}

/// One line of `/proc/<pid>/stat`, the fields the runner needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The process id.
    pub pid: i32,
    /// Its parent.
    pub ppid: i32,
    /// utime + stime + cutime + cstime, in clock ticks.
    pub cpu_ticks: u64,
    /// Its number of threads.
    pub threads: u64,
}

/// Every live process whose parent chain leads to `root`.
pub fn descendants(root: i32) -> Vec<ProcStat> {
    let table = process_table();
    let parent_of: HashMap<i32, i32> = table.iter().map(|p| (p.pid, p.ppid)).collect();
    table
        .into_iter()
        .filter(|p| {
            let mut cur = p.pid;
            // Bounded walk: a pid chain cannot be longer than the table.
            for _ in 0..=parent_of.len() {
                match parent_of.get(&cur) {
                    Some(&pp) if pp == root => return true,
                    Some(&pp) if pp > 1 => cur = pp,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// What the runner's descendants use right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeUsage {
    /// CPU time in clock ticks: each process's own time plus that of the
    /// children it reaped, so every process, dead or alive, counts once.
    pub cpu_ticks: u64,
    /// Tasks (threads of every process).
    pub tasks: u64,
}

/// Sums [`TreeUsage`] over every descendant of the runner but `keep`.
pub fn descendants_usage(keep: Option<i32>) -> TreeUsage {
    descendants(std::process::id() as i32)
        .iter()
        .filter(|p| Some(p.pid) != keep)
        .fold(TreeUsage::default(), |acc, p| TreeUsage {
            cpu_ticks: acc.cpu_ticks + p.cpu_ticks,
            tasks: acc.tasks + p.threads,
        })
}

/// Every process in `/proc`.
fn process_table() -> Vec<ProcStat> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| parse_stat(pid, &fs::read_to_string(format!("/proc/{pid}/stat")).ok()?))
        .collect()
}

/// Parses a `/proc/<pid>/stat` line (the comm field may hold spaces and
/// parentheses, so fields are counted after the last `)`).
pub fn parse_stat(pid: i32, stat: &str) -> Option<ProcStat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13)
    // cstime(14) priority(15) nice(16) num_threads(17).
    let cpu_ticks = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<i64>().ok().map(|v| v.max(0) as u64))
        .sum::<Option<u64>>()?;
    Some(ProcStat {
        pid,
        ppid: fields.get(1)?.parse().ok()?,
        cpu_ticks,
        threads: fields.get(17)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_parsed_after_a_tricky_comm() {
        let stat = "42 (py (x)) R 77 42 42 0 -1 0 0 0 0 0 150 50 7 3 20 0 4 0";
        let expected = ProcStat {
            pid: 42,
            ppid: 77,
            cpu_ticks: 210,
            threads: 4,
        };
        assert_eq!(parse_stat(42, stat), Some(expected));
        assert_eq!(parse_stat(42, "42 (short) R 1"), None);
        assert_eq!(parse_stat(42, "garbage"), None);
    }

    #[test]
    fn our_own_children_are_descendants() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let found: Vec<i32> = descendants(std::process::id() as i32)
            .iter()
            .map(|p| p.pid)
            .collect();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.contains(&pid), "{found:?} lacks {pid}");
    }

    #[test]
    fn timevals_become_milliseconds() {
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 500_999,
        };
        assert_eq!(timeval_ms(tv), 1500);
    }
}
