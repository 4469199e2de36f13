//! `warmpod-runner`: reads one job line on stdin, prints one result line.
//!
//! `--versions` prints `{language: version}`; `--check` verifies every
//! runtime is installed (a readiness probe).

use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use uuid::Uuid;
use warmpod_protocol::{JobResult, Language};
use warmpod_runner::{DEFAULT_WORK_ROOT, LOCK_DIR, Runner, read_line, salvage_id};

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
    /// Directory of the per-uid lock files (root only).
    #[arg(long, env = "WARMPOD_RUNNER_LOCK_DIR", default_value = LOCK_DIR)]
    lock_dir: PathBuf,
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
    if cli.versions {
        return print_line(&serde_json::to_string(&warmpod_runner::versions()));
    }
    if cli.check {
        return check();
    }
    let prestart = match cli.prestart.as_deref().map(prestart_language).transpose() {
        Ok(language) => language,
        Err(message) => {
            eprintln!("warmpod-runner: {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runner = Runner::start(cli.uid, &cli.lock_dir, cli.work_root);
    if let (Ok(runner), Some(language)) = (&runner, prestart)
        && let Err(e) = runner.prestart(language)
    {
        // The job still runs, on the cold path.
        eprintln!("warmpod-runner: {e}");
    }
    let result = match (runner, read_line(&mut io::stdin().lock())) {
        (_, Err(e)) => JobResult::internal_error(Uuid::nil(), e.to_string()),
        (Err(e), Ok(line)) => {
            JobResult::internal_error(salvage_id(&line), format!("runner start-up failed: {e}"))
        }
        (Ok(runner), Ok(line)) => run_job(runner, &line),
    };
    print_line(&serde_json::to_string(&result))
}

/// Runs the job and ends the runner; a bug still answers with a result
/// line, never with silence (and never records the uid as clean).
fn run_job(runner: Runner, line: &[u8]) -> JobResult {
    match panic::catch_unwind(AssertUnwindSafe(|| runner.run_line(line))) {
        Ok(result) => {
            if let Err(e) = runner.finish() {
                eprintln!("warmpod-runner: recording the program uid as clean failed: {e}");
            }
            result
        }
        Err(_) => JobResult::internal_error(
            salvage_id(line),
            "the runner failed unexpectedly (a bug; see its stderr)",
        ),
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
