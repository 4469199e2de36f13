//! api-server binary: config, telemetry, build, run, report.

use api_server::{Application, Config, telemetry};

#[actix_web::main]
async fn main() {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("api-server: bad configuration: {e}");
            std::process::exit(64);
        }
    };
    telemetry::init("info", config.log_json);
    let app = match Application::build(config) {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error.cause_chain = ?e, error.message = %e, "api-server failed to start");
            std::process::exit(1);
        }
    };
    // One line on stdout, for scripts and tests that start us on port 0.
    println!("api-server listening on http://127.0.0.1:{}", app.port());
    tracing::info!(port = app.port(), "api-server listening");
    if let Err(e) = app.run_until_stopped().await {
        tracing::error!(error.cause_chain = ?e, error.message = %e, "api-server stopped");
        std::process::exit(1);
    }
}
