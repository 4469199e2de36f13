//! pod-manager binary: telemetry, config, build, run, report.

use pod_manager::config::{Config, EXIT_BAD_CONFIG};
use pod_manager::{Application, telemetry};

#[tokio::main]
async fn main() {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pod-manager: bad configuration: {e}");
            std::process::exit(EXIT_BAD_CONFIG);
        }
    };
    telemetry::init(config.log_format, std::io::stderr);
    tracing::info!(?config, "starting pod-manager");
    let outcome = async {
        let app = Application::build(config).await?;
        tracing::info!(metrics = %app.metrics_addr(), "pod-manager ready");
        app.run_until_stopped().await
    }
    .await;
    match outcome {
        Ok(()) => tracing::info!("pod-manager stopped"),
        Err(e) => {
            tracing::error!(error.cause_chain = ?e, error.message = %format!("{e:#}"), "pod-manager failed");
            std::process::exit(1);
        }
    }
}
