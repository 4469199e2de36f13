//! The seed systems' endpoints, each a thin adapter over [`Core`]:
//! `POST /execute` (text or JSON), `POST /lang/{language}`,
//! `POST /submit/batch`, `GET /health`.

use actix_web::{HttpRequest, HttpResponse, http::header, web};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use warmpod_protocol::{Language, Limits, SourceFile, Status};

use crate::{
    ApiError, Core,
    error::{ErrorBody, json_error},
    state::Execution,
    submit::{Api, Submission, prefix_field},
};

/// The languages `POST /lang/{language}` serves.
const LANG_ROUTES: &[&str] = &["python", "java", "javascript", "c", "cpp", "bash"];

/// `?language=` of the text form of `POST /execute`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct LanguageQuery {
    /// Language of the body's code; python when absent.
    pub language: Option<String>,
}

/// The JSON form of `POST /execute`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ExecuteRequest {
    /// The program.
    pub code: String,
    /// Its language (default python).
    pub language: Option<String>,
}

/// One job of `POST /submit/batch`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchItem {
    /// The program.
    pub source_code: String,
    /// A Judge0 language id, or a language name.
    #[schema(value_type = Object, example = 71)]
    pub language_id: Value,
    /// The problem this answers; echoed as the job's tag.
    #[schema(value_type = Object)]
    pub problem_id: Option<Value>,
    /// Where to POST `{token, stdout, stderr, status, execution_time, exit_code}`.
    pub callback_url: Option<String>,
    /// Wall-clock limit in seconds.
    pub timeout: Option<f64>,
    /// Memory limit in KB.
    pub memory_limit: Option<u64>,
}

/// `POST /submit/batch` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchRequest {
    /// The jobs.
    pub submissions: Vec<BatchItem>,
}

/// Registers the seed endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/execute", web::post().to(execute))
        .route("/lang/{language}", web::post().to(lang))
        .route("/submit/batch", web::post().to(submit_batch))
        .route("/health", web::get().to(health));
}

fn simple(language: &str, code: String) -> Submission {
    Submission {
        language: language.to_string(),
        files: vec![SourceFile {
            name: String::new(),
            content: code,
        }],
        stdin: String::new(),
        args: Vec::new(),
        limits: Limits::default(),
        expected_output: None,
        callback_url: None,
        tag: None,
        api: Api::Compat,
    }
}

async fn run(core: &Core, submission: Submission) -> Result<Execution, ApiError> {
    let id = core.submit_waiting(submission).await?;
    core.wait_final(id, core.config.wait_timeout)
        .await
        .filter(|e| e.status.is_final())
        .ok_or(ApiError::WaitTimeout(id))
}

/// The compiler's output when compiling failed (warnings of a successful
/// compile are not the program's output).
fn compile_errors(r: &warmpod_protocol::JobResult) -> &str {
    if r.status == Status::CompileError {
        &r.compile_output
    } else {
        ""
    }
}

/// Everything the program (or its failed compile) printed, as a terminal
/// shows it.
fn text_output(e: &Execution) -> String {
    let Some(r) = &e.result else {
        return String::new();
    };
    let mut out = String::new();
    for part in [compile_errors(r), &r.stdout, &r.stderr] {
        out.push_str(part);
    }
    if r.status != Status::Accepted
        && r.status != Status::RuntimeError
        && r.status != Status::CompileError
        && let Some(m) = &r.message
    {
        out.push_str(m);
    }
    out
}

fn text_response(e: &Execution) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/plain; charset=utf-8"))
        .insert_header(("X-Warmpod-Status", e.status.as_str()))
        .insert_header(("X-Warmpod-Id", e.id.to_string()))
        .body(text_output(e))
}

