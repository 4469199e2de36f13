//! The Judge0-compatible API (the subset real Judge0 clients use), with
//! Judge0's field names, units (seconds, KB) and status ids, translated
//! onto [`Core`].

use actix_web::{HttpResponse, web};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use warmpod_protocol::{LANGUAGES, Language, Limits, SourceFile};

use crate::{
    ApiError, Core,
    error::ErrorBody,
    languages::display_name,
    state::Execution,
    submit::{Api, Submission},
    view::{
        JUDGE0_ALL_FIELDS, JUDGE0_DEFAULT_FIELDS, JUDGE0_STATUSES, judge0_status,
        judge0_submission, select_fields,
    },
};

/// The Judge0 version clients check.
pub const JUDGE0_VERSION: &str = "1.13.1";

/// A Judge0 submission request. Numbers may be sent as strings.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct SubmissionRequest {
    /// The program (base64 with `base64_encoded=true`).
    pub source_code: Option<String>,
    /// A Judge0 language id (`GET /languages`).
    #[serde(deserialize_with = "lenient")]
    #[schema(value_type = Option<u32>, example = 71)]
    pub language_id: Option<u32>,
    /// Standard input.
    pub stdin: Option<String>,
    /// Expected stdout: `Accepted` (3) or `Wrong Answer` (4).
    pub expected_output: Option<String>,
    /// CPU time limit in seconds.
    #[serde(deserialize_with = "lenient")]
    #[schema(value_type = Option<f64>)]
    pub cpu_time_limit: Option<f64>,
    /// Accepted for compatibility; warmpod has no extra CPU grace.
    #[serde(deserialize_with = "lenient")]
    #[schema(value_type = Option<f64>)]
    pub cpu_extra_time: Option<f64>,
    /// Wall-clock limit in seconds.
    #[serde(deserialize_with = "lenient")]
    #[schema(value_type = Option<f64>)]
    pub wall_time_limit: Option<f64>,
    /// Memory limit in KB.
    #[serde(deserialize_with = "lenient")]
    #[schema(value_type = Option<u64>)]
    pub memory_limit: Option<u64>,
    /// Accepted for compatibility; the stack shares the memory limit.
    #[serde(deserialize_with = "lenient")]
    #[schema(value_type = Option<u64>)]
    pub stack_limit: Option<u64>,
    /// Processes and threads.
    #[serde(deserialize_with = "lenient")]
    #[schema(value_type = Option<u64>)]
    pub max_processes_and_or_threads: Option<u64>,
    /// Largest file written, in KB.
    #[serde(deserialize_with = "lenient")]
    #[schema(value_type = Option<u64>)]
    pub max_file_size: Option<u64>,
    /// Where to PUT the finished submission.
    pub callback_url: Option<String>,
    /// Arguments, separated by spaces.
    pub command_line_arguments: Option<String>,
    /// Only `1` is supported.
    #[serde(deserialize_with = "lenient")]
    #[schema(value_type = Option<u32>)]
    pub number_of_runs: Option<u32>,
    /// Not supported (must be false).
    pub redirect_stderr_to_stdout: Option<bool>,
    /// Not supported (must be false): sandboxes have no network.
    pub enable_network: Option<bool>,
    /// Not supported (must be empty).
    pub compiler_options: Option<String>,
    /// Not supported (must be empty).
    pub additional_files: Option<String>,
    /// Accepted for compatibility.
    pub enable_per_process_and_thread_time_limit: Option<bool>,
    /// Accepted for compatibility.
    pub enable_per_process_and_thread_memory_limit: Option<bool>,
}

/// Accepts a number or a string holding one (some Judge0 clients send strings).
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(serde::de::Error::custom),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Query of the submission routes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default)]
pub struct SubmissionQuery {
    /// Text fields are base64 in the request and the response.
    pub base64_encoded: bool,
    /// Wait for the result (POST only).
    pub wait: bool,
    /// Comma-separated fields to return, or `*`.
    pub fields: Option<String>,
}

/// Query of `GET /submissions/batch`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(default)]
pub struct BatchQuery {
    /// Comma-separated tokens.
    pub tokens: String,
    /// Text fields in base64.
    pub base64_encoded: bool,
    /// Fields to return, or `*`.
    pub fields: Option<String>,
}

/// `POST /submissions/batch` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// The submissions.
    pub submissions: Vec<SubmissionRequest>,
}

/// Registers the Judge0 routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/submissions", web::post().to(create))
        .route("/submissions/batch", web::post().to(create_batch))
        .route("/submissions/batch", web::get().to(get_batch))
        .route("/submissions/{token}", web::get().to(get))
        .route("/languages", web::get().to(languages))
        .route("/languages/{id}", web::get().to(language))
        .route("/statuses", web::get().to(statuses))
        .route("/about", web::get().to(about))
        .route("/config_info", web::get().to(config_info));
}

