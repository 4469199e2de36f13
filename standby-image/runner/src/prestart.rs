//! Pre-started interpreters: a language's interpreter started before the
//! job arrives, already as the program uid, in its own session, with the
//! clean environment and its (single-use) work directory as cwd, blocked
//! reading its program from a private socket (fd 3; for Node a high
//! descriptor, see `program_fd`), on which it first says it is ready.
//!
//! When the job arrives, [`Prestarted::hand_over`] renames the work
//! directory to the job's and writes its files; the [`Launcher`] it returns
//! then applies every resource limit with `prlimit` (`RLIMIT_CPU` raised by
//! the CPU the start-up used, which is also subtracted from the job's CPU
//! time; a job that arrives before the interpreter is ready waits for it,
//! on the job's wall clock), sends `"<stdin mode>\0<work dir>\0<argv>..."` and feeds stdin.
//! From there supervision and verdicts are the cold path's. The
//! language's bootstrap (`prestart/<key>.py`, `.js`…) makes the program run
//! as the cold run command would; a runtime that loads it from a file gets
//! a [`BootstrapFile`] beside the work directory.
//!
//! A job of another language, or with a memory limit the interpreter was
//! not started for, runs on the cold path: the interpreter is killed first
//! (dropping [`Prestarted`] kills and reaps it and removes its directory).

use std::cell::RefCell;
use std::fs::{self, File};
use std::io::Read;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use uuid::Uuid;
use warmpod_protocol::{Language, ResolvedLimits, language};

use crate::spawn::{self, LaunchSpec, Launched, Launcher, PROGRAM_PATH};
use crate::sys::{self, ChildSetup};
use crate::workdir::WorkDir;

mod bootstrap_file;
use bootstrap_file::BootstrapFile;

/// How long a job waits for an interpreter still starting up before it is
/// given its program anyway (its wall clock runs meanwhile).
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The bootstrap code of `language`, if the runner has one.
pub fn bootstrap(language: &Language) -> Option<&'static str> {
    match language.key {
        "python" => Some(include_str!("prestart/python.py")),
        "javascript" => Some(include_str!("prestart/javascript.js")),
        _ => None,
    }
}

/// The file name extension of `language`'s bootstrap file.
fn bootstrap_extension(language: &Language) -> &'static str {
    match language.key {
        "javascript" => "js",
        _ => "txt",
    }
}

/// The descriptor `language`'s bootstrap reads its program from: 3, or
/// for Node a high one: its start-up opens a dozen descriptors (epoll,
/// eventfd, pipes) after the socket, which must take the numbers they take
/// in a cold start, so that the program's own first `open` returns the
/// cold path's number too (`prestart/javascript.js` has the same number).
/// 1023 fits the usual soft `RLIMIT_NOFILE` of 1024; under a lower one the
/// spawn fails, which is logged, and the job runs cold.
fn program_fd(language: &Language) -> i32 {
    match language.key {
        "javascript" => 1023,
        _ => 3,
    }
}

/// Whether jobs of `language` can run on a pre-started interpreter.
pub fn supported(language: &Language) -> bool {
    language.prestart.is_some() && language.compile.is_none() && bootstrap(language).is_some()
}

