//! The runner's only `unsafe` code: what happens between `fork` and `exec`,
//! `wait4` with resource usage, and the short-lived helper that kills
//! everything a program uid owns.
//!
//! Everything that runs in a forked child here makes raw system calls only
//! (no allocation, no locks), because the parent is multi-threaded and only
//! async-signal-safe work is allowed in such a child.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Number of resource limits set on a program.
pub const RLIMIT_COUNT: usize = 7;

/// One resource limit: `(resource, soft, hard)`.
pub type Rlimit = (libc::__rlimit_resource_t, u64, u64);

/// What a program's child process does to itself before `exec`.
#[derive(Debug, Clone, Copy)]
pub struct ChildSetup {
    /// Resource limits, applied before the identity change (none for a
    /// pre-started interpreter, which takes the job's with [`prlimit`]).
    pub rlimits: Option<[Rlimit; RLIMIT_COUNT]>,
    /// A descriptor to hand the program, and the number it takes there (a
    /// pre-started runtime's private program socket or pipe; fd 3 unless
    /// the language says otherwise).
    pub program_fd: Option<(i32, i32)>,
    /// Another descriptor to hand the program, and its number (a
    /// pre-started runtime's "ready" pipe, when its program comes on a
    /// pipe it reads from).
    pub ready_fd: Option<(i32, i32)>,
    /// `(uid, gid)` to switch to (only when the runner is root).
    pub ids: Option<(u32, u32)>,
    /// The runner's pid: a child whose parent is no longer this was
    /// orphaned before it could ask to die with the runner.
    pub parent: i32,
}

/// Makes `cmd`'s child start a new session, take the limits and identity
/// of `setup`, die with the runner, and close inherited descriptors on exec.
pub fn install_child_setup(cmd: &mut Command, setup: ChildSetup) {
    // SAFETY: the closure runs in the forked child before exec. It only
    // makes raw system calls (setsid, prlimit, setgroups, setgid, setuid,
    // prctl, close_range, fcntl, getppid, dup2), which are async-signal-safe; it
    // allocates nothing and takes no locks. `setup` is `Copy` and moved in.
    unsafe {
        cmd.pre_exec(move || child_setup(&setup));
    }
}

fn check(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn child_setup(setup: &ChildSetup) -> io::Result<()> {
    // SAFETY: setsid takes no pointers; we are the forked child.
    check(unsafe { libc::setsid() }.into())?;
    for (resource, soft, hard) in setup.rlimits.into_iter().flatten() {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `lim` is a valid rlimit on our stack for the call.
        check(unsafe { libc::setrlimit(resource, &lim) }.into())?;
    }
    if let Some((uid, gid)) = setup.ids {
        // Raw syscalls change this thread only, which in the forked child
        // is the whole process; glibc's wrappers would try to broadcast to
        // threads that do not exist here.
        // SAFETY: setgroups with size 0 reads no memory.
        check(unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) })?;
        // SAFETY: plain integer arguments.
        check(unsafe { libc::syscall(libc::SYS_setgid, gid) })?;
        // SAFETY: plain integer arguments.
        check(unsafe { libc::syscall(libc::SYS_setuid, uid) })?;
    }
    // Set after the identity change, which clears it.
    // SAFETY: plain integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) }.into())?;
    // SAFETY: no arguments.
    if unsafe { libc::getppid() } != setup.parent {
        // The runner died before we could ask to die with it. (Comparing
        // with 1 would be wrong: the runner may itself be pid 1.)
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    close_inherited_on_exec();
    match (setup.program_fd, setup.ready_fd) {
        (Some((program, p_target)), Some((ready, r_target))) => {
            // Out of the way first: one may be the other's target.
            let above = p_target.max(r_target) + 1;
            let (program, ready) = (dup_above(program, above)?, dup_above(ready, above)?);
            hand_over_as(program, p_target)?;
            hand_over_as(ready, r_target)
        }
        (Some((fd, target)), None) | (None, Some((fd, target))) => hand_over_as(fd, target),
        (None, None) => Ok(()),
    }
}