/// Judge0's field names for the core's.
fn judge0_field(field: &str) -> String {
    match field {
        "language" => "language_id".into(),
        "source" | "files[0].name" => "source_code".into(),
        "limits.cpu_time_ms" => "cpu_time_limit".into(),
        "limits.wall_time_ms" => "wall_time_limit".into(),
        "limits.memory_kb" => "memory_limit".into(),
        "limits.max_processes" => "max_processes_and_or_threads".into(),
        "limits.max_file_size_kb" => "max_file_size".into(),
        other => other.into(),
    }
}

fn rename(e: ApiError) -> ApiError {
    match e {
        ApiError::Invalid { field, message } => ApiError::Invalid {
            field: judge0_field(&field),
            message,
        },
        ApiError::TooLarge { field, message } => ApiError::TooLarge {
            field: judge0_field(&field),
            message,
        },
        other => other,
    }
}

fn decode(field: &str, value: Option<String>, base64: bool) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if base64 => {
            let cleaned: String = v.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let bytes = B64.decode(cleaned).map_err(|e| {
                ApiError::bad_request(Some(field), format!("{field} is not valid base64: {e}"))
            })?;
            String::from_utf8(bytes).map(Some).map_err(|_| {
                ApiError::bad_request(Some(field), format!("{field} is not valid UTF-8"))
            })
        }
        other => Ok(other),
    }
}

fn seconds_to_ms(s: Option<f64>, field: &str) -> Result<Option<u64>, ApiError> {
    match s {
        None => Ok(None),
        Some(v) if !v.is_finite() || v < 0.0 => Err(ApiError::invalid(
            field,
            format!("{field} must be a non-negative number of seconds"),
        )),
        Some(v) => Ok(Some((v * 1000.0).round() as u64)),
    }
}

impl SubmissionRequest {
    fn into_submission(self, base64: bool) -> Result<Submission, ApiError> {
        for (field, unsupported) in [
            (
                "redirect_stderr_to_stdout",
                self.redirect_stderr_to_stdout == Some(true),
            ),
            ("enable_network", self.enable_network == Some(true)),
            (
                "compiler_options",
                self.compiler_options
                    .as_deref()
                    .is_some_and(|s| !s.is_empty()),
            ),
            (
                "additional_files",
                self.additional_files
                    .as_deref()
                    .is_some_and(|s| !s.is_empty()),
            ),
            (
                "number_of_runs",
                self.number_of_runs.is_some_and(|n| n != 1),
            ),
        ] {
            if unsupported {
                return Err(ApiError::invalid(
                    field,
                    format!("{field} is not supported by warmpod"),
                ));
            }
        }
        let id = self
            .language_id
            .ok_or_else(|| ApiError::invalid("language_id", "language_id can't be blank"))?;
        let lang = Language::by_judge0_id(id).ok_or_else(|| {
            ApiError::invalid(
                "language_id",
                format!("language with id {id} doesn't exist"),
            )
        })?;
        let source = decode("source_code", self.source_code, base64)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::invalid("source_code", "source_code can't be blank"))?;
        Ok(Submission {
            language: lang.key.to_string(),
            files: vec![SourceFile {
                name: String::new(),
                content: source,
            }],
            stdin: decode("stdin", self.stdin, base64)?.unwrap_or_default(),
            args: self
                .command_line_arguments
                .map(|a| a.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            limits: Limits {
                cpu_time_ms: seconds_to_ms(self.cpu_time_limit, "cpu_time_limit")?,
                wall_time_ms: seconds_to_ms(self.wall_time_limit, "wall_time_limit")?,
                memory_kb: self.memory_limit,
                max_processes: self.max_processes_and_or_threads,
                max_file_size_kb: self.max_file_size,
                max_output_bytes: None,
            },
            expected_output: decode("expected_output", self.expected_output, base64)?,
            callback_url: self.callback_url,
            tag: None,
            api: if base64 {
                Api::Judge0Base64
            } else {
                Api::Judge0
            },
        })
    }
}

fn render(
    core: &Core,
    e: &Execution,
    base64: bool,
    fields: Option<&str>,
    default: &[&str],
) -> Result<Map<String, Value>, ApiError> {
    let name = e
        .language()
        .map(|l| display_name(l, core.versions.number(l.key).as_deref()));
    select_fields(judge0_submission(e, base64, name), fields, default).map_err(|f| {
        ApiError::bad_request(
            Some("fields"),
            format!(
                "unknown field {f:?}; known: {}",
                JUDGE0_ALL_FIELDS.join(",")
            ),
        )
    })
}

