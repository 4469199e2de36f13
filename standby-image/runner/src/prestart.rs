//! Pre-started runtimes: a language's interpreter (and, for a compiled
//! language, its compiler) started before the job arrives, already as the
//! program uid, each in its own session, with the clean environment and
//! the (single-use) work directory as cwd, blocked reading its program
//! from a private channel (fd 3; for Node a high descriptor, see
//! `program_fd`), on which it first says it is ready. [`Prestarted::start`]
//! returns once every process said so (or [`READY_TIMEOUT`] passed), so a
//! runner signals its own readiness only after the runtime's start-up.
//!
//! When the job arrives, [`Prestarted::hand_over`] renames the work
//! directory to the job's and writes its files; the [`Launcher`] it returns
//! then starts each step on its waiting process: it applies the step's
//! resource limits with `prlimit` (`RLIMIT_CPU` raised by the CPU the
//! start-up used, which is also subtracted from the step's CPU time),
//! sends `"<stdin mode>\0<work dir>\0<argv>..."` and feeds
//! stdin. From there supervision and verdicts are the cold path's. The
//! language's bootstrap (`prestart/python.py`, `javascript.js`,
//! `WarmpodBoot.java`) makes the program run as the cold command would; a
//! runtime that loads it from a file gets a [`BootstrapFile`] beside the
//! work directory (Java's comes precompiled when installed, see `java`).
//!
//! A compiled language has two waiting processes: the compiler's and the
//! program's. While the compile step runs, the program's process is
//! [`Kept`]: cleanup after the compile step spares it, and its threads are
//! added to the step's `RLIMIT_NPROC` (they are not the compiler's).
//!
//! A job of another language, or with a memory limit the processes were
//! not started for, runs on the cold path: they are killed first
//! (dropping [`Prestarted`] kills and reaps them and removes the
//! directory).
//!
//! # Layout
//! - `bootstrap_file`: the bootstrap of a runtime that loads it from a
//!   file (Node, Java), beside the work directory;
//! - `java`: the JVM specifics (the compiler JVM's command, javac's
//!   arguments, the precompiled bootstrap or the bootstrap's file name).

mod bootstrap_file;
mod java;

use std::cell::RefCell;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use uuid::Uuid;
use warmpod_protocol::{Language, ResolvedLimits, language};

use crate::spawn::{self, Kept, LaunchSpec, Launched, Launcher, PROGRAM_PATH, StepKind};
use crate::sys::{self, ChildSetup};
use crate::workdir::WorkDir;

use bootstrap_file::BootstrapFile;
pub use java::DEFAULT_BOOT_DIR as DEFAULT_JAVA_BOOT_DIR;
use java::JavaBoot;

/// How long pre-starting waits for each process's "ready": one still
/// starting up after that is deemed ready (it gets its program when the
/// job comes, and supervision reports whatever it then does).
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A language's bootstrap: the code that makes a pre-started runtime wait
/// for its program and then run it as the cold command would.
#[derive(Debug, Clone, Copy)]
struct Bootstrap {
    /// The code (`prestart/<file>`).
    code: &'static str,
    /// Its file name, for a runtime that loads it from a file
    /// (`{bootstrap_file}` in the pre-start command).
    file_name: &'static str,
    /// The descriptor it reads its program from: 3, or for Node a high
    /// one: its start-up opens a dozen descriptors (epoll, eventfd, pipes)
    /// after the socket, which must take the numbers they take in a cold
    /// start, so that the program's own first `open` returns the cold
    /// path's number too (`prestart/javascript.js` has the same number).
    /// 1023 fits the usual soft `RLIMIT_NOFILE` of 1024; under a lower one
    /// the spawn fails, which is logged, and the job runs cold. (Java's
    /// bootstrap reads fd 3 and answers on fd 4, see [`Channel::Pipes`].)
    program_fd: i32,
}

/// `language`'s bootstrap, if the runner has one.
fn bootstrap(language: &Language) -> Option<Bootstrap> {
    let (code, file_name, program_fd) = match language.key {
        "python" => (include_str!("prestart/python.py"), "bootstrap.py", 3),
        "java" => (
            include_str!("prestart/WarmpodBoot.java"),
            java::BOOT_FILE,
            3,
        ),
        "javascript" => (include_str!("prestart/javascript.js"), "bootstrap.js", 1023),
        _ => return None,
    };
    Some(Bootstrap {
        code,
        file_name,
        program_fd,
    })
}

