//! One job, start to finish: work directory, compile step, run step, result.

use std::cell::{Cell, RefCell};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use uuid::Uuid;
use warmpod_protocol::{JobResult, ResolvedLimits, Status, language};

use crate::classify::{self, Verdict};
use crate::identity::{Identity, IdentityError};
use crate::job::{self, PreparedJob};
use crate::limits;
use crate::prestart::{DEFAULT_JAVA_BOOT_DIR, PrestartError, PrestartLauncher, Prestarted};
use crate::reaper;
use crate::signals::StopSignals;
use crate::spawn::{ForkExec, LaunchSpec, Launcher, StepKind};
use crate::supervise::{self, Exit, Outcome, Watch};
use crate::sys;
use crate::workdir::WorkDir;

/// Where work directories are created unless configured otherwise.
pub const DEFAULT_WORK_ROOT: &str = "/tmp";

/// Why the runner could not get ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Becoming a child subreaper failed.
    #[error("becoming a child subreaper failed: {0}")]
    Subreaper(#[source] io::Error),
    /// No program identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Killing what a previous runner left under our uid failed.
    #[error("killing the program uid's leftover processes failed: {0}")]
    Sweep(#[source] io::Error),
}

/// Runs jobs: holds the program identity for the runner's life.
#[derive(Debug)]
pub struct Runner<L: Launcher = ForkExec> {
    identity: Identity,
    work_root: PathBuf,
    launcher: L,
    /// Set when a program's processes could not all be confirmed dead, so
    /// [`finish`](Runner::finish) must not record the uid as clean.
    left_processes: Cell<bool>,
    /// An interpreter started before the job (see [`Runner::prestart`]).
    prestarted: RefCell<Option<Prestarted>>,
    /// Where pre-started Java finds its precompiled bootstrap.
    java_boot_dir: PathBuf,
    /// What finished jobs left to remove, removed by
    /// [`finish`](Runner::finish) (or when the runner is dropped), after
    /// the result went out: removing a work directory is on no job's
    /// critical path, and a sandbox is destroyed once it answered anyway.
    leftovers: RefCell<Leftovers>,
}

/// A finished job's work directory and, when it ran on pre-started
/// processes, their launcher (the bootstrap file, any process no step
/// used): dropped launchers first, so processes die before their files go.
#[derive(Debug, Default)]
struct Leftovers {
    launchers: Vec<PrestartLauncher>,
    dirs: Vec<WorkDir>,
}

impl Leftovers {
    fn remove(&mut self) {
        self.launchers.clear();
        self.dirs.clear();
    }
}

impl Runner<ForkExec> {
    /// Gets ready to run a job: becomes a subreaper, takes a program
    /// identity (see [`Identity::acquire`]) and kills anything a previous
    /// holder of a dedicated uid left behind.
    ///
    /// # Errors
    /// See [`StartError`].
    pub fn start(
        pinned_uid: Option<u32>,
        lock_dir: &std::path::Path,
        work_root: PathBuf,
    ) -> Result<Self, StartError> {
        reaper::become_subreaper().map_err(StartError::Subreaper)?;
        let identity = Identity::acquire(pinned_uid, lock_dir)?;
        if let Some(uid) = identity.dedicated_uid().filter(|_| identity.needs_sweep()) {
            sys::kill_all_owned_by(uid).map_err(StartError::Sweep)?;
        }
        Ok(Self {
            identity,
            work_root,
            launcher: ForkExec,
            left_processes: Cell::new(false),
            prestarted: RefCell::new(None),
            java_boot_dir: PathBuf::from(DEFAULT_JAVA_BOOT_DIR),
            leftovers: RefCell::default(),
        })
    }
}

impl<L: Launcher> Runner<L> {
    /// The same runner starting programs with `launcher` instead (e.g.
    /// pre-started interpreters); supervision and verdicts are unchanged.
    pub fn with_launcher<M: Launcher>(self, launcher: M) -> Runner<M> {
        Runner {
            identity: self.identity,
            work_root: self.work_root,
            launcher,
            left_processes: self.left_processes,
            prestarted: self.prestarted,
            java_boot_dir: self.java_boot_dir,
            leftovers: self.leftovers,
        }
    }

    /// The same runner, pre-starting Java with the precompiled bootstrap
    /// of `dir` (default [`DEFAULT_JAVA_BOOT_DIR`]; a missing or stale one
    /// means the source-file launcher).
    #[must_use]
    pub fn with_java_boot_dir(mut self, dir: PathBuf) -> Self {
        self.java_boot_dir = dir;
        self
    }

    /// Starts `language`'s interpreter now, as the program uid, waiting for
    /// a job's program (see `prestart`). A job of that language then runs
    /// on it, with exactly the results of the cold path; any other job
    /// runs cold after the interpreter is killed.
    ///
    /// # Errors
    /// When the language cannot be pre-started or starting it failed.
    pub fn prestart(
        &self,
        language: &'static warmpod_protocol::Language,
    ) -> Result<(), PrestartError> {
        let started = Prestarted::start(
            language,
            self.identity.switch_to(),
            &self.work_root,
            &self.java_boot_dir,
        )?;
        // A previous one (if any) is killed here.
        *self.prestarted.borrow_mut() = Some(started);
        Ok(())
    }

    /// The language of the interpreter waiting for a job, if any.
    pub fn prestarted_language(&self) -> Option<&'static str> {
        self.prestarted.borrow().as_ref().map(|p| p.language().key)
    }

    /// Ends the runner's life: records the program uid as clean when every
    /// program process was reaped, so the next runner holding it can skip
    /// its start-up sweep.
    ///
    /// # Errors
    /// When the uid's lock file cannot be written.
    pub fn finish(self) -> io::Result<()> {
        self.leftovers.borrow_mut().remove();
        // An interpreter no job used is killed and reaped first.
        drop(self.prestarted.borrow_mut().take());
        if self.left_processes.get() {
            return Ok(());
        }
        self.identity.mark_clean()
    }

    /// The uid programs run as.
    pub fn program_uid(&self) -> u32 {
        self.identity.uid()
    }

    /// Runs the job in `line` (as returned by [`job::read_line`]); any
    /// problem with it becomes an `internal_error` result.
    pub fn run_line(&self, line: &[u8]) -> JobResult {
        match job::parse(line) {
            Ok(job) => self.run(&job),
            Err((id, e)) => JobResult::internal_error(id, e.to_string()),
        }
    }

    /// Runs a checked job.
    pub fn run(&self, job: &PreparedJob) -> JobResult {
        // From here on SIGTERM & co. end the job cleanly instead of the
        // runner (see `signals`); without them, the default actions stay.
        let signals = StopSignals::install().ok();
        self.run_with(job, signals.as_ref())
    }

    fn run_with(&self, job: &PreparedJob, signals: Option<&StopSignals>) -> JobResult {
        let owner = self.identity.switch_to();
        // Taken in every case: an interpreter the job cannot use is killed
        // (dropped) before anything of the job runs.
        let prestarted = self.prestarted.borrow_mut().take().filter(|p| {
            let entry = job.files.first().map_or("", |(name, _)| name.as_str());
            p.serves(
                job.language,
                entry,
                job.limits.memory_kb,
                job.compile_limits.memory_kb,
            )
        });
        if let Some(prestarted) = prestarted {
            return match prestarted.hand_over(job.id, owner, &job.files) {
                Ok((dir, launcher)) => {
                    let result = self.compile_and_execute(job, &dir, signals, &launcher);
                    let mut leftovers = self.leftovers.borrow_mut();
                    leftovers.launchers.push(launcher);
                    leftovers.dirs.push(dir);
                    result
                }
                Err(e) => {
                    let message = format!("creating the work directory failed: {e}");
                    JobResult::internal_error(job.id, message)
                }
            };
        }
        let dir = match WorkDir::create(&self.work_root, job.id, owner, &job.files) {
            Ok(dir) => dir,
            Err(e) => {
                let message = format!("creating the work directory failed: {e}");
                return JobResult::internal_error(job.id, message);
            }
        };
        let result = self.compile_and_execute(job, &dir, signals, &self.launcher);
        // Every process of the job is gone; the directory goes at `finish`.
        self.leftovers.borrow_mut().dirs.push(dir);
        result
    }

    /// Both steps, started by `launcher`.
    fn compile_and_execute(
        &self,
        job: &PreparedJob,
        dir: &WorkDir,
        signals: Option<&StopSignals>,
        launcher: &dyn Launcher,
    ) -> JobResult {
        let compile_output = match self.compile(job, dir, signals, launcher) {
            Ok(output) => output,
            Err(failure) => return *failure,
        };
        let mut result = self.execute(job, dir, signals, launcher);
        result.compile_output = compile_output;
        result
    }

    /// The compile step, for compiled languages: the compiler's output, or
    /// the final result when compiling failed.
    fn compile(
        &self,
        job: &PreparedJob,
        dir: &WorkDir,
        signals: Option<&StopSignals>,
        launcher: &dyn Launcher,
    ) -> Result<String, Box<JobResult>> {
        let Some(template) = job.language.compile else {
            return Ok(String::new());
        };
        let argv = compile_argv(job, template);
        let step = Step {
            argv: &argv,
            limits: &job.compile_limits,
            stdin: b"",
            merge_output: true,
            kind: StepKind::Compile,
        };
        let outcome = self
            .step(job, dir, &step, signals, launcher)
            .map_err(|message| Box::new(JobResult::internal_error(job.id, message)))?;
        let output = String::from_utf8_lossy(&outcome.stdout.bytes).into_owned();
        match compile_failure(job, &outcome, &output) {
            Some(failure) => Err(Box::new(failure)),
            None => Ok(output),
        }
    }

    /// The run step, started by `launcher`, and its verdict.
    fn execute(
        &self,
        job: &PreparedJob,
        dir: &WorkDir,
        signals: Option<&StopSignals>,
        launcher: &dyn Launcher,
    ) -> JobResult {
        let argv = run_argv(job);
        let step = Step {
            argv: &argv,
            limits: &job.limits,
            stdin: job.stdin.as_bytes(),
            merge_output: false,
            kind: StepKind::Run,
        };
        match self.step(job, dir, &step, signals, launcher) {
            Ok(outcome) => {
                let verdict = classify::classify(&outcome, job.language, &job.limits);
                run_result(job.id, &outcome, verdict)
            }
            Err(message) => JobResult::internal_error(job.id, message),
        }
    }

    /// Tasks the program's uid will run besides the program: for a
    /// dedicated uid, only a later step's waiting program (`kept`); else
    /// what `/proc` shows now plus the stdin feeder thread the launch adds,
    /// less the step's own pre-started program.
    fn tasks_before(&self, step: &Step<'_>, launcher: &dyn Launcher) -> u64 {
        if self.identity.is_dedicated() {
            return launcher.kept_during(step.kind).map_or(0, |k| k.tasks);
        }
        (self.identity.tasks_running() + u64::from(!step.stdin.is_empty()))
            .saturating_sub(launcher.program_tasks_before(step.kind))
    }

    fn step(
        &self,
        job: &PreparedJob,
        dir: &WorkDir,
        step: &Step<'_>,
        signals: Option<&StopSignals>,
        launcher: &dyn Launcher,
    ) -> Result<Outcome, String> {
        let spec = LaunchSpec {
            argv: step.argv,
            dir: dir.path(),
            ids: self.identity.switch_to(),
            rlimits: limits::plan(job.language, step.limits, self.tasks_before(step, launcher)),
            stdin: step.stdin,
            merge_output: step.merge_output,
            step: step.kind,
        };
        let watch = Watch {
            wall: Duration::from_millis(step.limits.wall_time_ms),
            cpu_ms: step.limits.cpu_time_ms,
            output_cap: usize::try_from(step.limits.max_output_bytes).unwrap_or(usize::MAX),
            dedicated_uid: self.identity.dedicated_uid(),
            max_tasks: (!self.identity.nproc_is_exact()).then_some(step.limits.max_processes),
            keep: launcher.kept_during(step.kind).map(|k| k.pid),
        };
        let started = Instant::now();
        let launched = launcher
            .launch(&spec)
            .map_err(|e| format!("starting {} failed: {e}", step.argv[0]))?;
        supervise::supervise(launched, started, &watch, signals).map_err(|e| {
            self.left_processes.set(true);
            e.to_string()
        })
    }
}

