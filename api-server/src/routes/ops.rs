//! Probes and documents: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`.

use actix_web::{HttpResponse, web};
use serde_json::json;
use utoipa::OpenApi as _;

use crate::{Core, routes::ApiDoc};

/// Registers the probe routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi));
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "`{\"status\": \"ok\"}`")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Connected to the broker with the consumers running.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, description = "Ready"), (status = 503, description = "Not connected to RabbitMQ")))]
pub async fn readyz(core: web::Data<Core>) -> HttpResponse {
    if core.broker.is_ready() {
        HttpResponse::Ok().json(json!({"status": "ready", "broker": "connected"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not ready", "broker": "disconnected"}))
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text format", body = String)))]
pub async fn metrics(core: web::Data<Core>) -> HttpResponse {
    core.metrics.stored_jobs.set(core.state.len() as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(core.metrics.render())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "OpenAPI 3.1")))]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
