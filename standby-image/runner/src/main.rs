//! `warmpod-runner`: reads one job line on stdin, prints one result line.
//!
//! `--versions` prints `{language: version}`; `--check` verifies every
//! runtime is installed (a readiness probe). `--serve`, `--relay` and
//! `--serving` are the specialised standby pod's modes (see `serving` below
//! and the library's `serve` module). `--ready-fd N` writes one byte to
//! descriptor N once the runner can take its job (the local backend's
//! readiness signal; see the library's `ready` module).

use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use uuid::Uuid;
use warmpod_protocol::{JobResult, Language};
use warmpod_runner::{
    DEFAULT_JAVA_BOOT_DIR, DEFAULT_WORK_ROOT, LOCK_DIR, ReadyFd, Runner, read_line, salvage_id,
};

/// Runs ONE warmpod job under limits: one JSON job line in, one JSON result
/// line out.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Print `{language: version line}` as one JSON object and exit.
    #[arg(long, conflicts_with = "check")]
    versions: bool,
    /// Check every language's runtime is installed; exit 1 naming any
    /// missing program.
    #[arg(long)]
    check: bool,
    /// Run programs as this uid (root only); default: a free uid of
    /// 61000-61999.
    #[arg(long, env = "WARMPOD_RUNNER_UID")]
    uid: Option<u32>,
    /// Directory in which each job's private work directory is created.
    #[arg(long, env = "WARMPOD_RUNNER_WORK_ROOT", default_value = DEFAULT_WORK_ROOT)]
    work_root: PathBuf,
    /// Start this language's interpreter before reading the job (a
    /// pre-started runtime, e.g. `python`); a job of another language runs
    /// cold. Languages without pre-start support are a configuration error.
    #[arg(long, env = "WARMPOD_RUNNER_PRESTART", value_name = "LANGUAGE")]
    prestart: Option<String>,
    /// Where pre-started Java finds its precompiled bootstrap
    /// (`standby-image/build-java-boot.sh`); when it is missing or was
    /// built from another bootstrap than this runner's, the JVMs compile
    /// the bootstrap from source at start-up instead (slower, same results).
    #[arg(long, env = "WARMPOD_RUNNER_JAVA_BOOT_DIR", default_value = DEFAULT_JAVA_BOOT_DIR)]
    java_boot_dir: PathBuf,
    /// Directory of the per-uid lock files (root only).
    #[arg(long, env = "WARMPOD_RUNNER_LOCK_DIR", default_value = LOCK_DIR)]
    lock_dir: PathBuf,
    /// Serve ONE job on a unix socket at this path instead of stdin (a
    /// standby pod's main process, usually with `--prestart`), then exit.
    #[arg(long, value_name = "SOCKET", conflicts_with_all = ["relay", "serving", "versions", "check"])]
    serve: Option<PathBuf>,
    /// Copy the job line from stdin to the runner serving at this socket
    /// and its result back; run the job here, cold, when nothing serves.
    #[arg(long, value_name = "SOCKET", conflicts_with_all = ["prestart", "serving", "versions", "check"])]
    relay: Option<PathBuf>,
    /// Exit 0 if a runner serves at this socket, 1 if not (a readiness
    /// probe; never connects).
    #[arg(long, value_name = "SOCKET", conflicts_with_all = ["versions", "check"])]
    serving: Option<PathBuf>,
    /// Write one byte to this inherited descriptor (3 or above, open for
    /// writing) and close it once ready for the job: after any pre-start,
    /// right before blocking on stdin (or on `--serve`'s socket).
    #[arg(
        long,
        value_name = "FD",
        value_parser = clap::value_parser!(i32).range(3..),
        allow_negative_numbers = true,
        conflicts_with_all = ["relay", "serving", "versions", "check"]
    )]
    ready_fd: Option<i32>,
}

