//! The push API on `push.listen`: environments, file uploads into the spool, commit, status,
//! listing, manual push, metrics. JSON in and out; every error is
//! `{"error": "...", "detail": "..."}` with its status; a missing or wrong token is `401` and
//! changes nothing.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::json;

use super::Shared;
use super::early::EarlyUploads;
use super::model::{
    COMPLIMENTARY, Environment, RecordingState, Target, is_valid_env, is_valid_segment, split_file,
};
use super::schedule::now_ms;
use super::spool::{SpoolError, content_digest};
use super::store::{Refused, StoreError};
use super::urls::{Urls, location, urls};

mod delete;

/// Largest JSON body accepted.
const MAX_JSON: usize = 1024 * 1024;

/// An answer that is not the happy path.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            detail: detail.into(),
        }
    }

    fn bad(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    fn not_found(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    fn conflict(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, "conflict", detail)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "push database");
        // Acknowledged data is safe on disk; the client may try again.
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the push database did not answer; try again",
        )
    }
}

type Answer = Result<Response<Full<Bytes>>, ApiError>;

/// Serves one request.
pub(super) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = route(&shared, request).await;
    Ok(answer.unwrap_or_else(|e| {
        json_response(e.status, &json!({"error": e.error, "detail": e.detail}))
    }))
}

async fn route(shared: &Arc<Shared>, request: Request<Incoming>) -> Answer {
    let path = request.uri().path().to_string();
    if request.method() == Method::GET && path == "/healthz" {
        return Ok(text(StatusCode::OK, "ok\n"));
    }
    // For a load balancer in front of push nodes: a node whose database is away answers 503.
    if request.method() == Method::GET && path == "/readyz" {
        shared.store.ping().await?;
        return Ok(text(StatusCode::OK, "ready\n"));
    }
    authorize(shared, &request)?;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method().clone();
    match (method, segments.as_slice()) {
        (Method::GET, ["metrics"]) => metrics(shared).await,
        (Method::PUT, ["v1", "environments", env]) => {
            let env = env.to_string();
            put_environment(shared, &env, request).await
        }
        (Method::GET, ["v1", "environments", env]) => get_environment(shared, env).await,
        (Method::PUT, ["v1", "recordings", env, file]) => {
            let (env, file) = (env.to_string(), file.to_string());
            put_file(shared, &env, &file, request).await
        }
        (Method::POST, ["v1", "recordings", env, name, "commit"]) => {
            commit(shared, env, name).await
        }
        (Method::POST, ["v1", "recordings", env, name, "push"]) => {
            manual_push(shared, env, name).await
        }
        (Method::GET, ["v1", "recordings", env, name]) => status(shared, env, name).await,
        (Method::DELETE, ["v1", "recordings", env, name]) => {
            delete::recording(shared, env, name).await
        }
        (Method::DELETE, ["v1", "environments", env, "recordings"]) => {
            delete::bulk(shared, env, request.uri().query()).await
        }
        (Method::GET, ["v1", "jobs", id]) => delete::job(shared, id).await,
        (Method::POST, ["v1", "lifecycle", "sweep"]) => delete::sweep(shared).await,
        (Method::GET, ["v1", "recordings"]) => list(shared, request.uri().query()).await,
        (_, ["v1", "environments", ..])
        | (_, ["v1", "recordings", ..])
        | (_, ["v1", "jobs", _])
        | (_, ["v1", "lifecycle", "sweep"])
        | (_, ["metrics"]) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "see the API in the README",
        )),
        _ => Err(ApiError::not_found("no such route")),
    }
}

fn authorize(shared: &Shared, request: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(token) = &shared.push.token else {
        return Ok(());
    };
    let presented = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|p| crate::admin::constant_time_eq(p.as_bytes(), token.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <push token>",
        ))
    }
}

async fn put_environment(shared: &Shared, name: &str, request: Request<Incoming>) -> Answer {
    if !is_valid_env(name) {
        return Err(ApiError::bad(
            "environment names are 1-64 of A-Z a-z 0-9 _ -",
        ));
    }
    let body = read_json(request).await?;
    let env: Environment = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("not an environment: {e}")))?;
    validate_environment(shared, &env)?;
    shared.store.put_environment(name, &env, now_ms()).await?;
    Ok(json_response(StatusCode::OK, &env.redacted()))
}

