//! The responses the gateway writes itself, one builder each, shared by the relay and the
//! cache: 304, 412, 416, the `Content-Range` of a 206, and the short error answers.

use http::header::{ALLOW, CONTENT_RANGE, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;
use crate::error::GatewayError;

/// The methods the gateway answers (`Allow` of 405s and preflights).
pub(crate) const ALLOWED_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD, OPTIONS");

/// A response of our own: a status and a fixed short text, never backend detail.
pub(crate) fn short_response(status: StatusCode, message: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(message));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `304 Not Modified`, no body (the caller adds the validators).
pub(crate) fn not_modified() -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    response
}

/// `412 Precondition Failed`.
pub(crate) fn precondition_failed() -> Response<ResponseBody> {
    short_response(StatusCode::PRECONDITION_FAILED, "precondition failed\n")
}

/// `416 Range Not Satisfiable` with `Content-Range: bytes */{length}` when the length is
/// known (from the cache, or the backend's own header).
pub(crate) fn range_not_satisfiable(content_range: Option<HeaderValue>) -> Response<ResponseBody> {
    let mut response = short_response(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
    if let Some(value) = content_range {
        response.headers_mut().insert(CONTENT_RANGE, value);
    }
    response
}

/// `bytes */{length}`: the `Content-Range` of a 416.
pub(crate) fn unsatisfied_range(length: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("bytes */{length}")).ok()
}

/// `bytes {first}-{last}/{length}`: the `Content-Range` of a 206.
pub(crate) fn content_range(first: u64, last: u64, length: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("bytes {first}-{last}/{length}")).ok()
}

/// The client's view of an error: status and a fixed short text.
pub(crate) fn error_response(error: &GatewayError) -> Response<ResponseBody> {
    let mut response = short_response(error.status(), error.public_message());
    match error {
        GatewayError::MethodNotAllowed => {
            response.headers_mut().insert(ALLOW, ALLOWED_METHODS);
        }
        // The circuit's first cool-down is short; a player may try again soon.
        GatewayError::RegionUnavailable => {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("2"));
        }
        _ => {}
    }
    response
}
