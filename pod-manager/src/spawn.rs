//! Starting a sandbox process inside its cgroups, as its own user, without
//! copying the pod-manager: the crate's only `unsafe` code.
//!
//! The child is created with `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`
//! (what `posix_spawn` does): it shares the pod-manager's memory, runs on a
//! small stack of its own (one per spawning thread, kept between spawns),
//! and the calling thread is suspended until the child has called `execve`
//! or exited. A `fork` of the multi-threaded
//! pod-manager (what the standard library's `pre_exec` forces) would copy
//! its page tables and take copy-on-write faults for every sandbox.
//!
//! Between clone and exec the child, with every signal blocked, writes `0`
//! to every `cgroup.procs` file the parent opened (moving itself into the
//! sandbox's cgroups before it can run anything), drops supplementary
//! groups and switches to the sandbox's gid and uid (raw system calls: the
//! C library's wrappers would try to change the credentials of the
//! pod-manager's threads too), connects its stdio to pipes (and, if asked,
//! the write end of a readiness pipe as descriptor [`READY_FD`]), goes to `/`,
//! resets caught signals to their default, unblocks signals and calls
//! `execve` with an empty environment. There is no moment where the
//! sandbox runs outside its cgroup or as root. The child allocates nothing
//! and takes no lock: everything it touches was prepared by the parent. A
//! failing step is written to a slot in the shared memory (which step and
//! `errno`), the child exits with 127, and [`spawn`] returns the error
//! after reaping it.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_int, c_void};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::wait::waitpid;
use nix::unistd::{Pid, pipe2};

/// The descriptor number under which the child gets the write end of its
/// readiness pipe ([`Command::ready_pipe`]); every other descriptor of the
/// pod-manager is close-on-exec, so this one is the child's only one above
/// its stdio.
pub const READY_FD: RawFd = 3;

/// The identity a sandbox process takes before exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Group id (also the only group).
    pub gid: u32,
}

/// What to start. `argv[0]` is the program's name as it sees it.
#[derive(Debug)]
pub struct Command<'a> {
    /// Path of the executable (not searched in `PATH`).
    pub program: &'a CStr,
    /// The arguments, `argv[0]` included.
    pub argv: &'a [CString],
    /// Open `cgroup.procs` files the child joins (writes `0` to) first.
    pub cgroup_procs: &'a [File],
    /// The identity to take (`None`: keep ours).
    pub identity: Option<Identity>,
    /// Whether to give the child a pipe's write end as [`READY_FD`] (the
    /// read end comes back in [`Spawned::ready`]).
    pub ready_pipe: bool,
}

/// A started child: its pid, a pidfd and the parent's ends of its stdio
/// pipes (close-on-exec, blocking).
#[derive(Debug)]
pub struct Spawned {
    /// The child's pid; it is our child, not yet reaped.
    pub pid: Pid,
    /// A pidfd of the child (readable once it has exited).
    pub pidfd: OwnedFd,
    /// Write end of the child's stdin.
    pub stdin: OwnedFd,
    /// Read end of the child's stdout.
    pub stdout: OwnedFd,
    /// Read end of the child's stderr.
    pub stderr: OwnedFd,
    /// Read end of the readiness pipe, with [`Command::ready_pipe`]: EOF
    /// once every holder of the write end (the child and what it passed
    /// it on to) closed it or exited.
    pub ready: Option<OwnedFd>,
}

/// The child's steps, in order; the failing one is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
enum Step {
    JoinCgroup = 1,
    SetGroups,
    SetGid,
    SetUid,
    Stdio,
    ReadyFd,
    Chdir,
    Exec,
}

impl Step {
    const ALL: [Step; 8] = [
        Step::JoinCgroup,
        Step::SetGroups,
        Step::SetGid,
        Step::SetUid,
        Step::Stdio,
        Step::ReadyFd,
        Step::Chdir,
        Step::Exec,
    ];

    fn describe(self) -> &'static str {
        match self {
            Step::JoinCgroup => "joining the sandbox cgroup (writing cgroup.procs)",
            Step::SetGroups => "dropping supplementary groups",
            Step::SetGid => "switching to the sandbox gid",
            Step::SetUid => "switching to the sandbox uid",
            Step::Stdio => "connecting stdio",
            Step::ReadyFd => "passing the readiness pipe",
            Step::Chdir => "changing to /",
            Step::Exec => "executing the program",
        }
    }
}

/// Everything the child reads, prepared by the parent.
struct ChildArgs {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    procs: *const RawFd,
    procs_len: usize,
    identity: Option<Identity>,
    /// The child's ends of stdin, stdout, stderr (all >= 3).
    stdio: [RawFd; 3],
    /// The write end of the readiness pipe (>= 3), or -1 for none.
    ready: RawFd,
    /// `step << 16 | errno` of the step that failed; 0 while none did.
    failure: AtomicI32,
}