/// Whether jobs of `language` can run on pre-started processes.
pub fn supported(language: &Language) -> bool {
    language.prestart.is_some()
        && bootstrap(language).is_some()
        && (language.compile.is_none() || java::is_jvm(language))
}

/// Why nothing could be pre-started.
#[derive(Debug, thiserror::Error)]
pub enum PrestartError {
    /// The language has no pre-start command or bootstrap.
    #[error("language {0} cannot be pre-started")]
    Unsupported(&'static str),
    /// Creating the directory, the bootstrap file or pipes, or spawning,
    /// failed.
    #[error("pre-starting the {language} runtime failed: {source}")]
    Spawn {
        /// The language's key.
        language: &'static str,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

/// Processes waiting for a job's steps.
#[derive(Debug)]
pub struct Prestarted {
    language: &'static Language,
    /// The memory limit (KiB) the run command was expanded for.
    memory_kb: u64,
    /// The memory limit (KiB) the compiler's command was expanded for.
    compile_memory_kb: u64,
    /// The compiler, for compiled languages. Dropped first (fields drop in
    /// order): the processes die before their files are removed.
    compile: Option<Waiting>,
    /// The program's runtime.
    run: Waiting,
    dir: WorkDir,
    /// Kept (after the process is gone) while the job may load it.
    bootstrap_file: Option<BootstrapFile>,
}

/// How a waiting process talks with the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    /// One socket (on fd 3, or `program_fd`): "ready" one way, the program
    /// the other.
    Socket,
    /// Two pipes, for runtimes that can only open descriptors by path
    /// (`/proc/self/fd/N`, which fails for sockets): the program comes on
    /// fd 3, "ready" goes out on fd 4.
    Pipes,
}

/// The waiting process and the runner's ends of its pipes. Dropped unused,
/// it kills and reaps the process.
#[derive(Debug)]
struct Waiting {
    pid: i32,
    /// Where its program is written.
    to_program: Option<File>,
    /// Where it says "ready".
    from_program: Option<File>,
    /// Its stdin (none: `/dev/null`, for compilers).
    stdin: Option<File>,
    stdout: Option<File>,
    /// Its stderr (none: merged into stdout, for compilers).
    stderr: Option<File>,
    /// Set once launched: supervision then owns (and reaps) the process.
    launched: bool,
}

/// How to start one waiting process.
struct WaitingSpec<'a> {
    argv: &'a [String],
    channel: Channel,
    /// The descriptor the program channel takes in the process (with
    /// [`Channel::Socket`]; [`Channel::Pipes`] are fds 3 and 4).
    program_fd: i32,
    /// Compilers: stdin `/dev/null`, stderr into stdout.
    compiler: bool,
}

impl Prestarted {
    /// Starts `language`'s runtime (and compiler) as `ids` in a fresh
    /// directory under `work_root`, for jobs with the default memory
    /// limits. Java loads its bootstrap precompiled from `java_boot_dir`
    /// when the jar there is current (else from source).
    ///
    /// # Errors
    /// See [`PrestartError`].
    pub fn start(
        language: &'static Language,
        ids: Option<(u32, u32)>,
        work_root: &Path,
        java_boot_dir: &Path,
    ) -> Result<Self, PrestartError> {
        let (Some(template), Some(bootstrap), true) =
            (language.prestart, bootstrap(language), supported(language))
        else {
            return Err(PrestartError::Unsupported(language.key));
        };
        let spawn_err = |source| PrestartError::Spawn {
            language: language.key,
            source,
        };
        let memory_kb = ResolvedLimits::DEFAULT.memory_kb;
        let compile_memory_kb = ResolvedLimits::COMPILE_DEFAULT.memory_kb;
        let dir = WorkDir::create_for_prestart(work_root, ids).map_err(spawn_err)?;
        let java_jar = java::is_jvm(language)
            .then(|| JavaBoot::installed(java_boot_dir, bootstrap.code))
            .flatten();
        let bootstrap_file = (java_jar.is_none()
            && template.iter().any(|a| a.contains("{bootstrap_file}")))
        .then(|| BootstrapFile::write(work_root, bootstrap.file_name, bootstrap.code))
        .transpose()
        .map_err(spawn_err)?;
        let boot_path = bootstrap_file
            .as_ref()
            .map(|b| b.path().to_string_lossy().into_owned());
        let java_boot = java_jar.or_else(|| {
            let source = boot_path.clone().filter(|_| java::is_jvm(language));
            source.map(JavaBoot::Source)
        });
        let channel = if java::is_jvm(language) {
            Channel::Pipes
        } else {
            Channel::Socket
        };
        // The compiler first: its step comes first.
        let mut compile = match (language.compile, &java_boot) {
            (None, _) => None,
            (Some(_), Some(boot)) => {
                let argv = java::compiler_command(language, compile_memory_kb, boot)
                    .ok_or(PrestartError::Unsupported(language.key))?;
                let spec = WaitingSpec {
                    argv: &argv,
                    channel,
                    program_fd: bootstrap.program_fd,
                    compiler: true,
                };
                Some(spawn_waiting(&spec, &dir, ids).map_err(spawn_err)?)
            }
            (Some(_), None) => return Err(PrestartError::Unsupported(language.key)),
        };
        // A whole `{bootstrap_file}` word is how the JVM loads it (the
        // precompiled one takes two words).
        let boot_words = match &java_boot {
            Some(boot) => boot.words(false),
            None => boot_path.iter().cloned().collect(),
        };
        let argv: Vec<String> = language::expand(template, &[language.source_file], memory_kb)
            .into_iter()
            .flat_map(|a| match a.as_str() {
                "{bootstrap_file}" => boot_words.clone(),
                _ => vec![
                    a.replace("{bootstrap_file}", boot_path.as_deref().unwrap_or_default())
                        .replace("{bootstrap}", bootstrap.code),
                ],
            })
            .collect();
        let spec = WaitingSpec {
            argv: &argv,
            channel,
            program_fd: bootstrap.program_fd,
            compiler: false,
        };
        let mut run = spawn_waiting(&spec, &dir, ids).map_err(spawn_err)?;
        // Started side by side, then awaited: "pre-started" (and the
        // runner's readiness, which follows) means the processes have done
        // their start-up, not merely been spawned. A runtime still booting
        // would take the job's CPU and wall clock, or share the CPU with
        // whatever runs meanwhile.
        for waiting in compile.iter_mut().chain(std::iter::once(&mut run)) {
            waiting.await_ready();
        }
        Ok(Self {
            language,
            memory_kb,
            compile_memory_kb,
            compile,
            run,
            dir,
            bootstrap_file,
        })
    }

