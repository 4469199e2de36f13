//! Starting a sandbox process inside its cgroup, as its own user: the
//! crate's only `unsafe` code.
//!
//! Between fork and exec the child writes `0` to every `cgroup.procs` file
//! the parent opened (moving itself into the sandbox's cgroups before it can
//! run anything), then drops supplementary groups and switches to the
//! sandbox's gid and uid. Doing this in the child (rather than moving the
//! pid after spawn) leaves no moment where the sandbox runs outside its
//! cgroup or as root.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio::process::Command;

/// The identity a sandbox process takes before exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Group id (also the only group).
    pub gid: u32,
}

/// Arranges for `cmd`'s child to join the cgroups whose `cgroup.procs` are
/// `procs` and to become `identity` (if any) before it execs.
///
/// `procs` must stay open until `cmd` has been spawned; the caller keeps
/// them and drops them afterwards.
pub fn join_and_drop_privileges(cmd: &mut Command, procs: &[File], identity: Option<Identity>) {
    let fds: Vec<RawFd> = procs.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure runs in the forked child before exec. It only
    // makes async-signal-safe system calls (write, setgroups, setgid,
    // setuid), allocates nothing (it reads the Vec moved into it) and
    // touches no lock. The fds stay valid because the caller keeps the
    // `File`s open until spawn returns; they are close-on-exec, so the
    // sandbox does not inherit them.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                // "0" means "the writing process" in cgroup v1 and v2.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(id) = identity
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(id.gid) != 0
                    || libc::setuid(id.uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
