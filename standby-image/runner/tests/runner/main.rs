//! Black-box tests of the `warmpod-runner` binary: a job line in, a result
//! line out, and nothing of the job left behind.

mod cli;
mod helpers;
mod input;
mod languages;
mod limits;
mod prestart;
mod processes;
mod python_exit;
mod ready;
mod serve;
