//! Webhook delivery.
//!
//! Every replica consumes the durable callbacks queue competitively, so one
//! replica handles each final event; those with a `callback_url` are
//! delivered here: body shaped for the façade that accepted the job,
//! optional HMAC-SHA256 signature, a timeout per attempt, retries with
//! exponential backoff, and no redirects. Unless private destinations are
//! allowed, the host is resolved, every address checked (no private,
//! loopback, link-local), and the request pinned to the checked address so
//! DNS cannot change between check and connect.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use sha2::Sha256;
use tracing::{info, warn};
use warmpod_protocol::JobEvent;

use crate::{
    config::CallbackConfig,
    languages::{Versions, display_name},
    metrics::Metrics,
    state::Execution,
    submit::is_private,
    view::{
        ExecutionView, JUDGE0_DEFAULT_FIELDS, compat_callback, judge0_submission, select_fields,
    },
};

/// The signature header: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Warmpod-Signature";

/// Delivers webhooks; cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    config: CallbackConfig,
    versions: Versions,
    metrics: Arc<Metrics>,
}

/// Why a delivery stopped.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("destination refused: {0}")]
    Refused(String),
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp { attempts: u32, last: String },
}

impl Deliverer {
    /// A deliverer with the given policy.
    pub fn new(config: CallbackConfig, versions: Versions, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            versions,
            metrics,
        }
    }

    /// Delivers the event's callback, if it has one. Never fails: outcomes
    /// are logged and counted.
    #[tracing::instrument(name = "callback", skip_all, fields(id = %event.id))]
    pub async fn deliver(&self, event: &JobEvent) {
        let Some(url) = event.meta.callback_url.clone() else {
            return;
        };
        let execution = Execution::from_event(event);
        let (method, body) = self.body(&execution);
        match self.send(&url, method, body).await {
            Ok(attempts) => {
                self.metrics
                    .callbacks
                    .with_label_values(&["delivered"])
                    .inc();
                info!(id = %event.id, attempts, "callback delivered");
            }
            Err(e @ DeliveryError::Refused(_)) => {
                self.metrics.callbacks.with_label_values(&["refused"]).inc();
                warn!(id = %event.id, error = %e, "callback not delivered");
            }
            Err(e) => {
                self.metrics.callbacks.with_label_values(&["failed"]).inc();
                warn!(id = %event.id, error = %e, "callback not delivered");
            }
        }
    }

    /// The method and JSON body for the façade that accepted the job:
    /// Judge0 PUTs the submission (base64 texts when it was submitted with
    /// `base64_encoded=true`), the others POST.
    fn body(&self, e: &Execution) -> (Method, Vec<u8>) {
        let value = match e.meta.api.as_deref() {
            Some(api @ ("judge0" | "judge0-base64")) => {
                let name = e
                    .language()
                    .map(|l| display_name(l, self.versions.number(l.key).as_deref()));
                let all = judge0_submission(e, api == "judge0-base64", name);
                let mut fields = JUDGE0_DEFAULT_FIELDS.to_vec();
                fields.push("status_id");
                let selected = select_fields(all, Some(&fields.join(",")), &[]).unwrap_or_default();
                return (
                    Method::PUT,
                    serde_json::to_vec(&selected).unwrap_or_default(),
                );
            }
            Some("compat") => compat_callback(e),
            _ => serde_json::to_value(ExecutionView::from(e)).unwrap_or_default(),
        };
        (Method::POST, serde_json::to_vec(&value).unwrap_or_default())
    }

    async fn send(&self, url: &str, method: Method, body: Vec<u8>) -> Result<u32, DeliveryError> {
        let client = self.client_for(url).await?;
        let signature = self
            .config
            .secret
            .as_ref()
            .map(|s| sign(s.expose().as_bytes(), &body));
        let mut backoff = self.config.initial_backoff;
        let mut last = String::new();
        for attempt in 1..=self.config.max_attempts {
            let mut request = client
                .request(method.clone(), url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(sig) = &signature {
                request = request.header(SIGNATURE_HEADER, sig);
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => return Ok(attempt),
                Ok(r) if is_permanent(r.status()) => {
                    return Err(DeliveryError::GaveUp {
                        attempts: attempt,
                        last: format!("HTTP {}", r.status()),
                    });
                }
                Ok(r) => last = format!("HTTP {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            if attempt < self.config.max_attempts {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
        Err(DeliveryError::GaveUp {
            attempts: self.config.max_attempts,
            last,
        })
    }

    /// A client for `url`; when private destinations are refused, it is
    /// pinned to the resolved, checked public address.
    async fn client_for(&self, url: &str) -> Result<reqwest::Client, DeliveryError> {
        let builder = reqwest::Client::builder()
            .timeout(self.config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("warmpod-callbacks");
        if self.config.allow_private {
            return builder
                .build()
                .map_err(|e| DeliveryError::Refused(e.to_string()));
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| DeliveryError::Refused(e.to_string()))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| DeliveryError::Refused("no host".into()))?
            .to_string();
        let port = parsed.port_or_known_default().unwrap_or(80);
        let lookup = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((lookup.as_str(), port))
            .await
            .map_err(|e| DeliveryError::Refused(format!("cannot resolve {host}: {e}")))?
            .collect();
        let Some(first) = addrs.first().copied() else {
            return Err(DeliveryError::Refused(format!("{host} has no address")));
        };
        if let Some(bad) = addrs.iter().find(|a| is_private(a.ip())) {
            return Err(DeliveryError::Refused(format!(
                "{host} resolves to private address {}",
                bad.ip()
            )));
        }
        builder
            .resolve(&host, first)
            .build()
            .map_err(|e| DeliveryError::Refused(e.to_string()))
    }
}

/// 4xx answers other than 408 and 429 will not change on retry.
fn is_permanent(status: StatusCode) -> bool {
    status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
}

/// `sha256=<hex>` of HMAC-SHA256(`key`, `body`).
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_some_client_errors_are_retried() {
        assert!(is_permanent(StatusCode::NOT_FOUND));
        assert!(!is_permanent(StatusCode::TOO_MANY_REQUESTS));
        assert!(!is_permanent(StatusCode::BAD_GATEWAY));
    }
}
