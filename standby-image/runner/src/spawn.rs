//! Starting a program: the one place that turns a [`LaunchSpec`] into a
//! running process with its pipes.
//!
//! Supervision and classification only see a [`Launched`] process, so
//! another [`Launcher`] (e.g. a pre-started interpreter waiting for its
//! program) can slot in and give the same results.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;

use crate::limits::RlimitPlan;
use crate::sys::{self, ChildSetup};

/// `PATH` of every program.
pub const PROGRAM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Everything needed to start one program.
#[derive(Debug, Clone)]
pub struct LaunchSpec<'a> {
    /// The command and its arguments; `argv[0]` is an absolute path or a
    /// path relative to `dir`.
    pub argv: &'a [String],
    /// Working directory; also `HOME` and `TMPDIR`.
    pub dir: &'a Path,
    /// `(uid, gid)` to become (root only).
    pub ids: Option<(u32, u32)>,
    /// Resource limits.
    pub rlimits: RlimitPlan,
    /// Bytes for stdin (fed by a thread, so large inputs never deadlock).
    pub stdin: &'a [u8],
    /// Whether stderr goes into the stdout pipe (compilers).
    pub merge_output: bool,
    /// Which step of the job the program is.
    pub step: StepKind,
}

/// The steps of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// The compile step (compiled languages).
    Compile,
    /// The run step.
    Run,
}

/// A process that exists during a step without being its program: a
/// later step's pre-started program, waiting as the same uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// Its pid: the step's cleanup spares it.
    pub pid: i32,
    /// Its tasks (threads included), which `RLIMIT_NPROC` counts too.
    pub tasks: u64,
}

/// A started program.
#[derive(Debug)]
pub struct Launched {
    /// Its pid, which is also its process group and session id.
    pub pid: i32,
    /// Read end of its stdout (and stderr when merged).
    pub stdout: File,
    /// Read end of its stderr, unless merged.
    pub stderr: Option<File>,
    /// CPU time it had used before the job arrived (a pre-started
    /// interpreter's start-up), in ms: not charged to the job.
    pub cpu_before_ms: u64,
}

/// Starts programs.
pub trait Launcher {
    /// Starts the program `spec` describes.
    ///
    /// # Errors
    /// When the program cannot be started (fork, exec or setup failed).
    fn launch(&self, spec: &LaunchSpec<'_>) -> io::Result<Launched>;

    /// Processes (threads included) of `step`'s program that exist before
    /// [`launch`](Launcher::launch), e.g. a pre-started interpreter: they
    /// are the program's, not part of the uid's other tasks.
    fn program_tasks_before(&self, _step: StepKind) -> u64 {
        0
    }

    /// The process that must outlive `step` (a later step's, waiting), if
    /// any.
    fn kept_during(&self, _step: StepKind) -> Option<Kept> {
        None
    }
}

/// Starts each program with fork and exec.
#[derive(Debug, Default, Clone, Copy)]
pub struct ForkExec;

impl Launcher for ForkExec {
    fn launch(&self, spec: &LaunchSpec<'_>) -> io::Result<Launched> {
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", PROGRAM_PATH)
            .env("HOME", spec.dir)
            .env("TMPDIR", spec.dir)
            .env("LANG", "C.UTF-8")
            .current_dir(spec.dir);
        // The feeder thread exists before the program does: if it cannot
        // be started, no program is left running unsupervised.
        if spec.stdin.is_empty() {
            cmd.stdin(Stdio::null());
        } else {
            let (read, write) = pipe()?;
            feed(File::from(write), spec.stdin.to_vec())?;
            cmd.stdin(Stdio::from(read));
        }
        let (out_read, out_write) = pipe()?;
        let mut err_read = None;
        if spec.merge_output {
            cmd.stderr(Stdio::from(out_write.try_clone()?));
        } else {
            let (r, w) = pipe()?;
            cmd.stderr(Stdio::from(w));
            err_read = Some(File::from(r));
        }
        cmd.stdout(Stdio::from(out_write));
        sys::install_child_setup(
            &mut cmd,
            ChildSetup {
                rlimits: Some(spec.rlimits.rlimits()),
                program_fd: None,
                ready_fd: None,
                ids: spec.ids,
                parent: std::process::id() as i32,
            },
        );
        let child = cmd.spawn()?;
        // `cmd` holds our copies of the program's pipe ends: drop it so the
        // readers see EOF once the program's side is closed, and the feeder
        // EPIPE once the program is gone.
        drop(cmd);
        Ok(Launched {
            pid: i32::try_from(child.id()).map_err(io::Error::other)?,
            stdout: File::from(out_read),
            stderr: err_read,
            cpu_before_ms: 0,
        })
    }
}

pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Writes `bytes` into the program's stdin pipe from a thread, then closes
/// it. A program that never reads just makes the write fail once it is
/// dead (or never started).
pub(crate) fn feed(mut pipe: File, bytes: Vec<u8>) -> io::Result<()> {
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
        .map(drop)
}