    /// The pre-started language.
    pub fn language(&self) -> &'static Language {
        self.language
    }

    /// Whether a job of `language` with memory limits of `memory_kb` (run)
    /// and `compile_memory_kb` (compile) and entry point `entry` can run on
    /// these processes exactly as on the cold path (a command that names
    /// the entry point, like Node's, was started for the default one).
    pub fn serves(
        &self,
        language: &Language,
        entry: &str,
        memory_kb: u64,
        compile_memory_kb: u64,
    ) -> bool {
        let Some(template) = self.language.prestart else {
            return false;
        };
        let uses_memory = |t: &[&str]| t.iter().any(|a| a.contains("{memory_mb}"));
        let run_ok = !(uses_memory(template) || uses_memory(self.language.run))
            || memory_kb == self.memory_kb;
        let compile_ok = self
            .language
            .compile
            .is_none_or(|t| !uses_memory(t) || compile_memory_kb == self.compile_memory_kb);
        let names_entry = template.iter().any(|a| a.contains("{source}"));
        let entry_ok = !names_entry || entry == self.language.source_file;
        language.key == self.language.key && run_ok && compile_ok && entry_ok
    }

    /// Gives the processes to job `id`: their directory takes the job's
    /// name and `files` (owned by `owner`). Returns the directory and the
    /// launcher that starts the job's steps on them.
    ///
    /// # Errors
    /// When the directory cannot be renamed or written (the processes are
    /// then killed).
    pub fn hand_over(
        self,
        id: Uuid,
        owner: Option<(u32, u32)>,
        files: &[(String, String)],
    ) -> io::Result<(WorkDir, PrestartLauncher)> {
        let Self {
            language,
            mut dir,
            compile,
            run,
            bootstrap_file,
            ..
        } = self;
        if let Err(e) = dir.hand_to_job(id, owner, files, java::is_jvm(language)) {
            // Killed before their directory goes.
            drop((compile, run));
            return Err(e);
        }
        let launcher = PrestartLauncher {
            language,
            dir: dir.path().to_path_buf(),
            compile: RefCell::new(compile),
            run: RefCell::new(Some(run)),
            _bootstrap_file: bootstrap_file,
        };
        Ok((dir, launcher))
    }
}