fn validate_environment(shared: &Shared, env: &Environment) -> Result<(), ApiError> {
    if !is_valid_segment(&env.account) {
        return Err(ApiError::bad("account: 1-128 of A-Z a-z 0-9 _ -"));
    }
    if !shared.config.regions.iter().any(|r| r.name == env.region) {
        let known: Vec<&str> = shared
            .config
            .regions
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        return Err(ApiError::bad(format!(
            "region: {:?} is not one of {}",
            env.region,
            known.join(", ")
        )));
    }
    if let Some(w) = &env.webhook {
        if !(w.url.starts_with("https://") || w.url.starts_with("http://"))
            || w.url.parse::<http::Uri>().is_err()
        {
            return Err(ApiError::bad("webhook.url: an http(s) URL"));
        }
        if w.secret.is_empty() {
            return Err(ApiError::bad("webhook.secret: empty"));
        }
    }
    let mut names = Vec::new();
    for (i, d) in env.destinations.iter().enumerate() {
        let field = |f: &str| format!("destinations[{i}].{f}");
        if !is_valid_env(&d.name) || d.name == COMPLIMENTARY {
            return Err(ApiError::bad(format!(
                "{}: 1-64 of A-Z a-z 0-9 _ -, not \"complimentary\"",
                field("name")
            )));
        }
        if names.contains(&d.name) {
            return Err(ApiError::bad(format!("{}: used twice", field("name"))));
        }
        names.push(d.name.clone());
        let endpoint_ok = (d.endpoint.starts_with("https://") || d.endpoint.starts_with("http://"))
            && d.endpoint.parse::<http::Uri>().is_ok();
        if !endpoint_ok {
            return Err(ApiError::bad(format!(
                "{}: an http(s) URL",
                field("endpoint")
            )));
        }
        for (f, v) in [
            ("bucket", &d.bucket),
            ("region", &d.region),
            ("access_key_id", &d.access_key_id),
            ("secret_access_key", &d.secret_access_key),
        ] {
            if v.is_empty() {
                return Err(ApiError::bad(format!("{}: empty", field(f))));
            }
        }
    }
    Ok(())
}

async fn get_environment(shared: &Shared, name: &str) -> Answer {
    match shared.store.environment(name).await? {
        Some(env) => Ok(json_response(StatusCode::OK, &env.redacted())),
        None => Err(ApiError::not_found(format!("no environment {name:?}"))),
    }
}

async fn put_file(
    shared: &Arc<Shared>,
    env_name: &str,
    file: &str,
    request: Request<Incoming>,
) -> Answer {
    let Some((name, kind)) = split_file(file) else {
        return Err(ApiError::bad(
            "the file is {NAME}.mp4, {NAME}.jpg, {NAME}_filmstrip.jpg or {NAME}_raw.mp4 (NAME: 1-128 of A-Z a-z 0-9 _ -)",
        ));
    };
    let Some((env, refused)) = shared.store.environment_for_file(env_name, name).await? else {
        return Err(ApiError::not_found(format!("no environment {env_name:?}")));
    };
    let max = shared.push.max_file_size;
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max) {
        return Err(too_large(max));
    }
    let digest = match request.headers().get("content-digest") {
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| ApiError::bad("Content-Digest is not text"))?;
            content_digest(text).map_err(|e| ApiError::bad(format!("Content-Digest: {e}")))?
        }
        None => None,
    };
    // Refused before a byte is written when the recording is already committed.
    if let Some(refused) = refused {
        return Err(refused_file(refused));
    }
    let spool_error = |e: std::io::Error| {
        tracing::error!(error = %e, "spool write failed");
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "spool_unavailable",
            "the spool could not store the file",
        )
    };
    // A large file for our bucket starts its multipart upload while it arrives.
    let plan = shared.early.plan(shared, &env, declared);
    let incoming = shared
        .spool
        .incoming(plan.is_some())
        .await
        .map_err(spool_error)?;
    let progress = match (plan, incoming.link(), declared) {
        (Some(plan), Some(link), Some(declared)) => Some(EarlyUploads::start(
            shared,
            plan,
            (env_name, name, kind),
            declared,
            link.to_path_buf(),
        )),
        _ => None,
    };
    let received = shared
        .spool
        .receive(
            incoming,
            (env_name, name, kind.suffix()),
            request.into_body(),
            max,
            digest,
            progress,
        )
        .await
        .map_err(|e| match e {
            SpoolError::TooLarge(max) => too_large(max),
            SpoolError::DigestMismatch => {
                ApiError::bad("the body does not match its Content-Digest")
            }
            SpoolError::Body(detail) => ApiError::bad(format!("the upload was cut: {detail}")),
            SpoolError::Io(e) => spool_error(e),
        })?;
    match shared
        .store
        .receive_file(env_name, name, &env, &received.row)
        .await?
    {
        Ok(()) => Ok(json_response(
            StatusCode::CREATED,
            &json!({
                "env": env_name,
                "name": name,
                "file": file,
                "bytes": received.row.bytes,
                "sha256": received.row.sha256,
                "crc32c": format!("{:08x}", received.crc32c),
            }),
        )),
        Err(refused) => {
            // Deleted while this body arrived, or taken by another node: what it wrote must
            // not stay behind in this spool.
            let stray = refused == Refused::Elsewhere
                || matches!(shared.store.recording(env_name, name).await,
                    Ok(Some(r)) if r.state == RecordingState::Deleted);
            if stray && let Err(e) = shared.spool.remove(env_name, name).await {
                tracing::warn!(env = %env_name, %name, error = %e, "spool files of a refused upload not removed");
            }
            Err(refused_file(refused))
        }
    }
}