/// Run code and return its output: text in, text out (`?language=`,
/// default python); or JSON `{code, language}` in, `{output, error,
/// status_code}` out.
#[utoipa::path(
    post, path = "/execute", tag = "compat", params(LanguageQuery),
    request_body(content = ExecuteRequest, description = "JSON, or the code as text/plain"),
    responses(
        (status = 200, description = "The output (text), or `{output, error, status_code}` (JSON)", body = Object),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody), (status = 504, body = ErrorBody),
    )
)]
pub async fn execute(
    core: web::Data<Core>,
    req: HttpRequest,
    query: web::Query<LanguageQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if is_json {
        let request: ExecuteRequest = serde_json::from_slice(&body)
            .map_err(|e| json_error(actix_web::error::JsonPayloadError::Deserialize(e)))?;
        let language = request.language.unwrap_or_else(|| "python".into());
        let e = run(&core, simple(&language, request.code)).await?;
        let r = e.result.as_ref();
        let error = r
            .map(|r| format!("{}{}", compile_errors(r), r.stderr))
            .unwrap_or_default();
        let status_code = r.map_or(-1, |r| {
            r.exit_code
                .unwrap_or_else(|| r.signal.map_or(1, |s| 128 + s))
        });
        return Ok(HttpResponse::Ok().json(json!({
            "output": r.map(|r| r.stdout.as_str()).unwrap_or_default(),
            "error": error,
            "status_code": status_code,
        })));
    }
    let code = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request(Some("body"), "the code must be UTF-8 text"))?;
    let language = query
        .into_inner()
        .language
        .unwrap_or_else(|| "python".into());
    let e = run(&core, simple(&language, code)).await?;
    Ok(text_response(&e))
}

/// Run the body's code in the path's language; the output as text.
#[utoipa::path(
    post, path = "/lang/{language}", tag = "compat",
    params(("language" = String, Path, description = "python, java, javascript, c, cpp or bash")),
    request_body(content = String, content_type = "text/plain"),
    responses((status = 200, description = "The output", body = String), (status = 422, body = ErrorBody), (status = 504, body = ErrorBody))
)]
pub async fn lang(
    core: web::Data<Core>,
    language: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let language = language.into_inner();
    if !LANG_ROUTES.contains(&language.as_str()) {
        return Err(ApiError::invalid(
            "language",
            format!(
                "unknown language {language:?}; one of {}",
                LANG_ROUTES.join(", ")
            ),
        ));
    }
    let code = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request(Some("body"), "the code must be UTF-8 text"))?;
    let e = run(&core, simple(&language, code)).await?;
    Ok(text_response(&e))
}

fn batch_language(v: &Value) -> Result<String, ApiError> {
    let by_id = |id: u64| {
        u32::try_from(id)
            .ok()
            .and_then(Language::by_judge0_id)
            .map(|l| l.key.to_string())
            .ok_or_else(|| ApiError::invalid("language_id", format!("unknown language id {id}")))
    };
    match v {
        Value::Number(n) => by_id(n.as_u64().unwrap_or(u64::MAX)),
        Value::String(s) => match s.trim().parse::<u64>() {
            Ok(id) => by_id(id),
            Err(_) => Ok(s.clone()),
        },
        _ => Err(ApiError::invalid(
            "language_id",
            "language_id must be a Judge0 id or a language name",
        )),
    }
}

/// Queue several jobs; each callback receives `{token, stdout, stderr,
/// status, execution_time, exit_code}`.
#[utoipa::path(
    post, path = "/submit/batch", tag = "compat", request_body = BatchRequest,
    responses((status = 202, description = "`{tokens: [...]}` in order", body = Object), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody))
)]
pub async fn submit_batch(
    core: web::Data<Core>,
    body: web::Json<BatchRequest>,
) -> Result<HttpResponse, ApiError> {
    let items = body.into_inner().submissions;
    core.check_batch_size("submissions", items.len())?;
    let mut batch = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let prefix = format!("submissions[{i}]");
        let language = batch_language(&item.language_id).map_err(|e| prefix_field(e, &prefix))?;
        let wall = match item.timeout {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 => Some((t * 1000.0).round() as u64),
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("{prefix}.timeout"),
                    "timeout must be a positive number of seconds",
                ));
            }
        };
        let mut s = simple(&language, item.source_code);
        s.callback_url = item.callback_url;
        s.tag = item.problem_id.map(|p| match p {
            Value::String(s) => s,
            other => other.to_string(),
        });
        s.limits = Limits {
            wall_time_ms: wall,
            memory_kb: item.memory_limit,
            ..Limits::default()
        };
        batch.push(s);
    }
    let tokens: Vec<Uuid> = core.submit_batch("submissions", batch).await?;
    Ok(HttpResponse::Accepted().json(json!({ "tokens": tokens })))
}

/// Liveness in the seed systems' format.
#[utoipa::path(get, path = "/health", tag = "compat", responses((status = 200, description = "`{\"status\": \"healthy\"}`", body = Object)))]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "healthy"}))
}