/// Create a submission.
#[utoipa::path(
    post, operation_id = "judge0_create_submission", path = "/submissions", tag = "judge0", request_body = SubmissionRequest, params(SubmissionQuery),
    responses(
        (status = 201, description = "`{token}`, or the submission with `wait=true`", body = Object),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody),
    )
)]
pub async fn create(
    core: web::Data<Core>,
    query: web::Query<SubmissionQuery>,
    body: web::Json<SubmissionRequest>,
) -> Result<HttpResponse, ApiError> {
    let submission = body
        .into_inner()
        .into_submission(query.base64_encoded)
        .map_err(rename)?;
    let submitted = if query.wait {
        core.submit_waiting(submission).await
    } else {
        core.submit(submission).await
    };
    let token = submitted.map_err(rename)?;
    if !query.wait {
        return Ok(HttpResponse::Created().json(json!({ "token": token })));
    }
    let e = match core.wait_final(token, core.config.wait_timeout).await {
        Some(e) => e,
        None => core.get(token)?,
    };
    let body = render(
        &core,
        &e,
        query.base64_encoded,
        query.fields.as_deref(),
        JUDGE0_DEFAULT_FIELDS,
    )?;
    Ok(HttpResponse::Created().json(body))
}

/// Create several submissions; each item is `{token}` or its errors.
#[utoipa::path(
    post, operation_id = "judge0_create_batch", path = "/submissions/batch", tag = "judge0", request_body = BatchRequest, params(SubmissionQuery),
    responses((status = 201, body = [Object]), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody))
)]
pub async fn create_batch(
    core: web::Data<Core>,
    query: web::Query<SubmissionQuery>,
    body: web::Json<BatchRequest>,
) -> Result<HttpResponse, ApiError> {
    let requests = body.into_inner().submissions;
    core.check_batch_size("submissions", requests.len())?;
    let mut out = Vec::with_capacity(requests.len());
    let mut queued = Vec::new();
    for r in requests {
        let checked = r
            .into_submission(query.base64_encoded)
            .and_then(|s| core.validate(s))
            .map_err(rename);
        match checked {
            Ok((message, info)) => match core.publish(message, info).await {
                Ok(token) => {
                    queued.push(token);
                    out.push(json!({ "token": token }));
                }
                Err(e) => return Err(crate::submit::partial(queued, e)),
            },
            Err(
                e @ (ApiError::Invalid { .. }
                | ApiError::TooLarge { .. }
                | ApiError::BadRequest { .. }),
            ) => {
                let field = e.field().unwrap_or("submission").to_string();
                out.push(json!({ field: [e.to_string()] }));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(HttpResponse::Created().json(out))
}

/// A submission by token.
#[utoipa::path(
    get, operation_id = "judge0_get_submission", path = "/submissions/{token}", tag = "judge0",
    params(("token" = Uuid, Path), SubmissionQuery),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn get(
    core: web::Data<Core>,
    token: web::Path<Uuid>,
    query: web::Query<SubmissionQuery>,
) -> Result<HttpResponse, ApiError> {
    let e = core.get(token.into_inner())?;
    let body = render(
        &core,
        &e,
        query.base64_encoded,
        query.fields.as_deref(),
        JUDGE0_DEFAULT_FIELDS,
    )?;
    Ok(HttpResponse::Ok().json(body))
}

/// Several submissions by token (`null` for unknown ones).
#[utoipa::path(
    get, operation_id = "judge0_get_batch", path = "/submissions/batch", tag = "judge0", params(BatchQuery),
    responses((status = 200, body = Object), (status = 400, body = ErrorBody))
)]
pub async fn get_batch(
    core: web::Data<Core>,
    query: web::Query<BatchQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut out = Vec::new();
    let tokens: Vec<&str> = query
        .tokens
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.is_empty() {
        return Err(ApiError::bad_request(Some("tokens"), "tokens is required"));
    }
    core.check_batch_size("tokens", tokens.len()).map_err(|_| {
        ApiError::invalid(
            "tokens",
            format!("at most {} tokens", core.config.max_batch),
        )
    })?;
    for t in tokens {
        let state = t.parse::<Uuid>().ok().and_then(|id| core.state.get(id));
        out.push(match state {
            Some(e) => Value::Object(render(
                &core,
                &e,
                query.base64_encoded,
                query.fields.as_deref(),
                JUDGE0_DEFAULT_FIELDS,
            )?),
            None => Value::Null,
        });
    }
    Ok(HttpResponse::Ok().json(json!({ "submissions": out })))
}

fn language_list(core: &Core) -> Vec<(u32, &'static Language, String)> {
    let mut out: Vec<_> = LANGUAGES
        .iter()
        .flat_map(|l| {
            let name = display_name(l, core.versions.number(l.key).as_deref());
            l.judge0_ids.iter().map(move |id| (*id, l, name.clone()))
        })
        .collect();
    out.sort_by_key(|(id, _, _)| *id);
    out
}

/// Languages as `[{id, name}]`.
#[utoipa::path(get, operation_id = "judge0_languages", path = "/languages", tag = "judge0", responses((status = 200, body = [Object])))]
pub async fn languages(core: web::Data<Core>) -> HttpResponse {
    let list: Vec<Value> = language_list(&core)
        .into_iter()
        .map(|(id, _, name)| json!({"id": id, "name": name}))
        .collect();
    HttpResponse::Ok().json(list)
}

/// One language.
#[utoipa::path(
    get, operation_id = "judge0_language", path = "/languages/{id}", tag = "judge0", params(("id" = u32, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody))
)]
pub async fn language(core: web::Data<Core>, id: web::Path<u32>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let (id, lang, name) = language_list(&core)
        .into_iter()
        .find(|(i, _, _)| *i == id)
        .ok_or_else(|| ApiError::NotFound(format!("language {id}")))?;
    Ok(HttpResponse::Ok().json(json!({
        "id": id,
        "name": name,
        "is_archived": false,
        "source_file": lang.source_file,
        "compile_cmd": lang.compile.map(|c| c.join(" ")),
        "run_cmd": lang.run.join(" "),
    })))
}