/// The 409 of a file that may not be received.
fn refused_file(refused: Refused) -> ApiError {
    match refused {
        Refused::Elsewhere => ApiError::new(
            StatusCode::CONFLICT,
            "other_node",
            "another push node is receiving this recording: send all its files to one node",
        ),
        _ => ApiError::conflict("the recording is committed: its files are fixed"),
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("files are at most {max} bytes (push.max_file_size)"),
    )
}

async fn commit(shared: &Shared, env_name: &str, name: &str) -> Answer {
    if !is_valid_segment(name) {
        return Err(ApiError::bad("NAME: 1-128 of A-Z a-z 0-9 _ -"));
    }
    let Some(env) = shared.store.environment(env_name).await? else {
        return Err(ApiError::not_found(format!("no environment {env_name:?}")));
    };
    let mut targets = Vec::new();
    if env.complimentary_storage {
        targets.push((
            COMPLIMENTARY.to_string(),
            Target::Complimentary {
                region: env.region.clone(),
            },
        ));
    }
    for d in &env.destinations {
        targets.push((d.name.clone(), Target::Customer(d.clone())));
    }
    match shared
        .store
        .commit(env_name, name, &targets, now_ms())
        .await?
    {
        Ok(RecordingState::Deleted) => Err(ApiError::conflict(
            "the recording was deleted; a deleted name is not reused",
        )),
        Ok(_) => {
            shared.wake.notify_one();
            let view = view(shared, env_name, name).await?;
            Ok(json_response(StatusCode::ACCEPTED, &view))
        }
        Err(_) => Err(ApiError::bad("no file was uploaded for this recording")),
    }
}

async fn manual_push(shared: &Shared, env: &str, name: &str) -> Answer {
    match shared.store.manual_push(env, name, now_ms()).await? {
        Ok(()) => {
            shared.wake.notify_one();
            Ok(json_response(
                StatusCode::ACCEPTED,
                &view(shared, env, name).await?,
            ))
        }
        Err(Refused::Unknown) => Err(ApiError::not_found("no such recording")),
        Err(Refused::State(RecordingState::Failed)) => Err(ApiError::conflict(
            "the recording's files are no longer kept",
        )),
        Err(Refused::State(state)) => Err(ApiError::conflict(format!(
            "only a failed recording is pushed by hand; this one is {}",
            state.as_str()
        ))),
        Err(_) => Err(ApiError::conflict("not possible now")),
    }
}

async fn status(shared: &Shared, env: &str, name: &str) -> Answer {
    Ok(json_response(
        StatusCode::OK,
        &view(shared, env, name).await?,
    ))
}