fn spawn_waiting(
    spec: &WaitingSpec<'_>,
    dir: &WorkDir,
    ids: Option<(u32, u32)>,
) -> io::Result<Waiting> {
    // The channel first, so the child's ends have the lowest descriptors
    // (below std's own exec-error pipe, which the dup2 onto the targets must
    // not replace: 3 and 4, or one far above what the runner has open).
    let target = match spec.channel {
        Channel::Socket => spec.program_fd,
        Channel::Pipes => 3,
    };
    let (to_program, from_program, program_fd, ready_fd): (File, File, OwnedFd, Option<OwnedFd>) =
        match spec.channel {
            Channel::Socket => {
                let (ours, theirs) = UnixStream::pair()?;
                let reading = OwnedFd::from(ours.try_clone()?);
                (
                    File::from(OwnedFd::from(ours)),
                    File::from(reading),
                    OwnedFd::from(theirs),
                    None,
                )
            }
            Channel::Pipes => {
                let (program_read, program_write) = spawn::pipe()?;
                let (ready_read, ready_write) = spawn::pipe()?;
                // Reopened by path, a pipe checks its owner: the program's.
                if let Some((uid, gid)) = ids {
                    for end in [&program_read, &ready_write] {
                        nix::unistd::fchown(
                            end,
                            Some(nix::unistd::Uid::from_raw(uid)),
                            Some(nix::unistd::Gid::from_raw(gid)),
                        )?;
                    }
                }
                (
                    File::from(program_write),
                    File::from(ready_read),
                    program_read,
                    Some(ready_write),
                )
            }
        };
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .env("PATH", PROGRAM_PATH)
        .env("HOME", dir.path())
        .env("TMPDIR", dir.path())
        .env("LANG", "C.UTF-8")
        .current_dir(dir.path());
    let mut stdin = None;
    if spec.compiler {
        cmd.stdin(Stdio::null());
    } else {
        let (read, write) = spawn::pipe()?;
        cmd.stdin(Stdio::from(read));
        stdin = Some(File::from(write));
    }
    let (out_read, out_write) = spawn::pipe()?;
    let mut stderr = None;
    if spec.compiler {
        cmd.stderr(Stdio::from(out_write.try_clone()?));
    } else {
        let (read, write) = spawn::pipe()?;
        cmd.stderr(Stdio::from(write));
        stderr = Some(File::from(read));
    }
    cmd.stdout(Stdio::from(out_write));
    sys::install_child_setup(
        &mut cmd,
        ChildSetup {
            rlimits: None,
            program_fd: Some((program_fd.as_raw_fd(), target)),
            ready_fd: ready_fd.as_ref().map(|fd| (fd.as_raw_fd(), 4)),
            ids,
            parent: std::process::id() as i32,
        },
    );
    let child = cmd.spawn()?;
    // Our copies of the child's ends must close, so EOF and EPIPE work.
    drop(cmd);
    drop((program_fd, ready_fd));
    Ok(Waiting {
        pid: i32::try_from(child.id()).map_err(io::Error::other)?,
        to_program: Some(to_program),
        from_program: Some(from_program),
        stdin,
        stdout: Some(File::from(out_read)),
        stderr,
        launched: false,
    })
}

impl Waiting {
    /// Waits (once) for the process's "ready" byte, see [`wait_ready`].
    fn await_ready(&mut self) {
        if let Some(from_program) = self.from_program.take() {
            wait_ready(&from_program);
        }
    }