/// A close-on-exec copy of `fd` numbered `min` or above (above the
/// handed-over ones).
fn dup_above(fd: i32, min: i32) -> io::Result<i32> {
    // SAFETY: plain integer arguments.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    check(copy.into())?;
    Ok(copy)
}

/// Makes `fd` the child's descriptor `target`, kept open across exec.
fn hand_over_as(fd: i32, target: i32) -> io::Result<()> {
    if fd == target {
        // dup2 onto itself would keep close-on-exec set.
        // SAFETY: plain integer arguments.
        return check(unsafe { libc::fcntl(target, libc::F_SETFD, 0) }.into());
    }
    // SAFETY: plain integer arguments; the new descriptor is not
    // close-on-exec.
    check(unsafe { libc::dup2(fd, target) }.into())
}

/// Applies `rlimits` to the running process `pid` (a pre-started
/// interpreter, before it gets its program). With `as_ids`, from a forked
/// helper that becomes that `(uid, gid)` first: the target's own identity
/// may always lower its limits, where root without `CAP_SYS_RESOURCE` (a
/// container) may not touch another uid's.
///
/// # Errors
/// When a `prlimit` call fails (e.g. raising a hard limit unprivileged), or
/// the helper cannot be forked or waited for.
pub fn prlimit(
    pid: i32,
    rlimits: &[Rlimit; RLIMIT_COUNT],
    as_ids: Option<(u32, u32)>,
) -> io::Result<()> {
    let Some((uid, gid)) = as_ids else {
        return match prlimit_all(pid, rlimits) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        };
    };
    let rlimits = *rlimits;
    // SAFETY: the child makes only raw setgroups, setgid, setuid and
    // prlimit64 system calls and _exit, all async-signal-safe, so forking
    // a multi-threaded process is sound here.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: raw system calls in the forked child, then _exit without
        // running any of the parent's destructors or atexit handlers.
        unsafe {
            let errno = if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>())
                != 0
                || libc::syscall(libc::SYS_setgid, gid) != 0
                || libc::syscall(libc::SYS_setuid, uid) != 0
            {
                libc::EPERM
            } else {
                prlimit_all(pid, &rlimits)
            };
            libc::_exit(errno.clamp(0, 255));
        }
    }
    let reaped = wait4(child, false)?.ok_or_else(|| io::Error::other("prlimit helper lost"))?;
    match (
        libc::WIFEXITED(reaped.status),
        libc::WEXITSTATUS(reaped.status),
    ) {
        (true, 0) => Ok(()),
        (true, errno) => Err(io::Error::from_raw_os_error(errno)),
        (false, _) => Err(io::Error::other("the prlimit helper was killed")),
    }
}

/// Raw `prlimit64` of every limit; 0 or the first failure's errno.
fn prlimit_all(pid: i32, rlimits: &[Rlimit; RLIMIT_COUNT]) -> i32 {
    for &(resource, soft, hard) in rlimits {
        let lim = libc::rlimit64 {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `lim` is a valid rlimit64 for the call; the old value is
        // not asked for (null).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                pid,
                resource,
                &lim,
                std::ptr::null_mut::<libc::rlimit64>(),
            )
        };
        if ret != 0 {
            // SAFETY: reads this thread's errno.
            return unsafe { *libc::__errno_location() };
        }
    }
    0
}

