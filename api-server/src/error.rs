//! [`ApiError`]: every failure a request can meet, mapped to HTTP in one
//! place.
//!
//! Bodies are `{"error": message, "code": kind, "field": name?}`; `error`
//! is what Judge0 clients print. Internal causes are logged, never sent.

use actix_web::{
    HttpResponse, ResponseError,
    http::{StatusCode, header},
};
use serde::Serialize;

/// An error answered to a client.
#[derive(thiserror::Error)]
pub enum ApiError {
    /// Malformed request (bad JSON, bad query string): 400.
    #[error("{message}")]
    BadRequest {
        /// The field at fault, when one is.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// Well-formed but not acceptable (unknown language, limits above the
    /// maxima, batch too large): 422.
    #[error("{message}")]
    Invalid {
        /// The field at fault.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A field or the body above its size limit: 413.
    #[error("{message}")]
    TooLarge {
        /// The field at fault (`body` for the whole request).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such job (or it expired): 404.
    #[error("{0} not found")]
    NotFound(String),
    /// Missing or unknown API key: 401.
    #[error("a valid API key is required (Authorization: Bearer <key> or X-Auth-Token)")]
    Unauthorized,
    /// The key's rate limit is exhausted: 429.
    #[error("rate limit exceeded, retry in {retry_after_s} s")]
    RateLimited {
        /// Seconds until a request would pass.
        retry_after_s: u64,
    },
    /// The jobs queue is full (the broker nacked the publish): 429.
    #[error("the job queue is full, retry in {retry_after_s} s")]
    QueueFull {
        /// Seconds the client should wait.
        retry_after_s: u64,
    },
    /// The broker is unreachable: 503.
    #[error("the job broker is unavailable, retry later")]
    Unavailable(#[source] anyhow::Error),
    /// A synchronous request outlived its wait (compat endpoints only): 504.
    #[error("the job {0} did not finish within the wait timeout; it is still queued or running")]
    WaitTimeout(uuid::Uuid),
    /// Publishing failed part-way through a batch: the status of `cause`,
    /// with the ids already queued (they will run; retry only the rest).
    #[error("{cause} ({} of the batch were already queued; see `accepted`)", accepted.len())]
    PartialBatch {
        /// Ids queued before the failure, in request order.
        accepted: Vec<uuid::Uuid>,
        /// Why the next one was not.
        cause: Box<ApiError>,
    },
    /// Anything else: 500.
    #[error("internal error")]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    /// A 422 for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A 400 for `field`.
    pub fn bad_request(field: Option<&str>, message: impl Into<String>) -> Self {
        Self::BadRequest {
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    /// A 413 for `field`.
    pub fn too_large(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::TooLarge {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field at fault, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::BadRequest { field, .. } => field.as_deref(),
            Self::Invalid { field, .. } | Self::TooLarge { field, .. } => Some(field),
            Self::PartialBatch { cause, .. } => cause.field(),
            _ => None,
        }
    }

    /// A short machine-readable kind, e.g. `"invalid"`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::Invalid { .. } => "invalid",
            Self::TooLarge { .. } => "too_large",
            Self::NotFound(_) => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited { .. } => "rate_limited",
            Self::QueueFull { .. } => "queue_full",
            Self::Unavailable(_) => "unavailable",
            Self::WaitTimeout(_) => "wait_timeout",
            Self::PartialBatch { cause, .. } => cause.code(),
            Self::Unexpected(_) => "internal",
        }
    }
}

impl std::fmt::Debug for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            writeln!(f, "Caused by:\n\t{cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// The JSON body of every error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Human-readable message.
    pub error: String,
    /// Machine-readable kind: `bad_request`, `invalid`, `too_large`,
    /// `not_found`, `unauthorized`, `rate_limited`, `queue_full`,
    /// `unavailable`, `wait_timeout`, `internal`.
    pub code: String,
    /// The request field at fault, e.g. `limits.memory_kb`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Ids of a batch's jobs that were queued before it failed; they run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted: Option<Vec<uuid::Uuid>>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. } | Self::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::WaitTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::PartialBatch { cause, .. } => cause.status_code(),
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (kind, accepted) = match self {
            Self::PartialBatch { accepted, cause } => (cause.as_ref(), Some(accepted.clone())),
            other => (other, None),
        };
        match kind {
            Self::Unexpected(_) | Self::Unavailable(_) => {
                tracing::error!(error.cause_chain = ?self, error.message = %self, "request failed");
            }
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        match kind {
            Self::RateLimited { retry_after_s } | Self::QueueFull { retry_after_s } => {
                response.insert_header((header::RETRY_AFTER, retry_after_s.to_string()));
            }
            Self::Unavailable(_) => {
                response.insert_header((header::RETRY_AFTER, "5"));
            }
            Self::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: self.to_string(),
            code: self.code().to_string(),
            field: self.field().map(str::to_string),
            accepted,
        })
    }
}

/// Maps actix's JSON extractor errors: a body over the limit is 413, the
/// rest 400 with serde's message (which names the field).
pub fn json_error(err: actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match err {
        E::Overflow { limit } | E::OverflowKnownLength { limit, .. } => ApiError::too_large(
            "body",
            format!("the request body is larger than {limit} bytes"),
        ),
        E::ContentType => ApiError::bad_request(None, "Content-Type must be application/json"),
        E::Deserialize(e) => ApiError::bad_request(None, format!("invalid JSON body: {e}")),
        other => ApiError::bad_request(None, format!("invalid JSON body: {other}")),
    }
}

/// Maps query-string errors to 400.
pub fn query_error(err: actix_web::error::QueryPayloadError) -> ApiError {
    ApiError::bad_request(None, format!("invalid query string: {err}"))
}

/// Maps path errors (e.g. a malformed id) to 404: no such resource.
pub fn path_error(err: actix_web::error::PathError) -> ApiError {
    ApiError::NotFound(format!("resource ({err})"))
}
