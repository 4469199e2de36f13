//! A sandbox process started by [`crate::spawn`], driven from tokio: its
//! stdio as async pipes, waiting for its exit through its pidfd (readable
//! once it has exited), and killed and reaped when dropped unreaped.
//!
//! The pid stays ours until we reap it (no one else waits for it: tokio
//! reaps only its own children), so signalling it by pid cannot hit
//! another process.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::spawn::{self, Identity};

/// A running (or exited, not yet reaped) child process.
#[derive(Debug)]
pub struct Process {
    pid: Pid,
    /// `None` once handed to a background reaper by `Drop`.
    pidfd: Option<AsyncFd<OwnedFd>>,
    /// Set once reaped.
    status: Option<ExitStatus>,
    /// Whether this handle is a background reaper's (made by `Drop`): if
    /// that task is dropped unfinished (the runtime shutting down), this
    /// handle's own `Drop` reaps on a thread instead of spawning yet
    /// another task, which a shut-down runtime would drop at once, and so
    /// on without end.
    in_reaper: bool,
}

/// A started process with its stdio pipes.
#[derive(Debug)]
pub struct Started {
    /// The process.
    pub process: Process,
    /// Its stdin.
    pub stdin: pipe::Sender,
    /// Its stdout.
    pub stdout: pipe::Receiver,
    /// Its stderr.
    pub stderr: pipe::Receiver,
    /// The read end of its readiness pipe, when started with one: the
    /// process got the write end as descriptor [`spawn::READY_FD`].
    pub ready: Option<pipe::Receiver>,
}

/// Starts `program` with `argv` (`argv[0]` included) and an empty
/// environment in `/`, after joining the cgroups of `cgroup_procs` and
/// taking `identity` (see [`crate::spawn`]); with `ready_pipe`, it also
/// gets the write end of a pipe as descriptor [`spawn::READY_FD`]
/// ([`Started::ready`] reads it). Must be called inside a tokio runtime.
///
/// # Errors
/// The process could not be started; the message names the failing step.
pub fn start(
    program: &CStr,
    argv: &[CString],
    cgroup_procs: &[File],
    identity: Option<Identity>,
    ready_pipe: bool,
) -> io::Result<Started> {
    let spawned = spawn::spawn(&spawn::Command {
        program,
        argv,
        cgroup_procs,
        identity,
        ready_pipe,
    })?;
    // From here a failure drops `process`, which kills and reaps it.
    let mut process = Process {
        pid: spawned.pid,
        pidfd: None,
        status: None,
        in_reaper: false,
    };
    process.pidfd = Some(spawn::async_pidfd(spawned.pidfd)?);
    Ok(Started {
        stdin: pipe::Sender::from_owned_fd(spawned.stdin)?,
        stdout: pipe::Receiver::from_owned_fd(spawned.stdout)?,
        stderr: pipe::Receiver::from_owned_fd(spawned.stderr)?,
        ready: spawned
            .ready
            .map(pipe::Receiver::from_owned_fd)
            .transpose()?,
        process,
    })
}

impl Process {
    /// The pid, until the process has been reaped.
    pub fn id(&self) -> Option<u32> {
        self.status.is_none().then_some(self.pid.as_raw() as u32)
    }

    /// Reaps the process if it has exited.
    ///
    /// # Errors
    /// `waitpid` failed.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let status = exit_status(waitpid(self.pid, Some(WaitPidFlag::WNOHANG))?);
        self.status = status;
        Ok(status)
    }

    /// Sends SIGKILL (nothing once reaped).
    ///
    /// # Errors
    /// The signal could not be sent.
    pub fn start_kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        kill(self.pid, Signal::SIGKILL).map_err(io::Error::from)
    }

    /// Waits for the process to exit and reaps it.
    ///
    /// # Errors
    /// Waiting on the pidfd or `waitpid` failed.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            let pidfd = self
                .pidfd
                .as_ref()
                .ok_or_else(|| io::Error::other("process handed to its reaper"))?;
            pidfd.readable().await?.clear_ready();
        }
    }
}

impl Drop for Process {
    /// Kills the process if it was not reaped, and reaps it in the
    /// background (on the tokio runtime if there is one, else a thread).
    fn drop(&mut self) {
        if self.status.is_some() || matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = self.start_kill();
        let mut orphan = Process {
            pid: self.pid,
            pidfd: self.pidfd.take(),
            status: None,
            in_reaper: true,
        };
        let handle = tokio::runtime::Handle::try_current();
        if let (Ok(handle), true, false) = (handle, orphan.pidfd.is_some(), self.in_reaper) {
            handle.spawn(async move {
                let _ = orphan.wait().await;
                orphan.done();
            });
        } else {
            std::thread::spawn(move || {
                let _ = waitpid(orphan.pid, None);
                orphan.done();
            });
        }
    }
}