async fn list(shared: &Shared, query: Option<&str>) -> Answer {
    let mut state = None;
    let mut env = None;
    let mut limit = 1000u32;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "state" => {
                state = Some(
                    RecordingState::parse(v)
                        .filter(|s| *s != RecordingState::Open)
                        .ok_or_else(|| {
                            ApiError::bad(
                                "state: queued, pushing, retrying, pushed, failed or skipped",
                            )
                        })?,
                );
            }
            "env" => {
                if !is_valid_env(v) {
                    return Err(ApiError::bad("env: 1-64 of A-Z a-z 0-9 _ -"));
                }
                env = Some(v.to_string());
            }
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or_else(|| ApiError::bad("limit: 1 to 10000"))?;
            }
            _ => return Err(ApiError::bad(format!("unknown parameter {k:?}"))),
        }
    }
    let rows = shared
        .store
        .recordings(state, env.as_deref(), limit)
        .await?;
    let items: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "env": r.env,
                "name": r.name,
                "account": r.account,
                "region": r.region,
                "state": r.state.as_str(),
                "committed_at": r.committed_at.map(rfc3339),
                "keep_until": r.keep_until.map(rfc3339),
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "recordings": items }),
    ))
}

async fn metrics(shared: &Shared) -> Answer {
    let (recordings, _) = shared.store.counts().await?;
    let spool = shared.spool.bytes().await;
    let pending = shared.store.pending_purges().await?;
    shared
        .metrics
        .pending_purges(&shared.edges.admins(), &pending);
    let mut response = text(StatusCode::OK, "");
    *response.body_mut() = Full::new(Bytes::from(shared.metrics.encode(&recordings, spool)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

/// A recording as `GET /v1/recordings/{env}/{NAME}` shows it.
#[derive(Debug, Serialize)]
struct View {
    env: String,
    name: String,
    account: String,
    region: String,
    state: &'static str,
    committed_at: Option<String>,
    files: Vec<FileView>,
    destinations: Vec<DestinationView>,
    keep_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_by: Option<String>,
    urls: Urls,
}

#[derive(Debug, Serialize)]
struct FileView {
    file: String,
    bytes: u64,
    sha256: String,
}

#[derive(Debug, Serialize)]
struct DestinationView {
    name: String,
    state: String,
    attempts: u32,
    next_attempt_at: Option<String>,
    last_error: Option<String>,
}

async fn view(shared: &Shared, env: &str, name: &str) -> Result<View, ApiError> {
    let Some(r) = shared.store.recording(env, name).await? else {
        return Err(ApiError::not_found("no such recording"));
    };
    if r.state == RecordingState::Open {
        return Err(ApiError::not_found(
            "the recording is not committed yet (POST …/commit)",
        ));
    }
    let files = shared.store.files(env, name).await?;
    let pushes = shared.store.pushes(env, name).await?;
    let location = location(Some(&shared.config), &r.region);
    Ok(View {
        env: r.env.clone(),
        name: r.name.clone(),
        account: r.account.clone(),
        region: r.region.clone(),
        state: r.state.as_str(),
        committed_at: r.committed_at.map(rfc3339),
        files: files
            .into_iter()
            .map(|f| FileView {
                file: format!("{name}{}", f.suffix),
                bytes: f.bytes,
                sha256: f.sha256,
            })
            .collect(),
        destinations: pushes
            .into_iter()
            .map(|p| DestinationView {
                name: p.destination,
                state: p.state,
                attempts: p.attempts,
                next_attempt_at: p.next_attempt_at.map(rfc3339),
                last_error: p.last_error,
            })
            .collect(),
        keep_until: r.keep_until.map(rfc3339),
        deleted_at: r.deleted_at.map(rfc3339),
        deleted_by: r.deleted_by.clone(),
        urls: urls(
            location.as_deref(),
            shared.push.edge_url.as_deref(),
            &r.region,
            &r.account,
            name,
        ),
    })
}

/// RFC 3339 UTC with milliseconds.
pub(super) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

async fn read_json(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    Limited::new(request.into_body(), MAX_JSON)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "JSON bodies are at most 1 MiB",
            )
        })
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