/// The compile command of `job`: `template` expanded with the job's
/// sources and its compile memory limit.
fn compile_argv(job: &PreparedJob, template: &[&str]) -> Vec<String> {
    language::expand(template, &job.sources(), job.compile_limits.memory_kb)
}

/// The run command of `job`: the language's template expanded with the
/// run memory limit, then the job's arguments.
fn run_argv(job: &PreparedJob) -> Vec<String> {
    let mut argv = language::expand(job.language.run, &job.sources(), job.limits.memory_kb);
    argv.extend(job.args.iter().cloned());
    argv
}

/// One process to start and supervise.
struct Step<'a> {
    argv: &'a [String],
    limits: &'a ResolvedLimits,
    stdin: &'a [u8],
    merge_output: bool,
    kind: StepKind,
}

/// The `compile_error` result of a failed compile step, if it failed.
fn compile_failure(job: &PreparedJob, outcome: &Outcome, output: &str) -> Option<JobResult> {
    let verdict = classify::classify(outcome, job.language, &job.compile_limits);
    let message = match verdict.status {
        Status::Accepted => return None,
        Status::InternalError => {
            let message = verdict.message.unwrap_or_default();
            return Some(JobResult::internal_error(job.id, message));
        }
        Status::TimeLimitExceeded => Some(format!(
            "compile time limit exceeded: {}",
            verdict.message.unwrap_or_default()
        )),
        Status::RuntimeError => match outcome.exit {
            Exit::Code(code) => Some(format!("the compiler exited with code {code}")),
            Exit::Signal(sig) => Some(format!("the compiler was killed by {}", signal_name(sig))),
        },
        _ => verdict.message.map(|m| format!("compile step: {m}")),
    };
    Some(JobResult {
        compile_output: output.to_string(),
        message,
        ..JobResult::new(job.id, Status::CompileError)
    })
}