    /// Starts the step `spec` describes on this process, with `payload`
    /// (the program's words of the command) after the header's stdin mode
    /// and work directory.
    fn launch(&mut self, spec: &LaunchSpec<'_>, payload: &[&OsStr]) -> io::Result<Launched> {
        self.await_ready();
        let missing = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        let cpu_before_ms = cpu_used_ms(self.pid)?;
        let mut rlimits = spec.rlimits;
        rlimits.cpu_seconds = rlimits
            .cpu_seconds
            .saturating_add(cpu_before_ms.div_ceil(1000));
        sys::prlimit(self.pid, &rlimits.rlimits(), spec.ids)?;
        let mut header = Vec::new();
        header.extend_from_slice(if spec.stdin.is_empty() {
            b"null"
        } else {
            b"pipe"
        });
        for field in std::iter::once(spec.dir.as_os_str()).chain(payload.iter().copied()) {
            header.push(0);
            header.extend_from_slice(field.as_bytes());
        }
        // Without input, the pipe closes here: reads see EOF at once.
        if let (Some(pipe), false) = (self.stdin.take(), spec.stdin.is_empty()) {
            spawn::feed(pipe, spec.stdin.to_vec())?;
        }
        // From here the process is the job's: supervision reaps it.
        let launched = Launched {
            pid: self.pid,
            stdout: self.stdout.take().ok_or_else(|| missing("no stdout"))?,
            stderr: self.stderr.take(),
            cpu_before_ms,
        };
        if let Some(mut to_program) = self.to_program.take()
            && let Err(e) = to_program.write_all(&header)
        {
            // Dead already (e.g. killed): supervision reports what it was.
            eprintln!("warmpod-runner: sending the program to the pre-started process failed: {e}");
        }
        self.launched = true;
        Ok(launched)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.launched {
            return;
        }
        let _ = signal::killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = signal::kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = sys::wait4(self.pid, false);
    }
}

/// Starts a job's steps on pre-started processes (each once).
#[derive(Debug)]
pub struct PrestartLauncher {
    language: &'static Language,
    dir: PathBuf,
    compile: RefCell<Option<Waiting>>,
    run: RefCell<Option<Waiting>>,
    /// Removed once the launcher is dropped, after the job's processes.
    _bootstrap_file: Option<BootstrapFile>,
}

impl PrestartLauncher {
    fn slot(&self, step: StepKind) -> &RefCell<Option<Waiting>> {
        match step {
            StepKind::Compile => &self.compile,
            StepKind::Run => &self.run,
        }
    }
}

impl Launcher for PrestartLauncher {
    fn program_tasks_before(&self, step: StepKind) -> u64 {
        self.slot(step)
            .borrow()
            .as_ref()
            .map_or(0, |w| tasks_of(w.pid))
    }

    fn kept_during(&self, step: StepKind) -> Option<Kept> {
        if step != StepKind::Compile {
            return None;
        }
        self.run.borrow().as_ref().map(|w| Kept {
            pid: w.pid,
            tasks: tasks_of(w.pid),
        })
    }

    fn launch(&self, spec: &LaunchSpec<'_>) -> io::Result<Launched> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        if spec.dir != self.dir || spec.merge_output != (spec.step == StepKind::Compile) {
            return Err(invalid("not a step the processes were started for"));
        }
        let payload: Vec<&OsStr> = match spec.step {
            StepKind::Compile => java::compiler_args(spec.argv).map(OsStr::new).collect(),
            StepKind::Run => {
                // The run command's words before `{source}` are the runtime's.
                let skip = self.language.run.len().saturating_sub(1);
                if spec.argv.len() <= skip {
                    return Err(invalid("not the run command the runtime was started for"));
                }
                spec.argv[skip..].iter().map(OsStr::new).collect()
            }
        };
        let mut waiting = self
            .slot(spec.step)
            .borrow_mut()
            .take()
            .ok_or_else(|| invalid("no pre-started process for this step (or used already)"))?;
        waiting.launch(spec, &payload)
    }
}