/// Why no interpreter could be pre-started.
#[derive(Debug, thiserror::Error)]
pub enum PrestartError {
    /// The language has no pre-start command or bootstrap.
    #[error("language {0} cannot be pre-started")]
    Unsupported(&'static str),
    /// Creating the directory or pipes, or spawning, failed.
    #[error("pre-starting the {language} interpreter failed: {source}")]
    Spawn {
        /// The language's key.
        language: &'static str,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

/// An interpreter waiting for its program.
#[derive(Debug)]
pub struct Prestarted {
    language: &'static Language,
    /// The memory limit (KiB) its command was expanded for.
    memory_kb: u64,
    /// Dropped first (fields drop in order): the process dies before its
    /// directory is removed.
    waiting: Waiting,
    dir: WorkDir,
    /// Kept (after the process is gone) while the job may load it.
    bootstrap_file: Option<BootstrapFile>,
}

/// The waiting process and the runner's ends of its pipes. Dropped unused,
/// it kills and reaps the process.
#[derive(Debug)]
struct Waiting {
    pid: i32,
    program: Option<UnixStream>,
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    /// Set once launched: supervision then owns (and reaps) the process.
    launched: bool,
}

impl Prestarted {
    /// Starts `language`'s interpreter as `ids` in a fresh directory under
    /// `work_root`, for jobs with the default memory limit.
    ///
    /// # Errors
    /// See [`PrestartError`].
    pub fn start(
        language: &'static Language,
        ids: Option<(u32, u32)>,
        work_root: &std::path::Path,
    ) -> Result<Self, PrestartError> {
        let (Some(template), Some(code), true) =
            (language.prestart, bootstrap(language), supported(language))
        else {
            return Err(PrestartError::Unsupported(language.key));
        };
        let memory_kb = ResolvedLimits::DEFAULT.memory_kb;
        let spawn_err = |source| PrestartError::Spawn {
            language: language.key,
            source,
        };
        let bootstrap_file = template
            .iter()
            .any(|a| a.contains("{bootstrap_file}"))
            .then(|| BootstrapFile::write(work_root, bootstrap_extension(language), code))
            .transpose()
            .map_err(spawn_err)?;
        let file_path = bootstrap_file
            .as_ref()
            .map(|f| f.path().to_string_lossy().into_owned())
            .unwrap_or_default();
        let argv: Vec<String> = language::expand(template, &[language.source_file], memory_kb)
            .into_iter()
            .map(|a| {
                a.replace("{bootstrap_file}", &file_path)
                    .replace("{bootstrap}", code)
            })
            .collect();
        let dir = WorkDir::create_for_prestart(work_root, ids).map_err(spawn_err)?;
        let waiting = spawn_waiting(&argv, &dir, ids, program_fd(language)).map_err(spawn_err)?;
        Ok(Self {
            language,
            memory_kb,
            waiting,
            dir,
            bootstrap_file,
        })
    }

    /// The pre-started language.
    pub fn language(&self) -> &'static Language {
        self.language
    }

    /// Whether a job of `language` with a memory limit of `memory_kb` and
    /// entry point `entry` can run on this interpreter exactly as on the
    /// cold path (a command that names the entry point, like Node's, was
    /// started for the default one).
    pub fn serves(&self, language: &Language, memory_kb: u64, entry: &str) -> bool {
        let Some(template) = self.language.prestart else {
            return false;
        };
        let uses_memory = template.iter().any(|a| a.contains("{memory_mb}"))
            || self.language.run.iter().any(|a| a.contains("{memory_mb}"));
        let names_entry = template.iter().any(|a| a.contains("{source}"));
        language.key == self.language.key
            && (!uses_memory || memory_kb == self.memory_kb)
            && (!names_entry || entry == self.language.source_file)
    }

    /// Gives the interpreter to job `id`: its directory takes the job's
    /// name and `files` (owned by `owner`). Returns the directory and the
    /// launcher that starts the job's run step on the interpreter.
    ///
    /// # Errors
    /// When the directory cannot be renamed or written (the interpreter is
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
            waiting,
            bootstrap_file,
            ..
        } = self;
        // On failure `waiting` is dropped: the interpreter is killed.
        dir.hand_to_job(id, owner, files)?;
        let launcher = PrestartLauncher {
            language,
            dir: dir.path().to_path_buf(),
            waiting: RefCell::new(Some(waiting)),
            _bootstrap_file: bootstrap_file,
        };
        Ok((dir, launcher))
    }
}

