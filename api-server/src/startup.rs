//! [`Application`]: build (bind, wire the parts), then run until stopped.

use std::{net::TcpListener, sync::Arc, time::Duration};

use actix_web::{App, HttpServer, dev::Server, middleware::from_fn, web};
use anyhow::Context as _;

use crate::{
    ApiError, Config, Core,
    auth::{self, Guard},
    broker::{Broker, Supervisor},
    callbacks::Deliverer,
    error::{json_error, path_error, query_error},
    languages::Versions,
    metrics::Metrics,
    routes,
    state::StateStore,
};

/// A bound, wired api-server, ready to run.
pub struct Application {
    port: u16,
    server: Server,
    supervisor: Supervisor,
    versions: Versions,
    guard: Arc<Guard>,
}

impl Application {
    /// Binds `config.http_addr` (port 0 picks a free port) and wires the
    /// core, the broker supervisor and the routes. Does not connect yet.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub fn build(config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.http_addr)
            .with_context(|| format!("binding {}", config.http_addr))?;
        let port = listener.local_addr()?.port();
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::default());
        let versions = Versions::default();
        let broker = Broker::new(config.topology.clone());
        let state = StateStore::new(
            config.result_capacity,
            config.result_max_bytes,
            config.result_ttl,
        );
        let core = Core {
            config: config.clone(),
            broker: broker.clone(),
            state: state.clone(),
            versions: versions.clone(),
            metrics: metrics.clone(),
        };
        let supervisor = Supervisor {
            broker,
            amqp_url: config.amqp_url.expose().to_string(),
            state,
            versions: versions.clone(),
            deliverer: Deliverer::new(config.callbacks.clone(), versions.clone(), metrics.clone()),
            metrics,
        };
        let guard = Arc::new(Guard::new(config.api_keys.clone(), config.rate_limit_per_s));
        let server = server(listener, core, guard.clone(), config.max_body_bytes())?;
        Ok(Self {
            port,
            server,
            supervisor,
            versions,
            guard,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGINT/SIGTERM (or a fatal broker error).
    ///
    /// # Errors
    /// The server's I/O error, or the broker's fatal error.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let versions = self.versions.clone();
        tokio::spawn(async move { versions.probe_local().await });
        let guard = self.guard.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                guard.forget_idle();
            }
        });
        tokio::select! {
            r = self.server => r.context("HTTP server"),
            r = self.supervisor.run() => r.context("RabbitMQ supervisor"),
        }
    }
}

/// Logs each request once it is answered (not the probes): method, path,
/// status, latency; and counts it by route pattern in the metrics.
async fn access_log(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let quiet = matches!(req.path(), "/healthz" | "/readyz" | "/metrics" | "/health");
    let (method, path) = (req.method().clone(), req.path().to_string());
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let metrics = req.app_data::<web::Data<Core>>().map(|c| c.metrics.clone());
    let started = std::time::Instant::now();
    let response = next.call(req).await;
    let status = match &response {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    if let Some(m) = metrics {
        m.request(method.as_str(), &route, status, started.elapsed());
    }
    if !quiet {
        tracing::info!(%method, %path, status, latency_ms = started.elapsed().as_millis() as u64, "request");
    }
    response
}

fn server(
    listener: TcpListener,
    core: Core,
    guard: Arc<Guard>,
    body_limit: usize,
) -> anyhow::Result<Server> {
    let core = web::Data::new(core);
    let guard = web::Data::new(guard);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(core.clone())
            .app_data(guard.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(body_limit)
                    .content_type_required(false)
                    .error_handler(|e, _| json_error(e).into()),
            )
            .app_data(web::PayloadConfig::default().limit(body_limit))
            .app_data(web::QueryConfig::default().error_handler(|e, _| query_error(e).into()))
            .app_data(web::PathConfig::default().error_handler(|e, _| path_error(e).into()))
            .wrap(from_fn(auth::guard))
            .wrap(from_fn(access_log))
            // Judge0 clients often call `/submissions/?wait=true`.
            .wrap(actix_web::middleware::NormalizePath::trim())
            .configure(routes::configure)
            .default_service(web::to(|req: actix_web::HttpRequest| async move {
                Err::<actix_web::HttpResponse, _>(ApiError::NotFound(format!(
                    "route {} {}",
                    req.method(),
                    req.path()
                )))
            }))
    })
    .shutdown_timeout(10)
    .client_request_timeout(Duration::from_secs(30))
    .listen(listener)?
    .run();
    Ok(server)
}