fn run_result(id: Uuid, outcome: &Outcome, verdict: Verdict) -> JobResult {
    let (exit_code, signal) = match outcome.exit {
        Exit::Code(c) => (Some(c), None),
        Exit::Signal(s) => (None, Some(s)),
    };
    JobResult {
        exit_code,
        signal,
        signal_name: signal.map(signal_name),
        stdout: String::from_utf8_lossy(&outcome.stdout.bytes).into_owned(),
        stderr: String::from_utf8_lossy(&outcome.stderr.bytes).into_owned(),
        stdout_truncated: outcome.stdout.truncated,
        stderr_truncated: outcome.stderr.truncated,
        wall_time_ms: u64::try_from(outcome.wall.as_millis()).unwrap_or(u64::MAX),
        cpu_time_ms: outcome.cpu_ms,
        memory_kb: outcome.max_rss_kb,
        message: verdict.message,
        ..JobResult::new(id, verdict.status)
    }
}

/// `"SIGSEGV"` for 11; `"SIG<n>"` for numbers without a name.
pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| format!("SIG{sig}"), |s| s.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(line: &str) -> PreparedJob {
        job::parse(line.as_bytes()).unwrap()
    }

    #[test]
    fn commands_use_the_right_memory_limit_and_append_args() {
        let job = prepared(
            r#"{"id":"5f0c6d1e-6a53-4f43-9a1d-0c8b2a1e9f10","language":"java",
                "files":[{"content":""},{"name":"Util.java","content":""}],
                "args":["x","y z"],"limits":{"memory_kb":131072},
                "compile_limits":{"memory_kb":524288}}"#,
        );
        let compile = compile_argv(&job, job.language.compile.unwrap());
        assert!(compile.contains(&"-J-Xmx512m".to_string()), "{compile:?}");
        assert_eq!(&compile[compile.len() - 2..], ["Main.java", "Util.java"]);
        let run = run_argv(&job);
        assert!(run.contains(&"-Xmx128m".to_string()), "{run:?}");
        assert_eq!(&run[run.len() - 3..], ["Main", "x", "y z"]);
    }

    #[test]
    fn python_runs_its_entry_point() {
        let job = prepared(
            r#"{"id":"5f0c6d1e-6a53-4f43-9a1d-0c8b2a1e9f10","language":"py",
                "files":[{"name":"app.py","content":""},{"name":"lib.py","content":""}]}"#,
        );
        assert_eq!(run_argv(&job), ["/usr/bin/python3", "-B", "app.py"]);
    }

    /// Delegates to [`ForkExec`], recording every command.
    #[derive(Default)]
    struct Recording(std::sync::Mutex<Vec<Vec<String>>>);

    impl Launcher for &Recording {
        fn launch(&self, spec: &LaunchSpec<'_>) -> io::Result<crate::spawn::Launched> {
            self.0.lock().unwrap().push(spec.argv.to_vec());
            ForkExec.launch(spec)
        }
    }

    #[test]
    fn another_launcher_slots_in_for_both_steps() {
        let work = tempfile::tempdir().unwrap();
        let recording = Recording::default();
        // The shared lock directory: a private one would hand out uids that
        // concurrent runners (other tests) hold, and sweep their programs.
        let locks = std::path::Path::new(crate::identity::LOCK_DIR);
        let runner = Runner::start(None, locks, work.path().to_path_buf())
            .unwrap()
            .with_launcher(&recording);
        let result = runner.run_line(
            br#"{"id":"5f0c6d1e-6a53-4f43-9a1d-0c8b2a1e9f10","language":"c",
                 "files":[{"content":"int main(void) { return 7; }"}]}"#,
        );
        assert_eq!(result.status, Status::RuntimeError, "{result:?}");
        assert_eq!(result.exit_code, Some(7));
        let commands = recording.0.lock().unwrap();
        assert_eq!(commands.len(), 2, "compile and run: {commands:?}");
        assert_eq!(commands[0][0], "/usr/bin/gcc");
        assert_eq!(commands[1], ["./main"]);
    }

    #[test]
    fn signals_are_named() {
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(25), "SIGXFSZ");
        assert_eq!(signal_name(999), "SIG999");
    }
}
