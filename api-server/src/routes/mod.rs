//! HTTP routes: thin façades over [`Core`](crate::Core).
//!
//! - [`v1`]: the native API; [`stream`]: its SSE and WebSocket routes.
//! - [`judge0`]: the Judge0-compatible subset.
//! - [`compat`]: the seed systems' endpoints.
//! - [`ops`]: health, readiness, metrics, the OpenAPI document.

pub mod compat;
pub mod judge0;
pub mod ops;
pub mod stream;
pub mod v1;

use actix_web::web;
use utoipa::OpenApi;

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "warmpod", description = "Remote code execution: native /v1, Judge0-compatible and seed-compatible APIs."),
    paths(
        v1::create, v1::create_batch, v1::get, v1::languages,
        stream::events, stream::websocket,
        judge0::create, judge0::create_batch, judge0::get, judge0::get_batch,
        judge0::languages, judge0::language, judge0::statuses, judge0::about, judge0::config_info,
        compat::execute, compat::lang, compat::submit_batch, compat::health,
        ops::healthz, ops::readyz, ops::metrics, ops::openapi,
    ),
    components(schemas(
        crate::error::ErrorBody, crate::view::ExecutionView, crate::view::ResultView,
        stream::ClientMessage, stream::ServerMessage,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []), ("x_auth_token" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "x_auth_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Auth-Token"))),
        );
    }
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(ops::configure)
        .configure(v1::configure)
        .configure(stream::configure)
        .configure(judge0::configure)
        .configure(compat::configure);
}