/// Marks every descriptor above stderr close-on-exec, so nothing the
/// runner inherited (or std's internal pipe) leaks into the program.
fn close_inherited_on_exec() {
    // SAFETY: plain integer arguments.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret != 0 {
        for fd in 3..4096 {
            // SAFETY: fcntl on a descriptor that may not exist just fails.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// A child collected by [`wait4`].
#[derive(Debug, Clone, Copy)]
pub struct Reaped {
    /// The raw wait status.
    pub status: i32,
    /// Its resource usage (and that of the children it waited for).
    pub rusage: libc::rusage,
}

/// `wait4(pid)`, retrying on `EINTR`; `Ok(None)` when `nohang` and no
/// child has changed state. `pid` -1 means any child.
///
/// # Errors
/// `ECHILD` when there is no child to wait for.
pub fn wait4(pid: i32, nohang: bool) -> io::Result<Option<Reaped>> {
    let flags = if nohang { libc::WNOHANG } else { 0 } | libc::__WALL;
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain old data; zeroed is a valid value.
        let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for writes for the call.
        let ret = unsafe { libc::wait4(pid, &mut status, flags, &mut rusage) };
        match ret {
            0 => return Ok(None),
            pid if pid > 0 => return Ok(Some(Reaped { status, rusage })),
            _ => {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINTR) {
                    return Err(err);
                }
            }
        }
    }
}

/// Sends SIGKILL to every process whose real or saved uid is `uid`, from a
/// forked helper that becomes `uid` (so `kill(-1)` reaches exactly those
/// processes, never the runner). Waits for the helper.
///
/// # Errors
/// When the helper cannot be forked or waited for.
pub fn kill_all_owned_by(uid: u32) -> io::Result<()> {
    // SAFETY: the child makes only the raw setuid, kill and _exit system
    // calls, all async-signal-safe, so forking a multi-threaded process is
    // sound here.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: raw system calls in the forked child, then _exit without
        // running any of the parent's destructors or atexit handlers.
        unsafe {
            if libc::syscall(libc::SYS_setuid, uid) == 0 {
                libc::kill(-1, libc::SIGKILL);
            }
            libc::_exit(0);
        }
    }
    wait4(pid, false).map(|_| ())
}

/// Blocks until child `pid` has exited, without reaping it: the zombie
/// keeps its pid (and so its process group id) from being reused until
/// [`wait4`] collects it.
///
/// # Errors
/// When `pid` is not a child of ours.
pub fn wait_exit_keep_zombie(pid: i32) -> io::Result<()> {
    loop {
        // SAFETY: siginfo_t is plain old data; zeroed is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid for writes for the call.
        let ret = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::__WALL,
            )
        };
        if ret == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// A pidfd for child `pid`: readable once it has exited (it is not reaped).
///
/// # Errors
/// `ENOSYS` on kernels before 5.3 (or sandboxes without the call).
pub fn pidfd_open(pid: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this new descriptor; nothing else
    // owns it. (pidfd_open sets close-on-exec itself.)
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Whether [`adopt_inherited_writer`] took a descriptor already: a second
/// call could name the same number and make two owners of it.
static ADOPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Takes ownership of descriptor `fd`, inherited from our parent (the
/// `--ready-fd` pipe), marked close-on-exec so that nothing the runner
/// starts (a pre-started interpreter, a program) inherits it. Once per
/// process.
///
/// # Errors
/// `EBADF` when `fd` is a standard stream (0-2) or not open, `EACCES`
/// when it is not open for writing, `EBUSY` on a second call.
pub fn adopt_inherited_writer(fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    use std::sync::atomic::Ordering;
    if fd < 3 {
        // Owned by the standard library's stdin, stdout, stderr.
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: plain integer arguments; an fd that is not open just fails.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    check(flags.into())?;
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(io::Error::from_raw_os_error(libc::EACCES));
    }
    if ADOPTED.swap(true, Ordering::SeqCst) {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    // SAFETY: plain integer arguments on the open descriptor checked above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }.into())?;
    // SAFETY: `fd` is open (checked above) and above the standard streams;
    // the runner opens no descriptor before this is called from `main`
    // (the number came from our parent), and `ADOPTED` makes this the
    // only adoption, so nothing else owns or closes it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}