impl Process {
    /// Marks the process as reaped, or as past reaping (`waitpid` failed):
    /// its `Drop` then does nothing.
    fn done(&mut self) {
        self.status.get_or_insert(ExitStatus::from_raw(0));
    }
}

/// The exit status in a `waitpid` result (`None`: still running).
fn exit_status(status: WaitStatus) -> Option<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
        WaitStatus::Signaled(_, signal, core) => Some(ExitStatus::from_raw(
            signal as i32 | if core { 0x80 } else { 0 },
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::cgroup::{CgroupManager, Limits};

    fn argv(args: &[&str]) -> Vec<CString> {
        args.iter().map(|a| CString::new(*a).unwrap()).collect()
    }

    fn start_plain(args: &[&str]) -> io::Result<Started> {
        let program = CString::new(args[0]).unwrap();
        start(&program, &argv(args), &[], None, false)
    }

    async fn read_all(mut pipe: pipe::Receiver) -> String {
        let mut out = String::new();
        pipe.read_to_string(&mut out).await.unwrap();
        out
    }

    /// The value of `field:` in a /proc status text.
    fn field<'a>(status: &'a str, field: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in {status}"))
            .trim()
    }

    #[test]
    fn wait_statuses_become_exit_statuses() {
        let pid = Pid::from_raw(1);
        assert_eq!(
            exit_status(WaitStatus::Exited(pid, 3)).and_then(|s| s.code()),
            Some(3)
        );
        let killed = exit_status(WaitStatus::Signaled(pid, Signal::SIGKILL, false));
        assert_eq!(killed.and_then(|s| s.signal()), Some(9));
        assert_eq!(exit_status(WaitStatus::StillAlive), None);
    }

    #[tokio::test]
    async fn stdio_environment_directory_and_exit_status() {
        let script = "read l; echo \"out:$l\"; echo err >&2; echo \"cwd:$(pwd -P)\"; \
                      /usr/bin/env; exit 3";
        let mut p = start_plain(&["/bin/sh", "-c", script]).unwrap();
        p.stdin.write_all(b"hi\n").await.unwrap();
        drop(p.stdin);
        let (out, err) = tokio::join!(read_all(p.stdout), read_all(p.stderr));
        // `sh` itself exports PWD; nothing else comes from the pod-manager.
        assert_eq!(out, "out:hi\ncwd:/\nPWD=/\n");
        assert_eq!(err, "err\n");
        let status = p.process.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(p.process.id(), None, "reaped");
    }

    #[tokio::test]
    async fn signals_start_unblocked_uncaught_and_sigpipe_not_ignored() {
        let p = start_plain(&["/bin/cat", "/proc/self/status"]).unwrap();
        let status = read_all(p.stdout).await;
        assert_eq!(field(&status, "SigBlk"), "0000000000000000");
        assert_eq!(field(&status, "SigCgt"), "0000000000000000");
        // Ignored signals stay ignored across exec (as with the standard
        // library's spawn), except SIGPIPE, which Rust programs ignore.
        let ours = std::fs::read_to_string("/proc/self/status").unwrap();
        let ignored = |s: &str| u64::from_str_radix(field(s, "SigIgn"), 16).unwrap();
        let sigpipe = 1u64 << (libc::SIGPIPE - 1);
        assert_eq!(ignored(&status), ignored(&ours) & !sigpipe, "{status}");
    }

    /// What the shell started sees at descriptor 3: `none`, or its link.
    const SHOW_FD_3: &str =
        "if [ -e /proc/$$/fd/3 ]; then /usr/bin/readlink /proc/$$/fd/3; else echo none; fi";

    #[tokio::test]
    async fn the_ready_pipe_is_descriptor_3_only_when_asked() {
        let p = start_plain(&["/bin/sh", "-c", SHOW_FD_3]).unwrap();
        assert!(p.ready.is_none());
        assert_eq!(read_all(p.stdout).await, "none\n");

        let program = CString::new("/bin/sh").unwrap();
        let args = argv(&["sh", "-c", SHOW_FD_3]);
        let p = start(&program, &args, &[], None, true).unwrap();
        let ready = p.ready.expect("a ready pipe");
        let ours = nix::sys::stat::fstat(&ready).unwrap().st_ino;
        assert_eq!(read_all(p.stdout).await, format!("pipe:[{ours}]\n"));
    }

    #[tokio::test]
    async fn the_ready_byte_arrives_before_the_job_and_eof_after_close() {
        let program = CString::new("/bin/sh").unwrap();
        let script = "printf R >&3; exec 3>&-; read l; echo \"got:$l\"";
        let mut p = start(&program, &argv(&["sh", "-c", script]), &[], None, true).unwrap();
        let mut ready = p.ready.take().expect("a ready pipe");
        let mut byte = [0u8; 2];
        assert_eq!(ready.read(&mut byte).await.unwrap(), 1);
        assert_eq!(byte[0], b'R');
        // Closed by the program, which still runs (blocked on stdin).
        assert_eq!(ready.read(&mut byte).await.unwrap(), 0);
        assert_eq!(p.process.try_wait().unwrap(), None);
        p.stdin.write_all(b"job\n").await.unwrap();
        assert_eq!(read_all(p.stdout).await, "got:job\n");
        assert_eq!(p.process.wait().await.unwrap().code(), Some(0));
    }

    #[tokio::test]
    async fn a_process_dying_before_ready_gives_eof_not_a_hang() {
        let program = CString::new("/bin/sh").unwrap();
        let mut p = start(&program, &argv(&["sh", "-c", "exit 7"]), &[], None, true).unwrap();
        let mut ready = p.ready.take().expect("a ready pipe");
        let mut byte = [0u8; 1];
        assert_eq!(ready.read(&mut byte).await.unwrap(), 0, "EOF, no byte");
        assert_eq!(p.process.wait().await.unwrap().code(), Some(7));
    }

    #[tokio::test]
    async fn a_missing_program_is_reported_not_hung() {
        let err = start_plain(&["/nonexistent/program"]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        assert!(
            err.to_string().starts_with("executing the program"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_failed_cgroup_join_stops_the_program_before_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        // Writes to /dev/full fail (ENOSPC), as a cgroup.procs write can.
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let script = format!("touch {}", marker.display());
        let err = start(
            c"/bin/sh",
            &argv(&["sh", "-c", &script]),
            &[full],
            None,
            false,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("joining the sandbox cgroup"),
            "{err}"
        );
        assert!(!marker.exists(), "the program ran outside its cgroup");
    }

    #[tokio::test]
    async fn runs_in_its_cgroups_as_its_uid_from_exec_on() {
        assert!(nix::unistd::geteuid().is_root(), "this test needs root");
        let limits = Limits {
            memory_bytes: 256 << 20,
            pids_max: 16,
        };
        let manager = CgroupManager::create(limits).expect("cgroups are writable here");
        let cgroup = manager.sandbox("spawn-test").unwrap();
        let procs = cgroup.procs_files().unwrap();
        let identity = Identity {
            uid: 64_321,
            gid: 64_322,
        };
        let args = argv(&["cat", "/proc/self/cgroup", "/proc/self/status"]);
        let p = start(c"/bin/cat", &args, &procs, Some(identity), false).unwrap();
        let out = read_all(p.stdout).await;
        // v1: "/sys/fs/cgroup/memory/a/b" appears as "…:memory:/a/b".
        let v1 = !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        for dir in cgroup.paths() {
            let rel = dir.strip_prefix("/sys/fs/cgroup").unwrap();
            let path: std::path::PathBuf = rel.components().skip(usize::from(v1)).collect();
            let line = format!(":/{}\n", path.display());
            assert!(out.contains(&line), "not in {}: {out}", dir.display());
        }
        assert_eq!(field(&out, "Uid"), "64321\t64321\t64321\t64321");
        assert_eq!(field(&out, "Gid"), "64322\t64322\t64322\t64322");
        assert_eq!(field(&out, "Groups"), "");
        // A root-only executable cannot be run: the uid is dropped before exec.
        let dir = tempfile::tempdir().unwrap();
        let root_only = dir.path().join("true");
        std::fs::copy("/bin/true", &root_only).unwrap();
        let owner_only = std::os::unix::fs::PermissionsExt::from_mode(0o700);
        std::fs::set_permissions(&root_only, owner_only).unwrap();
        let program = CString::new(root_only.to_str().unwrap()).unwrap();
        let err = start(&program, &argv(&["true"]), &procs, Some(identity), false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        assert!(
            err.to_string().starts_with("executing the program"),
            "{err}"
        );
        cgroup.remove();
        manager.remove();
    }

    #[test]
    fn a_reaper_cut_short_by_runtime_shutdown_still_reaps_on_a_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pid = runtime.block_on(async {
            let p = start_plain(&["/bin/sleep", "1000"]).unwrap();
            let pid = p.process.id().unwrap();
            // Killed, its reaper task spawned but not yet run.
            drop(p);
            pid
        });
        // Shutting down drops the reaper task unfinished: its handle must
        // fall back to a thread, not spawn another task (which recursed
        // until the stack overflowed).
        drop(runtime);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "{pid} was not reaped");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[tokio::test]
    async fn dropping_a_running_process_kills_and_reaps_it() {
        let p = start_plain(&["/bin/sleep", "1000"]).unwrap();
        let pid = p.process.id().unwrap();
        drop(p);
        let deadline = Instant::now() + Duration::from_secs(10);
        // Gone entirely (not even a zombie) once the background reaper ran.
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "{pid} was not killed and reaped");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