/// Waits (at most [`READY_TIMEOUT`]) for the process's "ready" byte; a
/// process that died or hangs gets its program anyway, and supervision
/// reports what happened.
fn wait_ready(channel: &File) {
    let mut fds = [PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(READY_TIMEOUT).unwrap_or(PollTimeout::MAX);
    if matches!(poll(&mut fds, timeout), Ok(n) if n > 0) {
        let mut byte = [0u8; 1];
        let _ = (&*channel).read(&mut byte);
    }
}

/// Threads of process `pid` (1 if unreadable).
fn tasks_of(pid: i32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/task")).map_or(1, |d| d.count() as u64)
}

/// CPU time process `pid` has used, in ms, never more than it used: the
/// larger of its threads' scheduler statistics summed (nanoseconds; a
/// runtime such as Node or a JVM works on several threads during start-up,
/// and `/proc/<pid>/schedstat` is the main thread's alone) and the whole
/// process's `/proc/<pid>/stat` (clock ticks, which also count threads that
/// have exited).
fn cpu_used_ms(pid: i32) -> io::Result<u64> {
    let threads_ms = fs::read_dir(format!("/proc/{pid}/task")).map(|tasks| {
        let ns: u64 = tasks
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        ns / 1_000_000
    });
    match (threads_ms, crate::supervise::cpu_time_ms(pid)) {
        (Ok(a), Some(b)) => Ok(a.max(b)),
        (Ok(ms), None) | (Err(_), Some(ms)) => Ok(ms),
        (Err(e), None) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_javascript_and_java_are_supported() {
        for key in ["python", "javascript", "java"] {
            assert!(supported(Language::find(key).unwrap()), "{key}");
        }
        for key in ["c", "cpp", "bash"] {
            assert!(!supported(Language::find(key).unwrap()), "{key}");
        }
    }

    #[test]
    fn the_bootstraps_read_the_descriptor_they_are_given() {
        let js = bootstrap(Language::find("javascript").unwrap()).unwrap();
        let expected = format!("const PROGRAM_FD = {};", js.program_fd);
        assert!(js.code.contains(&expected), "{expected}");
        let python = bootstrap(Language::find("python").unwrap()).unwrap();
        assert_eq!(python.program_fd, 3);
        assert!(python.code.contains("os.read(3, 65536)"));
    }

    #[test]
    fn cpu_of_a_running_process_counts_its_threads() {
        use nix::sys::resource::{UsageWho, getrusage};
        use std::sync::mpsc;
        let me = std::process::id() as i32;
        let before = cpu_used_ms(me).unwrap();
        let (burnt, has_burnt) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            // 50 ms of this thread's own CPU, then stay alive until told.
            loop {
                let usage = getrusage(UsageWho::RUSAGE_THREAD).unwrap();
                let (u, s) = (usage.user_time(), usage.system_time());
                let us = (u.tv_sec() + s.tv_sec()) * 1_000_000 + u.tv_usec() + s.tv_usec();
                if us >= 50_000 {
                    break;
                }
            }
            burnt.send(()).unwrap();
            let _ = stopped.recv();
        });
        has_burnt.recv().unwrap();
        let after = cpu_used_ms(me).unwrap();
        drop(stop);
        thread.join().unwrap();
        assert!(after >= before + 49, "{before} ms, then {after} ms");
    }

    /// Python's entry with a prestart command that waits at a gate (a
    /// FIFO) before it execs the real interpreter with the bootstrap.
    fn gated_python(gate: &Path) -> &'static Language {
        let python = Language::find("python").unwrap();
        let script = format!(
            "read _ < '{}' && exec /usr/bin/python3 -B -c \"$0\"",
            gate.display()
        );
        let template: Vec<&'static str> = vec!["/bin/sh", "-c", script.leak(), "{bootstrap}"];
        Box::leak(Box::new(Language {
            prestart: Some(template.leak()),
            ..*python
        }))
    }

    #[test]
    fn start_returns_once_the_interpreter_said_ready() {
        use std::sync::mpsc;
        use std::time::Duration;
        let root = tempfile::tempdir().unwrap();
        let gate = root.path().join("gate");
        nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let language = gated_python(&gate);
        let work_root = root.path().to_path_buf();
        let (done, started) = mpsc::channel();
        let starter = std::thread::spawn(move || {
            let prestarted =
                Prestarted::start(language, None, &work_root, Path::new("/nonexistent"));
            done.send(prestarted.map(|_| ())).unwrap();
        });
        // The process is spawned but held at the gate: not ready, so start
        // has not returned (however long one looks).
        assert!(matches!(
            started.recv_timeout(Duration::from_millis(300)),
            Err(mpsc::RecvTimeoutError::Timeout)
        ));
        fs::write(&gate, b"go\n").unwrap();
        let outcome = started
            .recv_timeout(READY_TIMEOUT)
            .expect("start returns once ready");
        outcome.unwrap();
        starter.join().unwrap();
    }
}
