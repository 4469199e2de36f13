//! The native API, `/v1`: a thin translation onto [`Core`].

use actix_web::{HttpResponse, http::header, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use warmpod_protocol::{LANGUAGES, Limits, SourceFile, Status};

use crate::{
    ApiError, Core,
    error::ErrorBody,
    languages::display_name,
    submit::{Api, Submission},
    view::ExecutionView,
};

/// One job.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutionRequest {
    /// Language key or alias (`python`, `javascript`, `c`, `cpp`, `java`, `bash`, ...).
    #[schema(example = "python")]
    pub language: String,
    /// The program, as one file. Give `source` or `files`.
    #[schema(example = "print('Hello, World!')")]
    pub source: Option<String>,
    /// Several files; the first is the entry point.
    pub files: Option<Vec<FileRequest>>,
    /// Standard input.
    pub stdin: Option<String>,
    /// Command-line arguments.
    pub args: Option<Vec<String>>,
    /// Limits; unset fields take the configured defaults.
    pub limits: Option<LimitsRequest>,
    /// When set, a run that exits 0 is `accepted` if its stdout matches
    /// (trailing whitespace ignored), else `wrong_answer`.
    pub expected_output: Option<String>,
    /// Where to POST the final result.
    pub callback_url: Option<String>,
    /// Your own label, echoed back.
    pub tag: Option<String>,
}

/// A source file.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRequest {
    /// A plain file name; may be empty for the entry point.
    #[serde(default)]
    pub name: String,
    /// The file's text.
    pub content: String,
}

/// Limits a job may set (each up to the configured maximum).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// Wall-clock time (ms).
    pub wall_time_ms: Option<u64>,
    /// CPU time (ms).
    pub cpu_time_ms: Option<u64>,
    /// Memory (KiB).
    pub memory_kb: Option<u64>,
    /// Processes and threads.
    pub max_processes: Option<u64>,
    /// Bytes kept of stdout and of stderr each.
    pub max_output_bytes: Option<u64>,
    /// Largest file written (KiB).
    pub max_file_size_kb: Option<u64>,
}

impl ExecutionRequest {
    /// The core's view of this request.
    ///
    /// # Errors
    /// 422 when both or neither of `source` and `files` are given.
    pub fn into_submission(self, api: Api) -> Result<Submission, ApiError> {
        let files = match (self.source, self.files) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "source",
                    "give source or files, not both",
                ));
            }
            (None, None) => {
                return Err(ApiError::invalid("source", "source (or files) is required"));
            }
            (Some(source), None) => vec![SourceFile {
                name: String::new(),
                content: source,
            }],
            (None, Some(files)) => files
                .into_iter()
                .map(|f| SourceFile {
                    name: f.name,
                    content: f.content,
                })
                .collect(),
        };
        let l = self.limits.unwrap_or_default();
        Ok(Submission {
            language: self.language,
            files,
            stdin: self.stdin.unwrap_or_default(),
            args: self.args.unwrap_or_default(),
            limits: Limits {
                wall_time_ms: l.wall_time_ms,
                cpu_time_ms: l.cpu_time_ms,
                memory_kb: l.memory_kb,
                max_processes: l.max_processes,
                max_output_bytes: l.max_output_bytes,
                max_file_size_kb: l.max_file_size_kb,
            },
            expected_output: self.expected_output,
            callback_url: self.callback_url,
            tag: self.tag,
            api,
        })
    }
}

/// `?wait=true` waits for the result.
#[derive(Debug, Deserialize, IntoParams)]
pub struct WaitQuery {
    /// Wait (up to `WARMPOD_WAIT_TIMEOUT_MS`) for the final result.
    #[serde(default)]
    pub wait: bool,
}

/// A job accepted but not finished.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The job's id.
    pub id: Uuid,
    /// `queued`; after a `wait` that timed out, `queued` or `running`.
    #[schema(example = "queued")]
    pub status: String,
}

/// Several jobs.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The jobs, at most `WARMPOD_MAX_BATCH`.
    pub executions: Vec<ExecutionRequest>,
}

/// Ids of a batch, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAccepted {
    /// One id per job, in order.
    pub ids: Vec<Uuid>,
}

