//! API keys and per-key rate limits, as one middleware.
//!
//! With `WARMPOD_API_KEYS` set, every route but the health, readiness and
//! metrics probes needs `Authorization: Bearer <key>` or Judge0's
//! `X-Auth-Token: <key>`. With `WARMPOD_RATE_LIMIT_PER_S` set, each key (or
//! each client address, when auth is off) gets a token bucket of that rate
//! with a burst of the same size. Both are off when unset.

use std::{num::NonZeroU32, sync::Arc};

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web,
};
use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use crate::{config::Secret, error::ApiError};

/// Paths reachable without a key (probes).
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics", "/health"];

/// The policy, shared by every worker.
pub struct Guard {
    keys: Vec<Secret>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl Guard {
    /// A guard for `keys` (empty: auth off) and `rate` (`None`: no limit).
    pub fn new(keys: Vec<Secret>, rate: Option<NonZeroU32>) -> Self {
        Self {
            keys,
            limiter: rate.map(|r| RateLimiter::keyed(Quota::per_second(r))),
        }
    }

    /// Forgets buckets that are full again, so the keyed map (one entry per
    /// client address when auth is off) does not grow without bound.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    fn authenticate(&self, req: &ServiceRequest) -> Result<String, ApiError> {
        let presented = presented_key(req);
        if self.keys.is_empty() {
            let peer = req
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            return Ok(presented.unwrap_or(peer));
        }
        let key = presented.ok_or(ApiError::Unauthorized)?;
        if self
            .keys
            .iter()
            .any(|k| constant_time_eq(k.expose().as_bytes(), key.as_bytes()))
        {
            Ok(key)
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    fn admit(&self, who: String) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&who).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }
}

fn presented_key(req: &ServiceRequest) -> Option<String> {
    let headers = req.headers();
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok())
        && let Some(key) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    {
        return Some(key.trim().to_string());
    }
    headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The middleware: `from_fn(auth::guard)`, with a `web::Data<Arc<Guard>>`.
///
/// # Errors
/// 401 without a valid key, 429 past the rate limit.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if !OPEN_PATHS.contains(&req.path()) {
        let guard = req
            .app_data::<web::Data<Arc<Guard>>>()
            .expect("Guard is registered as app data")
            .clone();
        let who = guard.authenticate(&req)?;
        guard.admit(who)?;
    }
    next.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn the_bucket_empties() {
        let g = Guard::new(vec![], NonZeroU32::new(2));
        assert!(g.admit("k".into()).is_ok());
        assert!(g.admit("k".into()).is_ok());
        let err = g.admit("k".into()).unwrap_err();
        assert!(matches!(err, ApiError::RateLimited { retry_after_s: 1 }));
        assert!(g.admit("other".into()).is_ok(), "buckets are per key");
    }
}
