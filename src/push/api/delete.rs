//! The deletion routes: `DELETE /v1/recordings/{env}/{NAME}`, bulk deletion jobs
//! (`DELETE /v1/environments/{env}/recordings?before=…`, `GET /v1/jobs/{id}`) and
//! `POST /v1/lifecycle/sweep`.

use http::{HeaderValue, StatusCode};
use serde_json::json;

use super::{Answer, ApiError, Shared, json_response, rfc3339};
use crate::push::deletion::{self, DeleteError};
use crate::push::model::{is_valid_env, is_valid_segment};
use crate::push::schedule::now_ms;

impl From<DeleteError> for ApiError {
    fn from(e: DeleteError) -> Self {
        match e {
            DeleteError::Store(e) => e.into(),
            // The tombstone is committed: the deleter keeps trying; a DELETE again is safe.
            DeleteError::Bucket(e) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bucket_unavailable",
                format!(
                    "the bucket did not delete the objects ({e}); they are deleted when it answers, or DELETE again"
                ),
            ),
        }
    }
}

/// `DELETE /v1/recordings/{env}/{NAME}`.
pub(super) async fn recording(shared: &Shared, env: &str, name: &str) -> Answer {
    if !is_valid_env(env) {
        return Err(ApiError::bad("env: 1-64 of A-Z a-z 0-9 _ -"));
    }
    if !is_valid_segment(name) {
        return Err(ApiError::bad("NAME: 1-128 of A-Z a-z 0-9 _ -"));
    }
    let Some(environment) = shared.store.environment(env).await? else {
        return Err(ApiError::not_found(format!("no environment {env:?}")));
    };
    let deleted = deletion::delete_one(shared, env, &environment, name).await?;
    Ok(json_response(StatusCode::OK, &deleted))
}

/// `DELETE /v1/environments/{env}/recordings?before=…`: a job, `202` with its location.
pub(super) async fn bulk(shared: &Shared, env: &str, query: Option<&str>) -> Answer {
    if !is_valid_env(env) {
        return Err(ApiError::bad("env: 1-64 of A-Z a-z 0-9 _ -"));
    }
    let mut before = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "before" => before = Some(value.into_owned()),
            other => {
                return Err(ApiError::bad(format!(
                    "unknown parameter {other:?}; only before"
                )));
            }
        }
    }
    let Some(before) = before else {
        return Err(ApiError::bad(
            "before is required: an RFC 3339 date or date-time, e.g. ?before=2026-01-01",
        ));
    };
    let Some(before_ms) = parse_before(shared, &before) else {
        return Err(ApiError::bad(format!(
            "before: {before:?} is not an RFC 3339 date (2026-01-01) or date-time (2026-01-01T00:00:00Z)"
        )));
    };
    if shared.store.environment(env).await?.is_none() {
        return Err(ApiError::not_found(format!("no environment {env:?}")));
    }
    let id = format!("{:016x}", fastrand::u64(..));
    shared
        .store
        .create_job(&id, env, before_ms, now_ms())
        .await?;
    shared.deleter_wake.notify_one();
    let location = format!("/v1/jobs/{id}");
    let mut response = json_response(StatusCode::ACCEPTED, &json!({ "job": location }));
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(http::header::LOCATION, value);
    }
    Ok(response)
}

/// A date-time with its offset, or a date: local midnight in `push.retention_timezone`.
fn parse_before(shared: &Shared, value: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Some(t.timestamp_millis());
    }
    let date = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
    // `%Y` takes more than four digits; RFC 3339's full-date has four.
    (value.len() == 10).then(|| shared.schedule.local_midnight(date))?
}

/// `GET /v1/jobs/{id}`.
pub(super) async fn job(shared: &Shared, id: &str) -> Answer {
    let Some(job) = shared.store.job(id).await? else {
        return Err(ApiError::not_found(format!("no job {id:?}")));
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": job.id,
            "env": job.env,
            "before": rfc3339(job.before),
            "state": job.state,
            "total": job.total,
            "deleted": job.deleted,
            "created_at": rfc3339(job.created_at),
            "finished_at": job.finished_at.map(rfc3339),
        }),
    ))
}

/// `POST /v1/lifecycle/sweep`: the sweep now, answered with what it deleted.
pub(super) async fn sweep(shared: &Shared) -> Answer {
    let swept = shared.deleter.sweep(shared).await?;
    let deleted: Vec<_> = swept
        .into_iter()
        .map(|(env, name)| json!({"env": env, "name": name}))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "deleted": deleted }),
    ))
}