fn spawn_waiting(
    argv: &[String],
    dir: &WorkDir,
    ids: Option<(u32, u32)>,
    program_fd: i32,
) -> io::Result<Waiting> {
    // The program socket first, so the child's end has the lowest
    // descriptor (below std's own exec-error pipe, which the dup2 onto
    // `program_fd` must not replace: 3, or one far above what the runner
    // has open).
    let (program_write, program_read) = UnixStream::pair()?;
    let (stdin_read, stdin_write) = spawn::pipe()?;
    let (out_read, out_write) = spawn::pipe()?;
    let (err_read, err_write) = spawn::pipe()?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", PROGRAM_PATH)
        .env("HOME", dir.path())
        .env("TMPDIR", dir.path())
        .env("LANG", "C.UTF-8")
        .current_dir(dir.path())
        .stdin(Stdio::from(stdin_read))
        .stdout(Stdio::from(out_write))
        .stderr(Stdio::from(err_write));
    sys::install_child_setup(
        &mut cmd,
        ChildSetup {
            rlimits: None,
            program_fd: Some((program_read.as_raw_fd(), program_fd)),
            ids,
            parent: std::process::id() as i32,
        },
    );
    let child = cmd.spawn()?;
    // Our copies of the child's ends must close, so EOF and EPIPE work.
    drop(cmd);
    drop(program_read);
    Ok(Waiting {
        pid: i32::try_from(child.id()).map_err(io::Error::other)?,
        program: Some(program_write),
        stdin: Some(File::from(stdin_write)),
        stdout: Some(File::from(out_read)),
        stderr: Some(File::from(err_read)),
        launched: false,
    })
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

/// Starts a job's run step on a pre-started interpreter (once).
#[derive(Debug)]
pub struct PrestartLauncher {
    language: &'static Language,
    dir: std::path::PathBuf,
    waiting: RefCell<Option<Waiting>>,
    /// Removed once the launcher is dropped, after the job's processes.
    _bootstrap_file: Option<BootstrapFile>,
}

impl Launcher for PrestartLauncher {
    fn program_tasks_before(&self) -> u64 {
        self.waiting
            .borrow()
            .as_ref()
            .map_or(0, |w| tasks_of(w.pid))
    }

    fn launch(&self, spec: &LaunchSpec<'_>) -> io::Result<Launched> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        // The run command's words before `{source}` are the interpreter's.
        let skip = self.language.run.len().saturating_sub(1);
        if spec.merge_output || spec.dir != self.dir || spec.argv.len() <= skip {
            return Err(invalid("not the run step the interpreter was started for"));
        }
        let mut waiting = self
            .waiting
            .borrow_mut()
            .take()
            .ok_or_else(|| invalid("the pre-started interpreter was used already"))?;
        let mut program = waiting
            .program
            .take()
            .ok_or_else(|| invalid("no program socket"))?;
        wait_ready(&mut program);
        let cpu_before_ms = cpu_used_ms(waiting.pid)?;
        let mut rlimits = spec.rlimits;
        rlimits.cpu_seconds = rlimits
            .cpu_seconds
            .saturating_add(cpu_before_ms.div_ceil(1000));
        sys::prlimit(waiting.pid, &rlimits.rlimits(), spec.ids)?;
        let mut header = Vec::new();
        header.extend_from_slice(if spec.stdin.is_empty() {
            b"null"
        } else {
            b"pipe"
        });
        for field in std::iter::once(spec.dir.as_os_str())
            .chain(spec.argv[skip..].iter().map(std::ffi::OsStr::new))
        {
            header.push(0);
            header.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(field));
        }
        let stdin = waiting.stdin.take();
        if let (Some(pipe), false) = (stdin, spec.stdin.is_empty()) {
            spawn::feed(pipe, spec.stdin.to_vec())?;
        }
        // From here the process is the job's: supervision reaps it.
        let launched = Launched {
            pid: waiting.pid,
            stdout: waiting.stdout.take().ok_or_else(|| invalid("no stdout"))?,
            stderr: waiting.stderr.take(),
            cpu_before_ms,
        };
        if let Err(e) = program.write_all(&header) {
            // Dead already (e.g. killed): supervision reports what it was.
            eprintln!("warmpod-runner: sending the program to the interpreter failed: {e}");
        }
        let _ = program.shutdown(Shutdown::Both);
        waiting.launched = true;
        Ok(launched)
    }
}

/// Waits (at most [`READY_TIMEOUT`]) for the interpreter's "ready" byte;
/// an interpreter that died or hangs gets its program anyway, and
/// supervision reports what happened.
fn wait_ready(program: &mut UnixStream) {
    let _ = program.set_read_timeout(Some(READY_TIMEOUT));
    let mut byte = [0u8; 1];
    let _ = program.read(&mut byte);
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
    let stat_ms = fs::read_to_string(format!("/proc/{pid}/stat")).and_then(|stat| {
        let ticks = crate::reaper::parse_stat(pid, &stat)
            .ok_or_else(|| io::Error::other("unreadable /proc stat"))?
            .cpu_ticks;
        let per_second = match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
            Ok(Some(t)) if t > 0 => t as u64,
            _ => 100,
        };
        Ok(ticks * 1000 / per_second)
    });
    match (threads_ms, stat_ms) {
        (Ok(a), Ok(b)) => Ok(a.max(b)),
        (Ok(ms), Err(_)) | (Err(_), Ok(ms)) => Ok(ms),
        (Err(e), Err(_)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_and_javascript_are_supported() {
        for key in ["python", "javascript"] {
            assert!(supported(Language::find(key).unwrap()), "{key}");
        }
        for key in ["c", "cpp", "java", "bash"] {
            assert!(!supported(Language::find(key).unwrap()), "{key}");
        }
    }

    #[test]
    fn the_bootstraps_read_the_descriptor_they_are_given() {
        let js = Language::find("javascript").unwrap();
        let expected = format!("const PROGRAM_FD = {};", program_fd(js));
        assert!(bootstrap(js).unwrap().contains(&expected), "{expected}");
        let python = Language::find("python").unwrap();
        assert_eq!(program_fd(python), 3);
        assert!(bootstrap(python).unwrap().contains("os.read(3, 65536)"));
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
}
