//! `warmpod-runner`: runs ONE job under limits. One JSON job line in on
//! stdin, one JSON [`JobResult`](warmpod_protocol::JobResult) line out.
//!
//! # Layout
//! - `job`: reading the line and checking every field ([`read_line`]).
//! - `identity`: which uid programs run as; a locked dedicated uid when root.
//! - `workdir`: the private work directory, removed afterwards.
//! - `limits`: the `RLIMIT_*` values of a program (pure).
//! - `spawn`: starting a program ([`Launcher`]); the only part a pre-started
//!   interpreter replaces.
//! - `prestart`: pre-started interpreters ([`Runner::prestart`]).
//! - [`serve`]: one job over a unix socket (`--serve`, `--relay`), for
//!   a standby pod whose main process pre-started the interpreter.
//! - `ready`: `--ready-fd`, one byte to the parent once the runner can
//!   take its job ([`ReadyFd`]).
//! - `supervise`: wall/CPU timer, capped output readers, cleanup.
//! - `reaper`: subreaper, killing and reaping every descendant.
//! - `signals`: SIGTERM & co. during a job end it cleanly, with a result.
//! - `classify`: the verdict rules (pure).
//! - `execute`: one job start to finish ([`Runner`]).
//! - `versions`: `--versions` and `--check`.
//! - `sys`: the only `unsafe` code (pre-exec setup, `wait4`/`waitid`,
//!   pidfds, the kill-as-uid helper); every other module is denied it.

#![deny(unsafe_code)]

mod classify;
mod execute;
mod identity;
mod job;
mod limits;
mod prestart;
mod ready;
mod reaper;
pub mod serve;
mod signals;
mod spawn;
mod supervise;
#[allow(unsafe_code)]
mod sys;
mod versions;
mod workdir;

pub use classify::MEMORY_THRESHOLD_PERCENT;
pub use execute::{DEFAULT_WORK_ROOT, Runner, StartError, signal_name};
pub use identity::{Identity, IdentityError, LOCK_DIR, UID_RANGE};
pub use job::{JobError, MAX_LINE_BYTES, read_line, salvage_id};
pub use limits::{MAX_STACK_BYTES, OPEN_FILES};
pub use prestart::{DEFAULT_JAVA_BOOT_DIR, PrestartError, supported as prestart_supported};
pub use ready::{READY_BYTE, ReadyFd, ReadyFdError};
pub use spawn::{ForkExec, Kept, LaunchSpec, Launched, Launcher, PROGRAM_PATH, StepKind};
pub use supervise::POLL_INTERVAL;
pub use versions::{VERSION_TIMEOUT, missing_programs, versions};