/// A language with its runtime version.
#[derive(Debug, Serialize, ToSchema)]
pub struct LanguageView {
    /// The key to submit.
    pub key: String,
    /// Other accepted names.
    pub aliases: Vec<String>,
    /// Display name with version, e.g. `Python (3.11.2)`.
    pub name: String,
    /// Runtime version, `null` when unknown.
    pub version: Option<String>,
    /// The entry point's default file name.
    pub source_file: String,
    /// Whether a compile step runs first.
    pub compiled: bool,
    /// Judge0 ids that map to this language.
    pub judge0_ids: Vec<u32>,
}

/// Registers the `/v1` routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/executions", web::post().to(create))
        .route("/v1/executions/batch", web::post().to(create_batch))
        .route("/v1/executions/{id}", web::get().to(get))
        .route("/v1/languages", web::get().to(languages));
}

/// Submit a job.
#[utoipa::path(
    post, operation_id = "v1_create_execution", path = "/v1/executions", tag = "v1",
    request_body = ExecutionRequest, params(WaitQuery),
    responses(
        (status = 202, description = "Queued (or not done within the wait timeout)", body = Accepted),
        (status = 200, description = "Finished (with `wait=true`)", body = ExecutionView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Source or stdin too large", body = ErrorBody),
        (status = 422, description = "Unknown language, limits above the maxima", body = ErrorBody),
        (status = 429, description = "Queue full or rate limited; see Retry-After", body = ErrorBody),
        (status = 503, description = "Broker unavailable", body = ErrorBody),
    )
)]
pub async fn create(
    core: web::Data<Core>,
    query: web::Query<WaitQuery>,
    body: web::Json<ExecutionRequest>,
) -> Result<HttpResponse, ApiError> {
    let submission = body.into_inner().into_submission(Api::V1)?;
    let id = if query.wait {
        core.submit_waiting(submission).await?
    } else {
        core.submit(submission).await?
    };
    // Without `wait`, the answer is "queued": what the broker just confirmed.
    let mut status = Status::Queued;
    if query.wait {
        match core.wait_final(id, core.config.wait_timeout).await {
            Some(e) if e.status.is_final() => {
                return Ok(HttpResponse::Ok().json(ExecutionView::from(&e)));
            }
            Some(e) => status = e.status,
            None => {}
        }
    }
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/v1/executions/{id}")))
        .json(Accepted {
            id,
            status: status.as_str().to_string(),
        }))
}

/// Submit several jobs at once.
#[utoipa::path(
    post, operation_id = "v1_create_batch", path = "/v1/executions/batch", tag = "v1", request_body = BatchRequest,
    responses(
        (status = 202, description = "All queued", body = BatchAccepted),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, description = "Batch too large or a job invalid (field `executions[i].…`)", body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
pub async fn create_batch(
    core: web::Data<Core>,
    body: web::Json<BatchRequest>,
) -> Result<HttpResponse, ApiError> {
    let requests = body.into_inner().executions;
    core.check_batch_size("executions", requests.len())?;
    let mut batch = Vec::with_capacity(requests.len());
    for (i, r) in requests.into_iter().enumerate() {
        batch.push(
            r.into_submission(Api::V1)
                .map_err(|e| crate::submit::prefix_field(e, &format!("executions[{i}]")))?,
        );
    }
    let ids = core.submit_batch("executions", batch).await?;
    Ok(HttpResponse::Accepted().json(BatchAccepted { ids }))
}

/// A job's current state, from any replica.
#[utoipa::path(
    get, operation_id = "v1_get_execution", path = "/v1/executions/{id}", tag = "v1",
    params(("id" = Uuid, Path, description = "The job's id")),
    responses((status = 200, body = ExecutionView), (status = 404, body = ErrorBody))
)]
pub async fn get(core: web::Data<Core>, id: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    let e = core.get(id.into_inner())?;
    Ok(HttpResponse::Ok().json(ExecutionView::from(&e)))
}

/// The supported languages with their runtime versions.
#[utoipa::path(get, operation_id = "v1_languages", path = "/v1/languages", tag = "v1", responses((status = 200, body = [LanguageView])))]
pub async fn languages(core: web::Data<Core>) -> HttpResponse {
    let list: Vec<LanguageView> = LANGUAGES
        .iter()
        .map(|l| {
            let version = core.versions.number(l.key);
            LanguageView {
                key: l.key.to_string(),
                aliases: l.aliases.iter().map(|a| a.to_string()).collect(),
                name: display_name(l, version.as_deref()),
                version,
                source_file: l.source_file.to_string(),
                compiled: l.compile.is_some(),
                judge0_ids: l.judge0_ids.to_vec(),
            }
        })
        .collect();
    HttpResponse::Ok().json(list)
}