/// The child's stack size: its code is a few small frames of system calls.
const CHILD_STACK: usize = 64 * 1024;
/// The guard page below the child's stack.
const GUARD: usize = 4096;
/// The size of the kernel's signal set (64 signals).
const KERNEL_SIGSET_BYTES: usize = 8;
/// The highest signal number on Linux (`_NSIG - 1`).
const MAX_SIGNAL: c_int = 64;

/// Starts `cmd` (see the module docs for what the child does before exec).
///
/// # Errors
/// Pipes, the stack or the clone could not be set up, or a step of the
/// child failed (the message names it: joining the cgroup, switching
/// identity, exec …); the child is reaped in that case.
pub fn spawn(cmd: &Command<'_>) -> io::Result<Spawned> {
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let child_ends = [
        above_stdio(stdin_r)?,
        above_stdio(stdout_w)?,
        above_stdio(stderr_w)?,
    ];
    let (ready_r, ready_w) = if cmd.ready_pipe {
        let (r, w) = pipe()?;
        (Some(r), Some(above_stdio(w)?))
    } else {
        (None, None)
    };
    let mut argv: Vec<*const libc::c_char> = cmd.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(ptr::null());
    let envp: [*const libc::c_char; 1] = [ptr::null()];
    let procs: Vec<RawFd> = cmd.cgroup_procs.iter().map(AsRawFd::as_raw_fd).collect();
    let args = ChildArgs {
        program: cmd.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        procs: procs.as_ptr(),
        procs_len: procs.len(),
        identity: cmd.identity,
        stdio: [
            child_ends[0].as_raw_fd(),
            child_ends[1].as_raw_fd(),
            child_ends[2].as_raw_fd(),
        ],
        ready: ready_w.as_ref().map_or(-1, AsRawFd::as_raw_fd),
        failure: AtomicI32::new(0),
    };
    let (pid, pidfd) = STACK.with(|cell| {
        let mut stack = cell.borrow_mut();
        if stack.is_none() {
            *stack = Some(Stack::new()?);
        }
        clone_vfork(&args, stack.as_ref().expect("set above"))
    })?;
    drop(child_ends);
    drop(ready_w);
    let failure = args.failure.load(Ordering::SeqCst);
    if failure != 0 {
        // The child exited right after recording the failure: reap it.
        let _ = waitpid(pid, None);
        return Err(child_error(failure));
    }
    Ok(Spawned {
        pid,
        pidfd,
        stdin: stdin_w,
        stdout: stdout_r,
        stderr: stderr_r,
        ready: ready_r,
    })
}

/// Registers a pidfd with tokio (readable once the process has exited).
/// Must be called inside a tokio runtime.
///
/// # Errors
/// The registration failed.
pub fn async_pidfd(pidfd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `pidfd` is an open descriptor that the AsyncFd owns from
    // here on: it stays open, and is not replaced, until the AsyncFd drops.
    unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.map_err(io::Error::from)
}

/// A close-on-exec pipe, `(read, write)`.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// `fd`, moved to a number above 2 if it is 0, 1 or 2 (possible when the
/// pod-manager's own stdio is closed), so that the child's `dup2` onto
/// 0, 1, 2 never overwrites another of its ends.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    let moved = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(3)).map_err(io::Error::from)?;
    // SAFETY: `moved` is a fresh descriptor returned by fcntl, owned by no
    // one else.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

fn child_error(failure: i32) -> io::Error {
    let step = failure >> 16;
    let errno = failure & 0xffff;
    let what = Step::ALL
        .iter()
        .find(|s| **s as i32 == step)
        .map_or("starting the program", |s| s.describe());
    let os = io::Error::from_raw_os_error(errno);
    io::Error::new(os.kind(), format!("{what}: {os}"))
}

thread_local! {
    /// This thread's child stack, mapped once and kept: a thread runs one
    /// clone at a time, and is suspended until that child has exec'd or
    /// exited, so the stack is free again whenever clone returns.
    static STACK: RefCell<Option<Stack>> = const { RefCell::new(None) };
}

/// The child's stack: an anonymous mapping with a guard page below it.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Self> {
        let len = CHILD_STACK + GUARD;
        // SAFETY: an anonymous private mapping at an address of the
        // kernel's choice; the result is checked.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self { base, len };
        // SAFETY: the lowest page of the mapping just created.
        if unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The initial stack pointer (the stack grows down; page aligned).
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, which is what clone
        // expects as the child's stack.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used by no one any more (its
        // last child exec'd or exited before clone returned).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Clones the child on `stack` and returns once it has exec'd or exited.