/// The 14 Judge0 statuses.
#[utoipa::path(get, path = "/statuses", tag = "judge0", responses((status = 200, body = [Object])))]
pub async fn statuses() -> HttpResponse {
    let list: Vec<Value> = JUDGE0_STATUSES
        .iter()
        .map(|(id, _)| judge0_status(*id))
        .collect();
    HttpResponse::Ok().json(list)
}

/// Version information Judge0 clients check.
#[utoipa::path(get, path = "/about", tag = "judge0", responses((status = 200, body = Object)))]
pub async fn about() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "version": JUDGE0_VERSION,
        "homepage": "https://github.com/warmpod/warmpod",
        "source_code": "https://github.com/warmpod/warmpod",
        "maintainer": "warmpod",
    }))
}

/// Configuration in Judge0's fields and units, with warmpod's real limits.
#[utoipa::path(get, path = "/config_info", tag = "judge0", responses((status = 200, body = Object)))]
pub async fn config_info(core: web::Data<Core>) -> HttpResponse {
    let c = &core.config;
    let (d, m) = (&c.default_limits, &c.max_limits);
    let s = |ms: u64| ms as f64 / 1000.0;
    HttpResponse::Ok().json(json!({
        "maintenance_mode": false,
        "enable_wait_result": true,
        "enable_compiler_options": false,
        "allowed_languages_for_compile_options": [],
        "enable_command_line_arguments": true,
        "enable_submission_delete": false,
        "enable_callbacks": true,
        "callbacks_max_tries": c.callbacks.max_attempts,
        "callbacks_timeout": c.callbacks.timeout.as_secs_f64(),
        "enable_additional_files": false,
        "max_queue_size": c.topology.jobs_queue_max_length,
        "cpu_time_limit": s(d.cpu_time_ms),
        "max_cpu_time_limit": s(m.cpu_time_ms),
        "cpu_extra_time": 0.0,
        "max_cpu_extra_time": 0.0,
        "wall_time_limit": s(d.wall_time_ms),
        "max_wall_time_limit": s(m.wall_time_ms),
        "memory_limit": d.memory_kb,
        "max_memory_limit": m.memory_kb,
        "stack_limit": d.memory_kb,
        "max_stack_limit": m.memory_kb,
        "max_processes_and_or_threads": d.max_processes,
        "max_max_processes_and_or_threads": m.max_processes,
        "enable_per_process_and_thread_time_limit": false,
        "allow_enable_per_process_and_thread_time_limit": false,
        "enable_per_process_and_thread_memory_limit": false,
        "allow_enable_per_process_and_thread_memory_limit": false,
        "max_file_size": d.max_file_size_kb,
        "max_max_file_size": m.max_file_size_kb,
        "number_of_runs": 1,
        "max_number_of_runs": 1,
        "redirect_stderr_to_stdout": false,
        "max_extract_size": 0,
        "enable_batched_submissions": true,
        "max_submission_batch_size": c.max_batch,
        "submission_cache_duration": c.result_ttl.as_secs_f64(),
        "use_docs_as_homepage": false,
        "allow_enable_network": false,
        "enable_network": false,
    }))
}