/// Exit code for bad command-line configuration.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // First, before the runner opens or starts anything.
    let ready = match cli.ready_fd.map(ReadyFd::adopt).transpose() {
        Ok(ready) => ready,
        Err(e) => {
            eprintln!("warmpod-runner: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.versions {
        return print_line(&serde_json::to_string(&warmpod_runner::versions()));
    }
    if cli.check {
        return check();
    }
    if let Some(socket) = &cli.serving {
        return serving::probe(socket);
    }
    if let Some(socket) = &cli.relay {
        return serving::relay(&cli, socket);
    }
    let prestart = match cli.prestart.as_deref().map(prestart_language).transpose() {
        Ok(language) => language,
        Err(message) => {
            eprintln!("warmpod-runner: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runner = Runner::start(cli.uid, &cli.lock_dir, cli.work_root.clone())
        .map(|r| r.with_java_boot_dir(cli.java_boot_dir.clone()));
    if let (Ok(runner), Some(language)) = (&runner, prestart)
        && let Err(e) = runner.prestart(language)
    {
        // The job still runs, on the cold path.
        eprintln!("warmpod-runner: {e}");
    }
    if let Some(socket) = &cli.serve {
        return serving::serve(runner, socket, ready);
    }
    signal_ready(ready);
    let answered = answer(runner, read_line(&mut io::stdin().lock()));
    let code = print_line(&serde_json::to_string(&answered.result));
    answered.finish();
    code
}

/// Tells the parent the runner can take its job now (with `--ready-fd`).
/// A failed write is reported and the runner goes on: the parent, which
/// closed its end, sees no byte and treats the sandbox as failed.
fn signal_ready(ready: Option<ReadyFd>) {
    if let Some(ready) = ready {
        let fd = ready.fd();
        if let Err(e) = ready.signal() {
            eprintln!("warmpod-runner: signalling readiness on descriptor {fd}: {e}");
        }
    }
}

/// A job's result, and the runner that ran it: [`Answered::finish`] ends
/// the runner (removing the job's work directory, recording the uid as
/// clean) once the result is out, so that is on no job's critical path.
struct Answered {
    result: JobResult,
    runner: Option<Runner>,
}

impl Answered {
    fn finish(self) {
        if let Some(runner) = self.runner
            && let Err(e) = runner.finish()
        {
            eprintln!("warmpod-runner: recording the program uid as clean failed: {e}");
        }
    }
}

/// The result for a job line read (or not) by a started (or not) runner.
fn answer(
    runner: Result<Runner, warmpod_runner::StartError>,
    line: Result<Vec<u8>, warmpod_runner::JobError>,
) -> Answered {
    let failed = |result| Answered {
        result,
        runner: None,
    };
    match (runner, line) {
        (_, Err(e)) => failed(JobResult::internal_error(Uuid::nil(), e.to_string())),
        (Err(e), Ok(line)) => failed(JobResult::internal_error(
            salvage_id(&line),
            format!("runner start-up failed: {e}"),
        )),
        (Ok(runner), Ok(line)) => run_job(runner, &line),
    }
}

/// Runs the job; a bug still answers with a result line, never with
/// silence (and its runner is dropped unfinished: the uid is never
/// recorded as clean).
fn run_job(runner: Runner, line: &[u8]) -> Answered {
    match panic::catch_unwind(AssertUnwindSafe(|| runner.run_line(line))) {
        Ok(result) => Answered {
            result,
            runner: Some(runner),
        },
        Err(_) => Answered {
            result: JobResult::internal_error(
                salvage_id(line),
                "the runner failed unexpectedly (a bug; see its stderr)",
            ),
            runner: None,
        },
    }
}

/// The language `--prestart` names, if the runner can pre-start it.
fn prestart_language(name: &str) -> Result<&'static Language, String> {
    let language =
        Language::find(name).ok_or_else(|| format!("--prestart: unknown language {name:?}"))?;
    if !warmpod_runner::prestart_supported(language) {
        return Err(format!(
            "--prestart: language {} cannot be pre-started",
            language.key
        ));
    }
    Ok(language)
}

fn check() -> ExitCode {
    let missing = warmpod_runner::missing_programs();
    if missing.is_empty() {
        println!("ok: every language runtime is installed");
        return ExitCode::SUCCESS;
    }
    for (lang, program) in missing {
        eprintln!("missing: {program} (language {lang})");
    }
    ExitCode::FAILURE
}

fn print_line(json: &serde_json::Result<String>) -> ExitCode {
    let Ok(json) = json else {
        return ExitCode::FAILURE;
    };
    let mut out = io::stdout().lock();
    match writeln!(out, "{json}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// The specialised standby pod's modes: `--serve` (its main process),
/// `--relay` (the per-job exec) and `--serving` (its readiness probe).
mod serving {
    use std::io;
    use std::path::Path;
    use std::process::ExitCode;

    use warmpod_runner::serve::{Relayed, ServeSocket, is_serving};
    use warmpod_runner::{ReadyFd, Runner, StartError, read_line};

    use super::{Cli, answer, print_line, signal_ready};

    /// Serves one job on `socket` with `runner` (its interpreter already
    /// pre-started, if asked): exit 0 once the result is written or a stop
    /// signal came first; 1 when the socket cannot be served (the
    /// container restarts and the pod never gets ready). `ready` is
    /// signalled once the socket listens.
    pub fn serve(
        runner: Result<Runner, StartError>,
        socket: &Path,
        ready: Option<ReadyFd>,
    ) -> ExitCode {
        let connection = ServeSocket::bind(socket).and_then(|listening| {
            signal_ready(ready);
            listening.accept_one()
        });
        let mut connection = match connection {
            Ok(Some(connection)) => connection,
            // A stop signal: an unused interpreter dies with the runner.
            Ok(None) => return finish_unused(runner),
            Err(e) => {
                eprintln!("warmpod-runner: serving on {}: {e}", socket.display());
                return ExitCode::FAILURE;
            }
        };
        let answered = answer(runner, connection.read_job());
        let Ok(line) = serde_json::to_string(&answered.result) else {
            return ExitCode::FAILURE;
        };
        let code = match connection.answer(&line) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("warmpod-runner: the relay left before the result: {e}");
                ExitCode::FAILURE
            }
        };
        answered.finish();
        code
    }

    fn finish_unused(runner: Result<Runner, StartError>) -> ExitCode {
        if let Ok(runner) = runner
            && let Err(e) = runner.finish()
        {
            eprintln!("warmpod-runner: recording the program uid as clean failed: {e}");
        }
        ExitCode::SUCCESS
    }

    /// Relays the job on stdin to the runner serving at `socket`, or runs
    /// it here on the cold path when nothing serves there.
    pub fn relay(cli: &Cli, socket: &Path) -> ExitCode {
        let line = match read_line(&mut io::stdin().lock()) {
            Ok(line) => line,
            Err(e) => return print_line(&serde_json::to_string(&answer_no_runner(e))),
        };
        match warmpod_runner::serve::relay(socket, &line) {
            // Passed on as it came: the pod-manager checks it. The
            // connection closes once it is printed (the serving runner,
            // a pod's main process, waits for that before it exits).
            Relayed::Answer(result, connection) => {
                let printed = print_line(&Ok(String::from_utf8_lossy(&result).into()));
                drop(connection);
                printed
            }
            why => {
                eprintln!(
                    "warmpod-runner: no serving runner answered ({why:?}); running the job cold"
                );
                let runner = Runner::start(cli.uid, &cli.lock_dir, cli.work_root.clone());
                let answered = answer(runner, Ok(line));
                let code = print_line(&serde_json::to_string(&answered.result));
                answered.finish();
                code
            }
        }
    }

    fn answer_no_runner(e: warmpod_runner::JobError) -> warmpod_protocol::JobResult {
        warmpod_protocol::JobResult::internal_error(uuid::Uuid::nil(), e.to_string())
    }

    /// Exit 0 if a runner serves at `socket`.
    pub fn probe(socket: &Path) -> ExitCode {
        if is_serving(socket) {
            ExitCode::SUCCESS
        } else {
            eprintln!("warmpod-runner: nothing serves at {}", socket.display());
            ExitCode::FAILURE
        }
    }
}