fn clone_vfork(args: &ChildArgs, stack: &Stack) -> io::Result<(Pid, OwnedFd)> {
    let mut pidfd: c_int = -1;
    let mut all: libc::sigset_t = empty_sigset();
    let mut old: libc::sigset_t = empty_sigset();
    // SAFETY: `all` and `old` are valid sigsets. Every signal is blocked in
    // this thread around the clone so that no handler of the pod-manager
    // runs in the child (which shares its memory) before the child has
    // reset them; the child inherits the blocked mask.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
    // SAFETY: `child_main` only reads `args` (alive until clone returns,
    // which with CLONE_VFORK is after the child has exec'd or exited) and
    // makes async-signal-safe system calls; `stack` is a mapping of its
    // own; the pidfd is written to `pidfd` (CLONE_PIDFD uses the
    // parent_tid argument).
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            flags,
            ptr::from_ref(args).cast_mut().cast(),
            &mut pidfd as *mut c_int,
        )
    };
    let cloned = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
    if pid < 0 {
        return Err(cloned);
    }
    // SAFETY: with CLONE_PIDFD the kernel stored a new descriptor there.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((Pid::from_raw(pid), pidfd))
}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; all zeroes is the empty set.
    unsafe { std::mem::zeroed() }
}

/// The child, between clone and exec. Never returns.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` the parent passed to clone; the
    // parent is suspended and keeps it alive until we exec or exit.
    let args = unsafe { &*arg.cast::<ChildArgs>() };
    // SAFETY: we are that child; `child_steps` returns only on failure.
    let failed = unsafe { child_steps(args) };
    // SAFETY: reads this thread's errno, set by the failed call.
    let errno = unsafe { *libc::__errno_location() };
    args.failure
        .store(((failed as i32) << 16) | (errno & 0xffff), Ordering::SeqCst);
    // SAFETY: ends the child without running anything of the parent's.
    unsafe { libc::_exit(127) }
}

/// The child's steps up to `execve`, which does not return when it
/// succeeds; returns the step that failed (its error is in `errno`).
///
/// # Safety
/// Only in the child of [`clone_vfork`], with `args` as the parent built it.
unsafe fn child_steps(args: &ChildArgs) -> Step {
    // SAFETY (whole function): raw system calls on descriptors and
    // C strings the parent keeps alive; no allocation, no lock, no panic.
    unsafe {
        let procs = std::slice::from_raw_parts(args.procs, args.procs_len);
        for &fd in procs {
            // "0" means "the writing process" in cgroup v1 and v2.
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Step::JoinCgroup;
            }
        }
        if let Some(id) = args.identity {
            // Raw system calls: glibc's wrappers would broadcast the change
            // to the threads of the process whose memory we share.
            let no_groups: *const libc::gid_t = ptr::null();
            if libc::syscall(libc::SYS_setgroups, 0, no_groups) != 0 {
                return Step::SetGroups;
            }
            if libc::syscall(libc::SYS_setgid, id.gid) != 0 {
                return Step::SetGid;
            }
            if libc::syscall(libc::SYS_setuid, id.uid) != 0 {
                return Step::SetUid;
            }
        }
        for (target, &fd) in (0..).zip(&args.stdio) {
            if libc::dup2(fd, target) < 0 {
                return Step::Stdio;
            }
        }
        // After stdio: its ends may sit at READY_FD, and ours is >= 3, so
        // the dup2s onto 0..2 above left it alone.
        if args.ready == READY_FD {
            // dup2 onto itself would keep close-on-exec set.
            if libc::fcntl(READY_FD, libc::F_SETFD, 0) != 0 {
                return Step::ReadyFd;
            }
        } else if args.ready >= 0 && libc::dup2(args.ready, READY_FD) < 0 {
            return Step::ReadyFd;
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Step::Chdir;
        }
        reset_signals();
        libc::execve(args.program, args.argv, args.envp);
        Step::Exec
    }
}

/// Resets every caught signal (and SIGPIPE, which Rust programs ignore) to
/// its default action, then unblocks all signals: the program starts as
/// from a plain `fork` + `exec` of the standard library.
///
/// # Safety
/// Only in the child of [`clone_vfork`] (its signal handlers are its own:
/// no CLONE_SIGHAND).
unsafe fn reset_signals() {
    // SAFETY: sigaction and sigprocmask on this process's own tables, with
    // valid pointers to locals.
    unsafe {
        for sig in 1..=MAX_SIGNAL {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, ptr::null(), &mut old) != 0 {
                continue;
            }
            let caught = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
            if caught || sig == libc::SIGPIPE {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, ptr::null_mut());
            }
        }
        // The raw system call: glibc's wrapper leaves its internal signals
        // (32, 33) as they are.
        let empty = empty_sigset();
        let no_old: *mut libc::sigset_t = ptr::null_mut();
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty,
            no_old,
            KERNEL_SIGSET_BYTES,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_errors_name_the_step_and_errno() {
        let e = child_error(((Step::SetUid as i32) << 16) | libc::EPERM);
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            e.to_string().starts_with("switching to the sandbox uid: "),
            "{e}"
        );
        let e = child_error(((Step::Exec as i32) << 16) | libc::ENOENT);
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with("executing the program"), "{e}");
    }
}
