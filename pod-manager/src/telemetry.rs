//! Tracing set-up: one subscriber for the whole process, text or JSON.
//!
//! `RUST_LOG` filters when set, else `info` (with lapin's chatter at
//! `warn`). Call [`init`] once, first thing in `main`.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,lapin=warn,amq_protocol=warn";

/// Installs the global subscriber writing to `sink` in `format`.
///
/// Does nothing if a subscriber is already installed (tests call it from
/// several places).
pub fn init<W>(format: LogFormat, sink: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink)
        .with_target(true);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
